#!/usr/bin/env bash
# The GPU rules on a real GPU: bash bench/device/gpu_rules.sh (device tool, carry ["wheels"]).
set -u
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONPATH=.:wheels/vendor DSMON_GPU_OUT="$OUT"
nvidia-smi -L
python3 -m pytest -q -p no:cacheprovider tests/test_gpu_device_rules.py 2>&1 | tail -30 | tee "$OUT/gpu-rules.log"
exit 0
