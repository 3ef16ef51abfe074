"""The tuning database: round trips, keys, crash safety, schema versions, concurrent writers.

The crash test kills a writer process mid-loop with SIGKILL and checks that every trial
it had reported as committed is in the reopened file, whole and in order.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tilefuse.autotune.database import (
    DB_ENV,
    SCHEMA_VERSION,
    Database,
    SchemaVersionError,
    default_path,
    device_name,
    versions,
)
from tilefuse.autotune.heuristics import KernelConfig
from tilefuse.autotune.records import ArgSpec, TuningRecord, TuningTask

DEVICE, VERSIONS = "NVIDIA H100 80GB HBM3", "torch=2.11.0,triton=3.6.0,tilefuse=0.1.0"
GEMM = KernelConfig({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, 8, 3)
SMALL = KernelConfig({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, 4, 2)
HUGE = KernelConfig({"BLOCK_M": 256, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8}, 8, 5)


def _record(config: KernelConfig, median_ms: float | None, trial: int, **kwargs) -> TuningRecord:
    return TuningRecord("gemm-key", DEVICE, VERSIONS, config, median_ms, trial=trial, **kwargs)


def _task(key: str = "gemm-key") -> TuningTask:
    return TuningTask(
        key=key,
        name="mm_relu",
        kind="gemm",
        problem={
            "M": 512,
            "N": 4096,
            "K": 1024,
            "whole": {"BLOCK_N": 4096},
            "divisors": {"BLOCK_K": [64, 128]},
        },
        source="@triton.jit\ndef mm_relu(a, b, out):\n    pass\n",
        kernel_name="mm_relu",
        args=(
            ArgSpec((512, 1024), "bfloat16"),
            ArgSpec((1024, 4096), "bfloat16"),
            ArgSpec((512, 4096), "bfloat16"),
        ),
        epilogue_ops=1,
    )


def test_records_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "folder" / "tuning.db"
    with Database(path) as db:
        db.commit(_record(GEMM, 0.42, 0, job="job-1", wall_s=1.5, extra={"times_ms": [0.41, 0.42, 0.43]}))
        db.commit(_record(HUGE, None, 1, error="OutOfResources: shared memory", job="job-1"))
        db.commit(_record(SMALL, 0.9, 2, job="job-1"))
    with Database(path) as db:
        records = db.records("gemm-key", DEVICE, VERSIONS)
        assert [r.trial for r in records] == [0, 1, 2]
        assert records[0] == _record(
            GEMM, 0.42, 0, job="job-1", wall_s=1.5, extra={"times_ms": [0.41, 0.42, 0.43]}
        )
        assert records[0].config == GEMM and records[0].config.key() == GEMM.key()
        assert records[1].median_ms is None and records[1].error == "OutOfResources: shared memory"
        assert records[1].config == HUGE
        assert db.best("gemm-key", DEVICE, VERSIONS) == records[0]
        assert db.measured_configs("gemm-key", DEVICE, VERSIONS) == {GEMM.key(), HUGE.key(), SMALL.key()}
        assert len(db) == 3
        journal = db._conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert journal == "wal"


def test_best_ignores_errors(tmp_path: Path) -> None:
    with Database(tmp_path / "t.db") as db:
        assert db.best("gemm-key", DEVICE, VERSIONS) is None
        # a failed trial that still has a time (a wrong result, say) must not win
        db.commit(_record(HUGE, 0.01, 0, error="mismatch against eager"))
        db.commit(_record(SMALL, None, 1, error="timeout"))
        assert db.best("gemm-key", DEVICE, VERSIONS) is None
        db.commit(_record(GEMM, 0.5, 2))
        db.commit(_record(KernelConfig({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 8}), 0.7, 3))
        assert db.best("gemm-key", DEVICE, VERSIONS).config == GEMM


def test_same_config_replaces_its_row(tmp_path: Path) -> None:
    with Database(tmp_path / "t.db") as db:
        db.commit(_record(GEMM, None, 0, error="driver reset", job="job-1"))
        db.commit(_record(SMALL, 0.8, 1, job="job-1"))
        db.commit(_record(GEMM, 0.3, 5, job="job-2"))
        assert len(db) == 2
        records = db.records("gemm-key", DEVICE, VERSIONS)
        assert [(r.config, r.median_ms, r.error, r.job, r.trial) for r in records] == [
            (SMALL, 0.8, None, "job-1", 1),
            (GEMM, 0.3, None, "job-2", 5),
        ]
        assert db.best("gemm-key", DEVICE, VERSIONS).median_ms == 0.3


def test_keys_separate_devices_versions_and_tasks(tmp_path: Path) -> None:
    with Database(tmp_path / "t.db") as db:
        db.commit(_record(GEMM, 0.5, 0))
        db.commit(TuningRecord("gemm-key", "NVIDIA H200", VERSIONS, SMALL, 0.1, trial=0))
        db.commit(
            TuningRecord("gemm-key", DEVICE, VERSIONS.replace("triton=3.6.0", "triton=3.9.0"), HUGE, 0.2)
        )
        db.commit(TuningRecord("other-key", DEVICE, VERSIONS, SMALL, 0.05))
        assert len(db) == 4
        assert [r.config for r in db.records("gemm-key", DEVICE, VERSIONS)] == [GEMM]
        assert db.measured_configs("gemm-key", DEVICE, VERSIONS) == {GEMM.key()}
        assert db.best("gemm-key", DEVICE, VERSIONS).config == GEMM
        assert db.best("gemm-key", "NVIDIA H200", VERSIONS).config == SMALL
        assert db.records("gemm-key", "cpu", VERSIONS) == []
        assert db.measured_configs("gemm-key", DEVICE, "torch=0") == set()


def test_tasks_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    with Database(path) as db:
        assert db.task("gemm-key") is None and db.tasks() == []
        db.commit_task(_task("gemm-key"))
        db.commit_task(_task("a-first-key"))
    with Database(path) as db:
        assert db.task("gemm-key") == _task("gemm-key")
        assert db.task("gemm-key").args[0] == ArgSpec((512, 1024), "bfloat16")
        assert [t.key for t in db.tasks()] == ["a-first-key", "gemm-key"]
        changed = TuningTask(**{**_task().__dict__, "source": "# regenerated\n", "epilogue_ops": 3})
        db.commit_task(changed)
        assert db.task("gemm-key") == changed and len(db.tasks()) == 2
        assert len(db) == 0  # tasks are not records


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    Database(path).close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(SchemaVersionError, match=rf"schema version {SCHEMA_VERSION + 1}.*upgrade tilefuse"):
        Database(path)


def test_two_connections_interleaved(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    with Database(path) as first, Database(path) as second:
        for trial in range(20):
            writer = first if trial % 2 == 0 else second
            config = KernelConfig({"BLOCK": 16 * (trial + 1)})
            writer.commit(_record(config, float(trial), trial, job="first" if writer is first else "second"))
            # the other connection sees each commit at once: no transaction is left open
            reader = second if writer is first else first
            assert len(reader) == trial + 1
        for db in (first, second):
            records = db.records("gemm-key", DEVICE, VERSIONS)
            assert [r.trial for r in records] == list(range(20))
            assert [r.job for r in records] == ["first", "second"] * 10
    with Database(path) as db:
        assert len(db) == 20


def test_threads_share_one_database(tmp_path: Path) -> None:
    with Database(tmp_path / "t.db") as db:

        def write(offset: int) -> None:
            for trial in range(offset, offset + 25):
                db.commit(_record(KernelConfig({"BLOCK": trial}), 1.0, trial))

        threads = [threading.Thread(target=write, args=(offset,)) for offset in (0, 25, 50, 75)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [r.trial for r in db.records("gemm-key", DEVICE, VERSIONS)] == list(range(100))


_WRITER = """
import sys
from tilefuse.autotune.database import Database
from tilefuse.autotune.heuristics import KernelConfig
from tilefuse.autotune.records import TuningRecord

db = Database(sys.argv[1])
trial = 0
while True:
    config = KernelConfig({"BLOCK_M": trial, "BLOCK_N": 2 * trial}, 4, 2)
    extra = {"payload": "x" * 4000, "trial": trial}
    db.commit(TuningRecord("task", "dev", "v", config, trial * 0.5, job="killed", trial=trial, extra=extra))
    print(trial, flush=True)
    trial += 1
"""


def test_killed_writer_loses_at_most_the_record_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    watchdog = threading.Timer(60, proc.kill)  # a hung writer fails the test instead of hanging it
    watchdog.start()
    try:
        reported = []
        while len(reported) < 50:
            line = proc.stdout.readline()
            assert line, f"the writer exited early: {proc.stderr.read()}"
            reported.append(int(line))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # through the same buffered reader: lines it read ahead of `readline` are in its buffer, which
        # communicate() (reading the pipe's descriptor) would skip
        rest = proc.stdout.read()
    finally:
        watchdog.cancel()
    assert proc.returncode == -signal.SIGKILL
    # a line the writer finished printing before the kill is a commit it reported too
    reported += [int(line) for line in rest.splitlines(keepends=True) if line.endswith("\n")]
    assert reported == list(range(len(reported)))

    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    raw.close()
    with Database(path) as db:
        records = db.records("task", "dev", "v")
        # the record in flight at the kill may have been committed or not; nothing else may differ
        assert len(records) in (len(reported), len(reported) + 1)
        for trial, record in enumerate(records):
            config = KernelConfig({"BLOCK_M": trial, "BLOCK_N": 2 * trial}, 4, 2)
            extra = {"payload": "x" * 4000, "trial": trial}
            assert record == TuningRecord(
                "task", "dev", "v", config, trial * 0.5, job="killed", trial=trial, extra=extra
            )
        assert len(db) == len(records)


def test_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DB_ENV, str(tmp_path / "mine.db"))
    assert default_path() == tmp_path / "mine.db"
    monkeypatch.delenv(DB_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_path() == tmp_path / "cache" / "tilefuse" / "tuning.db"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home" / ".cache" / "tilefuse" / "tuning.db"


def test_device_and_versions_keys() -> None:
    assert re.fullmatch(r"torch=[^,=]+,triton=[^,=]+,tilefuse=[^,=]+", versions())
    name = device_name()
    assert isinstance(name, str) and name
