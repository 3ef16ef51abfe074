"""One training step (forward, loss, backward) of `transformers` models: eager, `torch.compile`, tilefuse.

    python -m tilefuse.benchmarks.training [--out FILE] [--models llama,gpt2] [--dtype bfloat16|float32]
        [--tiny] [--no-torch-compile] [--optimizer none|sgd|adamw] [--autocast]

Each model is built from its config (random weights, seeded; nothing is downloaded), in train mode,
and one step is `model(input_ids, labels=input_ids).loss.backward()` with the gradients cleared
after it; by default no optimizer (the step's compute is the compiler's part), with `--optimizer`
the step ends with the optimizer's update as a training loop's does (PyTorch's, not compiled, in
every candidate; the parameters then change every step, so what a compiled forward derives from them
is computed every step). For each candidate: the median step time once settled (tilefuse runs a
graph whose backward has run in PyTorch from then on, see the report's `training`;
`TILEFUSE_TRAINING=1` keeps its compiled forward; the row "tilefuse compiled backward" runs with
`TILEFUSE_TRAINING=compile`: forward and backward graphs compiled, every step), on a GPU the
profiler's device time of a step (the rest of the wall time is the host's), the first step's time
(compiles included), the loss and gradient errors relative to eager's on the same weights and batch,
and every candidate's gradient error against the same step run in float64 (eager has one too: a
compiled step may be closer to float64 than eager is). A failing candidate is a table cell; the file
is rewritten after each model.
`--autocast` keeps the weights in float32 and runs each forward under `torch.autocast` with bfloat16
(the mixed-precision loop most training scripts use; backward outside it, as PyTorch recommends).
`--tiny` builds tiny configs (hidden 64, 1 layer, 2 x 16 tokens) so the harness runs on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

import tilefuse
from tilefuse.compiler.api import once_logging_as_dynamo_has_it
from tilefuse.compiler.selection import TRAINING_ENV

from .run import describe_error, environment_lines, release_memory, time_ms
from .transformers_models import (
    MODELS,
    ModelSpec,
    add_model_arguments,
    check_model_args,
    fmt_cell,
    model_dtype,
    profile_call,
)

DEFAULT_OUT = Path(__file__).with_name("RESULTS_training.md")
DEFAULT_MODELS = ("llama", "gpt2")
EAGER, COMPILE, SUBJECT = "eager", "torch.compile", "tilefuse"
COMPILED_BACKWARD = "tilefuse compiled backward"  # TILEFUSE_TRAINING=compile: forward and backward compiled
CANDIDATES = (EAGER, COMPILE, SUBJECT, COMPILED_BACKWARD)
# steps before timing: compiles, and tilefuse's measured choice once a backward ran (its first step,
# the partitions settling, PyTorch's warm-up, then ROUNDS steps each way: selection.TrainingSelection)
SETTLE_STEPS = 16
DROPOUT_NAMES = (
    "attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout",
    "attention_probs_dropout_prob", "hidden_dropout_prob",  # BERT's spelling
)  # fmt: skip


@dataclass(frozen=True)
class StepTiming:
    model: str
    candidate: str
    step_ms: float | None = None
    gpu_ms: float | None = None  # the profiler's device time of a step
    first_step_s: float | None = None
    loss_err: float | None = None
    grad_err: float | None = None
    grad_err64: float | None = None  # against the same step in float64
    note: str = ""
    error: str | None = None


def build(spec: ModelSpec, tiny: bool, device: torch.device, dtype: torch.dtype):
    """The model in train mode (dropout off, so steps are comparable) and a batch of token ids."""
    config_class = getattr(transformers, spec.config_class)
    options = dict(spec.tiny if tiny else spec.full)
    for name in DROPOUT_NAMES:
        options[name] = 0.0  # not every config knows every name; unknown ones are kept as attributes
    config = config_class(**options, attn_implementation=spec.attention, use_cache=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = getattr(transformers, spec.training_class or spec.model_class)(config)
    model = model.to(dtype).train()
    batch, seq = spec.shape(tiny)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(1))
    return model, ids.to(device)


OPTIMIZERS = {
    "none": None,
    "sgd": lambda params: torch.optim.SGD(params, lr=1e-4, momentum=0.9),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-4),
}


def train_step(
    fn: Callable, model: torch.nn.Module, ids: torch.Tensor, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """The step that is timed: forward, backward, the optimizer's update if any, gradients cleared
    (nothing gathered to compare)."""
    fn(input_ids=ids, labels=ids).loss.backward()
    if optimizer is not None:
        optimizer.step()
    model.zero_grad(set_to_none=True)


def autocast_forward(fn: Callable, device: torch.device, enabled: bool) -> Callable:
    """`fn`, run under `torch.autocast` with bfloat16 when `enabled` (the backward runs outside it)."""
    if not enabled:
        return fn

    def forward(**kwargs: object) -> object:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return fn(**kwargs)

    return forward


def step(fn: Callable, model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step; returns the loss and the flattened gradients (then cleared)."""
    loss = fn(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return loss.detach().float(), grads


def float64_step(spec: ModelSpec, tiny: bool, device: torch.device, dtype: torch.dtype):
    """The loss and gradients of one step of the model as built in `dtype`, computed in float64 (the
    oracle: eager's own rounding shows beside the compiled candidates'); None where float64 cannot run
    the model."""
    try:
        model, ids = build(spec, tiny, device, dtype)
        model = model.double()
        return step(model, model, ids)
    except Exception as exc:  # a model without float64 kernels (a grouped matmul): no column
        print(f"[{spec.name}] no float64 reference: {describe_error(exc)}", file=sys.stderr, flush=True)
        return None
    finally:
        release_memory(device)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def measure(
    candidate: str, spec: ModelSpec, args: argparse.Namespace, device, dtype, ref, ref64=None
) -> StepTiming:
    release_memory(device)
    setting = os.environ.pop(TRAINING_ENV, None)
    if candidate == COMPILED_BACKWARD:
        os.environ[TRAINING_ENV] = "compile"
    # torch.compile as its users have it: tilefuse's compile makes Dynamo trace through transformers'
    # once-only log calls process-wide (GPT-2's loss is then one graph with its forward)
    natural = once_logging_as_dynamo_has_it() if candidate == COMPILE else contextlib.nullcontext()
    try:
        with natural:
            return _measure(candidate, spec, args, device, dtype, ref, ref64)
    finally:
        os.environ.pop(TRAINING_ENV, None)
        if setting is not None:
            os.environ[TRAINING_ENV] = setting


def _measure(
    candidate: str, spec: ModelSpec, args: argparse.Namespace, device, dtype, ref, ref64
) -> StepTiming:
    try:
        model, ids = build(spec, args.tiny, device, dtype)
        torch._dynamo.reset()  # each candidate compiles its own graphs (the training setting is read then)
        compile_fn = {EAGER: lambda m: m, COMPILE: torch.compile}.get(candidate, tilefuse.compile)
        compiled = compile_fn(model)
        fn = autocast_forward(compiled, device, args.autocast)
        start = time.perf_counter()
        loss, grads = step(fn, model, ids)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        first_s = time.perf_counter() - start
        make_optimizer = OPTIMIZERS[args.optimizer]
        optimizer = make_optimizer(model.parameters()) if make_optimizer else None
        for _ in range(SETTLE_STEPS if device.type == "cuda" else 0):  # nothing measures itself on a CPU
            train_step(fn, model, ids, optimizer)
        ms = time_ms(lambda: train_step(fn, model, ids, optimizer), device, cpu_repeats=1)
        gpu_ms = profile_call(lambda: train_step(fn, model, ids, optimizer), device)[0]
        errs = (None, None) if ref is None else (relative(loss, ref[0]), relative(grads, ref[1]))
        err64 = None if ref64 is None else relative(grads, ref64[1])
        note = ""
        if candidate in (SUBJECT, COMPILED_BACKWARD):
            reports = compiled.tilefuse_reports
            note = "; ".join(sorted({r["training"] for r in reports if "training" in r})) or (
                f"{len(reports)} graph(s); the compiled forward runs every step"
            )
            backward = sum(r.get("kind") == "backward" for r in reports)
            note += f"; {backward} backward graph(s) compiled" if backward else ""
        first = None if candidate == EAGER else first_s
        timing = StepTiming(spec.name, candidate, ms, gpu_ms, first, *errs, err64, note)
        return timing, (loss, grads)
    except Exception as exc:  # a failing candidate is a table cell
        return StepTiming(spec.name, candidate, error=describe_error(exc)), None


def render_table(timings: Sequence[StepTiming]) -> str:
    lines = [
        "| model | candidate | step ms | vs eager | GPU ms | first step s | loss err vs eager "
        "| grad err vs eager | grad err vs float64 | notes |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    eager = {t.model: t.step_ms for t in timings if t.candidate == EAGER}
    tc = {t.model: t.step_ms for t in timings if t.candidate == COMPILE}
    for t in timings:
        ref = eager.get(t.model)
        speedup = fmt_cell(ref / t.step_ms if ref and t.step_ms else None, ".2f")
        if t.candidate in (SUBJECT, COMPILED_BACKWARD) and tc.get(t.model) and t.step_ms:
            speedup += f" ({tc[t.model] / t.step_ms:.2f}x tc)"
        note = (f"FAILED: {t.error}" if t.error else t.note).replace("|", "\\|")
        errors = [fmt_cell(t.loss_err, ".2e"), fmt_cell(t.grad_err, ".2e"), fmt_cell(t.grad_err64, ".2e")]
        timing = [fmt_cell(t.step_ms, ".4g"), speedup, fmt_cell(t.gpu_ms, ".4g")]
        timing.append(fmt_cell(t.first_step_s, ".3g"))
        cells = [t.model, t.candidate, *timing, *errors, note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tilefuse.benchmarks.training", description=__doc__.split("\n")[0]
    )
    add_model_arguments(parser, DEFAULT_OUT, DEFAULT_MODELS)
    parser.add_argument(
        "--optimizer", choices=tuple(OPTIMIZERS), default="none",
        help="the update that ends each timed step (default none: forward, loss and backward only)",
    )  # fmt: skip
    parser.add_argument(
        "--autocast", action="store_true",
        help="float32 weights, each forward under torch.autocast(bfloat16) (mixed-precision training)",
    )  # fmt: skip
    args = check_model_args(parser, parser.parse_args(argv))
    if args.autocast and args.dtype not in (None, "float32"):
        parser.error("--autocast keeps the weights in float32: leave --dtype out or make it float32")
    if args.autocast:
        args.dtype = "float32"
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    dtype = model_dtype(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    header = [
        *environment_lines(__spec__.name, device, dtype, argv),
        f"- transformers {transformers.__version__}; models from configs (seeded random weights), "
        "train mode, dropout 0; a step is forward + loss + backward"
        + (f" + {args.optimizer} update" if args.optimizer != "none" else "")
        + ", gradients cleared"
        + ("" if args.optimizer != "none" else ", no optimizer")
        + ("; forward under torch.autocast(bfloat16), float32 weights" if args.autocast else ""),
    ]
    out = args.out or (None if args.tiny else DEFAULT_OUT)
    candidates = [c for c in CANDIDATES if not (args.no_torch_compile and c == COMPILE)]
    timings: list[StepTiming] = []
    report = ""
    for name in args.models:
        ref, ref64 = None, float64_step(MODELS[name], args.tiny, device, dtype)
        for candidate in candidates:
            timing, result = measure(candidate, MODELS[name], args, device, dtype, ref, ref64)
            ref = result if candidate == EAGER else ref
            timings.append(timing)
            shown = timing.error or f"{timing.step_ms:.4g} ms per step"
            print(f"[{name}] {candidate}: {shown}", file=sys.stderr, flush=True)
        report = "\n".join(["# One training step", "", *header, "", render_table(timings), ""])
        if out is not None:
            out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
