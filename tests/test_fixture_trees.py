"""Collectors against whole filesystem trees: the live host, a recorded H100 host, and fake
hosts built with tests/fixturetree.py."""

from __future__ import annotations

import os
import tarfile
import time
from pathlib import Path

import pytest

from dsmon.features.placement import effective_cpus
from dsmon.collectors.cgroup import CgroupCollector, resolve_layout
from dsmon.collectors.cpu import CpuCollector
from dsmon.collectors.memory import MemoryCollector
from dsmon.collectors.pressure import PressureCollector
from dsmon.collectors.process import ProcessCollector, parse_proc_cgroup
from dsmon.collectors.threads import ThreadSampler
from dsmon.collectors.topology import TopologyCollector
from dsmon.diagnose import DiagnoseOptions, diagnose
from dsmon.model import Status, run_collector
from dsmon.paths import HostPaths
from dsmon.sources import Malformed

from fixturetree import (SLAB_RECLAIMABLE, FakeThread, memory_stat_v1, memory_stat_v2,
                         pressure_text)

H100_TGZ = Path(__file__).resolve().parents[1].parent / "shared/fixtures/h100x4/host-fixture.tgz"
GIB = 1 << 30


# ================================================================ a. this machine, live

LIVE = HostPaths()
needs_linux_proc = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="no /proc here")


@needs_linux_proc
def test_live_topology():
    topology = TopologyCollector(LIVE).collect()
    assert len(topology.online) == os.cpu_count()
    assert set(topology.online) >= os.sched_getaffinity(0)
    assert set(topology.cpus) == set(topology.online)
    assert 1 <= len(topology.packages) <= len(topology.online)
    assert 1 <= topology.physical_cores() <= len(topology.online)
    assert topology.smt == (topology.physical_cores() < len(topology.online))
    for info in topology.cpus.values():
        assert info.cpu in info.siblings
    if topology.nodes:
        in_nodes = sorted(cpu for node in topology.nodes.values() for cpu in node.cpus)
        assert set(topology.online) <= set(in_nodes)


@needs_linux_proc
def test_live_cpu():
    stat = CpuCollector(LIVE).collect()
    assert sorted(stat.per_cpu) == sorted(TopologyCollector(LIVE).collect().online)
    assert sum(stat.total) > 0
    assert all(seconds >= 0 for times in stat.per_cpu.values() for seconds in times)
    assert stat.context_switches > 0
    assert stat.procs_running >= 1            # this test is running
    assert stat.boot_time > 1_000_000_000


@needs_linux_proc
def test_live_memory():
    data = run_collector("memory", MemoryCollector(LIVE).collect).data
    assert 0 < data["MemFree"] <= data["MemTotal"]
    if "MemAvailable" in data:
        assert 0 <= data["MemAvailable"] <= data["MemTotal"]
    assert data["MemTotal"] % 1024 == 0


@needs_linux_proc
def test_live_pressure():
    batch = run_collector("pressure", PressureCollector(LIVE).collect)
    if not os.path.exists("/proc/pressure/cpu"):
        assert batch.status is Status.NO_DATA and "CONFIG_PSI" in batch.hint
        return
    assert batch.status is Status.OK
    assert "cpu" in batch.data
    for resource in batch.data.values():
        for kind in resource.values():
            assert 0 <= kind["avg10"] <= 100 and kind["total_seconds"] >= 0


# ================================================================ b. recorded 4x H100 host

@pytest.fixture(scope="module")
def h100(tmp_path_factory) -> HostPaths:
    if not H100_TGZ.exists():
        pytest.skip(f"H100 host fixture not present at {H100_TGZ}")
    root = tmp_path_factory.mktemp("h100")
    with tarfile.open(H100_TGZ) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(root, filter="data")
        else:  # Python < 3.10.12 / 3.11.4
            archive.extractall(root)
    return HostPaths(procfs=str(root / "proc"), sysfs=str(root / "sys"), rootfs=str(root))


def test_h100_fixture_is_what_we_think(h100):
    # the recording's procfs files are empty (tar keeps procfs' size 0) ...
    assert os.path.getsize(h100.proc("stat")) == 0
    assert os.path.getsize(h100.proc("meminfo")) == 0
    # ... and sysfs files are NUL-padded to a page
    online = Path(h100.sys("devices/system/cpu/online")).read_bytes()
    assert len(online) == 4096 and online.startswith(b"0-63\n\0")


def test_h100_topology(h100):
    topology = TopologyCollector(h100).collect()
    assert topology.online == list(range(64))
    assert topology.packages == [0]
    assert topology.physical_cores() == 64
    assert topology.smt is False
    assert sorted(topology.nodes) == [0]
    assert topology.nodes[0].cpus == list(range(64))
    assert topology.nodes[0].mem_total_bytes == 6778352 * 1024   # NUL padding dropped
    assert topology.nodes[0].mem_free_bytes == 3949804 * 1024
    assert {topology.node_of(cpu) for cpu in range(64)} == {0}
    assert topology.notes == []


@pytest.mark.parametrize("collector", [CpuCollector, MemoryCollector])
def test_h100_empty_procfs_is_malformed_not_zero(h100, collector):
    with pytest.raises(Malformed, match="file is empty") as caught:
        collector(h100).collect()
    assert caught.value.path.endswith(("proc/stat", "proc/meminfo"))


@pytest.mark.parametrize("collector, name", [(CpuCollector, "stat"), (MemoryCollector, "meminfo")])
def test_h100_empty_procfs_batch_failed(h100, collector, name):
    batch = run_collector(collector.name, collector(h100).collect)
    assert batch.status is Status.FAILED
    assert batch.data is None
    assert batch.error.startswith("malformed: ")
    assert f"proc/{name}" in batch.error and "file is empty" in batch.error


def test_h100_no_psi_recorded(h100):
    batch = run_collector("pressure", PressureCollector(h100).collect)
    assert batch.status is Status.NO_DATA


# ================================================================ c. 2-socket SMT host

@pytest.fixture
def smt_host(fake_host):
    # 2 sockets x 4 cores x 2 threads: cpu i and i+8 are siblings; socket s = node s
    fake_host.add_smt_host(sockets=2, cores=4, threads=2, mem_kb_per_node=32 * 1024 * 1024)
    return fake_host


def test_smt_topology(smt_host):
    topology = TopologyCollector(smt_host.paths).collect()
    assert topology.online == list(range(16))
    assert topology.packages == [0, 1]
    assert topology.physical_cores() == 8          # core ids repeat per socket: (pkg, core)
    assert topology.smt is True
    assert topology.cpus[3].siblings == (3, 11)
    assert topology.cpus[12].siblings == (4, 12)
    assert (topology.cpus[12].package, topology.cpus[12].core) == (1, 0)
    assert [topology.node_of(cpu) for cpu in (0, 3, 4, 8, 12, 15)] == [0, 0, 1, 0, 1, 1]
    assert topology.node_of(99) is None
    assert topology.nodes[0].cpus == [0, 1, 2, 3, 8, 9, 10, 11]
    assert topology.nodes[1].cpus == [4, 5, 6, 7, 12, 13, 14, 15]
    assert topology.nodes[1].mem_total_bytes == 32 * GIB
    assert topology.nodes[1].mem_free_bytes == 16 * GIB
    # subsets
    assert topology.physical_cores([0, 8]) == 1     # two threads of one core
    assert topology.physical_cores([0, 4]) == 2     # core 0 of each socket
    assert topology.physical_cores([0, 1, 8, 9, 12]) == 3
    assert topology.physical_cores([]) == 0


def test_smt_effective_cpus(smt_host):
    topology = TopologyCollector(smt_host.paths).collect()
    # affinity: socket 0 plus a CPU that is not online; cpuset trims to four CPUs; quota 2.5
    result = effective_cpus(topology, [0, 1, 2, 3, 8, 9, 10, 11, 40], [0, 1, 8, 9, 12], 2.5)
    assert result == {"cpus": [0, 1, 8, 9], "count": 4, "physical_cores": 2,
                      "quota_cores": 2.5, "capacity_cores": 2.5, "numa_nodes": [0]}
    whole = effective_cpus(topology, list(range(16)), None, None)
    assert (whole["count"], whole["physical_cores"], whole["capacity_cores"],
            whole["numa_nodes"]) == (16, 8, 16.0, [0, 1])


def test_topology_nul_padded_sysfs(fake_host):
    for cpu in range(4):
        fake_host.add_cpu(cpu, 0, cpu // 2, [cpu - cpu % 2, cpu - cpu % 2 + 1], node=0, pad=4096)
    topology = TopologyCollector(fake_host.paths).collect()
    assert topology.online == [0, 1, 2, 3]
    assert topology.physical_cores() == 2
    [note] = topology.notes
    assert note.startswith("node0: memory unknown (missing: ")
    assert fake_host.paths.sys("devices/system/node/node0/meminfo") in note
    assert topology.nodes[0].mem_total_bytes is None       # unknown, not 0


def test_topology_many_nodes_in_numeric_order(fake_host):
    for node in range(12):
        fake_host.add_cpu(node, node // 6, node % 6, [node], node=node)
    topology = TopologyCollector(fake_host.paths).collect()
    assert list(topology.nodes) == list(range(12))


def test_topology_without_numa_and_online(fake_host):
    fake_host.add_cpu(0, 0, 0, [0])
    fake_host.add_cpu(1, 0, 1, [1])
    fake_host.remove("sys/devices/system/cpu/online")
    topology = TopologyCollector(fake_host.paths).collect()
    assert topology.online == [0, 1]
    assert topology.nodes == {}
    assert len(topology.notes) == 2
    assert any("CONFIG_NUMA" in note for note in topology.notes)


def test_memory_old_kernel_without_memavailable(fake_host):
    text = "MemTotal:        8167848 kB\nMemFree:         1234567 kB\nBuffers:          123456 kB\n"
    fake_host.write("proc/meminfo", text)
    batch = run_collector("memory", MemoryCollector(fake_host.paths).collect)
    assert batch.status is Status.PARTIAL
    assert batch.data["MemTotal"] == 8167848 * 1024
    assert "MemAvailable" not in batch.data                     # absent, never estimated or 0
    assert "3.14" in batch.unavailable["MemAvailable"]


# ================================================================ d. kernel without PSI

def test_no_psi_gives_no_data_with_hint(fake_host):
    fake_host.add_cpu(0, 0, 0, [0])
    batch = run_collector("pressure", PressureCollector(fake_host.paths).collect)
    assert batch.status is Status.NO_DATA
    assert batch.data is None
    assert "CONFIG_PSI" in batch.hint
    assert batch.error.startswith("missing: ")


def test_psi_present(fake_host):
    fake_host.set_pressure(cpu=pressure_text(some=(1.5, 0.5, 0.1, 2_500_000)))
    data = PressureCollector(fake_host.paths).collect()
    assert data["cpu"]["some"] == {"avg10": 1.5, "avg60": 0.5, "avg300": 0.1, "total_seconds": 2.5}
    assert data["cpu"]["full"]["total_seconds"] == 0.0
    assert set(data) == {"cpu", "memory", "io"}


# ================================================================ e. per-thread schedstat

PID = 4242


def _threads(**schedstat):
    return [FakeThread(PID, "python3", "S", 500, 100, processor=1, **schedstat),
            FakeThread(PID + 1, "omp_worker_0", "R", 3000, 20, processor=2, voluntary=11,
                       involuntary=3, **schedstat),
            FakeThread(PID + 2, "pt (data) loader", "D", 10, 5, processor=0, wchan="io_schedule",
                       **schedstat)]


def test_threads_with_schedstat(fake_host):
    fake_host.add_process(PID, threads=_threads(schedstat="30000000 5000000 77\n"))
    sampler = ThreadSampler(fake_host.paths, PID, fd_budget=64)
    try:
        sweep = sampler.sample(read_switches=True)
    finally:
        sampler.close()
    assert sweep.unavailable == {}
    assert sweep.listed == 3 and sweep.vanished == 0 and not sweep.truncated
    by_tid = {t.tid: t for t in sweep.threads}
    worker = by_tid[PID + 1]
    assert (worker.name, worker.state, worker.utime, worker.stime, worker.processor) == \
        ("omp_worker_0", "R", 3000, 20, 2)
    assert (worker.run_ns, worker.wait_ns, worker.timeslices) == (30000000, 5000000, 77)
    assert (worker.voluntary, worker.involuntary) == (11, 3)
    assert by_tid[PID + 2].name == "pt (data) loader"
    assert by_tid[PID + 2].wchan == "io_schedule"
    assert by_tid[PID].wchan is None


def test_threads_without_schedstat(fake_host):
    fake_host.add_process(PID, threads=_threads(schedstat=None))
    sampler = ThreadSampler(fake_host.paths, PID, fd_budget=64)
    try:
        sweeps = [sampler.sample(read_switches=True), sampler.sample(read_switches=False)]
    finally:
        sampler.close()
    for sweep in sweeps:
        assert len(sweep.threads) == 3 and sweep.vanished == 0
        reason = sweep.unavailable["run_queue_wait"]
        assert "CONFIG_SCHED_INFO" in reason and "sched_schedstats" in reason
        assert all(t.run_ns is None and t.wait_ns is None and t.timeslices is None
                   for t in sweep.threads)
    assert {t.tid: t.voluntary for t in sweeps[0].threads}[PID + 1] == 11
    assert all(t.voluntary is None for t in sweeps[1].threads)


def test_threads_schedstat_all_zero_while_cpu_used(fake_host):
    fake_host.add_process(PID, threads=_threads(schedstat="0 0 0\n"))
    sampler = ThreadSampler(fake_host.paths, PID, fd_budget=0)    # open-read-close path
    try:
        sweep = sampler.sample()
    finally:
        sampler.close()
    reason = sweep.unavailable["run_queue_wait"]
    assert reason.startswith("schedstat reads all zero while threads used CPU")
    assert "sched_schedstats" in reason
    assert all(t.run_ns is None and t.wait_ns is None and t.timeslices is None
               for t in sweep.threads)


def test_threads_all_zero_without_cpu_use_is_fine(fake_host):
    idle = [FakeThread(PID, "python3", schedstat="0 0 0\n"),
            FakeThread(PID + 1, "idle", schedstat="0 0 0\n")]
    fake_host.add_process(PID, threads=idle)
    sampler = ThreadSampler(fake_host.paths, PID, fd_budget=64)
    try:
        sweep = sampler.sample()
    finally:
        sampler.close()
    assert sweep.unavailable == {}
    assert [t.run_ns for t in sweep.threads] == [0, 0]


def test_threads_run_collector_partial(fake_host):
    fake_host.add_process(PID, threads=_threads(schedstat=None))
    sampler = ThreadSampler(fake_host.paths, PID, fd_budget=64)

    def sweep():
        result = sampler.sample()
        return result, dict(result.unavailable)
    try:
        batch = run_collector("threads", sweep, no_data_kinds=())
    finally:
        sampler.close()
    assert batch.status is Status.PARTIAL
    assert "run_queue_wait" in batch.unavailable


def test_threads_max_threads_rotates(fake_host):
    threads = [FakeThread(PID + i, f"w{i}") for i in range(5)]
    fake_host.add_process(PID, threads=threads)
    sampler = ThreadSampler(fake_host.paths, PID, max_threads=2, fd_budget=64)
    try:
        seen = [[t.tid for t in sampler.sample().threads] for _ in range(3)]
    finally:
        sampler.close()
    # The window walks task/ in the order the directory lists it (thread-group order on a
    # real procfs), two threads a sweep, wrapping around.
    order = [int(name) for name in os.listdir(fake_host.paths.pid(PID, "task"))]
    assert seen == [order[0:2], order[2:4], [order[4], order[0]]]
    assert set(order) == {PID + i for i in range(5)}


def test_threads_coverage_with_rotating_slices(fake_host):
    """Above the cap each sweep reads a slice; the sweep says how long the least recently read
    thread has gone unread and how long the last full pass over the list took."""
    fake_host.add_process(PID, threads=[FakeThread(PID + i, f"w{i}") for i in range(5)])
    sampler = ThreadSampler(fake_host.paths, PID, max_threads=2, fd_budget=64)
    try:
        sweeps = []
        for _ in range(4):
            sweeps.append(sampler.sample())
            time.sleep(0.05)
    finally:
        sampler.close()
    assert [len(s.threads) for s in sweeps] == [2, 2, 2, 2] and all(s.truncated for s in sweeps)
    # Threads not yet read count from when they were first listed (sweep 1).
    assert sweeps[0].oldest_read_age_s < 0.05 <= sweeps[1].oldest_read_age_s
    assert sweeps[0].full_pass_s is None and sweeps[1].full_pass_s is None
    # The third slice completes the pass over 5 threads: three sweeps, two gaps of >= 50 ms.
    assert 0.1 <= sweeps[2].full_pass_s < 5
    assert sweeps[2].oldest_read_age_s < sweeps[2].full_pass_s + 0.05
    whole = ThreadSampler(fake_host.paths, PID, fd_budget=64)
    try:
        sweep = whole.sample()
    finally:
        whole.close()
    assert not sweep.truncated and sweep.oldest_read_age_s == 0.0
    assert 0 <= sweep.full_pass_s <= sweep.elapsed_s + 0.01


def test_threads_agent_slices_cover_the_list_in_pass_sweeps(fake_host):
    """The agent's mode: slices of max(max_threads / 2, threads / pass_sweeps), task/ listed
    every relist_every sweeps (a new thread shows at the next listing)."""
    fake_host.add_process(PID, threads=[FakeThread(PID + i, f"w{i}") for i in range(20)])
    sampler = ThreadSampler(fake_host.paths, PID, max_threads=8, fd_budget=256, pass_sweeps=4,
                            relist_every=2)
    try:
        first = sampler.sample()
        fake_host.add_thread(PID, FakeThread(PID + 50, "late"))
        second, third = sampler.sample(), sampler.sample()
    finally:
        sampler.close()
    assert len(first.threads) == 5                    # max(8 // 2, 20 / 4)
    assert second.listed == 20 and third.listed == 21   # listed again on the third sweep
    seen = {t.tid for sweep in (first, second, third) for t in sweep.threads}
    assert len(seen) == 5 + 5 + 6                       # 21 threads: slices of 6


def test_threads_status_cadence_in_slices(fake_host):
    """Reading slices, status (switch split) and wchan come every switches_every_capped sweeps."""
    fake_host.add_process(PID, threads=[FakeThread(PID + i, f"w{i}") for i in range(20)])
    sampler = ThreadSampler(fake_host.paths, PID, max_threads=8, fd_budget=256, pass_sweeps=4,
                            relist_every=2, switches_every=5, switches_every_capped=3)
    try:
        flags = [sampler.sample().switches_read for _ in range(7)]
    finally:
        sampler.close()
    assert flags == [True, False, False, True, False, False, True]


def test_threads_time_budget_window_rotates(fake_host):
    fake_host.add_process(PID, threads=[FakeThread(PID + i, f"w{i}") for i in range(100)])
    sampler = ThreadSampler(fake_host.paths, PID, time_budget_s=0.0, fd_budget=1024)
    try:
        sweeps = [sampler.sample() for _ in range(2)]
    finally:
        sampler.close()
    assert all(sweep.truncated for sweep in sweeps)
    assert len(sweeps[0].threads) < 100                 # the budget cut the first sweep short
    seen = {t.tid for sweep in sweeps for t in sweep.threads}
    assert len(seen) == 100                             # the second sweep went on from there


# ================================================================ process collector

def test_process_identity_and_sample(fake_host):
    fake_host.add_user("vllm", 1000)
    fake_host.add_process(PID, comm="python3", threads=_threads(), cpus_allowed=range(8),
                          nr_cpus=16, mems_allowed=[0, 1], fds=7, fd_limit="65536",
                          nspid=[PID, 1], cmdline=["python3", "-m", "vllm", "--tp", "4"],
                          cgroup=["0::/system.slice/vllm.service"],
                          status={"vm_rss_kb": 1234, "vm_swap_kb": 56})
    collector = ProcessCollector(fake_host.paths, PID, hz=100)
    identity = collector.identity()
    assert identity.key == (PID, 42055)
    assert identity.cmdline == ["python3", "-m", "vllm", "--tp", "4"]
    assert identity.exe == "/usr/bin/python3.11"
    assert (identity.uid, identity.user) == (1000, "vllm")
    assert identity.nspid == [PID, 1] and identity.in_container_pid_namespace
    assert identity.pid_namespace == "pid:[4026531836]"
    assert identity.cgroups == [("0", [], "/system.slice/vllm.service")]
    assert identity.unavailable == {}
    sample, unavailable = collector.sample()
    assert unavailable == {}
    assert (sample.utime_s, sample.stime_s, sample.num_threads) == (35.1, 1.25, 3)
    assert sample.rss_bytes == 1234 * 1024 and sample.swap_bytes == 56 * 1024
    assert sample.cpus_allowed == list(range(8)) and sample.mems_allowed == [0, 1]
    assert (sample.open_fds, sample.fd_limit) == (7, 65536)
    assert sample.io["read_bytes"] == 40960000
    assert sample.voluntary_switches == 11
    assert collector.numa_memory() == {0: (1024 + 131072 + 33) * 4096, 1: 131072 * 4096}


def test_process_kernel_without_io_accounting_or_numa(fake_host):
    # no CONFIG_TASK_IO_ACCOUNTING: no /proc/<pid>/io; no CONFIG_NUMA: no numa_maps.
    # The process is alive (its stat is there), so these are missing, not "gone".
    fake_host.add_process(PID, io=None, numa_maps=None)
    collector = ProcessCollector(fake_host.paths, PID)
    batch = run_collector("process", collector.sample, no_data_kinds=())
    assert batch.status is Status.PARTIAL
    assert batch.data.io is None
    assert batch.unavailable["io"].startswith("missing: ")
    assert batch.unavailable["io"].endswith("/proc/4242/io (not present on this host)")
    numa = run_collector("numa_maps", collector.numa_memory)
    assert numa.status is Status.NO_DATA


def test_process_gone(fake_host):
    fake_host.add_process(PID)
    collector = ProcessCollector(fake_host.paths, PID)
    collector.identity()
    fake_host.remove(f"proc/{PID}/stat")
    fake_host.remove(f"proc/{PID}/status")
    batch = run_collector("process", collector.sample, no_data_kinds=())
    assert batch.status is Status.FAILED and batch.error.startswith("gone: ")


def test_process_pid_reused(fake_host):
    fake_host.add_process(PID, start_ticks=42055)
    collector = ProcessCollector(fake_host.paths, PID)
    collector.identity()
    fake_host.add_process(PID, start_ticks=99999, comm="bash")
    batch = run_collector("process", collector.sample, no_data_kinds=())
    assert batch.status is Status.FAILED
    assert "pid was reused" in batch.error


# ================================================================ f. cgroups

K8S_V2 = ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod7c1e.slice/"
          "cri-containerd-3f2a.scope")
POD_V2 = K8S_V2.rsplit("/", 1)[0]


def _v2_host(fake_host, container_memory_max="max\n"):
    fake_host.add_smt_host()
    fake_host.add_cgroup_v2("/kubepods.slice", {
        "memory.max": f"{60 * GIB}\n", "memory.current": f"{20 * GIB}\n",
        "memory.stat": memory_stat_v2(anon=19 * GIB, file=GIB, inactive_file=0),
        "cpu.max": "max 100000\n"})
    fake_host.add_cgroup_v2("/kubepods.slice/kubepods-burstable.slice",
                            {"memory.max": "max\n", "cpu.max": "max 100000\n"})
    # The pod's usage includes a sidecar: its working set (6 GiB) exceeds the container's.
    fake_host.add_cgroup_v2(POD_V2, {
        "memory.max": f"{8 * GIB}\n", "memory.current": f"{7 * GIB}\n",
        "memory.stat": memory_stat_v2(anon=5 * GIB, file=2 * GIB, inactive_file=GIB),
        "cpu.max": "200000 100000\n"})
    fake_host.add_cgroup_v2(K8S_V2, {
        "memory.max": container_memory_max,
        "memory.current": f"{6 * GIB}\n",
        "memory.stat": memory_stat_v2(anon=4 * GIB, file=2 * GIB, inactive_file=GIB + 4096),
        "memory.events": "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n",
        "memory.swap.current": "0\n",
        "cpu.max": "max 100000\n",
        "cpu.stat": ("usage_usec 987654321\nuser_usec 900000000\nsystem_usec 87654321\n"
                     "core_sched.force_idle_usec 0\nnr_periods 5000\nnr_throttled 250\n"
                     "throttled_usec 1250000\nnr_bursts 0\nburst_usec 0\n"),
        "cpuset.cpus.effective": "0-3,8-11\n",
        "cpuset.mems.effective": "0\n",
        "cpu.pressure": pressure_text(some=(5.0, 2.0, 1.0, 4_000_000)),
        "memory.pressure": pressure_text(),
        "io.pressure": pressure_text(),
    })
    return parse_proc_cgroup(f"0::{K8S_V2}\n")


def test_cgroup_v2_layout_and_sample(fake_host):
    entries = _v2_host(fake_host)
    layout = resolve_layout(fake_host.paths, entries)
    directory = fake_host.paths.sys("fs/cgroup") + K8S_V2
    assert layout.version == "v2"
    assert layout.memory == layout.cpu == layout.cpuset == layout.unified == directory
    assert layout.memory_v2 and layout.cpu_v2 and layout.cpuset_v2
    sample, unavailable = CgroupCollector(fake_host.paths, layout).collect()
    assert unavailable == {}
    assert sample.version == "v2" and sample.path == K8S_V2
    # The limit is set on the pod, one level up. What binds is the pod's own unreclaimable
    # memory (usage 7 GiB - 1 GiB inactive - 1 GiB active file), which includes its other
    # containers.
    assert sample.memory_limit_bytes == 8 * GIB
    assert sample.memory_limit_at == POD_V2
    assert sample.limit_unreclaimable_bytes == 5 * GIB - SLAB_RECLAIMABLE
    assert sample.memory_headroom_bytes == 3 * GIB + SLAB_RECLAIMABLE
    assert sample.memory_usage_bytes == 6 * GIB
    assert sample.inactive_file_bytes == GIB + 4096
    assert sample.working_set_bytes == 5 * GIB - 4096          # the kubelet's definition
    assert sample.active_file_bytes == GIB - 4096
    # minus all page cache and reclaimable slab
    assert sample.unreclaimable_bytes == 4 * GIB - SLAB_RECLAIMABLE
    assert sample.swap_usage_bytes == 0
    assert (sample.oom_kills, sample.oom_events) == (2, 3)
    assert sample.cpu_quota_cores == 2.0
    assert (sample.cpu_periods, sample.cpu_throttled_periods) == (5000, 250)
    assert sample.cpu_throttled_seconds == 1.25
    assert sample.cpuset_cpus == [0, 1, 2, 3, 8, 9, 10, 11]
    assert sample.cpuset_mems == [0]
    assert sample.pressure["cpu"]["some"]["total_seconds"] == 4.0
    assert set(sample.pressure) == {"cpu", "memory", "io"}


def test_cgroup_v2_smallest_limit_wins_at_leaf(fake_host):
    entries = _v2_host(fake_host, container_memory_max=f"{4 * GIB}\n")
    sample, _ = CgroupCollector(fake_host.paths, resolve_layout(fake_host.paths, entries)).collect()
    assert sample.memory_limit_bytes == 4 * GIB
    assert sample.memory_limit_at == K8S_V2
    # 4 GiB unreclaimable (but the reclaimable slab) nearly reaches the 4 GiB limit
    assert sample.memory_headroom_bytes == SLAB_RECLAIMABLE


def test_cgroup_v2_unlimited(fake_host):
    fake_host.add_cgroup_v2("/system.slice/vllm.service", {
        "memory.max": "max\n", "memory.current": "1048576\n",
        "memory.stat": memory_stat_v2(anon=524288, file=524288, inactive_file=262144),
        "cpu.max": "max 100000\n", "cpu.stat": "usage_usec 5\nuser_usec 3\nsystem_usec 2\n"})
    layout = resolve_layout(fake_host.paths, [("0", [], "/system.slice/vllm.service")])
    batch = run_collector("cgroup", CgroupCollector(fake_host.paths, layout).collect)
    assert batch.status is Status.OK
    sample = batch.data
    assert sample.memory_limit_bytes is None and sample.memory_limit_at is None
    assert sample.working_set_bytes == 1048576 - 262144
    assert sample.cpu_quota_cores is None
    assert sample.cpu_periods is None and sample.cpu_throttled_seconds is None
    assert sample.oom_kills is None         # no memory.events file: unknown, not 0
    assert sample.cpuset_cpus is None


def test_cgroup_v2_not_found_in_namespace(fake_host):
    fake_host.add_cgroup_v2("/", {})
    layout = resolve_layout(fake_host.paths, [("0", [], "/elsewhere/pod")])
    assert layout.unified is None and layout.memory is None
    assert "another cgroup namespace" in layout.notes[0]
    batch = run_collector("cgroup", CgroupCollector(fake_host.paths, layout).collect)
    assert batch.status is Status.NO_DATA
    assert "another cgroup namespace" in batch.error


V1_POD = "/kubepods/burstable/pod7c1e"
V1_CONTAINER = V1_POD + "/3f2a"


def _v1_host(fake_host, hybrid=False):
    fake_host.add_smt_host()
    fake_host.add_cgroup_v1("memory", "/kubepods", {"memory.limit_in_bytes": "9223372036854771712\n"})
    fake_host.add_cgroup_v1("memory", "/kubepods/burstable",
                            {"memory.limit_in_bytes": "9223372036854771712\n"})
    fake_host.add_cgroup_v1("memory", V1_POD, {
        "memory.limit_in_bytes": f"{8 * GIB}\n", "memory.usage_in_bytes": f"{7 * GIB}\n",
        "memory.stat": memory_stat_v1(rss=4 * GIB, cache=3 * GIB, inactive_file=GIB // 2,
                                      total_inactive_file=3 * GIB, limit=8 * GIB)})
    fake_host.add_cgroup_v1("memory", V1_CONTAINER, {
        "memory.limit_in_bytes": "9223372036854771712\n",
        "memory.usage_in_bytes": f"{6 * GIB}\n",
        "memory.stat": memory_stat_v1(rss=3 * GIB, cache=3 * GIB, inactive_file=GIB // 2,
                                      total_inactive_file=2 * GIB, limit=8 * GIB),
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n",
    })
    fake_host.add_cgroup_v1("cpu,cpuacct", "/kubepods", {"cpu.cfs_quota_us": "-1\n",
                                                        "cpu.cfs_period_us": "100000\n"})
    fake_host.add_cgroup_v1("cpu,cpuacct", V1_POD, {"cpu.cfs_quota_us": "300000\n",
                                                   "cpu.cfs_period_us": "100000\n"})
    fake_host.add_cgroup_v1("cpu,cpuacct", V1_CONTAINER, {
        "cpu.cfs_quota_us": "150000\n", "cpu.cfs_period_us": "100000\n",
        "cpu.stat": "nr_periods 1000\nnr_throttled 40\nthrottled_time 2500000000\n"
                    "nr_bursts 0\nburst_time 0\n"})
    fake_host.add_cgroup_v1("cpuset", V1_CONTAINER, {
        "cpuset.cpus": "0-7\n", "cpuset.mems": "0-1\n",
        "cpuset.effective_cpus": "4-7,12-15\n", "cpuset.effective_mems": "1\n"})
    lines = [f"12:cpuset:{V1_CONTAINER}", f"11:memory:{V1_CONTAINER}",
             f"7:pids:{V1_CONTAINER}", f"4:cpu,cpuacct:{V1_CONTAINER}",
             f"1:name=systemd:{V1_CONTAINER}"]
    if hybrid:
        fake_host.add_cgroup_v2(V1_CONTAINER, {"cpu.pressure": pressure_text()},
                                mount="fs/cgroup/unified")
        lines.append(f"0::{V1_CONTAINER}")
    return parse_proc_cgroup("\n".join(lines) + "\n")


def test_cgroup_v1_layout_and_sample(fake_host):
    entries = _v1_host(fake_host)
    layout = resolve_layout(fake_host.paths, entries)
    base = fake_host.paths.sys("fs/cgroup")
    assert layout.version == "v1"
    assert layout.memory == f"{base}/memory{V1_CONTAINER}" and not layout.memory_v2
    assert layout.cpu == f"{base}/cpu,cpuacct{V1_CONTAINER}" and not layout.cpu_v2
    assert layout.cpuset == f"{base}/cpuset{V1_CONTAINER}" and not layout.cpuset_v2
    assert layout.unified is None
    assert layout.notes == []
    sample, unavailable = CgroupCollector(fake_host.paths, layout).collect()
    assert unavailable == {}
    assert sample.memory_limit_bytes == 8 * GIB                 # the sentinel means unlimited
    assert sample.memory_limit_at == V1_POD
    assert sample.limit_unreclaimable_bytes == 4 * GIB          # 7 GiB - 3 GiB total file
    assert sample.memory_headroom_bytes == 4 * GIB
    assert sample.memory_usage_bytes == 6 * GIB
    assert sample.inactive_file_bytes == 2 * GIB                # total_, not the local counter
    assert sample.working_set_bytes == 4 * GIB
    assert (sample.oom_kills, sample.oom_events) == (4, 0)
    assert sample.swap_usage_bytes is None
    assert sample.cpu_quota_cores == 1.5                        # container 1.5 < pod 3.0
    assert (sample.cpu_periods, sample.cpu_throttled_periods) == (1000, 40)
    assert sample.cpu_throttled_seconds == 2.5
    assert sample.cpuset_cpus == [4, 5, 6, 7, 12, 13, 14, 15]  # effective_cpus, not cpus
    assert sample.cpuset_mems == [1]
    assert sample.pressure is None


def test_cgroup_v1_unlimited_everywhere(fake_host):
    fake_host.add_cgroup_v1("memory", "/user.slice", {
        "memory.limit_in_bytes": "9223372036854771712\n", "memory.usage_in_bytes": "1000000\n",
        "memory.stat": memory_stat_v1(rss=500000, cache=500000, inactive_file=100000,
                                      total_inactive_file=200000)})
    layout = resolve_layout(fake_host.paths, [("4", ["memory"], "/user.slice")])
    sample, _ = CgroupCollector(fake_host.paths, layout).collect()
    assert sample.memory_limit_bytes is None
    assert sample.working_set_bytes == 800000
    assert sample.oom_kills is None


def test_cgroup_hybrid(fake_host):
    entries = _v1_host(fake_host, hybrid=True)
    layout = resolve_layout(fake_host.paths, entries)
    assert layout.version == "hybrid"
    assert layout.unified == fake_host.paths.sys("fs/cgroup/unified") + V1_CONTAINER
    assert not layout.memory_v2 and not layout.cpu_v2
    sample, unavailable = CgroupCollector(fake_host.paths, layout).collect()
    assert unavailable == {}
    assert sample.memory_limit_bytes == 8 * GIB
    assert sample.pressure["cpu"]["some"]["avg10"] == 0.0


def test_cgroup_v1_missing_directory_is_noted(fake_host):
    _v1_host(fake_host)
    entries = parse_proc_cgroup("11:memory:/docker/gone\n4:cpu,cpuacct:/docker/gone\n")
    layout = resolve_layout(fake_host.paths, entries)
    assert layout.memory is None and layout.cpu is None
    assert len(layout.notes) == 2
    batch = run_collector("cgroup", CgroupCollector(fake_host.paths, layout).collect)
    assert batch.status is Status.NO_DATA


# ================================================================ g. a whole diagnose run

def _diagnose_host(fake_host, psi=True):
    fake_host.add_smt_host()
    fake_host.set_hostname("gpu-node-7", "6.8.0-49-generic")
    fake_host.set_proc_stat({cpu: (1000 + cpu, 0, 500, 90000, 20, 0, 10, 0, 0, 0)
                             for cpu in range(16)})
    fake_host.set_meminfo()
    fake_host.set_vmstat()
    if psi:
        fake_host.set_pressure()
    fake_host.add_user("vllm", 1000)
    fake_host.add_process(
        PID, comm="python3", threads=_threads(), cpus_allowed=range(16),
        mems_allowed=[0, 1], cmdline=["python3", "-m", "vllm.entrypoints.openai.api_server",
                                      "--model", "meta-llama/Llama-3.1-8B"],
        environ={"PATH": "/usr/bin", "HF_TOKEN": "hf_secret", "OMP_NUM_THREADS": "64",
                 "CUDA_VISIBLE_DEVICES": "0,1"},
        cgroup=[f"0::{K8S_V2}"])
    fake_host.write(f"proc/{PID}/maps", "7f0000000000-7f0000100000 r-xp 00000000 08:01 42 "
                    "/opt/venv/lib/python3.12/site-packages/torch/lib/libtorch_cpu.so\n")
    _v2_host_cgroups_only(fake_host)


def _v2_host_cgroups_only(fake_host):
    fake_host.add_cgroup_v2(POD_V2, {
        "memory.max": f"{8 * GIB}\n", "memory.current": f"{6 * GIB}\n",
        "memory.stat": memory_stat_v2(anon=4 * GIB, file=2 * GIB, inactive_file=GIB),
        "cpu.max": "400000 100000\n"})
    fake_host.add_cgroup_v2(K8S_V2, {
        "memory.max": "max\n", "memory.current": f"{6 * GIB}\n",
        "memory.stat": memory_stat_v2(anon=4 * GIB, file=2 * GIB, inactive_file=GIB),
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
        "cpu.max": "max 100000\n",
        "cpu.stat": "usage_usec 5\nnr_periods 10\nnr_throttled 1\nthrottled_usec 100\n",
        "cpuset.cpus.effective": "0-15\n", "cpuset.mems.effective": "0-1\n"})


@pytest.mark.parametrize("psi", [True, False])
def test_diagnose_fake_host(fake_host, psi):
    _diagnose_host(fake_host, psi)
    sleeps = []
    report = diagnose(fake_host.paths, PID, DiagnoseOptions(duration_s=0.2, interval_s=0.1),
                      sleep=sleeps.append)
    assert report["schema_version"] == 1
    assert report["paths"]["procfs"] == fake_host.paths.procfs
    assert report["window"]["samples"] == 3 and report["window"]["complete"] is True
    assert len(sleeps) <= 2

    host = report["host"]
    assert (host["hostname"], host["kernel"]) == ("gpu-node-7", "6.8.0-49-generic")
    assert (host["cpus_online"], host["sockets"], host["physical_cores"], host["smt"]) == \
        (16, 2, 8, True)
    assert [n["cpus"] for n in host["numa_nodes"]] == [[0, 1, 2, 3, 8, 9, 10, 11],
                                                      [4, 5, 6, 7, 12, 13, 14, 15]]
    assert host["memory"]["total_bytes"] == 65_843_212 * 1024
    assert len(host["per_core"]) == 16
    assert all(core["busy_ratio"] is None for core in host["per_core"])   # no ticks passed
    assert host["cpu_busy_ratio"] is None
    if psi:
        assert host["pressure"]["cpu"]["some"]["window_stall_ratio"] == 0.0
    else:
        assert "pressure" not in host

    target = report["target"]
    assert target["pid"] == PID and target["start_ticks"] == 42055
    assert target["comm"] == "python3"
    assert target["cmdline"][:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert target["exe"] == "/usr/bin/python3.11"
    assert (target["uid"], target["user"]) == (1000, "vllm")
    assert target["cgroup_version"] == "v2"
    assert target["cgroup"] == K8S_V2       # as /proc/<pid>/cgroup names it, not a file path
    assert target["environment"] == {"OMP_NUM_THREADS": "64", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert target["cpu"]["cores"] == 0.0
    assert target["effective_cpus"]["capacity_cores"] == 4.0
    assert target["effective_cpus"]["physical_cores"] == 8
    assert target["memory"]["cgroup"]["limit_bytes"] == 8 * GIB
    assert target["memory"]["cgroup"]["working_set_bytes"] == 5 * GIB
    assert target["memory"]["cgroup"]["unreclaimable_bytes"] == 4 * GIB - SLAB_RECLAIMABLE
    assert target["memory"]["limit_kind"] == "cgroup"
    # 8 GiB - (6 - 1 - 1 GiB - reclaimable slab)
    assert target["memory"]["headroom_bytes"] == 4 * GIB + SLAB_RECLAIMABLE
    assert target["memory"]["rss_slope_bytes_per_second"] == 0.0
    assert target["memory"]["seconds_to_limit"] is None
    assert target["fds"] == {"open": 5, "limit": 1048576}
    assert set(target["numa"]["memory_bytes_by_node"]) == {"0", "1"}
    assert target["thread_settings"]["configured"] == {"OMP_NUM_THREADS": 64}
    assert any("OMP_NUM_THREADS=64 exceeds" in a for a in target["thread_settings"]["advice"])

    threads = report["threads"]
    assert threads["listed"] == 3 and threads["tracked"] == 3
    assert threads["busy"] == 0
    # A pool whose threads all share one name keeps it: "python3", not "python#" (and a pool
    # of one thread is that thread).
    assert sorted(p["pool"] for p in threads["pools"]) == ["omp_worker_0", "pt (data) loader",
                                                           "python3"]

    statuses = {name: entry["status"] for name, entry in report["collectors"].items()}
    assert set(statuses) >= {"topology", "environment", "numa_maps", "cpu", "memory",
                             "pressure", "process", "threads", "cgroup"}
    for name, entry in report["collectors"].items():
        assert entry["status"] in ("ok", "no_data", "partial"), (name, entry)
        assert "internal error" not in entry["error"], (name, entry)
    assert statuses["pressure"] == ("ok" if psi else "no_data")
    assert statuses["cpu"] == statuses["memory"] == statuses["process"] == "ok"
    assert statuses["threads"] == statuses["cgroup"] == "ok"
    assert isinstance(report["observations"], list)
    # OMP_NUM_THREADS=64 on 8 physical cores, with libtorch mapped (which reads it): the
    # rules engine names the setting, with the number to set in the hint; vLLM's own wording.
    # Nothing runs, so nothing is over-subscribed yet.
    ids = {f["rule_id"] for f in report["findings"]}
    assert "thread-oversubscription" not in ids
    configured = [f for f in report["findings"] if f["rule_id"] == "thread-config-exceeds-cores"]
    assert configured and configured[0]["state"] == "firing"
    assert report["engine"] == "vllm"
    assert "vLLM sizes its torch threads itself" in configured[0]["hint"]
    assert "64 threads (OMP_NUM_THREADS)" in configured[0]["summary"]
