"""What py-spy costs the target, and what a dump costs dsmon (docs/python-stacks.md).

    .venv/bin/python bench/pyspy_cost.py [--seconds 10] [--rounds 3] [--json out.json]

A target runs one pure-Python busy thread (and 15 idle ones) and reports its loop iterations;
each mode runs for --seconds, rounds interleave the modes so drift hits them alike:
  baseline            nothing attached
  dsmon-dumps-5hz     what `dsmon diagnose` does: `py-spy dump --nonblocking` every 200 ms
  record-nonblocking  `py-spy record --nonblocking --rate 100 --idle`
  record-blocking     `py-spy record --rate 100 --idle` (pauses the target for each sample)
  dumps-blocking-5hz  `py-spy dump` (blocking) every 200 ms
The slowdown is the target's iterations/s against the baseline median; the sampler's CPU is
its children's rusage. Then the dump latency of 64- and 512-thread targets (the < 200 ms budget).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from dsmon.stacks.pyspy import PySpy, find_pyspy  # noqa: E402

TARGET = r"""
import sys, threading, time
count = [0]
def busy():
    n = 0
    while True:
        for i in range(1000):
            n += i
        count[0] += 1
def idle():
    while True:
        time.sleep(1)
threading.Thread(target=busy, daemon=True).start()
for _ in range(int(sys.argv[1])):
    threading.Thread(target=idle, daemon=True).start()
print("ready", flush=True)
while True:
    time.sleep(0.25)
    print(time.monotonic(), count[0], flush=True)
"""


class Target:
    def __init__(self, idle_threads: int):
        self.process = subprocess.Popen([sys.executable, "-c", TARGET, str(idle_threads)],
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().startswith("ready")
        self.points: list[tuple[float, int]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            stamp, count = line.split()
            self.points.append((float(stamp), int(count)))

    def rate_between(self, start: float, end: float) -> float:
        inside = [p for p in self.points if start <= p[0] <= end]
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        return (c1 - c0) / (t1 - t0)

    def close(self):
        self.process.kill()
        self.process.wait()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_mode(mode: str, pid: int, seconds: float, pyspy_binary: str) -> float:
    """Runs the sampler for `seconds`; returns the sampler's CPU seconds."""
    before = children_cpu()
    if mode == "baseline":
        time.sleep(seconds)
    elif mode.startswith("record"):
        command = [pyspy_binary, "record", "--pid", str(pid), "--rate", "100", "--idle",
                   "--duration", str(int(seconds)), "--format", "raw", "-o", os.devnull]
        if mode == "record-nonblocking":
            command.append("--nonblocking")
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=seconds + 30)
    else:
        pyspy = PySpy(pyspy_binary, explicit=True, timeout_s=5)
        blocking = mode == "dumps-blocking-5hz"
        end = time.monotonic() + seconds
        next_at = time.monotonic()
        while time.monotonic() < end:
            pyspy.dump(pid, blocking=blocking)
            next_at += 0.2
            time.sleep(max(0.0, next_at - time.monotonic()))
    return children_cpu() - before


def dump_latency(threads: int, repeats: int, pyspy_binary: str) -> dict:
    target = Target(threads - 2)     # + the busy thread and the main thread
    try:
        pyspy = PySpy(pyspy_binary, explicit=True, timeout_s=10)
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            found = len(pyspy.dump(target.process.pid))
            timings.append(time.perf_counter() - started)
        timings.sort()
        return {"threads": found, "median_ms": round(1000 * statistics.median(timings), 1),
                "p95_ms": round(1000 * timings[int(0.95 * (len(timings) - 1))], 1),
                "max_ms": round(1000 * timings[-1], 1)}
    finally:
        target.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    binary = find_pyspy()
    if binary is None:
        raise SystemExit("py-spy not found: pip install py-spy")
    modes = ["baseline", "dsmon-dumps-5hz", "record-nonblocking", "record-blocking",
             "dumps-blocking-5hz"]
    results: dict[str, dict] = {m: {"rates": [], "cpu": []} for m in modes}
    target = Target(15)
    try:
        time.sleep(1)
        for _ in range(args.rounds):
            for mode in modes:
                start = time.monotonic()
                cpu = run_mode(mode, target.process.pid, args.seconds, binary)
                end = time.monotonic()
                time.sleep(0.5)
                results[mode]["rates"].append(target.rate_between(start + 0.5, end))
                results[mode]["cpu"].append(cpu / (end - start))
    finally:
        target.close()
    baseline = statistics.median(results["baseline"]["rates"])
    table = []
    for mode in modes:
        rates = results[mode]["rates"]
        table.append({"mode": mode, "iterations_per_second": round(statistics.median(rates)),
                      "slowdown_percent": round(100 * (1 - statistics.median(rates) / baseline), 1),
                      "slowdown_min_max": [round(100 * (1 - max(rates) / baseline), 1),
                                           round(100 * (1 - min(rates) / baseline), 1)],
                      "sampler_cpu_percent": round(100 * statistics.median(results[mode]["cpu"]), 2)})
    latency = [dump_latency(n, 15, binary) for n in (64, 512)]
    document = {"machine": {"cpus": os.cpu_count(), "loadavg": open("/proc/loadavg").read().split()[:3]},
                "seconds": args.seconds, "rounds": args.rounds, "modes": table,
                "dump_latency": latency}
    print(f"{'mode':<22} {'iter/s':>10} {'slowdown':>9} {'(min..max)':>14} {'py-spy cpu':>10}")
    for row in table:
        low, high = row["slowdown_min_max"]
        print(f"{row['mode']:<22} {row['iterations_per_second']:>10} "
              f"{row['slowdown_percent']:>8}% {f'({low}..{high})':>14} "
              f"{row['sampler_cpu_percent']:>9}%")
    for row in latency:
        print(f"dump of {row['threads']} threads: median {row['median_ms']} ms, "
              f"p95 {row['p95_ms']} ms, max {row['max_ms']} ms")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(document, handle, indent=1)


if __name__ == "__main__":
    main()
