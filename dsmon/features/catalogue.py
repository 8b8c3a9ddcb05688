"""Named features: the closed set of signals that rules may use, with their units.

`dsmon.features.FeatureExtractor` computes one value per feature per tick; a value is None
when it could not be measured in that tick, and a rule never reads None as 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsmon.features.threads import ACTIVE_CORES, BUSY_CORES


@dataclass(frozen=True)
class Feature:
    unit: str          # bytes, seconds, ratio, cores, count, per_second, bytes_per_second, flag
    help: str

# The host's GPU health (subject: host rules; dsmon/features/gpu_health.py derives them):
# name -> (unit, help).
GPU_HEALTH_FEATURES: dict[str, tuple[str, str]] = {
    "gpus_lost": ("count", "GPUs NVML reports as lost (GpuIsLost: off the bus or hung)"),
    "gpus_missing": ("count", "GPUs seen earlier that NVML no longer lists"),
    "gpu_ecc_uncorrected_errors": ("count", "uncorrectable ECC errors since the driver loaded, "
                                   "summed over GPUs"),
    "gpus_row_remap_failed": ("count", "GPUs whose row remapping failed (no spare rows)"),
    "gpus_row_remap_pending": ("count", "GPUs with a row remap waiting for a reset"),
    "gpus_hardware_slowdown": ("count", "GPUs whose clocks the hardware slows down (thermal, "
                               "power brake, HW slowdown)"),
    "gpus_power_capped": ("count", "GPUs held back only by their power cap"),
    "gpus_pcie_degraded": ("count", "GPUs whose PCIe link runs narrower than it can"),
    "gpus_mig_change_pending": ("count", "GPUs with a MIG mode change waiting for a reset"),
    "gpu_xid_events": ("count", "XID events seen since dsmon started (counter)"),
    "gpu_critical_xid_events": ("count", "XID events that need a reset or a drain, since dsmon "
                                "started (counter)"),
}

GPU_HEALTH_CONTEXT = ("gpus_lost_list", "gpus_missing_list", "gpu_ecc_list",
                      "gpu_remap_list", "gpu_slowdown_list", "gpu_power_cap_list",
                      "gpu_pcie_list", "gpu_mig_list", "gpu_xid_list", "gpu_reset_command")


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
    "host_run_queue_ratio": Feature("ratio", "runnable tasks on the host (procs_running) per "
                                    "online CPU: 1 when every CPU has one"),
    # Native runtimes mapped into the target (/proc/PID/maps; read at start, then every minute)
    "torch_loaded": Feature("flag", "1 when libtorch is loaded"),
    "blas_loaded": Feature("flag", "1 when a BLAS is loaded (OpenBLAS, MKL, or numpy's)"),
    "openmp_loaded": Feature("flag", "1 when an OpenMP runtime is loaded (libgomp, libiomp)"),
    # Memory
    "rss_bytes": Feature("bytes", "resident memory of the target"),
    "working_set_bytes": Feature("bytes", "cgroup usage minus inactive page cache (the kubelet's working set), or RSS without a cgroup"),
    "unreclaimable_bytes": Feature("bytes", "cgroup usage minus all page cache (what the OOM killer counts), or RSS anon+shmem without a cgroup limit"),
    "memory_limit_bytes": Feature("bytes", "the effective cgroup memory limit (absent when none)"),
    "memory_headroom_bytes": Feature("bytes", "room left: limit - working set, or host MemAvailable"),
    "memory_limit_ratio": Feature("ratio", "unreclaimable memory / cgroup limit, at the level that sets it"),
    "cgroup_usage_ratio": Feature("ratio", "cgroup usage including page cache / limit"),
    "page_cache_bytes": Feature("bytes", "file pages charged to the cgroup (reclaimable)"),
    "page_cache_ratio": Feature("ratio", "page cache / cgroup usage"),
    "memory_growth_bytes_per_second": Feature("bytes_per_second", "least-squares slope of the "
                                              "unreclaimable memory over up to 120 s"),
    "memory_growth_fit_ratio": Feature("ratio", "r^2 of that fit: near 1 for steady growth, "
                                       "near 0 for noise"),
    "memory_growth_window_seconds": Feature("seconds", "time the growth fit covers (it grows "
                                            "to 120 s after start)"),
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
    "gpu_memory_growth_bytes_per_second": Feature("bytes_per_second", "least-squares slope of "
                                                  "the target's GPU memory over 5 s"),
    "gpu_memory_growth_fit_ratio": Feature("ratio", "r^2 of that fit"),
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
    **{name: Feature(unit, text) for name, (unit, text) in GPU_HEALTH_FEATURES.items()},
}

# String values a template may use besides features (set once per target).
CONTEXT_FIELDS = ("target", "pid", "comm", "engine", "limit_kind", "numa_memory_node",
                  "numa_cpu_node", "fs_wait_channel", "configured_variable", "blocked_channel",
                  "half_of_rss", "three_quarters_of_rss", "gpu_numa_node",
                  "thread_pool_library", *GPU_HEALTH_CONTEXT)
