"""A PyTorch process with realistic thread pools, for dsmon fixture recording on a GPU host.

Main thread: CPU matmuls (OpenMP/MKL workers, torch.set_num_threads(8)) and GPU matmuls on
cuda:0 (CUDA driver/runtime threads); a ThreadPoolExecutor(4) does small CPU work like a
DataLoader's workers. ~2 GiB is allocated on cuda:0. Prints "ready PID" once warmed up and runs
until killed (or --seconds elapse).
"""

import argparse
import concurrent.futures
import os
import sys
import threading
import time

import torch


def small_cpu_work(i: int) -> float:
    # Mostly-Python work with a little tensor math, like collating a batch.
    acc = 0.0
    for j in range(20000):
        acc += (i * j) % 7
    t = torch.arange(4096, dtype=torch.float32)
    return acc + float(t.sum())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=600.0)
    args = parser.parse_args()

    torch.set_num_threads(8)
    device = torch.device("cuda:0")
    # ~2 GiB held on the GPU for the whole run (512 Mi float32 values).
    hold = torch.empty(512 * 1024 * 1024, dtype=torch.float32, device=device)
    hold.fill_(1.0)
    ga = torch.randn(4096, 4096, device=device)
    gb = torch.randn(4096, 4096, device=device)
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    pool_tids = []
    pool = concurrent.futures.ThreadPoolExecutor(
        4, thread_name_prefix="loader", initializer=lambda: pool_tids.append(threading.get_native_id()))

    # Warm-up: start every pool so its threads exist before dsmon looks.
    futures = [pool.submit(small_cpu_work, i) for i in range(8)]
    for _ in range(5):
        c = a @ b
        gc = ga @ gb
    torch.cuda.synchronize()
    for f in futures:
        f.result()
    print(torch.__config__.parallel_info(), flush=True)
    print(f"ready {os.getpid()} threads={torch.get_num_threads()} "
          f"gpu_allocated={torch.cuda.memory_allocated(device)} "
          f"gpu_reserved={torch.cuda.memory_reserved(device)} "
          f"main_tid={threading.get_native_id()} pool_tids={','.join(map(str, sorted(pool_tids)))}",
          flush=True)

    deadline = time.monotonic() + args.seconds
    pending = []
    step = 0
    while time.monotonic() < deadline:
        pending = [f for f in pending if not f.done()]
        while len(pending) < 8:
            pending.append(pool.submit(small_cpu_work, step))
        c = a @ b
        gc = ga @ gb
        if step % 20 == 0:
            torch.cuda.synchronize()
        step += 1
    torch.cuda.synchronize()
    pool.shutdown(wait=False, cancel_futures=True)
    print(f"done steps={step} {float(c[0, 0]) + float(gc[0, 0]) + float(hold[0]):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
