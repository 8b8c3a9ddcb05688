"""GPU monitoring through NVML: per-GPU samples, per-process attribution, topology.

Modules
-------
- ``dsmon.gpu.nvml``: the only importer of pynvml (lazily). ``PynvmlBackend`` (real NVML),
  ``Nvml`` (one session: lazy init, one message + fix per failure logged once, retry with
  backoff 5 s doubling to 300 s, per-call latencies), ``default_nvml()`` (process-wide
  session), ``NvmlError``, ``GpuUnavailable`` (a ``dsmon.sources.SourceError``).
- ``dsmon.gpu.fake``: ``FakeBackend(recording)`` replays a recording made on a real host
  (``tests/fixtures/gpu/*.json``), with injectable faults (no driver, lost GPU, GPU removed,
  PID-namespace views, XID events).
- ``dsmon.gpu.poll``: ``NvmlPoller``, which NVML questions are asked when (schedules,
  demotion, lost GPUs, XID registration).
- ``dsmon.gpu.sample``: ``GpuCollector`` (the poller, the targets' facts, the snapshot's
  assembly) and the data types.
- ``dsmon.gpu.processes``: mapping the target (and its children) to NVML's process lists
  through NSpid; ``TargetGpuUsage``.
- ``dsmon.gpu.topology``: link matrix, CPU/NUMA affinity, thread placement;
  ``dsmon.gpu.topo``: ``topo_command``.
- ``dsmon.gpu.recording``: converters that made the fixtures (nvml-dump, nvidia-smi -q/topo,
  the derived 8-GPU two-node host).

API for integration
-------------------
``GpuCollector(paths=None, nvml=None, targets=(), slow_interval_s=30.0, fast_budget_us=250.0,
slow_inline=True, pcie_throughput=False, include_children=True, topology=True)``

- ``.name == "gpu"``; ``.collect() -> tuple[GpuSnapshot, dict[str, str]]`` is what
  ``dsmon.model.run_collector("gpu", collector.collect)`` expects (data, unavailable).
  Without a usable NVML it raises ``GpuUnavailable``: kind ``"missing"`` for no driver / no
  library / no pynvml (run_collector gives ``Status.NO_DATA``), ``"error"`` for a driver/
  library version mismatch or no permission (``Status.FAILED``); ``.describe()`` is the one
  message ("no NVIDIA driver: ..."), ``.hint`` the fix. The message is logged once (logger
  ``dsmon.gpu``), not once per sample; between retries collect() costs no NVML call.
- ``nvml``: None (the process-wide real session), an ``Nvml``, or a backend object
  (``FakeBackend``). Share one ``Nvml`` between collectors so "logged once" holds.
- ``.set_targets(pids)``: pids whose GPU use is attributed (``snapshot.targets[pid]``).
- ``.collect_slow() -> float``: the slow schedule's work (seconds), for the agent's slow
  executor when constructed with ``slow_inline=False``.
- ``.topology``: the ``GpuTopology`` read on the first slow run (None before).

``GpuSnapshot`` (dataclass; ``.to_dict()`` for JSON): ``driver_version``, ``nvml_version``,
``cuda_driver_version``, ``device_count``, ``max_device_count``, ``gpus: list[GpuSample]``,
``processes: list[GpuProcess]``, ``missing: list[dict]`` (GPUs seen before and gone now),
``xid_events`` (this tick), ``recent_xids`` (last 10 min), ``targets: dict[int,
TargetGpuUsage]``, ``schedule`` (fast/slow call names, demoted getters), ``fast_seconds``,
``fast_seconds_per_gpu``, ``slow_seconds``, ``xid_status``.

``GpuSample``: index, uuid, name, bus_id, minor_number, lost, memory_{total,reserved,used,
free}_bytes (v2 struct; ``memory_struct`` says "v1" on drivers without it), utilization_{gpu,
memory}_ratio, temperature_celsius, power_watts, power_limit_watts, sm_clock_hz,
memory_clock_hz, clock_event_reasons (names) / clock_event_mask, pcie_{gen,width}_{current,
max}, ecc_enabled/ecc_pending, ecc_{volatile,aggregate}_{corrected,uncorrected},
remapped_rows_{correctable,uncorrectable}, remap_pending, remap_failure, mig_enabled,
mig_pending, pcie_{tx,rx}_bytes_per_second (only with pcie_throughput=True), processes,
slow_age_seconds, ``unsupported`` and ``unavailable`` (NVML question -> reason). A field
the GPU does not support is None and named in ``unsupported``: never 0. What a person must act
on (lost GPU, XID, ECC, remapping, slowdowns, PCIe, MIG) is not decided here: the host
features in ``dsmon.features.gpu_health`` feed the `subject: host` rules of
``rules/dsmon/gpu-health.yaml``.

``TargetGpuUsage`` (``dsmon.gpu.processes``): pid, status (``"ok"``, ``"none"``,
``"unavailable (PID namespace)"``, ``"unavailable"``), reason, memory_bytes (None unless
measured), per_gpu (gpu_index, gpu_uuid, pid, nvml_pid, used_bytes, kind), gpus (NVML
indices), sources (``nvml``, ``device_files``, ``cuda_visible_devices``),
cuda_visible_devices, pids (target + descendants), nvml_pids, uses_cuda, unavailable.

``topo_command(paths=None, pid=None, backend=None, window_s=0.5) -> str``: the text of
``dsmon topo [PID]``: the ``nvidia-smi topo -m`` picture, and with a pid which GPUs the
target uses (and how we know), its GPU memory, the CPUs local to those GPUs, and where its
threads ran over ``window_s`` against them, with the numactl/taskset fix when most ran
elsewhere. Without NVML it returns the one-line reason and fix. Raises
``dsmon.sources.Gone`` when pid names no process.

``read_topology(nvml, paths) -> GpuTopology`` and ``render(topology) -> str`` are the parts;
``compare_with_nvidia_smi(topology, text) -> list[str]`` lists differences against real
``nvidia-smi topo -m`` output.

"""

from dsmon.gpu.nvml import GpuUnavailable, Nvml, NvmlError, PynvmlBackend, default_nvml
from dsmon.gpu.processes import TargetGpuUsage
from dsmon.gpu.sample import (
                              GpuCollector,
                              GpuProcess,
                              GpuSample,
                              GpuSnapshot,
                              XidEvent,
)
from dsmon.gpu.topology import (
                              GpuTopology,
                              compare_with_nvidia_smi,
                              read_topology,
                              render,
)
from dsmon.gpu.topo import topo_command

__all__ = [
                              "GpuCollector",
                              "GpuProcess",
                              "GpuSample",
                              "GpuSnapshot",
                              "GpuTopology",
                              "GpuUnavailable",
                              "Nvml",
                              "NvmlError",
                              "PynvmlBackend",
                              "TargetGpuUsage",
                              "XidEvent",
                              "compare_with_nvidia_smi",
                              "default_nvml",
                              "read_topology",
                              "render",
                              "topo_command",
]
