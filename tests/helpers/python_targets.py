"""Python targets for the py-spy tests: a known hot function, GIL-bound or GIL-free threads.

    python_targets.py hot            one thread in `dsmon_test_hot_function`, three asleep
    python_targets.py pure N         N threads looping in pure Python (they take turns on the GIL)
    python_targets.py native N       N threads hashing 4 MiB buffers (hashlib drops the GIL)
    python_targets.py many N         N threads asleep (dump-cost budget)
Prints "ready" when its threads run.
"""

import hashlib
import sys
import threading
import time


def dsmon_test_hot_function():
    total = 0
    while True:
        for value in range(10_000):
            total += value * value


def pure_python_loop():
    total = 0
    while True:
        for value in range(1_000):
            total += value


def native_hashing():
    data = b"z" * (4 << 20)
    while True:
        hashlib.sha256(data).digest()


def sleeper():
    while True:
        time.sleep(1)


def start(count, target, prefix):
    for index in range(count):
        threading.Thread(target=target, name=f"{prefix}_{index}", daemon=True).start()


def main():
    mode = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    if mode == "hot":
        start(1, dsmon_test_hot_function, "hot")
        start(3, sleeper, "idler")
    elif mode == "pure":
        start(count, pure_python_loop, "pure")
    elif mode == "native":
        start(count, native_hashing, "native")
    elif mode == "many":
        start(count, sleeper, "sleeper")
    else:
        raise SystemExit(f"unknown mode {mode}")
    time.sleep(0.3)
    print("ready", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
