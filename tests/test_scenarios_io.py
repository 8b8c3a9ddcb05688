"""Real I/O scenarios for the rules engine: `dsmon diagnose` against processes that really block.

1. Threads doing O_DIRECT reads from a loop device throttled to 64 KiB/s by a cgroup v1 blkio
   limit: they sit in D state; `io-stall` must fire and, since a loader thread makes the CPU
   swing, carry the swing in its summary: one cause, one finding (`cpu-fluctuation-io` is
   explained away by it, and run-queue contention is not named on a quiet host).
2. Threads reading from a FUSE filesystem whose reads sleep: through the page cache (threads in
   D state on a folio lock) and with `-o direct_io` (threads asleep in S state in the FUSE
   request wait, which only the wait channel shows), the latter also with the stall starting
   mid-window; `io-stall` must fire each time.
3. A process reading a local, cached file at 1 MiB/s: no warning or critical finding.

Each detecting scenario records its time to detect (the first `firing` transition, counted
from the start of the problem) in user_properties and on stdout (`-s`), and checks it against
the rule's longest window plus its `for`. Loop devices, cgroups, mounts and processes are
removed whatever happens.

Needs root. Scenario 1 needs losetup and a cgroup v1 blkio hierarchy with throttling; scenario 2
needs /dev/fuse, libfuse2 (`apt-get install -y fuse3 libfuse2`) and fusepy (`pip install
fusepy`). A missing prerequisite skips the scenario and says which.
"""

from __future__ import annotations

import collections
import ctypes.util
import importlib.util
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from dsmon.features.placement import THREAD_COUNT_VARIABLES
from dsmon.features import FS_WAIT_CHANNELS
from dsmon.engine.rules import load_rules
from tests.helpers.findings import assert_explained_by, assert_one_finding_per_cause
from tests.helpers.spawn import diagnose_json

IO_WORKLOADS = Path(__file__).parent / "helpers" / "io_workloads.py"
BLKIO_ROOT = Path("/sys/fs/cgroup/blkio")
THROTTLE_BPS = 64 * 1024          # the loop device's read limit: 64 KiB/s
LOOP_SIZE = 64 * 1024 * 1024
READERS = 4
DURATION, INTERVAL = "10s", "1s"

pytestmark = pytest.mark.slow


# --- prerequisites ---------------------------------------------------------------------------

def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, blkio cgroups and FUSE mounts)")


def require_loop_and_blkio() -> None:
    require_root()
    if shutil.which("losetup") is None:
        pytest.skip("losetup not found (apt-get install -y mount)")
    if not Path("/dev/loop-control").exists():
        pytest.skip("no loop devices: /dev/loop-control is missing (modprobe loop)")
    if not (BLKIO_ROOT / "blkio.throttle.read_bps_device").exists():
        pytest.skip(f"no cgroup v1 blkio hierarchy with throttling at {BLKIO_ROOT} "
                    "(blkio.throttle.read_bps_device); this scenario does not drive cgroup v2 "
                    "io.max")


def require_fuse() -> None:
    require_root()
    if not Path("/dev/fuse").exists():
        pytest.skip("/dev/fuse is missing (modprobe fuse; in a container: --device /dev/fuse)")
    if ctypes.util.find_library("fuse") is None:
        pytest.skip("libfuse.so.2 not found: apt-get install -y fuse3 libfuse2")
    spec = importlib.util.find_spec("fuse")
    if spec is None or spec.origin is None:
        pytest.skip("fusepy is not installed in this interpreter: pip install fusepy")
    text = Path(spec.origin).read_text(errors="replace")
    if "class FUSE" not in text or "class Operations" not in text:
        pytest.skip(f"the `fuse` module at {spec.origin} is not fusepy: pip install fusepy")
    if shutil.which("umount") is None:
        pytest.skip("umount not found (apt-get install -y mount)")


# --- processes ------------------------------------------------------------------------------

def target_env() -> dict:
    """The environment without thread-count settings, so no thread rule fires on them."""
    return {k: v for k, v in os.environ.items() if k not in THREAD_COUNT_VARIABLES}


def start_io(*args: str, ready_timeout: float = 20.0, wait_ready: bool = True,
             stderr=None) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, str(IO_WORKLOADS), *args], stdout=subprocess.PIPE,
                               stderr=stderr, text=True, env=target_env())
    if not wait_ready:
        return process
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    try:
        if not selector.select(ready_timeout):
            raise RuntimeError(f"io workload {args} printed nothing in {ready_timeout} s")
        line = process.stdout.readline()
    finally:
        selector.close()
    if not line.startswith("ready"):
        raise RuntimeError(f"io workload {args} did not start: {line!r} rc={process.poll()}")
    return process


def kill(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGKILL)


def reap(process: subprocess.Popen | None, timeout: float = 20.0) -> None:
    if process is None:
        return
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    if process.stdout:
        process.stdout.close()


def thread_table(pid: int) -> dict[int, tuple[str, str, str]]:
    """tid -> (name, state, wchan), read straight from /proc."""
    table = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            raw = (task / "stat").read_text()
            wchan = (task / "wchan").read_text().strip()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        state = raw[raw.rindex(")") + 2:].split()[0]
        table[int(task.name)] = (name, state, wchan)
    return table


def wait_for_threads(pid: int, blocked, count: int, timeout: float = 15.0):
    """Poll until `count` threads satisfy blocked(name, state, wchan); return the table."""
    deadline = time.monotonic() + timeout
    while True:
        table = thread_table(pid)
        if sum(1 for row in table.values() if blocked(*row)) >= count:
            return table
        if time.monotonic() > deadline:
            raise AssertionError(f"threads of {pid} never blocked as expected: {table}")
        time.sleep(0.1)


def summarise(table) -> dict[str, int]:
    """'name state wchan' -> count, with pool digits masked; for the test's own record."""
    rows = collections.Counter()
    for name, state, wchan in table.values():
        pool = "".join("#" if c.isdigit() else c for c in name)
        rows[f"{pool} {state} {wchan}"] += 1
    return dict(rows)


# --- checks ---------------------------------------------------------------------------------

def rule(rule_id: str):
    return next(r for r in load_rules() if r.id == rule_id)


def finding(report: dict, rule_id: str) -> dict | None:
    return next((f for f in report["findings"] if f["rule_id"] == rule_id), None)


def time_to_detect(report: dict, rule_id: str) -> float | None:
    return next((t["seconds"] for t in report["finding_transitions"]
                 if t["rule_id"] == rule_id and t["state"] == "firing"), None)


def assert_detected(report: dict, rule_id: str, scenario: str, record, onset=None) -> dict:
    """The rule fires, and within its longest window + for of the problem's start: the first
    sample, or `onset(finding)` seconds after it for a problem that starts mid-window.
    `record` is the test's request: the time to detect goes into its user_properties."""
    found = finding(report, rule_id)
    assert found is not None and found["state"] == "firing", (
        f"{rule_id} not firing in {scenario}: findings={report['findings']} "
        f"transitions={report['finding_transitions']} threads={report['threads']['all']}")
    started = onset(found) if onset else 0.0
    fired = time_to_detect(report, rule_id)
    limit = rule(rule_id).longest_window_s + rule(rule_id).for_s
    assert fired is not None and fired - started <= limit, (scenario, started, fired, limit)
    record.node.user_properties.append((f"time_to_detect_seconds[{scenario}:{rule_id}]",
                                        round(fired - started, 3)))
    print(f"\n[time-to-detect] {scenario}: {rule_id} firing {fired - started:.3f} s after the "
          f"problem began (at {started:.3f} s; fired at {fired:.3f} s; limit {limit:g} s)")
    return found


def evidence(found: dict, feature: str) -> dict | None:
    return next((e for e in found["evidence"] if e["feature"] == feature), None)


# --- 1. throttled block device ----------------------------------------------------------------

@contextmanager
def throttled_loop_device(tmp_path: Path):
    """A 64 MiB file-backed loop device and a blkio cgroup that reads it at 64 KiB/s.
    Yields (device, cgroup dir, release) where release() lifts the limit; teardown lifts it,
    waits for the cgroup to empty, removes it and detaches the device, always."""
    backing = tmp_path / "disk.img"
    with open(backing, "wb") as handle:
        handle.truncate(LOOP_SIZE)
    attach = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True,
                            text=True)
    if attach.returncode != 0:
        pytest.skip(f"cannot attach a loop device: {attach.stderr.strip()}")
    device = attach.stdout.strip()
    limit_file = None
    cgroup = BLKIO_ROOT / f"dsmon-test-io-{os.getpid()}-{time.monotonic_ns()}"
    rdev = os.stat(device).st_rdev
    major_minor = f"{os.major(rdev)}:{os.minor(rdev)}"

    def release() -> None:
        if limit_file is not None and limit_file.exists():
            limit_file.write_text(f"{major_minor} 0")  # 0 removes the limit: queued bios go

    try:
        cgroup.mkdir()
        limit_file = cgroup / "blkio.throttle.read_bps_device"
        limit_file.write_text(f"{major_minor} {THROTTLE_BPS}")
        assert limit_file.read_text().split() == [major_minor, str(THROTTLE_BPS)]
        yield device, cgroup, release
    finally:
        try:
            release()
            if cgroup.exists():
                deadline = time.monotonic() + 20
                while (cgroup / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
                    time.sleep(0.1)
                while True:
                    try:
                        cgroup.rmdir()
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
        finally:
            subprocess.run(["losetup", "-d", device], capture_output=True)


def test_threads_blocked_on_a_throttled_block_device_fire_io_stall(tmp_path, request):
    require_loop_and_blkio()
    with throttled_loop_device(tmp_path) as (device, cgroup, release):
        target = None
        try:
            # Readers of 32 KiB each: with the loader's read at most ~160 KiB wait in the
            # throttle queue, so the loader's read takes a few seconds and its CPU swings.
            target = start_io("blockdev", device, "--threads", str(READERS), "--block", "32768",
                              "--loader", "--cgroup", str(cgroup))
            assert str(target.pid) in (cgroup / "cgroup.procs").read_text().split()
            table = wait_for_threads(
                target.pid, lambda n, s, w: n.startswith("blk_reader") and s == "D", READERS)
            print(f"\n[threads] blockdev: {summarise(table)}")
            report = diagnose_json(target.pid, duration=DURATION, interval=INTERVAL,
                                   expect_rc=(6, 7))
        finally:
            kill(target)
            release()
            reap(target)

    # The throttle really held the reads back (and the readers were not idle).
    io = report["target"]["io"]
    assert io["read_bytes_per_second"] is not None
    assert io["read_bytes_per_second"] <= 2 * THROTTLE_BPS, io

    found = assert_detected(report, "io-stall", "blockdev", request)
    d_threads = evidence(found, "d_state_threads")
    assert d_threads is not None and d_threads["value"] >= READERS - 1, found["evidence"]
    assert evidence(found, "d_state_ratio")["value"] >= 0.5, found["evidence"]
    d_channels = {wchan for _, state, wchan in table.values() if state == "D"}
    assert any(c in found["summary"] for c in d_channels), (d_channels, found["summary"])
    rows = {row["name"]: row for row in report["threads"]["all"]}
    assert rows["blk_reader_0"]["state"] == "D" and rows["blk_reader_0"]["wchan"], rows
    # The finding cites the Python stacks of the blocked readers (py-spy).
    blocked_stacks = [t for t in found["stacks"]["threads"] if t["why"] == "blocked in I/O"]
    assert blocked_stacks and all("direct_reader" in " ".join(t["frames"])
                                  for t in blocked_stacks), found["stacks"]

    # The loader's CPU swings with its reads: the stall is the cause, and its one finding
    # shows the swing; cpu-fluctuation-io (I/O named from PSI, iowait or short D-state spells
    # when no thread stalls for long) is explained away. Run-queue contention is not named on
    # a quiet host (as CI is). When other processes keep the CPUs busy, the loader and even
    # the readers' wake-ups queue for a CPU, and "other processes on the same cores" is what
    # cpu-fluctuation-contention describes: a second cause, which may then fire beside it.
    assert "varied by" in found["summary"], found["summary"]
    assert_explained_by(report, "cpu-fluctuation-io", "io-stall")
    loader = rows["loader"]
    others = (report["host"]["cpu_busy_ratio"] * report["host"]["cpus_online"]
              - report["target"]["cpu"]["cores"])
    quiet = others < 0.5 and (loader["run_queue_wait_ratio"] or 0) < 0.25
    contention = finding(report, "cpu-fluctuation-contention")
    if quiet:
        assert contention is None, report["findings"]
    else:
        print(f"\n[note] blockdev: other processes used {others:.2f} cores and the loader waited "
              f"{loader['run_queue_wait_ratio'] or 0:.0%} of its runnable time for a CPU: "
              "contention not ruled out (cpu-fluctuation-contention: "
              f"{contention['state'] if contention else 'absent'})")
    assert finding(report, "cpu-fluctuation-unexplained") is None, report["findings"]
    assert finding(report, "cpu-fluctuation-gil") is None, report["findings"]
    assert_one_finding_per_cause(report)


# --- 2. FUSE filesystem whose reads sleep -----------------------------------------------------

def mounted(path: Path) -> bool:
    wanted = str(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == wanted for line in mounts)


@contextmanager
def slow_fuse_mount(tmp_path: Path, direct_io: bool, delay: float = 60.0):
    """Mount the slow FUSE filesystem at tmp_path/mnt; unmount and stop it always."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log = open(tmp_path / "fusefs.log", "w+")
    args = ["fusefs", str(mountpoint), "--delay", str(delay)]
    args += ["--direct-io"] if direct_io else []
    daemon = start_io(*args, wait_ready=False, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while not mounted(mountpoint):
            if daemon.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise AssertionError(f"the FUSE filesystem did not mount (rc={daemon.poll()}): "
                                     f"{log.read()[-2000:]}")
            time.sleep(0.05)
        yield mountpoint, daemon
    finally:
        try:
            kill(daemon)  # closing /dev/fuse aborts the connection: waiting requests fail
            reap(daemon, 10)
        finally:
            if mounted(mountpoint):
                subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
            if mounted(mountpoint) and shutil.which("fusermount"):
                subprocess.run(["fusermount", "-u", "-z", str(mountpoint)], capture_output=True)
            log.close()
            assert not mounted(mountpoint), f"{mountpoint} is still mounted"


def fuse_stalled(name: str, state: str, wchan: str) -> bool:
    """A reader that sits in the kernel: D state, or a sleep other than its own."""
    return name.startswith("fs_reader") and (
        state == "D" or wchan.startswith(FS_WAIT_CHANNELS)
        or (state == "S" and wchan not in ("", "0", "hrtimer_nanosleep")))


# page-cache: default mount, reads go through the page cache (kernel readahead).
# direct-io: `-o direct_io`, every read is a synchronous FUSE request.
# direct-io-mid-window: as direct-io, but the readers start ~3-4 s after dsmon's first sample.
#   Wait channels of S threads are read at samples 0, 5, 10, 15; the stall shows at 5 and 10,
#   the pre-stall 0 at sample 0 leaves io-stall's 10 s min window at 11 s, `for` adds 3 s: it
#   fires at 14 s, 10-11 s after the stall began. (A stall that began within 1 s after a
#   wchan sample would take over 13 s: the window plus `for` plus up to one interval.)
@pytest.mark.parametrize("mode", ["page-cache", "direct-io", "direct-io-mid-window"])
def test_threads_stalled_on_a_slow_fuse_filesystem_fire_io_stall(tmp_path, mode, request):
    require_fuse()
    direct_io = mode.startswith("direct-io")
    mid_window = mode.endswith("mid-window")
    onset_file = tmp_path / "onset"
    with slow_fuse_mount(tmp_path, direct_io) as (mountpoint, daemon):
        model = mountpoint / "model.bin"
        assert model.stat().st_size > 0  # getattr answers at once; only reads are slow
        target = None
        try:
            extra = ["--start-after", "4", "--onset-file", str(onset_file)] if mid_window else []
            target = start_io("fsread", str(model), "--threads", str(READERS), *extra)
            if not mid_window:
                wait_for_threads(target.pid, fuse_stalled, READERS)
            # io-stall asks for the stall over its whole window (min over 10 s): a stall that
            # begins mid-window fires about window + for after its start, so watch longer.
            report = diagnose_json(target.pid, duration="16s" if mid_window else DURATION,
                                   interval=INTERVAL, expect_rc=(6, 7))
            # Each read sleeps 60 s: the readers are still where dsmon saw them.
            table = wait_for_threads(target.pid, fuse_stalled, READERS, timeout=5)
            print(f"\n[threads] fuse {mode}: {summarise(table)}")
        finally:
            kill(target)
            kill(daemon)
            reap(target)

    def stall_onset(found: dict) -> float:
        # The readers' start (wall clock) in seconds after dsmon's first sample.
        first_sample_wall = found["since_wall"] - found["since_seconds"]
        onset = float(onset_file.read_text()) - first_sample_wall
        assert onset > 0, f"the readers started before dsmon's first sample ({onset:.2f} s)"
        return onset

    found = assert_detected(report, "io-stall", f"fuse-{mode}", request,
                            onset=stall_onset if mid_window else None)
    readers = {tid: row for tid, row in table.items() if row[0].startswith("fs_reader")}
    if direct_io:
        # Synchronous FUSE requests: the readers sleep interruptibly (S), so neither the
        # D-state count nor PSI sees them; the wait channel is the only witness.
        states = {state for _, state, _ in readers.values()}
        channels = {wchan for _, _, wchan in readers.values()}
        assert states == {"S"}, readers
        unknown = {c for c in channels if not c.startswith(FS_WAIT_CHANNELS)}
        assert not unknown, f"FUSE readers wait in {unknown}, which FS_WAIT_CHANNELS does not list"
        waits = evidence(found, "fs_wait_threads")
        assert waits is not None and waits["value"] >= READERS, found["evidence"]
        assert any(c in found["summary"] for c in channels), (channels, found["summary"])
        # The finding cites where in Python the readers wait (py-spy, non-blocking: the
        # stalled FUSE reads do not stall the dump).
        blocked_stacks = [t for t in found["stacks"]["threads"] if t["why"] == "blocked in I/O"]
        assert blocked_stacks and all("file_reader" in " ".join(t["frames"])
                                      for t in blocked_stacks), found["stacks"]
    else:
        # Page-cache reads: the kernel reads ahead in the background and the readers wait on
        # the page (folio) lock in D state; the generic D-state branch catches them.
        assert all(state == "D" for _, state, _ in readers.values()), readers
        d_threads = evidence(found, "d_state_threads")
        assert d_threads is not None and d_threads["value"] >= READERS - 1, found["evidence"]
        channels = {wchan for _, _, wchan in readers.values()}
        assert any(c in found["summary"] for c in channels), (channels, found["summary"])
    rchar = evidence(found, "rchar_per_second")
    if rchar is not None:
        assert rchar["value"] < 1024 * 1024


# --- 3. healthy local reads -------------------------------------------------------------------

def test_modest_local_reads_raise_no_warning(tmp_path):
    data = tmp_path / "weights.bin"
    data.write_bytes(os.urandom(1 << 20) * 16)  # 16 MiB, in the page cache after writing
    rate = 1024 * 1024
    target = start_io("fsread", str(data), "--threads", "2", "--rate", str(rate))
    try:
        report = diagnose_json(target.pid, duration=DURATION, interval=INTERVAL)
    finally:
        kill(target)
        reap(target)
    loud = [f for f in report["findings"] if f["severity"] in ("warning", "critical")]
    assert not loud, loud
    loud_transitions = [t for t in report["finding_transitions"]
                        if t["severity"] in ("warning", "critical")]
    assert not loud_transitions, loud_transitions
    assert finding(report, "io-stall") is None
    # The readers did read, at about the rate asked for.
    rchar = report["target"]["io"]["rchar_per_second"]
    assert 0.5 * rate <= rchar <= 2 * rate, rchar
    assert report["threads"]["d_state_ratio"] < 0.05
