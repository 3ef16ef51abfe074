"""Greedy generation with a `transformers` Llama-style model: eager, `torch.compile` and tilefuse.

    python -m tilefuse.benchmarks.generation [--out FILE] [--batches 1,8] [--prompt 512]
        [--new-tokens 128] [--dtype bfloat16|float32] [--tiny] [--no-torch-compile] [--kv-heads N]

The two ways users compile `generate` (issue 14): `model.forward` compiled with the default dynamic
KV cache, and with a static cache (`cache_implementation="static"`) in reduce-overhead mode (CUDA
graphs per decode batch size). For each candidate and batch size: time to first token (a `generate`
of one new token), per-token latency of the decode steps ((time for N tokens - time to first token)
/ (N - 1); on a GPU also the profiler's device time of a decode step, the same difference over
profiled generates (`profile_call`): the rest is host time), the first `generate`'s time (compiles
included), the number of graphs compiled (tilefuse: its reports; torch.compile: Dynamo's frame
compiles) and how many greedy tokens equal eager's (all of them, or the tokens up to the first that
differs: a random-weight model in bf16 has near-ties that any change of kernel can flip). With a
static cache, `generate` compiles the forward itself (torch.compile, Inductor, reduce-overhead)
unless called with `disable_compile=True`: that automatic compile is the torch.compile row with a
static cache (how transformers documents it), and every other candidate disables it (else the
"eager, static cache" row would be torch.compile's, and a compiled candidate would run under it).
Every candidate runs on the same model (random weights from a config; nothing is downloaded) and the
same prompts, in one process. A failing candidate is a table cell, never the end of the run; the
results file is rewritten after each batch size.

`--tiny` builds a tiny config (hidden 64, 1 layer, prompt 8, 4 new tokens) so the harness runs
on a CPU; there its times mean nothing (one timing each: a per-token latency can even come out
negative, the prefill's interpreted kernels dwarfing the decode steps).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

import tilefuse

from .run import describe_error, environment_lines, release_memory
from .transformers_models import LLAMA, TINY_DECODER, fmt_cell, model_dtype, profile_call

DEFAULT_OUT = Path(__file__).with_name("RESULTS_generation.md")
EAGER, EAGER_STATIC = "eager", "eager, static cache"
COMPILE, COMPILE_STATIC = "torch.compile", "torch.compile reduce-overhead, static cache"
SUBJECT, SUBJECT_STATIC = "tilefuse", "tilefuse reduce-overhead, static cache"
CANDIDATES = (EAGER, EAGER_STATIC, COMPILE, COMPILE_STATIC, SUBJECT, SUBJECT_STATIC)
# `--candidates` names them by these keys (the rows' names hold commas)
KEYS = ("eager", "eager-static", "torch.compile", "torch.compile-static", "tilefuse", "tilefuse-static")
CANDIDATE_KEYS = dict(zip(KEYS, CANDIDATES))
REPEATS = {"cuda": 3, "cpu": 1}  # timed generates per figure (median), after the first
# generates before timing a compiled candidate: a graph measures itself against PyTorch on its
# first calls (compiler/selection.py), and the prompt's graph runs once per generate
SETTLE_GENERATES = 8


@dataclass(frozen=True)
class GenTiming:
    """One candidate at one batch size: what was measured, or why not."""

    candidate: str
    batch: int
    ttft_ms: float | None = None
    per_token_ms: float | None = None
    gpu_per_token_ms: float | None = None  # the profiler's device time of a decode step
    first_generate_s: float | None = None
    compiles: int | None = None
    same_tokens: int | None = None  # leading generated tokens equal to eager's
    note: str = ""
    error: str | None = None


def build(
    tiny: bool, device: torch.device, dtype: torch.dtype, kv_heads: int | None = None
) -> transformers.PreTrainedModel:
    """The Llama-style model; `kv_heads` overrides its KV heads (its query heads: one query row a head
    in a decode step, as models without grouped KV heads decode)."""
    options = dict(TINY_DECODER if tiny else LLAMA)
    if kv_heads is not None:
        options["num_key_value_heads"] = kv_heads
    config = transformers.LlamaConfig(**options, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(config)
    return model.to(dtype).eval()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dynamo_frame_compiles() -> int:
    """Frames Dynamo compiled since its counters were last cleared (torch.compile's compiles)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))


def compiled_forward(candidate: str, forward: Callable) -> Callable:
    """`model.forward` as the candidate runs it."""
    if candidate in (EAGER, EAGER_STATIC):
        return forward
    if candidate == COMPILE:
        return torch.compile(forward)
    if candidate == COMPILE_STATIC:  # generate compiles it (`measure`)
        return forward
    if candidate == SUBJECT:
        return tilefuse.compile(forward)
    return tilefuse.compile(forward, mode="reduce-overhead")


def measure(
    candidate: str, model, prompt: torch.Tensor, new_tokens: int, reference: torch.Tensor | None
) -> tuple[GenTiming, torch.Tensor | None]:
    """Time greedy `generate` of one candidate; returns its timing and its tokens."""
    device, batch = prompt.device, prompt.shape[0]
    static = candidate in (EAGER_STATIC, COMPILE_STATIC, SUBJECT_STATIC)
    # torch.compile with a static cache is transformers' own: `generate` compiles the forward
    # (Inductor, reduce-overhead) unless told not to; every other candidate is told not to
    kwargs = dict(
        do_sample=False, attention_mask=torch.ones_like(prompt), pad_token_id=0,
        disable_compile=candidate != COMPILE_STATIC,
    )  # fmt: skip
    if static:
        kwargs["cache_implementation"] = "static"
    original = model.forward
    release_memory(device)
    from torch._dynamo.utils import counters

    counters.clear()
    try:
        model.forward = compiled_forward(candidate, original)

        def generate(n: int) -> torch.Tensor:
            out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, **kwargs)
            synchronize(device)
            return out

        start = time.perf_counter()
        tokens = generate(new_tokens)
        first_s = time.perf_counter() - start
        repeats = REPEATS.get(device.type, 1)
        if device.type == "cuda" and candidate not in (EAGER, EAGER_STATIC):
            for _ in range(SETTLE_GENERATES):
                generate(2)
        ttft = _median_ms(lambda: generate(1), repeats)
        total = _median_ms(lambda: generate(new_tokens), repeats)
        gpu_one = profile_call(lambda: generate(1), device)[0]
        gpu_all = profile_call(lambda: generate(new_tokens), device)[0]
        gpu_token = None if gpu_one is None else (gpu_all - gpu_one) / max(new_tokens - 1, 1)
        reports = getattr(model.forward, "tilefuse_reports", None)
        # Dynamo's graphs; a dynamic graph's sizes compiled when called twice in a row are in the note
        compiles = len(_dynamo_graphs(reports)) if reports is not None else (dynamo_frame_compiles() or None)
        note = _tilefuse_note(reports) if reports is not None else ""
        same = None if reference is None else agreeing_tokens(tokens, reference, prompt.shape[1])
        timing = GenTiming(
            candidate, batch, ttft, (total - ttft) / max(new_tokens - 1, 1), gpu_token,
            None if candidate in (EAGER, EAGER_STATIC) else first_s, compiles, same, note,
        )  # fmt: skip
        return timing, tokens
    except Exception as exc:  # a failing candidate is a table cell
        return GenTiming(candidate, batch, error=describe_error(exc)), None
    finally:
        model.forward = original


def agreeing_tokens(tokens: torch.Tensor, reference: torch.Tensor, prompt: int) -> int:
    """How many generated tokens (after the prompt) equal the reference's before the first that
    differs, in any row of the batch."""
    new, ref = tokens[:, prompt:], reference[:, prompt:]
    if new.shape != ref.shape:
        return 0
    differs = (new != ref).any(0).nonzero()
    return int(differs[0]) if differs.numel() else new.shape[1]


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def _dynamo_graphs(reports: Sequence[dict]) -> list[dict]:
    """The reports of Dynamo's graphs, without the sizes a dynamic graph compiled apart."""
    return [r for r in reports if "specializes" not in r]


def _tilefuse_note(reports: Sequence[dict]) -> str:
    """How many of tilefuse's graphs have kernels, and why the others run in PyTorch."""
    dynamo_graphs = _dynamo_graphs(reports)
    with_kernels = sum(1 for r in dynamo_graphs if any(p["groups"] for p in r["partitions"]))
    reasons = sorted({f["op"] for r in reports for f in r["fallbacks"] if f["node"] == "<graph>"})
    graphs = ",".join(sorted({str(r["cudagraphs"]) for r in reports if "cudagraphs" in r}))
    sized = len(reports) - len(dynamo_graphs)
    note = f"{len(dynamo_graphs)} graph(s), {with_kernels} with kernels"
    note += f" (+{sized} compiled for sizes a dynamic graph repeated)" if sized else ""
    failed = [p["runtime_error"] for r in reports for p in r["partitions"] if p.get("runtime_error")]
    if failed:
        note += f"; {len(failed)} partition(s) failed at run time (PyTorch ran them): {failed[0]}"
    note += f"; whole graphs in PyTorch: {', '.join(reasons)}" if reasons else ""
    note += f"; CUDA graphs: {graphs}" if graphs else ""
    reused = sum(r.get("captures_reused", 0) for r in reports)
    note += f", {reused} kept capture(s) replayed again" if reused else ""
    because = [why for r in reports for why in r.get("captured_because", ())]
    return note + (f" (because: {'; '.join(dict.fromkeys(because))})" if because else "")


def render_table(timings: Sequence[GenTiming], new_tokens: int) -> str:
    lines = [
        "| batch | candidate | TTFT ms | per-token ms | vs eager | GPU ms/token | first generate s "
        "| compiles | tokens = eager's | notes |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    eager = {t.batch: t.per_token_ms for t in timings if t.candidate == EAGER}
    per_token = {(t.batch, t.candidate): t.per_token_ms for t in timings}
    for t in timings:
        ref = eager.get(t.batch)
        speedup = fmt_cell(ref / t.per_token_ms if ref and t.per_token_ms else None, ".2f")
        tc = per_token.get((t.batch, {SUBJECT: COMPILE, SUBJECT_STATIC: COMPILE_STATIC}.get(t.candidate)))
        if tc and t.per_token_ms:  # against torch.compile in the same setup
            speedup += f" ({tc / t.per_token_ms:.2f}x tc)"
        same = "—" if t.same_tokens is None else f"{t.same_tokens}/{new_tokens}"
        note = (f"FAILED: {t.error}" if t.error else t.note).replace("|", "\\|")
        cells = [
            str(t.batch), t.candidate, fmt_cell(t.ttft_ms, ".4g"), fmt_cell(t.per_token_ms, ".4g"),
            speedup, fmt_cell(t.gpu_per_token_ms, ".4g"),
            fmt_cell(t.first_generate_s, ".3g"),
            "—" if t.compiles is None else str(t.compiles), same, note,
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tilefuse.benchmarks.generation", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, help=f"markdown file (default {DEFAULT_OUT}; none with --tiny)")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--prompt", type=int, help="prompt tokens (default 512; 8 with --tiny)")
    parser.add_argument("--new-tokens", type=int, help="generated tokens (default 128; 4 with --tiny)")
    parser.add_argument(
        "--dtype", choices=("bfloat16", "float32"), help="default bfloat16; float32 with --tiny"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny config, runnable on a CPU")
    parser.add_argument("--no-torch-compile", action="store_true", help="leave the torch.compile rows out")
    parser.add_argument(
        "--candidates",
        help=f"comma-separated, of: {', '.join(CANDIDATE_KEYS)} (default all; eager always runs: its tokens "
        "are the reference; a -static key is the row with the static cache)",
    )
    parser.add_argument(
        "--kv-heads", type=int,
        help="KV heads (default the config's grouped 4, 2 with --tiny; the query heads' count: no grouping)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",") if b]
    keys = KEYS if args.candidates is None else [c.strip() for c in args.candidates.split(",")]
    unknown = [c for c in keys if c not in CANDIDATE_KEYS]
    if unknown:
        parser.error(f"unknown candidates {unknown}; choose from: {', '.join(CANDIDATE_KEYS)}")
    wanted = {CANDIDATE_KEYS[c] for c in keys}
    args.candidates = [c for c in CANDIDATES if c == EAGER or c in wanted]
    args.prompt = args.prompt or (8 if args.tiny else 512)
    args.new_tokens = args.new_tokens or (4 if args.tiny else 128)
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (per-token latency is over the decode steps)")
    if not args.tiny and not torch.cuda.is_available():
        parser.error("realistic sizes need a CUDA device; --tiny runs a tiny config on the CPU")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    dtype = model_dtype(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build(args.tiny, device, dtype, args.kv_heads)
    header = [
        *environment_lines(__spec__.name, device, dtype, argv),
        f"- transformers {transformers.__version__}; LlamaForCausalLM from a config (seeded random weights), "
        f"{model.config.num_attention_heads} query heads over {model.config.num_key_value_heads} KV heads, "
        f"greedy, prompt {args.prompt} tokens, {args.new_tokens} new tokens",
    ]
    out = args.out or (None if args.tiny else DEFAULT_OUT)
    skipped = (COMPILE, COMPILE_STATIC) if args.no_torch_compile else ()
    candidates = [c for c in args.candidates if c not in skipped]
    timings: list[GenTiming] = []
    report = ""
    for batch in args.batches:
        generator = torch.Generator().manual_seed(batch)
        shape = (batch, args.prompt)
        prompt = torch.randint(1, model.config.vocab_size, shape, generator=generator).to(device)
        reference = None
        for candidate in candidates:
            timing, tokens = measure(candidate, model, prompt, args.new_tokens, reference)
            if candidate == EAGER:
                reference = tokens
            timings.append(timing)
            shown = timing.error or f"TTFT {timing.ttft_ms:.4g} ms, {timing.per_token_ms:.4g} ms/token"
            print(f"[batch {batch}] {candidate}: {shown}", file=sys.stderr, flush=True)
        table = render_table(timings, args.new_tokens)
        report = "\n".join(["# Greedy generation", "", *header, "", table, ""])
        if out is not None:
            out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
