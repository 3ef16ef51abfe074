"""How well the cost-model search tunes: the whole space measured, then searches replayed on it.

    python -m tilefuse.benchmarks.tune_eval measure --db D     # GPU: every config of every kernel
    python -m tilefuse.benchmarks.tune_eval autotune --db D    # GPU: Triton's @autotune, same space
    python -m tilefuse.benchmarks.tune_eval report --db D      # anywhere: replay searches, write tables
    python -m tilefuse.benchmarks.tune_eval train --db D --model DIR   # the cost model that ships

`measure` compiles each evaluation case with tilefuse, takes its main kernel, and measures
every config of its search space (builder in parallel processes, runner in an isolated
process, L2 flushed, median of repeats), resumably, into the tuning database. `autotune`
runs `triton.autotune` over the same configs on a few kernels and records its wall time
and pick. `report` replays searches against the measured tables (a trial costs what its
build and run cost when measured): the cost-model search, with a model pretrained on the
other kernels (transfer to an unseen kernel and shape) and with a fresh one, against
random search. Metrics: trials to reach within 5% of the exhaustive best, the best found
at 10% of the space, Spearman rank correlation of the pretrained model's predictions on
the held-out kernel, top-1/top-5 (best true time among the model's first k picks over the
exhaustive best), and tuning wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from ..autotune.cost_model import XGBoostCostModel, spearman
from ..autotune.database import Database, device_name, versions
from ..autotune.heuristics import KernelConfig
from ..autotune.job import PRETRAINED, ProgressBar
from ..autotune.records import MeasureInput, MeasureResult, TuningTask
from ..autotune.search import ExhaustiveSearch, ModelGuidedSearch, RandomSearch, tune_task
from ..autotune.space import DeviceLimits, SearchSpace
from ..compiler.tuning import kernel_tasks
from .cases import benchmark_cases, matmul
from .run import WeightsAsParameters

BATCH = 8
CAP = 4  # replays stop at a quarter of the space: "trials to 5%" past it reads "> n/4"


# benchmark cases (benchmarks/cases.py) whose main kernel is evaluated: the same kernels as the
# benchmark rows, so the records also tune those rows; plus one ragged GEMM
EVAL_CASES = {
    "gemm_square": "gemm", "gemm_tall": "gemm", "gemm_wide": "gemm", "gemm_skinny": "gemm",
    "linear_gelu": "gemm", "linear_residual": "gemm", "swiglu_mlp": "gemm", "linear_softmax_narrow": "gemm",
    "linear_logsumexp": "gemm", "sdpa_small": "attention", "sdpa_causal": "attention",
}  # fmt: skip
RAGGED = "gemm_ragged"  # 2000x5000x1000: no dim a multiple of 128
CASES = [*EVAL_CASES, RAGGED]


def _case(name: str, device: str, dtype: torch.dtype) -> tuple[str, Callable, tuple]:
    """The kernel kind to evaluate, the function (a module for cases with weights) and its inputs."""
    if name == RAGGED:
        x, w = (torch.randn(*s, device=device, dtype=dtype) for s in ((2000, 1000), (1000, 5000)))
        return "gemm", matmul, (x, w)
    case = next(c for c in benchmark_cases() if c.name == name)
    inputs = case.make_inputs(torch.device(device), dtype)
    if case.activations:
        return (
            EVAL_CASES[name],
            WeightsAsParameters(case.fn, inputs[case.activations :]),
            inputs[: case.activations],
        )
    return EVAL_CASES[name], case.fn, inputs


def collect(device: str, dtype: torch.dtype, names: Sequence[str]) -> list[TuningTask]:
    """The main kernel (the first of its case's kind) of each case, named after the case."""
    tasks = []
    for name in names:
        kind, fn, inputs = _case(name, device, dtype)
        found = [t for t in kernel_tasks(fn, inputs) if t.kind == kind]
        if not found:
            print(f"{name}: no {kind} kernel compiled; skipped", file=sys.stderr)
            continue
        tasks.append(replace(found[0], name=name))
        del fn, inputs
        torch.cuda.empty_cache()
    return tasks


def measure(args: argparse.Namespace) -> None:
    """Every config of every case's space, into the database (resumes a cut-off run)."""
    from ..autotune.builder import LocalBuilder
    from ..autotune.runner import LocalRunner

    tasks = collect("cuda", torch.bfloat16, args.cases)
    limits, bar = DeviceLimits.current(), ProgressBar()
    with (
        Database(args.db) as db,
        LocalBuilder(workers=args.build_workers) as builder,
        LocalRunner() as runner,
    ):
        for task in tasks:
            space = SearchSpace(task, limits)
            tune_task(
                task, space=space, strategy=ExhaustiveSearch(), runner=runner, builder=builder, database=db,
                device=device_name(), versions=versions(), budget=len(space), batch=64, job="exhaustive",
                progress=bar,
            )  # fmt: skip
            print(file=sys.stderr)


def triton_autotune(args: argparse.Namespace) -> None:
    """Triton's own `@triton.autotune` over the same configs: its wall time and its pick."""
    import triton

    from ..autotune.runner import LocalRunner, make_inputs
    from ..backends.triton import load
    from ..backends.triton.launcher import descriptors_fit

    results = {}
    limits = DeviceLimits.current()
    with Database(args.db) as db, LocalRunner() as runner:
        for task in [t for t in db.tasks() if t.name in args.cases]:
            kernel = load(task.source, task.kernel_name)
            configs = SearchSpace(task, limits).configs()
            tuned = triton.autotune(
                [triton.Config(dict(c.params), num_warps=c.num_warps, num_stages=c.num_stages)
                 for c in configs],
                key=[],
            )(kernel.function)  # fmt: skip
            tensors = make_inputs(task.args, "cuda", 1)[0]
            if kernel.tma_tensors:  # configs with USE_TMA=1 need Triton's descriptor allocator
                descriptors_fit([tensors[i] for i in kernel.tma_tensors])
            flat = [x for t in tensors for x in (t, *t.stride())]
            grid = partial_grid(kernel)
            start = time.perf_counter()
            tuned[grid](*flat)
            torch.cuda.synchronize()
            wall = time.perf_counter() - start
            best = tuned.best_config
            pick = next(c for c in configs if dict(c.params) == {k: best.kwargs[k] for k in c.params}
                        and c.num_warps == best.num_warps and c.num_stages == best.num_stages)  # fmt: skip
            measured = runner.run([MeasureInput(task, pick)])[0]
            results[task.name] = {"wall_s": wall, "config": pick.key(), "median_ms": measured.median_ms}
            print(
                f"{task.name}: triton.autotune {wall:.1f} s -> {pick.key()} {measured.median_ms}",
                file=sys.stderr,
            )
    Path(args.autotune_json).write_text(json.dumps(results, indent=1))


def partial_grid(kernel) -> Callable[[dict], tuple[int, ...]]:
    """triton.autotune's grid callback: the kernel's grid for the config it tries."""
    return lambda meta: kernel.grid_for({p: meta[p] for p in kernel.params})


class TableRunner:
    """A runner that answers from measured times (the replay of a search), charging each
    trial the build + run time it took when it was measured."""

    def __init__(self, times: dict[str, float | None], walls: dict[str, float]):
        self.times, self.walls, self.charged = times, walls, []

    def run(self, inputs: Sequence[MeasureInput]) -> list[MeasureResult]:
        out = []
        for inp in inputs:
            key = inp.config.key()
            self.charged.append(self.walls.get(key, 0.0))
            t = self.times.get(key)
            out.append(MeasureResult(inp.config, times_ms=(t,)) if t is not None else
                       MeasureResult(inp.config, error="failed when measured"))  # fmt: skip
        return out


class MeasuredSpace:
    """The configs that were measured (the space as the GPU run saw it)."""

    def __init__(self, task: TuningTask, keys: Sequence[str]):
        self._configs = [KernelConfig.from_key(k) for k in keys]
        self._untuned = SearchSpace(task, DeviceLimits()).untuned()

    def untuned(self) -> KernelConfig:
        return self._untuned

    def configs(self) -> list[KernelConfig]:
        return list(self._configs)

    def __len__(self) -> int:
        return len(self._configs)


def _tables(db: Database, task: TuningTask, device: str, vers: str) -> tuple[dict, dict]:
    records = db.records(task.key, device, vers)
    times = {r.config.key(): r.median_ms for r in records}
    walls = {r.config.key(): r.wall_s + r.extra.get("build_s", 0.0) for r in records}
    return times, walls


def _replay(task, strategy, times, walls, budget) -> tuple[list[float | None], list[float]]:
    """Best-so-far after each trial of a replayed search, and each trial's wall time (its
    measured build + run, plus its share of the search's own time: model fits, ranking)."""
    runner = TableRunner(times, walls)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, Database(Path(tmp) / "replay.db") as db:
        result = tune_task(
            task, space=MeasuredSpace(task, list(times)), strategy=strategy, runner=runner, database=db,
            device="replay", versions="replay", budget=budget, batch=BATCH, untuned_first=False,
        )  # fmt: skip
    overhead = (time.perf_counter() - start) / max(len(result.trials), 1)
    best, curve = None, []
    for r in result.trials:
        if r.median_ms is not None and (best is None or r.median_ms < best):
            best = r.median_ms
        curve.append(best)
    return curve, [w + overhead for w in runner.charged]


def _trials_to(curve: Sequence[float | None], target: float) -> int | None:
    return next((i + 1 for i, b in enumerate(curve) if b is not None and b <= target), None)


def report(args: argparse.Namespace) -> None:
    """Replay the searches on the measured tables; write the evaluation tables."""
    with Database(args.db) as db:
        tasks = db.tasks()
        scopes = {scope for t in tasks for scope in db.scopes(t.key)}
        device, vers = (
            (args.device, args.versions) if args.device else max(scopes, default=(device_name(), versions()))
        )
        data = {t.key: _tables(db, t, device, vers) for t in tasks}
    tasks = [t for t in tasks if any(v is not None for v in data[t.key][0].values())]
    autotune = json.loads(Path(args.autotune_json).read_text()) if Path(args.autotune_json).exists() else {}
    rows = []
    for task in tasks:
        times, walls = data[task.key]
        ok = {k: v for k, v in times.items() if v is not None}
        best = min(ok.values())
        n = len(times)
        pretrained = XGBoostCostModel()
        for other in tasks:
            if other.key != task.key:
                o_times = data[other.key][0]
                pretrained.update(other, [KernelConfig.from_key(k) for k in o_times], list(o_times.values()))
        configs = [KernelConfig.from_key(k) for k in ok]
        scores = pretrained.predict(task, configs)
        rho = spearman(scores, [-ok[c.key()] for c in configs])
        order = sorted(range(len(configs)), key=lambda i: -scores[i])
        top1 = ok[configs[order[0]].key()] / best
        top5 = min(ok[configs[i].key()] for i in order[:5]) / best
        tenth = max(1, n // 10)
        cap = max(tenth, n // CAP)
        runs = {"transfer": [], "fresh": [], "random": []}
        for seed in range(args.seeds):
            transfer = ModelGuidedSearch(_copy(pretrained), seed=seed)
            runs["transfer"].append(_replay(task, transfer, times, walls, cap))
            runs["fresh"].append(
                _replay(task, ModelGuidedSearch(XGBoostCostModel(), seed=seed), times, walls, cap)
            )
            runs["random"].append(_replay(task, RandomSearch(seed), times, walls, cap))
        untuned = times.get(SearchSpace(task, DeviceLimits()).untuned().key())
        row = {"kernel": task.name, "space": n, "cap": cap, "best_ms": best, "untuned_ms": untuned,
               "spearman": rho, "top1": top1, "top5": top5, "exhaustive_s": sum(walls.values())}  # fmt: skip
        for name, outs in runs.items():
            curves = [c for c, _ in outs]
            reach = [_trials_to(c, 1.05 * best) for c in curves]
            row[f"{name}_to5"] = statistics.median([r if r is not None else cap + 1 for r in reach])
            row[f"{name}_at10"] = statistics.median(
                [(c[min(tenth, len(c)) - 1] or float("inf")) / best for c in curves]
            )
            row[f"{name}_wall10_s"] = statistics.median([sum(w[:tenth]) for _, w in outs])
        if task.name in autotune:
            a = autotune[task.name]
            row["autotune_s"], row["autotune_ratio"] = a["wall_s"], (a["median_ms"] or float("inf")) / best
        rows.append(row)
    Path(args.report_json).write_text(json.dumps(rows, indent=1))
    print(render(rows, device, vers))


def _copy(model: XGBoostCostModel) -> XGBoostCostModel:
    """An independent copy (each replay trains its own), through save/load."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "model")
        return XGBoostCostModel.load(Path(tmp) / "model")


def train(args: argparse.Namespace) -> None:
    """A cost model trained on every measured task, saved where tuning jobs start from it."""
    model = XGBoostCostModel()
    with Database(args.db) as db:
        for task in db.tasks():
            # one ranking group per task and device: labels compare times measured together
            for device, vers in db.scopes(task.key)[:1]:
                times = {r.config.key(): r.median_ms for r in db.records(task.key, device, vers)}
                model.update(task, [KernelConfig.from_key(k) for k in times], list(times.values()))
        count = len(db.tasks())
    model.save(args.model)
    print(f"trained on the trials of {count} task(s); saved to {args.model}", file=sys.stderr)


def render(rows: list[dict], device: str, vers: str) -> str:
    """The evaluation as markdown."""
    head = (
        "| kernel | space | exhaustive best ms | untuned ms | exhaustive: trial s "
        "| trials to 5%: model (transfer) / fresh / random "
        "| best at 10% of space: transfer / fresh / random | Spearman (held out) | top-1 | top-5 "
        "| trial s at 10%: transfer / random | triton.autotune wall s, pick |"
    )
    note = (
        "trial s: each trial's build + measurement time as the GPU run took them, summed (builds ran in "
        "parallel there, so a job's wall time is lower); the searches' own time (model fits) is added"
    )
    lines = [f"device {device}; {vers}", "", note, "", head, "|" + " --- |" * 12]
    for r in rows:
        at = "—" if "autotune_s" not in r else f"{r['autotune_s']:.0f} s, {r['autotune_ratio']:.3f}x best"
        lines.append(
            f"| {r['kernel']} | {r['space']} | {r['best_ms']:.4g} | {_ms(r['untuned_ms'])} | "
            f"{r['exhaustive_s']:.0f} | "
            f"{r['transfer_to5']:g} / {r['fresh_to5']:g} / {r['random_to5']:g} | "
            f"{r['transfer_at10']:.3f} / {r['fresh_at10']:.3f} / {r['random_at10']:.3f} | "
            f"{r['spearman']:.2f} | {r['top1']:.3f} | {r['top5']:.3f} | "
            f"{r['transfer_wall10_s']:.0f} / {r['random_wall10_s']:.0f} | {at} |"
        )
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return f"{value:.4g}" if value is not None else "—"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tilefuse.benchmarks.tune_eval", description=__doc__.split("\n")[0]
    )
    parser.add_argument("phase", choices=("measure", "autotune", "report", "train"))
    parser.add_argument("--db", type=Path, required=True, help="the tuning database the phases share")
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES, metavar="CASE")
    parser.add_argument("--build-workers", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3, help="report: replays per strategy (medians)")
    parser.add_argument("--autotune-json", default="autotune.json", help="triton.autotune results (phase 2)")
    parser.add_argument("--report-json", default="tune_eval.json")
    parser.add_argument("--device", help="report: the device whose records to read (default: the only one)")
    parser.add_argument("--versions", help="report: the versions string whose records to read")
    parser.add_argument("--model", type=Path, default=PRETRAINED, help="train: where to save the model")
    args = parser.parse_args(argv)
    {"measure": measure, "autotune": triton_autotune, "report": report, "train": train}[args.phase](args)


if __name__ == "__main__":
    main()
