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


def test_a_tuning_job_tunes_a_dynamic_kernel_at_a_list_of_sizes(one_dynamic_graph, tmp_path):
    """Each size is a task of its bucket, measured at that size; a later compile reads each bucket's
    tuned config, and the bucket no size fell in keeps its default."""
    db = tmp_path / "tuning.db"
    summary = tilefuse.tune(
        _norm_scaled, (_dynamic_rows(8),), budget=2, strategy="random", database=db, progress=False,
        sizes=[5, 300],
    )  # fmt: skip
    small, large = BUCKET_EDGES[0], BUCKET_EDGES[-1]
    sized = [r for r in summary.results if r.task.sizes]
    assert sorted(v for r in sized for _, v in r.task.sizes) == [5, 300]
    s = sized[0].task.sizes[0][0]
    assert sorted(r.task.name.split("[")[1] for r in sized) == [f"{s}<={large}]", f"{s}<={small}]"]
    for result in sized:
        assert result.best is not None and len(result.trials) == 2
        assert result.task.args[0] == ArgSpec((dict(result.task.sizes)[s], 24), "float32")
    with Database(db) as database:  # the task comes back with its sizes
        stored = database.task(sized[0].task.key)
        assert isinstance(stored, TuningTask) and stored.sizes == sized[0].task.sizes
        assert database.records(sized[0].task.key, device_name(), versions())
    torch._dynamo.reset()
    compiled = tilefuse.compile(_norm_scaled)
    with torch.no_grad():
        for n in (4, 700, 2000):
            x = _dynamic_rows(n)
            torch.testing.assert_close(compiled(x), _norm_scaled(x), rtol=1e-5, atol=1e-5)
    buckets = _bucketed_group(compiled)["config_buckets"]
    best = {r.task.name.split("[")[1][:-1]: r.best.config.key() for r in sized}
    assert _symbol(buckets) == s  # the same graph: the same symbol
    assert buckets[f"{s}<={small}"] == f"{best[f'{s}<={small}']} (tuned)", buckets
    assert buckets[f"{s}<={large}"] == f"{best[f'{s}<={large}']} (tuned)", buckets
    assert buckets[f"{s}>{large}"].endswith("(default)"), buckets


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
