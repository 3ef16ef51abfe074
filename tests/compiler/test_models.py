"""End to end: `@tilefuse.compile` on whole models matches eager, with nothing falling back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import tilefuse
from helpers import compile_and_compare, compiled_aten_ops
from tilefuse.benchmarks.models import MLP, LlamaBlock, MultiHeadAttention


@pytest.mark.parametrize("shape", [(2, 7, 32), (1, 33, 32)], ids=str)
def test_mlp(shape):
    compile_and_compare(MLP(32, 96), torch.randn(*shape), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seq", [9, 16])
def test_multi_head_attention_with_additive_mask(seq):
    model = MultiHeadAttention(48, 4)
    mask = torch.zeros(seq, seq).masked_fill(torch.rand(seq, seq) > 0.7, float("-inf"))
    mask.fill_diagonal_(0)
    reports = compile_and_compare(model, torch.randn(2, seq, 48), mask, rtol=1e-4, atol=1e-4)
    assert {"aten.native_layer_norm", "aten._softmax", "aten.bmm"} <= compiled_aten_ops(reports)


@pytest.mark.parametrize("seq", [11, 32])
def test_llama_block(seq):
    model = LlamaBlock(dim=64, heads=4, kv_heads=2, hidden=160)
    reports = compile_and_compare(model, torch.randn(2, seq, 64), rtol=1e-4, atol=1e-4)
    ops = compiled_aten_ops(reports)
    assert (
        "aten._scaled_dot_product_flash_attention_for_cpu" in ops
        or "aten.scaled_dot_product_attention" in ops
    )
    assert {"aten.rsqrt", "aten.mean", "aten.sigmoid", "aten.mm"} <= ops


def test_llama_block_bf16():
    model = LlamaBlock(dim=64, heads=4, kv_heads=4, hidden=128).to(torch.bfloat16)
    compile_and_compare(model, torch.randn(1, 16, 64).to(torch.bfloat16), rtol=5e-2, atol=5e-2)


def test_module_parameters_stay_runtime_arguments(tmp_path):
    model = MLP(16, 32)
    compiled = tilefuse.compile(model, dump=tmp_path)
    x = torch.randn(3, 16)
    with torch.no_grad():
        compiled(x)
        model.fc1.weight.mul_(2)  # a weight update must show up without recompiling
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    (report,) = compiled.tilefuse_reports
    mlir = (tmp_path / report["dir"] / "ein.mlir").read_text()
    for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
        assert f'ein.param = "{name}"' in mlir
    assert "dense<" not in mlir


def test_forward_with_autograd_enabled_matches_and_backward_runs():
    model = MLP(16, 32)
    compiled = tilefuse.compile(model)
    x = torch.randn(4, 16, requires_grad=True)
    out = compiled(x)
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    expected = torch.autograd.grad(model(x).sum(), x)[0]
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-5)


def test_torch_compile_backend_name():
    model = MLP(16, 32)
    compiled = torch.compile(model, backend="tilefuse")
    x = torch.randn(4, 16)
    before = len(tilefuse.reports())
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    (report,) = tilefuse.reports()[before:]  # what the backend compiled is reported, as for tilefuse.compile
    assert report["partitions"] and report["kind"] == "forward"


@pytest.mark.parametrize(
    "mode", [None, "default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead"]
)
def test_torch_compile_backend_name_takes_torch_compiles_modes(mode):
    """`torch.compile(model, backend="tilefuse", mode=...)`: torch passes the mode on to a backend
    other than Inductor, which raised a TypeError (the user's model with it); it means here what
    `tilefuse.compile(mode=...)` makes of it."""
    model = MLP(16, 32)
    compiled = torch.compile(model, backend="tilefuse", mode=mode)
    x = torch.randn(4, 16)
    before = len(tilefuse.reports())
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    (report,) = tilefuse.reports()[before:]
    assert report["partitions"]
    if mode in ("max-autotune", "reduce-overhead"):  # CUDA graphs, refused here: no CUDA device
        assert report["cudagraphs"].startswith("refused")
    else:
        assert "cudagraphs" not in report


def test_torch_compile_backend_name_takes_options(tmp_path, caplog):
    """`options={"dump": ..., "backend": ...}` are tilefuse's; Inductor's (from code written for it)
    are ignored with a warning, and a mode tilefuse does not know is refused at the compile."""
    model = MLP(16, 32)
    x = torch.randn(4, 16)
    options = {"dump": str(tmp_path / "dump"), "backend": "triton", "epilogue_fusion": True}
    with caplog.at_level("WARNING", logger="tilefuse"), torch.no_grad():
        out = torch.compile(model, backend="tilefuse", options=options)(x)
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
    assert (tmp_path / "dump" / "index.json").exists()
    assert "['epilogue_fusion'] are not tilefuse's" in caplog.text
    torch._dynamo.reset()
    with pytest.raises(Exception, match="mode must be one of"):
        torch.compile(model, backend="tilefuse", mode="fastest")(x)


def test_tilefuse_compile_takes_torch_compiles_options_spelling(tmp_path, caplog):
    """`tilefuse.compile(model, options={...})`, as code written for torch.compile passes them: the
    dump and kernel backend are read, other keys ignored with a warning, and options that contradict
    `dump=` or `backend=` are refused (a TypeError before); `disable=True` gives the model back."""
    model = MLP(16, 32)
    x = torch.randn(4, 16)
    options = {"dump": str(tmp_path / "dump"), "backend": "triton", "coordinate_descent_tuning": True}
    with caplog.at_level("WARNING", logger="tilefuse"), torch.no_grad():
        out = tilefuse.compile(model, options=options)(x)
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
    assert (tmp_path / "dump" / "index.json").exists()
    assert "['coordinate_descent_tuning'] are not tilefuse's" in caplog.text
    with pytest.raises(ValueError, match="backend='cuda' and options\\['backend'\\]='triton' differ"):
        tilefuse.compile(model, backend="cuda", options={"backend": "triton"})
    tilefuse.compile(model, dump=tmp_path / "same", options={"dump": tmp_path / "same"})  # agreeing: fine
    tilefuse.compile(model, dump=str(tmp_path / "same"), options={"dump": tmp_path / "same"})  # str or Path
    assert tilefuse.compile(model, disable=True) is model  # torch.compile's disable=: the model itself
    assert tilefuse.compile(disable=True)(model) is model


def test_backend_name_works_without_importing_tilefuse_first(tmp_path):
    """Dynamo finds "tilefuse" through the package's entry point and imports it itself."""
    script = (
        "import torch\n"
        "m = torch.nn.Linear(8, 4)\n"
        "out = torch.compile(m, backend='tilefuse')(torch.randn(3, 8))\n"
        "assert out.shape == (3, 4)\n"
    )
    env = dict(os.environ, TILEFUSE_CACHE_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_decorator_forms_and_shape_change_recompiles(tmp_path):
    @tilefuse.compile
    def plain(x):
        return torch.softmax(x, -1)

    @tilefuse.compile(dump=tmp_path)
    def dumped(x, w):
        return torch.relu(x @ w)

    for n in (5, 12, 9):  # a new shape never reuses a wrong graph: a dynamic graph compiles once
        x, w = torch.randn(n, 8), torch.randn(8, n + 1)
        torch.testing.assert_close(plain(x), torch.softmax(x, -1))
        torch.testing.assert_close(dumped(x, w), torch.relu(x @ w))
    assert len(dumped.tilefuse_reports) == 2
    # the product of symbolic sizes in PyTorch, the ReLU a kernel taking its sizes
    assert [f["op"] for f in dumped.tilefuse_reports[1]["fallbacks"]] == ["aten.mm.default"]
    assert len(list(tmp_path.glob("dumped_*/ein.mlir"))) == 2  # both graphs through the pipeline
