"""`FeatureExtractor`: per target, one tick in, one value per feature out.

The work is split by role (CPU, threads, memory, pressure, I/O, GPU, NUMA, Python, the
inference engine's metrics, the loaded native runtimes); every role reads the same `Interval`,
which holds what several of them need and is derived once: the tick before, the span, the CPUs
the target can use, and each thread's CPU over the interval.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsmon.features.catalogue import FEATURES
from dsmon.features.cpu import CpuFeatures, ThreadFeatures
from dsmon.features.gpu import GpuFeatures
from dsmon.features.inference import InferenceEngineFeatures
from dsmon.features.io import IoFeatures
from dsmon.features.memory import MemoryFeatures, PressureFeatures
from dsmon.features.numa import NumaFeatures
from dsmon.features.placement import effective_cpus
from dsmon.features.python import PythonFeatures
from dsmon.features.runtimes import NativeRuntimeFeatures
from dsmon.features.threads import thread_deltas


@dataclass
class Interval:
    tick: object
    previous: object | None        # the tick before, when the target was sampled in it
    span_s: float                  # 0 without a previous tick
    process: object
    cgroup: object | None
    sweep: object | None
    effective: dict                # dsmon.features.placement.effective_cpus
    thread_cores: list | None      # [(thread, thread before, cores)], None without two sweeps

    def before(self, name: str):
        return self.previous.data(name) if self.previous is not None else None


class FeatureExtractor:
    """Per target: tick in, {feature: value} out. Keeps the previous tick for rates."""

    def __init__(self, static):
        self.static = static
        self.topology = static.topology.data if static.topology.ok else None
        self.context: dict[str, str] = {
            "target": static.identity.comm, "pid": str(static.identity.pid),
            "comm": static.identity.comm, "engine": "",
        }
        self.runtimes = NativeRuntimeFeatures(static, self.context)
        self.gpu = GpuFeatures(static, self.context)
        self.numa = NumaFeatures(static, self.context, self.topology)
        self.python = PythonFeatures(static)
        # In order: the Python stacks before the threads (which read their tids).
        self.roles = (self.runtimes, CpuFeatures(static, self.context, self.topology),
                      self.python, ThreadFeatures(), MemoryFeatures(static, self.context),
                      PressureFeatures(), IoFeatures(self.context), self.gpu,
                      InferenceEngineFeatures(), self.numa)
        self._previous = None

    def set_gpu_locality(self, cpus, nodes) -> None:
        """The CPUs (and NUMA nodes) local to the GPUs the target uses, from NVML affinity."""
        self.gpu.set_locality(cpus, nodes)

    def set_numa_memory(self, per_node: dict[int, int] | None) -> None:
        self.numa.set_memory(per_node)

    def update(self, tick) -> dict[str, float | None]:
        previous, self._previous = self._previous, tick
        values: dict[str, float | None] = {name: None for name in FEATURES}
        process = tick.data("process")
        if process is None:
            return values
        if previous is not None and previous.data("process") is None:
            previous = None
        interval = self._interval(tick, previous, process)
        for role in self.roles:
            role.update(values, interval)
        return values

    def _interval(self, tick, previous, process) -> Interval:
        cgroup = tick.data("cgroup")
        sweep = tick.data("threads")
        span = tick.mono_ts - previous.mono_ts if previous is not None else 0.0
        effective = effective_cpus(self.topology, process.cpus_allowed,
                                   cgroup.cpuset_cpus if cgroup else None,
                                   cgroup.cpu_quota_cores if cgroup else None)
        sweep_before = previous.data("threads") if previous is not None else None
        thread_cores = list(thread_deltas(sweep_before, sweep, self.static.hz, span)) \
            if sweep is not None and sweep_before is not None and span > 0 else None
        return Interval(tick, previous if span > 0 else None, max(span, 0.0), process, cgroup,
                        sweep, effective, thread_cores)
