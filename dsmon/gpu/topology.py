"""GPU topology: the GPU-to-GPU link matrix, each GPU's CPUs and NUMA node, and where a
target's threads run against the CPUs local to its GPUs (`dsmon topo [PID]`).

The matrix is the one `nvidia-smi topo -m` prints: NV# (a bonded set of # NVLinks, counted
directly or through NVSwitches), else the PCIe path from NVML's common ancestor: PIX (at most
one PCIe bridge), PXB (several bridges), PHB (a PCIe host bridge), NODE (host bridges within a
NUMA node), SYS (the SMP interconnect between NUMA nodes). CPU affinity is NVML's (the CPUs
of the GPU's NUMA node), NUMA affinity NVML's memory affinity, else sysfs's numa_node of the
PCI device, else the nodes whose CPUs the CPU affinity covers.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from dsmon.collectors.process import parse_stat, parse_status
from dsmon.features.threads import cpu_ticks_between
from dsmon.gpu.nvml import (
    TOPOLOGY_LEVELS,
    Nvml,
    NvmlError,
    sysfs_pci_address,
)
from dsmon.paths import HostPaths
from dsmon.sources import (
    SourceError,
    format_cpulist,
    list_dir,
    parse_cpulist,
    read_bytes,
    read_text,
)

LEGEND = """Legend:

  X    = Self
  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)
  NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges within a NUMA node
  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)
  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)
  PIX  = Connection traversing at most a single PCIe bridge
  NV#  = Connection traversing a bonded set of # NVLinks"""


@dataclass
class GpuTopoEntry:
    index: int
    uuid: str | None = None
    name: str | None = None
    bus_id: str | None = None
    minor_number: int | None = None
    cpu_affinity: list[int] | None = None
    cpu_affinity_source: str = ""
    numa_affinity: list[int] | None = None
    numa_affinity_source: str = ""
    gpu_numa_id: int | None = None
    sysfs_numa_node: int | None = None


@dataclass
class GpuTopology:
    gpus: list[GpuTopoEntry]
    cells: list[list[str]]                     # cells[i][j]: X, NV#, PIX, ..., SYS or N/A
    nvlinks: dict[tuple[int, int], int] = field(default_factory=dict)
    pcie: dict[tuple[int, int], str] = field(default_factory=dict)
    numa_cpus: dict[int, list[int]] = field(default_factory=dict)   # sysfs node -> CPUs
    unavailable: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def local_cpus(self, indices) -> list[int]:
        cpus: set[int] = set()
        for index in indices:
            entry = self.gpus[index] if index < len(self.gpus) else None
            if entry and entry.cpu_affinity:
                cpus.update(entry.cpu_affinity)
        return sorted(cpus)

    def local_nodes(self, indices) -> list[int]:
        nodes: set[int] = set()
        for index in indices:
            entry = self.gpus[index] if index < len(self.gpus) else None
            if entry and entry.numa_affinity:
                nodes.update(entry.numa_affinity)
        return sorted(nodes)

    def to_dict(self) -> dict:
        return {
            "gpus": [vars(g) for g in self.gpus],
            "matrix": self.cells,
            "nvlinks": {f"{a}-{b}": n for (a, b), n in sorted(self.nvlinks.items())},
            "pcie": {f"{a}-{b}": n for (a, b), n in sorted(self.pcie.items())},
            "numa_cpus": self.numa_cpus,
            "unavailable": self.unavailable,
        }


def read_numa_cpus(paths: HostPaths) -> dict[int, list[int]]:
    node_dir = paths.sys("devices", "system", "node")
    nodes: dict[int, list[int]] = {}
    try:
        names = list_dir(node_dir)
    except SourceError:
        return nodes
    for name in names:
        if re.fullmatch(r"node\d+", name):
            try:
                nodes[int(name[4:])] = parse_cpulist(read_text(f"{node_dir}/{name}/cpulist"))
            except SourceError:
                continue
    return dict(sorted(nodes.items()))


def _sysfs_int(paths: HostPaths, bus_id: str, name: str) -> int | None:
    try:
        return int(read_text(paths.sys("bus", "pci", "devices", sysfs_pci_address(bus_id),
                                       name)).strip())
    except (SourceError, ValueError):
        return None


def _sysfs_cpulist(paths: HostPaths, bus_id: str) -> list[int] | None:
    try:
        return parse_cpulist(read_text(paths.sys("bus", "pci", "devices",
                                                 sysfs_pci_address(bus_id), "local_cpulist")))
    except SourceError:
        return None


def read_topology(nvml: Nvml, paths: HostPaths, count: int | None = None) -> GpuTopology:
    """Ask NVML (and sysfs) for the whole topology. Slow (the first CPU-affinity call took
    ~30 ms per GPU on an H100 host): done once per GPU enumeration."""
    started = time.perf_counter()
    nvml.ensure()
    if count is None:
        count = int(nvml.call("device_count"))
    unavailable: dict[str, str] = {}
    numa_cpus = read_numa_cpus(paths)
    entries = []

    def ask(name, *args):
        try:
            return nvml.call(name, *args)
        except NvmlError as exc:
            key = f"{name}({','.join(map(str, args))})"
            unavailable[key] = ("not supported" if exc.kind in ("NotSupported",
                                                                "FunctionNotFound")
                                else f"NVML error: {exc.kind}")
            return None

    for index in range(count):
        entry = GpuTopoEntry(index, ask("uuid", index), ask("name", index),
                             ask("pci_bus_id", index), ask("minor_number", index))
        affinity = ask("cpu_affinity", index)
        if affinity:
            entry.cpu_affinity, entry.cpu_affinity_source = affinity, "nvml"
        elif entry.bus_id:
            local = _sysfs_cpulist(paths, entry.bus_id)
            if local:
                entry.cpu_affinity, entry.cpu_affinity_source = local, "sysfs local_cpulist"
        entry.gpu_numa_id = ask("numa_node", index)
        if entry.bus_id:
            node = _sysfs_int(paths, entry.bus_id, "numa_node")
            entry.sysfs_numa_node = node
        memory_nodes = ask("memory_affinity", index)
        if memory_nodes:
            entry.numa_affinity, entry.numa_affinity_source = memory_nodes, "nvml"
        elif entry.sysfs_numa_node is not None and entry.sysfs_numa_node >= 0:
            entry.numa_affinity = [entry.sysfs_numa_node]
            entry.numa_affinity_source = "sysfs numa_node"
        elif entry.cpu_affinity and numa_cpus:
            covered = [n for n, cpus in numa_cpus.items() if set(cpus) & set(entry.cpu_affinity)]
            if covered:
                entry.numa_affinity, entry.numa_affinity_source = covered, "cpu affinity"
        entries.append(entry)

    cells = [["X" if i == j else "N/A" for j in range(count)] for i in range(count)]
    topo = GpuTopology(entries, cells, numa_cpus=numa_cpus, unavailable=unavailable)
    for i in range(count):
        for j in range(i + 1, count):
            links = ask("nvlink_count", i, j)
            if links:
                topo.nvlinks[(i, j)] = int(links)
            level = ask("common_ancestor", i, j)
            if level is not None:
                topo.pcie[(i, j)] = TOPOLOGY_LEVELS.get(int(level), f"L{level}")
            cell = f"NV{int(links)}" if links else topo.pcie.get((i, j), "N/A")
            cells[i][j] = cells[j][i] = cell
    topo.seconds = time.perf_counter() - started
    return topo


# ---------------------------------------------------------------------------- rendering

def _fmt_nodes(nodes) -> str:
    return format_cpulist(nodes) if nodes else "N/A"


def render(topo: GpuTopology) -> str:
    """The `nvidia-smi topo -m` picture (tab-separated, without its ANSI underline)."""
    count = len(topo.gpus)
    header = "\t" + "\t".join([f"GPU{i}" for i in range(count)]
                              + ["CPU Affinity", "NUMA Affinity", "GPU NUMA ID"])
    lines = [header]
    for i, entry in enumerate(topo.gpus):
        cells = [f" {c} " if c == "X" else c for c in topo.cells[i]]
        cpu = format_cpulist(entry.cpu_affinity) if entry.cpu_affinity else "N/A"
        numa = _fmt_nodes(entry.numa_affinity)
        gpu_numa = str(entry.gpu_numa_id) if entry.gpu_numa_id is not None else "N/A"
        lines.append(f"GPU{i}\t" + "\t".join(cells) + f"\t{cpu}\t{numa}\t\t{gpu_numa}")
    return "\n".join(lines) + "\n\n" + LEGEND + "\n"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def parse_nvidia_smi_topo(text: str) -> dict:
    """`nvidia-smi topo -m` -> {"gpus": n, "cells": {(i, j): "NV18"}, "cpu_affinity": {i: s},
    "numa_affinity": {i: s}, "gpu_numa_id": {i: s}}. NIC rows and columns are skipped."""
    lines = [_ANSI.sub("", line) for line in text.splitlines()]
    header = None
    rows: dict[str, list[str]] = {}
    for line in lines:
        if not line.strip():
            if header is not None and rows:
                break
            continue
        parts = [p.strip() for p in line.split("\t")]
        if header is None:
            if parts and parts[0] == "" and any(p.startswith("GPU") for p in parts):
                header = [p for p in parts if p]
            continue
        values = [p for p in parts if p]
        if values and values[0].startswith(("GPU", "NIC")):
            rows[values[0]] = values[1:]
    if header is None:
        raise ValueError("no nvidia-smi topo -m header found")
    gpu_cols = [h for h in header if re.fullmatch(r"GPU\d+", h)]
    out = {"gpus": len(gpu_cols), "cells": {}, "cpu_affinity": {}, "numa_affinity": {},
           "gpu_numa_id": {}}
    for name, values in rows.items():
        if not re.fullmatch(r"GPU\d+", name):
            continue
        i = int(name[3:])
        by_column = dict(zip(header, values))
        for col in gpu_cols:
            out["cells"][(i, int(col[3:]))] = by_column.get(col, "")
        for key, col in (("cpu_affinity", "CPU Affinity"), ("numa_affinity", "NUMA Affinity"),
                         ("gpu_numa_id", "GPU NUMA ID")):
            if col in by_column:
                out[key][i] = by_column[col]
    return out


def compare_with_nvidia_smi(topo: GpuTopology, text: str) -> list[str]:
    """Differences between dsmon's topology and `nvidia-smi topo -m` output (empty: agree)."""
    theirs = parse_nvidia_smi_topo(text)
    ours = parse_nvidia_smi_topo(render(topo))
    diffs = []
    if theirs["gpus"] != ours["gpus"]:
        diffs.append(f"GPU count: nvidia-smi {theirs['gpus']}, dsmon {ours['gpus']}")
    for key in ("cells", "cpu_affinity", "numa_affinity", "gpu_numa_id"):
        for where, value in sorted(theirs[key].items()):
            mine = ours[key].get(where)
            if mine != value:
                diffs.append(f"{key} {where}: nvidia-smi {value!r}, dsmon {mine!r}")
    return diffs


# ---------------------------------------------------------------------------- placement

@dataclass
class Placement:
    """Where a target's threads ran, against the CPUs local to its GPUs."""

    pid: int
    local_cpus: list[int]
    local_nodes: list[int]
    allowed_cpus: list[int]
    method: str
    window_seconds: float
    threads: int = 0
    threads_ran: int = 0
    cpu_seconds: float = 0.0
    cpu_seconds_local: float = 0.0
    cpu_seconds_by_node: dict[int, float] = field(default_factory=dict)
    remote_threads: list[dict] = field(default_factory=list)   # top threads off the local CPUs

    @property
    def local_ratio(self) -> float | None:
        return self.cpu_seconds_local / self.cpu_seconds if self.cpu_seconds > 0 else None


def _thread_stats(paths: HostPaths, pid: int) -> dict:
    """tid -> its parsed stat (comm, utime and stime in clock ticks, last CPU)."""
    out = {}
    for entry in list_dir(paths.pid(pid, "task"), process_file=True):
        if not entry.isdigit():
            continue
        try:
            out[int(entry)] = parse_stat(read_bytes(paths.task(pid, int(entry), "stat"),
                                                    process_file=True))
        except SourceError:
            continue
    return out


def placement(paths: HostPaths, pid: int, local_cpus: list[int], local_nodes: list[int],
              numa_cpus: dict[int, list[int]], window_s: float = 0.5, hz: int = 100,
              step_s: float = 0.05) -> Placement:
    """Sample the target's threads over `window_s`, crediting each interval's CPU time to the
    CPU the thread was last seen on. On a recording (not live) or with window_s=0, the
    threads' whole CPU time is credited to their last CPU."""
    status = parse_status(read_text(paths.pid(pid, "status"), process_file=True))
    allowed = parse_cpulist(status.get("Cpus_allowed_list", ""))
    live = paths.is_live and window_s > 0
    result = Placement(pid, local_cpus, local_nodes, allowed,
                       f"sampled every {step_s * 1000:.0f} ms over {window_s:.1f} s" if live
                       else "whole CPU time of each thread, credited to its last CPU",
                       window_s if live else 0.0)
    node_of = {cpu: node for node, cpus in numa_cpus.items() for cpu in cpus}
    per_thread: dict[int, dict] = {}

    def credit(tid, comm, ticks, cpu):
        if ticks <= 0:
            return
        seconds = ticks / hz
        info = per_thread.setdefault(tid, {"tid": tid, "comm": comm, "seconds": 0.0,
                                           "remote_seconds": 0.0, "cpus": set()})
        info["seconds"] += seconds
        info["cpus"].add(cpu)
        result.cpu_seconds += seconds
        node = node_of.get(cpu)
        if node is not None:
            result.cpu_seconds_by_node[node] = result.cpu_seconds_by_node.get(node, 0.0) + seconds
        if cpu in local_cpus:
            result.cpu_seconds_local += seconds
        else:
            info["remote_seconds"] += seconds

    before = _thread_stats(paths, pid)
    result.threads = len(before)
    if not live:
        for tid, stat in before.items():
            credit(tid, stat.comm, stat.utime + stat.stime, stat.processor)
    else:
        deadline = time.monotonic() + window_s
        while True:
            time.sleep(max(0.0, min(step_s, deadline - time.monotonic())))
            now = _thread_stats(paths, pid)
            for tid, stat in now.items():
                previous = before.get(tid)
                if previous is not None:     # a thread born in this step is credited from the next
                    credit(tid, stat.comm, cpu_ticks_between(previous, stat), stat.processor)
            before = now
            if time.monotonic() >= deadline:
                break
        result.threads = max(result.threads, len(before))
    result.threads_ran = len(per_thread)
    remote = [dict(t, cpus=sorted(t["cpus"])) for t in per_thread.values()
              if t["remote_seconds"] > 0]
    remote.sort(key=lambda t: -t["remote_seconds"])
    result.remote_threads = remote[:10]
    return result
