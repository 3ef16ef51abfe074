"""The `tilefuse` command line.

    tilefuse opt FILE.mlir [-p pass1,pass2] [--generic]
        parse and verify tilefuse IR, run the named passes, verify, print

Malformed input prints the file, line and what is wrong, and exits 1
without a traceback.
"""

from __future__ import annotations

import argparse
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
    sys.stdout.write(print_module(module, generic=args.generic))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tilefuse", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    opt = sub.add_parser("opt", help="parse, verify and print an .mlir file of tilefuse dialects")
    opt.add_argument("file", help="input .mlir file, or - for standard input")
    opt.add_argument("-p", "--passes", help="comma-separated passes to run, in order")
    opt.add_argument("--generic", action="store_true", help="print MLIR's generic op form")
    opt.set_defaults(run=_opt)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except FileNotFoundError as e:
        print(f"error: {e.filename}: no such file", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
