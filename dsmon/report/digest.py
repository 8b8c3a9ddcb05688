"""What the text and HTML reports say once: evidence as really measured (one line per
reading), one threads table when the two rankings name the same threads, and each fix text
printed once with the other findings pointing at it. Pure functions of the report dict."""

from __future__ import annotations

from dataclasses import dataclass, field

from dsmon.units import format_value


def covered_seconds(item: dict, window: dict) -> float:
    """The part of the rule's window the evidence really covered: the span of the points
    used when the engine says it, else the window cut to the report's own length."""
    if item.get("span_seconds") is not None:
        return item["span_seconds"]
    nominal = item.get("window_seconds") or 0.0
    elapsed = window.get("elapsed_seconds")
    return nominal if elapsed is None else min(nominal, elapsed)


def _coverage(item: dict, window: dict) -> str:
    # Worded as the engine words its own evidence text, so the JSON and the reports agree.
    points = item.get("points") or 0
    return (f"{points} point{'' if points == 1 else 's'} over "
            f"{covered_seconds(item, window):.1f}s of {item.get('window_seconds') or 0:g}s")


def quoted_lines(finding: dict) -> list[str]:
    """The values a finding's summary and hint quote beyond its evidence (a peak, a spread, a
    setting), each with the points it covers."""
    return [str(item.get("text", "")) for item in finding.get("quoted") or []]


def evidence_lines(finding: dict, window: dict) -> list[str]:
    """One line per reading (aggregation of a feature over a window): a rule that compares
    the same reading with two thresholds shows the value once, with both comparisons."""
    readings: dict[tuple, list[dict]] = {}
    for item in finding.get("evidence") or []:
        if "feature" not in item or "aggregation" not in item:
            readings[("text", len(readings))] = [item]     # free text, shown as it came
            continue
        key = (item["feature"], item["aggregation"], item.get("window_seconds"),
               item.get("value"))
        readings.setdefault(key, []).append(item)
    lines = []
    for items in readings.values():
        first = items[0]
        if "feature" not in first or "aggregation" not in first:
            lines.append(str(first.get("text", "")))
            continue
        unit = first.get("unit") or ""
        comparisons = []
        for item in items:
            comparison = f"{item.get('op')} {format_value(item.get('threshold'), unit)}"
            if comparison not in comparisons:
                comparisons.append(comparison)
        lines.append(f"{first['aggregation']}({first['feature']}) = "
                     f"{format_value(first.get('value'), unit)} {', '.join(comparisons)} "
                     f"({_coverage(first, window)})")
    return lines


@dataclass
class ThreadTable:
    title: str
    rows: list


def thread_tables(threads: dict) -> list[ThreadTable]:
    """The top threads by CPU and by run-queue wait; one table when the shorter ranking
    holds the same threads as the top of the longer one (the table has both columns, so
    the second order is still readable from it)."""
    by_cpu = threads.get("top_by_cpu") or []
    by_wait = threads.get("top_by_run_queue_wait") or []
    if by_cpu and by_wait:
        longer, shorter = (by_cpu, by_wait) if len(by_cpu) >= len(by_wait) else \
            (by_wait, by_cpu)
        if {r["tid"] for r in shorter} == {r["tid"] for r in longer[:len(shorter)]}:
            name = "CPU" if longer is by_cpu else "run-queue wait"
            other = "run-queue wait" if longer is by_cpu else "CPU"
            if len(shorter) == len(longer):
                return [ThreadTable(f"top threads by {name} and by {other} (the same threads)",
                                    longer)]
            return [ThreadTable(f"top threads by {name} (the top {len(shorter)} by {other} "
                                "are the same threads)", longer)]
    return [ThreadTable(title, rows) for title, rows in
            (("top threads by CPU", by_cpu), ("top threads by run-queue wait", by_wait)) if rows]


@dataclass
class FixLedger:
    """Remembers which fix texts were already printed, and by whom (a rule id, or whatever
    the report needs to point back at it): a text seen again is referred to ("same fix as X
    above"), never printed twice."""
    first_owner: dict[str, object] = field(default_factory=dict)

    def owner_of_earlier(self, owner: object, hint: str) -> object | None:
        """The owner that printed `hint` before, or None (then `owner` prints it now)."""
        key = " ".join(hint.split())
        if not key:
            return None
        earlier = self.first_owner.get(key)
        if earlier is None:
            self.first_owner[key] = owner
        return earlier
