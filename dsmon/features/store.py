"""Feature values over time, for the rules' windows."""

from __future__ import annotations

from collections import deque


class FeatureStore:
    """Feature values over time, kept for the longest window any rule uses."""

    def __init__(self, retention_s: float):
        self.retention_s = retention_s
        self._series: dict[str, deque[tuple[float, float]]] = {}

    def add(self, timestamp: float, values: dict[str, float | None]) -> None:
        for name, value in values.items():
            series = self._series.setdefault(name, deque())
            if value is not None:
                series.append((timestamp, float(value)))
            while series and timestamp - series[0][0] > self.retention_s:
                series.popleft()

    def window(self, name: str, now: float, seconds: float) -> list[tuple[float, float]]:
        series = self._series.get(name, ())
        # A small tolerance keeps a sample taken exactly one window ago.
        return [(t, v) for t, v in series if now - t <= seconds + 1e-6]

    def last(self, name: str) -> float | None:
        series = self._series.get(name)
        return series[-1][1] if series else None
