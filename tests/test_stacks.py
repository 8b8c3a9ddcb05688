"""Python stacks through py-spy, against real Python processes spawned here: the hot function
named for its thread, the GIL share of pure-Python vs GIL-releasing threads, non-Python and
unreadable targets, py-spy missing, hanging or stopping the target, PID namespaces, and the
agent's capture of a dump when a finding fires."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from dsmon.stacks.capture import CaptureSettings, CaptureStore, _fit
from dsmon.stacks.pyspy import PySpy, PySpyError, classify, find_pyspy, parse_dump
from tests.helpers.spawn import REPO, diagnose_json, run_dsmon
from tests.test_agent import get, metric, running_agent
from tests.test_edges import NOBODY_WRAPPER

TARGETS = Path(__file__).parent / "helpers" / "python_targets.py"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@contextmanager
def python_target(*args: str, prefix: tuple = ()):
    """Start helpers/python_targets.py; yield the pid of the Python process (inside `prefix`,
    e.g. unshare, that is the child of the wrapper)."""
    process = subprocess.Popen([*prefix, sys.executable, str(TARGETS), *args],
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("ready"), f"target {args} did not start: {line!r}"
        pid = process.pid
        if prefix:
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
            pid = int(children[0])
        yield pid
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        process.stdout.close()


def run_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def thread_named(python: dict, name: str) -> dict:
    matches = [t for t in python["threads"] if t["name"] == name]
    assert matches, [t["name"] for t in python["threads"]]
    return matches[0]


# -- pure parts: py-spy's outputs ---------------------------------------------------------------

@pytest.mark.parametrize("stderr, kind", [
    ("Error: Failed to find python version from target process\n", "not_python"),
    ("Error: No python processes found in process 12 or any of its subprocesses", "not_python"),
    ("Permission Denied: Try running again with elevated permissions by going 'sudo env "
     "\"PATH=$PATH\" !!'\n", "permission_denied"),
    ("Error: Unsupported version of Python: 3.15.0a1", "unsupported_python"),
    ("Error: Failed to get process executable name. Check that the process is running.\n\n"
     "Caused by:\n    0: No such file or directory (os error 2)", "gone"),
    ("thread 'main' panicked at src/foo.rs:1:1", "failed"),
])
def test_py_spy_errors_are_classified(stderr, kind):
    found, message = classify(stderr, 1)
    assert found == kind
    assert message and "py-spy>" not in message
    error = PySpyError(found, message)
    if kind == "permission_denied":
        assert "CAP_SYS_PTRACE" in error.hint and "SYS_PTRACE" in error.hint
        assert "Kubernetes" in error.hint and "Docker" in error.hint
    assert error.permanent == (kind != "failed")


def test_dump_json_is_parsed_with_thread_ids_and_flags():
    text = json.dumps([{"pid": 10, "thread_id": 140000, "thread_name": "worker",
                        "os_thread_id": 12, "active": True, "owns_gil": True,
                        "frames": [{"name": "step", "filename": "/srv/app/model.py",
                                    "short_filename": "model.py", "line": 42, "locals": None}]}])
    [thread] = parse_dump(text)
    assert (thread.os_thread_id, thread.name, thread.active, thread.owns_gil) == \
        (12, "worker", True, True)
    assert thread.frames[0].label() == "step (model.py:42)"
    with pytest.raises(ValueError):
        parse_dump('{"not": "a list"}')


def test_find_py_spy_prefers_an_explicit_executable(tmp_path):
    not_executable = tmp_path / "py-spy"
    not_executable.write_text("")
    assert find_pyspy(str(not_executable)) is None
    assert find_pyspy() is not None   # the one installed with dsmon's Python


# -- diagnose on real Python processes ----------------------------------------------------------

def test_diagnose_names_the_hot_function_of_the_busy_thread():
    with python_target("hot") as pid:
        report = diagnose_json(pid, duration="3s", interval="1s")
    python = report["python"]
    assert python["status"] == "ok", python
    hot = thread_named(python, "hot_0")
    assert hot["top_stacks"][0]["frames"][0].startswith("dsmon_test_hot_function (")
    assert hot["tid"] != pid and hot["cpu_ratio"] > 0.2
    # The thread table carries the same thread's Python frame, joined by OS thread id.
    busiest = report["threads"]["top_by_cpu"][0]
    assert busiest["tid"] == hot["tid"]
    assert busiest["python"]["name"] == "hot_0"
    assert "dsmon_test_hot_function" in busiest["python"]["top_frame"]
    # Idle threads are sampled too, with where they wait.
    idler = thread_named(python, "idler_0")
    assert idler["active_ratio"] < 0.5
    assert "sleeper" in idler["top_stacks"][0]["frames"][0]
    assert python["samples"] >= 5
    assert python["dump_seconds_median"] < 0.5


def test_gil_share_separates_pure_python_from_gil_releasing_threads():
    with python_target("pure", "3") as pid:
        pure = diagnose_json(pid, duration="8s", interval="1s")
    with python_target("native", "3") as pid:
        native = diagnose_json(pid, duration="8s", interval="1s")
    pure_gil, native_gil = pure["python"]["gil_held_ratio"], native["python"]["gil_held_ratio"]
    assert pure_gil >= 0.75, pure["python"]
    assert native_gil <= 0.30, native["python"]
    assert pure_gil - native_gil >= 0.5
    # Every pure thread holds the GIL a share of the time; the holders are named.
    holders = {h["name"] for h in pure["python"]["gil_holders"]}
    assert {"pure_0", "pure_1", "pure_2"} <= holders
    fired = {f["rule_id"]: f for f in pure["findings"]}
    assert "gil-contention" in fired and fired["gil-contention"]["state"] == "firing", \
        [(f["rule_id"], f["state"]) for f in pure["findings"]]
    stacks = fired["gil-contention"]["stacks"]
    assert stacks["status"] == "ok"
    cited = [t for t in stacks["threads"] if t["why"] == "held the GIL"]
    assert cited and all("pure_python_loop" in t["frames"][0] for t in cited)
    native_rules = {f["rule_id"] for f in native["findings"]}
    assert not native_rules & {"gil-contention", "cpu-fluctuation-gil"}, native_rules


def test_a_non_python_target_says_so_and_keeps_the_report():
    target = subprocess.Popen(["sleep", "60"])
    try:
        report = diagnose_json(target.pid, duration="1s", interval="0.5s", expect_rc=0)
    finally:
        target.kill()
        target.wait()
    python = report["python"]
    assert python["status"] == "no_data"
    assert python["error_kind"] == "not_python"
    assert "not a Python process" in python["error"]
    assert report["threads"]["listed"] == 1


def test_py_spy_missing_is_a_clear_failure_not_an_empty_section():
    with python_target("hot") as pid:
        report = diagnose_json(pid, "--py-spy", "/nonexistent/py-spy", duration="1s",
                               interval="0.5s")
        text = run_dsmon("diagnose", str(pid), "--duration", "1s", "--interval", "0.5s",
                         "--py-spy", "/nonexistent/py-spy").stdout
    python = report["python"]
    assert python["status"] == "failed" and python["error_kind"] == "missing"
    assert "pip install py-spy" in python["hint"]
    assert "threads" not in python and report["threads"]["busy"] >= 1
    assert "Python stacks (py-spy)" in text and "unavailable" in text


@needs_root
def test_permission_denied_as_nobody_names_cap_sys_ptrace(tmp_path):
    wrapper = tmp_path / "as_nobody.py"
    wrapper.write_text(NOBODY_WRAPPER.format(repo=str(REPO)))
    with python_target("hot") as pid:
        result = subprocess.run([sys.executable, str(wrapper), "diagnose", str(pid),
                                 "--duration", "1s", "--interval", "0.5s", "--format", "json"],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode in (0, 6), result.stderr
    python = json.loads(result.stdout)["python"]
    assert python["status"] == "failed"
    assert python["error_kind"] == "permission_denied", python
    assert "CAP_SYS_PTRACE" in python["hint"]


def test_a_stopped_target_answers_and_stays_stopped_by_its_own_signal():
    pyspy = PySpy()
    with python_target("hot") as pid:
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while run_state(pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.02)
        threads = pyspy.dump(pid)
        assert any(t.name == "hot_0" for t in threads)
        assert run_state(pid) == "T"          # still stopped, by its own SIGSTOP only
        assert pyspy.resumed == []
        os.kill(pid, signal.SIGCONT)
        for _ in range(5):                    # a running target is never left stopped
            pyspy.dump(pid)
            assert run_state(pid) not in ("T", "t")


def fake_py_spy(tmp_path, body: str) -> str:
    script = tmp_path / "fake-py-spy"
    script.write_text("#!/bin/sh\necho $$ > " + str(tmp_path / "fake.pid") + "\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


def test_a_hanging_py_spy_is_killed_reaped_and_the_target_resumed(tmp_path):
    # This stand-in stops the target and hangs, as a blocking py-spy on a stuck target can.
    pyspy = PySpy(fake_py_spy(tmp_path, 'kill -STOP "$3"; exec sleep 30'), timeout_s=1.0,
                  explicit=True)
    with python_target("hot") as pid:
        started = time.monotonic()
        with pytest.raises(PySpyError) as raised:
            pyspy.dump(pid)
        assert raised.value.kind == "timeout"
        assert time.monotonic() - started < 4
        fake_pid = int((tmp_path / "fake.pid").read_text())
        assert not Path(f"/proc/{fake_pid}").exists()     # killed and reaped, no zombie
        assert pyspy.resumed == [pid]
        assert run_state(pid) not in ("T", "t")


def test_one_py_spy_per_target_at_a_time(tmp_path):
    pyspy = PySpy(fake_py_spy(tmp_path, "sleep 1.5; echo '[]'"), timeout_s=5, explicit=True)
    with python_target("hot") as pid:
        first = threading.Thread(target=pyspy.dump, args=(pid,))
        first.start()
        time.sleep(0.3)
        with pytest.raises(PySpyError) as raised:
            pyspy.dump(pid)
        assert raised.value.kind == "busy"
        first.join()
        assert pyspy.dump(pid) == []      # free again afterwards


@needs_root
def test_threads_of_a_target_in_its_own_pid_namespace_are_mapped_to_host_ids():
    with python_target("hot", prefix=("unshare", "--pid", "--fork")) as pid:
        nspid = Path(f"/proc/{pid}/status").read_text().split("NSpid:")[1].split("\n")[0].split()
        assert len(nspid) == 2 and nspid[1] == "1"
        report = diagnose_json(pid, duration="2s", interval="1s")
    python = report["python"]
    hot = thread_named(python, "hot_0")
    host_tids = {row["tid"] for row in report["threads"]["all"]}
    assert hot["tid"] in host_tids
    assert hot["namespace_tid"] is not None and hot["namespace_tid"] != hot["tid"]
    row = next(r for r in report["threads"]["all"] if r["tid"] == hot["tid"])
    assert "dsmon_test_hot_function" in row["python"]["top_frame"]


def test_a_dump_of_64_threads_takes_under_200_ms():
    pyspy = PySpy()
    with python_target("many", "63") as pid:
        timings = []
        for _ in range(7):
            started = time.perf_counter()
            threads = pyspy.dump(pid)
            timings.append(time.perf_counter() - started)
        assert len(threads) == 64
    assert statistics.median(timings) < 0.200, timings


# -- agent: evidence captured when a finding fires -----------------------------------------------

def test_captures_are_rate_limited_size_capped_and_pruned(tmp_path):
    store = CaptureStore(CaptureSettings(directory=str(tmp_path / "captures"), keep=3,
                                         min_interval_s=60, max_bytes=4096))
    assert store.should_capture("vllm", now=100.0)
    assert not store.should_capture("vllm", now=130.0)
    assert store.should_capture("other", now=130.0)
    assert store.should_capture("vllm", now=161.0)
    assert store.results["skipped"] == 1
    with python_target("many", "40") as pid:
        records = [store.capture("vllm", pid, "io-stall", "summary") for _ in range(5)]
    assert all(r.status == "ok" and r.bytes <= 4096 for r in records)
    assert records[-1].truncated          # 41 threads do not fit in 4 KiB: cut, and said so
    files = sorted(p.name for p in (tmp_path / "captures").iterdir())
    assert files == sorted(r.name for r in records[-3:])
    assert all((tmp_path / "captures" / name).stat().st_mode & 0o077 == 0 for name in files)
    assert store.read("../../etc/passwd") is None and store.read(records[0].name) is None
    document = json.loads(store.read(records[-1].name))
    assert document["locals"] is False and document["threads_total"] == 41
    # A failed dump is stored with its reason.
    failed = store.capture("gone", 2 ** 22 + 12345, "io-stall", "summary")
    assert failed.status == "failed" and "does not exist" in failed.error


def test_fit_keeps_gil_holders_and_active_threads_first():
    threads = [{"name": f"idle{i}", "active": False, "owns_gil": False,
                "frames": [f"wait (x.py:{n})" for n in range(30)]} for i in range(200)]
    threads.append({"name": "holder", "active": True, "owns_gil": True, "frames": ["hot (x.py:1)"]})
    body = _fit({"threads": threads}, 8192)
    document = json.loads(body)
    assert len(body) <= 8192 and document["truncated"] is True
    assert document["threads"][0]["name"] == "holder"


def test_agent_captures_stacks_when_a_capture_rule_fires(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "capture.yaml").write_text("""
rules:
  - id: test-python-busy
    severity: warning
    description: fires on any busy Python target, to exercise capture
    window: 2s
    when:
      all:
        - {feature: python_target, agg: last, op: "==", value: 1}
        - {feature: busy_threads, agg: last, op: ">=", value: 1}
    summary: $comm is busy
    hint: none
    capture: stack
""")
    captures = tmp_path / "captures"
    with python_target("hot") as pid:
        with running_agent(tmp_path, "--target", f"hot=pid:{pid}", "--rules", str(rules),
                           "--capture-dir", str(captures), "--interval", "0.5s",
                           "--rules-interval", "0.5s") as (_, url, _listener):
            deadline = time.monotonic() + 30
            links = []
            while time.monotonic() < deadline and not links:
                document = json.loads(get(url + "/findings"))
                for target in document["targets"]:
                    for finding in target["findings"]:
                        if finding["rule_id"] == "test-python-busy":
                            links = finding["captures"]
                time.sleep(0.3)
            assert links, document
            capture = json.loads(get(url + links[0]["url"]))
            assert links[0]["status"] == "ok"
            assert capture["rule_id"] == "test-python-busy" and capture["pid"] == pid
            assert capture["locals"] is False
            hot = [t for t in capture["threads"] if t["name"] == "hot_0"]
            assert hot and "dsmon_test_hot_function" in hot[0]["frames"][0]
            assert all("locals" not in t for t in capture["threads"])
            assert "stacks captured" in get(url + "/")
            body = get(url + "/metrics")
            assert metric(body, "dsmon_stack_captures_total", result="ok") == 1
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(url + "/captures/..%2F..%2Fetc%2Fpasswd", timeout=5)
    assert len(list(captures.glob("*.json"))) == 1     # rate-limited: one per target


def test_profile_counts_gil_and_activity_per_interval_and_maps_namespace_tids(tmp_path):
    from dsmon.stacks.profile import NamespaceTids, StackProfile
    from dsmon.stacks.pyspy import Frame, ThreadStack
    from tests.fixturetree import FakeHost

    # A containerised target: host pid 500 is pid 1 inside; its thread 501 is 7 inside.
    tree = FakeHost(tmp_path)
    tree.write("proc/500/task/500/status", "Name:\tpython\nNSpid:\t500\t1\n")
    tree.write("proc/500/task/501/status", "Name:\tworker\nNSpid:\t501\t7\n")
    profile = StackProfile(NamespaceTids(tree.paths, 500, [500, 1]))
    hot = (Frame("step", "/srv/m.py", "m.py", 3),)
    wait = (Frame("get", "/srv/q.py", "q.py", 9),)

    def sample(holder: bool):
        return [ThreadStack(1, 1, "MainThread", False, False, wait),
                ThreadStack(2, 7, "worker", True, holder, hot)]

    for holder in (True, True, True, False):
        profile.add(sample(holder), 0.01)
    tick = profile.take_tick()
    assert (tick.samples, tick.gil_held, tick.active_threads) == (4, 3, 4)
    assert tick.python_host_tids == frozenset({500, 501})
    assert profile.take_tick().samples == 0          # the next interval starts empty
    summary = profile.summary({501: {"cpu_ratio": 0.9, "state": "R"}})
    worker = summary["threads"][0]
    assert (worker["tid"], worker["namespace_tid"], worker["name"]) == (501, 7, "worker")
    assert (worker["gil_ratio"], worker["active_ratio"], worker["cpu_ratio"]) == (0.75, 1.0, 0.9)
    assert worker["top_stacks"][0]["frames"] == ["step (m.py:3)"]
    assert summary["gil_held_ratio"] == 0.75
    assert summary["active_threads"] == 1 and summary["idle_threads"] == 1
    main = summary["threads"][1]
    assert main["tid"] == 500 and main["top_stacks"][0]["frames"] == ["get (q.py:9)"]


def test_recorded_dumps_of_a_pytorch_gpu_process_replay_through_the_profile():
    """py-spy's answers recorded on an H200 host (bench/device/stacks.sh): a PyTorch process
    with 36 OS threads, 5 of them Python (the main thread in GPU/CPU matmuls, four loader
    threads in a pure-Python loop)."""
    from dsmon.stacks.profile import NamespaceTids, StackProfile
    from dsmon.paths import HostPaths

    recorded = json.loads((Path(__file__).parent / "fixtures" / "stacks" / "h200-torch"
                           / "pyspy-dumps-torch.json").read_text())
    profile = StackProfile(NamespaceTids(HostPaths(), 0, None))
    for dump in recorded["dumps"]:
        profile.add(parse_dump(json.dumps(dump)))
    summary = profile.summary()
    assert summary["samples"] == 25 and summary["python_threads"] == 5
    holders = [h["name"] for h in summary["gil_holders"]]
    assert set(holders[:4]) == {"loader_0", "loader_1", "loader_2", "loader_3"}, holders
    assert all(h["top_frame"].startswith("small_cpu_work (torch_workload.py:")
               for h in summary["gil_holders"] if h["name"].startswith("loader"))
    assert summary["gil_held_ratio"] >= 0.7
    main = next(t for t in summary["threads"] if t["name"] == "MainThread")
    assert main["top_stacks"][0]["frames"][0].startswith("main (torch_workload.py:")
    assert main["gil_ratio"] <= 0.1      # torch ops release the GIL
    # The diagnose run on that host named the same pattern.
    report = json.loads((Path(__file__).parent / "fixtures" / "stacks" / "h200-torch"
                         / "diagnose.json").read_text())
    assert [f["rule_id"] for f in report["findings"]] == ["gil-contention"]


def test_a_passing_not_python_answer_does_not_end_sampling(tmp_path):
    """py-spy misses the interpreter now and then while the target remaps memory: two such
    answers in a row do not end the sampling; three before any success do."""
    from dsmon.stacks.profile import NamespaceTids, StackProfile
    from dsmon.stacks.sampler import StackSampler
    from dsmon.paths import HostPaths

    counter = tmp_path / "calls"
    counter.write_text("0")
    good = json.dumps([{"thread_id": 1, "os_thread_id": 1, "thread_name": "MainThread",
                        "active": True, "owns_gil": True, "frames": []}])
    flaky = fake_py_spy(tmp_path, f"""n=$(($(cat {counter}) + 1)); echo $n > {counter}
if [ $n -le 2 ]; then echo "Error: Failed to find python version from target process" >&2; exit 1; fi
echo '{good}'""")
    with python_target("hot") as pid:
        profile = StackProfile(NamespaceTids(HostPaths(), pid, None))
        sampler = StackSampler(PySpy(flaky, explicit=True), pid, profile, period_s=0.05).start()
        deadline = time.monotonic() + 10
        while profile.samples < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        sampler.stop()
        assert profile.samples >= 3 and sampler.failures == 2
        never = fake_py_spy(tmp_path, 'echo "Error: Failed to find python version" >&2; exit 1')
        profile = StackProfile(NamespaceTids(HostPaths(), pid, None))
        sampler = StackSampler(PySpy(never, explicit=True), pid, profile, period_s=0.05).start()
        sampler._thread.join(timeout=10)
        assert not sampler._thread.is_alive() and sampler.failures == 3
        assert sampler.status()["error_kind"] == "not_python"
