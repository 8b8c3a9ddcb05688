"""How the reports write numbers for people: one place, so text and HTML say the same."""

from __future__ import annotations

from dsmon.engine.format import format_seconds


def bytes_text(value) -> str:
    if value is None:
        return "n/a"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value:.0f} B"


def percent(value) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def number(value, fmt: str = "{:.2f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def duration(seconds) -> str:
    return "n/a" if seconds is None else format_seconds(seconds)
