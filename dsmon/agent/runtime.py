"""One followed target inside the agent: its sampler, rules state and running totals."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from dsmon.agent.live import LiveHistory
from dsmon.agent.targets import Resolved
from dsmon.features.threads import pool_usage
from dsmon.engine.monitor import RuleMonitor
from dsmon.engine_metrics import EngineScraper, find_endpoint
from dsmon.model import run_collector
from dsmon.paths import HostPaths
from dsmon.sampler import TargetSampler, Tick

log = logging.getLogger("dsmon.agent")


THREAD_PASS_SWEEPS = 8     # at 1 Hz: every thread read at least every ~8 s (<= 8 x max_threads)
THREAD_RELIST_EVERY = 2
THREAD_SWITCHES_EVERY_CAPPED = 10   # status + wchan sweeps when reading slices (else every 5th)
# A named pool keeps its label this long after its last thread left: long enough that a pool
# of short-lived request threads does not flap in and out of "other" between requests, short
# enough that a server whose pools changed gets their names within minutes.
POOL_NAME_IDLE_S = 600.0
OTHER_POOL = "other"


class PoolNames:
    """Which pools of one target are labelled by name: at most `max_pools - 1` at a time, the
    rest are "other". A pool, once named, keeps its name while it has threads; a free place goes
    to the largest pool seen without one. Picking the busiest pools at each scrape instead let
    names come and go (issue 20: 29 names over 8 scrapes with threads renamed at random), and
    every name Prometheus has seen is a series it keeps."""

    def __init__(self):
        self.last_seen: dict[str, float] = {}    # named pool -> when it last had threads

    def assign(self, sizes: dict[str, int], now: float, max_pools: int) -> dict[str, str]:
        """pool -> its label for this sample."""
        for pool in sizes.keys() & self.last_seen.keys():
            self.last_seen[pool] = now
        for pool, seen in list(self.last_seen.items()):
            if now - seen > POOL_NAME_IDLE_S:
                del self.last_seen[pool]
        places = max(0, max_pools - 1 - len(self.last_seen))
        for pool in sorted(sizes.keys() - self.last_seen.keys(), key=lambda p: (-sizes[p], p)):
            if places <= 0:
                break
            self.last_seen[pool] = now
            places -= 1
        return {pool: pool if pool in self.last_seen else OTHER_POOL for pool in sizes}


@dataclass
class Totals:
    """Counters that must not go backwards when threads exit: sums of per-thread increases."""

    run_queue_wait_seconds: float = 0.0
    run_seconds: float = 0.0
    voluntary_switches: float = 0.0
    involuntary_switches: float = 0.0
    _last: dict = field(default_factory=dict)   # (tid, start) -> [wait_ns, run_ns, vol, invol]

    def update(self, sweep) -> None:
        current = {}
        for thread in sweep.threads:
            key = (thread.tid, thread.start_ticks)
            before = self._last.get(key)
            now = [thread.wait_ns, thread.run_ns, thread.voluntary, thread.involuntary]
            if before is not None:
                if now[0] is not None and before[0] is not None:
                    self.run_queue_wait_seconds += max(0, now[0] - before[0]) / 1e9
                    self.run_seconds += max(0, now[1] - before[1]) / 1e9
                if now[2] is not None and before[2] is not None:
                    self.voluntary_switches += max(0, now[2] - before[2])
                    self.involuntary_switches += max(0, now[3] - before[3])
                # switch counts are read every few sweeps: keep the last known ones
                if now[2] is None:
                    now[2], now[3] = before[2], before[3]
            current[key] = now
        if not sweep.truncated:
            self._last = current
        else:
            # A window of the threads was read: keep the others' last values, but only for
            # threads that still exist (else every thread ever seen would stay).
            self._last.update(current)
            if len(self._last) > sweep.listed:     # some of them left (10,000 keys: ~1.5 ms)
                alive = set(sweep.listed_tids)
                for key in [key for key in self._last if key[0] not in alive]:
                    del self._last[key]


class TargetRuntime:
    def __init__(self, resolved: Resolved, paths: HostPaths, rules, max_threads: int,
                 engine_interval_s: float = 10.0, live_points: int = 300, fd_budget=None):
        self.resolved = resolved
        # Above max_threads the agent reads slices sized to cover the list every
        # THREAD_PASS_SWEEPS samples (not max_threads every sample) and lists task/ every
        # THREAD_RELIST_EVERY samples: a bounded cost per tick, every thread read within
        # (RELIST - 1) + PASS samples of appearing.
        self.sampler = TargetSampler(paths, resolved.pid, max_threads=max_threads,
                                     thread_pass_sweeps=THREAD_PASS_SWEEPS,
                                     thread_relist_every=THREAD_RELIST_EVERY,
                                     thread_switches_every_capped=THREAD_SWITCHES_EVERY_CAPPED,
                                     fd_budget=fd_budget)
        self.static = self.sampler.static()          # raises TargetNotFound
        if self.static.identity.start_ticks != resolved.start_ticks:
            self.sampler.close()
            from dsmon.sampler import TargetNotFound
            raise TargetNotFound(f"pid {resolved.pid} was reused before sampling started")
        self.monitor = RuleMonitor(self.static, rules)
        # The engine's own /metrics (vLLM, SGLang, TGI, Triton), scraped on the slow executor;
        # a reading older than three scrape intervals is not used (the scrape job is stuck).
        environment = self.static.environment.data if self.static.environment.ok else None
        endpoint, self.engine_why = find_endpoint(self.monitor.engine_name,
                                                  self.static.identity.cmdline,
                                                  environment if isinstance(environment, dict)
                                                  else None)
        self.engine_scraper = EngineScraper(endpoint) if endpoint is not None else None
        self.engine_batch = None
        self.engine_stale_after_s = 3 * engine_interval_s
        self.totals = Totals()
        self.pool_names = PoolNames()
        self.last_tick: Tick | None = None
        self.previous_tick: Tick | None = None
        self.live = LiveHistory(live_points)   # the live page's recent intervals
        self.numa_memory = self.static.numa_start.data if self.static.numa_start.ok else None
        self.gone = ""
        self.exit_reason = ""              # "oom_killed" or "exited", once gone
        self.exit_counted = False
        # The sample and rules jobs run on different threads; the feature store and the
        # engine's state are shared between them.
        self.lock = threading.Lock()

    @property
    def label(self) -> str:
        return self.resolved.label

    def close(self) -> None:
        self.sampler.close()

    def sample(self, host_batches) -> Tick:
        with self.lock:
            return self._sample(host_batches)

    def _sample(self, host_batches) -> Tick:
        tick = self.sampler.tick(host_batches=host_batches)
        engine = self.engine_batch
        if engine is not None and tick.mono_ts - engine.mono_ts <= self.engine_stale_after_s:
            tick.batches["engine"] = engine
        if tick.target_gone and not self.gone:
            self.gone = tick.target_gone
            self.exit_reason = self._why_it_exited(tick)
        sweep = tick.data("threads")
        if sweep is not None:
            self.totals.update(sweep)
        self.monitor.record(tick, keep_history=False)
        if tick.data("process") is not None:
            self.previous_tick, self.last_tick = self.last_tick, tick
            if self.previous_tick is not None:
                self.live.add(self.previous_tick, tick, self.monitor.last_values)
        return tick

    def _why_it_exited(self, tick) -> str:
        """"oom_killed" when the cgroup's OOM-kill count rose since the last sample. The new
        count goes into the target's features at the time of its death, so the `oom-killed`
        rule (a rise of `oom_kills` in its window) fires for it like for any survivor."""
        before = self.last_tick.data("cgroup") if self.last_tick is not None else None
        after = self.sampler.cgroup_sample()
        if before is not None and after is not None and after.ok and \
                before.oom_kills is not None and after.data.oom_kills is not None and \
                after.data.oom_kills > before.oom_kills:
            self.monitor.record_values(tick.mono_ts, {"oom_kills": after.data.oom_kills})
            return "oom_killed"
        return "exited"

    def scrape_engine(self) -> None:
        """One scrape of the engine's metrics endpoint (HTTP, short timeout; slow executor).
        Unreachable is the batch's status and reason: the engine features go absent."""
        if self.engine_scraper is None or self.gone:
            return
        before = self.engine_batch
        batch = run_collector("engine", self.engine_scraper.collect)
        self.engine_batch = batch
        if before is None or before.ok != batch.ok:   # said once per change, not per scrape
            if batch.ok:
                log.info("target %s: reading %s metrics from %s", self.label,
                         self.monitor.engine_name, batch.data.url)
            else:
                log.info("target %s: %s; engine rules are quiet, host rules go on", self.label,
                         batch.error)

    def refresh_numa(self) -> None:
        batch = self.sampler.numa()
        if batch.ok:
            with self.lock:
                self.numa_memory = batch.data
                self.monitor.extractor.set_numa_memory(batch.data)

    def evaluate(self, now: float, wall: float):
        with self.lock:
            return self.monitor.evaluate(now, wall)

    def pools(self, max_pools: int) -> list[tuple[str, int, float | None]]:
        """(pool, threads, CPU cores over the last interval), the busiest first, "other" last;
        which pools are named is `PoolNames`' choice, so the label set stays bounded and
        stable."""
        tick, before = self.last_tick, self.previous_tick
        sweep = tick.data("threads") if tick else None
        if sweep is None:
            return []
        sweep_before = before.data("threads") if before is not None else None
        span = tick.mono_ts - before.mono_ts if sweep_before is not None else 0.0
        # A label must come from a bounded set: per-request thread names ("short_4660") would
        # each become a series, so the masked name is the pool.
        pools = pool_usage(sweep_before, sweep, self.static.hz, span)
        labels = self.pool_names.assign({pool: count for pool, (count, _) in pools.items()},
                                        tick.mono_ts, max_pools)
        merged: dict[str, list] = {}
        for pool, (count, cores) in pools.items():
            entry = merged.setdefault(labels[pool], [0, 0.0])
            entry[0] += count
            entry[1] += cores or 0.0
        rows = [(label, count, cores if span > 0 else None)
                for label, (count, cores) in merged.items()]
        rows.sort(key=lambda r: (r[0] == OTHER_POOL, -(r[2] or 0), -r[1]))
        return rows
