#!/usr/bin/env python3
"""dsmon's overhead next to its peers', measured the same way in the same run, and at scale.

    python bench/peers.py [--quick] [--sizes 64,512,2048,10000] [--repeats 3] [--window 15]
                          [--tools dsmon,process-exporter,...] [--no-scale] [--no-diagnose]
                          [--json FILE] [--markdown FILE] [--svg FILE] [--before FILE]

For each target size (threads of `tests/helpers/churn_target.py --churn 0`: a quarter of them
hash in 0.5 ms bursts, the rest wait on an Event, like an inference server's pools; the burst
period grows with the size above 512 threads so the target's own load stays ~0.3 cores on this
2-core machine), one target process is started and each tool is run against it, one at a time,
interleaved over the repeats (tool A, B, C, ..., then A, B, C again), each a fresh process:

- dsmon: `python -m dsmon agent --listen 127.0.0.1:P --interval 1s --target bench=pid:PID`;
- process-exporter: `prometheus-process-exporter -web.listen-address 127.0.0.1:P -threads=true
  -config.path F` (F matches the target's command line only; per-thread-name metrics on);
- node-exporter: `prometheus-node-exporter --web.listen-address=127.0.0.1:P
  --collector.processes` (its default collectors plus the only one with process/thread
  information: host-wide counts by state; node_exporter has nothing per thread);
- glances: `glances -C F -q --export prometheus -t 1` (F: the exporter on 127.0.0.1:P);
- floor: a bare-Python loop that, once a second, lists task/ and open+read+closes every
  thread's `stat` and `schedstat` (nothing else: no parsing, no serving);
- floor-pread: the same reads with descriptors kept open (`pread`), dsmon's technique.

Every tool is scraped once a second (the exporters collect on scrape, so a scrape is their
sample; dsmon samples on its own 1 Hz clock and serves the last sample). Over a window of
`--window` s after a settling time, measured from /proc of the tool's own process (not the
scraper's): CPU = utime+stime delta (ms per 1 s sample, and % of one core), peak RSS = VmHWM at
the end, scrape latency = wall time of each GET to the last byte (median and p95 of the
window), series = non-comment lines of the last scrape. Each is repeated `--repeats` times;
the table gives the median with min-max over the repeats.

Also: `dsmon diagnose PID --duration 5s` wall time, CPU and peak RSS per size; and the scale
cases: the agent (host only) on fake /proc+/sys trees of 32/64/128/256 CPUs (256: 8 NUMA
nodes), and with fake NVML recordings of 1/2/4/8 GPUs, fitted with least squares
(cost = a + b x N) to report the per-core and per-GPU cost and how linear it is.

Writes the raw results (JSON), docs/benchmarks.md and an SVG chart. --quick: 64 and 512
threads, 1 repeat, 6 s windows, scale cases at two points each.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.agent_cost import cpu_pressure_total, percentile  # noqa: E402
from bench.sample_cost import run_diagnose, spawn  # noqa: E402
from bench.soak import (  # noqa: E402
    CHURN_TARGET,
    count_series,
    cpu_seconds,
    free_port,
    host_facts,
    install_signal_handlers,
    log_errors,
    metric_value,
    proc_status,
    reap,
    reap_all,
    scrape,
    start_agent,
    wait_for_metrics,
)

TOOLS = ("dsmon", "process-exporter", "node-exporter", "glances", "floor", "floor-pread")
SIZES = (64, 512, 2048, 10_000)
SETTLE_S = 3.0
SETTLE_LARGE_S = 10.0            # above 2,048 threads: dsmon's first pass opens descriptors
BASE_PERIOD_MS = 200.0           # churn_target's burst period at <= 512 threads

# Budgets (issue 9), this machine, 1 Hz.
BUDGET_512_CPU_PCT = 2.0
BUDGET_512_VS_PROCESS_EXPORTER = 0.25
BUDGET_512_VS_FLOOR = 2.5
BUDGET_10K_CPU_PCT = 5.0
BUDGET_10K_COVERAGE_S = 10.0
BUDGET_RSS_BYTES = 60_000_000

FLOOR_CODE = r"""
import ctypes, os, resource, signal, sys, time
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
except Exception:
    pass
task = f"/proc/{sys.argv[1]}/task"
keep = sys.argv[2] == "pread"
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
except (ValueError, OSError):
    pass
fds = {}
# like dsmon: descriptors kept open within the limit, open+read+close for the rest
budget = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 64
def sweep():
    names = os.listdir(task)
    if keep:
        alive = set(names)
        for name in [n for n in fds if n not in alive]:
            for fd in fds.pop(name):
                os.close(fd)
    for name in names:
        base = f"{task}/{name}/"
        try:
            if keep and (name in fds or 2 * len(fds) < budget):
                pair = fds.get(name)
                if pair is None:
                    pair = fds[name] = (os.open(base + "stat", os.O_RDONLY | os.O_CLOEXEC),
                                        os.open(base + "schedstat", os.O_RDONLY | os.O_CLOEXEC))
                os.pread(pair[0], 4096, 0)
                os.pread(pair[1], 4096, 0)
            else:
                for leaf in ("stat", "schedstat"):
                    fd = os.open(base + leaf, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        os.read(fd, 4096)
                    finally:
                        os.close(fd)
        except OSError:
            continue
    return len(names)
count = sweep()
print("ready", count, flush=True)
next_at = time.monotonic() + 1.0
while True:
    time.sleep(max(0.0, next_at - time.monotonic()))
    next_at += 1.0
    sweep()
"""


def log(message: str) -> None:
    print(f"[{datetime.now(timezone.utc).strftime('%H:%M:%S')}] {message}", flush=True)


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def summary(values: list[float | None]) -> dict | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


# ----------------------------------------------------------------------------------------
# The target

def target_period_ms(threads: int) -> float:
    """Burst period that keeps the busy quarter's load at ~0.32 cores (512-thread level)."""
    return BASE_PERIOD_MS * max(1.0, threads / 512)


def start_ready(argv: list[str], what: str) -> subprocess.Popen:
    """A child that prints "ready" once it is set up (target or floor); registered for reaping."""
    proc = spawn(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        reap(proc)
        raise RuntimeError(f"{what} did not start: {line!r}")
    return proc


def start_target(threads: int, marker: str, timeout: float = 180.0) -> subprocess.Popen:
    """churn_target with --churn 0, tagged with a unique --seed so only it matches the
    process-exporter's command-line regex; waits until every thread is listed."""
    proc = start_ready([sys.executable, str(CHURN_TARGET), "--threads", str(threads),
                        "--churn", "0", "--period-ms", f"{target_period_ms(threads):g}",
                        "--seed", marker], "target")
    deadline = time.monotonic() + timeout
    while len(os.listdir(f"/proc/{proc.pid}/task")) < threads:
        if time.monotonic() > deadline:
            reap(proc)
            raise RuntimeError("target threads did not all start")
        time.sleep(0.1)
    return proc


def stop_target(proc: subprocess.Popen, threads: int) -> None:
    reap(proc)
    time.sleep(0.5 + threads / 5000)   # let the kernel tear the threads down


# ----------------------------------------------------------------------------------------
# The tools: each returns (process, metrics URL or None, readiness needle)

def _spawn(argv: list[str], log_path: Path, cwd: Path | None = None) -> subprocess.Popen:
    with open(log_path, "w") as out:
        return spawn(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                     cwd=str(cwd) if cwd else None)


def tool_available(tool: str) -> bool:
    binary = {"process-exporter": "prometheus-process-exporter",
              "node-exporter": "prometheus-node-exporter", "glances": "glances"}.get(tool)
    return binary is None or shutil.which(binary) is not None


def start_tool(tool: str, target_pid: int, marker: str, work: Path, tag: str,
               agent_config: str | None = None):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = work / f"{tag}.log"
    if tool == "dsmon":
        proc = start_agent(port, (f"bench=pid:{target_pid}",), 1.0, log_path,
                           config_text=agent_config)
        return proc, url, 'dsmon_target_up{target="bench"} 1.0'
    if tool == "process-exporter":
        config = work / f"{tag}.yaml"
        # Only the target: its command line carries the unique --seed marker.
        config.write_text("process_names:\n  - name: bench\n    cmdline:\n"
                          f"      - 'churn_target\\.py.*--seed {marker}'\n")
        proc = _spawn(["prometheus-process-exporter", "-web.listen-address", f"127.0.0.1:{port}",
                       "-threads=true", "-config.path", str(config)], log_path)
        return proc, url, 'namedprocess_namegroup_num_procs{groupname="bench"} 1'
    if tool == "node-exporter":
        proc = _spawn(["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{port}",
                       "--collector.processes"], log_path)
        return proc, url, "node_cpu_seconds_total"
    if tool == "glances":
        config = work / f"{tag}.conf"
        config.write_text("[global]\ncheck_update=false\n\n"
                          f"[prometheus]\nhost=127.0.0.1\nport={port}\nprefix=glances\n")
        proc = _spawn(["glances", "-C", str(config), "-q", "--export", "prometheus", "-t", "1"],
                      log_path, cwd=work)
        return proc, url, "glances_cpu_total"
    if tool in ("floor", "floor-pread"):
        proc = start_ready([sys.executable, "-c", FLOOR_CODE, str(target_pid),
                            "pread" if tool == "floor-pread" else "read"], "floor")
        return proc, None, None
    raise ValueError(tool)


def settle_for(threads: int) -> float:
    """Time between a tool serving and its window: above 2,048 threads dsmon reads rotating
    slices and opens each thread's descriptors on its first pass over them (~8 s), which is
    start-up, not the steady cost; every tool gets the same settling time at a size."""
    return SETTLE_LARGE_S if threads > 2049 else SETTLE_S


def measure_tool(tool: str, target_pid: int, marker: str, window: float, work: Path, tag: str,
                 agent_config: str | None = None) -> dict:
    proc = None
    started = time.monotonic()
    try:
        proc, url, needle = start_tool(tool, target_pid, marker, work, tag, agent_config)
        if url is not None:
            wait_for_metrics(url, proc, needle, timeout=90)
        startup_s = time.monotonic() - started
        time.sleep(settle_for(len(os.listdir(f"/proc/{target_pid}/task"))))
        latencies: list[float] = []
        failures: list[str] = []
        body = ""
        load0, psi0 = loadavg(), cpu_pressure_total()
        cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
        ticks = int(round(window))
        for index in range(ticks):
            delay = wall0 + index + 0.5 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if url is None:
                continue
            try:
                body, seconds = scrape(url + "/metrics", timeout=20)
                latencies.append(seconds * 1000)
            except (OSError, urllib.error.URLError, RuntimeError) as exc:
                failures.append(str(exc))
        delay = wall0 + ticks - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        cpu1, wall1 = cpu_seconds(proc.pid), time.monotonic()
        load1, psi1 = loadavg(), cpu_pressure_total()
        status = proc_status(proc.pid)
        alive = proc.poll() is None
    finally:
        if proc is not None:
            reap(proc, graceful_s=2.0)
    wall = wall1 - wall0
    cpu = cpu1 - cpu0
    result = {
        "tool": tool, "window_s": round(wall, 2), "startup_s": round(startup_s, 2),
        "cpu_s": round(cpu, 3), "cpu_pct": round(100 * cpu / wall, 3),
        "cpu_ms_per_sample": round(1000 * cpu / wall, 2),     # 1 Hz: one sample per second
        "peak_rss_bytes": status["VmHWM"] * 1024, "rss_end_bytes": status["VmRSS"] * 1024,
        "threads": status["Threads"],
        "scrapes": len(latencies), "scrape_failures": failures[:5],
        "scrape_ms_median": round(statistics.median(latencies), 2) if latencies else None,
        "scrape_ms_p95": round(percentile(latencies, 0.95), 2) if latencies else None,
        "series": count_series(body) if body else None,
        "alive": alive, "loadavg_start": load0, "loadavg_end": load1,
        "host_cpu_pressure_some_ratio": None if psi0 is None or psi1 is None
        else round((psi1 - psi0) / wall, 3),
    }
    if tool == "dsmon" and body:
        result["coverage"] = {
            key: metric_value(body, name, target="bench") for key, name in (
                ("threads_listed", "dsmon_process_threads_listed"),
                ("threads_sampled", "dsmon_process_threads_sampled"),
                ("sampled_ratio", "dsmon_process_threads_sampled_ratio"),
                ("oldest_sample_age_s", "dsmon_process_thread_sample_age_max_seconds"),
                ("full_pass_s", "dsmon_process_thread_full_pass_seconds"))}
        result["log_errors"] = log_errors(work / f"{tag}.log")
    return result


# ----------------------------------------------------------------------------------------
# dsmon diagnose

def measure_diagnose(target_pid: int, duration: str = "5s") -> dict:
    result = run_diagnose(target_pid, duration)
    return {"wall_s": round(result["wall_s"], 3), "cpu_s": round(result["cpu_s"], 3),
            "peak_rss_bytes": (result["vmhwm_kib"] or 0) * 1024,
            "exit_code": result["exit_code"], "samples": result["samples"],
            "threads_sampled_last_sweep": result["threads_sampled_last_sweep"]}


# ----------------------------------------------------------------------------------------
# Scale cases: fake CPU trees and fake NVML

def build_cpu_tree(root: Path, cpus: int, nodes: int) -> None:
    from tests.fixturetree import FakeHost
    host = FakeHost(root)
    per_node = cpus // nodes
    host.set_hostname()
    for cpu in range(cpus):
        node = cpu // per_node
        host.add_cpu(cpu, package=node // max(1, nodes // 2), core=cpu, siblings=[cpu], node=node)
    for node in range(nodes):
        host.add_node(node, cpus=range(node * per_node, (node + 1) * per_node),
                      mem_kb=64 * 2**20)
    host.set_proc_stat({cpu: (1000 + cpu, 0, 500, 8000) for cpu in range(cpus)})
    host.set_meminfo()
    host.set_vmstat()
    host.set_pressure()


def gpu_recording(source: dict, count: int) -> dict:
    data = copy.deepcopy(source)
    data["devices"] = data["devices"][:count]
    keep = {i for i in range(count)}
    data["pairs"] = [p for p in data.get("pairs", [])
                     if all(i in keep for i in _pair_indices(p))]
    data.setdefault("system", {})["device_count"] = {"value": count, "from": "bench/peers.py"}
    data["notes"] = list(data.get("notes", [])) + [f"first {count} GPUs (bench/peers.py)"]
    return data


def _pair_indices(pair) -> list[int]:
    if isinstance(pair, dict):
        for keys in (("a", "b"), ("gpu_a", "gpu_b"), ("i", "j"), ("index_a", "index_b")):
            if all(k in pair for k in keys):
                return [int(pair[k]) for k in keys]
        if "pair" in pair:
            return [int(v) for v in pair["pair"]]
    if isinstance(pair, (list, tuple)) and len(pair) >= 2:
        return [int(pair[0]), int(pair[1])]
    return []


def measure_host_agent(tag: str, window: float, work: Path, extra: tuple[str, ...]) -> dict:
    """A host-only agent (no target) scraped once a second; CPU per 1 Hz cycle."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = work / f"{tag}.log"
    proc = start_agent(port, (), 1.0, log_path, config_text="targets = []\n", extra=extra)
    try:
        wait_for_metrics(url, proc, "dsmon_cpu_seconds_total{", timeout=90)
        time.sleep(SETTLE_S)
        cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
        body = ""
        ticks = int(round(window))
        for index in range(ticks):
            delay = wall0 + index + 0.5 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            body, _ = scrape(url + "/metrics", timeout=20)
        delay = wall0 + ticks - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        cpu1, wall1 = cpu_seconds(proc.pid), time.monotonic()
        status = proc_status(proc.pid)
    finally:
        reap(proc, graceful_s=2.0)
    return {"cpu_ms_per_cycle": round(1000 * (cpu1 - cpu0) / (wall1 - wall0), 2),
            "peak_rss_bytes": status["VmHWM"] * 1024, "series": count_series(body),
            "gpus": metric_value(body, "dsmon_gpus"), "log_errors": log_errors(log_path),
            "loadavg": loadavg()}


def linear_fit(xs: list[float], ys: list[float]) -> dict:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    r2 = 1 - ss_res / ss_tot if ss_tot else 1.0
    # Linearity: the marginal cost per unit over the upper half vs the lower half.
    ordered = sorted(zip(xs, ys))
    lo = (ordered[1][1] - ordered[0][1]) / (ordered[1][0] - ordered[0][0]) if n >= 2 else None
    hi = (ordered[-1][1] - ordered[-2][1]) / (ordered[-1][0] - ordered[-2][0]) if n >= 2 else None
    return {"intercept_ms": round(intercept, 3), "slope_ms_per_unit": round(slope, 4),
            "r2": round(r2, 4), "marginal_low_ms": None if lo is None else round(lo, 4),
            "marginal_high_ms": None if hi is None else round(hi, 4)}


def run_scale(points_cpu: list[int], points_gpu: list[int], repeats: int, window: float,
              work: Path) -> dict:
    result = {"cpus": [], "gpus": []}
    trees = {}
    for cpus in points_cpu:
        root = work / f"tree-{cpus}"
        build_cpu_tree(root, cpus, nodes=max(1, cpus // 32))
        trees[cpus] = root
    source = json.loads((REPO / "tests/fixtures/gpu/hgx-h100-8gpu-2node.json").read_text())
    recordings = {}
    for count in points_gpu:
        path = work / f"nvml-{count}gpu.json"
        path.write_text(json.dumps(gpu_recording(source, count)))
        recordings[count] = path
    for repeat in range(repeats):
        for cpus, root in trees.items():
            log(f"scale: {cpus} CPUs ({max(1, cpus // 32)} NUMA nodes), repeat {repeat + 1}")
            row = measure_host_agent(f"scale-cpu{cpus}-r{repeat}", window, work,
                                     ("--path.procfs", str(root / "proc"),
                                      "--path.sysfs", str(root / "sys"),
                                      "--path.rootfs", str(root)))
            row.update(cpus=cpus, nodes=max(1, cpus // 32), repeat=repeat)
            result["cpus"].append(row)
        for count, path in recordings.items():
            log(f"scale: {count} GPUs (fake NVML), repeat {repeat + 1}")
            row = measure_host_agent(f"scale-gpu{count}-r{repeat}", window, work,
                                     ("--nvml-replay", str(path)))
            row.update(gpus_requested=count, repeat=repeat)
            result["gpus"].append(row)
    for key, unit in (("cpus", "cpus"), ("gpus", "gpus_requested")):
        rows = result[key]
        points = sorted({r[unit] for r in rows})
        medians = [statistics.median(r["cpu_ms_per_cycle"] for r in rows if r[unit] == p)
                   for p in points]
        result[f"{key}_summary"] = [
            {"n": p, "cpu_ms_per_cycle": summary([r["cpu_ms_per_cycle"] for r in rows
                                                  if r[unit] == p]),
             "series": statistics.median(r["series"] for r in rows if r[unit] == p),
             "peak_rss_bytes": statistics.median(r["peak_rss_bytes"] for r in rows if r[unit] == p)}
            for p in points]
        result[f"{key}_fit"] = linear_fit(points, medians) if len(points) >= 2 else None
    return result


# ----------------------------------------------------------------------------------------
# The run

def run(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="dsmon-peers-"))
    tools = [t for t in args.tools if tool_available(t)]
    skipped = [t for t in args.tools if t not in tools]
    document = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "host": host_facts(), "window_s": {size: window_for(args, size) for size in args.sizes},
                "repeats": args.repeats,
                "settle_s": [SETTLE_S, SETTLE_LARGE_S], "sizes": args.sizes, "tools": tools,
                "tools_missing": skipped, "work_dir": str(work),
                "versions": tool_versions(tools), "runs": [], "diagnose": [], "loadavg": []}
    marker = str(900000 + os.getpid())
    log(f"work dir {work}; tools {tools}; missing {skipped}; load {loadavg()}")
    for size in args.sizes:
        log(f"target with {size} threads (burst period {target_period_ms(size):g} ms)")
        target = start_target(size, marker)
        try:
            time.sleep(1.0)
            for repeat in range(args.repeats):
                for tool in tools:
                    tag = f"{tool}-{size}-r{repeat}"
                    try:
                        row = measure_tool(tool, target.pid, marker, window_for(args, size),
                                           work, tag, args.agent_config)
                    except Exception as exc:  # noqa: BLE001 - one tool failing is a result
                        row = {"tool": tool, "error": f"{type(exc).__name__}: {exc}"}
                    row.update(size=size, repeat=repeat)
                    document["runs"].append(row)
                    log(f"  {tool:<16} {size:>6} thr r{repeat}: " + (
                        row.get("error") or
                        f"CPU {row['cpu_pct']:.2f}% ({row['cpu_ms_per_sample']:.1f} ms/sample), "
                        f"RSS {row['peak_rss_bytes'] / 1e6:.1f} MB, scrape p50 "
                        f"{row['scrape_ms_median']} p95 {row['scrape_ms_p95']} ms, series "
                        f"{row['series']}, load {row['loadavg_end'][0]}"))
            if args.diagnose:
                for repeat in range(args.diagnose_repeats):
                    row = measure_diagnose(target.pid)
                    row.update(size=size, repeat=repeat, loadavg=loadavg())
                    document["diagnose"].append(row)
                    log(f"  diagnose {size} thr: wall {row['wall_s']:.2f} s, CPU "
                        f"{row['cpu_s']:.2f} s, RSS {row['peak_rss_bytes'] / 1e6:.1f} MB, "
                        f"exit {row['exit_code']}")
        finally:
            stop_target(target, size)
        document["loadavg"].append({"size": size, "loadavg": loadavg()})
    if args.scale:
        document["scale"] = run_scale(args.scale_cpus, args.scale_gpus, args.scale_repeats,
                                      args.scale_window, work)
    document["host"]["loadavg_end"] = loadavg()
    document["table"] = aggregate(document)
    document["checks"] = checks(document)
    return document


def window_for(args, size: int) -> float:
    """--window, else 20 s (30 s at 10,000 threads, where dsmon's 30 s numa_maps read of the
    target costs ~77 ms: a window of a whole period averages it in)."""
    if args.window:
        return args.window
    return 6.0 if args.quick else (30.0 if size > 2049 else 20.0)


def tool_versions(tools: list[str]) -> dict:
    commands = {"process-exporter": ["prometheus-process-exporter", "-version"],
                "node-exporter": ["prometheus-node-exporter", "--version"],
                "glances": ["glances", "-V"]}
    out = {}
    for tool in tools:
        if tool in commands:
            try:
                text = subprocess.run(commands[tool], capture_output=True, text=True,
                                      timeout=20).stdout or ""
                out[tool] = text.strip().splitlines()[0] if text.strip() else ""
            except (OSError, subprocess.SubprocessError):
                out[tool] = ""
    out["dsmon"] = document_version()
    out["python"] = sys.version.split()[0]
    return out


def document_version() -> str:
    import dsmon
    return dsmon.__version__


FIELDS = ("cpu_pct", "cpu_ms_per_sample", "peak_rss_bytes", "scrape_ms_median", "scrape_ms_p95",
          "series")


def aggregate(document: dict) -> list[dict]:
    rows = []
    for size in document["sizes"]:
        for tool in document["tools"]:
            runs = [r for r in document["runs"] if r["size"] == size and r["tool"] == tool]
            good = [r for r in runs if "error" not in r]
            row = {"size": size, "tool": tool, "runs": len(runs), "errors": len(runs) - len(good)}
            for name in FIELDS:
                row[name] = summary([r.get(name) for r in good])
            if tool == "dsmon":
                row["oldest_sample_age_s"] = summary(
                    [(r.get("coverage") or {}).get("oldest_sample_age_s") for r in good])
                row["full_pass_s"] = summary(
                    [(r.get("coverage") or {}).get("full_pass_s") for r in good])
            rows.append(row)
    return rows


def _median(table: list[dict], size: int, tool: str, field: str) -> float | None:
    for row in table:
        if row["size"] == size and row["tool"] == tool and row.get(field):
            return row[field]["median"]
    return None


def checks(document: dict) -> list[dict]:
    table = document["table"]
    out = []

    def add(name, ok, detail):
        out.append({"name": name, "ok": ok, "detail": detail})
    if 512 in document["sizes"]:
        cpu = _median(table, 512, "dsmon", "cpu_pct")
        if cpu is not None:
            add("512 threads: dsmon <= 2% of one core", cpu <= BUDGET_512_CPU_PCT,
                f"{cpu:.2f}%")
            pe = _median(table, 512, "process-exporter", "cpu_pct")
            if pe:
                add("512 threads: dsmon <= 1/4 of process-exporter's CPU",
                    cpu <= BUDGET_512_VS_PROCESS_EXPORTER * pe,
                    f"{cpu:.2f}% vs {pe:.2f}% (x{cpu / pe:.2f})")
            floor = _median(table, 512, "floor", "cpu_pct")
            if floor:
                add("512 threads: dsmon within 2.5x of the bare-Python floor",
                    cpu <= BUDGET_512_VS_FLOOR * floor,
                    f"{cpu:.2f}% vs {floor:.2f}% (x{cpu / floor:.2f}; pread floor "
                    f"{_median(table, 512, 'floor-pread', 'cpu_pct') or float('nan'):.2f}%)")
    if 10_000 in document["sizes"]:
        cpu = _median(table, 10_000, "dsmon", "cpu_pct")
        if cpu is not None:
            add("10,000 threads: dsmon <= 5% of one core", cpu <= BUDGET_10K_CPU_PCT,
                f"{cpu:.2f}%")
        ages = [((r.get("coverage") or {}).get("oldest_sample_age_s"))
                for r in document["runs"] if r["size"] == 10_000 and r["tool"] == "dsmon"]
        ages = [a for a in ages if a is not None]
        if ages:
            add("10,000 threads: every thread sampled at least every 10 s (self-metric)",
                max(ages) <= BUDGET_10K_COVERAGE_S,
                f"oldest thread sample age at the last scrape: max {max(ages):.1f} s")
    rss = [(r["size"], r["peak_rss_bytes"]) for r in document["runs"]
           if r["tool"] == "dsmon" and "peak_rss_bytes" in r]
    if rss:
        worst = max(rss, key=lambda x: x[1])
        add("dsmon peak RSS <= 60 MB at every size", worst[1] <= BUDGET_RSS_BYTES,
            f"max {worst[1] / 1e6:.1f} MB (at {worst[0]} threads)")
    scale = document.get("scale") or {}
    for key, what in (("cpus_fit", "per-core"), ("gpus_fit", "per-GPU")):
        fit = scale.get(key)
        if fit:
            add(f"scale: {what} cost linear", fit["r2"] >= 0.9,
                f"slope {fit['slope_ms_per_unit']:.3f} ms per unit, R^2 {fit['r2']:.3f}, "
                f"marginal {fit['marginal_low_ms']} (low) vs {fit['marginal_high_ms']} (high) ms")
    return out


# ----------------------------------------------------------------------------------------
# Output: markdown and SVG

def fmt_range(stat: dict | None, scale: float = 1.0, digits: int = 2) -> str:
    if not stat:
        return "n/a"
    med, lo, hi = (stat[k] * scale for k in ("median", "min", "max"))
    if stat["n"] == 1 or lo == hi:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def results_table(document: dict) -> str:
    lines = ["| threads | tool | CPU % of one core | ms CPU per sample | peak RSS MB | "
             "scrape median ms | scrape p95 ms | series |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for row in document["table"]:
        bold = "**" if row["tool"] == "dsmon" else ""
        if row["errors"] and not row["cpu_pct"]:
            lines.append(f"| {row['size']:,} | {row['tool']} | failed | | | | | |")
            continue
        lines.append(
            f"| {row['size']:,} | {bold}{row['tool']}{bold} | {bold}{fmt_range(row['cpu_pct'])}"
            f"{bold} | {fmt_range(row['cpu_ms_per_sample'], digits=1)} | "
            f"{fmt_range(row['peak_rss_bytes'], 1e-6, 1)} | "
            f"{fmt_range(row['scrape_ms_median'])} | {fmt_range(row['scrape_ms_p95'])} | "
            f"{fmt_range(row['series'], digits=0)} |")
    return "\n".join(lines)


def write_svg(document: dict, path: Path) -> None:
    """Grouped bars: CPU % of one core per tool, per target size, log scale."""
    sizes = document["sizes"]
    tools = document["tools"]
    colors = {"dsmon": "#1f77b4", "process-exporter": "#d62728", "node-exporter": "#ff7f0e",
              "glances": "#9467bd", "floor": "#7f7f7f", "floor-pread": "#bcbd22"}
    width, height = 860, 400
    left, right, top, bottom = 70, 170, 40, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [_median(document["table"], s, t, "cpu_pct") for s in sizes for t in tools]
    positive = [v for v in values if v]
    lo_exp = math.floor(math.log10(min(positive))) if positive else -2
    hi_exp = math.ceil(math.log10(max(positive))) if positive else 2
    lo_exp = min(lo_exp, -1)
    hi_exp = max(hi_exp, 1)

    def y_of(value):
        frac = (math.log10(value) - lo_exp) / (hi_exp - lo_exp)
        return top + plot_h * (1 - frac)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="22" font-size="14" font-weight="bold">CPU per 1 Hz sample, '
           f'% of one core (log scale; median of {document["repeats"]} runs, bars min-max)</text>']
    for exp in range(lo_exp, hi_exp + 1):
        y = y_of(10 ** exp)
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{10 ** exp:g}%</text>')
    for budget, label in ((BUDGET_512_CPU_PCT, "2% budget (512)"),
                          (BUDGET_10K_CPU_PCT, "5% budget (10k)")):
        y = y_of(budget)
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="#2ca02c" stroke-dasharray="5,4"/>')
        out.append(f'<text x="{left + plot_w + 4}" y="{y + 4:.1f}" fill="#2ca02c">{label}</text>')
    group_w = plot_w / len(sizes)
    bar_w = group_w * 0.8 / len(tools)
    for gi, size in enumerate(sizes):
        x0 = left + gi * group_w + group_w * 0.1
        out.append(f'<text x="{left + gi * group_w + group_w / 2:.1f}" y="{top + plot_h + 20}" '
                   f'text-anchor="middle">{size:,} threads</text>')
        for ti, tool in enumerate(tools):
            row = next((r for r in document["table"] if r["size"] == size and r["tool"] == tool),
                       None)
            stat = row and row.get("cpu_pct")
            if not stat or not stat["median"]:
                continue
            x = x0 + ti * bar_w
            y = y_of(max(stat["median"], 10 ** lo_exp))
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" '
                       f'height="{top + plot_h - y:.1f}" fill="{colors.get(tool, "#333")}">'
                       f'<title>{tool} {size}: {stat["median"]:.2f}%</title></rect>')
            if stat["max"] > stat["min"] > 0:
                cx = x + (bar_w - 2) / 2
                out.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y_of(stat["min"]):.1f}" '
                           f'y2="{y_of(stat["max"]):.1f}" stroke="black"/>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="black"/>')
    out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" '
               f'y2="{top + plot_h}" stroke="black"/>')
    for ti, tool in enumerate(tools):
        y = top + 10 + ti * 17
        out.append(f'<rect x="{left + plot_w + 10}" y="{y - 10}" width="12" height="12" '
                   f'fill="{colors.get(tool, "#333")}"/>')
        out.append(f'<text x="{left + plot_w + 28}" y="{y}">{tool}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def write_markdown(document: dict, path: Path, svg_name: str, before: dict | None) -> None:
    host = document["host"]
    versions = document["versions"]
    loads = [r.get("loadavg_end", [None])[0] for r in document["runs"] if "loadavg_end" in r]
    psi = [r.get("host_cpu_pressure_some_ratio") for r in document["runs"]
           if r.get("host_cpu_pressure_some_ratio") is not None]
    windows = ", ".join(f"{w:g}" for w in dict.fromkeys(document["window_s"].values()))
    settles = f"{SETTLE_S:g} ({SETTLE_LARGE_S:g} above 2,048 threads)"
    lines = [
        "# Overhead against the peers, and at scale",
        "",
        f"Generated by `python bench/peers.py` on {document['date']} (dsmon commit "
        f"`{host.get('git_commit')}`); raw results in `docs/benchmarks.json`. Re-run with the "
        "same command; `--quick` is a 2-size, 1-repeat smoke version (~3 minutes).",
        "",
        f"![CPU per sample, dsmon and its peers]({svg_name})",
        "",
        "## Results",
        "",
        f"Median of {document['repeats']} runs, (min-max) over the runs; each run a fresh "
        f"process, a window of {windows} s at 1 Hz after a settling time of {settles} s."
        "  CPU is the tool's own utime+stime (`/proc/PID/stat`), so a sample is "
        "one second of its CPU; scrape latency is wall time and moves with the host's load.",
        "",
        results_table(document),
        "",
    ]
    if document.get("tools_missing"):
        lines += [f"Not installed, skipped: {', '.join(document['tools_missing'])}.", ""]
    lines += ["## Budgets", "", "| budget | measured | verdict |", "|---|---|---|"]
    for check in document["checks"]:
        lines.append(f"| {check['name']} | {check['detail']} | "
                     f"{'**PASS**' if check['ok'] else '**MISS**'} |")
    lines.append("")
    cov = [r for r in document["table"] if r["tool"] == "dsmon" and r.get("oldest_sample_age_s")]
    if cov:
        lines += ["dsmon's thread coverage, from its own self-metrics at the last scrape of each "
                  "run (`dsmon_process_thread_sample_age_max_seconds`: the longest any live "
                  "thread has gone unread; `dsmon_process_thread_full_pass_seconds`: the time "
                  "the last full pass over the thread list took):", "",
                  "| threads | oldest thread sample age s | full pass s |", "|---:|---:|---:|"]
        for row in cov:
            lines.append(f"| {row['size']:,} | {fmt_range(row['oldest_sample_age_s'], digits=1)} "
                         f"| {fmt_range(row['full_pass_s'], digits=1)} |")
        lines.append("")
    if document["diagnose"]:
        lines += ["## `dsmon diagnose PID --duration 5s`", "",
                  "| threads | wall s | CPU s | peak RSS MB | exit |", "|---:|---:|---:|---:|---:|"]
        for size in document["sizes"]:
            rows = [r for r in document["diagnose"] if r["size"] == size]
            if not rows:
                continue
            lines.append(
                f"| {size:,} | {fmt_range(summary([r['wall_s'] for r in rows]))} | "
                f"{fmt_range(summary([r['cpu_s'] for r in rows]))} | "
                f"{fmt_range(summary([r['peak_rss_bytes'] for r in rows]), 1e-6, 1)} | "
                f"{','.join(sorted({str(r['exit_code']) for r in rows}))} |")
        lines.append("")
    scale = document.get("scale")
    if scale:
        lines += ["## Scale: 256 CPUs / 8 NUMA nodes, 8 GPUs", "",
                  "The agent with no target (host collectors, topology, GPUs), scraped once a "
                  "second, on fake trees built by `tests/fixturetree.py` (N CPUs, one NUMA node "
                  "per 32 CPUs: 256 CPUs = 8 nodes) and on the real host with fake NVML "
                  "(`--nvml-replay`, the first N GPUs of `tests/fixtures/gpu/"
                  "hgx-h100-8gpu-2node.json`). CPU ms per 1 Hz cycle including one scrape, "
                  "median (min-max) of the repeats (utime+stime counts 10 ms ticks: over a "
                  "10 s window a cycle's figure moves in steps of 1 ms):", ""]
        for key, label in (("cpus", "CPUs"), ("gpus", "GPUs")):
            lines += [f"| {label} | ms CPU per cycle | series | peak RSS MB |",
                      "|---:|---:|---:|---:|"]
            for row in scale.get(f"{key}_summary", []):
                lines.append(f"| {row['n']} | {fmt_range(row['cpu_ms_per_cycle'])} | "
                             f"{row['series']:.0f} | {row['peak_rss_bytes'] / 1e6:.1f} |")
            fit = scale.get(f"{key}_fit")
            if fit:
                lines += ["", f"Least-squares fit: {fit['intercept_ms']:.2f} ms + "
                          f"{fit['slope_ms_per_unit']:.4f} ms x {label[:-1]} (R^2 "
                          f"{fit['r2']:.3f}); marginal cost per {label[:-1]} between the two "
                          f"smallest points {fit['marginal_low_ms']} ms, between the two largest "
                          f"{fit['marginal_high_ms']} ms."]
            lines.append("")
    if before:   # hand-written notes (bench/peers-notes.md), with their own headings
        lines += [before.get("text", "").rstrip(), ""]
    lines += [
        "## Method",
        "",
        "One command, `python bench/peers.py`, does everything below in one run on one machine.",
        "",
        "- **Targets**: `tests/helpers/churn_target.py --churn 0` with 64, 512, 2,048 and "
        "10,000 worker threads named `worker_N`; a quarter hash in 0.5 ms bursts (hashlib "
        "releases the GIL), the rest block on an Event. The burst period is 200 ms up to 512 "
        "threads and grows in proportion above (10,000 threads: 3.9 s), so the target's own "
        "load stays ~0.3 cores and does not starve a 2-core machine. One target per size; "
        "every tool measures the same process.",
        "- **Tools**, one at a time, interleaved (all tools for repeat 1, then repeat 2, ...), "
        "each a fresh process on a free loopback port, started by hand with explicit flags "
        "(no service; Debian starts none without systemd as PID 1):",
        "  - `dsmon`: `python -m dsmon agent --listen 127.0.0.1:P --interval 1s "
        "--target bench=pid:PID` (default `max_threads` 2048);",
        "  - `process-exporter`: `prometheus-process-exporter -web.listen-address 127.0.0.1:P "
        "-threads=true -config.path F`, F = one group `bench` matching the target's command "
        "line (a unique `--seed` value) only; per-thread-name metrics (CPU, I/O, context "
        "switches, page faults per thread name);",
        "  - `node-exporter`: `prometheus-node-exporter --web.listen-address=127.0.0.1:P "
        "--collector.processes`: its default collectors plus host-wide process/thread counts "
        "by state, the only process information it has (nothing per process or thread);",
        "  - `glances`: `glances -C F -q --export prometheus -t 1`, F setting the exporter to "
        "127.0.0.1:P (glances 3.3: `[prometheus] host/port/prefix`); it samples every process "
        "on the host each second (psutil), no threads;",
        "  - `floor`: bare Python, once a second `os.listdir(task/)` and open+read+close of "
        "every thread's `stat` and `schedstat`, no parsing, no serving; `floor-pread`: the "
        "same reads through descriptors kept open (dsmon's technique; within `RLIMIT_NOFILE`, so at 10,000 threads and a 20,000 limit ~130 threads fall back to open+read+close, as in dsmon).",
        "- **Measured**, over the window after the settling time, from `/proc` of the tool's "
        "own process (never the scraper's): CPU = utime+stime delta / wall (the exporters "
        "collect on scrape and are scraped once a second, so one scrape is one sample; dsmon "
        "samples on its own 1 Hz clock and is also scraped once a second, which it pays for); "
        "peak RSS = VmHWM at the end of the window; scrape latency = each GET on a new "
        "connection, to the last byte, median and p95 within the window; series = non-comment "
        "lines of the last scrape. Runs are repeated and reported as median (min-max).",
        "- **What each samples per thread**: dsmon reads `stat` (state, CPU, last CPU for NUMA "
        "placement) and `schedstat` (run-queue wait, timeslices) every sample, `status` "
        "(voluntary/involuntary switches) and `wchan` every 5th (above `max_threads`: "
        "rotating slices covering the list in 8 samples, `status`/`wchan` every 10th); it exports aggregates "
        "(threads by state, pools, run-queue wait, switches) under bounded labels. "
        "process-exporter reads `stat`, `status` and `io` per thread and exports per thread "
        "*name* (no run-queue wait, no states per thread, no NUMA).",
        "- **Load**: the machine was shared with other engineers' test runs. CPU time is what "
        "is compared because contention changes it little; wall times (scrape latency, "
        "diagnose wall) move with the load.",
        "",
        "## Machine and load",
        "",
        f"- host: {host.get('cpus')} vCPUs, {host.get('cpu_model')}, {host.get('mem_total')} RAM, "
        f"kernel {host.get('kernel')}, Python {host.get('python')}",
        f"- versions: " + ", ".join(f"{k} `{v}`" for k, v in versions.items()),
        f"- load average (1 min) at the end of each run: median "
        f"{statistics.median(loads) if loads else float('nan'):.2f}, range "
        f"{min(loads) if loads else float('nan'):.2f}-{max(loads) if loads else float('nan'):.2f}; "
        f"host CPU pressure (PSI cpu some, share of the window): median "
        f"{statistics.median(psi) if psi else float('nan'):.2f}, max "
        f"{max(psi) if psi else float('nan'):.2f} (the target's own bursty threads count "
        "in it: PSI says some task waited, not that the measured tool did)",
        f"- run started {document['date']}, load at start "
        f"{[round(v, 2) for v in host.get('loadavg_start') or []]}, at end "
        f"{[round(v, 2) for v in host.get('loadavg_end') or []]}",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="64 and 512 threads, 1 repeat, 6 s windows, 2-point scale cases")
    parser.add_argument("--sizes", default=None, help="comma-separated thread counts")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--repeats", type=int, default=None, help="runs per tool and size (3)")
    parser.add_argument("--window", type=float, default=None,
                        help="seconds per run (20; 30 at 10,000 threads; 6 with --quick)")
    parser.add_argument("--no-scale", dest="scale", action="store_false")
    parser.add_argument("--no-diagnose", dest="diagnose", action="store_false")
    parser.add_argument("--agent-config", default=None,
                        help="TOML text for the dsmon agent under test (e.g. '[agent]\\n...')")
    parser.add_argument("--json", dest="json_path", default=str(REPO / "docs/benchmarks.json"))
    parser.add_argument("--markdown", default=str(REPO / "docs/benchmarks.md"))
    parser.add_argument("--svg", default=str(REPO / "docs/benchmarks.svg"))
    parser.add_argument("--notes", default=str(REPO / "bench/peers-notes.md"),
                        help="markdown included as the 'Before and after' section")
    parser.add_argument("--render", default=None, metavar="JSON",
                        help="only rewrite the markdown and chart from a results JSON")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else \
        ([64, 512] if args.quick else list(SIZES))
    args.tools = [t for t in args.tools.split(",") if t]
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.diagnose_repeats = 1 if args.quick else 2
    args.scale_cpus = [32, 256] if args.quick else [32, 64, 128, 256]
    args.scale_gpus = [1, 8] if args.quick else [1, 2, 4, 8]
    args.scale_repeats = 1 if args.quick else 2
    args.scale_window = 5.0 if args.quick else 10.0
    install_signal_handlers()
    if args.render:
        document = json.loads(Path(args.render).read_text())
        document["window_s"] = {int(k): v for k, v in document["window_s"].items()}
    else:
        try:
            document = run(args)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            reap_all()
    notes = Path(args.notes) if args.notes else None
    before = {"text": notes.read_text()} if notes and notes.exists() else None
    if args.json_path and not args.render:
        Path(args.json_path).write_text(json.dumps(document, indent=1) + "\n")
    if args.svg:
        write_svg(document, Path(args.svg))
    if args.markdown:
        svg_rel = os.path.relpath(args.svg, Path(args.markdown).parent) if args.svg else ""
        write_markdown(document, Path(args.markdown), svg_rel, before)
    print()
    print(results_table(document))
    print()
    for check in document["checks"]:
        print(f"  {'ok  ' if check['ok'] else 'MISS'} {check['name']}: {check['detail']}")
    return 0 if all(c["ok"] for c in document["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
