"""A partition's report names every op it runs outside a generated kernel, with the reason."""

from __future__ import annotations

import torch

import tilefuse
from tilefuse.compiler.inspect import summarize


def _partition(compiled) -> dict:
    (report,) = compiled.tilefuse_reports
    (partition,) = report["partitions"]
    return partition


def test_an_op_no_group_takes_is_named_with_its_reason(tmp_path):
    compiled = tilefuse.compile(lambda x, w: torch.cat([x @ w, x], 1).sum(1), dump=tmp_path)
    x, w = torch.randn(8, 16), torch.randn(16, 16)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, w), torch.cat([x @ w, x], 1).sum(1))
    partition = _partition(compiled)
    assert partition["glue_ops"] == [
        {"op": "ein.concat", "reason": "no fusion group takes ein.concat "
         "(kernels are built from contractions, maps and reductions)"}
    ]  # fmt: skip
    assert partition["executor"].endswith("on the ein reference interpreter (PyTorch ops; not a generated "
                                          "kernel): ein.concat")  # fmt: skip
    assert "    outside kernels: ein.concat: no fusion group takes ein.concat" in summarize(tmp_path)


def test_grad_mode_names_the_view_saved_for_backward():
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
