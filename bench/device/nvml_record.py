"""Record what NVML says on this host in dsmon's fake-NVML format, with per-call latencies.

    PYTHONPATH=.:wheels/vendor python3 bench/device/nvml_record.py OUT.json [--repeat 50]

Asks dsmon.gpu.nvml.PynvmlBackend (the code dsmon runs) every question of the backend
interface, for every GPU and every pair of GPUs, and stores the first answer of each (value
or error kind) with its latency: that is exactly what dsmon.gpu.fake.FakeBackend replays.
Then it repeats the questions `--repeat` times per GPU for steady-state latencies (first calls
are often much slower), and adds host facts (CPUs, NUMA nodes, the GPUs' sysfs numa_node and
local_cpulist) so a test can build the matching fixture tree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dsmon.gpu.fake import FORMAT
from dsmon.gpu.nvml import (
    DEVICE_CALLS,
    PAIR_CALLS,
    SYSTEM_CALLS,
    NvmlError,
    PynvmlBackend,
    sysfs_pci_address,
)

LAT: dict[str, list[float]] = {}
FIRST: dict[str, float] = {}


def ask(label: str, fn, *args) -> dict:
    started = time.perf_counter_ns()
    try:
        entry = {"value": fn(*args)}
    except NvmlError as exc:
        entry = {"error": exc.kind}
        if exc.detail and exc.kind not in ("NotSupported",):
            entry["detail"] = exc.detail
    except Exception as exc:  # noqa: BLE001 - a dsmon bug must not lose the recording
        entry = {"error": "DsmonBug", "detail": f"{type(exc).__name__}: {exc}"}
    us = round((time.perf_counter_ns() - started) / 1000.0, 1)
    entry["us"] = us
    if label in FIRST:
        LAT.setdefault(label, []).append(us)
    else:
        FIRST[label] = us
    return entry


def read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def host_facts(bus_ids: list[str]) -> dict:
    nodes = {}
    base = "/sys/devices/system/node"
    if os.path.isdir(base):
        for name in sorted(os.listdir(base)):
            if name.startswith("node") and name[4:].isdigit():
                nodes[name] = read(f"{base}/{name}/cpulist")
    gpus = {}
    for bus in bus_ids:
        addr = sysfs_pci_address(bus)
        gpus[bus] = {"sysfs": addr,
                     "numa_node": read(f"/sys/bus/pci/devices/{addr}/numa_node"),
                     "local_cpulist": read(f"/sys/bus/pci/devices/{addr}/local_cpulist")}
    return {"uname": platform.uname()._asdict(), "nproc": os.cpu_count(),
            "cpu_online": read("/sys/devices/system/cpu/online"), "numa_nodes": nodes,
            "gpu_sysfs": gpus}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--source", default="")
    args = parser.parse_args()
    backend = PynvmlBackend()
    recording = {"format": FORMAT,
                 "source": args.source or "bench/device/nvml_record.py on the lent GPU machine",
                 "recorded_at": time.time(), "notes": [], "system": {}, "devices": [],
                 "pairs": []}
    init = ask("init", backend.init)
    recording["init"] = init
    if "error" in init:
        recording["notes"].append(f"nvmlInit failed: {init['error']}")
        Path(args.out).write_text(json.dumps(recording, indent=1) + "\n")
        print(json.dumps(init))
        return 1
    pynvml = backend._n                    # the module dsmon.gpu.nvml imported
    recording["pynvml"] = {"file": pynvml.__file__,
                           "version": getattr(pynvml, "__version__", None)}
    for name in SYSTEM_CALLS:
        recording["system"][name] = ask(name, getattr(backend, name))
    count = recording["system"]["device_count"].get("value") or 0
    bus_ids = []
    for index in range(count):
        calls = {}
        for name in DEVICE_CALLS + ("memory_v1",):
            calls[name] = ask(name, getattr(backend, name), index)
        calls["xid_register"] = ask("xid_register", backend.xid_register, index)
        if "value" in calls["xid_register"]:
            calls["xid_register"]["value"] = None
        bus = calls["pci_bus_id"].get("value")
        if bus:
            bus_ids.append(bus)
        recording["devices"].append({"index": index, "calls": calls})
    for i in range(count):
        for j in range(i + 1, count):
            pair = {name: ask(name, getattr(backend, name), i, j) for name in PAIR_CALLS}
            recording["pairs"].append({"a": i, "b": j, "calls": pair})
    recording["xid_poll"] = ask("xid_poll", backend.xid_poll)
    # Steady state: the fast schedule's questions and the slow ones, repeated.
    repeat_names = ("memory", "utilization", "temperature", "power_usage",
                    "clocks_event_reasons", "clock_sm", "compute_processes", "power_limit",
                    "clock_mem", "pcie_gen_current", "pcie_width_current", "ecc_mode",
                    "ecc_errors", "remapped_rows", "mig_mode", "graphics_processes",
                    "cpu_affinity", "memory_affinity", "device_count_repeat")
    for _ in range(args.repeat):
        for index in range(count):
            for name in repeat_names:
                if name == "device_count_repeat":
                    ask("device_count", backend.device_count)
                    continue
                ask(name, getattr(backend, name), index)
        ask("xid_poll", backend.xid_poll)
    for index in range(count):     # ~20 ms each by NVML's own window: a few only
        for _ in range(3):
            ask("pcie_throughput", backend.pcie_throughput, index)
    recording["shutdown"] = ask("shutdown", backend.shutdown)
    summary = {}
    for name in sorted(set(FIRST) | set(LAT)):
        values = sorted(LAT.get(name, []))
        entry = {"first_us": FIRST.get(name), "calls": 1 + len(values)}
        if values:
            entry.update(min_us=values[0], median_us=values[len(values) // 2],
                         p90_us=values[int(len(values) * 0.9)], max_us=values[-1])
        summary[name] = entry
    recording["latency_us"] = summary
    recording["host"] = host_facts(bus_ids)
    Path(args.out).write_text(json.dumps(recording, indent=1) + "\n")
    print(f"wrote {args.out}: {count} GPU(s)")
    for name, entry in summary.items():
        print(f"  {name:24s} first {entry['first_us']:>9} us  median "
              f"{entry.get('median_us', '-'):>8} us  max {entry.get('max_us', '-')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
