#!/usr/bin/env bash
# Record dsmon fixtures on a GPU host. Run from the repo root: bash bench/device/record.sh
# Writes into $OUT (default ./out/device): the dsmon snapshot of a PyTorch process, dsmon's
# diagnose report (JSON and text), an NVML dump, nvidia-smi -q / topo -m, and record.log.
# Always exits 0; steps that failed are listed at the end.
set -u
OUT=${OUT:-out/device}
mkdir -p "$OUT"
exec > >(tee "$OUT/record.log") 2>&1
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
FAILED=()
step() {  # step NAME CMD...: run, record the failure instead of stopping
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
step python-version $PY --version
step torch-version $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.device_count(), torch.cuda.get_device_name(0))'
step uname uname -a
step nproc nproc
step cgroup-fs stat -fc %T /sys/fs/cgroup
step self-cgroup cat /proc/self/cgroup
step nodes ls /sys/devices/system/node
step cpu-online cat /sys/devices/system/cpu/online
step meminfo head -3 /proc/meminfo
step lscpu-model grep -m1 'model name' /proc/cpuinfo
step sched-schedstats sh -c 'cat /proc/sys/kernel/sched_schedstats 2>/dev/null || echo "(no /proc/sys/kernel/sched_schedstats)"'

list_threads() {
  echo "=== threads of $WL (tid comm utime stime starttime, in clock ticks):"
  for t in /proc/$WL/task/*; do
    printf '%s %s %s\n' "${t##*/}" "$(cat $t/comm 2>/dev/null)" \
      "$(awk '{print $14, $15, $22}' $t/stat 2>/dev/null)"
  done | sort -n
}

# The workload, in the background; wait for "ready PID".
$PY ${WORKLOAD:-bench/device/torch_workload.py} --seconds 400 > /tmp/workload.log 2>&1 &
WL=$!
echo "=== workload started: pid $WL"
READY=0
for i in $(seq 1 240); do
  if grep -q '^ready ' /tmp/workload.log 2>/dev/null; then READY=1; break; fi
  if ! kill -0 $WL 2>/dev/null; then break; fi
  sleep 0.5
done
cat /tmp/workload.log
if [ $READY -ne 1 ]; then
  FAILED+=("workload-not-ready")
  echo "=== workload did not become ready"
fi
sleep 2  # let the steady-state loop run a moment

if kill -0 $WL 2>/dev/null; then
  list_threads
  echo "=== thread names, counted:"
  cat /proc/$WL/task/*/comm 2>/dev/null | sort | uniq -c | sort -rn
  echo "=== /proc/$WL/status (selected):"
  grep -E '^(Threads|Cpus_allowed_list|Mems_allowed_list|VmRSS|VmHWM):' /proc/$WL/status
  echo "=== /proc/$WL/cgroup:"; cat /proc/$WL/cgroup
  export PYTHONPATH=.:wheels/vendor
  step snapshot timeout 120 $PY -m dsmon snapshot $WL -o "$OUT/h100-torch-snapshot.tar.gz"
  step nvml-dump timeout 120 $PY bench/device/nvml_dump.py "$OUT/nvml-dump.json"
  step diagnose-json timeout 120 $PY -m dsmon diagnose $WL --duration 5s --interval 1s --format json -o "$OUT/h100-torch-diagnose.json"
  step diagnose-text timeout 120 $PY -m dsmon diagnose $WL --duration 5s --interval 1s --format text -o "$OUT/h100-torch-diagnose.txt"
  step nvidia-smi-compute-apps nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
  # Replay the snapshot here too, so a replay bug is seen with the machine's own Python.
  if [ -f "$OUT/h100-torch-snapshot.tar.gz" ]; then
    R=$(mktemp -d)
    tar xzf "$OUT/h100-torch-snapshot.tar.gz" -C "$R"
    echo "=== snapshot: $(find "$R" -type f | wc -l) files, $(du -sh "$OUT/h100-torch-snapshot.tar.gz" | cut -f1)"
    cat "$R/SNAPSHOT.json"
    step replay timeout 60 $PY -m dsmon diagnose $WL --path.procfs "$R/proc" --path.sysfs "$R/sys" --path.rootfs "$R" --duration 0.2s --interval 0.1s
  fi
  unset PYTHONPATH
else
  FAILED+=("workload-exited")
fi
kill -0 $WL 2>/dev/null && list_threads
step nvidia-smi-topo sh -c "nvidia-smi topo -m > '$OUT/nvidia-smi-topo.txt' 2>&1"
step nvidia-smi-q sh -c "nvidia-smi -q > '$OUT/nvidia-smi-q.txt' 2>&1"
cat "$OUT/nvidia-smi-topo.txt" 2>/dev/null

kill $WL 2>/dev/null; sleep 1; kill -9 $WL 2>/dev/null; wait $WL 2>/dev/null
echo "=== workload log tail:"; tail -5 /tmp/workload.log
echo "=== files:"; ls -la "$OUT"
if [ ${#FAILED[@]} -eq 0 ]; then echo "=== ALL STEPS OK"; else echo "=== FAILED: ${FAILED[*]}"; fi
exec 1>&- 2>&-  # close the pipe to tee so record.log is complete
sleep 1
exit 0
