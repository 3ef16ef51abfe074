"""kmajor-f32-weights: f32 GEMMs read K-major copies of their [K, N] weights (passes/operand_layout.py).

On the CPU the pass is forced (`TILEFUSE_F32_WEIGHT_LAYOUT=kmajor`; its default turns it on only where
f32 dots run on a GPU's tensor cores) and the kernels run in Triton's interpreter against eager.
"""

from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import tilefuse
from tilefuse.compiler.codegen import F32_WEIGHT_LAYOUT_ENV, Target, kmajor_f32_weights
from tilefuse.compiler.driver import compile_aten_graph
from tilefuse.compiler.dump import GraphDump
from tilefuse.compiler.fx_import import InputInfo
from tilefuse.passes.operand_layout import MIN_ACTIVATION_ROWS

transformers = pytest.importorskip("transformers")


@pytest.fixture
def forced(monkeypatch):
    monkeypatch.setenv(F32_WEIGHT_LAYOUT_ENV, "kmajor")
    monkeypatch.setenv("TILEFUSE_INTERPRET", "1")


class Conv1DLike(torch.nn.Module):
    """GPT-2's Conv1D: the weight stored [in, out], read as `x @ W` (N-major)."""

    def __init__(self, k: int, n: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(k, n) / k**0.5)
        self.b = torch.nn.Parameter(torch.randn(n))

    def forward(self, x):
        y = torch.addmm(self.b, x.reshape(-1, x.shape[-1]), self.w)
        return torch.nn.functional.gelu(y).reshape(*x.shape[:-1], -1)


def _ein_after_pass(dump) -> str:
    (graph,) = [p for p in dump.iterdir() if p.is_dir()]
    return (graph / "ein.kmajor-f32-weights.mlir").read_text()


def test_a_row_major_weight_is_copied_once_and_read_k_major(forced, tmp_path):
    """Ragged K and N (150 x 130, no tile divides them), 74 rows: the weight is transposed once by a
    kernel that reads only parameters, reused while it is unchanged, recomputed after an in-place
    update; the GEMM and its epilogue match eager."""
    torch.manual_seed(0)
    model = Conv1DLike(150, 130)
    x = torch.randn(2, 37, 150)
    with torch.no_grad():
        compiled = tilefuse.compile(model, dump=tmp_path)
        for _ in range(2):
            torch.testing.assert_close(compiled(x), model(x))
        model.w.mul_(-0.5)  # the copy must follow the parameter
        torch.testing.assert_close(compiled(x), model(x))
    (partition,) = compiled.tilefuse_reports[0]["partitions"]
    assert "2 Triton kernel(s) (1 on parameters only" in partition["executor"]
    ein = _ein_after_pass(tmp_path)
    assert "ein.view permute [1, 0] %w" in ein and 'ein.contract "mk,kn->mn"' in ein


def test_gpt2_in_float32_reads_its_conv1d_weights_k_major_and_matches_eager(forced, tmp_path):
    config = transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=1, n_head=4, n_positions=64)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 128, (2, 40))
    with torch.no_grad():
        compiled = tilefuse.compile(model, dump=tmp_path)
        torch.testing.assert_close(compiled(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    ein = _ein_after_pass(tmp_path)
    # c_fc [64, 256] and the MLP's c_proj [256, 64] qualify (c_attn's 64 x 192 is under MIN_ELEMENTS)
    assert ein.count("ein.view permute [1, 0] %") >= 4


def _rewritten(fn, *args, params=(), dump=None) -> str:
    aten = make_fx(fn)(*args)
    inputs = [InputInfo(f"x{i}", param=f"p{i}" if i in params else None) for i in range(len(args))]
    compile_aten_graph(aten, "g", inputs, GraphDump(dump, "g"), Target(interpret=True, allow_tf32=False))
    return (dump / "g" / "ein.kmajor-f32-weights.mlir").read_text()


@pytest.mark.parametrize(
    "case",
    ["copied", "bf16_weight", "weight_read_transposed", "few_rows", "an_activation", "batched_weight",
     "a_tall_product_of_activations"],
)  # fmt: skip
def test_only_row_major_f32_weights_of_compute_bound_gemms_are_copied(forced, tmp_path, case):
    x, w = torch.randn(80, 150), torch.randn(150, 130)
    fn, args, params = (lambda x, w: x @ w), (x, w), (1,)
    if case == "bf16_weight":
        args = (x.bfloat16(), w.bfloat16())
    elif case == "weight_read_transposed":  # nn.Linear: x @ W.T is K-major already
        args = (x, w.t().contiguous())
        fn = lambda x, w: x @ w.t()  # noqa: E731
    elif case == "few_rows":  # a decode step's GEMV streams its weight either way
        args = (x[:8], w)
    elif case == "an_activation":  # not a parameter: a copy every call costs its traffic each time, which
        params = ()  # 80 rows do not repay
    elif case == "a_tall_product_of_activations":  # MIN_ACTIVATION_ROWS rows do: copied at every call
        args, params = (torch.randn(MIN_ACTIVATION_ROWS, 150), w), ()
    elif case == "batched_weight":
        args = (torch.randn(3, 80, 150), torch.randn(3, 150, 130))
    ein = _rewritten(fn, *args, params=params, dump=tmp_path)
    # the control cases are copied, no other
    assert ("ein.map" in ein) == (case in ("copied", "a_tall_product_of_activations"))


@pytest.mark.parametrize("m, k, n", [(MIN_ACTIVATION_ROWS + 37, 150, 130), (MIN_ACTIVATION_ROWS, 129, 257)])
def test_a_tall_product_of_two_activations_reads_a_k_major_copy_and_matches_eager(forced, tmp_path, m, k, n):
    """`relu(x @ y)` of two activations, ragged sizes: y is transposed at every call by its own kernel
    (before the GEMM, not fused into it), and the result is eager's on new values of both."""
    fn = lambda x, y: torch.relu(x @ y)  # noqa: E731
    compiled = tilefuse.compile(fn, dump=tmp_path)
    for seed in (0, 1):
        torch.manual_seed(seed)
        x, y = torch.randn(m, k), torch.randn(k, n)
        torch.testing.assert_close(compiled(x, y), fn(x, y), rtol=1e-4, atol=1e-4)
    (partition,) = compiled.tilefuse_reports[0]["partitions"]
    assert [g["kind"] for g in partition["groups"]] == ["pointwise", "gemm"]
    assert "on parameters only" not in partition["executor"]
    assert "ein.view permute [1, 0] %" in _ein_after_pass(tmp_path)


def test_the_setting_follows_the_target(monkeypatch):
    monkeypatch.delenv(F32_WEIGHT_LAYOUT_ENV, raising=False)
    monkeypatch.delenv("TILEFUSE_F32_DOTS", raising=False)
    assert kmajor_f32_weights(Target(interpret=False, allow_tf32=False))  # 3xTF32 on a GPU
    assert kmajor_f32_weights(Target(interpret=False, allow_tf32=True))  # one TF32 pass
    assert not kmajor_f32_weights(Target(interpret=True, allow_tf32=False))  # the interpreter: exact f32
    monkeypatch.setenv("TILEFUSE_F32_DOTS", "ieee")  # exact FMA math on the GPU: no tensor cores
    assert not kmajor_f32_weights(Target(interpret=False, allow_tf32=False))
    monkeypatch.setenv(F32_WEIGHT_LAYOUT_ENV, "off")
    assert not kmajor_f32_weights(Target(interpret=False, allow_tf32=True))
    monkeypatch.setenv(F32_WEIGHT_LAYOUT_ENV, "sometimes")
    with pytest.raises(ValueError, match="auto, kmajor or off"):
        kmajor_f32_weights(Target(interpret=False, allow_tf32=True))


def test_the_dump_says_when_the_pass_did_not_run(monkeypatch, tmp_path):
    monkeypatch.delenv(F32_WEIGHT_LAYOUT_ENV, raising=False)
    monkeypatch.setenv("TILEFUSE_INTERPRET", "1")  # exact f32 math in the interpreter: nothing to copy
    model = Conv1DLike(150, 130)
    with torch.no_grad():
        tilefuse.compile(model, dump=tmp_path)(torch.randn(80, 150))
    text = _ein_after_pass(tmp_path)
    assert text.startswith("// kmajor-f32-weights did not run") and "ein.map" not in text.split("ein.contract")[0]
