"""dsmon's GPU code against a real GPU and real PyTorch workloads (skipped without a GPU).

Runs on the lent GPU machine (bench/device/gpu_test.sh); CI has no GPU and skips it all.
Results (numbers and raw outputs) go to $DSMON_GPU_OUT when set.

- per-process GPU memory from dsmon vs torch.cuda.memory_reserved() + the CUDA context
  (the context measured as NVML's device memory used minus torch's reserved, on an otherwise
  idle GPU, after subtracting the idle GPU's own used memory), within 5 %, at 3 sizes;
- dsmon's topology vs `nvidia-smi topo -m`;
- `dsmon topo PID` against a live workload;
- a target in its own PID namespace (NSpid mapping), and dsmon in a fresh PID namespace
  ("unavailable (PID namespace)");
- the cost of the fast schedule per GPU per tick (budget: 1 ms).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dsmon.gpu.nvml import Nvml
from dsmon.gpu.processes import STATUS_OK, STATUS_PIDNS
from dsmon.gpu.sample import GpuCollector
from dsmon.gpu.topology import (
    compare_with_nvidia_smi,
    read_topology,
    render,
)
from dsmon.gpu.topo import topo_command
from dsmon.paths import HostPaths

REPO = Path(__file__).resolve().parents[1]
OUT = Path(os.environ["DSMON_GPU_OUT"]) if os.environ.get("DSMON_GPU_OUT") else None


def _gpu_count() -> int:
    nvml = Nvml()
    if not nvml.available():
        return 0
    try:
        return int(nvml.call("device_count"))
    finally:
        nvml.shutdown()


GPUS = _gpu_count()
pytestmark = [
    pytest.mark.skipif(GPUS == 0, reason="no NVIDIA GPU / driver on this machine"),
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="no PyTorch"),
]


def save(name: str, data) -> None:
    if OUT is None:
        return
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_text(json.dumps(data, indent=1, default=str) + "\n")


WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    dev = torch.device("cuda:0")
    torch.zeros(1, device=dev)            # the CUDA context and a first 2 MiB block
    torch.cuda.synchronize()
    held = []
    def report(**extra):
        print(json.dumps(dict(pid=os.getpid(), reserved=torch.cuda.memory_reserved(dev),
                              allocated=torch.cuda.memory_allocated(dev), **extra)), flush=True)
    report(event="ready")
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "alloc":
            t = torch.empty(int(cmd[1]), dtype=torch.uint8, device=dev)
            t.fill_(1)
            held.append(t)
            torch.cuda.synchronize()
            report(event="alloc")
        elif cmd[0] == "spin":
            # busy CPU threads for placement: torch CPU matmuls for N seconds
            import time
            a = torch.randn(512, 512)
            end = time.time() + float(cmd[1])
            while time.time() < end:
                a @ a
            report(event="spin")
        elif cmd[0] == "quit":
            break
""")


class Worker:
    """A PyTorch process on one GPU, driven line by line over stdin."""

    def __init__(self, gpu: int = 0, prefix: list[str] | None = None):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu), CUDA_DEVICE_ORDER="PCI_BUS_ID")
        env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen((prefix or []) + [sys.executable, "-c", WORKER],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        self.ready = self.read()

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited (rc={self.proc.poll()})")
        return json.loads(line)

    def send(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def nvml():
    session = Nvml()
    session.ensure()
    yield session
    session.shutdown()


def _device_used(nvml: Nvml, index: int = 0) -> int:
    return int(nvml.call("memory", index)["used"])


def _processes(nvml: Nvml, index: int = 0) -> list[dict]:
    return nvml.call("compute_processes", index)


def _wait_idle(nvml: Nvml, index: int = 0, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while _processes(nvml, index) and time.monotonic() < deadline:
        time.sleep(0.2)


def test_process_memory_matches_torch_plus_context(nvml):
    _wait_idle(nvml)
    others = _processes(nvml)
    if others:
        pytest.skip(f"GPU 0 is not idle: {others}")
    idle_used = _device_used(nvml)
    worker = Worker(0)
    try:
        time.sleep(0.5)
        base_used = _device_used(nvml)
        base_reserved = worker.ready["reserved"]
        context = base_used - idle_used - base_reserved
        collector = GpuCollector(HostPaths(), nvml, targets=[worker.proc.pid])
        rows = []
        for size in (1 << 30, 3 << 30, 12 << 30):     # cumulative: 1, 4, 16 GiB
            state = worker.send(f"alloc {size}")
            snapshot, _ = collector.collect()
            usage = snapshot.targets[worker.proc.pid]
            expected = state["reserved"] + context
            error = (usage.memory_bytes - expected) / expected if usage.memory_bytes else None
            rows.append({"allocated": state["allocated"], "reserved": state["reserved"],
                         "context": context, "expected": expected,
                         "dsmon_process_bytes": usage.memory_bytes, "status": usage.status,
                         "relative_error": error,
                         "device_used_v2": snapshot.gpus[0].memory_used_bytes,
                         "device_reserved_v2": snapshot.gpus[0].memory_reserved_bytes})
        save("memory.json", {"idle_used_v2": idle_used, "baseline_used_v2": base_used,
                             "baseline_torch_reserved": base_reserved,
                             "context_bytes": context, "rows": rows})
        print(json.dumps(rows, indent=1))
        assert context > 0
        for row in rows:
            assert row["status"] == STATUS_OK
            assert abs(row["relative_error"]) <= 0.05, row
    finally:
        worker.close()


def test_topology_matches_nvidia_smi(nvml):
    if not shutil.which("nvidia-smi"):
        pytest.skip("no nvidia-smi")
    theirs = subprocess.run(["nvidia-smi", "topo", "-m"], check=False, capture_output=True, text=True,
                            timeout=60).stdout
    topo = read_topology(nvml, HostPaths())
    ours = render(topo)
    diffs = compare_with_nvidia_smi(topo, theirs)
    save("topo-nvidia-smi.txt", theirs)
    save("topo-dsmon.txt", ours)
    save("topo.json", topo.to_dict())
    print(theirs)
    print(ours)
    assert topo.gpus and len(topo.gpus) == GPUS
    assert not diffs, diffs


def test_topo_command_against_a_live_target(nvml):
    worker = Worker(0)
    try:
        worker.send(f"alloc {1 << 30}")
        worker.proc.stdin.write("spin 3\n")
        worker.proc.stdin.flush()
        time.sleep(0.5)
        text = topo_command(HostPaths(), worker.proc.pid, backend=nvml, window_s=1.0)
        worker.read()
        save("topo-command.txt", text)
        print(text)
        assert f"Target {worker.proc.pid}" in text
        assert "uses: GPU0" in text
        assert "where its threads ran" in text
    finally:
        worker.close()


def test_target_in_its_own_pid_namespace(nvml):
    """The target runs under `unshare --pid --fork --mount-proc` (as in a container, with its
    own /proc: CUDA fails with error 304 when /proc is the parent namespace's, seen in the
    first device run): its NSpid is "<host pid> 1"; dsmon in the host namespace matches
    NVML's host pid through it."""
    if not shutil.which("unshare"):
        pytest.skip("no unshare")
    _wait_idle(nvml)
    worker = Worker(0, prefix=["unshare", "--pid", "--fork", "--mount-proc"])
    try:
        assert worker.ready["pid"] == 1          # pid 1 of its own namespace
        collector = GpuCollector(HostPaths(), nvml, targets=[worker.proc.pid])
        worker.send(f"alloc {1 << 30}")
        snapshot, _ = collector.collect()
        usage = snapshot.targets[worker.proc.pid]   # the unshare process; the worker is its child
        child = [p for p in usage.pids if p != worker.proc.pid]
        nspid = Path(f"/proc/{child[0]}/status").read_text().split("NSpid:")[1].split("\n")[0]
        save("pidns-target.json", {"unshare_pid": worker.proc.pid, "pids": usage.pids,
                                   "child_nspid": nspid.split(), "status": usage.status,
                                   "memory_bytes": usage.memory_bytes, "per_gpu": usage.per_gpu,
                                   "nvml_pids": usage.nvml_pids})
        assert nspid.split()[-1] == "1"
        assert usage.status == STATUS_OK, usage
        assert usage.memory_bytes and usage.memory_bytes > (1 << 30)
        assert usage.per_gpu[0]["pid"] == child[0]
    finally:
        worker.close()


PROBE = textwrap.dedent("""
    import json, sys
    from dsmon.gpu.nvml import Nvml
    from dsmon.gpu.sample import GpuCollector
    from dsmon.paths import HostPaths
    target = int(sys.argv[1])
    nvml = Nvml()
    snapshot, _ = GpuCollector(HostPaths(), nvml, targets=[target], topology=False).collect()
    raw = [nvml.call("compute_processes", i) for i in range(snapshot.device_count)]
    usage = snapshot.targets.get(target)
    print(json.dumps({"raw_process_lists": raw,
                      "status": usage.status if usage else None,
                      "reason": usage.reason if usage else None,
                      "memory_bytes": usage.memory_bytes if usage else None}))
""")


def test_dsmon_in_a_fresh_pid_namespace_says_unavailable(nvml):
    """dsmon in a fresh PID namespace (host /proc still mounted): NVML's lists are empty,
    and dsmon says 'unavailable (PID namespace)' rather than 0."""
    if not shutil.which("unshare"):
        pytest.skip("no unshare")
    worker = Worker(0)
    try:
        worker.send(f"alloc {1 << 30}")
        outside = [p["pid"] for p in _processes(nvml)]
        result = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c", PROBE,
                                 str(worker.proc.pid)], check=False, capture_output=True, text=True,
                                timeout=120, env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                    [str(REPO), str(REPO / "wheels" / "vendor")])))
        assert result.returncode == 0, result.stderr
        inside = json.loads(result.stdout.strip().splitlines()[-1])
        save("pidns-dsmon.json", {"outside_pids": outside, "inside": inside})
        print(outside, inside)
        assert worker.proc.pid in outside
        assert inside["raw_process_lists"] == [[] for _ in range(GPUS)]
        assert inside["status"] == STATUS_PIDNS
        assert inside["memory_bytes"] is None
    finally:
        worker.close()


def test_target_on_the_second_gpu(nvml):
    """CUDA_VISIBLE_DEVICES=1: NVML lists the process on GPU 1 only; the device files it
    holds open are not taken for GPU use beyond that."""
    if GPUS < 2:
        pytest.skip("one GPU")
    worker = Worker(1)
    try:
        worker.send(f"alloc {2 << 30}")
        snapshot, _ = GpuCollector(HostPaths(), nvml, targets=[worker.proc.pid]).collect()
        usage = snapshot.targets[worker.proc.pid]
        text = topo_command(HostPaths(), worker.proc.pid, backend=nvml, window_s=0.3)
        save("second-gpu.json", {"gpus": usage.gpus, "sources": usage.sources,
                                 "memory_bytes": usage.memory_bytes, "status": usage.status,
                                 "reserved": worker.send("alloc 1")["reserved"],
                                 "topo_command": text})
        print(text)
        assert usage.status == STATUS_OK
        assert usage.gpus == [1] and usage.sources["nvml"] == [1]
        assert usage.sources["cuda_visible_devices"] == [1]
        assert "uses: GPU1 (" in text
    finally:
        worker.close()


def test_fast_tick_cost_per_gpu(nvml):
    worker = Worker(0)
    try:
        worker.send(f"alloc {1 << 30}")
        collector = GpuCollector(HostPaths(), nvml, targets=[worker.proc.pid])
        first, _ = collector.collect()            # enumeration, slow schedule, topology
        fast, wall, cpu = [], [], []
        for _ in range(300):
            w0, c0 = time.perf_counter(), time.process_time()
            snapshot, _ = collector.collect()
            wall.append((time.perf_counter() - w0) / snapshot.device_count)
            cpu.append((time.process_time() - c0) / snapshot.device_count)
            fast.append(snapshot.fast_seconds_per_gpu)

        def stats(values):
            values = sorted(values)
            return {"median_ms": round(statistics.median(values) * 1000, 4),
                    "p95_ms": round(values[int(len(values) * 0.95)] * 1000, 4),
                    "max_ms": round(values[-1] * 1000, 4)}
        result = {"gpus": snapshot.device_count, "ticks": len(fast),
                  "fast_nvml_seconds_per_gpu": stats(fast),
                  "collect_wall_seconds_per_gpu": stats(wall),
                  "collect_cpu_seconds_per_gpu": stats(cpu),
                  "schedule": snapshot.schedule, "xid_status": snapshot.xid_status,
                  "latency": nvml.latency_summary(),
                  "first_collect_slow_seconds": first.slow_seconds,
                  "first_collect_fast_seconds": first.fast_seconds,
                  "topology_seconds": collector.topology.seconds if collector.topology else None}
        save("tick-cost.json", result)
        print(json.dumps(result, indent=1))
        assert statistics.median(fast) <= 0.001
        assert statistics.median(wall) <= 0.001
    finally:
        worker.close()
