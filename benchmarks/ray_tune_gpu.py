"""Trial throughput of a tuning job on Ray against the local executor (issue 16: within 10%).

    python -m tilefuse.benchmarks.ray_tune_gpu [--budget N] [--gpus N|all] [--out FILE]

Tunes the kernels of a Llama-style block (bf16, 1x512 tokens: examples/tune_block.py's GPU
target) twice, with the same budget: with the local executor, then on a local Ray cluster
(`ray=True`) with `--gpus` runner actors (the local job gets as many workers). Each run has a
fresh tuning database and a fresh Triton cache, so neither reuses the other's compiles. The
table gives each run's trials per second (summed over its runners; tuning time only, builds
included, Ray's start-up not) beside its wall time (compile of the model and start-up
included), the block's end-to-end time before and after tuning (the job's summary: compiled
with default configs, then with the tuned ones), and how many trials each device measured.
A worker tunes whole kernels: `--gpus` beyond the block's kernel count leaves GPUs idle.
Needs a GPU and `pip install tilefuse[ray]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

import tilefuse

from .models import LlamaBlock
from .run import environment_lines


def _block() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = LlamaBlock(dim=1024, heads=16, kv_heads=4, hidden=2816).to("cuda", torch.bfloat16).eval()
    return model, (torch.randn(1, 512, 1024, device="cuda", dtype=torch.bfloat16),)


def _tune(
    name: str, budget: int, workers: int | None, ray: bool | None, scratch: Path
) -> tuple[float, str, str]:
    """One job in a fresh database and Triton cache: its trials per second, its row of the table, and
    its summary's selection (each tuned kernel against its library paths, measured after the job)."""
    # read by the build and measure processes (and Ray's workers) as they start
    os.environ["TRITON_CACHE_DIR"] = str(scratch / f"triton-{name}")
    model, inputs = _block()
    start = time.perf_counter()
    summary = tilefuse.tune(
        model, inputs, budget, workers=workers, ray=ray, database=scratch / f"{name}.db", progress=False
    )
    wall = time.perf_counter() - start
    trials = sum(r.trials for r in summary.runners)
    rate = sum(r.per_second or 0.0 for r in summary.runners)
    devices = ", ".join(f"{r.place}: {r.trials}" for r in summary.runners)
    model = "—" if summary.before_ms is None else f"{summary.before_ms:.4g} → {summary.after_ms:.4g}"
    row = f"| {name} | {len(summary.runners)} | {trials} | {rate:.3g} | {wall:.1f} | {model} | {devices} |"
    return rate, row, summary.selection()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=int, default=24, help="trials per kernel (default 24)")
    parser.add_argument("--gpus", default="1", help="runner actors (and local workers): N or all (default 1)")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("ray_tune_gpu needs a GPU")
    gpus = None if args.gpus == "all" else int(args.gpus)
    with tempfile.TemporaryDirectory(prefix="ray_tune_gpu-") as scratch:
        local_rate, local, _ = _tune(
            "local", args.budget, gpus or torch.cuda.device_count(), None, Path(scratch)
        )
        ray_rate, on_ray, selection = _tune("ray", args.budget, gpus, True, Path(scratch))
    lines = [
        "# Tuning throughput: Ray executor against local",
        "",
        *environment_lines("tilefuse.benchmarks.ray_tune_gpu", torch.device("cuda"), torch.bfloat16,
                           argv if argv is not None else sys.argv[1:]),
        f"- budget {args.budget} trials per kernel; Ray/local throughput: {ray_rate / local_rate:.3f}",
        "",
        "| executor | runners | trials | trials/s | wall s | block ms before → after tuning "
        "| trials per device |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
        local,
        on_ray,
        "",
        f"The Ray job's {selection[0].lower()}{selection[1:]}",
    ]  # fmt: skip
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
