"""tilefuse IR: the `ein` dialect, dtype utilities and the reference interpreter.

Imports nothing else of tilefuse.
"""

from .einsum import (
    ConcatOp,
    ConstantOp,
    ContractOp,
    Einsum,
    IotaOp,
    MapOp,
    ReduceOp,
    ScanOp,
    ViewOp,
    YieldOp,
    parse_spec,
)
from .interpreter import run_function, run_module
from .module import IRError, make_context, parse_module, print_module, verify

__all__ = [
    "ConcatOp",
    "ConstantOp",
    "ContractOp",
    "Einsum",
    "IRError",
    "IotaOp",
    "MapOp",
    "ReduceOp",
    "ScanOp",
    "ViewOp",
    "YieldOp",
    "make_context",
    "parse_module",
    "parse_spec",
    "print_module",
    "run_function",
    "run_module",
    "verify",
]
