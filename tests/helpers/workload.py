"""Real target processes for dsmon's tests: run as `python workload.py MODE [options]`.

Prints "ready <pid>" on stdout once its threads or memory are in place, then runs until
killed (or --exit-after). Busy threads hash large buffers: hashlib releases the GIL for
inputs over 2 KiB, so N busy threads really use N CPUs.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import threading
import time

PR_SET_NAME = 15
_libc = ctypes.CDLL(None, use_errno=True)


def set_thread_name(name: bytes) -> None:
    """Set the calling OS thread's name (comm, at most 15 bytes) like a native pool would."""
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name[:15]), 0, 0, 0)


def busy(name: bytes, stop: threading.Event) -> None:
    set_thread_name(name)
    block = os.urandom(1 << 20)
    while not stop.is_set():
        hashlib.sha256(block).digest()


def idle(name: bytes, stop: threading.Event) -> None:
    set_thread_name(name)
    stop.wait()


def start_threads(count: int, target, prefix: str, stop: threading.Event) -> None:
    for index in range(count):
        threading.Thread(target=target, args=(f"{prefix}{index}".encode(), stop),
                         daemon=True).start()


def ready() -> None:
    print(f"ready {os.getpid()}", flush=True)


def grow(rate_mib: float) -> None:
    """Grow RSS at rate_mib per second, forever. Touch every page (b"x" * n is memset), so
    RSS grows by exactly what is allocated."""
    held = []
    step = 0.1
    chunk = int(rate_mib * (1 << 20) * step)
    started = time.monotonic()
    ticks = 0
    while True:
        ticks += 1
        held.append(b"x" * chunk)
        delay = started + ticks * step - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["threads", "grow", "names", "churn", "many", "io"])
    parser.add_argument("--busy", type=int, default=0)
    parser.add_argument("--idle", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--rate-mib", type=float, default=0.0, help="RSS growth per second")
    parser.add_argument("--exit-after", type=float, default=0.0)
    parser.add_argument("--dir", default=".", help="where the io mode writes its file")
    args = parser.parse_args()
    stop = threading.Event()
    if args.exit_after:
        threading.Timer(args.exit_after, lambda: os._exit(0)).start()

    if args.mode == "threads":
        start_threads(args.busy, busy, "busy_worker_", stop)
        start_threads(args.idle, idle, "idle_worker_", stop)
        time.sleep(0.2)
        ready()
        if args.rate_mib:
            grow(args.rate_mib)
    elif args.mode == "grow":
        ready()
        grow(args.rate_mib)
    elif args.mode == "names":
        # Spaces, parentheses (as in stat's "(comm)") and bytes that are not UTF-8.
        for name in (b"my (weird) nam", b"a) b (c", b"bad\xff\xfeutf8", b"plain"):
            threading.Thread(target=idle, args=(name, stop), daemon=True).start()
        time.sleep(0.2)
        ready()
    elif args.mode == "churn":
        # Short-lived threads appear and vanish all the time, like a request-per-thread server.
        def short(name: bytes, _stop) -> None:
            set_thread_name(name)
            time.sleep(0.002)

        start_threads(8, idle, "steady_", stop)
        ready()
        index = 0
        while True:
            for _ in range(20):
                index += 1
                threading.Thread(target=short, args=(f"short_{index}".encode(), stop),
                                 daemon=True).start()
            time.sleep(0.005)
    elif args.mode == "many":
        threading.stack_size(64 * 1024)
        start_threads(args.count, idle, "pool_", stop)
        ready()
    elif args.mode == "io":
        # Write and fsync in a loop: storage write_bytes grows at a steady rate.
        def writer(name: bytes, _stop) -> None:
            set_thread_name(name)
            path = os.path.join(args.dir, f"dsmon-io-{os.getpid()}")
            block = os.urandom(1 << 20)
            try:
                with open(path, "wb") as handle:
                    while True:
                        handle.seek(0)
                        handle.write(block)
                        handle.flush()
                        os.fsync(handle.fileno())
                        time.sleep(0.01)
            finally:
                os.unlink(path)

        threading.Thread(target=writer, args=(b"io_writer", stop), daemon=True).start()
        ready()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
