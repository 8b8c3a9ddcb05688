"""A real monitoring stack on loopback for end-to-end tests: dsmon agents, Prometheus and
Alertmanager (Debian's packages), each a subprocess on a free 127.0.0.1 port.

    with PrometheusStack(tmp_path, agents=3, alertmanager=True) as stack:
        stack.start_agent(0, {"srv": pid})          # python -m dsmon agent --target srv=pid:PID
        stack.wait_until(lambda: stack.query('up{job="dsmon"} == 1'), 30, "agents scraped")
        stack.query_range("rate(dsmon_process_cpu_seconds_total[30s])", seconds=20)
        stack.alertmanager_alerts()                 # GET /api/v2/alerts

Agent ports are chosen up front and written into Prometheus's configuration (job "dsmon",
scrape and evaluation every 1 s, rule_files = the repo's rules/prometheus/dsmon-alerts.yml,
alerting to the Alertmanager), so an agent may start after Prometheus: until it listens, its
`up` is 0. Alertmanager runs with a route to a null receiver, its storage in the test's tmp
directory and clustering off (`--cluster.listen-address=`). Every process gets SIGTERM at the
end (SIGKILL after a grace period) and, should the test process die, SIGKILL from the kernel
(PR_SET_PDEATHSIG). Logs are files under the stack's directory; `logs()` returns their tails.

`missing_binaries()` names what is not installed; tests skip with that reason.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from tests.helpers.spawn import REPO

RULES_FILE = REPO / "rules" / "prometheus" / "dsmon-alerts.yml"
JOB = "dsmon"

_PR_SET_PDEATHSIG = 1


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def alertmanager_binary() -> str | None:
    for candidate in ("prometheus-alertmanager", "alertmanager"):
        found = shutil.which(candidate)
        if found:
            return found
    return "/usr/bin/prometheus-alertmanager" \
        if os.access("/usr/bin/prometheus-alertmanager", os.X_OK) else None


def missing_binaries(alertmanager: bool = False) -> str | None:
    """Why the stack cannot run here (None when it can)."""
    missing = []
    if prometheus_binary() is None:
        missing.append("prometheus (apt-get install prometheus)")
    if alertmanager and alertmanager_binary() is None:
        missing.append("prometheus-alertmanager (apt-get install prometheus-alertmanager)")
    return "not installed: " + ", ".join(missing) if missing else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the test process dies (no orphans left behind)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort
        pass


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def get_json(url: str, timeout: float = 5.0):
    return json.loads(_get(url, timeout))


class PrometheusStack:
    """N agent slots, one Prometheus, optionally one Alertmanager. A context manager."""

    def __init__(self, directory: Path, agents: int, alertmanager: bool = True,
                 rules_file: Path | None = RULES_FILE, scrape_interval: str = "1s",
                 evaluation_interval: str = "1s", extra_config: str = "",
                 extra_flags: tuple[str, ...] = ()):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.agent_ports = [free_port() for _ in range(agents)]
        self.prometheus_port = free_port()
        self.alertmanager_port = free_port() if alertmanager else None
        self.rules_file = rules_file
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.extra_config = extra_config      # top-level YAML appended (remote_write, ...)
        self.extra_flags = extra_flags        # Prometheus flags (a remote-write receiver, ...)
        self.agents: dict[int, subprocess.Popen] = {}
        self.prometheus: subprocess.Popen | None = None
        self.alertmanager: subprocess.Popen | None = None
        self._logs: dict[str, Path] = {}
        self._handles: list = []

    # -- addresses --------------------------------------------------------------------------

    def agent_instance(self, index: int) -> str:
        """The agent's `instance` label in Prometheus (host:port)."""
        return f"127.0.0.1:{self.agent_ports[index]}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        if self.alertmanager_port is None:
            raise RuntimeError("this stack has no Alertmanager")
        return f"http://127.0.0.1:{self.alertmanager_port}"

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> "PrometheusStack":
        reason = missing_binaries(self.alertmanager_port is not None)
        if reason:
            import pytest
            pytest.skip(reason)
        try:
            if self.alertmanager_port is not None:
                self._start_alertmanager()
            self._start_prometheus()
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _popen(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        log_path = self.directory / f"{name}.log"
        log = open(log_path, "w")
        self._handles.append(log)
        self._logs[name] = log_path
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)

    def _start_alertmanager(self) -> None:
        config = self.directory / "alertmanager.yml"
        config.write_text(
            "route:\n"
            "  receiver: 'null'\n"
            "  group_by: ['alertname', 'instance', 'target']\n"
            "  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n"
            "receivers:\n  - name: 'null'\n")
        storage = self.directory / "alertmanager-data"
        storage.mkdir(exist_ok=True)
        self.alertmanager = self._popen("alertmanager", [
            alertmanager_binary(), f"--config.file={config}", f"--storage.path={storage}",
            f"--web.listen-address=127.0.0.1:{self.alertmanager_port}",
            "--cluster.listen-address="])

    def prometheus_config(self) -> str:
        targets = ", ".join(f"'127.0.0.1:{port}'" for port in self.agent_ports)
        lines = ["global:", f"  scrape_interval: {self.scrape_interval}",
                 f"  evaluation_interval: {self.evaluation_interval}"]
        if self.rules_file is not None:
            lines += ["rule_files:", f"  - '{self.rules_file}'"]
        if self.alertmanager_port is not None:
            lines += ["alerting:", "  alertmanagers:",
                      f"    - static_configs: [{{targets: ['127.0.0.1:{self.alertmanager_port}']}}]"]
        lines += ["scrape_configs:", f"  - job_name: {JOB}",
                  f"    static_configs: [{{targets: [{targets}]}}]"]
        return "\n".join(lines) + "\n" + self.extra_config

    def _start_prometheus(self) -> None:
        config = self.directory / "prometheus.yml"
        config.write_text(self.prometheus_config())
        self.prometheus = self._popen("prometheus", [
            prometheus_binary(), f"--config.file={config}",
            f"--storage.tsdb.path={self.directory / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.prometheus_port}", *self.extra_flags])

    def wait_ready(self, timeout: float = 60.0) -> None:
        urls = [(self.prometheus, self.prometheus_url + "/-/ready", "prometheus")]
        if self.alertmanager is not None:
            urls.append((self.alertmanager, self.alertmanager_url + "/-/ready", "alertmanager"))
        for process, url, name in urls:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n"
                                       f"{self.log_tail(name)}")
                try:
                    _get(url, timeout=2)
                    break
                except (OSError, urllib.error.URLError):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name} not ready after {timeout} s:\n"
                                           f"{self.log_tail(name)}")
                    time.sleep(0.1)

    def start_agent(self, index: int, targets: dict[str, int], *extra: str,
                    env: dict | None = None, timeout: float = 30.0) -> subprocess.Popen:
        """`python -m dsmon agent` on slot `index`'s port watching NAME=pid:PID targets;
        returns once its /metrics lists every target."""
        port = self.agent_ports[index]
        argv = [sys.executable, "-m", "dsmon", "agent", "--listen", f"127.0.0.1:{port}"]
        for name, pid in targets.items():
            argv += ["--target", f"{name}=pid:{pid}"]
        argv += list(extra)
        agent_env = dict(os.environ, **(env or {}))
        agent_env["PYTHONPATH"] = str(REPO) + os.pathsep + agent_env.get("PYTHONPATH", "")
        agent_env.pop("NOTIFY_SOCKET", None)
        process = self._popen(f"agent-{index}", argv, env=agent_env)
        self.agents[index] = process
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"agent {index} exited with {process.returncode}:\n"
                                   f"{self.log_tail(f'agent-{index}')}")
            try:
                body = _get(f"http://127.0.0.1:{port}/metrics", timeout=2).decode()
                if all(f'dsmon_target_up{{target="{name}"}} 1' in body for name in targets):
                    return process
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent {index} did not serve its targets within {timeout} s:"
                                   f"\n{self.log_tail(f'agent-{index}')}")
            time.sleep(0.1)

    def agent_metrics(self, index: int) -> str:
        return _get(f"http://127.0.0.1:{self.agent_ports[index]}/metrics").decode()

    def close(self, grace: float = 10.0) -> None:
        processes = [p for p in (*self.agents.values(), self.prometheus, self.alertmanager)
                     if p is not None]
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for handle in self._handles:
            handle.close()
        self._handles.clear()

    # -- logs -------------------------------------------------------------------------------

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self._logs.get(name)
        if path is None or not path.exists():
            return "(no log)"
        return path.read_text(errors="replace")[-chars:]

    def logs(self, chars: int = 2000) -> str:
        return "\n".join(f"--- {name} ---\n{self.log_tail(name, chars)}" for name in self._logs)

    # -- Prometheus API ---------------------------------------------------------------------

    def api(self, path: str, **params) -> object:
        url = self.prometheus_url + path
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        document = get_json(url, timeout=10)
        if document.get("status") != "success":
            raise AssertionError(f"{path} {params}: {document}")
        return document["data"]

    def query(self, promql: str, at: float | None = None) -> list:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.api("/api/v1/query", **params)["result"]

    def query_range(self, promql: str, seconds: float = 20.0, step: float = 1.0,
                    end: float | None = None) -> list:
        end = time.time() if end is None else end
        return self.api("/api/v1/query_range", query=promql, start=f"{end - seconds:.3f}",
                        end=f"{end:.3f}", step=str(step))["result"]

    def label_values(self, label: str, match: str | None = None,
                     seconds: float = 300.0) -> list[str]:
        """What Grafana's label_values(match, label) asks Prometheus."""
        params = {"start": f"{time.time() - seconds:.3f}", "end": f"{time.time():.3f}"}
        if match:
            params["match[]"] = match
        return self.api(f"/api/v1/label/{label}/values", **params)

    def prometheus_alerts(self) -> list[dict]:
        return self.api("/api/v1/alerts")["alerts"]

    # -- Alertmanager API -------------------------------------------------------------------

    def alertmanager_alerts(self) -> list[dict]:
        return get_json(self.alertmanager_url + "/api/v2/alerts", timeout=5)

    # -- waiting ----------------------------------------------------------------------------

    @staticmethod
    def wait_until(predicate: Callable[[], object], timeout: float, what: str,
                   interval: float = 0.25):
        """Poll predicate until it returns something truthy; return that, or raise."""
        deadline = time.monotonic() + timeout
        last_error = None
        while True:
            try:
                value = predicate()
                if value:
                    return value
            except (OSError, urllib.error.URLError, AssertionError, ValueError) as exc:
                last_error = exc
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}"
                                     + (f" (last error: {last_error})" if last_error else ""))
            time.sleep(interval)
