"""The injected filesystem roots. Nothing in dsmon names /proc or /sys directly."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class HostPaths:
    """Where the host's procfs, sysfs and root filesystem are mounted.

    The defaults read the running host; a snapshot or fixture tree, or a container
    watching its host through bind mounts, passes other roots (node_exporter's flag names).
    """

    procfs: str = "/proc"
    sysfs: str = "/sys"
    rootfs: str = "/"

    def proc(self, *parts: object) -> str:
        return os.path.join(self.procfs, *map(str, parts))

    def sys(self, *parts: object) -> str:
        return os.path.join(self.sysfs, *map(str, parts))

    def root(self, *parts: object) -> str:
        return os.path.join(self.rootfs, *map(str, parts))

    def pid(self, pid: int, *parts: object) -> str:
        return os.path.join(self.procfs, str(pid), *map(str, parts))

    def task(self, pid: int, tid: int, *parts: object) -> str:
        return os.path.join(self.procfs, str(pid), "task", str(tid), *map(str, parts))

    @property
    def is_live(self) -> bool:
        """True when procfs is this machine's own /proc (pids there are live processes)."""
        return os.path.realpath(self.procfs) == "/proc"

    def problems(self) -> list[str]:
        """What is wrong with these roots, one line each (for the command line's edge).
        A procfs root must hold the host-wide `stat` that every procfs (and every dsmon
        snapshot's proc/) has; a directory without it is not one."""
        found = []
        for flag, root in (("--path.procfs", self.procfs), ("--path.sysfs", self.sysfs),
                           ("--path.rootfs", self.rootfs)):
            if not os.path.isdir(root):
                found.append(f"{flag} {root}: "
                             + ("not a directory" if os.path.exists(root) else "no such directory"))
        if not found and not os.path.isfile(self.proc("stat")):
            found.append(f"--path.procfs {self.procfs}: not a procfs (no {self.proc('stat')}); "
                         "point it at a mounted proc filesystem (the host's /proc, bind-mounted "
                         "into a container) or at the proc/ of an unpacked dsmon snapshot")
        return found
