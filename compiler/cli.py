"""The `tilefuse` command line.

    tilefuse opt FILE.mlir [-p pass1,pass2] [--generic]
        parse and verify tilefuse IR, run the named passes, verify, print
    tilefuse opt FILE.mlir --emit triton|cuda [--config JSON]
        the Triton (or CUDA C++) source of every kernel (ein functions are lowered through their groups)
    tilefuse inspect DIR
        a text summary of a dump: kernels, fused ops, fallbacks and why, configs and their source
    tilefuse tune SCRIPT.py[:NAME] | MODULE[:NAME] [--budget N | --budget-total N] [--workers N] ...
        tune the kernels of `NAME()` (default `tune_target`), a callable returning
        `(fn_or_module, example_inputs)`; results go to the tuning database;
        Ctrl-C stops it (exit 130) and a rerun resumes; --budget-total splits one
        budget across the kernels by expected gain; --ray [ADDRESS] measures on a
        Ray cluster's GPUs (the one at ADDRESS, or a local one); --sizes 1,64,512
        compiles with dynamic sizes and tunes each kernel of symbolic sizes at
        each size (recorded per size bucket)
    tilefuse --version

Exit codes: 0 done; 1 an error in the input or the job (bad input is one
line, `file:line:col: error: ...` where a place is known, with no traceback);
2 a command line argparse refuses; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

# xDSL, the passes and torch are imported by the commands that use them: `tilefuse --help` and
# `--version` answer without them


class InputError(Exception):
    """An input file that cannot be read as MLIR text; the message is one located line."""


def _positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:  # (NaN too)
        raise argparse.ArgumentTypeError(f"must be above 0 seconds, not {text}")
    return value


def read_text(file: str) -> str:
    """The text of `file` (`-`: standard input); an unreadable, non-text or missing file raises
    InputError naming it (and the line and column of the first byte that is not UTF-8)."""
    name = "<stdin>" if file == "-" else file
    if Path(file).suffix == ".py":  # a dump's generated kernel or program: xDSL's lexer trips on its '#'
        raise InputError(f"{name}: error: a Python file, not MLIR (a dump's IR is in its .mlir files)")
    try:
        data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except IsADirectoryError:
        raise InputError(f"{name}: error: is a directory, not an .mlir file") from None
    except FileNotFoundError:
        raise InputError(f"{name}: error: no such file") from None
    except PermissionError:
        raise InputError(f"{name}: error: permission denied") from None
    except OSError as e:
        raise InputError(f"{name}: error: cannot read it: {e.strerror or e}") from None
    bad = data.find(b"\0")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = e.start if bad < 0 else min(bad, e.start)
    else:
        if bad < 0:
            return text
    line = data.count(b"\n", 0, bad) + 1
    column = bad - (data.rfind(b"\n", 0, bad) + 1) + 1
    raise InputError(f"{name}:{line}:{column}: error: binary data (byte 0x{data[bad]:02x}), not MLIR text")


FUSION_PASS, LOWERING_PASS = "form-fusion-groups", "lower-to-tile"
# what takes a dynamic graph's `ein` (symbolic sizes) so far
SYMBOLIC_SCOPE = (
    "symbolic sizes go through parsing, printing, the reference interpreter, canonicalize, "
    "form-fusion-groups and lower-to-tile (pointwise, reduction and row kernels take their sizes as "
    "arguments; other groups get no kernel); norm-prologue, merge-projections, split-reduction and "
    "kmajor-f32-weights leave such functions as they are"
)


def compile_passes() -> tuple[str, ...]:
    """The `ein` passes a compile runs, in its order (merge-projections where it is on)."""
    from ..passes.merge_projections import merge_projections_on

    merge = ("merge-projections",) if merge_projections_on() else ()
    return ("canonicalize", "norm-prologue", *merge, "split-reduction", FUSION_PASS)


def _opt(args: argparse.Namespace) -> int:
    from ..ir.dtypes import SymbolicSizeError
    from ..ir.module import IRError, make_context, parse_module, print_module, verify
    from ..passes import PASSES

    name = "<stdin>" if args.file == "-" else args.file
    names = [n for n in (args.passes or "").split(",") if n]
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        print(f"error: unknown pass {unknown[0]!r}; known: {', '.join(sorted(PASSES))}", file=sys.stderr)
        return 1
    try:
        module = parse_module(read_text(args.file), name)
        _check_pass_order(module, names, name)
        for pass_name in names:
            _apply(PASSES[pass_name](), module, make_context(), name)
            verify(module, f"after {pass_name}")
    except (InputError, IRError) as e:  # one line: "file:line:col: error: ..."
        print(e, file=sys.stderr)
        return 1
    try:
        if args.emit == "triton":
            sys.stdout.write(_triton_sources(module, name))
            return 0
        if args.emit == "cuda":
            sys.stdout.write(_cuda_sources(module, args.config, name))
            return 0
    except InputError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 1
    except IRError as e:  # a pass the emission runs refused the input (symbolic sizes): one line
        print(e, file=sys.stderr)
        return 1
    except SymbolicSizeError as e:  # the lowering to kernels
        print(f"{name}: error: kernels take static sizes only, and {e.type} has symbolic ones "
              f"({SYMBOLIC_SCOPE})", file=sys.stderr)  # fmt: skip
        return 1
    sys.stdout.write(print_module(module, generic=args.generic))
    return 0


def _apply(ir_pass, module, ctx, name: str) -> None:
    """Run one pass; an exception other than IRError (a bug in the pass) becomes one IRError line."""
    from ..ir.dtypes import SymbolicSizeError
    from ..ir.module import IRError

    try:
        ir_pass.apply(ctx, module)
    except IRError:
        raise
    except SymbolicSizeError as e:
        raise IRError(
            f"{name}: error: pass {ir_pass.name} takes static sizes only, and {e.type} has symbolic ones "
            f"({SYMBOLIC_SCOPE})"
        ) from None
    except Exception as e:
        raise IRError(
            f"{name}: error: internal error in pass {ir_pass.name}: {type(e).__name__}: {e}"
        ) from None


def _check_pass_order(module, names: list[str], name: str) -> None:
    """lower-to-tile lowers fusion groups: on a module that has none, and no form-fusion-groups
    before it, it would print its input unchanged. Say what to run instead."""
    from ..ir.module import IRError

    if LOWERING_PASS not in names or FUSION_PASS in names[: names.index(LOWERING_PASS)]:
        return
    if _has_fusion_groups(module) or not _ein_functions(module):
        return
    raise IRError(
        f"{name}: error: {LOWERING_PASS} lowers fusion groups and this module has none: run "
        f"-p {FUSION_PASS},{LOWERING_PASS} (a compile runs -p {','.join(compile_passes())},{LOWERING_PASS}, "
        f"and on a GPU kmajor-f32-weights before {FUSION_PASS} for f32 GEMMs)"
    )


def _ein_functions(module) -> list:
    from xdsl.dialects import func

    return [op for op in module.ops if isinstance(op, func.FuncOp)]


def _has_fusion_groups(module) -> bool:
    from ..passes.fusion_groups import GROUP_ATTR

    return any(GROUP_ATTR in op.attributes for fn in _ein_functions(module) for op in fn.body.ops)


def _triton_sources(module, name: str) -> str:
    """The Triton source of every kernel: `tile.kernel`s as they are, else `ein` functions lowered
    through their fusion groups (when the input has none, after the passes a compile runs)."""
    from ..backends.triton import TritonOptions, emit
    from ..ir import tile
    from ..ir.module import make_context
    from ..passes import PASSES
    from ..passes.lower_to_tile import lower_function

    out = []
    kernels = [op for op in module.ops if isinstance(op, tile.KernelOp)]
    if kernels:  # lowered already (a tile dump, or -p ...,lower-to-tile): the kernels as they are
        return "\n\n".join(emit(k, TritonOptions()) for k in kernels)
    if _ein_functions(module) and not _has_fusion_groups(module):
        for pass_name in compile_passes():  # ungrouped ein: the passes a compile runs, in its order
            _apply(PASSES[pass_name](), module, make_context(), name)
    for fn in _ein_functions(module):
        for lowered in lower_function(fn):
            group = lowered.group
            if lowered.kernel is None:
                out.append(f"# group {group.name} ({group.kind}): no kernel: {lowered.error}\n")
            else:
                out.append(emit(lowered.kernel, TritonOptions()))
    return "\n\n".join(out)


def _cuda_sources(module, config_json: str | None, name: str) -> str:
    """The CUDA C++ of every kernel: `ein` functions lowered as for Triton, with each kernel's default
    config; `tile.kernel`s (a tile dump) with the `--config` JSON (their problem sizes are not in the
    IR). GEMM and attention kernels, which stay on Triton, are named in a comment."""
    from ..autotune.heuristics import KernelConfig, default_config
    from ..backends.cuda import emit_cuda_or_reason
    from ..ir import tile
    from ..ir.module import make_context
    from ..passes import PASSES
    from ..passes.lower_to_tile import lower_function

    def one(kernel: tile.KernelOp, config: KernelConfig) -> str:
        return emit_cuda_or_reason(kernel, dict(config.params), config.num_warps)

    kernels = [op for op in module.ops if isinstance(op, tile.KernelOp)]
    if kernels:
        if not config_json:
            raise InputError('tile kernels need --config \'{"BLOCK_R": 4, "BLOCK_C": 128, "num_warps": 4}\'')
        try:
            params = dict(json.loads(config_json))
        except (ValueError, TypeError) as e:
            raise InputError(f"--config is not a JSON object: {e}") from None
        config = KernelConfig(params, int(params.pop("num_warps", 4)), int(params.pop("num_stages", 1)))
        return "\n".join(one(k, config) for k in kernels)
    if _ein_functions(module) and not _has_fusion_groups(module):
        for pass_name in compile_passes():
            _apply(PASSES[pass_name](), module, make_context(), name)
    out = []
    for fn in _ein_functions(module):
        for lowered in lower_function(fn):
            group = lowered.group
            if lowered.kernel is None:
                out.append(f"// group {group.name} ({group.kind}): no kernel: {lowered.error}\n")
            else:
                out.append(one(lowered.kernel, default_config(lowered.group.kind, lowered.problem)))
    return "\n".join(out)


def _inspect(args: argparse.Namespace) -> int:
    from .inspect import summarize

    if args.db:
        os.environ["TILEFUSE_TUNING_DB"] = args.db
    root = Path(args.dir)
    if not root.exists():
        print(f"error: {root}: no such folder", file=sys.stderr)
        return 1
    if not root.is_dir():
        print(f"error: {root}: a file, not a dump folder", file=sys.stderr)
        return 1
    if not (root / "index.json").exists():
        inside = (root.parent / "index.json").exists()
        hint = " (a graph's folder: pass the dump folder above it)" if inside else ""
        print(f"error: {root}: no tilefuse dump here (no index.json){hint}", file=sys.stderr)
        return 1
    try:
        index = json.loads((root / "index.json").read_text())
        if not isinstance(index, dict) or not isinstance(index.get("graphs"), list):
            raise ValueError("no list of graphs")
    except (ValueError, OSError) as e:  # (JSONDecodeError is a ValueError)
        print(f"error: {root / 'index.json'}: not a tilefuse dump index ({e})", file=sys.stderr)
        return 1
    if args.html:
        from .report import html_report

        target = Path(args.html)
        if target.is_dir():
            print(f"error: {target}: a folder; --html takes a file name", file=sys.stderr)
            return 1
        if not target.parent.is_dir():
            print(f"error: {target.parent}: no such folder", file=sys.stderr)
            return 1
        target.write_text(html_report(root))
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
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as e:
            if e.name is None or not where.startswith(e.name):
                raise  # a module the target imports is missing: its traceback
            raise TargetError(f"{where}: no such module (and not a .py file)") from None
    make = getattr(module, name, None)
    if not callable(make):
        raise TargetError(f"{where} has no callable {name!r} returning (fn, example_inputs)")
    made = make()
    if not isinstance(made, (tuple, list)) or len(made) != 2:
        what = type(made).__name__ if not isinstance(made, (tuple, list)) else f"{len(made)} values"
        raise TargetError(f"{where}:{name} returned {what}; it must return (fn_or_module, example_inputs)")
    fn, inputs = made
    import torch  # (not at the top: `tilefuse --help` answers without it)

    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)  # one input as itself, not split into its rows
    if not callable(fn) or not isinstance(inputs, (tuple, list)):
        raise TargetError(
            f"{where}:{name} returned ({type(fn).__name__}, {type(inputs).__name__}); it must return "
            "(fn_or_module, example_inputs) with the inputs a tuple or list"
        )
    return fn, tuple(inputs)


class TargetError(Exception):
    """A tune target that cannot be loaded or returns no (fn, example_inputs); one line for the user."""


def _tune(args: argparse.Namespace) -> int:
    from ..autotune.job import BudgetTooSmall
    from ..autotune.ray_executor import MixedDevicesError, RayUnavailable
    from .tuning import tune

    try:
        fn, inputs = load_target(args.target)
    except TargetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if (problem := _unusable_database(args.db)) is not None:  # said now, not after the model's compile
        print(f"error: {problem}", file=sys.stderr)
        return 1
    try:  # Ctrl-C: the job stops its processes and records nothing for the trial in flight
        summary = tune(
            fn, inputs, args.budget, total_budget=args.budget_total, strategy=args.strategy,
            workers=args.workers, database=args.db, timeout_s=args.timeout, patience=args.patience,
            model_path=Path(args.model) if args.model else None, ray=args.ray, sizes=args.sizes,
        )  # fmt: skip
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return INTERRUPTED
    except (RayUnavailable, MixedDevicesError, BudgetTooSmall) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary.table())
    return 0


def _unusable_database(path: str | None) -> str | None:
    """Why the tuning database at `path` (default: the environment's, else the cache's) cannot be
    opened or is no tuning database; None if it can (a missing file is created by the job)."""
    import sqlite3

    from ..autotune.database import Database, SchemaVersionError, default_path

    target = Path(path) if path else default_path()
    if target.is_dir():
        return f"{target}: a folder, not a tuning database file"
    if not target.exists():
        return None
    try:
        Database(target).close()
    except (sqlite3.Error, OSError, SchemaVersionError) as e:
        return f"{target}: not a usable tuning database ({e})"
    return None


INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C


def main(argv: list[str] | None = None) -> int:
    """Run one `tilefuse` command; returns its exit code (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = _parser(list_passes=command == "opt").parse_args(argv)
    try:
        return args.run(args)
    except FileNotFoundError as e:
        print(f"error: {e.filename}: no such file", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


def _parser(list_passes: bool) -> argparse.ArgumentParser:
    """The command line; `list_passes` names every pass in `opt`'s help, which imports them (xDSL):
    only worth it when the command is `opt`, which imports them anyway."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="tilefuse", description=__doc__.split("\n")[0],
        epilog=__doc__[__doc__.index("Exit codes"):], formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"tilefuse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_opt(sub, list_passes)
    _add_inspect(sub)
    _add_tune(sub)
    return parser


def _add_opt(sub, list_passes: bool) -> None:
    opt = sub.add_parser("opt", help="parse, verify and print an .mlir file of tilefuse dialects")
    opt.add_argument("file", help="input .mlir file, or - for standard input")
    passes = "comma-separated passes to run, in order"
    if list_passes:
        from ..passes import PASSES

        passes += f": {', '.join(sorted(PASSES))}"
    opt.add_argument("-p", "--passes", help=passes)
    opt.add_argument("--generic", action="store_true", help="print MLIR's generic op form")
    opt.add_argument(
        "--emit",
        choices=("mlir", "triton", "cuda"),
        default="mlir",
        help="print IR (default) or kernels: Triton, or CUDA C++ (pointwise, reduction and row kernels; "
        "GEMMs as CUTLASS)",
    )
    opt.add_argument(
        "--config", help='with --emit cuda on tile kernels: their tile parameters as JSON, e.g. '
        '\'{"BLOCK_R": 4, "BLOCK_C": 128, "num_warps": 4}\''
    )  # fmt: skip
    opt.set_defaults(run=_opt)


def _add_inspect(sub) -> None:
    inspect = sub.add_parser(
        "inspect", help="summarize a dump folder: kernels, fused ops, fallbacks, configs"
    )
    inspect.add_argument("dir", help="a dump folder (tilefuse.compile(dump=...) or TILEFUSE_DUMP)")
    inspect.add_argument("--html", metavar="FILE", help="write a self-contained HTML report to FILE")
    inspect.add_argument(
        "--db", help="the tuning database whose trials the report plots (default as for tune)"
    )
    inspect.set_defaults(run=_inspect)


def _add_tune(sub) -> None:
    tune = sub.add_parser("tune", help="tune the kernels of a model; results go to the tuning database")
    tune.add_argument(
        "target", help="SCRIPT.py[:NAME] or MODULE[:NAME]; NAME (default tune_target) is a callable "
        "returning (fn_or_module, example_inputs)",
    )  # fmt: skip
    budget = tune.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=_positive, default=64, help="trials per kernel (default 64)")
    budget.add_argument(
        "--budget-total", type=_positive, metavar="N",
        help="N trials for the whole model instead: each kernel gets its default config and a few more, the "
        "rest goes by expected gain (predicted share of the model's time x predicted speedup from the cost "
        "model); the split is printed before the first trial",
    )  # fmt: skip
    tune.add_argument(
        "--strategy", choices=("model", "random", "exhaustive"), default="model",
        help="model (default): XGBoost-ranked picks plus random exploration; random; exhaustive",
    )  # fmt: skip
    tune.add_argument(
        "--workers", type=_positive,
        help="kernels tuned at once, one GPU each (default 1; with --ray, every GPU of the cluster)",
    )  # fmt: skip
    tune.add_argument(
        "--ray", nargs="?", const=True, metavar="ADDRESS",
        help="measure on a Ray cluster, one runner actor per GPU: the one at ADDRESS, or a local one "
        "started for the job (pip install tilefuse[ray]); put it after TARGET, or write --ray=ADDRESS",
    )  # fmt: skip
    tune.add_argument(
        "--db", help="tuning database file (default: $TILEFUSE_TUNING_DB, else ~/.cache/tilefuse/tuning.db)"
    )
    tune.add_argument(
        "--timeout", type=_positive_seconds, default=60.0,
        help="seconds before a trial counts as hung (default 60)",
    )  # fmt: skip
    tune.add_argument("--patience", type=_positive, help="stop a kernel after this many trials without gain")
    tune.add_argument("--model", help="a saved cost model to start from (default: the shipped H100 model)")
    tune.add_argument(
        "--sizes", type=_sizes, metavar="N,N,...",
        help="compile with dynamic sizes and tune each kernel of symbolic sizes at these sizes (every "
        "size symbol of a kernel bound to each; recorded per size bucket, which later compiles read for "
        "every size of the bucket); mark_dynamic on the example inputs picks the dynamic dims",
    )  # fmt: skip
    tune.set_defaults(run=_tune)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes are positive integers, comma-separated") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes are positive integers, comma-separated")
    return sizes


if __name__ == "__main__":
    sys.exit(main())
