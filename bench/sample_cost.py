#!/usr/bin/env python3
"""What one dsmon sample costs, against targets with 64 to 10000 threads.

    python bench/sample_cost.py [--quick] [--json FILE]

For each target size a separate Python process is started with that many threads (a quarter
wake every 100 ms for a short loop, the rest block on an Event, like an inference server's
pools). In this process dsmon's `TargetSampler` ticks against it; CPU is this process's own
CPU time (`time.process_time()`, i.e. CLOCK_PROCESS_CPUTIME_ID) around each call, wall is
`time.perf_counter()`. Every measurement is `--repeats` runs of `--ticks` calls (after 3
warm-up calls), paced `--interval` apart (0.2 s: back-to-back calls find warm caches and
read ~25% cheaper than dsmon's real 1 s cadence, see the spacing check); a run's figure is its
mean per call, and the tables give the median of the runs with [min-max] of the runs.

Also measured: a bare-Python floor (list task/, open+read+close stat and schedstat of each
thread; and the same with descriptors kept open, os.pread), the 512-thread case with 200 extra
idle processes on the host, `python -m dsmon --help`, `dsmon diagnose PID --duration 5s
--format json` (wall, CPU and peak RSS from the child's rusage) and the peak RSS of a fresh
process doing only dsmon sampling. Every process started here is killed on exit, Ctrl-C and
SIGTERM (and the children also get SIGKILL from the kernel if this process dies: PDEATHSIG).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

SIZES = (64, 512, 2048, 10000)
BUDGET_512_MS = 12.0
BUDGET_10000_MS = 50.0
BUDGET_HELP_MS = 300.0
WARMUP = 3

# The target: run as `python -c TARGET_CODE total work_iters period_s`. `total` counts the
# main thread, so /proc/<pid>/task lists exactly `total` entries when it is ready.
TARGET_CODE = r'''
import ctypes, os, random, resource, signal, sys, threading, time
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except Exception:
    pass
total, iters, period = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
if soft != resource.RLIM_INFINITY and soft < hard:
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (hard, hard))
    except (ValueError, OSError):
        pass
threading.stack_size(256 * 1024)
stop, block = threading.Event(), threading.Event()

def waker(offset):
    time.sleep(offset)
    while not stop.wait(period):
        x = 0
        for i in range(iters):
            x += i

def blocked():
    block.wait()

started = 0
try:
    for i in range(total - 1):
        if i % 4 == 0:
            t = threading.Thread(target=waker, args=(random.random() * period,), daemon=True)
        else:
            t = threading.Thread(target=blocked, daemon=True)
        t.start()
        started += 1
except RuntimeError as exc:
    print(f"error {started + 1} {exc}", flush=True)
    os._exit(2)
print(f"ready {started + 1} nproc={resource.getrlimit(resource.RLIMIT_NPROC)}", flush=True)
sys.stdin.read()      # returns when the harness closes stdin or dies
os._exit(0)
'''

# Peak RSS of a fresh process that only imports dsmon and samples (argv: pid ticks). VmHWM, not
# ru_maxrss: Linux carries ru_maxrss across execve, so a child's ru_maxrss is at least the RSS
# of the parent it was forked from (this harness), which would not be dsmon's figure.
RSS_CODE = r'''
import json, resource, sys, time
def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
base = status("VmHWM")
from dsmon.paths import HostPaths
from dsmon.sampler import TargetSampler
imported = status("VmHWM")
sampler = TargetSampler(HostPaths(), int(sys.argv[1]))
sampler.static()
for _ in range(int(sys.argv[2])):
    sampler.tick()
    time.sleep(0.01)
print(json.dumps({"interpreter_kib": base, "after_import_kib": imported,
                  "peak_kib": status("VmHWM"), "vmrss_end_kib": status("VmRSS"),
                  "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
sampler.close()
'''

# ----------------------------------------------------------------------------------------
# Child processes: every one is registered and killed on the way out.

# One registry with bench/soak.py (and bench/peers.py, which runs run_diagnose): an
# interrupted run reaps every child whichever module started it.
from bench.soak import CHILDREN, reap, reap_all  # noqa: E402


def _deathsig():
    """preexec_fn: the child gets SIGKILL if this process dies without cleaning up."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except Exception:  # noqa: BLE001 - best effort
        pass


def spawn(args, **kwargs) -> subprocess.Popen:
    proc = subprocess.Popen(args, preexec_fn=_deathsig, **kwargs)
    CHILDREN.append(proc)
    return proc


def _on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


# ----------------------------------------------------------------------------------------
# Measurement helpers

def measure(fn, ticks: int, repeats: int, interval: float, observe=None) -> dict:
    """`repeats` runs of `ticks` calls of fn, after WARMUP calls; CPU and wall ms per call."""
    for _ in range(WARMUP):
        fn()
    runs_cpu, runs_wall, all_cpu = [], [], []
    for _ in range(repeats):
        cpu, wall = [], []
        for _ in range(ticks):
            if interval:
                time.sleep(interval)
            c0, w0 = time.process_time(), time.perf_counter()
            result = fn()
            w1, c1 = time.perf_counter(), time.process_time()
            cpu.append((c1 - c0) * 1e3)
            wall.append((w1 - w0) * 1e3)
            if observe is not None:
                observe(result)
        runs_cpu.append(statistics.fmean(cpu))
        runs_wall.append(statistics.fmean(wall))
        all_cpu.extend(cpu)
    ordered = sorted(all_cpu)
    return {
        "cpu_ms": summary(runs_cpu),
        "wall_ms": summary(runs_wall),
        "cpu_ms_per_call": {"p50": statistics.median(ordered),
                            "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
                            "max": ordered[-1], "min": ordered[0]},
        "ticks": ticks, "repeats": repeats,
    }


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def per_thread(stat: dict, threads) -> float:
    return stat["cpu_ms"]["median"] / max(1, threads or 1)


def fmt(stat: dict | None, digits: int = 2) -> str:
    if not stat:
        return "-"
    return f"{stat['median']:.{digits}f} [{stat['min']:.{digits}f}-{stat['max']:.{digits}f}]"


def median_ms(stat: dict | None) -> float | None:
    return stat["median"] if stat else None


def proc_cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_cpu() -> tuple[float, float]:
    """(busy, total) seconds of all CPUs from /proc/stat (busy excludes idle and iowait)."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - fields[3] - fields[4]) / hz, sum(fields) / hz


def busy_cores(before: tuple[float, float], after: tuple[float, float], wall_s: float) -> float:
    return (after[0] - before[0]) / wall_s if wall_s > 0 else 0.0


def task_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return -1


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for row in rows:
        out.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    return "\n".join(out)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# Target processes

def start_target(size: int, work_iters: int, period: float, timeout: float = 180.0):
    proc = spawn([sys.executable, "-c", TARGET_CODE, str(size), str(work_iters), str(period)],
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started = time.monotonic()
    line = proc.stdout.readline().decode(errors="replace").strip()
    if not line.startswith("ready"):
        err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None else ""
        reap(proc)
        raise RuntimeError(f"target with {size} threads did not start: {line!r} {err[-500:]}")
    while task_count(proc.pid) != size:
        if time.monotonic() - started > timeout or proc.poll() is not None:
            count = task_count(proc.pid)
            reap(proc)
            raise RuntimeError(f"target shows {count} of {size} threads after {timeout:.0f} s")
        time.sleep(0.05)
    return proc, time.monotonic() - started, line


def stop_target(proc: subprocess.Popen, size: int) -> None:
    """Kill the target, then let the kernel finish tearing its threads down (RCU, stacks)."""
    reap(proc)
    time.sleep(0.5 + size / 5000)


# ----------------------------------------------------------------------------------------
# The bare-Python floor

def floor_open_read(task_dir: str):
    def sweep():
        count = 0
        for name in os.listdir(task_dir):
            if not name.isdigit():
                continue
            base = f"{task_dir}/{name}/"
            for leaf in ("stat", "schedstat"):
                try:
                    fd = os.open(base + leaf, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    os.read(fd, 4096)
                finally:
                    os.close(fd)
            count += 1
        return count
    return sweep


class PreadFloor:
    """Descriptors for stat and schedstat opened once; each sweep lists task/ and preads."""

    def __init__(self, task_dir: str, limit_threads: int):
        self.task_dir = task_dir
        self.fds: list[tuple[int, int]] = []
        tids = sorted(int(n) for n in os.listdir(task_dir) if n.isdigit())[:limit_threads]
        for tid in tids:
            self.fds.append((os.open(f"{task_dir}/{tid}/stat", os.O_RDONLY | os.O_CLOEXEC),
                             os.open(f"{task_dir}/{tid}/schedstat", os.O_RDONLY | os.O_CLOEXEC)))

    def sweep(self):
        os.listdir(self.task_dir)
        pread = os.pread
        for stat_fd, sched_fd in self.fds:
            pread(stat_fd, 4096, 0)
            pread(sched_fd, 4096, 0)
        return len(self.fds)

    def close(self):
        for pair in self.fds:
            for fd in pair:
                os.close(fd)
        self.fds = []


def ensure_nofile(needed: int) -> int:
    """Raise RLIMIT_NOFILE to `needed` where allowed; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    target_hard = hard if hard == resource.RLIM_INFINITY or hard >= needed else needed
    for new in ((needed, target_hard), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, new)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ----------------------------------------------------------------------------------------
# dsmon measurements for one target

def measure_size(size: int, proc: subprocess.Popen, args) -> dict:
    from dsmon.model import Status
    from dsmon.paths import HostPaths
    from dsmon.sampler import TargetSampler

    pid = proc.pid
    ticks, repeats, interval = args.ticks, args.repeats, args.interval
    result: dict = {"threads": size, "pid": pid}
    cpu0, wall0, host0, self0 = proc_cpu_seconds(pid), time.monotonic(), host_cpu(), \
        time.process_time()

    sampler = TargetSampler(HostPaths(), pid)
    try:
        sampler.static()
        for _ in range(WARMUP):
            sampler.tick()

        seen = {"listed": [], "read": [], "truncated": 0, "sweeps": 0, "elapsed_max_s": 0.0,
                "failed": [], "notes": set(), "unavailable": {}}

        def observe_tick(tick):
            batch = tick.batches.get("threads")
            if batch is None or batch.status is Status.FAILED:
                seen["failed"].append(batch.error if batch is not None else tick.target_gone)
                return
            observe_sweep(tick.data("threads"))
            seen["unavailable"].update(batch.unavailable)
            for name, other in tick.batches.items():
                if other.status is Status.FAILED:
                    seen["failed"].append(f"{name}: {other.error}")

        def observe_sweep(sweep):
            seen["sweeps"] += 1
            seen["listed"].append(sweep.listed)
            seen["read"].append(len(sweep.threads))
            seen["truncated"] += bool(sweep.truncated)
            seen["elapsed_max_s"] = max(seen["elapsed_max_s"], sweep.elapsed_s)
            seen["notes"].update(sweep.notes)
            seen["unavailable"].update(sweep.unavailable)

        log(f"  {size}: dsmon tick (default cadence: status every "
            f"{sampler.threads.switches_every}th sweep)")
        result["tick"] = measure(sampler.tick, ticks, repeats, interval, observe_tick)
        log(f"  {size}: dsmon tick with status (read_switches=True)")
        result["tick_status"] = measure(lambda: sampler.tick(read_switches=True), ticks, repeats,
                                        interval, observe_tick)
        log(f"  {size}: ThreadSampler.sample() alone")
        sweep_fn = sampler.threads.sample
        result["sweep"] = measure(sweep_fn, ticks, repeats, interval, observe_sweep)
        result["sweep_nostatus"] = measure(lambda: sweep_fn(read_switches=False), ticks, repeats,
                                           interval, observe_sweep)
        result["sweep_status"] = measure(lambda: sweep_fn(read_switches=True), ticks, repeats,
                                         interval, observe_sweep)
        log(f"  {size}: tick components")
        parts = {}
        task_dir = f"/proc/{pid}/task"
        host = sampler.host
        if hasattr(host, "sample"):      # a HostSampler
            host_fn = host.sample
        else:                            # a list of host collectors (older dsmon)
            host_fn = lambda: [c.collect() for c in host]  # noqa: E731
        for name, fn in (
                ("list task/", lambda: os.listdir(task_dir)),
                ("host collectors", host_fn),
                ("process.sample", sampler.process.sample),
                ("process.stat (pid reuse check)", sampler.process.stat),
                ("cgroup", sampler._cgroup.collect if sampler._cgroup else (lambda: None))):
            try:
                parts[name] = measure(fn, ticks, 1, interval)
            except Exception as exc:  # noqa: BLE001 - dsmon's internals move; keep going
                parts[name] = {"error": f"{type(exc).__name__}: {exc}"}
        result["components"] = parts
        if size == args.spacing_size and args.spacings:
            log(f"  {size}: tick cost against the spacing between ticks")
            result["spacing"] = {
                str(spacing): measure(sampler.tick, args.spacing_ticks,
                                      repeats if spacing >= 1.0 else 1, spacing)
                for spacing in args.spacings}
        result["sampler"] = {
            "max_threads": sampler.threads.max_threads,
            "time_budget_s": sampler.threads.time_budget_s,
            "fd_budget": sampler.threads.fd_budget,
            "cached_thread_fds": len(sampler.threads._fds),
            "listed_per_sweep": statistics.median(seen["listed"]) if seen["listed"] else None,
            "read_per_sweep_median": statistics.median(seen["read"]) if seen["read"] else None,
            "read_per_sweep_min": min(seen["read"]) if seen["read"] else None,
            "truncated_sweeps": seen["truncated"],
            "sweeps": seen["sweeps"],
            "sweep_elapsed_max_ms": seen["elapsed_max_s"] * 1e3,
            "failures": seen["failed"][:5],
            "notes": sorted(seen["notes"]),
            "unavailable": seen["unavailable"],
        }
    finally:
        sampler.close()

    # The floor, with dsmon's descriptors closed.
    task_dir = f"/proc/{pid}/task"
    log(f"  {size}: bare floor, open+read+close")
    result["floor_open_read"] = measure(floor_open_read(task_dir), ticks, repeats, interval)
    result["floor_open_read"]["threads_read"] = task_count(pid)
    soft = ensure_nofile(2 * size + open_fd_count() + 256)
    limit = max(0, (soft - open_fd_count() - 128) // 2)
    log(f"  {size}: bare floor, pread on kept descriptors")
    floor = PreadFloor(task_dir, limit)
    try:
        result["floor_pread"] = measure(floor.sweep, ticks, repeats, interval)
        result["floor_pread"]["threads_read"] = len(floor.fds)
    finally:
        floor.close()

    elapsed = time.monotonic() - wall0
    cpu1 = proc_cpu_seconds(pid)
    result["target_cpu_cores"] = (cpu1 - cpu0) / elapsed if cpu0 is not None and cpu1 else None
    # Everything else on the host: busy CPUs minus the target and this harness.
    result["other_load_cores"] = max(0.0, busy_cores(host0, host_cpu(), elapsed)
                                     - (result["target_cpu_cores"] or 0.0)
                                     - (time.process_time() - self0) / elapsed)
    result["target_threads_at_end"] = task_count(pid)
    return result


def measure_other_processes(proc: subprocess.Popen, args, count: int = 200) -> dict:
    """The 512-thread tick again, with `count` extra idle processes on the host."""
    from dsmon.paths import HostPaths
    from dsmon.sampler import TargetSampler

    def proc_count():
        return sum(1 for name in os.listdir("/proc") if name.isdigit())

    def one(label):
        sampler = TargetSampler(HostPaths(), proc.pid)
        try:
            sampler.static()
            for _ in range(WARMUP):
                sampler.tick()
            stats = measure(sampler.tick, args.ticks, args.repeats, args.interval)
        finally:
            sampler.close()
        stats["host_processes"] = proc_count()
        log(f"  other processes: {label}: {stats['host_processes']} processes, "
            f"{fmt(stats['cpu_ms'])} ms CPU per tick")
        return stats

    out = {"extra_processes": count, "before": one("before")}
    sleepers = []
    try:
        for _ in range(count):
            sleepers.append(spawn(["sleep", "3600"], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(os.path.exists(f"/proc/{p.pid}/stat") for p in sleepers):
                break
            time.sleep(0.05)
        time.sleep(0.5)
        out["with_extra"] = one(f"with {count} sleep processes")
    finally:
        for sleeper in sleepers:
            reap(sleeper)
    out["after"] = one("after they exit")
    # Against the mean of the runs before and after: drift over the minute shows there too.
    out["ratio_with_over_without"] = (out["with_extra"]["cpu_ms"]["median"] * 2
                                      / (out["before"]["cpu_ms"]["median"]
                                         + out["after"]["cpu_ms"]["median"]))
    return out


# ----------------------------------------------------------------------------------------
# The command line and RSS

def run_wall(argv: list[str], runs: int) -> dict:
    times = []
    for index in range(runs + 1):  # the first run warms the page cache and is not counted
        start = time.perf_counter()
        child = spawn(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
        code = child.wait()
        if index:
            times.append((time.perf_counter() - start) * 1e3)
        reap(child)
        if code != 0:
            raise RuntimeError(f"{argv} exited {code}")
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "runs": len(times)}


def run_diagnose(pid: int, duration: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="dsmon-bench-") as tmp:
        out_path, err_path = os.path.join(tmp, "report.json"), os.path.join(tmp, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            argv = [sys.executable, "-m", "dsmon", "diagnose", str(pid), "--duration", duration,
                    "--format", "json"]
            start = time.perf_counter()
            child = spawn(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
            hwm = None
            try:
                while True:  # poll the child's own peak RSS (VmHWM) until it exits
                    done, status, usage = os.wait4(child.pid, os.WNOHANG)
                    if done:
                        break
                    hwm = _status_kib(f"/proc/{child.pid}/status", "VmHWM") or hwm
                    time.sleep(0.02)
            except BaseException:
                reap(child)
                raise
            wall = time.perf_counter() - start
            child.returncode = os.waitstatus_to_exitcode(status)
            reap(child)
        with open(err_path, "rb") as handle:
            stderr = handle.read().decode(errors="replace")
        report = None
        try:
            with open(out_path, "rb") as handle:
                report = json.load(handle)
        except (OSError, ValueError):
            pass
    threads = (report or {}).get("threads") or {}
    collectors = (report or {}).get("collectors") or {}
    return {
        "argv": " ".join(["python"] + argv[1:]),
        "exit_code": child.returncode,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "user_s": usage.ru_utime, "system_s": usage.ru_stime,
        "vmhwm_kib": hwm,                  # the child's own peak RSS, last seen before exit
        "ru_maxrss_kib": usage.ru_maxrss,  # includes this harness's RSS at fork (see RSS_CODE)
        "harness_vmhwm_kib": _status_kib("/proc/self/status", "VmHWM"),
        "samples": ((report or {}).get("window") or {}).get("samples"),
        "threads_sampled_last_sweep": threads.get("sampled_last_sweep"),
        "threads_collector_max_s": (collectors.get("threads") or {}).get("duration_seconds_max"),
        "stderr_tail": stderr[-400:],
    }


def run_rss(pid: int, ticks: int) -> dict:
    child = spawn([sys.executable, "-c", RSS_CODE, str(pid), str(ticks)], cwd=REPO,
                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = child.communicate(timeout=300)
    finally:
        reap(child)
    if child.returncode != 0:
        raise RuntimeError(f"RSS probe failed: {err.decode(errors='replace')[-500:]}")
    data = json.loads(out)
    data["ticks"] = ticks
    return data


# ----------------------------------------------------------------------------------------
# Machine description

def machine() -> dict:
    model = None
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def git(*cmd):
        try:
            return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    has_schedstat = os.path.exists(f"/proc/self/task/{os.getpid()}/schedstat")
    return {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "rlimit_nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "rlimit_nproc": resource.getrlimit(resource.RLIMIT_NPROC),
        "threads_max": _read_first("/proc/sys/kernel/threads-max"),
        "pid_max": _read_first("/proc/sys/kernel/pid_max"),
        "schedstat_per_thread": has_schedstat,
        "loadavg_at_start": load,
        "git_head": git("rev-parse", "--short", "HEAD"),
        "git_dirty_dsmon": bool(git("status", "--porcelain", "--", "dsmon")),
        "git_status_dsmon": (git("status", "--porcelain", "--", "dsmon") or "").splitlines(),
    }


def _status_kib(path: str, key: str) -> int | None:
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _read_first(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


# ----------------------------------------------------------------------------------------
# Report

def print_report(res: dict) -> list[tuple[str, bool, str]]:
    m = res["machine"]
    print()
    print(f"dsmon sample cost  {m['date_utc']}  nproc={m['nproc']}  cpu={m['cpu_model']}  "
          f"kernel={m['kernel']}  python={m['python']}  dsmon@{m['git_head']}"
          + (f" + uncommitted: {', '.join(m['git_status_dsmon'])}" if m["git_dirty_dsmon"] else ""))
    a = res["args"]
    print(f"load average at start {' '.join(m['loadavg_at_start'])}, at end "
          f"{' '.join(m.get('loadavg_at_end', ['?']))}")
    print(f"ticks={a['ticks']} x repeats={a['repeats']}, interval {a['interval'] * 1e3:.0f} ms; "
          "figures: median of the runs' mean per call [min-max of the runs], ms")
    sizes = res["sizes"]

    print("\n1. dsmon per tick (TargetSampler.tick) and ThreadSampler sweep, CPU ms")
    rows = []
    for s in sizes:
        sm = s["sampler"]
        read = f"{sm['read_per_sweep_median']:.0f}/{sm['listed_per_sweep']:.0f}"
        rows.append([str(s["threads"]), read, "yes" if sm["truncated_sweeps"] else "no",
                     fmt(s["tick"]["cpu_ms"]), f"{s['tick']['cpu_ms_per_call']['max']:.2f}",
                     fmt(s["tick"]["wall_ms"]), fmt(s["tick_status"]["cpu_ms"]),
                     fmt(s["sweep"]["cpu_ms"]), fmt(s["sweep_nostatus"]["cpu_ms"]),
                     fmt(s["sweep_status"]["cpu_ms"]),
                     f"{s['target_cpu_cores']:.2f}" if s["target_cpu_cores"] is not None else "-",
                     f"{s['other_load_cores']:.2f}"])
    print(table(["threads", "read/listed", "trunc", "tick CPU", "worst tick", "tick wall",
                 "tick+status CPU", "sweep CPU", "sweep no-status", "sweep +status",
                 "target cores", "other load"], rows))
    print("(target cores: CPU the target used meanwhile; other load: CPUs busy with anything "
          "else on the host, in cores of 2)" if m["nproc"] == 2 else
          "(target cores: CPU the target used meanwhile; other load: CPUs busy with anything "
          "else on the host)")

    print("\n2. Floor (bare Python: list task/, read stat+schedstat of every thread) vs dsmon, "
          "CPU ms per sweep")
    rows = []
    for s in sizes:
        ratio = (per_thread(s["sweep_nostatus"], s["sampler"]["read_per_sweep_median"])
                 / per_thread(s["floor_pread"], s["floor_pread"]["threads_read"]))
        rows.append([str(s["threads"]), fmt(s["floor_open_read"]["cpu_ms"]),
                     str(s["floor_open_read"]["threads_read"]), fmt(s["floor_pread"]["cpu_ms"]),
                     str(s["floor_pread"]["threads_read"]), fmt(s["sweep_nostatus"]["cpu_ms"]),
                     f"{ratio:.1f}x"])
    print(table(["threads", "open+read+close", "threads", "pread (kept fds)", "threads",
                 "dsmon sweep no-status", "dsmon / pread floor, per thread read"], rows))

    print("\n3. Linearity: CPU ms per 1000 threads read")
    rows = []
    for s in sizes:
        read = s["sampler"]["read_per_sweep_median"] or 1
        per = lambda stat, n: f"{stat['cpu_ms']['median'] / n * 1000:.2f}"  # noqa: E731
        rows.append([str(s["threads"]), str(int(read)), per(s["tick"], read),
                     per(s["sweep"], read), per(s["sweep_nostatus"], read),
                     per(s["sweep_status"], read),
                     per(s["floor_open_read"], s["floor_open_read"]["threads_read"]),
                     per(s["floor_pread"], s["floor_pread"]["threads_read"])])
    print(table(["threads", "read", "tick", "sweep", "sweep no-status", "sweep +status",
                 "floor open/read/close", "floor pread"], rows))

    print("\n4. Tick components, CPU ms per call (one run)")
    names = list(sizes[0]["components"])
    rows = [[str(s["threads"])] + [f'{s["components"][n]["cpu_ms"]["median"]:.3f}'
                                   if "cpu_ms" in s["components"][n] else "error" for n in names]
            for s in sizes]
    print(table(["threads"] + names, rows))

    spaced = [s for s in sizes if s.get("spacing")]
    for s in spaced:
        print(f"\n4b. {s['threads']}-thread tick (default cadence) against the spacing between "
              f"ticks ({res['args']['spacing_ticks']} ticks a run; dsmon's own cadence, 1 s, "
              f"gets {res['args']['repeats']} runs), CPU ms per tick")
        rows = [[f"{float(k) * 1e3:.0f} ms", str(len(v["cpu_ms"]["runs"])), fmt(v["cpu_ms"]),
                 f"{v['cpu_ms_per_call']['p50']:.2f}", f"{v['cpu_ms_per_call']['max']:.2f}"]
                for k, v in s["spacing"].items()]
        print(table(["spacing", "runs", "mean per tick", "p50 tick", "worst tick"], rows))

    other = res.get("other_processes")
    if other:
        print(f"\n5. 512-thread tick with {other['extra_processes']} extra idle processes "
              "(sleep) on the host, CPU ms per tick")
        rows = [[label, str(other[key]["host_processes"]), fmt(other[key]["cpu_ms"]),
                 fmt(other[key]["wall_ms"])]
                for label, key in (("before", "before"), ("with extra", "with_extra"),
                                   ("after", "after"))]
        print(table(["", "processes in /proc", "tick CPU", "tick wall"], rows))
        print(f"ratio with extra / mean of before and after: "
              f"{other['ratio_with_over_without']:.2f}")

    cli = res.get("cli", {})
    print("\n6. Command line and memory")
    rows = []
    if "python_pass" in cli:
        c = cli["python_pass"]
        rows.append(["python -c pass (interpreter floor)", f"{c['median_ms']:.0f} ms wall",
                     f"min {c['min_ms']:.0f} max {c['max_ms']:.0f}, {c['runs']} runs"])
    if "help" in cli:
        c = cli["help"]
        rows.append(["python -m dsmon --help", f"{c['median_ms']:.0f} ms wall",
                     f"min {c['min_ms']:.0f} max {c['max_ms']:.0f}, {c['runs']} runs"])
    if "diagnose" in cli:
        d = cli["diagnose"]
        rows.append([f"dsmon diagnose (512 threads, {res['args']['diagnose_duration']})",
                     f"{d['wall_s']:.2f} s wall, {d['cpu_s'] * 1e3:.0f} ms CPU",
                     f"user {d['user_s'] * 1e3:.0f} sys {d['system_s'] * 1e3:.0f} ms, "
                     f"peak RSS (VmHWM) {(d['vmhwm_kib'] or 0) / 1024:.1f} MiB, "
                     f"exit {d['exit_code']}, "
                     f"{d['samples']} samples"])
    rss = res.get("rss")
    if rss:
        rows.append([f"fresh process sampling 512 threads ({rss['ticks']} ticks)",
                     f"peak RSS {rss['peak_kib'] / 1024:.1f} MiB",
                     f"VmHWM: interpreter {rss['interpreter_kib'] / 1024:.1f}, after import "
                     f"{rss['after_import_kib'] / 1024:.1f} MiB; VmRSS at end "
                     f"{rss['vmrss_end_kib'] / 1024:.1f} MiB; ru_maxrss "
                     f"{rss['ru_maxrss_kib'] / 1024:.1f} MiB (carries the forking harness's RSS)"])
    print(table(["what", "result", "detail"], rows))

    notes = []
    for s in sizes:
        sm = s["sampler"]
        if sm["truncated_sweeps"]:
            notes.append(f"{s['threads']} threads: {sm['truncated_sweeps']} of {sm['sweeps']} "
                         f"sweeps truncated; each read {sm['read_per_sweep_median']:.0f} of "
                         f"{sm['listed_per_sweep']:.0f} (max_threads={sm['max_threads']}, "
                         f"time budget {sm['time_budget_s'] * 1e3:.0f} ms, slowest sweep "
                         f"{sm['sweep_elapsed_max_ms']:.1f} ms wall); descriptors cached for "
                         f"{sm['cached_thread_fds']} threads (fd budget {sm['fd_budget']}). "
                         + " | ".join(sm["notes"][:1]))
        if sm["failures"]:
            notes.append(f"{s['threads']} threads: collector failures: {sm['failures']}")
        if sm["unavailable"]:
            notes.append(f"{s['threads']} threads: unavailable: {sm['unavailable']}")
    if notes:
        print("\nNotes:")
        for note in notes:
            print(f"- {note}")

    noisy = [f"{s['threads']}: {s['other_load_cores']:.2f}" for s in sizes
             if s["other_load_cores"] > 0.25]
    if noisy:
        print(f"\nWARNING: other work on the host kept CPUs busy during the run (cores, by "
              f"target size: {', '.join(noisy)}). CPU-time figures suffer less than wall times "
              "and the wall-clock time budget, but caches and memory bandwidth are shared.")

    verdicts = []
    by_size = {s["threads"]: s for s in sizes}
    if 512 in by_size:
        s = by_size[512]
        paced = s["tick"]["cpu_ms"]["median"]
        real = (s.get("spacing") or {}).get("1.0")
        value = max(paced, real["cpu_ms"]["median"]) if real else paced
        status_value = s["tick_status"]["cpu_ms"]["median"]
        verdicts.append(("512 threads: CPU per full sample (tick, default cadence) <= "
                         f"{BUDGET_512_MS:.0f} ms", value <= BUDGET_512_MS,
                         f"{paced:.2f} ms at {res['args']['interval'] * 1e3:.0f} ms spacing"
                         + (f", {real['cpu_ms']['median']:.2f} ms at 1 s spacing (dsmon's "
                            f"cadence; the verdict takes the larger)" if real else "")
                         + f"; a tick that also reads status+wchan (every 5th, and diagnose's "
                         f"first and last): {status_value:.2f} ms, "
                         f"{'within' if status_value <= BUDGET_512_MS else 'over'} budget"))
    if 10000 in by_size:
        s = by_size[10000]
        value = s["tick"]["cpu_ms"]["median"]
        worst = max(s["tick"]["cpu_ms_per_call"]["max"], s["tick_status"]["cpu_ms_per_call"]["max"])
        truncated = s["sampler"]["truncated_sweeps"] > 0
        verdicts.append((f"10000 threads: bounded, <= {BUDGET_10000_MS:.0f} ms CPU per tick, "
                         "truncation noted", value <= BUDGET_10000_MS and truncated,
                         f"{value:.2f} ms median, worst single tick {worst:.2f} ms (incl. "
                         f"status ticks); truncated={'yes' if truncated else 'NO'}, "
                         f"{s['sampler']['read_per_sweep_median']:.0f} of 10000 per sweep"))
    if "help" in cli:
        value = cli["help"]["median_ms"]
        verdicts.append((f"dsmon --help < {BUDGET_HELP_MS:.0f} ms", value < BUDGET_HELP_MS,
                         f"{value:.0f} ms median"))
    print("\nBudgets:")
    for name, ok, detail in verdicts:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}")
    return verdicts


# ----------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer ticks (smoke test)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--ticks", type=int,
                        help="measured calls per run (default 10; 5 with --quick)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement")
    parser.add_argument("--interval", type=float,
                        help="seconds between measured calls (default 0.2; 0.05 with --quick). "
                             "Back-to-back calls find warm caches and cost ~25%% less than "
                             "dsmon's real 1 s cadence; 0.2 s costs about what 1 s does")
    parser.add_argument("--spacing-size", type=int, default=512,
                        help="target size for the tick-spacing sensitivity check")
    parser.add_argument("--spacing-ticks", type=int, default=10)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="comma-separated thread counts")
    parser.add_argument("--work-iters", type=int, default=200,
                        help="loop iterations a waking target thread runs every period")
    parser.add_argument("--period", type=float, default=0.1,
                        help="seconds between wake-ups of the waking target threads")
    parser.add_argument("--extra-processes", type=int, default=200)
    parser.add_argument("--help-runs", type=int, default=10)
    parser.add_argument("--diagnose-duration", default="5s")
    args = parser.parse_args(argv)
    if args.ticks is None:
        args.ticks = 5 if args.quick else 10
    if args.interval is None:
        args.interval = 0.05 if args.quick else 0.2
    args.spacings = [0.0, 0.05, args.interval, 1.0]
    if args.quick:
        args.help_runs = min(args.help_runs, 5)
        args.spacings = [0.0, 1.0]
        args.spacing_ticks = 5
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    atexit.register(reap_all)

    started = time.monotonic()
    res: dict = {"machine": machine(), "args": vars(args).copy(), "sizes": []}
    res["args"]["command"] = "python bench/sample_cost.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    try:
        # First, on a quiet machine: right after a 10000-thread target exits, the kernel's
        # teardown of its threads slows process start-up for a while.
        log("command line: python -c pass, python -m dsmon --help")
        cli = res.setdefault("cli", {})
        cli["python_pass"] = run_wall([sys.executable, "-c", "pass"], args.help_runs)
        cli["help"] = run_wall([sys.executable, "-m", "dsmon", "--help"], args.help_runs)
        for size in sizes:
            log(f"starting target with {size} threads")
            proc, startup_s, line = start_target(size, args.work_iters, args.period)
            log(f"  ready in {startup_s:.1f} s: pid {proc.pid}, {task_count(proc.pid)} tasks "
                f"({line})")
            try:
                time.sleep(0.5)
                entry = measure_size(size, proc, args)
                entry["startup_s"] = startup_s
                res["sizes"].append(entry)
                if size == 512:
                    log("512: other processes")
                    if args.extra_processes:
                        res["other_processes"] = measure_other_processes(
                            proc, args, args.extra_processes)
                    log("512: dsmon diagnose")
                    res.setdefault("cli", {})["diagnose"] = run_diagnose(
                        proc.pid, args.diagnose_duration)
                    log("512: peak RSS of a fresh sampling process")
                    res["rss"] = run_rss(proc.pid, args.ticks)
            finally:
                stop_target(proc, size)
    except KeyboardInterrupt:
        log("interrupted: stopping every process started here")
        reap_all()
        return 130
    finally:
        reap_all()
    res["elapsed_s"] = time.monotonic() - started
    with open("/proc/loadavg") as handle:
        res["machine"]["loadavg_at_end"] = handle.read().split()[:3]
    verdicts = print_report(res)
    res["budgets"] = [{"name": n, "pass": ok, "detail": d} for n, ok, d in verdicts]
    print(f"\n(total {res['elapsed_s']:.0f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(res, handle, indent=2, default=list)
        log(f"wrote {args.json}")
    return 0 if all(ok for _, ok, _ in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
