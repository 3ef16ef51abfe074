#!/usr/bin/env bash
# One device-machine call for the real-model measurements: transformers models (bf16), a training
# step, and greedy generation, each writing its table under $OUT (rewritten after every model or
# batch size, so a call cut at its time limit keeps what it measured). About 9 minutes on an H200
# (STAGES="compile", an A/B of compiling in threads, and STAGES="modelconfigs", the heuristic's default
# configs against the shipped cost model's, are not in the default list);
# split it over two calls (STAGES="models" then STAGES="training generation") if the limit is 10.
#   carry: .whl   (made by ../shared/tools/gpu-wheels.sh)
set -uo pipefail
OUT=${OUT:-/tmp/out}
STAGES=${STAGES:-"models training generation"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || exit 1
for stage in $STAGES; do
  case $stage in
    models) python3 -m tilefuse.benchmarks.transformers_models --no-cached --no-overhead \
              --out "$OUT/RESULTS_models.md" 2>&1 | grep '^\[' ;;
    training) python3 -m tilefuse.benchmarks.training --out "$OUT/RESULTS_training.md" 2>&1 | grep '^\[' ;;
    generation) python3 -m tilefuse.benchmarks.generation --batches 1,8 --new-tokens 64 \
                  --out "$OUT/RESULTS_generation.md" 2>&1 | grep '^\[' ;;
    # default configs from the heuristic, then from the shipped cost model (TILEFUSE_MODEL_CONFIGS=1),
    # each in its own tuning database and cache folder so neither reads the other's choices
    modelconfigs) for mc in 0 1; do
                    TILEFUSE_MODEL_CONFIGS=$mc TILEFUSE_TUNING_DB=/tmp/tilefuse_mc$mc.db \
                    TILEFUSE_CACHE_DIR=/tmp/tilefuse_mc$mc python3 -m tilefuse.benchmarks.transformers_models \
                      --no-torch-compile --no-cached --no-overhead \
                      --out "$OUT/RESULTS_models_modelconfigs$mc.md" 2>&1 | grep '^\['
                  done ;;
    # cold first calls compiling at first launch, then in 8 threads of the process (precompile.py)
    compile) for threads in 0 8; do
               TILEFUSE_COMPILE_THREADS=$threads python3 -m tilefuse.benchmarks.transformers_models \
                 --models llama,phi --no-torch-compile --no-cached --no-overhead \
                 --out "$OUT/RESULTS_compile_threads$threads.md" 2>&1 | grep '^\['
             done ;;
  esac
done
