"""Named features: the closed set of signals that rules may use.

A `FeatureExtractor` turns each tick (and the one before it) into one value per feature;
a `FeatureStore` keeps them over time for the rules' windows. A value is None when it could
not be measured in that tick; aggregations skip None, and a rule never reads None as 0.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from dsmon.features.gpu_health import GPU_HEALTH_CONTEXT, GPU_HEALTH_FEATURES
from dsmon.analysis import (configured_threads, effective_cpus, linear_fit, linear_slope,
                            recommended_threads,
                            usable_physical_cores)

BUSY_CORES = 0.10          # a thread using this share of a CPU in an interval is busy
ACTIVE_CORES = 0.03        # ... and this share is active (e.g. takes turns on the GIL)
# Memory growth is fitted over this much history: long enough that a projection to the limit
# rests on sustained growth, short enough to follow a leak that starts mid-run.
GROWTH_WINDOW_S = 120.0
# GPU memory: a short fit, so an engine's one-off pre-allocation at start (vLLM takes ~90% in
# seconds) leaves the slope within seconds; the rules then ask for 10 s of sustained growth.
GPU_GROWTH_WINDOW_S = 5.0

# Kernel functions a thread sleeps in while it waits on a filesystem that is not a local block
# device (FUSE daemons, NFS/SMB/Ceph/9p servers). These threads sleep in S state: neither the
# D-state count nor PSI io moves, so the wait channel is the only witness.
FS_WAIT_CHANNELS = ("request_wait_answer", "fuse_", "__fuse", "rpc_wait_bit", "nfs_",
                    "nfs4_", "wait_for_response", "cifs_", "smb2_", "p9_client_rpc",
                    "ceph_", "ceph_mdsc_do_request", "afs_", "ovl_")


@dataclass(frozen=True)
class Feature:
    unit: str          # bytes, seconds, ratio, cores, count, per_second, bytes_per_second, flag
    help: str


FEATURES: dict[str, Feature] = {
    # CPU and threads
    "cpu_cores": Feature("cores", "CPU used by the target in the last interval"),
    "cpu_capacity_cores": Feature("cores", "CPUs the target can use: affinity, cpuset and quota"),
    "cpu_utilisation_ratio": Feature("ratio", "cpu_cores / cpu_capacity_cores"),
    "effective_physical_cores": Feature("count", "physical cores among the target's usable CPUs"),
    "cpu_quota_cores": Feature("cores", "the cgroup CPU quota in cores (absent when unlimited)"),
    "cpu_throttled_ratio": Feature("ratio", "seconds throttled by the cgroup quota per second, "
                                   "summed over the CPUs' run queues (can exceed 1)"),
    "cpu_throttled_periods_ratio": Feature("ratio", "share of CFS periods in which the cgroup "
                                           "was throttled"),
    "runnable_waiting_ratio": Feature("ratio", "run-queue wait / (run + wait) of all threads"),
    "run_queue_wait_seconds_per_second": Feature("seconds", "run-queue wait of all threads per second"),
    "runnable_threads": Feature("count", "threads running or waiting for a CPU, on average "
                                "(schedstat run + wait time per second: the CPUs the target "
                                "asks for)"),
    "voluntary_switches_per_second": Feature("per_second", "voluntary context switches, all threads"),
    "involuntary_switches_per_second": Feature("per_second", "involuntary context switches, all threads"),
    "threads": Feature("count", "threads of the target"),
    "running_threads": Feature("count", "threads in state R at the sample"),
    "busy_threads": Feature("count", f"threads using >= {BUSY_CORES:.0%} of a CPU in the interval"),
    "active_threads": Feature("count", f"threads using >= {ACTIVE_CORES:.0%} of a CPU in the interval"),
    "max_thread_cpu_cores": Feature("cores", "CPU of the busiest thread in the interval"),
    "configured_threads": Feature("count", "largest thread count set by OMP/MKL/OPENBLAS/... variables"),
    "recommended_threads": Feature("count", "85% of the usable physical cores"),
    "python_target": Feature("flag", "1 when the target is a Python interpreter"),
    "torch_loaded": Feature("flag", "1 when libtorch is mapped into the target"),
    "blas_loaded": Feature("flag", "1 when a BLAS library with its own thread pool (OpenBLAS, "
                           "MKL, BLIS) is mapped"),
    "openmp_loaded": Feature("flag", "1 when an OpenMP runtime (libgomp, libiomp) is mapped"),
    "python_gil_held_ratio": Feature("ratio", "share of py-spy samples in which some thread "
                                     "held the GIL (absent without py-spy samples)"),
    "python_active_threads": Feature("count", "Python threads py-spy saw running, average "
                                     "over its samples"),
    "python_busy_threads": Feature("count", f"Python threads (seen by py-spy) using >= "
                                   f"{ACTIVE_CORES:.0%} of a CPU in the interval"),
    "python_cpu_cores": Feature("cores", "CPU used by the Python threads (seen by py-spy) in "
                                "the interval"),
    "host_iowait_ratio": Feature("ratio", "share of host CPU time idle waiting for I/O"),
    "host_cpu_busy_ratio": Feature("ratio", "share of host CPU time busy"),
    "usable_cpus_busy_ratio": Feature("ratio", "share of time the CPUs the target may use "
                                      "(affinity, cpuset) were busy, with any process"),
    # Memory
    "rss_bytes": Feature("bytes", "resident memory of the target"),
    "working_set_bytes": Feature("bytes", "cgroup usage minus inactive page cache (the kubelet's working set), or RSS without a cgroup"),
    "unreclaimable_bytes": Feature("bytes", "cgroup usage minus all page cache (what the OOM killer counts), or RSS anon+shmem without a cgroup limit"),
    "memory_limit_bytes": Feature("bytes", "the effective cgroup memory limit (absent when none)"),
    "memory_headroom_bytes": Feature("bytes", "room left: limit - working set, or host MemAvailable"),
    "memory_limit_ratio": Feature("ratio", "unreclaimable memory / cgroup limit, at the level that sets it"),
    "cgroup_usage_ratio": Feature("ratio", "cgroup usage including page cache / limit"),
    "page_cache_bytes": Feature("bytes", "file pages charged to the cgroup (reclaimable)"),
    "memory_growth_bytes_per_second": Feature("bytes_per_second", "least-squares slope of the "
                                              f"unreclaimable memory over up to {GROWTH_WINDOW_S:.0f} s"),
    "memory_growth_fit_r2": Feature("ratio", "how well a straight line explains the "
                                    "unreclaimable memory over that span (1 steady, 0 noise)"),
    "memory_growth_span_seconds": Feature("seconds", "time the growth fit covers"),
    "seconds_to_memory_limit": Feature("seconds", "headroom / growth (absent when not growing)"),
    "oom_kills": Feature("count", "OOM kills in the target's cgroup (counter)"),
    "host_oom_kills": Feature("count", "OOM kills on the host (counter, /proc/vmstat)"),
    "swap_in_pages_per_second": Feature("per_second", "pages swapped in on the host"),
    "psi_memory_some_ratio": Feature("ratio", "share of time some task stalled on memory"),
    "psi_memory_full_ratio": Feature("ratio", "share of time all tasks stalled on memory"),
    "psi_cpu_some_ratio": Feature("ratio", "share of time some task waited for a CPU"),
    "psi_io_some_ratio": Feature("ratio", "share of time some task stalled on I/O"),
    "psi_io_full_ratio": Feature("ratio", "share of time all tasks stalled on I/O"),
    # I/O
    "d_state_threads": Feature("count", "threads in uninterruptible sleep (D)"),
    "d_state_ratio": Feature("ratio", "share of threads in D state"),
    "fs_wait_threads": Feature("count", "threads sleeping in a FUSE/network filesystem wait"),
    "read_bytes_per_second": Feature("bytes_per_second", "bytes read from storage"),
    "write_bytes_per_second": Feature("bytes_per_second", "bytes written to storage"),
    "rchar_per_second": Feature("bytes_per_second", "bytes returned by read syscalls (any source)"),
    # GPU (NVML)
    "gpu_memory_bytes": Feature("bytes", "GPU memory the target (and its children) holds"),
    "gpu_memory_free_bytes": Feature("bytes", "free memory of the fullest GPU the target uses"),
    "gpu_memory_total_bytes": Feature("bytes", "memory of that GPU"),
    "gpu_memory_growth_bytes_per_second": Feature("bytes_per_second", "slope of the target's GPU memory"),
    "seconds_to_gpu_memory_full": Feature("seconds", "free GPU memory / growth (absent when not growing)"),
    "gpu_utilization_ratio": Feature("ratio", "busiest of the target's GPUs: share of time a kernel ran"),
    "gpu_local_cpu_ratio": Feature("ratio", "share of the target's CPU time on CPUs local to its GPUs"),
    # The engine's own metrics (vLLM, SGLang, TGI, Triton; dsmon/engine_metrics.py): absent
    # without a reachable endpoint, and for signals the engine does not export.
    "engine_kv_cache_usage_ratio": Feature("ratio", "share of the engine's KV cache in use"),
    "engine_preemptions_per_second": Feature("per_second", "requests the engine preempted "
                                             "(vLLM) or retracted (SGLang), between scrapes"),
    "engine_running_requests": Feature("count", "requests the engine is running"),
    "engine_waiting_requests": Feature("count", "requests waiting in the engine's queue"),
    "engine_queue_time_seconds": Feature("seconds", "mean queue time of the requests that "
                                         "left the queue between scrapes"),
    # NUMA
    "numa_nodes": Feature("count", "NUMA nodes of the host"),
    "numa_local_ratio": Feature("ratio", "overlap of memory per node and CPU time per node"),
    "numa_memory_nodes": Feature("count", "nodes holding at least 10% of the target's memory"),
    "numa_cpu_nodes": Feature("count", "nodes where the target's threads ran (>= 10% of CPU)"),
    # The host's GPU health (subject: host rules; dsmon/features/gpu_health.py)
    **{name: Feature(unit, text) for name, (unit, text) in GPU_HEALTH_FEATURES.items()},
}

# String values a template may use besides features (set once per target).
CONTEXT_FIELDS = ("target", "pid", "comm", "engine", "thread_pool_runtime", "limit_kind", "numa_memory_node",
                  "numa_cpu_node", "fs_wait_channel", "configured_variable", "blocked_channel",
                  "half_of_rss", "three_quarters_of_rss", "gpu_numa_node",
                  *GPU_HEALTH_CONTEXT)


def _ratio(numerator, denominator):
    if numerator is None or denominator in (None, 0):
        return None
    return numerator / denominator


def _delta_rate(before, after, seconds):
    if before is None or after is None or seconds <= 0 or after < before:
        return None
    return (after - before) / seconds


def _busy_share(before, now, cpus) -> float | None:
    """Busy share of the given CPUs between two /proc/stat readings (idle and iowait are
    idle time; steal counts as busy, since the target cannot run then either)."""
    busy = total = 0.0
    for cpu in cpus:
        if cpu not in before.per_cpu or cpu not in now.per_cpu:
            continue
        deltas = [max(0.0, a - b) for a, b in zip(now.per_cpu[cpu], before.per_cpu[cpu])]
        total += sum(deltas)
        busy += sum(deltas) - deltas[3] - deltas[4]
    return busy / total if total > 0 else None


class FeatureExtractor:
    """Per target: tick in, {feature: value} out. Keeps the previous tick for rates."""

    def __init__(self, static):
        self.static = static
        self.topology = static.topology.data if static.topology.ok else None
        env = static.environment.data if static.environment.ok else None
        configured, _ = configured_threads(env)
        self.configured = configured
        self.context: dict[str, str] = {
            "target": static.identity.comm, "pid": str(static.identity.pid),
            "comm": static.identity.comm, "engine": "",
            "configured_variable": max(configured, key=configured.get) if configured
            else "OMP_NUM_THREADS",
        }
        exe = (static.identity.exe or "") + " " + " ".join(static.identity.cmdline[:1])
        self.python = "python" in exe.rsplit("/", 1)[-1] or "python" in static.identity.comm
        self._previous = None
        self._runtimes: set[str] | None = None
        self._growth: deque[tuple[float, float]] = deque()
        self._gpu_growth: deque[tuple[float, float]] = deque()
        self._gpu_local_cpus: set[int] | None = None
        self._python_tids: frozenset = frozenset()
        self._numa_memory: dict[int, int] | None = static.numa_start.data \
            if static.numa_start.ok else None
        self._cpu_by_node: dict[int, float] = {}
        self._switches: dict[tuple[int, int], tuple[float, int, int]] = {}

    def set_runtimes(self, runtimes: set[str] | None) -> None:
        """The thread-pool runtimes mapped into the target (None: maps unreadable)."""
        self._runtimes = runtimes
        if runtimes:
            # The runtime whose knob a plain Python process's hint names.
            self.context["thread_pool_runtime"] = "blas" if "blas" in runtimes else \
                "openmp" if "openmp" in runtimes else ""

    def set_gpu_locality(self, cpus, nodes) -> None:
        """The CPUs (and NUMA nodes) local to the GPUs the target uses, from NVML affinity."""
        self._gpu_local_cpus = set(cpus) if cpus else None
        if nodes:
            self.context["gpu_numa_node"] = ",".join(str(n) for n in sorted(nodes))

    def set_numa_memory(self, per_node: dict[int, int] | None) -> None:
        if per_node is not None:
            self._numa_memory = per_node

    def update(self, tick) -> dict[str, float | None]:
        previous, self._previous = self._previous, tick
        values: dict[str, float | None] = {name: None for name in FEATURES}
        process = tick.data("process")
        if process is None:
            return values
        cgroup = tick.data("cgroup")
        sweep = tick.data("threads")
        topology = self.topology
        effective = effective_cpus(topology, process.cpus_allowed,
                                   cgroup.cpuset_cpus if cgroup else None,
                                   cgroup.cpu_quota_cores if cgroup else None)
        physical = effective["physical_cores"] or effective["count"]
        values.update({
            "cpu_capacity_cores": effective["capacity_cores"],
            "effective_physical_cores": physical,
            "cpu_quota_cores": effective["quota_cores"],
            "threads": process.num_threads,
            "configured_threads": max(self.configured.values()) if self.configured else None,
            "recommended_threads": recommended_threads(usable_physical_cores(
                physical, effective["capacity_cores"], effective["count"])),
            "python_target": 1.0 if self.python else 0.0,
            **({} if self._runtimes is None else {
                f"{name}_loaded": 1.0 if name in self._runtimes else 0.0
                for name in ("torch", "blas", "openmp")}),
            "rss_bytes": process.rss_bytes,
            "numa_nodes": len(topology.nodes) if topology and topology.nodes else 1,
        })
        if sweep is not None:
            values["running_threads"] = sum(1 for t in sweep.threads if t.state == "R")
            d_threads = [t for t in sweep.threads if t.state == "D"]
            values["d_state_threads"] = len(d_threads)
            values["d_state_ratio"] = _ratio(len(d_threads), len(sweep.threads))
            if d_threads:
                channels = [t.wchan for t in d_threads if t.wchan]
                self.context["blocked_channel"] = max(set(channels), key=channels.count) \
                    if channels else "unknown"
            if sweep.switches_read:
                fs_waits = [t.wchan for t in sweep.threads
                            if t.wchan and t.wchan.startswith(FS_WAIT_CHANNELS)]
                values["fs_wait_threads"] = len(fs_waits)
                if fs_waits:
                    self.context["fs_wait_channel"] = max(set(fs_waits), key=fs_waits.count)
        self._python_stacks(values, tick)
        self._memory(values, tick, process, cgroup)
        self._gpu(values, tick)
        self._engine(values, tick)
        if sweep is not None:
            self._switch_rates(values, sweep, tick.mono_ts)
        if previous is not None and previous.data("process") is not None:
            self._rates(values, previous, tick, process, cgroup, sweep, effective)
        return values

    def _python_stacks(self, values, tick) -> None:
        stacks = tick.data("stacks")
        if stacks is None:
            return
        values["python_gil_held_ratio"] = stacks.gil_held / stacks.samples
        values["python_active_threads"] = stacks.active_threads / stacks.samples
        self._python_tids = stacks.python_host_tids

    def _memory(self, values, tick, process, cgroup) -> None:
        host = tick.data("memory") or {}
        vmstat = tick.data("vmstat") or {}
        values["host_oom_kills"] = vmstat.get("oom_kill")
        limit = cgroup.memory_limit_bytes if cgroup else None
        if cgroup is not None:
            values["oom_kills"] = cgroup.oom_kills
            if cgroup.inactive_file_bytes is not None:
                values["page_cache_bytes"] = cgroup.inactive_file_bytes + (cgroup.active_file_bytes or 0)
        if cgroup is not None and cgroup.memory_headroom_bytes is not None \
                and cgroup.unreclaimable_bytes is not None:
            unreclaimable = cgroup.unreclaimable_bytes
            values["working_set_bytes"] = cgroup.working_set_bytes
            values["memory_limit_bytes"] = limit
            values["memory_headroom_bytes"] = cgroup.memory_headroom_bytes
            # Of the level that sets the limit: a parent's usage includes its other children.
            values["memory_limit_ratio"] = _ratio(cgroup.limit_unreclaimable_bytes, limit)
            values["cgroup_usage_ratio"] = _ratio(cgroup.memory_usage_bytes, limit) \
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
            self._growth.append((tick.mono_ts, float(unreclaimable)))
            while self._growth and tick.mono_ts - self._growth[0][0] > GROWTH_WINDOW_S:
                self._growth.popleft()
            fit = linear_fit(list(self._growth))
            if fit is not None:
                values["memory_growth_bytes_per_second"] = fit.slope
                values["memory_growth_fit_r2"] = fit.r2
                values["memory_growth_span_seconds"] = self._growth[-1][0] - self._growth[0][0]
                headroom = values["memory_headroom_bytes"]
                if fit.slope > 0 and headroom is not None:
                    values["seconds_to_memory_limit"] = headroom / fit.slope

    def _gpu(self, values, tick) -> None:
        snapshot = tick.data("gpu")
        usage = snapshot.targets.get(self.static.identity.pid) if snapshot is not None else None
        if usage is None or usage.status != "ok" or usage.memory_bytes is None:
            return
        values["gpu_memory_bytes"] = usage.memory_bytes
        cards = [card for card in snapshot.gpus if card.index in set(usage.gpus)]
        free = [(card.memory_free_bytes, card.memory_total_bytes) for card in cards
                if card.memory_free_bytes is not None]
        if free:
            values["gpu_memory_free_bytes"], values["gpu_memory_total_bytes"] = min(free)
        busy = [card.utilization_gpu_ratio for card in cards
                if card.utilization_gpu_ratio is not None]
        if busy:
            values["gpu_utilization_ratio"] = max(busy)
        self._gpu_growth.append((tick.mono_ts, float(usage.memory_bytes)))
        while self._gpu_growth and tick.mono_ts - self._gpu_growth[0][0] > GPU_GROWTH_WINDOW_S:
            self._gpu_growth.popleft()
        slope = linear_slope(list(self._gpu_growth))
        values["gpu_memory_growth_bytes_per_second"] = slope
        if slope is not None and slope > 0 and values["gpu_memory_free_bytes"] is not None:
            values["seconds_to_gpu_memory_full"] = values["gpu_memory_free_bytes"] / slope

    @staticmethod
    def _engine(values, tick) -> None:
        reading = tick.data("engine")     # the latest scrape, only when it succeeded
        if reading is None:
            return
        signals = reading.signals
        values["engine_kv_cache_usage_ratio"] = signals.kv_cache_usage_ratio
        values["engine_preemptions_per_second"] = reading.preemptions_per_second
        values["engine_running_requests"] = signals.running_requests
        values["engine_waiting_requests"] = signals.waiting_requests
        values["engine_queue_time_seconds"] = reading.queue_time_seconds

    def _rates(self, values, previous, tick, process, cgroup, sweep, effective) -> None:
        span = tick.mono_ts - previous.mono_ts
        if span <= 0:
            return
        before = previous.data("process")
        cores = _delta_rate(before.utime_s + before.stime_s, process.utime_s + process.stime_s, span)
        values["cpu_cores"] = cores
        values["cpu_utilisation_ratio"] = _ratio(cores, effective["capacity_cores"])
        cgroup_before = previous.data("cgroup")
        if cgroup and cgroup_before:
            values["cpu_throttled_ratio"] = _delta_rate(cgroup_before.cpu_throttled_seconds,
                                                        cgroup.cpu_throttled_seconds, span)
            periods = _delta_rate(cgroup_before.cpu_periods, cgroup.cpu_periods, 1.0)
            throttled = _delta_rate(cgroup_before.cpu_throttled_periods,
                                    cgroup.cpu_throttled_periods, 1.0)
            if periods:
                values["cpu_throttled_periods_ratio"] = _ratio(throttled, periods)
        if process.io and before.io:
            for key in ("read_bytes", "write_bytes", "rchar"):
                values[f"{key}_per_second"] = _delta_rate(before.io.get(key), process.io.get(key), span)
        vm_before, vm_now = previous.data("vmstat") or {}, tick.data("vmstat") or {}
        values["swap_in_pages_per_second"] = _delta_rate(vm_before.get("pswpin"),
                                                         vm_now.get("pswpin"), span)
        self._pressure(values, previous, tick, cgroup_before, cgroup, span)
        cpu_before, cpu_now = previous.data("cpu"), tick.data("cpu")
        if cpu_before and cpu_now:
            deltas = [max(0.0, a - b) for a, b in zip(cpu_now.total, cpu_before.total)]
            total = sum(deltas)
            if total > 0:
                values["host_iowait_ratio"] = deltas[4] / total
                values["host_cpu_busy_ratio"] = 1 - (deltas[3] + deltas[4]) / total
            values["usable_cpus_busy_ratio"] = _busy_share(cpu_before, cpu_now,
                                                           effective["cpus"])
        sweep_before = previous.data("threads")
        if sweep and sweep_before:
            self._thread_rates(values, sweep_before, sweep, span)

    def _pressure(self, values, previous, tick, cgroup_before, cgroup, span) -> None:
        # The cgroup's own PSI (v2) describes the target's share; the host's otherwise.
        if cgroup and cgroup.pressure and cgroup_before and cgroup_before.pressure:
            now, before = cgroup.pressure, cgroup_before.pressure
        else:
            now, before = tick.data("pressure") or {}, previous.data("pressure") or {}
        for resource in ("memory", "cpu", "io"):
            for kind in ("some", "full"):
                name = f"psi_{resource}_{kind}_ratio"
                if name not in values:
                    continue
                values[name] = _delta_rate(
                    before.get(resource, {}).get(kind, {}).get("total_seconds"),
                    now.get(resource, {}).get(kind, {}).get("total_seconds"), span)

    def _thread_rates(self, values, sweep_before, sweep, span) -> None:
        hz = self.static.hz
        earlier = {(t.tid, t.start_ticks): t for t in sweep_before.threads}
        busy = active = 0
        top = 0.0
        run = wait = 0
        have_schedstat = False
        topology = self.topology
        by_node: dict[int, float] = {}
        local_cpus = self._gpu_local_cpus
        gpu_local = used_total = 0.0
        for thread in sweep.threads:
            old = earlier.get((thread.tid, thread.start_ticks))
            if old is None:
                continue
            used = max(0, thread.utime + thread.stime - old.utime - old.stime) / hz / span
            busy += used >= BUSY_CORES
            active += used >= ACTIVE_CORES
            if local_cpus is not None and used > 0:
                used_total += used
                gpu_local += used if thread.processor in local_cpus else 0.0
            top = max(top, used)
            if used > 0 and topology is not None:
                node = topology.node_of(thread.processor)
                if node is not None:
                    by_node[node] = by_node.get(node, 0.0) + used
            if thread.run_ns is not None and old.run_ns is not None:
                have_schedstat = True
                run += max(0, thread.run_ns - old.run_ns)
                wait += max(0, thread.wait_ns - old.wait_ns)
        values["busy_threads"] = busy
        values["active_threads"] = active
        if values["python_gil_held_ratio"] is not None:
            self._python_thread_rates(values, earlier, sweep, span)
        if used_total > 0:
            values["gpu_local_cpu_ratio"] = gpu_local / used_total
        values["max_thread_cpu_cores"] = top
        if have_schedstat:
            values["runnable_waiting_ratio"] = _ratio(wait, run + wait)
            values["run_queue_wait_seconds_per_second"] = wait / 1e9 / span
            values["runnable_threads"] = (run + wait) / 1e9 / span
        for node, cores in by_node.items():
            self._cpu_by_node[node] = self._cpu_by_node.get(node, 0.0) * 0.8 + cores
        self._numa(values)

    def _python_thread_rates(self, values, earlier, sweep, span) -> None:
        """CPU of the threads py-spy saw as Python threads (only when it sampled: the agent's
        per-thread loop stays as it was)."""
        python_tids = self._python_tids
        busy = 0
        cores = 0.0
        for thread in sweep.threads:
            if thread.tid not in python_tids:
                continue
            old = earlier.get((thread.tid, thread.start_ticks))
            if old is None:
                continue
            used = max(0, thread.utime + thread.stime - old.utime - old.stime) / self.static.hz / span
            busy += used >= ACTIVE_CORES
            cores += used
        values["python_busy_threads"] = busy
        values["python_cpu_cores"] = cores

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
            key = (thread.tid, thread.start_ticks)
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

    def _numa(self, values) -> None:
        memory = self._numa_memory or {}
        cpu = self._cpu_by_node
        total_mem, total_cpu = sum(memory.values()), sum(cpu.values())
        if not total_mem or not total_cpu:
            return
        nodes = set(memory) | set(cpu)
        values["numa_local_ratio"] = sum(min(cpu.get(n, 0) / total_cpu, memory.get(n, 0) / total_mem)
                                         for n in nodes)
        values["numa_memory_nodes"] = sum(1 for v in memory.values() if v >= 0.1 * total_mem)
        values["numa_cpu_nodes"] = sum(1 for v in cpu.values() if v >= 0.1 * total_cpu)
        self.context["numa_memory_node"] = str(max(memory, key=memory.get))
        self.context["numa_cpu_node"] = str(max(cpu, key=cpu.get))


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
