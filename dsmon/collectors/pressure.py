"""Pressure stall information (PSI) for the host, and for a cgroup on cgroup v2."""

from __future__ import annotations

from dsmon.paths import HostPaths
from dsmon.sources import Malformed, Missing, read_text

RESOURCES = ("cpu", "memory", "io")
NO_PSI_HINT = ("this kernel exposes no PSI: it needs CONFIG_PSI=y, and psi=1 on the kernel "
               "command line where CONFIG_PSI_DEFAULT_DISABLED=y")

Pressure = dict[str, dict[str, float]]   # "some"/"full" -> avg10, avg60, avg300, total_seconds


def parse_pressure(text: str) -> Pressure:
    """Parse one PSI file. `total` (microseconds) becomes `total_seconds`."""
    result: Pressure = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        kind = parts[0]
        if kind not in ("some", "full"):
            raise Malformed("pressure", f"unexpected line {line!r}")
        values: dict[str, float] = {}
        for item in parts[1:]:
            key, _, raw = item.partition("=")
            if key == "total":
                values["total_seconds"] = int(raw) / 1e6
            else:
                values[key] = float(raw)
        result[kind] = values
    if "some" not in result:
        raise Malformed("pressure", "no 'some' line")
    return result


def read_pressure_dir(directory_files: dict[str, str]) -> dict[str, Pressure]:
    """Read cpu/memory/io pressure from {resource: path}; resources without a file are left out."""
    found: dict[str, Pressure] = {}
    for resource, path in directory_files.items():
        try:
            text = read_text(path)
        except Missing:
            continue  # also PSI compiled in but disabled at boot (EOPNOTSUPP on read)
        if text.strip():
            found[resource] = parse_pressure(text)
    return found


class PressureCollector:
    name = "pressure"

    def __init__(self, paths: HostPaths):
        self._files = {resource: paths.proc("pressure", resource) for resource in RESOURCES}

    def collect(self) -> dict[str, Pressure]:
        found = read_pressure_dir(self._files)
        if not found:
            raise Missing(self._files["cpu"], "no PSI files", NO_PSI_HINT)
        return found
