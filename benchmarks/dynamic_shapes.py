"""One compiled model called at several sequence lengths, against eager and `torch.compile`.

    python -m tilefuse.benchmarks.dynamic_shapes [--out FILE] [--models llama,gpt2]
        [--lengths 384,512,640,1000] [--dtype bfloat16|float32] [--tiny] [--no-torch-compile]

Each candidate compiles the model once, then: a sweep calls every length once (seconds of the
whole sweep: Dynamo's first compile, its dynamic recompile, and for tilefuse the dynamic graph's
sizes run through its kernels of symbolic sizes, contractions in PyTorch); then, per length, untimed
warm calls (where tilefuse compiles a size seen again: `compiler/specialize.py`, unless
TILEFUSE_SPECIALIZE=0; their seconds, summed over lengths, are the "warm s" column), and
the median of `triton.testing.do_bench` (on a GPU also the profiler's device time of one call, "GPU":
the rest of the wall time is the host's). Compiles: graphs compiled by the candidate's backend
(Dynamo's for torch.compile; for tilefuse its reports: static graphs, the dynamic graph, and one
per specialized size). The longest length's output is compared with a float64 copy of the model.
Batch 4; models from configs with random weights, eval mode, `torch.no_grad()`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch._dynamo.utils import counters

import tilefuse

from .cases import COMPILE, EAGER
from .run import SUBJECT, describe_error, environment_lines, relative_error, release_memory, time_ms
from .transformers_models import (
    MODELS,
    SETTLE_CALLS,
    add_model_arguments,
    build_model,
    check_model_args,
    float64_reference,
    fmt_cell,
    model_dtype,
    output_tensor,
    profile_call,
    synchronize,
)

DEFAULT_OUT = Path(__file__).with_name("RESULTS_dynamic.md")
DEFAULT_LENGTHS = (384, 512, 640, 1000)
TINY_LENGTHS = (5, 9, 13)


def compiles(candidate: str, compiled: Callable, dynamo_before: int) -> int | None:
    """Graphs the candidate compiled: tilefuse's reports, or Dynamo's unique graphs since the start."""
    if candidate == SUBJECT:
        return len(getattr(compiled, "tilefuse_reports", []))
    if candidate == COMPILE:
        return counters["stats"]["unique_graphs"] - dynamo_before
    return None


def run_candidate(
    candidate: str, compile_fn: Callable, model: torch.nn.Module, inputs: dict[int, dict],
    device: torch.device, reference: torch.Tensor,
) -> dict:  # fmt: skip
    """The sweep, then each length's second call and median; errors become the row's note."""
    release_memory(device)
    torch._dynamo.reset()
    dynamo_before = counters["stats"]["unique_graphs"]
    row: dict = {"candidate": candidate, "ms": {}, "gpu_ms": {}}
    try:
        compiled = compile_fn(model)
        start = time.perf_counter()
        with torch.no_grad():
            for length in inputs:
                compiled(**inputs[length])
            synchronize(device)
            row["sweep_s"] = time.perf_counter() - start
            warm = 0.0
            for length, kwargs in inputs.items():
                start = time.perf_counter()
                out = output_tensor(compiled(**kwargs))
                for _ in range(SETTLE_CALLS if device.type == "cuda" else 1):
                    compiled(**kwargs)
                synchronize(device)
                warm += time.perf_counter() - start
                row["ms"][length] = time_ms(lambda kw=kwargs: compiled(**kw), device, cpu_repeats=1)
                row["gpu_ms"][length] = profile_call(lambda kw=kwargs: compiled(**kw), device)[0]
            row["warm_s"] = warm
            row["err_fp64"] = relative_error(out, reference)
        row["compiles"] = compiles(candidate, compiled, dynamo_before)
    except Exception as exc:  # a failing candidate is a row note, never the end of the run
        row["error"] = describe_error(exc)
    return row


def render(model: str, lengths: Sequence[int], rows: list[dict]) -> list[str]:
    """One markdown table per model: a column per length (ms, ratio to eager and torch.compile, and
    on a GPU the profiler's device time of one call: wall minus that is host time)."""
    base = {r["candidate"]: r["ms"] for r in rows}
    head = ["candidate", *[f"len {n} ms" for n in lengths], "sweep s", "warm s", "compiles", "err fp64"]
    lines = [f"### {model}", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r["candidate"]]
        for n in lengths:
            ms = r["ms"].get(n)
            cell = fmt_cell(ms, ".3f")
            ratios = [
                f"{base[b][n] / ms:.2f}x {short}"
                for b, short in ((EAGER, "eager"), (COMPILE, "tc"))
                if ms and b != r["candidate"] and base.get(b, {}).get(n)
            ]
            gpu = r["gpu_ms"].get(n)
            if gpu is not None:
                ratios.append(f"GPU {gpu:.3f}")
            cells.append(cell + (f" ({', '.join(ratios)})" if ratios else ""))
        cells += [fmt_cell(r.get("sweep_s"), ".1f"), fmt_cell(r.get("warm_s"), ".1f")]
        count = r.get("compiles")
        cells += ["—" if count is None else str(count), fmt_cell(r.get("err_fp64"), ".1e")]
        lines.append("| " + " | ".join(cells) + " |" + (f" error: {r['error']}" if "error" in r else ""))
    return lines + [""]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tilefuse.benchmarks.dynamic_shapes", description=__doc__.split("\n")[0]
    )
    add_model_arguments(parser, DEFAULT_OUT, ("llama",))
    parser.add_argument("--lengths", help="comma-separated sequence lengths (default 384,512,640,1000)")
    args = check_model_args(parser, parser.parse_args(argv))
    default = TINY_LENGTHS if args.tiny else DEFAULT_LENGTHS
    args.lengths = [int(n) for n in args.lengths.split(",")] if args.lengths else list(default)
    if any(n < 2 for n in args.lengths) or len(set(args.lengths)) != len(args.lengths):
        parser.error("--lengths: distinct lengths of at least 2 tokens")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    dtype = model_dtype(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    candidates = {EAGER: lambda m: m, SUBJECT: tilefuse.compile}
    if not args.no_torch_compile:
        candidates[COMPILE] = torch.compile
    out = args.out or (None if args.tiny else DEFAULT_OUT)
    lines = [*environment_lines(__spec__.name, device, dtype, argv), ""]
    for name in args.models:
        model, base_inputs = build_model(MODELS[name], args.tiny, device, dtype)
        ids = base_inputs["input_ids"]
        vocab = int(ids.max()) + 1
        generator = torch.Generator().manual_seed(2)
        inputs = {
            n: {"input_ids": torch.randint(0, vocab, (ids.shape[0], n), generator=generator).to(device)}
            for n in args.lengths
        }  # fmt: skip
        with torch.no_grad():
            reference = float64_reference(model, inputs[args.lengths[-1]])
        rows = []
        for candidate, compile_fn in candidates.items():
            print(f"[{name}] {candidate} ...", file=sys.stderr, flush=True)
            rows.append(run_candidate(candidate, compile_fn, model, inputs, device, reference))
            print(f"[{name}] {candidate}: {rows[-1]}", file=sys.stderr, flush=True)
        del reference
        lines += render(name, args.lengths, rows)
        if out:
            out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
