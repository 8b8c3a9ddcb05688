"""CPU cost of FeatureExtractor.update per tick on a real 512-thread process.

    .venv/bin/python bench/features_cost.py [--threads 512] [--ticks 20]

Samples the workload's threads `--ticks` times (switch counts every 5th sweep, as the agent
reads them), then times the extractor over those ticks: the best of 5 passes, CPU time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dsmon.features import FeatureExtractor  # noqa: E402
from dsmon.paths import HostPaths  # noqa: E402
from dsmon.sampler import TargetSampler  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=512)
    parser.add_argument("--ticks", type=int, default=20)
    args = parser.parse_args()
    target = subprocess.Popen([sys.executable, str(REPO / "tests/helpers/workload.py"), "threads",
                               "--busy", "2", "--idle", str(args.threads - 2)],
                              stdout=subprocess.PIPE, text=True)
    sampler = None
    try:
        assert target.stdout.readline().startswith("ready")
        sampler = TargetSampler(HostPaths(), target.pid)
        static = sampler.static()
        ticks = []
        for index in range(args.ticks):
            ticks.append(sampler.tick(read_switches=index % 5 == 0))
            time.sleep(0.05)
    finally:
        target.kill()
        target.wait()
        if sampler is not None:
            sampler.close()
    best = float("inf")
    for _ in range(5):
        extractor = FeatureExtractor(static)
        started = time.process_time()
        for tick in ticks:
            extractor.update(tick)
        best = min(best, (time.process_time() - started) / len(ticks))
    print(f"FeatureExtractor.update: {best * 1e3:.2f} ms CPU per tick, {args.threads} threads; "
          f"loadavg {open('/proc/loadavg').read().strip()} (shared machine, "
          f"{os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
