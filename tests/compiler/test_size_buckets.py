"""Configs per size bucket (issue 14): a kernel of symbolic sizes gets a config for each bucket of its
sizes, its program picks one at launch, the tuning database keys records by bucket, and a tuning job
tunes a dynamic kernel at a list of sizes (Triton interpreter; oracle: eager PyTorch)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tilefuse
from helpers import fusion_groups
from tilefuse.autotune.buckets import BUCKET_EDGES, BUCKETS_ENV
from tilefuse.autotune.database import Database, device_name, versions
from tilefuse.autotune.records import ArgSpec, TuningTask
from tilefuse.compiler.cli import main as cli_main
from tilefuse.compiler.specialize import SPECIALIZE_ENV


def _norm_scaled(x):
    return F.layer_norm(x, (24,)) * 2


def _dynamic_rows(n: int) -> torch.Tensor:
    x = torch.randn(n, 24)
    torch._dynamo.mark_dynamic(x, 0)
    return x


@pytest.fixture
def one_dynamic_graph(monkeypatch):
    monkeypatch.setenv(SPECIALIZE_ENV, "0")  # every size runs the dynamic graph (no static compile per size)
    torch._dynamo.reset()


def _bucketed_group(compiled) -> dict:
    (group,) = [g for g in fusion_groups(compiled.tilefuse_reports) if "config_buckets" in g]
    return group


def _softmax_scaled(x):
    return torch.softmax(x, -1) * 2


def test_a_row_kernel_launches_the_config_of_each_calls_bucket(one_dynamic_graph, tmp_path, capsys):
    """A softmax over rows of a symbolic length (walked in chunks): chunks of 1024 up to rows of
    1024, of 4096 past them; rows of <= 16 share the middle bucket's config (a memory-bound kernel
    there runs one program whatever its block: no compile of its own)."""
    compiled = tilefuse.compile(_softmax_scaled, dump=tmp_path)
    sizes = (3, 40, 17, 1100, 16, 2)  # a bucket each way, its edges, and back (1: Dynamo specializes)
    with torch.no_grad():
        for n in sizes:
            x = torch.randn(4, n)
            torch._dynamo.mark_dynamic(x, 1)
            torch.testing.assert_close(compiled(x), _softmax_scaled(x), rtol=1e-5, atol=1e-5)
    assert len(compiled.tilefuse_reports) == 1
    group = _bucketed_group(compiled)
    buckets = group["config_buckets"]
    s = _symbol(buckets)  # Dynamo's name for the row length
    small, large = BUCKET_EDGES[0], BUCKET_EDGES[-1]
    assert set(buckets) == {f"{s}<={small}", f"{s}<={large}", f"{s}>{large}"}
    assert all(c.endswith("(default)") for c in buckets.values())
    assert buckets[f"{s}<={small}"] == buckets[f"{s}<={large}"] != buckets[f"{s}>{large}"], buckets
    assert "BLOCK_C=1024" in buckets[f"{s}<={large}"] and "BLOCK_C=4096" in buckets[f"{s}>{large}"], buckets
    (program,) = tmp_path.glob("*/program_dynamic_*.py")
    text = program.read_text()
    assert f"bucket_{s} = ({s} > 16) + ({s} > 1024)" in text, text
    assert f"if bucket_{s} in (0, 1):" in text and "else:" in text, text
    # the dump's summary and HTML report list the configs per bucket
    assert cli_main(["inspect", str(tmp_path)]) == 0
    assert f"sizes {s}<={small}: {buckets[f'{s}<={small}']}" in capsys.readouterr().out
    assert cli_main(["inspect", str(tmp_path), "--html", str(tmp_path / "report.html")]) == 0
    assert f"<td>{s}&gt;{large}</td>" in (tmp_path / "report.html").read_text()


def _symbol(buckets: dict[str, str]) -> str:
    return next(iter(buckets)).split("<")[0].split(">")[0]


def test_a_tuning_job_tunes_a_dynamic_kernel_at_a_list_of_sizes(one_dynamic_graph, tmp_path, caplog):
    """Each size is a task of its bucket, measured at that size; a later compile reads each bucket's
    tuned config, and the bucket no size fell in keeps its default. A row kernel's smallest bucket
    runs the middle one's config, so a size there is not tuned (and says so)."""
    db = tmp_path / "tuning.db"
    summary = tilefuse.tune(
        _norm_scaled, (_dynamic_rows(8),), budget=2, strategy="random", database=db, progress=False,
        sizes=[5, 300],
    )  # fmt: skip
    small, large = BUCKET_EDGES[0], BUCKET_EDGES[-1]
    (result,) = [r for r in summary.results if r.task.sizes]
    ((s, size),) = result.task.sizes
    assert size == 300 and result.task.name.endswith(f"[{s}<={large}]")
    assert result.best is not None and len(result.trials) == 2
    assert result.task.args[0] == ArgSpec((300, 24), "float32")
    assert f"not tuned at size 5: a row kernel runs the config of {s}<={large}" in caplog.text
    with Database(db) as database:  # the task comes back with its sizes
        stored = database.task(result.task.key)
        assert isinstance(stored, TuningTask) and stored.sizes == result.task.sizes
        assert database.records(result.task.key, device_name(), versions())
    torch._dynamo.reset()
    compiled = tilefuse.compile(_norm_scaled)
    with torch.no_grad():
        for n in (4, 700, 2000):
            x = _dynamic_rows(n)
            torch.testing.assert_close(compiled(x), _norm_scaled(x), rtol=1e-5, atol=1e-5)
    group = _bucketed_group(compiled)
    buckets = group["config_buckets"]
    assert _symbol(buckets) == s  # the same graph: the same symbol
    tuned = f"{result.best.config.key()} (tuned)"
    assert buckets[f"{s}<={small}"] == buckets[f"{s}<={large}"] == tuned, buckets
    assert buckets[f"{s}>{large}"].endswith("(default)"), buckets
    # the report's own config is the one the compiling call's size ran (8 rows: the tuned one)
    assert group["config_source"] == "tuned" and group["config"] == result.best.config.key()


def test_the_cli_refuses_sizes_that_are_not_positive_integers(capsys):
    for bad in ("0,4", "a", ""):
        with pytest.raises(SystemExit) as exit:
            cli_main(["tune", "model.py", "--sizes", bad])
        assert exit.value.code == 2
        assert "sizes are positive integers" in capsys.readouterr().err


def test_buckets_can_be_switched_off(one_dynamic_graph, monkeypatch, tmp_path):
    monkeypatch.setenv(BUCKETS_ENV, "0")
    compiled = tilefuse.compile(_norm_scaled, dump=tmp_path)
    with torch.no_grad():
        for n in (3, 40):
            x = _dynamic_rows(n)
            torch.testing.assert_close(compiled(x), _norm_scaled(x), rtol=1e-5, atol=1e-5)
    assert not [g for g in fusion_groups(compiled.tilefuse_reports) if "config_buckets" in g]
    (program,) = tmp_path.glob("*/program_dynamic_*.py")
    assert "bucket_" not in program.read_text()
