"""What the text and HTML reports of real diagnose runs say, and say once: one fix text for
two findings that share it, evidence windows as really covered, one threads table when the
two rankings agree, stacks without interpreter bootstrap frames (and alike threads once), a
memory axis scaled to the limit that binds (or to the data), and "no I/O" in words instead
of a flat line.

Two real runs (a busy Python target with test rules, and a memory-growing one in a limited
cgroup); the reports are rendered from their JSON, the same function `--format` calls.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import pytest

from dsmon.report.html import render_html
from dsmon.report.text import render_text
from tests.helpers.cgroups import memory_cgroup, unavailable_reason
from tests.helpers.spawn import WORKLOAD, run_dsmon, workload

# Two rules that fire on any busy target and give the same fix: the report prints it once.
SHARED_HINT = "Give each busy thread a core of its own (shared hint of the report test)."
RULES = f"""
rules:
  - id: test-python-target
    severity: warning
    description: any Python target, to cite its stacks
    window: 10s
    when:
      all:
        - {{feature: python_target, agg: last, op: "==", value: 1}}
    summary: $comm is a Python process
    hint: {SHARED_HINT}
    capture: stack
  - id: test-many-threads
    severity: info
    description: more than a few threads
    window: 10s
    when:
      all:
        - {{feature: threads, agg: last, op: ">=", value: 4}}
        - {{feature: threads, agg: last, op: ">", value: 2}}
    summary: $comm runs $threads threads
    hint: {SHARED_HINT}
"""
RULE_WINDOW_S = 10.0
BYTES = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def diagnose(pid: int, out, *extra: str) -> dict:
    result = run_dsmon("diagnose", str(pid), "--duration", "2s", "--interval", "0.5s",
                       "--format", "json", "-o", str(out), *extra)
    assert result.returncode in (0, 6, 7), result.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def busy_report(tmp_path_factory):
    """3 busy hashing threads (on this 2-core machine they queue) and 2 idle ones, no I/O."""
    directory = tmp_path_factory.mktemp("busy")
    (directory / "rules").mkdir()
    (directory / "rules" / "test.yaml").write_text(RULES)
    with workload("threads", "--busy", "3", "--idle", "2") as target:
        return diagnose(target.pid, directory / "report.json", "--rules",
                        str(directory / "rules"))


def figure(html: str, chart: str) -> str:
    match = re.search(rf'<figure data-chart="{chart}".*?</figure>', html, re.S)
    assert match, chart
    return match.group(0)


def axis_max_bytes(chart_html: str) -> float:
    top = float(re.search(r'data-axis-max="([^"]+)"', chart_html).group(1))
    unit = re.search(r"memory \((\w+)\)", chart_html).group(1)
    return top * BYTES[unit]


def test_a_fix_shared_by_two_findings_is_printed_once(busy_report):
    fired = {f["rule_id"] for f in busy_report["findings"]}
    assert {"test-python-target", "test-many-threads"} <= fired, fired
    text = render_text(busy_report)
    assert text.count(SHARED_HINT) == 1, text
    first, second = [f["rule_id"] for f in busy_report["findings"]
                     if f["rule_id"].startswith("test-")]
    assert f"fix: same as for {first} above" in text
    html = render_html(busy_report)
    assert html.count(SHARED_HINT) == 1
    assert re.search(r'same as for <a href="#finding-\d+">' + first, html)


def test_evidence_quotes_the_window_really_covered(busy_report):
    """A 2 s run against 10 s rules: the evidence says how much it covered, not "10s"."""
    text = render_text(busy_report)
    lines = [line for line in text.splitlines() if "evidence: " in line]
    assert lines
    elapsed = busy_report["window"]["elapsed_seconds"]
    for line in lines:
        covered = re.search(r"\((\d+) points? over ([\d.]+)s of 10s\)$", line)
        assert covered, line
        assert float(covered.group(2)) <= elapsed + 0.05 < RULE_WINDOW_S, line
        assert int(covered.group(1)) >= 1
    # The rule compares one reading (the thread count) with two thresholds: one line says both.
    merged = [line for line in lines if "last(threads)" in line]
    assert len(merged) == 1 and "= 6 >= 4, > 2 (" in merged[0], merged


def test_one_threads_table_when_the_rankings_agree(busy_report):
    threads = busy_report["threads"]
    by_cpu = [row["tid"] for row in threads["top_by_cpu"]]
    by_wait = [row["tid"] for row in threads["top_by_run_queue_wait"]]
    # 3 hashing threads on 2 cores: the same three lead both rankings.
    assert len(by_wait) >= 3 and set(by_cpu[:3]) == set(by_wait[:3]), (by_cpu, by_wait)
    text = render_text(busy_report)
    assert text.count("  top threads by ") == 1, text
    # Rankings that disagree keep both tables.
    disagreeing = copy.deepcopy(busy_report)
    idle = next(row for row in threads["all"] if row["tid"] not in by_cpu + by_wait)
    disagreeing["threads"]["top_by_run_queue_wait"][0] = idle
    text = render_text(disagreeing)
    assert "  top threads by CPU:" in text and "  top threads by run-queue wait:" in text


def test_stacks_keep_the_workloads_frames_without_bootstrap(busy_report):
    python = busy_report["python"]
    assert python["status"] == "ok", python
    raw = [frame for thread in python["threads"] for stack in thread["top_stacks"]
           for frame in stack["frames"]]
    assert any("Thread._bootstrap" in frame for frame in raw)   # py-spy saw them
    text = render_text(busy_report)
    stacks = [line for line in text.splitlines() if "% " in line and " (" in line
              and ".py:" in line] + [line for line in text.splitlines() if "stack: " in line]
    assert any(re.search(r"busy \([\w/]*workload\.py:\d+\)", line) for line in stacks), text
    for word in ("_bootstrap", "Thread.run", "runpy.py", "<module>"):
        assert word not in text, word
    html = render_html(busy_report)
    assert "_bootstrap" not in html and "busy (" in html
    # The two idle workers read the same: one line for both, their stack printed once.
    assert "2 threads alike (" in text, text
    assert sum("idle (" in line and "Event.wait" in line for line in text.splitlines()) == 1


def test_no_io_is_said_in_words_not_drawn(busy_report):
    html = render_html(busy_report)
    io = figure(html, "io")
    assert 'data-zero="no I/O' in io and "no I/O:" in io, io
    assert "<path" not in io and "data-empty" not in io
    # Not measured is not zero: without /proc/PID/io the figure says "not available".
    unread = copy.deepcopy(busy_report)
    for entry in unread["timeline"]:
        for name in ("read_bytes_per_second", "write_bytes_per_second", "rchar_per_second"):
            entry[name] = None
    io = figure(render_html(unread), "io")
    assert "not available" in io and "data-zero" not in io and "no I/O" not in io
    # One series with data is drawn; the zero ones are named, not drawn.
    reading = copy.deepcopy(busy_report)
    for index, entry in enumerate(reading["timeline"]):
        entry["rchar_per_second"] = 2**20 * (index + 1)
    io = figure(render_html(reading), "io")
    assert io.count('class="series mark"') == 1 and 'data-series="read(2) and similar"' in io
    assert "storage read, storage write: 0 B/s throughout" in io


def test_memory_axis_without_a_limit_fits_the_data(busy_report):
    memory = busy_report["target"]["memory"]
    chart = figure(render_html(busy_report), "memory")
    top = axis_max_bytes(chart)
    if memory["limit_kind"] == "cgroup":      # the runner's own cgroup has a limit
        limit = memory["cgroup"]["limit_bytes"]
        assert limit <= top <= 1.5 * limit
    else:
        peak = max(e["rss_bytes"] for e in busy_report["timeline"] if e.get("rss_bytes"))
        assert peak < top <= 2.5 * peak, (peak, top)
        assert top < memory["host_total_bytes"] / 4
        assert "host RAM" in chart


@pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))
def test_memory_axis_reaches_the_cgroup_limit_not_host_ram(tmp_path):
    limit = 300 * 2**20
    with memory_cgroup(limit) as group:
        target = group.spawn([sys.executable, str(WORKLOAD), "grow", "--rate-mib", "20"],
                             stdout=subprocess.PIPE, text=True)
        try:
            assert target.stdout.readline().startswith("ready")
            report = diagnose(target.pid, tmp_path / "report.json", "--no-stacks")
        finally:
            target.kill()
            target.wait()
            target.stdout.close()
    memory = report["target"]["memory"]
    assert memory["limit_kind"] == "cgroup" and memory["cgroup"]["limit_bytes"] == limit
    chart = figure(render_html(report), "memory")
    top = axis_max_bytes(chart)
    assert limit <= top <= 1.5 * limit, top / 2**20
    assert top < memory["host_total_bytes"] / 2
    assert 'data-series="limit"' in chart and 'data-series="RSS"' in chart
