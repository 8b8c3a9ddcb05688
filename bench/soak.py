#!/usr/bin/env python3
"""Soak test: the agent at 1 Hz against a target whose 512 threads churn, for minutes.

    python bench/soak.py [--duration 480] [--interval 1] [--scrape-every 1] [--warmup S]
                         [--threads 512] [--churn 0.05] [--max-threads N] [--json FILE]
                         [--keep-logs DIR]

Starts `tests/helpers/churn_target.py` (512 workers; every second ~5% exit and are replaced
by new `worker_N` threads; ~1/4 work in short bursts, the rest wait) and
`python -m dsmon agent --listen 127.0.0.1:PORT --target churn=pid:PID --interval 1s` on a free
loopback port. Every second it scrapes /metrics (the body must answer 200 with
`dsmon_target_up{target="churn"} 1.0`); every 10 s (and at the end of the warm-up and of the
run) it records the agent's VmRSS and VmHWM (/proc/PID/status), open descriptors
(len(/proc/PID/fd)), threads (`Threads:`), series (non-comment lines of /metrics) and CPU
seconds (utime+stime of /proc/PID/stat: CPU time, not wall, so a loaded host matters less).

After the warm-up (the first 60 s, or 20% of a shorter run) these must hold, measured from the
record at the end of the warm-up (the baseline) to the end:
- RSS grows by less than 5 MiB (last record - baseline);
- open fds and threads never exceed their highest value up to the baseline by more than 2
  (the descriptor cache swings with the sweep's phase: see `evaluate`);
- the series count stays within +-5% of the baseline;
- RSS at the end within +-5% of the baseline, open fds never 5% above their warm-up high
  (issue 18: "flat within 5%");
- the agent is alive, every scrape answered with the target up, its log has no ERROR line.
It prints the table and PASS/FAIL, and exits 1 on FAIL. Every process it started is killed on
exit, on Ctrl-C and SIGTERM, and by the kernel if this process dies (PR_SET_PDEATHSIG).

The functions are importable: tests/test_soak_short.py runs `run_soak(duration=30, warmup=10)`
and asserts the same checks with the same thresholds. The 8-minute run at 1 scrape/s is the
documented figure (README, Reliability): `python bench/soak.py --duration 480`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHURN_TARGET = REPO / "tests" / "helpers" / "churn_target.py"
TARGET_LABEL = "churn"

# The thresholds (the short CI test asserts these same values).
RSS_GROWTH_MAX_MIB = 5.0
FD_GROWTH_MAX = 2
THREAD_GROWTH_MAX = 2
SERIES_TOLERANCE = 0.05
FLAT_TOLERANCE = 0.05
WARMUP_MAX_S = 60.0
WARMUP_SHARE = 0.2

CLK_TCK = os.sysconf("SC_CLK_TCK")

# Run the agent exactly as `python -m dsmon ...`, but ask the kernel to SIGKILL it if the
# thread that started it dies (a crashed harness must not leave a daemon behind).
AGENT_LAUNCHER = (
    "import ctypes, runpy, signal\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)\n"
    "except Exception:\n"
    "    pass\n"
    "runpy.run_module('dsmon', run_name='__main__', alter_sys=True)\n"
)


# ----------------------------------------------------------------------------------------
# Processes: every child is registered and killed on the way out.

CHILDREN: list[subprocess.Popen] = []


def reap(proc: subprocess.Popen, graceful_s: float = 0.0) -> int | None:
    """Stop one child (SIGTERM first when graceful_s > 0, then SIGKILL); its exit status."""
    try:
        if proc.poll() is None and graceful_s > 0:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=graceful_s)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    except (ProcessLookupError, ChildProcessError, subprocess.TimeoutExpired):
        pass
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
    if proc in CHILDREN:
        CHILDREN.remove(proc)
    return proc.returncode


def reap_all() -> None:
    for proc in list(reversed(CHILDREN)):
        reap(proc)


def _on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """For command-line use: SIGTERM/SIGHUP unwind like Ctrl-C, so `finally` kills children."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def agent_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("NOTIFY_SOCKET", None)     # never talk to a real systemd from a benchmark
    env.pop("WATCHDOG_USEC", None)
    return env


def start_churn_target(threads: int = 512, churn: float = 0.05, extra: tuple = (),
                       timeout: float = 60.0) -> subprocess.Popen:
    """Start the churn target and wait for its "ready PID" line."""
    proc = subprocess.Popen([sys.executable, str(CHURN_TARGET), "--threads", str(threads),
                             "--churn", str(churn), *extra],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    CHILDREN.append(proc)
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline()     # the target prints one line, then nothing
    if not line.startswith("ready") or time.monotonic() > deadline:
        reap(proc)
        raise RuntimeError(f"churn target did not start: {line!r}")
    return proc


def start_agent(port: int, targets: tuple[str, ...] = (), interval: float = 1.0,
                log_path: str | os.PathLike = os.devnull, config_text: str | None = None,
                prefix: tuple[str, ...] = (), extra: tuple[str, ...] = (),
                launcher: str = AGENT_LAUNCHER, env: dict | None = None) -> subprocess.Popen:
    """`python -m dsmon agent --listen 127.0.0.1:PORT --target T... --interval Ns`.

    `config_text` is written next to the log and passed as --config (host-only mode is
    `targets = []`). `prefix` runs the agent under another command; `launcher` replaces the
    `python -c` code that starts it (it must end by running the dsmon module)."""
    args = ["agent", "--listen", f"127.0.0.1:{port}", "--interval", f"{interval:g}s",
            "--log-level", "info"]
    for target in targets:
        args += ["--target", target]
    if config_text is not None:
        config = Path(str(log_path) + ".toml") if str(log_path) != os.devnull else \
            Path(tempfile.mkstemp(suffix=".toml", prefix="dsmon-bench-")[1])
        config.write_text(config_text)
        args += ["--config", str(config)]
    command = [*prefix, sys.executable, "-c", launcher, *args, *extra]
    with open(log_path, "w") as log:   # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(command, env={**agent_env(), **(env or {})},
                                stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
    CHILDREN.append(proc)
    return proc


def scrape(url: str, timeout: float = 10.0) -> tuple[str, float]:
    """GET url; (body, wall seconds from the request to the last byte). Raises on non-200."""
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
    return body.decode(), time.perf_counter() - started


def wait_for_metrics(url: str, proc: subprocess.Popen, needle: str, timeout: float = 60.0) -> str:
    """Poll /metrics until `needle` is in it (the agent is up and has sampled)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode} before serving")
        try:
            body, _ = scrape(url + "/metrics", timeout=5)
            if needle in body:
                return body
            last = "needle missing"
        except (OSError, urllib.error.URLError, RuntimeError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"agent did not serve {needle!r} within {timeout:g}s ({last})")


# ----------------------------------------------------------------------------------------
# /proc readings of the agent

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in KiB, Threads, from /proc/PID/status."""
    values = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                values[key] = int(rest.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        raw = handle.read()
    fields = raw[raw.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def count_series(body: str) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith("#"))


def metric_value(body: str, name: str, **labels) -> float | None:
    for line in body.splitlines():
        if line.startswith((name + "{", name + " ")) and \
                all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def log_errors(path: str | os.PathLike) -> list[str]:
    try:
        with open(path, errors="replace") as handle:
            return [line.rstrip() for line in handle
                    if line.startswith(("ERROR", "CRITICAL", "Traceback"))]
    except OSError:
        return []


def host_facts() -> dict:
    def first(path, prefix):
        try:
            with open(path) as handle:
                for line in handle:
                    if line.startswith(prefix):
                        return line.split(":", 1)[1].strip()
        except OSError:
            return None
        return None
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                check=False, capture_output=True, text=True,
                                timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"hostname": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "cpu_model": first("/proc/cpuinfo", "model name"),
            "mem_total": first("/proc/meminfo", "MemTotal"),
            "python": platform.python_version(), "git_commit": commit,
            "loadavg_start": os.getloadavg()}


# ----------------------------------------------------------------------------------------
# The soak

@dataclass
class Record:
    t: float              # seconds since the agent was serving
    rss_kib: int
    hwm_kib: int
    fds: int
    threads: int
    series: int
    cpu_s: float
    target_threads: int | None = None
    sample_job_ms: float | None = None     # dsmon_job_duration_seconds{job="sample"}
    scrape_ms: float | None = None


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class SoakResult:
    started_at: str
    duration_s: float
    warmup_s: float
    interval_s: float
    threads: int
    records: list[Record]
    checks: list[Check]
    scrapes: int = 0
    scrape_failures: list[str] = field(default_factory=list)
    scrape_ms: list[float] = field(default_factory=list)
    agent_alive: bool = True
    log_errors: list[str] = field(default_factory=list)
    host: dict = field(default_factory=dict)
    log_path: str = ""

    @property
    def passed(self) -> bool:
        return all(check.ok for check in self.checks)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def as_dict(self) -> dict:
        document = asdict(self)
        document["passed"] = self.passed
        document["thresholds"] = {"rss_growth_max_mib": RSS_GROWTH_MAX_MIB,
                                  "fd_growth_max": FD_GROWTH_MAX,
                                  "thread_growth_max": THREAD_GROWTH_MAX,
                                  "series_tolerance": SERIES_TOLERANCE,
                                  "flat_tolerance": FLAT_TOLERANCE}
        return document


def default_warmup(duration: float) -> float:
    return min(WARMUP_MAX_S, WARMUP_SHARE * duration)


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    den = sum((t - mean_t) ** 2 for t, _ in points)
    if den <= 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / den * 3600


def evaluate(records: list[Record], warmup_s: float, *, agent_alive: bool = True,
             scrape_failures: list[str] | None = None,
             errors: list[str] | None = None) -> list[Check]:
    """The soak's verdict: growth from the first record at or after the warm-up to the end."""
    after = [r for r in records if r.t >= warmup_s - 1e-6]
    checks: list[Check] = []
    if len(after) < 2:
        return [Check("records", False, f"{len(after)} record(s) after the warm-up; need 2")]
    base, last = after[0], after[-1]
    growth = (last.rss_kib - base.rss_kib) / 1024
    peak = (max(r.rss_kib for r in after) - base.rss_kib) / 1024
    slope = slope_per_hour([(r.t, r.rss_kib / 1024) for r in after])
    checks.append(Check(
        "rss", growth < RSS_GROWTH_MAX_MIB,
        f"RSS {base.rss_kib / 1024:.1f} -> {last.rss_kib / 1024:.1f} MiB: "
        f"{growth:+.2f} MiB (limit < {RSS_GROWTH_MAX_MIB:g}); highest {peak:+.2f} MiB above the "
        f"baseline; trend "
        + (f"{slope:+.2f} MiB/h" if slope is not None else "n/a")))
    # fds and threads: the reference is the highest value up to the baseline (the warm-up's
    # envelope), not the baseline record alone. The agent keeps up to 4 descriptors open per
    # target thread, but a new thread gets its `status`/`wchan` ones only on every 5th sweep,
    # so with 26 new threads a second the count swings by a few hundred with the sweep's phase;
    # a leak shows as new highs above the envelope, a phase as values inside it.
    upto = [r for r in records if r.t <= base.t]
    for name, attribute, limit in (("fds", "fds", FD_GROWTH_MAX),
                                   ("threads", "threads", THREAD_GROWTH_MAX)):
        envelope = max(getattr(r, attribute) for r in upto)
        peak = max(getattr(r, attribute) for r in after)
        checks.append(Check(
            name, peak - envelope <= limit,
            f"{'open fds' if name == 'fds' else 'threads'}: highest {envelope} up to the "
            f"baseline ({getattr(base, attribute)} at it), highest {peak} after it, "
            f"{getattr(last, attribute)} at the end ({peak - envelope:+d}; limit +{limit})"))
    # "Flat within 5%": RSS at the end against the baseline; fds, whose descriptor cache swings
    # with the sweep's phase (below), as their highest after the baseline against the highest
    # up to it.
    rss_change = (last.rss_kib - base.rss_kib) / base.rss_kib if base.rss_kib else 1.0
    fd_envelope = max(r.fds for r in records if r.t <= base.t)
    fd_change = (max(r.fds for r in after) - fd_envelope) / fd_envelope if fd_envelope else 1.0
    checks.append(Check(
        "flat", abs(rss_change) <= FLAT_TOLERANCE and fd_change <= FLAT_TOLERANCE,
        f"RSS at the end {rss_change:+.1%} of the baseline, open fds at most {fd_change:+.1%} "
        f"of their warm-up high {fd_envelope} (limits +-{FLAT_TOLERANCE:.0%})"))
    low, high = min(r.series for r in after), max(r.series for r in after)
    deviation = max(abs(low - base.series), abs(high - base.series)) / base.series \
        if base.series else 1.0
    checks.append(Check(
        "series", base.series > 0 and deviation <= SERIES_TOLERANCE,
        f"series {base.series} at the baseline, {low}..{high} after it ({deviation:.1%}; "
        f"limit +-{SERIES_TOLERANCE:.0%})"))
    failures = scrape_failures or []
    checks.append(Check(
        "agent", agent_alive and not failures,
        ("alive" if agent_alive else "EXITED") + f"; {len(failures)} failed scrape(s)"
        + (f": {failures[0]}" if failures else "")))
    errors = errors or []
    checks.append(Check("log", not errors, f"{len(errors)} ERROR line(s) in the agent log"
                        + (f": {errors[0]}" if errors else "")))
    return checks


def run_soak(duration: float = 480.0, interval: float = 1.0, warmup: float | None = None,
             threads: int = 512, churn: float = 0.05, scrape_every: float = 1.0,
             record_every: float = 10.0, log_dir: str | os.PathLike | None = None,
             progress=None, max_threads: int | None = None,
             stacks_window: float | None = None, stacks: bool = True) -> SoakResult:
    """Run the agent against the churn target for `duration` seconds and judge it.

    `progress(text)` is called with each table row as it is recorded (None: quiet).
    `max_threads` sets the agent's `[agent] max_threads` (threads read per sweep) through a
    config file: below the target's thread count every sweep is truncated (rotating window).
    `stacks_window` sets `[stacks] window`: the py-spy profile fills for that long, so a warm-up
    shorter than it reads the filling as growth (the default window is 30 s); `stacks=False`
    turns the agent's py-spy sampler off."""
    warmup = default_warmup(duration) if warmup is None else warmup
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    host = host_facts()
    log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="dsmon-soak-"))
    log_path = log_dir / "agent.log"
    records: list[Record] = []
    failures: list[str] = []
    scrape_times: list[float] = []
    scrapes = 0
    alive = True
    target = agent = None
    try:
        target = start_churn_target(threads, churn)
        port = free_port()
        config = (f"[agent]\nmax_threads = {max_threads}\n" if max_threads is not None else "") \
            + ("[stacks]\n" if stacks_window is not None or not stacks else "") \
            + (f'window = "{stacks_window:g}s"\n' if stacks_window is not None else "") \
            + ("enabled = false\n" if not stacks else "")
        agent = start_agent(port, (f"{TARGET_LABEL}=pid:{target.pid}",), interval, log_path,
                            config_text=config or None)
        url = f"http://127.0.0.1:{port}"
        up = f'dsmon_target_up{{target="{TARGET_LABEL}"}} 1.0'
        wait_for_metrics(url, agent, up)
        if progress:
            progress(f"agent pid {agent.pid} on {url}, target pid {target.pid} ({threads} "
                     f"threads, {churn:.0%}/s churn); {duration:g}s, warm-up {warmup:g}s; "
                     f"log {log_path}")
            progress(table_header())
        # The timeline: scrapes every scrape_every; records every record_every, and at the end
        # of the warm-up and of the run (each record uses the scrape taken at that moment).
        events: dict[float, bool] = {}
        t = 0.0
        while t <= duration + 1e-9:
            events[round(t, 3)] = False
            t += scrape_every
        t = 0.0
        while t <= duration + 1e-9:
            events[round(t, 3)] = True
            t += record_every
        events[round(warmup, 3)] = True
        events[round(duration, 3)] = True
        origin = time.monotonic()
        previous: Record | None = None
        for at, do_record in sorted(events.items()):
            delay = origin + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if agent.poll() is not None:
                alive = False
                failures.append(f"agent exited with {agent.returncode} at t={at:g}s")
                break
            if do_record:
                # /proc first: a scrape leaves its handler thread (and socket) behind briefly.
                status, fds, cpu = proc_status(agent.pid), open_fds(agent.pid), \
                    cpu_seconds(agent.pid)
                stamp = round(time.monotonic() - origin, 2)
            body, seconds = "", None
            scrapes += 1
            try:
                body, seconds = scrape(url + "/metrics")
                scrape_times.append(seconds * 1000)
                if up not in body:
                    failures.append(f"t={at:g}s: target not up in /metrics")
            except (OSError, urllib.error.URLError, RuntimeError) as exc:
                failures.append(f"t={at:g}s: {exc}")
            if not do_record:
                continue
            try:
                target_threads = proc_status(target.pid)["Threads"]
            except OSError:
                target_threads = None
            sample_s = metric_value(body, "dsmon_job_duration_seconds", job="sample")
            record = Record(stamp, status["VmRSS"], status["VmHWM"], fds, status["Threads"],
                            count_series(body), cpu, target_threads,
                            None if sample_s is None else sample_s * 1000,
                            None if seconds is None else seconds * 1000)
            records.append(record)
            if progress:
                progress(table_row(record, previous))
            previous = record
        alive = alive and agent.poll() is None
    finally:
        if agent is not None:
            reap(agent, graceful_s=3.0)
        if target is not None:
            reap(target)
    errors = log_errors(log_path)
    checks = evaluate(records, warmup, agent_alive=alive, scrape_failures=failures, errors=errors)
    host["loadavg_end"] = os.getloadavg()
    return SoakResult(started_at, duration, warmup, interval, threads, records, checks, scrapes,
                      failures, scrape_times, alive, errors, host, str(log_path))


# ----------------------------------------------------------------------------------------
# Output

def table_header() -> str:
    return (f"{'t s':>7} {'RSS MiB':>8} {'HWM MiB':>8} {'fds':>5} {'thr':>4} {'series':>6} "
            f"{'CPU s':>7} {'CPU %':>6} {'sample ms':>9} {'scrape ms':>9} {'target thr':>10}")


def table_row(record: Record, previous: Record | None) -> str:
    cpu_pct = ""
    if previous is not None and record.t > previous.t:
        cpu_pct = f"{100 * (record.cpu_s - previous.cpu_s) / (record.t - previous.t):.1f}"

    def opt(value, spec):
        return "" if value is None else format(value, spec)
    return (f"{record.t:>7.1f} {record.rss_kib / 1024:>8.2f} {record.hwm_kib / 1024:>8.2f} "
            f"{record.fds:>5} {record.threads:>4} {record.series:>6} {record.cpu_s:>7.2f} "
            f"{cpu_pct:>6} {opt(record.sample_job_ms, '9.1f'):>9} "
            f"{opt(record.scrape_ms, '9.1f'):>9} {opt(record.target_threads, 'd'):>10}")


def format_table(result: SoakResult) -> str:
    lines = [table_header()]
    previous = None
    for record in result.records:
        marker = "  <- end of warm-up (baseline)" if abs(record.t - result.warmup_s) < 1.0 and \
            record is next(r for r in result.records if r.t >= result.warmup_s - 1e-6) else ""
        lines.append(table_row(record, previous) + marker)
        previous = record
    return "\n".join(lines)


def format_summary(result: SoakResult) -> str:
    lines = []
    after = [r for r in result.records if r.t >= result.warmup_s - 1e-6]
    if len(after) >= 2 and after[-1].t > after[0].t:
        cpu = (after[-1].cpu_s - after[0].cpu_s) / (after[-1].t - after[0].t)
        lines.append(f"agent CPU after the warm-up: {100 * cpu:.2f}% of one core")
    if result.scrape_ms:
        ordered = sorted(result.scrape_ms)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        lines.append(f"scrapes: {result.scrapes}, latency median {statistics.median(ordered):.1f} "
                     f"ms, p95 {p95:.1f} ms, max {ordered[-1]:.1f} ms")
    for check in result.checks:
        lines.append(f"{'ok  ' if check.ok else 'FAIL'} {check.name:<8} {check.detail}")
    lines.append("PASS" if result.passed else "FAIL")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=480.0, help="seconds (default 480)")
    parser.add_argument("--interval", type=float, default=1.0, help="agent interval, s (1)")
    parser.add_argument("--scrape-every", type=float, default=1.0,
                        help="seconds between scrapes of /metrics (1)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds left out of the checks (default min(60, 20%% of duration))")
    parser.add_argument("--threads", type=int, default=512, help="target threads (512)")
    parser.add_argument("--churn", type=float, default=0.05, help="share replaced per second")
    parser.add_argument("--max-threads", type=int, default=None,
                        help="the agent's max_threads (default: its own, 2048); below --threads "
                             "every sweep is truncated")
    parser.add_argument("--json", dest="json_path", default=None, help="write the result here")
    parser.add_argument("--keep-logs", default=None, help="directory for the agent's log")
    args = parser.parse_args(argv)
    install_signal_handlers()
    try:
        result = run_soak(args.duration, args.interval, args.warmup, args.threads, args.churn,
                          scrape_every=args.scrape_every, log_dir=args.keep_logs, progress=lambda line: print(line, flush=True),
                          max_threads=args.max_threads)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        reap_all()
    print()
    print(format_table(result))
    print()
    print(format_summary(result))
    if not result.passed and result.log_errors:
        print("\nagent log errors:\n" + "\n".join(result.log_errors[:20]))
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump(result.as_dict(), handle, indent=2)
            handle.write("\n")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
