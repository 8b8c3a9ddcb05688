#!/usr/bin/env bash
# py-spy against a real PyTorch GPU process on the lent machine (issue 7).
# From the repo root: run(carry=["wheels"], command="bash bench/device/stacks.sh").
# Writes $OUT/stacks.log, $OUT/stacks-diagnose.json, $OUT/stacks-device.json.
set -u
OUT=${OUT:-out/stacks}
mkdir -p "$OUT"
exec > >(tee "$OUT/stacks.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH=.:wheels/vendor DSMON_PY_SPY=$PWD/wheels/vendor/bin/py-spy
PY=${PYTHON:-python3}
echo "=== $(date -u +%FT%TZ) $(nvidia-smi -L | head -2)"
$PY -c 'import sys, torch; print(sys.version.split()[0], torch.__version__)'
$DSMON_PY_SPY --version
$PY bench/device/torch_workload.py --seconds 120 > "$OUT/workload.out" 2>&1 &
WORKLOAD=$!
for _ in $(seq 120); do grep -q '^ready' "$OUT/workload.out" && break; sleep 0.5; done
grep '^ready' "$OUT/workload.out" || { cat "$OUT/workload.out"; exit 1; }
echo "threads: $(grep Threads /proc/$WORKLOAD/status)"
$PY - "$WORKLOAD" "$OUT/stacks-device.json" <<'PYEOF'
import json, statistics, sys, time
from dsmon.stacks.pyspy import PySpy
pid, out = int(sys.argv[1]), sys.argv[2]
spy = PySpy(explicit=True, binary=__import__("os").environ["DSMON_PY_SPY"], timeout_s=10)
def timed(blocking, n):
    times = []
    for _ in range(n):
        t = time.perf_counter(); threads = spy.dump(pid, blocking=blocking); times.append(time.perf_counter() - t)
    return threads, times
threads, nonblocking = timed(False, 20)
_, blocking = timed(True, 5)
state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
doc = {"os_threads": len(__import__("os").listdir(f"/proc/{pid}/task")), "python_threads": len(threads),
       "nonblocking_ms": sorted(round(1000 * t, 1) for t in nonblocking),
       "blocking_ms": sorted(round(1000 * t, 1) for t in blocking),
       "state_after": state, "resumed": spy.resumed,
       "threads": [{"name": t.name, "active": t.active, "owns_gil": t.owns_gil,
                    "frames": [f.label() for f in t.frames[:4]]} for t in threads]}
json.dump(doc, open(out, "w"), indent=1)
print(json.dumps({k: v for k, v in doc.items() if k != "threads"}))
print("median non-blocking dump", statistics.median(nonblocking) * 1000, "ms")
PYEOF
# Raw py-spy answers (a JSON list of dumps) for CI's replay test (tests/fixtures/stacks/).
$PY - "$WORKLOAD" "$OUT/pyspy-dumps-torch.json" <<'PYEOF'
import json, os, subprocess, sys, time
pid, out = sys.argv[1], sys.argv[2]
dumps = []
for _ in range(25):
    answer = subprocess.run([os.environ["DSMON_PY_SPY"], "dump", "--pid", pid, "--json",
                             "--nonblocking"], capture_output=True, text=True, timeout=10)
    dumps.append(json.loads(answer.stdout))
    time.sleep(0.2)
json.dump({"source": "bench/device/stacks.sh: bench/device/torch_workload.py on an H200 host",
           "dumps": dumps}, open(out, "w"))
print("recorded", len(dumps), "dumps")
PYEOF
timeout 60 $PY -m dsmon diagnose "$WORKLOAD" --duration 10s --format json -o "$OUT/stacks-diagnose.json"
echo "diagnose rc=$?"
$PY - "$OUT/stacks-diagnose.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
p = r["python"]
print({k: v for k, v in p.items() if k != "threads"})
for t in p.get("threads", [])[:8]:
    print(t["tid"], t["name"], t["cpu_ratio"], t["active_ratio"], t["gil_ratio"], t["top_stacks"][0]["frames"][:2])
print([(f["rule_id"], f["state"]) for f in r["findings"]])
for row in r["threads"]["top_by_cpu"][:6]:
    print(row["tid"], row["name"], row["cpu_ratio"], (row.get("python") or {}).get("top_frame"))
PYEOF
kill $WORKLOAD; wait $WORKLOAD 2>/dev/null
tail -2 "$OUT/workload.out"
exit 0
