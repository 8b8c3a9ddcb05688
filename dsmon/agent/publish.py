"""The agent's publishing: after each change, what sampling found becomes an immutable
`SiteView` (metric families, the /findings document, page renderers) handed to the server.

The exposition is the published families, rendered to text once at the first scrape that
needs them, followed by the self metrics of the moment of the scrape (job and collector
health, ages, descriptors, reload status). `dsmon_target_up` is among the latter: when no
sampling cycle has completed for three intervals, every target's data is stale and says so with
0, although the families that the stuck cycle would have replaced are still there.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from dataclasses import dataclass, field

from prometheus_client.exposition import generate_latest

from dsmon import __version__
from dsmon.agent.live import live_page
from dsmon.agent.render import (render_exits, render_findings, render_gpus, render_host,
                                render_rule_series, render_target)
from dsmon.sinks.http import SiteView
from dsmon.sinks.prometheus import MetricsBuilder

log = logging.getLogger("dsmon.agent")

# Scrapes within this of each other share one rendering of the self metrics (~2 ms of CPU
# each): 50 concurrent scrapers cost 20 renderings a second, not one per scrape, and an age
# read from them is at most this much older than the scrape.
SELF_METRICS_REUSE_S = 0.05
_TARGET_UP = "dsmon_target_up"


@dataclass
class ReloadStatus:
    """The last reload's outcome, as Prometheus reports its own."""

    successful: bool = True
    success_ts: float = field(default_factory=time.time)


class _Families:
    """What prometheus_client's text encoder reads: anything with collect()."""

    def __init__(self, families):
        self._families = families

    def collect(self):
        return self._families


class _Exposition:
    def __init__(self, families, target_up, self_metrics_text):
        self._families = families
        self._target_up = target_up
        self._self_metrics_text = self_metrics_text
        self._text: bytes | None = None

    def __call__(self) -> bytes:
        text = self._text
        if text is None:    # two scrapes at once may both render it: the same bytes
            text = self._text = generate_latest(_Families(self._families))
        return text + self._self_metrics_text(self._target_up)


class Publisher:
    def __init__(self, sampling, recorder, intervals: dict[str, float],
                 reload_status: ReloadStatus):
        self.sampling = sampling
        self.recorder = recorder
        self.intervals = intervals          # job id -> seconds (the scheduler's, kept current)
        self.reload_status = reload_status
        self.dropped_series = 0
        self._self_text: tuple[float, object, bytes] = (float("-inf"), None, b"")
        self.view = SiteView(metrics=_Exposition([], [], self.self_metrics_text),
                             findings={"targets": [], "unresolved": {}})
        self.sink = None                    # the server's publish(view), once it listens

    def publish(self) -> None:
        sampling = self.sampling
        config = sampling.config
        with sampling.lock:
            out = MetricsBuilder(config.max_series)
            render_host(out, sampling.host_batches, sampling.topology)
            active: set[tuple[str, str, str]] = set()
            targets = []
            for runtime in sampling.targets.values():
                with runtime.lock:
                    render_target(out, runtime, config.max_pools)
                    current = runtime.monitor.engine.current()
                    active |= {(f.rule_id, f.severity, runtime.label)
                               for f in current if f.state == "firing"}
                    targets.append(self._target_document(runtime, current))
            for runtime in sampling.retired:      # gone, with findings still active
                with runtime.lock:
                    current = runtime.monitor.engine.current()
                    active |= {(f.rule_id, f.severity, runtime.label)
                               for f in current if f.state == "firing"}
                    targets.append(self._target_document(runtime, current))
            snapshot = sampling.gpu_snapshot
            if snapshot is not None:
                render_gpus(out, snapshot, {r.resolved.pid: r.label
                                            for r in sampling.targets.values()})
                # The host's rules (GPU health) start at 0 once there are GPUs to watch.
                render_rule_series(out, sampling.host_monitor.rules, "host")
            active |= {(f.rule_id, f.severity, "host")
                       for f in sampling.host_monitor.engine.current() if f.state == "firing"}
            render_findings(out, active, sampling.fired)
            render_exits(out, sampling.exits)
            captures = sampling.captures
            findings = {
                "dsmon_version": __version__, "generated_at": time.time(), "targets": targets,
                "unresolved": dict(sampling.resolver.problems),
                "captures": {"directory": captures.directory,
                             "problem": captures.problem or None,
                             "recent": [_capture_link(c) for c in captures.listing()[:20]]}}
        out.gauge("dsmon_open_fds", "File descriptors the agent has open.", _open_fds())
        self.dropped_series += out.dropped
        if out.dropped:
            log.warning("series cap %d reached: %d series dropped", out.max_series, out.dropped)
        up = out.families.pop(_TARGET_UP, None)
        view = SiteView(metrics=_Exposition(out.build(), up.samples if up else [],
                                            self.self_metrics_text),
                        findings=findings,
                        target_page=lambda label: live_page(sampling, label),
                        capture=captures.read, debug_stacks=sampling.stacks.debug_response)
        self.view = view
        if self.sink is not None:
            self.sink(view)

    def _target_document(self, runtime, current) -> dict:
        identity = runtime.static.identity
        captures = self.sampling.captures
        findings = []
        for finding in current:
            document = finding.as_dict()
            # A finding's stack captures (newest first), linked for the operator.
            document["captures"] = [_capture_link(c) for c in
                                    captures.for_target(runtime.label, document["rule_id"])[:5]]
            findings.append(document)
        return {"target": runtime.label, "pid": identity.pid, "comm": identity.comm,
                "engine": runtime.monitor.engine_name or None,
                "found_by": runtime.resolved.spec.describe(), "gone": runtime.gone or None,
                "findings": findings}

    def overdue(self, job: str, now: float) -> float | None:
        """How long the job's current run has gone past its interval; None when it has not."""
        health = self.recorder.health.get(job)
        running = health.running_for(now) if health is not None else None
        interval = self.intervals.get(job)
        if running is None or interval is None or running <= interval:
            return None
        return running - interval

    def self_metrics_text(self, target_up) -> bytes:
        now = time.monotonic()
        rendered_at, rendered_for, text = self._self_text
        if rendered_for is target_up and now - rendered_at < SELF_METRICS_REUSE_S:
            return text
        try:
            text = generate_latest(_Families(self.self_metrics(now, target_up)))
        except Exception:  # noqa: BLE001 - keep the page up, say so in the log
            log.exception("self metrics failed; serving the sampled families only")
            return b""
        self._self_text = (now, target_up, text)    # one reference swap
        return text

    def self_metrics(self, now: float, target_up) -> list:
        sampling = self.sampling
        out = MetricsBuilder(10_000)
        # Data older than three intervals is stale: the rule collectors' success follows too.
        # One late cycle on a loaded host is not; a cycle stuck in a read soon is.
        stale_after = 3 * sampling.config.interval_s
        sample = self.recorder.health.get("sample")
        stale = sample is not None and sample.last_end is not None and \
            now - sample.last_end > stale_after
        for labels, value in target_up:
            out.gauge(_TARGET_UP, "1 while the target is sampled, 0 once it is gone or while "
                      "its data is stale (no sampling cycle completed in three intervals).",
                      0 if stale else value, target=labels[0])
        out.gauge("dsmon_build_info", "dsmon's version.", 1, version=__version__)
        finished = dict(sampling.collector_health)
        started = dict(sampling.collector_started)
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
        for name, health in sorted(self.recorder.health.items()):
            running = health.running_for(now)
            overdue = self.overdue(name, now) is not None
            out.gauge("dsmon_job_success", "1 when the job's last run succeeded (0 while a run "
                      "goes on past the job's interval).",
                      0 if overdue or not health.last_ok else 1, job=name)
            out.gauge("dsmon_job_duration_seconds", "Duration of the job's last run (of the "
                      "current one once it is past its interval).",
                      running if overdue else health.duration_s, job=name)
        if sample is not None and sample.last_end is not None:
            out.gauge("dsmon_last_sample_age_seconds", "Seconds since the last completed "
                      "sampling cycle.", now - sample.last_end)
        out.counter("dsmon_series_dropped", "Series left out because of the series cap.",
                    self.dropped_series)
        out.gauge("dsmon_targets", "Targets followed.", len(sampling.targets))
        for result in ("ok", "failed", "skipped"):
            out.counter("dsmon_stack_captures", "py-spy captures taken when a finding fired "
                        "(skipped: rate-limited per target).",
                        sampling.captures.results.get(result, 0), result=result)
        sampling.stacks.render(out, now)
        budget = sampling.fd_budget
        out.gauge("dsmon_fd_limit", "The agent's open-file limit (RLIMIT_NOFILE, its soft "
                  "limit raised to the hard one at start).",
                  _soft_nofile())
        out.gauge("dsmon_thread_fds_held", "Descriptors kept open between sweeps for per-thread "
                  "reads, all targets together.", budget.held)
        out.gauge("dsmon_thread_fds_capacity", "The most descriptors per-thread reads may keep "
                  "open: the open-file limit less a reserve for serving and discovery.",
                  budget.capacity)
        out.counter("dsmon_thread_fd_fallback_reads", "Per-thread reads done with "
                    "open/read/close because the descriptor budget was in use.",
                    budget.fallback_reads)
        out.gauge("dsmon_thread_fd_fallback_active", "1 when the last sweep of some target "
                  "read past the descriptor budget.",
                  1 if any(r.sampler.threads.fallback_reads for r in list(
                      sampling.targets.values())) else 0)
        out.gauge("dsmon_config_last_reload_successful", "1 when the last configuration "
                  "reload succeeded (0: the running configuration is older than the files).",
                  1 if self.reload_status.successful else 0)
        out.gauge("dsmon_config_last_reload_success_timestamp_seconds", "When the "
                  "configuration was last loaded successfully (Unix time).",
                  self.reload_status.success_ts)
        return out.build()


def _capture_link(record: dict) -> dict:
    return {**record, "url": f"/captures/{record['name']}"}


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd")) - 1     # less the one listing it
    except OSError:
        return None


def _soft_nofile() -> float | None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft
