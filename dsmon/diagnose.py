"""`dsmon diagnose`: sample one target over a short window and build the report."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from dsmon import __version__
from dsmon.collectors.process import is_same_process
from dsmon.engine.monitor import HostRuleMonitor, RuleMonitor
from dsmon.engine.rules import SEVERITY_RANK, load_rules
from dsmon.engine_metrics import EngineFollower
from dsmon.features.series import fit_line
from dsmon.gpu.sample import GpuCollector
from dsmon.model import Batch, Status, run_collector
from dsmon.model_size import report_note as model_size_note
from dsmon.observations import observe
from dsmon.paths import HostPaths
from dsmon.report.sections import TIMELINE_FEATURES, analyse
from dsmon.sampler import TargetSampler, Tick
from dsmon.stacks.evidence import stack_evidence
from dsmon.stacks.profile import NamespaceTids, StackProfile
from dsmon.stacks.pyspy import PySpy
from dsmon.stacks.sampler import DEFAULT_PERIOD_S, StackSampler

SCHEMA_VERSION = 1

# Exit codes, documented in the README.
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_NO_TARGET = 3
EXIT_PARTIAL = 4
EXIT_OUTPUT = 5
EXIT_RULES = 8          # a rule file could not be loaded
EXIT_WARNING = 6        # a warning finding was firing at the end of the window
EXIT_CRITICAL = 7       # a critical finding was firing at the end of the window


@dataclass
class DiagnoseOptions:
    duration_s: float = 10.0
    interval_s: float = 1.0
    max_threads: int = 2048
    rule_paths: tuple = ()
    disabled_rules: tuple = ()
    stacks: bool = True                 # sample Python stacks with py-spy
    stacks_period_s: float = DEFAULT_PERIOD_S
    pyspy_path: str | None = None


def sample_window(sampler: TargetSampler, options: DiagnoseOptions,
                  sleep=time.sleep, on_tick=None) -> tuple[list[Tick], str]:
    """Tick every interval for the duration. Returns the ticks and why sampling ended."""
    ticks = [sampler.tick(read_switches=True)]
    if REUSED in ticks[0].target_gone:
        _drop_target_data(ticks[0])
    if on_tick:
        on_tick(ticks[0])
    if ticks[0].target_gone:
        return ticks, "target exited"
    count = max(1, round(options.duration_s / options.interval_s))
    start = ticks[0].mono_ts
    try:
        for index in range(1, count + 1):
            delay = start + index * options.interval_s - time.monotonic()
            if delay < -options.interval_s / 2 and index < count:
                # Starved past half an interval: skip this slot rather than sample twice in a
                # row, since rates over a few milliseconds of 10 ms clock ticks are noise.
                continue
            if delay > 0:
                sleep(delay)
            tick = sampler.tick(read_switches=(index == count) or None)
            if REUSED in tick.target_gone:
                _drop_target_data(tick)
            ticks.append(tick)
            if on_tick:
                on_tick(tick)
            if tick.target_gone:
                return ticks, "target exited"
    except KeyboardInterrupt:
        return ticks, "interrupted"
    return ticks, "completed"


REUSED = "pid was reused"
TARGET_BATCHES = ("process", "threads", "cgroup", "stacks", "engine")


def _drop_target_data(tick: Tick) -> None:
    """The tick that finds the pid reused may have read some files of the new process (the pid
    changed hands between two reads): none of its target data is the target's."""
    for name in TARGET_BATCHES:
        batch = tick.batches.get(name)
        if batch is not None and batch.ok:
            tick.batches[name] = Batch(name, batch.mono_ts, batch.wall_ts, Status.FAILED, None,
                                       tick.target_gone)


def collector_summary(batches: list[Batch]) -> dict:
    summary: dict[str, dict] = {}
    for batch in batches:
        entry = summary.setdefault(batch.collector, {
            "status": batch.status.value, "runs": 0, "failures": 0, "error": "", "hint": "",
            "unavailable": {}, "duration_seconds_max": 0.0})
        entry["runs"] += 1
        entry["status"] = batch.status.value
        entry["duration_seconds_max"] = round(max(entry["duration_seconds_max"],
                                                  batch.duration_s), 6)
        if batch.status is Status.FAILED:
            entry["failures"] += 1
        if batch.error:
            entry["error"], entry["hint"] = batch.error, batch.hint
        entry["unavailable"].update(batch.unavailable)
    return summary


def diagnose(paths: HostPaths, pid: int, options: DiagnoseOptions, sleep=time.sleep,
             rules=None, nvml=None) -> dict:
    """Run the whole diagnosis. Raises TargetNotFound when the pid names no process and
    RuleLoadError when a rule file is invalid (before any sampling)."""
    if rules is None:
        rules = load_rules(options.rule_paths)
    rules = [rule for rule in rules if rule.id not in set(options.disabled_rules)]
    sampler = TargetSampler(paths, pid, max_threads=options.max_threads)
    stacks = None
    try:
        started_wall = time.time()
        static = sampler.static()
        monitor = RuleMonitor(static, rules)
        host = HostRuleMonitor(rules)
        gpu = GpuCollector(paths, nvml, targets=[pid])
        gpu_batches: list[Batch] = []
        stacks = _start_stacks(paths, pid, static, options)
        environment = static.environment.data if static.environment.ok else None
        # A replayed snapshot's engine is not on this machine's loopback: no scrape there.
        engine = EngineFollower(monitor.engine_name if paths.is_live else "",
                                static.identity.cmdline,
                                environment if isinstance(environment, dict) else None)

        def on_tick(tick: Tick) -> None:
            if REUSED in tick.target_gone:
                # Nothing more is read of what the pid names now: not its engine's /metrics,
                # not its GPU memory (NVML reports per pid).
                return monitor.observe(tick)
            engine_batch = engine.scrape_if_due()     # the engine's own /metrics, every 2 s
            if engine_batch is not None:
                tick.batches["engine"] = engine_batch
            if stacks is not None:
                batch = stacks.tick_batch()
                if batch is not None:
                    tick.batches["stacks"] = batch
            # GPUs are sampled with every tick (0.16 ms per GPU measured) so the GPU rules
            # see growth.
            if gpu_batches and not gpu_batches[0].ok:
                return monitor.observe(tick)   # no NVML: asked once, said once
            batch = run_collector("gpu", gpu.collect)
            gpu_batches.append(batch)
            tick.batches["gpu"] = batch
            if batch.ok:
                monitor.follow_gpu_locality(batch.data, gpu.topology)
                host.observe_gpu(batch.data, tick.mono_ts, tick.wall_ts)
            monitor.observe(tick)

        ticks, end_reason = sample_window(sampler, options, sleep, on_tick)
        if not gpu_batches:     # the pid changed hands before the first sample
            gpu_batches.append(Batch("gpu", time.monotonic(), time.time(), Status.NO_DATA, None,
                                     "not sampled: the pid was reused before the first sample"))
        gpu_last = gpu_batches[-1]
        numa_end = sampler.numa() if end_reason != "target exited" else None
    finally:
        if stacks is not None:
            stacks.stop()
        sampler.close()
    body = analyse(static, ticks, numa_end, monitor.history)
    live = [t for t in ticks if t.data("process") is not None]
    elapsed = live[-1].mono_ts - live[0].mono_ts if len(live) > 1 else 0.0
    batches = [static.topology, static.environment, static.numa_start, static.runtimes]
    batches += [b for t in ticks for b in t.batches.values() if b.collector != "gpu"]
    batches += gpu_batches
    if numa_end is not None:
        batches.append(numa_end)
    gone_tick = next((t for t in ticks if t.target_gone), None)
    exited_at = gone_tick.wall_ts if gone_tick is not None else None
    report = {
        "schema_version": SCHEMA_VERSION,
        "dsmon_version": __version__,
        "generated_at": _iso(time.time()),
        "reporter_host": socket.gethostname(),
        "paths": {"procfs": paths.procfs, "sysfs": paths.sysfs, "rootfs": paths.rootfs},
        "window": {
            "requested_seconds": options.duration_s,
            "interval_seconds": options.interval_s,
            "samples": len(live),
            "started_at": _iso(started_wall),
            "elapsed_seconds": round(elapsed, 3),
            "complete": end_reason == "completed",
            "end_reason": end_reason,
            "target_exited_at": _iso(exited_at) if exited_at else None,
            # Why: "pid was reused by another process", "the process exited (a zombie ...)".
            "gone_reason": gone_tick.target_gone.removeprefix("gone: ") if gone_tick else None,
        },
        **body,
        "collectors": collector_summary(batches),
        "notes": static.topology.data.notes if static.topology.ok else [],
    }
    _name_the_target_kind(report["target"], static.identity, ticks)
    start = live[0].mono_ts if live else None
    report["engine"] = monitor.engine_name or None
    report["python"] = python_section(stacks, paths, options, body["threads"],
                                      static.identity.kernel_thread)
    report["findings"] = []
    # The host's findings (GPU health) beside the target's, most severe first.
    for finding in sorted(monitor.findings() + host.findings(),
                          key=lambda f: -SEVERITY_RANK[f.severity]):
        entry = finding.as_dict(start)
        if finding.capture == "stack":
            entry["stacks"] = stack_evidence(report["python"], body["threads"])
        report["findings"].append(entry)
    report["finding_transitions"] = [
        {"seconds": round(t.mono_ts - start, 3) if start is not None else None,
         "rule_id": t.rule_id, "severity": t.severity, "state": t.state}
        for t in sorted(list(monitor.transitions) + list(host.transitions),
                        key=lambda t: t.mono_ts)]
    report["gpu"] = gpu_section(gpu_last, fit_line(
        [(t, v["gpu_memory_bytes"]) for t, v in sorted(monitor.history.items())
         if v.get("gpu_memory_bytes") is not None]))
    if gpu_last.ok:   # what its GPU memory says about the model (plan's arithmetic)
        report["gpu"]["model_size"] = model_size_note(report["gpu"], pid, static.identity.cmdline,
                                                      monitor.engine_name, paths)
    if gpu_last.ok and gpu.topology is not None:
        report["gpu"]["topology"] = gpu.topology.to_dict()   # for the HTML report's matrix
    report["worst_firing_severity"] = max(
        (s for s in (monitor.worst_firing(), host.worst_firing()) if s),
        key=SEVERITY_RANK.get, default=None)
    report["observations"] = observe(report)
    return report


def _name_the_target_kind(target: dict, identity, ticks: list[Tick]) -> None:
    """A kernel thread or zombie says so, and its memory says why there is none: a kernel
    thread's cgroup is the root one, whose memory is the host's, never the thread's own."""
    if not target:          # not one sample of it (the pid changed hands at once)
        return
    target["kind"] = identity.kind
    reasons = [t.batches["process"].unavailable.get("memory") for t in ticks
               if "process" in t.batches]
    reason = next((r for r in reversed(reasons) if r), None)
    if reason is None:
        return
    memory = target["memory"]
    if identity.kernel_thread:
        memory.update(dict.fromkeys(memory, None))
    memory["unavailable"] = reason


def _start_stacks(paths: HostPaths, pid: int, static, options: DiagnoseOptions):
    # A replayed snapshot has no process behind it to read stacks from, and a kernel thread
    # has no user space (py-spy would say "exited").
    if not options.stacks or not paths.is_live or static.identity.kernel_thread:
        return None
    pyspy = PySpy(options.pyspy_path, procfs=paths.procfs, explicit=bool(options.pyspy_path))
    profile = StackProfile(NamespaceTids(paths, pid, static.identity.nspid))
    start_ticks = static.identity.start_ticks
    return StackSampler(pyspy, pid, profile, options.stacks_period_s,
                        is_target=lambda: is_same_process(paths, pid, start_ticks)).start()


def python_section(stacks, paths: HostPaths, options: DiagnoseOptions, threads: dict,
                   kernel_thread: bool = False) -> dict:
    """The `python` section, and each sampled thread's Python stack in the thread table."""
    if stacks is None:
        reason = "disabled (--no-stacks)" if not options.stacks else \
            "kernel thread: no user space, no Python stacks" if kernel_thread else \
            "not a live host (replayed snapshot): no process to read stacks from"
        return {"status": "no_data", "error": reason, "hint": ""}
    rows: dict[int, dict] = {}
    for key in ("all", "top_by_cpu", "top_by_run_queue_wait", "blocked"):
        for row in threads.get(key, []):
            rows.setdefault(row["tid"], row)
    section = {**stacks.status(), "sample_period_seconds": stacks.period_s}
    if stacks.profile.samples == 0:
        return section
    section.update(stacks.profile.summary(rows))
    by_tid = {t["tid"]: t for t in section["threads"] if t["tid"] is not None}
    for key in ("all", "top_by_cpu", "top_by_run_queue_wait", "blocked"):
        for row in threads.get(key, []):
            thread = by_tid.get(row["tid"])
            if thread is not None:
                top = thread["top_stacks"][0]["frames"] if thread["top_stacks"] else []
                row["python"] = {"name": thread["name"], "top_frame": top[0] if top else None,
                                 "active_ratio": thread["active_ratio"],
                                 "gil_ratio": thread["gil_ratio"]}
    return section


def gpu_section(last, memory_fit) -> dict:
    """The GPUs at the end of the window, the target's GPU memory and its growth over the
    window (a fit of the gpu_memory_bytes feature), and NVML's own findings (lost GPU, XID,
    ECC, throttling, degraded PCIe)."""
    if not last.ok:
        return {"status": last.status.value, "error": last.error, "hint": last.hint}
    snapshot = last.data.to_dict()
    snapshot["status"] = last.status.value
    snapshot["target_memory_growth_bytes_per_second"] = memory_fit.slope if memory_fit else None
    snapshot["target_memory_growth_fit_ratio"] = memory_fit.r_squared if memory_fit else None
    return snapshot


def exit_code(report: dict) -> int:
    """Critical (7) > warning (6) > partial window (4) > ok (0); documented in the README."""
    worst = report.get("worst_firing_severity")
    if worst == "critical":
        return EXIT_CRITICAL
    if worst == "warning":
        return EXIT_WARNING
    if report["window"]["end_reason"] == "target exited" or \
            report.get("target", {}).get("kind") == "zombie":
        return EXIT_PARTIAL
    return EXIT_OK


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")
