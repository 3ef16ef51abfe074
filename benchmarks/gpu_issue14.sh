#!/usr/bin/env bash
# One device-machine call (~8 min on an H100) for issue 14's open GPU points: the GPU tests of
# symbolic kernels and generation, the generation benchmark (batch 1 and 8, with GPU time per
# decode step beside wall time), and the dynamic-lengths A/B of symbolic GEMMs (GPU time per length).
# Logs and tables under $OUT.
#   carry: .whl   (made by ../shared/tools/gpu-wheels.sh)
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
timeout 150 python3 -m pytest -q -p no:logging tests/gpu/test_symbolic_gpu.py tests/gpu/test_runtime_gpu.py \
  -k "symbolic or bucket or dynamic or greedy" > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests rc=$?"; tail -n 3 "$OUT/gpu_tests.log"
timeout 300 python3 -m tilefuse.benchmarks.generation --batches 1,8 --out "$OUT/generation.md" > "$OUT/generation.log" 2>&1
echo "generation rc=$?"; grep "^| [18] " "$OUT/generation.log" | cut -c1-160
for gemm in 0 1; do
  TILEFUSE_SPECIALIZE=0 TILEFUSE_SYMBOLIC_GEMM=$gemm timeout 80 python3 -m tilefuse.benchmarks.dynamic_shapes \
    --models llama --no-torch-compile --out "$OUT/dynamic_gemm$gemm.md" > "$OUT/dynamic_gemm$gemm.log" 2>&1
  echo "dynamic (TILEFUSE_SYMBOLIC_GEMM=$gemm) rc=$?"; grep "^| " "$OUT/dynamic_gemm$gemm.log" | tail -n 2
done
