"""Where the target may run and how many threads fit: CPUs, physical cores, thread settings."""

from __future__ import annotations

import math

from dsmon.collectors.topology import Topology

# The seed's rule of thumb: compute threads at 80-90% of the physical cores available.
THREADS_PER_PHYSICAL_CORE = 0.85
THREAD_COUNT_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                          "TORCH_NUM_THREADS", "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS")


def effective_cpus(topology: Topology | None, affinity: list[int] | None,
                   cpuset: list[int] | None, quota_cores: float | None) -> dict:
    """The CPUs the target can use (online, affinity, cpuset) and their capacity in cores
    (capped by a CPU quota)."""
    online = set(topology.online) if topology else set()
    allowed = set(affinity) if affinity else set(online)
    if online:
        allowed &= online
    if cpuset:
        allowed &= set(cpuset)
    cpus = sorted(allowed)
    physical = topology.physical_cores(cpus) if topology else None
    capacity = float(len(cpus))
    if quota_cores is not None:
        capacity = min(capacity, quota_cores)
    nodes = sorted({topology.node_of(c) for c in cpus if topology.node_of(c) is not None}) \
        if topology else []
    return {"cpus": cpus, "count": len(cpus), "physical_cores": physical,
            "quota_cores": quota_cores, "capacity_cores": round(capacity, 3), "numa_nodes": nodes}


def usable_physical_cores(physical_cores: int | None, capacity_cores: float,
                          logical_cpus: int) -> int:
    """Physical cores the process can keep busy: its cores, capped by a CPU quota."""
    return max(1, min(physical_cores or logical_cpus or 1, math.floor(capacity_cores) or 1))


def recommended_threads(usable: int) -> int:
    """The seed's rule: compute threads at 80-90% of the physical cores (85%, at least 1)."""
    return max(1, math.floor(usable * THREADS_PER_PHYSICAL_CORE))


def configured_threads(environment: dict[str, str] | None) -> tuple[dict[str, int], list[str]]:
    """Thread counts set by OMP/MKL/... variables, and complaints about unusable values."""
    configured: dict[str, int] = {}
    problems: list[str] = []
    for name in THREAD_COUNT_VARIABLES:
        raw = (environment or {}).get(name)
        if raw is not None:
            try:
                configured[name] = int(raw.split(",")[0])
            except ValueError:
                problems.append(f"{name}={raw!r} is not a number; the runtime will ignore it")
    return configured, problems


def overlap_ratio(first: dict, second: dict) -> float | None:
    """Overlap of two distributions over the same keys (memory per NUMA node and CPU time per
    node): 1.0 when they have the same proportions, 0.0 when they share no key."""
    total_first, total_second = sum(first.values()), sum(second.values())
    if not total_first or not total_second:
        return None
    return sum(min(first.get(k, 0) / total_first, second.get(k, 0) / total_second)
               for k in set(first) | set(second))
