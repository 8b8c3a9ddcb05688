"""`dsmon topo [PID]`: the GPU topology, and for a target the GPUs it uses and where its
threads run against the CPUs local to them."""

from __future__ import annotations

from dsmon.collectors.process import parse_stat
from dsmon.gpu.nvml import GpuUnavailable, as_nvml
from dsmon.gpu.sample import GpuCollector
from dsmon.gpu.topology import GpuTopology, Placement, placement, read_topology, render
from dsmon.paths import HostPaths
from dsmon.sources import Gone, format_cpulist, read_bytes


def _gib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f} MiB"


def render_target(usage, topo: GpuTopology, place: Placement | None, comm: str = "") -> str:
    lines = [f"Target {usage.pid}{' (' + comm + ')' if comm else ''}:"]
    if usage.gpus:
        parts = []
        for index in usage.gpus:
            name = f"GPU{index}"
            mem = [e["used_bytes"] for e in usage.per_gpu if e["gpu_index"] == index]
            if mem and all(m is not None for m in mem):
                name += f" ({_gib(sum(mem))})"
            parts.append(name)
        lines.append(f"  uses: {', '.join(parts)}")
    else:
        lines.append("  uses: no GPU found")
    srcs = usage.sources
    lines.append("  from: NVML process list " + (",".join(f"GPU{i}" for i in srcs.get("nvml", []))
                                               or "-")
                 + "; open /dev/nvidia* " + (",".join(f"GPU{i}" for i in srcs["device_files"])
                                             if "device_files" in srcs else "n/a")
                 + "; CUDA_VISIBLE_DEVICES "
                 + (usage.cuda_visible_devices if usage.cuda_visible_devices is not None
                    else ("unset" if "environment" not in usage.unavailable else "n/a")))
    memory = _gib(usage.memory_bytes) if usage.memory_bytes is not None else usage.status
    lines.append(f"  GPU memory: {memory}" + (f" ({usage.reason})" if usage.reason and
                                               usage.status != "ok" else ""))
    for name, why in sorted(usage.unavailable.items()):
        lines.append(f"  {name}: {why}")
    if place is None or not usage.gpus:
        return "\n".join(lines) + "\n"
    local = place.local_cpus
    nodes = place.local_nodes
    lines.append(f"  CPUs local to its GPUs: {format_cpulist(local) or 'unknown'}"
                 + (f" (NUMA node {format_cpulist(nodes)})" if nodes else ""))
    allowed_local = len(set(place.allowed_cpus) & set(local))
    lines.append(f"  CPUs it may run on: {format_cpulist(place.allowed_cpus)} "
                 f"({allowed_local} of them local)")
    if place.cpu_seconds <= 0:
        lines.append(f"  its threads used no CPU ({place.method})")
        return "\n".join(lines) + "\n"
    ratio = place.local_ratio or 0.0
    by_node = ", ".join(f"node {n}: {s:.2f} s" for n, s in sorted(place.cpu_seconds_by_node.items()))
    lines.append(f"  where its threads ran ({place.method}): {ratio:.0%} of "
                 f"{place.cpu_seconds:.2f} CPU-seconds on local CPUs; "
                 f"{place.threads_ran} of {place.threads} threads ran"
                 + (f" [{by_node}]" if by_node else ""))
    if ratio < 0.9 and local:
        node_text = format_cpulist(nodes) if nodes else None
        fix = (f"numactl --cpunodebind={node_text} --membind={node_text} <command>"
               if node_text else f"taskset -c {format_cpulist(local)} <command>")
        lines.append(f"  warning: {1 - ratio:.0%} of its CPU time ran away from its GPUs' CPUs; "
                     f"bind it: {fix} (or taskset -cp {format_cpulist(local)} {usage.pid})")
        for t in place.remote_threads[:5]:
            lines.append(f"    tid {t['tid']} {t['comm']}: {t['remote_seconds']:.2f} s on CPUs "
                         f"{format_cpulist(t['cpus'])}")
    return "\n".join(lines) + "\n"


def topo_command(paths: HostPaths | None = None, pid: int | None = None, backend=None,
                 window_s: float = 0.5) -> str:
    """The text of `dsmon topo [PID]`. `backend`: None (real NVML), an Nvml, or a backend
    (e.g. FakeBackend). Raises dsmon.sources.Gone when pid names no process. Without a usable
    NVML the text is the one-line reason and its fix."""
    paths = paths or HostPaths()
    nvml = as_nvml(backend)
    try:
        topo = read_topology(nvml, paths)
    except GpuUnavailable as exc:
        return f"{exc.message}\nfix: {exc.hint}\n"
    text = render(topo)
    if pid is None:
        return text
    try:
        comm = parse_stat(read_bytes(paths.pid(pid, "stat"), process_file=True)).comm
    except Gone:
        raise Gone(paths.pid(pid), "no such process") from None
    collector = GpuCollector(paths, nvml, targets=[pid], topology=False)
    snapshot, _ = collector.collect()
    usage = snapshot.targets.get(pid)
    if usage is None:
        raise Gone(paths.pid(pid), "no such process")
    place = None
    if usage.gpus:
        place = placement(paths, pid, topo.local_cpus(usage.gpus), topo.local_nodes(usage.gpus),
                          topo.numa_cpus, window_s)
    return text + "\n" + render_target(usage, topo, place, comm)
