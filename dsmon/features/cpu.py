"""CPU and thread features: capacity, use, throttling, the host's CPUs, per-thread activity."""

from __future__ import annotations

from dsmon.collectors.cpu import MODES
from dsmon.features.placement import configured_threads, recommended_threads, usable_physical_cores
from dsmon.features.series import rate, ratio
from dsmon.features.threads import ACTIVE_CORES, BUSY_CORES, thread_key

_IDLE, _IOWAIT = MODES.index("idle"), MODES.index("iowait")


def busy_share(before, now, cpus) -> float | None:
    """Busy share of the given CPUs between two /proc/stat readings (idle and iowait are
    idle time; steal counts as busy, since the target cannot run then either)."""
    busy = total = 0.0
    for cpu in cpus:
        if cpu not in before.per_cpu or cpu not in now.per_cpu:
            continue
        deltas = [max(0.0, a - b) for a, b in zip(now.per_cpu[cpu], before.per_cpu[cpu])]
        total += sum(deltas)
        busy += sum(deltas) - deltas[_IDLE] - deltas[_IOWAIT]
    return busy / total if total > 0 else None


class CpuFeatures:
    def __init__(self, static, context: dict, topology):
        env = static.environment.data if static.environment.ok else None
        self.configured, _ = configured_threads(env)
        context["configured_variable"] = max(self.configured, key=self.configured.get) \
            if self.configured else "OMP_NUM_THREADS"
        self.topology = topology

    def update(self, values, interval) -> None:
        process, effective = interval.process, interval.effective
        physical = effective["physical_cores"] or effective["count"]
        values.update({
            "cpu_capacity_cores": effective["capacity_cores"],
            "effective_physical_cores": physical,
            "cpu_quota_cores": effective["quota_cores"],
            "threads": process.num_threads,
            "configured_threads": max(self.configured.values()) if self.configured else None,
            "recommended_threads": recommended_threads(usable_physical_cores(
                physical, effective["capacity_cores"], effective["count"])),
        })
        cpu_now = interval.tick.data("cpu")
        online = len(self.topology.online) if self.topology and self.topology.online else None
        if cpu_now is not None and online:
            values["host_run_queue_ratio"] = cpu_now.procs_running / online
        if interval.previous is None:
            return
        span = interval.span_s
        before = interval.before("process")
        cores = rate(before.utime_s + before.stime_s, process.utime_s + process.stime_s, span)
        values["cpu_cores"] = cores
        values["cpu_utilisation_ratio"] = ratio(cores, effective["capacity_cores"])
        cgroup, cgroup_before = interval.cgroup, interval.before("cgroup")
        if cgroup and cgroup_before:
            values["cpu_throttled_ratio"] = rate(cgroup_before.cpu_throttled_seconds,
                                                 cgroup.cpu_throttled_seconds, span)
            periods = rate(cgroup_before.cpu_periods, cgroup.cpu_periods, 1.0)
            throttled = rate(cgroup_before.cpu_throttled_periods, cgroup.cpu_throttled_periods, 1.0)
            if periods:
                values["cpu_throttled_periods_ratio"] = ratio(throttled, periods)
        cpu_before = interval.before("cpu")
        if cpu_before and cpu_now:
            deltas = [max(0.0, a - b) for a, b in zip(cpu_now.total, cpu_before.total)]
            total = sum(deltas)
            if total > 0:
                values["host_iowait_ratio"] = deltas[_IOWAIT] / total
                values["host_cpu_busy_ratio"] = 1 - (deltas[_IDLE] + deltas[_IOWAIT]) / total
            values["usable_cpus_busy_ratio"] = busy_share(cpu_before, cpu_now, effective["cpus"])


class ThreadFeatures:
    """Thread states, busy threads, run-queue wait and context switches of all threads."""

    def __init__(self):
        self._switches: dict[tuple[int, int], tuple[float, int, int]] = {}

    def update(self, values, interval) -> None:
        sweep = interval.sweep
        if sweep is None:
            return
        values["running_threads"] = sum(1 for t in sweep.threads if t.state == "R")
        self._switch_rates(values, sweep, interval.tick.mono_ts)
        if interval.thread_cores is None:
            return
        busy = active = 0
        top = 0.0
        run = wait = 0
        have_schedstat = False
        for thread, old, used in interval.thread_cores:
            busy += used >= BUSY_CORES
            active += used >= ACTIVE_CORES
            top = max(top, used)
            if thread.run_ns is not None and old.run_ns is not None:
                have_schedstat = True
                run += max(0, thread.run_ns - old.run_ns)
                wait += max(0, thread.wait_ns - old.wait_ns)
        values["busy_threads"] = busy
        values["active_threads"] = active
        values["max_thread_cpu_cores"] = top
        if have_schedstat:
            values["runnable_waiting_ratio"] = ratio(wait, run + wait)
            values["run_queue_wait_seconds_per_second"] = wait / 1e9 / interval.span_s
            values["runnable_threads"] = (run + wait) / 1e9 / interval.span_s

    def _switch_rates(self, values, sweep, now: float) -> None:
        """Switch counts are read every few sweeps (status is costly): the rate runs from the
        last sweep that read them, per thread, to this one."""
        if not sweep.switches_read:
            return
        voluntary = involuntary = 0
        span = None
        current = {}
        for thread in sweep.threads:
            if thread.voluntary is None:
                continue
            key = thread_key(thread)
            current[key] = (now, thread.voluntary, thread.involuntary)
            before = self._switches.get(key)
            if before is None:
                continue
            span = now - before[0] if span is None else max(span, now - before[0])
            voluntary += max(0, thread.voluntary - before[1])
            involuntary += max(0, thread.involuntary - before[2])
        self._switches = current
        if span:
            values["voluntary_switches_per_second"] = voluntary / span
            values["involuntary_switches_per_second"] = involuntary / span
