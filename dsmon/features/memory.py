"""Memory features (the target's and its cgroup's, growth with its fit) and pressure stalls."""

from __future__ import annotations

from collections import deque

from dsmon.features.series import fit_line, rate, ratio

# Memory growth is fitted over this much history: long enough that a projection to the limit
# rests on sustained growth, short enough to follow a leak that starts mid-run.
GROWTH_WINDOW_S = 120.0


class GrowthFit:
    """A least-squares fit of one value over the last `window_s` seconds."""

    def __init__(self, window_s: float):
        self.window_s = window_s
        self._points: deque[tuple[float, float]] = deque()

    def add(self, timestamp: float, value: float):
        self._points.append((timestamp, float(value)))
        while self._points and timestamp - self._points[0][0] > self.window_s:
            self._points.popleft()
        return fit_line(self._points)


class MemoryFeatures:
    def __init__(self, static, context: dict):
        self.static = static
        self.context = context
        self._growth = GrowthFit(GROWTH_WINDOW_S)

    def update(self, values, interval) -> None:
        tick, process, cgroup = interval.tick, interval.process, interval.cgroup
        host = tick.data("memory") or {}
        vmstat = tick.data("vmstat") or {}
        values["rss_bytes"] = process.rss_bytes
        values["host_oom_kills"] = vmstat.get("oom_kill")
        limit = cgroup.memory_limit_bytes if cgroup else None
        if cgroup is not None:
            values["oom_kills"] = cgroup.oom_kills
            if cgroup.inactive_file_bytes is not None:
                values["page_cache_bytes"] = cgroup.inactive_file_bytes + (cgroup.active_file_bytes or 0)
                values["page_cache_ratio"] = ratio(values["page_cache_bytes"],
                                                   cgroup.memory_usage_bytes)
        if cgroup is not None and cgroup.memory_headroom_bytes is not None \
                and cgroup.unreclaimable_bytes is not None:
            unreclaimable = cgroup.unreclaimable_bytes
            values["working_set_bytes"] = cgroup.working_set_bytes
            values["memory_limit_bytes"] = limit
            values["memory_headroom_bytes"] = cgroup.memory_headroom_bytes
            # Of the level that sets the limit: a parent's usage includes its other children.
            values["memory_limit_ratio"] = ratio(cgroup.limit_unreclaimable_bytes, limit)
            values["cgroup_usage_ratio"] = ratio(cgroup.memory_usage_bytes, limit) \
                if cgroup.memory_limit_at == self.static.cgroup_layout.cgroup_path else None
            self.context["limit_kind"] = "cgroup limit"
        else:
            unreclaimable = process.rss_anon_bytes if process.rss_anon_bytes is not None \
                else process.rss_bytes
            # Without a limit the cgroup may hold many other processes: use the target's own.
            values["working_set_bytes"] = process.rss_bytes
            values["memory_headroom_bytes"] = host.get("MemAvailable")
            self.context["limit_kind"] = "host MemAvailable"
        values["unreclaimable_bytes"] = unreclaimable
        if unreclaimable is not None:
            fit = self._growth.add(tick.mono_ts, unreclaimable)
            if fit is not None:
                values["memory_growth_bytes_per_second"] = fit.slope
                values["memory_growth_fit_ratio"] = fit.r_squared
                values["memory_growth_window_seconds"] = fit.span_s
                headroom = values["memory_headroom_bytes"]
                if fit.slope > 0 and headroom is not None:
                    values["seconds_to_memory_limit"] = headroom / fit.slope
        if interval.previous is not None:
            vm_before = interval.before("vmstat") or {}
            values["swap_in_pages_per_second"] = rate(vm_before.get("pswpin"),
                                                      vmstat.get("pswpin"), interval.span_s)


class PressureFeatures:
    """Stall shares from PSI's `total` counters: the cgroup's own (v2) describe the target's
    share; the host's otherwise."""

    def update(self, values, interval) -> None:
        if interval.previous is None:
            return
        cgroup, cgroup_before = interval.cgroup, interval.before("cgroup")
        if cgroup and cgroup.pressure and cgroup_before and cgroup_before.pressure:
            now, before = cgroup.pressure, cgroup_before.pressure
        else:
            now, before = interval.tick.data("pressure") or {}, interval.before("pressure") or {}
        for resource in ("memory", "cpu", "io"):
            for kind in ("some", "full"):
                name = f"psi_{resource}_{kind}_ratio"
                if name not in values:
                    continue
                values[name] = rate(
                    before.get(resource, {}).get(kind, {}).get("total_seconds"),
                    now.get(resource, {}).get(kind, {}).get("total_seconds"), interval.span_s)
