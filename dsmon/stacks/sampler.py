"""Background py-spy sampling of one target while `dsmon diagnose` samples everything else.

Why repeated `dump`s rather than one `py-spy record`: only the dump's JSON carries, per thread
and per sample, whether the thread was active and whether it held the GIL. `record`'s outputs
(raw, speedscope, chrometrace) keep the stacks but drop both flags, so a GIL share from `record`
needs a second py-spy with `--gil` on the same target at the same time, which the
one-py-spy-per-target rule forbids. Dumps also give the rules engine a GIL figure per interval,
so `for:` works on it like on every other feature. Cost measured in docs/python-stacks.md.
"""

from __future__ import annotations

import threading
import time

from dsmon.model import Batch, Status
from dsmon.stacks.profile import StackProfile
from dsmon.stacks.pyspy import PySpy, PySpyError

DEFAULT_PERIOD_S = 0.2      # 5 dumps a second: 50 samples per thread in a 10 s window
# py-spy can fail to find the interpreter while the target is remapping memory (measured: a
# Python process growing 40 MiB/s got "Failed to find python version" on a first dump), so a
# verdict about the target itself needs this many failures in a row before sampling stops.
CONFIRM_FAILURES = 3
_ABOUT_THE_TARGET = ("not_python", "unsupported_python")


class StackSampler:
    def __init__(self, pyspy: PySpy, pid: int, profile: StackProfile,
                 period_s: float = DEFAULT_PERIOD_S, is_target=None):
        self.pyspy = pyspy
        self.pid = pid
        # Called after each dump: False once the pid names another process (pid reuse), whose
        # stacks must not join the target's profile.
        self.is_target = is_target
        self.profile = profile
        self.period_s = period_s
        self.error: PySpyError | None = None
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dsmon-pyspy", daemon=True)

    def start(self) -> "StackSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        """After this returns the profile no longer changes. A dump still in flight (a huge
        target) gets a little time to finish; its result is dropped, not waited for."""
        self._stop.set()
        self._thread.join(timeout=self.pyspy.timeout_s + 1.0)
        with self._lock:
            pass

    def _loop(self) -> None:
        next_at = time.monotonic()
        in_a_row = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                threads = self.pyspy.dump(self.pid)
            except PySpyError as exc:
                in_a_row += 1
                with self._lock:
                    self.error = exc
                    self.failures += 1
                if exc.kind in _ABOUT_THE_TARGET:
                    # Once a dump worked, the target is Python: such an error is transient.
                    if self.profile.samples == 0 and in_a_row >= CONFIRM_FAILURES:
                        return
                elif exc.permanent:
                    return
            else:
                with self._lock:
                    if self._stop.is_set() or (self.is_target and not self.is_target()):
                        return
                    self.profile.add(threads, time.monotonic() - started)
                    self.error = None
                in_a_row = 0
            # A fixed rate, but never back to back: a slow dump (a big target) lowers the rate
            # instead of keeping a py-spy running all the time.
            next_at = max(next_at + self.period_s, time.monotonic() + self.period_s / 2)
            self._stop.wait(max(0.0, next_at - time.monotonic()))

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
