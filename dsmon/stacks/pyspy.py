"""The one place dsmon runs py-spy.

Every dump is `py-spy dump --json --nonblocking` under a hard wall-clock timeout: blocking mode
pauses every thread of the target (it has stalled PyTorch processes with many native threads) and
hangs on a target stalled in a filesystem call. At most one py-spy runs per target (two ptrace
attachers fail with EPERM), py-spy's stderr is classified into a few kinds each with a fix, and the
target's run state is checked after every call so that dsmon never leaves it stopped.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from dsmon.collectors.process import StatFields, parse_stat
from dsmon.sources import SourceError, read_bytes

DEFAULT_TIMEOUT_S = 2.0
# A dump's time grows with the thread count (measured: ~70 ms for 64 threads, ~0.4 s for 512
# on a loaded 2-core machine), so the hard limit does too, up to a ceiling.
TIMEOUT_PER_THREAD_S = 0.002
MAX_TIMEOUT_S = 30.0
STDOUT_LIMIT = 16 * 1024 * 1024     # a dump of 10,000 threads with deep stacks is ~10 MB

PTRACE_HINT = (
    "py-spy reads the target's memory, which needs ptrace access: run dsmon as root or as the "
    "target's user, or grant CAP_SYS_PTRACE (systemd: AmbientCapabilities=CAP_SYS_PTRACE as in "
    "systemd/dsmon.service; Docker: --cap-add SYS_PTRACE and --pid=host to see host processes; "
    "Kubernetes: securityContext.capabilities.add: [SYS_PTRACE], plus shareProcessNamespace: true "
    "for a sidecar). With kernel.yama.ptrace_scope=1 a non-root user may only trace its own "
    "children; 2 needs CAP_SYS_PTRACE; 3 forbids it.")

# py-spy's stderr, mapped to a kind. Checked in order; the first match wins.
_CLASSIFY = (
    ("permission_denied", ("Permission Denied", "Operation not permitted (os error 1)",
                           "Permission denied (os error 13)")),
    ("unsupported_python", ("Unsupported version of Python", "Cannot detect GIL holding")),
    ("not_python", ("Failed to find python version", "No python processes found",
                    "Failed to find a python interpreter", "failed to find _PyRuntime",
                    "Both python and libpython are invalid")),
    ("gone", ("Check that the process is running", "No such process", "process exited",
              "No such file or directory (os error 2)")),
)

_LEADS = {"permission_denied": "permission denied", "unsupported_python": "unsupported Python version",
          "not_python": "not a Python process", "gone": "the process exited"}

_HINTS = {
    "missing": "install py-spy next to dsmon (pip install py-spy, a dsmon dependency) or put it "
               "on PATH; or pass --py-spy PATH",
    "permission_denied": PTRACE_HINT,
    "unsupported_python": "upgrade py-spy (pip install -U py-spy): this py-spy does not know the "
                          "target's Python version",
    "not_python": "stacks are only available for Python processes; use `perf top -p PID` or "
                  "`gdb -p PID -batch -ex 'thread apply all bt'` for native code",
    "gone": "",
    "timeout": "the target may be stalled in the kernel (D state) or very large; try again "
               "or raise the timeout",
    "busy": "another py-spy call for this target is running; try again in a moment",
    "target_stopped": "the target is stopped (SIGSTOP, a debugger or job control): sampling "
                      "resumes when it continues (kill -CONT PID)",
    "failed": "run `py-spy dump --pid PID --nonblocking` by hand to see py-spy's own error",
}


class PySpyError(Exception):
    """py-spy could not answer; `kind` is one of _HINTS' keys, `hint` says what to do."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        self.hint = _HINTS.get(kind, "")
        super().__init__(message)

    @property
    def permanent(self) -> bool:
        """Trying again (for this target, with this py-spy) will not help."""
        return self.kind in ("missing", "permission_denied", "unsupported_python", "not_python",
                             "gone")


@dataclass(frozen=True)
class Dump:
    """One dump and what it cost: py-spy's own CPU (its rusage), so a sampler can keep to a
    CPU budget on any host instead of guessing from wall time."""
    threads: list
    cpu_s: float


@dataclass(frozen=True)
class Frame:
    function: str
    filename: str
    short_filename: str
    line: int

    def label(self) -> str:
        return f"{self.function} ({self.short_filename}:{self.line})"


@dataclass(frozen=True)
class ThreadStack:
    """One Python thread at one instant, as py-spy saw it."""
    thread_id: int            # Python's thread identifier (pthread_t)
    os_thread_id: int | None  # the kernel thread id, in the target's PID namespace
    name: str | None
    active: bool              # running or runnable (not sleeping, not in a known idle call)
    owns_gil: bool
    frames: tuple[Frame, ...]  # innermost first
    locals: tuple | None = None


def classify(stderr: str, returncode: int) -> tuple[str, str]:
    """(kind, message) for a failed py-spy run, from its stderr. Pure, for tests."""
    text = stderr.strip()
    for kind, needles in _CLASSIFY:
        if any(needle in text for needle in needles):
            return kind, f"{_LEADS[kind]} (py-spy: {_first_error_line(text)})"
    return "failed", _first_error_line(text) or f"py-spy exited with status {returncode}"


def _first_error_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("py-spy>"):
            return line.removeprefix("Error: ")
    return ""


def parse_dump(text: str | bytes) -> list[ThreadStack]:
    """`py-spy dump --json` output -> threads. Raises ValueError on anything else."""
    document = json.loads(text)
    if not isinstance(document, list):
        raise ValueError("py-spy dump --json did not return a list of threads")
    threads = []
    for entry in document:
        frames = tuple(Frame(str(f.get("name", "?")), str(f.get("filename", "?")),
                             str(f.get("short_filename") or f.get("filename", "?")),
                             int(f.get("line") or 0))
                       for f in entry.get("frames") or ())
        local_values = tuple((f.get("locals") or ()) for f in entry.get("frames") or ()) \
            if any(f.get("locals") for f in entry.get("frames") or ()) else None
        os_tid = entry.get("os_thread_id")
        threads.append(ThreadStack(int(entry.get("thread_id") or 0),
                                   int(os_tid) if os_tid is not None else None,
                                   entry.get("thread_name"), bool(entry.get("active")),
                                   bool(entry.get("owns_gil")), frames, local_values))
    return threads


def find_pyspy(explicit: str | None = None) -> str | None:
    """The py-spy binary: an explicit path, the one installed with dsmon's Python (pip puts it
    next to the interpreter), or PATH."""
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("py-spy")


def _stat(procfs: str, pid: int) -> StatFields | None:
    """The target's stat line (run state, thread count), or None when it is gone or unreadable."""
    try:
        return parse_stat(read_bytes(f"{procfs}/{pid}/stat", True))
    except (SourceError, ValueError):
        return None


def run_state(procfs: str, pid: int) -> str | None:
    stat = _stat(procfs, pid)
    return stat.state if stat is not None else None


class PySpy:
    """Runs py-spy dumps. One instance per driver; it owns the per-target locks."""

    def __init__(self, binary: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 procfs: str = "/proc", explicit: bool = False):
        self.binary = binary if explicit else find_pyspy(binary)
        self.requested = binary
        self.timeout_s = timeout_s
        self.procfs = procfs
        self._locks: dict[int, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.resumed: list[int] = []     # targets dsmon had to SIGCONT (should stay empty)

    def _lock(self, pid: int) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(pid, threading.Lock())

    def dump(self, pid: int, *, with_locals: bool = False, blocking: bool = False,
             timeout_s: float | None = None) -> list[ThreadStack]:
        """Every Python thread's stack. Raises PySpyError."""
        return self.measured_dump(pid, with_locals=with_locals, blocking=blocking,
                                  timeout_s=timeout_s).threads

    def measured_dump(self, pid: int, *, with_locals: bool = False, blocking: bool = False,
                      timeout_s: float | None = None) -> Dump:
        """A dump with py-spy's CPU seconds. Raises PySpyError."""
        if not self.binary:
            where = f" at {self.requested}" if self.requested else " (next to dsmon or on PATH)"
            raise PySpyError("missing", f"py-spy not found{where}")
        lock = self._lock(pid)
        if not lock.acquire(blocking=False):
            raise PySpyError("busy", f"a py-spy call for pid {pid} is already running")
        try:
            command = [self.binary, "dump", "--pid", str(pid), "--json"]
            if not blocking:
                command.append("--nonblocking")
            if with_locals:
                command.append("--locals")
            stat = _stat(self.procfs, pid)
            if stat is None:
                raise PySpyError("gone", f"process {pid} does not exist")
            if timeout_s is None:
                timeout_s = min(MAX_TIMEOUT_S,
                                self.timeout_s + TIMEOUT_PER_THREAD_S * stat.num_threads)
            stdout, cpu_s = self._run(pid, command, timeout_s, stat.state)
            return Dump(parse_dump(stdout), cpu_s)
        except ValueError as exc:
            raise PySpyError("failed", f"py-spy output was not JSON: {exc}") from None
        finally:
            lock.release()

    def _run(self, pid: int, command: list[str], timeout_s: float,
             before: str) -> tuple[bytes, float]:
        env = dict(os.environ, RUST_BACKTRACE="0", RUST_LOG="error")
        try:
            child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, start_new_session=True)
        except OSError as exc:
            raise PySpyError("missing", f"cannot run {command[0]}: {exc.strerror}") from None
        stdout, stderr, cpu_s = _communicate(child, timeout_s)
        self._ensure_running(pid, before)
        if cpu_s is None:
            raise PySpyError("timeout", f"py-spy did not answer within {timeout_s:g} s "
                             "and was killed")
        if len(stdout) > STDOUT_LIMIT:
            raise PySpyError("failed", f"py-spy returned over {STDOUT_LIMIT} bytes (the limit) "
                             "and was stopped")
        if child.returncode != 0:
            kind, message = classify(stderr.decode(errors="replace"), child.returncode)
            if kind == "failed" and run_state(self.procfs, pid) is None:
                kind, message = "gone", f"process {pid} exited during the dump"
            raise PySpyError(kind, message)
        return stdout, cpu_s

    def _ensure_running(self, pid: int, before: str | None) -> None:
        """A target that was running must not stay stopped because of py-spy: a killed blocking
        py-spy can leave it in a ptrace or group stop. A target stopped by its own signal
        (state T before the call) is left as it was."""
        deadline = time.monotonic() + 0.2
        while True:
            after = run_state(self.procfs, pid)
            if after not in ("T", "t") or before in ("T", "t"):
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        try:
            os.kill(pid, signal.SIGCONT)
            self.resumed.append(pid)
        except OSError:
            pass


def _communicate(child: subprocess.Popen, timeout_s: float) -> tuple[bytes, bytes, float | None]:
    """(stdout, stderr, CPU seconds) of a child, reaped with wait4 so its rusage is its own
    (RUSAGE_CHILDREN would mix in every other child of the agent). Past the deadline, or past
    STDOUT_LIMIT, the child is killed and reaped; a timeout gives CPU None."""
    deadline = time.monotonic() + timeout_s
    chunks: dict = {child.stdout: [], child.stderr: []}
    size = 0
    timed_out = False
    with selectors.DefaultSelector() as selector:
        for stream in chunks:
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in selector.select(left):
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fileobj)
                    continue
                chunks[key.fileobj].append(data)
                size += len(data)
            if size > STDOUT_LIMIT + 65536:
                break                     # the caller reports the size; stop reading
    if timed_out or size > STDOUT_LIMIT + 65536:
        child.kill()
    # Both pipes closed is not an exit: py-spy may still hang, so the deadline holds here too.
    pid, status, usage = os.wait4(child.pid, os.WNOHANG)
    while not pid and not timed_out and time.monotonic() < deadline:
        time.sleep(0.002)
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
    if not pid:
        timed_out = True
        child.kill()
        _, status, usage = os.wait4(child.pid, 0)   # reap: no zombie py-spy left behind
    child.returncode = os.waitstatus_to_exitcode(status)
    for stream in chunks:
        stream.close()
    if timed_out:
        return b"", b"", None
    return (b"".join(chunks[child.stdout]), b"".join(chunks[child.stderr]),
            usage.ru_utime + usage.ru_stime)
