"""`dsmon diagnose` end to end against real processes spawned by the tests."""

from __future__ import annotations

import os

import pytest

from tests.helpers.spawn import diagnose_json, run_dsmon, workload

CORES = os.cpu_count() or 1


def test_exactly_the_busy_threads_show_as_busy():
    with workload("threads", "--busy", "2", "--idle", "6") as target:
        report = diagnose_json(target.pid)
    rows = report["threads"]["all"]
    busy = {row["name"] for row in rows if row["busy"]}
    assert busy == {"busy_worker_0", "busy_worker_1"}
    assert report["threads"]["busy"] == 2
    for row in rows:
        if row["name"].startswith("busy_worker"):
            assert row["cpu_ratio"] > 0.15  # two CPUs, two busy threads: most of one each when idle
        if row["name"].startswith("idle_worker"):
            assert row["cpu_ratio"] == 0.0
            assert row["state"] == "S"
    pools = {pool["pool"]: pool for pool in report["threads"]["pools"]}
    assert pools["busy_worker_#"]["threads"] == 2 and pools["busy_worker_#"]["busy"] == 2
    assert pools["idle_worker_#"]["threads"] == 6 and pools["idle_worker_#"]["busy"] == 0
    assert report["threads"]["top_by_cpu"][0]["name"].startswith("busy_worker")
    target_cpu = report["target"]["cpu"]["cores"]
    assert 1.0 < target_cpu <= CORES + 0.1


def test_rss_slope_matches_the_growth_rate():
    rate_mib = 40.0
    with workload("grow", "--rate-mib", str(rate_mib)) as target:
        report = diagnose_json(target.pid, duration="3s")
    slope = report["target"]["memory"]["rss_slope_bytes_per_second"] / 2**20
    assert slope == pytest.approx(rate_mib, rel=0.2)
    memory = report["target"]["memory"]
    assert memory["seconds_to_limit"] is not None and memory["seconds_to_limit"] > 0
    # 3 s of growth toward host MemAvailable (many minutes away) is a projection in the
    # memory section, not a finding: the rules do not extrapolate 100x past what they saw.
    if memory["seconds_to_limit"] > 100 * 3:
        assert not any(f["rule_id"].startswith("oom-risk") and f["state"] == "firing"
                       for f in report["findings"])


def test_oversubscribed_threads_wait_on_the_run_queue():
    with workload("threads", "--busy", "1") as baseline:
        one = diagnose_json(baseline.pid)
    with workload("threads", "--busy", str(4 * CORES)) as crowded:
        many = diagnose_json(crowded.pid)
    base = one["threads"]["runnable_waiting_ratio"]
    crowd = many["threads"]["runnable_waiting_ratio"]
    assert crowd > 0.5, crowd
    assert crowd > base + 0.3, (base, crowd)
    assert many["threads"]["run_queue_wait_seconds_per_second"] > \
        one["threads"]["run_queue_wait_seconds_per_second"]
    assert many["threads"]["top_by_run_queue_wait"][0]["name"].startswith("busy_worker")
    assert any(f["rule_id"] == "thread-oversubscription" for f in many["findings"])
    assert not any(f["severity"] != "info" for f in one["findings"])


def test_io_rates_follow_a_writer(tmp_path):
    with workload("io", "--dir", str(tmp_path)) as target:
        report = diagnose_json(target.pid)
    io = report["target"]["io"]
    # The writer writes 1 MiB roughly every 10-30 ms: tens of MiB/s through write(2).
    assert io["wchar_per_second"] > 5 * 2**20
    assert io["read_bytes_per_second"] is not None


def test_text_report_names_the_pools_and_the_limits():
    with workload("threads", "--busy", "2", "--idle", "3") as target:
        result = run_dsmon("diagnose", str(target.pid), "--duration", "1s", "--interval", "0.5s")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for heading in ("== Host", "== Target", "== Threads", "== Collectors"):
        assert heading in text
    assert "busy_worker_#" in text and "idle_worker_#" in text
    assert "effective CPUs:" in text


def test_output_file_and_json_schema(tmp_path):
    out = tmp_path / "report.json"
    with workload("threads", "--idle", "2") as target:
        result = run_dsmon("diagnose", str(target.pid), "--duration", "1s", "--interval", "0.5s",
                           "--format", "json", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    import json
    report = json.loads(out.read_text())
    assert report["schema_version"] == 1
    assert set(report) >= {"window", "host", "target", "threads", "timeline", "collectors",
                           "observations"}
    assert report["window"]["samples"] == 3
    assert len(report["timeline"]) == 2
    assert all(entry["status"] in ("ok", "partial", "no_data")
               for entry in report["collectors"].values())
