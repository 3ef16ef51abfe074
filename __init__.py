"""tilefuse: a tensor compiler for PyTorch that fuses memory-bound work into GEMM kernels.

    import tilefuse

    @tilefuse.compile(dump="tilefuse_dump")
    def mlp(x, w1, w2):
        return torch.relu(x @ w1) @ w2

or `torch.compile(model, backend="tilefuse")`.
"""

from . import ir
from .compiler import TilefuseBackend, compile


def tune(fn, example_inputs, budget: int = 64, **options):
    """Tune the kernels tilefuse compiles for `fn(*example_inputs)`; see `tilefuse.autotune.job.tune`."""
    from .autotune.job import tune as run_job  # imports xgboost: only when a job runs

    return run_job(fn, example_inputs, budget, **options)


__version__ = "0.1.0"

__all__ = ["TilefuseBackend", "__version__", "compile", "ir", "tune"]
