"""The `tilefuse` command line: bad inputs to `opt`, pass prerequisites, start-up time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tilefuse.compiler.cli import main as cli_main

CASES = Path(__file__).parents[1] / "passes"
EIN = (CASES / "form-fusion-groups" / "mlp_block.mlir").read_text()


def _unreadable(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "secret.mlir"
    path.write_text(EIN)
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: refuse the read as the OS would
        def refuse(self):
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "read_bytes", refuse)
    return path


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


BAD_INPUTS = {
    "unreadable": (_unreadable, r"secret.mlir: error: permission denied"),
    "binary": (
        lambda tmp, _: _write(tmp, "a.mlir", b"builtin.module {\n  \x7fELF\x02\x01\x00\xd0\n"),
        r"a.mlir:2:9: error: binary data \(byte 0x00\), not MLIR text",
    ),
    "not utf-8": (
        lambda tmp, _: _write(tmp, "b.mlir", b"// caf\xe9\n"), r"b.mlir:1:7: error: binary data \(byte 0xe9\)"
    ),
    "empty": (lambda tmp, _: _write(tmp, "empty.mlir", b""), r"empty.mlir: error: empty input"),
    "comments only": (
        lambda tmp, _: _write(tmp, "c.mlir", b"// compile-cache hit: this stage did not run\n\n"),
        r"c.mlir: error: no module, only comments; the first: // compile-cache hit: this stage did not run",
    ),
    "directory": (lambda tmp, _: tmp, r": error: is a directory"),
    "python file": (
        lambda tmp, _: _write(tmp, "fused_0_k0.py", b"# group kernel fused_0_k0\nimport triton\n"),
        r"fused_0_k0.py: error: a Python file, not MLIR",
    ),
    "missing": (lambda tmp, _: tmp / "absent.mlir", r"absent.mlir: error: no such file"),
    "truncated in a block": (
        lambda tmp, _: _write(tmp, "t.mlir", EIN[: EIN.index("\n", EIN.index("{")) + 1].encode()),
        r"t.mlir:2:1: error: unexpected end of input \(is the file truncated\?\)$",
    ),
    "truncated in a type": (
        lambda tmp, _: _write(tmp, "u.mlir", EIN[: EIN.index("tensor<") + len("tensor")].encode()),
        r"u.mlir:2:\d+: error: unexpected end of input \(is the file truncated\?\): Expected '<'",
    ),
    "unknown op": (
        lambda tmp, _: _write(tmp, "op.mlir", EIN.replace("ein.contract", "ein.contrakt", 1).encode()),
        r"op.mlir:(\d+):(\d+): error: unknown operation 'ein.contrakt'",
    ),
    "text after the module": (
        lambda tmp, _: _write(tmp, "x.mlir", (EIN + "}\n").encode()), r"x.mlir:\d+:1: error: unexpected text"
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_opt_reports_a_bad_input_in_one_located_line(case, tmp_path, monkeypatch, capsys):
    make, message = BAD_INPUTS[case]
    path = make(tmp_path, monkeypatch)
    assert cli_main(["opt", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    match = re.search(message, lines[0])
    assert match, lines[0]
    if case == "unknown op":  # the column is the op's name, not the token after it
        text = path.read_text().splitlines()
        line, column = int(match[1]), int(match[2])
        assert text[line - 1][column - 1 :].startswith("ein.contrakt")


def test_lower_to_tile_without_fusion_groups_says_what_to_run(tmp_path, capsys):
    path = _write(tmp_path, "mlp.mlir", EIN.encode())
    assert cli_main(["opt", str(path), "-p", "lower-to-tile"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "run -p form-fusion-groups,lower-to-tile" in err
    assert cli_main(["opt", str(path), "-p", "form-fusion-groups,lower-to-tile"]) == 0
    assert "tile.kernel" in capsys.readouterr().out


def test_help_lists_exit_codes_and_opt_help_lists_passes(capsys):
    with pytest.raises(SystemExit) as done:
        cli_main(["--help"])
    assert done.value.code == 0
    assert "130 interrupted" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["opt", "--help"])
    assert "form-fusion-groups" in capsys.readouterr().out


def _seconds(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout


def test_import_and_the_command_line_start_quickly():
    # the targets (0.3 s beyond torch; 1.5 s for --help and --version), with 3x room for a busy machine
    out = _seconds(
        "import sys, time; import torch; t = time.perf_counter(); import tilefuse;"
        "print(time.perf_counter() - t);"
        "print(sorted(m for m in ('torch._dynamo', 'xdsl', 'triton', 'xgboost') if m in sys.modules))"
    )
    took, heavy = out.splitlines()
    assert float(took) <= 0.9 and heavy == "[]"
    for flag in ("--version", "--help"):
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "tilefuse.compiler.cli", flag], capture_output=True, text=True, timeout=60
        )
        assert time.perf_counter() - start <= 4.5 and result.returncode == 0
    assert result.stdout and "tilefuse" in result.stdout
    version = subprocess.run(
        [sys.executable, "-m", "tilefuse.compiler.cli", "--version"], capture_output=True, text=True
    )
    assert version.stdout.strip() == f"tilefuse {__import__('tilefuse').__version__}"


def test_python_dash_m_tilefuse_is_the_console_script():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tilefuse", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("tilefuse "), (done.stdout, done.stderr)


def test_opt_emits_cuda_for_row_kernels_and_dumps_hold_them(tmp_path, capsys):
    """A dump holds each row/pointwise/reduction kernel's CUDA C++ beside its Triton source, and
    `tilefuse opt --emit cuda` prints it from the ein dump (default configs) or the tile dump (with
    --config); a GEMM CUTLASS does not take says it stays on Triton."""
    import torch
    import torch.nn.functional as F

    import tilefuse

    compiled = tilefuse.compile(lambda x, w: F.softmax(x, -1) + x.sum(-1, keepdim=True) + (x @ w).sum(), dump=tmp_path)
    compiled(torch.randn(37, 100), torch.randn(100, 8))
    (graph,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    texts = [p.read_text() for p in sorted(graph.glob("kernels/*.cu"))]
    written = [t for t in texts if "__global__" in t]
    # the f32 GEMM (not CUTLASS's: f32 operands, K = 100) gets a file saying why it stays on Triton
    assert written and len(written) == len(texts) - 1 and "stays on Triton" in "".join(texts)
    assert cli_main(["opt", str(graph / "ein.canonicalize.mlir"), "--emit", "cuda"]) == 0
    out = capsys.readouterr().out
    assert out.count("__global__") == len(written) and "stays on Triton" in out
    assert cli_main(["opt", str(graph / "tile.mlir"), "--emit", "cuda"]) == 1
    assert "need --config" in capsys.readouterr().err
    config = '{"BLOCK_R": 4, "BLOCK_C": 128, "BLOCK": 128, "num_warps": 4}'
    assert cli_main(["opt", str(graph / "tile.mlir"), "--emit", "cuda", "--config", config]) == 0
    assert "__global__" in capsys.readouterr().out
