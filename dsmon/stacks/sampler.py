"""Background py-spy sampling of one target: `dsmon diagnose` for its window, the agent for as
long as it follows the target.

Why repeated `dump`s rather than one `py-spy record`: only the dump's JSON carries, per thread
and per sample, whether the thread was active and whether it held the GIL. `record`'s outputs
(raw, speedscope, chrometrace) keep the stacks but drop both flags, so a GIL share from `record`
needs a second py-spy with `--gil` on the same target at the same time, which the
one-py-spy-per-target rule forbids. Dumps also give the rules engine a GIL figure per interval,
so `for:` works on it like on every other feature. Cost measured in docs/python-stacks.md.

Two pacings: a fixed period (diagnose: 5 dumps a second for a short window), or a CPU budget
(the agent: the period is what each dump really cost -- py-spy's rusage plus this thread's own
parsing -- divided by the budget, so a 512-thread target is sampled less often than a small one
and the agent's cost stays put on any host).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

from dsmon.model import Batch, Status
from dsmon.stacks.profile import StackProfile
from dsmon.stacks.pyspy import PySpy, PySpyError, run_state

DEFAULT_PERIOD_S = 0.2      # 5 dumps a second: 50 samples per thread in a 10 s window
# py-spy can fail to find the interpreter while the target is remapping memory (measured: a
# Python process growing 40 MiB/s got "Failed to find python version" on a first dump), so a
# verdict about the target itself needs this many failures in a row before sampling stops.
CONFIRM_FAILURES = 3
_ABOUT_THE_TARGET = ("not_python", "unsupported_python")
# The cost of one dump changes with the target's thread count and the host's load; a moving
# average over a few dumps follows it without letting one slow dump halve the rate.
COST_SMOOTHING = 0.3
# What a sampler can say about its target: bounded, so it can be a label value.
STATES = ("starting", "ok", "target_stopped", "busy", "timeout", "failed", "gone", "missing",
          "permission_denied", "not_python", "unsupported_python", "stopped")


@dataclass(frozen=True)
class Pacing:
    period_s: float = DEFAULT_PERIOD_S        # the shortest period between two dumps
    cpu_budget_cores: float | None = None     # None: a fixed period
    max_period_s: float = 30.0
    window_s: float | None = None             # rolling windows; None: one window
    # Continuous sampling skips a stopped target (its stacks cannot change); a one-shot
    # diagnosis keeps dumping it, since where it stopped is the answer.
    skip_stopped: bool = False


class StackSampler:
    def __init__(self, pyspy: PySpy, pid: int, profile: StackProfile,
                 period_s: float = DEFAULT_PERIOD_S, is_target=None,
                 pacing: Pacing | None = None):
        self.pyspy = pyspy
        self.pid = pid
        # Called after each dump: False once the pid names another process (pid reuse), whose
        # stacks must not join the target's profile.
        self.is_target = is_target
        self.profile = profile
        self.pacing = pacing or Pacing(period_s)
        self.period_s = self.pacing.period_s
        self.last_window: StackProfile | None = None   # the last complete rolling window
        self.error: PySpyError | None = None
        self.failures = 0
        self.errors: Counter = Counter()               # error kind -> count
        self.samples_total = 0
        self.cpu_seconds_total = 0.0                   # py-spy's CPU + this thread's parsing
        self.last_sample_mono: float | None = None
        self.state = "starting"
        self._cost_s: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"dsmon-pyspy-{pid}",
                                        daemon=True)

    def start(self) -> "StackSampler":
        self._thread.start()
        return self

    def stop(self, wait: bool = True) -> None:
        """After this returns the profile no longer changes. A dump still in flight (a huge
        target) gets a little time to finish; its result is dropped, not waited for."""
        self._stop.set()
        if wait:
            self._thread.join(timeout=self.pyspy.timeout_s + 1.0)
        with self._lock:
            if self.state in ("ok", "starting"):
                self.state = "stopped"

    def _loop(self) -> None:
        next_at = time.monotonic()
        in_a_row = 0
        while not self._stop.is_set():
            started = time.monotonic()
            own_cpu = time.thread_time()
            try:
                if self.pacing.skip_stopped and run_state(self.pyspy.procfs,
                                                           self.pid) in ("T", "t"):
                    # A stopped target's stacks cannot change: nothing to sample until it runs.
                    raise PySpyError("target_stopped", f"process {self.pid} is stopped")
                dump = self.pyspy.measured_dump(self.pid)
            except PySpyError as exc:
                in_a_row += 1
                with self._lock:
                    self.error = exc
                    self.failures += 1
                    self.errors[exc.kind] += 1
                    self.state = exc.kind
                if exc.kind in _ABOUT_THE_TARGET:
                    # Once a dump worked, the target is Python: such an error is transient.
                    if self.profile.samples == 0 and in_a_row >= CONFIRM_FAILURES:
                        return
                elif exc.permanent:
                    return
            else:
                with self._lock:
                    # Spent even when it is dropped: the budget counts what py-spy used.
                    self.cpu_seconds_total += dump.cpu_s
                    if self._stop.is_set():
                        return
                    if self.is_target and not self.is_target():
                        self.state = "gone"
                        return
                    now = time.monotonic()
                    self.profile.add(dump.threads, now - started)
                    self._rotate(now)
                    self.error = None
                    self.state = "ok"
                    self.samples_total += 1
                    self.last_sample_mono = now
                    cost = dump.cpu_s + time.thread_time() - own_cpu
                    self.cpu_seconds_total += cost - dump.cpu_s
                    self._cost_s = cost if self._cost_s is None else \
                        self._cost_s + COST_SMOOTHING * (cost - self._cost_s)
                    self.period_s = self._period()
                in_a_row = 0
            # A fixed rate, but never back to back: a slow dump (a big target) lowers the rate
            # instead of keeping a py-spy running all the time.
            next_at = max(next_at + self.period_s, time.monotonic() + self.period_s / 2)
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _period(self) -> float:
        pacing = self.pacing
        if pacing.cpu_budget_cores is None or self._cost_s is None:
            return pacing.period_s
        return min(pacing.max_period_s,
                   max(pacing.period_s, self._cost_s / pacing.cpu_budget_cores))

    def _rotate(self, now: float) -> None:
        window = self.pacing.window_s
        if window is not None and now - self.profile.started_mono >= window:
            self.last_window, self.profile = self.profile, self.profile.rotated()

    def read_window(self, read):
        """read(profile) of the last complete rolling window (the current one before the first
        completes), under the sampler's lock: the current window changes with every dump."""
        with self._lock:
            return read(self.last_window if self.last_window is not None else self.profile)

    def tick_batch(self) -> Batch | None:
        """What was sampled since the last tick, as the `stacks` collector's batch (None before
        the first dump has answered)."""
        mono, wall = time.monotonic(), time.time()
        with self._lock:
            error = self.error
            tick = self.profile.take_tick()
        if tick.samples == 0 and error is not None:
            status = Status.NO_DATA if error.kind == "not_python" else Status.FAILED
            return Batch("stacks", mono, wall, status, None, f"py-spy: {error}", error.hint)
        if tick.samples == 0:
            return None
        return Batch("stacks", mono, wall, Status.OK, tick)

    def status(self) -> dict:
        with self._lock:
            error = self.error
        if self.profile.samples == 0 and error is not None:
            return {"status": "no_data" if error.kind == "not_python" else "failed",
                    "error_kind": error.kind, "error": str(error), "hint": error.hint}
        return {"status": "ok" if self.profile.samples else "no_data",
                "error_kind": error.kind if error else None,
                "error": str(error) if error else "", "hint": error.hint if error else "",
                "failures": self.failures}

    def health(self) -> dict:
        """The sampler's own state, for the agent's metrics and its debug page."""
        with self._lock:
            error = self.error
            return {"state": self.state, "samples": self.samples_total,
                    "errors": dict(self.errors), "cpu_seconds": self.cpu_seconds_total,
                    "period_s": self.period_s, "last_sample_mono": self.last_sample_mono,
                    "error": str(error) if error else "", "hint": error.hint if error else ""}
