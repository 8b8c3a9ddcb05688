#!/usr/bin/env bash
# dsmon's GPU code on the lent GPU machine. From the repo root: bash bench/device/gpu_test.sh
# (the device tool: run(kind=..., carry=["wheels"], command="bash bench/device/gpu_test.sh")).
# Writes into $OUT (default ./out/gpu), at most 4 files (the tool returns 8 at most):
#   gpu_test.log            everything printed
#   nvml-recording.json     bench/device/nvml_record.py (fake-NVML format, with latencies)
#   device-results.json     the device tests' numbers (memory, topology, tick cost, PID ns)
#   outputs.tar.gz          nvidia-smi -q / topo -m, dsmon topo output, junit.xml, raw files
# Always exits 0; failed steps are listed at the end.
set -u
OUT=${OUT:-out/gpu}
mkdir -p "$OUT/files"
exec > >(tee "$OUT/gpu_test.log") 2>&1
export PYTHONUNBUFFERED=1
export PYTHONPATH=.:wheels/vendor
export DSMON_GPU_OUT="$OUT/files"
PY=${PYTHON:-python3}
FAILED=()
step() {  # step NAME CMD...
  local name=$1; shift
  echo "=== $name: $*"
  local t0=$(date +%s%N)
  "$@"; local rc=$?
  echo "=== $name: rc=$rc in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  [ $rc -eq 0 ] || FAILED+=("$name(rc=$rc)")
  return 0
}

echo "=== date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
step nvidia-smi-L nvidia-smi -L
step versions $PY -c 'import sys, torch; sys.path.insert(0, "wheels/vendor"); import pynvml; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.device_count(), pynvml.__file__)'
step uname uname -r
step nproc nproc
step nodes sh -c 'for n in /sys/devices/system/node/node*; do echo "$n $(cat $n/cpulist)"; done'
step unshare-present sh -c 'command -v unshare'
step topo sh -c "nvidia-smi topo -m > '$OUT/files/nvidia-smi-topo.txt' 2>&1; cat '$OUT/files/nvidia-smi-topo.txt'"
step smi-q sh -c "nvidia-smi -q > '$OUT/files/nvidia-smi-q.txt' 2>&1"
step nvlink-status sh -c "nvidia-smi nvlink --status > '$OUT/files/nvidia-smi-nvlink.txt' 2>&1; head -30 '$OUT/files/nvidia-smi-nvlink.txt'"

# A PyTorch process holding ~2.3 GiB on cuda:0 while the recording is made.
$PY bench/device/torch_workload.py --seconds 120 > /tmp/workload.log 2>&1 &
WL=$!
for i in $(seq 1 120); do
  grep -q '^ready ' /tmp/workload.log 2>/dev/null && break
  kill -0 $WL 2>/dev/null || break
  sleep 0.5
done
grep '^ready ' /tmp/workload.log || { cat /tmp/workload.log; FAILED+=("workload-not-ready"); }
step record timeout 120 $PY bench/device/nvml_record.py "$OUT/nvml-recording.json" --repeat 50 \
  --source "bench/device/nvml_record.py on the lent machine ($(nvidia-smi -L | wc -l)x $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)), torch_workload.py pid $WL on GPU 0"
step compute-apps nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
step dsmon-topo-workload timeout 60 $PY -c "from dsmon.gpu import topo_command; print(topo_command(pid=$WL, window_s=1.0))"
kill $WL 2>/dev/null; sleep 1; kill -9 $WL 2>/dev/null; wait $WL 2>/dev/null
sleep 2

step pytest-device timeout 300 $PY -m pytest tests/test_gpu_device.py -v -rA -s -p no:cacheprovider \
  --junitxml "$OUT/files/junit-device.xml"
step pytest-fake timeout 90 $PY -m pytest tests/test_gpu.py -q -p no:cacheprovider
step dsmon-topo timeout 60 sh -c "$PY -c 'from dsmon.gpu import topo_command; print(topo_command())' | tee '$OUT/files/dsmon-topo.txt'"

$PY - "$OUT" <<'PYEOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
results = {}
for f in sorted((out / "files").glob("*.json")):
    try:
        results[f.stem] = json.loads(f.read_text())
    except Exception as exc:
        results[f.stem] = f"unreadable: {exc}"
(out / "device-results.json").write_text(json.dumps(results, indent=1) + "\n")
PYEOF
tar czf "$OUT/outputs.tar.gz" -C "$OUT" files && rm -rf "$OUT/files"
ls -la "$OUT"
if [ ${#FAILED[@]} -eq 0 ]; then echo "=== ALL STEPS OK"; else echo "=== FAILED: ${FAILED[*]}"; fi
exec 1>&- 2>&-
sleep 1
exit 0
