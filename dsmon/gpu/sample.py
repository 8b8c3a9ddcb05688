"""Per-GPU samples and the GPU collector (fast and slow schedule; the NVML polling itself is
`dsmon.gpu.poll.NvmlPoller`'s, the snapshot's assembly this module's).

`GpuCollector.collect()` returns `(GpuSnapshot, unavailable)` for `dsmon.model.run_collector`,
or raises `GpuUnavailable` (a SourceError) when NVML cannot be used: no driver -> NO_DATA,
a broken driver -> FAILED; the message says what to fix and is logged once by `Nvml`.

Schedules (the cost of each NVML getter differs by three orders of magnitude: most answer in
10-100 us, utilisation took ~3 ms on one H100 host, PCIe throughput ~20 ms, the first CPU
affinity call ~30 ms):

- **fast**, every collect(): device count, memory (v2 struct), utilisation, temperature,
  power, clock event reasons, SM clock, compute processes, and one non-blocking XID poll.
  A fast getter whose median latency on this host exceeds `fast_budget_us` moves to the slow
  schedule (`snapshot.schedule["demoted"]` says which and why).
- **slow**, every `slow_interval_s` (inline in collect(), or from the agent's slow executor
  with `collect_slow()` when `slow_inline=False`): power limit, memory clock, PCIe link
  generation/width, ECC mode and error counts, remapped rows, MIG mode, graphics processes,
  the target's procfs facts; PCIe throughput only with `pcie_throughput=True`.
- **once per enumeration** (first collect, and whenever the GPU count changes): identity
  (name, uuid, bus id, minor number) and the topology (dsmon.gpu.topology).

Absence is None plus a reason, never 0: `GpuSample.unsupported` (the GPU or driver does not
support the question: asked once, then not again) and `GpuSample.unavailable` (an error).
Units are dsmon's base units: bytes, ratios 0-1, watts, hertz, degrees Celsius.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field

from dsmon.gpu.nvml import CLOCK_EVENT_REASONS, GpuUnavailable, Nvml, as_nvml
from dsmon.gpu.poll import FAST_CALLS, SLOW_CALLS, GpuState, NvmlPoller
from dsmon.gpu.processes import (
    CallerView,
    TargetFacts,
    TargetGpuUsage,
    attribute,
    gather_facts,
)
from dsmon.paths import HostPaths
from dsmon.sources import Gone, SourceError

# Clock event reasons that mean the GPU runs slower than asked (gpu_idle and the
# applications-clocks setting are not slowdowns).
SLOWDOWN_REASONS = ("hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown",
                    "sw_thermal_slowdown", "sw_power_cap")

# XID codes (NVIDIA's Xid catalogue) that mean the GPU or its memory is in trouble.
XID_MEANING = {
    13: "graphics engine exception (often an application fault)",
    31: "GPU memory page fault (often an application fault)",
    43: "GPU stopped processing",
    45: "preemptive cleanup after a fault",
    48: "double-bit ECC error",
    61: "internal micro-controller breakpoint/warning",
    62: "internal micro-controller halt",
    63: "ECC page retirement or row remapping recorded",
    64: "ECC page retirement or row remapping failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}
XID_CRITICAL = {43, 48, 62, 64, 74, 79, 95, 119, 120}


@dataclass
class GpuProcess:
    """One entry of NVML's process list. `pid` is in dsmon's PID namespace."""

    gpu_index: int
    gpu_uuid: str | None
    pid: int
    used_bytes: int | None
    kind: str = "compute"


@dataclass
class XidEvent:
    gpu_index: int | None
    gpu_uuid: str | None
    xid: int
    wall_ts: float
    meaning: str


@dataclass
class GpuSample:
    index: int
    uuid: str | None = None
    name: str | None = None
    bus_id: str | None = None
    minor_number: int | None = None
    lost: bool = False
    memory_total_bytes: int | None = None
    memory_reserved_bytes: int | None = None
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    memory_struct: str | None = None          # "v2", or "v1" (used includes reserved)
    utilization_gpu_ratio: float | None = None
    utilization_memory_ratio: float | None = None
    temperature_celsius: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    sm_clock_hz: float | None = None
    memory_clock_hz: float | None = None
    clock_event_reasons: list[str] | None = None
    clock_event_mask: int | None = None
    pcie_gen_current: int | None = None
    pcie_gen_max: int | None = None
    pcie_width_current: int | None = None
    pcie_width_max: int | None = None
    ecc_enabled: bool | None = None
    ecc_pending: bool | None = None
    ecc_volatile_corrected: int | None = None
    ecc_volatile_uncorrected: int | None = None
    ecc_aggregate_corrected: int | None = None
    ecc_aggregate_uncorrected: int | None = None
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    mig_enabled: bool | None = None
    mig_pending: bool | None = None
    pcie_tx_bytes_per_second: float | None = None
    pcie_rx_bytes_per_second: float | None = None
    processes: list[GpuProcess] = field(default_factory=list)
    slow_age_seconds: float | None = None     # how old the slow-schedule fields are
    unsupported: dict[str, str] = field(default_factory=dict)   # NVML question -> why
    unavailable: dict[str, str] = field(default_factory=dict)   # NVML question -> error

    @property
    def label(self) -> str:
        parts = [f"GPU {self.index}"]
        details = [p for p in (self.name, self.bus_id, self.uuid) if p]
        return parts[0] + (f" ({', '.join(details)})" if details else "")


@dataclass
class GpuSnapshot:
    driver_version: str | None
    nvml_version: str | None
    cuda_driver_version: int | None
    device_count: int
    max_device_count: int                     # the most GPUs seen since the collector started
    gpus: list[GpuSample]
    processes: list[GpuProcess]
    missing: list[dict] = field(default_factory=list)   # GPUs seen before, gone now
    xid_events: list[XidEvent] = field(default_factory=list)  # this tick's
    recent_xids: list[XidEvent] = field(default_factory=list)
    targets: dict[int, TargetGpuUsage] = field(default_factory=dict)
    schedule: dict = field(default_factory=dict)
    fast_seconds: float = 0.0                 # NVML time of this tick's fast part
    fast_seconds_per_gpu: float | None = None
    slow_seconds: float = 0.0                 # NVML time of slow work done in this tick
    xid_status: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class GpuCollector:
    """Samples every GPU NVML sees (see the module docstring for the schedules): the polling
    is `dsmon.gpu.poll.NvmlPoller`'s; this class adds the targets' procfs facts and assembles
    each tick's `GpuSnapshot`."""

    name = "gpu"

    def __init__(self, paths: HostPaths | None = None, nvml=None, targets=(),
                 slow_interval_s: float = 30.0, fast_budget_us: float = 250.0,
                 slow_inline: bool = True, pcie_throughput: bool = False,
                 include_children: bool = True, topology: bool = True,
                 clock=time.monotonic, wall=time.time, xid_window_s: float = 600.0):
        self.paths = paths or HostPaths()
        self.nvml: Nvml = as_nvml(nvml)
        self.poller = NvmlPoller(self.nvml, self.paths, slow_interval_s, fast_budget_us,
                                 pcie_throughput, topology, clock)
        self.targets = list(targets)
        self.slow_inline = slow_inline
        self.include_children = include_children
        self.clock = clock
        self.wall = wall
        self.xid_window_s = xid_window_s
        self.lock = threading.RLock()
        self._facts: dict[int, TargetFacts] = {}
        self._caller: CallerView | None = None
        self._recent_xids: list[XidEvent] = []

    @property
    def topology(self):
        """dsmon.gpu.topology.GpuTopology, read once per enumeration (None until then)."""
        return self.poller.topology

    # -- public ------------------------------------------------------------------------------

    def set_targets(self, pids) -> None:
        with self.lock:
            self.targets = list(pids)
            self._facts = {p: f for p, f in self._facts.items() if p in self.targets}

    def collect(self):
        """One fast tick (plus the slow work when due and slow_inline). Returns
        (GpuSnapshot, unavailable); raises GpuUnavailable when NVML cannot be used."""
        self.nvml.ensure()
        with self.lock:
            started = time.perf_counter()
            xids = self._xid_events(self.poller.poll_fast())
            fast_seconds = time.perf_counter() - started
            slow_seconds = 0.0
            if self.slow_inline and self.poller.slow_due:
                slow_seconds = self._slow()
            elif any(pid not in self._facts for pid in self.targets):
                self._refresh_facts()         # a new target: procfs only, no NVML
            return self._snapshot(xids, fast_seconds, slow_seconds)

    def collect_slow(self) -> float:
        """The slow schedule's work, for an agent that runs it on a slow executor. Returns the
        seconds it took."""
        self.nvml.ensure()
        with self.lock:
            self.poller.ensure_enumerated()
            return self._slow()

    def close(self) -> None:
        pass

    def _slow(self) -> float:
        started = time.perf_counter()
        self.poller.poll_slow()
        self._refresh_facts()
        return time.perf_counter() - started

    def _refresh_facts(self) -> None:
        if not self.targets:
            return
        if self._caller is None:
            self._caller = CallerView.of(self.paths)
        for pid in self.targets:
            try:
                self._facts[pid] = gather_facts(self.paths, pid, self._caller,
                                                self.include_children)
            except Gone:
                self._facts.pop(pid, None)
            except SourceError as exc:
                self._facts[pid] = TargetFacts(pid, [pid], {},
                                               unavailable={"target": exc.describe()})

    def _xid_events(self, raw: list[dict]) -> list[XidEvent]:
        """NVML's XID events, named, and the recent ones kept for `xid_window_s`."""
        now = self.wall()
        uuids = {s.index: s.identity.get("uuid") for s in self.poller.states}
        events = []
        for item in raw:
            index = item.get("index")
            xid = int(item.get("xid", 0))
            events.append(XidEvent(index, uuids.get(index), xid, now,
                                   XID_MEANING.get(xid, "see NVIDIA's Xid catalogue")))
        if events or self._recent_xids:
            self._recent_xids = [e for e in self._recent_xids + events
                                 if now - e.wall_ts <= self.xid_window_s][-100:]
        return events

    # -- the snapshot ------------------------------------------------------------------------

    def _snapshot(self, xids, fast_seconds: float, slow_seconds: float):
        poller = self.poller
        now = self.clock()
        gpus = [assemble_sample(s, now) for s in poller.states]
        processes = [p for g in gpus for p in g.processes]
        current = {g.uuid for g in gpus if g.uuid}
        missing = []
        if poller.count is not None and poller.count < poller.max_count:
            missing = [dict(ident) for uuid, ident in poller.seen.items() if uuid not in current]
        snapshot = GpuSnapshot(
            driver_version=poller.system.get("driver_version"),
            nvml_version=poller.system.get("nvml_version"),
            cuda_driver_version=poller.system.get("cuda_driver_version"),
            device_count=poller.count or 0, max_device_count=poller.max_count, gpus=gpus,
            processes=processes, missing=missing, xid_events=xids,
            recent_xids=list(self._recent_xids),
            fast_seconds=fast_seconds, slow_seconds=slow_seconds,
            fast_seconds_per_gpu=(fast_seconds / poller.count) if poller.count else None,
            xid_status=poller.xid_status)
        snapshot.schedule = poller.schedule()
        lists_ok, lists_error = True, ""
        for state in poller.states:
            if "compute_processes" in state.errors and not state.lost:
                lists_ok, lists_error = False, state.errors["compute_processes"]
        for pid in self.targets:
            facts = self._facts.get(pid)
            if facts is None:
                continue
            snapshot.targets[pid] = attribute(gpus, processes, facts, lists_ok, lists_error)
        unavailable = {}
        for gpu in gpus:
            if gpu.lost:
                unavailable[f"gpu{gpu.index}"] = "GPU is lost"
            for name, reason in gpu.unavailable.items():
                if name != "gpu":
                    unavailable[f"gpu{gpu.index}.{name}"] = reason
        if missing:
            unavailable["gpus"] = (f"{len(missing)} GPU(s) seen earlier are gone: "
                                   + ", ".join(m.get("uuid") or "?" for m in missing))
        return snapshot, unavailable


def assemble_sample(state: GpuState, now: float) -> GpuSample:
    """One GPU's sample in dsmon's base units from the poller's NVML answers."""
    ident = state.identity
    sample = GpuSample(state.index, ident.get("uuid"), ident.get("name"),
                       ident.get("pci_bus_id"), ident.get("minor_number"), state.lost)
    sample.unsupported = dict(state.unsupported)
    sample.unavailable = dict(state.errors)
    if state.lost:
        sample.unavailable["gpu"] = state.lost_reason
        return sample
    v = state.values
    mem = v.get("memory")
    if mem:
        sample.memory_total_bytes = mem.get("total")
        sample.memory_reserved_bytes = mem.get("reserved")
        sample.memory_used_bytes = mem.get("used")
        sample.memory_free_bytes = mem.get("free")
        sample.memory_struct = mem.get("version")
    util = v.get("utilization")
    if util:
        sample.utilization_gpu_ratio = util["gpu"] / 100.0
        sample.utilization_memory_ratio = util["memory"] / 100.0
    if v.get("temperature") is not None:
        sample.temperature_celsius = float(v["temperature"])
    if v.get("power_usage") is not None:
        sample.power_watts = v["power_usage"] / 1000.0
    if v.get("power_limit") is not None:
        sample.power_limit_watts = v["power_limit"] / 1000.0
    if v.get("clock_sm") is not None:
        sample.sm_clock_hz = v["clock_sm"] * 1e6
    if v.get("clock_mem") is not None:
        sample.memory_clock_hz = v["clock_mem"] * 1e6
    mask = v.get("clocks_event_reasons")
    if mask is not None:
        sample.clock_event_mask = int(mask)
        sample.clock_event_reasons = [n for bit, n in sorted(CLOCK_EVENT_REASONS.items())
                                      if mask & bit]
    for name in ("pcie_gen_current", "pcie_gen_max", "pcie_width_current",
                 "pcie_width_max"):
        if v.get(name) is not None:
            setattr(sample, name, int(v[name]))
    ecc = v.get("ecc_mode")
    if ecc:
        sample.ecc_enabled, sample.ecc_pending = bool(ecc["current"]), bool(ecc["pending"])
    errors = v.get("ecc_errors")
    if errors:
        for key in ("volatile_corrected", "volatile_uncorrected", "aggregate_corrected",
                    "aggregate_uncorrected"):
            setattr(sample, f"ecc_{key}", errors.get(key))
    rows = v.get("remapped_rows")
    if rows:
        sample.remapped_rows_correctable = rows["correctable"]
        sample.remapped_rows_uncorrectable = rows["uncorrectable"]
        sample.remap_pending = bool(rows["pending"])
        sample.remap_failure = bool(rows["failure"])
    mig = v.get("mig_mode")
    if mig:
        sample.mig_enabled, sample.mig_pending = bool(mig["current"]), bool(mig["pending"])
    pcie = v.get("pcie_throughput")
    if pcie:
        sample.pcie_tx_bytes_per_second = pcie["tx_kib_per_s"] * 1024.0
        sample.pcie_rx_bytes_per_second = pcie["rx_kib_per_s"] * 1024.0
    for name, kind in (("compute_processes", "compute"), ("graphics_processes", "graphics")):
        for proc in v.get(name) or ():
            sample.processes.append(GpuProcess(state.index, sample.uuid, int(proc["pid"]),
                                               proc.get("used_bytes"), kind))
    if state.slow_at is not None:
        sample.slow_age_seconds = max(0.0, now - state.slow_at)
    return sample


def collect_once(paths: HostPaths | None = None, nvml=None, targets=()) -> GpuSnapshot:
    """One complete snapshot (fast and slow), for one-shot commands."""
    collector = GpuCollector(paths, nvml, targets=targets)
    snapshot, _ = collector.collect()
    return snapshot


__all__ = [
    "FAST_CALLS",
    "SLOW_CALLS",
    "GpuCollector",
    "GpuProcess",
    "GpuSample",
    "GpuSnapshot",
    "GpuUnavailable",
    "XidEvent",
    "collect_once",
]
