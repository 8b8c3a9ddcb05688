"""A target whose threads come and go, like a server that recycles its workers.

    python tests/helpers/churn_target.py [--threads 512] [--churn 0.05] [--busy-share 0.25]
                                         [--burst-ms 0.5] [--period-ms 200] [--seed N]

`--threads` worker threads (plus the main thread), each named `worker_N` with N unique over
the process's life (so a replacement never reuses a name). About `--busy-share` of them work in
short bursts (`--burst-ms` of hashing every `--period-ms`, at a random phase; hashlib releases
the GIL on blocks over 2 KiB), the rest block on an Event. Every second about `--churn` of the
workers (5%: 26 of 512) are told to exit, are joined, and are replaced by new threads of the
same kind, so the thread count returns to `--threads` within the second. `--churn 0` keeps the
same threads for ever.

Prints "ready PID" once every worker is running, then runs until killed. If the process that
started it dies, it gets SIGKILL (PR_SET_PDEATHSIG), so a crashed harness leaves nothing behind.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import random
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
_libc = ctypes.CDLL(None, use_errno=True)
BLOCK = os.urandom(16 << 10)


def set_thread_name(name: str) -> None:
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


class Worker:
    __slots__ = ("busy", "name", "stop", "thread")

    def __init__(self, index: int, busy: bool, burst_s: float, period_s: float,
                 started: threading.Semaphore):
        self.name = f"worker_{index}"
        self.busy = busy
        self.stop = threading.Event()
        target = self._busy if busy else self._idle
        self.thread = threading.Thread(target=target, args=(burst_s, period_s, started),
                                       name=self.name, daemon=True)

    def _idle(self, _burst_s: float, _period_s: float, started: threading.Semaphore) -> None:
        set_thread_name(self.name)
        started.release()
        self.stop.wait()

    def _busy(self, burst_s: float, period_s: float, started: threading.Semaphore) -> None:
        set_thread_name(self.name)
        started.release()
        if self.stop.wait(random.random() * period_s):   # spread the bursts over the period
            return
        while True:
            until = time.perf_counter() + burst_s
            while time.perf_counter() < until:
                hashlib.sha1(BLOCK).digest()
            if self.stop.wait(period_s):
                return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=512, help="worker threads (default 512)")
    parser.add_argument("--churn", type=float, default=0.05,
                        help="share of workers replaced every second (default 0.05; 0: none)")
    parser.add_argument("--busy-share", type=float, default=0.25,
                        help="share of workers that work in bursts (default 0.25)")
    parser.add_argument("--burst-ms", type=float, default=0.5, help="length of a burst (0.5)")
    parser.add_argument("--period-ms", type=float, default=200.0,
                        help="time between a busy worker's bursts (200)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    # Die with the process that started us (best effort: prctl returns -1 if refused).
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    rng = random.Random(args.seed)
    threading.stack_size(256 << 10)
    burst_s, period_s = args.burst_ms / 1000.0, args.period_ms / 1000.0
    started = threading.Semaphore(0)
    next_index = 0

    def new_worker(busy: bool) -> Worker:
        nonlocal next_index
        worker = Worker(next_index, busy, burst_s, period_s, started)
        next_index += 1
        worker.thread.start()
        return worker

    busy_count = round(args.threads * args.busy_share)
    workers = [new_worker(i < busy_count) for i in range(args.threads)]
    for _ in workers:
        started.acquire()
    print(f"ready {os.getpid()}", flush=True)

    per_second = round(args.threads * args.churn)
    if per_second <= 0:
        while True:
            time.sleep(3600)
    tick = time.monotonic()
    while True:
        tick += 1.0
        delay = tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            tick = time.monotonic()    # fell behind (a loaded host): do not burst to catch up
        leaving = rng.sample(range(len(workers)), per_second)
        for slot in leaving:
            workers[slot].stop.set()
        for slot in leaving:
            old = workers[slot]
            old.thread.join()
            workers[slot] = new_worker(old.busy)
        for _ in leaving:
            started.acquire()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:
        os._exit(0)
