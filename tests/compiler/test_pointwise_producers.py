"""Pointwise producers read only by one map, through views and concatenations, are recomputed in
its kernel (Inductor's inlining): RoPE's backward, a product sliced in halves, one half negated and
the halves concatenated with zeros, was five kernels and four intermediate buffers a layer."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from helpers import compile_and_compare, fusion_groups


def _rope_backward(grad, sin, cos):
    """What AOTAutograd writes for the gradient of q * cos + rotate_half(q) * sin."""
    d = grad.shape[-1] // 2
    g = grad * sin
    first, second = g[..., :d], g[..., d:]
    zeros = torch.zeros_like(g)
    upper = torch.cat([zeros[..., :d], -first], dim=-1)
    lower = torch.cat([second, zeros[..., d:]], dim=-1)
    return upper + lower + grad * cos


@pytest.mark.parametrize("shape", [(2, 4, 16, 16), (3, 5, 7, 10)], ids=str)  # the second: no tile divides it
def test_rope_backward_is_one_pointwise_kernel(shape):
    grad = torch.randn(shape)
    sin, cos = torch.randn(shape[-2:]), torch.randn(shape[-2:])
    reports = compile_and_compare(_rope_backward, grad, sin, cos, rtol=1e-5, atol=1e-5)
    groups = fusion_groups(reports)
    assert [g["kind"] for g in groups] == ["pointwise"] and groups[0]["kernel"], groups


def test_a_producer_read_elsewhere_too_keeps_its_kernel():
    """A producer another op reads (here: returned) is written once and read back, not recomputed."""

    def f(x):
        y = torch.sigmoid(x)
        return y, torch.cat([y[:, 1:], y[:, :1]], dim=1) * 2

    reports = compile_and_compare(f, torch.randn(9, 13), rtol=1e-5, atol=1e-5)
    assert [g["kind"] for g in fusion_groups(reports)] == ["pointwise", "pointwise"]


def test_a_producer_larger_than_its_reader_keeps_its_kernel():
    """A producer read in part (a slice of a quarter of it), and by a second reader too, is not
    recomputed by every program; read only there, it is computed only for that part."""

    def f(x):
        y = torch.exp(x)
        return y[:4] + 1, y * 2

    reports = compile_and_compare(f, torch.randn(16, 33), rtol=1e-5, atol=1e-5)
    assert len(fusion_groups(reports)) == 3  # exp written once, read by both
    reports = compile_and_compare(lambda x: torch.exp(x)[:4] + 1, torch.randn(16, 33), rtol=1e-5, atol=1e-5)
    (group,) = fusion_groups(reports)
    assert group["kind"] == "pointwise"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens, width", [(7, 10), (33, 46)])
def test_a_producer_split_into_halves_is_computed_by_their_reader(dtype, tokens, width):
    """Mixtral's experts: a routing mask over the experts' first product, split into the gate and
    the up halves before SiLU. Each half is read once and the halves do not overlap: one kernel
    computes the mask where the SiLU reads it (the masked product is not written). Two readers that
    overlap keep the producer's kernel."""

    def experts(gate_up, keep):
        gate, up = torch.where(keep[:, None], 0.0, gate_up).chunk(2, dim=-1)
        return F.silu(gate) * up

    gate_up, keep = torch.randn(tokens, 2 * width).to(dtype), torch.rand(tokens) < 0.3
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    (group,) = fusion_groups(compile_and_compare(experts, gate_up, keep, rtol=tol, atol=tol))
    assert group["kind"] == "pointwise"

    def overlapping(x):
        y = torch.tanh(torch.exp(x))
        return y[:, : width + 2] + y[:, width - 2 :]

    reports = compile_and_compare(overlapping, torch.randn(tokens, 2 * width), rtol=1e-5, atol=1e-5)
    assert len(fusion_groups(reports)) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chained_producers_through_permutes_and_reshapes(dtype):
    def f(x, b):
        y = (x * 3).permute(0, 2, 1)  # a producer read transposed
        z = torch.tanh(y + b).reshape(x.shape[0], -1)  # a second one read through a reshape
        return z.flip(-1) - 1

    x, b = torch.randn(3, 11, 6).to(dtype), torch.randn(11).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    reports = compile_and_compare(f, x, b, rtol=tol, atol=tol)
    assert len(fusion_groups(reports)) == 1


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: CUDA kernels cannot run on CPU")
def test_the_cuda_backend_writes_the_recomputed_producers_too():
    """The same kernel in CUDA C++ (run on CPU threads here): the producers' loads and bodies are
    tile ops like any other."""
    grad = torch.randn(3, 5, 7, 10)
    sin, cos = torch.randn(7, 10), torch.randn(7, 10)
    reports = compile_and_compare(_rope_backward, grad, sin, cos, rtol=1e-5, atol=1e-5, backend="cuda")
    (group,) = fusion_groups(reports)
    assert group["backend"] == "cuda", group


def _silu_gradients(gate, up, grad, w):
    """SwiGLU's backward as AOTAutograd writes it: the gate's and the up projection's gradients are
    two maps reading the same tensors, with a product of the first between them."""
    sig = torch.sigmoid(gate.float())
    d_up = (grad.float() * gate.float() * sig).to(gate.dtype)
    hidden = d_up @ w  # the first map's reader, before the second map
    d_gate = (grad.float() * up.float() * sig * (1 + gate.float() * (1 - sig))).to(gate.dtype)
    return hidden, d_gate


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [16, 37])  # 37: no tile divides it
def test_sibling_maps_reading_the_same_tensors_are_one_kernel(dtype, tokens):
    """Pointwise groups of one shape with a tensor in common are one kernel writing both results
    (fusion_groups._merge_sibling_pointwise); the second runs at the first's place, before the GEMM
    that reads the first's result."""
    gate, up, grad = (torch.randn(tokens, 24, dtype=dtype) for _ in range(3))
    w = torch.randn(24, 8, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    reports = compile_and_compare(_silu_gradients, gate, up, grad, w, rtol=tol, atol=tol)
    kinds = [g["kind"] for g in fusion_groups(reports)]
    assert kinds.count("pointwise") == 1 and kinds.count("gemm") == 1, kinds


def test_a_map_reading_its_siblings_result_is_not_its_sibling():
    def f(x, y):
        a = x * y
        return a, (a + y).relu() * x

    reports = compile_and_compare(f, torch.randn(7, 9), torch.randn(7, 9), rtol=1e-5, atol=1e-5)
    # `a` is returned, so it is written; the map reading it is no sibling of the one computing it
    assert [g["kind"] for g in fusion_groups(reports)] == ["pointwise", "pointwise"]


def test_a_map_reading_its_siblings_result_through_a_view_is_not_its_sibling():
    """Falcon's rotated key: returned (the cache) and read transposed and upcast by the attention.
    A small sibling (another cast) merged with the first map, then the transposed read joined them:
    one kernel read its own output, and the partition failed at its first run (a helper's sweep)."""

    def f(k, v, cos):
        a = k * cos
        return a, v.float(), a.transpose(-1, -2).float()

    args = [torch.randn(2, 16, 16, dtype=torch.bfloat16) for _ in range(3)]
    reports = compile_and_compare(f, *args, rtol=1e-5, atol=1e-5)
    assert all("runtime_error" not in p for r in reports for p in r["partitions"]), reports
    groups = fusion_groups(reports)
    assert len(groups) == 2 and all(g["kernel"] for g in groups), groups


def test_a_group_that_would_read_its_own_result_gets_no_kernel(monkeypatch):
    """Defence in depth: were such a group formed (the merge rule above undone), its lowering says
    why it has no kernel and its ops run in PyTorch, instead of the partition failing at run time."""
    from tilefuse.passes import fusion_groups as passes_fusion

    monkeypatch.setattr(passes_fusion, "_through_views", lambda values: set())
    monkeypatch.setenv("TILEFUSE_CACHE", "0")  # the same graph compiled right is cached

    def f(k, v, cos):
        a = k * cos
        return a, v.float(), a.transpose(-1, -2).float()

    args = [torch.randn(2, 16, 16, dtype=torch.bfloat16) for _ in range(3)]
    reports = compile_and_compare(f, *args, rtol=1e-5, atol=1e-5, allow_fallbacks=True)
    assert all("runtime_error" not in p for r in reports for p in r["partitions"]), reports
    (group,) = fusion_groups(reports)
    assert "would read a value it writes" in group["not_a_kernel_because"], group


@pytest.mark.parametrize("shape", [(2, 6, 9, 11), (4, 32, 20, 24)], ids=str)
def test_a_producer_two_merged_siblings_read_is_recomputed_in_their_kernel(shape):
    """A training graph's ReLU output and its backward's mask read one producer (a convolution's
    result, copied back from NHWC with its bias); neither sibling takes it in alone, and once they
    are one kernel it is recomputed there: one kernel writing both, nothing written in between.
    The second shape is large enough for the 2-d tiles of the NHWC read."""
    bias, extra = torch.randn(shape[1], 1, 1), torch.randn(shape[1], 1, 1)

    def f(nhwc):
        y = nhwc.permute(0, 3, 1, 2).contiguous() + bias
        return torch.relu(y) + extra, torch.relu(y) <= 0

    nhwc = torch.randn(shape[0], *shape[2:], shape[1])
    reports = compile_and_compare(f, nhwc, rtol=1e-5, atol=1e-5)
    groups = fusion_groups(reports)
    assert [g["kind"] for g in groups] == ["pointwise"] and groups[0]["kernel"], groups


def test_a_producer_also_returned_is_not_absorbed_into_its_readers():
    """Returned, `y` is written anyway: its kernel stays, and the two siblings reading it are one."""

    def f(x):
        y = torch.sigmoid(x) * 2
        return y, torch.relu(y) + 1, torch.relu(y) <= 0.5

    reports = compile_and_compare(f, torch.randn(9, 13), rtol=1e-5, atol=1e-5)
    assert [len(g["ops"]) for g in fusion_groups(reports)] == [1, 2]


def _running_statistics(means, variances, running, x, y):
    """Per-channel updates with no tensor in common (a training BatchNorm's running statistics, layer
    after layer), and two large independent maps beside them."""
    out = [r * 0.9 + m * 0.1 for r, m in zip(running, means)]
    out += [r * 0.9 + v * (0.1 * 1.0001) for r, v in zip(running, variances)]
    return (*out, x * 2 + 1, y.relu())


@pytest.mark.parametrize("channels", [64, 37])  # 37: no tile divides it
def test_small_maps_without_a_tensor_in_common_share_a_kernel_and_large_ones_do_not(channels):
    """Maps of a small shape (`SMALL_SIBLING` elements) cost their launch: up to `MAX_SIBLINGS`
    groups become one kernel though they read nothing in common. Large maps with nothing in common
    stay apart (merging them saves a launch and shares no load)."""
    from tilefuse.passes.fusion_groups import MAX_SIBLINGS, SMALL_SIBLING

    layers = 5
    means, variances, running = ([torch.randn(channels) for _ in range(layers)] for _ in range(3))
    x, y = torch.randn(SMALL_SIBLING + 1), torch.randn(SMALL_SIBLING + 1)
    reports = compile_and_compare(_running_statistics, means, variances, running, x, y, rtol=1e-5, atol=1e-5)
    groups = fusion_groups(reports)
    assert all(g["kind"] == "pointwise" and g["kernel"] for g in groups), groups
    # ten updates: kernels of at most MAX_SIBLINGS groups each; the large maps one each
    assert len(groups) == 2 + -(-2 * layers // MAX_SIBLINGS), [g["ops"] for g in groups]
