"""Size buckets (`autotune/buckets.py`): which bucket a size falls in, and a kernel's problem and
argument shapes at a bucket's sizes."""

from __future__ import annotations

import sympy

from tilefuse.autotune.buckets import (
    BUCKET_EDGES,
    all_buckets,
    bucket_key,
    bucket_label,
    bucket_of,
    concrete_shapes,
    problem_at,
)


def test_buckets_split_sizes_at_their_edges():
    small, large = BUCKET_EDGES[0], BUCKET_EDGES[-1]
    assert [bucket_of(n) for n in (1, small, small + 1, large, large + 1)] == [0, 0, 1, 1, 2]
    assert bucket_label(("s0", "s1"), (0, 2)) == f"s0<={small},s1>{large}"
    assert len(all_buckets(("s0", "s1"))) == (len(BUCKET_EDGES) + 1) ** 2
    assert bucket_key(("s1", "s0"), {"s0": 1, "s1": large + 5}) == (2, 0)
    s0, s1 = sympy.symbols("s0 s1", integer=True, positive=True)
    problem = {"R": s0 * s1, "C": 64, "divisors": {"BLOCK_C": [64]}, "whole": {"BLOCK_C": s1 + 1}}
    assert problem_at(problem, {"s0": 3, "s1": 5}) == {
        "R": 15, "C": 64, "divisors": {"BLOCK_C": [64]}, "whole": {"BLOCK_C": 6}
    }  # fmt: skip
    assert concrete_shapes([("s0*s1", 64), (64,)], {"s0": 2, "s1": 7}) == [(14, 64), (64,)]
