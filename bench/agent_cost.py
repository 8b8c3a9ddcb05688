#!/usr/bin/env python3
"""What the running agent costs: CPU, peak memory and scrape latency at 1 Hz.

    python bench/agent_cost.py [--quick] [--duration S] [--scrapes N] [--churn]
                               [--profile] [--json FILE] [--keep-logs DIR]

Scenarios, each a fresh agent (`python -m dsmon agent --listen 127.0.0.1:PORT --interval 1s`):
- `target-512`: one target, `tests/helpers/churn_target.py --threads 512 --churn 0` (128
  workers hash in 0.5 ms bursts every 200 ms, 384 wait on an Event: an inference server's
  pools), followed with `--target bench=pid:PID`;
- `host-only`: no target (`targets = []` in a config file), for reference;
- `target-512-churn` with `--churn`: the same target replacing 5% of its threads a second.

For each, after the agent serves the target and a 5 s settling time, it runs `--duration` s
(60, 20 with --quick) while `--scrapes` (100) GETs of /metrics are spread evenly over it,
each on a new connection, timed from the request to the last byte (wall). Measured:
- CPU: utime+stime of /proc/PID/stat over the window / the window's wall time (% of one
  core). CPU time, so other load on the host inflates it little. It includes the benchmark's
  own scrapes (100 in 60 s is 25x Prometheus's default 15 s cadence), so it is split: each
  request is served by a thread that exits after it, while the scheduler, its workers, the
  HTTP accept loop and the main thread live on; the CPU of the long-lived threads over the
  window (task/TID/schedstat, ns) is the sampling cost, the rest of the process's CPU is the
  scrapes' (a burst of 50 back-to-back scrapes after the window is a cross-check). The figure
  compared with the budget is the agent's cost at 1 Hz with one scrape per 15 s: long-lived
  threads' CPU / completed cycles x 1 Hz + one scrape's CPU / 15 s. Completed cycles are
  counted from the target's dsmon_last_sample_timestamp_seconds (the scrapes come faster than
  the cycles, so each is seen): a host so busy that the agent skips cycles would otherwise
  make it look cheaper.
- peak RSS: VmHWM at the end; scrape latency: median and p95 of the scrapes;
- series: non-comment lines of /metrics; the agent's own job durations (dsmon_job_duration_
  seconds, wall) averaged over the scrapes.
Budgets: CPU <= 2% of one core, peak RSS <= 60 MB (10^6 bytes), scrape p95 <= 20 ms, for the
target-512 scenario; PASS/FAIL printed, exit 1 on FAIL.

--profile (automatic when the CPU budget fails, unless --no-profile): a further run of the
target-512 scenario (one scrape per 15 s) where the agent is started by a launcher that wraps
its jobs and their main steps with a thread-CPU clock (CLOCK_THREAD_CPUTIME_ID; dsmon is not
changed, the functions are replaced in the agent's process before it starts): exact ms of CPU
per 1 Hz cycle per function, inclusive. At the same time `py-spy record --format raw --rate 250
--nonblocking` samples the running threads, for the self time of the functions inside those.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.soak import (
    count_series,
    cpu_seconds,
    free_port,
    host_facts,
    install_signal_handlers,
    log_errors,
    metric_value,
    open_fds,
    proc_status,
    reap,
    reap_all,
    scrape,
    start_agent,
    start_churn_target,
    wait_for_metrics,
)

BUDGET_CPU_PCT = 2.0
BUDGET_RSS_BYTES = 60_000_000
BUDGET_SCRAPE_P95_MS = 20.0
SETTLE_S = 5.0
BURST_SCRAPES = 50
PROMETHEUS_SCRAPE_S = 15.0
PROFILE_RATE = 250
JOBS = {  # qualified names (py-spy frames) of the functions that start each of the agent's jobs
    "sample (targets, publish)": "Agent.sample", "host collectors": "Sampling.collect_host",
    "rules (evaluate, publish)": "Sampling.evaluate_rules", "discover": "Sampling.discover",
    "numa": "Sampling.refresh_numa", "HTTP (scrapes)": "_Handler.do_GET",
}


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of the process in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        raw = handle.read()
    fields = raw[raw.rfind(b")") + 2:].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_pressure_total() -> float | None:
    """Host PSI cpu `some` total, seconds (time some runnable task waited for a CPU)."""
    try:
        with open("/proc/pressure/cpu") as handle:
            for line in handle:
                if line.startswith("some"):
                    return int(line.rsplit("total=", 1)[1]) / 1e6
    except (OSError, ValueError, IndexError):
        return None
    return None


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """CPU time of each live thread of the process, ns (first field of task/TID/schedstat;
    falls back to utime+stime of task/TID/stat in clock ticks)."""
    result = {}
    tick_ns = 1e9 / os.sysconf("SC_CLK_TCK")
    for name in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{name}/schedstat") as handle:
                result[int(name)] = int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            try:
                with open(f"/proc/{pid}/task/{name}/stat", "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()
                result[int(name)] = int((int(fields[11]) + int(fields[12])) * tick_ns)
            except (OSError, ValueError, IndexError):
                continue
    return result


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    # nearest rank
    rank = max(1, math.ceil(share * len(ordered) - 1e-9))
    return ordered[min(len(ordered), rank) - 1]


def run_scenario(name: str, *, duration: float, scrapes: int, threads: int = 512,
                 churn: float = 0.0, host_only: bool = False, log_dir: Path,
                 progress=print) -> dict:
    target = agent = None
    log_path = log_dir / f"agent-{name}.log"
    try:
        if not host_only:
            target = start_churn_target(threads, churn)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        if host_only:
            agent = start_agent(port, (), 1.0, log_path, config_text="targets = []\n")
            needle = "dsmon_cpu_seconds_total{"
        else:
            agent = start_agent(port, (f"bench=pid:{target.pid}",), 1.0, log_path)
            needle = 'dsmon_target_up{target="bench"} 1.0'
        wait_for_metrics(url, agent, needle)
        time.sleep(SETTLE_S)
        latencies: list[float] = []
        failures: list[str] = []
        jobs: dict[str, list[float]] = defaultdict(list)
        series = 0
        stamps: set[float] = set()    # dsmon_last_sample_timestamp_seconds seen: one per cycle
        window_wall0 = time.time()
        psi0, load0 = cpu_pressure_total(), os.getloadavg()[0]
        threads0 = thread_cpu_ns(agent.pid)
        cpu0, wall0, (user0, sys0) = cpu_seconds(agent.pid), time.monotonic(), cpu_split(agent.pid)
        step = duration / scrapes
        for index in range(scrapes):
            delay = wall0 + (index + 0.5) * step - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                body, seconds = scrape(url + "/metrics")
            except (OSError, urllib.error.URLError, RuntimeError) as exc:
                failures.append(str(exc))
                continue
            latencies.append(seconds * 1000)
            series = count_series(body)
            stamp = None if host_only else \
                metric_value(body, "dsmon_last_sample_timestamp_seconds", target="bench")
            if stamp is not None:
                stamps.add(stamp)
            for job in ("sample", "rules"):
                value = metric_value(body, "dsmon_job_duration_seconds", job=job)
                if value is not None:
                    jobs[job].append(value * 1000)
        delay = wall0 + duration - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        cpu1, wall1, (user1, sys1) = cpu_seconds(agent.pid), time.monotonic(), cpu_split(agent.pid)
        threads1 = thread_cpu_ns(agent.pid)
        window_wall1 = time.time()
        psi1, load1 = cpu_pressure_total(), os.getloadavg()[0]
        # Cross-check of one scrape's CPU: a burst, minus what the 1 Hz jobs used meanwhile.
        window_rate = (cpu1 - cpu0) / (wall1 - wall0)
        b_cpu0, b_wall0 = cpu_seconds(agent.pid), time.monotonic()
        for _ in range(BURST_SCRAPES):
            scrape(url + "/metrics")
        b_cpu1, b_wall1 = cpu_seconds(agent.pid), time.monotonic()
        status = proc_status(agent.pid)
        fds, agent_threads = open_fds(agent.pid), status["Threads"]
        alive = agent.poll() is None
    finally:
        if agent is not None:
            reap(agent, graceful_s=3.0)
        if target is not None:
            reap(target)
    wall = wall1 - wall0
    cpu = cpu1 - cpu0
    burst_per_scrape_s = max(0.0, ((b_cpu1 - b_cpu0) - window_rate * (b_wall1 - b_wall0))
                             / BURST_SCRAPES)
    # The split: each request is served by a thread of its own that exits after it, while the
    # scheduler, its executors' workers, the HTTP accept loop and the main thread live on. So
    # the long-lived threads' CPU (schedstat, ns) is the sampling cost, and the rest of the
    # process's CPU is what the window's scrapes cost.
    persistent_s = sum(ns - threads0.get(tid, 0) for tid, ns in threads1.items()) / 1e9
    per_scrape_s = max(0.0, cpu - persistent_s) / len(latencies) if latencies else 0.0
    background = persistent_s / wall
    # Under CPU contention the scheduler skips cycles (max_instances=1, coalesce): the cost of
    # a full 1 Hz is then the cost per completed cycle. Cycles are counted by the target's
    # last-sample timestamps (scrapes come faster than cycles, so each one is seen).
    cycles = sum(1 for t in stamps if window_wall0 <= t <= window_wall1) if stamps else None
    completed = None if not cycles else min(1.0, cycles / wall)
    at_prometheus = background / (completed or 1.0) + per_scrape_s / PROMETHEUS_SCRAPE_S
    result = {
        "scenario": name, "threads": 0 if host_only else threads, "churn": churn,
        "window_s": round(wall, 2), "cpu_s": round(cpu, 3),
        "cpu_pct_measured": round(100 * cpu / wall, 3),
        "cpu_pct_user": round(100 * (user1 - user0) / wall, 3),
        "cpu_pct_system": round(100 * (sys1 - sys0) / wall, 3),
        "scrapes": len(latencies), "scrape_failures": failures,
        "cpu_ms_per_scrape": round(per_scrape_s * 1000, 2),
        "cpu_ms_per_scrape_burst": round(burst_per_scrape_s * 1000, 2),
        "burst_wall_ms_per_scrape": round((b_wall1 - b_wall0) * 1000 / BURST_SCRAPES, 2),
        "cpu_pct_sampling_only": round(100 * background, 3),
        "cycles_completed": cycles,
        "cycles_completed_ratio": None if completed is None else round(completed, 3),
        "cpu_ms_per_cycle": round(1000 * background / (completed or 1.0), 2),
        "cpu_pct_1hz_prometheus_15s": round(100 * at_prometheus, 3),
        "peak_rss_bytes": status["VmHWM"] * 1024, "rss_end_bytes": status["VmRSS"] * 1024,
        "scrape_ms_median": round(statistics.median(latencies), 2) if latencies else None,
        "scrape_ms_p95": round(percentile(latencies, 0.95), 2) if latencies else None,
        "scrape_ms_max": round(max(latencies), 2) if latencies else None,
        "series": series, "agent_threads": agent_threads, "agent_fds": fds,
        "job_wall_ms_mean": {job: round(statistics.fmean(v), 2) for job, v in jobs.items()},
        "agent_alive": alive, "log_errors": log_errors(log_path),
        # How contended the host was: share of the window some task waited for a CPU.
        "host_cpu_pressure_some_ratio": None if psi0 is None or psi1 is None
        else round((psi1 - psi0) / wall, 3),
        "host_loadavg1_start_end": [load0, load1],
    }
    progress(f"  {name}: CPU {result['cpu_pct_measured']:.2f}% measured "
             f"({result['scrapes']} scrapes), {result['cpu_pct_1hz_prometheus_15s']:.2f}% at 1 Hz "
             f"+ 1 scrape/15 s; peak RSS {result['peak_rss_bytes'] / 1e6:.1f} MB; scrape "
             f"median {result['scrape_ms_median']} ms, p95 {result['scrape_ms_p95']} ms; "
             f"{series} series; host CPU pressure {result['host_cpu_pressure_some_ratio']}, "
             f"load {load0:.1f}->{load1:.1f}")
    return result


def verdict(result: dict) -> list[tuple[str, bool, str]]:
    return [
        ("CPU", result["cpu_pct_1hz_prometheus_15s"] <= BUDGET_CPU_PCT,
         (f"{result['cpu_pct_1hz_prometheus_15s']:.2f}% of one core at 1 Hz + 1 scrape/15 s "
          f"(measured {result['cpu_pct_measured']:.2f}% with {result['scrapes']} scrapes in "
          f"{result['window_s']:g} s, {result['cycles_completed']} cycles completed; "
          f"{result['cpu_ms_per_scrape']:.2f} ms CPU per scrape) "
          f"<= {BUDGET_CPU_PCT:g}%")),
        ("RSS", result["peak_rss_bytes"] <= BUDGET_RSS_BYTES,
         (f"peak {result['peak_rss_bytes'] / 1e6:.1f} MB "
          f"({result['peak_rss_bytes'] / 2**20:.1f} MiB) <= {BUDGET_RSS_BYTES / 1e6:g} MB")),
        ("scrape p95", result["scrape_ms_p95"] is not None
         and result["scrape_ms_p95"] <= BUDGET_SCRAPE_P95_MS,
         (f"{result['scrape_ms_p95']} ms (median {result['scrape_ms_median']} ms, max "
          f"{result['scrape_ms_max']} ms) <= {BUDGET_SCRAPE_P95_MS:g} ms")),
        ("health", result["agent_alive"] and not result["scrape_failures"]
         and not result["log_errors"],
         (f"alive={result['agent_alive']}, {len(result['scrape_failures'])} failed scrapes, "
          f"{len(result['log_errors'])} log errors")),
    ]


# ----------------------------------------------------------------------------------------
# Profile: py-spy raw (collapsed) stacks -> ms of CPU per cycle

def _function(frame: str) -> str:
    """'sample (dsmon/agent/daemon.py:133)' -> 'sample (dsmon/agent/daemon.py)'."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def summarise_profile(raw_path: Path, rate: int, cycles: float, cpu_s: float,
                      top: int = 25) -> dict:
    """Shares of py-spy's samples, turned into ms per cycle of the CPU the agent really used
    in the window (utime+stime): py-spy also samples threads that are runnable but waiting
    for a CPU, so its raw sample count over-states CPU on a loaded host."""
    inclusive: Counter = Counter()
    own: Counter = Counter()
    by_job: Counter = Counter()
    total = 0
    with open(raw_path, errors="replace") as handle:
        for line in handle:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            samples = int(count)
            total += samples
            frames = stack.split(";")
            seen = set()
            for frame in frames:
                function = _function(frame)
                if function not in seen:
                    inclusive[function] += samples
                    seen.add(function)
            own[_function(frames[-1])] += samples
            names = {frame.partition(" (")[0] for frame in frames}
            job = next((label for label, fn in JOBS.items() if fn in names), None)
            if job is None:
                job = "scheduler/executor/other"
            by_job[job] += samples
    cpu_ms_per_cycle = 1000.0 * cpu_s / cycles
    ms = cpu_ms_per_cycle / total if total else 0.0

    def table(counter: Counter) -> list[tuple[str, float, float]]:
        return [(name, round(n * ms, 3), round(100 * n / total, 1) if total else 0.0)
                for name, n in counter.most_common(top)]
    return {"samples": total, "rate_hz": rate, "cycles": round(cycles, 1),
            "sampled_ms_per_cycle": round(total * 1000.0 / rate / cycles, 2),
            "cpu_ms_per_cycle": round(cpu_ms_per_cycle, 2),
            "by_job": table(by_job), "inclusive": table(inclusive), "self": table(own)}


# Instrumentation: the agent is started by a launcher that wraps these functions (class
# attributes or module globals, replaced before dsmon builds its Agent) with a thread-CPU
# clock (CLOCK_THREAD_CPUTIME_ID: user + system time of the calling thread, ns resolution) and
# dumps the running totals as JSON on SIGUSR1. dsmon itself is not changed. Only functions
# called a few times per cycle are wrapped, so the clock calls cost microseconds per cycle.
INSTRUMENTED = (
    # top-level jobs, one per thread at a time (disjoint)
    ("dsmon.agent.daemon", "Agent.sample"),
    ("dsmon.agent.sampling", "Sampling.collect_host"),
    ("dsmon.agent.sampling", "Sampling.evaluate_rules"),
    ("dsmon.agent.sampling", "Sampling.discover"),
    ("dsmon.agent.sampling", "Sampling.refresh_numa"),
    ("dsmon.sinks.http", "_Handler.do_GET"),
    # inside them
    ("dsmon.agent.publish", "Publisher.publish"),
    ("dsmon.agent.publish", "render_host"),
    ("dsmon.agent.publish", "render_target"),
    ("dsmon.agent.publish", "render_findings"),
    ("dsmon.sinks.prometheus", "MetricsBuilder.build"),
    ("dsmon.agent.runtime", "TargetRuntime.sample"),
    ("dsmon.agent.runtime", "TargetRuntime.pools"),
    ("dsmon.agent.runtime", "TargetRuntime.evaluate"),
    ("dsmon.agent.runtime", "Totals.update"),
    ("dsmon.sampler", "TargetSampler.tick"),
    ("dsmon.collectors.threads", "ThreadSampler.sample"),
    ("dsmon.collectors.process", "ProcessCollector.sample"),
    ("dsmon.collectors.cgroup", "CgroupCollector.collect"),
    ("dsmon.sampler", "TargetSampler._target_replaced"),
    ("dsmon.engine.monitor", "RuleMonitor.record"),
    ("dsmon.features.extractor", "FeatureExtractor.update"),
    ("dsmon.engine.monitor", "RuleMonitor.evaluate"),
    ("dsmon.agent.publish", "Publisher.self_metrics"),
    ("dsmon.agent.publish", "generate_latest"),
)
TOP_LEVEL = ("Agent.sample", "Sampling.collect_host", "Sampling.evaluate_rules",
             "Sampling.discover", "Sampling.refresh_numa", "_Handler.do_GET")
DEPTH = {  # indentation of the report: what runs inside what
    "Publisher.publish": 1, "render_host": 2, "render_target": 2, "TargetRuntime.pools": 3,
    "render_findings": 2, "MetricsBuilder.build": 2, "TargetRuntime.sample": 1,
    "TargetSampler.tick": 2, "ProcessCollector.sample": 3, "ThreadSampler.sample": 3,
    "CgroupCollector.collect": 3, "TargetSampler._target_replaced": 3, "Totals.update": 2,
    "RuleMonitor.record": 2, "FeatureExtractor.update": 3, "TargetRuntime.evaluate": 1,
    "RuleMonitor.evaluate": 2, "Publisher.self_metrics": 1, "generate_latest": 1,
}
ORDER = ("Agent.sample", "TargetRuntime.sample", "TargetSampler.tick", "ProcessCollector.sample",
         "ThreadSampler.sample", "CgroupCollector.collect", "TargetSampler._target_replaced",
         "Totals.update", "RuleMonitor.record", "FeatureExtractor.update", "Publisher.publish",
         "render_host", "render_target", "TargetRuntime.pools", "render_findings",
         "MetricsBuilder.build", "Sampling.evaluate_rules", "TargetRuntime.evaluate",
         "RuleMonitor.evaluate", "Sampling.collect_host", "Sampling.discover", "Sampling.refresh_numa",
         "_Handler.do_GET", "generate_latest", "Publisher.self_metrics")

INSTRUMENT_LAUNCHER = r"""
import ctypes, importlib, json, os, runpy, signal, threading, time
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
except Exception:
    pass
OUT = os.environ["DSMON_BENCH_INSTRUMENT"]
totals = {}
lock = threading.Lock()
clock = time.thread_time

def wrap(label, fn):
    def wrapper(*args, **kwargs):
        started = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = clock() - started
            with lock:
                entry = totals.setdefault(label, [0, 0.0])
                entry[0] += 1
                entry[1] += spent
    wrapper.__wrapped__ = fn
    return wrapper

for module_name, path in json.loads(os.environ["DSMON_BENCH_FUNCTIONS"]):
    owner = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    setattr(owner, name, wrap(path, getattr(owner, name)))

def dump(signum=None, frame=None):
    with lock:
        snapshot = {"functions": {k: list(v) for k, v in totals.items()}}
    with open(f"/proc/{os.getpid()}/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    snapshot.update(monotonic=time.monotonic(), utime=int(fields[11]) / tick,
                    stime=int(fields[12]) / tick, process_time=time.process_time())
    with open(OUT + ".tmp", "w") as handle:
        json.dump(snapshot, handle)
    os.replace(OUT + ".tmp", OUT)

signal.signal(signal.SIGUSR1, dump)
runpy.run_module("dsmon", run_name="__main__", alter_sys=True)
"""


def _snapshot(agent, path: Path, timeout: float = 10.0) -> dict:
    if path.exists():
        path.unlink()
    agent.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            with open(path) as handle:
                return json.load(handle)
        time.sleep(0.02)
    raise RuntimeError("the instrumented agent did not write its counters")


def instrument_delta(before: dict, after: dict) -> dict:
    wall = after["monotonic"] - before["monotonic"]
    cpu = after["process_time"] - before["process_time"]
    functions = {}
    for name, (calls, seconds) in after["functions"].items():
        calls0, seconds0 = before["functions"].get(name, (0, 0.0))
        functions[name] = (calls - calls0, seconds - seconds0)
    cycles = functions.get("Agent.sample", (0, 0.0))[0] or wall
    rows = []
    for name in ORDER:
        calls, seconds = functions.get(name, (0, 0.0))
        rows.append({"function": name, "depth": 0 if name in TOP_LEVEL else DEPTH.get(name, 1),
                     "calls_per_cycle": round(calls / cycles, 3),
                     "cpu_ms_per_cycle": round(1000 * seconds / cycles, 3),
                     "cpu_ms_per_call": round(1000 * seconds / calls, 3) if calls else None})
    jobs = sum(functions.get(name, (0, 0.0))[1] for name in TOP_LEVEL)
    return {"window_s": round(wall, 2), "cycles": cycles,
            "process_cpu_ms_per_cycle": round(1000 * cpu / cycles, 3),
            "user_ms_per_cycle": round(1000 * (after["utime"] - before["utime"]) / cycles, 2),
            "system_ms_per_cycle": round(1000 * (after["stime"] - before["stime"]) / cycles, 2),
            "jobs_ms_per_cycle": round(1000 * jobs / cycles, 3),
            "outside_jobs_ms_per_cycle": round(1000 * (cpu - jobs) / cycles, 3),
            "rows": rows}


def run_profile(duration: float, log_dir: Path, churn: float = 0.0, use_py_spy: bool = True,
                progress=print) -> dict:
    """The target-512 scenario with the instrumented agent (exact thread-CPU per function) and,
    at the same time, py-spy (sampled stacks: where inside those functions the time goes)."""
    py_spy = shutil.which("py-spy") if use_py_spy else None
    target = agent = spy = None
    raw = log_dir / "agent-profile.txt"
    counters = log_dir / "agent-instrument.json"
    err = ""
    try:
        target = start_churn_target(512, churn)
        port = free_port()
        agent = start_agent(port, (f"bench=pid:{target.pid}",), 1.0,
                            log_dir / "agent-profile.log", launcher=INSTRUMENT_LAUNCHER,
                            env={"DSMON_BENCH_INSTRUMENT": str(counters),
                                 "DSMON_BENCH_FUNCTIONS": json.dumps(INSTRUMENTED)})
        wait_for_metrics(f"http://127.0.0.1:{port}", agent, 'dsmon_target_up{target="bench"} 1.0')
        time.sleep(SETTLE_S)
        before = _snapshot(agent, counters)
        if py_spy:
            spy = subprocess.Popen([py_spy, "record", "--pid", str(agent.pid), "--rate",
                                    str(PROFILE_RATE), "--duration", str(int(duration)),
                                    "--format", "raw", "--nonblocking", "--output", str(raw)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # A Prometheus-like scrape every 15 s, so the scrape path shows in the profile.
        started = time.monotonic()
        while time.monotonic() - started < duration:
            scrape(f"http://127.0.0.1:{port}/metrics")
            time.sleep(min(PROMETHEUS_SCRAPE_S, max(0.0, duration - (time.monotonic() - started))))
        if spy is not None:
            _, err = spy.communicate(timeout=60)
        after = _snapshot(agent, counters)
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait()
        if agent is not None:
            reap(agent, graceful_s=3.0)
        if target is not None:
            reap(target)
    profile = {"instrumented": instrument_delta(before, after)}
    window = profile["instrumented"]
    if py_spy and raw.exists():
        profile["py_spy"] = summarise_profile(raw, PROFILE_RATE, cycles=window["cycles"],
                                              cpu_s=window["process_cpu_ms_per_cycle"] / 1000
                                              * window["cycles"])
        profile["py_spy"]["raw"] = str(raw)
    elif py_spy:
        profile["py_spy"] = {"error": f"py-spy wrote nothing: {(err or '').strip()[-500:]}"}
    return profile


def format_profile(profile: dict) -> str:
    window = profile["instrumented"]
    lines = [(f"profile (instrumented agent, thread CPU time per function, "
              f"{window['window_s']:g} s, {window['cycles']} cycles, one scrape per 15 s):"),
             (f"  process: {window['process_cpu_ms_per_cycle']:.2f} ms CPU per cycle "
              f"({window['user_ms_per_cycle']:.2f} user + {window['system_ms_per_cycle']:.2f} "
              f"system); in the jobs below {window['jobs_ms_per_cycle']:.2f} ms; outside them "
              f"(APScheduler, executor, HTTP accept, GC, main thread) "
              f"{window['outside_jobs_ms_per_cycle']:.2f} ms"),
             f"  {'ms/cycle':>9} {'calls/cycle':>11} {'ms/call':>8}  function"]
    for row in window["rows"]:
        per_call = "" if row["cpu_ms_per_call"] is None else f"{row['cpu_ms_per_call']:.3f}"
        lines.append(f"  {row['cpu_ms_per_cycle']:>9.3f} {row['calls_per_cycle']:>11.2f} "
                     f"{per_call:>8}  {'  ' * row['depth']}{row['function']}")
    spy = profile.get("py_spy")
    if spy and "error" in spy:
        lines.append(f"py-spy: {spy['error']}")
    elif spy:
        lines.append(f"py-spy (same run, {spy['samples']} samples at {spy['rate_hz']} Hz of "
                     f"threads not idle; shares scaled to the measured "
                     f"{spy['cpu_ms_per_cycle']} ms per cycle; a runnable thread waiting for a "
                     f"CPU is sampled too, so on a loaded host waits show up): raw {spy['raw']}")
        for title, key, count in (("self time", "self", 20),):
            lines.append(f"  {title}:")
            for name, ms, share in spy[key][:count]:
                lines.append(f"    {ms:8.2f} ms {share:5.1f}%  {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 s per scenario")
    parser.add_argument("--duration", type=float, default=None, help="window, s (60; 20 quick)")
    parser.add_argument("--scrapes", type=int, default=100, help="scrapes per window (100)")
    parser.add_argument("--churn", action="store_true", help="also the churning 512-thread target")
    parser.add_argument("--profile", action="store_true", help="always profile")
    parser.add_argument("--no-profile", action="store_true", help="never profile")
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--keep-logs", default=None, help="directory for logs and the profile")
    args = parser.parse_args(argv)
    duration = args.duration or (20.0 if args.quick else 60.0)
    log_dir = Path(args.keep_logs or tempfile.mkdtemp(prefix="dsmon-agent-cost-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    install_signal_handlers()
    document = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "host": host_facts(), "duration_s": duration, "scrapes": args.scrapes,
                "budgets": {"cpu_pct": BUDGET_CPU_PCT, "rss_bytes": BUDGET_RSS_BYTES,
                            "scrape_p95_ms": BUDGET_SCRAPE_P95_MS},
                "scenarios": []}
    try:
        print(f"agent cost at 1 Hz, {duration:g} s per scenario, {args.scrapes} scrapes each; "
              f"logs in {log_dir}", flush=True)
        plan = [("target-512", {}), ("host-only", {"host_only": True})]
        if args.churn:
            plan.insert(1, ("target-512-churn", {"churn": 0.05}))
        for name, options in plan:
            document["scenarios"].append(run_scenario(
                name, duration=duration, scrapes=args.scrapes, log_dir=log_dir,
                progress=lambda text: print(text, flush=True), **options))
        main_result = document["scenarios"][0]
        checks = verdict(main_result)
        passed = all(ok for _, ok, _ in checks)
        cpu_ok = checks[0][1]
        if args.profile or (not cpu_ok and not args.no_profile):
            print("profiling the target-512 scenario with py-spy ...", flush=True)
            document["profile"] = run_profile(duration, log_dir)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        reap_all()
    document["host"]["loadavg_end"] = os.getloadavg()
    print()
    header = (f"{'scenario':<18} {'CPU % meas':>10} {'usr/sys %':>11} {'CPU % 1Hz+15s':>13} "
              f"{'ms/cycle':>8} "
              f"{'ms/scrape':>9} {'peak RSS MB':>11} {'scrape p50':>10} {'p95':>7} "
              f"{'series':>6} {'sample ms':>9}")
    print(header)
    for r in document["scenarios"]:
        split = f"{r['cpu_pct_user']:.2f}/{r['cpu_pct_system']:.2f}"
        print(f"{r['scenario']:<18} {r['cpu_pct_measured']:>10.2f} {split:>11} "
              f"{r['cpu_pct_1hz_prometheus_15s']:>13.2f} {r['cpu_ms_per_cycle']:>8.2f} "
              f"{r['cpu_ms_per_scrape']:>9.2f} {r['peak_rss_bytes'] / 1e6:>11.1f} "
              f"{r['scrape_ms_median']:>10} {r['scrape_ms_p95']:>7} {r['series']:>6} "
              f"{r['job_wall_ms_mean'].get('sample', float('nan')):>9.1f}")
    print()
    print("budgets (target-512):")
    for name, ok, detail in checks:
        print(f"  {'ok  ' if ok else 'FAIL'} {name:<10} {detail}")
    document["checks"] = [{"name": n, "ok": ok, "detail": d} for n, ok, d in checks]
    document["passed"] = passed
    if "profile" in document:
        print()
        print(format_profile(document["profile"]))
    print()
    print("PASS" if passed else "FAIL")
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
