"""`tilefuse.compile`: the decorator users put on a function or `nn.Module`."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar, overload

import torch

from .backend import CompileOptions, TilefuseBackend
from .dump import resolve_dump_dir

F = TypeVar("F", bound=Callable)


MODES = ("default", "reduce-overhead")


@overload
def compile(
    fn: F, *, dump: str | os.PathLike | None = None, fullgraph: bool = False, mode: str = "default"
) -> F: ...
@overload
def compile(
    fn: None = None, *, dump: str | os.PathLike | None = None, fullgraph: bool = False, mode: str = "default"
) -> Callable[[F], F]: ...


def compile(fn=None, *, dump=None, fullgraph=False, mode="default"):
    """Compile a function or `nn.Module` with tilefuse.

    Usable as `@tilefuse.compile` or `@tilefuse.compile(dump="dir")`. Kernels
    are compiled for the shapes of the first call; when a later call changes a
    size, Dynamo makes that dim dynamic and the dynamic graph runs in PyTorch
    (one capture, no compile per new size; the report says so). `dump` (or the
    `TILEFUSE_DUMP` environment variable) names a folder for the IR of every
    stage. Ops tilefuse cannot compile run in PyTorch; the dump says which
    and why. The result has `tilefuse_reports`: one summary per compiled graph.
    `mode="reduce-overhead"` (torch.compile's spelling) replays each graph as
    a CUDA graph once warmed up (see `cudagraphs.py`; the report's
    `cudagraphs` says whether it was captured, or why not).
    """
    if mode not in MODES:
        raise ValueError(f"tilefuse.compile: mode must be one of {MODES}, not {mode!r}")
    if fn is None:
        return lambda f: compile(f, dump=dump, fullgraph=fullgraph, mode=mode)
    options = CompileOptions(dump=resolve_dump_dir(dump), mode=mode)
    name = getattr(fn, "__name__", None) or type(fn).__name__
    backend = TilefuseBackend(options, name=name)
    # Dynamo's default: a second size of a dim makes it dynamic, and such a graph runs in PyTorch
    # (backend.py) instead of compiling again for every new sequence length
    compiled = torch.compile(fn, backend=backend, dynamic=None, fullgraph=fullgraph)
    compiled.tilefuse_reports = backend.reports
    compiled.tilefuse_dump_dir = options.dump
    return compiled
