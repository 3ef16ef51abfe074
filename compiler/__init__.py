"""Entry points, FX → `ein` import, the compile driver, runtime and dumps.

`compile`, `TilefuseBackend` and `tilefuse_backend` are loaded on first use: they
import Dynamo, which takes a second, and the command line needs none of them.
"""

import importlib
from importlib.metadata import entry_points

_LAZY = {"compile": "api", "TilefuseBackend": "backend", "tilefuse_backend": "backend"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_dynamo_backend() -> None:
    """Make `torch.compile(..., backend="tilefuse")` find tilefuse.

    An installed tilefuse declares the "tilefuse" torch_dynamo_backends entry point, which
    Dynamo loads on first use: registering here too would collide, and would import Dynamo
    at `import tilefuse`. Without the entry point (sources on sys.path only), register here.
    """
    if "tilefuse" in entry_points(group="torch_dynamo_backends").names:
        return
    from torch._dynamo import register_backend

    from .backend import tilefuse_backend

    try:
        register_backend(tilefuse_backend, name="tilefuse")
    except AssertionError:  # registered already
        pass


__all__ = ["TilefuseBackend", "compile", "register_dynamo_backend", "tilefuse_backend"]
