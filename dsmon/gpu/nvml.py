"""NVML access: the only module of dsmon that imports pynvml.

Two layers:

- A **backend** answers single NVML questions by device index and returns plain JSON-able
  values (ints, strings, small dicts and lists). `PynvmlBackend` asks the real library;
  `dsmon.gpu.fake.FakeBackend` replays a recording made on a real host. Every backend raises
  `NvmlError` (never a pynvml exception), whose `kind` is pynvml's class-name suffix
  (`NotSupported`, `GpuIsLost`, `LibraryNotFound`, ...).
- `Nvml` wraps one backend for the rest of dsmon: lazy initialisation on first use; when the
  library, the driver or their versions are wrong, one clear message with the fix, logged
  once (not once per sample), and retries with exponential backoff; per-call latency
  statistics (the collector moves slow getters to its slow schedule with them).

Values are NVML's units here (mW, MHz, percent, bytes); `dsmon.gpu.sample` converts them to
dsmon's base units.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from dsmon.sources import SourceError

log = logging.getLogger("dsmon.gpu")

# ---------------------------------------------------------------------------- the interface

# The questions a backend answers, by scope. A recording (dsmon.gpu.fake) stores one answer
# per name: {"value": ...} or {"error": "<kind>"}, optionally with "us" (latency).
SYSTEM_CALLS = ("driver_version", "nvml_version", "cuda_driver_version", "device_count")
DEVICE_CALLS = (
    # identity (read once per enumeration)
    "name", "uuid", "pci_bus_id", "minor_number",
    # fast schedule
    "memory", "utilization", "temperature", "power_usage", "clocks_event_reasons", "clock_sm",
    "compute_processes",
    # slow schedule
    "graphics_processes", "power_limit", "clock_mem", "pcie_gen_current", "pcie_gen_max",
    "pcie_width_current", "pcie_width_max", "ecc_mode", "ecc_errors", "remapped_rows",
    "mig_mode", "pcie_throughput",
    # topology (read once per enumeration)
    "cpu_affinity", "memory_affinity", "numa_node", "nvlinks",
)
PAIR_CALLS = ("common_ancestor", "nvlink_count", "p2p_nvlink")

# nvmlGpuTopologyLevel_t -> the abbreviation `nvidia-smi topo -m` prints.
TOPOLOGY_LEVELS = {0: "X", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}
# nvmlClocksEventReasons bits (nvml.h), the names dsmon reports.
CLOCK_EVENT_REASONS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap",
    0x8: "hw_slowdown", 0x10: "sync_boost", 0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting",
}
NVLINK_DEVICE_TYPE_SWITCH = 2   # nvmlIntNvLinkDeviceType_t: GPU 0, IBMNPU 1, SWITCH 2
XID_EVENT = 0x8                 # nvmlEventTypeXidCriticalError


class NvmlError(Exception):
    """An NVML call failed. `kind` is the error's name as pynvml spells it without the
    `NVMLError_` prefix (NotSupported, GpuIsLost, ...); `code` is NVML's return code."""

    def __init__(self, kind: str, code: int | None = None, detail: str = ""):
        self.kind = kind
        self.code = code
        self.detail = detail
        super().__init__(f"{kind}{': ' + detail if detail else ''}")


# Kinds that mean "NVML as a whole is not usable", as opposed to one failing question.
UNAVAILABLE_KINDS = ("BindingMissing", "LibraryNotFound", "DriverNotLoaded",
                     "LibRmVersionMismatch", "Uninitialized", "NoPermission")


def _bus_id(value: str) -> str:
    """NVML spells bus ids "00000000:00:06.0" (8-digit domain); compare them normalised."""
    text = value.strip().lower()
    domain, _, rest = text.partition(":")
    if rest.count(":") == 1 and len(domain) > 4:
        domain = domain[-4:]
    return f"{domain}:{rest}" if rest else text


def sysfs_pci_address(bus_id: str) -> str:
    """NVML bus id -> the name of its /sys/bus/pci/devices entry ("0000:00:06.0")."""
    return _bus_id(bus_id)


def mask_to_ids(words) -> list[int]:
    """NVML's affinity masks: arrays of 64-bit words, bit b of word w = id w*64+b."""
    ids = []
    for w, word in enumerate(words):
        word = int(word)
        b = 0
        while word:
            if word & 1:
                ids.append(w * 64 + b)
            word >>= 1
            b += 1
    return ids


class PynvmlBackend:
    """The real NVML through nvidia-ml-py (module `pynvml`). Imported lazily by init()."""

    description = "pynvml"

    def __init__(self, cpu_words: int | None = None):
        self._n = None
        self._handles: dict[int, Any] = {}
        self._count: int | None = None
        self._nvlinks: dict[int, list] = {}
        self._events = None
        self._registered: dict[int, str] = {}
        cpus = os.cpu_count() or 64
        self._cpu_words = cpu_words or max(16, (cpus + 63) // 64)

    # -- plumbing ----------------------------------------------------------------------------

    def _wrap(self, fn: Callable, *args, **kwargs):
        n = self._n
        try:
            return fn(*args, **kwargs)
        except n.NVMLError as exc:
            raise self._error(exc) from None

    def _error(self, exc) -> NvmlError:
        name = type(exc).__name__
        kind = name[len("NVMLError_"):] if name.startswith("NVMLError_") else "Unknown"
        code = getattr(exc, "value", None)
        detail = ""
        try:
            detail = str(exc)
        except Exception:  # noqa: BLE001 - str() of an unknown code can itself fail
            pass
        return NvmlError(kind, code, detail)

    def _handle(self, index: int):
        handle = self._handles.get(index)
        if handle is None:
            handle = self._wrap(self._n.nvmlDeviceGetHandleByIndex, index)
            self._handles[index] = handle
        return handle

    # -- lifecycle ---------------------------------------------------------------------------

    def init(self) -> None:
        if self._n is None:
            try:
                import pynvml
            except ImportError as exc:
                raise NvmlError("BindingMissing", None, str(exc)) from None
            self._n = pynvml
        self._handles.clear()
        self._nvlinks.clear()
        self._count = None
        self._events = None
        self._registered.clear()
        self._wrap(self._n.nvmlInit)

    def shutdown(self) -> None:
        if self._n is None:
            return
        if self._events is not None:
            try:
                self._n.nvmlEventSetFree(self._events)
            except Exception:  # noqa: BLE001
                pass
            self._events = None
        self._handles.clear()
        self._wrap(self._n.nvmlShutdown)

    # -- system ------------------------------------------------------------------------------

    def driver_version(self) -> str:
        return _text(self._wrap(self._n.nvmlSystemGetDriverVersion))

    def nvml_version(self) -> str:
        return _text(self._wrap(self._n.nvmlSystemGetNVMLVersion))

    def cuda_driver_version(self) -> int:
        return int(self._wrap(self._n.nvmlSystemGetCudaDriverVersion))

    def device_count(self) -> int:
        count = int(self._wrap(self._n.nvmlDeviceGetCount))
        if count != self._count:       # GPUs came or went: indices may now name other GPUs
            self._handles.clear()
            self._nvlinks.clear()
            self._count = count
        return count

    # -- identity ----------------------------------------------------------------------------

    def name(self, i: int) -> str:
        return _text(self._wrap(self._n.nvmlDeviceGetName, self._handle(i)))

    def uuid(self, i: int) -> str:
        return _text(self._wrap(self._n.nvmlDeviceGetUUID, self._handle(i)))

    def pci_bus_id(self, i: int) -> str:
        info = self._wrap(self._n.nvmlDeviceGetPciInfo, self._handle(i))
        return _text(info.busId)

    def minor_number(self, i: int) -> int:
        return int(self._wrap(self._n.nvmlDeviceGetMinorNumber, self._handle(i)))

    # -- fast --------------------------------------------------------------------------------

    def memory(self, i: int) -> dict:
        """v2 (total/reserved/used/free): v1 counts driver-reserved memory as used."""
        n, h = self._n, self._handle(i)
        if hasattr(n, "nvmlMemory_v2"):
            try:
                m = self._wrap(n.nvmlDeviceGetMemoryInfo, h, version=n.nvmlMemory_v2)
                return {"total": int(m.total), "reserved": int(m.reserved), "used": int(m.used),
                        "free": int(m.free), "version": "v2"}
            except NvmlError as exc:
                if exc.kind not in ("FunctionNotFound", "ArgumentVersionMismatch",
                                    "NotSupported"):
                    raise
        m = self._wrap(n.nvmlDeviceGetMemoryInfo, h)
        return {"total": int(m.total), "reserved": None, "used": int(m.used),
                "free": int(m.free), "version": "v1"}

    def memory_v1(self, i: int) -> dict:
        """The v1 struct, for recordings (to show what v1 calls "used")."""
        m = self._wrap(self._n.nvmlDeviceGetMemoryInfo, self._handle(i))
        return {"total": int(m.total), "used": int(m.used), "free": int(m.free)}

    def utilization(self, i: int) -> dict:
        u = self._wrap(self._n.nvmlDeviceGetUtilizationRates, self._handle(i))
        return {"gpu": int(u.gpu), "memory": int(u.memory)}

    def temperature(self, i: int) -> int:
        n = self._n
        return int(self._wrap(n.nvmlDeviceGetTemperature, self._handle(i),
                              n.NVML_TEMPERATURE_GPU))

    def power_usage(self, i: int) -> int:
        return int(self._wrap(self._n.nvmlDeviceGetPowerUsage, self._handle(i)))

    def clocks_event_reasons(self, i: int) -> int:
        n = self._n
        fn = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            n.nvmlDeviceGetCurrentClocksThrottleReasons
        return int(self._wrap(fn, self._handle(i)))

    def clock_sm(self, i: int) -> int:
        n = self._n
        return int(self._wrap(n.nvmlDeviceGetClockInfo, self._handle(i), n.NVML_CLOCK_SM))

    def compute_processes(self, i: int) -> list[dict]:
        return self._processes(i, "nvmlDeviceGetComputeRunningProcesses")

    def graphics_processes(self, i: int) -> list[dict]:
        return self._processes(i, "nvmlDeviceGetGraphicsRunningProcesses")

    def _processes(self, i: int, function: str) -> list[dict]:
        n, h = self._n, self._handle(i)
        try:
            procs = self._wrap(getattr(n, function), h)
        except NvmlError as exc:   # a driver older than the binding's default struct version
            older = getattr(n, function + "_v2", None)
            if exc.kind not in ("FunctionNotFound", "ArgumentVersionMismatch") or older is None:
                raise
            procs = self._wrap(older, h)
        out = []
        for p in procs:
            used = getattr(p, "usedGpuMemory", None)
            out.append({"pid": int(p.pid), "used_bytes": None if used is None else int(used)})
        return out

    # -- slow --------------------------------------------------------------------------------

    def power_limit(self, i: int) -> int:
        return int(self._wrap(self._n.nvmlDeviceGetEnforcedPowerLimit, self._handle(i)))

    def clock_mem(self, i: int) -> int:
        n = self._n
        return int(self._wrap(n.nvmlDeviceGetClockInfo, self._handle(i), n.NVML_CLOCK_MEM))

    def pcie_gen_current(self, i: int) -> int:
        return int(self._wrap(self._n.nvmlDeviceGetCurrPcieLinkGeneration, self._handle(i)))

    def pcie_gen_max(self, i: int) -> int:
        return int(self._wrap(self._n.nvmlDeviceGetMaxPcieLinkGeneration, self._handle(i)))

    def pcie_width_current(self, i: int) -> int:
        return int(self._wrap(self._n.nvmlDeviceGetCurrPcieLinkWidth, self._handle(i)))

    def pcie_width_max(self, i: int) -> int:
        return int(self._wrap(self._n.nvmlDeviceGetMaxPcieLinkWidth, self._handle(i)))

    def pcie_throughput(self, i: int) -> dict:
        """KB/s over NVML's own ~20 ms sampling window per direction: slow."""
        n, h = self._n, self._handle(i)
        tx = self._wrap(n.nvmlDeviceGetPcieThroughput, h, n.NVML_PCIE_UTIL_TX_BYTES)
        rx = self._wrap(n.nvmlDeviceGetPcieThroughput, h, n.NVML_PCIE_UTIL_RX_BYTES)
        return {"tx_kib_per_s": int(tx), "rx_kib_per_s": int(rx)}

    def ecc_mode(self, i: int) -> dict:
        current, pending = self._wrap(self._n.nvmlDeviceGetEccMode, self._handle(i))
        return {"current": int(current), "pending": int(pending)}

    def ecc_errors(self, i: int) -> dict:
        n, h = self._n, self._handle(i)
        out = {}
        for counter, cname in ((n.NVML_VOLATILE_ECC, "volatile"),
                               (n.NVML_AGGREGATE_ECC, "aggregate")):
            for etype, ename in ((n.NVML_MEMORY_ERROR_TYPE_CORRECTED, "corrected"),
                                 (n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, "uncorrected")):
                out[f"{cname}_{ename}"] = int(self._wrap(n.nvmlDeviceGetTotalEccErrors, h,
                                                         etype, counter))
        return out

    def remapped_rows(self, i: int) -> dict:
        corr, unc, pending, failure = self._wrap(self._n.nvmlDeviceGetRemappedRows,
                                                 self._handle(i))
        return {"correctable": int(corr), "uncorrectable": int(unc), "pending": int(pending),
                "failure": int(failure)}

    def mig_mode(self, i: int) -> dict:
        current, pending = self._wrap(self._n.nvmlDeviceGetMigMode, self._handle(i))
        return {"current": int(current), "pending": int(pending)}

    # -- topology ----------------------------------------------------------------------------

    def cpu_affinity(self, i: int) -> list[int]:
        words = self._wrap(self._n.nvmlDeviceGetCpuAffinity, self._handle(i), self._cpu_words)
        return mask_to_ids(words)

    def memory_affinity(self, i: int) -> list[int]:
        n = self._n
        words = self._wrap(n.nvmlDeviceGetMemoryAffinity, self._handle(i), 4,
                           n.NVML_AFFINITY_SCOPE_NODE)
        return mask_to_ids(words)

    def numa_node(self, i: int) -> int:
        fn = getattr(self._n, "nvmlDeviceGetNumaNodeId", None)
        if fn is None:
            raise NvmlError("FunctionNotFound", None, "pynvml has no nvmlDeviceGetNumaNodeId")
        return int(self._wrap(fn, self._handle(i)))

    def nvlinks(self, i: int) -> list[dict]:
        """Every NVLink that answers: active, and where its other end is (bus id, type)."""
        cached = self._nvlinks.get(i)
        if cached is not None:
            return cached
        n, h = self._n, self._handle(i)
        links = []
        for link in range(getattr(n, "NVML_NVLINK_MAX_LINKS", 18)):
            try:
                active = int(self._wrap(n.nvmlDeviceGetNvLinkState, h, link))
            except NvmlError as exc:
                if exc.kind == "NotSupported" and not links and link == 0:
                    raise                      # no NVLink on this GPU at all
                if exc.kind in ("InvalidArgument", "NotSupported"):
                    break                      # past this GPU's last link
                raise
            entry: dict = {"link": link, "active": active, "remote_bus_id": None,
                           "remote_type": None}
            if active:
                try:
                    entry["remote_bus_id"] = _text(self._wrap(
                        n.nvmlDeviceGetNvLinkRemotePciInfo, h, link).busId)
                except NvmlError as exc:
                    entry["remote_error"] = exc.kind
                fn = getattr(n, "nvmlDeviceGetNvLinkRemoteDeviceType", None)
                if fn is not None:
                    try:
                        entry["remote_type"] = int(self._wrap(fn, h, link))
                    except NvmlError as exc:
                        entry["remote_type_error"] = exc.kind
            links.append(entry)
        self._nvlinks[i] = links
        return links

    def nvlink_count(self, i: int, j: int) -> int:
        return count_nvlinks(self.nvlinks(i), self.nvlinks(j), self.pci_bus_id(i),
                             self.pci_bus_id(j))

    def common_ancestor(self, i: int, j: int) -> int:
        return int(self._wrap(self._n.nvmlDeviceGetTopologyCommonAncestor, self._handle(i),
                              self._handle(j)))

    def p2p_nvlink(self, i: int, j: int) -> int:
        n = self._n
        return int(self._wrap(n.nvmlDeviceGetP2PStatus, self._handle(i), self._handle(j),
                              n.NVML_P2P_CAPS_INDEX_NVLINK))

    # -- XID events --------------------------------------------------------------------------

    def xid_register(self, i: int) -> None:
        n = self._n
        if self._events is None:
            self._events = self._wrap(n.nvmlEventSetCreate)
        self._wrap(n.nvmlDeviceRegisterEvents, self._handle(i), XID_EVENT, self._events)
        self._registered[i] = self.uuid(i)

    def xid_poll(self, limit: int = 64) -> list[dict]:
        """Events waiting in the set, without blocking (timeout 0)."""
        n = self._n
        if self._events is None:
            return []
        events = []
        for _ in range(limit):
            try:
                data = self._wrap(n.nvmlEventSetWait_v2, self._events, 0)
            except NvmlError as exc:
                if exc.kind == "Timeout":
                    break
                raise
            index = None
            try:
                index = int(self._wrap(n.nvmlDeviceGetIndex, data.device))
            except NvmlError:
                pass
            events.append({"index": index, "xid": int(data.eventData),
                           "event_type": int(data.eventType)})
        return events


def count_nvlinks(links_a: list[dict], links_b: list[dict], bus_a: str, bus_b: str) -> int:
    """NVLinks between two GPUs: links whose far end is the other GPU, or, where both GPUs
    reach NVSwitches, the smaller number of switch links (every switch reaches every GPU)."""
    target_b, target_a = _bus_id(bus_b), _bus_id(bus_a)
    direct = sum(1 for l in links_a if l.get("active") and l.get("remote_bus_id")
                 and _bus_id(l["remote_bus_id"]) == target_b)
    if not direct:
        direct = sum(1 for l in links_b if l.get("active") and l.get("remote_bus_id")
                     and _bus_id(l["remote_bus_id"]) == target_a)
    if direct:
        return direct

    def to_switch(links):
        return sum(1 for l in links if l.get("active")
                   and l.get("remote_type") == NVLINK_DEVICE_TYPE_SWITCH)
    a, b = to_switch(links_a), to_switch(links_b)
    return min(a, b) if a and b else 0


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------- availability

# One message and one fix per way NVML can be unusable. "no NVIDIA driver" is the phrase for
# hosts without a usable driver, so an operator can grep for it.
_UNAVAILABLE_TEXT = {
    "BindingMissing": (
        "no NVML binding: the Python package nvidia-ml-py (module pynvml) is not installed",
        "install it into dsmon's environment (pip install nvidia-ml-py); GPU metrics are "
        "skipped until then, everything else keeps working"),
    "LibraryNotFound": (
        "no NVIDIA driver: libnvidia-ml.so.1 (NVML, installed with the driver) was not found",
        "install the NVIDIA driver on the host; in a container run it with the NVIDIA "
        "container toolkit (docker --gpus all, or the nvidia runtime class) so the library is "
        "mounted; GPU metrics are skipped, everything else keeps working"),
    "DriverNotLoaded": (
        "no NVIDIA driver: libnvidia-ml is installed but the nvidia kernel module is not loaded",
        "load it (modprobe nvidia, or reboot after a driver install) and check "
        "`dmesg | grep -i nvrm` and `nvidia-smi`; in a container pass the /dev/nvidia* "
        "devices; GPU metrics are skipped, everything else keeps working"),
    "LibRmVersionMismatch": (
        "NVIDIA driver/library version mismatch: the loaded nvidia kernel module and "
        "libnvidia-ml.so come from different driver versions (usually a driver upgrade "
        "without a reboot)",
        "reboot, or stop every GPU process and reload the modules (rmmod nvidia_uvm "
        "nvidia_drm nvidia_modeset nvidia; modprobe nvidia); `nvidia-smi` fails the same way "
        "until then"),
    "NoPermission": (
        "NVML: permission denied opening the NVIDIA devices",
        "give dsmon access to /dev/nvidiactl and /dev/nvidia* (the device group, or systemd "
        "DeviceAllow=/dev/nvidia* rw as in systemd/dsmon.service)"),
}
NO_DATA_KINDS = ("BindingMissing", "LibraryNotFound", "DriverNotLoaded")


def describe_unavailable(kind: str, detail: str = "") -> tuple[str, str]:
    """(message, fix) for an NVML that cannot be used."""
    if kind in _UNAVAILABLE_TEXT:
        return _UNAVAILABLE_TEXT[kind]
    return (f"NVML could not be initialised: {kind}{' (' + detail + ')' if detail else ''}",
            "run `nvidia-smi`, which uses the same library, to see the same error")


class GpuUnavailable(SourceError):
    """NVML cannot be used at all. kind "missing" (no driver: Status.NO_DATA under
    run_collector) or "error" (a broken driver: Status.FAILED)."""

    def __init__(self, nvml_kind: str, detail: str = "", retry_in_s: float | None = None):
        message, hint = describe_unavailable(nvml_kind, detail)
        self.kind = "missing" if nvml_kind in NO_DATA_KINDS else "error"
        self.nvml_kind = nvml_kind
        self.message = message
        self.retry_in_s = retry_in_s
        super().__init__("nvml", message, hint)

    def describe(self) -> str:
        return self.message


class Nvml:
    """One NVML session for dsmon: lazy init, backoff, one log line per state, latencies.

    `call(name, *args)` runs backend.<name>(*args) and records how long it took. Thread-safe:
    the agent may run the fast and the slow schedule in different threads.
    """

    BACKOFF_S = (5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0)

    def __init__(self, backend=None, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger | None = None, history: int = 32):
        self.backend = backend if backend is not None else PynvmlBackend()
        self.clock = clock
        self.log = logger or log
        self.lock = threading.RLock()
        self.initialised = False
        self.init_attempts = 0
        self.failures_in_a_row = 0
        self.next_attempt_at = 0.0
        self.error: GpuUnavailable | None = None
        self._logged_kind: str | None = None
        self._history = history
        self.latency_us: dict[str, deque] = {}
        self.calls: dict[str, int] = {}
        self.first_call_us: dict[str, float] = {}

    # -- availability ------------------------------------------------------------------------

    def ensure(self) -> None:
        """Initialise NVML if needed; raise GpuUnavailable (cheaply, no NVML call) while a
        failed initialisation waits for its next retry."""
        with self.lock:
            if self.initialised:
                return
            now = self.clock()
            if self.error is not None and now < self.next_attempt_at:
                raise GpuUnavailable(self.error.nvml_kind, self.error.detail,
                                     retry_in_s=self.next_attempt_at - now)
            self.init_attempts += 1
            try:
                self._timed("init", self.backend.init)
            except NvmlError as exc:
                self._unavailable(exc.kind, exc.detail, now)
                raise self.error from None
            self.initialised = True
            if self.error is not None:
                self.log.info("NVML is available again (%s was resolved after %d attempts)",
                              self.error.nvml_kind, self.init_attempts)
            self.error = None
            self.failures_in_a_row = 0
            self._logged_kind = None

    def _unavailable(self, kind: str, detail: str, now: float) -> None:
        delay = self.BACKOFF_S[min(self.failures_in_a_row, len(self.BACKOFF_S) - 1)]
        self.failures_in_a_row += 1
        self.next_attempt_at = now + delay
        self.error = GpuUnavailable(kind, detail, retry_in_s=delay)
        if self._logged_kind != kind:      # once per state, not once per sample
            self._logged_kind = kind
            self.log.warning("%s; fix: %s (GPU metrics off; retrying with backoff up to %d s)",
                             self.error.message, self.error.hint, int(self.BACKOFF_S[-1]))
        else:
            self.log.debug("NVML still unavailable (%s); next attempt in %.0f s", kind, delay)

    def lost(self, exc: NvmlError) -> GpuUnavailable:
        """NVML stopped working mid-session (driver unloaded, library replaced)."""
        with self.lock:
            self.initialised = False
            self._unavailable(exc.kind, exc.detail, self.clock())
            return self.error

    def available(self) -> bool:
        try:
            self.ensure()
            return True
        except GpuUnavailable:
            return False

    def shutdown(self) -> None:
        with self.lock:
            if self.initialised:
                try:
                    self.backend.shutdown()
                except NvmlError:
                    pass
            self.initialised = False

    # -- calls -------------------------------------------------------------------------------

    def call(self, name: str, *args):
        """backend.<name>(*args), timed. NVML-wide failures turn into GpuUnavailable."""
        try:
            return self._timed(name, getattr(self.backend, name), *args)
        except NvmlError as exc:
            if exc.kind in ("Uninitialized", "DriverNotLoaded", "LibRmVersionMismatch",
                            "LibraryNotFound"):
                raise self.lost(exc) from None
            raise

    def _timed(self, name: str, fn: Callable, *args):
        started = time.perf_counter_ns()
        try:
            return fn(*args)
        finally:
            us = (time.perf_counter_ns() - started) / 1000.0
            count = self.calls.get(name, 0)
            self.calls[name] = count + 1
            if count == 0:
                self.first_call_us[name] = us     # first calls are often far slower
            else:
                history = self.latency_us.get(name)
                if history is None:
                    history = self.latency_us[name] = deque(maxlen=self._history)
                history.append(us)

    def median_us(self, name: str) -> float | None:
        history = self.latency_us.get(name)
        if not history:
            return None
        ordered = sorted(history)
        return ordered[len(ordered) // 2]

    def latency_summary(self) -> dict[str, dict]:
        out = {}
        for name in sorted(set(self.calls)):
            history = sorted(self.latency_us.get(name, ()))
            entry: dict = {"calls": self.calls[name],
                           "first_us": round(self.first_call_us.get(name, 0.0), 1)}
            if history:
                entry.update(median_us=round(history[len(history) // 2], 1),
                             max_us=round(history[-1], 1))
            out[name] = entry
        return out


_DEFAULT: Nvml | None = None
_DEFAULT_LOCK = threading.Lock()


def default_nvml() -> Nvml:
    """The process-wide NVML session (real pynvml), created on first use."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Nvml()
        return _DEFAULT


def as_nvml(backend_or_nvml=None) -> Nvml:
    """Accept None (the process-wide session), an Nvml, or a bare backend."""
    if backend_or_nvml is None:
        return default_nvml()
    if isinstance(backend_or_nvml, Nvml):
        return backend_or_nvml
    return Nvml(backend_or_nvml)
