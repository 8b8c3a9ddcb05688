"""Host memory and swap, from /proc/meminfo."""

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
