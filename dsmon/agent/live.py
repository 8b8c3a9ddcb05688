"""The agent's live view of a target: a bounded history of per-interval summaries, and the
report dict that the HTML renderer of `dsmon diagnose` draws from it.

The history is what the page needs and nothing more: per interval the timeline features
(packed into a float array, NaN for "unavailable"), the thread count per state, and the
per-core busy share quantised to one byte per core. Memory is bounded by the ring length
(LIVE_WINDOW_S / interval) and measured in the tests. Nothing here does I/O: the page is
built from what the sample job already read, like a scrape.
"""

from __future__ import annotations

import math
import time
from array import array
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone

from dsmon import __version__
from dsmon.diagnose import SCHEMA_VERSION
from dsmon.model import Batch, Status
from dsmon.report.sections import TIMELINE_FEATURES, analyse, timeline_point

LIVE_WINDOW_S = 300.0          # what the live page shows: the last five minutes
REFRESH_S = 5                  # how often the page reloads itself
_CORE_STEPS = 250              # per-core busy share kept in steps of 0.4%
_NO_CORE = 255                 # a core without a value in that interval


def live_points(interval_s: float) -> int:
    """Ring length for the live window at this sampling interval."""
    return max(2, math.ceil(LIVE_WINDOW_S / interval_s))


@dataclass(slots=True)
class LivePoint:
    mono_ts: float
    wall_ts: float
    features: array                # TIMELINE_FEATURES, NaN = unavailable
    states: tuple                  # ((state, threads), ...)
    cores: bytes                   # busy share per core in 1/_CORE_STEPS, _NO_CORE = none


class LiveHistory:
    """The last `maxlen` intervals of one target."""

    def __init__(self, maxlen: int):
        self.points: deque[LivePoint] = deque(maxlen=maxlen)

    def add(self, before, after, features: dict) -> None:
        entry = timeline_point(before, after, before.mono_ts)
        cores = bytes(_NO_CORE if r is None else round(r * _CORE_STEPS)
                      for r in entry.get("core_busy_ratio") or ())
        values = array("d", (math.nan if features.get(name) is None else float(features[name])
                             for name in TIMELINE_FEATURES))
        self.points.append(LivePoint(after.mono_ts, after.wall_ts, values,
                                     tuple(sorted((entry.get("threads_by_state") or {}).items())),
                                     cores))

    def timeline(self) -> list[dict]:
        """The points as the report's `timeline[]` entries, `t` from the oldest one."""
        if not self.points:
            return []
        origin = self.points[0].mono_ts
        entries = []
        for point in self.points:
            entry = {"t": round(point.mono_ts - origin, 3), "threads_by_state": dict(point.states),
                     "core_busy_ratio": [None if b == _NO_CORE else b / _CORE_STEPS
                                         for b in point.cores]}
            entry.update({name: None if math.isnan(v) else v
                          for name, v in zip(TIMELINE_FEATURES, point.features)})
            entries.append(entry)
        return entries


def live_report(runtime, interval_s: float, gpu_snapshot=None, gpu_topology=None) -> dict:
    """A report dict of the diagnose schema over the live window: the timeline from the
    history; host, target and threads sections over the last interval (the two latest ticks,
    through the same analysis as diagnose); the findings active now."""
    with runtime.lock:
        points = list(runtime.live.points)
        timeline = runtime.live.timeline()
        ticks = [t for t in (runtime.previous_tick, runtime.last_tick) if t is not None]
        findings = [finding.as_dict() for finding in runtime.monitor.engine.current()]
        engine = runtime.monitor.engine_name or None
        numa = runtime.numa_memory
        # The latest tick's features: memory growth and time to the limit as the rules see
        # them (a fit over the feature layer's window, not over these two ticks).
        features = {ticks[-1].mono_ts: dict(runtime.monitor.last_values)} if ticks else {}
    numa_batch = Batch("numa_maps", 0.0, 0.0, Status.OK, numa) if numa is not None else None
    body = analyse(runtime.static, ticks, numa_batch, features) if ticks else \
        {"host": {}, "target": {}, "threads": {}, "timeline": []}
    body["timeline"] = timeline
    elapsed = timeline[-1]["t"] if timeline else 0.0
    report = {
        "schema_version": SCHEMA_VERSION,
        "dsmon_version": __version__,
        "generated_at": _iso(time.time()),
        "reporter_host": runtime.static.hostname,
        "window": {"requested_seconds": LIVE_WINDOW_S, "interval_seconds": interval_s,
                   "samples": len(points) + 1 if points else len(ticks),
                   "started_at": _iso(points[0].wall_ts) if points else None,
                   "elapsed_seconds": round(elapsed, 1), "complete": not runtime.gone,
                   "end_reason": runtime.gone or "live", "target_exited_at": None},
        **body,
        "engine": engine,
        "findings": findings,
        "gpu": _gpu(gpu_snapshot, gpu_topology),
    }
    return report


def _gpu(snapshot, topology) -> dict | None:
    if snapshot is None:
        return None
    section = snapshot.to_dict()
    section["status"] = "ok"
    if topology is not None:
        section["topology"] = topology.to_dict()
    return section


def live_page(agent, label: str) -> str | None:
    """The live page of one target, or None when the agent follows no target by that name."""
    from dsmon.report.html import render_html
    with agent.lock:
        runtime = agent.targets.get(label)
    if runtime is None:
        return None
    report = live_report(runtime, agent.config.interval_s, agent.gpu_snapshot,
                         agent.gpu.topology)
    identity = runtime.static.identity
    minutes = report["window"]["elapsed_seconds"] / 60
    nav = (f'<p class="no-print"><a href="/">all targets</a> · <a href="/findings">/findings</a>'
           f' · <a href="/metrics">/metrics</a> · refreshes every {REFRESH_S} s · charts over '
           f"time cover the live window; pools and thread tables the last interval</p>")
    return render_html(report, refresh_seconds=REFRESH_S, nav=nav,
                       heading=f"dsmon live: {label} (pid {identity.pid}, {identity.comm}), "
                               f"the last {minutes:.1f} min")


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")
