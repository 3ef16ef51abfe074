"""Time a few tile configurations on the benchmark cases (GPU), to choose default heuristics.

    python -m tilefuse.benchmarks.sweep_configs [--kind gemm|attention|row] [--only NAME...]

Each configuration is forced with TILEFUSE_KERNEL_CONFIG and compiled afresh;
prints one line per (case, configuration): median ms and relative error, and what ran when it was
not the kernels (a configuration a kernel cannot take fails its compile, and the graph then runs
in PyTorch: that line times PyTorch).
"""

from __future__ import annotations

import argparse
import json
import os
from functools import partial

import torch
import torch._dynamo

import tilefuse
from tilefuse.autotune.heuristics import CONFIG_ENV
from tilefuse.benchmarks.cases import benchmark_cases
from tilefuse.benchmarks.run import WeightsAsParameters, tilefuse_note

CONFIGS = {}
CONFIGS["gemm"] = [
    {},
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 4},
    {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 5},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4},
    # operands through TMA descriptors (where their layout allows), then with a warp-specialized loop
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3, "USE_TMA": 1},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4, "USE_TMA": 1},
    {
        "BLOCK_M": 128,
        "BLOCK_N": 128,
        "BLOCK_K": 64,
        "num_warps": 8,
        "num_stages": 3,
        "USE_TMA": 1,
        "USE_WS": 1,
    },
]
CONFIGS["attention"] = [
    {},
    {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 4},
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2},
    {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 32, "num_warps": 8, "num_stages": 3},
]
CONFIGS["row"] = [{}, {"num_warps": 4}, {"num_warps": 16}, {"num_warps": 32}, {"BLOCK_R": 2, "num_warps": 16}]


def main() -> None:
    from triton.testing import do_bench

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=sorted(CONFIGS), default="gemm")
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    for case in benchmark_cases(1):
        if args.only and case.name not in args.only:
            continue
        inputs = case.make_inputs("cuda", torch.bfloat16)
        reference = case.fn(*(t.double() for t in inputs))
        fn = case.fn
        if case.activations:
            fn = WeightsAsParameters(case.fn, inputs[case.activations :])
            inputs = inputs[: case.activations]
        for config in CONFIGS[args.kind]:
            os.environ[CONFIG_ENV] = json.dumps({args.kind: config})
            torch._dynamo.reset()
            compiled = tilefuse.compile(fn)
            with torch.no_grad():
                out = compiled(*inputs)
                ms = do_bench(partial(compiled, *inputs), return_mode="median")
            err = ((out.double() - reference).norm() / reference.norm()).item()
            label = json.dumps(config) if config else "default"
            reports = compiled.tilefuse_reports
            partitions = [p for r in reports for p in r["partitions"]]
            kernels_ran = not any(r["fallbacks"] for r in reports) and not any(
                p.get("executor", "").startswith("pytorch") for p in partitions
            )
            ran = "" if kernels_ran else f"  NOT THE KERNELS: {tilefuse_note(compiled)}"
            print(f"{case.name:16s} {label:90s} {ms:8.4f} ms  err {err:.2e}{ran}", flush=True)


if __name__ == "__main__":
    main()
