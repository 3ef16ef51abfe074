#!/usr/bin/env bash
# Issue 14's open GPU points, one device-machine call each (a call may run 600 s):
#   bash benchmarks/gpu_issue14.sh            the generation benchmark (batch 1 and 8, GPU time per
#                                             decode step beside wall time): ~8-9 min on an H100 host
#   bash benchmarks/gpu_issue14.sh tests      the GPU tests of symbolic kernels, buckets and greedy
#                                             generation (~2 min)
# Logs and tables under $OUT.   carry: .whl   (made by ../shared/tools/gpu-wheels.sh)
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
if [ "${1:-generation}" = tests ]; then
  timeout 300 python3 -m pytest -q -p no:logging tests/gpu/test_symbolic_gpu.py tests/gpu/test_runtime_gpu.py \
    -k "symbolic or bucket or dynamic or greedy or reduce_overhead" > "$OUT/gpu_tests.log" 2>&1
  echo "gpu tests rc=$?"; tail -n 3 "$OUT/gpu_tests.log"
  exit 0
fi
# the first generate of each compiled candidate compiles (20-40 s on this host), and every candidate is
# profiled twice: the whole run took 480 s on an H100 (forty-eighth session)
timeout 550 python3 -m tilefuse.benchmarks.generation --batches 1,8 --out "$OUT/generation.md" > "$OUT/generation.log" 2>&1
echo "generation rc=$?"; grep "^| [18] " "$OUT/generation.log" | cut -c1-240
