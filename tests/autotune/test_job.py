"""Tuning jobs end to end on CPU: real kernels under Triton's interpreter, the real runner."""

from __future__ import annotations

import textwrap

import torch

import tilefuse
from helpers import fusion_groups
from tilefuse.autotune.database import Database, device_name, versions
from tilefuse.compiler.cli import main as cli_main


def _model(x, w, b):
    return torch.relu(x @ w + b)


def _inputs():
    return torch.randn(24, 40), torch.randn(40, 36), torch.randn(36)


def test_tune_then_compile_uses_the_tuned_config(tmp_path, monkeypatch):
    monkeypatch.delenv("TILEFUSE_TUNING_DB", raising=False)  # restored after: the job sets it
    db = tmp_path / "tuning.db"
    summary = tilefuse.tune(_model, _inputs(), budget=3, strategy="random", database=db, progress=False)
    (result,) = summary.results
    assert result.task.kind == "gemm" and len(result.trials) == 3 and result.best is not None
    assert "| gemm |" in summary.table()
    with Database(db) as database:
        records = database.records(result.task.key, device_name(), versions())
        assert len(records) == 3 and all(r.median_ms and r.median_ms > 0 for r in records)
    # a later compile reads the database: no measurement, the best config, the same numbers
    torch._dynamo.reset()
    compiled = tilefuse.compile(_model, dump=tmp_path / "dump")
    args = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args), _model(*args), rtol=1e-5, atol=1e-5)
    (group,) = fusion_groups(compiled.tilefuse_reports)
    assert group["config_source"] == "tuned" and group["config"] == result.best.config.key()
    assert group["tuned_ms"] == result.best.median_ms
    # the dump's summary and report show the tuned config, its time and the tuning job
    dump = str(compiled.tilefuse_dump_dir)
    assert cli_main(["inspect", dump]) == 0
    report = tmp_path / "report.html"
    assert cli_main(["inspect", dump, "--html", str(report)]) == 0
    page = report.read_text()
    assert "tuning job: 3 trials" in page and "cost model score" in page and page.count("<circle") >= 6
    # read with another database, the page says where it looked instead of an empty job
    assert cli_main(["inspect", dump, "--html", str(report), "--db", str(tmp_path / "other.db")]) == 0
    assert "other.db does not exist: name the job's with --db" in report.read_text()


def test_cli_tunes_a_script(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TILEFUSE_TUNING_DB", raising=False)  # restored after: the job sets it
    script = tmp_path / "model.py"
    script.write_text(
        textwrap.dedent(
            """
            import torch

            def tune_target():
                x, w = torch.randn(16, 32), torch.randn(32, 24)
                return (lambda x, w: torch.tanh(x @ w)), (x, w)
            """
        )
    )
    db = tmp_path / "cli.db"
    argv = ["tune", str(script), "--budget", "2", "--strategy", "random", "--db", str(db)]
    assert cli_main(argv) == 0
    out = capsys.readouterr()
    assert "| gemm |" in out.out and "2/2" in out.err  # the table, and the progress bar
    # the database is not the default one: the summary says how a compile elsewhere reads it
    assert f"compiles read them with TILEFUSE_TUNING_DB={db}" in out.err
    with Database(db) as database:
        assert len(database) == 2


def test_cli_reports_a_bad_target(tmp_path, capsys):
    script = tmp_path / "empty.py"
    script.write_text("x = 1\n")
    assert cli_main(["tune", f"{script}:missing"]) == 1
    assert "no callable 'missing'" in capsys.readouterr().err
    assert cli_main(["tune", str(tmp_path / "absent.py")]) == 1


def test_an_unusable_tuning_database_means_default_configs(tmp_path, monkeypatch):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    monkeypatch.setenv("TILEFUSE_TUNING_DB", str(bad))
    compiled = tilefuse.compile(_model)
    args = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args), _model(*args), rtol=1e-5, atol=1e-5)
    (group,) = fusion_groups(compiled.tilefuse_reports)
    assert group["kernel"] and group["config_source"] == "default"


def test_the_tuner_knows_no_decorator():
    """autotune/ tunes the tasks it is given; capturing a model is the compiler's (compiler/tuning.py)."""
    import ast
    from pathlib import Path

    import tilefuse.autotune as autotune

    for path in Path(autotune.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                assert "compiler" not in module, f"{path.name} imports {module}"


def test_collecting_a_models_kernels_without_cuda_does_not_warn_about_cuda(monkeypatch):
    import warnings

    from tilefuse.compiler import runtime
    from tilefuse.compiler.tuning import kernel_tasks

    monkeypatch.delenv("TILEFUSE_INTERPRET", raising=False)
    runtime._warn_no_cuda_once.cache_clear()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        tasks = kernel_tasks(lambda x, w: torch.relu(x @ w), (torch.randn(8, 16), torch.randn(16, 8)))
    assert [t.kind for t in tasks] == ["gemm"]
    assert not [w for w in seen if "no CUDA device" in str(w.message)]
    assert runtime._warn_no_cuda_once.cache_info().currsize == 0  # a later compile warns as usual
