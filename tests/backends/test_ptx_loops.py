"""ptx_loops: the pragma goes to the head of loops with tensor-core instructions, in registered
kernels only; the stage hook adds to Triton's cache key and keeps any hook installed before it;
nothing is registered while TILEFUSE_PTX_NOUNROLL is off (the default)."""

from __future__ import annotations

from tilefuse.backends.triton import ptx_loops

PTX = """\
.visible .entry gemm_abc(
)
{
\tmov.u32 \t%r1, 0;
$L__BB0_2:                              // =>This Inner Loop Header: Depth=1
\twgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {%r2}, %rd1, %rd2, 1, 1, 1, 0, 1;
\tadd.s32 \t%r1, %r1, 1;
\t@%p5 bra \t$L__BB0_2;
$L__BB0_3:                              // =>This Inner Loop Header: Depth=1
\tadd.s32 \t%r3, %r3, 1;
\t@%p6 bra \t$L__BB0_3;
\tret;
}
"""


def test_only_loops_holding_mma_get_the_pragma():
    out = ptx_loops.no_unroll_mma_loops(PTX)
    lines = out.splitlines()
    first = lines.index(next(line for line in lines if line.startswith("$L__BB0_2:")))
    assert lines[first + 1] == ptx_loops.NOUNROLL
    assert out.count("nounroll") == 1  # the second loop has no mma
    assert out.replace(ptx_loops.NOUNROLL + "\n", "") == PTX
    assert ptx_loops.no_unroll_mma_loops("no loops here\n") == "no loops here\n"


# a persistent GEMM: the loop over tiles (outer) holds the K loop (inner, with the mma; LLVM prints a
# nested loop's header mark on a comment line below its label) and an epilogue loop without one
NESTED = """\
$L__BB0_2:                              // =>This Loop Header: Depth=1
                                        //     Child Loop BB0_3 Depth 2
                                        //     Child Loop BB0_4 Depth 2
\tmov.u32 \t%r1, 0;
$L__BB0_3:                              //   Parent Loop BB0_2 Depth=1
                                        // =>  This Inner Loop Header: Depth=2
\twgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%r2}, %rd1, %rd2, 1, 1, 1, 0, 1;
\t@%p3 bra \t$L__BB0_3;
$L__BB0_4:                              // %.preheader
                                        //   Parent Loop BB0_2 Depth=1
                                        // =>  This Inner Loop Header: Depth=2
\tadd.s32 \t%r3, %r3, 1;
\t@%p4 bra \t$L__BB0_4;
\t@%p5 bra \t$L__BB0_2;
\tret;
"""


def test_in_nested_loops_the_innermost_holding_mma_gets_the_pragma():
    lines = ptx_loops.no_unroll_mma_loops(NESTED).splitlines()
    assert [i for i, line in enumerate(lines) if line == ptx_loops.NOUNROLL] == [5]
    assert lines[4].startswith("$L__BB0_3:")  # the K loop's label, then the pragma


def test_the_switch_reads_common_spellings(monkeypatch):
    for value, on in [("1", True), ("true", True), ("ON", True), ("0", False), ("false", False), ("", False)]:
        monkeypatch.setenv(ptx_loops.SWITCH, value)
        assert ptx_loops.enabled() is on, value


class _Stages(dict):
    pass


def test_the_switch_is_off_by_default(monkeypatch):
    monkeypatch.delenv(ptx_loops.SWITCH, raising=False)
    ptx_loops.register("gemm_while_off")
    assert "gemm_while_off" not in ptx_loops._registered and not ptx_loops.enabled()
    monkeypatch.setenv(ptx_loops.SWITCH, "1")
    assert ptx_loops.enabled()


def test_the_hook_rewrites_registered_kernels_keys_the_cache_and_chains():
    calls = []

    def previous(*args):
        calls.append(args)
        return ("prev-key", "prev-hash") if not args else None

    hook = ptx_loops._hook(previous)
    # Triton's cache key: the previous hook's, and ours
    assert hook() == ("prev-key" + ptx_loops.CACHE_KEY, "prev-hash" + ptx_loops.CACHE_KEY)
    assert ptx_loops._hook(None)() == (ptx_loops.CACHE_KEY, ptx_loops.CACHE_KEY)
    stages = _Stages(ptx=lambda src, metadata: PTX, cubin=lambda src, metadata: b"")
    hook(object(), stages, object(), "triton", 90)
    assert len(calls) == 2  # the previous hook saw both calls
    ptx_loops._registered.add("gemm_registered")
    try:
        assert "nounroll" in stages["ptx"]("llir", {"name": "gemm_registered"})
        assert stages["ptx"]("llir", {"name": "someone_elses_kernel"}) == PTX
    finally:
        ptx_loops._registered.discard("gemm_registered")
