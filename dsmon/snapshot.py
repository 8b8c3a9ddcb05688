"""`dsmon snapshot`: record the files dsmon reads into a tarball that --path.* can replay.

A support bundle for bug reports, and the way hosts we do not have become test fixtures.
Files are read for their content and stored with their real length: procfs reports size 0
and sysfs 4096 for every file, so copying by size (tar, cp --sparse) records nothing useful.

Secrets stay out: the environment is reduced to dsmon's allow-list, credential-looking
command-line values are redacted, and open file descriptors keep only their kind.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time
from dataclasses import dataclass, field

from dsmon import __version__
from dsmon.collectors.cgroup import resolve_layout
from dsmon.collectors.process import (parse_environ, parse_passwd, parse_proc_cgroup, parse_stat,
                                      parse_status, redact_cmdline)
from dsmon.outputs import replacing
from dsmon.paths import HostPaths
from dsmon.sources import Gone, SourceError, list_dir, read_bytes, read_link, read_text

HOST_PROC_FILES = ("stat", "meminfo", "vmstat", "cpuinfo", "loadavg", "uptime",
                   "pressure/cpu", "pressure/memory", "pressure/io",
                   "sys/kernel/hostname", "sys/kernel/osrelease", "self/mountinfo")
CPU_TOPOLOGY_FILES = ("physical_package_id", "core_id", "thread_siblings_list", "core_cpus_list",
                      "die_id", "cluster_id")
PROCESS_FILES = ("stat", "status", "cmdline", "cgroup", "io", "limits", "numa_maps",
                 "schedstat", "comm", "oom_score", "oom_score_adj")
THREAD_FILES = ("stat", "status", "schedstat", "wchan", "comm")
CGROUP_FILES = (
    "cgroup.controllers", "cgroup.procs",
    "memory.max", "memory.high", "memory.current", "memory.stat", "memory.events",
    "memory.swap.current", "memory.swap.max", "memory.pressure",
    "memory.limit_in_bytes", "memory.usage_in_bytes", "memory.max_usage_in_bytes",
    "memory.oom_control", "memory.memsw.limit_in_bytes",
    "cpu.max", "cpu.stat", "cpu.pressure", "cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares",
    "cpu.weight", "io.pressure",
    "cpuset.cpus", "cpuset.mems", "cpuset.effective_cpus", "cpuset.effective_mems",
    "cpuset.cpus.effective", "cpuset.mems.effective",
)
MAX_SNAPSHOT_THREADS = 10000


class SnapshotError(Exception):
    def __init__(self, message: str, no_target: bool = False):
        super().__init__(message)
        self.no_target = no_target


class SnapshotWriteError(SnapshotError):
    """The output file could not be written (nothing is left behind)."""


@dataclass
class SnapshotSummary:
    files: int = 0
    bytes: int = 0
    skipped: dict[str, str] = field(default_factory=dict)


class _Recorder:
    def __init__(self, tar: tarfile.TarFile, paths: HostPaths):
        self.tar = tar
        self.paths = paths
        self.summary = SnapshotSummary()
        self._dirs: set[str] = set()
        self.mtime = time.time()

    def _name(self, path: str) -> str:
        for root, prefix in ((self.paths.procfs, "proc"), (self.paths.sysfs, "sys"),
                             (self.paths.rootfs, "")):
            root = os.path.normpath(root)
            if path == root or path.startswith(root.rstrip("/") + "/"):
                rest = os.path.relpath(path, root)
                return os.path.normpath(os.path.join(prefix, rest)).lstrip("/")
        raise ValueError(f"{path} is outside the host paths")

    def _ensure_dirs(self, name: str) -> None:
        parent = os.path.dirname(name)
        missing = []
        while parent and parent not in self._dirs:
            missing.append(parent)
            parent = os.path.dirname(parent)
        for directory in reversed(missing):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, self.mtime
            self.tar.addfile(info)
            self._dirs.add(directory)

    def add_bytes(self, path: str, data: bytes) -> None:
        name = self._name(path)
        self._ensure_dirs(name)
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o444, self.mtime
        self.tar.addfile(info, io.BytesIO(data))
        self.summary.files += 1
        self.summary.bytes += len(data)

    def add_link(self, path: str, target: str) -> None:
        name = self._name(path)
        self._ensure_dirs(name)
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, self.mtime
        self.tar.addfile(info)
        self.summary.files += 1

    def copy(self, path: str, transform=None, process_file: bool = False) -> bool:
        try:
            data = read_bytes(path, process_file)
        except Gone:
            raise
        except SourceError as exc:
            if exc.kind != "missing":
                self.summary.skipped[self._name(path)] = exc.describe()
            return False
        self.add_bytes(path, transform(data) if transform else data)
        return True


def _fd_kind(target: str) -> str:
    """Keep only what kind of thing an fd is: file names can be private."""
    match = re.match(r"^(socket|pipe|anon_inode):", target)
    if match:
        return f"{match.group(1)}:[0]"
    return "/redacted-path"


NVML_FILE = "nvml.json"


def record_nvml(nvml_backend=None) -> tuple[bytes | None, str]:
    """NVML's answers in the fake's format (replayed by --nvml-replay, or found by a replay of
    this snapshot), or None and why not."""
    from dsmon.gpu.nvml import NvmlError
    from dsmon.gpu.recording import record_answers
    try:
        if nvml_backend is None:
            from dsmon.gpu.nvml import PynvmlBackend
            nvml_backend = PynvmlBackend()
        recording = record_answers(nvml_backend, f"dsmon snapshot {__version__}")
    except NvmlError as exc:
        return None, f"NVML not recorded: {exc.kind} ({exc.detail or 'no NVIDIA driver'})"
    except (ImportError, OSError) as exc:
        return None, f"NVML not recorded: {exc}"
    return json.dumps(recording, indent=1).encode(), f"{len(recording['devices'])} GPU(s)"


def write_snapshot(paths: HostPaths, pid: int | None, output: str,
                   nvml_backend=None) -> SnapshotSummary:
    if pid is not None and not os.path.exists(paths.pid(pid, "stat")):
        raise SnapshotError(f"no process with pid {pid} under {paths.procfs}", no_target=True)
    try:
        with replacing(output) as partial, tarfile.open(partial, "w:gz") as tar:
            recorder = _Recorder(tar, paths)
            _record_host(recorder, paths)
            uid = None
            if pid is not None:
                try:
                    uid = _record_process(recorder, paths, pid)
                except Gone as exc:
                    raise SnapshotError(f"process {pid} exited while it was recorded "
                                        f"({exc.describe()})", no_target=True) from None
            _record_passwd(recorder, paths, uid)
            nvml_data, nvml_note = record_nvml(nvml_backend) if paths.is_live or \
                nvml_backend is not None else (None, "NVML not recorded: not the live host")
            if nvml_data is not None:
                recorder.add_bytes(paths.root(NVML_FILE), nvml_data)
            manifest = {"dsmon_version": __version__, "recorded_at": time.time(), "pid": pid,
                        "files": recorder.summary.files, "skipped": recorder.summary.skipped,
                        "nvml": nvml_note,
                        "replay": "tar xzf FILE -C DIR; dsmon diagnose PID --path.procfs DIR/proc "
                                  "--path.sysfs DIR/sys --path.rootfs DIR"}
            data = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo("SNAPSHOT.json")
            info.size, info.mtime = len(data), recorder.mtime
            tar.addfile(info, io.BytesIO(data))
    except OSError as exc:
        raise SnapshotWriteError(f"cannot write {output}: {exc.strerror or exc}") from None
    return recorder.summary


def _record_host(recorder: _Recorder, paths: HostPaths) -> None:
    for name in HOST_PROC_FILES:
        recorder.copy(paths.proc(name))
    cpu_dir = paths.sys("devices", "system", "cpu")
    for name in ("online", "possible", "present"):
        recorder.copy(os.path.join(cpu_dir, name))
    try:
        cpu_names = [n for n in list_dir(cpu_dir) if re.fullmatch(r"cpu\d+", n)]
    except SourceError:
        cpu_names = []
    for cpu in cpu_names:
        for name in CPU_TOPOLOGY_FILES:
            recorder.copy(os.path.join(cpu_dir, cpu, "topology", name))
    node_dir = paths.sys("devices", "system", "node")
    try:
        node_names = [n for n in list_dir(node_dir) if re.fullmatch(r"node\d+", n)]
    except SourceError:
        node_names = []
    for name in ("online", "possible", "has_cpu", "has_memory"):
        recorder.copy(os.path.join(node_dir, name))
    for node in node_names:
        for name in ("cpulist", "meminfo", "distance"):
            recorder.copy(os.path.join(node_dir, node, name))
    recorder.copy(paths.sys("fs", "cgroup", "cgroup.controllers"))


def _record_process(recorder: _Recorder, paths: HostPaths, pid: int) -> int | None:
    for name in PROCESS_FILES:
        if name == "cmdline":
            recorder.copy(paths.pid(pid, name), _redact_cmdline_bytes, process_file=True)
        else:
            recorder.copy(paths.pid(pid, name), process_file=True)
    if not parse_stat(read_bytes(paths.pid(pid, "stat"), True)).kernel_thread:
        # A kernel thread has no environment: the kernel answers ESRCH, as for an exited one.
        recorder.copy(paths.pid(pid, "environ"), _filter_environ, process_file=True)
    recorder.copy(paths.pid(pid, "maps"), _shared_libraries, process_file=True)
    for link in ("exe", "cwd", "ns/pid", "ns/cgroup"):
        try:
            recorder.add_link(paths.pid(pid, link), read_link(paths.pid(pid, link)))
        except SourceError as exc:
            if exc.kind != "missing":
                recorder.summary.skipped[f"proc/{pid}/{link}"] = exc.describe()
    try:
        for fd in list_dir(paths.pid(pid, "fd"), process_file=True):
            path = paths.pid(pid, "fd", fd)
            try:
                recorder.add_link(path, _fd_kind(read_link(path)))
            except SourceError:
                continue  # closed between listing and reading
    except SourceError as exc:
        recorder.summary.skipped[f"proc/{pid}/fd"] = exc.describe()

    tids = sorted(int(t) for t in list_dir(paths.pid(pid, "task"), process_file=True) if t.isdigit())
    for tid in tids[:MAX_SNAPSHOT_THREADS]:
        try:
            for name in THREAD_FILES:
                recorder.copy(paths.task(pid, tid, name), process_file=True)
        except Gone:
            continue  # a thread that exits mid-recording is simply not in the snapshot

    cgroups = parse_proc_cgroup(read_text(paths.pid(pid, "cgroup"), process_file=True))
    layout = resolve_layout(paths, cgroups)
    directories = set()
    for controller, directory in (("memory", layout.memory), ("cpu", layout.cpu),
                                  ("cpuset", layout.cpuset), ("unified", layout.unified)):
        if directory is None:
            continue
        root = layout.mount_roots.get(controller, directory)
        current = directory
        while True:
            directories.add(current)
            if len(current) <= len(root) or os.path.normpath(current) == os.path.normpath(root):
                break
            current = os.path.dirname(current)
    for directory in sorted(directories):
        for name in CGROUP_FILES:
            recorder.copy(os.path.join(directory, name))
    status = parse_status(read_text(paths.pid(pid, "status"), process_file=True))
    return int(status["Uid"].split()[1]) if "Uid" in status else None


def _record_passwd(recorder: _Recorder, paths: HostPaths, uid: int | None) -> None:
    """Only the target's user line: the rest of /etc/passwd is none of the report's business."""
    if uid is None:
        return
    try:
        text = read_text(paths.root("etc", "passwd"))
    except SourceError:
        return
    name = parse_passwd(text).get(uid)
    if name is not None:
        recorder.add_bytes(paths.root("etc", "passwd"),
                           f"{name}:x:{uid}:{uid}::/nonexistent:/usr/sbin/nologin\n".encode())


def _shared_libraries(raw: bytes) -> bytes:
    """Only the mappings of shared libraries (engine detection needs libtorch); mapped data
    files, such as model weights, can name private paths."""
    return b"".join(line + b"\n" for line in raw.splitlines() if b".so" in line)


def _filter_environ(raw: bytes) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in parse_environ(raw).items())


def _redact_cmdline_bytes(raw: bytes) -> bytes:
    args = [part.decode("utf-8", "surrogateescape") for part in raw.split(b"\0") if part]
    return b"".join(a.encode("utf-8", "surrogateescape") + b"\0" for a in redact_cmdline(args))
