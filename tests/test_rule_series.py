"""Series that start at 0: MetricsBuilder's initial values (replaced by a real value, never
doubled, counted against the cap) and the findings families rendered for every loaded rule."""

from __future__ import annotations


from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from dsmon.agent.render import render_findings, render_rule_series
from dsmon.engine.rules import load_rules
from dsmon.sinks.prometheus import MetricsBuilder


class _Families:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def exposition(out: MetricsBuilder) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(out.build()))
    return generate_latest(registry).decode()


def lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def test_a_value_replaces_the_initial_zero_and_the_cap_counts_each_series_once():
    out = MetricsBuilder(max_series=3)
    out.counter("dsmon_x", "x", 0, initial=True, k="a")
    out.counter("dsmon_x", "x", 0, initial=True, k="b")
    out.counter("dsmon_x", "x", 5, k="a")                 # replaces, no new series
    out.counter("dsmon_x", "x", 1, k="c")                 # the third series
    out.counter("dsmon_x", "x", 1, k="d")                 # over the cap
    text = exposition(out)
    assert lines(text, "dsmon_x_total") == ['dsmon_x_total{k="a"} 5.0', 'dsmon_x_total{k="b"} 0.0',
                                            'dsmon_x_total{k="c"} 1.0']
    assert out.series == 3 and out.dropped == 1


def test_every_loaded_rule_starts_at_zero_per_target_and_firing_replaces_it():
    rules = load_rules()
    out = MetricsBuilder(max_series=50_000)
    for label in ("vllm", "svc"):
        render_rule_series(out, rules, label)
    first = rules[0]
    render_findings(out, {(first.id, first.severity, "vllm")}, {(first.id, first.severity, "vllm"): 2})
    text = exposition(out)
    for family in ("dsmon_finding_active", "dsmon_findings_fired_total"):
        found = lines(text, family)
        assert len(found) == 2 * len(rules), family        # one per rule per target
        assert len(set(found)) == len(found)
        nonzero = [line for line in found if not line.endswith(" 0.0")]
        assert len(nonzero) == 1 and f'rule_id="{first.id}"' in nonzero[0] \
            and 'target="vllm"' in nonzero[0], nonzero
    assert out.series == 2 * 2 * len(rules)
