"""The agent's scheduling: a table of periodic jobs on APScheduler 3.x, each run recorded.

A job is a `Job(id, run, every, executor)`: `every(config)` is its interval under a config, so
a reload that changes an interval reschedules the job (issue 20: a new `interval` was logged
as reloaded while sampling kept the old cadence). Every job is `max_instances=1,
coalesce=True`: a hung run stalls only itself. The executors' threads are daemon threads:
concurrent.futures joins its workers at exit, so one stuck on a hung /proc read kept the agent
from stopping; here it is abandoned (the stop path says so in the log).

`JobRecorder.run(name, work)` records each run's start, end, outcome and duration; a run still
going after its job's interval counts as failed (`overdue`), which is how a stuck sampler
shows on /metrics while its thread cannot report anything itself.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from apscheduler.events import EVENT_JOB_MAX_INSTANCES
from apscheduler.executors.pool import BasePoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger("dsmon.agent")


@dataclass(frozen=True)
class Job:
    id: str
    run: Callable[[], None]
    every: Callable[[object], float]      # config -> seconds
    executor: str = "default"             # "slow": jobs that may take seconds (walks, HTTP)


@dataclass
class JobHealth:
    last_ok: bool = False
    started: float | None = None     # monotonic, of the run in progress or the last one
    last_end: float | None = None
    duration_s: float = 0.0
    error: str = ""

    def running_for(self, now: float) -> float | None:
        """Seconds the current run has been going, None when none is."""
        if self.started is None or (self.last_end is not None and self.last_end >= self.started):
            return None
        return now - self.started


class JobRecorder:
    def __init__(self):
        self.health: dict[str, JobHealth] = {}

    def run(self, name: str, work) -> bool:
        health = self.health.setdefault(name, JobHealth())
        if health.running_for(time.monotonic()) is not None:
            # A run outside the schedule (a reload's) while the scheduled one still goes on:
            # its record must stay the stuck run's, or the stall would be hidden.
            try:
                work()
                return True
            except Exception:  # noqa: BLE001
                log.exception("job %s failed", name)
                return False
        started = time.perf_counter()
        health.started = time.monotonic()
        try:
            work()
            health.last_ok, health.error = True, ""
        except Exception as exc:  # noqa: BLE001 - a job failure is reported, never fatal
            health.last_ok, health.error = False, f"{type(exc).__name__}: {exc}"
            log.exception("job %s failed", name)
        health.duration_s = time.perf_counter() - started
        health.last_end = time.monotonic()
        return health.last_ok


class DaemonThreadPool:
    """The part of concurrent.futures.ThreadPoolExecutor that APScheduler uses, on daemon
    threads that are not joined at exit."""

    def __init__(self, workers: int, name: str):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._busy: dict[str, str] = {}       # worker name -> what it runs
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True)
                         for n in range(workers)]
        self._started = False

    def start(self) -> None:
        """When the scheduler starts, not when the agent is built."""
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()

    def submit(self, fn, *args, **kwargs) -> Future:
        self.start()
        future: Future = Future()
        self._queue.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            me = threading.current_thread().name
            job = args[0] if args else None
            self._busy[me] = getattr(job, "id", None) or getattr(fn, "__name__", "?")
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to APScheduler's callback
                future.set_exception(exc)
            finally:
                self._busy.pop(me, None)

    def shutdown(self, wait: bool = True) -> None:
        for _ in self._threads:
            self._queue.put(None)
        if wait and self._started:
            for thread in self._threads:
                thread.join()

    def busy(self) -> list[str]:
        """The jobs running now, as "worker: job id"."""
        return [f"{worker}: {job}" for worker, job in sorted(self._busy.items())]


class DaemonExecutor(BasePoolExecutor):
    def __init__(self, workers: int, name: str):
        super().__init__(DaemonThreadPool(workers, name))

    @property
    def pool(self) -> DaemonThreadPool:
        return self._pool


class JobScheduler:
    """Runs a table of `Job`s at their intervals; `reschedule(config)` applies new ones."""

    def __init__(self, jobs: list[Job], config, default_workers: int):
        self.jobs = {job.id: job for job in jobs}
        self.intervals = {job.id: job.every(config) for job in jobs}
        self._executors = {"default": DaemonExecutor(default_workers, "dsmon-job"),
                           "slow": DaemonExecutor(2, "dsmon-slow")}
        self._scheduler = BackgroundScheduler(
            executors=self._executors,
            job_defaults={"coalesce": True, "max_instances": 1,
                          "misfire_grace_time": max(1, int(config.interval_s))})
        for job in jobs:
            self._scheduler.add_job(job.run, "interval", seconds=self.intervals[job.id],
                                    id=job.id, executor=job.executor)
        self._scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES)

    @property
    def running(self) -> bool:
        return self._scheduler.running

    def start(self) -> None:
        for executor in self._executors.values():
            executor.pool.start()     # every thread now: the agent's thread count is flat
        self._scheduler.start()

    def submit_once(self, func, args, job_id: str) -> None:
        """Run `func(*args)` once now on the slow executor (replacing one queued under id)."""
        self._scheduler.add_job(func, args=args, executor="slow", id=job_id,
                                replace_existing=True)

    def reschedule(self, config) -> list[str]:
        """Apply the intervals of `config`; the ids of the jobs whose interval changed."""
        changed = []
        for job_id, job in self.jobs.items():
            seconds = job.every(config)
            if seconds != self.intervals[job_id]:
                self._scheduler.reschedule_job(job_id, trigger="interval", seconds=seconds)
                self.intervals[job_id] = seconds
                changed.append(job_id)
        return changed

    def shutdown(self) -> list[str]:
        """Stop scheduling and let idle workers go; the jobs still running (abandoned)."""
        self._scheduler.shutdown(wait=False)
        stuck = []
        for executor in self._executors.values():
            stuck += executor.pool.busy()
        return stuck

    def _skipped(self, event) -> None:
        # A stable message, so the log's repeat filter folds it to one line a minute.
        log.warning("job %s is stuck: its previous run has not finished", event.job_id)
