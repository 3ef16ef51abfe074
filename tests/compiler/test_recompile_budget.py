"""Every `tilefuse.compile` call has its own recompile budget.

Dynamo keeps the compiled entries of a code object in one list and stops compiling it once that list
holds `recompile_limit` (8) entries, whoever compiled them. Each `tilefuse.compile` brings a backend
of its own, and every `transformers` model's `forward` runs through one decorator's code, so the ninth
model compiled in a process ran in eager PyTorch, and so did every one after it. On a torch with
`isolate_recompiles` (2.13) each call gets it; on one without (the GPU image's 2.11) Dynamo's limit
grows with the number of compile calls.
"""

from __future__ import annotations

import torch

import tilefuse
from tilefuse.compiler import api

CALLS = 10  # past Dynamo's default limit of 8


def shared(x):  # one code object for every compile below
    return torch.relu(x) * 2 + x.sum(-1, keepdim=True)


def compile_many(calls: int = CALLS) -> None:
    for i in range(calls):
        compiled = tilefuse.compile(shared)
        x = torch.randn(3, 5)
        torch.testing.assert_close(compiled(x), shared(x))
        reports = compiled.tilefuse_reports
        assert len(reports) == 1, f"compile {i}: ran in PyTorch, not compiled (Dynamo's recompile limit?)"
        assert reports[0]["partitions"], f"compile {i}: no partition compiled"


def test_each_compile_call_compiles_past_dynamos_recompile_limit():
    compile_many()


def test_without_isolated_recompiles_the_limit_grows_with_compile_calls(monkeypatch):
    real = torch.compile

    def compile_without_isolation(model=None, *, fullgraph=False, dynamic=None, backend="inductor",
                                  mode=None, options=None, disable=False):  # fmt: skip
        return real(model, fullgraph=fullgraph, dynamic=dynamic, backend=backend, mode=mode, options=options,
                    disable=disable)  # fmt: skip

    monkeypatch.setattr(torch, "compile", compile_without_isolation)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)
    monkeypatch.setitem(api._budget, "calls", 0)
    monkeypatch.setitem(api._budget, "per_call", None)
    compile_many()
    assert torch._dynamo.config.recompile_limit == 8 * CALLS
    assert api._budget["calls"] == CALLS


def test_one_compile_call_keeps_dynamos_limit(monkeypatch):
    """A single compiled function recompiling for every new shape (dynamic=False) still stops at the
    limit it had: the budget is per compile call, not a larger one for everyone."""
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 2)
    compiled = tilefuse.compile(shared, dynamic=False)
    for n in (3, 4, 5):
        x = torch.randn(2, n)
        torch.testing.assert_close(compiled(x), shared(x))
    assert len(compiled.tilefuse_reports) == 2  # the third shape ran in PyTorch, as Dynamo decides


def test_without_isolated_recompiles_the_limit_stops_at_dynamos_cap(monkeypatch):
    monkeypatch.setattr(api.inspect, "signature", lambda f: type("S", (), {"parameters": {}})())
    monkeypatch.setitem(api._budget, "calls", 0)
    monkeypatch.setitem(api._budget, "per_call", None)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)
    monkeypatch.setattr(torch._dynamo.config, "accumulated_recompile_limit", 20)
    assert [api._own_recompile_budget() for _ in range(3)] == [{}, {}, {}]
    assert torch._dynamo.config.recompile_limit == 20  # 8 x 3, capped by the accumulated limit
