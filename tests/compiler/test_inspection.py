"""Seeing what tilefuse did: per-pass dumps, TILEFUSE_PRINT_IR_AFTER, `tilefuse opt --emit triton`,
`tilefuse inspect`."""

from __future__ import annotations

from pathlib import Path

import torch

import tilefuse
from tilefuse.compiler.cli import main as cli_main

PASS_FILE = Path(__file__).parents[1] / "passes" / "split-reduction" / "logsumexp_linear.mlir"


def _model(x, w):
    return torch.logsumexp(x @ w, -1), torch.sort(x, 0).values  # sort: left to PyTorch


def _compile(tmp_path):
    compiled = tilefuse.compile(_model, dump=tmp_path / "dump")
    compiled(torch.randn(8, 16), torch.randn(16, 512))
    return compiled


def test_every_pass_has_a_dump(tmp_path):
    compiled = _compile(tmp_path)
    (graph,) = [d for d in Path(compiled.tilefuse_dump_dir).iterdir() if d.is_dir()]
    for name in ("ein.mlir", "ein.canonicalize.mlir", "ein.norm-prologue.mlir", "ein.split-reduction.mlir",
                 "ein.groups.mlir", "tile.mlir"):  # fmt: skip
        assert (graph / name).exists(), name
    assert "ein.view reshape" in (graph / "ein.split-reduction.mlir").read_text()  # the split's chunks


def test_print_ir_after(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TILEFUSE_PRINT_IR_AFTER", "split-reduction,form-fusion-groups")
    _compile(tmp_path)
    err = capsys.readouterr().err
    assert "IR Dump After split-reduction" in err and "IR Dump After form-fusion-groups" in err
    assert "IR Dump After canonicalize" not in err and 'ein.group = "k0"' in err


def test_print_ir_after_an_unknown_stage_warns_and_compiles(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TILEFUSE_PRINT_IR_AFTER", "fusion,split-reduction")
    compiled = tilefuse.compile(lambda x: torch.relu(x) * 2)
    x = torch.randn(5)
    torch.testing.assert_close(compiled(x), torch.relu(x) * 2)
    (report,) = compiled.tilefuse_reports
    assert not report["fallbacks"] and report["partitions"]  # a debugging typo costs no kernels
    assert "no stage ['fusion']" in caplog.text and "split-reduction" in caplog.text


def test_opt_emits_triton(capsys):
    assert cli_main(["opt", str(PASS_FILE), "-p", "split-reduction", "--emit", "triton"]) == 0
    out = capsys.readouterr().out
    assert out.count("@triton.jit") == 2 and "PROGRAMS" in out  # the GEMM with partials, the combine


def test_opt_emits_each_kernel_once_after_lower_to_tile(capsys):
    passes = "split-reduction,form-fusion-groups,lower-to-tile"
    assert cli_main(["opt", str(PASS_FILE), "-p", passes, "--emit", "triton"]) == 0
    assert capsys.readouterr().out.count("@triton.jit") == 2


def test_opt_emits_the_compiles_kernels_from_a_raw_ein_dump(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TILEFUSE_CACHE", "0")  # a cache hit's ein.mlir only says the passes did not run
    compiled = _compile(tmp_path)
    (graph,) = [d for d in Path(compiled.tilefuse_dump_dir).iterdir() if d.is_dir()]
    capsys.readouterr()
    assert cli_main(["opt", str(graph / "ein.mlir"), "--emit", "triton"]) == 0
    assert capsys.readouterr().out.count("@triton.jit") == len(list((graph / "kernels").glob("*.py")))


def test_opt_emits_triton_from_a_tile_dump(tmp_path, capsys):
    compiled = _compile(tmp_path)
    (graph,) = [d for d in Path(compiled.tilefuse_dump_dir).iterdir() if d.is_dir()]
    capsys.readouterr()
    assert cli_main(["opt", str(graph / "tile.mlir"), "--emit", "triton"]) == 0
    assert capsys.readouterr().out.count("@triton.jit") == 2


def test_inspect_summarizes_a_dump(tmp_path, capsys):
    compiled = _compile(tmp_path)
    capsys.readouterr()
    assert cli_main(["inspect", str(compiled.tilefuse_dump_dir)]) == 0
    out = capsys.readouterr().out
    assert "gemm" in out and "fused_0_k0" in out and "[default:" in out
    assert "in PyTorch:" in out and "sort" in out
    assert "totals: 2 kernels" in out


def test_inspect_refuses_a_folder_without_a_dump(tmp_path, capsys):
    assert cli_main(["inspect", str(tmp_path)]) == 1
    assert "no tilefuse dump here" in capsys.readouterr().err


def test_inspect_says_what_is_wrong_with_its_arguments(tmp_path, capsys):
    """A missing folder, a file, a graph's folder inside a dump, a broken index.json and a folder as
    the --html file: each one line (exit 1), never a traceback."""
    _compile(tmp_path)
    graph = next(p for p in (tmp_path / "dump").iterdir() if p.is_dir())
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "index.json").write_text("{bad")
    (tmp_path / "file.txt").write_text("x")
    cases = {
        str(tmp_path / "absent"): "no such folder",
        str(tmp_path / "file.txt"): "a file, not a dump folder",
        str(graph): "pass the dump folder above it",
        str(tmp_path / "broken"): "not a tilefuse dump index",
    }
    for folder, says in cases.items():
        assert cli_main(["inspect", folder]) == 1
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err
    assert cli_main(["inspect", str(tmp_path / "dump"), "--html", str(tmp_path)]) == 1
    assert "--html takes a file name" in capsys.readouterr().err


def test_a_cache_hit_dump_says_the_passes_did_not_run(tmp_path):
    _compile(tmp_path / "first")
    torch._dynamo.reset()
    compiled = _compile(tmp_path / "second")
    (graph,) = [d for d in Path(compiled.tilefuse_dump_dir).iterdir() if d.is_dir()]
    assert compiled.tilefuse_reports[0]["cache"] == "hit"
    assert "did not run" in (graph / "ein.split-reduction.mlir").read_text()
    assert 'ein.group = "k0"' in (graph / "ein.groups.mlir").read_text()  # the cached, fused result


def test_html_report_is_self_contained_and_holds_every_kernel(tmp_path, capsys):
    compiled = _compile(tmp_path)
    out = tmp_path / "report.html"
    assert cli_main(["inspect", str(compiled.tilefuse_dump_dir), "--html", str(out)]) == 0
    page = out.read_text()
    assert "<script" not in page and "src=" not in page and "href=" not in page and "@import" not in page
    assert page.count("<svg") >= 1 and "contract k0" in page  # the graph, coloured by group
    (graph,) = [d for d in Path(compiled.tilefuse_dump_dir).iterdir() if d.is_dir()]
    for source in (graph / "kernels").glob("*.py"):
        assert source.stem in page and "@triton.jit" in page and "tile.kernel" in page
    cuda_files = list((graph / "kernels").glob("*.cu"))  # the row and pointwise kernels' CUDA C++
    assert cuda_files and page.count("CUDA C++ (not run yet)") == len(cuda_files) and "__global__" in page
    assert "aten.sort" in page  # the op left to PyTorch, with its reason


def test_tuning_plot_marks_failures_and_tracks_the_best():
    from tilefuse.compiler.report import trials_svg

    svg = trials_svg([3.0, None, 2.0, 2.5, 1.0])
    assert svg.count("<circle") == 4 and 'stroke="#e15759"' in svg and "<polyline" in svg
    assert "no successful trial" in trials_svg([None, None])
