"""Evaluating rules over feature windows, with Prometheus-style pending/firing/resolved states."""

from __future__ import annotations

import math
import string
from collections import deque
from dataclasses import dataclass, field

from dsmon.features.series import linear_slope, stddev
from dsmon.features import CONTEXT_FIELDS, FEATURES, FeatureStore
from dsmon.units import format_value
from dsmon.engine.rules import SEVERITY_RANK, Leaf, Rule


HISTORY_LIMIT = 1000


def aggregate(agg: str, points: list[tuple[float, float]]) -> float | None:
    values = [v for _, v in points]
    if agg == "count":
        return float(len(values))
    if not values:
        return None
    if agg == "last":
        return values[-1]
    if agg == "min":
        return min(values)
    if agg == "max":
        return max(values)
    if agg == "avg":
        return sum(values) / len(values)
    if agg == "stddev":
        return stddev(values)
    if agg in ("delta", "rate"):
        if len(points) < 2 or values[-1] < values[0]:
            return None  # too little data, or a counter that was reset: no rate, not zero
        delta = values[-1] - values[0]
        if agg == "delta":
            return delta
        span = points[-1][0] - points[0][0]
        return delta / span if span > 0 else None
    if agg == "slope":
        return linear_slope(points)
    raise ValueError(agg)


_COMPARE = {
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, "==": lambda a, b: math.isclose(a, b), "!=": lambda a, b: not math.isclose(a, b),
}


@dataclass
class Evidence:
    feature: str
    agg: str
    window_s: float
    value: float | None
    op: str
    threshold: float | None
    met: bool | None          # None: not enough data to decide
    points: int
    negated: bool = False     # inside a `none:` group: when met, it argues against the finding

    def as_dict(self) -> dict:
        unit = "count" if self.agg == "count" else FEATURES[self.feature].unit
        return {"feature": self.feature, "negated": self.negated, "aggregation": self.agg, "window_seconds": self.window_s,
                "value": _clean(self.value), "op": self.op, "threshold": _clean(self.threshold),
                "met": self.met, "points": self.points, "unit": unit,
                "text": f"{self.agg}({self.feature}) over {self.window_s:g}s = "
                        f"{format_value(self.value, unit)} {self.op} "
                        f"{format_value(self.threshold, unit)}"}


def _clean(value):
    return None if value is None else round(value, 6)


def evaluate_condition(node, store: FeatureStore, now: float, evidence: list[Evidence],
                       negated: bool = False) -> bool | None:
    """True, False, or None when the data cannot decide (treated as not met)."""
    if isinstance(node, Leaf):
        points = store.window(node.feature, now, node.window_s)
        value = aggregate(node.agg, points) if len(points) >= node.min_points else None
        threshold = node.value
        if node.value_of is not None:
            ref_points = store.window(node.value_of.feature, now, node.window_s)
            reference = aggregate(node.value_of.agg, ref_points)
            threshold = None if reference is None else \
                reference * node.value_of.factor + node.value_of.offset
        met = None if value is None or threshold is None else _COMPARE[node.op](value, threshold)
        evidence.append(Evidence(node.feature, node.agg, node.window_s, value, node.op, threshold,
                                 met, len(points), negated))
        return met
    inner = negated != (node.kind == "none")
    results = [evaluate_condition(child, store, now, evidence, inner) for child in node.children]
    if node.kind == "all":
        return all(r is True for r in results)
    if node.kind == "any":
        return any(r is True for r in results)
    return not any(r is True for r in results)  # none


@dataclass
class Finding:
    rule_id: str
    severity: str
    state: str                  # pending, firing, resolved
    subject: str
    summary: str
    hint: str
    evidence: list[Evidence]
    since: float                # when the condition became true (monotonic)
    since_wall: float
    fired_at: float | None = None
    resolved_at: float | None = None
    last_true: float | None = None
    capture: str | None = None

    def as_dict(self, start_mono: float | None = None) -> dict:
        def rel(value):
            return None if value is None or start_mono is None else round(value - start_mono, 3)
        return {"rule_id": self.rule_id, "severity": self.severity, "state": self.state,
                "subject": self.subject, "summary": self.summary, "hint": self.hint,
                # What held and supports the verdict; `none:` conditions that held are counter-
                # evidence, listed only in evidence_all.
                "evidence": [e.as_dict() for e in self.evidence if e.met and not e.negated],
                "evidence_all": [e.as_dict() for e in self.evidence],
                "since_wall": self.since_wall,
                "since_seconds": rel(self.since), "fired_at_seconds": rel(self.fired_at),
                "resolved_at_seconds": rel(self.resolved_at)}


def render(template: str, values: dict[str, str]) -> str:
    # safe_substitute: a placeholder without a value stays visible rather than failing.
    return string.Template(template).safe_substitute(values)


def template_values(store: FeatureStore, context: dict[str, str]) -> dict[str, str]:
    values = {name: format_value(store.last(name), feature.unit)
              for name, feature in FEATURES.items()}
    for name in CONTEXT_FIELDS:
        values[name] = context.get(name) or "unknown"
    rss = store.last("rss_bytes")
    if rss is not None:
        # What lower precision would free if the resident memory were FP32 weights.
        values["half_of_rss"] = format_value(rss / 2, "bytes")
        values["three_quarters_of_rss"] = format_value(rss * 3 / 4, "bytes")
    return values


@dataclass
class Engine:
    """Evaluates every rule for one subject over time; keeps state between evaluations."""

    rules: list[Rule]
    active: dict[str, Finding] = field(default_factory=dict)
    # Resolved findings, newest last; bounded, since the agent runs for months and a flapping
    # finding resolves over and over.
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY_LIMIT))

    def evaluate(self, store: FeatureStore, now: float, wall: float,
                 context: dict[str, str]) -> list[tuple[Finding, str]]:
        """Evaluate all rules at `now`; returns (finding, new state) for each state change,
        in order (a `for: 0` rule goes pending and firing in one evaluation)."""
        changed: list[tuple[Finding, str]] = []
        values = None
        for rule in self.rules:
            evidence: list[Evidence] = []
            met = evaluate_condition(rule.when, store, now, evidence) is True
            finding = self.active.get(rule.id)
            if met:
                if values is None:
                    values = template_values(store, context)
                summary = render(rule.summary, values)
                hint = render(rule.hint_for(context.get("engine", "")), values)
                if finding is None:
                    finding = Finding(rule.id, rule.severity, "pending", context.get("target", ""),
                                      summary, hint, evidence, now, wall, capture=rule.capture)
                    self.active[rule.id] = finding
                    changed.append((finding, finding.state))
                finding.summary, finding.hint, finding.evidence = summary, hint, evidence
                finding.last_true = now
                if finding.state == "pending" and now - finding.since >= rule.for_s - 1e-6:
                    finding.state, finding.fired_at = "firing", now
                    changed.append((finding, finding.state))
            elif finding is not None:
                if finding.state == "pending":
                    del self.active[rule.id]
                elif now - (finding.last_true or now) >= rule.keep_firing_for_s - 1e-6:
                    finding.state, finding.resolved_at = "resolved", now
                    del self.active[rule.id]
                    self.history.append(finding)
                    changed.append((finding, finding.state))
        return changed

    def current(self) -> list[Finding]:
        """Active findings, most severe first, then firing before pending."""
        return sorted(self.active.values(),
                      key=lambda f: (-SEVERITY_RANK[f.severity], f.state != "firing", f.since))
