"""Entry points, FX → `ein` import, the compile driver, runtime and dumps."""

from torch._dynamo import register_backend

from .api import compile
from .backend import TilefuseBackend, tilefuse_backend

try:
    register_backend(tilefuse_backend, name="tilefuse")
except AssertionError:  # already registered through the torch_dynamo_backends entry point
    pass

__all__ = ["TilefuseBackend", "compile", "tilefuse_backend"]
