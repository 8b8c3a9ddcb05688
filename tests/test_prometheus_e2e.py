"""A real Prometheus (Debian's package) scrapes a real agent watching a real process."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from tests.helpers.spawn import workload
from tests.test_agent import free_port, running_agent

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None,
                                reason="Debian package prometheus is not installed")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def query(base: str, promql: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        document = json.loads(response.read())
    assert document["status"] == "success", document
    return document["data"]["result"]


def test_prometheus_scrapes_the_agent(tmp_path):
    with workload("threads", "--busy", "3", "--idle", "5") as target:
        with running_agent(tmp_path, "--target", f"srv=pid:{target.pid}") as (agent, url, _):
            port = free_port()
            config = tmp_path / "prometheus.yml"
            config.write_text(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                "scrape_configs:\n  - job_name: dsmon\n    static_configs:\n"
                f"      - targets: ['{url.removeprefix('http://')}']\n")
            server = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
            base = f"http://127.0.0.1:{port}"
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        if query(base, 'up{job="dsmon"} == 1') and \
                                len(query(base, "dsmon_process_cpu_seconds_total[30s]")) and \
                                len(query(base, "dsmon_process_cpu_seconds_total[30s]")[0]["values"]) >= 12:
                            break
                    except OSError:
                        pass
                    time.sleep(1)
                busy = query(base, 'dsmon_process_busy_threads{target="srv"}')
                assert busy and abs(float(busy[0]["value"][1]) - 3) <= 1
                pool = query(base, 'dsmon_process_pool_threads{target="srv",pool="idle_worker_#"}')
                assert float(pool[0]["value"][1]) == 5
                # Prometheus's rate of the agent's counter matches the CPU time the kernel
                # accounted to the target over the same 10 s (measured here from its stat).
                before, started = cpu_seconds(target.pid), time.monotonic()
                time.sleep(10)
                truth = (cpu_seconds(target.pid) - before) / (time.monotonic() - started)
                cpu = query(base, 'sum(rate(dsmon_process_cpu_seconds_total{target="srv"}[10s]))')
                assert float(cpu[0]["value"][1]) == pytest.approx(truth, rel=0.3, abs=0.05)
                assert truth > 0.1
                wait = query(base, 'rate(dsmon_process_run_queue_wait_seconds_total{target="srv"}[10s])')
                assert float(wait[0]["value"][1]) > 0.1              # 3 threads on 2 CPUs queue
                assert query(base, "dsmon_build_info")
                assert query(base, 'dsmon_collector_success{collector="threads"} == 1')
            finally:
                server.terminate()
                server.wait(timeout=10)
