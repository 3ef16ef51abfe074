"""`python -m tilefuse ...`: the same command line as the `tilefuse` console script."""

from .compiler.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
