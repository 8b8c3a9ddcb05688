"""Host memory and swap, from /proc/meminfo, and paging counters from /proc/vmstat."""

from __future__ import annotations

from dsmon.paths import HostPaths
from dsmon.sources import Malformed, read_nonempty

REQUIRED = ("MemTotal", "MemFree")


def parse_meminfo(text: str) -> dict[str, int]:
    """Return every field in bytes ("kB" values are KiB; unit-less ones are counts)."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        if not parts:
            continue
        value = int(parts[0])
        if len(parts) > 1 and parts[1] == "kB":
            value *= 1024
        fields[key.strip()] = value
    missing = [key for key in REQUIRED if key not in fields]
    if missing:
        raise Malformed("meminfo", f"missing {', '.join(missing)}")
    return fields


class MemoryCollector:
    name = "memory"

    def __init__(self, paths: HostPaths):
        self._path = paths.proc("meminfo")

    def collect(self) -> dict[str, int]:
        info = parse_meminfo(read_nonempty(self._path))
        unavailable = {}
        if "MemAvailable" not in info:
            # Kernels before 3.14 have no MemAvailable; an estimate would be a guess.
            unavailable["MemAvailable"] = "kernel older than 3.14 does not report MemAvailable"
        return (info, unavailable) if unavailable else info


VMSTAT_FIELDS = ("pswpin", "pswpout", "pgmajfault", "oom_kill", "pgscan_direct", "pgsteal_direct")


def parse_vmstat(text: str) -> dict[str, int]:
    """The few /proc/vmstat counters dsmon uses (swap-in/out pages, major faults, OOM kills)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key in VMSTAT_FIELDS:
            values[key] = int(value)
    if not values:
        raise Malformed("vmstat", "none of the expected counters")
    return values


class VmstatCollector:
    name = "vmstat"

    def __init__(self, paths: HostPaths):
        self._path = paths.proc("vmstat")

    def collect(self) -> dict[str, int]:
        return parse_vmstat(read_nonempty(self._path))
