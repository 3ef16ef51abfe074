"""Loops that hold tensor-core instructions left rolled by ptxas, in tilefuse's kernels: opt-in
(`TILEFUSE_PTX_NOUNROLL=1`), trading a little GEMM speed for a quicker cold compile.

ptxas unrolls a loop whose trip count it knows and finds short enough. A GEMM's K loop of 16 steps
(K = 1024 at BLOCK_K = 64: BERT-large's, GPT-2-medium's and every 1024-wide model's projections)
is one: BERT's FC1 kernel (4096 x 1024 x 4096, 128 x 256 tile) took ptxas 2.8 s, against 0.3 s for
the same kernel at K = 2048 (32 steps, left rolled) or with `.pragma "nounroll";` at its loop's
head (sm_90, offline, CUDA 13.4's ptxas). On an H100's host the cold compile of a 4-layer BERT
waited 4.5 s on that kernel and 3-4 s on two others like it; with the pragma its Triton compile
took 3.9 s instead of 6.5 and its first call 9.5 s instead of 12.4 (torch.compile's: 8.1). But the
unrolled loop runs faster: the FC1 GEMM alone took 61.6 us rolled against 59.2 (with the exact
GELU 76.2 against 74.6), and GPT-2's forward 0.933 ms of GPU against 0.882. Never slower comes
first, so the default leaves ptxas alone; a user who compiles many kernels (a tuning job) or
cares about the first call more than ~4% of some GEMMs' time sets the switch.

Triton cannot say it (its loop attributes reach neither LLVM's unroll metadata nor the PTX), so a
stage hook (`triton.knobs.runtime.add_stages_inspection_hook`, Triton >= 3.5) rewrites the PTX of
the kernels `register`ed here (the ones tilefuse emits and loads): each loop whose body holds an
`mma` or `wgmma` instruction gets the pragma as its header's first statement. Other kernels
(Inductor's, the user's) pass through untouched. The hook adds its name to Triton's cache key (for
every kernel compiled while the switch is on: a binary made with the pragma is never served to a
process without it). A hook already installed is kept and called first. Where Triton has no such
hook, nothing changes.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable

SWITCH = "TILEFUSE_PTX_NOUNROLL"
CACHE_KEY = "tilefuse-ptx-nounroll-mma-loops-1"

NOUNROLL = '\t.pragma "nounroll";'
# LLVM's NVPTX printer marks a loop's header block in the comments after its label: on the label's line
# for an outermost loop (`$L__BB0_2:   // =>This Inner Loop Header: Depth=1`), on a comment line of
# its own below it for a nested one (`$L__BB0_3:   //   Parent Loop BB0_2 Depth=1` then
# `// =>  This Inner Loop Header: Depth=2`)
_HEADER = re.compile(r"^(\$L__BB\w+):[^\n]*(?:\n[ \t]*//[^\n]*)*?Loop Header[^\n]*\n", re.MULTILINE)
_MMA = re.compile(r"\b(wgmma|mma)\.")

_registered: set[str] = set()
_lock = threading.Lock()
_installed = False


def no_unroll_mma_loops(ptx: str) -> str:
    """`ptx` with `.pragma "nounroll";` at the head of each innermost loop holding a tensor-core
    instruction: a loop's body runs from its header label to the last branch back to it; a loop around
    such a loop (a persistent GEMM's loop over tiles, around its K loop) is left alone."""
    loops = []  # (where the pragma goes, body start, body end) of loops holding an mma
    for header in _HEADER.finditer(ptx):
        label = header[1]
        back_edges = [m.start() for m in re.finditer(rf"\bbra(?:\.uni)?\s+{re.escape(label)};", ptx)]
        body_end = max((b for b in back_edges if b > header.end()), default=None)
        if body_end is not None and _MMA.search(ptx, header.end(), body_end):
            loops.append((ptx.index("\n", header.start()) + 1, header.start(), body_end))
    innermost = [
        loop for loop in loops
        if not any(other is not loop and loop[1] < other[1] and other[2] <= loop[2] for other in loops)
    ]  # fmt: skip
    for at, _, _ in sorted(innermost, reverse=True):
        ptx = ptx[:at] + NOUNROLL + "\n" + ptx[at:]
    return ptx


def enabled() -> bool:
    """Whether `TILEFUSE_PTX_NOUNROLL` asks for it (1, true, yes or on)."""
    return os.environ.get(SWITCH, "").strip().lower() in ("1", "true", "yes", "on")


def register(function_name: str) -> None:
    """Mark the Triton function `function_name` as tilefuse's: its PTX gets the pragma (`install`s the
    hook on first use). Nothing while the switch is off."""
    if not enabled():
        return
    with _lock:
        _registered.add(function_name)
    install()


def install() -> bool:
    """Put the stage hook in place (once per process); False where this Triton has none."""
    global _installed
    with _lock:
        if _installed:
            return True
        try:
            from triton import knobs
        except ImportError:
            return False
        runtime = getattr(knobs, "runtime", None)
        if runtime is None or not hasattr(runtime, "add_stages_inspection_hook"):
            return False
        runtime.add_stages_inspection_hook = _hook(runtime.add_stages_inspection_hook)
        _installed = True
        return True


def _hook(previous: Callable | None) -> Callable:
    def hook(*args):
        if not args:  # Triton asks for a cache key (see the module docstring)
            key, digest = previous() if previous is not None else ("", "")
            return key + CACHE_KEY, digest + CACHE_KEY
        if previous is not None:
            previous(*args)
        stages = args[1]
        make_ptx = stages.get("ptx")
        if make_ptx is not None:
            stages["ptx"] = _rewriting(make_ptx)

    return hook


def _rewriting(make_ptx: Callable) -> Callable:
    def ptx_stage(src, metadata):
        ptx = make_ptx(src, metadata)
        if isinstance(ptx, str) and metadata.get("name") in _registered:
            try:
                return no_unroll_mma_loops(ptx)
            except Exception:  # a PTX this does not read: left as Triton made it
                return ptx
        return ptx

    return ptx_stage
