"""Fixtures shared by all tests: a fixed seed and a fresh Dynamo cache per test."""

import pytest
import torch
import torch._dynamo


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Compiled-graph cache entries and tuning records of the test run stay in a temporary folder."""
    patch = pytest.MonkeyPatch()
    patch.setenv("TILEFUSE_CACHE_DIR", str(tmp_path_factory.mktemp("tilefuse-cache")))
    patch.setenv("TILEFUSE_TUNING_DB", str(tmp_path_factory.mktemp("tilefuse-tuning") / "tuning.db"))
    # without CUDA a compiled graph runs as PyTorch unless asked: the tests run the generated kernels
    patch.setenv("TILEFUSE_INTERPRET", "1")
    # debug mode: the module is verified after every pass, so a test names the pass that broke it
    patch.setenv("TILEFUSE_VERIFY_EACH", "1")
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _fresh_state():
    torch.manual_seed(0)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
