#!/usr/bin/env bash
# One device-machine call: install what the GPU image lacks, run the GPU tests, the main
# example and the benchmark suite, and leave logs and tables under $OUT.
#   carry: .whl   (made by ../shared/tools/gpu-wheels.sh)
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
python3 -m pytest -q -m gpu tests/gpu -x 2>&1 | tee "$OUT/gpu_tests.log" | tail -n 15
python3 examples/transformer_block.py --dtype bfloat16 --dump /tmp/dump 2>&1 | tee "$OUT/example.log" | tail -n 12
python3 -m tilefuse.benchmarks.run --out "$OUT/RESULTS.md" --profile "$OUT/profile" "$@" 2>&1 | tee "$OUT/bench.log" | tail -n 40
