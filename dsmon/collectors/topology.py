"""CPU topology (sockets, physical cores, SMT siblings) and NUMA nodes, from sysfs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dsmon.collectors.memory import parse_meminfo
from dsmon.paths import HostPaths
from dsmon.sources import Missing, SourceError, list_dir, parse_cpulist, read_text


@dataclass(frozen=True)
class CpuInfo:
    cpu: int
    package: int
    core: int                 # core_id, unique within a package only
    siblings: tuple[int, ...]  # SMT siblings including this cpu
    node: int | None = None


@dataclass
class NumaNode:
    node: int
    cpus: list[int]
    mem_total_bytes: int | None = None
    mem_free_bytes: int | None = None


@dataclass
class Topology:
    online: list[int]
    cpus: dict[int, CpuInfo]
    nodes: dict[int, NumaNode] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def packages(self) -> list[int]:
        return sorted({info.package for info in self.cpus.values()})

    def physical_core_of(self, cpu: int) -> tuple[int, int]:
        info = self.cpus.get(cpu)
        if info is None:
            return (-1, cpu)  # unknown topology: treat each cpu as its own core
        return (info.package, info.core)

    def physical_cores(self, cpus=None) -> int:
        """Distinct physical cores among `cpus` (all online CPUs by default)."""
        selected = self.online if cpus is None else cpus
        return len({self.physical_core_of(cpu) for cpu in selected})

    def node_of(self, cpu: int) -> int | None:
        info = self.cpus.get(cpu)
        return info.node if info else None

    @property
    def smt(self) -> bool:
        return any(len(info.siblings) > 1 for info in self.cpus.values())


def parse_node_meminfo(text: str) -> dict[str, int]:
    """Per-node meminfo lines read "Node 0 MemTotal: 123 kB"; drop the prefix and reuse meminfo."""
    return parse_meminfo(re.sub(r"^Node \d+ ", "", text, flags=re.MULTILINE))


def _read_int(path: str) -> int:
    return int(read_text(path).strip())


class TopologyCollector:
    name = "topology"

    def __init__(self, paths: HostPaths):
        self._paths = paths

    def collect(self) -> Topology:
        paths = self._paths
        cpu_dir = paths.sys("devices", "system", "cpu")
        notes: list[str] = []
        try:
            online = parse_cpulist(read_text(paths.sys("devices", "system", "cpu", "online")))
        except Missing:
            online = sorted(int(name[3:]) for name in list_dir(cpu_dir)
                            if re.fullmatch(r"cpu\d+", name))
            notes.append("cpu/online missing: assuming every cpuN directory is online")
        nodes = self._nodes(notes)
        node_by_cpu = {cpu: node.node for node in nodes.values() for cpu in node.cpus}
        cpus: dict[int, CpuInfo] = {}
        for cpu in online:
            topo = f"{cpu_dir}/cpu{cpu}/topology"
            try:
                package = _read_int(f"{topo}/physical_package_id")
                core = _read_int(f"{topo}/core_id")
                try:
                    siblings = parse_cpulist(read_text(f"{topo}/thread_siblings_list"))
                except Missing:
                    siblings = parse_cpulist(read_text(f"{topo}/core_cpus_list"))
            except Missing:
                notes.append(f"cpu{cpu}: no topology in sysfs; counted as its own core")
                package, core, siblings = -1, cpu, [cpu]
            cpus[cpu] = CpuInfo(cpu, package, core, tuple(siblings), node_by_cpu.get(cpu))
        return Topology(online, cpus, nodes, notes)

    def _nodes(self, notes: list[str]) -> dict[int, NumaNode]:
        node_dir = self._paths.sys("devices", "system", "node")
        try:
            names = list_dir(node_dir)
        except Missing:
            notes.append("no NUMA information in sysfs (kernel without CONFIG_NUMA): one node assumed")
            return {}
        nodes: dict[int, NumaNode] = {}
        numbers = sorted(int(name[4:]) for name in names if re.fullmatch(r"node\d+", name))
        for number in numbers:
            name = f"node{number}"
            cpus = parse_cpulist(read_text(f"{node_dir}/{name}/cpulist"))
            node = NumaNode(number, cpus)
            try:
                info = parse_node_meminfo(read_text(f"{node_dir}/{name}/meminfo"))
                node.mem_total_bytes = info.get("MemTotal")
                node.mem_free_bytes = info.get("MemFree")
            except SourceError as exc:
                notes.append(f"{name}: memory unknown ({exc.describe()})")
            nodes[number] = node
        return nodes
