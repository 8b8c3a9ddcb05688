"""Evaluating rules over feature windows, with Prometheus-style pending/firing/resolved states."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from dsmon.features.series import fit_line, stddev
from dsmon.features import CONTEXT_FIELDS, FEATURES, FeatureStore
from dsmon.units import format_value
from dsmon.engine.rules import (SEVERITY_RANK, Leaf, Rule, RuleTemplate, inhibited_by,
                                split_placeholder, template_fields)


HISTORY_LIMIT = 1000
# The hint key of the thread-pool library a plain Python process has loaded.
HINT_RUNTIME = {"MKL": "blas", "OpenBLAS": "blas", "OpenMP": "openmp"}


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
    if agg in ("slope", "fit_r2"):
        fit = fit_line(points)
        if fit is None:
            return None
        return fit.slope if agg == "slope" else fit.r_squared
    raise ValueError(agg)


# Aggregations whose value is in the feature's own unit (a level, not a change or a count).
LEVEL_AGGREGATIONS = ("last", "min", "max", "avg")
_PER_SECOND = {"bytes": "bytes_per_second", "count": "per_second"}


def aggregate_unit(agg: str, unit: str) -> str:
    if agg == "count":
        return "count"
    if agg == "fit_r2":
        return "ratio"
    if agg in ("slope", "rate"):
        return _PER_SECOND.get(unit, unit)
    return unit


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
    span_s: float = 0.0       # time between the first and last point actually used

    @property
    def unit(self) -> str:
        return aggregate_unit(self.agg, FEATURES[self.feature].unit)

    def as_dict(self) -> dict:
        unit = self.unit
        # The window as really used: a diagnose run shorter than the rule's window, or a
        # feature measured only every few sweeps, covers less than the nominal window.
        covered = _covered(self.points, self.span_s, self.window_s)
        return {"feature": self.feature, "negated": self.negated, "aggregation": self.agg,
                "window_seconds": self.window_s, "span_seconds": round(self.span_s, 3),
                "value": _clean(self.value), "op": self.op, "threshold": _clean(self.threshold),
                "met": self.met, "points": self.points, "unit": unit,
                "text": f"{self.agg}({self.feature}) = {format_value(self.value, unit)} "
                        f"{self.op} {format_value(self.threshold, unit)} ({covered})"}


def _covered(points: int, span_s: float, window_s: float) -> str:
    return f"{points} point{'s' if points != 1 else ''} over {span_s:.1f}s of {window_s:g}s"


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
        span = points[-1][0] - points[0][0] if points else 0.0
        evidence.append(Evidence(node.feature, node.agg, node.window_s, value, node.op, threshold,
                                 met, len(points), negated, span))
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
    inhibited_by: str | None = None     # set when another rule's cause ended this one
    cause: str | None = None            # the rule's `cause`
    quoted: list[Quoted] = field(default_factory=list)   # values the texts quote beyond evidence

    def as_dict(self, start_mono: float | None = None) -> dict:
        def rel(value):
            return None if value is None or start_mono is None else round(value - start_mono, 3)
        return {"rule_id": self.rule_id, "severity": self.severity, "state": self.state,
                "subject": self.subject, "cause": self.cause, "summary": self.summary,
                "hint": self.hint,
                # What held and supports the verdict; `none:` conditions that held are counter-
                # evidence, listed only in evidence_all.
                "evidence": [e.as_dict() for e in self.evidence if e.met and not e.negated],
                "evidence_all": [e.as_dict() for e in self.evidence],
                # Values the summary and hint quote that no condition computed (a peak, a
                # spread, a quota), over the same window: every number in the text is traced.
                "quoted": [q.as_dict() for q in self.quoted],
                "since_wall": self.since_wall, "inhibited_by": self.inhibited_by,
                "since_seconds": rel(self.since), "fired_at_seconds": rel(self.fired_at),
                "resolved_at_seconds": rel(self.resolved_at)}


def render(template: str, values: dict[str, str]) -> str:
    # safe_substitute: a placeholder without a value stays visible rather than failing.
    return RuleTemplate(template).safe_substitute(values)


def _used_value(evidence: list[Evidence], feature: str) -> Evidence | None:
    """The evidence a bare `$feature` quotes: the first level aggregation of that feature that
    supported the verdict, else the first one evaluated."""
    candidates = [e for e in evidence if e.feature == feature and e.agg in LEVEL_AGGREGATIONS
                  and e.value is not None]
    supporting = [e for e in candidates if e.met and not e.negated]
    return (supporting or candidates or [None])[0]


@dataclass(frozen=True)
class Quoted:
    """A value a summary or hint quotes that no condition of the rule computed (a peak, a
    spread, a quota, the thread count to set): listed beside the evidence, so every number
    of a finding's text can be traced to what was measured, over which points."""

    feature: str
    agg: str
    value: float | None
    points: int
    span_s: float
    window_s: float

    def as_dict(self) -> dict:
        unit = aggregate_unit(self.agg, FEATURES[self.feature].unit)
        covered = "the last sample" if self.agg == "last" else \
            _covered(self.points, self.span_s, self.window_s)
        return {"feature": self.feature, "aggregation": self.agg, "value": _clean(self.value),
                "unit": unit, "points": self.points, "span_seconds": round(self.span_s, 3),
                "text": f"{self.agg}({self.feature}) = {format_value(self.value, unit)} "
                        f"({covered})"}


def template_values(rule: Rule, evidence: list[Evidence], store: FeatureStore, now: float,
                    context: dict[str, str], names: set[str],
                    quoted: dict[str, Quoted] | None = None) -> dict[str, str]:
    """Values for a rule's placeholders, from the same aggregates as its evidence: `$feature`
    is the value a condition of the rule computed (avg where the rule averaged), `${agg:f}`
    that aggregation over the rule's window, and a feature the conditions do not use is its
    last value. Values no condition computed go into `quoted` (placeholder -> Quoted)."""
    values: dict[str, str] = {}
    window = max((e.window_s for e in evidence), default=0.0)
    for name in names:
        agg, feature = split_placeholder(name)
        if feature in CONTEXT_FIELDS and agg is None:
            values[name] = context.get(feature) or "unknown"
            continue
        if feature not in FEATURES:
            continue
        unit = FEATURES[feature].unit
        own: Quoted | None = None
        if agg is None:
            used = _used_value(evidence, feature)
            if used is not None:
                value = used.value
            else:
                value = store.last(feature)
                own = Quoted(feature, "last", value, 1 if value is not None else 0, 0.0, window)
        else:
            same = [e for e in evidence if e.feature == feature and e.agg == agg
                    and e.value is not None]
            if same:
                value = same[0].value
            else:
                points = store.window(feature, now, window)
                value = aggregate(agg, points)
                own = Quoted(feature, agg, value, len(points),
                             points[-1][0] - points[0][0] if points else 0.0, window)
            unit = aggregate_unit(agg, unit)
        if own is not None and quoted is not None:
            quoted[name] = own
        values[name] = format_value(value, unit)
    rss = store.last("rss_bytes")
    if rss is not None:
        # What lower precision would free if the resident memory were FP32 weights.
        values["half_of_rss"] = format_value(rss / 2, "bytes")
        values["three_quarters_of_rss"] = format_value(rss * 3 / 4, "bytes")
    return values


def inhibitors_first(rules: list[Rule]) -> list[Rule]:
    """The rules in an order where every rule comes after the rules that inhibit it (the
    inhibition graph is acyclic: the loader refuses cycles); otherwise as loaded."""
    by_id = {rule.id: rule for rule in rules}
    inhibitors = inhibited_by(rules)
    ordered: list[Rule] = []
    placed: set[str] = set()

    def place(rule: Rule) -> None:
        if rule.id in placed:
            return
        placed.add(rule.id)
        for other in inhibitors.get(rule.id, ()):
            if other in by_id:
                place(by_id[other])
        ordered.append(rule)

    for rule in rules:
        place(rule)
    return ordered


def template_names(rule: Rule) -> dict[str, frozenset[str]]:
    """For each hint text the rule can show (`hint_for`), the placeholders of its summary and
    that hint: parsed once, not at every evaluation."""
    summary = template_fields(rule.summary)
    return {text: frozenset((summary | template_fields(text)) - {"<invalid>"})
            for text in (rule.hint, *rule.hints.values())}


@dataclass
class Engine:
    """Evaluates every rule for one subject over time; keeps state between evaluations."""

    rules: list[Rule]
    active: dict[str, Finding] = field(default_factory=dict)
    # Resolved findings, newest last; bounded, since the agent runs for months and a flapping
    # finding resolves over and over.
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY_LIMIT))

    def __post_init__(self):
        self._inhibitors = inhibited_by(self.rules)
        self._placeholders = {rule.id: template_names(rule) for rule in self.rules}
        self._order = inhibitors_first(self.rules)

    def evaluate(self, store: FeatureStore, now: float, wall: float,
                 context: dict[str, str]) -> list[tuple[Finding, str]]:
        """Evaluate all rules at `now`; returns (finding, new state) for each state change,
        in order (a `for: 0` rule goes pending and firing in one evaluation).

        Inhibition (a rule's `inhibits`): while an inhibiting rule is firing, the rules it
        explains do not fire, and an active one resolves at once with `inhibited_by`, as in
        Alertmanager, where only a firing alert inhibits. While the inhibitor's condition holds
        but it is still pending, an inhibited rule may become or stay pending but not start
        firing: the deeper cause gets its `for:` to confirm itself first, and a flapping
        inhibitor that never fires cannot silence the symptom for good. Rules are evaluated
        inhibitors first, so a decision uses the inhibitor's state of this evaluation."""
        changed: list[tuple[Finding, str]] = []
        met_now: set[str] = set()
        engine = context.get("engine", "")
        runtime = HINT_RUNTIME.get(context.get("thread_pool_library", ""), "")
        for rule in self._order:
            evidence: list[Evidence] = []
            met = evaluate_condition(rule.when, store, now, evidence) is True
            if met:
                met_now.add(rule.id)
            finding = self.active.get(rule.id)
            inhibitors = self._inhibitors.get(rule.id, ())
            blocking = next((other for other in inhibitors if other in self.active
                             and self.active[other].state == "firing"), None)
            holding = any(other in met_now for other in inhibitors)
            if met and blocking is None:
                hint_text = rule.hint_for(engine, runtime)
                quoted: dict[str, Quoted] = {}
                values = template_values(rule, evidence, store, now, context,
                                         self._placeholders[rule.id][hint_text], quoted)
                summary = render(rule.summary, values)
                hint = render(hint_text, values)
                quoted_list = list({(q.feature, q.agg): q
                                    for _, q in sorted(quoted.items())}.values())
                if finding is None:
                    finding = Finding(rule.id, rule.severity, "pending", context.get("target", ""),
                                      summary, hint, evidence, now, wall, capture=rule.capture,
                                      cause=rule.cause)
                    self.active[rule.id] = finding
                    changed.append((finding, finding.state))
                finding.summary, finding.hint, finding.evidence = summary, hint, evidence
                finding.quoted = quoted_list
                finding.last_true = now
                if finding.state == "pending" and not holding and \
                        now - finding.since >= rule.for_s - 1e-6:
                    finding.state, finding.fired_at = "firing", now
                    changed.append((finding, finding.state))
            elif finding is not None:
                if finding.state == "pending":
                    del self.active[rule.id]
                elif blocking is not None or \
                        now - (finding.last_true or now) >= rule.keep_firing_for_s - 1e-6:
                    finding.state, finding.resolved_at = "resolved", now
                    finding.inhibited_by = blocking
                    del self.active[rule.id]
                    self.history.append(finding)
                    changed.append((finding, finding.state))
        return changed

    def current(self) -> list[Finding]:
        """Active findings, most severe first, then firing before pending."""
        return sorted(self.active.values(),
                      key=lambda f: (-SEVERITY_RANK[f.severity], f.state != "firing", f.since))
