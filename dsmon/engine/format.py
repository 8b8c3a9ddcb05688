"""Human formatting of feature values by unit, for summaries, hints and evidence."""

from __future__ import annotations


def format_bytes(value: float) -> str:
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{sign}{value / size:.1f} {unit}"
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
