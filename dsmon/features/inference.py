"""Features from the inference engine's own metrics (vLLM, SGLang, TGI, Triton;
dsmon/engine_metrics.py): absent without a reachable endpoint, and for signals the engine
does not export."""

from __future__ import annotations


class InferenceEngineFeatures:
    def update(self, values, interval) -> None:
        reading = interval.tick.data("engine")     # the latest scrape, only when it succeeded
        if reading is None:
            return
        signals = reading.signals
        values["engine_kv_cache_usage_ratio"] = signals.kv_cache_usage_ratio
        values["engine_preemptions_per_second"] = reading.preemptions_per_second
        values["engine_running_requests"] = signals.running_requests
        values["engine_waiting_requests"] = signals.waiting_requests
        values["engine_queue_time_seconds"] = reading.queue_time_seconds
