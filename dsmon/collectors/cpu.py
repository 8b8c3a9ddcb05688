"""Per-core CPU time by mode, from /proc/stat."""

from __future__ import annotations

import os
from dataclasses import dataclass

from dsmon.paths import HostPaths
from dsmon.sources import Malformed, read_nonempty

MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError):
        return 100


@dataclass(frozen=True)
class ProcStat:
    per_cpu: dict[int, tuple[float, ...]]   # cpu -> seconds per mode, in MODES order
    total: tuple[float, ...]
    context_switches: int
    procs_running: int
    procs_blocked: int
    boot_time: int                          # seconds since the epoch


def parse_proc_stat(text: str, hz: int = 100) -> ProcStat:
    per_cpu: dict[int, tuple[float, ...]] = {}
    total: tuple[float, ...] | None = None
    values: dict[str, int] = {}
    for line in text.splitlines():
        if not line:
            continue
        key, _, rest = line.partition(" ")
        if key.startswith("cpu"):
            fields = rest.split()
            if len(fields) < 4:
                raise Malformed("stat", f"cpu line too short: {line!r}")
            # Older kernels lack steal (and irq/softirq): absent modes count 0 seconds,
            # because the kernel does not account them separately at all.
            ticks = [int(v) for v in fields[:8]] + [0] * (8 - min(8, len(fields)))
            seconds = tuple(t / hz for t in ticks)
            if key == "cpu":
                total = seconds
            else:
                per_cpu[int(key[3:])] = seconds
        elif key in ("ctxt", "procs_running", "procs_blocked", "btime"):
            values[key] = int(rest.strip())
    if total is None or not per_cpu:
        raise Malformed("stat", "no cpu lines")
    return ProcStat(per_cpu, total, values.get("ctxt", 0), values.get("procs_running", 0),
                    values.get("procs_blocked", 0), values.get("btime", 0))


class CpuCollector:
    name = "cpu"

    def __init__(self, paths: HostPaths):
        self._path = paths.proc("stat")
        self._hz = clock_ticks()

    def collect(self) -> ProcStat:
        return parse_proc_stat(read_nonempty(self._path), self._hz)
