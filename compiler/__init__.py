"""Entry points, FX → `ein` import, the compile driver, runtime and dumps."""

from importlib.metadata import entry_points

from torch._dynamo import register_backend

from .api import compile
from .backend import TilefuseBackend, tilefuse_backend

# An installed tilefuse declares the "tilefuse" torch_dynamo_backends entry point, which Dynamo
# loads (importing this module) and registers itself on first use: registering here too would
# collide. Without the entry point (sources on sys.path only), register here.
if "tilefuse" not in entry_points(group="torch_dynamo_backends").names:
    try:
        register_backend(tilefuse_backend, name="tilefuse")
    except AssertionError:  # registered already
        pass

__all__ = ["TilefuseBackend", "compile", "tilefuse_backend"]
