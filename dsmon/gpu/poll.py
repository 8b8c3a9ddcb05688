"""NVML polling: which questions to ask each GPU and when (fast and slow schedule).

`NvmlPoller` keeps, per GPU, NVML's last answers in NVML's own terms (`GpuState.values`),
the reasons for the questions it cannot answer, and whether the GPU is lost; it demotes fast
questions that prove slow, registers for XID events and polls them, and reads the topology
once per enumeration. Turning its state into samples and snapshots is
`dsmon.gpu.sample.GpuCollector`'s part.
"""

from __future__ import annotations

from dsmon.gpu.nvml import Nvml, NvmlError
from dsmon.gpu.topology import read_topology
from dsmon.paths import HostPaths

FAST_CALLS = ("memory", "utilization", "temperature", "power_usage", "clocks_event_reasons",
              "clock_sm", "compute_processes")
SLOW_CALLS = ("power_limit", "clock_mem", "pcie_gen_current", "pcie_gen_max",
              "pcie_width_current", "pcie_width_max", "ecc_mode", "ecc_errors",
              "remapped_rows", "mig_mode", "graphics_processes")
IDENTITY_CALLS = ("name", "uuid", "pci_bus_id", "minor_number")


class GpuState:
    """What the poller remembers about one GPU between ticks."""

    def __init__(self, index: int):
        self.index = index
        self.identity: dict = {}
        self.values: dict[str, object] = {}
        self.errors: dict[str, str] = {}
        self.unsupported: dict[str, str] = {}
        self.slow_at: float | None = None
        self.lost = False
        self.lost_reason = ""


class _Lost(Exception):
    pass


def error_reason(exc: NvmlError) -> str:
    if exc.kind == "NotRecorded":
        return "not in the NVML recording"
    if exc.kind == "NoPermission":
        return "NVML: permission denied (needs root or access to the GPU)"
    return f"NVML error: {exc.kind}"


class NvmlPoller:
    def __init__(self, nvml: Nvml, paths: HostPaths, slow_interval_s: float,
                 fast_budget_us: float, pcie_throughput: bool, topology: bool, clock):
        self.nvml = nvml
        self.paths = paths
        self.slow_interval_s = slow_interval_s
        self.fast_budget_us = fast_budget_us
        self.pcie_throughput = pcie_throughput
        self.read_topology = topology
        self.clock = clock
        self.states: list[GpuState] = []
        self.count: int | None = None
        self.max_count = 0
        self.seen: dict[str, dict] = {}      # uuid -> identity, every GPU ever seen
        self.system: dict = {}
        self.demoted: dict[str, float] = {}   # fast question -> its median latency (us)
        self.xid_status = ""
        self.topology = None                  # dsmon.gpu.topology.GpuTopology, read once
        self.generation = 0
        self._slow_due = 0.0

    @property
    def slow_due(self) -> bool:
        return self.clock() >= self._slow_due

    def schedule(self) -> dict:
        return {
            "fast": [n for n in FAST_CALLS if n not in self.demoted],
            "slow": list(SLOW_CALLS) + list(self.demoted)
            + (["pcie_throughput"] if self.pcie_throughput else []),
            "demoted": {n: f"median {us:.0f} us per call > {self.fast_budget_us:.0f} us budget"
                        for n, us in self.demoted.items()},
            "slow_interval_seconds": self.slow_interval_s,
        }

    def poll_fast(self) -> list[dict]:
        """Enumerate when the GPU count changed, ask the fast questions; returns the raw XID
        events NVML reported since the last poll."""
        count = self._device_count()
        if count != self.count:
            self._enumerate(count)
        for state in self.states:
            if not state.lost:
                self._fast(state)
        return self._poll_xids()

    def ensure_enumerated(self) -> None:
        if self.count is None:
            self._enumerate(self._device_count())

    # -- enumeration -------------------------------------------------------------------------

    def _device_count(self) -> int:
        return int(self.nvml.call("device_count"))

    def _enumerate(self, count: int) -> None:
        """(Re)read identity and system facts; GPUs may have come or gone."""
        self.generation += 1
        previous = {s.identity.get("uuid"): s for s in self.states if s.identity.get("uuid")}
        by_index = {s.index: s for s in self.states}
        if not self.system:
            for name in ("driver_version", "nvml_version", "cuda_driver_version"):
                try:
                    self.system[name] = self.nvml.call(name)
                except NvmlError:
                    self.system[name] = None
        states = []
        for index in range(count):
            state = GpuState(index)
            try:
                for name in IDENTITY_CALLS:
                    try:
                        state.identity[name] = self.nvml.call(name, index)
                    except NvmlError as exc:
                        if exc.kind == "GpuIsLost":
                            raise _Lost() from None
                        state.identity[name] = None
                        if exc.kind in ("NotSupported", "FunctionNotFound"):
                            state.unsupported[name] = "not supported by this GPU or driver"
                        else:
                            state.errors[name] = error_reason(exc)
            except _Lost:
                old = by_index.get(index)
                if old is not None and old.identity:
                    state.identity = dict(old.identity)
                state.lost = True
                state.lost_reason = "NVML: GPU is lost"
            uuid = state.identity.get("uuid")
            if uuid and uuid in previous and not state.lost:
                old = previous[uuid]          # keep what we knew (unsupported, slow values)
                old.index = index
                old.lost, old.lost_reason = False, ""
                old.identity = state.identity
                old.errors.update(state.errors)
                state = old
            if uuid:
                self.seen[uuid] = dict(state.identity, last_index=index)
            states.append(state)
        self.states = states
        self.count = count
        self.max_count = max(self.max_count, count)
        self._slow_due = 0.0                  # slow facts of new GPUs now
        if self.read_topology:
            self.topology = None
        self._xid_register()

    # -- fast --------------------------------------------------------------------------------

    def _ask(self, state: GpuState, name: str, *args):
        """One question about one GPU; None when unsupported or failed (reason kept)."""
        if name in state.unsupported:
            return None
        try:
            value = self.nvml.call(name, state.index, *args)
        except NvmlError as exc:
            if exc.kind == "GpuIsLost":
                raise _Lost() from None
            if exc.kind in ("NotSupported", "FunctionNotFound"):
                state.unsupported[name] = "not supported by this GPU or driver"
            else:
                state.errors[name] = error_reason(exc)
            state.values.pop(name, None)
            return None
        state.errors.pop(name, None)
        state.values[name] = value
        return value

    def _fast(self, state: GpuState) -> None:
        try:
            for name in FAST_CALLS:
                if name in self.demoted:
                    continue
                self._ask(state, name)
                self._maybe_demote(name)
        except _Lost:
            self._mark_lost(state)

    def _maybe_demote(self, name: str) -> None:
        history = self.nvml.latency_us.get(name)
        if history is None or len(history) < 5:
            return
        median = self.nvml.median_us(name)
        if median is not None and median > self.fast_budget_us:
            self.demoted[name] = median

    def _mark_lost(self, state: GpuState) -> None:
        state.lost = True
        state.lost_reason = "NVML: GPU is lost"
        state.values.clear()

    # -- slow --------------------------------------------------------------------------------

    def poll_slow(self) -> None:
        now = self.clock()
        self._slow_due = now + self.slow_interval_s
        names = list(SLOW_CALLS) + list(self.demoted)
        if self.pcie_throughput:
            names.append("pcie_throughput")
        for state in self.states:
            if state.lost:
                self._probe_lost(state)
                continue
            try:
                for name in names:
                    self._ask(state, name)
            except _Lost:
                self._mark_lost(state)
                continue
            state.slow_at = now
        if self.read_topology and self.topology is None:
            self.topology = read_topology(self.nvml, self.paths, count=self.count)

    def _probe_lost(self, state: GpuState) -> None:
        """A lost GPU is asked one cheap question per slow tick, in case it came back."""
        try:
            self.nvml.call("memory", state.index)
        except NvmlError:
            return
        state.lost = False
        state.lost_reason = ""

    # -- XID events --------------------------------------------------------------------------

    def _xid_register(self) -> None:
        registered, reasons = [], set()
        for state in self.states:
            if state.lost:
                continue
            try:
                self.nvml.call("xid_register", state.index)
                registered.append(state.index)
            except NvmlError as exc:
                reasons.add("not supported" if exc.kind == "NotSupported"
                            else error_reason(exc))
        if registered:
            self.xid_status = f"watching GPUs {', '.join(map(str, registered))}"
            if reasons:
                self.xid_status += f" (others: {'; '.join(sorted(reasons))})"
        else:
            self.xid_status = ("unavailable: " + "; ".join(sorted(reasons))) if reasons \
                else "no GPUs"

    def _poll_xids(self) -> list[dict]:
        if not self.xid_status.startswith("watching"):
            return []
        try:
            return list(self.nvml.call("xid_poll"))
        except NvmlError as exc:
            self.xid_status = f"watching, last poll failed: {error_reason(exc)}"
            return []
