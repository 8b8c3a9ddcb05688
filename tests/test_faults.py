"""The diagnose side of the fault table (README "Reliability"): a kernel thread, a target
that turns zombie, a pid reused mid-window, and targets that are stopped or in D state. Each
runs real processes; each asserts the exit code, what the report names, and that no data of
another process slips in."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dsmon.diagnose import DiagnoseOptions, diagnose, exit_code
from dsmon.paths import HostPaths
from dsmon.report.text import render_text
from tests.helpers.faults import (kernel_thread_pid, spawn_at_pid, state_of,
                                  wait_until_sampling)
from tests.helpers.spawn import REPO, workload

ENV = dict(os.environ, PYTHONPATH=str(REPO))


def start_diagnose(pid: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dsmon", "diagnose", str(pid), "--format",
                             "json", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)


def finish(process: subprocess.Popen, timeout: float = 60) -> tuple[int, dict | None, str]:
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, json.loads(stdout) if stdout else None, stderr


def strings(value):
    """Every string value in a JSON document (not its keys)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def test_a_kernel_thread_is_named_one_never_exited_nor_given_the_hosts_memory():
    pid = kernel_thread_pid()
    if pid is None:
        pytest.skip("no kernel thread visible (a container's own PID namespace)")
    # In-process (the same driver the command runs): no interpreter start-up to wait for.
    report = json.loads(json.dumps(diagnose(HostPaths(), pid, DiagnoseOptions(
        duration_s=1.0, interval_s=0.5, stacks=False))))
    assert exit_code(report) in (0, 6, 7)     # a full report: host findings may fire
    target, window = report["target"], report["window"]
    assert target["kind"] == "kernel thread"
    assert window["end_reason"] == "completed" and window["gone_reason"] is None
    memory = target["memory"]
    assert memory["unavailable"] == "kernel thread: no user memory"
    # Its cgroup is the root one: that cgroup's usage is the host's, never the thread's.
    assert memory["cgroup"] is None and memory["headroom_bytes"] is None
    assert "cgroup" not in report["collectors"]
    assert target["cmdline"] == [] and target["exe"] is None
    unavailable = report["collectors"]["process"]["unavailable"]
    assert unavailable["memory"] == "kernel thread: no user memory"
    environment = report["collectors"]["environment"]
    assert environment["status"] == "no_data" and "kernel thread" in environment["error"]
    text = render_text(report)
    assert "(kernel thread)" in text and "memory: kernel thread: no user memory" in text
    assert "exited" not in text and not [v for v in strings(report) if "exited" in v]
    assert "cgroup memory:" not in text


def test_a_kernel_thread_can_be_snapshotted(tmp_path):
    from dsmon.snapshot import write_snapshot
    pid = kernel_thread_pid()
    if pid is None:
        pytest.skip("no kernel thread visible (a container's own PID namespace)")
    summary = write_snapshot(HostPaths(), pid, str(tmp_path / "kthread.tgz"))
    assert summary.files > 10 and (tmp_path / "kthread.tgz").stat().st_size > 0


ZOMBIE_PARENT = """
import os, signal, sys, time
child = os.fork()
if child == 0:
    signal.signal(signal.SIGUSR1, lambda *_: os._exit(0))
    print("ready", os.getpid(), flush=True)
    while True:
        signal.pause()
time.sleep(120)          # never reaps: the child stays a zombie
"""


def test_a_target_turning_zombie_mid_window_ends_it_named_as_a_zombie():
    parent = subprocess.Popen([sys.executable, "-c", ZOMBIE_PARENT], stdout=subprocess.PIPE,
                              text=True)
    child = None
    try:
        child = int(parent.stdout.readline().split()[1])
        dsmon = start_diagnose(child, "--duration", "6s", "--interval", "0.5s", "--no-stacks")
        wait_until_sampling(dsmon.pid, child)
        time.sleep(1.0)
        os.kill(child, signal.SIGUSR1)
        exited = time.monotonic()
        code, report, stderr = finish(dsmon)
        ended_after = time.monotonic() - exited
        assert state_of(child) == "Z"
    finally:
        if child is not None and state_of(child) != "Z":
            os.kill(child, signal.SIGKILL)       # reaped by init once its parent is gone
        parent.kill()
        parent.wait()
        parent.stdout.close()
    print(f"\n[fault] target turned zombie: diagnose ended {ended_after:.2f} s later "
          f"(interval 0.5 s; load {open('/proc/loadavg').read().split()[0]})")
    assert code == 4, stderr
    window = report["window"]
    assert window["complete"] is False and window["end_reason"] == "target exited"
    assert "zombie" in window["gone_reason"]
    assert ended_after < 3.0           # the next sample (0.5 s) ends the window, not 6 s
    assert report["window"]["samples"] >= 2
    assert "PARTIAL REPORT: target exited (the process exited (a zombie" in render_text(report)


INTRUDER = """
import ctypes, threading, time
libc = ctypes.CDLL(None)
def name(text):
    libc.prctl(15, text.encode(), 0, 0, 0)
def intruder_spin(index):
    name(f"intruder_{index}")
    while True:
        sum(range(10000))
name("intruder")
for index in range(4):
    threading.Thread(target=intruder_spin, args=(index,), daemon=True).start()
time.sleep(0.3)
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to choose a pid (ns_last_pid)")
def test_pid_reused_mid_window_ends_it_with_exit_4_and_no_data_of_the_new_process():
    intruder = None
    with workload("threads", "--busy", "1", "--idle", "2") as target:
        pid = target.pid
        # Stacks on: py-spy's background dumps must not take the new process's stacks either.
        dsmon = start_diagnose(pid, "--duration", "8s", "--interval", "0.5s")
        try:
            wait_until_sampling(dsmon.pid, pid)
            time.sleep(0.5)
            # dsmon stopped while the pid changes hands (a long scheduling delay, as on a
            # loaded host): when it runs again the pid names another process.
            os.kill(dsmon.pid, signal.SIGSTOP)
            target.kill()
            target.wait()
            intruder = spawn_at_pid(pid, [sys.executable, "-c", INTRUDER],
                                    stdout=subprocess.PIPE, text=True)
            if intruder is None:
                os.kill(dsmon.pid, signal.SIGCONT)
                dsmon.kill()
                pytest.skip(f"another process took pid {pid} first")
            assert intruder.stdout.readline().startswith("ready")
            time.sleep(0.5)          # the intruder's threads run, named, before dsmon resumes
            os.kill(dsmon.pid, signal.SIGCONT)
            resumed = time.monotonic()
            code, report, stderr = finish(dsmon)
            ended_after = time.monotonic() - resumed
        finally:
            if intruder is not None:
                intruder.kill()
                intruder.wait()
                intruder.stdout.close()
            if dsmon.poll() is None:
                os.kill(dsmon.pid, signal.SIGCONT)
                dsmon.kill()
                dsmon.wait()
    print(f"\n[fault] pid reused: diagnose ended {ended_after:.2f} s after it resumed "
          f"(load {open('/proc/loadavg').read().split()[0]})")
    assert code == 4, stderr
    window = report["window"]
    assert window["end_reason"] == "target exited"
    assert "pid was reused" in window["gone_reason"]
    assert window["elapsed_seconds"] < 8
    text = json.dumps(report)
    assert "intruder" not in text             # no thread, stack or name of the new process
    assert report["target"]["comm"] != "intruder"
    names = {row["name"] for row in report["threads"]["all"]}
    assert {"busy_worker_0", "idle_worker_0", "idle_worker_1"} <= names
    assert report["threads"]["listed"] == 4   # main + 3 workers, never the intruder's 5


def timed_diagnose(pid: int, duration: float) -> tuple[float, int, dict, str]:
    """Run diagnose; the seconds from its first sample to its exit. Interpreter start-up and
    imports are left out: on this shared 2-core machine they alone took 2-4 s under load."""
    dsmon = start_diagnose(pid, "--duration", f"{duration}s", "--interval", "0.5s")
    try:
        wait_until_sampling(dsmon.pid, pid)
        sampling = time.monotonic()
        code, report, stderr = finish(dsmon)
    finally:
        if dsmon.poll() is None:
            dsmon.kill()
            dsmon.wait()
    return time.monotonic() - sampling, code, report, stderr


def test_a_stopped_target_ends_within_the_window_plus_5s():
    with workload("threads", "--busy", "1", "--idle", "1") as target:
        os.kill(target.pid, signal.SIGSTOP)
        try:
            elapsed, code, report, stderr = timed_diagnose(target.pid, 2)
        finally:
            os.kill(target.pid, signal.SIGCONT)
    print(f"\n[fault] SIGSTOPped target: diagnose --duration 2s ended {elapsed:.2f} s after its "
          f"first sample (load {open('/proc/loadavg').read().split()[0]})")
    assert code in (0, 6, 7), stderr
    assert elapsed < 2 + 5, elapsed
    assert report["target"]["state"] == "T" and report["window"]["complete"] is True
    assert report["threads"]["state_share"].get("T", 0) > 0.9
    assert report["target"]["cpu"]["cores"] == 0


D_STATE_TARGET = """
import ctypes, os, sys, threading
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
path = sys.argv[1]
address = libc.mmap(None, 1 << 20, 1, 1, os.open(path, os.O_RDONLY), 0)   # PROT_READ, SHARED
def fault_in():
    # A page fault the FUSE daemon never answers; ctypes lets go of the GIL meanwhile.
    ctypes.memmove(ctypes.create_string_buffer(1), address + 4096 * 100, 1)
threading.Thread(target=fault_in, daemon=True).start()
print("ready", flush=True)
with open(path, "rb") as handle:
    handle.read(65536)              # the main thread: a read() the daemon never answers
"""


def test_a_d_state_target_ends_within_the_window_plus_5s(tmp_path):
    from tests.test_scenarios_io import require_fuse, slow_fuse_mount
    require_fuse()
    with slow_fuse_mount(tmp_path, direct_io=False, delay=120) as (mountpoint, daemon):
        target = subprocess.Popen([sys.executable, "-c", D_STATE_TARGET,
                                   str(mountpoint / "model.bin")], stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert target.stdout.readline().startswith("ready")
            deadline = time.monotonic() + 15
            while state_of(target.pid) != "D":
                assert time.monotonic() < deadline, "the target never entered D state"
                time.sleep(0.05)
            elapsed, code, report, stderr = timed_diagnose(target.pid, 2)
            still = state_of(target.pid)
        finally:
            target.kill()
            daemon.kill()
            target.wait()
            target.stdout.close()
    print(f"\n[fault] D-state target: diagnose --duration 2s ended {elapsed:.2f} s after its "
          f"first sample (load {open('/proc/loadavg').read().split()[0]})")
    assert code in (0, 6, 7), stderr
    assert still == "D"                       # it stayed blocked the whole window
    assert elapsed < 2 + 5, elapsed
    assert report["target"]["state"] == "D" and report["window"]["complete"] is True
    assert report["threads"]["d_state_ratio"] > 0.4
    # None of the reads that take the target's mmap lock blocked: cmdline, environ,
    # numa_maps, and py-spy's reads of its memory.
    assert report["target"]["cmdline"]
    collectors = report["collectors"]
    assert collectors["environment"]["status"] == "ok", collectors["environment"]
    assert collectors["numa_maps"]["status"] == "ok", collectors["numa_maps"]
    assert report["python"]["status"] == "ok", report["python"]
