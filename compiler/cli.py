"""The `tilefuse` command line.

    tilefuse opt FILE.mlir [--generic]   parse, verify and print tilefuse IR

Malformed input prints the file, line and what is wrong, and exits 1
without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..ir.module import IRError, parse_module, print_module


def _opt(args: argparse.Namespace) -> int:
    path = Path(args.file)
    text = sys.stdin.read() if args.file == "-" else path.read_text()
    try:
        module = parse_module(text, "<stdin>" if args.file == "-" else str(path))
    except IRError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(print_module(module, generic=args.generic))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tilefuse", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    opt = sub.add_parser("opt", help="parse, verify and print an .mlir file of tilefuse dialects")
    opt.add_argument("file", help="input .mlir file, or - for standard input")
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
