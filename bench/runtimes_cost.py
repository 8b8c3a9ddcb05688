"""Cost of reading the native runtimes (dsmon.collectors.runtimes) of a real process.

    .venv/bin/python bench/runtimes_cost.py [--reads 50] [--import torch]

Starts a Python child that imports the given modules, then times RuntimesCollector.collect()
(one bounded read of /proc/PID/maps and its parse). The agent does this once per target at
start and then once a minute, so the figure is per minute, not per tick.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsmon.collectors.runtimes import RuntimesCollector  # noqa: E402
from dsmon.paths import HostPaths  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=50)
    parser.add_argument("--import", dest="modules", action="append", default=[],
                        help="module the child imports (repeatable), e.g. torch")
    args = parser.parse_args()
    code = "".join(f"import {m}\n" for m in args.modules) + \
        "import sys\nprint('ready', flush=True)\nsys.stdin.read()\n"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        collector = RuntimesCollector(HostPaths(), child.pid)
        maps = open(f"/proc/{child.pid}/maps", "rb").read()
        size, lines = len(maps), maps.count(b"\n")
        times = []
        cpu_started = time.process_time()
        for _ in range(args.reads):
            started = time.perf_counter()
            runtimes = collector.collect()
            times.append(time.perf_counter() - started)
        cpu_ms = (time.process_time() - cpu_started) / args.reads * 1e3
        print(f"modules={args.modules or ['(none)']} maps={size} bytes "
              f"({lines} mappings) reads={args.reads}")
        print(f"collect(): {cpu_ms:.2f} ms CPU; wall median {statistics.median(times) * 1e3:.2f}"
              f" ms, max {max(times) * 1e3:.2f} ms; loaded={sorted(runtimes.loaded)} "
              f"thread_pool_library={runtimes.thread_pool_library!r}")
        print(f"loadavg: {open('/proc/loadavg').read().strip()} (shared 2-core machine, "
              f"{os.cpu_count()} CPUs)")
    finally:
        child.kill()
        child.wait()


if __name__ == "__main__":
    main()
