"""Inference engines' own Prometheus metrics: where to find them, and the few signals dsmon uses.

An engine target (vLLM, SGLang, TGI, Triton) already knows what dsmon can only guess from the
outside: how full its KV cache is, whether it preempts requests, how many wait. This module
finds the metrics endpoint from the engine's command line, scrapes it with a short timeout, and
reduces the exposition to `EngineSignals`. The parsing (`parse_signals`) is pure; the HTTP part
(`EngineScraper`) is the only I/O. An endpoint that is missing or unreachable is a status with
a reason, never zeros: the rules then see no engine features and stay host-only.

Metric names and types, as the engines document them (README "Engine metrics" has the table):

- vLLM: `vllm:kv_cache_usage_perc` (V1; V0 `vllm:gpu_cache_usage_perc`), gauge 0-1;
  `vllm:num_preemptions_total`, counter; `vllm:num_requests_running` / `_waiting`, gauges;
  `vllm:request_queue_time_seconds`, histogram.
- SGLang: `sglang:token_usage`, gauge 0-1; `sglang:num_retracted_requests_total`, counter;
  `sglang:num_running_reqs` / `sglang:num_queue_reqs`, gauges; `sglang:queue_time_seconds`,
  histogram.
- TGI: `tgi_batch_current_size` / `tgi_queue_size`, gauges; `tgi_request_queue_duration`,
  histogram in seconds. No KV cache or preemption metric.
- Triton: `nv_inference_pending_request_count`, gauge; `nv_inference_queue_duration_us` over
  `nv_inference_request_success` + `_failure`, counters. No KV cache or preemption metric.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from dsmon.model import Batch, run_collector
from dsmon.sources import SourceError

ENGINES_WITH_METRICS = ("vllm", "sglang", "tgi", "triton")
SCRAPE_TIMEOUT_S = 1.0          # the scrape runs on the agent's slow executor; never longer
MAX_BODY_BYTES = 8 * 1024 * 1024
# Addresses that mean "every interface": scrape through loopback instead.
_ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]", "*")


@dataclass(frozen=True)
class Endpoint:
    engine: str
    urls: tuple[str, ...]        # candidates, tried in order until one answers
    source: str                  # how it was found (for the report)


def _flag(cmdline: list[str], *names: str) -> str | None:
    """The value of --name VALUE or --name=VALUE (the last one wins, as argparse does)."""
    found = None
    for index, arg in enumerate(cmdline):
        for name in names:
            if arg == name and index + 1 < len(cmdline):
                found = cmdline[index + 1]
            elif arg.startswith(name + "="):
                found = arg.split("=", 1)[1]
    return found


def _has_flag(cmdline: list[str], name: str) -> bool:
    return any(arg == name or arg.startswith(name + "=") for arg in cmdline)


def _host(value: str | None) -> str:
    if value is None or value.strip() in _ANY_ADDRESS:
        return "127.0.0.1"
    value = value.strip()
    return f"[{value}]" if ":" in value and not value.startswith("[") else value


def _port(value: str | None, default: int, flag: str) -> tuple[int | None, str]:
    if value is None:
        return default, f"default port {default}"
    try:
        port = int(value)
    except ValueError:
        return None, f"{flag} {value!r} is not a port"
    return port, f"{flag} {port}"


def find_endpoint(engine: str, cmdline: list[str],
                  environ: dict[str, str] | None = None) -> tuple[Endpoint | None, str]:
    """The metrics endpoint of an engine process from its command line (and environment), or
    None with the reason (not an engine with metrics, metrics switched off)."""
    environ = environ or {}
    if engine == "vllm":
        # vLLM's OpenAI server serves /metrics on its API port.
        port, how = _port(_flag(cmdline, "--port"), 8000, "--port")
        host = _host(_flag(cmdline, "--host"))
    elif engine == "sglang":
        if not _has_flag(cmdline, "--enable-metrics"):
            return None, "SGLang runs without --enable-metrics: it exports no metrics"
        port, how = _port(_flag(cmdline, "--port"), 30000, "--port")
        host = _host(_flag(cmdline, "--host"))
    elif engine == "tgi":
        # TGI 3.x serves Prometheus on --prometheus-port (default 9000); older releases on the
        # API port (--port, default 3000). Both are tried, in that order.
        prom, how = _port(_flag(cmdline, "--prometheus-port")
                          or environ.get("PROMETHEUS_PORT"), 9000, "--prometheus-port")
        api, api_how = _port(_flag(cmdline, "--port", "-p") or environ.get("PORT"), 3000,
                             "--port")
        host = _host(_flag(cmdline, "--hostname"))
        urls = tuple(f"http://{host}:{p}/metrics" for p in dict.fromkeys((prom, api)) if p)
        if not urls:
            return None, how
        return Endpoint("tgi", urls, f"{how}, then {api_how}"), ""
    elif engine == "triton":
        allow = (_flag(cmdline, "--allow-metrics") or "true").lower()
        if allow in ("false", "0", "no", "off"):
            return None, "Triton runs with --allow-metrics=false"
        port, how = _port(_flag(cmdline, "--metrics-port"), 8002, "--metrics-port")
        host = _host(_flag(cmdline, "--metrics-address", "--http-address"))
    else:
        return None, f"engine {engine or 'unknown'!r} exports no metrics dsmon reads"
    if port is None:
        return None, how
    return Endpoint(engine, (f"http://{host}:{port}/metrics",), how), ""


# --------------------------------------------------------------------------- parsing

@dataclass
class EngineSignals:
    """The few engine signals the rules use; None when the engine does not export one."""

    engine: str
    kv_cache_usage_ratio: float | None = None
    preemptions_total: float | None = None
    running_requests: float | None = None
    waiting_requests: float | None = None
    queue_time_seconds_sum: float | None = None      # cumulative, with its count
    queue_time_count: float | None = None
    families: int = 0                                # metric families in the exposition


def _values(families: dict, name: str, suffix: str = "") -> list[float]:
    family = families.get(name)
    if family is None:
        return []
    wanted = name + suffix
    return [sample.value for sample in family.samples if sample.name == wanted]


def _sum(families: dict, name: str, suffix: str = "") -> float | None:
    values = _values(families, name, suffix)
    return sum(values) if values else None


def _counter(families: dict, name: str) -> float | None:
    """A counter's value summed over its label sets. The parser files a counter under its name
    without "_total" and reports its samples with it, whether or not the engine wrote it
    (vLLM and SGLang do; Triton and TGI do not)."""
    family = families.get(name.removesuffix("_total"))
    if family is None or family.type != "counter":
        return None
    values = [sample.value for sample in family.samples
              if sample.name in (family.name, family.name + "_total")]
    return sum(values) if values else None


def _max(families: dict, name: str) -> float | None:
    values = _values(families, name)
    return max(values) if values else None


def _first(*values):
    return next((value for value in values if value is not None), None)


def parse_signals(engine: str, text: str) -> EngineSignals:
    """Reduce one exposition to EngineSignals. Label sets (models, ranks) are summed for counts
    and the fullest is taken for KV usage. Raises ValueError on text that is not an exposition."""
    families = {family.name: family for family in text_string_to_metric_families(text)}
    signals = EngineSignals(engine, families=len(families))
    if engine == "vllm":
        signals.kv_cache_usage_ratio = _first(_max(families, "vllm:kv_cache_usage_perc"),
                                              _max(families, "vllm:gpu_cache_usage_perc"))
        signals.preemptions_total = _counter(families, "vllm:num_preemptions_total")
        signals.running_requests = _sum(families, "vllm:num_requests_running")
        signals.waiting_requests = _sum(families, "vllm:num_requests_waiting")
        signals.queue_time_seconds_sum = _sum(families, "vllm:request_queue_time_seconds", "_sum")
        signals.queue_time_count = _sum(families, "vllm:request_queue_time_seconds", "_count")
    elif engine == "sglang":
        signals.kv_cache_usage_ratio = _max(families, "sglang:token_usage")
        signals.preemptions_total = _counter(families, "sglang:num_retracted_requests_total")
        signals.running_requests = _sum(families, "sglang:num_running_reqs")
        signals.waiting_requests = _sum(families, "sglang:num_queue_reqs")
        signals.queue_time_seconds_sum = _sum(families, "sglang:queue_time_seconds", "_sum")
        signals.queue_time_count = _sum(families, "sglang:queue_time_seconds", "_count")
    elif engine == "tgi":
        signals.running_requests = _sum(families, "tgi_batch_current_size")
        signals.waiting_requests = _sum(families, "tgi_queue_size")
        signals.queue_time_seconds_sum = _sum(families, "tgi_request_queue_duration", "_sum")
        signals.queue_time_count = _sum(families, "tgi_request_queue_duration", "_count")
    elif engine == "triton":
        signals.waiting_requests = _sum(families, "nv_inference_pending_request_count")
        queue_us = _counter(families, "nv_inference_queue_duration_us")
        done = [v for v in (_counter(families, "nv_inference_request_success"),
                            _counter(families, "nv_inference_request_failure")) if v is not None]
        if queue_us is not None and done:
            signals.queue_time_seconds_sum = queue_us / 1e6
            signals.queue_time_count = sum(done)
    return signals


# --------------------------------------------------------------------------- scraping

class EndpointUnreachable(SourceError):
    """The engine's metrics endpoint did not answer (or not with an exposition)."""

    kind = "unreachable"

    def __init__(self, detail: str, hint: str = ""):
        super().__init__(detail, "", hint)

    def describe(self) -> str:
        return self.path


@dataclass
class EngineReading:
    """One scrape and the rates since the one before (what the features read)."""

    signals: EngineSignals
    url: str
    mono_ts: float
    preemptions_per_second: float | None = None
    queue_time_seconds: float | None = None     # mean of the requests that left the queue


@dataclass
class EngineScraper:
    """Scrapes one engine endpoint; keeps the previous reading for rates."""

    endpoint: Endpoint
    timeout_s: float = SCRAPE_TIMEOUT_S
    clock: object = time.monotonic
    _previous: EngineReading | None = field(default=None, repr=False)
    _url: str | None = field(default=None, repr=False)

    def collect(self) -> EngineReading:
        """One scrape (for run_collector). Raises EndpointUnreachable."""
        errors = []
        urls = (self._url,) + tuple(u for u in self.endpoint.urls if u != self._url) \
            if self._url else self.endpoint.urls
        for url in urls:
            try:
                text = self._fetch(url)
                signals = parse_signals(self.endpoint.engine, text)
            except (OSError, ValueError, urllib.error.URLError) as exc:
                errors.append(f"{url}: {_reason(exc)}")
                continue
            if signals.families == 0:
                errors.append(f"{url}: no metrics in the answer")
                continue
            self._url = url
            reading = EngineReading(signals, url, self.clock())
            self._rates(reading)
            self._previous = reading
            return reading
        # A gap in the readings: the next rate starts afresh rather than spanning the outage.
        self._previous = None
        raise EndpointUnreachable(
            f"{self.endpoint.engine} metrics endpoint unreachable: " + "; ".join(errors),
            "host-only rules keep running; check that the engine is up and exports metrics "
            f"({self.endpoint.source})")

    def _fetch(self, url: str) -> str:
        request = urllib.request.Request(url, headers={"Accept": "text/plain"})
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            body = response.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            raise ValueError(f"answer larger than {MAX_BODY_BYTES} bytes")
        return body.decode("utf-8", errors="replace")

    def _rates(self, reading: EngineReading) -> None:
        before = self._previous
        if before is None:
            return
        span = reading.mono_ts - before.mono_ts
        now, then = reading.signals, before.signals
        if span > 0 and now.preemptions_total is not None and then.preemptions_total is not None \
                and now.preemptions_total >= then.preemptions_total:   # a reset gives no rate
            reading.preemptions_per_second = (now.preemptions_total - then.preemptions_total) / span
        if None not in (now.queue_time_seconds_sum, now.queue_time_count,
                        then.queue_time_seconds_sum, then.queue_time_count):
            count = now.queue_time_count - then.queue_time_count
            total = now.queue_time_seconds_sum - then.queue_time_seconds_sum
            if count > 0 and total >= 0:      # no request left the queue: no mean, not 0
                reading.queue_time_seconds = total / count


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


class EngineFollower:
    """Scrapes for a foreground driver (`dsmon diagnose`): at most one scrape per interval, in
    the sampling loop, with a short timeout. The agent scrapes on its slow executor instead."""

    def __init__(self, engine: str, cmdline: list[str], environ: dict[str, str] | None = None,
                 interval_s: float = 2.0, timeout_s: float = 0.5, clock=time.monotonic):
        endpoint, self.why = find_endpoint(engine, cmdline, environ)
        self.scraper = EngineScraper(endpoint, timeout_s, clock) if endpoint else None
        self.interval_s = interval_s
        self.clock = clock
        self._due = 0.0

    def scrape_if_due(self) -> Batch | None:
        """A fresh reading (or the failure) when one is due; None between scrapes."""
        if self.scraper is None or self.clock() < self._due:
            return None
        self._due = self.clock() + self.interval_s
        return run_collector("engine", self.scraper.collect)
