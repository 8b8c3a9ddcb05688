"""GPU monitoring without a GPU: dsmon.gpu against a fake NVML replaying real recordings.

Recordings (tests/fixtures/gpu/, README.md there says how each was made):
  h200-1gpu.json            1x H200, a PyTorch process on it (from tests/fixtures/h200-torch)
  h100-4gpu.json            4x H100 NV18 (from shared/fixtures/h100x4's nvidia-smi output)
  hgx-h100-8gpu-2node.json  8 GPUs on two NUMA nodes, derived from the 4x H100 recording
  h200-2gpu.json            2x H200, recorded on the lent machine by bench/device/nvml_record.py
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fixturetree import FakeThread

from dsmon.collectors.topology import TopologyCollector
from dsmon.engine.monitor import HostRuleMonitor
from dsmon.engine.rules import load_rules
from dsmon.gpu import recording
from dsmon.gpu.fake import FIXTURES, FakeBackend, load_recording
from dsmon.gpu.nvml import GpuUnavailable, Nvml, NvmlError, PynvmlBackend, count_nvlinks
from dsmon.gpu.processes import (
    STATUS_NONE,
    STATUS_OK,
    STATUS_PIDNS,
    map_visible_devices,
)
from dsmon.gpu.sample import GpuCollector
from dsmon.gpu.topology import (
    compare_with_nvidia_smi,
    parse_nvidia_smi_topo,
    read_topology,
    render,
)
from dsmon.gpu.topo import topo_command
from dsmon.model import Status, run_collector
from dsmon.paths import HostPaths

REPO = Path(__file__).resolve().parents[1]
H200_DIR = REPO / "tests" / "fixtures" / "h200-torch"
H100_DIR = REPO.parent / "shared" / "fixtures" / "h100x4"

H200_UUID = "GPU-523c910c-15c3-5d25-a4af-afe9e0fd0824"
H200_PID = 482                     # the PyTorch process of the h200-torch recording
H200_PROCESS_BYTES = 3158310912    # its usedGpuMemory there


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(name: str, clock: Clock | None = None, **kwargs):
    backend = FakeBackend(name, **kwargs)
    nvml = Nvml(backend, clock=clock) if clock else Nvml(backend)
    return backend, nvml


def empty_paths(tmp_path) -> HostPaths:
    return HostPaths(procfs=str(tmp_path / "proc"), sysfs=str(tmp_path / "sys"),
                     rootfs=str(tmp_path))


# ---------------------------------------------------------------------------- recordings

def test_fixtures_are_in_the_fake_format():
    for name in ("h200-1gpu", "h100-4gpu", "hgx-h100-8gpu-2node"):
        rec = load_recording(name)
        assert rec["devices"], name
        for device in rec["devices"]:
            for call, answer in device["calls"].items():
                assert ("value" in answer) != ("error" in answer), (name, call)


@pytest.mark.skipif(not (H100_DIR / "nvidia-smi-q.txt").exists(),
                    reason="shared/fixtures/h100x4 not present")
def test_converted_and_derived_fixtures_are_reproducible(tmp_path):
    """The committed fixtures are exactly what dsmon.gpu.recording makes of the recordings."""
    recording.build(tmp_path, H200_DIR, H100_DIR)
    for name in ("h200-1gpu", "h100-4gpu", "hgx-h100-8gpu-2node"):
        assert json.loads((tmp_path / f"{name}.json").read_text()) == \
            json.loads((FIXTURES / f"{name}.json").read_text()), name


def test_fake_never_invents_an_answer():
    backend = FakeBackend("h200-1gpu")
    backend.init()
    with pytest.raises(NvmlError) as info:
        backend.nvlinks(0)                  # nvml_dump.py did not ask for NVLinks
    assert info.value.kind == "NotRecorded"
    with pytest.raises(NvmlError) as info:
        backend.numa_node(0)                # recorded as NotSupported on the H200
    assert info.value.kind == "NotSupported"


# ---------------------------------------------------------------------------- samples

def test_h200_sample_matches_the_recording(tmp_path):
    _, nvml = make("h200-1gpu")
    batch = run_collector("gpu", GpuCollector(empty_paths(tmp_path), nvml).collect)
    assert batch.status is Status.OK, batch
    snap = batch.data
    gpu = snap.gpus[0]
    assert (gpu.index, gpu.name, gpu.uuid, gpu.bus_id) == (0, "NVIDIA H200", H200_UUID,
                                                           "00000000:00:06.0")
    assert snap.driver_version == "580.159.04" and snap.cuda_driver_version == 13000
    assert gpu.memory_total_bytes == 150754820096
    assert gpu.utilization_gpu_ratio == pytest.approx(0.16)
    assert gpu.temperature_celsius == 41.0
    assert gpu.power_watts == pytest.approx(214.297)
    assert gpu.power_limit_watts == 700.0
    assert gpu.sm_clock_hz == 1980e6 and gpu.memory_clock_hz == 3201e6
    assert gpu.clock_event_reasons == []
    assert (gpu.pcie_gen_current, gpu.pcie_gen_max, gpu.pcie_width_current,
            gpu.pcie_width_max) == (5, 5, 16, 16)
    assert gpu.ecc_enabled is True and gpu.ecc_volatile_uncorrected == 0
    assert gpu.remapped_rows_uncorrectable == 0 and gpu.remap_pending is False
    assert gpu.mig_enabled is False
    assert [(p.pid, p.used_bytes) for p in snap.processes] == [(H200_PID, H200_PROCESS_BYTES)]
    assert host_findings(snap) == []
    json.dumps(snap.to_dict())


def host_findings(*snapshots):
    """The firing findings of the shipped host rules after one snapshot per second."""
    monitor = HostRuleMonitor(load_rules())
    for second, snapshot in enumerate(snapshots):
        monitor.observe_gpu(snapshot, float(second), 1000.0 + second)
    return [f for f in monitor.findings() if f.state == "firing"]


def test_memory_uses_the_v2_struct_not_v1(tmp_path):
    """v1 counts the driver's reservation (615 MiB on the H200) as used."""
    _, nvml = make("h200-1gpu")
    gpu = GpuCollector(empty_paths(tmp_path), nvml).collect()[0].gpus[0]
    rec = load_recording("h200-1gpu")["devices"][0]["calls"]
    assert gpu.memory_struct == "v2"
    assert gpu.memory_used_bytes == 3167551488 == rec["memory"]["value"]["used"]
    assert gpu.memory_reserved_bytes == 644939776
    assert rec["memory_v1"]["value"]["used"] == gpu.memory_used_bytes + gpu.memory_reserved_bytes


def test_unsupported_field_is_absent_never_zero_and_asked_once(tmp_path):
    backend, nvml = make("h100-4gpu")
    backend.fail("temperature", 1, "NotSupported")
    collector = GpuCollector(empty_paths(tmp_path), nvml)
    for _ in range(5):
        snap, unavailable = collector.collect()
    gpu1 = snap.gpus[1]
    assert gpu1.temperature_celsius is None
    assert "temperature" in gpu1.unsupported
    assert snap.gpus[0].temperature_celsius == 58.0
    assert snap.to_dict()["gpus"][1]["temperature_celsius"] is None
    assert unavailable == {}               # not supported is not an error: status stays OK
    assert backend.calls.count(("temperature", 1)) == 1
    # the H200's NUMA node id is recorded as NotSupported: N/A in the matrix, not 0
    _, nvml = make("h200-1gpu")
    topo = read_topology(nvml, empty_paths(tmp_path))
    assert topo.gpus[0].gpu_numa_id is None
    assert "N/A" in render(topo).splitlines()[1]


def test_an_error_other_than_not_supported_is_named(tmp_path):
    backend, nvml = make("h100-4gpu")
    backend.fail("power_usage", 2, "NoPermission")
    batch = run_collector("gpu", GpuCollector(empty_paths(tmp_path), nvml).collect)
    assert batch.status is Status.PARTIAL
    assert batch.data.gpus[2].power_watts is None
    assert "permission denied" in batch.unavailable["gpu2.power_usage"]


# ---------------------------------------------------------------------------- no driver

@pytest.mark.parametrize("kind,status,phrase", [
    ("LibraryNotFound", Status.NO_DATA, "no NVIDIA driver: libnvidia-ml.so.1"),
    ("DriverNotLoaded", Status.NO_DATA, "no NVIDIA driver: libnvidia-ml is installed but the "
                                        "nvidia kernel module is not loaded"),
    ("LibRmVersionMismatch", Status.FAILED, "NVIDIA driver/library version mismatch"),
])
def test_no_driver_one_message_logged_once_with_backoff(kind, status, phrase, caplog,
                                                        fake_host):
    fake_host.add_smt_host(sockets=1, cores=2, threads=1)
    clock = Clock()
    backend, nvml = make("h100-4gpu", clock, init_error=kind)
    collector = GpuCollector(fake_host.paths, nvml)
    topology = TopologyCollector(fake_host.paths)
    caplog.set_level(logging.DEBUG, logger="dsmon.gpu")
    batches = []
    for _ in range(100):                    # 100 one-second ticks
        batches.append(run_collector("gpu", collector.collect))
        assert run_collector("topology", topology.collect).status is Status.OK  # unaffected
        clock.advance(1.0)
    assert {b.status for b in batches} == {status}
    assert {b.error for b in batches} == {batches[0].error}
    assert batches[0].error.startswith(phrase)
    assert batches[0].hint                              # the fix
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and phrase in warnings[0].getMessage()
    # retried with backoff 5, 10, 20, 40 s: attempts at t=0, 5, 15, 35, 75
    assert backend.init_calls == 5
    # the driver comes back: the next retry succeeds and says so
    backend.init_error = None
    clock.advance(200)
    batch = run_collector("gpu", collector.collect)
    assert batch.status is Status.OK and len(batch.data.gpus) == 4
    assert any("available again" in r.getMessage() for r in caplog.records)


def test_real_pynvml_without_a_driver_says_no_nvidia_driver(caplog):
    """This machine has pynvml but no libnvidia-ml: the real backend's path."""
    try:
        import pynvml  # noqa: F401 - only to know whether the binding is installed here
    except ImportError:
        pytest.skip("pynvml not installed")
    nvml = Nvml(PynvmlBackend())
    if nvml.available():
        pytest.skip("this machine has an NVIDIA driver")
    batch = run_collector("gpu", GpuCollector(HostPaths(), nvml).collect)
    assert batch.status is Status.NO_DATA
    assert batch.error.startswith("no NVIDIA driver")


def test_missing_binding_is_no_data(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)   # import pynvml fails
    batch = run_collector("gpu", GpuCollector(HostPaths(), Nvml(PynvmlBackend())).collect)
    assert batch.status is Status.NO_DATA
    assert "nvidia-ml-py" in batch.error and "pip install nvidia-ml-py" in batch.hint


def test_nvml_lost_mid_session_becomes_unavailable(tmp_path):
    clock = Clock()
    backend, nvml = make("h100-4gpu", clock)
    collector = GpuCollector(empty_paths(tmp_path), nvml)
    assert run_collector("gpu", collector.collect).status is Status.OK
    backend.fail("device_count", None, "DriverNotLoaded")     # the module was unloaded
    batch = run_collector("gpu", collector.collect)
    assert batch.status is Status.NO_DATA and batch.error.startswith("no NVIDIA driver")
    calls = len(backend.calls)
    run_collector("gpu", collector.collect)                   # within the backoff: no NVML
    assert len(backend.calls) == calls


def test_topo_without_driver_prints_the_reason(tmp_path):
    _, nvml = make("h100-4gpu", init_error="LibraryNotFound")
    text = topo_command(empty_paths(tmp_path), backend=nvml)
    assert text.startswith("no NVIDIA driver") and "fix:" in text


# ---------------------------------------------------------------------------- lost GPUs

def test_lost_gpu_is_critical_and_the_others_keep_reporting(tmp_path):
    backend, nvml = make("h100-4gpu")
    collector = GpuCollector(empty_paths(tmp_path), nvml)
    collector.collect()
    backend.lose_gpu(1)
    batch = run_collector("gpu", collector.collect)
    assert batch.status is Status.PARTIAL
    snap = batch.data
    assert snap.gpus[1].lost and snap.gpus[1].memory_used_bytes is None
    assert snap.gpus[1].uuid == "GPU-0df76239-eaf4-7e6e-62f0-819d82b648dc"   # still named
    for index in (0, 2, 3):
        assert not snap.gpus[index].lost
        assert snap.gpus[index].memory_total_bytes == 81559 * 2**20
    top = host_findings(snap)[0]
    assert (top.severity, top.rule_id, top.subject) == ("critical", "gpu-lost", "host")
    assert "GPU 1 (" in top.summary and "GPU 0 (" not in top.summary
    assert "nvidia-smi -r -i 1" in top.hint
    # a lost GPU is not asked again on fast ticks
    before = sum(1 for c in backend.calls if c[1:2] == (1,))
    collector.collect()
    assert sum(1 for c in backend.calls if c[1:2] == (1,)) == before


def test_gpu_count_dropping_is_reported(tmp_path):
    backend, nvml = make("h100-4gpu")
    collector = GpuCollector(empty_paths(tmp_path), nvml)
    first, _ = collector.collect()
    gone = first.gpus[2].uuid
    backend.remove_gpu(2)
    batch = run_collector("gpu", collector.collect)
    snap = batch.data
    assert (snap.device_count, snap.max_device_count) == (3, 4)
    assert [m["uuid"] for m in snap.missing] == [gone]
    finding = next(f for f in host_findings(first, snap) if f.rule_id == "gpu-count-dropped")
    assert finding.severity == "critical" and gone in finding.summary
    assert "1 GPU(s) seen earlier are gone" in finding.summary
    assert snap.gpus[2].uuid == first.gpus[3].uuid       # the next GPU moved down one index
    assert batch.status is Status.PARTIAL and "gpus" in batch.unavailable


# ---------------------------------------------------------------------------- schedules

def test_slow_questions_are_asked_on_the_slow_schedule(tmp_path):
    clock = Clock()
    backend, nvml = make("h100-4gpu", clock)
    collector = GpuCollector(empty_paths(tmp_path), nvml, slow_interval_s=30, clock=clock)
    for _ in range(10):
        snap, _ = collector.collect()
        clock.advance(1)
    assert backend.calls.count(("memory", 0)) == 10
    assert backend.calls.count(("ecc_errors", 0)) == 1
    assert backend.calls.count(("cpu_affinity", 0)) == 1
    assert snap.gpus[0].slow_age_seconds == pytest.approx(9.0)
    clock.advance(25)
    collector.collect()
    assert backend.calls.count(("ecc_errors", 0)) == 2
    assert backend.calls.count(("cpu_affinity", 0)) == 1     # topology: once per enumeration


def test_a_slow_getter_moves_to_the_slow_schedule(tmp_path):
    """Utilisation took ~3 ms per call on the H100 host: it must not stay on the fast tick."""
    clock = Clock()
    backend, nvml = make("h200-1gpu", clock)
    backend.delay("utilization", 0.003)
    collector = GpuCollector(empty_paths(tmp_path), nvml, fast_budget_us=250, clock=clock)
    for _ in range(8):
        snap, _ = collector.collect()
    assert "utilization" in snap.schedule["demoted"]
    assert "utilization" not in snap.schedule["fast"]
    calls = backend.calls.count(("utilization", 0))
    for _ in range(5):
        snap, _ = collector.collect()
    assert backend.calls.count(("utilization", 0)) == calls
    assert snap.gpus[0].utilization_gpu_ratio == pytest.approx(0.16)   # still reported
    clock.advance(31)
    collector.collect()
    assert backend.calls.count(("utilization", 0)) == calls + 1


def test_collect_slow_for_an_agent_slow_executor(tmp_path):
    _, nvml = make("h100-4gpu")
    collector = GpuCollector(empty_paths(tmp_path), nvml, slow_inline=False)
    snap, _ = collector.collect()
    assert snap.gpus[0].ecc_enabled is None and collector.topology is None
    assert collector.collect_slow() >= 0
    snap, _ = collector.collect()
    assert snap.gpus[0].ecc_enabled is True and collector.topology is not None


# ---------------------------------------------------------------------------- processes

def _gpu_target(host, pid=4242, minors=(0,), uvm=True, nspid=None, env=None, ppid=1,
                namespace=None, threads=None, nr_cpus=None, cpus_allowed=(0,)):
    host.add_process(pid, comm="python3", nspid=nspid, ppid=ppid, threads=threads,
                     environ=env or {"PATH": "/usr/bin"}, nr_cpus=nr_cpus,
                     cpus_allowed=cpus_allowed)
    fd = 10
    for minor in minors:
        host.symlink(f"proc/{pid}/fd/{fd}", f"/dev/nvidia{minor}")
        fd += 1
    host.symlink(f"proc/{pid}/fd/{fd}", "/dev/nvidiactl")
    if uvm:
        host.symlink(f"proc/{pid}/fd/{fd + 1}", "/dev/nvidia-uvm")
    if namespace:
        host.symlink(f"proc/{pid}/ns/pid", namespace)


def _dsmon_self(host, pid=9000, nspid=(9000, 25), namespace="pid:[4026532777]"):
    host.add_process(pid, comm="dsmon", nspid=list(nspid))
    host.symlink(f"proc/{pid}/ns/pid", namespace)
    host.symlink("proc/self", str(pid))


def test_target_matched_to_nvml_process_list(fake_host):
    _gpu_target(fake_host, pid=H200_PID)
    _, nvml = make("h200-1gpu")
    snap, _ = GpuCollector(fake_host.paths, nvml, targets=[H200_PID]).collect()
    usage = snap.targets[H200_PID]
    assert usage.status == STATUS_OK
    assert usage.memory_bytes == H200_PROCESS_BYTES
    assert usage.gpus == [0] and usage.sources["nvml"] == [0]
    assert usage.sources["device_files"] == [0]


def test_pid_namespace_empty_list_is_unavailable_not_zero(fake_host):
    """dsmon in a fresh PID namespace: NVML lists nothing, though the target holds CUDA's
    device files open."""
    _gpu_target(fake_host, pid=H200_PID)
    backend, nvml = make("h200-1gpu")
    backend.hide_processes()
    snap, _ = GpuCollector(fake_host.paths, nvml, targets=[H200_PID]).collect()
    usage = snap.targets[H200_PID]
    assert usage.status == STATUS_PIDNS == "unavailable (PID namespace)"
    assert usage.memory_bytes is None
    assert "hostPID" in usage.reason and "/dev/nvidia-uvm" in usage.reason
    assert usage.gpus == [0]                    # known from the device files
    assert snap.to_dict()["targets"][H200_PID]["memory_bytes"] is None


def test_target_outside_dsmon_namespace_is_unavailable(fake_host):
    """dsmon runs one namespace below the procfs it reads (a container with the host's /proc
    mounted), the target in the host's namespace: NVML cannot list it."""
    _dsmon_self(fake_host)
    _gpu_target(fake_host, pid=H200_PID)
    _, nvml = make("h200-1gpu")
    snap, _ = GpuCollector(fake_host.paths, nvml, targets=[H200_PID]).collect()
    usage = snap.targets[H200_PID]
    assert usage.status == STATUS_PIDNS and usage.memory_bytes is None
    assert "outside dsmon's PID namespace" in usage.reason


def test_containerised_target_mapped_through_nspid(fake_host):
    """The target runs in a container (NSpid 4242 17); dsmon runs in that container's PID
    namespace too (a sidecar with the host's /proc mounted): NVML names the process 17."""
    namespace = "pid:[4026532777]"
    _dsmon_self(fake_host, namespace=namespace)
    _gpu_target(fake_host, pid=4242, nspid=[4242, 17], namespace=namespace)
    backend, nvml = make("h200-1gpu")
    backend.view_pids({H200_PID: 17})          # the recorded process, seen from that namespace
    snap, _ = GpuCollector(fake_host.paths, nvml, targets=[4242]).collect()
    usage = snap.targets[4242]
    assert usage.status == STATUS_OK
    assert usage.nvml_pids == {4242: 17}
    assert usage.per_gpu[0]["pid"] == 4242 and usage.per_gpu[0]["nvml_pid"] == 17
    assert usage.memory_bytes == H200_PROCESS_BYTES


def test_containerised_target_seen_from_the_host(fake_host):
    """dsmon in the host's namespace: NVML names the container's process by its host pid."""
    _gpu_target(fake_host, pid=4242, nspid=[4242, 17], namespace="pid:[4026532777]")
    backend, nvml = make("h200-1gpu")
    backend.view_pids({H200_PID: 4242})
    usage = GpuCollector(fake_host.paths, nvml, targets=[4242]).collect()[0].targets[4242]
    assert usage.status == STATUS_OK and usage.memory_bytes == H200_PROCESS_BYTES


def test_sibling_namespace_is_unavailable(fake_host):
    _dsmon_self(fake_host, namespace="pid:[4026532777]")
    _gpu_target(fake_host, pid=4242, nspid=[4242, 17], namespace="pid:[4026532999]")
    backend, nvml = make("h200-1gpu")
    backend.view_pids({H200_PID: None})
    usage = GpuCollector(fake_host.paths, nvml, targets=[4242]).collect()[0].targets[4242]
    assert usage.status == STATUS_PIDNS and "sibling" in usage.reason


def test_gpu_memory_of_a_servers_worker_children(fake_host):
    """vLLM-style: the server process holds no GPU memory, its worker child does."""
    fake_host.add_process(4000, comm="vllm")
    _gpu_target(fake_host, pid=4242, ppid=4000)
    backend, nvml = make("h200-1gpu")
    backend.view_pids({H200_PID: 4242})
    usage = GpuCollector(fake_host.paths, nvml, targets=[4000]).collect()[0].targets[4000]
    assert usage.pids == [4000, 4242]
    assert usage.status == STATUS_OK and usage.per_gpu[0]["pid"] == 4242


def test_target_without_gpu_use_is_zero_not_unavailable(fake_host):
    fake_host.add_process(5000, comm="python3")
    _, nvml = make("h200-1gpu")
    usage = GpuCollector(fake_host.paths, nvml, targets=[5000]).collect()[0].targets[5000]
    assert usage.status == STATUS_NONE and usage.memory_bytes == 0 and usage.gpus == []


def test_cuda_visible_devices_mapping():
    _, nvml = make("hgx-h100-8gpu-2node")
    gpus = GpuCollector(HostPaths(procfs="/nonexistent"), nvml).collect()[0].gpus
    assert map_visible_devices("5,6", gpus) == ([5, 6], "")
    assert map_visible_devices(gpus[7].uuid[:12], gpus)[0] == [7]
    indices, note = map_visible_devices("1,9,2", gpus)
    assert indices == [1] and "names no GPU" in note


# ---------------------------------------------------------------------------- topology

def test_h200_topology_agrees_with_its_recorded_nvidia_smi(tmp_path):
    _, nvml = make("h200-1gpu")
    topo = read_topology(nvml, empty_paths(tmp_path))
    assert compare_with_nvidia_smi(topo, (H200_DIR / "nvidia-smi-topo.txt").read_text()) == []


@pytest.mark.skipif(not (H100_DIR / "nvidia-smi-topo.txt").exists(),
                    reason="shared/fixtures/h100x4 not present")
def test_h100_topology_agrees_with_its_recorded_nvidia_smi(tmp_path):
    _, nvml = make("h100-4gpu")
    topo = read_topology(nvml, empty_paths(tmp_path))
    assert compare_with_nvidia_smi(topo, (H100_DIR / "nvidia-smi-topo.txt").read_text()) == []


def test_compare_reports_a_difference(tmp_path):
    _, nvml = make("h100-4gpu")
    topo = read_topology(nvml, empty_paths(tmp_path))
    text = render(topo).replace("GPU2\tNV18", "GPU2\tSYS")
    assert compare_with_nvidia_smi(topo, text) == ["cells (2, 0): nvidia-smi 'SYS', dsmon 'NV18'"]


EIGHT_GPU_2NODE = """\
\tGPU0\tGPU1\tGPU2\tGPU3\tGPU4\tGPU5\tGPU6\tGPU7\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID
GPU0\t X \tNV18\tNV18\tNV18\tNV18\tNV18\tNV18\tNV18\t0-63\t0\t\tN/A
GPU1\tNV18\t X \tNV18\tNV18\tNV18\tNV18\tNV18\tNV18\t0-63\t0\t\tN/A
GPU2\tNV18\tNV18\t X \tNV18\tNV18\tNV18\tNV18\tNV18\t0-63\t0\t\tN/A
GPU3\tNV18\tNV18\tNV18\t X \tNV18\tNV18\tNV18\tNV18\t0-63\t0\t\tN/A
GPU4\tNV18\tNV18\tNV18\tNV18\t X \tNV18\tNV18\tNV18\t64-127\t1\t\tN/A
GPU5\tNV18\tNV18\tNV18\tNV18\tNV18\t X \tNV18\tNV18\t64-127\t1\t\tN/A
GPU6\tNV18\tNV18\tNV18\tNV18\tNV18\tNV18\t X \tNV18\t64-127\t1\t\tN/A
GPU7\tNV18\tNV18\tNV18\tNV18\tNV18\tNV18\tNV18\t X \t64-127\t1\t\tN/A
"""


def _two_node_host(host):
    """The sysfs NUMA layout of the derived host: node 0 CPUs 0-63, node 1 CPUs 64-127."""
    host.add_node(0, cpus=range(64), mem_kb=512 * 1024 * 1024)
    host.add_node(1, cpus=range(64, 128), mem_kb=512 * 1024 * 1024)


def test_eight_gpu_two_node_topology_rendering(fake_host):
    _two_node_host(fake_host)
    _, nvml = make("hgx-h100-8gpu-2node")
    topo = read_topology(nvml, fake_host.paths)
    text = render(topo)
    assert text.startswith(EIGHT_GPU_2NODE)
    assert "NV#  = Connection traversing a bonded set of # NVLinks" in text
    assert topo.numa_cpus == {0: list(range(64)), 1: list(range(64, 128))}
    assert topo.local_cpus([5]) == list(range(64, 128)) and topo.local_nodes([5]) == [1]
    parsed = parse_nvidia_smi_topo(text)
    assert parsed["gpus"] == 8 and parsed["cells"][(3, 4)] == "NV18"


def test_eight_gpu_two_node_without_nvlink_shows_the_pcie_path(fake_host):
    """With NVLink unavailable the matrix falls back to the PCIe path: SYS across the two
    sockets; within a socket the recording has no PCIe answer, so N/A (never a guess)."""
    _two_node_host(fake_host)
    backend, nvml = make("hgx-h100-8gpu-2node")
    backend.fail("nvlink_count", None, "NotSupported")
    topo = read_topology(nvml, fake_host.paths)
    rows = render(topo).splitlines()
    assert rows[1].split("\t")[1:9] == [" X ", "N/A", "N/A", "N/A", "SYS", "SYS", "SYS", "SYS"]
    assert rows[6].split("\t")[1:9] == ["SYS", "SYS", "SYS", "SYS", "N/A", " X ", "N/A", "N/A"]
    assert "nvlink_count(0,1)" in topo.unavailable


def test_nvlink_counting_direct_and_through_nvswitch():
    a, b = "00000000:00:06.0", "00000000:00:07.0"
    direct = [{"link": l, "active": 1, "remote_bus_id": b, "remote_type": 0} for l in range(4)]
    assert count_nvlinks(direct, [], a, b) == 4
    switch = [{"link": l, "active": 1, "remote_bus_id": "00000000:0a:00.0", "remote_type": 2}
              for l in range(18)]
    assert count_nvlinks(switch, switch, a, b) == 18
    assert count_nvlinks(switch, [], a, b) == 0


def test_topo_command_target_on_remote_cpus(fake_host):
    """The target uses GPU5 (node 1) but its threads run on node 0's CPUs."""
    _two_node_host(fake_host)
    threads = [FakeThread(7000 + i, "python3", utime=500, processor=i) for i in range(4)]
    _gpu_target(fake_host, pid=7000, minors=(5,), threads=threads, nr_cpus=128,
                cpus_allowed=range(128),
                env={"CUDA_VISIBLE_DEVICES": "5", "PATH": "/usr/bin"})
    _, nvml = make("hgx-h100-8gpu-2node")
    text = topo_command(fake_host.paths, 7000, backend=nvml, window_s=0)
    assert text.startswith(EIGHT_GPU_2NODE)
    target = text.split("Target 7000 (python3):")[1]
    assert "uses: GPU5" in target
    assert "open /dev/nvidia* GPU5" in target and "CUDA_VISIBLE_DEVICES 5" in target
    # the derived host's recording lists no processes: memory is not claimed to be 0
    assert "GPU memory: unavailable (PID namespace)" in target
    assert "CPUs local to its GPUs: 64-127 (NUMA node 1)" in target
    assert "0% of 20.00 CPU-seconds on local CPUs" in target
    assert "warning: 100% of its CPU time ran away" in target
    assert "numactl --cpunodebind=1 --membind=1" in target


def test_topo_command_target_on_local_cpus(fake_host):
    _two_node_host(fake_host)
    threads = [FakeThread(7000 + i, "python3", utime=300, processor=64 + i) for i in range(4)]
    _gpu_target(fake_host, pid=7000, minors=(4, 5), threads=threads, nr_cpus=128,
                cpus_allowed=range(64, 128))
    _, nvml = make("hgx-h100-8gpu-2node")
    text = topo_command(fake_host.paths, 7000, backend=nvml, window_s=0)
    target = text.split("Target 7000")[1]
    assert "uses: GPU4, GPU5" in target
    assert "100% of 12.00 CPU-seconds on local CPUs" in target
    assert "CPUs it may run on: 64-127 (64 of them local)" in target
    assert "warning" not in target


def test_topo_command_unknown_pid(fake_host):
    from dsmon.sources import Gone
    _, nvml = make("h200-1gpu")
    with pytest.raises(Gone):
        topo_command(fake_host.paths, 31337, backend=nvml)


# ---------------------------------------------------------------------------- XID

def test_xid_unavailable_in_a_recording_without_it(tmp_path):
    _, nvml = make("h100-4gpu")
    snap, _ = GpuCollector(empty_paths(tmp_path), nvml).collect()
    assert snap.xid_status == "unavailable: not in the NVML recording"


def test_unavailable_reason_is_stable_across_ticks(tmp_path):
    """The NO_DATA text must not change every tick (log folding, one line per state)."""
    clock = Clock()
    _, nvml = make("h100-4gpu", clock, init_error="LibraryNotFound")
    collector = GpuCollector(empty_paths(tmp_path), nvml)
    errors = set()
    for _ in range(12):
        with pytest.raises(GpuUnavailable) as info:
            collector.collect()
        errors.add(info.value.describe())
        clock.advance(1)
    assert len(errors) == 1


# ---------------------------------------------------------------------------- 2x H200 (recorded)

H200X2_PID = 635                    # torch_workload.py during the recording


def test_h200x2_recording_replays(tmp_path):
    _, nvml = make("h200-2gpu")
    batch = run_collector("gpu", GpuCollector(empty_paths(tmp_path), nvml).collect)
    assert batch.status is Status.OK
    snap = batch.data
    assert [g.name for g in snap.gpus] == ["NVIDIA H200"] * 2
    assert [(p.gpu_index, p.pid, p.used_bytes) for p in snap.processes] == \
        [(0, H200X2_PID, 3160408064)]                 # nvidia-smi said 3014 MiB: the same
    idle = snap.gpus[1]
    assert idle.clock_event_reasons == ["gpu_idle"]   # idle is not a slowdown
    # held for longer than the rule's `for:`: an idle GPU is still not slowed
    assert not [f for f in host_findings(*[snap] * 8)
                if f.rule_id in ("gpu-clocks-slowed", "gpu-power-capped")]
    assert idle.memory_reserved_bytes == 644939776 and idle.memory_used_bytes == 3407872
    assert snap.xid_status == "watching GPUs 0, 1"


def test_h200x2_topology_agrees_with_its_nvidia_smi(tmp_path):
    _, nvml = make("h200-2gpu")
    topo = read_topology(nvml, empty_paths(tmp_path))
    text = (FIXTURES / "h200-2gpu-nvidia-smi-topo.txt").read_text()
    assert compare_with_nvidia_smi(topo, text) == []
    assert topo.cells[0][1] == "NV18" and topo.pcie[(0, 1)] == "PHB"
    assert topo.gpus[0].numa_affinity == [0] and topo.gpus[0].gpu_numa_id is None


def test_h200x2_nvlinks_go_through_nvswitch():
    """Each H200 has 18 active links to NVSwitches (remote type 2, the switch's bus id
    hidden in the VM as FFFFFFFF:FF:FF.0): NV18 between the two GPUs, as nvidia-smi says."""
    rec = load_recording("h200-2gpu")
    links = [d["calls"]["nvlinks"]["value"] for d in rec["devices"]]
    buses = [d["calls"]["pci_bus_id"]["value"] for d in rec["devices"]]
    assert [sum(l["active"] for l in x) for x in links] == [18, 18]
    assert {l["remote_type"] for x in links for l in x} == {2}
    assert count_nvlinks(links[0], links[1], buses[0], buses[1]) == 18
    assert rec["pairs"][0]["calls"]["nvlink_count"]["value"] == 18


def test_h200x2_xid_event_is_a_finding(tmp_path):
    backend, nvml = make("h200-2gpu")
    collector = GpuCollector(empty_paths(tmp_path), nvml)
    collector.collect()
    backend.inject_xid(1, 79)
    snap, _ = collector.collect()
    assert [(e.gpu_index, e.xid) for e in snap.xid_events] == [(1, 79)]
    findings = host_findings(snap)
    finding = next(f for f in findings if f.rule_id == "gpu-xid-critical")
    assert finding.severity == "critical" and "fallen off the bus" in finding.summary
    assert "GPU 1: Xid 79" in finding.summary
    assert "gpu-xid" not in {f.rule_id for f in findings}       # the critical one explains it
    snap, _ = collector.collect()
    assert snap.xid_events == [] and [e.xid for e in snap.recent_xids] == [79]


def test_h200x2_recorded_latencies_fit_the_fast_budget():
    """From the latencies recorded on the 2x H200 machine (medians of 50 calls per GPU):
    the fast schedule's NVML calls cost well under 1 ms per GPU per tick."""
    from dsmon.gpu.sample import FAST_CALLS
    lat = load_recording("h200-2gpu")["latency_us"]
    per_gpu = sum(lat[name]["median_us"] for name in FAST_CALLS)
    per_tick = lat["device_count"]["median_us"] + lat["xid_poll"]["median_us"]
    assert per_gpu + per_tick / 2 < 250, (per_gpu, per_tick)
    # the first calls are the slow ones: they must not be what the schedule is judged by
    assert lat["cpu_affinity"]["first_us"] > 10_000 > lat["cpu_affinity"]["median_us"]
    assert lat["pcie_throughput"]["median_us"] > 20_000          # never on the fast schedule
