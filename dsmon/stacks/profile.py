"""Many py-spy dumps of one target -> what each Python thread does and who holds the GIL.

The one aggregation of stacks: `dsmon diagnose` keeps one profile for its window, the agent one
per rolling window (`rotated`); both read the same summary (GIL share, active and idle threads,
hot frames per pool) and the same per-interval tick that feeds the rules engine's features.

py-spy reports kernel thread ids as the target sees them: inside a container's PID namespace
they differ from the host's. `NamespaceTids` maps them to host ids through each task's NSpid
line, so stacks join dsmon's per-thread CPU, run-queue wait and state.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from dsmon.features.threads import pool_of
from dsmon.paths import HostPaths
from dsmon.sources import SourceError, list_dir, read_text
from dsmon.stacks.pyspy import ThreadStack

TOP_STACKS = 3          # per thread, in the report
MAX_FRAMES = 24         # innermost frames kept per stack (the rest is interpreter bootstrap)
HOT_FRAMES = 5          # per pool, in the summary
ACTIVE_SHARE = 0.10     # a thread active in at least this share of the samples is active


class NamespaceTids:
    """Kernel thread id inside the target's PID namespace -> host thread id."""

    def __init__(self, paths: HostPaths, pid: int, nspid: list[int] | None):
        self.paths = paths
        self.pid = pid
        self.nested = bool(nspid) and len(nspid) > 1
        self.ns_pid = nspid[-1] if nspid else pid
        self._map: dict[int, int] = {}

    def host_tid(self, ns_tid: int | None) -> int | None:
        if ns_tid is None:
            return None
        if not self.nested:
            return ns_tid
        if ns_tid == self.ns_pid:
            return self.pid
        if ns_tid not in self._map:
            self._refresh()
        return self._map.get(ns_tid)

    def _refresh(self) -> None:
        try:
            tids = list_dir(self.paths.pid(self.pid, "task"))
        except SourceError:
            return
        # Threads that exited leave the map, so a long-lived agent on a churning pool keeps
        # it the size of the live thread list.
        alive = {int(name) for name in tids if name.isdigit()}
        self._map = {ns: host for ns, host in self._map.items() if host in alive}
        known = set(self._map.values())
        for name in tids:
            if not name.isdigit() or int(name) in known:
                continue
            try:
                status = read_text(self.paths.task(self.pid, int(name), "status"), True)
            except SourceError:
                continue
            for line in status.splitlines():
                if line.startswith("NSpid:"):
                    self._map[int(line.split()[-1])] = int(name)
                    break


@dataclass
class ThreadProfile:
    """One Python thread over the window."""
    host_tid: int | None
    ns_tid: int | None
    name: str | None
    samples: int = 0
    active: int = 0
    gil: int = 0
    stacks: Counter = field(default_factory=Counter)          # all samples
    active_stacks: Counter = field(default_factory=Counter)   # samples where it ran

    def top(self, limit: int = TOP_STACKS) -> list[dict]:
        # A thread that ran is described by what it ran; an idle one by where it waits.
        counter = self.active_stacks if self.active_stacks else self.stacks
        total = sum(counter.values())
        return [{"share": round(count / total, 4), "samples": count,
                 "frames": [frame.label() for frame in stack]}
                for stack, count in counter.most_common(limit)]


@dataclass
class StackTick:
    """py-spy samples taken since the previous tick: what the rules engine reads."""
    samples: int
    gil_held: int
    active_threads: int          # summed over the samples
    python_host_tids: frozenset
    holder_tids: Counter         # host tid -> samples holding the GIL


class StackProfile:
    """Accumulates dumps of one target."""

    def __init__(self, tids: NamespaceTids):
        self.tids = tids
        self.started_mono = time.monotonic()
        self.samples = 0
        self.gil_held = 0
        self.threads: dict[int, ThreadProfile] = {}     # keyed by Python's thread id
        self.dump_seconds: list[float] = []
        self._tick = StackTick(0, 0, 0, frozenset(), Counter())

    def add(self, threads: list[ThreadStack], dump_seconds: float | None = None) -> None:
        self.samples += 1
        if dump_seconds is not None:
            self.dump_seconds.append(dump_seconds)
        held = False
        active = 0
        holders: Counter = Counter()
        tids = set(self._tick.python_host_tids)
        for thread in threads:
            profile = self.threads.get(thread.thread_id)
            host_tid = self.tids.host_tid(thread.os_thread_id)
            if profile is None or profile.host_tid != host_tid:
                profile = self.threads[thread.thread_id] = ThreadProfile(
                    host_tid, thread.os_thread_id, thread.name)
            stack = tuple(thread.frames[:MAX_FRAMES])
            profile.samples += 1
            profile.stacks[stack] += 1
            if thread.active:
                active += 1
                profile.active += 1
                profile.active_stacks[stack] += 1
            if thread.owns_gil:
                held = True
                profile.gil += 1
                if host_tid is not None:
                    holders[host_tid] += 1
            if host_tid is not None:
                tids.add(host_tid)
        self.gil_held += held
        previous = self._tick
        self._tick = StackTick(previous.samples + 1, previous.gil_held + held,
                               previous.active_threads + active, frozenset(tids),
                               previous.holder_tids + holders)

    def rotated(self) -> "StackProfile":
        """A new, empty window for the same target; samples not yet taken by a tick move with
        it, so the engine sees every sample exactly once across a rotation."""
        fresh = StackProfile(self.tids)
        # The Python threads known to the features are this window's, not every thread ever
        # seen: per-request threads would otherwise grow the set for as long as the agent runs.
        window_tids = frozenset(p.host_tid for p in self.threads.values()
                                if p.host_tid is not None)
        pending = self._tick
        fresh._tick = StackTick(pending.samples, pending.gil_held, pending.active_threads,
                                window_tids, pending.holder_tids)
        return fresh

    def pools(self, limit: int = HOT_FRAMES) -> list[dict]:
        """Per thread pool (names with digits masked, like the thread table's pools): threads,
        how many were active, GIL and active shares of the pool's samples, and its hot frames
        (the innermost frame of its active samples, the most frequent first)."""
        pools: dict[str, dict] = {}
        for profile in self.threads.values():
            entry = pools.setdefault(pool_of(profile.name or "?"), {
                "threads": 0, "active_threads": 0, "samples": 0, "active": 0, "gil": 0,
                "frames": Counter()})
            entry["threads"] += 1
            entry["active_threads"] += profile.active >= ACTIVE_SHARE * profile.samples
            entry["samples"] += profile.samples
            entry["active"] += profile.active
            entry["gil"] += profile.gil
            for stack, count in profile.active_stacks.items():
                if stack:
                    entry["frames"][stack[0].label()] += count
        rows = []
        for pool, entry in pools.items():
            active = entry["active"]
            rows.append({"pool": pool, "threads": entry["threads"],
                         "active_threads": entry["active_threads"],
                         "active_ratio": round(active / entry["samples"], 4),
                         "gil_ratio": round(entry["gil"] / entry["samples"], 4),
                         "hot_frames": [{"frame": frame, "share": round(count / active, 4)}
                                        for frame, count in entry["frames"].most_common(limit)]})
        rows.sort(key=lambda r: (-r["active_ratio"] * r["threads"], -r["gil_ratio"], r["pool"]))
        return rows

    def folded(self, include_idle: bool = False) -> str:
        """Folded stacks for flame graphs (flamegraph.pl, speedscope, inferno): one line per
        distinct stack, `pool;outermost;...;innermost COUNT`, the most sampled first. Idle
        samples (where threads wait) only when asked: a hot-stack view shows what runs."""
        counts: Counter = Counter()
        for profile in self.threads.values():
            counter = profile.stacks if include_idle else profile.active_stacks
            root = _folded_frame(pool_of(profile.name or "?"))
            for stack, count in counter.items():
                counts[";".join([root] + [_folded_frame(f.label()) for f in reversed(stack)])] \
                    += count
        return "".join(f"{line} {count}\n" for line, count in counts.most_common())

    def take_tick(self) -> StackTick:
        """The samples since the last call (the engine's per-interval view)."""
        tick, self._tick = self._tick, StackTick(0, 0, 0, self._tick.python_host_tids, Counter())
        return tick

    def summary(self, thread_rows: dict[int, dict] | None = None) -> dict:
        """The report's `python` section. `thread_rows` (host tid -> dsmon's thread row) adds
        each thread's measured CPU, so busy threads come first."""
        rows = thread_rows or {}
        threads = []
        for profile in self.threads.values():
            row = rows.get(profile.host_tid) or {}
            threads.append({
                "tid": profile.host_tid, "namespace_tid": profile.ns_tid
                if profile.ns_tid != profile.host_tid else None,
                "name": profile.name, "samples": profile.samples,
                "active_ratio": round(profile.active / profile.samples, 4),
                "gil_ratio": round(profile.gil / profile.samples, 4),
                "cpu_ratio": row.get("cpu_ratio"), "state": row.get("state"),
                "top_stacks": profile.top(),
            })
        threads.sort(key=lambda t: (-(t["cpu_ratio"] or 0), -t["active_ratio"], -t["gil_ratio"],
                                    t["tid"] or 0))
        holders = sorted((t for t in threads if t["gil_ratio"] > 0),
                         key=lambda t: -t["gil_ratio"])
        active = [t for t in threads if t["active_ratio"] >= ACTIVE_SHARE]
        timings = sorted(self.dump_seconds)
        return {
            "samples": self.samples,
            "gil_held_ratio": round(self.gil_held / self.samples, 4) if self.samples else None,
            "gil_holders": [{"tid": t["tid"], "name": t["name"], "gil_ratio": t["gil_ratio"],
                             "top_frame": t["top_stacks"][0]["frames"][0]
                             if t["top_stacks"] and t["top_stacks"][0]["frames"] else None}
                            for t in holders],
            "python_threads": len(threads),
            "active_threads": len(active),
            "idle_threads": len(threads) - len(active),
            "dump_seconds_median": timings[len(timings) // 2] if timings else None,
            "dump_seconds_max": timings[-1] if timings else None,
            "pools": self.pools(),
            "threads": threads,
        }


def _folded_frame(label: str) -> str:
    # The folded format separates frames with ';' and ends a line with a space and a count.
    return label.replace(";", ":").replace("\n", " ")
