"""The agent's state as Prometheus families (dsmon_* names, base units, bounded labels)."""

from __future__ import annotations

from dsmon.collectors.cpu import MODES
from dsmon.sinks.prometheus import MetricsBuilder

THREAD_STATES = ("R", "S", "D", "T", "t", "Z", "I", "X", "P")
FINDING_ACTIVE_HELP = "1 while a finding fires, 0 for each loaded rule that does not."
FINDINGS_FIRED_HELP = "Times a finding started firing."


def render_host(out: MetricsBuilder, host: dict, topology) -> None:
    cpu = host.get("cpu")
    if cpu is not None:
        for number, seconds in sorted(cpu.per_cpu.items()):
            for mode, value in zip(MODES, seconds):
                out.counter("dsmon_cpu_seconds", "CPU time per core and mode (/proc/stat).",
                            value, cpu=str(number), mode=mode)
        out.counter("dsmon_context_switches", "Context switches on the host.",
                    cpu.context_switches)
        out.gauge("dsmon_procs_running", "Runnable tasks on the host.", cpu.procs_running)
        out.gauge("dsmon_procs_blocked", "Tasks blocked in I/O on the host.", cpu.procs_blocked)
    memory = host.get("memory")
    if memory is not None:
        for key, name in (("MemTotal", "total"), ("MemAvailable", "available"),
                          ("MemFree", "free"), ("SwapTotal", "swap_total"),
                          ("SwapFree", "swap_free"), ("Cached", "cached")):
            out.gauge(f"dsmon_memory_{name}_bytes", f"{key} from /proc/meminfo.", memory.get(key))
    vmstat = host.get("vmstat")
    if vmstat is not None:
        out.counter("dsmon_swap_in_pages", "Pages swapped in on the host.", vmstat.get("pswpin"))
        out.counter("dsmon_swap_out_pages", "Pages swapped out on the host.", vmstat.get("pswpout"))
        out.counter("dsmon_oom_kills", "OOM kills on the host (/proc/vmstat).", vmstat.get("oom_kill"))
    pressure = host.get("pressure")
    if pressure is not None:
        for resource, kinds in pressure.items():
            for kind, values in kinds.items():
                out.counter("dsmon_pressure_stalled_seconds",
                            "Time tasks stalled on a resource (PSI total).",
                            values.get("total_seconds"), resource=resource, kind=kind)
    if topology is not None:
        for number, info in sorted(topology.cpus.items()):
            out.gauge("dsmon_cpu_info", "CPU topology: package, core and NUMA node of each CPU.",
                      1, cpu=str(number), package=str(info.package), core=str(info.core),
                      node="" if info.node is None else str(info.node))
        for node in topology.nodes.values():
            out.gauge("dsmon_numa_node_memory_total_bytes", "Memory of each NUMA node.",
                      node.mem_total_bytes, node=str(node.node))


def render_target(out: MetricsBuilder, runtime, max_pools: int) -> None:
    label = runtime.label
    tick = runtime.last_tick
    identity = runtime.static.identity
    out.gauge("dsmon_target_up", "1 while the target is sampled, 0 once it is gone.",
              0 if runtime.gone else 1, target=label)
    out.gauge("dsmon_target_info", "The target's identity (labels only; pids are not labels).",
              1, target=label, comm=identity.comm, engine=runtime.monitor.engine_name,
              cgroup=runtime.static.cgroup_layout.cgroup_path or "")
    render_engine(out, runtime)
    render_rule_series(out, runtime.monitor.rules, runtime.label)
    if tick is None:
        return
    process = tick.data("process")
    if process is not None:
        out.counter("dsmon_process_cpu_seconds", "CPU time of the target by mode.",
                    process.utime_s, target=label, mode="user")
        out.counter("dsmon_process_cpu_seconds", "CPU time of the target by mode.",
                    process.stime_s, target=label, mode="system")
        out.gauge("dsmon_process_resident_memory_bytes", "Resident memory (VmRSS).",
                  process.rss_bytes, target=label)
        out.gauge("dsmon_process_resident_memory_peak_bytes", "Peak resident memory (VmHWM).",
                  process.peak_rss_bytes, target=label)
        out.gauge("dsmon_process_swap_bytes", "Swapped-out memory (VmSwap).",
                  process.swap_bytes, target=label)
        out.gauge("dsmon_process_open_fds", "Open file descriptors.", process.open_fds,
                  target=label)
        out.gauge("dsmon_process_max_fds", "Soft limit of open file descriptors.",
                  process.fd_limit, target=label)
        if process.io:
            for key, direction, layer in (("read_bytes", "read", "storage"),
                                          ("write_bytes", "write", "storage"),
                                          ("rchar", "read", "syscall"),
                                          ("wchar", "write", "syscall")):
                out.counter("dsmon_process_io_bytes", "Bytes read and written: storage (block "
                            "layer) or syscall (any source).", process.io.get(key),
                            target=label, direction=direction, layer=layer)
    sweep = tick.data("threads")
    if sweep is not None:
        counts = {state: 0 for state in ("R", "S", "D")}
        for thread in sweep.threads:
            state = thread.state if thread.state in THREAD_STATES else "other"
            counts[state] = counts.get(state, 0) + 1
        for state, count in sorted(counts.items()):
            out.gauge("dsmon_process_threads", "Threads by state in the last sample.", count,
                      target=label, state=state)
        out.gauge("dsmon_process_threads_sampled_ratio", "Share of threads read in the last "
                  "sample (below 1 when the thread cap or time budget truncated it).",
                  len(sweep.threads) / sweep.listed if sweep.listed else None, target=label)
        out.gauge("dsmon_process_threads_listed", "Threads in the target's task/ at the last "
                  "sample.", sweep.listed, target=label)
        out.gauge("dsmon_process_threads_sampled", "Threads read in the last sample (a "
                  "rotating slice of the list above the thread cap).", len(sweep.threads),
                  target=label)
        out.gauge("dsmon_process_thread_sample_age_max_seconds", "Longest any live thread had "
                  "gone unread at the last sample (0 when every thread is read each sample).",
                  sweep.oldest_read_age_s, target=label)
        out.gauge("dsmon_process_thread_full_pass_seconds", "Time the last complete pass over "
                  "the thread list took (one sample when no slice is needed).",
                  sweep.full_pass_s, target=label)
        totals = runtime.totals
        out.counter("dsmon_process_run_queue_wait_seconds", "Time threads were runnable but "
                    "waiting for a CPU (schedstat), summed over threads.",
                    totals.run_queue_wait_seconds, target=label)
        out.counter("dsmon_process_context_switches", "Context switches of all threads.",
                    totals.voluntary_switches, target=label, kind="voluntary")
        out.counter("dsmon_process_context_switches", "Context switches of all threads.",
                    totals.involuntary_switches, target=label, kind="involuntary")
        for pool, count, cores in runtime.pools(max_pools):
            out.gauge("dsmon_process_pool_threads", "Threads per pool (names, digits masked).",
                      count, target=label, pool=pool)
            out.gauge("dsmon_process_pool_cpu_cores", "CPU of each pool over the last interval.",
                      cores, target=label, pool=pool)
    features = runtime.monitor.store
    for feature, name, help_text in (
            ("busy_threads", "dsmon_process_busy_threads", "Threads using >= 10% of a CPU."),
            ("cpu_capacity_cores", "dsmon_process_cpu_capacity_cores",
             "CPUs the target can use: affinity, cpuset and quota."),
            ("effective_physical_cores", "dsmon_process_physical_cores",
             "Physical cores among the CPUs the target can use."),
            ("runnable_waiting_ratio", "dsmon_process_runnable_waiting_ratio",
             "Run-queue wait / (run + wait) over the last interval."),
            ("working_set_bytes", "dsmon_process_working_set_bytes",
             "cgroup usage minus inactive page cache, the kubelet's working set (RSS "
             "without a cgroup limit)."),
            ("unreclaimable_bytes", "dsmon_process_unreclaimable_memory_bytes",
             "cgroup usage minus all page cache: what the OOM killer counts (RSS anon "
             "without a cgroup limit)."),
            ("memory_limit_bytes", "dsmon_process_memory_limit_bytes",
             "The binding cgroup memory limit."),
            ("memory_headroom_bytes", "dsmon_process_memory_headroom_bytes",
             "Memory left before the limit (or host MemAvailable)."),
            ("seconds_to_memory_limit", "dsmon_process_memory_limit_eta_seconds",
             "Time until the limit at the current growth (absent when not growing).")):
        out.gauge(name, help_text, features.last(feature), target=label)
    for runtime_name in ("torch", "blas", "openmp"):
        out.gauge("dsmon_process_runtime_loaded", "1 when the native runtime is mapped into the "
                  "target (/proc/PID/maps, re-read every minute): torch, blas (OpenBLAS, MKL, "
                  "numpy), openmp (libgomp, libiomp).", features.last(f"{runtime_name}_loaded"),
                  target=label, runtime=runtime_name)
    cgroup = tick.data("cgroup")
    if cgroup is not None:
        out.counter("dsmon_process_oom_kills", "OOM kills in the target's cgroup.",
                    cgroup.oom_kills, target=label)
        out.counter("dsmon_process_cpu_throttled_seconds", "Time the cgroup quota throttled "
                    "the target.", cgroup.cpu_throttled_seconds, target=label)
    if runtime.numa_memory:
        for node, size in sorted(runtime.numa_memory.items()):
            out.gauge("dsmon_process_numa_memory_bytes", "Resident memory per NUMA node "
                      "(numa_maps, slow cadence).", size, target=label, node=str(node))
    out.gauge("dsmon_last_sample_timestamp_seconds", "When the target was last sampled.",
              tick.wall_ts, target=label)


def render_engine(out: MetricsBuilder, runtime) -> None:
    """The engine's own signals (when its endpoint answered) and whether it answered. A target
    without an endpoint (not an engine, metrics off) has none of these series."""
    if runtime.engine_scraper is None or runtime.engine_batch is None:
        return
    label, batch = runtime.label, runtime.engine_batch
    out.gauge("dsmon_engine_up", "1 when the engine's own metrics endpoint answered the last "
              "scrape, 0 when it did not (engine rules then go quiet).", 1 if batch.ok else 0,
              target=label, engine=runtime.monitor.engine_name)
    out.gauge("dsmon_engine_scrape_duration_seconds", "Duration of the last scrape of the "
              "engine's metrics endpoint.", batch.duration_s, target=label)
    if not batch.ok:
        return
    signals = batch.data.signals
    out.gauge("dsmon_engine_kv_cache_usage_ratio", "Share of the engine's KV cache in use "
              "(vLLM, SGLang).", signals.kv_cache_usage_ratio, target=label)
    out.counter("dsmon_engine_preemptions", "Requests the engine preempted (vLLM) or "
                "retracted (SGLang), as the engine counts them.", signals.preemptions_total,
                target=label)
    for state, value in (("running", signals.running_requests),
                         ("waiting", signals.waiting_requests)):
        out.gauge("dsmon_engine_requests", "Requests running and waiting in the engine.",
                  value, target=label, state=state)


def render_rule_series(out: MetricsBuilder, rules, label: str) -> None:
    """Both findings families at 0 for every rule loaded for the target, before anything
    fires: increase(dsmon_findings_fired_total[..]) then counts the first fire (a counter born
    at 1 has no increase), and a rule that never fired reads 0 rather than absent.
    render_findings later replaces the zeros of what fired."""
    for rule in rules:
        labels = dict(rule_id=rule.id, severity=rule.severity, target=label)
        out.gauge("dsmon_finding_active", FINDING_ACTIVE_HELP, 0, initial=True, **labels)
        out.counter("dsmon_findings_fired", FINDINGS_FIRED_HELP, 0, initial=True, **labels)


def render_findings(out: MetricsBuilder, active: set[tuple[str, str, str]],
                    fired: dict[tuple[str, str, str], int]) -> None:
    """`active`: (rule_id, severity, target) firing now; `fired`: how often each started
    firing, kept per target label across restarts so the counter does not reset."""
    for rule_id, severity, target in sorted(active):
        out.gauge("dsmon_finding_active", FINDING_ACTIVE_HELP, 1,
                  rule_id=rule_id, severity=severity, target=target)
    for (rule_id, severity, target), count in sorted(fired.items()):
        out.counter("dsmon_findings_fired", FINDINGS_FIRED_HELP, count,
                    rule_id=rule_id, severity=severity, target=target)


def render_exits(out: MetricsBuilder, exits: dict[tuple[str, str], int]) -> None:
    for (target, reason), count in sorted(exits.items()):
        out.counter("dsmon_target_exits", "Target processes that exited, by reason "
                    "(oom_killed when their cgroup's OOM-kill count rose).", count,
                    target=target, reason=reason)


def render_gpus(out: MetricsBuilder, snapshot, label_of_pid: dict[int, str]) -> None:
    """Per GPU (label `gpu` = NVML index), per target GPU memory, and the GPU count."""
    out.gauge("dsmon_gpus", "GPUs NVML sees now.", snapshot.device_count)
    out.gauge("dsmon_gpus_max_seen", "Most GPUs seen since the agent started.",
              snapshot.max_device_count)
    for card in snapshot.gpus:
        gpu = str(card.index)
        out.gauge("dsmon_gpu_info", "GPU identity (labels only).", 1, gpu=gpu,
                  name=card.name or "", uuid=card.uuid or "", bus_id=card.bus_id or "")
        out.gauge("dsmon_gpu_lost", "1 when NVML says the GPU is lost.", 1 if card.lost else 0,
                  gpu=gpu)
        for field, name, help_text in (
                ("memory_total_bytes", "dsmon_gpu_memory_total_bytes", "GPU memory (NVML v2)."),
                ("memory_reserved_bytes", "dsmon_gpu_memory_reserved_bytes",
                 "GPU memory reserved by the driver (not counted as used)."),
                ("memory_used_bytes", "dsmon_gpu_memory_used_bytes", "GPU memory in use."),
                ("memory_free_bytes", "dsmon_gpu_memory_free_bytes", "GPU memory free."),
                ("utilization_gpu_ratio", "dsmon_gpu_utilization_ratio",
                 "Share of time a kernel ran on the GPU."),
                ("utilization_memory_ratio", "dsmon_gpu_memory_utilization_ratio",
                 "Share of time GPU memory was read or written."),
                ("temperature_celsius", "dsmon_gpu_temperature_celsius", "GPU temperature."),
                ("power_watts", "dsmon_gpu_power_watts", "GPU power draw."),
                ("power_limit_watts", "dsmon_gpu_power_limit_watts", "GPU power limit."),
                ("sm_clock_hz", "dsmon_gpu_sm_clock_hertz", "SM clock.")):
            out.gauge(name, help_text, getattr(card, field), gpu=gpu)
        for which in ("current", "max"):
            out.gauge("dsmon_gpu_pcie_link_generation", "PCIe generation, current and max.",
                      getattr(card, f"pcie_gen_{which}"), gpu=gpu, which=which)
            out.gauge("dsmon_gpu_pcie_link_width", "PCIe lanes, current and max.",
                      getattr(card, f"pcie_width_{which}"), gpu=gpu, which=which)
        for kind in ("corrected", "uncorrected"):
            out.counter("dsmon_gpu_ecc_errors", "ECC errors since the driver loaded.",
                        getattr(card, f"ecc_aggregate_{kind}"), gpu=gpu, type=kind)
        for reason in card.clock_event_reasons or ():
            out.gauge("dsmon_gpu_clock_event_active", "1 for each reason the clocks are held "
                      "back (thermal, power, ...).", 1, gpu=gpu, reason=reason)
    for pid, usage in snapshot.targets.items():
        target = label_of_pid.get(pid)
        if target is None or usage.memory_bytes is None:
            continue
        per_gpu: dict[int, int] = {}       # the target and its children, summed per GPU
        for entry in usage.per_gpu:
            if entry.get("used_bytes") is not None:
                per_gpu[entry["gpu_index"]] = per_gpu.get(entry["gpu_index"], 0) + entry["used_bytes"]
        for gpu, used in sorted(per_gpu.items()):
            out.gauge("dsmon_process_gpu_memory_bytes", "GPU memory the target (and its child "
                      "processes) holds, per GPU.", used, target=target, gpu=str(gpu))
