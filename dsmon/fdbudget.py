"""One budget of file descriptors that per-thread samplers may keep open between sweeps.

Keeping a thread's `stat` and `schedstat` open and re-reading them with pread costs a quarter of
open+read+close (collectors/threads.py), so samplers cache descriptors; but the process has one
RLIMIT_NOFILE for everything. Two 4,000-thread targets with a budget each exhausted it: the
agent then could not accept a scrape or list /proc. So one budget serves every sampler of the
process, sized as the limit less a reserve for what must always work (the listening socket and
its connections, discovery's reads of /proc, logs, the engine scrapes, py-spy's pipes). Past
the budget a sampler reads with open/read/close: slower, never failing.
"""

from __future__ import annotations

import resource
import threading

# Descriptors never lent to samplers: the HTTP server holds at most MAX_CONNECTIONS (sinks/http)
# at once, discovery and the collectors hold a few each while they read, py-spy needs pipes.
RESERVED_FDS = 256
# Two descriptors per thread read every sweep, for up to 10,000 threads: more buys nothing.
MOST_USEFUL_FDS = 2 * 10_000 + 4096


def raise_soft_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one where allowed; the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:  # a monitor holding descriptors open for speed should use its full allowance
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def default_fd_budget() -> int:
    return max(0, min(raise_soft_limit() - RESERVED_FDS, MOST_USEFUL_FDS))


class FdBudget:
    """Counts descriptors lent out; `take` says no once `capacity` are held. Thread-safe: the
    agent's samplers and a diagnose run may share one."""

    def __init__(self, capacity: int | None = None):
        self.capacity = default_fd_budget() if capacity is None else max(0, capacity)
        self.held = 0
        self.fallback_reads = 0     # reads done with open/read/close because the budget was full
        self._lock = threading.Lock()

    def take(self, reserve_share: float = 1.0) -> bool:
        """One descriptor, if fewer than `reserve_share` of the capacity are held."""
        with self._lock:
            if self.held >= self.capacity * reserve_share:
                return False
            self.held += 1
            return True

    def give_back(self, count: int = 1) -> None:
        with self._lock:
            self.held = max(0, self.held - count)

    def count_fallback(self, reads: int) -> None:
        if reads:
            with self._lock:
                self.fallback_reads += reads
