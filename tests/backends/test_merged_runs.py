"""Runs of dims addressed by their flat index (`emit._KernelWriter._merged_runs`, `launcher.merge_flags`).

A kernel that unravels one flat index over several dims of a tensor takes a MERGE switch per run of
them; the launcher sets it where the dims nest in the tensor's layout. Checked against eager PyTorch
(Triton's interpreter) on random shapes and layouts that nest and that do not: contiguous, channels-last,
sliced, transposed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import tilefuse
from helpers import compile_and_compare, fusion_groups


def assert_one_row_kernel(reports) -> None:
    (group,) = fusion_groups(reports)
    assert group["kind"] == "row" and group["kernel"] is not None, group


def _pooled_relu(x):
    """A CNN's last block and pooler: the feature map and its mean over the spatial dims."""
    y = torch.relu(x * 1.5 + 0.25)
    return y, y.mean((-2, -1), keepdim=True)


def _kernel_source(compiled, tmp_path) -> str:
    (source,) = list((tmp_path / compiled.tilefuse_reports[0]["dir"] / "kernels").glob("*.py"))
    return source.read_text()


@settings(max_examples=6, deadline=None)
@given(
    b=st.integers(1, 3),
    c=st.integers(1, 9),
    h=st.integers(1, 7),
    w=st.integers(2, 7),
    layout=st.sampled_from(["nchw", "nhwc", "sliced"]),
)
def test_spatial_dims_addressed_by_their_flat_index_match_eager(b, c, h, w, layout):
    """A row kernel over [batch, channels, h, w] reads its columns (h, w) and rows (batch, channels)
    through one flat index each; where the dims nest in memory (NCHW, or the NHWC map's h and w) the
    launcher switches the address to that index, elsewhere (a slice along w) it stays per dim."""
    torch._dynamo.reset()  # one function, many static compiles: under Dynamo's recompile limit
    if layout == "nhwc":
        x = torch.randn(b, h, w, c).permute(0, 3, 1, 2)
    elif layout == "sliced":
        x = torch.randn(b, c, h, w + 3)[..., 1 : w + 1]
    else:
        x = torch.randn(b, c, h, w)
    assert_one_row_kernel(compile_and_compare(_pooled_relu, x, rtol=1e-5, atol=1e-6, dynamic=False))


def test_merge_switches_follow_the_layout(tmp_path):
    """The kernel names the (operand, dim) pairs it may address by a flat index; the launcher sets each
    switch where the two dims nest (NHWC's h and w do, its batch and channels do not; a slice's h and w
    do not)."""
    from tilefuse.backends.triton.launcher import dims_nest

    compiled = tilefuse.compile(_pooled_relu, dump=tmp_path)
    x = torch.randn(2, 5, 7, 6).permute(0, 3, 1, 2)  # [2, 6, 5, 7] stored NHWC
    with torch.no_grad():
        for got, want in zip(compiled(x), _pooled_relu(x)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    text = _kernel_source(compiled, tmp_path)
    assert "MERGED_DIMS = " in text and " if MERGE_" in text
    nhwc = x.stride()
    assert dims_nest(x.shape, nhwc, 2, 3) and not dims_nest(x.shape, nhwc, 0, 1)
    sliced = torch.randn(2, 6, 5, 9)[..., 1:8]
    assert not dims_nest(sliced.shape, sliced.stride(), 2, 3) and dims_nest(
        sliced.shape, sliced.stride(), 0, 1
    )
    assert dims_nest((2, 1, 5, 7), (35, 1, 7, 1), 1, 3)  # a dim of one never moves the address


def _scaled_gelu(x, y):
    return F.gelu(x) * y + 1.0


@settings(max_examples=8, deadline=None)
@given(
    shape=st.lists(st.integers(1, 7), min_size=3, max_size=4),
    layout=st.sampled_from(["contiguous", "channels_last", "sliced", "transposed"]),
)
def test_flat_pointwise_kernels_address_nesting_runs_by_the_flat_index(shape, layout):
    """A flat pointwise kernel unravels its index over every output dim; where an operand's dims
    nest (a contiguous tensor: all of them; a permuted one: the runs it keeps in order), the launcher
    switches its address to the flat index; a slice or a transpose keeps the per-dim address for the
    dims that do not nest. Checked against eager on each layout."""
    torch._dynamo.reset()  # one function, many static compiles: under Dynamo's recompile limit
    x = torch.randn(shape)
    if layout == "channels_last":
        x = torch.randn([shape[0], *shape[2:], shape[1]]).movedim(-1, 1)
    elif layout == "sliced":
        x = torch.randn([*shape[:-1], shape[-1] + 2])[..., 1:-1]
    elif layout == "transposed":
        x = torch.randn(list(reversed(shape))).permute(*reversed(range(len(shape))))
    y = torch.randn(shape)
    compile_and_compare(_scaled_gelu, x, y, rtol=1e-5, atol=1e-5, dynamic=False)
