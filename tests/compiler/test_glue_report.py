"""A partition's report names every op it runs outside a generated kernel, with the reason."""

from __future__ import annotations

import torch

import tilefuse
from tilefuse.compiler.inspect import summarize


def _partition(compiled) -> dict:
    (report,) = compiled.tilefuse_reports
    (partition,) = report["partitions"]
    return partition


def test_an_op_outside_the_kernels_is_named_with_its_reason(tmp_path):
    """A concatenation the partition returns is materialized for its caller; one a GEMM reads is
    copied by a kernel, and one a reduction reads is read in place by that kernel: neither is glue."""

    def fn(x, w):
        joined = torch.cat([x * 2, x], 1)
        reduced = (torch.cat([x @ w, x], 1) @ w.repeat(2, 1)).sum(1) + torch.cat([x, x], 1).sum(1)
        return reduced, joined

    compiled = tilefuse.compile(fn, dump=tmp_path)
    x, w = torch.randn(8, 16), torch.randn(16, 16)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, w), fn(x, w), rtol=1e-4, atol=1e-4)
    partition = _partition(compiled)
    reason = "ein.concat is a result of the partition (for the caller, or saved for backward): materialized"
    assert [g for g in partition["glue_ops"] if g["op"] == "ein.concat"] == [{"op": "ein.concat", "reason": reason}]
    assert partition["executor"].endswith("ein.concat")
    assert f"    outside kernels: ein.concat: {reason}" in summarize(tmp_path)


def test_grad_mode_names_the_view_saved_for_backward(monkeypatch):
    """AOTAutograd's default partition saves the first layer's output view for the backward (the
    min-cut partition recomputes it there instead): a view materialized for it is named."""
    monkeypatch.setenv("TILEFUSE_PARTITIONER", "default")
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    compiled = tilefuse.compile(model)
    compiled(torch.randn(4, 16)).sum().backward()
    partition = _partition(compiled)
    glue = partition["glue_ops"]
    assert glue and all(g["op"] and g["reason"] for g in glue)
    assert any("saved for backward" in g["reason"] for g in glue)
    assert f"+ {len(glue)} op(s)" in partition["executor"]
    assert all(g["op"] in partition["executor"] for g in glue)


def test_a_compiled_partition_without_glue_says_so():
    compiled = tilefuse.compile(lambda x, w: torch.relu(x @ w))
    with torch.no_grad():
        compiled(torch.randn(8, 16), torch.randn(16, 8))
    partition = _partition(compiled)
    assert partition["glue_ops"] == [] and "reference interpreter" not in partition["executor"]
