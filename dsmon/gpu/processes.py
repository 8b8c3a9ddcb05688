"""Which GPUs a target uses, and how much GPU memory it holds.

NVML lists the processes on each GPU with their pids **in the caller's PID namespace**, and
leaves out processes the caller's namespace cannot see: a dsmon in a fresh PID namespace gets
empty lists. So the target's pid (as dsmon's procfs names it) is mapped to the pid NVML uses
through the `NSpid` line of /proc/<pid>/status (one pid per namespace level, outermost
first), at the level of dsmon's own namespace, which /proc/self/status under the same procfs
tells. When the target cannot be seen from dsmon's namespace, its GPU memory is reported as
"unavailable (PID namespace)", never as 0.

Three independent sources say which GPUs the target uses: NVML's process lists, the
/dev/nvidia<minor> files the process holds open (with /dev/nvidia-uvm, which only CUDA
processes open: NVML-only tools open /dev/nvidia<N> too), and CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dsmon.collectors.process import parse_environ, parse_stat, parse_status
from dsmon.paths import HostPaths
from dsmon.sources import (
    Denied,
    Gone,
    Missing,
    SourceError,
    list_dir,
    read_bytes,
    read_link,
    read_text,
)

STATUS_OK = "ok"
STATUS_NONE = "none"
STATUS_PIDNS = "unavailable (PID namespace)"
STATUS_UNAVAILABLE = "unavailable"

PIDNS_HINT = ("run dsmon in the host's PID namespace (docker run --pid=host, Kubernetes "
              "hostPID: true) or in the target's (a sidecar with shareProcessNamespace: true)")

_NVIDIA_DEV = re.compile(r"^/dev/nvidia(\d+)$")
GPU_ENV = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES")


@dataclass(frozen=True)
class CallerView:
    """dsmon's own place in the PID namespace tree, as the procfs it reads shows it.

    depth: how many namespace levels below the procfs's own namespace dsmon runs (0: the
    same one); None when procfs has no `self` for dsmon (a replayed snapshot, a fixture tree).
    """

    depth: int | None
    namespace: str | None

    @classmethod
    def of(cls, paths: HostPaths) -> CallerView:
        try:
            status = parse_status(read_text(paths.proc("self", "status")))
        except SourceError:
            return cls(None, None)
        nspid = status.get("NSpid", "").split()
        try:
            namespace = read_link(paths.proc("self", "ns", "pid"), process_file=False)
        except SourceError:
            namespace = None
        return cls(max(0, len(nspid) - 1) if nspid else None, namespace)


def read_nspid(paths: HostPaths, pid: int) -> list[int]:
    status = parse_status(read_text(paths.pid(pid, "status"), process_file=True))
    return [int(v) for v in status.get("NSpid", str(pid)).split()]


def nvml_pid(paths: HostPaths, pid: int, caller: CallerView) -> tuple[int | None, str]:
    """The pid NVML uses for `pid`, or None and why NVML cannot list it."""
    nspid = read_nspid(paths, pid)
    if not caller.depth:               # dsmon sees the procfs's namespace (or cannot tell)
        return nspid[0], ""
    if caller.depth >= len(nspid):
        return None, (f"the target (NSpid {' '.join(map(str, nspid))}) is outside dsmon's PID "
                      f"namespace (dsmon runs {caller.depth} level(s) below the procfs's)")
    try:
        namespace = read_link(paths.pid(pid, "ns", "pid"))
    except (Denied, Missing):
        namespace = None
    if namespace and caller.namespace and namespace != caller.namespace \
            and len(nspid) == caller.depth + 1:
        return None, (f"the target runs in PID namespace {namespace}, dsmon in "
                      f"{caller.namespace}: a sibling namespace NVML hides from dsmon")
    return nspid[caller.depth], ""


def descendants(paths: HostPaths, pid: int) -> list[int]:
    """Children, grandchildren, ... of pid (a server's GPU workers), by scanning ppids."""
    children: dict[int, list[int]] = {}
    try:
        entries = list_dir(paths.procfs)
    except SourceError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = parse_stat(read_bytes(paths.pid(int(entry), "stat"), process_file=True))
        except SourceError:
            continue
        children.setdefault(stat.ppid, []).append(int(entry))
    found: list[int] = []
    queue = list(children.get(pid, []))
    while queue:
        child = queue.pop(0)
        if child in found or child == pid:
            continue
        found.append(child)
        queue.extend(children.get(child, []))
    return sorted(found)


def device_files(paths: HostPaths, pid: int) -> tuple[set[int], bool]:
    """(/dev/nvidia<minor> minors open, whether /dev/nvidia-uvm is open). Needs the
    privilege that /proc/<pid>/fd needs (Denied otherwise)."""
    minors: set[int] = set()
    uvm = False
    for fd in list_dir(paths.pid(pid, "fd"), process_file=True):
        try:
            target = read_link(paths.pid(pid, "fd", fd))
        except (Gone, Missing):
            continue                   # closed while we looked
        match = _NVIDIA_DEV.match(target)
        if match:
            minors.add(int(match.group(1)))
        elif target == "/dev/nvidia-uvm":
            uvm = True
    return minors, uvm


def map_visible_devices(value: str, gpus) -> tuple[list[int], str]:
    """CUDA_VISIBLE_DEVICES -> NVML indices of `gpus` (objects with index and uuid).

    Integers are taken as NVML indices, which is CUDA's numbering only with
    CUDA_DEVICE_ORDER=PCI_BUS_ID (CUDA's default, FASTEST_FIRST, can differ on hosts with
    mixed GPUs); UUIDs (or unique prefixes) are exact. CUDA stops at the first invalid entry.
    """
    indices: list[int] = []
    notes: list[str] = []
    count = len(gpus)
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry.lstrip("-").isdigit():
            number = int(entry)
            if number < 0 or number >= count:
                notes.append(f"entry {entry} names no GPU: CUDA ignores it and all after it")
                break
            indices.append(number)
        elif entry.startswith("GPU-"):
            hits = [g.index for g in gpus if g.uuid and g.uuid.startswith(entry)]
            if len(hits) != 1:
                notes.append(f"entry {entry} matches {len(hits)} GPUs: CUDA stops there")
                break
            indices.append(hits[0])
        elif entry.startswith("MIG-"):
            notes.append(f"entry {entry} is a MIG instance (not mapped to a GPU here)")
        else:
            notes.append(f"entry {entry!r} is not a GPU index or UUID: CUDA stops there")
            break
    return indices, "; ".join(notes)


@dataclass
class TargetFacts:
    """What procfs says about a target's GPU use; slow to gather (fd and process scans), so
    the collector refreshes it on its slow schedule."""

    pid: int
    pids: list[int]
    nvml_pids: dict[int, int | None]
    namespace_reason: str = ""
    device_minors: set[int] | None = None
    uses_uvm: bool | None = None
    environment: dict[str, str] | None = None
    unavailable: dict[str, str] = field(default_factory=dict)


def gather_facts(paths: HostPaths, pid: int, caller: CallerView | None = None,
                 include_children: bool = True) -> TargetFacts:
    """Raises Gone when the target does not exist."""
    caller = caller or CallerView.of(paths)
    read_nspid(paths, pid)             # Gone if there is no such process
    pids = [pid] + (descendants(paths, pid) if include_children else [])
    facts = TargetFacts(pid, pids, {})
    reasons = []
    minors: set[int] = set()
    uvm = False
    fd_denied = ""
    for member in pids:
        try:
            facts.nvml_pids[member], reason = nvml_pid(paths, member, caller)
            if reason:
                reasons.append(reason)
        except SourceError:
            continue                   # a child exited meanwhile
        try:
            member_minors, member_uvm = device_files(paths, member)
            minors |= member_minors
            uvm = uvm or member_uvm
        except Denied as exc:
            fd_denied = f"permission denied reading /proc/<pid>/fd: {exc.hint}"
        except SourceError:
            continue
    facts.namespace_reason = reasons[0] if reasons else ""
    if fd_denied and not minors:
        facts.unavailable["device_files"] = fd_denied
    else:
        facts.device_minors, facts.uses_uvm = minors, uvm
    try:
        facts.environment = parse_environ(read_bytes(paths.pid(pid, "environ"), True), GPU_ENV)
    except Denied as exc:
        facts.unavailable["environment"] = f"permission denied: {exc.hint}"
    except SourceError as exc:
        facts.unavailable["environment"] = exc.describe()
    return facts


@dataclass
class TargetGpuUsage:
    """A target's GPU use. `memory_bytes` is None unless NVML could be asked and answered."""

    pid: int
    status: str                         # ok | none | unavailable (PID namespace) | unavailable
    reason: str = ""
    memory_bytes: int | None = None
    per_gpu: list[dict] = field(default_factory=list)   # {gpu_index, gpu_uuid, pid, used_bytes}
    gpus: list[int] = field(default_factory=list)       # NVML indices, all sources together
    sources: dict[str, list[int]] = field(default_factory=dict)
    cuda_visible_devices: str | None = None
    pids: list[int] = field(default_factory=list)
    nvml_pids: dict[int, int | None] = field(default_factory=dict)
    uses_cuda: bool | None = None
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def memory_text(self) -> str:
        if self.memory_bytes is not None:
            return f"{self.memory_bytes / 2**20:.0f} MiB"
        return self.status if self.status != STATUS_OK else "n/a"


def attribute(gpus, processes, facts: TargetFacts, lists_ok: bool = True,
              lists_error: str = "") -> TargetGpuUsage:
    """Match NVML's process entries (GpuProcess objects, pids in dsmon's namespace) to the
    target and its descendants. `gpus`: GpuSample objects (index, uuid, minor_number)."""
    usage = TargetGpuUsage(facts.pid, STATUS_NONE, pids=list(facts.pids),
                           nvml_pids=dict(facts.nvml_pids), uses_cuda=facts.uses_uvm,
                           unavailable=dict(facts.unavailable))
    wanted = {nv: pid for pid, nv in facts.nvml_pids.items() if nv is not None}
    matched = [p for p in processes if p.pid in wanted]
    for proc in matched:
        usage.per_gpu.append({"gpu_index": proc.gpu_index, "gpu_uuid": proc.gpu_uuid,
                              "pid": wanted[proc.pid], "nvml_pid": proc.pid,
                              "used_bytes": proc.used_bytes, "kind": proc.kind})
    sources: dict[str, list[int]] = {}
    sources["nvml"] = sorted({p.gpu_index for p in matched})
    if facts.device_minors is not None:
        by_minor = {g.minor_number: g.index for g in gpus if g.minor_number is not None}
        sources["device_files"] = sorted(by_minor[m] for m in facts.device_minors
                                         if m in by_minor)
        if facts.device_minors and not by_minor:
            usage.unavailable["device_files"] = (
                "the target holds /dev/nvidia" + ",".join(map(str, sorted(facts.device_minors)))
                + " open, but NVML gave no minor numbers to map them to GPUs")
    env = facts.environment or {}
    if "CUDA_VISIBLE_DEVICES" in env:
        usage.cuda_visible_devices = env["CUDA_VISIBLE_DEVICES"]
        indices, note = map_visible_devices(env["CUDA_VISIBLE_DEVICES"], gpus)
        sources["cuda_visible_devices"] = indices
        if note:
            usage.unavailable["cuda_visible_devices"] = note
    usage.sources = sources
    # NVML's list is the authority. Open device files are weaker: CUDA opens /dev/nvidia<N>
    # of every GPU at initialisation, also of GPUs CUDA_VISIBLE_DEVICES hides (seen on the
    # 2x H200 machine: a process with CUDA_VISIBLE_DEVICES=0 held /dev/nvidia0 and
    # /dev/nvidia1), so they are narrowed by CUDA_VISIBLE_DEVICES when it is known.
    if sources["nvml"]:
        used = set(sources["nvml"])
    else:
        used = set(sources.get("device_files", []))
        if "cuda_visible_devices" in sources:
            visible = set(sources["cuda_visible_devices"])
            used = (used & visible) if used else (visible if usage.uses_cuda else set())
    usage.gpus = sorted(used)

    if matched:
        usage.status = STATUS_OK
        sizes = [p.used_bytes for p in matched]
        if any(s is None for s in sizes):
            usage.memory_bytes = None
            usage.reason = ("NVML lists the target but not its memory (usedGpuMemory not "
                            "available: MIG mode, or a driver that hides it from this user)")
        else:
            usage.memory_bytes = sum(sizes)
        return usage
    if not lists_ok:
        usage.status = STATUS_UNAVAILABLE
        usage.reason = f"NVML's process lists could not be read: {lists_error}"
        return usage
    if not wanted:
        usage.status = STATUS_PIDNS
        usage.reason = (f"NVML lists only processes of dsmon's PID namespace, and "
                        f"{facts.namespace_reason or 'the target is not in it'}; {PIDNS_HINT}")
        return usage
    holds_gpu = bool(facts.uses_uvm) or bool(facts.device_minors)
    if not processes and holds_gpu:
        opened = ", ".join(["/dev/nvidia-uvm"] * bool(facts.uses_uvm)
                           + [f"/dev/nvidia{m}" for m in sorted(facts.device_minors or ())])
        usage.status = STATUS_PIDNS
        usage.reason = (f"NVML lists no process on any GPU although the target holds {opened} "
                        f"open: NVML hides processes outside its caller's PID namespace, so "
                        f"dsmon runs in another one than the target; {PIDNS_HINT}")
        return usage
    usage.status = STATUS_NONE
    usage.memory_bytes = 0
    usage.reason = "NVML lists no process of the target on any GPU"
    if facts.uses_uvm:
        usage.reason += (" (it has /dev/nvidia-uvm open: CUDA is loaded, but it holds no "
                         "context on a GPU)")
    return usage
