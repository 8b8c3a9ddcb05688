"""Prometheus exposition: metric families built after each sample, served as they are.

The sampling jobs build an immutable list of families and swap it in; a scrape only
serialises that list (no I/O, no sampling, no waiting). A hard cap on series drops the excess
and counts it. Labels come from bounded sets; pids and tids are never labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


@dataclass
class Family:
    name: str            # without _total for counters
    kind: str            # gauge or counter
    help: str
    labels: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)
    # Label values of series that stand at 0 until a value arrives, with their position.
    zeros: dict[tuple[str, ...], int] = field(default_factory=dict)

    def build(self):
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        family = cls(self.name, self.help, labels=self.labels)
        for values, value in self.samples:
            family.add_metric(values, value)
        return family


class MetricsBuilder:
    """Collects samples for one exposition, enforcing the series cap."""

    def __init__(self, max_series: int):
        self.max_series = max_series
        self.families: dict[str, Family] = {}
        self.series = 0
        self.dropped = 0

    def add(self, name: str, kind: str, help_text: str, labels: dict[str, str],
            value: float | None, initial: bool = False) -> None:
        """One series. `initial`: a starting value (0) that a later add of the same labels
        replaces, so a series exists before its first event (increase() and rate() then
        see the first increment, and absent() does not mean "nothing fired")."""
        if value is None:
            return  # unknown is absent, never 0
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = Family(name, kind, help_text, tuple(labels))
        key = tuple(str(labels[k]) for k in family.labels)
        if family.zeros and key in family.zeros:
            family.samples[family.zeros.pop(key)] = (key, float(value))
            return
        if self.series >= self.max_series:
            self.dropped += 1
            return
        if initial:
            family.zeros[key] = len(family.samples)
        family.samples.append((key, float(value)))
        self.series += 1

    # Positional-only, so that "name" can be a label (dsmon_gpu_info{name=...}).
    def gauge(self, name: str, help_text: str, value, /, initial: bool = False,
              **labels) -> None:
        self.add(name, "gauge", help_text, labels, value, initial)

    def counter(self, name: str, help_text: str, value, /, initial: bool = False,
                **labels) -> None:
        self.add(name, "counter", help_text, labels, value, initial)

    def build(self) -> list:
        return [family.build() for family in self.families.values() if family.samples]

