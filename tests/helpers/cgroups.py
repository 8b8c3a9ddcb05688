"""Temporary memory cgroups for scenario tests: a limit, real processes charged to it, cleanup.

`memory_cgroup(limit_bytes)` creates a child of this process's own memory cgroup (cgroup v1:
the memory controller's directory named in /proc/self/cgroup; pure cgroup v2: the unified
directory, or the hierarchy root when the memory controller cannot be delegated below our own
cgroup), sets its limit, and on exit kills every process in it and removes it.

Processes are started *inside* the cgroup (`sh -c 'echo $$ > cgroup.procs; exec "$@"'`), so
every page they touch, from the interpreter's first import on, is charged to it.

`unavailable_reason()` says why such a cgroup cannot be made here (not root, no memory
controller, read-only cgroupfs); tests skip with that reason.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.spawn import WORKLOAD

class CgroupUnavailable(Exception):
    """No writable memory cgroup here; the message says why (used as the skip reason)."""


def _mounts(proc_self_mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str, str, list[str]]]:
    """(root within the hierarchy, mount point, fstype, super options) of each cgroup mount."""
    mounts = []
    with open(proc_self_mountinfo, encoding="utf-8") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
                continue
            mounts.append((fields[3], fields[4].replace("\\040", " "), tail[0],
                           tail[2].split(",")))
    return mounts


def _own_cgroups() -> list[tuple[str, list[str], str]]:
    entries = []
    with open("/proc/self/cgroup", encoding="utf-8") as handle:
        for line in handle:
            hierarchy, controllers, path = line.rstrip("\n").split(":", 2)
            entries.append((hierarchy, [c for c in controllers.split(",") if c], path))
    return entries


def _under(mount_root: str, mount_point: str, path: str) -> Path:
    """The directory of cgroup `path` (as /proc/self/cgroup names it) under a mount."""
    relative = path
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root.rstrip("/") + "/")):
        relative = path[len(mount_root.rstrip("/")):]
    return Path(os.path.normpath(os.path.join(mount_point, relative.lstrip("/"))))


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def find_parent() -> tuple[Path, str]:
    """(directory to create the test cgroup in, "v1" or "v2"); raises CgroupUnavailable."""
    if os.geteuid() != 0:
        raise CgroupUnavailable("memory cgroup scenarios need root (to create a cgroup and "
                                "move processes into it)")
    try:
        mounts, entries = _mounts(), _own_cgroups()
    except OSError as exc:
        raise CgroupUnavailable(f"cannot read /proc/self/cgroup or mountinfo: {exc}") from exc
    v1_memory = next((path for _, controllers, path in entries if "memory" in controllers), None)
    if v1_memory is not None:
        for root, point, fstype, options in mounts:
            if fstype == "cgroup" and "memory" in options:
                directory = _under(root, point, v1_memory)
                if (directory / "memory.limit_in_bytes").exists():
                    return _check_writable(directory), "v1"
        raise CgroupUnavailable(f"this process's v1 memory cgroup {v1_memory} is not mounted "
                                "here (no cgroup mount with the memory controller)")
    v2_path = next((path for hierarchy, controllers, path in entries
                    if hierarchy == "0" and not controllers), None)
    v2_mount = next(((root, point) for root, point, fstype, _ in mounts if fstype == "cgroup2"),
                    None)
    if v2_path is None or v2_mount is None:
        raise CgroupUnavailable("no memory cgroup: neither a v1 memory controller nor cgroup v2")
    root_dir = Path(v2_mount[1])
    available = _read(root_dir / "cgroup.controllers").split() \
        if (root_dir / "cgroup.controllers").exists() else []
    if "memory" not in available:
        raise CgroupUnavailable(f"the cgroup v2 hierarchy at {root_dir} has no memory controller "
                                "(and there is no v1 memory controller)")
    own = _under(v2_mount[0], v2_mount[1], v2_path)
    # v2 puts controllers only on cgroups whose parent delegates them (subtree_control), and a
    # cgroup with processes cannot delegate (no internal processes), except the root.
    for candidate in (own, root_dir):
        control = candidate / "cgroup.subtree_control"
        try:
            if "memory" not in _read(control).split():
                control.write_text("+memory", encoding="utf-8")
        except OSError:
            continue
        return _check_writable(candidate), "v2"
    raise CgroupUnavailable(f"cannot delegate the v2 memory controller below {own} or {root_dir}")


def _check_writable(directory: Path) -> Path:
    probe = directory / f"dsmon-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        probe.mkdir()
    except OSError as exc:
        raise CgroupUnavailable(f"cannot create a cgroup under {directory}: {exc}") from exc
    rmdir_when_empty(probe)
    return directory


def unavailable_reason() -> str | None:
    try:
        find_parent()
    except CgroupUnavailable as exc:
        return str(exc)
    return None


def rmdir_when_empty(path: Path, timeout: float = 10.0) -> None:
    """rmdir a cgroup, retrying while killed tasks are still leaving it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            # EBUSY while killed tasks are still leaving the cgroup.
            if exc.errno not in (errno.EBUSY, errno.EAGAIN) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@dataclass
class MemoryCgroup:
    path: Path
    version: str                     # "v1" or "v2"
    limit_bytes: int

    @property
    def name(self) -> str:
        """The last component of the cgroup's path (as /proc/PID/cgroup ends)."""
        return self.path.name

    def file(self, v1_name: str, v2_name: str) -> Path:
        return self.path / (v1_name if self.version == "v1" else v2_name)

    def procs(self) -> list[int]:
        return [int(line) for line in _read(self.path / "cgroup.procs").split()]

    def add(self, pid: int) -> None:
        """Move a running process in. Its pages touched so far stay charged where they were
        (v1 without move_charge_at_immigrate), so prefer `spawn`, which starts inside."""
        (self.path / "cgroup.procs").write_text(str(pid), encoding="utf-8")

    def usage_bytes(self) -> int:
        return int(_read(self.file("memory.usage_in_bytes", "memory.current")))

    def stat(self) -> dict[str, int]:
        values = {}
        for line in _read(self.path / "memory.stat").splitlines():
            key, _, value = line.partition(" ")
            if value.strip().lstrip("-").isdigit():
                values[key] = int(value)
        return values

    def inactive_file_bytes(self) -> int:
        stat = self.stat()
        return stat.get("total_inactive_file", stat.get("inactive_file", 0)) \
            if self.version == "v1" else stat.get("inactive_file", 0)

    def oom_kills(self) -> int:
        events = _read(self.file("memory.oom_control", "memory.events"))
        for line in events.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def wrap(self, argv: list[str]) -> list[str]:
        """argv run by a shell that first moves itself into the cgroup, then execs argv."""
        procs = str(self.path / "cgroup.procs")
        script = 'echo $$ > "$0" || exit 97; exec "$@"'
        return ["sh", "-c", script, procs, *argv]

    def spawn(self, argv: list[str], **popen) -> subprocess.Popen:
        """Start argv inside the cgroup, charged from its first page."""
        return subprocess.Popen(self.wrap(argv), **popen)

    @contextmanager
    def process(self, argv: list[str], ready_timeout: float = 60.0, **popen):
        """argv started inside the cgroup with stdout piped; yields it once it printed a line
        starting with "ready"; kills and reaps it at the end."""
        process = self.spawn(argv, stdout=subprocess.PIPE, text=True, **popen)
        try:
            line = _readline(process, ready_timeout)
            if not line.startswith("ready"):
                raise RuntimeError(f"{argv[:3]} did not start in {self.path}: {line!r} "
                                   f"(exit {process.poll()})")
            if process.pid not in self.procs():
                raise RuntimeError(f"pid {process.pid} is not in {self.path}: {self.procs()}")
            yield process
        finally:
            _stop(process)

    def workload(self, *args: str, timeout: float = 60.0):
        """tests/helpers/workload.py started inside the cgroup; yields it once "ready"."""
        return self.process([sys.executable, str(WORKLOAD), *args], ready_timeout=timeout)

    def kill_all(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pids = self.procs()
            except FileNotFoundError:
                return
            if not pids:
                return
            sigkill(pids)
            time.sleep(0.05)
        raise RuntimeError(f"processes {self.procs()} did not leave {self.path}")


def sigkill(pids: list[int]) -> None:
    """SIGKILL each pid; one that is already gone is fine."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _readline(process: subprocess.Popen, timeout: float) -> str:
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return process.stdout.readline()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait()
    for stream in (process.stdout, process.stdin, process.stderr):
        if stream is not None:
            stream.close()


@contextmanager
def memory_cgroup(limit_bytes: int, prefix: str = "dsmon-test"):
    """A temporary memory cgroup limited to `limit_bytes` (and no swap beyond it)."""
    parent, version = find_parent()
    path = parent / f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    group = MemoryCgroup(path, version, limit_bytes)
    try:
        if version == "v1":
            (path / "memory.limit_in_bytes").write_text(str(limit_bytes), encoding="utf-8")
            memsw = path / "memory.memsw.limit_in_bytes"
            if memsw.exists():   # with swap accounting: no swapping past the limit either
                memsw.write_text(str(limit_bytes), encoding="utf-8")
        else:
            (path / "memory.max").write_text(str(limit_bytes), encoding="utf-8")
            swap = path / "memory.swap.max"
            if swap.exists():
                swap.write_text("0", encoding="utf-8")
        yield group
    finally:
        try:
            group.kill_all()
        finally:
            rmdir_when_empty(path)
