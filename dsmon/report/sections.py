"""The report's sections over a window of ticks: host, target, threads, timeline.

The numbers are derived by the features layer (dsmon.features: rates, fits, per-thread CPU,
usable CPUs); this module arranges them over the whole window for the JSON, text and HTML
reports. A missing sample or a counter that went backwards gives None, never zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dsmon.collectors.cpu import MODES
from dsmon.collectors.threads import ThreadSample
from dsmon.collectors.topology import Topology
from dsmon.features.placement import (configured_threads, effective_cpus, overlap_ratio,
                                      recommended_threads, usable_physical_cores)
from dsmon.features.series import fit_line, rate, stddev
from dsmon.features.threads import BUSY_CORES, pool_of, thread_cpu_seconds, thread_key
from dsmon.sampler import StaticFacts, Tick

TOP_THREADS = 10
# Feature series copied into the report's per-interval timeline (for charts).
TIMELINE_FEATURES = ("cpu_cores", "cpu_utilisation_ratio", "runnable_waiting_ratio",
                     "run_queue_wait_seconds_per_second", "busy_threads", "running_threads",
                     "d_state_threads", "rss_bytes", "working_set_bytes", "memory_headroom_bytes",
                     "read_bytes_per_second", "write_bytes_per_second", "rchar_per_second",
                     "cpu_throttled_ratio", "involuntary_switches_per_second",
                     "psi_cpu_some_ratio", "psi_memory_some_ratio", "psi_io_some_ratio")


@dataclass
class ThreadHistory:
    """One thread across the window, keyed by (tid, start time) so a reused tid starts afresh."""

    tid: int
    name: str
    first: ThreadSample
    first_ts: float
    last: ThreadSample
    last_ts: float
    states: dict[str, int] = field(default_factory=dict)
    cpu_by_node: dict[int, float] = field(default_factory=dict)   # seconds of CPU per NUMA node
    switches_first: tuple[float, ThreadSample] | None = None
    switches_last: tuple[float, ThreadSample] | None = None
    wchans: dict[str, int] = field(default_factory=dict)

    @property
    def seen_s(self) -> float:
        return self.last_ts - self.first_ts

    def cpu_seconds(self, hz: int) -> float:
        return thread_cpu_seconds(self.first, self.last, hz)

    def cpu_ratio(self, hz: int) -> float | None:
        return self.cpu_seconds(hz) / self.seen_s if self.seen_s > 0 else None

    def run_wait_ns(self) -> tuple[int, int] | None:
        if self.first.run_ns is None or self.last.run_ns is None:
            return None
        return (max(0, self.last.run_ns - self.first.run_ns),
                max(0, self.last.wait_ns - self.first.wait_ns))


def track_threads(ticks: list[Tick], topology: Topology | None, hz: int) -> dict:
    histories: dict[tuple[int, int], ThreadHistory] = {}
    for tick in ticks:
        sweep = tick.data("threads")
        if sweep is None:
            continue
        for sample in sweep.threads:
            key = thread_key(sample)
            history = histories.get(key)
            if history is None:
                history = histories[key] = ThreadHistory(sample.tid, sample.name, sample,
                                                         tick.mono_ts, sample, tick.mono_ts)
            else:
                used = thread_cpu_seconds(history.last, sample, hz)
                node = topology.node_of(sample.processor) if topology else None
                if used > 0:
                    history.cpu_by_node[node if node is not None else -1] = \
                        history.cpu_by_node.get(node if node is not None else -1, 0.0) + used
                history.last, history.last_ts, history.name = sample, tick.mono_ts, sample.name
            history.states[sample.state] = history.states.get(sample.state, 0) + 1
            if sample.voluntary is not None:
                if history.switches_first is None:
                    history.switches_first = (tick.mono_ts, sample)
                history.switches_last = (tick.mono_ts, sample)
            if sample.wchan:
                history.wchans[sample.wchan] = history.wchans.get(sample.wchan, 0) + 1
    return histories


def _thread_row(history: ThreadHistory, hz: int) -> dict:
    run_wait = history.run_wait_ns()
    wait_ratio = None
    wait_seconds = None
    if run_wait is not None:
        run_ns, wait_ns = run_wait
        wait_seconds = wait_ns / 1e9
        if run_ns + wait_ns > 0:
            wait_ratio = wait_ns / (run_ns + wait_ns)
    cpu_ratio = history.cpu_ratio(hz)
    return {
        "tid": history.tid,
        "name": history.name,
        "pool": pool_of(history.name),
        "state": history.last.state,
        "cpu_ratio": _round(cpu_ratio),
        "busy": cpu_ratio is not None and cpu_ratio >= BUSY_CORES,
        "cpu_seconds": round(history.cpu_seconds(hz), 3),
        "run_queue_wait_seconds": _round(wait_seconds),
        "run_queue_wait_ratio": _round(wait_ratio),
        "last_cpu": history.last.processor,
        "states": dict(history.states),
        "wchan": max(history.wchans, key=history.wchans.get) if history.wchans else None,
    }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def analyse_threads(ticks: list[Tick], topology: Topology | None, hz: int,
                    elapsed: float) -> dict:
    histories = track_threads(ticks, topology, hz)
    rows = [_thread_row(h, hz) for h in histories.values()]
    sweeps = [t.data("threads") for t in ticks if t.data("threads") is not None]
    state_counts: dict[str, int] = {}
    for sweep in sweeps:
        for sample in sweep.threads:
            state_counts[sample.state] = state_counts.get(sample.state, 0) + 1
    total_thread_samples = sum(state_counts.values())

    run_total = wait_total = 0
    have_schedstat = False
    slices_total = 0
    for history in histories.values():
        run_wait = history.run_wait_ns()
        if run_wait is not None:
            have_schedstat = True
            run_total += run_wait[0]
            wait_total += run_wait[1]
            slices_total += max(0, (history.last.timeslices or 0) - (history.first.timeslices or 0))
    voluntary = involuntary = 0
    switch_span = 0.0
    have_switches = False
    for history in histories.values():
        if history.switches_first and history.switches_last and \
                history.switches_last[0] > history.switches_first[0]:
            have_switches = True
            first, last = history.switches_first[1], history.switches_last[1]
            voluntary += max(0, last.voluntary - first.voluntary)
            involuntary += max(0, last.involuntary - first.involuntary)
            switch_span = max(switch_span, history.switches_last[0] - history.switches_first[0])

    pools: dict[str, dict] = {}
    for row in rows:
        pool = pools.setdefault(row["pool"], {"pool": row["pool"], "threads": 0, "busy": 0,
                                              "cpu_cores": 0.0, "run_queue_wait_seconds": 0.0,
                                              "states": {}})
        pool["threads"] += 1
        pool["busy"] += int(row["busy"])
        pool["cpu_cores"] += row["cpu_ratio"] or 0.0
        pool["run_queue_wait_seconds"] += row["run_queue_wait_seconds"] or 0.0
        pool["states"][row["state"]] = pool["states"].get(row["state"], 0) + 1
    names_by_pool: dict[str, set[str]] = {}
    for row in rows:
        names_by_pool.setdefault(row["pool"], set()).add(row["name"])
    for masked, names in names_by_pool.items():
        if len(names) == 1:  # "python3" x 34 is a pool named python3, not python#
            (name,) = names
            pools[masked]["pool"] = name
            for row in rows:
                if row["pool"] == masked:
                    row["pool"] = name
    for pool in pools.values():
        pool["cpu_cores"] = round(pool["cpu_cores"], 3)
        pool["run_queue_wait_seconds"] = round(pool["run_queue_wait_seconds"], 4)

    cpu_by_node: dict[int, float] = {}
    for history in histories.values():
        for node, seconds in history.cpu_by_node.items():
            cpu_by_node[node] = cpu_by_node.get(node, 0.0) + seconds

    blocked = [row for row in rows if row["states"].get("D")]
    last_sweep = sweeps[-1] if sweeps else None
    return {
        "listed": last_sweep.listed if last_sweep else None,
        "tracked": len(histories),
        "sampled_last_sweep": len(last_sweep.threads) if last_sweep else None,
        "truncated": any(s.truncated for s in sweeps),
        "notes": sorted({note for s in sweeps for note in s.notes}),
        "busy": sum(1 for r in rows if r["busy"]),
        "busy_threshold_cpu_ratio": BUSY_CORES,
        "state_share": {state: round(count / total_thread_samples, 4)
                        for state, count in sorted(state_counts.items())}
        if total_thread_samples else {},
        "runnable_waiting_ratio": _round(wait_total / (run_total + wait_total))
        if have_schedstat and run_total + wait_total > 0 else None,
        "run_queue_wait_seconds_per_second": _round(wait_total / 1e9 / elapsed)
        if have_schedstat and elapsed > 0 else None,
        "d_state_ratio": _round(state_counts.get("D", 0) / total_thread_samples)
        if total_thread_samples else None,
        "switches_per_second": {
            "timeslices": _round(slices_total / elapsed, 1) if have_schedstat and elapsed else None,
            "voluntary": _round(voluntary / switch_span, 1) if have_switches else None,
            "involuntary": _round(involuntary / switch_span, 1) if have_switches else None,
        },
        "pools": sorted(pools.values(), key=lambda p: (-p["cpu_cores"], -p["threads"])),
        "top_by_cpu": sorted((r for r in rows if r["cpu_ratio"]),
                             key=lambda r: -r["cpu_ratio"])[:TOP_THREADS],
        "top_by_run_queue_wait": sorted((r for r in rows
                                         if (r["run_queue_wait_seconds"] or 0) >= 0.001),
                                        key=lambda r: -r["run_queue_wait_seconds"])[:TOP_THREADS],
        "blocked": [{"tid": r["tid"], "name": r["name"], "wchan": r["wchan"],
                     "d_state_samples": r["states"]["D"]} for r in blocked][:TOP_THREADS],
        "cpu_seconds_by_node": {str(node): round(sec, 3) for node, sec in sorted(cpu_by_node.items())},
        "all": sorted(rows, key=lambda r: r["tid"]),
    }


def per_core_utilisation(first, last) -> list[dict]:
    cores = []
    for cpu in sorted(set(first.per_cpu) & set(last.per_cpu)):
        before, after = first.per_cpu[cpu], last.per_cpu[cpu]
        deltas = [max(0.0, a - b) for a, b in zip(after, before)]
        total = sum(deltas)
        if total <= 0:
            cores.append({"cpu": cpu, "busy_ratio": None, "modes": {}})
            continue
        idle = deltas[MODES.index("idle")] + deltas[MODES.index("iowait")]
        cores.append({"cpu": cpu, "busy_ratio": round(1 - idle / total, 4),
                      "modes": {mode: round(d / total, 4) for mode, d in zip(MODES, deltas)}})
    return cores


def thread_settings(environment: dict[str, str] | None, physical_cores: int | None,
                    capacity_cores: float, logical_cpus: int) -> dict:
    """The threading environment against the cores the process can really use."""
    configured, advice = configured_threads(environment)
    usable = usable_physical_cores(physical_cores, capacity_cores, logical_cpus)
    recommended = recommended_threads(usable)
    for name, value in configured.items():
        if value > max(usable, 1):
            advice.append(f"{name}={value} exceeds the {usable} physical cores this process can use; "
                          f"set {name}={recommended}")
        elif value < recommended * 0.5:
            advice.append(f"{name}={value} uses under half of the {usable} usable physical cores; "
                          f"consider {name}={recommended}")
    if environment is not None and "OMP_NUM_THREADS" not in configured:
        advice.append(f"OMP_NUM_THREADS is unset: OpenMP sizes its pool to the {logical_cpus} "
                      f"visible CPUs unless the program sets it (torch.set_num_threads); "
                      f"{recommended} threads is 85% of the {usable} usable physical cores")
    return {"configured": configured, "usable_physical_cores": usable,
            "recommended_threads": recommended, "advice": advice}


def analyse(static: StaticFacts, ticks: list[Tick], numa_end=None,
            features: dict[float, dict] | None = None) -> dict:
    """Everything the report shows, as plain data (the JSON report's body). `features`: the
    feature values of each tick by its mono_ts (RuleMonitor.history), so the report quotes
    the numbers the rules saw."""
    hz = static.hz
    topology = static.topology.data
    features = features or {}
    ok_ticks = [t for t in ticks if t.data("process") is not None]
    first, last = (ok_ticks[0], ok_ticks[-1]) if ok_ticks else (None, None)
    elapsed = (last.mono_ts - first.mono_ts) if first else 0.0

    host = _host_section(static, ticks, topology)
    target: dict = {}
    if first is not None:
        target = _target_section(static, ok_ticks, topology, hz, elapsed,
                                 numa_end.data if numa_end is not None and numa_end.ok else None,
                                 features.get(last.mono_ts) or {})
    threads = analyse_threads(ok_ticks, topology, hz, elapsed) if ok_ticks else {}
    if threads and target:
        numa = target["numa"]
        numa["cpu_seconds_by_node"] = threads["cpu_seconds_by_node"]
        numa["memory_local_ratio"] = _local_ratio(numa)
    return {"host": host, "target": target, "threads": threads,
            "timeline": _timeline(ok_ticks, features)}


def _host_section(static: StaticFacts, ticks: list[Tick], topology: Topology | None) -> dict:
    cpu_ticks = [t.data("cpu") for t in ticks if t.data("cpu") is not None]
    memory = next((t.data("memory") for t in reversed(ticks) if t.data("memory")), None)
    pressure_ticks = [(t.mono_ts, t.data("pressure")) for t in ticks if t.data("pressure")]
    section: dict = {
        "hostname": static.hostname,
        "kernel": static.kernel,
        "cpus_online": len(topology.online) if topology else None,
        "sockets": len(topology.packages) if topology else None,
        "physical_cores": topology.physical_cores() if topology else None,
        "smt": topology.smt if topology else None,
        "numa_nodes": [{"node": n.node, "cpus": n.cpus, "mem_total_bytes": n.mem_total_bytes,
                        "mem_free_bytes": n.mem_free_bytes}
                       for n in topology.nodes.values()] if topology else [],
        "per_core": per_core_utilisation(cpu_ticks[0], cpu_ticks[-1]) if len(cpu_ticks) > 1 else [],
    }
    if len(cpu_ticks) > 1:
        busy = [c["busy_ratio"] for c in section["per_core"] if c["busy_ratio"] is not None]
        section["cpu_busy_ratio"] = round(sum(busy) / len(busy), 4) if busy else None
    if memory:
        section["memory"] = {
            "total_bytes": memory.get("MemTotal"),
            "available_bytes": memory.get("MemAvailable"),
            "swap_total_bytes": memory.get("SwapTotal"),
            "swap_free_bytes": memory.get("SwapFree"),
        }
    if pressure_ticks:
        section["pressure"] = _pressure_section(pressure_ticks)
    return section


def _pressure_section(points: list[tuple[float, dict]]) -> dict:
    """Latest averages plus the stall share measured over this window from `total`."""
    (t0, first), (t1, last) = points[0], points[-1]
    result = {}
    for resource, kinds in last.items():
        result[resource] = {}
        for kind, values in kinds.items():
            entry = {k: values[k] for k in ("avg10", "avg60", "avg300") if k in values}
            before = first.get(resource, {}).get(kind, {}).get("total_seconds")
            stall = rate(before, values.get("total_seconds"), t1 - t0)
            entry["window_stall_ratio"] = _round(stall)
            result[resource][kind] = entry
    return result


def _target_section(static: StaticFacts, ticks: list[Tick], topology: Topology | None,
                    hz: int, elapsed: float, numa_end: dict[int, int] | None,
                    latest: dict) -> dict:
    identity = static.identity
    first, last = ticks[0].data("process"), ticks[-1].data("process")
    cgroup_last = ticks[-1].data("cgroup")
    cores_series = [cores for cores in (_cpu_cores(before, after) for before, after
                                        in zip(ticks, ticks[1:])) if cores is not None]
    cpu_cores = _cpu_cores(ticks[0], ticks[-1])
    effective = effective_cpus(topology, last.cpus_allowed,
                               cgroup_last.cpuset_cpus if cgroup_last else None,
                               cgroup_last.cpu_quota_cores if cgroup_last else None)
    environment = static.environment.data if static.environment.ok else None
    memory = _memory_section(ticks, latest)
    io = {}
    if first.io and last.io and elapsed > 0:
        io = {f"{key}_per_second": _round(rate(first.io.get(key), last.io.get(key), elapsed), 1)
              for key in ("read_bytes", "write_bytes", "rchar", "wchar", "syscr", "syscw")}
    numa_memory = numa_end or (static.numa_start.data if static.numa_start.ok else None)
    return {
        "pid": identity.pid,
        "start_ticks": identity.start_ticks,
        "comm": identity.comm,
        "cmdline": identity.cmdline,
        "exe": identity.exe,
        "uid": identity.uid,
        "user": identity.user,
        "ppid": identity.ppid,
        "pid_namespace": identity.pid_namespace,
        "nspid": identity.nspid,
        "cgroup": static.cgroup_layout.display_path,
        "cgroup_version": static.cgroup_layout.version,
        "state": last.state,
        "threads": last.num_threads,
        "cpu": {
            "cores": _round(cpu_cores),
            "user_seconds": round(last.utime_s - first.utime_s, 3),
            "system_seconds": round(last.stime_s - first.stime_s, 3),
            "cores_min": _round(min(cores_series)) if cores_series else None,
            "cores_max": _round(max(cores_series)) if cores_series else None,
            "cores_stddev": _round(stddev(cores_series)),
            "utilisation_of_capacity_ratio": _round(cpu_cores / effective["capacity_cores"])
            if cpu_cores is not None and effective["capacity_cores"] else None,
            "throttled_seconds": _round(rate_delta(ticks, "cgroup", "cpu_throttled_seconds")),
        },
        "effective_cpus": effective,
        "memory": memory,
        "io": io,
        "fds": {"open": last.open_fds, "limit": last.fd_limit},
        "numa": {"memory_bytes_by_node": {str(k): v for k, v in sorted(numa_memory.items())}
                 if numa_memory is not None else None,
                 "mems_allowed": last.mems_allowed},
        "environment": environment,
        "thread_settings": thread_settings(
            environment, effective["physical_cores"], effective["capacity_cores"],
            effective["count"]),
    }


def _cpu_cores(before: Tick, after: Tick) -> float | None:
    a, b = before.data("process"), after.data("process")
    return rate(a.utime_s + a.stime_s, b.utime_s + b.stime_s, after.mono_ts - before.mono_ts)


def rate_delta(ticks: list[Tick], collector: str, attribute: str) -> float | None:
    values = [getattr(t.data(collector), attribute, None) for t in ticks if t.data(collector)]
    values = [v for v in values if v is not None]
    if len(values) < 2 or values[-1] < values[0]:
        return None
    return values[-1] - values[0]


def _memory_section(ticks: list[Tick], latest: dict) -> dict:
    """The memory at the window's end; growth and time to the limit as the features (and so
    the rules) measured them: a least-squares fit of the unreclaimable memory."""
    last = ticks[-1].data("process")
    rss_fit = fit_line([(t.mono_ts, t.data("process").rss_bytes) for t in ticks
                        if t.data("process").rss_bytes is not None])
    cgroup = ticks[-1].data("cgroup")
    host_memory = next((t.data("memory") for t in reversed(ticks) if t.data("memory")), None)
    growth = latest.get("memory_growth_bytes_per_second")
    section = {
        "rss_bytes": last.rss_bytes,
        "rss_anon_bytes": last.rss_anon_bytes,
        "rss_file_bytes": last.rss_file_bytes,
        "peak_rss_bytes": last.peak_rss_bytes,
        "swap_bytes": last.swap_bytes,
        "rss_slope_bytes_per_second": _round(rss_fit.slope, 1) if rss_fit else None,
        "rss_slope_fit_ratio": _round(rss_fit.r_squared) if rss_fit else None,
        "unreclaimable_growth_bytes_per_second": _round(growth, 1),
        "unreclaimable_growth_fit_ratio": _round(latest.get("memory_growth_fit_ratio")),
        "host_total_bytes": host_memory.get("MemTotal") if host_memory else None,
        "host_available_bytes": host_memory.get("MemAvailable") if host_memory else None,
        "cgroup": None,
    }
    limit_kind = None
    if cgroup is not None:
        section["cgroup"] = {
            "limit_bytes": cgroup.memory_limit_bytes,
            "limit_set_at": cgroup.memory_limit_at,
            "usage_bytes": cgroup.memory_usage_bytes,
            "working_set_bytes": cgroup.working_set_bytes,
            "unreclaimable_bytes": cgroup.unreclaimable_bytes,
            "inactive_file_bytes": cgroup.inactive_file_bytes,
            "active_file_bytes": cgroup.active_file_bytes,
            # the feature's fit is the cgroup's where a limit applies (else the process's own)
            "unreclaimable_slope_bytes_per_second": _round(growth, 1)
            if cgroup.memory_headroom_bytes is not None else None,
            "headroom_bytes": cgroup.memory_headroom_bytes,
            "limit_unreclaimable_bytes": cgroup.limit_unreclaimable_bytes,
            "oom_kills": cgroup.oom_kills,
            "oom_kills_in_window": rate_delta(ticks, "cgroup", "oom_kills"),
        }
        if cgroup.memory_headroom_bytes is not None:
            limit_kind = "cgroup"
    if limit_kind is None and host_memory and host_memory.get("MemAvailable") is not None:
        limit_kind = "host MemAvailable"
    section["limit_kind"] = limit_kind
    section["headroom_bytes"] = latest.get("memory_headroom_bytes") if limit_kind else None
    section["seconds_to_limit"] = _round(latest.get("seconds_to_memory_limit"), 1)
    return section


def _local_ratio(numa: dict) -> float | None:
    """Share of the target's memory on the nodes where its threads spent their CPU time."""
    cpu = {k: v for k, v in (numa.get("cpu_seconds_by_node") or {}).items() if k != "-1"}
    local = overlap_ratio(cpu, numa.get("memory_bytes_by_node") or {})
    return _round(local)


def _timeline(ticks: list[Tick], features: dict[float, dict]) -> list[dict]:
    """Per interval, the timeline features and what charts need beyond them: thread states
    and per-core busy."""
    entries = []
    for before, after in zip(ticks, ticks[1:]):
        if after.mono_ts > before.mono_ts:
            entry = timeline_point(before, after, ticks[0].mono_ts)
            values = features.get(entry.pop("mono_ts"), {})
            entry.update({name: values.get(name) for name in TIMELINE_FEATURES})
            entries.append(entry)
    return entries


def timeline_point(before: Tick, after: Tick, origin: float) -> dict:
    """One interval of the timeline (diagnose's report and the agent's live history)."""
    entry: dict = {"t": round(after.mono_ts - origin, 3), "mono_ts": after.mono_ts}
    sweep = after.data("threads")
    if sweep is not None:
        states: dict[str, int] = {}
        for thread in sweep.threads:
            states[thread.state] = states.get(thread.state, 0) + 1
        entry["threads_by_state"] = states
    cpu_a, cpu_b = before.data("cpu"), after.data("cpu")
    if cpu_a and cpu_b:
        entry["core_busy_ratio"] = [c["busy_ratio"] for c in per_core_utilisation(cpu_a, cpu_b)]
    return entry
