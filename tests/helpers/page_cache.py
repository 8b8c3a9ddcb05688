"""A process whose memory is page cache, for the memory scenarios:
`python page_cache.py MODE PATH SIZE_MIB RATE_MIB`.

    dirty         rewrites PATH (SIZE_MIB) in passes at RATE_MIB per second and never syncs:
                  its cgroup fills with dirty pages that reclaim must write back first
    written-back  writes PATH once and fsyncs it, then reads it in passes at RATE_MIB per
                  second: its cgroup fills with clean cache that reclaim drops at once

Either way the process's own memory (anonymous RSS) stays ~10 MiB: it moves data through one
reused 1 MiB buffer. Prints "ready <pid>" once the file exists, then runs until killed.
"""

from __future__ import annotations

import os
import sys
import time

MIB = 1 << 20


def paced(size_mib: int, rate_mib: float):
    """Block indexes 0..size_mib-1 over and over, at most rate_mib of them per second."""
    started, done = time.monotonic(), 0
    while True:
        for index in range(size_mib):
            yield index
            done += 1
            delay = started + done / rate_mib - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def main() -> None:
    mode, path, size_mib, rate_mib = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    if mode not in ("dirty", "written-back"):
        raise SystemExit(f"unknown mode {mode!r}: dirty or written-back")
    block = os.urandom(MIB)
    buffer = bytearray(MIB)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    for _ in range(size_mib):
        os.write(fd, block)
    if mode == "written-back":
        os.fsync(fd)
    print(f"ready {os.getpid()}", flush=True)
    for index in paced(size_mib, rate_mib):
        if mode == "dirty":
            os.pwrite(fd, block, index * MIB)
        else:
            os.preadv(fd, [buffer], index * MIB)


if __name__ == "__main__":
    main()
