"""Which native runtimes the target has loaded (dsmon.collectors.runtimes), as flags."""

from __future__ import annotations


class NativeRuntimeFeatures:
    """From the static facts' reading of /proc/PID/maps, and each re-reading a tick carries
    (a failed re-reading keeps the last one: libraries are not unloaded). Unreadable maps
    (another user's process without ptrace rights) leave the flags absent."""

    def __init__(self, static, context: dict):
        self.context = context
        batch = getattr(static, "runtimes", None)
        self.runtimes = batch.data if batch is not None and batch.ok else None

    def update(self, values, interval) -> None:
        batch = interval.tick.batches.get("runtimes")
        if batch is not None and batch.ok:
            self.runtimes = batch.data
        runtimes = self.runtimes
        if runtimes is None:
            self.context["thread_pool_library"] = ""
            return
        values["torch_loaded"] = float(runtimes.torch)
        values["blas_loaded"] = float(runtimes.blas)
        values["openmp_loaded"] = float(runtimes.openmp)
        self.context["thread_pool_library"] = runtimes.thread_pool_library
