"""Checks on a report's findings that every scenario shares: one finding per cause."""

from __future__ import annotations

from collections import defaultdict


def _describe(report: dict) -> str:
    return "\n".join(f"{f['rule_id']} [{f.get('cause')}] {f['state']}"
                     f"{' inhibited by ' + f['inhibited_by'] if f.get('inhibited_by') else ''}: "
                     f"{f['summary']}" for f in report["findings"])


def firing_by_cause(report: dict) -> dict[str, list[str]]:
    """cause -> the firing findings (rule ids) that name it, per subject."""
    causes: dict[str, list[str]] = defaultdict(list)
    for found in report["findings"]:
        if found["state"] == "firing" and found.get("cause"):
            causes[f"{found.get('subject', '')}:{found['cause']}"].append(found["rule_id"])
    return dict(causes)


def assert_one_finding_per_cause(report: dict) -> None:
    """No two firing findings of one subject blame the same cause."""
    shared = {cause: ids for cause, ids in firing_by_cause(report).items() if len(ids) > 1}
    assert not shared, f"one cause, several findings: {shared}\n{_describe(report)}"


def assert_explained_by(report: dict, rule_id: str, inhibitor: str) -> None:
    """`rule_id` is not active at the end, or was ended by `inhibitor` (the rule that names
    the same cause): it may have been pending, or firing before the inhibitor fired."""
    found = next((f for f in report["findings"] if f["rule_id"] == rule_id), None)
    if found is None or found["state"] == "pending":
        return
    assert found["state"] == "resolved" and found.get("inhibited_by") == inhibitor, \
        f"{rule_id} not explained by {inhibitor}:\n{_describe(report)}"
