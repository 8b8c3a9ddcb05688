"""The agent's sampling: what it follows (discovery), what it reads (host collectors, GPUs,
each target), and what it concludes (rules, exits, captures).

Each method is one job's work; scheduling and recording them is jobs.py's, publishing what
they found is publish.py's (`on_change` is called when there is something new to show).
"""

from __future__ import annotations

import logging
import threading
import time

from dsmon.agent.config import AgentConfig
from dsmon.agent.live import live_points
from dsmon.agent.runtime import TargetRuntime
from dsmon.agent.stacks import AgentStacks
from dsmon.agent.targets import TargetResolver
from dsmon.collectors.topology import TopologyCollector
from dsmon.engine.monitor import HostRuleMonitor
from dsmon.fdbudget import FdBudget
from dsmon.gpu.sample import GpuCollector
from dsmon.model import Status, run_collector
from dsmon.paths import HostPaths
from dsmon.sampler import HostSampler, TargetNotFound
from dsmon.stacks.capture import CaptureStore

log = logging.getLogger("dsmon.agent")


class Sampling:
    def __init__(self, config: AgentConfig, rules, host_collectors=None, nvml=None,
                 fd_budget: FdBudget | None = None):
        self.config = config
        self.rules = rules
        self.paths = HostPaths(config.procfs, config.sysfs, config.rootfs)
        self.host = HostSampler(self.paths)
        if host_collectors is not None:
            self.host.collectors = list(host_collectors)
        self.resolver = TargetResolver(self.paths, config.targets)
        # One descriptor budget for every target, under the process's limit less a reserve
        # for listening and discovery (dsmon/fdbudget.py).
        self.fd_budget = fd_budget or FdBudget()
        # NVML's slow questions (affinity, ECC, PCIe) run on the slow executor.
        self.gpu = GpuCollector(self.paths, nvml, slow_interval_s=config.slow_interval_s,
                                slow_inline=False)
        self.gpu_snapshot = None
        self.latest_gpu = None
        self.host_monitor = HostRuleMonitor(rules)    # the host's rules: GPU health
        self.targets: dict[str, TargetRuntime] = {}
        self.lock = threading.RLock()
        self.host_batches: dict = {}
        self.latest_host: dict = {}
        self.sample_lock = threading.Lock()
        self.topology = None
        self.collector_health: dict[str, tuple[bool, float, float]] = {}
        self.collector_started: dict[str, float] = {}
        self.fired: dict[tuple[str, str, str], int] = {}      # (rule_id, severity, target)
        self.exits: dict[tuple[str, str], int] = {}           # (target, reason)
        # Targets that are gone but still have findings (the OOM killer's victim: its
        # `oom-killed` finding fires after its death and holds for the rule's window and
        # keep_firing_for): their rules are evaluated and published until nothing is active,
        # even after a new process took the label.
        self.retired: list[TargetRuntime] = []
        self.captures = CaptureStore(config.captures)
        self.stacks = AgentStacks(config.stacks, self.paths, config.captures.pyspy_path)
        self.on_change = lambda: None
        self.schedule_capture = None      # (func, args, job_id) -> None, set by the scheduler

    def apply(self, config: AgentConfig, rules) -> None:
        """A reloaded config's targets, rules and captures; targets are found again."""
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
            self.retired.clear()

    def runtimes(self) -> list[TargetRuntime]:
        with self.lock:
            return list(self.targets.values())

    # -- discovery -----------------------------------------------------------------------

    def discover(self) -> None:
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
                    if runtime.gone and runtime.monitor.engine.active:
                        self.retired.append(runtime)
            self.retired = [r for r in self.retired if r.monitor.engine.active]
            for label, resolved in wanted.items():
                if label in self.targets:
                    continue
                try:
                    self.targets[label] = TargetRuntime(
                        resolved, self.paths, self.rules, self.config.max_threads,
                        self.config.engine_interval_s, live_points(self.config.interval_s),
                        fd_budget=self.fd_budget)
                    log.info("following target %s: pid %d (%s)", label, resolved.pid,
                             resolved.spec.describe())
                except TargetNotFound as exc:
                    log.info("target %s vanished before sampling: %s", label, exc)
        self.on_change()   # a target that left or arrived shows at once, not a sample later

    # -- host and GPUs ---------------------------------------------------------------------

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
        run_collector("gpu_slow", self.gpu.collect_slow)

    # -- targets -----------------------------------------------------------------------------

    def sample(self, wait_s: float | None = None) -> bool:
        """One sampling cycle; False when another is running and did not end within `wait_s`
        (a reload samples outside the scheduler)."""
        if not self.sample_lock.acquire(timeout=-1 if wait_s is None else wait_s):
            return False
        try:
            self._sample_targets()
        finally:
            self.sample_lock.release()
        return True

    def _sample_targets(self) -> None:
        batches = dict(self.latest_host)
        self.host_batches = {name: batch.data for name, batch in batches.items() if batch.ok}
        if self.latest_gpu is not None:
            batches["gpu"] = self.latest_gpu   # the GPU rules read the target's GPU memory
        runtimes = self.runtimes()
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
                    log.warning("target %s (pid %d) was killed by the OOM killer in its cgroup",
                                runtime.label, runtime.resolved.pid)
                else:
                    log.info("target %s (pid %d) exited: %s", runtime.label,
                             runtime.resolved.pid, runtime.gone)
        self.on_change()

    def evaluate_rules(self) -> None:
        now, wall = time.monotonic(), time.time()
        changed = False
        with self.lock:
            retired = list(self.retired)
        for runtime in self.runtimes() + retired:
            transitions = runtime.evaluate(now, wall)
            changed |= bool(transitions)
            for finding in self._count_transitions(transitions, runtime.label):
                if finding.capture == "stack" and self.captures.should_capture(runtime.label):
                    self._capture_later(runtime, finding)
        if changed:   # otherwise the sample job's publication already says it all
            self.on_change()

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

    def _capture_later(self, runtime, finding) -> None:
        """py-spy runs on the slow executor: a slow dump must not hold back the rules."""
        args = (runtime.label, runtime.resolved.pid, finding.rule_id, finding.summary,
                {"severity": finding.severity,
                 "evidence": [e.as_dict()["text"] for e in finding.evidence
                              if e.met and not e.negated]})
        if self.schedule_capture is not None:
            self.schedule_capture(self.capture, args, f"capture:{runtime.label}")
        else:
            self.capture(*args)

    def capture(self, target, pid, rule_id, summary, context) -> None:
        self.captures.capture(target, pid, rule_id, summary, context)

    def refresh_numa(self) -> None:
        for runtime in self.runtimes():
            if not runtime.gone:
                runtime.refresh_numa()

    def scrape_engines(self) -> None:
        """The engines' own /metrics, one target after the other (each with a short timeout)."""
        for runtime in self.runtimes():
            runtime.scrape_engine()

    def close(self, wait_s: float) -> bool:
        """Close every target's descriptors; False (nothing closed) when a job holds the
        targets longer than `wait_s` (a stuck read: the process is about to exit anyway)."""
        if not self.lock.acquire(timeout=wait_s):
            return False
        try:
            for runtime in self.targets.values():
                if runtime.lock.acquire(timeout=0.1):
                    try:
                        runtime.close()
                    finally:
                        runtime.lock.release()
        finally:
            self.lock.release()
        return True
