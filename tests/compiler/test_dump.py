"""Dumps: files per graph, an index, MLIR that parses back, and the env-var switch."""

from __future__ import annotations

import json

import torch

import tilefuse
from tilefuse.benchmarks.models import LlamaBlock
from tilefuse.ir import parse_module


def test_dump_writes_every_stage_and_an_index(tmp_path):
    model = LlamaBlock(dim=32, heads=2, kv_heads=1, hidden=64)
    compiled = tilefuse.compile(model, dump=tmp_path)
    with torch.no_grad():
        compiled(torch.randn(1, 5, 32))
    index = json.loads((tmp_path / "index.json").read_text())
    (graph,) = index["graphs"]
    folder = tmp_path / graph["dir"]
    stages = ("dynamo_graph.py", "aten_graph.py", "partitioned.py", "ein.mlir", "ein.canonicalize.mlir",
              "ein.groups.mlir", "tile.mlir", "summary.json")
    for name in stages:
        assert (folder / name).is_file(), name
        assert name == "summary.json" or name in graph["files"]
    assert "aten.mm.default" in (folder / "aten_graph.py").read_text()
    module = parse_module((folder / "ein.mlir").read_text(), "ein.mlir")
    functions = [op.sym_name.data for op in module.ops]
    assert functions == [p["name"] for p in graph["partitions"]]
    (partition,) = graph["partitions"]
    kernels = [g["kernel"] for g in partition["groups"] if g["kernel"]]
    assert f"{len(kernels)} Triton kernel(s)" in partition["executor"]
    assert partition["ein_ops"]["ein.contract"] >= 7
    for kernel in kernels:
        assert f"kernels/{kernel}.py" in graph["files"]
        assert (folder / "kernels" / f"{kernel}.py").is_file()
    text = (tmp_path / "index.txt").read_text()
    assert f"graph {graph['name']}" in text and "Triton kernel(s)" in text


def test_env_var_turns_dumps_on(tmp_path, monkeypatch):
    monkeypatch.setenv("TILEFUSE_DUMP", str(tmp_path))
    compiled = torch.compile(lambda x: torch.sigmoid(x) * 2, backend="tilefuse")
    compiled(torch.randn(3))
    (graph,) = json.loads((tmp_path / "index.json").read_text())["graphs"]
    assert (tmp_path / graph["dir"] / "ein.mlir").is_file()


def test_two_graphs_share_one_index(tmp_path):
    first = tilefuse.compile(lambda x: x.exp() + 1, dump=tmp_path)
    second = tilefuse.compile(lambda x: x.tanh() * 2, dump=tmp_path)
    first(torch.randn(4))
    second(torch.randn(4))
    index = json.loads((tmp_path / "index.json").read_text())
    assert len({g["dir"] for g in index["graphs"]}) == 2


def test_a_lambda_dumps_under_a_name_a_shell_can_type(tmp_path):
    torch._dynamo.reset()
    compiled = tilefuse.compile(lambda x: torch.relu(x) * 2, dump=tmp_path)
    compiled(torch.randn(4, 5))
    (folder,) = [p.name for p in tmp_path.iterdir() if p.is_dir()]
    assert folder.startswith("lambda_") and folder.replace("_", "").isalnum(), folder
