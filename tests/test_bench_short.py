"""The short version of bench/peers.py: a 64-thread target, one short run each of dsmon, the
bare-Python floor and process-exporter (when installed), and dsmon with a thread cap so it
reads rotating slices. Asserts the harness measures something sane and dsmon's budgets at
64 threads (CPU <= 2% of one core, peak RSS <= 60 MB, every thread covered within 10 s)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from bench import peers
from bench.soak import reap_all

pytestmark = pytest.mark.slow
WINDOW_S = 4.0


@pytest.fixture(scope="module")
def runs():
    settle = peers.SETTLE_S
    peers.SETTLE_S = 1.0
    work = Path(tempfile.mkdtemp(prefix="dsmon-peers-test-"))
    marker = "977001"
    target = peers.start_target(64, marker)
    results = {}
    try:
        tools = ["dsmon", "floor"]
        if shutil.which("prometheus-process-exporter"):
            tools.append("process-exporter")
        for tool in tools:
            results[tool] = peers.measure_tool(tool, target.pid, marker, WINDOW_S, work, tool)
        results["dsmon-sliced"] = peers.measure_tool(
            "dsmon", target.pid, marker, WINDOW_S, work, "dsmon-sliced",
            agent_config="[agent]\nmax_threads = 32\n")
    finally:
        peers.SETTLE_S = settle
        peers.stop_target(target, 64)
        reap_all()
    yield results
    shutil.rmtree(work, ignore_errors=True)


def test_measurements_are_sane(runs):
    for tool, row in runs.items():
        assert row["alive"], tool
        assert 4 <= row["window_s"] < 8, tool
        assert row["cpu_s"] >= 0 and 1e6 < row["peak_rss_bytes"] < 500e6, tool
    for tool in ("dsmon", "process-exporter"):
        if tool in runs:
            row = runs[tool]
            assert row["scrapes"] == WINDOW_S and not row["scrape_failures"], tool
            assert 0 < row["scrape_ms_median"] <= row["scrape_ms_p95"], tool
            assert row["series"] > 20, tool
    assert runs["dsmon"]["cpu_s"] > 0           # an agent at 1 Hz on 64 threads uses some CPU
    assert runs["floor"]["scrapes"] == 0 and runs["floor"]["series"] is None


def test_dsmon_budgets_at_64_threads(runs):
    row = runs["dsmon"]
    assert row["cpu_pct"] <= peers.BUDGET_512_CPU_PCT
    assert row["peak_rss_bytes"] <= peers.BUDGET_RSS_BYTES
    assert not row["log_errors"]
    coverage = row["coverage"]
    assert coverage["threads_listed"] == 65 and coverage["threads_sampled"] == 65
    assert coverage["oldest_sample_age_s"] == 0


def test_dsmon_thread_slices_cover_every_thread_within_10_s(runs):
    coverage = runs["dsmon-sliced"]["coverage"]
    assert coverage["threads_listed"] == 65
    assert coverage["threads_sampled"] == 16               # max(32 / 2, 65 / 8): 5 per pass
    assert 0 < coverage["oldest_sample_age_s"] <= peers.BUDGET_10K_COVERAGE_S
    assert coverage["full_pass_s"] is not None and coverage["full_pass_s"] <= 10


def test_report_and_chart_are_written(runs, tmp_path):
    document = {"date": "now", "host": {"git_commit": "x", "cpus": 2}, "window_s": {64: WINDOW_S},
                "repeats": 1, "settle_s": [1.0, 1.0], "sizes": [64], "tools": list(runs),
                "tools_missing": [], "versions": {"dsmon": "test"}, "diagnose": [],
                "runs": [dict(row, size=64, repeat=0) for row in runs.values()], "loadavg": []}
    for name, row in runs.items():
        row["tool"] = name
    document["runs"] = [dict(row, size=64, repeat=0) for row in runs.values()]
    document["table"] = peers.aggregate(document)
    document["checks"] = peers.checks(document)
    peers.write_svg(document, tmp_path / "chart.svg")
    peers.write_markdown(document, tmp_path / "bench.md", "chart.svg", None)
    text = (tmp_path / "bench.md").read_text()
    assert "| 64 | **dsmon** |" in text and "![" in text
    assert (tmp_path / "chart.svg").read_text().startswith("<svg")
    assert any(c["name"].startswith("dsmon peak RSS") and c["ok"] for c in document["checks"])
