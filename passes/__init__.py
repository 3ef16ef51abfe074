"""Passes over tilefuse IR, one per file, registered by their kebab-case names.

Imports `tilefuse.ir` only.
"""

from xdsl.passes import ModulePass

from .canonicalize import Canonicalize

PASSES: dict[str, type[ModulePass]] = {p.name: p for p in (Canonicalize,)}

__all__ = ["PASSES", "Canonicalize"]
