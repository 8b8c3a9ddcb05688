"""Pure parsers, on literal text in the kernel's own formats. Exact values throughout."""

from __future__ import annotations

import pytest

from dsmon.features.placement import effective_cpus
from dsmon.features.series import linear_slope, rate
from dsmon.features.threads import pool_of
from dsmon.report.sections import per_core_utilisation, thread_settings
from dsmon.collectors.cgroup import (parse_cpu_max, parse_flat_keyed, parse_limit)
from dsmon.collectors.cpu import MODES, parse_proc_stat
from dsmon.collectors.memory import parse_meminfo
from dsmon.collectors.pressure import parse_pressure
from dsmon.collectors.process import (ENVIRON_ALLOW_LIST, parse_environ, parse_fd_limit, parse_io,
                                      parse_numa_maps, parse_passwd, parse_proc_cgroup, parse_stat,
                                      parse_status, status_kib)
from dsmon.collectors.threads import parse_schedstat, parse_switches, parse_thread_stat
from dsmon.collectors.topology import CpuInfo, NumaNode, Topology, parse_node_meminfo
from dsmon.sources import Malformed, format_cpulist, parse_cpulist

# ------------------------------------------------------------------------------ /proc/stat

PROC_STAT = """\
cpu  2793 5 1515 79348 102 7 21 11 0 0
cpu0 1018 2 464 40396 4 3 5 3 0 0
cpu1 1775 3 1051 38952 98 4 16 8 0 0
intr 97778 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 1 14 0 0 0 0 83 25
ctxt 208998
btime 1796030777
processes 7650
procs_running 3
procs_blocked 1
softirq 48617 0 9930 2 1834 0 0 47 13790 0 23014
"""


def test_proc_stat_modern_kernel():
    stat = parse_proc_stat(PROC_STAT, hz=100)
    assert sorted(stat.per_cpu) == [0, 1]
    assert stat.total == tuple(v / 100 for v in (2793, 5, 1515, 79348, 102, 7, 21, 11))
    assert stat.per_cpu[0] == tuple(v / 100 for v in (1018, 2, 464, 40396, 4, 3, 5, 3))
    assert stat.per_cpu[1][MODES.index("steal")] == 0.08
    assert len(stat.per_cpu[1]) == len(MODES) == 8   # guest/guest_nice are not kept
    assert stat.context_switches == 208998
    assert stat.procs_running == 3
    assert stat.procs_blocked == 1
    assert stat.boot_time == 1796030777


def test_proc_stat_hz_scales_seconds():
    stat = parse_proc_stat(PROC_STAT, hz=250)
    assert stat.per_cpu[0][MODES.index("user")] == 1018 / 250


def test_proc_stat_old_kernel_without_steal():
    # 2.6.9 - 2.6.10: user nice system idle iowait irq softirq (7 columns, no steal)
    text = ("cpu  4705 356 584 3699 23 23 0\n"
            "cpu0 4705 356 584 3699 23 23 0\n"
            "intr 1462898\nctxt 1990473\nbtime 1062191376\nprocesses 2915\n"
            "procs_running 1\nprocs_blocked 0\n")
    stat = parse_proc_stat(text, hz=100)
    assert stat.per_cpu[0] == (47.05, 3.56, 5.84, 36.99, 0.23, 0.23, 0.0, 0.0)
    assert stat.total == stat.per_cpu[0]
    assert stat.context_switches == 1990473


def test_proc_stat_2_4_kernel_four_columns():
    stat = parse_proc_stat("cpu  100 0 50 850\ncpu0 100 0 50 850\nctxt 5\n", hz=100)
    assert stat.per_cpu[0] == (1.0, 0.0, 0.5, 8.5, 0.0, 0.0, 0.0, 0.0)
    assert stat.procs_running == 0 and stat.boot_time == 0


@pytest.mark.parametrize("text", [
    "",
    "ctxt 208998\nbtime 1796030777\n",
    "cpu  1 2 3 4 5 6 7 8\nctxt 3\n",          # no per-cpu line
    "cpu  1 2 3\ncpu0 1 2 3\n",               # too short
])
def test_proc_stat_malformed(text):
    with pytest.raises(Malformed):
        parse_proc_stat(text)


# ------------------------------------------------------------------------------ meminfo

MEMINFO = """\
MemTotal:       24684084 kB
MemFree:        24450036 kB
MemAvailable:   24374116 kB
Buffers:            2048 kB
Cached:           150224 kB
SwapTotal:             0 kB
SwapFree:              0 kB
HugePages_Total:       4
HugePages_Free:        3
Hugepagesize:       2048 kB
DirectMap4k:      161644 kB
"""


def test_meminfo_units():
    info = parse_meminfo(MEMINFO)
    assert info["MemTotal"] == 24684084 * 1024
    assert info["MemFree"] == 24450036 * 1024
    assert info["MemAvailable"] == 24374116 * 1024
    assert info["SwapTotal"] == 0
    assert info["HugePages_Total"] == 4          # a count, not kB
    assert info["HugePages_Free"] == 3
    assert info["Hugepagesize"] == 2048 * 1024
    assert info["DirectMap4k"] == 161644 * 1024
    assert len(info) == 11


def test_meminfo_missing_required_is_malformed():
    with pytest.raises(Malformed, match="MemFree"):
        parse_meminfo("MemTotal:       24684084 kB\nBuffers:  1 kB\n")
    with pytest.raises(Malformed):
        parse_meminfo("")


def test_node_meminfo():
    text = ("Node 1 MemTotal:       65970872 kB\n"
            "Node 1 MemFree:        63004880 kB\n"
            "Node 1 MemUsed:         2965992 kB\n"
            "Node 1 HugePages_Total:     0\n")
    info = parse_node_meminfo(text)
    assert info == {"MemTotal": 65970872 * 1024, "MemFree": 63004880 * 1024,
                    "MemUsed": 2965992 * 1024, "HugePages_Total": 0}


# ------------------------------------------------------------------------------ PSI

def test_pressure_cpu_with_full_zeros():
    text = ("some avg10=1.03 avg60=0.32 avg300=0.25 total=2782660\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert parse_pressure(text) == {
        "some": {"avg10": 1.03, "avg60": 0.32, "avg300": 0.25, "total_seconds": 2.78266},
        "full": {"avg10": 0.0, "avg60": 0.0, "avg300": 0.0, "total_seconds": 0.0},
    }


def test_pressure_memory():
    text = ("some avg10=12.50 avg60=8.00 avg300=2.10 total=123456789\n"
            "full avg10=4.25 avg60=1.00 avg300=0.50 total=23456789\n")
    parsed = parse_pressure(text)
    assert parsed["some"]["avg10"] == 12.5
    assert parsed["some"]["total_seconds"] == 123.456789
    assert parsed["full"] == {"avg10": 4.25, "avg60": 1.0, "avg300": 0.5,
                              "total_seconds": 23.456789}


def test_pressure_cpu_before_5_13_has_only_some():
    parsed = parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert list(parsed) == ["some"]


@pytest.mark.parametrize("text", [
    "",
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    "bogus avg10=0.00\n",
])
def test_pressure_malformed(text):
    with pytest.raises(Malformed):
        parse_pressure(text)


# ------------------------------------------------------------------------------ cpulist

@pytest.mark.parametrize("text, cpus", [
    ("0-3,8,10-11", [0, 1, 2, 3, 8, 10, 11]),
    ("0-3,8,10-11\n", [0, 1, 2, 3, 8, 10, 11]),
    ("5", [5]),
    ("0,2,4", [0, 2, 4]),
    ("0-63", list(range(64))),
    ("", []),
    ("\n", []),
])
def test_parse_cpulist(text, cpus):
    assert parse_cpulist(text) == cpus


@pytest.mark.parametrize("cpus, text", [
    ([0, 1, 2, 3, 8, 10, 11], "0-3,8,10-11"),
    ([3, 1, 2, 2, 0], "0-3"),
    ([7], "7"),
    ([], ""),
    (range(64), "0-63"),
])
def test_format_cpulist(cpus, text):
    assert format_cpulist(cpus) == text


@pytest.mark.parametrize("text", ["0-3,8,10-11", "0", "1,3,5,7", "0-127", ""])
def test_cpulist_round_trip(text):
    assert format_cpulist(parse_cpulist(text)) == text


def test_parse_cpulist_group_syntax():
    assert parse_cpulist("0-7:2/4") == [0, 1, 4, 5]


# ------------------------------------------------------------------------------ stat

# Field 2 holds "(my (weird) name)": spaces and parentheses inside the name. All 52 fields:
# utime(14)=1500 stime(15)=250 num_threads(20)=37 starttime(22)=42055 rss(24)=409
# processor(39)=3 delayacct_blkio_ticks(42)=7
WEIRD_STAT = (
    b"1234 (my (weird) name) S 1 1234 1234 0 -1 4194560 1022 0 5 0 1500 250 0 0 20 0 37 0 "
    b"42055 3133440 409 18446744073709551615 94448135331840 94448135351721 140726033084144 "
    b"0 0 0 0 0 0 0 0 0 17 3 0 0 7 0 0 94448135367728 94448135369344 94448622444544 "
    b"140726033091297 140726033091317 140726033091317 140726033092587 0\n")


def test_weird_stat_line_has_52_fields():
    assert len(WEIRD_STAT.rsplit(b") ", 1)[1].split()) == 50   # + pid + comm = 52


def test_parse_stat_name_with_spaces_and_parentheses():
    stat = parse_stat(WEIRD_STAT)
    assert stat.comm == "my (weird) name"
    assert stat.state == "S"
    assert stat.ppid == 1
    assert stat.utime == 1500
    assert stat.stime == 250
    assert stat.num_threads == 37
    assert stat.start_ticks == 42055
    assert stat.rss_pages == 409
    assert stat.processor == 3
    assert stat.blkio_ticks == 7


def test_parse_thread_stat_name_with_spaces_and_parentheses():
    assert parse_thread_stat(WEIRD_STAT) == ("my (weird) name", "S", 1500, 250, 3, 42055)


def test_parse_stat_non_utf8_name_is_escaped():
    raw = WEIRD_STAT.replace(b"my (weird) name", b"gpu\xff\xfe) x")
    assert parse_stat(raw).comm == "gpu\\xff\\xfe) x"
    assert parse_thread_stat(raw)[0] == "gpu\\xff\\xfe) x"
    assert parse_thread_stat(raw)[2:] == (1500, 250, 3, 42055)


def test_parse_stat_zombie_and_empty_name():
    raw = WEIRD_STAT.replace(b"(my (weird) name) S", b"() Z")
    stat = parse_stat(raw)
    assert (stat.comm, stat.state, stat.utime) == ("", "Z", 1500)


def test_parse_stat_old_kernel_short_line():
    # before 2.6.18 lines stop after field 41 (policy): no delayacct_blkio_ticks -> 0
    fields = WEIRD_STAT.rsplit(b") ", 1)[1].split()[:39]
    raw = b"1234 (python3) " + b" ".join(fields)
    stat = parse_stat(raw)
    assert stat.blkio_ticks == 0 and stat.processor == 3 and stat.utime == 1500


@pytest.mark.parametrize("raw", [
    b"",
    b"1234 python3 S 1 2 3",
    b"1234 (python3) S 1 1234 1234 0 -1 4194560 1022 0 5",   # too few fields
])
def test_parse_stat_malformed(raw):
    with pytest.raises(Malformed):
        parse_stat(raw)


# ------------------------------------------------------------------------------ schedstat, status

def test_parse_schedstat():
    assert parse_schedstat(b"80189 67451 2\n") == (80189, 67451, 2)
    assert parse_schedstat(b"123456789012 9876543210 987654\n") == (123456789012, 9876543210, 987654)
    assert parse_schedstat(b"0 0 0\n") == (0, 0, 0)


STATUS = (
    "Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\nPid:\t4242\n"
    "PPid:\t1\nTracerPid:\t0\nUid:\t1000\t1001\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n"
    "FDSize:\t256\nGroups:\t \nNStgid:\t4242\t17\nNSpid:\t4242\t17\nNSpgid:\t4242\t17\n"
    "NSsid:\t4242\t17\nKthread:\t0\nVmPeak:\t12345680 kB\nVmSize:\t12345678 kB\n"
    "VmLck:\t       0 kB\nVmPin:\t       0 kB\nVmHWM:\t 2345678 kB\nVmRSS:\t 2000000 kB\n"
    "RssAnon:\t 1500000 kB\nRssFile:\t  499000 kB\nRssShmem:\t    1000 kB\n"
    "VmSwap:\t       0 kB\nThreads:\t37\nSigQ:\t1/96365\n"
    "Cpus_allowed:\tff,ffffffff\nCpus_allowed_list:\t0-39\n"
    "Mems_allowed:\t00000000,00000003\nMems_allowed_list:\t0-1\n"
    "voluntary_ctxt_switches:\t150\nnonvoluntary_ctxt_switches:\t7\n")


def test_parse_switches():
    assert parse_switches(STATUS.encode()) == (150, 7)


def test_parse_switches_last_line_without_newline():
    raw = STATUS.encode().rstrip(b"\n")
    assert parse_switches(raw) == (150, 7)


def test_parse_switches_missing():
    assert parse_switches(b"Name:\tx\nState:\tS (sleeping)\n") == (None, None)


def test_parse_status_and_kib():
    fields = parse_status(STATUS)
    assert fields["Name"] == "python3"
    assert fields["State"] == "S (sleeping)"
    assert fields["Uid"] == "1000\t1001\t1000\t1000"
    assert fields["NSpid"] == "4242\t17"
    assert fields["Groups"] == ""
    assert fields["Cpus_allowed_list"] == "0-39"
    assert status_kib(fields, "VmRSS") == 2000000 * 1024
    assert status_kib(fields, "RssAnon") == 1500000 * 1024
    assert status_kib(fields, "VmSwap") == 0
    assert status_kib(fields, "VmHWM") == 2345678 * 1024
    assert status_kib(fields, "HugetlbPages") is None     # not in this status: unknown, not 0


def test_parse_io():
    text = ("rchar: 6976\nwchar: 0\nsyscr: 10\nsyscw: 0\nread_bytes: 40960000\n"
            "write_bytes: 8192\ncancelled_write_bytes: 0\n")
    assert parse_io(text) == {"rchar": 6976, "wchar": 0, "syscr": 10, "syscw": 0,
                              "read_bytes": 40960000, "write_bytes": 8192,
                              "cancelled_write_bytes": 0}


def test_parse_io_without_task_io_accounting_is_malformed():
    with pytest.raises(Malformed, match="TASK_IO_ACCOUNTING"):
        parse_io("rchar: 6976\nwchar: 0\nsyscr: 10\nsyscw: 0\n")


# ------------------------------------------------------------------------------ numa_maps

NUMA_MAPS = """\
55d4c3a00000 default file=/usr/bin/python3.11 mapped=1024 mapmax=3 N0=1024 kernelpagesize_kB=4
55d4c4000000 default file=/usr/lib/libc.so.6
7f1c00000000 default anon=262144 dirty=262144 active=0 N0=131072 N1=131072 kernelpagesize_kB=4
7f2000000000 interleave:0-1 anon=1000 dirty=1000 N0=500 N1=500 kernelpagesize_kB=4
7f3a40000000 default file=/anon_hugepage\\040(deleted) huge anon=512 dirty=512 N0=200 N1=312 kernelpagesize_kB=2048
7f4000000000 bind:1 file=/dev/hugepages/kv huge dirty=4 N1=4 kernelpagesize_kB=2048
7ffd5a1f2000 default stack anon=33 dirty=33 N0=33 kernelpagesize_kB=4
"""


def test_parse_numa_maps_bytes_per_node():
    small, huge = 4096, 2 * 1024 * 1024
    assert parse_numa_maps(NUMA_MAPS) == {
        0: (1024 + 131072 + 500 + 33) * small + 200 * huge,
        1: (131072 + 500) * small + (312 + 4) * huge,
    }


def test_parse_numa_maps_empty():
    assert parse_numa_maps("") == {}


# ------------------------------------------------------------------------------ environ

def test_parse_environ_allow_list():
    raw = (b"PATH=/usr/bin:/bin\0HF_TOKEN=hf_abcdefghijklmnop\0OMP_NUM_THREADS=8\0"
           b"AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG\0CUDA_VISIBLE_DEVICES=0,1\0"
           b"PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True\0DATABASE_PASSWORD=hunter2\0"
           b"MALLOC_ARENA_MAX=2\0LD_PRELOAD=/usr/lib/libjemalloc.so.2\0NCCL_DEBUG=\0"
           b"OMP_PLACES=cores=x\xff\0broken-entry-without-equals\0")
    env = parse_environ(raw)
    assert env == {
        "OMP_NUM_THREADS": "8",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "MALLOC_ARENA_MAX": "2",
        "LD_PRELOAD": "/usr/lib/libjemalloc.so.2",
        "NCCL_DEBUG": "",
        "OMP_PLACES": "cores=x\\xff",
    }
    assert "HF_TOKEN" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert not any("hunter2" in value or "hf_" in value for value in env.values())


def test_environ_allow_list_holds_no_secrets():
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY",
                 "AWS_ACCESS_KEY_ID", "OPENAI_API_KEY", "WANDB_API_KEY", "DATABASE_PASSWORD"):
        assert name not in ENVIRON_ALLOW_LIST


# ------------------------------------------------------------------------------ /proc/pid/cgroup

def test_parse_proc_cgroup_v1_hybrid():
    text = ("12:cpuset:/docker/3f2a\n"
            "11:memory:/docker/3f2a\n"
            "4:cpu,cpuacct:/docker/3f2a\n"
            "1:name=systemd:/docker/3f2a\n"
            "0::/docker/3f2a\n")
    assert parse_proc_cgroup(text) == [
        ("12", ["cpuset"], "/docker/3f2a"),
        ("11", ["memory"], "/docker/3f2a"),
        ("4", ["cpu", "cpuacct"], "/docker/3f2a"),
        ("1", ["name=systemd"], "/docker/3f2a"),
        ("0", [], "/docker/3f2a"),
    ]


def test_parse_proc_cgroup_v2_path_with_colon():
    text = "0::/system.slice/app:worker.service\n"
    assert parse_proc_cgroup(text) == [("0", [], "/system.slice/app:worker.service")]


def test_parse_passwd():
    text = ("root:x:0:0:root:/root:/bin/bash\n# comment\nvllm:x:1000:1000::/home/vllm:/bin/sh\n"
            "dup:x:1000:1000::/:/bin/sh\nbroken\n")
    assert parse_passwd(text) == {0: "root", 1000: "vllm"}


# ------------------------------------------------------------------------------ cgroup values

@pytest.mark.parametrize("text, value", [
    ("max\n", None),
    ("-1\n", None),
    ("9223372036854771712\n", None),       # v1 "no limit" on x86_64 with 4 KiB pages
    ("9223372036854775807\n", None),
    ("9223372036854710272\n", None),       # the same sentinel with 64 KiB pages
    ("8589934592\n", 8589934592),
    ("0\n", 0),
    ("", None),
])
def test_parse_limit(text, value):
    assert parse_limit(text) == value


def test_parse_flat_keyed():
    text = ("nr_periods 1000\nnr_throttled 40\nthrottled_usec 1250000\n"
            "garbage\nkey not-a-number\nthree part line\n")
    assert parse_flat_keyed(text) == {"nr_periods": 1000, "nr_throttled": 40,
                                      "throttled_usec": 1250000}


@pytest.mark.parametrize("text, cores", [
    ("max 100000\n", None),
    ("max\n", None),
    ("200000 100000\n", 2.0),
    ("50000 100000\n", 0.5),
    ("150000 100000\n", 1.5),
    ("", None),
])
def test_parse_cpu_max(text, cores):
    assert parse_cpu_max(text) == cores


def test_parse_cpu_max_malformed():
    with pytest.raises(Malformed):
        parse_cpu_max("200000\n")


LIMITS = (
    "Limit                     Soft Limit           Hard Limit           Units     \n"
    "Max cpu time              unlimited            unlimited            seconds   \n"
    "Max processes             96365                96365                processes \n"
    "Max open files            20000                1048576              files     \n"
    "Max locked memory         8388608              8388608              bytes     \n")


def test_parse_fd_limit():
    assert parse_fd_limit(LIMITS) == 20000
    assert parse_fd_limit(LIMITS.replace("20000    ", "unlimited")) is None


def test_parse_fd_limit_malformed():
    with pytest.raises(Malformed):
        parse_fd_limit(LIMITS.replace("Max open files", "Max open filez"))


# ------------------------------------------------------------------------------ analysis helpers

@pytest.mark.parametrize("name, pool", [
    ("omp_worker_12", "omp_worker_#"),
    ("python3", "python#"),
    ("pt_autograd_0", "pt_autograd_#"),
    ("ZMQbg/Reaper", "ZMQbg/Reaper"),
    ("cuda-EvtHandlr", "cuda-EvtHandlr"),
    ("tokio-rt-123-45", "tokio-rt-#-#"),
    ("", ""),
])
def test_pool_of(name, pool):
    assert pool_of(name) == pool


def test_linear_slope():
    assert linear_slope([(0.0, 10.0), (1.0, 12.0), (2.0, 14.0), (3.0, 16.0)]) == 2.0
    assert linear_slope([(0.0, 5.0), (1.0, 5.0), (2.0, 5.0)]) == 0.0
    assert linear_slope([(0.0, 9.0), (1.0, 6.0), (2.0, 3.0)]) == -3.0
    assert linear_slope([(0.0, 1.0), (1.0, 2.0)]) is None          # too few points
    assert linear_slope([(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)]) is None   # no time spread
    assert linear_slope([]) is None


def test_rate():
    assert rate(100, 300, 2.0) == 100.0
    assert rate(5, 5, 1.0) == 0.0
    assert rate(300, 100, 2.0) is None     # counter went backwards (reset): unknown
    assert rate(None, 100, 1.0) is None
    assert rate(100, None, 1.0) is None
    assert rate(100, 200, 0.0) is None
    assert rate(100, 200, -1.0) is None


def _stat(lines: str):
    return parse_proc_stat("cpu  0 0 0 0 0 0 0 0\n" + lines, hz=100)


def test_per_core_utilisation():
    first = _stat("cpu0 100 0 50 800 50 0 0 0\n"
                  "cpu1 100 0 50 800 50 0 0 0\n"
                  "cpu2 500 0 0 500 0 0 0 0\n")
    last = _stat("cpu0 160 0 70 900 70 0 0 0\n"       # 60 user 20 sys 100 idle 20 iowait
                 "cpu1 100 0 50 800 50 0 0 0\n"       # nothing happened: unknown, not idle
                 "cpu3 1 1 1 1 0 0 0 0\n")            # cpu2 went offline, cpu3 came online
    cores = per_core_utilisation(first, last)
    assert cores == [
        {"cpu": 0, "busy_ratio": 0.4,
         "modes": {"user": 0.3, "nice": 0.0, "system": 0.1, "idle": 0.5, "iowait": 0.1,
                   "irq": 0.0, "softirq": 0.0, "steal": 0.0}},
        {"cpu": 1, "busy_ratio": None, "modes": {}},
    ]


def test_per_core_utilisation_counter_backwards_is_clamped():
    first = _stat("cpu0 100 0 50 800 50 0 0 0\n")
    last = _stat("cpu0 200 0 50 900 10 0 0 0\n")      # iowait went backwards (a kernel quirk)
    [core] = per_core_utilisation(first, last)
    assert core["busy_ratio"] == 0.5
    assert core["modes"]["iowait"] == 0.0


def _topology_2s() -> Topology:
    """2 sockets x 2 cores x 2 threads; siblings i and i+4; node = socket."""
    cpus = {}
    for cpu in range(8):
        first = cpu % 4
        cpus[cpu] = CpuInfo(cpu, first // 2, first % 2, (first, first + 4), first // 2)
    nodes = {0: NumaNode(0, [0, 1, 4, 5]), 1: NumaNode(1, [2, 3, 6, 7])}
    return Topology(list(range(8)), cpus, nodes)


def test_effective_cpus_everything():
    topo = _topology_2s()
    result = effective_cpus(topo, None, None, None)
    assert result == {"cpus": list(range(8)), "count": 8, "physical_cores": 4,
                      "quota_cores": None, "capacity_cores": 8.0, "numa_nodes": [0, 1]}


def test_effective_cpus_affinity_cpuset_quota():
    topo = _topology_2s()
    result = effective_cpus(topo, [0, 1, 2, 4, 5, 9], [0, 1, 4, 5, 6], 1.5)
    assert result == {"cpus": [0, 1, 4, 5], "count": 4, "physical_cores": 2,
                      "quota_cores": 1.5, "capacity_cores": 1.5, "numa_nodes": [0]}


def test_effective_cpus_without_topology():
    result = effective_cpus(None, [0, 1, 2], [1, 2, 3], 4.0)
    assert result == {"cpus": [1, 2], "count": 2, "physical_cores": None,
                      "quota_cores": 4.0, "capacity_cores": 2.0, "numa_nodes": []}


def test_thread_settings_oversubscribed():
    result = thread_settings({"OMP_NUM_THREADS": "64"}, physical_cores=8, capacity_cores=16.0,
                             logical_cpus=16)
    assert result == {
        "configured": {"OMP_NUM_THREADS": 64}, "usable_physical_cores": 8,
        "recommended_threads": 6,
        "advice": ["OMP_NUM_THREADS=64 exceeds the 8 physical cores this process can use; "
                   "set OMP_NUM_THREADS=6"],
    }


def test_thread_settings_unset_and_bad_values():
    result = thread_settings({"MKL_NUM_THREADS": "lots", "OPENBLAS_NUM_THREADS": "1"},
                             physical_cores=16, capacity_cores=32.0, logical_cpus=32)
    assert result["configured"] == {"OPENBLAS_NUM_THREADS": 1}
    assert result["usable_physical_cores"] == 16
    assert result["recommended_threads"] == 13
    assert result["advice"] == [
        "MKL_NUM_THREADS='lots' is not a number; the runtime will ignore it",
        "OPENBLAS_NUM_THREADS=1 uses under half of the 16 usable physical cores; "
        "consider OPENBLAS_NUM_THREADS=13",
        "OMP_NUM_THREADS is unset: OpenMP sizes its pool to the 32 visible CPUs unless the "
        "program sets it (torch.set_num_threads); 13 threads is 85% of the 16 usable physical "
        "cores",
    ]


def test_thread_settings_quota_limits_usable_cores():
    result = thread_settings({"OMP_NUM_THREADS": "2,1"}, physical_cores=8, capacity_cores=2.5,
                             logical_cpus=16)
    assert result["configured"] == {"OMP_NUM_THREADS": 2}
    assert result["usable_physical_cores"] == 2
    assert result["recommended_threads"] == 1
    assert result["advice"] == []


def test_thread_settings_without_environment():
    result = thread_settings(None, physical_cores=None, capacity_cores=0.5, logical_cpus=4)
    assert result == {"configured": {}, "usable_physical_cores": 1, "recommended_threads": 1,
                      "advice": []}
