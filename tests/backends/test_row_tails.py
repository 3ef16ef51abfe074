"""A GEMM reads its operands' padded rows to their rounded end (ROW_TAILS) along M or N, never K.

The rows of a GEMM operand whose last dim is M (the `a` operand read transposed: GPT-2's LM-head weight
gradient reads the log-softmax gradient so) or N, of an extent that is not a multiple of 16, are read
to the next multiple of 16 where the launcher finds them padded (`launcher.row_tails_fit`): the mask is
then constant over 16 bytes and the loads are vectors. What the tail holds only reaches output rows or
columns beyond the output. The oracle is eager PyTorch, on operands whose padding holds NaN.
"""

import pytest
import torch

import tilefuse
from tilefuse.backends.triton import launcher
from tilefuse.backends.triton.emit import row_tail
from tilefuse.backends.triton.precompile import compile_job


def _padded(rows: int, cols: int, stride: int, fill: float = float("nan")) -> torch.Tensor:
    """A [rows, cols] tensor of normal values whose rows start `stride` apart, the padding `fill`,
    the storage running to the end of the last row's padding (as the program allocates them)."""
    storage = torch.full((rows * stride,), fill)
    out = storage.as_strided((rows, cols), (stride, 1))
    out.copy_(torch.randn(rows, cols))
    return out


@pytest.fixture
def decisions(monkeypatch):
    """Every ROW_TAILS decision a launch makes, in order."""
    seen = []
    original = launcher.tail_flags

    def recording(kernel, tensors):
        flags = original(kernel, tensors)
        seen.extend(flags.values())
        return flags

    monkeypatch.setattr(launcher, "tail_flags", recording)
    return seen


def _kernel_sources(tmp_path) -> str:
    return "\n".join(p.read_text() for p in sorted(tmp_path.glob("*/kernels/*.py")))


@pytest.mark.parametrize("m", [301, 37 * 8 + 3, 257])
def test_a_transposed_operand_with_padded_rows_is_read_to_its_tail(tmp_path, decisions, m):
    """C[m, n] = g^T @ x + e with g's rows (the M dim) padded and NaN in the padding: the kernel reads
    the tail (ROW_TAILS decided on), and the result is eager's."""
    torch.manual_seed(m)
    stride = -(-m // 32) * 32
    g, x, e = _padded(24, m, stride), torch.randn(24, 40), torch.randn(m, 40)

    def fn(g, x, e):
        return g.t() @ x + e

    got = tilefuse.compile(fn, dump=tmp_path)(g, x, e)
    torch.testing.assert_close(got, fn(g, x, e), rtol=1e-4, atol=1e-4)
    source = _kernel_sources(tmp_path)
    assert f"{row_tail(m)} if ROW_TAILS_0 else {m}" in source
    assert decisions and all(decisions)


def test_the_n_operand_with_padded_rows_is_read_to_its_tail(tmp_path, decisions):
    """C = x @ w with w [K, N = 301] padded: its columns (N) are read to the tail; eager's result."""
    torch.manual_seed(1)
    x, w = torch.randn(19, 48), _padded(48, 301, 320)

    def fn(x, w):
        return torch.relu(x @ w)

    got = tilefuse.compile(fn, dump=tmp_path)(x, w)
    torch.testing.assert_close(got, fn(x, w), rtol=1e-4, atol=1e-4)
    assert "304 if ROW_TAILS_1 else 301" in _kernel_sources(tmp_path)
    assert decisions and all(decisions)


def test_packed_operands_keep_the_exact_bound(tmp_path, decisions):
    """The same kernel on a packed operand (rows 301 apart: the tail would be the next row) decides
    against the tail and stays eager's result."""
    torch.manual_seed(2)
    g, x = torch.randn(24, 301), torch.randn(24, 40)
    got = tilefuse.compile(lambda g, x: g.t() @ x, dump=tmp_path)(g, x)
    torch.testing.assert_close(got, g.t() @ x, rtol=1e-4, atol=1e-4)
    assert "ROW_TAILS" in _kernel_sources(tmp_path)
    assert decisions and not any(decisions)


def test_the_reduction_dim_is_never_read_past_its_end(tmp_path):
    """K = 301 along a padded operand's rows: a tail there would add NaN * 0 to every output; the
    kernel keeps K's exact mask (no ROW_TAILS) and the result is finite and eager's."""
    torch.manual_seed(3)
    a, w = _padded(19, 301, 320), torch.randn(301, 40)
    got = tilefuse.compile(lambda a, w: a @ w, dump=tmp_path)(a, w)
    assert got.isfinite().all()
    torch.testing.assert_close(got, a @ w, rtol=1e-4, atol=1e-4)
    assert "ROW_TAILS" not in _kernel_sources(tmp_path)


def test_an_epilogue_reduction_over_the_columns_keeps_exact_masks(tmp_path):
    """A GEMM whose epilogue sums its rows (softmax over N = 301): tail columns would enter the sum, so
    such a GEMM has no ROW_TAILS (a row kernel reading its output selects over the tail); NaN padding
    in w stays out and the result is eager's."""
    torch.manual_seed(4)
    x, w = torch.randn(19, 48), _padded(48, 301, 320)

    def fn(x, w):
        return torch.softmax(x @ w, -1)

    got = tilefuse.compile(fn, dump=tmp_path)(x, w)
    torch.testing.assert_close(got, fn(x, w), rtol=1e-4, atol=1e-4)
    for path in tmp_path.glob("*/kernels/*.py"):
        text = path.read_text()
        if "(gemm)" in text and ("tl.sum" in text or "tl.max" in text):
            assert "ROW_TAILS" not in text
        elif "(gemm)" not in text and "ROW_TAILS" in text:  # a row kernel reading the padded product
            assert "tl.where(" in text


def test_row_tails_fit_only_where_the_storage_holds_the_rounded_rows():
    padded = _padded(4, 301, 320)
    assert launcher.row_tails_fit([padded])
    assert launcher.row_tails_fit([torch.zeros(4, 320)[:, :301]])  # a view of wider rows
    assert launcher.row_tails_fit([torch.zeros(4, 320)[:, 16:317]])  # offset, the tail still inside
    assert not launcher.row_tails_fit([torch.zeros(4, 320)[:, 19:320]])  # the last row's tail past the end
    assert not launcher.row_tails_fit([torch.zeros(4, 301)])  # packed: the tail is the next row
    short = torch.empty_strided((4, 301), (320, 1))  # storage ends at the last element
    assert not launcher.row_tails_fit([short])
    assert not launcher.row_tails_fit([torch.zeros(301, 320).t()])  # unit stride on the other dim
    assert not launcher.row_tails_fit([torch.zeros(320).expand(4, 320)[:, :301]])  # rows overlap
    assert not launcher.row_tails_fit([padded, torch.zeros(4, 301)])  # every operand must fit


def test_a_precompile_job_decides_row_tails_as_the_launch_does(tmp_path):
    """The ahead-of-time compile job takes ROW_TAILS from the strides it is given: padded rows on,
    packed (no strides) off, so the binary it builds is the one the launch asks for."""
    torch.manual_seed(5)
    g, x = _padded(24, 301, 320), torch.randn(24, 40)
    tilefuse.compile(lambda g, x: g.t() @ x, dump=tmp_path)(g, x)
    (path,) = [p for p in tmp_path.glob("*/kernels/*.py") if "ROW_TAILS" in p.read_text()]
    kernel = launcher.load(path.read_text(), path.read_text().split("def ")[1].split("(")[0])
    assert kernel.row_tail_tensors == (0,)
    config = {p: 16 for p in kernel.params}
    strides = [(320, 1), (40, 1), (40, 1)]
    assert dict(compile_job(kernel, config, 4, 2, False, strides).constexprs)["ROW_TAILS_0"] is True
    assert dict(compile_job(kernel, config, 4, 2, False).constexprs)["ROW_TAILS_0"] is False


@pytest.mark.parametrize("n", [301, 50 * 16 + 9])
def test_a_row_kernel_reads_padded_rows_whole_and_selects_over_the_tail(tmp_path, decisions, n):
    """A softmax and a log-softmax over rows held 16-element aligned with NaN in the padding: the row
    kernel loads the tail (vectors) and selects its `other` over it, so the max and the sum see only
    the row; eager's results."""
    torch.manual_seed(n)
    x = _padded(6, n, row_tail(n) + 16)

    def fn(x):
        return torch.softmax(x * 2, -1), torch.log_softmax(x, -1).sum(-1)

    got = tilefuse.compile(fn, dump=tmp_path)(x)
    for g, e in zip(got, fn(x)):
        assert g.isfinite().all()
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    source = _kernel_sources(tmp_path)
    assert f"{row_tail(n)} if ROW_TAILS_0 else {n}" in source and "tl.where(" in source
    assert decisions and all(decisions)


def test_an_lm_loss_reads_the_padded_logits_through_tails(tmp_path, decisions):
    """The logits of an odd vocabulary, a GEMM's padded output, are read by the loss's row kernels
    through their tails (the program's buffer holds the last row's padding); a row kernel's padded
    output is stored to its row stride. Eager's loss and gradient rows."""
    torch.manual_seed(7)
    h, w, y = torch.randn(12, 32), torch.randn(301, 32), torch.randint(0, 301, (12,))

    def fn(h, w, y):
        logits = h @ w.t()
        p = torch.softmax(logits, -1)
        return torch.nn.functional.cross_entropy(logits, y), p @ w

    got = tilefuse.compile(fn, dump=tmp_path)(h, w, y)
    for g, e in zip(got, fn(h, w, y)):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    assert "304 if ROW_TAILS_" in _kernel_sources(tmp_path)
    assert any(decisions)


def test_a_later_input_without_the_tail_runs_pytorch_instead(tmp_path):
    """The program reads a padded input's tail as its first call allowed; a later input of the same
    strides whose storage ends at its last element fails the program's guard (the captured PyTorch code
    runs it), and every call is eager's."""
    torch.manual_seed(8)
    x = torch.randn(24, 40)

    def fn(g, x):
        return g.t() @ x

    compiled = tilefuse.compile(fn, dump=tmp_path)
    first = _padded(24, 301, 320)
    torch.testing.assert_close(compiled(first, x), fn(first, x), rtol=1e-4, atol=1e-4)
    (program,) = tmp_path.glob("*/program_*.py")
    assert "untyped_storage().nbytes()" in program.read_text()
    short = torch.empty_strided((24, 301), (320, 1))
    short.copy_(torch.randn(24, 301))
    assert not launcher.row_tails_fit([short])
    torch.testing.assert_close(compiled(short, x), fn(short, x), rtol=1e-4, atol=1e-4)
