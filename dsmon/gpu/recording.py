"""Build fake-NVML recordings (dsmon.gpu.fake's format) from what real hosts recorded.

- `from_nvml_dump`: bench/device/nvml_dump.py's JSON (tests/fixtures/h200-torch/nvml-dump.json).
- `from_nvidia_smi`: `nvidia-smi -q` plus `nvidia-smi topo -m` text (the 4x H100 host in
  shared/fixtures/h100x4 has only these). Units are converted to NVML's (MiB -> bytes, W ->
  mW, "16x" -> 16); every answer made this way carries "from" naming its source.
- `derive_two_node`: the 8-GPU, two-NUMA-node host derived from the 4x H100 recording;
  tests/fixtures/gpu/README.md documents every rule, and each derived answer says "derived".

`python -m dsmon.gpu.recording build OUTDIR --h200 DIR --h100 DIR` rewrites the fixtures.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import uuid as uuidlib
from pathlib import Path

from dsmon.gpu.fake import FORMAT
from dsmon.gpu.nvml import CLOCK_EVENT_REASONS
from dsmon.gpu.topology import parse_nvidia_smi_topo
from dsmon.sources import parse_cpulist

MIB = 1 << 20


def _value(value, us=None, source=None) -> dict:
    entry = {"value": value}
    if us is not None:
        entry["us"] = us
    if source:
        entry["from"] = source
    return entry


def _error(kind, us=None, source=None) -> dict:
    entry = {"error": kind}
    if us is not None:
        entry["us"] = us
    if source:
        entry["from"] = source
    return entry


# ---------------------------------------------------------------------------- nvml-dump.json

def _from_dump_entry(entry: dict | None, convert=lambda v: v):
    if entry is None:
        return None
    if "error" in entry:
        return _error(entry["error"], entry.get("us"))
    return _value(convert(entry.get("value")), entry.get("us"))


def from_nvml_dump(dump: dict, source: str, topo_text: str | None = None,
                   smi_q_text: str | None = None) -> dict:
    """Convert nvml_dump.py output. `topo_text` adds NVML-less facts nvidia-smi printed on the
    same host at the same time (NUMA affinity); `smi_q_text` adds the minor number, ECC error
    counts and remapped rows, which the dump did not ask NVML for."""
    system = {}
    for ours, theirs in (("driver_version", "driver_version"), ("nvml_version", "nvml_version"),
                         ("cuda_driver_version", "cuda_driver_version"),
                         ("device_count", "device_count")):
        converted = _from_dump_entry(dump.get(theirs))
        if converted is not None:
            system[ours] = converted
    topo = parse_nvidia_smi_topo(topo_text) if topo_text else None
    smi = {g["pci_bus_id"]["value"]: g for g in parse_nvidia_smi_q(smi_q_text)} \
        if smi_q_text else {}
    devices = []
    for d in dump.get("devices", []):
        calls: dict = {}

        def put(name, entry, calls=calls):
            if entry is not None:
                calls[name] = entry
        put("name", _from_dump_entry(d.get("name")))
        put("uuid", _from_dump_entry(d.get("uuid")))
        put("pci_bus_id", _from_dump_entry(d.get("pci"), lambda v: v["busId"]))
        mem2 = d.get("memory_v2")
        if mem2 and "value" in mem2:
            v = mem2["value"]
            put("memory", _value({"total": v["total"], "reserved": v["reserved"],
                                  "used": v["used"], "free": v["free"], "version": "v2"},
                                 mem2.get("us")))
        put("memory_v1", _from_dump_entry(d.get("memory_v1")))
        put("utilization", _from_dump_entry(d.get("utilization")))
        put("temperature", _from_dump_entry(d.get("temperature_gpu_c")))
        put("power_usage", _from_dump_entry(d.get("power_usage_mw")))
        put("power_limit", _from_dump_entry(d.get("enforced_power_limit_mw")))
        put("clocks_event_reasons", _from_dump_entry(d.get("clocks_throttle_reasons")))
        clocks = d.get("clocks_mhz", {})
        put("clock_sm", _from_dump_entry(clocks.get("sm")))
        put("clock_mem", _from_dump_entry(clocks.get("mem")))
        pcie = d.get("pcie", {})
        for key in ("gen_current", "gen_max", "width_current", "width_max"):
            put(f"pcie_{key}", _from_dump_entry(pcie.get(key)))
        put("ecc_mode", _from_dump_entry(d.get("ecc_mode"),
                                         lambda v: {"current": v[0], "pending": v[1]}))
        put("mig_mode", _from_dump_entry(d.get("mig_mode"),
                                         lambda v: {"current": v[0], "pending": v[1]}))
        procs = lambda v: [{"pid": p["pid"], "used_bytes": p.get("usedGpuMemory")} for p in v]
        put("compute_processes", _from_dump_entry(d.get("compute_processes"), procs))
        put("graphics_processes", _from_dump_entry(d.get("graphics_processes"), procs))
        aff = d.get("cpu_affinity")
        if aff and "cpus" in aff:
            put("cpu_affinity", _value(aff["cpus"], aff.get("us")))
        elif aff:
            put("cpu_affinity", _from_dump_entry(aff))
        put("numa_node", _from_dump_entry(d.get("numa_node")))
        if topo is not None:
            numa = topo["numa_affinity"].get(d["index"])
            if numa and numa != "N/A":
                put("memory_affinity", _value(parse_cpulist(numa), None, "nvidia-smi topo -m"))
        bus = calls.get("pci_bus_id", {}).get("value")
        if bus in smi:
            for name in ("minor_number", "ecc_errors", "remapped_rows"):
                if name in smi[bus]:
                    put(name, smi[bus][name])
        devices.append({"index": d["index"], "calls": calls})
    pairs = []
    for pair in dump.get("topology_common_ancestor", []):
        calls = {}
        if "value" in pair:
            calls["common_ancestor"] = _value(pair["value"], pair.get("us"))
        elif "error" in pair:
            calls["common_ancestor"] = _error(pair["error"], pair.get("us"))
        pairs.append({"a": pair["a"], "b": pair["b"], "calls": calls})
    latency = {}
    for label, stats in dump.get("latency_us", {}).items():
        latency[label] = stats
    return {"format": FORMAT, "source": source, "notes": [],
            "system": system, "devices": devices, "pairs": pairs, "latency_us": latency}


# ---------------------------------------------------------------------------- nvidia-smi -q

def _tree(lines: list[str]) -> dict:
    """Indented "Key : Value" lines -> nested dicts (a line without ": " opens a section)."""
    root: dict = {}
    stack: list[tuple[int, dict]] = [(-1, root)]
    for line in lines:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        match = re.match(r"^\s*(\S.*?)\s*: (.*)$", line) or re.match(r"^\s*(\S.*?)\s*:$", line)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if match:
            key = match.group(1).strip()
            value = match.group(2).strip() if match.lastindex and match.lastindex >= 2 else ""
            # A key can repeat (e.g. several processes): keep a list then.
            if key in parent and not isinstance(parent[key], dict):
                existing = parent[key]
                parent[key] = existing + [value] if isinstance(existing, list) else [existing,
                                                                                     value]
            else:
                parent[key] = value
            stack.append((indent, parent))    # children of a key line (a process's Type,
            #                                   Name, Used GPU Memory) join its section
        else:
            section: dict = {}
            key = line.strip()
            if key in parent and isinstance(parent[key], dict):
                items = parent.setdefault(f"{key}#list", [parent[key]])
                items.append(section)
            parent[key] = section
            stack.append((indent, section))
    return root


def _int_unit(text: str) -> int | None:
    match = re.match(r"^(-?\d+)", text.strip())
    return int(match.group(1)) if match else None


def _float_unit(text: str) -> float | None:
    match = re.match(r"^(-?\d+(?:\.\d+)?)", text.strip())
    return float(match.group(1)) if match else None


def _flatten(section: dict) -> dict:
    flat = {}
    for key, value in section.items():
        if isinstance(value, dict):
            flat.update(_flatten(value))
        elif not key.endswith("#list"):
            flat[key] = value
    return flat


_REASON_NAMES = {
    "Idle": "gpu_idle", "Applications Clocks Setting": "applications_clocks_setting",
    "SW Power Cap": "sw_power_cap", "HW Slowdown": "hw_slowdown", "Sync Boost": "sync_boost",
    "SW Thermal Slowdown": "sw_thermal_slowdown", "HW Thermal Slowdown": "hw_thermal_slowdown",
    "HW Power Brake Slowdown": "hw_power_brake_slowdown",
    "Display Clock Setting": "display_clock_setting",
}


def parse_nvidia_smi_q(text: str) -> list[dict]:
    """`nvidia-smi -q` -> one {call name: answer} dict per GPU, in NVML's units."""
    src = "nvidia-smi -q"
    blocks: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        match = re.match(r"^GPU ([0-9A-Fa-f]{8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.\d)\s*$", line)
        if match:
            blocks.append((match.group(1), []))
        elif blocks:
            blocks[-1][1].append(line)
    gpus = []
    for bus, lines in blocks:
        t = _tree(lines)
        calls: dict = {}
        calls["name"] = _value(t.get("Product Name"), None, src)
        calls["uuid"] = _value(t.get("GPU UUID"), None, src)
        calls["pci_bus_id"] = _value(t.get("PCI", {}).get("Bus Id", bus), None, src)
        if _int_unit(t.get("Minor Number", "")) is not None:
            calls["minor_number"] = _value(_int_unit(t["Minor Number"]), None, src)
        fb = t.get("FB Memory Usage", {})
        if fb:
            calls["memory"] = _value({
                "total": _int_unit(fb["Total"]) * MIB, "reserved": _int_unit(fb["Reserved"]) * MIB,
                "used": _int_unit(fb["Used"]) * MIB, "free": _int_unit(fb["Free"]) * MIB,
                "version": "v2"}, None, src + " (MiB, so bytes rounded to MiB)")
        util = t.get("Utilization", {})
        if util:
            calls["utilization"] = _value({"gpu": _int_unit(util["GPU"]),
                                           "memory": _int_unit(util["Memory"])}, None, src)
        temp = t.get("Temperature", {}).get("GPU Current Temp")
        if temp:
            calls["temperature"] = _value(_int_unit(temp), None, src)
        power = t.get("GPU Power Readings", {})
        draw = power.get("Instantaneous Power Draw") or power.get("Power Draw")
        if draw and _float_unit(draw) is not None:
            calls["power_usage"] = _value(round(_float_unit(draw) * 1000), None, src)
        limit = power.get("Current Power Limit") or power.get("Enforced Power Limit")
        if limit and _float_unit(limit) is not None:
            calls["power_limit"] = _value(round(_float_unit(limit) * 1000), None, src)
        reasons = t.get("Clocks Event Reasons") or t.get("Clocks Throttle Reasons")
        if reasons:
            mask = 0
            bits = {name: bit for bit, name in CLOCK_EVENT_REASONS.items()}
            for key, value in _flatten(reasons).items():
                if value == "Active" and key in _REASON_NAMES:
                    mask |= bits[_REASON_NAMES[key]]
            calls["clocks_event_reasons"] = _value(mask, None, src)
        clocks = t.get("Clocks", {})
        if "SM" in clocks:
            calls["clock_sm"] = _value(_int_unit(clocks["SM"]), None, src)
        if "Memory" in clocks:
            calls["clock_mem"] = _value(_int_unit(clocks["Memory"]), None, src)
        link = t.get("PCI", {}).get("GPU Link Info", {})
        gen, width = link.get("PCIe Generation", {}), link.get("Link Width", {})
        for name, section, key in (("pcie_gen_current", gen, "Current"),
                                   ("pcie_gen_max", gen, "Max"),
                                   ("pcie_width_current", width, "Current"),
                                   ("pcie_width_max", width, "Max")):
            if _int_unit(section.get(key, "")) is not None:
                calls[name] = _value(_int_unit(section[key]), None, src)
        pci = t.get("PCI", {})
        tx, rx = pci.get("Tx Throughput"), pci.get("Rx Throughput")
        if tx and rx and _int_unit(tx) is not None:
            calls["pcie_throughput"] = _value({"tx_kib_per_s": _int_unit(tx),
                                               "rx_kib_per_s": _int_unit(rx)}, None, src)
        ecc = t.get("ECC Mode", {})
        if ecc:
            calls["ecc_mode"] = _value({"current": int(ecc.get("Current") == "Enabled"),
                                        "pending": int(ecc.get("Pending") == "Enabled")}, None, src)
        errors = t.get("ECC Errors", {})
        if errors.get("Volatile") and errors.get("Aggregate"):
            out = {}
            for scope in ("Volatile", "Aggregate"):
                section = errors[scope]
                corrected = sum(_int_unit(v) or 0 for k, v in section.items()
                                if isinstance(v, str) and k.endswith("Correctable")
                                and "Uncorrectable" not in k)
                uncorrected = sum(_int_unit(v) or 0 for k, v in section.items()
                                  if isinstance(v, str) and "Uncorrectable" in k)
                out[f"{scope.lower()}_corrected"] = corrected
                out[f"{scope.lower()}_uncorrected"] = uncorrected
            calls["ecc_errors"] = _value(out, None, src + " (sum of the SRAM and DRAM counters)")
        rows = t.get("Remapped Rows", {})
        if rows and _int_unit(rows.get("Correctable Error", "")) is not None:
            calls["remapped_rows"] = _value({
                "correctable": _int_unit(rows["Correctable Error"]),
                "uncorrectable": _int_unit(rows["Uncorrectable Error"]),
                "pending": int(rows.get("Pending") == "Yes"),
                "failure": int(rows.get("Remapping Failure Occurred") == "Yes")}, None, src)
        mig = t.get("MIG Mode", {})
        if mig:
            calls["mig_mode"] = _value({"current": int(mig.get("Current") == "Enabled"),
                                        "pending": int(mig.get("Pending") == "Enabled")}, None, src)
        processes = t.get("Processes")
        if processes == "None":
            calls["compute_processes"] = _value([], None, src)
            calls["graphics_processes"] = _value([], None, src)
        elif isinstance(processes, dict):
            compute, graphics = [], []
            for entry in _process_entries(processes):
                target = graphics if entry["type"] == "G" else compute
                target.append({"pid": entry["pid"], "used_bytes": entry["used_bytes"]})
            calls["compute_processes"] = _value(compute, None, src + " (MiB)")
            calls["graphics_processes"] = _value(graphics, None, src + " (MiB)")
        gpus.append(calls)
    return gpus


def _process_entries(section: dict) -> list[dict]:
    """nvidia-smi -q lists processes as repeated "Process ID/Type/Used GPU Memory" lines."""
    pids = section.get("Process ID")
    types = section.get("Type")
    used = section.get("Used GPU Memory")
    as_list = lambda v: v if isinstance(v, list) else ([v] if v is not None else [])
    out = []
    for pid, kind, mem in zip(as_list(pids), as_list(types), as_list(used)):
        size = _int_unit(mem)
        out.append({"pid": int(pid), "type": kind.strip()[:1],
                    "used_bytes": size * MIB if size is not None else None})
    return out


def from_nvidia_smi(q_text: str, topo_text: str, source: str, nvml_version: str | None = None,
                    notes: list[str] | None = None) -> dict:
    src_topo = "nvidia-smi topo -m"
    header = _tree([l for l in q_text.splitlines()[:12]])
    system = {}
    if header.get("Driver Version"):
        system["driver_version"] = _value(header["Driver Version"], None, "nvidia-smi -q")
    cuda = header.get("CUDA Version")
    if cuda:
        major, _, minor = cuda.partition(".")
        system["cuda_driver_version"] = _value(int(major) * 1000 + int(minor or 0) * 10, None,
                                               "nvidia-smi -q (CUDA Version)")
    if nvml_version:
        system["nvml_version"] = _value(nvml_version, None, "fixture README (nvidia-ml-py)")
    gpus = parse_nvidia_smi_q(q_text)
    topo = parse_nvidia_smi_topo(topo_text)
    system["device_count"] = _value(len(gpus), None, "nvidia-smi -q (Attached GPUs)")
    devices = []
    for index, calls in enumerate(gpus):
        cpu = topo["cpu_affinity"].get(index)
        if cpu and cpu != "N/A":
            calls["cpu_affinity"] = _value(parse_cpulist(cpu), None, src_topo)
        numa = topo["numa_affinity"].get(index)
        if numa and numa != "N/A":
            calls["memory_affinity"] = _value(parse_cpulist(numa), None, src_topo)
        if topo["gpu_numa_id"].get(index) == "N/A":
            calls["numa_node"] = _error("NotSupported", None, src_topo + " (GPU NUMA ID N/A)")
        devices.append({"index": index, "calls": calls})
    pairs = []
    for i in range(len(gpus)):
        for j in range(i + 1, len(gpus)):
            cell = topo["cells"].get((i, j), "")
            calls = {}
            match = re.fullmatch(r"NV(\d+)", cell)
            if match:
                calls["nvlink_count"] = _value(int(match.group(1)), None, src_topo)
            elif cell:
                levels = {"PIX": 10, "PXB": 20, "PHB": 30, "NODE": 40, "SYS": 50}
                if cell in levels:
                    calls["common_ancestor"] = _value(levels[cell], None, src_topo)
                    calls["nvlink_count"] = _value(0, None, src_topo)
            pairs.append({"a": i, "b": j, "calls": calls})
    return {"format": FORMAT, "source": source, "notes": list(notes or []), "system": system,
            "devices": devices, "pairs": pairs, "latency_us": {}}


# ---------------------------------------------------------------------------- derivation

def derived_uuid(recorded: str) -> str:
    """A stable, obviously derived UUID for the copy of a recorded GPU."""
    return "GPU-" + str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, "dsmon-derived/" + recorded))


def derive_two_node(rec4: dict, cpus_per_node: int | None = None,
                    second_bus: str = "80") -> dict:
    """The full HGX H100 8-GPU board the recorded 4-GPU VM was a partition of, on a
    two-socket host: see tests/fixtures/gpu/README.md for the rules and why."""
    rec = copy.deepcopy(rec4)
    n = len(rec["devices"])
    if cpus_per_node is None:
        cpus = set()
        for d in rec["devices"]:
            cpus.update(d["calls"]["cpu_affinity"]["value"])
        cpus_per_node = max(cpus) + 1
    why = "derived (tests/fixtures/gpu/README.md)"
    devices = []
    for half in (0, 1):
        for d in rec4["devices"]:
            calls = copy.deepcopy(d["calls"])
            if half:
                calls["uuid"] = _value(derived_uuid(calls["uuid"]["value"]), None, why)
                bus = calls["pci_bus_id"]["value"]
                calls["pci_bus_id"] = _value(bus[:9] + second_bus + bus[11:], None, why)
                if "minor_number" in calls:
                    calls["minor_number"] = _value(calls["minor_number"]["value"] + n, None, why)
                calls["cpu_affinity"] = _value(
                    [c + cpus_per_node for c in calls["cpu_affinity"]["value"]], None, why)
                calls["memory_affinity"] = _value([1], None, why)
            devices.append({"index": half * n + d["index"], "calls": calls,
                            **({"derived_from": f"recorded GPU {d['index']}"} if half else {})})
    pairs = []
    recorded_pairs = {(p["a"], p["b"]): p["calls"] for p in rec4["pairs"]}
    for i in range(2 * n):
        for j in range(i + 1, 2 * n):
            if i // n == j // n:                 # the same socket: as recorded
                calls = copy.deepcopy(recorded_pairs.get((i % n, j % n), {}))
            else:                                # across sockets
                links = recorded_pairs.get((0, 1), {}).get("nvlink_count", {}).get("value")
                calls = {"common_ancestor": _value(50, None, why + ": SYS by definition")}
                if links is not None:
                    calls["nvlink_count"] = _value(links, None, why + ": NVSwitch reaches all 8")
            pairs.append({"a": i, "b": j, "calls": calls})
    rec["devices"] = devices
    rec["pairs"] = pairs
    rec["system"]["device_count"] = _value(2 * n, None, why)
    rec["source"] = "derived from: " + rec4["source"]
    rec["notes"] = rec4.get("notes", []) + [
        f"GPUs {n}-{2 * n - 1} are copies of the recorded GPUs 0-{n - 1} on a second socket: "
        f"new UUIDs (uuid5 of the recorded one), bus {second_bus}, minor numbers +{n}, CPU "
        f"affinity +{cpus_per_node}, NUMA node 1; GPU pairs across the sockets: NVLink count "
        "as recorded within the partition (NVSwitch), PCIe common ancestor SYS."]
    return rec


# ---------------------------------------------------------------------------- building

def build(out_dir: Path, h200_dir: Path, h100_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    dump = json.loads((h200_dir / "nvml-dump.json").read_text())
    h200 = from_nvml_dump(
        dump, "tests/fixtures/h200-torch/nvml-dump.json (bench/device/nvml_dump.py, 1x H200, "
              "2026-11-30, a PyTorch process holding ~2.3 GiB)",
        topo_text=(h200_dir / "nvidia-smi-topo.txt").read_text(),
        smi_q_text=(h200_dir / "nvidia-smi-q.txt").read_text())
    h200["notes"].append("minor_number, ecc_errors, remapped_rows and memory_affinity come from "
                         "nvidia-smi -q / topo -m recorded in the same run (see 'from')")
    written.append(_write(out_dir / "h200-1gpu.json", h200))
    h100 = from_nvidia_smi(
        (h100_dir / "nvidia-smi-q.txt").read_text(),
        (h100_dir / "nvidia-smi-topo.txt").read_text(),
        "shared/fixtures/h100x4 (nvidia-smi -q and topo -m, 4x H100 80GB HBM3, 2026-11-28)",
        nvml_version="13.580.159.04",
        notes=["no NVML latencies were recorded on this host; its README gives ranges: memory "
               "info 20-90 us, process list 0.1-0.25 ms, utilisation 2.9-3.9 ms, power "
               "1.5-1.9 ms, PCIe throughput ~21 ms, first CPU affinity ~31 ms"])
    written.append(_write(out_dir / "h100-4gpu.json", h100))
    written.append(_write(out_dir / "hgx-h100-8gpu-2node.json", derive_two_node(h100)))
    return written


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsmon.gpu.recording")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="rewrite the converted and derived fixtures")
    b.add_argument("out", type=Path)
    b.add_argument("--h200", type=Path, required=True)
    b.add_argument("--h100", type=Path, required=True)
    args = parser.parse_args(argv)
    for path in build(args.out, args.h200, args.h100):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def record_answers(backend, source: str) -> dict:
    """Ask a backend (the real NVML, or a fake) every question the collector and topology
    ask, once, and return them in the fake's recording format: what `dsmon snapshot` stores
    so a snapshot replays its GPUs offline (`--nvml-replay`, or found by the replay itself).
    Raises NvmlError when NVML cannot even start."""
    import time as _time

    from dsmon.gpu.fake import FORMAT
    from dsmon.gpu.nvml import DEVICE_CALLS, PAIR_CALLS, SYSTEM_CALLS, NvmlError

    def ask(fn, *args) -> dict:
        try:
            return {"value": fn(*args)}
        except NvmlError as exc:
            return {"error": exc.kind}

    backend.init()
    try:
        recording = {"format": FORMAT, "source": source, "recorded_at": _time.time(),
                     "notes": [], "system": {}, "devices": [], "pairs": []}
        for name in SYSTEM_CALLS:
            recording["system"][name] = ask(getattr(backend, name))
        count = recording["system"]["device_count"].get("value") or 0
        for index in range(count):
            calls = {name: ask(getattr(backend, name), index) for name in DEVICE_CALLS}
            recording["devices"].append({"index": index, "calls": calls})
        for i in range(count):
            for j in range(i + 1, count):
                recording["pairs"].append({"a": i, "b": j, "calls": {
                    name: ask(getattr(backend, name), i, j) for name in PAIR_CALLS}})
        return recording
    finally:
        try:
            backend.shutdown()
        except NvmlError:
            pass
