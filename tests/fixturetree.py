"""Build fake procfs/sysfs/rootfs trees in the kernel's own file formats.

    host = FakeHost(tmp_path)
    host.add_smt_host(sockets=2, cores=4, threads=2)
    host.set_proc_stat({0: (100, 0, 50, 800)})
    host.add_process(4242, threads=[FakeThread(4242, "python3"), FakeThread(4243, "omp_worker_0")])
    paths = host.paths          # a dsmon.paths.HostPaths over the tree

Every file is written exactly as the kernel prints it (tabs, padding, trailing newlines), so
the parsers see what they would see on a real host. Nothing here reads the live system.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dsmon.paths import HostPaths
from dsmon.sources import format_cpulist

# Default values for a small "normal" host, in kB as /proc/meminfo prints them.
MEMINFO_DEFAULTS = {
    "MemTotal": 65_843_212, "MemFree": 12_345_678, "MemAvailable": 50_123_456,
    "Buffers": 412_300, "Cached": 38_001_200, "SwapCached": 0, "Active": 20_100_000,
    "Inactive": 28_200_000, "SwapTotal": 8_388_604, "SwapFree": 8_388_604,
}


# ---------------------------------------------------------------------------- line builders

def cpumask(cpus, nr_cpus: int) -> str:
    """The kernel's hex bitmap ("Cpus_allowed: ff,ffffffff"): 32-bit groups, high group first."""
    groups = max(1, (nr_cpus + 31) // 32)
    value = 0
    for cpu in cpus:
        value |= 1 << cpu
    words = [(value >> (32 * i)) & 0xFFFFFFFF for i in reversed(range(groups))]
    return ",".join(f"{word:08x}" for word in words)


def stat_line(pid: int, comm: bytes | str, state: str = "S", ppid: int = 1, utime: int = 0,
              stime: int = 0, num_threads: int = 1, start_ticks: int = 42055, rss_pages: int = 409,
              processor: int = 0, blkio_ticks: int = 0, vsize: int = 3_133_440) -> bytes:
    """A /proc/<pid>/stat line with all 52 fields of proc(5)."""
    if isinstance(comm, str):
        comm = comm.encode()
    after = [
        state, ppid, pid, pid, 0, -1, 4194560,          # 3 state .. 9 flags
        1234, 0, 5, 0,                                   # 10 minflt .. 13 cmajflt
        utime, stime, 0, 0,                              # 14 utime .. 17 cstime
        20, 0, num_threads, 0, start_ticks,              # 18 priority .. 22 starttime
        vsize, rss_pages, 18446744073709551615,          # 23 vsize .. 25 rsslim
        94448135331840, 94448135351721, 140726033084144, 0, 0,   # 26 .. 30
        0, 0, 0, 0, 0, 0, 0,                             # 31 signal .. 37 cnswap
        17, processor, 0, 0, blkio_ticks, 0, 0,          # 38 exit_signal .. 44 cguest_time
        94448135367728, 94448135369344, 94448622444544,  # 45 .. 47
        140726033091297, 140726033091317, 140726033091317, 140726033092587,  # 48 .. 51
        0,                                               # 52 exit_code
    ]
    assert len(after) == 50
    return (f"{pid} (".encode() + comm + b") "
            + " ".join(str(v) for v in after).encode() + b"\n")


def status_text(pid: int, tgid: int, name: str, state: str = "S (sleeping)", ppid: int = 1,
                uid: int = 1000, gid: int = 1000, threads: int = 1, nspid: list[int] | None = None,
                vm_size_kb: int = 12_345_678, vm_hwm_kb: int = 2_345_678,
                vm_rss_kb: int = 2_000_000, rss_anon_kb: int = 1_500_000,
                rss_file_kb: int = 499_000, rss_shmem_kb: int = 1_000, vm_swap_kb: int = 0,
                cpus_allowed: list[int] = (0,), nr_cpus: int = 1,
                mems_allowed: list[int] = (0,), voluntary: int = 0, involuntary: int = 0,
                omit: tuple[str, ...] = ()) -> str:
    """/proc/<pid>/status (or task/<tid>/status) as a 6.x kernel prints it."""
    nspid = nspid or [pid]
    ns = "\t".join(str(v) for v in nspid)
    lines = [
        ("Name", name), ("Umask", "0022"), ("State", state), ("Tgid", str(tgid)),
        ("Ngid", "0"), ("Pid", str(pid)), ("PPid", str(ppid)), ("TracerPid", "0"),
        ("Uid", f"{uid}\t{uid}\t{uid}\t{uid}"), ("Gid", f"{gid}\t{gid}\t{gid}\t{gid}"),
        ("FDSize", "256"), ("Groups", f"{gid} "), ("NStgid", ns), ("NSpid", ns),
        ("NSpgid", str(tgid)), ("NSsid", str(tgid)), ("Kthread", "0"),
        ("VmPeak", f"{vm_size_kb:8d} kB"), ("VmSize", f"{vm_size_kb:8d} kB"),
        ("VmLck", f"{0:8d} kB"), ("VmPin", f"{0:8d} kB"),
        ("VmHWM", f"{vm_hwm_kb:8d} kB"), ("VmRSS", f"{vm_rss_kb:8d} kB"),
        ("RssAnon", f"{rss_anon_kb:8d} kB"), ("RssFile", f"{rss_file_kb:8d} kB"),
        ("RssShmem", f"{rss_shmem_kb:8d} kB"), ("VmData", f"{4_000_000:8d} kB"),
        ("VmStk", f"{132:8d} kB"), ("VmExe", f"{2_900:8d} kB"), ("VmLib", f"{98_000:8d} kB"),
        ("VmPTE", f"{8_000:8d} kB"), ("VmSwap", f"{vm_swap_kb:8d} kB"),
        ("HugetlbPages", f"{0:8d} kB"), ("CoreDumping", "0"), ("THP_enabled", "1"),
        ("untag_mask", "0xffffffffffffffff"), ("Threads", str(threads)), ("SigQ", "1/1031283"),
        ("SigPnd", "0" * 16), ("ShdPnd", "0" * 16), ("SigBlk", "0" * 16),
        ("SigIgn", "0000000001001000"), ("SigCgt", "0000000180004a02"),
        ("CapInh", "0" * 16), ("CapPrm", "0" * 16), ("CapEff", "0" * 16),
        ("CapBnd", "000001ffffffffff"), ("CapAmb", "0" * 16), ("NoNewPrivs", "0"),
        ("Seccomp", "0"), ("Seccomp_filters", "0"), ("Speculation_Store_Bypass", "thread vulnerable"),
        ("SpeculationIndirectBranch", "conditional enabled"),
        ("Cpus_allowed", cpumask(cpus_allowed, nr_cpus)),
        ("Cpus_allowed_list", format_cpulist(cpus_allowed)),
        ("Mems_allowed", ",".join(["00000000"] * 31 + [cpumask(mems_allowed, 32)])),
        ("Mems_allowed_list", format_cpulist(mems_allowed)),
        ("voluntary_ctxt_switches", str(voluntary)),
        ("nonvoluntary_ctxt_switches", str(involuntary)),
    ]
    return "".join(f"{key}:\t{value}\n" for key, value in lines if key not in omit)


def proc_stat_text(per_cpu: dict[int, tuple[int, ...]], ctxt: int = 208998,
                   btime: int = 1_796_030_777, running: int = 2, blocked: int = 0) -> str:
    """/proc/stat from per-cpu tick tuples (user nice system idle [iowait irq softirq steal...])."""
    width = max(len(v) for v in per_cpu.values())
    total = [sum(v[i] if i < len(v) else 0 for v in per_cpu.values()) for i in range(width)]
    lines = ["cpu  " + " ".join(map(str, total))]
    lines += [f"cpu{cpu} " + " ".join(map(str, ticks)) for cpu, ticks in sorted(per_cpu.items())]
    lines += ["intr 97778 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0", f"ctxt {ctxt}", f"btime {btime}",
              "processes 7650", f"procs_running {running}", f"procs_blocked {blocked}",
              "softirq 48617 0 9930 2 1834 0 0 47 13790 0 23014"]
    return "\n".join(lines) + "\n"


def meminfo_text(**fields_kb: int) -> str:
    values = dict(MEMINFO_DEFAULTS)
    values.update(fields_kb)
    lines = [f"{key + ':':<16}{value:>8} kB" for key, value in values.items()]
    lines += ["HugePages_Total:       0", "HugePages_Free:        0", "HugePages_Rsvd:        0",
              "HugePages_Surp:        0", "Hugepagesize:       2048 kB"]
    return "\n".join(lines) + "\n"


def pressure_text(some=(0.0, 0.0, 0.0, 0), full=(0.0, 0.0, 0.0, 0)) -> str:
    def line(kind, values):
        a10, a60, a300, total = values
        return f"{kind} avg10={a10:.2f} avg60={a60:.2f} avg300={a300:.2f} total={total}\n"
    return line("some", some) + (line("full", full) if full is not None else "")


def limits_text(open_files_soft="1048576", open_files_hard="1048576") -> str:
    rows = [
        ("Limit", "Soft Limit", "Hard Limit", "Units"),
        ("Max cpu time", "unlimited", "unlimited", "seconds"),
        ("Max file size", "unlimited", "unlimited", "bytes"),
        ("Max data size", "unlimited", "unlimited", "bytes"),
        ("Max stack size", "8388608", "unlimited", "bytes"),
        ("Max core file size", "0", "unlimited", "bytes"),
        ("Max resident set", "unlimited", "unlimited", "bytes"),
        ("Max processes", "1031283", "1031283", "processes"),
        ("Max open files", str(open_files_soft), str(open_files_hard), "files"),
        ("Max locked memory", "8388608", "8388608", "bytes"),
        ("Max address space", "unlimited", "unlimited", "bytes"),
        ("Max file locks", "unlimited", "unlimited", "locks"),
        ("Max pending signals", "1031283", "1031283", "signals"),
        ("Max msgqueue size", "819200", "819200", "bytes"),
        ("Max nice priority", "0", "0", ""),
        ("Max realtime priority", "0", "0", ""),
        ("Max realtime timeout", "unlimited", "unlimited", "us"),
    ]
    return "".join(f"{a:<26}{b:<21}{c:<21}{d:<10}\n" for a, b, c, d in rows)


IO_DEFAULT = ("rchar: 123456789\nwchar: 98765\nsyscr: 4321\nsyscw: 210\n"
              "read_bytes: 40960000\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n")

NUMA_MAPS_DEFAULT = (
    "55d4c3a00000 default file=/usr/bin/python3.11 mapped=1024 N0=1024 kernelpagesize_kB=4\n"
    "7f1c00000000 default anon=262144 dirty=262144 active=0 N0=131072 N1=131072 "
    "kernelpagesize_kB=4\n"
    "7ffd5a1f2000 default stack anon=33 dirty=33 N0=33 kernelpagesize_kB=4\n"
)


# ---------------------------------------------------------------------------- processes

@dataclass
class FakeThread:
    tid: int
    name: str | bytes = "python3"
    state: str = "S"
    utime: int = 0
    stime: int = 0
    processor: int = 0
    start_ticks: int = 42055
    schedstat: str | None = "1000000 2000 10\n"    # None: the file does not exist
    voluntary: int = 0
    involuntary: int = 0
    wchan: str | None = None


STATE_NAMES = {"R": "R (running)", "S": "S (sleeping)", "D": "D (disk sleep)",
               "Z": "Z (zombie)", "T": "T (stopped)", "I": "I (idle)"}


@dataclass
class FakeProcess:
    pid: int
    threads: list[FakeThread] = field(default_factory=list)


class FakeHost:
    """A fake host under `root`: root/proc, root/sys and root/rootfs."""

    def __init__(self, root):
        self.root = Path(root)
        for part in ("proc", "sys", "rootfs"):
            (self.root / part).mkdir(parents=True, exist_ok=True)
        self._online: set[int] = set()
        self._node_cpus: dict[int, set[int]] = {}
        self._node_mem: dict[int, tuple[int, int]] = {}
        self._users: dict[int, str] = {0: "root"}

    # -- generic ---------------------------------------------------------------------------

    @property
    def paths(self) -> HostPaths:
        return HostPaths(procfs=str(self.root / "proc"), sysfs=str(self.root / "sys"),
                         rootfs=str(self.root / "rootfs"))

    def write(self, path: str, content: str | bytes = "", pad: int = 0) -> Path:
        """Write root/<path>. `pad` NUL-pads to that size, like a sysfs file copied by size."""
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        if pad and len(data) < pad:
            data += b"\0" * (pad - len(data))
        target.write_bytes(data)
        return target

    def symlink(self, path: str, points_to: str) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        os.symlink(points_to, target)

    def remove(self, path: str) -> None:
        (self.root / path).unlink()

    def sysfs(self, path: str, value, pad: int = 0) -> None:
        """A one-value sysfs attribute ("value\\n")."""
        self.write(f"sys/{path}", f"{value}\n", pad)

    # -- host-wide procfs ------------------------------------------------------------------

    def set_proc_stat(self, per_cpu: dict[int, tuple[int, ...]], **kwargs) -> None:
        self.write("proc/stat", proc_stat_text(per_cpu, **kwargs))

    def set_meminfo(self, **fields_kb: int) -> None:
        self.write("proc/meminfo", meminfo_text(**fields_kb))

    def set_vmstat(self, **counters: int) -> None:
        """/proc/vmstat ("name value" lines); a few of the ~180 counters of a 6.x kernel."""
        values = {"nr_free_pages": 3052634, "nr_inactive_anon": 1183, "nr_active_anon": 60932,
                  "nr_inactive_file": 102913, "nr_active_file": 151028, "nr_dirty": 12,
                  "pgpgin": 1201488, "pgpgout": 2277312, "pswpin": 0, "pswpout": 0,
                  "pgfault": 19867012, "pgmajfault": 1432, "pgscan_kswapd": 0,
                  "pgscan_direct": 0, "pgsteal_kswapd": 0, "pgsteal_direct": 0,
                  "oom_kill": 0, "thp_fault_alloc": 1204}
        values.update(counters)
        self.write("proc/vmstat", "".join(f"{key} {value}\n" for key, value in values.items()))

    def set_pressure(self, cpu: str | None = None, memory: str | None = None,
                     io: str | None = None) -> None:
        """PSI files; a resource left None gets an all-zero file (cpu: `full` zeros too)."""
        self.write("proc/pressure/cpu", cpu or pressure_text())
        self.write("proc/pressure/memory", memory or pressure_text())
        self.write("proc/pressure/io", io or pressure_text())

    def set_hostname(self, hostname: str = "fakehost", osrelease: str = "6.8.0-49-generic") -> None:
        self.write("proc/sys/kernel/hostname", hostname + "\n")
        self.write("proc/sys/kernel/osrelease", osrelease + "\n")

    def add_user(self, name: str, uid: int) -> None:
        self._users[uid] = name
        lines = [f"{user}:x:{number}:{number}:{user}:/home/{user}:/bin/bash"
                 for number, user in sorted(self._users.items())]
        lines.insert(1, "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin")
        self.write("rootfs/etc/passwd", "\n".join(lines) + "\n")

    # -- sysfs topology --------------------------------------------------------------------

    def add_cpu(self, cpu: int, package: int, core: int, siblings, node: int | None = None,
                pad: int = 0) -> None:
        base = f"devices/system/cpu/cpu{cpu}/topology"
        self.sysfs(f"{base}/physical_package_id", package, pad)
        self.sysfs(f"{base}/core_id", core, pad)
        self.sysfs(f"{base}/die_id", 0, pad)
        self.sysfs(f"{base}/thread_siblings_list", format_cpulist(siblings), pad)
        self.sysfs(f"{base}/core_cpus_list", format_cpulist(siblings), pad)
        self._online.add(cpu)
        listing = format_cpulist(self._online)
        for name in ("online", "present", "possible"):
            self.sysfs(f"devices/system/cpu/{name}", listing, pad)
        if node is not None:
            self._node_cpus.setdefault(node, set()).add(cpu)
            self._write_node(node)
            self.symlink(f"sys/devices/system/node/node{node}/cpu{cpu}", f"../../cpu/cpu{cpu}")

    def add_node(self, node: int, cpus=(), mem_kb: int | None = None,
                 free_kb: int | None = None) -> None:
        self._node_cpus.setdefault(node, set()).update(cpus)
        if mem_kb is not None:
            self._node_mem[node] = (mem_kb, mem_kb // 2 if free_kb is None else free_kb)
        self._write_node(node)

    def _write_node(self, node: int) -> None:
        base = f"devices/system/node/node{node}"
        self.sysfs(f"{base}/cpulist", format_cpulist(self._node_cpus[node]))
        if node in self._node_mem:
            total, free = self._node_mem[node]
            lines = [("MemTotal", total), ("MemFree", free), ("MemUsed", total - free),
                     ("SwapCached", 0), ("Active", total // 8), ("Inactive", total // 8),
                     ("FilePages", total // 10), ("AnonPages", total // 20)]
            self.write(f"sys/{base}/meminfo",
                       "".join(f"Node {node} {key + ':':<16}{value:>8} kB\n" for key, value in lines)
                       + f"Node {node} HugePages_Total:     0\n")
        nodes = format_cpulist(self._node_cpus)
        for name in ("online", "possible", "has_memory", "has_normal_memory"):
            self.sysfs(f"devices/system/node/{name}", nodes)
        self.sysfs("devices/system/node/has_cpu",
                   format_cpulist(n for n, c in self._node_cpus.items() if c))

    def add_smt_host(self, sockets: int = 2, cores: int = 4, threads: int = 2,
                     mem_kb_per_node: int = 32 * 1024 * 1024) -> None:
        """Intel-style enumeration: first thread of every core, then the second ones, so the
        SMT sibling of cpu i is i + sockets*cores. One NUMA node per socket."""
        per_pass = sockets * cores
        for thread in range(threads):
            for socket in range(sockets):
                for core in range(cores):
                    cpu = thread * per_pass + socket * cores + core
                    first = socket * cores + core
                    siblings = [first + t * per_pass for t in range(threads)]
                    self.add_cpu(cpu, socket, core, siblings, node=socket)
        for socket in range(sockets):
            self.add_node(socket, mem_kb=mem_kb_per_node)

    # -- processes -------------------------------------------------------------------------

    def add_process(self, pid: int, comm: str = "python3", threads: list[FakeThread] | None = None,
                    cmdline: list[str] | None = None, uid: int = 1000, ppid: int = 1,
                    state: str = "S", start_ticks: int = 42055, environ: dict[str, str] | None = None,
                    cgroup: list[str] | None = None, numa_maps: str | None = NUMA_MAPS_DEFAULT,
                    io: str | None = IO_DEFAULT, fds: int = 5, fd_limit: str = "1048576",
                    exe: str = "/usr/bin/python3.11", cpus_allowed=(0,), nr_cpus: int | None = None,
                    mems_allowed=(0,), nspid: list[int] | None = None,
                    status: dict | None = None) -> FakeProcess:
        """A process with its task/ threads. The main thread (tid == pid) is added if missing.
        `status` holds extra keyword arguments for status_text (e.g. vm_rss_kb=...)."""
        threads = list(threads or [])
        if not any(t.tid == pid for t in threads):
            threads.insert(0, FakeThread(pid, comm, state=state, start_ticks=start_ticks))
        cmdline = cmdline if cmdline is not None else [exe, "-m", "vllm.entrypoints.openai.api_server"]
        nr_cpus = nr_cpus or max(max(cpus_allowed) + 1, len(self._online), 1)
        extra = dict(status or {})
        base = f"proc/{pid}"
        utime = sum(t.utime for t in threads)
        stime = sum(t.stime for t in threads)
        self.write(f"{base}/stat", stat_line(pid, comm, state, ppid, utime, stime, len(threads),
                                             start_ticks))
        self.write(f"{base}/status", status_text(
            pid, pid, comm, STATE_NAMES.get(state, state), ppid, uid, uid, len(threads), nspid,
            cpus_allowed=list(cpus_allowed), nr_cpus=nr_cpus, mems_allowed=list(mems_allowed),
            voluntary=sum(t.voluntary for t in threads),
            involuntary=sum(t.involuntary for t in threads), **extra))
        self.write(f"{base}/cmdline", b"".join(part.encode() + b"\0" for part in cmdline))
        env = environ if environ is not None else {"PATH": "/usr/bin:/bin", "HOME": "/home/user"}
        self.write(f"{base}/environ", b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
        self.write(f"{base}/cgroup", "\n".join(cgroup or ["0::/"]) + "\n")
        if numa_maps is not None:
            self.write(f"{base}/numa_maps", numa_maps)
        if io is not None:
            self.write(f"{base}/io", io)
        self.write(f"{base}/limits", limits_text(fd_limit))
        (self.root / base / "fd").mkdir(parents=True, exist_ok=True)
        for fd in range(fds):
            self.symlink(f"{base}/fd/{fd}", "/dev/null" if fd < 3 else f"socket:[{81234 + fd}]")
        self.symlink(f"{base}/exe", exe)
        self.symlink(f"{base}/ns/pid", "pid:[4026531836]")
        process = FakeProcess(pid)
        for thread in threads:
            self.add_thread(pid, thread, uid=uid, cpus_allowed=cpus_allowed, nr_cpus=nr_cpus,
                            mems_allowed=mems_allowed, status=extra)
            process.threads.append(thread)
        return process

    def add_thread(self, pid: int, thread: FakeThread, uid: int = 1000, cpus_allowed=(0,),
                   nr_cpus: int = 1, mems_allowed=(0,), status: dict | None = None) -> None:
        base = f"proc/{pid}/task/{thread.tid}"
        self.write(f"{base}/stat", stat_line(
            thread.tid, thread.name, thread.state, 1, thread.utime, thread.stime, 1,
            thread.start_ticks, processor=thread.processor))
        name = thread.name.decode("utf-8", "replace") if isinstance(thread.name, bytes) else thread.name
        self.write(f"{base}/status", status_text(
            thread.tid, pid, name, STATE_NAMES.get(thread.state, thread.state), uid=uid,
            cpus_allowed=list(cpus_allowed), nr_cpus=nr_cpus, mems_allowed=list(mems_allowed),
            voluntary=thread.voluntary, involuntary=thread.involuntary, **(status or {})))
        if thread.schedstat is not None:
            self.write(f"{base}/schedstat", thread.schedstat)
        self.write(f"{base}/wchan", thread.wchan or "0")

    # -- cgroups ---------------------------------------------------------------------------

    def add_cgroup_v2(self, path: str, files: dict[str, str] | None = None,
                      mount: str = "fs/cgroup") -> str:
        """A cgroup v2 directory `path` ("/kubepods.slice/...") under the unified mount.
        `mount` is "fs/cgroup" on a pure v2 host, "fs/cgroup/unified" on a hybrid one."""
        root = f"sys/{mount}"
        if not (self.root / root / "cgroup.controllers").exists():
            controllers = "cpuset cpu io memory hugetlb pids rdma misc\n"
            self.write(f"{root}/cgroup.controllers", controllers if mount == "fs/cgroup" else "")
            self.write(f"{root}/cgroup.subtree_control", "cpuset cpu io memory pids\n")
            self.write(f"{root}/cgroup.procs", "1\n")
            self.write(f"{root}/cpu.stat", "usage_usec 9876543210\nuser_usec 7000000000\n"
                                           "system_usec 2876543210\n")
            self.write(f"{root}/memory.stat", "anon 1000000\nfile 2000000\n")
            self.write(f"{root}/cpuset.cpus.effective", format_cpulist(self._online) + "\n")
            self.write(f"{root}/cpuset.mems.effective", format_cpulist(self._node_cpus or [0]) + "\n")
        directory = f"{root}/{path.strip('/')}".rstrip("/")
        (self.root / directory).mkdir(parents=True, exist_ok=True)
        for name, text in (files or {}).items():
            self.write(f"{directory}/{name}", text)
        return str(self.root / directory)

    def add_cgroup_v1(self, mount: str, path: str, files: dict[str, str] | None = None) -> str:
        """A cgroup v1 directory `path` in the hierarchy mounted at /sys/fs/cgroup/<mount>
        ("memory", "cpu,cpuacct", "cpuset"). The hierarchy root gets the kernel's defaults."""
        root = f"sys/fs/cgroup/{mount}"
        if not (self.root / root).exists():
            controllers = mount.split(",")
            if "memory" in controllers:
                self.write(f"{root}/memory.limit_in_bytes", "9223372036854771712\n")
                self.write(f"{root}/memory.usage_in_bytes", "40000000000\n")
            if "cpu" in controllers:
                self.write(f"{root}/cpu.cfs_quota_us", "-1\n")
                self.write(f"{root}/cpu.cfs_period_us", "100000\n")
            if "cpuset" in controllers:
                self.write(f"{root}/cpuset.cpus", format_cpulist(self._online) + "\n")
                self.write(f"{root}/cpuset.mems", format_cpulist(self._node_cpus or [0]) + "\n")
            for other in controllers[1:]:   # cpu,cpuacct is also reachable as cpu and cpuacct
                self.symlink(f"sys/fs/cgroup/{other}", mount)
            if len(controllers) > 1:
                self.symlink(f"sys/fs/cgroup/{controllers[0]}", mount)
        directory = f"{root}/{path.strip('/')}".rstrip("/")
        (self.root / directory).mkdir(parents=True, exist_ok=True)
        for name, text in (files or {}).items():
            self.write(f"{directory}/{name}", text)
        return str(self.root / directory)


# ---------------------------------------------------------------------------- cgroup file text

SLAB_RECLAIMABLE = 3_000_000   # what memory_stat_v2 reports: reclaimable, like page cache


def memory_stat_v2(anon: int, file: int, inactive_file: int, active_file: int | None = None) -> str:
    """cgroup v2 memory.stat (bytes), the keys a 6.x kernel prints first."""
    active_file = file - inactive_file if active_file is None else active_file
    rows = [("anon", anon), ("file", file), ("kernel", 52_428_800), ("kernel_stack", 2_097_152),
            ("pagetables", 8_388_608), ("sec_pagetables", 0), ("percpu", 1_234_560),
            ("sock", 0), ("vmalloc", 0), ("shmem", 4096), ("zswap", 0), ("zswapped", 0),
            ("file_mapped", 1_048_576), ("file_dirty", 0), ("file_writeback", 0),
            ("swapcached", 0), ("anon_thp", 0), ("file_thp", 0), ("shmem_thp", 0),
            ("inactive_anon", anon), ("active_anon", 4096), ("inactive_file", inactive_file),
            ("active_file", active_file), ("unevictable", 0), ("slab_reclaimable", SLAB_RECLAIMABLE),
            ("slab_unreclaimable", 1_000_000), ("slab", 4_000_000), ("workingset_refault_anon", 0),
            ("pgfault", 12345678), ("pgmajfault", 42), ("thp_fault_alloc", 0)]
    return "".join(f"{key} {value}\n" for key, value in rows)


def memory_stat_v1(rss: int, cache: int, inactive_file: int, total_inactive_file: int,
                   limit: int = 9223372036854771712) -> str:
    """cgroup v1 memory.stat: local counters, then hierarchical totals."""
    local = [("cache", cache), ("rss", rss), ("rss_huge", 0), ("shmem", 0),
             ("mapped_file", 1_048_576), ("dirty", 0), ("writeback", 0), ("swap", 0),
             ("pgpgin", 123456), ("pgpgout", 65432), ("pgfault", 234567), ("pgmajfault", 12),
             ("inactive_anon", 0), ("active_anon", rss), ("inactive_file", inactive_file),
             ("active_file", cache - inactive_file), ("unevictable", 0),
             ("hierarchical_memory_limit", limit), ("hierarchical_memsw_limit", limit)]
    total = [("total_cache", cache), ("total_rss", rss), ("total_rss_huge", 0),
             ("total_shmem", 0), ("total_mapped_file", 1_048_576), ("total_dirty", 0),
             ("total_writeback", 0), ("total_swap", 0), ("total_pgpgin", 123456),
             ("total_pgpgout", 65432), ("total_pgfault", 234567), ("total_pgmajfault", 12),
             ("total_inactive_anon", 0), ("total_active_anon", rss),
             ("total_inactive_file", total_inactive_file),
             ("total_active_file", cache - total_inactive_file), ("total_unevictable", 0)]
    return "".join(f"{key} {value}\n" for key, value in local + total)
