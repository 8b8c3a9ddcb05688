"""The agent under faults and load (issues 18 and 20), each against a real agent process:
signals racing reloads, a sampling thread stuck in a read that never returns, reloads that
change the cadence or fail, a low open-file limit with thousands of threads, many scrapers with
slow clients among them, and threads renamed at random."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path


from bench.serve_load import hold_slow_clients, percentile, scrape_storm
from tests.helpers.spawn import REPO, workload
from tests.test_agent import get, metric, running_agent

HOST_ONLY = "targets = []\n"


def pings(notify, since: float) -> int:
    return sum(1 for stamp, message in list(notify.messages)
               if "WATCHDOG=1" in message and stamp > since)


def wait_for_metric(url: str, predicate, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        body = get(url + "/metrics")
        if predicate(body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout} s:\n{body[-4000:]}")


def wait_for_status(notify, text: str, after: int, timeout: float = 10.0) -> None:
    """Until more than `after` sd_notify messages contain `text`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for _, message in list(notify.messages) if text in message) > after:
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not received; got {notify.messages}")


def count_status(notify, text: str) -> int:
    return sum(1 for _, message in list(notify.messages) if text in message)


def test_sigterm_right_after_sighup_still_stops(tmp_path):
    """Issue 20: a reload cleared the shared stop flag, so SIGTERM after SIGHUP was lost."""
    for run in range(2):
        directory = tmp_path / f"run{run}"
        directory.mkdir()
        with running_agent(directory, config_text=HOST_ONLY) as (agent, url, notify):
            agent.send_signal(signal.SIGHUP)
            started = time.monotonic()
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(timeout=5) == 0
            print(f"SIGHUP then SIGTERM: exited {time.monotonic() - started:.2f} s later")
            assert time.monotonic() - started < 2.0


@contextmanager
def procfs_with_a_pluggable_stat(pid: int, root: Path):
    """A procfs of symlinks to /proc, where /proc/PID/stat can be swapped for a FIFO: an open()
    of a FIFO without a writer blocks in the kernel, as a read of a hung /proc file does."""
    root.mkdir()
    for name in os.listdir("/proc"):
        if name != str(pid):
            os.symlink(f"/proc/{name}", root / name)
    (root / str(pid)).mkdir()
    for name in os.listdir(f"/proc/{pid}"):
        os.symlink(f"/proc/{pid}/{name}", root / str(pid) / name)
    stat = root / str(pid) / "stat"

    def hang():
        os.mkfifo(root / "stat.fifo")
        os.replace(root / "stat.fifo", stat)

    yield hang


def test_a_read_that_never_returns_marks_data_stale_and_cannot_block_sigterm(tmp_path):
    """Issue 20: with the sample job stuck in a read, job success and target_up stayed 1 and
    SIGTERM did not end the agent (its job threads were joined at exit)."""
    with workload("threads", "--idle", "2") as target, \
            procfs_with_a_pluggable_stat(target.pid, tmp_path / "proc") as hang:
        with running_agent(tmp_path, "--path.procfs", str(tmp_path / "proc"),
                           "--target", f"srv=pid:{target.pid}",
                           "--interval", "0.5s") as (agent, url, notify):
            wait_for_metric(url, lambda b: metric(b, "dsmon_target_up", target="srv") == 1 and
                            metric(b, "dsmon_job_success", job="sample") == 1)
            hang()
            hung_at = time.monotonic()
            body = wait_for_metric(url, lambda b: metric(b, "dsmon_job_success",
                                                         job="sample") == 0, timeout=5)
            overdue_after = time.monotonic() - hung_at
            assert overdue_after < 2.0                     # past its 0.5 s interval
            assert metric(body, "dsmon_job_duration_seconds", job="sample") > 0.5
            body = wait_for_metric(url, lambda b: metric(b, "dsmon_target_up",
                                                         target="srv") == 0, timeout=5)
            stale_after = time.monotonic() - hung_at
            assert stale_after < 3.0                       # three intervals, and a scrape
            assert metric(body, "dsmon_last_sample_age_seconds") > 1.5
            quiet_since = time.monotonic()
            time.sleep(1.5)
            assert pings(notify, quiet_since) == 0        # the watchdog is no longer fed
            started = time.monotonic()
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(timeout=5) == 0
            stopped_in = time.monotonic() - started
            assert stopped_in < 2.0
    print(f"hung read: sample job 0 {overdue_after:.2f} s and target down {stale_after:.2f} s "
          f"after the hang, SIGTERM to exit {stopped_in:.2f} s")
    log = (tmp_path / "agent.log").read_text()
    assert "abandoning" in log


BAD_RULE = """rules:
  - id: broken-rule
    severity: nonsense
"""


def test_reloads_reschedule_and_failed_reloads_are_reported(tmp_path):
    """Issue 20: a new interval was logged as reloaded but sampling kept its cadence, and a
    failed reload was only a log line. Issue 18: a broken TOML and an invalid rule keep the
    old config; a metric and a log line say so."""
    (tmp_path / "bad.yaml").write_text(BAD_RULE)
    with workload("threads", "--idle", "1") as first:
        def config(interval: str, extra: str = "") -> str:
            return (f'[agent]\ninterval = "{interval}"\n{extra}'
                    f'[[targets]]\nname = "one"\npid = {first.pid}\n')

        with running_agent(tmp_path, config_text=config("1s")) as (agent, url, notify):
            body = get(url + "/metrics")
            assert metric(body, "dsmon_config_last_reload_successful") == 1
            loaded_at = metric(body, "dsmon_config_last_reload_success_timestamp_seconds")
            assert abs(loaded_at - time.time()) < 30
            since = time.monotonic()
            time.sleep(1.5)
            slow = pings(notify, since)

            (tmp_path / "dsmon.toml").write_text(config("0.25s"))
            agent.send_signal(signal.SIGHUP)
            wait_for_status(notify, "STATUS=reloaded", 0)
            since = time.monotonic()
            time.sleep(1.5)
            fast = pings(notify, since)
            assert fast >= 2 * slow and fast >= 4, (slow, fast)
            body = get(url + "/metrics")
            reloaded_at = metric(body, "dsmon_config_last_reload_success_timestamp_seconds")
            assert metric(body, "dsmon_config_last_reload_successful") == 1
            assert reloaded_at > loaded_at

            for broken in ("[agent\ninterval = 1s\n",
                           config("1s", '[rules]\npaths = ["%s"]\n' % (tmp_path / "bad.yaml"))):
                (tmp_path / "dsmon.toml").write_text(broken)
                failures = count_status(notify, "STATUS=reload failed")
                agent.send_signal(signal.SIGHUP)
                wait_for_status(notify, "STATUS=reload failed", failures)
                body = get(url + "/metrics")
                assert metric(body, "dsmon_config_last_reload_successful") == 0
                assert metric(body, "dsmon_config_last_reload_success_timestamp_seconds") == \
                    reloaded_at
                assert metric(body, "dsmon_target_up", target="one") == 1
                since = time.monotonic()
                time.sleep(0.75)
                assert pings(notify, since) >= 2          # still the running 0.25 s cadence
            assert agent.poll() is None
    log = (tmp_path / "agent.log").read_text()
    assert "reload: rescheduled" in log and "sample every 0.25 s" in log
    failed = [line for line in log.splitlines() if "reload failed" in line]
    assert len(failed) == 2, failed
    assert "not valid TOML" in failed[0]
    assert "severity 'nonsense'" in failed[1]


def test_one_descriptor_budget_under_ulimit_1024(tmp_path):
    """Issue 18: every thread of a 3,000-thread target sampled with `ulimit -n 1024`; issue
    20: the budget is the agent's, not each target's (two large targets exhausted the limit,
    then the agent could not accept a scrape or list /proc)."""
    config = '[agent]\ninterval = "1s"\n'
    with workload("many", "--count", "3000") as large, workload("many", "--count", "500") as other:
        config += (f'[[targets]]\nname = "large"\npid = {large.pid}\n'
                   f'[[targets]]\nname = "other"\npid = {other.pid}\n')
        with running_agent(tmp_path, config_text=config, open_files=1024) as (agent, url, _):
            def settled(body):
                # Above max_threads (2048) a sweep reads a rotating slice: every thread is read
                # within one pass of a few sweeps, and the oldest read says how long ago.
                return metric(body, "dsmon_process_thread_full_pass_seconds",
                              target="large") is not None and \
                    (metric(body, "dsmon_thread_fd_fallback_reads_total") or 0) > 0
            body = wait_for_metric(url, settled, timeout=20)
            for _ in range(2):      # and it stays so, scrape after scrape
                time.sleep(1.0)
                body = get(url + "/metrics")
                assert metric(body, "dsmon_process_threads_listed", target="large") == 3001
                assert metric(body, "dsmon_process_thread_sample_age_max_seconds",
                              target="large") < 15
                assert metric(body, "dsmon_process_threads_sampled", target="other") == 501
                assert metric(body, "dsmon_target_up", target="large") == 1
                assert metric(body, "dsmon_target_up", target="other") == 1
            open_fds = len(os.listdir(f"/proc/{agent.pid}/fd"))
            held = metric(body, "dsmon_thread_fds_held")
            capacity = metric(body, "dsmon_thread_fds_capacity")
            print(f"ulimit 1024: {open_fds} fds open, {held:.0f} held of a budget of "
                  f"{capacity:.0f}, fallback reads "
                  f"{metric(body, 'dsmon_thread_fd_fallback_reads_total'):.0f}, full pass "
                  f"{metric(body, 'dsmon_process_thread_full_pass_seconds', target='large')} s")
            assert metric(body, "dsmon_fd_limit") == 1024
            assert capacity <= 1024 - 256 and 0 < held <= capacity
            assert metric(body, "dsmon_thread_fd_fallback_active") == 1
            assert open_fds < 1024 - 128                       # the reserve is still free
            assert metric(body, "dsmon_open_fds") < 1024 - 128
            assert metric(body, "dsmon_job_success", job="discover") == 1
            with ThreadPoolExecutor(20) as pool:               # and it still serves
                assert all("dsmon_build_info" in b for b in pool.map(
                    lambda _: get(url + "/metrics"), range(40)))
    log = (tmp_path / "agent.log").read_text()
    assert "Too many open files" not in log and "EMFILE" not in log


def agent_threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def test_many_scrapers_and_slow_clients(tmp_path):
    """Issue 20: backlog 5, a thread per connection, no header timeout, HEAD 501. Here 50
    scrapers back to back while 120 clients hold connections without finishing a request
    (more than the server keeps open): no errors, bounded latency, no thread per client."""
    with workload("threads", "--idle", "4") as target:
        with running_agent(tmp_path, "--target", f"srv=pid:{target.pid}") as (agent, url, _):
            port = int(url.rsplit(":", 1)[1])
            threads_before = agent_threads(agent.pid)    # every job thread runs from READY on
            slow = hold_slow_clients(port, 120)
            slow_since = time.monotonic()
            latencies, errors = scrape_storm(port, 50, 4.0)
            threads_after = agent_threads(agent.pid)
            request = urllib.request.Request(url + "/metrics", method="HEAD")
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status == 200
                assert int(response.headers["Content-Length"]) > 1000
                assert response.read() == b""
            # The slow clients are let go once the head timeout has passed.
            time.sleep(max(0.0, 5.5 - (time.monotonic() - slow_since)))
            closed = 0
            for client in slow:
                client.settimeout(0.5)
                try:
                    closed += client.recv(1) == b""
                except OSError:
                    closed += 1
                client.close()
    p50, p95, p99 = (percentile(latencies, s) for s in (0.5, 0.95, 0.99))
    print(f"50 scrapers x 4 s with 120 idle clients: {len(latencies)} scrapes, "
          f"{len(errors)} errors, p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms; load {os.getloadavg()}")
    assert errors == [], errors[:5]
    assert threads_after <= threads_before + 2, (threads_before, threads_after)
    assert len(latencies) >= 200
    # bench/serve_load.py (5 client processes) measures p99 17-21 ms; one client process (its
    # GIL) measures ~50 ms here. The starved-accept defect measured p50 ~220 ms.
    assert p99 < 0.2 and max(latencies) < 2.0
    assert closed == len(slow), f"{closed} of {len(slow)} idle clients closed"


def test_pool_names_stay_bounded_with_10k_threads_renamed_200_per_second(tmp_path):
    """Issue 20: 29 distinct pool names over 8 scrapes; issue 18: 10k threads, 200 renames/s,
    series bounded. Every name is new here, so only the named set's stability bounds them."""
    helper = REPO / "tests" / "helpers" / "rename_target.py"
    target = subprocess.Popen([sys.executable, str(helper), "--threads", "10000",
                               "--renames", "200"], stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout.readline().startswith("ready")
        with running_agent(tmp_path, "--target", f"srv=pid:{target.pid}") as (agent, url, _):
            pools_seen: set[str] = set()
            bodies = 0
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline:
                body = get(url + "/metrics")
                pools = {line.split('pool="', 1)[1].split('"', 1)[0]
                         for line in body.splitlines()
                         if line.startswith("dsmon_process_pool_threads{")}
                if pools:
                    bodies += 1
                    assert len(pools) <= 20
                    pools_seen |= pools
                time.sleep(0.5)
            assert bodies >= 3
            assert metric(body, "dsmon_process_pool_threads", target="srv", pool="other") > 0
            assert metric(body, "dsmon_process_threads_listed", target="srv") == 10001
    finally:
        target.kill()
        target.wait()
    print(f"{len(pools_seen)} pool names over {bodies} scrapes")
    assert len(pools_seen) <= 20, sorted(pools_seen)

