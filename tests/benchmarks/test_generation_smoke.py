"""The generation benchmark on the CPU: `--tiny`, every candidate but torch.compile, one batch size.
Greedy tokens must equal eager's for the dynamic cache and the static cache alike."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("transformers")

from tilefuse.benchmarks.generation import CANDIDATES, COMPILE, COMPILE_STATIC, main  # noqa: E402


def test_tiny_generation_on_cpu_matches_eager_tokens(tmp_path, capsys):
    out = tmp_path / "generation.md"
    main(["--tiny", "--no-torch-compile", "--batches", "2", "--out", str(out)])
    report = out.read_text()
    assert report in capsys.readouterr().out
    lines = [line for line in report.splitlines() if line.startswith("| 2 |")]
    rows = {cells[1]: cells for cells in ([c.strip() for c in line.strip("|").split(" | ")] for line in lines)}
    assert list(rows) == [c for c in CANDIDATES if c not in (COMPILE, COMPILE_STATIC)]
    for candidate, cells in rows.items():
        assert "FAILED" not in cells[9], cells
        # TTFT, and per-token latency: a difference of two single CPU timings, noise when the decode
        # steps run in PyTorch while the prefill's kernels run in Triton's interpreter
        assert float(cells[2]) > 0 and math.isfinite(float(cells[3])), cells
        assert cells[5] == "—", cells  # no GPU time off the GPU
        if candidate != "eager":
            assert cells[8] == "4/4", cells  # the same greedy tokens as eager
    # the prompt's graph, the first step's, then one dynamic graph for every later step, whose
    # static islands (one token's projections, norms and MLP) run as kernels too; no partition fails
    # at run time (the decode graph's causal-mask kernel, a scalar-and-block mask, once did in
    # Triton's interpreter and fell back to PyTorch)
    # (the first decode step's graph, called at the same sizes once per `generate`, is not compiled
    # for them: the decode graph changes size in between; such compiles would show as "+N compiled")
    assert int(rows["tilefuse"][7]) <= 3
    graphs = rows["tilefuse"][7]
    assert rows["tilefuse"][9].startswith(f"{graphs} graph(s), {graphs} with kernels"), rows["tilefuse"][9]
    assert "compiled for sizes" not in rows["tilefuse"][9], rows["tilefuse"][9]
    assert "refused: no CUDA device" in rows["tilefuse reduce-overhead, static cache"][9]


def test_tiny_generation_without_grouped_kv_heads(tmp_path, capsys):
    """`--kv-heads` at the query heads' count: each decode step's attention has one query row a head (the
    decode kernel's unpadded path, in Triton's interpreter); greedy tokens equal eager's."""
    out = tmp_path / "generation.md"
    main(["--tiny", "--batches", "1", "--kv-heads", "4", "--candidates", "tilefuse", "--out", str(out)])
    report = out.read_text()
    assert "4 query heads over 4 KV heads" in report
    lines = [line for line in report.splitlines() if line.startswith("| 1 |")]
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    assert [cells[1] for cells in rows] == ["eager", "tilefuse"]  # `--candidates`: eager's tokens, tilefuse's
    dynamic = next(cells for cells in rows if cells[1] == "tilefuse")
    assert dynamic[8] == "4/4" and "FAILED" not in dynamic[9], dynamic


def test_candidates_are_chosen_by_keys():
    """The rows' names hold commas ("tilefuse reduce-overhead, static cache"): `--candidates` takes their
    keys; eager always runs (its tokens are the reference); an unknown key is an error naming the keys."""
    from tilefuse.benchmarks.generation import EAGER, EAGER_STATIC, SUBJECT_STATIC, parse_args

    args = parse_args(["--tiny", "--candidates", "tilefuse-static, eager-static"])
    assert args.candidates == [EAGER, EAGER_STATIC, SUBJECT_STATIC]
    with pytest.raises(SystemExit):
        parse_args(["--tiny", "--candidates", "eager, static cache"])
