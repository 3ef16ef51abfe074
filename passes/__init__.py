"""Passes over tilefuse IR, one per file, registered by their kebab-case names.

Imports `tilefuse.ir` only.
"""

from xdsl.passes import ModulePass

from .canonicalize import Canonicalize
from .export_linalg import ExportLinalg
from .fusion_groups import FormFusionGroups
from .lower_to_tile import LowerToTile
from .merge_projections import MergeProjections
from .norm_prologue import NormPrologue
from .operand_layout import KMajorF32Weights
from .split_reduction import SplitReduction

PASSES: dict[str, type[ModulePass]] = {
    p.name: p
    for p in (
        Canonicalize, NormPrologue, MergeProjections, SplitReduction, KMajorF32Weights, FormFusionGroups,
        LowerToTile, ExportLinalg,
    )
}

__all__ = [
    "PASSES", "Canonicalize", "ExportLinalg", "FormFusionGroups", "KMajorF32Weights", "LowerToTile",
    "MergeProjections", "NormPrologue", "SplitReduction",
]  # fmt: skip
