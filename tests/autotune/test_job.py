"""Tuning jobs end to end on CPU: real kernels under Triton's interpreter, the real runner."""

from __future__ import annotations

import textwrap

import pytest
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
    assert f"compiles read them with TILEFUSE_TUNING_DB={db.resolve()}" in out.err
    with Database(db) as database:
        assert len(database) == 2


def test_cli_reports_a_bad_target(tmp_path, capsys):
    script = tmp_path / "empty.py"
    script.write_text("x = 1\n")
    assert cli_main(["tune", f"{script}:missing"]) == 1
    assert "no callable 'missing'" in capsys.readouterr().err
    assert cli_main(["tune", str(tmp_path / "absent.py")]) == 1


@pytest.mark.parametrize(
    "flags",
    [["--timeout", "0"], ["--timeout", "-1"], ["--timeout", "nan"], ["--patience", "-2"], ["--workers", "0"]],
)
def test_cli_refuses_numbers_that_would_spoil_a_job(flags, tmp_path, capsys):
    """A timeout of 0 or less recorded every trial as failed (and a resumed job never retried them);
    a negative patience tuned nothing; 0 workers ran one silently. argparse refuses them (exit 2)."""
    with pytest.raises(SystemExit) as exit_:
        cli_main(["tune", str(tmp_path / "model.py"), *flags])
    assert exit_.value.code == 2
    assert f"argument {flags[0]}" in capsys.readouterr().err


def test_cli_reports_targets_that_return_the_wrong_thing_in_one_line(tmp_path, capsys):
    """A missing module, and a target returning None or three values, are one line (exit 1), not a
    traceback; one tensor as the inputs is one input, not split into its rows."""
    script = tmp_path / "targets.py"
    script.write_text(
        textwrap.dedent(
            """
            import torch

            def nothing():
                return None

            def three():
                return torch.relu, (torch.randn(2),), 3

            def one_tensor():
                return torch.nn.Linear(4, 4), torch.randn(2, 4)
            """
        )
    )
    from tilefuse.compiler.cli import load_target

    assert cli_main(["tune", "no_such_module_xyz:fn"]) == 1
    assert "no_such_module_xyz: no such module" in capsys.readouterr().err
    assert cli_main(["tune", f"{script}:nothing"]) == 1
    assert "returned NoneType; it must return (fn_or_module, example_inputs)" in capsys.readouterr().err
    assert cli_main(["tune", f"{script}:three"]) == 1
    assert "returned 3 values" in capsys.readouterr().err
    fn, inputs = load_target(f"{script}:one_tensor")
    assert len(inputs) == 1 and inputs[0].shape == (2, 4)


@pytest.mark.parametrize("kind", ["corrupt", "folder"])
def test_cli_refuses_an_unusable_database_before_compiling(kind, tmp_path, capsys, monkeypatch):
    """A corrupt file or a folder as `--db` was a traceback after the model had compiled; now one line
    before anything runs."""
    script = tmp_path / "model.py"
    script.write_text("import torch\ndef tune_target():\n    return torch.relu, (torch.randn(3),)\n")
    db = tmp_path / "bad.db"
    if kind == "corrupt":
        db.write_bytes(b"not sqlite" * 100)
    else:
        db.mkdir()
    compiles = []
    monkeypatch.setattr("tilefuse.compiler.tuning.compile_kernels", lambda *a, **k: compiles.append(a))
    assert cli_main(["tune", str(script), "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert f"error: {db}:" in err and "Traceback" not in err
    assert not compiles


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


def test_tune_refuses_to_run_inside_its_own_spawned_worker(monkeypatch):
    """The runners are spawned and import the user's script again: an unguarded `tilefuse.tune(...)`
    ran a whole job in each of them. While a spawned process imports its parent's script
    (`_inheriting`), tune says how to guard the call instead, before compiling anything."""
    import multiprocessing.process

    from tilefuse.compiler.tuning import TuneInWorker

    monkeypatch.setattr(multiprocessing.process.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(TuneInWorker, match='if __name__ == "__main__"'):
        tilefuse.tune(_model, _inputs(), budget=1)


def test_progress_without_a_terminal_is_a_line_a_quarter():
    """Written to a log (not a terminal), `\\r` updates made one long line: a line of its own at each
    quarter of a task's budget instead, the first trial's too."""
    import io

    from tilefuse.autotune.job import ProgressBar
    from tilefuse.autotune.tasks import TuningTask

    log = io.StringIO()
    bar = ProgressBar(stream=log)
    task = TuningTask.__new__(TuningTask)
    object.__setattr__(task, "name", "gemm_x")
    object.__setattr__(task, "key", "k")
    for trials in range(1, 9):
        bar(task, trials, 8, 1.5)
    lines = log.getvalue().split("\n")[:-1]
    assert "\r" not in log.getvalue()
    assert [line.split()[2] for line in lines] == ["1/8", "2/8", "4/8", "6/8", "8/8"]
