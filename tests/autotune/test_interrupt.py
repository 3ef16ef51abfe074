"""Ctrl-C during `tilefuse tune`: a real job in a subprocess, interrupted with SIGINT mid-trial."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

MODEL = """
import torch

def tune_target():
    x, w = torch.randn(32, 64), torch.randn(64, 48)
    return (lambda x, w: torch.tanh(x @ w)), (x, w)
"""


def _records(db) -> list[tuple[str, float | None, str | None]]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT config, median_ms, error FROM records").fetchall()
    except sqlite3.OperationalError:  # the job has not created its tables yet
        return []


def _tune(script, db, budget: int) -> list[str]:
    return [sys.executable, "-m", "tilefuse.compiler.cli", "tune", str(script), "--budget", str(budget),
            "--strategy", "random", "--db", str(db)]  # fmt: skip


def _default_sigint() -> None:
    """In the child before it runs Python: SIGINT back to its default. A test run started in the
    background by a shell (`pytest &`, `nohup`) inherits SIGINT ignored, and Python then installs
    no KeyboardInterrupt handler: the job would never see the signal (it ran to the end, exit 0)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_stops_the_job_records_nothing_for_the_trial_in_flight_and_resumes(tmp_path):
    script = tmp_path / "model.py"
    script.write_text(textwrap.dedent(MODEL))
    db = tmp_path / "tuning.db"
    job = subprocess.Popen(
        _tune(script, db, 200), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint
    )
    deadline = time.monotonic() + 120
    while not _records(db) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job.poll() is None, "the job ended before its first trial was committed"
    job.send_signal(signal.SIGINT)  # while the next trial is built or measured
    _, err = job.communicate(timeout=60)
    assert job.returncode == 130
    assert "Traceback" not in err
    assert err.count("interrupted; rerun the same command to resume") == 1
    committed = _records(db)
    assert committed and all(error is None and ms is not None for _, ms, error in committed)
    # the same job again, with the budget spent: every committed trial counts as done, none is measured
    rerun = subprocess.run(_tune(script, db, len(committed)), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"| 0 ({len(committed)}) |" in rerun.stdout  # trials this run (resumed)
    assert _records(db) == committed
