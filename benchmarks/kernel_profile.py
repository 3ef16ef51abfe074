"""Where the GPU time goes, kernel by kernel: tilefuse against torch.compile on one workload (GPU only).

    python -m tilefuse.benchmarks.kernel_profile [--what training|forward|decode] [--model llama]
        [--dtype bfloat16|float32] [--top 30]

- `training`: one step of `transformers_models.MODELS[model]` (`training.build`: train mode, dropout
  off, its full config), `model(input_ids, labels).loss.backward()`, tilefuse with its forward and
  backward compiled (`TILEFUSE_TRAINING=compile`);
- `forward`: the model's forward under no_grad (`transformers_models.build_model`);
- `decode`: a static-cache greedy decode step of the generation benchmark's Llama at batch 1: the
  kernels of a 65-token `generate` less those of a 1-token one, per decode step.

For each candidate: the profiler's kernels of a call, summed by kernel name (GPU us a call, launches a
call), largest first, and the total; then the do_bench median wall time (not for `decode`). The names
tell what ran: tilefuse's kernels are named by kind and a hash (`gemm_…`, `row_…`), library kernels by
the library's names (`nvjet_…` cuBLAS, `cudnn_…`), PyTorch's by their ATen functors.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Sequence

import torch

KINDS = ("training", "forward", "decode")


def kernel_table(events: Iterable, calls: int) -> dict[str, tuple[float, float]]:
    """GPU events summed by name: {name: (us a call, launches a call)}, largest first."""
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA:
            totals[e.name][0] += e.device_time / calls
            totals[e.name][1] += 1 / calls
    return {k: (v[0], v[1]) for k, v in sorted(totals.items(), key=lambda kv: -kv[1][0])}


def difference(more: dict, less: dict, per: int) -> dict[str, tuple[float, float]]:
    """`more` less `less` (kernel tables of two calls), divided by `per`: the part of the longer call."""
    names = set(more) | set(less)
    diff = {n: ((more.get(n, (0, 0))[0] - less.get(n, (0, 0))[0]) / per,
                (more.get(n, (0, 0))[1] - less.get(n, (0, 0))[1]) / per) for n in names}  # fmt: skip
    return dict(sorted(diff.items(), key=lambda kv: -kv[1][0]))


def render(label: str, table: dict[str, tuple[float, float]], top: int) -> str:
    total = sum(us for us, _ in table.values())
    launches = sum(n for _, n in table.values())
    lines = [f"== {label}: {total:.1f} us of GPU a call, {launches:.1f} launches"]
    lines += [f"  {us:9.2f} us {n:6.2f}x  {name[:140]}" for name, (us, n) in list(table.items())[:top]]
    return "\n".join(lines)


def profiled(fn: Callable[[], object], calls: int = 5) -> dict[str, tuple[float, float]]:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return kernel_table(prof.events(), calls)


def _compiled(candidate: str, model: torch.nn.Module) -> Callable:
    import tilefuse

    return torch.compile(model) if candidate == "torch.compile" else tilefuse.compile(model)


def profile_training(model_name: str, dtype: torch.dtype, top: int) -> None:
    for candidate in ("torch.compile", "tilefuse"):
        torch._dynamo.reset()
        _training_candidate(candidate, model_name, dtype, top)
        torch.cuda.empty_cache()


def _training_candidate(candidate: str, model_name: str, dtype: torch.dtype, top: int) -> None:
    from tilefuse.compiler.api import once_logging_as_dynamo_has_it
    from tilefuse.compiler.selection import TRAINING_ENV

    from .training import build, train_step
    from .transformers_models import MODELS

    model, ids = build(MODELS[model_name], False, torch.device("cuda"), dtype)
    tc = candidate == "torch.compile"
    natural = once_logging_as_dynamo_has_it() if tc else contextlib.nullcontext()
    setting = os.environ.pop(TRAINING_ENV, None)
    if not tc:
        os.environ[TRAINING_ENV] = "compile"  # forward and backward compiled, every step
    try:
        with natural:
            fn = _compiled(candidate, model)

            def step() -> None:
                train_step(fn, model, ids)

            print(render(f"{model_name} training step, {candidate}", profiled(step), top), flush=True)
            _wall(step)
    finally:
        os.environ.pop(TRAINING_ENV, None)
        if setting is not None:
            os.environ[TRAINING_ENV] = setting


def profile_forward(model_name: str, dtype: torch.dtype, top: int) -> None:
    from .transformers_models import MODELS, build_model

    for candidate in ("torch.compile", "tilefuse"):
        torch._dynamo.reset()
        model, inputs = build_model(MODELS[model_name], False, torch.device("cuda"), dtype)
        fn = _compiled(candidate, model)

        def call(fn: Callable = fn, inputs: dict = inputs) -> object:
            return fn(**inputs)

        with torch.no_grad():
            print(render(f"{model_name} forward, {candidate}", profiled(call), top), flush=True)
            _wall(call)
        torch.cuda.empty_cache()


def profile_decode(dtype: torch.dtype, top: int, steps: int = 64) -> None:
    from . import generation as g

    device = torch.device("cuda")
    model = g.build(False, device, dtype)
    forward = model.forward
    prompt = torch.randint(1, model.config.vocab_size, (1, 512), generator=torch.Generator().manual_seed(1))
    prompt = prompt.to(device)
    for candidate in (g.COMPILE_STATIC, g.SUBJECT_STATIC):
        torch._dynamo.reset()
        options = dict(
            do_sample=False, attention_mask=torch.ones_like(prompt), pad_token_id=0,
            disable_compile=candidate != g.COMPILE_STATIC, cache_implementation="static",
        )  # fmt: skip
        model.forward = g.compiled_forward(candidate, forward)
        tables = {}
        for n in (1, steps + 1):

            def generate(n: int = n, options: dict = options) -> None:
                model.generate(prompt, max_new_tokens=n, min_new_tokens=n, **options)

            tables[n] = profiled(generate, calls=2)
        table = difference(tables[steps + 1], tables[1], steps)
        print(render(f"static-cache decode step, batch 1, {candidate}", table, top), flush=True)
        model.forward = forward


def _wall(fn: Callable[[], object]) -> None:
    import triton.testing

    ms = triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")
    print(f"  wall (do_bench median): {ms:.3f} ms", flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tilefuse.benchmarks.kernel_profile", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--what", choices=KINDS, default="training")
    parser.add_argument("--model", default="llama", help="a transformers_models.MODELS name (not for decode)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--top", type=int, default=30, help="kernels listed per candidate")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from .transformers_models import MODELS

    if args.what != "decode" and args.model not in MODELS:
        print(f"kernel_profile: no model {args.model!r}; known: {', '.join(sorted(MODELS))}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("kernel_profile: needs a CUDA GPU (it reads the profiler's kernel times)", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    if args.what == "training":
        profile_training(args.model, dtype, args.top)
    elif args.what == "forward":
        profile_forward(args.model, dtype, args.top)
    else:
        profile_decode(dtype, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
