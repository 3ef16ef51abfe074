"""Default configs: the rules measured on the H200 (benchmarks/NOTES.md), checked on the numbers."""

from __future__ import annotations

from tilefuse.autotune.heuristics import default_config


def _gemm(m: int, n: int, k: int, **extra) -> dict:
    return {"M": m, "N": n, "K": k, "B": 1, "elem_bytes": 2, "rhs_operands": 1, **extra}


def _tile(config) -> tuple[int, int, int]:
    return config.params["BLOCK_M"], config.params["BLOCK_N"], config.num_warps


def test_wide_tiles_only_where_they_fill_two_waves():
    # 8192x4096: 1024 tiles of 128x256, many waves of 132 SMs: the wide tile, 8 warps
    assert _tile(default_config("gemm", _gemm(8192, 4096, 4096))) == (128, 256, 8)
    # GPT-2's MLP, 2048x4096: 256 wide tiles, under two waves (264): 128x128
    assert _tile(default_config("gemm", _gemm(2048, 4096, 1024))) == (128, 128, 4)


def test_a_second_accumulator_or_math_in_a_short_k_epilogue_takes_eight_warps():
    assert _tile(default_config("gemm", _gemm(2048, 4096, 1024, epilogue_math=1))) == (128, 128, 8)
    assert _tile(default_config("gemm", _gemm(2048, 4096, 1024, rhs_operands=2))) == (128, 128, 8)
    assert _tile(default_config("gemm", _gemm(2048, 4096, 8192, rhs_operands=2))) == (128, 128, 8)
    # over a long K, 8 warps slow the 128x128 main loop more than the epilogue's math costs at 4
    # (H200: erf GELU at 2048x2048x8192 96.7 us at 4 warps, 160.6 at 8)
    assert _tile(default_config("gemm", _gemm(2048, 2048, 8192, epilogue_math=1))) == (128, 128, 4)
    assert _tile(default_config("gemm", _gemm(512, 8192, 2048, epilogue_math=1))) == (128, 128, 4)


def test_exact_f32_gemms_take_narrow_deep_pipelined_tiles_and_tf32_the_wide_ones():
    """3xTF32 (f32 operands at "highest") spends registers on three dots and the split operands: 128x64x32,
    4 warps, 4 stages (H200: 1716 us for 4096^3 against 2888 at 128x256x32); one TF32 pass keeps the
    bf16 rule with K steps of 32 (its operand tiles are twice as large)."""
    exact = default_config("gemm", _gemm(4096, 4096, 4096, elem_bytes=4))
    assert _tile(exact) == (128, 64, 4) and exact.params["BLOCK_K"] == 32 and exact.num_stages == 4
    tf32 = default_config("gemm", _gemm(8192, 4096, 4096, elem_bytes=4, tf32=1))
    assert _tile(tf32) == (128, 256, 8) and tf32.params["BLOCK_K"] == 32 and tf32.num_stages == 3
    small = default_config("gemm", _gemm(40, 24, 16, elem_bytes=4))
    assert _tile(small)[:2] == (64, 32)


def test_shallow_products_over_many_rows_take_narrow_tiles():
    """K <= 128 over many rows (ConvNeXt's stage-1 MLP: 100352 x 96 -> 384 with a LayerNorm prologue
    and GELU): 128x64x32, 4 warps, 4 stages (H200: 89.5 us against 143.3 at 128x256x64)."""
    shallow = default_config("gemm", _gemm(100352, 384, 96, epilogue_math=1))
    assert _tile(shallow) == (128, 64, 4) and shallow.params["BLOCK_K"] == 32 and shallow.num_stages == 4
    # the fc2 back (K = 384) keeps the rule above; so does a shallow product with few tiles
    assert _tile(default_config("gemm", _gemm(100352, 96, 384)))[:2] != (128, 64)
    assert _tile(default_config("gemm", _gemm(1024, 256, 96)))[:2] != (128, 64)


def test_small_problems_keep_small_tiles():
    m, n, warps = _tile(default_config("gemm", _gemm(40, 24, 16)))
    assert (m, n) == (64, 32) and warps == 4


def test_decode_sized_gemms_spread_their_weight_over_the_sms():
    # one token through a 2048x5632 projection: 44 programs at 16x128 would leave 88 SMs idle; 88
    # programs of 16x64 tiles, 128 deep, 4 stages measured fastest (H200 sweep: 5.7 µs against 7.0
    # at 16x32, the first fix)
    config = default_config("gemm", _gemm(1, 5632, 2048))
    m, n, warps = _tile(config)
    assert (m, n) == (16, 64) and -(-5632 // n) >= 132 // 2
    assert config.params["BLOCK_K"] == 128 and config.num_stages == 4
    assert _tile(default_config("gemm", _gemm(8, 2048, 5632)))[:2] == (16, 32)
    # K read as heads x head dim (o_proj after attention): K blocks stay within a head
    split = default_config("gemm", _gemm(1, 2048, 2048, divisors={"BLOCK_K": (32,)}))
    assert split.params["BLOCK_K"] == 32
    # an LM head keeps its tiles (no sweep point said otherwise)
    head = default_config("gemm", _gemm(1, 32000, 2048))
    assert head.params["BLOCK_K"] == 64 and -(-32000 // head.params["BLOCK_N"]) >= 132
    # a prefill-sized M keeps its wide tiles
    assert _tile(default_config("gemm", _gemm(512, 5632, 2048)))[1] >= 64


def test_column_reductions_take_tiles_wide_along_their_contiguous_kept_index():
    """From exhaustive H200 sweeps: GQA's sum of 4 repeated heads walks one row of 512 columns at a
    time; a norm gradient's 256-row chunks and a middle-dim reduction take 64 x 32 tiles at 4 warps
    (8 warps: 1.3x slower on KernelBench's sum over dim 1); 16 partials of 2048 columns, 64-wide
    tiles (programs for the SMs); a row reduction keeps its tile along the reduced index."""
    gqa = default_config("reduction", {"R": 1 << 20, "C": 4, "column": 1})
    assert (gqa.params, gqa.num_warps) == ({"BLOCK_R": 512, "BLOCK_C": 1}, 4)
    chunks = default_config("reduction", {"R": 16 * 2048, "C": 256, "column": 1})
    assert (chunks.params, chunks.num_warps) == ({"BLOCK_R": 64, "BLOCK_C": 32}, 4)
    middle = default_config("reduction", {"R": 64 * 1024, "C": 512, "column": 1})
    assert (middle.params, middle.num_warps) == ({"BLOCK_R": 64, "BLOCK_C": 32}, 4)
    combine = default_config("reduction", {"R": 2048, "C": 16, "column": 1})
    assert combine.params == {"BLOCK_R": 64, "BLOCK_C": 1}
    row = default_config("reduction", {"R": 2048, "C": 4096})
    assert (row.params, row.num_warps) == ({"BLOCK_R": 1, "BLOCK_C": 4096}, 8)  # a full reduction's partials
    short = default_config("reduction", {"R": 2048, "C": 1000})
    assert short.params["BLOCK_C"] >= 1000 and short.params["BLOCK_R"] <= 4


def test_one_long_row_gets_sixteen_warps_and_scans_their_whole_row():
    """A full reduction's combine (one row of partials) runs at 16 warps (H200: 1.7 us against 3.5 at
    8); a scan row up to 4096 is one tile whose BLOCK_C the lowering fixes, a longer one 4096 chunks."""
    combine = default_config("reduction", {"R": 1, "C": 8192})
    assert combine.num_warps == 16 and combine.params["BLOCK_R"] == 1
    assert default_config("reduction", {"R": 4096, "C": 8192}).num_warps == 8
    whole = default_config("scan", {"R": 4096, "C": 2000, "exact": {"BLOCK_C": 2048}})
    assert whole.params == {"BLOCK_R": 1, "BLOCK_C": 2048} and whole.num_warps == 8
    chunks = default_config("scan", {"R": 128, "C": 32768})
    assert chunks.params == {"BLOCK_R": 1, "BLOCK_C": 4096}
    short_rows = default_config("scan", {"R": 1 << 20, "C": 16, "exact": {"BLOCK_C": 16}})
    assert short_rows.params["BLOCK_R"] > 1  # many short rows: several a program


def test_a_short_row_is_not_padded_and_each_thread_holds_sixteen_elements():
    """Mixtral's sum of each token's two experts (a row kernel over a middle dim of 2): tiles as narrow
    as the row, 1024 rows, at most 4 warps and 16 elements a thread where the tile has them (H100: 1024
    x 2 at 4 warps 18.0 us, at 8 warps 56.0, 128 x 2 at 4 warps 42.7), fewer where that leaves fewer
    programs than SMs; rows of 16 or more keep their wider tiles."""
    for c, width, warps in [(1, 1, 2), (2, 2, 4), (3, 4, 4), (8, 8, 4)]:
        config = default_config("row", {"R": 2048 * 2048, "C": c})
        assert config.params == {"BLOCK_R": 1024, "BLOCK_C": width}, (c, config)
        assert config.num_warps == warps and 1024 * width // (32 * warps) >= 16, (c, config)
    small = default_config("row", {"R": 5, "C": 2})
    assert small.params == {"BLOCK_R": 1, "BLOCK_C": 2} and small.num_warps == 1
    router = default_config("row", {"R": 2048, "C": 8})  # a program per SM at least: 256 of 8 rows
    assert router.params == {"BLOCK_R": 8, "BLOCK_C": 8} and router.num_warps == 1
    wide = default_config("row", {"R": 2048 * 2048, "C": 100})
    assert wide.params == {"BLOCK_R": 16, "BLOCK_C": 128}
