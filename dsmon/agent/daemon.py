"""`dsmon agent`: sample the host and its inference processes forever, serve /metrics.

The agent is four roles, one module each:
- lifecycle (here): builds the others, starts them in order, applies reloads, stops; the
  signal handlers of `run_forever`.
- scheduling (jobs.py): the job table below on APScheduler, each run recorded.
- sampling (sampling.py): discovery, host and GPU collectors, targets, rules, captures.
- publishing (publish.py): an immutable view for the HTTP server (sinks/http.py).

Jobs (each `max_instances=1, coalesce=True`; a hung job stalls only itself):
- `host:NAME` every interval, one job per host collector (cpu, memory, vmstat, pressure), so
              a collector that hangs stalls only itself and its success drops to 0.
- `sample`    every interval: each target (process, threads, cgroup) with the latest host
              data; publishes; the systemd watchdog is fed from here after a good cycle, never
              from a timer. A cycle past its interval shows as `dsmon_job_success 0` and the
              targets as down (stale).
- `rules`     every rules interval: evaluates each target's rules at that time.
- `discover`  (slow executor) finds targets, follows restarts under the same label.
- `gpu_slow`, `numa`, `engine` (slow executor): NVML's slow questions, numa_maps (walks page
              tables), the engines' own /metrics (vLLM, SGLang, TGI, Triton).
A new periodic job is one more `Job` in `Agent.jobs()`: its id (the `job` label of
dsmon_job_success), the work, its interval as a function of the config (so reloads reschedule
it) and the executor ("slow" for work that may take seconds).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from functools import partial
from operator import attrgetter

from dsmon import __version__
from dsmon.agent.config import AgentConfig, listen_address
from dsmon.agent.jobs import Job, JobRecorder, JobScheduler
from dsmon.agent.notify import Notifier
from dsmon.agent.publish import Publisher, ReloadStatus
from dsmon.agent.sampling import Sampling

log = logging.getLogger("dsmon.agent")

FIRST_SAMPLE_TIMEOUT_S = 2.0
# SIGTERM ends the process within this, whatever is stuck (systemd's stop timeout is longer;
# a job blocked in a read of /proc cannot be interrupted, only abandoned).
STOP_DEADLINE_S = 1.0


class Agent:
    def __init__(self, config: AgentConfig, rules, host_collectors=None, notifier=None,
                 nvml=None):
        self.notifier = notifier or Notifier()
        self.sampling = Sampling(config, rules, host_collectors, nvml)
        self.recorder = JobRecorder()
        self.reload_status = ReloadStatus()
        self.scheduler = JobScheduler(self.jobs(), config,
                                      default_workers=4 + len(self.sampling.host.collectors))
        self.publisher = Publisher(self.sampling, self.recorder, self.scheduler.intervals,
                                   self.reload_status)
        self.sampling.on_change = self.publisher.publish
        self.sampling.schedule_capture = self._capture_later
        self.server = None
        self._started = False

    @property
    def config(self) -> AgentConfig:
        return self.sampling.config

    def jobs(self) -> list[Job]:
        sampling = self.sampling
        every = attrgetter("interval_s")
        slow = attrgetter("slow_interval_s")
        jobs = [Job(f"host:{c.name}", partial(sampling.collect_host, c), every)
                for c in sampling.host.collectors]
        return jobs + [
            Job("host:gpu", sampling.collect_gpus, every),
            Job("gpu_slow", self._recorded("gpu_slow", sampling.collect_gpus_slow), slow,
                "slow"),
            Job("sample", self.sample, every),
            Job("rules", self._recorded("rules", sampling.evaluate_rules),
                attrgetter("rules_interval_s")),
            Job("discover", self._recorded("discover", sampling.discover),
                attrgetter("discovery_interval_s"), "slow"),
            Job("numa", self._recorded("numa", sampling.refresh_numa), slow, "slow"),
            Job("engine", self._recorded("engine", sampling.scrape_engines),
                attrgetter("engine_interval_s"), "slow"),
        ]

    def _recorded(self, name: str, work):
        return lambda: self.recorder.run(name, work)

    def sample(self) -> None:
        if self.recorder.run("sample", self.sampling.sample):
            self.notifier.watchdog()

    def _capture_later(self, func, args, job_id: str) -> None:
        def capture(*captured):
            self.recorder.run("capture", lambda: func(*captured))
        if self.scheduler.running:
            self.scheduler.submit_once(capture, args, job_id)
        else:
            capture(*args)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, serve: bool = True) -> None:
        from dsmon.sinks.http import MetricsServer
        from dsmon.sinks.webconfig import load_web_config
        config = self.config
        if serve:   # bind first: a port in use is an error before anything is sampled
            host, port = listen_address(config.listen)
            web = load_web_config(config.web_config) if config.web_config else None
            self.server = MetricsServer(host, port, web)
        sampling = self.sampling
        self.recorder.run("discover", sampling.discover)
        # The first host samples, each in its own thread: one that hangs must not hold back
        # READY; its job keeps trying on schedule and its success stays 0.
        first = [threading.Thread(target=sampling.collect_host, args=(c,), daemon=True)
                 for c in sampling.host.collectors]
        deadline = time.monotonic() + FIRST_SAMPLE_TIMEOUT_S
        for thread in first:
            thread.start()
        for thread in first:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.recorder.run("gpu_slow", sampling.collect_gpus_slow)
        sampling.collect_gpus()
        self.sample()
        self.recorder.run("rules", sampling.evaluate_rules)
        self.scheduler.start()
        self._started = True
        if self.server is not None:
            self.server.publish(self.publisher.view)
            self.publisher.sink = self.server.publish
            self.server.start()
        status = f"{len(sampling.targets)} target(s): " + (", ".join(sorted(sampling.targets))
                                                          or "none (host-only mode)")
        self.notifier.ready(status)
        log.info("dsmon %s listening on %s; %s", __version__, config.listen, status)

    def reload(self, config: AgentConfig, rules) -> None:
        """Apply a new config's targets, rules and intervals (the listen address and web
        config need a restart)."""
        if (config.listen, config.web_config) != (self.config.listen, self.config.web_config):
            log.warning("reload: listen and web_config changes apply at the next restart")
        self.sampling.apply(config, rules)
        changed = self.scheduler.reschedule(config)
        if changed:
            log.info("reload: rescheduled %s", ", ".join(
                f"{job} every {self.scheduler.intervals[job]:g} s" for job in changed))
        self.recorder.run("discover", self.sampling.discover)
        # A cycle now, unless one is stuck (then the scheduled job reports it).
        self.recorder.run("sample", partial(self.sampling.sample, wait_s=config.interval_s))
        self.notifier.status(f"reloaded: {len(self.sampling.targets)} target(s), "
                             f"{len(rules)} rules")

    def reload_from(self, load) -> bool:
        """SIGHUP: `load()` -> (config, rules). Anything wrong keeps the running config, and
        the log and dsmon_config_last_reload_successful say so."""
        try:
            config, rules = load()
            self.reload(config, rules)
        except Exception as exc:  # noqa: BLE001 - keep running on the old configuration
            problem = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            self.reload_status.successful = False
            log.error("reload failed, keeping the running configuration: %s",
                      problem or type(exc).__name__)
            self.notifier.status(f"reload failed: {problem[:200]}")
            return False
        self.reload_status.successful = True
        self.reload_status.success_ts = time.time()
        log.info("reloaded configuration from %s", config.source)
        return True

    def stop(self) -> None:
        self.notifier.stopping()
        abandoned = self.scheduler.shutdown() if self._started else []
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if not self.sampling.close(wait_s=0.3):
            log.warning("targets are held by a stuck job; their descriptors close at exit")
        self.sampling.stacks.close()
        if abandoned:
            log.warning("abandoning %d stuck job(s) at exit: %s", len(abandoned),
                        ", ".join(abandoned))
        self.notifier.close()


def run_forever(agent: Agent, load) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP reloads (`agent.reload_from(load)`). Stopping wins
    over everything: its flag is its own (a reload never clears it), it is checked before a
    pending reload, and a watchdog thread ends the process STOP_DEADLINE_S after the signal
    if the orderly stop is held up."""
    wake = threading.Event()
    stop_requested = threading.Event()
    reload_requested = threading.Event()

    def on_term(signum, frame):
        if not stop_requested.is_set():
            stop_requested.set()
            threading.Thread(target=_exit_if_stuck, name="dsmon-stop", daemon=True).start()
        wake.set()

    def on_hup(signum, frame):
        reload_requested.set()
        wake.set()

    handled = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    # Python runs handlers in the main thread, but the kernel may deliver a process signal to
    # any thread that does not block it; the main thread's wait was then never woken (a
    # SIGTERM right after READY was lost). Every thread the agent starts inherits this mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    try:
        agent.start()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
    while not stop_requested.is_set():
        wake.wait(1.0)     # bounded: a signal's handler runs at the latest when this returns
        wake.clear()
        if stop_requested.is_set():
            break
        if reload_requested.is_set():
            reload_requested.clear()
            agent.reload_from(load)
    log.info("stopping")
    agent.stop()
    return 0


def _exit_if_stuck() -> None:
    time.sleep(STOP_DEADLINE_S)
    stuck = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    log.error("stop did not finish within %.1f s; exiting now, abandoning: %s",
              STOP_DEADLINE_S, ", ".join(stuck))
    logging.shutdown()
    os._exit(0)
