"""Runtime: what runs a compiled partition when the graph is called.

Until tile kernels exist, a compiled partition is executed by the `ein`
reference interpreter. It is named as such everywhere (here, in the dump,
in `executor`), because it is an oracle, not a generated kernel.
"""

from __future__ import annotations

import torch
from xdsl.dialects import func

from ..ir.interpreter import run_function

REFERENCE_EXECUTOR = "ein reference interpreter (PyTorch ops; not a generated kernel)"


class ReferencePartition(torch.nn.Module):
    """A compiled partition run by the reference interpreter.

    Returns what the replaced FX submodule returned: one tensor, or a tuple
    when the partition has several outputs.
    """

    executor = REFERENCE_EXECUTOR

    def __init__(self, function: func.FuncOp, returns_tuple: bool):
        super().__init__()
        self.function = function
        self.returns_tuple = returns_tuple

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        results = run_function(self.function, args)
        return tuple(results) if self.returns_tuple else results[0]
