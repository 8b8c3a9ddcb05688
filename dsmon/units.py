"""Units for people: the one duration parser and the one number formatter.

Configuration files, rule files and the command line parse durations here; summaries, hints,
evidence and the reports format bytes, seconds and ratios here, so every surface says the same.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_BYTE_UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def parse_duration(value, where: str, problems: list[str],
                   allow_zero: bool = True) -> float | None:
    """Seconds from a number or "500ms", "30s", "2m", "1h", "1d"; None (and one line in
    `problems` naming `where` and the fix) for anything else."""
    seconds = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds is not None and (seconds > 0 or (allow_zero and seconds == 0)):
        return seconds
    kind = "duration" if allow_zero else "positive duration"
    problems.append(f"{where}: {value!r} is not a {kind} (use e.g. 30s, 2m, 500ms)")
    return None


def format_bytes(value: float, digits: int = 1) -> str:
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit, size in _BYTE_UNITS:
        if value >= size:
            return f"{sign}{value / size:.{digits}f} {unit}"
    return f"{sign}{value:.0f} B"


def format_seconds(value: float) -> str:
    if value >= 86400:
        return f"{value / 86400:.1f} d"
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 120:
        return f"{value / 60:.0f} min"
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def format_value(value: float | None, unit: str) -> str:
    """A feature value in its unit (dsmon.features.FEATURES), as summaries and evidence say it."""
    if value is None:
        return "n/a"
    if unit == "bytes":
        return format_bytes(value)
    if unit == "bytes_per_second":
        return format_bytes(value) + "/s"
    if unit == "seconds":
        return format_seconds(value)
    if unit == "ratio":
        return f"{value * 100:.0f}%"
    if unit == "count":
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    if unit == "cores":
        return f"{value:.2f}"
    if unit == "per_second":
        return f"{value:.0f}/s"
    if unit == "flag":
        return "yes" if value else "no"
    return f"{value:g}"
