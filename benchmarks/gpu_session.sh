#!/usr/bin/env bash
# One device-machine call: install what the GPU image lacks, run the GPU tests, the main
# example and the benchmark suite, and leave logs and tables under $OUT.
#   carry: .whl   (made by ../shared/tools/gpu-wheels.sh)
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv;
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; } > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
python3 -m pytest -q -m gpu tests/gpu -x 2>&1 | tee "$OUT/gpu_tests.log" | tail -n 15
python3 examples/transformer_block.py --dtype bfloat16 --dump /tmp/dump 2>&1 | tee "$OUT/example.log" | tail -n 12
python3 -m tilefuse.benchmarks.run --out "$OUT/RESULTS.md" --profile "$OUT/profile" "$@" 2>&1 | tee "$OUT/bench.log" | tail -n 40
