"""Size buckets: the configs of a kernel of symbolic sizes, one per range of its sizes.

A kernel of symbolic sizes (a dynamic graph's pointwise, reduction and row kernels, and GEMMs where
`TILEFUSE_SYMBOLIC_GEMM=1`) runs every size with one program. Its tile configuration is chosen per
*bucket* of each of its size symbols: a GEMM over a decode step's few rows and one over a prefill's
thousands want different tiles, a row walked in chunks wants wider ones past 1024. The table is
small: three buckets a symbol (`BUCKET_EDGES`), at most two symbols bucketed
(`MAX_BUCKETED_SYMBOLS`: nine entries), each entry the config the compiler would choose for the problem
at the bucket's representative sizes (tuned, modelled or the heuristic default, in that order), and the
program picks its entry at launch with one comparison a symbol on sizes it holds anyway. Buckets are
few on purpose: each distinct config is one more Triton compile at the first launch in its bucket, and
a generation whose cache length crosses an edge pays it mid-run (no crossing from a 512-token prompt
to 128 tokens more).

The tuning database keys a bucket's records by the kernel's source and the bucket (`bucket_label`), so
a tuned config serves every size of its bucket; a tuning job tunes a dynamic kernel at a list of sizes
(`tilefuse tune --sizes`), each measured at that size and recorded under its bucket.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Mapping, Sequence

from ..ir.dtypes import concrete_by_name, parse_size

# bucket i holds the sizes in (EDGES[i-1], EDGES[i]]; the last bucket the sizes past the last edge
BUCKET_EDGES = (16, 1024)
# the sizes a bucket's config is chosen for: its upper edge (a config for the bucket's largest size
# costs little at its smaller ones: a tile's tail is masked), and for the last bucket this
REPRESENTATIVE = (16, 1024, 16384)
MAX_BUCKETED_SYMBOLS = 2  # a kernel of more size symbols keeps one config (its call's hints)
BUCKETS_ENV = "TILEFUSE_SIZE_BUCKETS"


def bucket_of(n: int) -> int:
    """The bucket of size `n`."""
    return bisect.bisect_left(BUCKET_EDGES, n)


def bucket_label(symbols: Sequence[str], key: Sequence[int]) -> str:
    """A bucket as text: "s0<=16,s1>1024"."""
    parts = []
    for s, b in zip(symbols, key):
        parts.append(f"{s}<={BUCKET_EDGES[b]}" if b < len(BUCKET_EDGES) else f"{s}>{BUCKET_EDGES[-1]}")
    return ",".join(parts)


def bucketed(symbols: Sequence[str]) -> bool:
    """Whether a kernel of these size symbols gets a config per bucket (`TILEFUSE_SIZE_BUCKETS=0`:
    none does; each keeps the one config of its call's hints, for A/B measurements)."""
    return 0 < len(symbols) <= MAX_BUCKETED_SYMBOLS and os.environ.get(BUCKETS_ENV, "1") != "0"


def all_buckets(symbols: Sequence[str]) -> list[tuple[int, ...]]:
    """Every bucket key of a kernel of these symbols, smallest sizes first."""
    return list(itertools.product(range(len(BUCKET_EDGES) + 1), repeat=len(symbols)))


def bucket_key(symbols: Sequence[str], sizes: Mapping[str, int]) -> tuple[int, ...]:
    """The bucket of a binding of the symbols."""
    return tuple(bucket_of(sizes[s]) for s in symbols)


def representative_sizes(symbols: Sequence[str], key: Sequence[int]) -> dict[str, int]:
    """The sizes a bucket's config is chosen for."""
    return {s: REPRESENTATIVE[b] for s, b in zip(symbols, key)}


# kinds with configs of their own in the smallest bucket. A memory-bound kernel (pointwise,
# reduction, row) at <= 16 rows or elements a symbol runs in one or a few programs whatever its block,
# so a config of its own would only cost a Triton compile at its first launch there: in a generation
# from a short prompt, mid-run, as the cache grows past 16. A GEMM's tiles at a decode step's few rows
# do matter (16-row tiles, more programs over N).
SMALL_BUCKET_KINDS = ("gemm",)


def serving_bucket(key: Sequence[int], kind: str) -> tuple[int, ...]:
    """The bucket whose config a kernel of `kind` runs in bucket `key` when that bucket has no tuned
    record of its own: itself, or for a memory-bound kind the next one up from the smallest
    (SMALL_BUCKET_KINDS)."""
    return tuple(key) if kind in SMALL_BUCKET_KINDS else tuple(max(b, 1) for b in key)


def problem_at(problem: Mapping, sizes: Mapping[str, int]) -> dict:
    """A kernel's problem (its sizes possibly symbolic, nested constraint dicts too) at `sizes`
    (symbols matched by name: the IR's and a report's are the same names)."""
    return concrete_by_name(dict(problem), sizes.__getitem__)


def concrete_shapes(shapes: Sequence[Sequence[int | str]], sizes: Mapping[str, int]) -> list[tuple[int, ...]]:
    """A kernel's argument shapes (`TritonKernel.shapes`: a symbolic size as its expression's text)
    at `sizes`."""

    def size(d: int | str) -> int:
        return d if isinstance(d, int) else concrete_by_name(parse_size(d), sizes.__getitem__)

    return [tuple(map(size, shape)) for shape in shapes]
