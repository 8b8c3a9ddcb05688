"""Helpers for the fault tests: watch a running dsmon, and give a pid to a new process."""

from __future__ import annotations

import os
import time


def wait_until_sampling(dsmon_pid: int, target_pid: int, timeout: float = 30.0) -> None:
    """Return once dsmon holds descriptors on the target's thread files: its window has begun
    (start-up, imports and the static facts are behind it)."""
    wanted = f"/proc/{target_pid}/task/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            links = [os.readlink(f"/proc/{dsmon_pid}/fd/{fd}")
                     for fd in os.listdir(f"/proc/{dsmon_pid}/fd")]
        except OSError:
            links = []
        if any(link.startswith(wanted) for link in links):
            return
        time.sleep(0.02)
    raise AssertionError(f"dsmon {dsmon_pid} never began sampling {target_pid}")


def state_of(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        raw = handle.read()
    return raw[raw.rindex(b")") + 2:].split()[0].decode()
