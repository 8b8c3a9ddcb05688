"""One sampling pipeline for the host and one target process, used by every driver.

`TargetSampler.static()` reads what does not change (topology, identity, environment,
cgroup layout); `tick()` runs every per-sample collector once. Each collector's run is a
`Batch` with a status, so a failing source is reported, never turned into zeros.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from dsmon.collectors.cgroup import CgroupCollector, CgroupLayout, resolve_layout
from dsmon.collectors.cpu import CpuCollector, clock_ticks
from dsmon.collectors.memory import MemoryCollector, VmstatCollector
from dsmon.collectors.pressure import PressureCollector
from dsmon.collectors.runtimes import RuntimesCollector
from dsmon.collectors.process import Identity, ProcessCollector, ProcessGone
from dsmon.collectors.threads import ThreadSampler
from dsmon.collectors.topology import TopologyCollector
from dsmon.model import Batch, Status, run_collector
from dsmon.paths import HostPaths
from dsmon.sources import Gone, SourceError, read_text

# Every host collector that runs on each tick, in order. Nothing registers itself on import.
HOST_COLLECTORS = (CpuCollector, MemoryCollector, VmstatCollector, PressureCollector)
# The loaded native runtimes (torch, BLAS, OpenMP) are read at start and again this rarely:
# a library imported after start shows up within a minute.
RUNTIMES_REREAD_S = 60.0


@dataclass
class Tick:
    mono_ts: float
    wall_ts: float
    batches: dict[str, Batch]
    target_gone: str = ""        # why the target could not be sampled any more

    def data(self, name: str):
        batch = self.batches.get(name)
        return batch.data if batch is not None and batch.ok else None


@dataclass
class StaticFacts:
    hostname: str | None
    kernel: str | None
    topology: Batch
    identity: Identity
    environment: Batch
    cgroup_layout: CgroupLayout
    numa_start: Batch
    hz: int
    paths: HostPaths | None = None
    notes: list[str] = field(default_factory=list)
    runtimes: Batch | None = None      # NativeRuntimes from /proc/PID/maps


class HostSampler:
    """Runs the host-wide collectors once per tick, shared by every target of an agent."""

    def __init__(self, paths: HostPaths):
        self.collectors = [cls(paths) for cls in HOST_COLLECTORS]

    def sample(self) -> dict[str, Batch]:
        return {c.name: run_collector(c.name, c.collect) for c in self.collectors}


class TargetNotFound(Exception):
    """The pid names no process (or not the one we were asked about)."""


class TargetSampler:
    def __init__(self, paths: HostPaths, pid: int, max_threads: int = 2048,
                 thread_time_budget_s: float = 0.5, thread_pass_sweeps: int | None = None,
                 thread_relist_every: int = 1, thread_switches_every_capped: int | None = None,
                 runtimes_reread_s: float = RUNTIMES_REREAD_S, fd_budget=None):
        self.paths = paths
        self.pid = pid
        self.hz = clock_ticks()
        self.process = ProcessCollector(paths, pid, self.hz)
        self.threads = ThreadSampler(paths, pid, max_threads=max_threads,
                                     time_budget_s=thread_time_budget_s,
                                     pass_sweeps=thread_pass_sweeps,
                                     relist_every=thread_relist_every,
                                     switches_every_capped=thread_switches_every_capped,
                                     fd_budget=fd_budget)
        self.host = HostSampler(paths)
        self._cgroup: CgroupCollector | None = None
        self._started_as_zombie = False
        self.runtimes = RuntimesCollector(paths, pid)
        self.runtimes_reread_s = runtimes_reread_s
        self._runtimes_read_at = 0.0

    def close(self) -> None:
        self.threads.close()

    def static(self) -> StaticFacts:
        try:
            identity = self.process.identity()
        except Gone as exc:
            raise TargetNotFound(f"no process with pid {self.pid} ({exc.describe()})") from None
        self._started_as_zombie = identity.state == "Z"
        layout = resolve_layout(self.paths, identity.cgroups)
        # A kernel thread sits in the root cgroup: its memory and CPU figures are the host's.
        self._cgroup = None if identity.kernel_thread else CgroupCollector(self.paths, layout)
        return StaticFacts(
            hostname=self._optional_text(self.paths.proc("sys", "kernel", "hostname")),
            kernel=self._optional_text(self.paths.proc("sys", "kernel", "osrelease")),
            topology=run_collector("topology", TopologyCollector(self.paths).collect),
            identity=identity,
            environment=run_collector("environment", self.process.environment),
            cgroup_layout=layout,
            numa_start=self.numa(),
            hz=self.hz,
            paths=self.paths,
            runtimes=self._read_runtimes(time.monotonic()),
        )

    def _read_runtimes(self, now: float) -> Batch:
        self._runtimes_read_at = now
        return run_collector("runtimes", self.runtimes.collect)

    def numa(self) -> Batch:
        return run_collector("numa_maps", self.process.numa_memory)

    def tick(self, read_switches: bool | None = None,
             host_batches: dict[str, Batch] | None = None) -> Tick:
        """Sample the target; the host collectors too, unless the caller already ran them."""
        mono, wall = time.monotonic(), time.time()
        batches = dict(host_batches) if host_batches is not None else self.host.sample()
        process = run_collector("process", self.process.sample, no_data_kinds=())
        batches["process"] = process
        gone = ""
        if process.status is Status.FAILED and process.error.startswith("gone"):
            gone = process.error
        elif process.ok and process.data.state == "Z" and not self._started_as_zombie:
            # Exited during the window; its parent has not reaped it yet.
            gone = "gone: the process exited (a zombie until its parent reaps it)"
            batches["process"] = Batch("process", process.mono_ts, process.wall_ts,
                                       Status.FAILED, None, gone)
        else:
            batches["threads"] = run_collector(
                "threads", lambda: self._sweep(read_switches), no_data_kinds=())
            if self._cgroup is not None:
                batches["cgroup"] = run_collector("cgroup", self._cgroup.collect)
            if mono - self._runtimes_read_at >= self.runtimes_reread_s:
                batches["runtimes"] = self._read_runtimes(mono)
            if batches["threads"].status is Status.FAILED and \
                    batches["threads"].error.startswith("gone"):
                gone = batches["threads"].error
            elif self._target_replaced():
                gone = "gone: pid was reused by another process"
        return Tick(mono, wall, batches, gone)

    def cgroup_sample(self) -> Batch | None:
        """One read of the target's cgroup, also after the process exited (its cgroup may
        outlive it, e.g. to tell an OOM kill from a clean exit)."""
        if self._cgroup is None:
            return None
        return run_collector("cgroup", self._cgroup.collect)

    def _sweep(self, read_switches):
        sweep = self.threads.sample(read_switches)
        return (sweep, dict(sweep.unavailable)) if sweep.unavailable else sweep

    def _target_replaced(self) -> bool:
        try:
            self.process.check_identity()
        except ProcessGone:
            return True
        except SourceError:
            return False
        return False

    def _optional_text(self, path: str) -> str | None:
        try:
            return read_text(path).strip() or None
        except SourceError:
            return None
