"""Engine adapters against local HTTP servers serving each engine's exposition format, the
endpoint going away mid-run, and the GPU memory-risk rules' three cases."""

from __future__ import annotations

import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from dsmon.engine.monitor import RuleMonitor
from dsmon.engine.rules import load_rules
from dsmon.engine_metrics import (EndpointUnreachable, Endpoint, EngineScraper, find_endpoint,
                                  parse_signals)
from dsmon.model import Batch, Status, run_collector
from dsmon.sampler import TargetSampler
from fixturetree import FakeThread

GIB = 2 ** 30
MODEL = 'model_name="meta-llama/Meta-Llama-3-8B-Instruct"'


# ---------------------------------------------------------------------------- expositions
# Names, types and label sets as each engine documents and serves them.

def vllm_v1(kv=0.3, preemptions=0.0, running=12, waiting=0, queue_sum=0.5, queue_count=10):
    return f"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",{MODEL}}} {running}
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",{MODEL}}} {waiting}
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",{MODEL}}} {kv}
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{{engine="0",{MODEL}}} {preemptions}
# HELP vllm:request_queue_time_seconds Histogram of time spent in WAITING phase for request.
# TYPE vllm:request_queue_time_seconds histogram
vllm:request_queue_time_seconds_sum{{engine="0",{MODEL}}} {queue_sum}
vllm:request_queue_time_seconds_bucket{{engine="0",le="0.3",{MODEL}}} {queue_count}
vllm:request_queue_time_seconds_bucket{{engine="0",le="+Inf",{MODEL}}} {queue_count}
vllm:request_queue_time_seconds_count{{engine="0",{MODEL}}} {queue_count}
"""


VLLM_V0 = f"""# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{{{MODEL}}} 0.42
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{{MODEL}}} 3.0
"""

SGLANG = f"""# HELP sglang:token_usage The token usage
# TYPE sglang:token_usage gauge
sglang:token_usage{{{MODEL},tp_rank="0"}} 0.28
sglang:token_usage{{{MODEL},tp_rank="1"}} 0.31
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{{{MODEL},tp_rank="0"}} 7.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{{{MODEL},tp_rank="0"}} 4.0
# HELP sglang:num_retracted_requests_total The number of retracted requests.
# TYPE sglang:num_retracted_requests_total counter
sglang:num_retracted_requests_total{{{MODEL}}} 5.0
# HELP sglang:queue_time_seconds Histogram of queueing time in seconds.
# TYPE sglang:queue_time_seconds histogram
sglang:queue_time_seconds_sum{{{MODEL}}} 2.0
sglang:queue_time_seconds_bucket{{le="+Inf",{MODEL}}} 8.0
sglang:queue_time_seconds_count{{{MODEL}}} 8.0
"""

# TGI's router exports through the Rust metrics crate: counters without "_total".
TGI = """# TYPE tgi_queue_size gauge
tgi_queue_size 6
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 16
# TYPE tgi_request_count counter
tgi_request_count 120
# TYPE tgi_request_queue_duration histogram
tgi_request_queue_duration_bucket{le="0.005"} 100
tgi_request_queue_duration_bucket{le="+Inf"} 120
tgi_request_queue_duration_sum 3.0
tgi_request_queue_duration_count 120
"""

# Triton: per model and version; durations are cumulative microsecond counters.
TRITON = """# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="llama",version="1"} 90
nv_inference_request_success{model="embed",version="1"} 10
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="llama",reason="BACKEND",version="1"} 0
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds (includes cached requests)
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="llama",version="1"} 4000000
nv_inference_queue_duration_us{model="embed",version="1"} 1000000
# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="llama",version="1"} 3
nv_inference_pending_request_count{model="embed",version="1"} 1
"""


def test_vllm_v1_signals():
    signals = parse_signals("vllm", vllm_v1(kv=0.3, preemptions=4, running=12, waiting=2))
    assert signals.kv_cache_usage_ratio == 0.3
    assert signals.preemptions_total == 4
    assert (signals.running_requests, signals.waiting_requests) == (12, 2)
    assert (signals.queue_time_seconds_sum, signals.queue_time_count) == (0.5, 10)


def test_vllm_v0_name_and_missing_signals_stay_absent():
    signals = parse_signals("vllm", VLLM_V0)
    assert signals.kv_cache_usage_ratio == 0.42
    assert signals.preemptions_total is None and signals.waiting_requests is None


def test_sglang_signals():
    signals = parse_signals("sglang", SGLANG)
    assert signals.kv_cache_usage_ratio == 0.31          # the fullest rank
    assert (signals.running_requests, signals.waiting_requests) == (7, 4)
    assert signals.preemptions_total == 5
    assert (signals.queue_time_seconds_sum, signals.queue_time_count) == (2.0, 8.0)


def test_tgi_signals():
    signals = parse_signals("tgi", TGI)
    assert (signals.running_requests, signals.waiting_requests) == (16, 6)
    assert signals.kv_cache_usage_ratio is None and signals.preemptions_total is None
    assert (signals.queue_time_seconds_sum, signals.queue_time_count) == (3.0, 120)


def test_triton_signals():
    signals = parse_signals("triton", TRITON)
    assert signals.waiting_requests == 4
    assert signals.running_requests is None
    assert signals.queue_time_seconds_sum == 5.0 and signals.queue_time_count == 100


@pytest.mark.parametrize("engine,cmdline,urls", [
    ("vllm", ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "m"],
     ("http://127.0.0.1:8000/metrics",)),
    ("vllm", ["vllm", "serve", "m", "--port=8123", "--host", "10.0.0.5"],
     ("http://10.0.0.5:8123/metrics",)),
    ("vllm", ["vllm", "serve", "m", "--host", "0.0.0.0", "--port", "9001"],
     ("http://127.0.0.1:9001/metrics",)),
    ("sglang", ["python3", "-m", "sglang.launch_server", "--enable-metrics"],
     ("http://127.0.0.1:30000/metrics",)),
    ("tgi", ["text-generation-launcher", "--port", "8080"],
     ("http://127.0.0.1:9000/metrics", "http://127.0.0.1:8080/metrics")),
    ("tgi", ["text-generation-launcher", "--prometheus-port", "9100"],
     ("http://127.0.0.1:9100/metrics", "http://127.0.0.1:3000/metrics")),
    ("triton", ["tritonserver", "--model-repository=/models", "--metrics-port", "9002"],
     ("http://127.0.0.1:9002/metrics",)),
])
def test_endpoint_from_the_command_line(engine, cmdline, urls):
    endpoint, why = find_endpoint(engine, cmdline)
    assert endpoint is not None and endpoint.urls == urls, why


@pytest.mark.parametrize("engine,cmdline,reason", [
    ("sglang", ["python3", "-m", "sglang.launch_server", "--port", "30000"], "--enable-metrics"),
    ("triton", ["tritonserver", "--allow-metrics=false"], "--allow-metrics=false"),
    ("pytorch", ["python3", "train.py"], "exports no metrics"),
    ("vllm", ["vllm", "serve", "m", "--port", "http"], "not a port"),
])
def test_no_endpoint_says_why(engine, cmdline, reason):
    endpoint, why = find_endpoint(engine, cmdline)
    assert endpoint is None and reason in why


# ---------------------------------------------------------------------------- a metrics server

class MetricsServer:
    """A local engine stand-in: serves `body` (text, or a function giving it) at /metrics on
    127.0.0.1 until stopped."""

    def __init__(self, body: str, port: int = 0):
        self.body = body
        self.scrapes = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.scrapes += 1
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                body = owner.body() if callable(owner.body) else owner.body
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers():
    started = []

    def start(body, port=0):
        server = MetricsServer(body, port)
        started.append(server)
        return server
    yield start
    for server in started:
        try:
            server.stop()
        except OSError:
            pass


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_scraper_rates_and_the_endpoint_going_away_mid_run(servers):
    server = servers(vllm_v1(preemptions=10, queue_sum=1.0, queue_count=10))
    clock = Clock()
    scraper = EngineScraper(Endpoint("vllm", (server.url,), "--port"), clock=clock)
    first = scraper.collect()
    assert first.signals.preemptions_total == 10
    assert first.preemptions_per_second is None            # one scrape: no rate yet
    server.body = vllm_v1(preemptions=16, queue_sum=4.0, queue_count=16)
    clock.now += 2.0
    second = scraper.collect()
    assert second.preemptions_per_second == 3.0             # (16 - 10) / 2 s
    assert second.queue_time_seconds == 0.5                 # (4 - 1) s / (16 - 10) requests
    server.body = vllm_v1(preemptions=16, queue_sum=4.0, queue_count=16)
    clock.now += 2.0
    quiet = scraper.collect()
    assert quiet.preemptions_per_second == 0.0
    assert quiet.queue_time_seconds is None                 # nobody left the queue: no mean
    port = server.port
    server.stop()                                           # the engine goes away
    started = time.monotonic()
    batch = run_collector("engine", scraper.collect)
    assert time.monotonic() - started < 5
    assert batch.status is Status.FAILED and batch.data is None
    assert "unreachable" in batch.error and str(port) in batch.error
    with pytest.raises(EndpointUnreachable):
        scraper.collect()
    # It comes back on the same port: readings resume, and no rate spans the outage.
    servers(vllm_v1(preemptions=2), port=port)
    clock.now += 10.0
    back = scraper.collect()
    assert back.signals.preemptions_total == 2 and back.preemptions_per_second is None
    clock.now += 1.0
    assert scraper.collect().preemptions_per_second == 0.0


def test_a_counter_reset_gives_no_rate(servers):
    server = servers(vllm_v1(preemptions=50))
    clock = Clock()
    scraper = EngineScraper(Endpoint("vllm", (server.url,), ""), clock=clock)
    scraper.collect()
    server.body = vllm_v1(preemptions=3)                  # the engine restarted
    clock.now += 1
    assert scraper.collect().preemptions_per_second is None


def test_tgi_falls_back_to_the_api_port(servers):
    server = servers(TGI)
    closed = MetricsServer("")
    closed_port = closed.port
    closed.stop()
    endpoint, _ = find_endpoint("tgi", ["text-generation-launcher", "--prometheus-port",
                                        str(closed_port), "--port", str(server.port)])
    reading = EngineScraper(endpoint).collect()
    assert reading.url == server.url and reading.signals.waiting_requests == 6


@pytest.mark.parametrize("engine,body", [("sglang", SGLANG), ("triton", TRITON)])
def test_other_engines_over_http(servers, engine, body):
    server = servers(body)
    reading = EngineScraper(Endpoint(engine, (server.url,), "")).collect()
    assert reading.signals.waiting_requests in (4, 4.0)


def test_an_answer_that_is_not_metrics_is_unreachable(servers):
    server = servers("<html>hello</html>\n")
    with pytest.raises(EndpointUnreachable):
        EngineScraper(Endpoint("vllm", (server.url,), "")).collect()


# ---------------------------------------------------------------------------- rules: 3 cases

def _gpu_snapshot(pid, used, total=80 * GIB):
    usage = SimpleNamespace(status="ok", memory_bytes=used, gpus=[0])
    card = SimpleNamespace(index=0, memory_free_bytes=total - used - GIB,
                           memory_total_bytes=total, utilization_gpu_ratio=0.9)
    return SimpleNamespace(targets={pid: usage}, gpus=[card])


def _run(fake_host, cmdline, memory, engine_bodies=None, server=None, stop_at=None):
    """Drive one target through the real sampler, feature extractor and rules: a tick a
    second, GPU memory from `memory`, engine readings scraped from `server` when given."""
    fake_host.add_smt_host()
    fake_host.set_hostname()
    fake_host.set_meminfo(MemTotal=64 * 2 ** 20, MemFree=32 * 2 ** 20, MemAvailable=40 * 2 ** 20)
    fake_host.add_process(700, threads=[FakeThread(701, "worker", "S")], cmdline=cmdline)
    sampler = TargetSampler(fake_host.paths, 700)
    monitor = RuleMonitor(sampler.static(), load_rules())
    clock = Clock()
    scraper = None
    if server is not None:
        endpoint, why = find_endpoint(monitor.engine_name, cmdline)
        assert endpoint is not None, why
        scraper = EngineScraper(endpoint, clock=clock)
    try:
        for second, used in enumerate(memory):
            clock.now = float(second)
            if stop_at is not None and second == stop_at:
                server.stop()
            tick = sampler.tick()
            tick.mono_ts = float(second)
            tick.batches["gpu"] = Batch("gpu", 0.0, 0.0, Status.OK, _gpu_snapshot(700, used))
            if scraper is not None:
                if engine_bodies is not None and second < len(engine_bodies):
                    server.body = engine_bodies[second]
                tick.batches["engine"] = run_collector("engine", scraper.collect)
            monitor.observe(tick)
    finally:
        sampler.close()
    return monitor


def _vllm_cmdline(port):
    return ["/usr/bin/python3", "-m", "vllm.entrypoints.openai.api_server", "--port", str(port)]


def test_case_preallocated_vllm_with_kv_cache_30_percent_is_quiet(fake_host, servers):
    server = servers(vllm_v1(kv=0.3, preemptions=0))
    ramp = [0, 20 * GIB, 50 * GIB, 72 * GIB] + [72 * GIB] * 30     # 90% of an 80 GiB GPU
    monitor = _run(fake_host, _vllm_cmdline(server.port), ramp, server=server)
    assert monitor.engine_name == "vllm"
    fired = {f.rule_id for f in monitor.findings()}
    assert not {r for r in fired if r.startswith(("gpu-oom", "gpu-kv"))}, fired
    last = monitor.history[max(monitor.history)]
    assert last["engine_kv_cache_usage_ratio"] == 0.3
    assert last["engine_preemptions_per_second"] == 0.0
    assert last["engine_running_requests"] == 12


def test_case_full_kv_cache_with_rising_preemptions_fires(fake_host, servers):
    server = servers(vllm_v1(kv=0.97))
    bodies = [vllm_v1(kv=0.97, preemptions=3 * second, waiting=9) for second in range(30)]
    monitor = _run(fake_host, _vllm_cmdline(server.port), [72 * GIB] * 30, bodies, server)
    active = {f.rule_id: f for f in monitor.engine.current()}
    finding = active.get("gpu-kv-cache-exhausted")
    assert finding is not None and finding.state == "firing"
    assert "97%" in finding.summary and "9 waiting" in finding.summary
    assert "--max-num-seqs" in finding.hint                 # vLLM's own lever
    assert not any(rule.startswith("gpu-oom") for rule in active)   # flat memory: no OOM risk
    evidence = {e.feature: e.value for e in finding.evidence}
    assert evidence["engine_preemptions_per_second"] == 3.0


def test_case_raw_growth_without_an_engine_fires_the_growth_rule(fake_host):
    grow = [40 * GIB + second * 512 * 2 ** 20 for second in range(40)]     # +512 MiB/s
    monitor = _run(fake_host, ["/usr/bin/python3", "train.py"], grow)
    active = {f.rule_id: f for f in monitor.engine.current()}
    assert active["gpu-oom-risk-critical"].state == "firing"
    assert "gpu-kv-cache-exhausted" not in active
    for values in monitor.history.values():                  # absent, never 0
        assert values["engine_kv_cache_usage_ratio"] is None
        assert values["engine_preemptions_per_second"] is None


def test_the_endpoint_going_away_leaves_host_rules_working(fake_host, servers):
    server = servers(vllm_v1(kv=0.5))
    grow = [40 * GIB] * 10 + [40 * GIB + s * 512 * 2 ** 20 for s in range(30)]
    monitor = _run(fake_host, _vllm_cmdline(server.port), grow, server=server, stop_at=8)
    seconds = sorted(monitor.history)
    assert monitor.history[seconds[5]]["engine_kv_cache_usage_ratio"] == 0.5
    for second in seconds[8:]:
        values = monitor.history[second]
        assert values["engine_kv_cache_usage_ratio"] is None     # gone: absent, not 0
        assert values["rss_bytes"] is not None                    # host features go on
    assert {f.rule_id: f for f in monitor.engine.current()}["gpu-oom-risk-critical"].state \
        == "firing"


# ---------------------------------------------------------------------------- the agent

def _metric(body: str, name: str, **labels):
    for line in body.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return None


def _poll(url, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
        if predicate(body):
            return body
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout}s:\n{body[-3000:]}")


@pytest.mark.slow
def test_agent_scrapes_the_engine_and_degrades_quietly(tmp_path, servers):
    import shutil
    import socket
    import subprocess

    from dsmon.agent.config import AgentConfig, TargetSpec
    from dsmon.agent.daemon import Agent

    server = servers(vllm_v1(kv=0.3, preemptions=1, running=5, waiting=2))
    script = tmp_path / "vllm" / "entrypoints" / "api_server.py"    # "/vllm" marks the engine
    script.parent.mkdir(parents=True)
    script.write_text("import time\ntime.sleep(300)\n")
    fake_vllm = subprocess.Popen([sys.executable, str(script), "--port", str(server.port)])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = AgentConfig(listen=f"127.0.0.1:{port}", interval_s=0.5, rules_interval_s=0.5,
                         engine_interval_s=0.3,
                         targets=(TargetSpec("pid", str(fake_vllm.pid), "llm"),))
    agent = Agent(config, load_rules())
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        agent.start()
        body = _poll(url, lambda b: _metric(b, "dsmon_engine_up", target="llm") == 1 and
                     _metric(b, "dsmon_engine_kv_cache_usage_ratio", target="llm") is not None)
        assert _metric(body, "dsmon_engine_up", target="llm", engine="vllm") == 1
        assert _metric(body, "dsmon_engine_kv_cache_usage_ratio", target="llm") == 0.3
        assert _metric(body, "dsmon_engine_preemptions_total", target="llm") == 1
        assert _metric(body, "dsmon_engine_requests", target="llm", state="waiting") == 2
        promtool = shutil.which("promtool")
        if promtool:
            check = subprocess.run([promtool, "check", "metrics"], input=body,
                                   capture_output=True, text=True)
            assert check.returncode == 0, check.stdout + check.stderr
        server.stop()                                       # the engine endpoint goes away
        body = _poll(url, lambda b: _metric(b, "dsmon_engine_up", target="llm") == 0)
        assert _metric(body, "dsmon_engine_kv_cache_usage_ratio", target="llm") is None
        assert _metric(body, "dsmon_engine_requests", target="llm", state="running") is None
        assert _metric(body, "dsmon_target_up", target="llm") == 1
        assert _metric(body, "dsmon_process_resident_memory_bytes", target="llm") is not None
        assert _metric(body, "dsmon_job_success", job="engine") == 1    # quiet, not failing
        assert _metric(body, "dsmon_job_success", job="sample") == 1
    finally:
        agent.stop()
        fake_vllm.kill()
        fake_vllm.wait()


def _fake_vllm(tmp_path, port):
    import subprocess
    script = tmp_path / "vllm" / "entrypoints" / "api_server.py"    # "/vllm" marks the engine
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text("import time\ntime.sleep(300)\n")
    process = subprocess.Popen([sys.executable, str(script), "--port", str(port)])
    deadline = time.monotonic() + 30             # until exec has replaced the command line
    while b"api_server.py" not in open(f"/proc/{process.pid}/cmdline", "rb").read():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return process


def _diagnose(pid, seconds):
    from dsmon.diagnose import DiagnoseOptions, diagnose
    from dsmon.gpu.fake import FakeBackend
    from dsmon.paths import HostPaths
    from pathlib import Path
    no_driver = FakeBackend(Path(__file__).parent / "fixtures" / "gpu" / "h200-2gpu.json",
                            init_error="LibraryNotFound")
    return diagnose(HostPaths(), pid, DiagnoseOptions(seconds, 0.5), nvml=no_driver)


@pytest.mark.slow
def test_diagnose_reads_the_engine_and_fires_on_a_full_kv_cache(tmp_path, servers):
    started = time.monotonic()
    server = servers(lambda: vllm_v1(kv=0.96, waiting=7,
                                     preemptions=int(4 * (time.monotonic() - started))))
    process = _fake_vllm(tmp_path, server.port)
    try:
        report = _diagnose(process.pid, 10.0)
    finally:
        process.kill()
        process.wait()
    assert report["engine"] == "vllm"
    assert report["collectors"]["engine"]["status"] == "ok"
    assert report["collectors"]["engine"]["runs"] >= 3          # every 2 s, not every sample
    findings = {f["rule_id"]: f for f in report["findings"]}
    assert findings["gpu-kv-cache-exhausted"]["state"] == "firing", report["findings"]
    assert report["worst_firing_severity"] == "warning"


def test_diagnose_without_a_reachable_endpoint_is_host_only(tmp_path):
    closed = MetricsServer("")
    port = closed.port
    closed.stop()
    process = _fake_vllm(tmp_path, port)
    try:
        report = _diagnose(process.pid, 1.0)
    finally:
        process.kill()
        process.wait()
    engine = report["collectors"]["engine"]
    assert engine["status"] == "failed" and "unreachable" in engine["error"]
    assert report["collectors"]["process"]["status"] == "ok"
    assert report["window"]["complete"] is True
    assert not any(f["rule_id"] == "gpu-kv-cache-exhausted" for f in report["findings"])
