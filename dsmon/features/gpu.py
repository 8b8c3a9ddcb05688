"""GPU features (NVML): the target's GPU memory and its growth, utilisation, CPU locality."""

from __future__ import annotations

from dsmon.features.memory import GrowthFit

# GPU memory: a short fit, so an engine's one-off pre-allocation at start (vLLM takes ~90% in
# seconds) leaves the slope within seconds; the rules then ask for 10 s of sustained growth.
GPU_GROWTH_WINDOW_S = 5.0


class GpuFeatures:
    def __init__(self, static, context: dict):
        self.pid = static.identity.pid
        self.context = context
        self._growth = GrowthFit(GPU_GROWTH_WINDOW_S)
        self._local_cpus: set[int] | None = None

    def set_locality(self, cpus, nodes) -> None:
        """The CPUs (and NUMA nodes) local to the GPUs the target uses, from NVML affinity."""
        self._local_cpus = set(cpus) if cpus else None
        if nodes:
            self.context["gpu_numa_node"] = ",".join(str(n) for n in sorted(nodes))

    def update(self, values, interval) -> None:
        self._locality(values, interval)
        snapshot = interval.tick.data("gpu")
        usage = snapshot.targets.get(self.pid) if snapshot is not None else None
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
        fit = self._growth.add(interval.tick.mono_ts, usage.memory_bytes)
        if fit is not None:
            values["gpu_memory_growth_bytes_per_second"] = fit.slope
            values["gpu_memory_growth_fit_ratio"] = fit.r_squared
            if fit.slope > 0 and values["gpu_memory_free_bytes"] is not None:
                values["seconds_to_gpu_memory_full"] = values["gpu_memory_free_bytes"] / fit.slope

    def _locality(self, values, interval) -> None:
        local = self._local_cpus
        if local is None or interval.thread_cores is None:
            return
        used = [(thread.processor, cores) for thread, _, cores in interval.thread_cores
                if cores > 0]
        total = sum(cores for _, cores in used)
        if total > 0:
            values["gpu_local_cpu_ratio"] = sum(c for cpu, c in used if cpu in local) / total
