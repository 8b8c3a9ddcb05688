"""How the reports write numbers for people: "n/a" for absent values, else dsmon.units."""

from __future__ import annotations

from dsmon.units import format_bytes, format_seconds


def bytes_text(value) -> str:
    return "n/a" if value is None else format_bytes(value, digits=2)


def percent(value) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def number(value, fmt: str = "{:.2f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def duration(seconds) -> str:
    return "n/a" if seconds is None else format_seconds(seconds)
