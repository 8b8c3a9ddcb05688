"""Python features: is it an interpreter, and what py-spy saw (GIL, Python threads' CPU)."""

from __future__ import annotations

from dsmon.features.threads import ACTIVE_CORES


def is_python(identity) -> bool:
    exe = (identity.exe or "") + " " + " ".join(identity.cmdline[:1])
    return "python" in exe.rsplit("/", 1)[-1] or "python" in identity.comm


class PythonFeatures:
    def __init__(self, static):
        self.python = is_python(static.identity)
        self._python_tids: frozenset = frozenset()

    def update(self, values, interval) -> None:
        values["python_target"] = 1.0 if self.python else 0.0
        stacks = interval.tick.data("stacks")
        if stacks is not None:
            values["python_gil_held_ratio"] = stacks.gil_held / stacks.samples
            values["python_active_threads"] = stacks.active_threads / stacks.samples
            self._python_tids = stacks.python_host_tids
        # Only when py-spy sampled in this tick: which threads are Python's is its answer.
        if values["python_gil_held_ratio"] is None or interval.thread_cores is None:
            return
        python = [cores for thread, _, cores in interval.thread_cores
                  if thread.tid in self._python_tids]
        values["python_busy_threads"] = sum(1 for cores in python if cores >= ACTIVE_CORES)
        values["python_cpu_cores"] = sum(python)
