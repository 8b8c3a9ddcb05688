"""The target's cgroup, v1 or v2: memory limit, usage, working set, OOM kills, CPU quota and
throttling, cpuset, and (v2) the cgroup's own pressure stall information.

Limits are effective limits: the smallest along the path from the target's cgroup up to the
root of the hierarchy, because a container's limit is often set on a parent (the pod).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from dsmon.collectors.pressure import Pressure, read_pressure_dir
from dsmon.paths import HostPaths
from dsmon.sources import Malformed, Missing, SourceError, parse_cpulist, read_text

# v1 reports "no limit" as PAGE_COUNTER_MAX rounded to the page size (9223372036854771712 on
# x86_64 with 4 KiB pages); anything at or above 2**62 is that sentinel on any page size.
V1_UNLIMITED = 1 << 62


def parse_limit(text: str) -> int | None:
    """A memory or pids limit: None when unlimited ("max", -1, or the v1 sentinel)."""
    value = text.strip()
    if value in ("max", "-1", ""):
        return None
    number = int(value)
    return None if number < 0 or number >= V1_UNLIMITED else number


def parse_flat_keyed(text: str) -> dict[str, int]:
    """memory.stat, cpu.stat, memory.events, memory.oom_control: "key value" lines."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                values[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return values


def parse_cpu_max(text: str) -> float | None:
    """v2 cpu.max ("max 100000" or "200000 100000") -> quota in cores, None when unlimited."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    if len(parts) != 2:
        raise Malformed("cpu.max", f"unexpected {text!r}")
    return int(parts[0]) / int(parts[1])


@dataclass
class CgroupLayout:
    """Where the target's cgroup directories are, per controller."""

    version: str                           # "v1", "v2" or "hybrid"
    memory: str | None = None              # directory, v1 or v2
    memory_v2: bool = False
    cpu: str | None = None
    cpu_v2: bool = False
    cpuset: str | None = None
    cpuset_v2: bool = False
    unified: str | None = None             # the v2 directory (for PSI), if any
    cgroup_path: str | None = None         # as /proc/<pid>/cgroup names it, e.g. /system.slice/x
    mount_roots: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def display_path(self) -> str | None:
        return self.cgroup_path


@dataclass
class CgroupSample:
    version: str
    path: str | None
    memory_limit_bytes: int | None = None     # the binding limit along the path; None = none
    memory_limit_at: str | None = None        # the cgroup (path as in /proc/<pid>/cgroup) setting it
    memory_headroom_bytes: int | None = None  # room before the binding level reaches its limit
    limit_unreclaimable_bytes: int | None = None  # unreclaimable memory of the binding level
    memory_usage_bytes: int | None = None
    inactive_file_bytes: int | None = None
    active_file_bytes: int | None = None
    # usage - inactive file: the kubelet's "working set", what Kubernetes evicts on
    working_set_bytes: int | None = None
    # usage - all page cache (active and inactive file): what the OOM killer counts. File
    # pages read twice move to the active list, yet the kernel reclaims them before it OOMs
    # (measured: a 200 MiB cgroup with 170 MiB of re-read cache took 120 MiB more, no kill).
    # tmpfs and shared memory sit on the anonymous lists, so they stay counted.
    unreclaimable_bytes: int | None = None
    swap_usage_bytes: int | None = None
    oom_kills: int | None = None
    oom_events: int | None = None
    cpu_quota_cores: float | None = None       # effective; None = unlimited
    cpu_periods: int | None = None
    cpu_throttled_periods: int | None = None
    cpu_throttled_seconds: float | None = None
    cpuset_cpus: list[int] | None = None
    cpuset_mems: list[int] | None = None
    pressure: dict[str, Pressure] | None = None


def resolve_layout(paths: HostPaths, entries: list[tuple[str, list[str], str]]) -> CgroupLayout:
    base = paths.sys("fs", "cgroup")
    v1_entries = [(controllers, path) for hierarchy, controllers, path in entries if controllers]
    v2_path = next((path for hierarchy, controllers, path in entries
                    if hierarchy == "0" and not controllers), None)
    pure_v2 = os.path.exists(os.path.join(base, "cgroup.controllers"))
    if pure_v2:
        version = "v2"
    elif v1_entries:
        version = "hybrid" if v2_path is not None else "v1"
    else:
        version = "v2" if v2_path is not None else "none"
    layout = CgroupLayout(version)
    memory_entry = next((path for _, controllers, path in entries if "memory" in controllers), None)
    layout.cgroup_path = memory_entry or v2_path or next((p for _, c, p in entries if c), None)

    if v2_path is not None:
        unified_root = base if pure_v2 else os.path.join(base, "unified")
        directory = _join(unified_root, v2_path)
        if os.path.isdir(directory):
            layout.unified = directory
            layout.mount_roots["unified"] = unified_root
        elif pure_v2:
            layout.notes.append(f"cgroup {v2_path} not found under {unified_root}: dsmon may run "
                                "in another cgroup namespace; mount the host's /sys/fs/cgroup")

    for controllers, path in v1_entries:
        candidates = [",".join(controllers)] + controllers
        for name in candidates:
            root = os.path.join(base, name)
            directory = _join(root, path)
            if os.path.isdir(directory):
                for controller in controllers:
                    layout.mount_roots[controller] = root
                    if controller == "memory":
                        layout.memory = directory
                    elif controller == "cpu":
                        layout.cpu = directory
                    elif controller == "cpuset":
                        layout.cpuset = directory
                break
        else:
            if {"memory", "cpu", "cpuset"} & set(controllers):
                layout.notes.append(f"cgroup {','.join(controllers)}:{path} not found under {base}")

    unified = layout.unified
    if unified is not None:
        if layout.memory is None and os.path.exists(os.path.join(unified, "memory.current")):
            layout.memory, layout.memory_v2 = unified, True
            layout.mount_roots["memory"] = layout.mount_roots["unified"]
        if layout.cpu is None and os.path.exists(os.path.join(unified, "cpu.stat")):
            layout.cpu, layout.cpu_v2 = unified, True
            layout.mount_roots["cpu"] = layout.mount_roots["unified"]
        if layout.cpuset is None and os.path.exists(os.path.join(unified, "cpuset.cpus.effective")):
            layout.cpuset, layout.cpuset_v2 = unified, True
    return layout


def _file_cache(directory: str, v2: bool) -> tuple[int | None, int | None, int]:
    """(inactive, active) file pages and reclaimable slab (dentries and inodes, which the
    kernel's shrinkers free before an OOM kill: writing many files grows it); v1's total_
    counters include descendants, like usage, and v1 does not split slab out."""
    stat = parse_flat_keyed(read_text(os.path.join(directory, "memory.stat")))
    if v2:
        return stat.get("inactive_file"), stat.get("active_file"), stat.get("slab_reclaimable", 0)
    return (stat.get("total_inactive_file", stat.get("inactive_file")),
            stat.get("total_active_file", stat.get("active_file")), 0)


def _join(root: str, cgroup_path: str) -> str:
    return os.path.normpath(os.path.join(root, cgroup_path.lstrip("/")))


def _ancestors(directory: str, root: str):
    """The directory, then each parent up to and including the hierarchy's root."""
    current = directory
    while True:
        yield current
        if os.path.normpath(current) == os.path.normpath(root) or len(current) <= len(root):
            return
        current = os.path.dirname(current)


class CgroupCollector:
    name = "cgroup"

    # Limits change rarely; the ancestors' limit files are re-read every this many samples.
    LIMIT_REFRESH = 10

    def __init__(self, paths: HostPaths, layout: CgroupLayout):
        self.paths = paths
        self.layout = layout
        self._limits: dict[str, object] = {}
        self._samples = 0

    def _limit(self, path: str, parse):
        """A limit file's parsed value, cached between refreshes (Missing is cached too)."""
        if path not in self._limits:
            try:
                self._limits[path] = parse(read_text(path))
            except Missing as exc:
                self._limits[path] = exc
        value = self._limits[path]
        if isinstance(value, Missing):
            raise value
        return value

    def collect(self):
        layout = self.layout
        if layout.memory is None and layout.cpu is None and layout.unified is None:
            raise Missing(self.paths.sys("fs", "cgroup"), "; ".join(layout.notes)
                          or "the target's cgroup directories were not found")
        sample = CgroupSample(layout.version, layout.display_path)
        unavailable: dict[str, str] = {}
        if self._samples % self.LIMIT_REFRESH == 0:
            self._limits.clear()
        self._samples += 1
        for part, reader in (("memory", self._memory), ("cpu", self._cpu),
                             ("cpuset", self._cpuset), ("pressure", self._pressure)):
            try:
                reader(sample)
            except SourceError as exc:
                unavailable[f"cgroup_{part}"] = exc.describe()
        for note in layout.notes:
            unavailable.setdefault("cgroup_path", note)
        return sample, unavailable

    def _memory(self, sample: CgroupSample) -> None:
        directory = self.layout.memory
        if directory is None:
            return
        v2 = self.layout.memory_v2
        root = self.layout.mount_roots.get("memory", directory)
        limit_file = "memory.max" if v2 else "memory.limit_in_bytes"
        usage_file = "memory.current" if v2 else "memory.usage_in_bytes"
        sample.memory_usage_bytes = int(read_text(os.path.join(directory, usage_file)))
        inactive, active, slab = _file_cache(directory, v2)
        sample.inactive_file_bytes, sample.active_file_bytes = inactive, active
        if inactive is not None:
            sample.working_set_bytes = max(0, sample.memory_usage_bytes - inactive)
            sample.unreclaimable_bytes = max(
                0, sample.memory_usage_bytes - inactive - (active or 0) - slab)
        # The kernel OOM-kills when any level on the path reaches its own limit, and a parent's
        # usage includes its other children: the binding level is the one with least headroom.
        for level in _ancestors(directory, root):
            try:
                limit = self._limit(os.path.join(level, limit_file), parse_limit)
            except Missing:
                continue  # the v2 root has no memory.max
            if limit is None:
                continue
            if level == directory:
                level_used = sample.unreclaimable_bytes
            else:
                level_usage = int(read_text(os.path.join(level, usage_file)))
                level_inactive, level_active, level_slab = _file_cache(level, v2)
                level_used = max(0, level_usage - (level_inactive or 0) - (level_active or 0)
                                 - level_slab)
            if level_used is None:
                continue
            headroom = max(0, limit - level_used)
            if sample.memory_headroom_bytes is None or headroom < sample.memory_headroom_bytes:
                sample.memory_headroom_bytes = headroom
                sample.memory_limit_bytes = limit
                sample.limit_unreclaimable_bytes = level_used
                relative = os.path.relpath(level, root)
                sample.memory_limit_at = "/" if relative == "." else "/" + relative
        events_file = "memory.events" if v2 else "memory.oom_control"
        try:
            events = parse_flat_keyed(read_text(os.path.join(directory, events_file)))
            sample.oom_kills = events.get("oom_kill")
            sample.oom_events = events.get("oom") if v2 else events.get("under_oom")
        except Missing:
            pass
        if v2:
            try:
                sample.swap_usage_bytes = int(read_text(os.path.join(directory, "memory.swap.current")))
            except Missing:
                pass

    def _cpu(self, sample: CgroupSample) -> None:
        directory = self.layout.cpu
        if directory is None:
            return
        v2 = self.layout.cpu_v2
        root = self.layout.mount_roots.get("cpu", directory)
        for level in _ancestors(directory, root):
            try:
                if v2:
                    quota = self._limit(os.path.join(level, "cpu.max"), parse_cpu_max)
                else:
                    quota_us = self._limit(os.path.join(level, "cpu.cfs_quota_us"), int)
                    period_us = self._limit(os.path.join(level, "cpu.cfs_period_us"), int)
                    quota = quota_us / period_us if quota_us > 0 else None
            except Missing:
                continue
            if quota is not None and (sample.cpu_quota_cores is None
                                      or quota < sample.cpu_quota_cores):
                sample.cpu_quota_cores = quota
        stat = parse_flat_keyed(read_text(os.path.join(directory, "cpu.stat")))
        sample.cpu_periods = stat.get("nr_periods")
        sample.cpu_throttled_periods = stat.get("nr_throttled")
        if "throttled_usec" in stat:
            sample.cpu_throttled_seconds = stat["throttled_usec"] / 1e6
        elif "throttled_time" in stat:
            sample.cpu_throttled_seconds = stat["throttled_time"] / 1e9

    def _cpuset(self, sample: CgroupSample) -> None:
        directory = self.layout.cpuset
        if directory is None:
            return
        if self.layout.cpuset_v2:
            cpus_file, mems_file = "cpuset.cpus.effective", "cpuset.mems.effective"
        else:
            cpus_file = "cpuset.effective_cpus"
            mems_file = "cpuset.effective_mems"
            if not os.path.exists(os.path.join(directory, cpus_file)):
                cpus_file, mems_file = "cpuset.cpus", "cpuset.mems"
        sample.cpuset_cpus = parse_cpulist(read_text(os.path.join(directory, cpus_file)))
        try:
            sample.cpuset_mems = parse_cpulist(read_text(os.path.join(directory, mems_file)))
        except Missing:
            pass

    def _pressure(self, sample: CgroupSample) -> None:
        directory = self.layout.unified
        if directory is None:
            return
        found = read_pressure_dir({resource: os.path.join(directory, f"{resource}.pressure")
                                   for resource in ("cpu", "memory", "io")})
        sample.pressure = found or None
