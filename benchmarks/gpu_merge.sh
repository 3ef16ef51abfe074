#!/usr/bin/env bash
# merge-projections on and off, one device-machine call (~6-8 min on an H100 host): its GPU tests, the
# forwards of BERT and Llama (bf16; wall and GPU time), and a static-cache decode step's kernels.
#   bash benchmarks/gpu_merge.sh      carry: .whl   (made by ../shared/tools/gpu-wheels.sh)
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
timeout 150 python3 -m pytest -q -p no:logging tests/gpu/test_merge_projections_gpu.py > "$OUT/merge_tests.log" 2>&1
echo "merge gpu tests rc=$?"; tail -n 3 "$OUT/merge_tests.log"
for merge in 0 1; do
  TILEFUSE_MERGE_PROJECTIONS=$merge timeout 150 python3 -m tilefuse.benchmarks.transformers_models --models bert,llama \
    --no-torch-compile --no-cached --no-overhead --out "$OUT/fwd_merge$merge.md" > "$OUT/fwd_merge$merge.log" 2>&1
  echo "forward merge=$merge rc=$?"; grep "^|" "$OUT/fwd_merge$merge.log" | tail -n 4
done
TILEFUSE_MERGE_PROJECTIONS=1 timeout 120 python3 -m tilefuse.benchmarks.kernel_profile --what decode --top 16 \
  > "$OUT/decode_merge1.log" 2>&1
echo "decode profile rc=$?"; grep -A17 "^== " "$OUT/decode_merge1.log" | cut -c1-150
