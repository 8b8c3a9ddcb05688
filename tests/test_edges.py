"""The edges: vanished pids, exits mid-window, churn, reuse, permissions, odd names, zombies,
stopped targets and 10,000 threads. Each must give a clear answer and never crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from dsmon.collectors.threads import FILES, ThreadSampler
from dsmon.paths import HostPaths
from dsmon.sampler import TargetSampler
from tests.helpers.faults import wait_until_sampling
from tests.helpers.spawn import REPO, diagnose_json, run_dsmon, workload


def _free_pid() -> int:
    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def test_missing_pid_exits_3_with_a_clear_message():
    result = run_dsmon("diagnose", str(_free_pid()), "--duration", "1s")
    assert result.returncode == 3
    assert "no process with pid" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_exits_mid_window_give_a_partial_report():
    """The target exits ~1 s into the window (killed once dsmon samples it, however slow its
    start-up on a loaded machine): a partial report in JSON and in text, exit code 4."""
    from contextlib import ExitStack
    env = dict(os.environ, PYTHONPATH=str(REPO))
    results = {}
    with ExitStack() as stack:
        runs = {}
        for output_format in ("json", "text"):     # both at once: one window of suite time
            target = stack.enter_context(workload("threads", "--busy", "1"))
            runs[output_format] = (target, subprocess.Popen(
                [sys.executable, "-m", "dsmon", "diagnose", str(target.pid), "--duration", "8s",
                 "--interval", "0.5s", "--no-stacks", "--format", output_format],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
        for target, dsmon in runs.values():
            wait_until_sampling(dsmon.pid, target.pid)
        time.sleep(1.0)
        for output_format, (target, dsmon) in runs.items():
            target.kill()
        for output_format, (target, dsmon) in runs.items():
            stdout, stderr = dsmon.communicate(timeout=60)
            results[output_format] = (dsmon.returncode, stdout, stderr, target.pid)
    code, stdout, stderr, pid = results["json"]
    assert code == 4, stderr
    report = json.loads(stdout)
    window = report["window"]
    assert window["complete"] is False
    assert window["end_reason"] == "target exited"
    assert window["target_exited_at"]
    assert 0.5 <= window["elapsed_seconds"] < 3.5
    assert report["target"]["pid"] == pid
    assert any("partial report" in o["text"] for o in report["observations"])
    code, stdout, stderr, _ = results["text"]
    assert code == 4, stderr
    assert "PARTIAL REPORT: target exited" in stdout


def test_threads_that_come_and_go_during_sweeps():
    with workload("churn") as target:
        sampler = ThreadSampler(HostPaths(), target.pid)
        listed = set()
        open_before = len(os.listdir("/proc/self/fd"))
        try:
            for _ in range(60):
                sweep = sampler.sample(read_switches=True)
                listed.update(t.tid for t in sweep.threads)
                assert all(t.state for t in sweep.threads)
                time.sleep(0.005)
            # Descriptors of exited threads were closed, not leaked: only the threads of the
            # last sweep hold any, though hundreds of threads came and went.
            assert len(sampler._fds) <= sweep.listed
            assert len(os.listdir("/proc/self/fd")) <= open_before + len(FILES) * sweep.listed + 2
        finally:
            sampler.close()
    assert len(listed) > 100  # short-lived threads were seen and dropped again


def test_cached_descriptor_of_an_exited_thread_reads_as_gone():
    """ESRCH between open and read: the fd is open, then the thread exits."""
    import threading

    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    sampler = ThreadSampler(HostPaths(), os.getpid())
    try:
        first = sampler.sample()
        tid = worker.native_id
        assert tid in {t.tid for t in first.threads}
        assert tid in sampler._fds
        stop.set()
        worker.join()
        # join() returns just before the OS thread is gone; wait for the kernel to reap it.
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/self/task/{tid}") and time.monotonic() < deadline:
            time.sleep(0.01)
        # The kernel keeps the tid listed for a moment in some races; read the stale fds directly.
        from dsmon.sources import Gone
        with pytest.raises(Gone):
            sampler._read_thread(tid, read_switches=True)
        second = sampler.sample()
        assert tid not in {t.tid for t in second.threads}
        assert tid not in sampler._fds
    finally:
        sampler.close()


SERVER_STAT = ("77 (server) S 1 77 77 0 -1 4194560 100 0 0 0 50 10 0 0 20 0 1 0 {start} 1000000 "
               "250 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n")


def server_tree(tmp_path):
    """A tiny procfs with one process, pid 77, started at tick 1000; set_start() recycles
    its pid (a new start time). Returns (paths, set_start)."""
    proc = tmp_path / "proc"
    task = proc / "77" / "task" / "77"
    task.mkdir(parents=True)
    status = "Name:\tserver\nState:\tS (sleeping)\nUid:\t0\t0\t0\t0\nNSpid:\t77\nVmRSS:\t1000 kB\n" \
             "Cpus_allowed_list:\t0\nMems_allowed_list:\t0\nvoluntary_ctxt_switches:\t1\n" \
             "nonvoluntary_ctxt_switches:\t0\n"
    (proc / "77" / "status").write_text(status)
    (task / "status").write_text(status)
    (task / "schedstat").write_text("1 2 3\n")
    (proc / "77" / "cgroup").write_text("0::/\n")
    (proc / "stat").write_text("cpu 1 1 1 1 1 1 1 0 0 0\n")

    def set_start(start: int) -> None:
        for path in (proc / "77" / "stat", task / "stat"):
            path.write_text(SERVER_STAT.format(start=start))

    set_start(1000)
    return HostPaths(str(proc), str(tmp_path / "sys"), str(tmp_path)), set_start


def test_pid_reuse_is_detected_by_start_time(tmp_path):
    """A recycled pid must not inherit the old process's history."""
    paths, set_start = server_tree(tmp_path)
    sampler = TargetSampler(paths, 77)
    static = sampler.static()
    assert static.identity.key == (77, 1000)
    assert sampler.tick().target_gone == ""
    set_start(2000)
    tick = sampler.tick()
    assert "reused" in tick.target_gone
    sampler.close()


def test_pid_reused_before_the_first_sample_gives_an_empty_partial_report(tmp_path, monkeypatch):
    """Between reading who the target is and its first sample the pid changes hands: the
    report holds nothing of the new process and exits 4 (no crash on zero samples)."""
    from dsmon.diagnose import DiagnoseOptions, diagnose, exit_code
    from dsmon.report.text import render_text
    paths, set_start = server_tree(tmp_path)
    static = TargetSampler.static

    def static_then_reuse(self):
        facts = static(self)
        set_start(2000)
        return facts

    monkeypatch.setattr(TargetSampler, "static", static_then_reuse)
    report = diagnose(paths, 77, DiagnoseOptions(duration_s=1.0, interval_s=0.5, stacks=False))
    assert exit_code(report) == 4
    assert report["window"]["samples"] == 0
    assert "pid was reused" in report["window"]["gone_reason"]
    assert report["target"] == {} and report["threads"] == {}
    assert "PARTIAL REPORT" in render_text(report)


def test_names_with_spaces_parentheses_and_bad_utf8():
    with workload("names") as target:
        report = diagnose_json(target.pid, duration="1s")
    names = {row["name"] for row in report["threads"]["all"]}
    assert "my (weird) nam" in names
    assert "a) b (c" in names
    assert "bad\\xff\\xfeutf8" in names
    assert "plain" in names


def test_zombie_target(tmp_path):
    # The parent never reaps its child, so the child stays a zombie while the test runs.
    script = ("import os, time\npid = os.fork()\nif pid == 0:\n    os._exit(0)\n"
              "print(pid, flush=True)\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        for _ in range(50):
            with open(f"/proc/{child}/stat") as handle:
                if handle.read().split(") ")[1][0] == "Z":
                    break
            time.sleep(0.05)
        report = diagnose_json(child, duration="1s", expect_rc=4)   # it has exited
    finally:
        parent.kill()
        parent.wait()
    assert report["target"]["state"] == "Z" and report["target"]["kind"] == "zombie"
    assert report["target"]["memory"]["unavailable"] == "zombie: memory already released"
    process = report["collectors"]["process"]
    assert "zombie" in process["unavailable"].get("memory", "")
    assert report["target"]["memory"]["rss_bytes"] is None  # not 0: a zombie has no memory


NOBODY_WRAPPER = """
import os, sys
sys.path.insert(0, {repo!r})
import dsmon.cli, dsmon.diagnose, dsmon.report.text, dsmon.sampler, dsmon.report.sections, json
os.setgroups([]); os.setgid(65534); os.setuid(65534)
sys.argv = ["dsmon"] + sys.argv[1:]
dsmon.cli.main()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as nobody")
def test_permission_denied_names_the_privilege(tmp_path):
    wrapper = tmp_path / "as_nobody.py"
    wrapper.write_text(NOBODY_WRAPPER.format(repo=str(REPO)))
    with workload("threads", "--busy", "1", "--idle", "2") as target:  # runs as root
        result = subprocess.run([sys.executable, str(wrapper), "diagnose", str(target.pid),
                                 "--duration", "1s", "--interval", "0.5s", "--format", "json"],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    env = report["collectors"]["environment"]
    assert env["status"] == "failed"
    assert "CAP_SYS_PTRACE" in env["hint"]
    assert report["target"]["environment"] is None  # unavailable, not "no variables set"
    unavailable = report["collectors"]["process"]["unavailable"]
    assert "io" in unavailable and "permission denied" in unavailable["io"]
    assert report["target"]["io"] == {}
    # What the kernel does show an unprivileged user still comes through.
    assert report["threads"]["busy"] == 1
    assert report["target"]["cpu"]["cores"] > 0.5


@pytest.mark.slow
def test_ten_thousand_threads_stay_bounded():
    with workload("many", "--count", "10000", timeout=120) as target:
        started = time.monotonic()
        result = run_dsmon("diagnose", str(target.pid), "--duration", "2s", "--interval", "1s",
                           "--format", "json", timeout=120)
        elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    threads = report["threads"]
    assert threads["listed"] == 10001
    assert threads["truncated"] is True
    assert threads["sampled_last_sweep"] <= 2048
    assert any("rotates" in note for note in threads["notes"])
    assert any(o["topic"] == "sampling" for o in report["observations"])
    # Three ticks of at most 2048 threads each, plus start-up: well inside the window + 3 s.
    assert elapsed < 2 + 3 + 2, elapsed


def test_snapshot_replay_gives_the_same_static_facts(tmp_path):
    archive = tmp_path / "snap.tar.gz"
    secret_env = dict(os.environ, HF_TOKEN="hf_secret_value", OMP_NUM_THREADS="3")
    with workload("threads", "--busy", "1", "--idle", "3", env=secret_env) as target:
        recorded = run_dsmon("snapshot", str(target.pid), "-o", str(archive))
        assert recorded.returncode == 0, recorded.stderr
        live = diagnose_json(target.pid, duration="1s")
    import tarfile
    replay = tmp_path / "replay"
    with tarfile.open(archive) as tar:
        tar.extractall(replay)
    replayed = diagnose_json(target.pid, "--path.procfs", str(replay / "proc"),
                             "--path.sysfs", str(replay / "sys"), "--path.rootfs", str(replay),
                             duration="0.2s", interval="0.1s")
    for key in ("cpus_online", "sockets", "physical_cores", "smt", "kernel", "hostname"):
        assert replayed["host"][key] == live["host"][key], key
    assert [n["cpus"] for n in replayed["host"]["numa_nodes"]] == \
        [n["cpus"] for n in live["host"]["numa_nodes"]]
    for key in ("pid", "start_ticks", "comm", "cmdline", "exe", "user", "uid", "nspid",
                "cgroup_version", "threads", "environment"):
        assert replayed["target"][key] == live["target"][key], key
    assert replayed["target"]["effective_cpus"] == live["target"]["effective_cpus"]
    assert replayed["target"]["memory"]["cgroup"]["limit_bytes"] == \
        live["target"]["memory"]["cgroup"]["limit_bytes"]
    assert {r["name"] for r in replayed["threads"]["all"]} == {r["name"] for r in live["threads"]["all"]}
    # The bundle keeps secrets out: only allow-listed variables in environ.
    environ = (replay / "proc" / str(target.pid) / "environ").read_bytes()
    assert b"PATH=" not in environ and b"hf_secret_value" not in environ
    assert environ == b"OMP_NUM_THREADS=3\0"
    assert replayed["target"]["environment"] == {"OMP_NUM_THREADS": "3"}


def test_snapshot_of_a_missing_pid_fails_clearly(tmp_path):
    result = run_dsmon("snapshot", str(_free_pid()), "-o", str(tmp_path / "x.tgz"))
    assert result.returncode == 3
    assert "no process with pid" in result.stderr
    assert not (tmp_path / "x.tgz").exists()
