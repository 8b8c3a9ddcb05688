"""The agent for real: a subprocess on a loopback port, watching spawned processes, talking
sd_notify to a socket the test listens on; and in-process for faulty collectors."""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from dsmon.agent.config import AgentConfig, TargetSpec
from dsmon.agent.daemon import Agent
from dsmon.engine.rules import load_rules
from tests.helpers.spawn import REPO, workload


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class NotifyListener:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path):
        self.path = str(path)
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(self.path)
        self.socket.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.is_set():
            try:
                data = self.socket.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, text: str, timeout: float = 15.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for stamp, message in list(self.messages):
                if text in message:
                    return stamp
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not received; got {self.messages}")

    def close(self):
        self._stop.set()
        self.socket.close()


@contextmanager
def running_agent(tmp_path, *args, config_text: str | None = None, env_extra=None,
                  open_files: int | None = None):
    """`open_files`: the agent's RLIMIT_NOFILE (soft and hard), like `ulimit -n` before it."""
    port = free_port()
    listener = NotifyListener(tmp_path / "notify.sock")
    env = dict(os.environ, NOTIFY_SOCKET=listener.path, WATCHDOG_USEC="3000000",
               PYTHONPATH=str(REPO), **(env_extra or {}))
    command = [sys.executable, "-m", "dsmon", "agent", "--listen", f"127.0.0.1:{port}", *args]
    if config_text is not None:
        config = tmp_path / "dsmon.toml"
        config.write_text(config_text)
        command += ["--config", str(config)]
    log = open(tmp_path / "agent.log", "w+")
    limit = None if open_files is None else \
        (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files)))
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                               preexec_fn=limit)
    try:
        listener.wait_for("READY=1")
        yield process, f"http://127.0.0.1:{port}", listener
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        listener.close()
        log.seek(0)
        print(log.read())
        log.close()


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def metric(body: str, name: str, /, **labels) -> float | None:
    for line in body.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return None


def test_ready_watchdog_metrics_and_promtool(tmp_path):
    with workload("threads", "--busy", "2", "--idle", "3") as target:
        with running_agent(tmp_path, "--target", f"srv=pid:{target.pid}") as (agent, url, notify):
            ready_at = notify.wait_for("READY=1")
            time.sleep(3.5)
            pings = [m for stamp, m in notify.messages if "WATCHDOG=1" in m and stamp > ready_at]
            assert len(pings) >= 2
            body = get(url + "/metrics")
            assert metric(body, "dsmon_process_busy_threads", target="srv") in (1, 2, 3)
            assert metric(body, "dsmon_process_threads", target="srv", state="R") >= 1
            assert metric(body, "dsmon_process_pool_threads", target="srv",
                          pool="idle_worker_#") == 3
            assert metric(body, "dsmon_target_up", target="srv") == 1
            # a plain Python workload: the features say no torch, no BLAS
            assert metric(body, "dsmon_process_runtime_loaded", target="srv", runtime="torch") == 0
            assert metric(body, "dsmon_process_runtime_loaded", target="srv", runtime="blas") == 0
            assert metric(body, "dsmon_collector_success", collector="cpu") == 1
            assert metric(body, "dsmon_build_info") == 1
            assert f'"{target.pid}"' not in body and f"={target.pid}" not in body  # no pid labels
            for line in body.splitlines():
                if line.startswith("dsmon_cpu_seconds_total{"):
                    assert re.search(r'cpu="\d+",mode="(user|nice|system|idle|iowait|irq|'
                                     r'softirq|steal)"', line)
            promtool = shutil.which("promtool")
            if promtool:
                check = subprocess.run([promtool, "check", "metrics"], input=body,
                                       capture_output=True, text=True)
                assert check.returncode == 0, check.stdout + check.stderr
            landing = get(url + "/")
            assert "srv" in landing and "<table>" in landing
            assert '"target": "srv"' in get(url + "/findings")


def test_fifty_parallel_scrapes(tmp_path):
    with workload("threads", "--idle", "4") as target:
        with running_agent(tmp_path, "--target", f"srv=pid:{target.pid}") as (agent, url, _):
            started = time.monotonic()
            with ThreadPoolExecutor(50) as pool:
                bodies = list(pool.map(lambda _: get(url + "/metrics"), range(50)))
            elapsed = time.monotonic() - started
    assert all("dsmon_target_up" in body for body in bodies)
    assert elapsed < 10, elapsed


def test_sigterm_stops_within_two_seconds(tmp_path):
    with running_agent(tmp_path, "--target", "auto") as (agent, url, notify):
        started = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=5) == 0
        assert time.monotonic() - started < 2.0
        notify.wait_for("STOPPING=1", timeout=1)


def test_sighup_reload_good_and_broken_config(tmp_path):
    with workload("threads", "--idle", "1") as first, workload("threads", "--idle", "2") as second:
        config = f'[[targets]]\nname = "one"\npid = {first.pid}\n'
        with running_agent(tmp_path, config_text=config) as (agent, url, notify):
            assert metric(get(url + "/metrics"), "dsmon_target_up", target="one") == 1
            (tmp_path / "dsmon.toml").write_text(
                config + f'[[targets]]\nname = "two"\npid = {second.pid}\n')
            agent.send_signal(signal.SIGHUP)
            notify.wait_for("STATUS=reloaded")
            body = get(url + "/metrics")
            assert metric(body, "dsmon_target_up", target="two") == 1
            (tmp_path / "dsmon.toml").write_text("[[targets]]\nname = 'x'\nbogus = 1\n")
            agent.send_signal(signal.SIGHUP)
            notify.wait_for("STATUS=reload failed")
            time.sleep(1.5)
            assert agent.poll() is None                  # still running on the old config
            body = get(url + "/metrics")
            assert metric(body, "dsmon_target_up", target="one") == 1
            assert metric(body, "dsmon_target_up", target="two") == 1


def test_target_restart_keeps_its_label_without_stale_series(tmp_path):
    pattern = "pattern:workload.py threads --idle 3"
    with running_agent(tmp_path, "--target", f"api={pattern}",
                       "--discovery-interval", "1s") as (agent, url, _):
        with workload("threads", "--idle", "3") as first:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and '"pid": %d' % first.pid not in get(url + "/findings"):
                time.sleep(0.3)
            assert '"pid": %d' % first.pid in get(url + "/findings")
        with workload("threads", "--idle", "3") as second:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and '"pid": %d' % second.pid not in get(url + "/findings"):
                time.sleep(0.3)
            findings = get(url + "/findings")
            assert '"pid": %d' % second.pid in findings and '"pid": %d' % first.pid not in findings
            body = get(url + "/metrics")
            ups = [line for line in body.splitlines() if line.startswith("dsmon_target_up{")]
            assert ups == ['dsmon_target_up{target="api"} 1.0']


class RaisingCollector:
    name = "broken"

    def collect(self):
        raise RuntimeError("simulated bug")


class HangingCollector:
    name = "stuck"

    def __init__(self):
        self.release = threading.Event()

    def collect(self):
        self.release.wait(30)
        return {}


class FakeNotifier:
    def __init__(self):
        self.messages = []

    def ready(self, status):
        self.messages.append(("READY", time.monotonic()))

    def watchdog(self):
        self.messages.append(("WATCHDOG", time.monotonic()))

    def status(self, status):
        self.messages.append(("STATUS", status))

    def stopping(self):
        self.messages.append(("STOPPING", time.monotonic()))

    def close(self):
        pass


def test_a_raising_and_a_hanging_collector_do_not_break_the_scrape(tmp_path):
    from dsmon.collectors.cpu import CpuCollector
    from dsmon.paths import HostPaths

    hanging = HangingCollector()
    port = free_port()
    config = AgentConfig(listen=f"127.0.0.1:{port}", interval_s=0.5, targets=(TargetSpec("auto"),))
    notifier = FakeNotifier()
    agent = Agent(config, load_rules(), notifier=notifier,
                  host_collectors=[CpuCollector(HostPaths()), RaisingCollector(), hanging])
    try:
        started = time.monotonic()
        agent.start()
        assert time.monotonic() - started < 5   # READY was not held back by the hang
        time.sleep(2.5)
        scrape_started = time.monotonic()
        body = get(f"http://127.0.0.1:{port}/metrics")
        assert time.monotonic() - scrape_started < 1.0
        assert metric(body, "dsmon_collector_success", collector="broken") == 0
        assert metric(body, "dsmon_collector_success", collector="stuck") == 0
        assert metric(body, "dsmon_collector_success", collector="cpu") == 1
        assert metric(body, "dsmon_cpu_seconds_total", cpu="0", mode="user") is not None
        # The sampling loop itself is healthy: the watchdog is still fed.
        assert sum(1 for kind, _ in notifier.messages if kind == "WATCHDOG") >= 3
    finally:
        hanging.release.set()
        agent.stop()


def test_a_wedged_sampling_loop_stops_the_watchdog(tmp_path):
    port = free_port()
    config = AgentConfig(listen=f"127.0.0.1:{port}", interval_s=0.3, targets=())
    notifier = FakeNotifier()
    agent = Agent(config, load_rules(), notifier=notifier)
    wedge = threading.Event()
    original = agent.sampling._sample_targets

    def wedged():
        original()
        if wedge.is_set():
            time.sleep(30)

    agent.sampling._sample_targets = wedged
    try:
        agent.start()
        time.sleep(1.2)
        assert sum(1 for kind, _ in notifier.messages if kind == "WATCHDOG") >= 2
        wedge.set()
        time.sleep(0.8)
        count = sum(1 for kind, _ in notifier.messages if kind == "WATCHDOG")
        time.sleep(1.5)
        assert sum(1 for kind, _ in notifier.messages if kind == "WATCHDOG") <= count + 1
        body = get(f"http://127.0.0.1:{port}/metrics")   # the scrape still answers
        assert metric(body, "dsmon_last_sample_age_seconds") > 1.0
        assert metric(body, "dsmon_job_success", job="sample") == 0   # overdue, not "1"
    finally:
        wedge.clear()
        agent.stop()


def test_invalid_config_is_reported_with_every_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\ninterval = 'soon'\ncolour = 'red'\n[[targets]]\npid = 'abc'\n")
    result = subprocess.run([sys.executable, "-m", "dsmon", "agent", "--config", str(bad)],
                            capture_output=True, text=True, timeout=30,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 9
    assert "interval: 'soon' is not a positive duration" in result.stderr
    assert "unknown key 'colour'" in result.stderr
    assert "pid 'abc' is not a number" in result.stderr


def test_tls_and_basic_auth(tmp_path):
    import base64
    import ssl

    import bcrypt

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {tmp_path / 'cert.pem'}\n"
                   f"  key_file: {tmp_path / 'key.pem'}\nbasic_auth_users:\n"
                   f"  prometheus: '{hashed}'\n")
    context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    context.check_hostname = False
    with running_agent(tmp_path, "--target", "auto", "--web-config", str(web)) as (_, url, _n):
        secure = url.replace("http://", "https://") + "/metrics"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(secure, context=context, timeout=5)
        assert denied.value.code == 401
        request = urllib.request.Request(secure, headers={
            "Authorization": "Basic " + base64.b64encode(b"prometheus:s3cret").decode()})
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            assert b"dsmon_build_info" in response.read()
        wrong = urllib.request.Request(secure, headers={
            "Authorization": "Basic " + base64.b64encode(b"prometheus:nope").decode()})
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(wrong, context=context, timeout=5)
        with pytest.raises(OSError):                              # plain HTTP is refused
            urllib.request.urlopen(url + "/metrics", timeout=5).read()
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            assert response.status == 200                          # and the server lives on


def test_a_target_killed_by_the_oom_killer_is_reported(tmp_path):
    """The usual single-process case: the target itself is the OOM killer's victim, so no rule
    can fire on it any more; the agent reports oom-killed for its label."""
    from tests.helpers.cgroups import memory_cgroup, unavailable_reason
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with memory_cgroup(160 * 2**20) as group, group.workload("grow", "--rate-mib", "40") as target:
        with running_agent(tmp_path, "--target", f"grower=pid:{target.pid}") as (agent, url, _):
            deadline = time.monotonic() + 20
            body = ""
            while time.monotonic() < deadline:
                body = get(url + "/metrics")
                if metric(body, "dsmon_target_exits_total", target="grower",
                          reason="oom_killed"):
                    break
                time.sleep(0.5)
            assert target.poll() == -signal.SIGKILL
            assert metric(body, "dsmon_target_exits_total", target="grower",
                          reason="oom_killed") == 1
            assert metric(body, "dsmon_finding_active", rule_id="oom-killed",
                          severity="critical", target="grower") == 1
            assert metric(body, "dsmon_findings_fired_total", rule_id="oom-killed",
                          target="grower") >= 1
            # One cause, one finding: the kill ends the risk that warned of it.
            for severity in ("critical", "warning"):
                assert metric(body, "dsmon_finding_active", rule_id=f"oom-risk-{severity}",
                              severity=severity, target="grower") in (None, 0)
            assert '"grower"' in get(url + "/findings")
            # The zombie (not reaped yet) is not followed again as a live target.
            time.sleep(1.5)
            assert metric(get(url + "/metrics"), "dsmon_target_up", target="grower") in (None, 0)


def test_gpu_metrics_from_a_recorded_host(tmp_path):
    """The agent on a replayed 2x H200 recording: per-GPU families, no pid labels, promtool."""
    recording = REPO / "tests" / "fixtures" / "gpu" / "h200-2gpu.json"
    with running_agent(tmp_path, "--target", "auto", "--nvml-replay", str(recording)) as (_, url, _n):
        body = get(url + "/metrics")
    assert metric(body, "dsmon_gpus") == 2
    assert metric(body, "dsmon_gpu_memory_total_bytes", gpu="0") == 150754820096
    assert metric(body, "dsmon_gpu_memory_used_bytes", gpu="1") is not None
    assert metric(body, "dsmon_gpu_info", gpu="0", name="NVIDIA H200") == 1
    assert metric(body, "dsmon_gpu_pcie_link_generation", gpu="0", which="max") == 5
    assert metric(body, "dsmon_collector_success", collector="gpu") == 1
    promtool = shutil.which("promtool")
    if promtool:
        check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                               text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_no_gpu_driver_is_no_data_not_a_failure(tmp_path):
    with running_agent(tmp_path, "--target", "auto") as (_, url, _n):
        body = get(url + "/metrics")
    assert metric(body, "dsmon_collector_success", collector="gpu") == 1
    assert metric(body, "dsmon_gpus") is None          # absent, never 0
    log = (tmp_path / "agent.log").read_text()
    assert log.count("no NVIDIA driver") <= 1


def test_totals_forget_threads_that_left_even_when_sweeps_are_truncated():
    """Soak finding: with truncated sweeps, every thread ever seen stayed in memory."""
    from dsmon.agent.runtime import Totals
    from dsmon.collectors.threads import ThreadSample, ThreadSweep

    def sweep(tids, listed, wait):
        threads = [ThreadSample(t, f"w{t}", "S", 0, 0, 0, 1, 10, wait, 1, None, None)
                   for t in tids]
        return ThreadSweep(threads, len(listed), truncated=True, listed_tids=list(listed))

    totals = Totals()
    for generation in range(50):                 # 10 threads, replaced every sweep
        tids = range(generation * 10, generation * 10 + 10)
        totals.update(sweep(tids[:5], tids, 1000))
        totals.update(sweep(tids[5:], tids, 2000))
    assert len(totals._last) <= 10
    # Wait only accumulates for threads seen twice: never here, since each lives one round.
    assert totals.run_queue_wait_seconds == 0.0


def test_pool_labels_stay_bounded_with_per_request_threads():
    """A pool of one thread named short_4660 must not become its own label value."""
    from types import SimpleNamespace

    from dsmon.agent.runtime import PoolNames, TargetRuntime
    from dsmon.collectors.threads import ThreadSample, ThreadSweep
    from dsmon.model import Batch, Status
    from dsmon.sampler import Tick

    def tick(when, threads):
        sweep = ThreadSweep([ThreadSample(tid, name, "S", ticks, 0, 0, 1, 0, 0, 0, None, None)
                             for tid, name, ticks in threads], len(threads))
        return Tick(when, when, {"threads": Batch("threads", when, when, Status.OK, sweep)})

    runtime = SimpleNamespace(
        static=SimpleNamespace(hz=100), pool_names=PoolNames(),
        previous_tick=tick(0.0, [(1, "python3", 0), (2, "short_4660", 0)]),
        last_tick=tick(1.0, [(1, "python3", 50), (2, "short_4660", 10), (3, "short_11101", 0)]))
    rows = {pool: (count, cores) for pool, count, cores in TargetRuntime.pools(runtime, 20)}
    assert set(rows) == {"python#", "short_#"}       # masked names only, never per-thread ones
    assert rows["short_#"][0] == 2 and rows["short_#"][1] == pytest.approx(0.1)
    assert rows["python#"] == (1, pytest.approx(0.5))
    # More pools than the cap fold into "other", so the label set stays bounded.
    many = SimpleNamespace(static=SimpleNamespace(hz=100), previous_tick=None,
                           pool_names=PoolNames(),
                           last_tick=tick(1.0, [(i, f"pool{chr(97 + i)}_{i}", 0)
                                                for i in range(10)]))
    assert [row[0] for row in TargetRuntime.pools(many, 4)][-1] == "other"
    assert len(TargetRuntime.pools(many, 4)) == 4
