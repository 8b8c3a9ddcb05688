"""Notes about the window itself: a partial window, truncated sampling, failed sources.

Verdicts about the target are findings of the rules engine (rules/dsmon/*.yaml), never here:
one implementation of each signal.
"""

from __future__ import annotations


def observe(report: dict) -> list[dict]:
    found: list[dict] = []

    def add(severity: str, topic: str, text: str) -> None:
        found.append({"severity": severity, "topic": topic, "text": text})

    window = report.get("window", {})
    if window.get("end_reason") == "target exited":
        add("warning", "window", f"the target exited after {window.get('elapsed_seconds')} s of "
                                 f"the {window.get('requested_seconds')} s window: partial report")
    threads = report.get("threads") or {}
    if threads.get("truncated"):
        add("info", "sampling", "; ".join(threads.get("notes", [])))
    for name, entry in (report.get("collectors") or {}).items():
        if entry.get("status") == "failed" and name != "process":
            add("info", "collector", f"{name}: {entry.get('error')}"
                                     + (f" - {entry['hint']}" if entry.get("hint") else ""))
    return found
