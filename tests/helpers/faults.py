"""Helpers for the fault tests: watch a running dsmon, and give a pid to a new process."""

from __future__ import annotations

import os
import time


def wait_until_sampling(dsmon_pid: int, target_pid: int, timeout: float = 60.0) -> None:
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


def spawn_at_pid(pid: int, argv: list[str], attempts: int = 100, **popen_kwargs):
    """Start argv as process `pid` (a freed pid, reused on purpose), or return None when the
    kernel gave it to someone else. Needs CAP_SYS_ADMIN: the next pid is set through
    /proc/sys/kernel/ns_last_pid (what CRIU uses), and another process forking in between
    takes it, hence the attempts."""
    import subprocess
    fd = os.open("/proc/sys/kernel/ns_last_pid", os.O_WRONLY)
    try:
        for _ in range(attempts):
            os.pwrite(fd, str(pid - 1).encode(), 0)
            process = subprocess.Popen(argv, **popen_kwargs)
            if process.pid == pid:
                return process
            process.kill()
            process.wait()
            if os.path.exists(f"/proc/{pid}"):
                return None
    finally:
        os.close(fd)
    return None


def kernel_thread_pid(procfs: str = "/proc") -> int | None:
    """A kernel thread's pid (kthreadd is 2 on a host; a container's pid namespace has none)."""
    from dsmon.collectors.process import PF_KTHREAD
    candidates = sorted(int(name) for name in os.listdir(procfs) if name.isdigit())
    for pid in candidates[:200]:
        try:
            with open(f"{procfs}/{pid}/stat", "rb") as handle:
                raw = handle.read()
        except OSError:
            continue
        if int(raw[raw.rindex(b")") + 2:].split()[6]) & PF_KTHREAD:
            return pid
    return None
