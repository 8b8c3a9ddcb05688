"""CPU-bound target programs for the CPU scenario tests: `python cpu_workloads.py MODE [options]`.

Prints "ready <pid>" on stdout once its threads run, then runs until killed.

Modes:
  torch  a PyTorch matmul loop with torch.set_num_threads(--threads) (OpenMP pool).
  numpy  a NumPy matmul loop on OpenBLAS's pool, sized by OPENBLAS_NUM_THREADS (set it in the
         environment at start, as users do; --threads fills it in when it is absent).
  hog    --threads native busy threads (hashlib releases the GIL for large inputs, so N
         threads use N CPUs): a competing process.
  gil    --threads pure-Python threads running bytecode (they hold the GIL, so together
         they use about one core).

--on/--off switch the work on and off (seconds). The phase is taken from CLOCK_MONOTONIC,
which is system-wide, so several processes started with the same --on/--off are busy at the
same time and idle at the same time: the load the target sees swings as a whole.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import sys
import threading
import time

PR_SET_NAME = 15
_libc = ctypes.CDLL(None, use_errno=True)


def set_thread_name(name: str) -> None:
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


class Phase:
    """On for `on` seconds, off for `off` seconds, aligned on the system-wide monotonic clock."""

    def __init__(self, on: float, off: float):
        self.on, self.off = on, off

    def wait_until_on(self) -> None:
        if self.off <= 0:
            return
        period = self.on + self.off
        position = time.monotonic() % period
        if position >= self.on:
            time.sleep(period - position)

    def is_on(self) -> bool:
        if self.off <= 0:
            return True
        return time.monotonic() % (self.on + self.off) < self.on


def ready() -> None:
    print(f"ready {os.getpid()}", flush=True)


def run_torch(threads: int, size: int, phase: Phase) -> None:
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)  # builds the OpenMP pool
    ready()
    while True:
        phase.wait_until_on()
        while phase.is_on():
            torch.mm(a, b)


def run_numpy(threads: int, size: int, phase: Phase) -> None:
    # OpenBLAS sizes its pool when it loads, from the environment.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(threads))
    import numpy

    a = numpy.random.rand(size, size)
    b = numpy.random.rand(size, size)
    a @ b  # starts the pool
    ready()
    while True:
        phase.wait_until_on()
        while phase.is_on():
            a @ b


def _hog(name: str, phase: Phase) -> None:
    set_thread_name(name)
    block = os.urandom(1 << 16)
    while True:
        phase.wait_until_on()
        while phase.is_on():
            hashlib.sha256(block).digest()


def _python_spin(name: str, phase: Phase) -> None:
    set_thread_name(name)
    while True:
        phase.wait_until_on()
        while phase.is_on():
            total = 0
            for i in range(20000):  # bytecode: holds the GIL between switch requests
                total += i * i


def run_threads(target, prefix: str, count: int, phase: Phase) -> None:
    for index in range(count):
        threading.Thread(target=target, args=(f"{prefix}{index}", phase), daemon=True).start()
    time.sleep(0.2)
    ready()
    while True:
        time.sleep(3600)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["torch", "numpy", "hog", "gil"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--on", type=float, default=1.0, help="seconds of work per cycle")
    parser.add_argument("--off", type=float, default=0.0,
                        help="seconds idle per cycle (0: always on)")
    parser.add_argument("--size", type=int, default=384, help="matrix size for torch and numpy")
    parser.add_argument("--switch-interval", type=float, default=0.0,
                        help="gil: sys.setswitchinterval (seconds; 0 keeps Python's 5 ms)")
    args = parser.parse_args()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    phase = Phase(args.on, args.off)
    if args.mode == "torch":
        run_torch(args.threads, args.size, phase)
    elif args.mode == "numpy":
        run_numpy(args.threads, args.size, phase)
    elif args.mode == "hog":
        run_threads(_hog, "cpu_hog_", args.threads, phase)
    else:
        run_threads(_python_spin, "py_worker_", args.threads, phase)


if __name__ == "__main__":
    main()
