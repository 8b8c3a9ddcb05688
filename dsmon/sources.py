"""Reading procfs/sysfs files: the one place where OS errors become dsmon's errors.

Every collector reads through these helpers, so "the process is gone", "permission denied"
and "this kernel has no such file" each have exactly one translation and one message.
"""

from __future__ import annotations

import errno
import os

# What an operator must grant to read another user's process files (ptrace access mode
# checks guard environ, io, fd/, exe, numa_maps, wchan of foreign processes).
PRIVILEGE_HINT = (
    "run dsmon as root, as the target's user, or grant CAP_SYS_PTRACE "
    "(systemd: AmbientCapabilities=CAP_SYS_PTRACE; docker: --cap-add SYS_PTRACE)"
)


class SourceError(Exception):
    """A file dsmon needed could not be read; `kind` says why, `hint` how to fix it."""

    kind = "error"

    def __init__(self, path: str, detail: str = "", hint: str = ""):
        self.path = path
        self.detail = detail
        self.hint = hint
        super().__init__(self.describe())

    def describe(self) -> str:
        text = f"{self.kind}: {self.path}"
        if self.detail:
            text += f" ({self.detail})"
        return text


class Missing(SourceError):
    """The file does not exist on this kernel or host (not an error of the target)."""

    kind = "missing"


class Gone(SourceError):
    """The process or thread exited while we were reading it."""

    kind = "gone"


class Denied(SourceError):
    """Permission denied: the field is unavailable without more privilege."""

    kind = "denied"

    def __init__(self, path: str, detail: str = "", hint: str = PRIVILEGE_HINT):
        super().__init__(path, detail, hint)


class Malformed(SourceError):
    """The file was read but its content is not what the parser expects."""

    kind = "malformed"


def translate(exc: OSError, path: str, process_file: bool) -> SourceError:
    """Map an OSError to a SourceError. `process_file` decides what ENOENT means."""
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        return Denied(path, os.strerror(code))
    if code == errno.ESRCH:
        return Gone(path, "process exited during the read")
    if code in (errno.EOPNOTSUPP, errno.ENOTSUP):
        return Missing(path, "not supported by this kernel")
    if code == errno.ENOENT:
        if process_file and not _owner_alive(path):
            return Gone(path, "no such process or thread")
        return Missing(path, "not present on this host")
    return SourceError(path, f"{os.strerror(code or 0)} (errno {code})")


def _owner_alive(path: str) -> bool:
    """Whether the process or thread that `path` belongs to still exists.

    A /proc/<pid> directory can outlive some of its files (and a kernel may lack a file), so a
    missing file means "gone" only when the owner's own `stat` is gone too (as psutil does).
    """
    directory = os.path.dirname(path) if not os.path.basename(path).isdigit() else path
    while directory and directory != os.sep:
        if os.path.basename(directory).isdigit():
            return os.path.exists(os.path.join(directory, "stat"))
        directory = os.path.dirname(directory)
    return False


def read_bytes(path: str, process_file: bool = False, limit: int | None = None) -> bytes:
    """Read a whole kernel file, or its first `limit` bytes or a little more (whole 64 KiB
    reads). `process_file`: the file lives under a pid (ENOENT = gone)."""
    try:
        with open(path, "rb", buffering=0) as handle:
            chunks = []
            size = 0
            while limit is None or size < limit:
                chunk = handle.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)
    except OSError as exc:
        raise translate(exc, path, process_file) from None


def read_text(path: str, process_file: bool = False) -> str:
    """Read a small kernel file as text. NUL padding (sysfs files copied by size) is dropped."""
    data = read_bytes(path, process_file)
    if b"\0" in data:
        data = data.split(b"\0", 1)[0]
    return data.decode("utf-8", errors="surrogateescape")


def read_nonempty(path: str, process_file: bool = False) -> str:
    """Like read_text, but an empty file is Malformed: procfs files are never empty.

    Copies made with `tar` or `cp` of /proc keep the size procfs reports (0), so an empty
    /proc/stat means a broken recording, and must not turn into zeros.
    """
    text = read_text(path, process_file)
    if not text.strip():
        raise Malformed(path, "file is empty; a recording of procfs made by size loses it, "
                              "record with `dsmon snapshot` instead")
    return text


def read_link(path: str, process_file: bool = True) -> str:
    try:
        return os.readlink(path)
    except OSError as exc:
        raise translate(exc, path, process_file) from None


def list_dir(path: str, process_file: bool = False) -> list[str]:
    try:
        return os.listdir(path)
    except OSError as exc:
        raise translate(exc, path, process_file) from None


def parse_cpulist(text: str) -> list[int]:
    """Parse the kernel's cpulist format ("0-3,8,10-11"); an empty list means no CPUs."""
    cpus: list[int] = []
    text = text.strip()
    if not text:
        return cpus
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            low, _, high = part.partition("-")
            used = group = None
            if ":" in high:  # "0-7:2/4": the first 2 CPUs of every group of 4 (kernel syntax)
                high, _, rest = high.partition(":")
                used_text, _, group_text = rest.partition("/")
                used, group = int(used_text), int(group_text)
            low_cpu, high_cpu = int(low), int(high)
            if group:
                for base in range(low_cpu, high_cpu + 1, group):
                    cpus.extend(range(base, min(base + used, high_cpu + 1)))
            else:
                cpus.extend(range(low_cpu, high_cpu + 1))
        else:
            cpus.append(int(part))
    return cpus


def format_cpulist(cpus) -> str:
    """The inverse of parse_cpulist: [0,1,2,5] -> "0-2,5"."""
    ordered = sorted(set(cpus))
    ranges: list[str] = []
    start = prev = None
    for cpu in ordered:
        if start is None:
            start = prev = cpu
        elif cpu == prev + 1:
            prev = cpu
        else:
            ranges.append(f"{start}-{prev}" if start != prev else str(start))
            start = prev = cpu
    if start is not None:
        ranges.append(f"{start}-{prev}" if start != prev else str(start))
    return ",".join(ranges)
