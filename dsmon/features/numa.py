"""NUMA features: where the target's memory is against where its threads run."""

from __future__ import annotations

from dsmon.features.placement import overlap_ratio

CPU_BY_NODE_DECAY = 0.8     # per interval: the CPU-per-node history fades over ~5 intervals
NODE_SHARE = 0.1            # a node counts when it holds this share of memory or CPU time


class NumaFeatures:
    def __init__(self, static, context: dict, topology):
        self.context = context
        self.topology = topology
        self._memory: dict[int, int] | None = static.numa_start.data \
            if static.numa_start.ok else None
        self._cpu_by_node: dict[int, float] = {}

    def set_memory(self, per_node: dict[int, int] | None) -> None:
        if per_node is not None:
            self._memory = per_node

    def update(self, values, interval) -> None:
        topology = self.topology
        values["numa_nodes"] = len(topology.nodes) if topology and topology.nodes else 1
        if interval.thread_cores is None:
            return
        if topology is not None:
            by_node: dict[int, float] = {}
            for thread, _, cores in interval.thread_cores:
                node = topology.node_of(thread.processor) if cores > 0 else None
                if node is not None:
                    by_node[node] = by_node.get(node, 0.0) + cores
            for node, cores in by_node.items():
                self._cpu_by_node[node] = self._cpu_by_node.get(node, 0.0) * CPU_BY_NODE_DECAY \
                    + cores
        memory, cpu = self._memory or {}, self._cpu_by_node
        local = overlap_ratio(cpu, memory)
        if local is None:
            return
        total_mem, total_cpu = sum(memory.values()), sum(cpu.values())
        values["numa_local_ratio"] = local
        values["numa_memory_nodes"] = sum(1 for v in memory.values() if v >= NODE_SHARE * total_mem)
        values["numa_cpu_nodes"] = sum(1 for v in cpu.values() if v >= NODE_SHARE * total_cpu)
        self.context["numa_memory_node"] = str(max(memory, key=memory.get))
        self.context["numa_cpu_node"] = str(max(cpu, key=cpu.get))
