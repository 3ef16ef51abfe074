"""benchmarks/kernel_profile.py's tables (the GPU run itself needs a GPU): events summed by kernel name
a call, the decode step as the difference of two calls, and the command's clear errors."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from tilefuse.benchmarks import kernel_profile

CUDA, CPU = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU


def _event(name: str, us: float, device=CUDA):
    return SimpleNamespace(name=name, device_time=us, device_type=device)


def test_kernels_are_summed_by_name_per_call_largest_first():
    events = [_event("gemm_a", 10), _event("row_b", 3), _event("gemm_a", 14), _event("aten::mm", 99, CPU)]
    table = kernel_profile.kernel_table(events, calls=2)
    assert list(table) == ["gemm_a", "row_b"]
    assert table["gemm_a"] == (12.0, 1.0) and table["row_b"] == (1.5, 0.5)
    text = kernel_profile.render("x", table, top=1)
    assert text.splitlines()[0] == "== x: 13.5 us of GPU a call, 1.5 launches" and "row_b" not in text


def test_a_decode_step_is_the_longer_calls_excess():
    long = {"gemm": (650.0, 65.0), "argmax": (66.0, 66.0), "prefill": (100.0, 1.0)}
    short = {"gemm": (10.0, 1.0), "argmax": (2.0, 2.0), "prefill": (100.0, 1.0)}
    step = kernel_profile.difference(long, short, 64)
    assert step["gemm"] == (10.0, 1.0) and step["argmax"] == (1.0, 1.0) and step["prefill"] == (0.0, 0.0)
    assert list(step)[0] == "gemm"


def test_the_command_says_what_it_needs(capsys, monkeypatch):
    assert kernel_profile.main(["--model", "no-such-model"]) == 2
    assert "no model 'no-such-model'" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert kernel_profile.main(["--what", "decode"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
