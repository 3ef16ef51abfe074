"""How a kernel's tiles are spread over the threads of one CUDA block.

A `tile` kernel computes on tiles whose dims are named by tile parameters
(`BLOCK_R`, `BLOCK_C`). Every tile of a kernel is a slice of one iteration
space: the dims of its widest tile, e.g. [BLOCK_R, BLOCK_C] for a row kernel,
[BLOCK] for a pointwise one. A tile with fewer dims (a row's statistics
[BLOCK_R], a column index [1, BLOCK_C]) lives on the space axes its dims name.

One `BlockLayout` places the whole space on the block's threads, as Triton's
blocked layout does: along the last axis a thread owns runs of `vec`
contiguous elements (16 bytes of the widest tensor: one 128-bit access),
along the others single elements; `threads` threads sit side by side along
each axis, and the pattern repeats until the axis is covered. Thread ids run
fastest along the last axis (adjacent lanes read adjacent runs).

Each thread holds a tile's elements in a small local array: one slot per
element it owns, indexed by its slot along each axis the tile spans. A tile
that spans fewer axes is held once per slot of its own axes by every thread
whose place covers it; that is what makes broadcasting free and leaves a
reduction's result wherever its consumers need it.

Tile sizes must be powers of two (as `tl.arange` requires), so every axis
splits evenly and no slot is padding. Where the space has fewer elements
than the block has threads, the extra threads hold copies (replicas): they
compute the same values and never store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

WARP_SIZE = 32


class LayoutError(Exception):
    """The tiles of a kernel cannot be placed on one block (the emitter reports it as CudaEmitError)."""


@dataclass(frozen=True)
class Axis:
    """One axis of the iteration space and how the block's threads cover it."""

    name: str  # the tile dim that names it ("BLOCK_C", or a literal size such as "16")
    size: int
    vec: int  # contiguous elements a thread owns per step
    threads: int  # threads side by side along the axis
    stride: int  # distance in thread ids between neighbours along the axis

    @property
    def slots(self) -> int:
        """Elements of the axis one thread owns."""
        return self.size // self.threads

    def coordinate(self, slot: str, thread: str) -> str:
        """C expression of the coordinate along this axis of slot `slot` of the thread at `thread`."""
        if self.threads == 1:
            return slot
        if self.slots == 1:
            return thread
        if self.vec == 1:
            return f"{slot} * {self.threads} + {thread}"
        if self.slots == self.vec:  # one contiguous run per thread
            return f"{thread} * {self.vec} + {slot}"
        return f"({slot} / {self.vec} * {self.threads} + {thread}) * {self.vec} + {slot} % {self.vec}"

    def thread_coordinate(self) -> str:
        """C expression of the thread's place along this axis, from threadIdx.x."""
        index = "threadIdx.x" if self.stride == 1 else f"threadIdx.x / {self.stride}"
        return f"{index} % {self.threads}"

    @property
    def lane_span(self) -> int:
        """Thread-id distance covered by this axis inside one warp (its shuffle offsets are below it)."""
        return min(self.stride * self.threads, WARP_SIZE)

    @property
    def warps(self) -> int:
        """Warps the axis spans: above one, a reduction along it goes through shared memory."""
        return max(1, self.stride * self.threads // max(WARP_SIZE, self.stride))

    @property
    def warp_stride(self) -> int:
        """Thread-id distance between the warps the axis spans."""
        return max(WARP_SIZE, self.stride)


@dataclass(frozen=True)
class BlockLayout:
    """The iteration space's axes over `num_threads` threads."""

    axes: tuple[Axis, ...]
    num_threads: int

    @property
    def used_threads(self) -> int:
        """Threads with a place of their own; the others are replicas."""
        return math.prod(a.threads for a in self.axes)

    def axis_of(self, dim: str) -> int:
        for i, axis in enumerate(self.axes):
            if axis.name == dim:
                return i
        raise LayoutError(f"tile dim {dim!r} is not an axis of the iteration space {self.names}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.axes)

    def describe(self) -> str:
        """One line per axis, for the header of the generated file."""
        return "; ".join(
            f"{a.name} = {a.size}: {a.threads} threads x {a.slots} slots"
            + (f" ({a.vec} contiguous)" if a.vec > 1 and a.slots > 1 else "")
            for a in self.axes
        )


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def block_layout(space: Sequence[tuple[str, int]], num_threads: int, vec: int) -> BlockLayout:
    """Place the axes `space` ((name, size), outermost first) on `num_threads` threads.

    The last axis gets `vec` contiguous elements per thread (less where it is
    shorter); threads fill the axes from the last one outwards, each taking
    as many as its remaining elements need.
    """
    if not _is_power_of_two(num_threads):
        raise LayoutError(f"{num_threads} threads: the block needs a power of two")
    for name, size in space:
        if not _is_power_of_two(size):
            raise LayoutError(f"tile dim {name} = {size} is not a power of two")
    axes: list[Axis] = []
    free, stride = num_threads, 1
    for position, (name, size) in reversed(list(enumerate(space))):
        width = min(vec, size) if position == len(space) - 1 else 1
        threads = min(size // width, free)
        axes.append(Axis(name, size, width, threads, stride))
        free //= threads
        stride *= threads
    return BlockLayout(tuple(reversed(axes)), num_threads)
