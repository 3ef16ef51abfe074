"""Fixtures shared by all tests: a fixed seed and a fresh Dynamo cache per test."""

import pytest
import torch
import torch._dynamo


@pytest.fixture(autouse=True)
def _fresh_state():
    torch.manual_seed(0)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
