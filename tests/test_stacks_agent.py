"""The agent's continuous Python stacks, against real Python processes: the CPU budget paces
the dumps, hot stacks at /debug/stacks (off by default, behind basic auth), a clear state for
stopped and non-Python targets, a hanging py-spy that stalls neither sampling nor the
watchdog, py-spy under the unit's hardening, and DsmonGILBound from a real GIL-bound process
through Prometheus to Alertmanager."""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import resource
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from dsmon.agent.config import ConfigError, load_config
from dsmon.agent.stacks import AgentStacks, StackSettings
from dsmon.paths import HostPaths
from dsmon.sampler import TargetSampler
from dsmon.sinks.prometheus import MetricsBuilder
from dsmon.stacks.profile import NamespaceTids, StackProfile
from dsmon.stacks.pyspy import Frame, PySpy, ThreadStack, find_pyspy
from dsmon.stacks.sampler import Pacing, StackSampler
from tests.helpers.prometheus_stack import RULES_FILE, PrometheusStack, missing_binaries
from tests.test_agent import get, metric, running_agent
from tests.test_stacks import fake_py_spy, python_target, run_state

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "dsmon.service"
needs_pyspy = pytest.mark.skipif(find_pyspy() is None, reason="py-spy is not installed")


def fake_runtime(label: str, pid: int) -> SimpleNamespace:
    """What AgentStacks reads of a TargetRuntime: the real identity of a real process."""
    static = TargetSampler(HostPaths(), pid).static()
    return SimpleNamespace(label=label, gone="", static=static,
                           resolved=SimpleNamespace(pid=pid,
                                                    start_ticks=static.identity.start_ticks))


def rendered(stacks: AgentStacks) -> str:
    out = MetricsBuilder(1000)
    stacks.render(out, time.monotonic())
    lines = []
    for family in out.families.values():
        suffix = "_total" if family.kind == "counter" else ""
        for values, value in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in zip(family.labels, values))
            lines.append(f"{family.name}{suffix}{{{labels}}} {value}")
    return "\n".join(lines)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# -- pure parts -------------------------------------------------------------------------------

def _thread(tid: int, name: str, active: bool, gil: bool, *functions: str) -> ThreadStack:
    frames = tuple(Frame(f, f"/srv/{f}.py", f"{f}.py", 7) for f in functions)
    return ThreadStack(tid, tid, name, active, gil, frames)


def test_folded_stacks_and_hot_frames_per_pool():
    profile = StackProfile(NamespaceTids(HostPaths(), os.getpid(), None))
    for step in range(4):
        profile.add([_thread(1, "tokenizer_0", True, step < 3, "encode;x", "run"),
                     _thread(2, "tokenizer_1", step == 0, False, "wait", "run"),
                     _thread(3, "MainThread", False, False, "select", "serve")])
    folded = profile.folded().splitlines()
    # Outermost first, the pool as root, ';' inside a name cannot split a frame, busiest first.
    assert folded[0] == "tokenizer_#;run (run.py:7);encode:x (encode:x.py:7) 4"
    assert folded[1] == "tokenizer_#;run (run.py:7);wait (wait.py:7) 1"
    assert len(folded) == 2                                  # idle samples left out ...
    assert "MainThread;serve (serve.py:7);select (select.py:7) 4" in profile.folded(True)
    pools = {p["pool"]: p for p in profile.summary()["pools"]}
    assert pools["tokenizer_#"]["threads"] == 2
    assert pools["tokenizer_#"]["active_threads"] == 2      # thread 2 ran in 1 of 4 samples
    assert pools["tokenizer_#"]["gil_ratio"] == 3 / 8
    assert pools["tokenizer_#"]["hot_frames"][0] == {"frame": "encode;x (encode;x.py:7)",
                                                     "share": 0.8}
    assert pools["MainThread"]["active_threads"] == 0 and pools["MainThread"]["hot_frames"] == []
    rotated = profile.rotated()
    tick = rotated.take_tick()
    assert rotated.samples == 0 and tick.samples == 4                  # no sample lost
    assert tick.python_host_tids == {1, 2, 3}
    # The next window knows only the Python threads it saw (a churning pool stays bounded).
    rotated.add([_thread(4, "tokenizer_0", True, True, "encode", "run")])
    assert rotated.rotated().take_tick().python_host_tids == {4}


@pytest.mark.parametrize("table, problem", [
    ("cpu_budget = 5", "cpu_budget must be a share of one core"),
    ("window = \"soon\"", "window: 'soon' is not a duration"),
    ("debug_endpoint = \"yes\"", "debug_endpoint must be true or false"),
    ("rate = 10", "unknown key 'rate'"),
    ("min_interval = \"1m\"\nmax_interval = \"10s\"", "min_interval (60 s) is above"),
])
def test_bad_stacks_settings_are_one_clear_line_each(tmp_path, table, problem):
    path = tmp_path / "dsmon.toml"
    path.write_text(f"[stacks]\n{table}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(str(path), required=True)
    assert len(raised.value.problems) == 1 and problem in raised.value.problems[0], \
        raised.value.problems


# -- real targets, in process -------------------------------------------------------------------

@needs_pyspy
def test_the_cpu_budget_paces_the_dumps_to_their_measured_cost():
    budget = 0.03
    with python_target("many", "15") as pid:
        profile = StackProfile(NamespaceTids(HostPaths(), pid, None))
        sampler = StackSampler(PySpy(), pid, profile, pacing=Pacing(0.05, budget, 30.0))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        sampler.start()
        time.sleep(5)
        sampler.stop()
        elapsed = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # py-spy's CPU seen from outside (this process's reaped children), against the budget
    # and against the sampler's own accounting of it.
    children = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    health = sampler.health()
    assert health["samples"] >= 3, health
    assert children <= 1.5 * budget * elapsed + 0.03, (children, health)
    assert children <= health["cpu_seconds"] <= children + 0.5 * budget * elapsed, health
    # The period is the cost of a dump over the budget: far above the 50 ms floor.
    per_dump = health["cpu_seconds"] / health["samples"]
    assert 0.4 * per_dump / budget <= health["period_s"] <= 2.5 * per_dump / budget, health
    assert health["period_s"] > 0.1


@needs_pyspy
def test_hot_stacks_are_served_only_when_enabled_and_behind_basic_auth():
    import bcrypt

    from dsmon.sinks.http import EMPTY_VIEW, start_server
    from dsmon.sinks.webconfig import WebConfig

    settings = StackSettings(debug_endpoint=True, cpu_budget=0.05, min_interval_s=0.2)
    web = WebConfig(users={"ops": bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4))})
    with python_target("hot") as hot, python_target("many", "3") as stopped:
        os.kill(stopped, signal.SIGSTOP)
        wait_for(lambda: run_state(stopped) == "T", 5, "the target to stop")
        stacks = AgentStacks(settings, HostPaths())
        sleeper = subprocess.Popen(["sleep", "30"])
        # The server serves what it is handed: here only the stack sampler's endpoint.
        view = dataclasses.replace(EMPTY_VIEW, debug_stacks=stacks.debug_response)
        server = start_server("127.0.0.1", 0, web, view)
        url = f"http://127.0.0.1:{server.server_address[1]}/debug/stacks"
        try:
            stacks.follow([fake_runtime("api", hot), fake_runtime("frozen", stopped),
                           fake_runtime("native", sleeper.pid)])
            body = wait_for(lambda: "dsmon_process_python_gil_held_ratio" in rendered(stacks)
                            and rendered(stacks), 10, "a window of samples")
            assert metric(body, "dsmon_stack_sampler_up", target="api") == 1
            assert metric(body, "dsmon_stack_sampler_state", target="frozen",
                          state="target_stopped") == 1
            assert metric(body, "dsmon_stack_sampler_up", target="frozen") == 0
            assert metric(body, "dsmon_stack_sampler_state", target="native",
                          state="not_python") == 1
            assert metric(body, "dsmon_process_python_threads", target="api",
                          state="active") == 1
            assert re.search(r'dsmon_stack_samples_total\{target="api"\} [1-9]', body)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{url}?target=api", timeout=5)
            assert refused.value.code == 401
            auth = {"Authorization": "Basic " + base64.b64encode(b"ops:s3cret").decode()}
            request = urllib.request.Request(f"{url}?target=api", headers=auth)
            with urllib.request.urlopen(request, timeout=5) as response:
                folded = response.read().decode()
            # The busy thread's stack, outermost first, under its pool; the idle ones left out.
            top = folded.splitlines()[0]
            assert top.startswith("hot_#;") and "dsmon_test_hot_function" in top.split(";")[-1]
            assert re.match(r"^.+ \d+$", top) and "idler" not in folded
            # Off by default: the same request gets a 404 that says how to turn it on.
            stacks.settings = StackSettings()
            with pytest.raises(urllib.error.HTTPError) as off:
                urllib.request.urlopen(urllib.request.Request(f"{url}?target=api",
                                                              headers=auth), timeout=5)
            assert off.value.code == 404 and b"debug_endpoint = true" in off.value.read()
            os.kill(stopped, signal.SIGCONT)
            wait_for(lambda: metric(rendered(stacks), "dsmon_stack_sampler_up",
                                    target="frozen") == 1, 10, "sampling to resume")
        finally:
            server.shutdown()
            server.server_close()
            stacks.close()
            sleeper.kill()
            sleeper.wait()


# -- the agent ----------------------------------------------------------------------------------

@needs_pyspy
def test_a_hanging_py_spy_stalls_neither_sampling_nor_the_watchdog(tmp_path):
    # Each dump hangs for its whole 2.5 s timeout: a sampler on the sample job's thread would
    # leave 2.5 s gaps between watchdog pings; the agent pings every second regardless.
    hanging = fake_py_spy(tmp_path, "exec sleep 30")
    config = f'[stacks]\npy_spy = "{hanging}"\ntimeout = "2.5s"\n'
    with python_target("pure", "1") as pid, \
            running_agent(tmp_path, "--target", f"api=pid:{pid}", config_text=config) as (
                agent, url, notify):
        time.sleep(5.5)
        body = get(url + "/metrics")
        assert metric(body, "dsmon_stack_sampler_state", target="api", state="timeout") == 1
        assert metric(body, "dsmon_stack_sampler_up", target="api") == 0
        assert metric(body, "dsmon_last_sample_age_seconds") < 2.5
        assert metric(body, "dsmon_stack_sampler_errors_total", target="api",
                      kind="timeout") >= 1
        watchdog = [stamp for stamp, message in notify.messages if "WATCHDOG=1" in message]
        assert len(watchdog) >= 3 and max(b - a for a, b in zip(watchdog, watchdog[1:])) < 2.5
        # Each hung py-spy was killed at its timeout: never more than one alive.
        children = Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()
        assert len(children) <= 1, children


def _syscall_groups() -> dict[str, set[str]]:
    groups: dict[str, set[str]] = {}
    current = None
    listing = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True,
                             text=True, timeout=30).stdout
    for line in listing.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), set())
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.add(line.strip())
    return groups


def _expand(names: list[str], groups: dict[str, set[str]]) -> set[str]:
    calls: set[str] = set()
    for name in names:
        calls |= _expand(sorted(groups.get(name, ())), groups) if name.startswith("@") else {name}
    return calls


def unit_syscall_allowlist() -> set[str]:
    """The unit's SystemCallFilter= lines in order: allow lines add, `~` lines remove."""
    groups = _syscall_groups()
    allowed: set[str] = set()
    for line in UNIT.read_text().splitlines():
        if line.startswith("SystemCallFilter="):
            value = line.split("=", 1)[1]
            if value.startswith("~"):
                allowed -= _expand(value[1:].split(), groups)
            else:
                allowed |= _expand(value.split(), groups)
    return allowed


@needs_pyspy
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("systemd-analyze")
                    or not shutil.which("strace") or not shutil.which("setpriv"),
                    reason="needs root, systemd-analyze, strace and setpriv")
def test_py_spy_works_with_only_the_units_capabilities_and_syscalls(tmp_path):
    unit = UNIT.read_text()
    capabilities = re.search(r"^AmbientCapabilities=(.*)$", unit, re.M).group(1).split()
    bounding = re.search(r"^CapabilityBoundingSet=(.*)$", unit, re.M).group(1).split()
    assert "CAP_SYS_PTRACE" in capabilities and "CAP_SYS_PTRACE" in bounding
    assert "NoNewPrivileges=yes" in unit
    caps = ",".join("+" + c.removeprefix("CAP_").lower() for c in capabilities)
    pyspy = find_pyspy()
    trace = tmp_path / "strace.txt"

    def dump_as_nobody(*cap_options: str) -> subprocess.CompletedProcess:
        # The unit's DynamicUser stands in as nobody; the target runs as root.
        return subprocess.run(["strace", "-f", "-qq", "-o", str(trace), "setpriv",
                               "--reuid=65534", "--regid=65534", "--clear-groups",
                               *cap_options, "--no-new-privs", pyspy, "dump", "--pid",
                               str(pid), "--json", "--nonblocking"],
                              capture_output=True, text=True, timeout=30)

    with python_target("hot") as pid:
        without = dump_as_nobody()
        assert without.returncode != 0 and "Permission Denied" in without.stdout + without.stderr
        granted = dump_as_nobody(f"--inh-caps=-all,{caps}", f"--ambient-caps={caps}",
                                 f"--bounding-set=-all,{caps}")
    assert granted.returncode == 0 and "dsmon_test_hot_function" in granted.stdout, \
        granted.stderr
    lines = trace.read_text().splitlines()
    start = max(i for i, line in enumerate(lines) if "execve(" in line and "py-spy" in line)
    used = {m.group(1) for line in lines[start:]
            if (m := re.match(r"^\d+\s+([a-z0-9_]+)\(", line))}
    assert {"process_vm_readv"} <= used
    assert used - unit_syscall_allowlist() == set(), "py-spy needs syscalls the unit denies"


def _rules_without_gil_hold(tmp_path) -> Path:
    """The shipped alert rules with DsmonGILBound's 5 min hold at 0 s: the hold itself is the
    promtool test's (rules/prometheus/tests/dsmon-gil.test.yml); here the chain is tested."""
    document = yaml.safe_load(RULES_FILE.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "DsmonGILBound":
                rule["for"] = "0s"
    path = tmp_path / "dsmon-alerts.yml"
    path.write_text(yaml.safe_dump(document))
    return path


@needs_pyspy
@pytest.mark.slow
@pytest.mark.skipif(missing_binaries(alertmanager=True) is not None,
                    reason=f"Prometheus/Alertmanager {missing_binaries(alertmanager=True)}")
def test_a_gil_bound_process_reaches_alertmanager_as_dsmon_gil_bound(tmp_path, record_property):
    with PrometheusStack(tmp_path, agents=1, alertmanager=True,
                         rules_file=_rules_without_gil_hold(tmp_path)) as stack, \
            python_target("pure", "3") as pid:
        try:
            started = time.monotonic()
            # gil-contention captures a dump: into this test's directory, not /var/lib/dsmon.
            stack.start_agent(0, {"gilbound": pid}, env={"STATE_DIRECTORY": str(tmp_path)})
            alert = stack.wait_until(lambda: [
                a for a in stack.alertmanager_alerts()
                if a["labels"].get("alertname") == "DsmonGILBound"
                and a["labels"].get("target") == "gilbound"], 45, "DsmonGILBound in Alertmanager")
            took = round(time.monotonic() - started, 1)
            record_property("gil_bound_alertmanager_s", took)
            print(f"[measure] gil_bound_alertmanager_s = {took}")
            assert alert[0]["labels"]["severity"] == "warning"
            assert alert[0]["annotations"]["runbook_url"].endswith("DsmonGILBound.md")
            body = stack.agent_metrics(0)
            assert metric(body, "dsmon_finding_active", rule_id="gil-contention",
                          target="gilbound") == 1
            assert metric(body, "dsmon_process_python_gil_held_ratio", target="gilbound") >= 0.8
            assert metric(body, "dsmon_stack_sampler_up", target="gilbound") == 1
        except BaseException:
            print(stack.logs())
            raise


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_gil_bound_alert_holds_five_minutes():
    tests = ROOT / "rules" / "prometheus" / "tests" / "dsmon-gil.test.yml"
    result = subprocess.run(["promtool", "test", "rules", str(tests)], capture_output=True,
                            text=True, cwd=tests.parent, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
