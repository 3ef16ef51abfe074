# Sourced by the device-machine scripts (gpu_session.sh, gpu_issue14.sh): install the wheels the GPU
# image lacks (carry .whl, made by ../shared/tools/gpu-wheels.sh) and tilefuse itself, and write the
# device and versions to $OUT/device.txt.
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null || exit 1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; uptime;
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; } > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
