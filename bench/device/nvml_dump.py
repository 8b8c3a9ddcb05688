"""Dump what NVML says about every GPU to a JSON file, with per-call latency.

Every NVML call is wrapped: an NVMLError is recorded as its name (NotSupported, NoPermission...)
instead of failing the dump. Usage: python nvml_dump.py OUT.json
"""

import ctypes
import json
import sys
import time
import traceback

import pynvml as N


def _error_name(exc: Exception) -> str:
    if isinstance(exc, N.NVMLError):
        name = type(exc).__name__
        if name.startswith("NVMLError_"):
            return name[len("NVMLError_"):]
        try:
            return f"NVMLError({exc.value}): {N.nvmlErrorString(exc.value)}"
        except Exception:  # noqa: BLE001
            return f"NVMLError({getattr(exc, 'value', '?')})"
    return f"{type(exc).__name__}: {exc}"


def _plain(value):
    """NVML returns ctypes structures, bytes and lists of structures: make them JSON."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple, ctypes.Array)):
        return [_plain(v) for v in value]
    if isinstance(value, N.nvmlFriendlyObject):
        return {k: _plain(v) for k, v in vars(value).items()}
    if hasattr(value, "_fields_"):
        out = {}
        for field in value._fields_:
            name = field[0]
            if name.startswith("_"):
                continue
            out[name] = _plain(getattr(value, name))
        return out
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return repr(value)


LATENCIES = {}


def call(label, fn, *args, **kwargs):
    """{"value": ..., "us": latency} or {"error": name, "us": latency}."""
    start = time.perf_counter_ns()
    try:
        value = fn(*args, **kwargs)
        result = {"value": _plain(value)}
    except Exception as exc:  # noqa: BLE001
        result = {"error": _error_name(exc)}
    us = round((time.perf_counter_ns() - start) / 1000.0, 1)
    result["us"] = us
    LATENCIES.setdefault(label, []).append(us)
    return result


def throttle_names(mask):
    names = {}
    for attr in dir(N):
        if attr.startswith("nvmlClocksThrottleReason") or attr.startswith("nvmlClocksEventReason"):
            val = getattr(N, attr)
            if isinstance(val, int) and val and (val & (val - 1)) == 0:
                names.setdefault(val, attr)
    return [names.get(bit, hex(bit)) for bit in sorted(names) if mask & bit]


def device_info(index, handle):
    d = {"index": index}
    d["name"] = call("nvmlDeviceGetName", N.nvmlDeviceGetName, handle)
    d["uuid"] = call("nvmlDeviceGetUUID", N.nvmlDeviceGetUUID, handle)
    d["pci"] = call("nvmlDeviceGetPciInfo", N.nvmlDeviceGetPciInfo, handle)
    d["memory_v1"] = call("nvmlDeviceGetMemoryInfo", N.nvmlDeviceGetMemoryInfo, handle)
    if hasattr(N, "nvmlMemory_v2"):
        d["memory_v2"] = call("nvmlDeviceGetMemoryInfo(v2)", N.nvmlDeviceGetMemoryInfo, handle,
                              version=N.nvmlMemory_v2)
    else:
        d["memory_v2"] = {"error": "pynvml has no nvmlMemory_v2"}
    d["utilization"] = call("nvmlDeviceGetUtilizationRates", N.nvmlDeviceGetUtilizationRates, handle)
    d["temperature_gpu_c"] = call("nvmlDeviceGetTemperature", N.nvmlDeviceGetTemperature, handle,
                                  N.NVML_TEMPERATURE_GPU)
    d["power_usage_mw"] = call("nvmlDeviceGetPowerUsage", N.nvmlDeviceGetPowerUsage, handle)
    d["power_limit_mw"] = call("nvmlDeviceGetPowerManagementLimit",
                               N.nvmlDeviceGetPowerManagementLimit, handle)
    d["enforced_power_limit_mw"] = call("nvmlDeviceGetEnforcedPowerLimit",
                                        N.nvmlDeviceGetEnforcedPowerLimit, handle)
    reasons_fn = getattr(N, "nvmlDeviceGetCurrentClocksThrottleReasons", None) or \
        getattr(N, "nvmlDeviceGetCurrentClocksEventReasons")
    d["clocks_throttle_reasons"] = call("nvmlDeviceGetCurrentClocksThrottleReasons", reasons_fn, handle)
    try:
        if "value" in d["clocks_throttle_reasons"]:
            d["clocks_throttle_reasons"]["names"] = throttle_names(
                d["clocks_throttle_reasons"]["value"])
    except Exception as exc:  # noqa: BLE001
        d["clocks_throttle_reasons"]["names_error"] = repr(exc)
    d["clocks_mhz"] = {
        "sm": call("nvmlDeviceGetClockInfo", N.nvmlDeviceGetClockInfo, handle, N.NVML_CLOCK_SM),
        "mem": call("nvmlDeviceGetClockInfo", N.nvmlDeviceGetClockInfo, handle, N.NVML_CLOCK_MEM),
    }
    d["pcie"] = {
        "gen_current": call("nvmlDeviceGetCurrPcieLinkGeneration",
                            N.nvmlDeviceGetCurrPcieLinkGeneration, handle),
        "gen_max": call("nvmlDeviceGetMaxPcieLinkGeneration",
                        N.nvmlDeviceGetMaxPcieLinkGeneration, handle),
        "width_current": call("nvmlDeviceGetCurrPcieLinkWidth",
                              N.nvmlDeviceGetCurrPcieLinkWidth, handle),
        "width_max": call("nvmlDeviceGetMaxPcieLinkWidth", N.nvmlDeviceGetMaxPcieLinkWidth, handle),
    }
    d["ecc_mode"] = call("nvmlDeviceGetEccMode", N.nvmlDeviceGetEccMode, handle)
    d["mig_mode"] = call("nvmlDeviceGetMigMode", N.nvmlDeviceGetMigMode, handle)
    d["compute_processes"] = call("nvmlDeviceGetComputeRunningProcesses",
                                  N.nvmlDeviceGetComputeRunningProcesses, handle)
    d["graphics_processes"] = call("nvmlDeviceGetGraphicsRunningProcesses",
                                   N.nvmlDeviceGetGraphicsRunningProcesses, handle)
    # Affinity: a mask of 64-bit words; ask for enough words for 1024 CPUs.
    aff = call("nvmlDeviceGetCpuAffinity", N.nvmlDeviceGetCpuAffinity, handle, 16)
    try:
        if "value" in aff:
            aff["cpus"] = [w * 64 + b for w, word in enumerate(aff["value"]) for b in range(64)
                           if int(word) >> b & 1]
    except Exception as exc:  # noqa: BLE001
        aff["cpus_error"] = repr(exc)
    d["cpu_affinity"] = aff
    if hasattr(N, "nvmlDeviceGetNumaNodeId"):
        d["numa_node"] = call("nvmlDeviceGetNumaNodeId", N.nvmlDeviceGetNumaNodeId, handle)
    else:
        d["numa_node"] = {"error": "pynvml has no nvmlDeviceGetNumaNodeId"}
    d["persistence_mode"] = call("nvmlDeviceGetPersistenceMode", N.nvmlDeviceGetPersistenceMode, handle)
    d["compute_mode"] = call("nvmlDeviceGetComputeMode", N.nvmlDeviceGetComputeMode, handle)
    return d


TOPOLOGY_NAMES = {}
for _attr in dir(N):
    if _attr.startswith("NVML_TOPOLOGY_"):
        TOPOLOGY_NAMES.setdefault(getattr(N, _attr), _attr[len("NVML_TOPOLOGY_"):])


def main(out_path):
    dump = {"recorded_at": time.time(), "pynvml_file": N.__file__}
    init = call("nvmlInit", N.nvmlInit)
    dump["init"] = init
    if "error" in init:
        dump["error"] = "nvmlInit failed"
    else:
        dump["driver_version"] = call("nvmlSystemGetDriverVersion", N.nvmlSystemGetDriverVersion)
        dump["nvml_version"] = call("nvmlSystemGetNVMLVersion", N.nvmlSystemGetNVMLVersion)
        dump["cuda_driver_version"] = call("nvmlSystemGetCudaDriverVersion",
                                           N.nvmlSystemGetCudaDriverVersion)
        count = call("nvmlDeviceGetCount", N.nvmlDeviceGetCount)
        dump["device_count"] = count
        handles = []
        devices = []
        for i in range(count.get("value") or 0):
            h = call("nvmlDeviceGetHandleByIndex", N.nvmlDeviceGetHandleByIndex, i)
            if "error" in h:
                devices.append({"index": i, "handle": h})
                handles.append(None)
                continue
            handle = N.nvmlDeviceGetHandleByIndex(i)
            handles.append(handle)
            try:
                devices.append(device_info(i, handle))
            except Exception:  # noqa: BLE001
                devices.append({"index": i, "dump_error": traceback.format_exc()})
        dump["devices"] = devices
        pairs = []
        for i, hi in enumerate(handles):
            for j, hj in enumerate(handles):
                if j <= i or hi is None or hj is None:
                    continue
                r = call("nvmlDeviceGetTopologyCommonAncestor",
                         N.nvmlDeviceGetTopologyCommonAncestor, hi, hj)
                if "value" in r:
                    r["name"] = TOPOLOGY_NAMES.get(r["value"], str(r["value"]))
                pairs.append({"a": i, "b": j, **r})
        dump["topology_common_ancestor"] = pairs
        # Repeat the cheap hot-path calls so latency is not just a first-call number.
        for handle in handles:
            if handle is None:
                continue
            for _ in range(20):
                call("nvmlDeviceGetMemoryInfo", N.nvmlDeviceGetMemoryInfo, handle)
                call("nvmlDeviceGetUtilizationRates", N.nvmlDeviceGetUtilizationRates, handle)
                call("nvmlDeviceGetComputeRunningProcesses",
                     N.nvmlDeviceGetComputeRunningProcesses, handle)
                call("nvmlDeviceGetPowerUsage", N.nvmlDeviceGetPowerUsage, handle)
        dump["shutdown"] = call("nvmlShutdown", N.nvmlShutdown)
    summary = {}
    for label, values in sorted(LATENCIES.items()):
        vs = sorted(values)
        summary[label] = {"calls": len(vs), "min_us": vs[0], "median_us": vs[len(vs) // 2],
                          "max_us": vs[-1]}
    dump["latency_us"] = summary
    with open(out_path, "w") as handle:
        json.dump(dump, handle, indent=2)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(1)
