"""The agent's continuous Python stacks: one budget-paced py-spy sampler per followed Python
target, feeding the same `stacks` batch and features as `dsmon diagnose`, the sampler's health
and the GIL share as metrics, and the last window's folded stacks at /debug/stacks (off by
default; behind the web config's auth and TLS like every other path).

py-spy runs on each sampler's own thread: the sample job only takes what was sampled since its
last cycle, under a lock held for microseconds, so a py-spy that hangs (a target in D state,
a huge target) never holds back sampling or the systemd watchdog.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, replace

from dsmon.collectors.process import is_same_process
from dsmon.features.python import is_python
from dsmon.paths import HostPaths
from dsmon.stacks.profile import NamespaceTids, StackProfile
from dsmon.stacks.pyspy import PySpy
from dsmon.stacks.sampler import Pacing, StackSampler

log = logging.getLogger("dsmon.stacks")

# Measured (docs/python-stacks.md): a non-blocking dump of a 64-thread target costs 24-33 ms of
# CPU (more on a loaded host), half of it py-spy finding the interpreter again, so 0.7% of a
# core per target is one dump every 3.5-4.5 s; the rest of the 1% is the agent's own
# work around the samples (features, metrics), measured at ~0.15%.
DEFAULT_CPU_BUDGET = 0.007
STACK_KEYS = {"enabled", "cpu_budget", "min_interval", "max_interval", "window",
              "debug_endpoint", "py_spy", "timeout"}
_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class StackSettings:
    enabled: bool = True
    cpu_budget: float = DEFAULT_CPU_BUDGET    # cores per target: py-spy + parsing its output
    min_interval_s: float = 1.0               # never more often (the agent samples at 1 Hz)
    max_interval_s: float = 30.0
    window_s: float = 30.0                    # the rolling window of metrics and /debug/stacks
    debug_endpoint: bool = False              # stacks name files and functions: opt in
    pyspy_path: str = ""
    timeout_s: float = 2.0


def parse_stack_settings(table, source: str, problems: list[str], parse_duration) -> StackSettings:
    """The `[stacks]` table; problems are appended, like the rest of the config."""
    where = f"{source}: [stacks]"
    if not isinstance(table, dict):
        problems.append(f"{where} must be a table")
        return StackSettings()
    for key in sorted(set(table) - STACK_KEYS):
        problems.append(f"{where} unknown key {key!r} "
                        f"(allowed: {', '.join(sorted(STACK_KEYS))})")
    values: dict = {}
    for key, attribute in (("enabled", "enabled"), ("debug_endpoint", "debug_endpoint")):
        if key in table:
            if isinstance(table[key], bool):
                values[attribute] = table[key]
            else:
                problems.append(f"{where} {key} must be true or false")
    if "py_spy" in table:
        if isinstance(table["py_spy"], str) and table["py_spy"]:
            values["pyspy_path"] = table["py_spy"]
        else:
            problems.append(f"{where} py_spy must be a non-empty path")
    if "cpu_budget" in table:
        budget = table["cpu_budget"]
        if isinstance(budget, (int, float)) and not isinstance(budget, bool) and 0 < budget <= 1:
            values["cpu_budget"] = float(budget)
        else:
            problems.append(f"{where} cpu_budget must be a share of one core per target, "
                            f"0 < x <= 1 (e.g. 0.007 for 0.7%), not {budget!r}")
    for key, attribute in (("min_interval", "min_interval_s"), ("max_interval", "max_interval_s"),
                           ("window", "window_s"), ("timeout", "timeout_s")):
        if key in table:
            seconds = parse_duration(table[key], f"{where} {key}", problems)
            if seconds is not None:
                values[attribute] = seconds
    settings = replace(StackSettings(), **values)
    if settings.min_interval_s > settings.max_interval_s:
        problems.append(f"{where} min_interval ({settings.min_interval_s:g} s) is above "
                        f"max_interval ({settings.max_interval_s:g} s)")
    return settings


@dataclass
class _Followed:
    key: tuple                  # (pid, start_ticks): a restarted target gets a new sampler
    sampler: StackSampler | None
    state: str                  # when there is no sampler: why


class AgentStacks:
    def __init__(self, settings: StackSettings, paths: HostPaths, pyspy_path: str = ""):
        self.settings = settings
        self.paths = paths
        self.pyspy_path = settings.pyspy_path or pyspy_path
        self._followed: dict[str, _Followed] = {}
        self._lock = threading.Lock()

    def _pyspy(self) -> PySpy:
        return PySpy(self.pyspy_path or None, self.settings.timeout_s, procfs=self.paths.procfs,
                     explicit=bool(self.pyspy_path))

    def _start(self, runtime) -> _Followed:
        key = (runtime.resolved.pid, runtime.resolved.start_ticks)
        if not is_python(runtime.static.identity):
            return _Followed(key, None, "not_python")
        settings = self.settings
        pacing = Pacing(settings.min_interval_s, settings.cpu_budget, settings.max_interval_s,
                        settings.window_s, skip_stopped=True)
        profile = StackProfile(NamespaceTids(self.paths, runtime.resolved.pid,
                                             runtime.static.identity.nspid))
        pid, start_ticks = key
        sampler = StackSampler(self._pyspy(), pid, profile, pacing=pacing,
                               is_target=lambda: is_same_process(self.paths, pid, start_ticks))
        log.info("target %s: sampling Python stacks (py-spy dump --nonblocking, %.1f%% of a "
                 "core at most)", runtime.label, 100 * settings.cpu_budget)
        return _Followed(key, sampler.start(), "")

    def follow(self, runtimes) -> None:
        """Start a sampler for each new Python target, stop those of targets that left or
        restarted. Cheap when nothing changed (the sample job calls it every cycle)."""
        if not self.settings.enabled:
            return
        current = {r.label: r for r in runtimes if not r.gone}
        stopping = []
        with self._lock:
            for label, followed in list(self._followed.items()):
                runtime = current.get(label)
                if runtime is None or followed.key != (runtime.resolved.pid,
                                                       runtime.resolved.start_ticks):
                    stopping.append(self._followed.pop(label))
            for label, runtime in current.items():
                if label not in self._followed:
                    self._followed[label] = self._start(runtime)
        for followed in stopping:
            if followed.sampler is not None:
                followed.sampler.stop(wait=False)

    def batches(self, runtime) -> dict:
        """{"stacks": batch} for this cycle's tick of the target, or {}."""
        with self._lock:
            followed = self._followed.get(runtime.label)
        if followed is None or followed.sampler is None:
            return {}
        batch = followed.sampler.tick_batch()
        return {"stacks": batch} if batch is not None else {}

    def render(self, out, now: float) -> None:
        """The sampler's health and the last window's GIL share and thread counts."""
        if not self.settings.enabled:
            return
        with self._lock:
            followed = dict(self._followed)
        for label, entry in sorted(followed.items()):
            sampler = entry.sampler
            health = sampler.health() if sampler is not None else {"state": entry.state}
            state = health["state"]
            out.gauge("dsmon_stack_sampler_state", "The stack sampler's state for the target "
                      "(1 for the current one): ok, starting, target_stopped, not_python, "
                      "permission_denied, unsupported_python, missing, timeout, ...", 1,
                      target=label, state=state)
            if sampler is None:
                continue
            last = health["last_sample_mono"]
            lag = now - last if last is not None else None
            fresh = lag is not None and lag <= 3 * health["period_s"] + sampler.pyspy.timeout_s
            out.gauge("dsmon_stack_sampler_up", "1 while py-spy samples the target on schedule.",
                      1 if state == "ok" and fresh else 0, target=label)
            out.gauge("dsmon_stack_sampler_lag_seconds", "Seconds since the newest stack sample.",
                      lag, target=label)
            out.gauge("dsmon_stack_sampler_period_seconds", "Seconds between two dumps, set by "
                      "the CPU budget and the measured cost of a dump.", health["period_s"],
                      target=label)
            out.counter("dsmon_stack_samples", "py-spy dumps taken of the target.",
                        health["samples"], target=label)
            out.counter("dsmon_stack_sampler_cpu_seconds", "CPU spent on the target's stacks: "
                        "py-spy's own plus the agent parsing its output.", health["cpu_seconds"],
                        target=label)
            for kind, count in sorted(health["errors"].items()):
                out.counter("dsmon_stack_sampler_errors", "Dumps that gave no stacks, by kind.",
                            count, target=label, kind=kind)
            summary = sampler.read_window(lambda w: w.summary() if w.samples else None)
            if summary is not None:
                out.gauge("dsmon_process_python_gil_held_ratio", "Share of the last window's "
                          "py-spy samples in which some Python thread held the GIL.",
                          summary["gil_held_ratio"], target=label)
                for thread_state in ("active", "idle"):
                    out.gauge("dsmon_process_python_threads", "Python threads in the last "
                              "window by state (active: running in >= 10% of the samples).",
                              summary[f"{thread_state}_threads"], target=label,
                              state=thread_state)

    def debug_response(self, query: dict) -> tuple[int, str, bytes]:
        """GET /debug/stacks?target=NAME[&idle=1][&format=folded|json] -> (status, type, body)."""
        if not self.settings.enabled or not self.settings.debug_endpoint:
            return 404, _TEXT, (b"/debug/stacks is off: set debug_endpoint = true in the [stacks] "
                                b"section of the agent's config (and protect it with web_config)\n")
        target = (query.get("target") or [""])[0]
        with self._lock:
            followed = self._followed.get(target)
            names = sorted(label for label, f in self._followed.items() if f.sampler is not None)
        if followed is None or followed.sampler is None:
            why = f"target {target!r} has no stack sampler" if target else "give ?target=NAME"
            return 404, _TEXT, f"{why}; sampled targets: {', '.join(names) or 'none'}\n".encode()
        sampler = followed.sampler
        fmt = (query.get("format") or ["folded"])[0]
        if fmt == "json":
            document = {"target": target, **sampler.health(), **sampler.read_window(
                lambda w: {"window_seconds": round(time.monotonic() - w.started_mono, 1),
                           **(w.summary() if w.samples else {"samples": 0})})}
            return 200, "application/json", json.dumps(document, indent=1).encode()
        if fmt != "folded":
            return 400, _TEXT, f"format {fmt!r} is not one of: folded, json\n".encode()
        idle = (query.get("idle") or ["0"])[0] in ("1", "true", "yes")
        return 200, _TEXT, sampler.read_window(lambda w: w.folded(include_idle=idle)).encode()

    def reconfigure(self, settings: StackSettings, pyspy_path: str = "") -> None:
        """A reload: new settings apply to samplers started from now on (all of them, since a
        reload drops and re-discovers every target)."""
        self.close()
        self.settings = settings
        self.pyspy_path = settings.pyspy_path or pyspy_path

    def close(self) -> None:
        with self._lock:
            followed, self._followed = list(self._followed.values()), {}
        for entry in followed:
            if entry.sampler is not None:
                entry.sampler.stop(wait=False)
