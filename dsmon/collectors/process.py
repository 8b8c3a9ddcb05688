"""The target process: identity, memory, I/O, fds, affinity, NUMA placement, thread settings."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dsmon.paths import HostPaths
from dsmon.sources import (Denied, Gone, Malformed, Missing, SourceError, list_dir, parse_cpulist,
                           read_bytes, read_link, read_text, translate)

# Threading and allocator settings that decide how an inference process uses the host.
# A fixed allow-list: the environment also holds tokens and passwords, never dump it whole.
ENVIRON_ALLOW_LIST = (
    "OMP_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES", "OMP_DYNAMIC", "OMP_WAIT_POLICY",
    "GOMP_CPU_AFFINITY", "KMP_AFFINITY", "KMP_BLOCKTIME", "KMP_HW_SUBSET",
    "MKL_NUM_THREADS", "MKL_DYNAMIC", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
    "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMEXPR_MAX_THREADS",
    "TORCH_NUM_THREADS", "TORCH_NUM_INTEROP_THREADS", "TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
    "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "CUDA_LAUNCH_BLOCKING",
    "CUDA_MODULE_LOADING", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "NCCL_P2P_DISABLE",
    "NCCL_IB_DISABLE", "NCCL_SOCKET_IFNAME", "NCCL_DEBUG",
    "VLLM_WORKER_MULTIPROC_METHOD", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE",
    "MALLOC_ARENA_MAX", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD", "PYTHONMALLOC",
    "WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK",
)


# Command-line options whose value is a credential: the value is replaced in reports and
# snapshots, which operators paste into tickets ("--api-key sk-..." is common on vLLM/TGI).
_SECRET_OPTION = re.compile(r"(key|token|secret|passw|credential|auth)", re.IGNORECASE)
REDACTED = "<redacted>"


def redact_cmdline(args: list[str]) -> list[str]:
    redacted: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next:
            redacted.append(REDACTED)
            hide_next = False
            continue
        if arg.startswith("-") and _SECRET_OPTION.search(arg):
            name, sep, _ = arg.partition("=")
            if sep:
                redacted.append(f"{name}={REDACTED}")
            else:
                redacted.append(arg)
                hide_next = True
            continue
        redacted.append(arg)
    return redacted


# include/linux/sched.h: the task is a kernel thread (stat field 9, "flags"). Such a task has no
# memory map, command line, executable or environment, and sits in the root cgroup.
PF_KTHREAD = 0x00200000
KERNEL_THREAD_MEMORY = "kernel thread: no user memory"
ZOMBIE_MEMORY = "zombie: memory already released"


@dataclass(frozen=True)
class StatFields:
    """The fields of /proc/<pid>[/task/<tid>]/stat that dsmon uses (times in clock ticks)."""

    comm: str
    state: str
    ppid: int
    utime: int
    stime: int
    num_threads: int
    start_ticks: int
    rss_pages: int
    processor: int
    blkio_ticks: int
    flags: int = 0

    @property
    def kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)


def decode_comm(raw: bytes) -> str:
    """Thread names are bytes; keep undecodable bytes visible as \\xNN rather than dropping them."""
    return raw.decode("utf-8", errors="backslashreplace")


def parse_stat(raw: bytes) -> StatFields:
    """Parse a stat line. The name sits in parentheses and may itself hold ')' and spaces,
    so it runs from the first '(' to the last ')'."""
    open_at = raw.find(b"(")
    close_at = raw.rfind(b")")
    if open_at < 0 or close_at < open_at:
        raise Malformed("stat", "no (comm) in stat line")
    fields = raw[close_at + 2:].split()
    if len(fields) < 22:
        raise Malformed("stat", f"only {len(fields)} fields after comm")

    def at(position: int) -> int:  # 1-based field number as in proc(5)
        index = position - 3
        return int(fields[index]) if index < len(fields) else 0

    return StatFields(
        comm=decode_comm(raw[open_at + 1:close_at]),
        state=fields[0].decode("ascii", "replace"),
        ppid=at(4), utime=at(14), stime=at(15), num_threads=at(20), start_ticks=at(22),
        rss_pages=at(24), processor=at(39), blkio_ticks=at(42), flags=at(9),
    )


def parse_status(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip()
    return fields


def status_kib(fields: dict[str, str], key: str) -> int | None:
    """A "1234 kB" status field in bytes, or None when the kernel does not report it."""
    value = fields.get(key)
    if value is None:
        return None
    return int(value.split()[0]) * 1024


def parse_io(text: str) -> dict[str, int]:
    counters: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            counters[key.strip()] = int(value)
    if "read_bytes" not in counters:
        raise Malformed("io", "no read_bytes (kernel without CONFIG_TASK_IO_ACCOUNTING?)")
    return counters


def parse_numa_maps(text) -> dict[int, int]:
    """Resident bytes per NUMA node: each mapping lists N<node>=<pages> of its page size.
    `text`: the file's text, or its lines (an open file: a 10,000-thread process has a
    1.6 MB numa_maps, which read whole and split cost the agent ~7 MB of peak RSS)."""
    per_node: dict[int, int] = {}
    for line in (text.splitlines() if isinstance(text, str) else text):
        page_size = 4096
        counts: list[tuple[int, int]] = []
        for item in line.split():
            if item.startswith("kernelpagesize_kB="):
                page_size = int(item[18:]) * 1024
            elif item[:1] == "N" and "=" in item:
                node, _, pages = item[1:].partition("=")
                if node.isdigit():
                    counts.append((int(node), int(pages)))
        for node, pages in counts:
            per_node[node] = per_node.get(node, 0) + pages * page_size
    return per_node


def parse_environ(raw: bytes, allowed=ENVIRON_ALLOW_LIST) -> dict[str, str]:
    wanted = set(allowed)
    found: dict[str, str] = {}
    for entry in raw.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep:
            name = key.decode("utf-8", "replace")
            if name in wanted:
                found[name] = value.decode("utf-8", "backslashreplace")
    return found


def parse_proc_cgroup(text: str) -> list[tuple[str, list[str], str]]:
    """Lines "id:controllers:path" -> (id, [controllers], path); v2 is id 0 with no controllers."""
    entries = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        entries.append((hierarchy, [c for c in controllers.split(",") if c], path))
    return entries


def parse_passwd(text: str) -> dict[int, str]:
    users: dict[int, str] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            users.setdefault(int(parts[2]), parts[0])
    return users


@dataclass
class Identity:
    """Who the target is. (pid, start_ticks) names one process for its whole life."""

    pid: int
    start_ticks: int
    comm: str
    cmdline: list[str]
    exe: str | None
    uid: int | None
    user: str | None
    ppid: int
    cgroups: list[tuple[str, list[str], str]]
    pid_namespace: str | None
    nspid: list[int]
    state: str = ""
    unavailable: dict[str, str] = field(default_factory=dict)
    kernel_thread: bool = False

    @property
    def kind(self) -> str:
        """What the pid names: "kernel thread", "zombie" or "process"."""
        if self.kernel_thread:
            return "kernel thread"
        return "zombie" if self.state == "Z" else "process"

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start_ticks)

    @property
    def in_container_pid_namespace(self) -> bool:
        return len(self.nspid) > 1


@dataclass
class ProcessSample:
    state: str
    utime_s: float
    stime_s: float
    num_threads: int
    rss_bytes: int | None
    rss_anon_bytes: int | None
    rss_file_bytes: int | None
    peak_rss_bytes: int | None
    swap_bytes: int | None
    vm_size_bytes: int | None
    voluntary_switches: int | None
    involuntary_switches: int | None
    cpus_allowed: list[int]
    mems_allowed: list[int]
    io: dict[str, int] | None
    open_fds: int | None
    fd_limit: int | None


def read_stat(paths: HostPaths, pid: int) -> StatFields:
    return parse_stat(read_bytes(paths.pid(pid, "stat"), process_file=True))


def is_same_process(paths: HostPaths, pid: int, start_ticks: int) -> bool:
    """Whether `pid` still names the process that started at `start_ticks` (identity is pid +
    start time). Reads the main thread's stat, as check_identity does."""
    try:
        stat = parse_stat(read_bytes(paths.task(pid, pid, "stat"), process_file=True))
    except (Gone, Missing):
        return False
    except SourceError:
        return True     # unreadable is not proof of another process
    return stat.start_ticks == start_ticks


class ProcessGone(Gone):
    """The target exited or its pid now names another process."""


class ProcessCollector:
    """Reads one target. Every read checks that the pid still names the same process."""

    name = "process"

    def __init__(self, paths: HostPaths, pid: int, hz: int = 100):
        self.paths = paths
        self.pid = pid
        self.hz = hz
        self.start_ticks: int | None = None
        self.kernel_thread = False
        self._users: dict[int, str] | None = None

    def stat(self) -> StatFields:
        stat = read_stat(self.paths, self.pid)
        if self.start_ticks is None:
            self.start_ticks = stat.start_ticks
            self.kernel_thread = stat.kernel_thread
        elif stat.start_ticks != self.start_ticks:
            raise ProcessGone(self.paths.pid(self.pid), "pid was reused by another process")
        return stat

    def check_identity(self) -> None:
        """Raise ProcessGone when the pid now names another process. Reads the main thread's
        stat: the same start time, without the kernel summing every thread as for
        /proc/<pid>/stat (3.4 ms at 10,000 threads)."""
        stat = parse_stat(read_bytes(self.paths.task(self.pid, self.pid, "stat"), process_file=True))
        if self.start_ticks is not None and stat.start_ticks != self.start_ticks:
            raise ProcessGone(self.paths.pid(self.pid), "pid was reused by another process")

    def identity(self) -> Identity:
        stat = self.stat()
        unavailable: dict[str, str] = {}
        paths, pid = self.paths, self.pid

        def optional(name, read, default=None):
            try:
                return read()
            except (Denied, Missing, Malformed) as exc:
                unavailable[name] = reason(exc)
                return default

        cmdline_raw = optional("cmdline", lambda: read_bytes(paths.pid(pid, "cmdline"), True), b"")
        cmdline = redact_cmdline([part.decode("utf-8", "backslashreplace")
                                  for part in cmdline_raw.split(b"\0") if part])
        if not cmdline and stat.state == "Z":
            unavailable["cmdline"] = "zombie: the process has exited and awaits its parent"
        exe = optional("exe", lambda: read_link(paths.pid(pid, "exe")))
        if stat.kernel_thread:
            unavailable["cmdline"] = unavailable["exe"] = \
                "kernel thread: no command line or executable"
        status = parse_status(read_text(paths.pid(pid, "status"), process_file=True))
        uid = int(status["Uid"].split()[1]) if "Uid" in status else None  # effective uid
        user = self._user_name(uid) if uid is not None else None
        nspid = [int(v) for v in status.get("NSpid", str(pid)).split()]
        cgroups = optional("cgroup", lambda: parse_proc_cgroup(
            read_text(paths.pid(pid, "cgroup"), process_file=True)), [])
        namespace = optional("pid_namespace", lambda: read_link(paths.pid(pid, "ns", "pid")))
        return Identity(pid, stat.start_ticks, stat.comm, cmdline, exe, uid, user, stat.ppid,
                        cgroups, namespace, nspid, stat.state, unavailable, stat.kernel_thread)

    def _user_name(self, uid: int) -> str | None:
        if self._users is None:
            try:
                self._users = parse_passwd(read_text(self.paths.root("etc", "passwd")))
            except SourceError:
                self._users = {}
        return self._users.get(uid)

    def sample(self) -> tuple[ProcessSample, dict[str, str]]:
        paths, pid = self.paths, self.pid
        stat = self.stat()
        status = parse_status(read_text(paths.pid(pid, "status"), process_file=True))
        unavailable: dict[str, str] = {}
        io = None
        try:
            io = parse_io(read_text(paths.pid(pid, "io"), process_file=True))
        except (Denied, Missing, Malformed) as exc:
            unavailable["io"] = reason(exc)
        open_fds = None
        try:
            open_fds = len(list_dir(paths.pid(pid, "fd"), process_file=True))
        except (Denied, Missing) as exc:
            unavailable["open_fds"] = reason(exc)
        fd_limit = None
        try:
            fd_limit = parse_fd_limit(read_text(paths.pid(pid, "limits"), process_file=True))
        except (Denied, Missing, Malformed) as exc:
            unavailable["fd_limit"] = reason(exc)
        if stat.kernel_thread:
            unavailable["memory"] = KERNEL_THREAD_MEMORY
        elif stat.state == "Z":
            unavailable["memory"] = ZOMBIE_MEMORY
        sample = ProcessSample(
            state=stat.state,
            utime_s=stat.utime / self.hz,
            stime_s=stat.stime / self.hz,
            num_threads=stat.num_threads,
            rss_bytes=status_kib(status, "VmRSS"),
            rss_anon_bytes=status_kib(status, "RssAnon"),
            rss_file_bytes=status_kib(status, "RssFile"),
            peak_rss_bytes=status_kib(status, "VmHWM"),
            swap_bytes=status_kib(status, "VmSwap"),
            vm_size_bytes=status_kib(status, "VmSize"),
            voluntary_switches=_int_or_none(status.get("voluntary_ctxt_switches")),
            involuntary_switches=_int_or_none(status.get("nonvoluntary_ctxt_switches")),
            cpus_allowed=parse_cpulist(status.get("Cpus_allowed_list", "")),
            mems_allowed=parse_cpulist(status.get("Mems_allowed_list", "")),
            io=io,
            open_fds=open_fds,
            fd_limit=fd_limit,
        )
        return sample, unavailable

    def numa_memory(self) -> dict[int, int]:
        """Resident bytes per node. Walks the page tables: costly on big processes, read rarely."""
        path = self.paths.pid(self.pid, "numa_maps")
        if self.kernel_thread:
            raise Missing(path, KERNEL_THREAD_MEMORY)
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as handle:
                return parse_numa_maps(handle)
        except OSError as exc:
            raise translate(exc, path, True) from None

    def environment(self) -> dict[str, str]:
        if self.kernel_thread:   # the kernel answers ESRCH, which would read as "exited"
            raise Missing(self.paths.pid(self.pid, "environ"), "kernel thread: no environment")
        return parse_environ(read_bytes(self.paths.pid(self.pid, "environ"), process_file=True))


def parse_fd_limit(text: str) -> int | None:
    for line in text.splitlines():
        if line.startswith("Max open files"):
            soft = line[len("Max open files"):].split()[0]
            return None if soft == "unlimited" else int(soft)
    raise Malformed("limits", "no 'Max open files' line")


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def reason(exc: SourceError) -> str:
    """How an unavailable field is described to the user."""
    if isinstance(exc, Denied):
        return f"permission denied: {exc.hint}"
    return exc.describe()

