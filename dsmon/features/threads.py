"""Per-thread CPU between two sweeps: the one implementation every consumer uses.

Threads are matched by (tid, start time), so a reused tid starts afresh; a thread seen in only
one sweep has no delta. The CPU counters are clock ticks (utime + stime of /proc/.../stat).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

BUSY_CORES = 0.10          # a thread using this share of a CPU in an interval is busy
ACTIVE_CORES = 0.03        # ... and this share is active (e.g. takes turns on the GIL)

_DIGITS = re.compile(r"\d+")


def pool_of(name: str) -> str:
    """Threads are grouped into pools by masking digits: "omp_worker_12" -> "omp_worker_#"."""
    return _DIGITS.sub("#", name)


def thread_key(thread) -> tuple[int, int]:
    return thread.tid, thread.start_ticks


def cpu_ticks_between(before, after) -> int:
    """Clock ticks of CPU a thread (or anything with utime/stime) used between two
    readings; never negative."""
    return max(0, after.utime + after.stime - before.utime - before.stime)


def thread_cpu_seconds(before, after, hz: int) -> float:
    return cpu_ticks_between(before, after) / hz


def thread_deltas(sweep_before, sweep, hz: int,
                  span_s: float) -> Iterator[tuple[object, object, float]]:
    """(thread now, the same thread before, cores it used) for each thread in both sweeps."""
    if span_s <= 0:
        return
    earlier = {thread_key(t): t for t in sweep_before.threads}
    for thread in sweep.threads:
        old = earlier.get(thread_key(thread))
        if old is not None:
            yield thread, old, thread_cpu_seconds(old, thread, hz) / span_s


def pool_usage(sweep_before, sweep, hz: int,
               span_s: float) -> dict[str, tuple[int, float | None]]:
    """Per pool: (threads in `sweep`, CPU cores over the interval; None without an earlier
    sweep to compare with)."""
    pools: dict[str, list] = {}
    pool_by_name: dict[str, str] = {}     # names repeat across a pool: mask each one once
    for thread in sweep.threads:
        pool = pool_by_name.get(thread.name)
        if pool is None:
            pool = pool_by_name[thread.name] = pool_of(thread.name)
        pools.setdefault(pool, [0, 0.0])[0] += 1
    comparable = sweep_before is not None and span_s > 0
    if comparable:
        for thread, _, cores in thread_deltas(sweep_before, sweep, hz, span_s):
            pools[pool_by_name[thread.name]][1] += cores
    return {pool: (count, cores if comparable else None) for pool, (count, cores) in pools.items()}
