"""The `tilefuse` command line.

    tilefuse opt FILE.mlir [-p pass1,pass2] [--generic]
        parse and verify tilefuse IR, run the named passes, verify, print
    tilefuse opt FILE.mlir --emit triton
        the Triton source of every kernel (ein functions are lowered through their groups)
    tilefuse inspect DIR
        a text summary of a dump: kernels, fused ops, fallbacks and why, configs and their source
    tilefuse tune SCRIPT.py[:NAME] | MODULE[:NAME] [--budget N] [--workers N] ...
        tune the kernels of `NAME()` (default `tune_target`), a callable returning
        `(fn_or_module, example_inputs)`; results go to the tuning database

Malformed input prints the file, line and what is wrong, and exits 1
without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from ..ir.module import IRError, make_context, parse_module, print_module, verify
from ..passes import PASSES


def _opt(args: argparse.Namespace) -> int:
    path = Path(args.file)
    text = sys.stdin.read() if args.file == "-" else path.read_text()
    names = [n for n in (args.passes or "").split(",") if n]
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        print(f"error: unknown pass {unknown[0]!r}; known: {', '.join(sorted(PASSES))}", file=sys.stderr)
        return 1
    try:
        module = parse_module(text, "<stdin>" if args.file == "-" else str(path))
        for name in names:
            PASSES[name]().apply(make_context(), module)
            verify(module, f"after {name}")
    except IRError as e:  # the message already reads "file:line: error: ..."
        print(e, file=sys.stderr)
        return 1
    if args.emit == "triton":
        sys.stdout.write(_triton_sources(module))
        return 0
    sys.stdout.write(print_module(module, generic=args.generic))
    return 0


COMPILE_PASSES = ("canonicalize", "norm-prologue", "split-reduction", "form-fusion-groups")


def _triton_sources(module) -> str:
    """The Triton source of every kernel: `tile.kernel`s as they are, else `ein` functions lowered
    through their fusion groups (when the input has none, after the passes a compile runs)."""
    from xdsl.dialects import func

    from ..backends.triton import TritonOptions, emit
    from ..ir import tile
    from ..passes.fusion_groups import GROUP_ATTR
    from ..passes.lower_to_tile import lower_function

    out = []
    kernels = [op for op in module.ops if isinstance(op, tile.KernelOp)]
    functions = [op for op in module.ops if isinstance(op, func.FuncOp)]
    if kernels:  # lowered already (a tile dump, or -p ...,lower-to-tile): the kernels as they are
        return "\n\n".join(emit(k, TritonOptions()) for k in kernels)
    if functions and not any(GROUP_ATTR in op.attributes for fn in functions for op in fn.body.ops):
        for name in COMPILE_PASSES:  # ungrouped ein: the passes a compile runs, in its order
            PASSES[name]().apply(make_context(), module)
    for op in module.ops:
        if isinstance(op, func.FuncOp):
            for lowered in lower_function(op):
                if lowered.kernel is None:
                    out.append(
                        f"# group {lowered.group.name} ({lowered.group.kind}): no kernel: {lowered.error}\n"
                    )
                else:
                    out.append(emit(lowered.kernel, TritonOptions()))
    return "\n\n".join(out)


def _inspect(args: argparse.Namespace) -> int:
    from .inspect import summarize

    if args.db:
        os.environ["TILEFUSE_TUNING_DB"] = args.db
    root = Path(args.dir)
    if not (root / "index.json").exists():
        print(f"error: {root}: no tilefuse dump here (no index.json)", file=sys.stderr)
        return 1
    if args.html:
        from .report import html_report

        Path(args.html).write_text(html_report(root))
        print(f"wrote {args.html}", file=sys.stderr)
        return 0
    sys.stdout.write(summarize(root))
    return 0


def load_target(target: str):
    """`(fn, example_inputs)` from `path/to/script.py[:name]` or `package.module[:name]`."""
    where, _, name = target.partition(":")
    name = name or "tune_target"
    if where.endswith(".py"):
        path = Path(where)
        if not path.exists():
            raise FileNotFoundError(2, "no such file", where)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.parent.resolve()))
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    make = getattr(module, name, None)
    if not callable(make):
        raise ValueError(f"{where} has no callable {name!r} returning (fn, example_inputs)")
    fn, inputs = make()
    return fn, tuple(inputs)


def _tune(args: argparse.Namespace) -> int:
    from ..autotune.job import tune

    try:
        fn, inputs = load_target(args.target)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:  # Ctrl-C: the job stops its processes and records nothing for the trial in flight
        summary = tune(
            fn, inputs, args.budget, strategy=args.strategy, workers=args.workers, database=args.db,
            timeout_s=args.timeout, patience=args.patience,
            model_path=Path(args.model) if args.model else None,
        )  # fmt: skip
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return INTERRUPTED
    print(summary.table())
    return 0


INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tilefuse", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    opt = sub.add_parser("opt", help="parse, verify and print an .mlir file of tilefuse dialects")
    opt.add_argument("file", help="input .mlir file, or - for standard input")
    opt.add_argument(
        "-p", "--passes", help=f"comma-separated passes to run, in order: {', '.join(sorted(PASSES))}"
    )
    opt.add_argument("--generic", action="store_true", help="print MLIR's generic op form")
    opt.add_argument(
        "--emit", choices=("mlir", "triton"), default="mlir", help="print IR (default) or kernels"
    )
    opt.set_defaults(run=_opt)
    inspect = sub.add_parser(
        "inspect", help="summarize a dump folder: kernels, fused ops, fallbacks, configs"
    )
    inspect.add_argument("dir", help="a dump folder (tilefuse.compile(dump=...) or TILEFUSE_DUMP)")
    inspect.add_argument("--html", metavar="FILE", help="write a self-contained HTML report to FILE")
    inspect.add_argument(
        "--db", help="the tuning database whose trials the report plots (default as for tune)"
    )
    inspect.set_defaults(run=_inspect)
    tune = sub.add_parser("tune", help="tune the kernels of a model; results go to the tuning database")
    tune.add_argument(
        "target", help="SCRIPT.py[:NAME] or MODULE[:NAME]; NAME (default tune_target) is a callable "
        "returning (fn_or_module, example_inputs)",
    )  # fmt: skip
    tune.add_argument("--budget", type=int, default=64, help="trials per kernel (default 64)")
    tune.add_argument(
        "--strategy", choices=("model", "random", "exhaustive"), default="model",
        help="model (default): XGBoost-ranked picks plus random exploration; random; exhaustive",
    )  # fmt: skip
    tune.add_argument(
        "--workers", type=int, default=1, help="kernels tuned at once, one GPU each (default 1)"
    )
    tune.add_argument(
        "--db", help="tuning database file (default: $TILEFUSE_TUNING_DB, else ~/.cache/tilefuse/tuning.db)"
    )
    tune.add_argument(
        "--timeout", type=float, default=60.0, help="seconds before a trial counts as hung (default 60)"
    )
    tune.add_argument("--patience", type=int, help="stop a kernel after this many trials without gain")
    tune.add_argument("--model", help="a saved cost model to start from (default: the shipped H100 model)")
    tune.set_defaults(run=_tune)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except FileNotFoundError as e:
        print(f"error: {e.filename}: no such file", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
