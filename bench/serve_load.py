#!/usr/bin/env python3
"""Serving under load: concurrent scrapers (and idle clients) against a real agent.

    python bench/serve_load.py [--scrapers 50] [--seconds 20] [--slow-clients 20]
                               [--processes 5] [--threads 64] [--repo DIR] [--json FILE]

Starts `tests/helpers/workload.py threads --idle N` and `python -m dsmon agent` following it
on a free loopback port (from --repo, default this checkout: point it at another checkout to
compare), opens `--slow-clients` connections that send half a request head and nothing more,
then runs `--scrapers` scrapers back to back for `--seconds`, spread over `--processes`
processes (one Python process's GIL would otherwise be the bottleneck being measured), each
from its own loopback address (127.0.0.2, .3, ...: one address's ephemeral ports wrap within
seconds at this rate). Each
scrape is a new connection (as Prometheus's first scrape of a target); it must answer 200 with
the exposition. Prints scrapes, errors, p50/p95/p99/max latency and the load average.

tests/test_agent_faults.py runs `scrape_storm` for 4 s with 50 scrapers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from http.client import HTTPConnection
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.soak import agent_env, free_port, reap, reap_all, wait_for_metrics  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORKLOAD = REPO / "tests" / "helpers" / "workload.py"


# Linux's IP_BIND_ADDRESS_NO_PORT (24; the socket module names it from Python 3.12).
_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class _SourcedConnection(HTTPConnection):
    """An HTTP connection from loopback address `source`, its port picked at connect().

    A plain bind((source, 0)) makes the kernel find a port that no socket holds, TIME_WAIT
    ones included: with the ~30,000 TIME_WAITs a storm leaves per address (the client closes
    first), each bind scanned them, the scraper processes spent ~185% of the two cores in
    the kernel, and the storm measured 250 scrapes a second against an agent at 12% CPU.
    IP_BIND_ADDRESS_NO_PORT defers the port to connect(), which only needs a free 4-tuple."""

    def __init__(self, port: int, timeout: float, source: str):
        super().__init__("127.0.0.1", port, timeout=timeout)
        self._source = source

    def connect(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, _BIND_ADDRESS_NO_PORT, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.timeout)
            sock.bind((self._source, 0))
            sock.connect((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def timed_scrape(port: int, path: str = "/metrics", timeout: float = 5.0,
                 source: str | None = None) -> float:
    """One GET on a new connection (from loopback address `source`); its wall seconds.
    Raises unless 200 with a body."""
    started = time.perf_counter()
    connection = _SourcedConnection(port, timeout, source) if source else \
        HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200 or not body:
            raise RuntimeError(f"HTTP {response.status}, {len(body)} bytes")
    finally:
        connection.close()
    return time.perf_counter() - started


def scrape_storm(port: int, scrapers: int, seconds: float,
                 source: str | None = None) -> tuple[list[float], list[str]]:
    """`scrapers` threads scraping back to back for `seconds`: latencies and errors."""
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    def loop():
        while time.monotonic() < deadline:
            try:
                latencies.append(timed_scrape(port, source=source))
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=loop) for _ in range(scrapers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def hold_slow_clients(port: int, count: int) -> list[socket.socket]:
    """Connections that send the start of a request head, and never its end."""
    clients = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        clients.append(client)
    return clients


def _storm_process(port, scrapers, seconds, source, results):
    results.put(scrape_storm(port, scrapers, seconds, source))


def distributed_storm(port: int, scrapers: int, seconds: float,
                      processes: int) -> tuple[list[float], list[str]]:
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    shares = [scrapers // processes + (1 if n < scrapers % processes else 0)
              for n in range(processes)]
    # Each process scrapes from its own loopback address: back to back, 50 scrapers open
    # ~3,500 connections a second, and one address's 28k ephemeral ports would wrap every
    # 8 s onto 4-tuples still closing (a limit of the bench, not of the server).
    workers = [context.Process(target=_storm_process,
                               args=(port, share, seconds, f"127.0.0.{n + 2}", results))
               for n, share in enumerate(shares) if share]
    for worker in workers:
        worker.start()
    latencies, errors = [], []
    for _ in workers:
        got_latencies, got_errors = results.get(timeout=seconds + 60)
        latencies += got_latencies
        errors += got_errors
    for worker in workers:
        worker.join()
    return latencies, errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scrapers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--slow-clients", type=int, default=20)
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--threads", type=int, default=64, help="target threads (64)")
    parser.add_argument("--repo", default=str(REPO), help="the dsmon checkout to run")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)
    target = subprocess.Popen([sys.executable, str(WORKLOAD), "threads", "--idle",
                               str(args.threads)], stdout=subprocess.PIPE, text=True)
    agent = None
    try:
        target.stdout.readline()
        port = free_port()
        env = {**agent_env(), "PYTHONPATH": args.repo}
        agent = subprocess.Popen([sys.executable, "-m", "dsmon", "agent", "--listen",
                                  f"127.0.0.1:{port}", "--target", f"srv=pid:{target.pid}"],
                                 env=env, cwd=args.repo, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        body = wait_for_metrics(url, agent, 'dsmon_target_up{target="srv"} 1.0')
        slow = hold_slow_clients(port, args.slow_clients)
        load_before = os.getloadavg()
        latencies, errors = distributed_storm(port, args.scrapers, args.seconds, args.processes)
        load_after = os.getloadavg()
        for client in slow:
            client.close()
    finally:
        if agent is not None:
            reap(agent, graceful_s=3.0)
        reap(target)
        reap_all()
    result = {
        "repo": args.repo, "scrapers": args.scrapers, "seconds": args.seconds,
        "slow_clients": args.slow_clients, "processes": args.processes,
        "exposition_bytes": len(body), "scrapes": len(latencies), "errors": len(errors),
        "first_errors": errors[:5],
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 1) if latencies else None,
        "p95_ms": round(percentile(latencies, 0.95) * 1000, 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1) if latencies else None,
        "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "loadavg_before": load_before, "loadavg_after": load_after,
        "cpus": os.cpu_count()}
    print(json.dumps(result, indent=2))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if latencies and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
