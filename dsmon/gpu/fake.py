"""A fake NVML backend that replays a recording made on a real host.

CI has no GPU. This backend answers every question of `dsmon.gpu.nvml`'s interface from a
recording (format below), so the collector, the topology and the attribution code run
unchanged against what real H200 and H100 hosts said. A question the recording does not hold
raises `NvmlError("NotRecorded")`: the fake never makes a value up.

Tests add faults on top of the replay (an error for one call, a lost GPU, a GPU that
disappears, a process list seen from another PID namespace, an XID event, no driver at all):
the faults are errors and views, not invented measurements.

Recording format ("dsmon-nvml-recording/1", JSON)::

    {"format": "dsmon-nvml-recording/1",
     "source": "how and where it was recorded",
     "notes": ["..."],
     "system": {"driver_version": {"value": "580.159.04", "us": 72.7}, ...},
     "devices": [{"index": 0, "calls": {"name": {"value": "NVIDIA H200", "us": 47.4},
                                         "numa_node": {"error": "NotSupported"}, ...}}],
     "pairs": [{"a": 0, "b": 1, "calls": {"nvlink_count": {"value": 18}, ...}}],
     "latency_us": {"memory": {"calls": 50, "median_us": 9.7, ...}}}

Each answer is {"value": V} or {"error": KIND} (KIND as pynvml names its exception class
without "NVMLError_"), optionally with "us", the call's latency when recorded.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from dsmon.gpu.nvml import DEVICE_CALLS, PAIR_CALLS, NvmlError

FORMAT = "dsmon-nvml-recording/1"
FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "gpu"


def load_recording(source) -> dict:
    """A recording from a dict, a path, or a fixture name ("h200-1gpu" -> tests/fixtures/gpu)."""
    if isinstance(source, dict):
        return copy.deepcopy(source)
    path = Path(source)
    if not path.exists() and not path.suffix:
        path = FIXTURES / f"{source}.json"
    with open(path) as handle:
        recording = json.load(handle)
    if recording.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} recording")
    return recording


class FakeBackend:
    """Replays a recording; see the module docstring. Same methods as PynvmlBackend."""

    description = "fake"

    def __init__(self, recording, init_error: str | None = None):
        self.recording = load_recording(recording)
        self.system = self.recording.get("system", {})
        self.devices = list(self.recording.get("devices", []))
        self.pairs = {}
        for pair in self.recording.get("pairs", []):
            self.pairs[(pair["a"], pair["b"])] = pair["calls"]
        self.init_error = init_error
        self.initialised = False
        self.init_calls = 0
        self.calls: list[tuple] = []          # (name, args) of every question, for assertions
        self._faults: dict[tuple, str] = {}
        self._pid_view: dict[int, int | None] | None = None
        self._hide_all_processes = False
        self._xid_queue: list[dict] = []
        self._registered: set[int] = set()
        self._delays: dict[str, float] = {}

    # -- faults and views (tests) ------------------------------------------------------------

    def fail(self, name: str, index: int | None = None, kind: str = "Unknown") -> None:
        """Make `name` raise NvmlError(kind) on device `index` (None: on every device)."""
        self._faults[(name, index)] = kind

    def heal(self, name: str, index: int | None = None) -> None:
        self._faults.pop((name, index), None)

    def lose_gpu(self, index: int) -> None:
        """Every question about this GPU raises GpuIsLost (a GPU that fell off the bus)."""
        self._faults[("*", index)] = "GpuIsLost"

    def remove_gpu(self, index: int) -> None:
        """The GPU disappears: the count drops and the GPUs after it move down one index."""
        del self.devices[index]
        self._faults = {k: v for k, v in self._faults.items() if k[1] != index}

    def view_pids(self, mapping: dict[int, int | None]) -> None:
        """Process lists as a caller in another PID namespace sees them: recorded pid ->
        pid there (None: filtered out, as NVML does for processes outside the namespace)."""
        self._pid_view = dict(mapping)

    def hide_processes(self) -> None:
        """A caller in a fresh PID namespace: NVML lists no process at all."""
        self._hide_all_processes = True

    def delay(self, name: str, seconds: float) -> None:
        """Answer `name` only after `seconds` (a getter that is slow on some host)."""
        self._delays[name] = seconds

    def inject_xid(self, index: int, xid: int) -> None:
        self._xid_queue.append({"index": index, "xid": xid, "event_type": 0x8})

    # -- plumbing ----------------------------------------------------------------------------

    @staticmethod
    def _answer(entry: dict):
        if "error" in entry:
            raise NvmlError(entry["error"], None, "recorded")
        return copy.deepcopy(entry.get("value"))

    def _check(self) -> None:
        if not self.initialised:
            raise NvmlError("Uninitialized")

    def _device(self, name: str, index: int):
        self.calls.append((name, index))
        self._check()
        if name in self._delays:
            time.sleep(self._delays[name])
        if index < 0 or index >= len(self.devices):
            raise NvmlError("InvalidArgument", None, f"no GPU with index {index}")
        for key in ((name, index), ("*", index), (name, None)):
            if key in self._faults:
                raise NvmlError(self._faults[key], None, "injected")
        entry = self.devices[index].get("calls", {}).get(name)
        if entry is None:
            raise NvmlError("NotRecorded", None, f"{name} of GPU {index}")
        return self._answer(entry)

    def _pair(self, name: str, i: int, j: int):
        self.calls.append((name, i, j))
        self._check()
        for index in (i, j):
            if index < 0 or index >= len(self.devices):
                raise NvmlError("InvalidArgument")
            for key in ((name, index), ("*", index), (name, None)):
                if key in self._faults:
                    raise NvmlError(self._faults[key], None, "injected")
        a = self.devices[i].get("index", i)
        b = self.devices[j].get("index", j)
        calls = self.pairs.get((min(a, b), max(a, b)), {})
        entry = calls.get(name)
        if entry is None:
            raise NvmlError("NotRecorded", None, f"{name} of GPUs {i} and {j}")
        return self._answer(entry)

    # -- lifecycle and system ----------------------------------------------------------------

    def init(self) -> None:
        self.calls.append(("init",))
        self.init_calls += 1
        if self.init_error:
            raise NvmlError(self.init_error, None, "injected")
        self.initialised = True

    def shutdown(self) -> None:
        self.calls.append(("shutdown",))
        self.initialised = False

    def _system_call(self, name: str):
        self.calls.append((name,))
        self._check()
        if (name, None) in self._faults:
            raise NvmlError(self._faults[(name, None)], None, "injected")
        entry = self.system.get(name)
        if entry is None:
            raise NvmlError("NotRecorded", None, name)
        return self._answer(entry)

    def driver_version(self):
        return self._system_call("driver_version")

    def nvml_version(self):
        return self._system_call("nvml_version")

    def cuda_driver_version(self):
        return self._system_call("cuda_driver_version")

    def device_count(self) -> int:
        self.calls.append(("device_count",))
        self._check()
        if ("device_count", None) in self._faults:
            raise NvmlError(self._faults[("device_count", None)], None, "injected")
        return len(self.devices)

    # -- answers with a view -----------------------------------------------------------------

    def _processes(self, name: str, index: int) -> list[dict]:
        procs = self._device(name, index)
        if self._hide_all_processes:
            return []
        if self._pid_view is None:
            return procs
        out = []
        for proc in procs:
            pid = self._pid_view.get(proc["pid"], proc["pid"])
            if pid is not None:
                out.append(dict(proc, pid=pid))
        return out

    def compute_processes(self, index: int) -> list[dict]:
        return self._processes("compute_processes", index)

    def graphics_processes(self, index: int) -> list[dict]:
        return self._processes("graphics_processes", index)

    # -- XID events --------------------------------------------------------------------------

    def xid_register(self, index: int) -> None:
        self._device("xid_register", index)
        self._registered.add(index)

    def xid_poll(self) -> list[dict]:
        self.calls.append(("xid_poll",))
        self._check()
        events = [e for e in self._xid_queue if e["index"] in self._registered]
        self._xid_queue = [e for e in self._xid_queue if e["index"] not in self._registered]
        return events


def _device_method(name: str):
    def method(self, index: int):
        return self._device(name, index)
    method.__name__ = name
    method.__doc__ = f"The recorded answer to {name} for one GPU."
    return method


def _pair_method(name: str):
    def method(self, i: int, j: int):
        return self._pair(name, i, j)
    method.__name__ = name
    method.__doc__ = f"The recorded answer to {name} for a pair of GPUs."
    return method


for _name in DEVICE_CALLS + ("memory_v1",):
    if not hasattr(FakeBackend, _name):
        setattr(FakeBackend, _name, _device_method(_name))
for _name in PAIR_CALLS:
    setattr(FakeBackend, _name, _pair_method(_name))


def fixture_names() -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob("*.json")) if FIXTURES.is_dir() else []


def fake_nvml(recording, **kwargs):
    """An Nvml session over a FakeBackend (convenience for tests and demos)."""
    from dsmon.gpu.nvml import Nvml
    clock = kwargs.pop("clock", None)
    backend = recording if isinstance(recording, FakeBackend) else FakeBackend(recording, **kwargs)
    return Nvml(backend, clock=clock) if clock else Nvml(backend)


__all__ = ["FIXTURES", "FORMAT", "FakeBackend", "fake_nvml", "fixture_names", "load_recording"]
