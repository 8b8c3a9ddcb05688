"""`dsmon agent`: sample the host and its inference processes forever, serve /metrics.

Jobs (APScheduler 3.x, each `max_instances=1, coalesce=True`):
- `host:NAME` every interval, one job per host collector (cpu, memory, vmstat, pressure), so
              a collector that hangs stalls only itself and its success drops to 0.
- `sample`    every interval: each target (process, threads, cgroup) with the latest host
              data; publishes metrics; the systemd watchdog is fed from here after a good
              cycle, never from a timer.
- `rules`     every rules interval: evaluates each target's rules at that time.
- `discover`  (slow executor) finds targets, follows restarts under the same label.
- `numa`      (slow executor) re-reads numa_maps, which walks page tables.
- `engine`    (slow executor) scrapes the engines' own /metrics (vLLM, SGLang, TGI, Triton).
A hung job stalls only itself; a scrape serves the last published families.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass

from apscheduler.events import EVENT_JOB_MAX_INSTANCES
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from dsmon import __version__
from dsmon.agent.config import AgentConfig, listen_address
from dsmon.agent.live import live_points
from dsmon.agent.notify import Notifier
from dsmon.agent.render import (render_exits, render_findings, render_gpus, render_host,
                                render_target)
from dsmon.gpu.sample import GpuCollector
from dsmon.agent.runtime import TargetRuntime
from dsmon.agent.stacks import AgentStacks
from dsmon.agent.targets import TargetResolver
from dsmon.collectors.topology import TopologyCollector
from dsmon.engine.monitor import HostRuleMonitor
from dsmon.model import Status, run_collector
from dsmon.paths import HostPaths
from dsmon.sampler import HostSampler, TargetNotFound
from dsmon.sinks.prometheus import Exposition, MetricsBuilder
from dsmon.stacks.capture import CaptureStore

log = logging.getLogger("dsmon.agent")

FIRST_SAMPLE_TIMEOUT_S = 2.0
# A target that was OOM-killed is gone, so no rule can fire on it any more: the agent itself
# reports `oom-killed` for its label this long (like the rule's keep_firing_for).
OOM_KILLED_HOLD_S = 60.0


@dataclass
class JobHealth:
    last_ok: bool = False
    last_end: float | None = None
    duration_s: float = 0.0
    error: str = ""


class Agent:
    def __init__(self, config: AgentConfig, rules, host_collectors=None, notifier=None,
                 nvml=None):
        self.config = config
        self.rules = rules
        self.paths = HostPaths(config.procfs, config.sysfs, config.rootfs)
        self.host = HostSampler(self.paths)
        if host_collectors is not None:
            self.host.collectors = list(host_collectors)
        self.resolver = TargetResolver(self.paths, config.targets)
        # NVML's slow questions (affinity, ECC, PCIe) run on the slow executor.
        self.gpu = GpuCollector(self.paths, nvml, slow_interval_s=config.slow_interval_s,
                                slow_inline=False)
        self.gpu_snapshot = None
        self.latest_gpu = None
        self.host_monitor = HostRuleMonitor(rules)    # the host's rules: GPU health
        self.notifier = notifier or Notifier()
        self.targets: dict[str, TargetRuntime] = {}
        self.lock = threading.RLock()
        self.host_batches: dict = {}
        self.latest_host: dict = {}
        self.sample_lock = threading.Lock()
        self.topology = None
        self.health: dict[str, JobHealth] = {}
        self.collector_health: dict[str, tuple[bool, float, float]] = {}
        self.collector_started: dict[str, float] = {}
        self.dropped_series = 0
        self.fired: dict[tuple[str, str, str], int] = {}      # (rule_id, severity, target)
        self.exits: dict[tuple[str, str], int] = {}           # (target, reason)
        self.oom_killed: dict[str, float] = {}                # target -> when (monotonic)
        self.captures = CaptureStore(config.captures)
        self.stacks = AgentStacks(config.stacks, self.paths, config.captures.pyspy_path)
        self.stopping = threading.Event()
        self.exposition = Exposition(self._self_metrics)
        self.scheduler: BackgroundScheduler | None = None
        self.server = None
        self.started_mono = time.monotonic()

    # -- jobs -------------------------------------------------------------------------------

    def _run(self, name: str, work) -> bool:
        started = time.perf_counter()
        health = self.health.setdefault(name, JobHealth())
        try:
            work()
            health.last_ok, health.error = True, ""
        except Exception as exc:  # noqa: BLE001 - a job failure is reported, never fatal
            health.last_ok, health.error = False, f"{type(exc).__name__}: {exc}"
            log.exception("job %s failed", name)
        health.duration_s = time.perf_counter() - started
        health.last_end = time.monotonic()
        return health.last_ok

    def discover(self) -> None:
        self._run("discover", self._discover)

    def _discover(self) -> None:
        if self.topology is None:
            batch = run_collector("topology", TopologyCollector(self.paths).collect)
            self.topology = batch.data if batch.ok else None
        snapshot = self.gpu_snapshot
        gpu_pids = {proc.pid for proc in snapshot.processes} if snapshot is not None else ()
        found = self.resolver.resolve(gpu_pids)
        with self.lock:
            wanted = {r.label: r for r in found}
            for label, runtime in list(self.targets.items()):
                resolved = wanted.get(label)
                if resolved is None or (resolved.pid, resolved.start_ticks) != \
                        (runtime.resolved.pid, runtime.resolved.start_ticks) or runtime.gone:
                    if resolved is None or runtime.gone:
                        log.info("target %s (pid %d) is gone: %s", label, runtime.resolved.pid,
                                 runtime.gone or "no longer found")
                    runtime.close()
                    del self.targets[label]
            for label, resolved in wanted.items():
                if label in self.targets:
                    continue
                try:
                    self.targets[label] = TargetRuntime(
                        resolved, self.paths, self.rules, self.config.max_threads,
                        self.config.engine_interval_s, live_points(self.config.interval_s))
                    log.info("following target %s: pid %d (%s)", label, resolved.pid,
                             resolved.spec.describe())
                except TargetNotFound as exc:
                    log.info("target %s vanished before sampling: %s", label, exc)
        self.publish()   # a target that left or arrived shows at once, not a sample later

    def collect_host(self, collector) -> None:
        self.collector_started[collector.name] = time.monotonic()
        batch = run_collector(collector.name, collector.collect)
        self.collector_health[collector.name] = (
            batch.status in (Status.OK, Status.PARTIAL, Status.NO_DATA), batch.duration_s,
            time.monotonic())
        self.latest_host[collector.name] = batch     # one reference swap per collector

    def collect_gpus(self) -> None:
        with self.lock:
            self.gpu.set_targets([r.resolved.pid for r in self.targets.values() if not r.gone])
        self.collector_started["gpu"] = time.monotonic()
        batch = run_collector("gpu", self.gpu.collect)
        # No driver is "no data" (said once in the log), not a failing collector.
        self.collector_health["gpu"] = (batch.status in (Status.OK, Status.PARTIAL,
                                                         Status.NO_DATA),
                                        batch.duration_s, time.monotonic())
        self.gpu_snapshot = batch.data if batch.ok else None
        self.latest_gpu = batch
        if self.gpu_snapshot is not None:
            with self.lock:
                changed = self.host_monitor.observe_gpu(self.gpu_snapshot, time.monotonic(),
                                                        time.time())
                self._count_transitions(changed, "host")

    def collect_gpus_slow(self) -> None:
        # Without a driver this is "no data" (the fast job logs it once), not a job failure.
        self._run("gpu_slow", lambda: run_collector("gpu_slow", self.gpu.collect_slow))

    def sample(self) -> None:
        ok = self._run("sample", self._sample)
        if ok:
            self.notifier.watchdog()

    def _sample(self) -> None:
        with self.sample_lock:   # a reload may sample outside the scheduler
            self._sample_targets()

    def _sample_targets(self) -> None:
        batches = dict(self.latest_host)
        self.host_batches = {name: batch.data for name, batch in batches.items() if batch.ok}
        if self.latest_gpu is not None:
            batches["gpu"] = self.latest_gpu   # the GPU rules read the target's GPU memory
        with self.lock:
            runtimes = list(self.targets.values())
        self.stacks.follow(runtimes)
        # Per-target collectors: healthy when they worked for every target this cycle.
        cycle: dict[str, tuple[bool, float]] = {}
        for runtime in runtimes:
            if runtime.gone:
                continue
            if self.gpu_snapshot is not None:
                with runtime.lock:
                    runtime.monitor.follow_gpu_locality(self.gpu_snapshot, self.gpu.topology)
            tick = runtime.sample({**batches, **self.stacks.batches(runtime)})
            for name in ("process", "threads", "cgroup"):
                batch = tick.batches.get(name)
                if batch is not None:
                    ok = batch.ok or batch.status is Status.NO_DATA or bool(tick.target_gone)
                    was_ok, longest = cycle.get(name, (True, 0.0))
                    cycle[name] = (was_ok and ok, max(longest, batch.duration_s))
        for name, (ok, longest) in cycle.items():
            self.collector_health[name] = (ok, longest, time.monotonic())
        for runtime in runtimes:
            if runtime.gone and runtime.exit_reason and not runtime.exit_counted:
                runtime.exit_counted = True
                key = (runtime.label, runtime.exit_reason)
                self.exits[key] = self.exits.get(key, 0) + 1
                if runtime.exit_reason == "oom_killed":
                    self.oom_killed[runtime.label] = time.monotonic()
                    fired = ("oom-killed", "critical", runtime.label)
                    self.fired[fired] = self.fired.get(fired, 0) + 1
                    log.warning("target %s (pid %d) was killed by the OOM killer in its cgroup",
                                runtime.label, runtime.resolved.pid)
                else:
                    log.info("target %s (pid %d) exited: %s", runtime.label,
                             runtime.resolved.pid, runtime.gone)
        self.publish()

    def evaluate_rules(self) -> None:
        self._run("rules", self._evaluate_rules)

    def _evaluate_rules(self) -> None:
        now, wall = time.monotonic(), time.time()
        with self.lock:
            runtimes = list(self.targets.values())
        changed = False
        for runtime in runtimes:
            transitions = runtime.evaluate(now, wall)
            changed |= bool(transitions)
            for finding in self._count_transitions(transitions, runtime.label):
                if finding.capture == "stack" and self.captures.should_capture(runtime.label):
                    self._schedule_capture(runtime, finding)
        if changed:   # otherwise the sample job's publication already says it all
            self.publish()

    def _count_transitions(self, transitions, label: str) -> list:
        """Count and log state changes; returns the findings that started firing."""
        fired = []
        for finding, state in transitions:
            if state == "firing":
                key = (finding.rule_id, finding.severity, label)
                self.fired[key] = self.fired.get(key, 0) + 1
                log.warning("finding %s (%s) firing on %s: %s", finding.rule_id,
                            finding.severity, label, finding.summary)
                fired.append(finding)
            elif state == "resolved":
                log.info("finding %s resolved on %s", finding.rule_id, label)
        return fired

    def _schedule_capture(self, runtime, finding) -> None:
        """py-spy runs on the slow executor: a slow dump must not hold back the rules."""
        args = (runtime.label, runtime.resolved.pid, finding.rule_id, finding.summary,
                {"severity": finding.severity,
                 "evidence": [e.as_dict()["text"] for e in finding.evidence
                              if e.met and not e.negated]})
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.add_job(self._capture, args=args, executor="slow",
                                   id=f"capture:{runtime.label}", replace_existing=True)
        else:
            self._capture(*args)

    def _capture(self, target, pid, rule_id, summary, context) -> None:
        self._run("capture", lambda: self.captures.capture(target, pid, rule_id, summary, context))

    def refresh_numa(self) -> None:
        def work():
            with self.lock:
                runtimes = list(self.targets.values())
            for runtime in runtimes:
                if not runtime.gone:
                    runtime.refresh_numa()
        self._run("numa", work)

    def scrape_engines(self) -> None:
        """The engines' own /metrics, one target after the other (each with a short timeout)."""
        def work():
            with self.lock:
                runtimes = list(self.targets.values())
            for runtime in runtimes:
                runtime.scrape_engine()
        self._run("engine", work)

    # -- exposition -------------------------------------------------------------------------

    def publish(self) -> None:
        with self.lock:
            out = MetricsBuilder(self.config.max_series)
            render_host(out, self.host_batches, self.topology)
            active: set[tuple[str, str, str]] = set()
            for runtime in self.targets.values():
                with runtime.lock:
                    render_target(out, runtime, self.config.max_pools)
                    active |= {(f.rule_id, f.severity, runtime.label)
                               for f in runtime.monitor.engine.current() if f.state == "firing"}
            now = time.monotonic()
            for label, when in list(self.oom_killed.items()):
                if now - when <= OOM_KILLED_HOLD_S:
                    active.add(("oom-killed", "critical", label))
                else:
                    del self.oom_killed[label]
            snapshot = self.gpu_snapshot
            if snapshot is not None:
                render_gpus(out, snapshot, {r.resolved.pid: r.label for r in self.targets.values()})
            active |= {(f.rule_id, f.severity, "host")
                       for f in self.host_monitor.engine.current() if f.state == "firing"}
            render_findings(out, active, self.fired)
            render_exits(out, self.exits)
            self.dropped_series += out.dropped
            if out.dropped:
                log.warning("series cap %d reached: %d series dropped", out.max_series,
                            out.dropped)
            self.exposition.publish(out.build())

    def _self_metrics(self, now: float):
        out = MetricsBuilder(10_000)
        out.gauge("dsmon_build_info", "dsmon's version.", 1, version=__version__)
        stale_after = 3 * self.config.interval_s
        finished = dict(self.collector_health)
        started = dict(self.collector_started)
        for name in sorted(set(finished) | set(started)):
            ok, duration, ended = finished.get(name, (False, 0.0, None))
            began = started.get(name)
            if began is not None and (ended is None or ended < began):
                # A run in progress: fine while short; past `stale_after` it is a hang, and
                # its duration so far is what the operator needs to see.
                duration = now - began
                success = ok and duration <= stale_after
            else:
                success = ok and ended is not None and now - ended <= stale_after
            out.gauge("dsmon_collector_success", "1 when the collector's last run succeeded "
                      "and is recent.", 1 if success else 0, collector=name)
            out.gauge("dsmon_collector_duration_seconds", "Duration of the collector's last run "
                      "(of the current one while it runs).", duration, collector=name)
        for name, health in sorted(self.health.items()):
            out.gauge("dsmon_job_success", "1 when the job's last run succeeded.",
                      1 if health.last_ok else 0, job=name)
            out.gauge("dsmon_job_duration_seconds", "Duration of the job's last run.",
                      health.duration_s, job=name)
        sample = self.health.get("sample")
        if sample is not None and sample.last_end is not None:
            out.gauge("dsmon_last_sample_age_seconds", "Seconds since the last completed "
                      "sampling cycle.", now - sample.last_end)
        out.counter("dsmon_series_dropped", "Series left out because of the series cap.",
                    self.dropped_series)
        out.gauge("dsmon_targets", "Targets followed.", len(self.targets))
        for result in ("ok", "failed", "skipped"):
            out.counter("dsmon_stack_captures", "py-spy captures taken when a finding fired "
                        "(skipped: rate-limited per target).",
                        self.captures.results.get(result, 0), result=result)
        self.stacks.render(out, now)
        return out.build()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, serve: bool = True) -> None:
        from dsmon.sinks.http import start_server
        from dsmon.sinks.webconfig import load_web_config
        self.discover()
        # The first host samples, each in its own thread: one that hangs must not hold back
        # READY; its job keeps trying on schedule and its success stays 0.
        first = [threading.Thread(target=self.collect_host, args=(c,), daemon=True)
                 for c in self.host.collectors]
        deadline = time.monotonic() + FIRST_SAMPLE_TIMEOUT_S
        for thread in first:
            thread.start()
        for thread in first:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.collect_gpus_slow()
        self.collect_gpus()
        self.sample()
        self.evaluate_rules()
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(4 + len(self.host.collectors)),
                       "slow": ThreadPoolExecutor(2)},
            job_defaults={"coalesce": True, "max_instances": 1,
                          "misfire_grace_time": max(1, int(self.config.interval_s))})
        config = self.config
        for collector in self.host.collectors:
            self.scheduler.add_job(self.collect_host, "interval", args=(collector,),
                                   seconds=config.interval_s, id=f"host:{collector.name}")
        self.scheduler.add_job(self.collect_gpus, "interval", seconds=config.interval_s,
                               id="host:gpu")
        self.scheduler.add_job(self.collect_gpus_slow, "interval", seconds=config.slow_interval_s,
                               id="gpu_slow", executor="slow")
        self.scheduler.add_job(self.sample, "interval", seconds=config.interval_s, id="sample")
        self.scheduler.add_job(self.evaluate_rules, "interval", seconds=config.rules_interval_s,
                               id="rules")
        self.scheduler.add_job(self.discover, "interval", seconds=config.discovery_interval_s,
                               id="discover", executor="slow")
        self.scheduler.add_job(self.refresh_numa, "interval", seconds=config.slow_interval_s,
                               id="numa", executor="slow")
        self.scheduler.add_job(self.scrape_engines, "interval", seconds=config.engine_interval_s,
                               id="engine", executor="slow")
        self.scheduler.add_listener(self._job_skipped, EVENT_JOB_MAX_INSTANCES)
        self.scheduler.start()
        if serve:
            host, port = listen_address(config.listen)
            web = load_web_config(config.web_config) if config.web_config else None
            self.server = start_server(self, host, port, web)
        status = f"{len(self.targets)} target(s): " + (", ".join(sorted(self.targets))
                                                      or "none (host-only mode)")
        self.notifier.ready(status)
        log.info("dsmon %s listening on %s; %s", __version__, config.listen, status)

    def _job_skipped(self, event) -> None:
        # A stable message, so the log's repeat filter folds it to one line a minute.
        log.warning("job %s is stuck: its previous run has not finished", event.job_id)

    def reload(self, config: AgentConfig, rules) -> None:
        """Apply a new config's targets and rules (the listen address needs a restart)."""
        with self.lock:
            if config.captures != self.config.captures:
                self.captures = CaptureStore(config.captures)
            self.stacks.reconfigure(config.stacks, config.captures.pyspy_path)
            self.config = config
            self.rules = rules
            self.host_monitor = HostRuleMonitor(rules)
            self.resolver = TargetResolver(self.paths, config.targets)
            for runtime in self.targets.values():
                runtime.close()
            self.targets.clear()
        self.discover()
        self.sample()
        self.notifier.status(f"reloaded: {len(self.targets)} target(s), {len(rules)} rules")

    def stop(self) -> None:
        self.notifier.stopping()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        with self.lock:
            for runtime in self.targets.values():
                runtime.close()
        self.stacks.close()
        self.notifier.close()


def run_forever(agent: Agent, load) -> int:
    """Run until SIGTERM/SIGINT. SIGHUP re-runs `load()` -> (config, rules); a broken file
    keeps the running configuration and logs why."""
    reload_requested = threading.Event()

    def on_term(signum, frame):
        agent.stopping.set()

    def on_hup(signum, frame):
        reload_requested.set()
        agent.stopping.set()  # wake the loop; cleared below when it is a reload

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    agent.start()
    while True:
        agent.stopping.wait()
        if reload_requested.is_set():
            reload_requested.clear()
            agent.stopping.clear()
            try:
                config, rules = load()
            except Exception as exc:  # noqa: BLE001 - keep running on the old configuration
                log.error("reload failed, keeping the running configuration: %s", exc)
                agent.notifier.status(f"reload failed: {str(exc).splitlines()[0]}")
                continue
            agent.reload(config, rules)
            log.info("reloaded configuration from %s", config.source)
            continue
        break
    log.info("stopping")
    agent.stop()
    return 0
