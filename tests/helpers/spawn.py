"""Start real target processes and run dsmon against them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

WORKLOAD = Path(__file__).with_name("workload.py")
REPO = Path(__file__).resolve().parents[2]


@contextmanager
def workload(*args: str, timeout: float = 60.0, env: dict | None = None):
    """Run tests/helpers/workload.py with args; yield its pid once it printed "ready"."""
    process = subprocess.Popen([sys.executable, str(WORKLOAD), *args], stdout=subprocess.PIPE,
                               text=True, env=env)
    try:
        deadline = time.monotonic() + timeout
        line = process.stdout.readline()
        if not line.startswith("ready") or time.monotonic() > deadline:
            raise RuntimeError(f"workload {args} did not start: {line!r}")
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()


def run_dsmon(*args: str, timeout: float = 120.0, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "dsmon", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


def diagnose_json(pid: int, *extra: str, duration: str = "2s", interval: str = "0.5s",
                  expect_rc: int | tuple = (0, 6, 7)) -> dict:
    """Run diagnose and parse its JSON. By default any exit code that still wrote a full
    report (ok, warning, critical) is accepted; tests that care pass one."""
    result = run_dsmon("diagnose", str(pid), "--duration", duration, "--interval", interval,
                       "--format", "json", *extra)
    expected = expect_rc if isinstance(expect_rc, tuple) else (expect_rc,)
    assert result.returncode in expected, (result.returncode, result.stderr[-2000:])
    return json.loads(result.stdout)
