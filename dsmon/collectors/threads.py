"""Per-thread sampling: state, CPU time, last CPU, run-queue wait, context switches, wchan.

This is dsmon's hot path: an inference server has hundreds to thousands of threads and the
agent samples them every second. Measured on the 2-core dev VM with a 512-thread target,
open+read+close of stat and schedstat costs ~17 ms of CPU per sweep, while `pread` on file
descriptors kept open across sweeps costs ~4 ms. So descriptors are cached per thread
(bounded by a budget under RLIMIT_NOFILE) and re-read from offset 0; a thread's descriptors
are dropped when it vanishes (the kernel answers ESRCH, or the tid leaves task/).

Per 512-thread sweep there, pread of `stat` costs ~2.9 ms, `schedstat` ~0.7 ms, and `status`
(the only per-thread source of the voluntary/involuntary switch split) ~4.7 ms: the kernel
formats ~60 lines for it. So the switch rate comes from schedstat's timeslice count (how often
the thread was put on a CPU) every sweep, and `status` is read every `switches_every` sweeps
(and whenever the caller asks) for the voluntary/involuntary split. On those sweeps `wchan`
is also read for sleeping threads (a thread waiting on a FUSE or network filesystem sleeps in S
state, invisible to D-state counts and PSI); for D-state threads it is read every sweep.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field

from dsmon.collectors.process import decode_comm
from dsmon.fdbudget import FdBudget
from dsmon.paths import HostPaths
from dsmon.sources import Denied, Gone, Missing, list_dir, translate

STAT, SCHEDSTAT, STATUS, WCHAN = 0, 1, 2, 3
FILES = ("stat", "schedstat", "status", "wchan")
_VOLUNTARY = b"\nvoluntary_ctxt_switches:"
_INVOLUNTARY = b"\nnonvoluntary_ctxt_switches:"

NO_SCHEDSTAT_HINT = ("this kernel reports no per-thread run-queue wait: it needs CONFIG_SCHED_INFO "
                     "(CONFIG_SCHEDSTATS or CONFIG_TASK_DELAY_ACCT); on kernels >= 5.14 enable it "
                     "with `sysctl kernel.sched_schedstats=1` or boot with `delayacct`")


@dataclass(slots=True)
class ThreadSample:
    tid: int
    name: str
    state: str
    utime: int            # clock ticks
    stime: int
    processor: int        # CPU it last ran on
    start_ticks: int
    run_ns: int | None    # time on CPU (schedstat)
    wait_ns: int | None   # time runnable but waiting on a run queue (schedstat)
    timeslices: int | None
    voluntary: int | None
    involuntary: int | None
    wchan: str | None = None


@dataclass
class ThreadSweep:
    threads: list[ThreadSample]
    listed: int                 # threads in task/ at the start of the sweep
    truncated: bool = False
    vanished: int = 0           # listed, but gone before their files could be read
    switches_read: bool = True  # voluntary/involuntary counts were read in this sweep
    listed_tids: list[int] = field(default_factory=list)   # every tid in task/ (read or not)
    elapsed_s: float = 0.0
    # Coverage when sweeps are truncated (rotating slices): the longest any listed thread had
    # gone unread at the end of this sweep (a thread never read counts from when it was first
    # listed; 0 when every thread was read), and how long the last complete pass over the
    # thread list took (one sweep when nothing is truncated; None until a pass completes).
    oldest_read_age_s: float = 0.0
    full_pass_s: float | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def parse_thread_stat(raw: bytes):
    """(name, state, utime, stime, processor, start_ticks) from a task stat line."""
    open_at = raw.find(b"(")
    close_at = raw.rfind(b")")
    fields = raw[close_at + 2:].split()
    return (decode_comm(raw[open_at + 1:close_at]), fields[0].decode("ascii", "replace"),
            int(fields[11]), int(fields[12]), int(fields[36]) if len(fields) > 36 else -1,
            int(fields[19]))


def parse_schedstat(raw: bytes) -> tuple[int, int, int]:
    run, wait, slices = raw.split()[:3]
    return int(run), int(wait), int(slices)


def parse_switches(raw: bytes) -> tuple[int | None, int | None]:
    def grab(marker: bytes) -> int | None:
        at = raw.find(marker)
        if at < 0:
            return None
        end = raw.find(b"\n", at + len(marker))
        return int(raw[at + len(marker):end if end > 0 else None])
    return grab(_VOLUNTARY), grab(_INVOLUNTARY)


class ThreadSampler:
    """Samples every thread of one process; bounded in threads and in time per sweep.

    Above `max_threads`, each sweep reads a rotating window of the thread list, so every
    thread is seen within a few sweeps while each sweep costs the same; the sweep says so.
    With `pass_sweeps` (the agent), the window is only as large as it must be to cover the
    whole list in that many sweeps: max(max_threads / 2, threads / pass_sweeps), at most
    max_threads. Measured at 10,000 threads: reading 2,048 a sweep cost ~59 ms of CPU per
    sweep, 1,251 (a pass of 8 sweeps) ~35 ms.
    """

    name = "threads"

    def __init__(self, paths: HostPaths, pid: int, max_threads: int = 2048,
                 time_budget_s: float = 0.5, fd_budget: int | FdBudget | None = None,
                 switches_every: int = 5, pass_sweeps: int | None = None,
                 relist_every: int = 1, switches_every_capped: int | None = None):
        self.paths = paths
        self.pid = pid
        self.max_threads = max_threads
        self.time_budget_s = time_budget_s
        # An agent passes its one budget, shared by every target; alone, a sampler has its own.
        self.budget = fd_budget if isinstance(fd_budget, FdBudget) else FdBudget(fd_budget)
        self._fds: dict[int, list[int]] = {}
        self._open_fds = 0
        self.fallback_reads = 0      # in the last sweep: reads past the budget (open/read/close)
        self._rotation = 0
        self._sweeps = 0
        self._read_at: dict[int, float] = {}   # tid -> when last read (or first listed)
        self._pass_started: float | None = None
        self._pass_read = 0
        self._full_pass_s: float | None = None
        self.switches_every = max(1, switches_every)
        self.pass_sweeps = pass_sweeps
        # Above max_threads, list task/ every `relist_every` sweeps (1: every sweep).
        self.relist_every = max(1, relist_every)
        # Reading slices (relist_every > 1 and above max_threads), `status` and `wchan` come
        # from open+read+close (the descriptor budget goes to stat and schedstat): ~40 us a
        # thread at 10,000 threads, so they may be read less often there.
        self.switches_every_capped = max(1, switches_every_capped or switches_every)
        self._listing: list[int] | None = None
        self._listing_set: set[int] | None = None
        self._since_listing = 0
        self._was_capped = False        # the last sweep read a slice (above max_threads)
        self._schedstat_missing = False
        self._task_dir = paths.pid(pid, "task")

    def close(self) -> None:
        for fds in self._fds.values():
            for fd in fds:
                if fd >= 0:
                    os.close(fd)
        self._fds.clear()
        self.budget.give_back(self._open_fds)
        self._open_fds = 0

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def sample(self, read_switches: bool | None = None) -> ThreadSweep:
        """One sweep. `read_switches` forces (or skips) the costly status read for this sweep."""
        started = time.perf_counter()
        if read_switches is None:
            every = self.switches_every_capped if self._was_capped else self.switches_every
            read_switches = self._sweeps % every == 0
        self._sweeps += 1
        self.fallback_reads = 0
        if self._listing is not None and self._since_listing < self.relist_every:
            # Reading slices: the listing of the previous sweep (listing task/ costs ~1 us a
            # thread in the kernel, ~10 ms at 10,000); threads that left since are found
            # gone when read, new ones are picked up at the next listing.
            tids = self._listing
            self._since_listing += 1
            current = self._listing_set
        else:
            names = list_dir(self._task_dir, process_file=True)
            # The kernel lists task/ in thread-group order; no sort needed for a stable
            # rotation (sorting 10,000 tids costs ~1.3 ms a sweep).
            try:
                tids = list(map(int, names))
            except ValueError:
                tids = [int(name) for name in names if name.isdigit()]
            current = self._drop_vanished(tids)
            read_at = self._read_at
            if read_at.keys() != current:
                for tid in current - read_at.keys():   # new threads count from first listing
                    read_at[tid] = started
                for tid in read_at.keys() - current:
                    del read_at[tid]
            self._listing = self._listing_set = None
            self._since_listing = 1
        all_tids = tids
        listed = len(tids)
        read_at = self._read_at
        # One rotating offset serves both limits (thread count and time): each sweep starts
        # where the last truncated one stopped, so every thread is read within a few sweeps.
        start = self._rotation % listed if listed else 0
        if start:
            tids = tids[start:] + tids[:start]
        capped = listed > self.max_threads
        if capped:
            tids = tids[:self.slice_size(listed)]

        threads: list[ThreadSample] = []
        vanished = 0
        attempted = 0
        timed_out = False
        deadline = started + self.time_budget_s
        for index, tid in enumerate(tids):
            if index % 64 == 63 and time.perf_counter() > deadline:
                timed_out = True
                break
            attempted += 1
            try:
                sample = self._read_thread(tid, read_switches)
            except Gone:
                vanished += 1
                self._forget(tid)
                continue
            threads.append(sample)
            read_at[tid] = started
        truncated = capped or timed_out
        self._rotation = start + attempted if truncated else 0
        self._was_capped = capped
        if capped and self.relist_every > 1 and self._listing is None:
            self._listing, self._listing_set = all_tids, current
        ended = time.perf_counter()
        if not truncated:
            self._pass_started, self._pass_read = None, 0
            self._full_pass_s = ended - started
            oldest_age = 0.0
        else:
            if self._pass_started is None:
                self._pass_started = started
            self._pass_read += attempted
            if self._pass_read >= listed:        # the slices have covered the whole list
                self._full_pass_s = ended - self._pass_started
                self._pass_started, self._pass_read = None, 0
            oldest_age = ended - min(read_at.values()) if read_at else 0.0

        sweep = ThreadSweep(threads, listed, truncated, vanished, switches_read=read_switches,
                            listed_tids=all_tids, oldest_read_age_s=oldest_age,
                            full_pass_s=self._full_pass_s)
        if truncated:
            sweep.notes.append(
                f"sampled {len(threads)} of {listed} threads this sweep (limit "
                f"{self.slice_size(listed) if capped else self.max_threads} "
                f"threads, {self.time_budget_s * 1000:.0f} ms); the window rotates each sweep")
        if self._schedstat_missing:
            sweep.unavailable["run_queue_wait"] = NO_SCHEDSTAT_HINT
        elif threads and _schedstat_all_zero(threads):
            sweep.unavailable["run_queue_wait"] = (
                "schedstat reads all zero while threads used CPU: sched_info is off. "
                + NO_SCHEDSTAT_HINT)
            for thread in threads:
                thread.run_ns = thread.wait_ns = thread.timeslices = None
        self.budget.count_fallback(self.fallback_reads)
        sweep.elapsed_s = time.perf_counter() - started
        return sweep

    def slice_size(self, listed: int) -> int:
        """Threads read per sweep when the list is longer than max_threads."""
        if not self.pass_sweeps:
            return self.max_threads
        needed = -(-listed // self.pass_sweeps)
        return max(1, min(self.max_threads, max(self.max_threads // 2, needed)))

    def _drop_vanished(self, listed_tids: list[int]) -> set[int]:
        """Close the descriptors of threads that left task/ (the full listing, also when only
        a window of it is read this sweep); returns the listed tids as a set."""
        current = set(listed_tids)
        for tid in self._fds.keys() - current:
            self._forget(tid)
        return current

    @property
    def fd_budget(self) -> int:
        return self.budget.capacity

    def _forget(self, tid: int) -> None:
        for fd in self._fds.pop(tid, ()):
            if fd >= 0:
                os.close(fd)
                self._open_fds -= 1
                self.budget.give_back()

    def _open(self, tid: int, which: int) -> int:
        path = f"{self._task_dir}/{tid}/{FILES[which]}"
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise translate(exc, path, process_file=True) from None

    def _read(self, tid: int, which: int) -> bytes:
        fds = self._fds.get(tid)
        if fds is None:
            fds = self._fds[tid] = [-1, -1, -1, -1]
        fd = fds[which]
        if fd < 0:
            # stat and schedstat are read every sweep and may use the whole budget; status and
            # wchan (every few sweeps) only its first half, so they never crowd the others out.
            if not self.budget.take(1.0 if which in (STAT, SCHEDSTAT) else 0.5):
                self.fallback_reads += 1
                return self._read_once(tid, which)
            try:
                fd = fds[which] = self._open(tid, which)
            except BaseException:
                self.budget.give_back()
                raise
            self._open_fds += 1
        try:
            return os.pread(fd, 4096, 0)
        except OSError as exc:
            if exc.errno == errno.ESRCH or exc.errno == errno.ENOENT:
                raise Gone(f"{self._task_dir}/{tid}", "thread exited") from None
            raise translate(exc, f"{self._task_dir}/{tid}/{FILES[which]}", True) from None

    def _read_once(self, tid: int, which: int) -> bytes:
        """Over the descriptor budget: open, read, close."""
        fd = self._open(tid, which)
        try:
            return os.read(fd, 4096)
        except OSError as exc:
            raise translate(exc, f"{self._task_dir}/{tid}", True) from None
        finally:
            os.close(fd)

    def _read_thread(self, tid: int, read_switches: bool) -> ThreadSample:
        raw = self._read(tid, STAT)
        if not raw:
            raise Gone(f"{self._task_dir}/{tid}", "thread exited")
        name, state, utime, stime, processor, start_ticks = parse_thread_stat(raw)
        run = wait = slices = None
        if not self._schedstat_missing:
            try:
                run, wait, slices = parse_schedstat(self._read(tid, SCHEDSTAT))
            except Missing:
                self._schedstat_missing = True  # the thread is there, the file is not
                self._fds.get(tid, [-1, -1, -1, -1])[SCHEDSTAT] = -1
        voluntary = involuntary = None
        if read_switches:
            voluntary, involuntary = parse_switches(self._read(tid, STATUS))
        wchan = None
        if state == "D" or (read_switches and state == "S"):
            wchan = self._wchan(tid)
        return ThreadSample(tid, name, state, utime, stime, processor, start_ticks,
                            run, wait, slices, voluntary, involuntary, wchan)

    def _wchan(self, tid: int) -> str | None:
        """The kernel function a sleeping thread waits in; None when hidden or unknown."""
        try:
            value = self._read(tid, WCHAN).decode("ascii", "replace").strip()
        except (Missing, Denied):
            return None
        return value if value and value != "0" else None


def _schedstat_all_zero(threads: list[ThreadSample]) -> bool:
    used_cpu = any(t.utime + t.stime > 0 for t in threads)
    return used_cpu and all(not t.run_ns and not t.wait_ns for t in threads if t.run_ns is not None)
