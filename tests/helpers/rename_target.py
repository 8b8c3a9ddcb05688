"""A target whose threads are renamed at random, like a server naming threads per request.

    python tests/helpers/rename_target.py [--threads 10000] [--renames 200]

`--threads` idle threads (64 KiB stacks), then about `--renames` times a second a random one
of them gets a new random name of letters (no digits, so masking digits does not fold them:
every name is new). Prints "ready PID" once the threads run; runs until killed, and gets
SIGKILL if the process that started it dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import _thread
import argparse
import ctypes
import os
import random
import signal
import string
import threading
import time

PR_SET_PDEATHSIG = 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=10_000)
    parser.add_argument("--renames", type=float, default=200.0)
    args = parser.parse_args()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    threading.stack_size(64 * 1024)
    never = _thread.allocate_lock()
    never.acquire()
    # start_new_thread does not wait for each thread to run (Thread.start does): 10,000
    # threads start in about a second instead of eight on a loaded 2-core host.
    for _ in range(args.threads):
        _thread.start_new_thread(never.acquire, ())
    while len(os.listdir("/proc/self/task")) < args.threads + 1:
        time.sleep(0.05)
    tids = [int(t) for t in os.listdir("/proc/self/task") if int(t) != os.getpid()]
    print(f"ready {os.getpid()}", flush=True)
    pace = 1.0 / args.renames
    rng = random.Random(20)
    while True:
        started = time.monotonic()
        tid = rng.choice(tids)
        name = "req-" + "".join(rng.choice(string.ascii_lowercase) for _ in range(6))
        with open(f"/proc/self/task/{tid}/comm", "w") as comm:
            comm.write(name)
        time.sleep(max(0.0, pace - (time.monotonic() - started)))


if __name__ == "__main__":
    main()
