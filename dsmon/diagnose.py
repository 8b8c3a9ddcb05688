"""`dsmon diagnose`: sample one target over a short window and build the report."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from dsmon import __version__
from dsmon.analysis import analyse
from dsmon.model import Batch, Status
from dsmon.observations import observe
from dsmon.paths import HostPaths
from dsmon.sampler import TargetSampler, Tick

SCHEMA_VERSION = 1

# Exit codes, documented in the README.
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_NO_TARGET = 3
EXIT_PARTIAL = 4
EXIT_OUTPUT = 5


@dataclass
class DiagnoseOptions:
    duration_s: float = 10.0
    interval_s: float = 1.0
    max_threads: int = 2048


def sample_window(sampler: TargetSampler, options: DiagnoseOptions,
                  sleep=time.sleep) -> tuple[list[Tick], str]:
    """Tick every interval for the duration. Returns the ticks and why sampling ended."""
    ticks = [sampler.tick(read_switches=True)]
    if ticks[0].target_gone:
        return ticks, "target exited"
    count = max(1, round(options.duration_s / options.interval_s))
    start = ticks[0].mono_ts
    try:
        for index in range(1, count + 1):
            delay = start + index * options.interval_s - time.monotonic()
            if delay > 0:
                sleep(delay)
            tick = sampler.tick(read_switches=(index == count) or None)
            ticks.append(tick)
            if tick.target_gone:
                return ticks, "target exited"
    except KeyboardInterrupt:
        return ticks, "interrupted"
    return ticks, "completed"


def collector_summary(batches: list[Batch]) -> dict:
    summary: dict[str, dict] = {}
    for batch in batches:
        entry = summary.setdefault(batch.collector, {
            "status": batch.status.value, "runs": 0, "failures": 0, "error": "", "hint": "",
            "unavailable": {}, "duration_seconds_max": 0.0})
        entry["runs"] += 1
        entry["status"] = batch.status.value
        entry["duration_seconds_max"] = round(max(entry["duration_seconds_max"],
                                                  batch.duration_s), 6)
        if batch.status is Status.FAILED:
            entry["failures"] += 1
        if batch.error:
            entry["error"], entry["hint"] = batch.error, batch.hint
        entry["unavailable"].update(batch.unavailable)
    return summary


def diagnose(paths: HostPaths, pid: int, options: DiagnoseOptions, sleep=time.sleep) -> dict:
    """Run the whole diagnosis. Raises TargetNotFound when the pid names no process."""
    sampler = TargetSampler(paths, pid, max_threads=options.max_threads)
    try:
        started_wall = time.time()
        static = sampler.static()
        ticks, end_reason = sample_window(sampler, options, sleep)
        numa_end = sampler.numa() if end_reason != "target exited" else None
    finally:
        sampler.close()
    body = analyse(static, ticks, numa_end)
    live = [t for t in ticks if t.data("process") is not None]
    elapsed = live[-1].mono_ts - live[0].mono_ts if len(live) > 1 else 0.0
    batches = [static.topology, static.environment, static.numa_start]
    batches += [b for t in ticks for b in t.batches.values()]
    if numa_end is not None:
        batches.append(numa_end)
    exited_at = next((t.wall_ts for t in ticks if t.target_gone), None)
    report = {
        "schema_version": SCHEMA_VERSION,
        "dsmon_version": __version__,
        "generated_at": _iso(time.time()),
        "reporter_host": socket.gethostname(),
        "paths": {"procfs": paths.procfs, "sysfs": paths.sysfs, "rootfs": paths.rootfs},
        "window": {
            "requested_seconds": options.duration_s,
            "interval_seconds": options.interval_s,
            "samples": len(live),
            "started_at": _iso(started_wall),
            "elapsed_seconds": round(elapsed, 3),
            "complete": end_reason == "completed",
            "end_reason": end_reason,
            "target_exited_at": _iso(exited_at) if exited_at else None,
        },
        **body,
        "collectors": collector_summary(batches),
        "notes": static.topology.data.notes if static.topology.ok else [],
    }
    report["observations"] = observe(report)
    return report


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")
