"""Finding the agent's targets: explicit pids, pidfiles, systemd units, cmdline patterns, or
auto-discovered inference processes, each under a stable `target` label across restarts."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from dsmon.agent.config import TargetSpec
from dsmon.collectors.process import parse_proc_cgroup, read_stat
from dsmon.collectors.runtimes import RuntimesCollector
from dsmon.engine.engines import detect_engine
from dsmon.paths import HostPaths
from dsmon.sources import SourceError, list_dir, read_bytes, read_text

# Engines auto-discovery follows; plain Python processes count only with torch loaded.
AUTO_ENGINES = ("vllm", "sglang", "tgi", "triton", "llamacpp", "ollama")
_UNIT = re.compile(r"/([^/]+)\.service(?:/|$)")


@dataclass(frozen=True)
class Resolved:
    """One target found: its label, pid and start time (the identity), how it was found."""

    label: str
    pid: int
    start_ticks: int
    spec: TargetSpec
    engine: str = ""


@dataclass
class ProcessEntry:
    pid: int
    ppid: int
    start_ticks: int
    comm: str
    cmdline: list[str]
    exe: str | None
    cgroup: str


class TargetResolver:
    def __init__(self, paths: HostPaths, specs: tuple[TargetSpec, ...], own_pid: int | None = None):
        self.paths = paths
        self.specs = specs
        self.own_pid = own_pid if own_pid is not None else os.getpid()
        self.problems: dict[str, str] = {}   # spec -> why it found nothing (for the landing page)
        self._gpu_pids: set[int] = set()

    def resolve(self, gpu_pids=()) -> list[Resolved]:
        """`gpu_pids`: processes NVML lists as GPU users; `auto` follows them too."""
        self.problems = {}
        self._gpu_pids = set(gpu_pids)
        needs_scan = any(s.kind in ("unit", "pattern", "auto") for s in self.specs)
        processes = self._scan() if needs_scan else {}
        found: list[Resolved] = []
        for spec in self.specs:
            if spec.kind == "pid":
                found += self._one(spec, int(spec.value))
            elif spec.kind == "pidfile":
                try:
                    text = read_text(spec.value).strip().split()[0]
                    found += self._one(spec, int(text))
                except (SourceError, ValueError, IndexError) as exc:
                    self.problems[spec.describe()] = f"cannot read a pid from {spec.value}: {exc}"
            elif spec.kind == "unit":
                found += self._top_level(spec, [p for p in processes.values()
                                                if _unit_of(p.cgroup) == spec.value.removesuffix(".service")],
                                         processes)
            elif spec.kind == "pattern":
                regex = re.compile(spec.value)
                found += self._top_level(spec, [p for p in processes.values()
                                                if regex.search(" ".join(p.cmdline) or p.comm)],
                                         processes)
            else:
                found += self._auto(spec, processes)
        return _unique_labels(found)

    def _one(self, spec: TargetSpec, pid: int) -> list[Resolved]:
        try:
            stat = read_stat(self.paths, pid)
        except SourceError as exc:
            self.problems[spec.describe()] = f"pid {pid}: {exc.describe()}"
            return []
        if stat.state == "Z":
            # It exited; its parent has not reaped it yet. Following it would read nothing.
            self.problems[spec.describe()] = f"pid {pid} has exited (zombie)"
            return []
        return [Resolved(spec.name, pid, stat.start_ticks, spec)]

    def _top_level(self, spec, matches: list[ProcessEntry], processes) -> list[Resolved]:
        """The oldest matching process whose parent does not match too (the server, not its
        workers); a spec names one target."""
        pids = {p.pid for p in matches}
        roots = sorted((p for p in matches if p.ppid not in pids), key=lambda p: p.start_ticks)
        if not roots:
            self.problems[spec.describe()] = "no matching process"
            return []
        root = roots[0]
        return [Resolved(spec.name, root.pid, root.start_ticks, spec,
                         detect_engine(root.cmdline, root.exe, root.comm))]

    def _auto(self, spec: TargetSpec, processes: dict[int, ProcessEntry]) -> list[Resolved]:
        matches: list[tuple[ProcessEntry, str]] = []
        for entry in processes.values():
            engine = detect_engine(entry.cmdline, entry.exe, entry.comm)
            if engine == "python" and self._has_torch(entry.pid):
                engine = "pytorch"
            if engine in AUTO_ENGINES or engine == "pytorch":
                matches.append((entry, engine))
            elif entry.pid in self._gpu_pids:
                # Any NVML compute process is an inference candidate, whatever its name.
                matches.append((entry, engine or "gpu"))
        pids = {entry.pid for entry, _ in matches}
        found = []
        for entry, engine in sorted(matches, key=lambda m: m[0].start_ticks):
            if entry.ppid in pids:
                continue  # a worker of a server already followed
            label = spec.name or _unit_of(entry.cgroup) or \
                (engine if engine != "gpu" else _label(entry.comm))
            found.append(Resolved(label, entry.pid, entry.start_ticks, spec, engine))
        if not found:
            self.problems["auto"] = "no inference process found (host-only mode)"
        return found

    def _has_torch(self, pid: int) -> bool:
        try:
            return RuntimesCollector(self.paths, pid).collect().torch
        except SourceError:
            return False

    def _scan(self) -> dict[int, ProcessEntry]:
        processes: dict[int, ProcessEntry] = {}
        excluded = {self.own_pid}
        for name in list_dir(self.paths.procfs):
            if not name.isdigit():
                continue
            pid = int(name)
            try:
                stat = read_stat(self.paths, pid)
                if stat.ppid in excluded or pid in excluded or stat.state == "Z":
                    continue
                raw = read_bytes(self.paths.pid(pid, "cmdline"), process_file=True)
                if not raw:
                    continue  # kernel threads
                cmdline = [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]
                cgroups = parse_proc_cgroup(read_text(self.paths.pid(pid, "cgroup"), True))
            except SourceError:
                continue
            try:
                exe = os.readlink(self.paths.pid(pid, "exe"))
            except OSError:
                exe = None
            cgroup = next((p for _, c, p in cgroups if not c), None) or \
                next((p for _, c, p in cgroups if "memory" in c), "")
            processes[pid] = ProcessEntry(pid, stat.ppid, stat.start_ticks, stat.comm, cmdline,
                                          exe, cgroup)
        return processes


def _unit_of(cgroup_path: str) -> str | None:
    """The innermost systemd service in a cgroup path ("/system.slice/vllm.service" -> vllm)."""
    units = _UNIT.findall(cgroup_path or "")
    return units[-1] if units else None


def _label(comm: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:-]+", "_", comm).strip("_")[:64] or "gpu"


def _unique_labels(found: list[Resolved]) -> list[Resolved]:
    """Two targets with one label become label, label-2, ... in order of start time."""
    seen: dict[str, int] = {}
    unique = []
    for item in sorted(found, key=lambda r: r.start_ticks):
        count = seen.get(item.label, 0) + 1
        seen[item.label] = count
        if count > 1:
            item = Resolved(f"{item.label}-{count}", item.pid, item.start_ticks, item.spec,
                            item.engine)
        unique.append(item)
    return unique
