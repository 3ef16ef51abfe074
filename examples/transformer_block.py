"""Compile a small Llama-style transformer block with tilefuse and check it against eager.

    python3 examples/transformer_block.py [--dump DIR] [--dtype float32|bfloat16]

Prints where the IR dumps went, what was compiled and what fell back, and
the error against eager PyTorch. On a GPU it also prints the time of both.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import torch

import tilefuse
from tilefuse.benchmarks.models import LlamaBlock


def _time_ms(fn, *args) -> float:
    try:
        from triton.testing import do_bench

        return do_bench(lambda: fn(*args))
    except ImportError:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        fn(*args)
        start.record()
        for _ in range(20):
            fn(*args)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dump", default="tilefuse_dump", help="folder for the IR dumps")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # which checkout runs: an editable install made in another clone would run that clone's code
    print(f"tilefuse from {Path(tilefuse.__file__).parent}")
    if device == "cpu":  # without it a compiled graph runs as PyTorch on CPU; here we want its kernels
        os.environ["TILEFUSE_INTERPRET"] = "1"
        print("no GPU: TILEFUSE_INTERPRET=1, so the generated Triton kernels run in Triton's interpreter")
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)

    model = LlamaBlock(dim=128, heads=8, kv_heads=4, hidden=352).to(device, dtype).eval()
    x = torch.randn(2, 48, 128, device=device, dtype=dtype)
    compiled = tilefuse.compile(model, dump=args.dump)
    with torch.no_grad():
        out = compiled(x)
        reference = copy.deepcopy(model).to(torch.float64)(x.to(torch.float64))
        eager = model(x)

    dump_dir = Path(compiled.tilefuse_dump_dir)
    print(f"IR dumps: {dump_dir}  (start with {dump_dir / 'index.txt'}; summary: tilefuse inspect {dump_dir},"
          f" report: tilefuse inspect {dump_dir} --html report.html)")
    kernels = 0
    for report in compiled.tilefuse_reports:
        print(f"graph {report['name']}: {len(report['partitions'])} compiled partition(s), "
              f"{len(report['fallbacks'])} op(s) left to PyTorch, "
              f"compile cache {report['cache']}")  # fmt: skip
        if report["cache"] == "hit":  # the passes did not run: their dump files are stubs
            print("  (a compile-cache hit: the dump's stages before fusion are stubs; "
                  "TILEFUSE_CACHE=0 before the command dumps every stage)")  # fmt: skip
        for p in report["partitions"]:
            print(f"  {p['name']}: {len(p['aten_ops'])} aten ops, runs as {p['executor']}")
            for g in p["groups"]:
                where = f"kernel {g['kernel']}" if g["kernel"] else f"op by op ({g['not_a_kernel_because']})"
                print(f"    {g['name']:>4} {g['kind']:<9} {' + '.join(g['ops'])} -> {where}")
                kernels += bool(g["kernel"])
        for f in report["fallbacks"]:
            print(f"  left to PyTorch: {f['node']} ({f['op']}): {f['reason']}")

    scale = reference.abs().max().item()
    err = (out.double() - reference).abs().max().item() / scale
    eager_err = (eager.double() - reference).abs().max().item() / scale
    print(f"max error vs float64 reference (relative to max |y|): tilefuse {err:.2e}, eager {eager_err:.2e}")
    print(f"max abs difference vs eager: {(out - eager).abs().max().item():.3e}")

    if device == "cuda":
        with torch.no_grad():
            t_eager, t_ours = _time_ms(model, x), _time_ms(compiled, x)
        print(f"time: eager {t_eager:.3f} ms, tilefuse {t_ours:.3f} ms, speedup {t_eager / t_ours:.2f}x")
    else:
        print("no GPU: timing skipped (the interpreter says nothing about GPU speed)")

    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    if kernels == 0:
        print("FAIL: no generated kernel ran; the model ran in PyTorch (see the dump's index.txt)")
        return 1
    if err > max(tolerance, 4 * eager_err):
        print(f"FAIL: error {err:.2e} is above tolerance {tolerance:.0e}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
