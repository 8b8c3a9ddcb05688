"""cgroup v1 cpu groups that shield a CPU scenario from the rest of a shared machine, and the
processes started in them.

`scenario_groups()` makes a parent with the largest cpu.shares and, under it, one child for the
target, one for its competing neighbours and one for dsmon: the competition a scenario sets up
is the competition the target sees, and dsmon is not starved of CPU between its reads. The
groups are removed at the end, their processes killed, whatever happens. Without a writable
cgroup v1 cpu controller (not root, cgroup v2 only) everything runs where the caller runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.cgroups import _readline, _stop, rmdir_when_empty, sigkill
from tests.helpers.spawn import REPO

CPU_CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")
SCENARIO_SHARES = 262144         # the scenario's parent cgroup (the v1 maximum) against 1024 each
NEIGHBOUR_SHARES = 8192          # competing processes get 8/9 of the cores while they run


# --- cpu cgroups ------------------------------------------------------------------------------

def cpu_cgroup_unavailable() -> str | None:
    """Why no cgroup v1 cpu group can be made here, or None."""
    if os.geteuid() != 0:
        return "needs root to create a cpu cgroup and move processes into it"
    if not (CPU_CGROUP_ROOT / "cpu.cfs_quota_us").exists():
        return (f"no cgroup v1 cpu controller at {CPU_CGROUP_ROOT} (these scenarios set "
                "cpu.shares and cpu.cfs_quota_us)")
    probe = CPU_CGROUP_ROOT / f"dsmon-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        probe.mkdir()
    except OSError as exc:
        return f"cannot create a cgroup under {CPU_CGROUP_ROOT}: {exc}"
    rmdir_when_empty(probe)
    return None


class CpuGroup:
    """One cgroup v1 cpu directory; processes are started inside it (see `wrap`)."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, name: str, value) -> None:
        (self.path / name).write_text(str(value), encoding="utf-8")

    def read(self, name: str) -> str:
        return (self.path / name).read_text(encoding="utf-8")

    def procs(self) -> list[int]:
        try:
            return [int(pid) for pid in self.read("cgroup.procs").split()]
        except FileNotFoundError:
            return []

    def throttled_seconds(self) -> float:
        for line in self.read("cpu.stat").splitlines():
            key, _, value = line.partition(" ")
            if key == "throttled_time":
                return int(value) / 1e9
        return 0.0

    def wrap(self, argv: list[str]) -> list[str]:
        """argv run by a shell that first moves itself into the cgroup, then execs argv: the
        process and every thread it starts are in the cgroup from the beginning."""
        script = 'echo $$ > "$0" || exit 97; exec "$@"'
        return ["sh", "-c", script, str(self.path / "cgroup.procs"), *argv]

    def kill_all(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while pids := self.procs():
            if time.monotonic() > deadline:
                # Out of time: move the survivors to the root so the directory can go.
                for pid in pids:
                    try:
                        (CPU_CGROUP_ROOT / "cgroup.procs").write_text(str(pid), encoding="utf-8")
                    except OSError:
                        pass
                return
            sigkill(pids)
            time.sleep(0.05)


class NoGroup:
    """Stand-in when cgroups are unavailable: processes run where pytest runs."""

    path = None

    @staticmethod
    def wrap(argv: list[str]) -> list[str]:
        return argv


@dataclass
class Groups:
    target: CpuGroup | NoGroup       # the process dsmon watches
    neighbours: CpuGroup | NoGroup   # competing processes on the same cores
    monitor: CpuGroup | NoGroup      # dsmon itself


@contextmanager
def scenario_groups(quota_cores: float | None = None, required: bool = False):
    """Three children of a parent with a large cpu.shares: the target's (with a CFS quota of
    `quota_cores` if given), the neighbours' (NEIGHBOUR_SHARES against the target's 1024) and
    dsmon's. Everything in them is killed and the directories removed at the end, whatever
    happens. Without cgroups (and not `required`), everything runs where pytest runs."""
    reason = cpu_cgroup_unavailable()
    if reason is not None:
        if required:
            import pytest   # only pytest callers ask for `required`

            pytest.skip(reason)
        yield Groups(NoGroup(), NoGroup(), NoGroup())
        return
    parent = CpuGroup(CPU_CGROUP_ROOT / f"dsmon-cpu-test-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    parent.path.mkdir()
    children: list[CpuGroup] = []
    try:
        parent.write("cpu.shares", SCENARIO_SHARES)
        for name in ("target", "neighbours", "monitor"):
            child = CpuGroup(parent.path / name)
            child.path.mkdir()
            children.append(child)
        groups = Groups(*children)
        groups.neighbours.write("cpu.shares", NEIGHBOUR_SHARES)
        if quota_cores is not None:
            groups.target.write("cpu.cfs_period_us", 100000)
            groups.target.write("cpu.cfs_quota_us", int(quota_cores * 100000))
        yield groups
    finally:
        try:
            for child in children:
                child.kill_all()
        finally:
            for child in children:
                rmdir_when_empty(child.path)
            rmdir_when_empty(parent.path)


# --- processes --------------------------------------------------------------------------------

@contextmanager
def started(group, script: Path, *args: str, timeout: float = 60.0, prefix: tuple = (),
            env: dict | None = None):
    """`python script args` started inside `group` (behind `prefix`, e.g. taskset, which
    execs it), with `env` if given; yields it once it printed "ready"."""
    process = subprocess.Popen(group.wrap([*prefix, sys.executable, str(script), *args]),
                               stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = _readline(process, timeout)
        if not line.startswith("ready"):
            raise RuntimeError(f"{script.name} {args} did not start: {line!r} "
                               f"(exit {process.poll()})")
        if group.path is not None:
            assert process.pid in group.procs(), (process.pid, group.path)
        yield process
    finally:
        _stop(process)


def diagnose(monitor, pid: int, duration: str, interval: str = "1s",
             accept: tuple = (0, 6, 7)) -> tuple[int, dict]:
    """`dsmon diagnose PID --format json`, run inside the monitor group: (exit code, report).
    An exit code outside `accept` (a report that is not a full diagnosis) is an error."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    argv = [sys.executable, "-m", "dsmon", "diagnose", str(pid), "--duration", duration,
            "--interval", interval, "--format", "json"]
    result = subprocess.run(monitor.wrap(argv), capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode in accept, (result.returncode, result.stderr[-2000:])
    return result.returncode, json.loads(result.stdout)
