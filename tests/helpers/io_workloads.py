"""I/O-bound target programs and a tiny slow FUSE filesystem for dsmon's I/O scenario tests.

Run as `python io_workloads.py MODE [options]`:

  blockdev DEVICE   reader threads (`blk_reader_#`) doing O_DIRECT reads from a block device, in
                    a loop; with --loader, one more thread (`loader`) that alternates a second
                    of CPU time (hashing) with one read, so the process's CPU swings with its
                    I/O. With --cgroup DIR it first moves itself into that (blkio) cgroup.
  fsread PATH       reader threads (`fs_reader_#`) reading a file in 64 KiB chunks, each with its
                    own descriptor; --rate caps the bytes per second of all threads together.
                    --start-after S starts the readers S seconds after "ready" (a stall that
                    begins mid-window) and writes their start (wall clock) to --onset-file.
  fusefs MOUNT      a read-only FUSE filesystem (fusepy over libfuse2) with one file, model.bin,
                    whose every read sleeps --delay seconds first; runs in the foreground until
                    killed or unmounted. --direct-io mounts it with `-o direct_io`: reads skip
                    the page cache (an option s3fs and rclone mounts offer too).

The targets print "ready <pid>" once their threads are started; the test then watches
/proc/PID/task until the threads sit where it expects them (D state, or a FUSE wait channel).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import hashlib
import mmap
import os
import stat
import sys
import threading
import time

PR_SET_NAME = 15
CHUNK = 64 * 1024
FUSE_FILE = "model.bin"
FUSE_FILE_SIZE = 256 * 1024 * 1024

_libc = ctypes.CDLL(None, use_errno=True)


def set_thread_name(name: str) -> None:
    """Name the calling OS thread (comm, at most 15 bytes) like a native pool would."""
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def ready() -> None:
    print(f"ready {os.getpid()}", flush=True)


def start(target, name: str, *args) -> None:
    threading.Thread(target=target, args=(name, *args), daemon=True).start()


# --- blockdev ------------------------------------------------------------------------------

def device_size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


def direct_reader(name: str, device: str, block: int, first_offset: int) -> None:
    """Read `block` bytes at a time with O_DIRECT (the page cache cannot answer), forever."""
    set_thread_name(name)
    fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
    buffer = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT needs
    size = device_size(fd)
    offset = first_offset % size
    while True:
        os.preadv(fd, [buffer], offset)
        offset = (offset + block) % size


def loader(name: str, device: str, block: int, first_offset: int, busy_s: float) -> None:
    """A data loader: hash for `busy_s` of its own CPU time (so it does its share of work even
    on a busy host; hashlib releases the GIL), then read one block."""
    set_thread_name(name)
    fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
    buffer = mmap.mmap(-1, block)
    size = device_size(fd)
    offset = first_offset % size
    data = os.urandom(1 << 20)
    while True:
        until = time.thread_time() + busy_s
        while time.thread_time() < until:
            hashlib.sha256(data).digest()
        os.preadv(fd, [buffer], offset)
        offset = (offset + block) % size


def join_cgroup(directory: str) -> None:
    with open(os.path.join(directory, "cgroup.procs"), "w") as handle:
        handle.write(str(os.getpid()))


# --- fsread --------------------------------------------------------------------------------

class RateLimit:
    """Shared token bucket: at most `rate` bytes per second over all threads (0: no limit)."""

    def __init__(self, rate: float):
        self.rate = rate
        self.lock = threading.Lock()
        self.next_at = time.monotonic()

    def take(self, size: int) -> None:
        if not self.rate:
            return
        with self.lock:
            at = self.next_at = max(self.next_at, time.monotonic()) + size / self.rate
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def file_reader(name: str, path: str, first_offset: int, limit: RateLimit) -> None:
    set_thread_name(name)
    try:
        with open(path, "rb", buffering=0) as handle:
            size = os.fstat(handle.fileno()).st_size
            offset = first_offset % size
            while True:
                limit.take(CHUNK)
                handle.seek(offset)
                handle.read(CHUNK)
                offset = (offset + CHUNK) % size
    except OSError as exc:
        if exc.errno not in (errno.ENOTCONN, errno.ECONNABORTED):
            raise  # the FUSE daemon went away (teardown): end quietly; anything else is loud


# --- fusefs --------------------------------------------------------------------------------

def run_fusefs(mountpoint: str, delay: float, direct_io: bool) -> None:
    from fuse import FUSE, FuseOSError, Operations  # fusepy: ctypes over libfuse.so.2

    class SlowFS(Operations):
        """One read-only file whose reads sleep: a stalled network/object-store mount."""

        def getattr(self, path, fh=None):
            now = time.time()
            times = {"st_atime": now, "st_mtime": now, "st_ctime": now}
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, **times}
            if path == "/" + FUSE_FILE:
                return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1,
                        "st_size": FUSE_FILE_SIZE, **times}
            raise FuseOSError(errno.ENOENT)

        def readdir(self, path, fh):
            return [".", "..", FUSE_FILE]

        def open(self, path, flags):
            if path != "/" + FUSE_FILE:
                raise FuseOSError(errno.ENOENT)
            return 0

        def read(self, path, size, offset, fh):
            time.sleep(delay)
            return bytes(max(0, min(size, FUSE_FILE_SIZE - offset)))

    options = {"direct_io": True} if direct_io else {}
    # Multi-threaded (nothreads=False), so every reader's request sleeps at the same time.
    FUSE(SlowFS(), mountpoint, foreground=True, ro=True, nothreads=False,
         fsname="dsmon-slowfs", **options)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["blockdev", "fsread", "fusefs"])
    parser.add_argument("path", help="device (blockdev), file (fsread) or mountpoint (fusefs)")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--block", type=int, default=CHUNK, help="O_DIRECT read size (blockdev)")
    parser.add_argument("--loader", action="store_true", help="blockdev: add a CPU+I/O loader")
    parser.add_argument("--loader-busy", type=float, default=1.0, help="seconds of CPU per read")
    parser.add_argument("--cgroup", default="", help="blockdev: join this cgroup v1 directory")
    parser.add_argument("--rate", type=float, default=0.0, help="fsread: bytes/s of all threads")
    parser.add_argument("--start-after", type=float, default=0.0, help="fsread: delay readers")
    parser.add_argument("--onset-file", default="", help="fsread: write the readers' start time")
    parser.add_argument("--delay", type=float, default=60.0, help="fusefs: seconds per read")
    parser.add_argument("--direct-io", action="store_true", help="fusefs: mount -o direct_io")
    args = parser.parse_args()

    if args.mode == "fusefs":
        run_fusefs(args.path, args.delay, args.direct_io)
        return
    if args.mode == "blockdev":
        if args.cgroup:
            join_cgroup(args.cgroup)  # before any thread reads, so every bio is charged there
        spread = 1 << 20
        for index in range(args.threads):
            start(direct_reader, f"blk_reader_{index}", args.path, args.block, index * spread)
        if args.loader:
            start(loader, "loader", args.path, args.block, args.threads * spread, args.loader_busy)
    else:
        def start_readers() -> None:
            limit = RateLimit(args.rate)
            if args.onset_file:
                with open(args.onset_file, "w") as handle:
                    handle.write(repr(time.time()))
            for index in range(args.threads):
                start(file_reader, f"fs_reader_{index}", args.path, index * (8 << 20), limit)

        if args.start_after:
            threading.Timer(args.start_after, start_readers).start()
        else:
            start_readers()
    ready()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
