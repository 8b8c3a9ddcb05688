"""Plain statements of what the window shows, with the numbers behind them.

These are the report's headline facts, not verdicts: the rules engine (rules/dsmon/*.yaml)
turns windows into findings with hysteresis. Each observation names the measured values so
a person can check it.
"""

from __future__ import annotations

# A thread pool waiting this long on run queues for each second of CPU it gets is contended.
HIGH_RUNNABLE_WAITING_RATIO = 0.25
HIGH_D_STATE_RATIO = 0.10
LOW_NUMA_LOCALITY = 0.8
SOON_SECONDS = 3600.0


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


def observe(report: dict) -> list[dict]:
    found: list[dict] = []

    def add(severity: str, topic: str, text: str) -> None:
        found.append({"severity": severity, "topic": topic, "text": text})

    window = report.get("window", {})
    if window.get("end_reason") == "target exited":
        add("warning", "window", f"the target exited after {window.get('elapsed_seconds')} s of "
                                 f"the {window.get('requested_seconds')} s window: partial report")
    target = report.get("target") or {}
    threads = report.get("threads") or {}
    effective = target.get("effective_cpus") or {}
    capacity = effective.get("capacity_cores")
    busy = threads.get("busy")
    if busy and capacity and busy > capacity:
        add("warning", "threads",
            f"{busy} busy threads compete for {capacity:g} usable CPUs "
            f"({effective.get('physical_cores')} physical cores): {busy / capacity:.1f}x oversubscribed")
    waiting = threads.get("runnable_waiting_ratio")
    if waiting is not None and waiting >= HIGH_RUNNABLE_WAITING_RATIO:
        add("warning", "run queue",
            f"threads spent {waiting:.0%} of their runnable time waiting for a CPU "
            f"({threads.get('run_queue_wait_seconds_per_second')} s of wait per second)")
    d_share = threads.get("d_state_ratio")
    if d_share is not None and d_share >= HIGH_D_STATE_RATIO:
        wchans = sorted({b["wchan"] for b in threads.get("blocked", []) if b.get("wchan")})
        add("warning", "io", f"{d_share:.0%} of thread samples were in uninterruptible sleep (D)"
                             + (f", blocked in {', '.join(wchans)}" if wchans else ""))
    for advice in (target.get("thread_settings") or {}).get("advice", []):
        add("info", "thread settings", advice)
    memory = target.get("memory") or {}
    seconds = memory.get("seconds_to_limit")
    if seconds is not None:
        slope = memory.get("rss_slope_bytes_per_second") or 0
        add("warning" if seconds < SOON_SECONDS else "info", "memory",
            f"memory grows {slope / 2**20:.1f} MiB/s; at that rate the {memory.get('limit_kind')} "
            f"headroom of {_gib(memory.get('headroom_bytes') or 0)} is gone in {seconds:.0f} s")
    cgroup = memory.get("cgroup") or {}
    if cgroup.get("oom_kills_in_window"):
        add("warning", "memory", f"{cgroup['oom_kills_in_window']} OOM kill(s) in the target's "
                                 f"cgroup during the window")
    numa = target.get("numa") or {}
    local = numa.get("memory_local_ratio")
    nodes = numa.get("memory_bytes_by_node") or {}
    if local is not None and len(nodes) > 1 and local < LOW_NUMA_LOCALITY:
        add("warning", "numa", f"only {local:.0%} of the target's memory sits on the NUMA nodes "
                               f"where its threads run")
    if threads.get("truncated"):
        add("info", "sampling", "; ".join(threads.get("notes", [])))
    for name, entry in (report.get("collectors") or {}).items():
        if entry.get("status") == "failed" and name != "process":
            add("info", "collector", f"{name}: {entry.get('error')}"
                                     + (f" - {entry['hint']}" if entry.get("hint") else ""))
    return found
