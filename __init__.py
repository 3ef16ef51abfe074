"""tilefuse: a tensor compiler for PyTorch that fuses memory-bound work into GEMM kernels.

    import tilefuse

    @tilefuse.compile(dump="tilefuse_dump")
    def mlp(x, w1, w2):
        return torch.relu(x @ w1) @ w2

or `torch.compile(model, backend="tilefuse")` (its graphs' reports: `tilefuse.reports()`).

Importing tilefuse imports neither Dynamo, xDSL, Triton nor XGBoost: `compile`,
`TilefuseBackend` and `ir` are loaded on first use, so that the command line
starts quickly.
"""

import importlib

from .compiler import register_dynamo_backend

__version__ = "0.1.0"

_LAZY = {
    "compile": "compiler.api",
    "TilefuseBackend": "compiler.backend",
    "reports": "compiler.backend",
    "parameters_changed": "compiler.program",
}


def __getattr__(name: str):
    if name == "ir":
        return importlib.import_module(".ir", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def tune(fn, example_inputs, budget: int = 64, **options):
    """Tune the kernels tilefuse compiles for `fn(*example_inputs)`; see `tilefuse.compiler.tuning.tune`."""
    from .compiler.tuning import tune as run_job

    return run_job(fn, example_inputs, budget, **options)


register_dynamo_backend()

__all__ = ["TilefuseBackend", "__version__", "compile", "ir", "parameters_changed", "reports", "tune"]
