"""The HTML report: one self-contained page (inline CSS and SVG, no script, no fetch) drawn
from the diagnose report dict. The agent's live page is the same function over its recent
history, with a refresh.

Everything from the target (cmdline, thread names, wait channels, rule text filled with
them) is untrusted: it reaches the page only through `escape` here or in dsmon.report.svg.
"""

from __future__ import annotations

import json
from html import escape

from dsmon.report import svg
from dsmon.report.digest import FixLedger, evidence_lines, quoted_lines, thread_tables
from dsmon.report.frames import user_frames
from dsmon.report.svg import Bars, Reference, Series
from dsmon.report.units import bytes_text as _bytes
from dsmon.report.units import duration as _duration
from dsmon.report.units import number as _num
from dsmon.report.units import percent as _pct
from dsmon.sources import format_cpulist

THREAD_STATE_NAMES = {"R": "R running", "S": "S sleeping", "D": "D uninterruptible",
                      "I": "I idle", "T": "T stopped", "t": "t traced", "Z": "Z zombie"}
THREAD_STATE_ORDER = ("R", "D", "S", "I", "T", "t", "Z")
MAX_POOLS_CHARTED = 15
MAX_THREAD_ROWS = 1024          # the full list is in the JSON report
# The charts the page draws, in order; each is a <figure data-chart=ID>.
CHARTS = ("core-heatmap", "target-cpu", "thread-states", "pool-cpu", "pool-wait", "memory",
          "numa", "io", "gpu-memory", "gpu-topology")
STACK_FRAMES = 4
# Without a limit that binds, the memory axis reaches this far above the data, and the host's
# ceiling is drawn only when it is within this factor of that axis (else the data would be a
# flat line at the bottom of a chart scaled to host RAM).
MEMORY_AXIS_HEADROOM = 1.25
MEMORY_REFERENCE_FIT = 2.0

STYLE = """
:root{--fg:#111;--muted:#555;--line:#bbb}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
 margin:1.5em auto;max-width:1180px;padding:0 1em}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;margin:1.4em 0 .4em;
 border-bottom:2px solid var(--fg)}
.meta{color:var(--muted)}code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;
 font-size:.92em;word-break:break-all}
.finding{border:1px solid var(--line);border-left-width:8px;padding:.5em .8em;margin:.6em 0}
.finding.critical{border-left-color:#D55E00;border-left-style:solid}
.finding.warning{border-left-color:#E69F00;border-left-style:dashed}
.finding.info{border-left-color:#0072B2;border-left-style:dotted}
.badge{font-weight:700;text-transform:uppercase;letter-spacing:.04em}
.fix{background:#f3f3f3;padding:.3em .6em;margin:.3em 0}
ul.evidence{margin:.2em 0;padding-left:1.4em}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:1em}
figure{margin:0;border:1px solid var(--line);padding:.5em;break-inside:avoid;min-width:0;
 box-sizing:border-box}
figcaption{font-weight:600;margin-bottom:.3em}figcaption small{font-weight:400;
 color:var(--muted)}
figure svg{width:100%;height:auto;display:block}
svg.defs{position:absolute;width:0;height:0;overflow:hidden}
svg text{font:11px system-ui,sans-serif;fill:#222}svg text.label{font-size:12px;fill:#000}
svg text.direct{font-size:11px;font-weight:600}svg text.value{font-size:10px}
svg .grid{stroke:#e3e3e3}svg .axis{stroke:#333}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid var(--line);
 padding:2px 8px;text-align:left;vertical-align:top}th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.topology td{text-align:center;min-width:3.2em;font-weight:600}
.nv{background:#0072B2;color:#fff}.pcie-near{background:#9ecae1}.pcie-far{background:#f0f0f0}
.unavailable{color:var(--muted);font-style:italic}.zero{font-weight:600}
@media print{body{max-width:none;margin:0;font-size:11px}.charts{display:block}
 figure{margin:0 0 .8em}details{display:none}
 *{-webkit-print-color-adjust:exact;print-color-adjust:exact}.no-print{display:none}}
"""


def byte_scale(top: float) -> tuple[str, float]:
    """The binary unit an axis reaching `top` bytes is labelled in."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if top >= size:
            return unit, float(size)
    return "B", 1.0


def _e(value) -> str:
    return escape("" if value is None else str(value))


def render_html(report: dict, *, refresh_seconds: int | None = None,
                heading: str | None = None, nav: str = "") -> str:
    """The whole page. `refresh_seconds` makes it reload itself (the agent's live view);
    `nav` is trusted markup the agent puts above the report (links back)."""
    # Draw from the JSON document itself (string keys, plain types): the page shows what
    # `--format json` would say, whoever built the dict.
    report = json.loads(json.dumps(report, default=str))
    target = report.get("target") or {}
    window = report["window"]
    title = heading or f"dsmon diagnose: pid {target.get('pid', '?')} ({target.get('comm', '?')})"
    refresh = (f'<meta http-equiv="refresh" content="{int(refresh_seconds)}">'
               if refresh_seconds else "")
    body = [
        nav,
        f"<h1>{escape(title)}</h1>",
        _summary(report),
        _findings(report),
        "<h2>Over the window</h2>",
        svg.pattern_defs(),
        '<div class="charts">',
        _core_heatmap(report), _target_cpu(report), _thread_states(report),
        *_pool_charts(report), _memory(report), _numa(report), _io(report),
        _gpu_memory(report), _gpu_topology(report),
        "</div>",
        _target_facts(report),
        _thread_tables(report),
        _python_stacks(report),
        _collectors(report),
        f'<p class="meta">dsmon {_e(report.get("dsmon_version"))} · generated '
        f'{_e(report.get("generated_at"))} on {_e(report.get("reporter_host"))} · '
        f'window {_e(window.get("elapsed_seconds"))} s · the machine-readable report is '
        f'<code>--format json</code></p>',
    ]
    return ("<!doctype html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            # An empty icon: a browser would otherwise fetch /favicon.ico.
            '<link rel="icon" href="data:,">'
            f"{refresh}<title>{escape(title)}</title><style>{STYLE}</style></head>\n"
            f"<body>\n{''.join(body)}\n</body></html>\n")


def _figure(chart_id: str, caption: str, content: str, note: str = "",
            empty_reason: str = "", zero_reason: str = "") -> str:
    """`empty_reason`: the data could not be measured (the figure says "not available");
    `zero_reason`: it was measured and was zero throughout, so there is nothing to draw."""
    extra = ""
    if empty_reason:
        extra = f' data-empty="{escape(empty_reason)}"'
        content = f'<p class="unavailable">not available: {escape(empty_reason)}</p>'
    elif zero_reason:
        extra = f' data-zero="{escape(zero_reason)}"'
        content = f'<p class="zero">{escape(zero_reason)}</p>'
    note_html = f" <small>{escape(note)}</small>" if note else ""
    return (f'<figure data-chart="{chart_id}"{extra}><figcaption>{escape(caption)}{note_html}'
            f"</figcaption>{content}</figure>")


def _summary(report: dict) -> str:
    target = report.get("target") or {}
    window = report["window"]
    host = report.get("host") or {}
    parts = [
        f'<p class="meta">{_e(window.get("samples"))} samples over '
        f'{_e(window.get("elapsed_seconds"))} s (every {_e(window.get("interval_seconds"))} s)'
        f' from {_e(window.get("started_at"))} · host {_e(host.get("hostname"))} '
        f'({_e(host.get("cpus_online"))} CPUs, {len(host.get("numa_nodes") or [])} NUMA '
        f'node(s), kernel {_e(host.get("kernel"))})'
        + (f' · engine <b>{_e(report["engine"])}</b>' if report.get("engine") else "") + "</p>"]
    if target:
        parts.append(f'<p>pid {_e(target.get("pid"))} · user '
                     f'{_e(target.get("user") or target.get("uid"))} · state '
                     f'{_e(target.get("state"))} · {_e(target.get("threads"))} threads · cgroup '
                     f'<code>{_e(target.get("cgroup"))}</code><br>cmdline: <code>'
                     f'{_e(" ".join(target.get("cmdline") or []))}</code></p>')
    if not window.get("complete", True):
        parts.append(f'<p class="finding critical"><span class="badge">partial report</span>: '
                     f'{_e(window.get("end_reason"))} {_e(window.get("target_exited_at"))}</p>')
    return "".join(parts)


def _findings(report: dict) -> str:
    findings = report.get("findings") or []
    out = ["<h2>Findings" + (f" (engine: {_e(report['engine'])})" if report.get("engine")
                             else "") + "</h2>"]
    if not findings:
        out.append("<p>None: no rule matched this window.</p>")
    fixes = FixLedger()
    for index, finding in enumerate(findings):
        severity = finding.get("severity", "info")
        evidence = "".join(f"<li>{_e(line)}</li>"
                           for line in evidence_lines(finding, report["window"]))
        evidence += "".join(f'<li class="quoted">quoted: {_e(line)}</li>'
                            for line in quoted_lines(finding))
        out.append(
            f'<div class="finding {escape(severity)}" id="finding-{index}" '
            f'data-rule="{_e(finding.get("rule_id"))}">'
            f'<span class="badge">{_e(severity)} · {_e(finding.get("state"))}</span> '
            f'<b>{_e(finding.get("rule_id"))}</b>: {_e(finding.get("summary"))}'
            f'<ul class="evidence">{evidence}</ul>{_finding_stacks(finding)}'
            f'{_fix(fixes, f"finding-{index}", finding.get("rule_id"), finding.get("hint"))}'
            "</div>")
    observations = report.get("observations") or []
    if observations:
        out.append("<ul>" + "".join(f"<li>[{_e(o.get('severity'))}] {_e(o.get('topic'))}: "
                                    f"{_e(o.get('text'))}</li>" for o in observations) + "</ul>")
    return "".join(out)


def _fix(fixes: FixLedger, anchor: str, owner, hint) -> str:
    """The fix, or a link to the finding above that already gave the same one."""
    earlier = fixes.owner_of_earlier((anchor, owner), str(hint or ""))
    if earlier is None:
        return f'<div class="fix"><b>Fix:</b> {_e(hint)}</div>'
    earlier_anchor, earlier_owner = earlier
    return (f'<div class="fix"><b>Fix:</b> same as for <a href="#{escape(earlier_anchor)}">'
            f"{_e(earlier_owner)}</a> above</div>")


def _timeline(report: dict) -> list[dict]:
    return report.get("timeline") or []


def _series(report: dict, name: str, scale: float = 1.0) -> list:
    return [(entry["t"], None if entry.get(name) is None else entry[name] / scale)
            for entry in _timeline(report)]


def _core_heatmap(report: dict) -> str:
    timeline = [e for e in _timeline(report) if e.get("core_busy_ratio")]
    caption = "Per-core utilisation"
    if not timeline:
        return _figure("core-heatmap", caption, "", empty_reason="no /proc/stat samples")
    cores = max(len(e["core_busy_ratio"]) for e in timeline)
    per_core = (report.get("host") or {}).get("per_core") or []
    labels = [f"cpu{c['cpu']}" for c in per_core] if len(per_core) == cores else \
        [f"cpu{i}" for i in range(cores)]
    rows = [[e["core_busy_ratio"][i] if i < len(e["core_busy_ratio"]) else None
             for e in timeline] for i in range(cores)]
    chart = svg.heatmap("core-heatmap", "busy share of each CPU over time", labels,
                        [e["t"] for e in timeline], rows, "time since the first sample (s)",
                        "CPU")
    effective = ((report.get("target") or {}).get("effective_cpus") or {}).get("cpus")
    note = f"target may run on CPUs {format_cpulist(effective)}" if effective else ""
    return _figure("core-heatmap", caption, chart, note)


def _measured(points: list) -> str:
    """"absent" (no value at all: not measured), "zero" (measured, 0 at every point) or
    "data": only a series with data is drawn; the other two are said in words."""
    values = [y for _, y in points if y is not None]
    if not values:
        return "absent"
    return "zero" if all(v == 0 for v in values) else "data"


def _quiet_note(labels: dict[str, str], zero_text: str) -> str:
    """What the chart leaves out: series that were 0 throughout, series not measured."""
    zero = [label for label, kind in labels.items() if kind == "zero"]
    absent = [label for label, kind in labels.items() if kind == "absent"]
    parts = [f"{', '.join(zero)}: {zero_text} throughout"] if zero else []
    if absent:
        parts.append(f"not measured: {', '.join(absent)}")
    return "; ".join(parts)


def _intervals(report: dict, name: str) -> int:
    return sum(1 for _, y in _series(report, name) if y is not None)


def _target_cpu(report: dict) -> str:
    caption = "Target CPU and run-queue wait"
    cpu = _series(report, "cpu_cores")
    wait = _series(report, "run_queue_wait_seconds_per_second")
    kinds = {"CPU used": _measured(cpu), "run-queue wait": _measured(wait)}
    if kinds["CPU used"] == "absent":
        return _figure("target-cpu", caption, "", empty_reason="the target was not sampled twice")
    if kinds["CPU used"] == "zero" and kinds["run-queue wait"] != "data":
        return _figure("target-cpu", caption, "", zero_reason=(
            f"no CPU used: 0 cores in each of the {_intervals(report, 'cpu_cores')} intervals"))
    capacity = ((report.get("target") or {}).get("effective_cpus") or {}).get("capacity_cores")
    references = (Reference(capacity, f"capacity {capacity:g}"),) if capacity else ()
    series = [s for s in (Series("CPU used", cpu, 0), Series("run-queue wait", wait, 1))
              if kinds[s.name] == "data"]
    chart = svg.line_chart(
        "target-cpu", caption, series, "time since the first sample (s)",
        "cores (CPU-seconds per second)", lambda v: f"{v:g}", references=references)
    note = "wait = seconds its threads were runnable but not on a CPU, per second"
    quiet = _quiet_note(kinds, "0")
    return _figure("target-cpu", caption, chart, note + (f"; {quiet}" if quiet else ""))


def _thread_states(report: dict) -> str:
    caption = "Threads by state"
    timeline = [e for e in _timeline(report) if e.get("threads_by_state")]
    if not timeline:
        return _figure("thread-states", caption, "", empty_reason="no thread sweeps")
    states = {s for e in timeline for s in e["threads_by_state"]}
    ordered = [s for s in THREAD_STATE_ORDER if s in states] + sorted(
        states - set(THREAD_STATE_ORDER))
    stacks = [Series(THREAD_STATE_NAMES.get(state, state),
                     [(e["t"], e["threads_by_state"].get(state, 0)) for e in timeline], index)
              for index, state in enumerate(ordered)]
    chart = svg.stacked_columns("thread-states", caption, [e["t"] for e in timeline], stacks,
                                "time since the first sample (s)", "threads",
                                lambda v: f"{v:g}")
    return _figure("thread-states", caption, chart, "state at each sample (/proc/PID/task)")


def _pool_charts(report: dict) -> list[str]:
    pools = (report.get("threads") or {}).get("pools") or []
    if not pools:
        reason = "no thread data"
        return [_figure("pool-cpu", "CPU per thread pool", "", empty_reason=reason),
                _figure("pool-wait", "Run-queue wait per thread pool", "", empty_reason=reason)]
    elapsed = report["window"].get("elapsed_seconds") or 0
    rows = (report.get("threads") or {}).get("all") or []
    return [
        _pool_chart("pool-cpu", "CPU per thread pool", pools, rows, "cpu_cores", "cpu_ratio",
                    "CPU", 0,
                    lambda p: f"{_num(p.get('cpu_cores'))} cores, {p.get('busy', 0)} busy",
                    "CPU used over the window (cores)",
                    "no thread's CPU was measured (one thread sweep)",
                    f"no CPU used: none of the {len(pools)} pools ran"),
        _pool_chart("pool-wait", "Run-queue wait per thread pool", pools, rows,
                    "run_queue_wait_seconds", "run_queue_wait_seconds",
                    "run-queue wait", 1,
                    lambda p: f"{_num(p.get('run_queue_wait_seconds'), '{:.3f}')} s",
                    f"seconds runnable but waiting for a CPU (over {elapsed:g} s)",
                    "no thread's run-queue wait was measured (schedstat)",
                    f"no run-queue wait: no thread of the {len(pools)} pools waited for a CPU"),
    ]


def _pool_chart(chart_id: str, caption: str, pools: list, rows: list, field: str,
                row_field: str, name: str, style: int, label, axis: str, unmeasured: str,
                zero: str) -> str:
    """One value per pool as bars. A pool's sum counts an unmeasured thread as 0, so the
    threads say whether anything was measured at all."""
    if rows and not any(r.get(row_field) is not None for r in rows):
        return _figure(chart_id, caption, "", empty_reason=unmeasured)
    if not any(p.get(field) for p in pools):
        return _figure(chart_id, caption, "", zero_reason=zero)
    shown = pools[:MAX_POOLS_CHARTED]
    more = f"{len(pools) - len(shown)} more pools in the JSON report" if len(pools) > len(shown) \
        else "threads grouped by name with digits masked"
    bars = Bars(name, [p.get(field) for p in shown], style, [label(p) for p in shown])
    chart = svg.bar_chart(chart_id, caption, [f"{p['pool']} ×{p['threads']}" for p in shown],
                          [bars], axis, lambda v: f"{v:g}")
    return _figure(chart_id, caption, chart, more)


def _memory(report: dict) -> str:
    """RSS and working set against the ceiling they may grow to (working set + headroom).
    The axis reaches the limit that binds when a cgroup sets one; without one, the host's
    ceiling would flatten the data, so the axis fits the data and the ceiling is drawn
    only when it fits too."""
    caption = "Memory and its limit"
    timeline = _timeline(report)
    memory = (report.get("target") or {}).get("memory") or {}
    rss = _series(report, "rss_bytes")
    if not any(y is not None for _, y in rss):
        return _figure("memory", caption, "", empty_reason="no memory samples")
    working = _series(report, "working_set_bytes")
    ceiling = [(e["t"], e["working_set_bytes"] + e["memory_headroom_bytes"])
               if e.get("working_set_bytes") is not None
               and e.get("memory_headroom_bytes") is not None else (e["t"], None)
               for e in timeline]
    projection = _memory_projection(timeline, memory.get("seconds_to_limit"))
    data_top = max(y for _, y in rss + working + projection if y is not None)
    ceiling_top = max((y for _, y in ceiling if y is not None), default=None)
    host_total = memory.get("host_total_bytes")
    kind = memory.get("limit_kind") or "limit"
    note = f"limit = {kind}; headroom {_bytes(memory.get('headroom_bytes'))}"
    references: list[tuple[float, str]] = []
    if kind == "cgroup":
        top, draw_ceiling = max(data_top, ceiling_top or 0), ceiling_top is not None
    else:
        top = data_top * MEMORY_AXIS_HEADROOM
        draw_ceiling = ceiling_top is not None and ceiling_top <= top * MEMORY_REFERENCE_FIT
        if draw_ceiling:
            top = max(top, ceiling_top)
        elif ceiling_top is not None:
            note += f"; its ceiling ({_bytes(ceiling_top)}) is off this scale"
        if host_total and host_total <= top * MEMORY_REFERENCE_FIT:
            top = max(top, host_total)
            references.append((host_total, f"host RAM {_bytes(host_total)}"))
        elif host_total:
            note += f"; host RAM {_bytes(host_total)}"
    unit, size = byte_scale(top)

    def scaled(points):
        return [(t, None if y is None else y / size) for t, y in points]

    series = [Series("RSS", scaled(rss), 0)]
    if working == rss:      # without a cgroup limit the working set is the target's RSS
        note += "; working set = RSS"
    else:
        series.append(Series("working set", scaled(working), 2))
    if draw_ceiling:
        limit = scaled(ceiling)
        if projection:     # the ceiling runs on to where the projection ends
            limit.append((projection[-1][0], next(y for _, y in reversed(limit) if y is not None)))
        series.append(Series("limit" if kind == "cgroup" else "host ceiling", limit, 1))
    x_max = None
    if projection:
        series.append(Series("projected", scaled(projection), 3, dashed=True))
        x_max = projection[-1][0]
        note += (f"; projected OOM in {_duration(memory.get('seconds_to_limit'))} at the "
                 "measured growth")
    else:
        note += "; not growing"
    chart = svg.line_chart("memory", caption, series, "time since the first sample (s)",
                           f"memory ({unit})", lambda v: f"{v:g}", x_max=x_max, y_max=top / size,
                           references=tuple(Reference(v / size, label) for v, label in references))
    return _figure("memory", caption, chart, note)


def _memory_projection(timeline: list[dict], to_limit) -> list[tuple[float, float]]:
    """The working set's straight line toward the ceiling at the measured growth, drawn up
    to three windows ahead (past that, the note says when)."""
    last = next((e for e in reversed(timeline) if e.get("working_set_bytes") is not None
                 and e.get("memory_headroom_bytes") is not None), None)
    if not to_limit or last is None:
        return []
    span = last["t"] or 1.0
    horizon = min(last["t"] + to_limit, last["t"] + 3 * span)
    reach = last["working_set_bytes"] + last["memory_headroom_bytes"] * \
        (horizon - last["t"]) / to_limit
    return [(last["t"], last["working_set_bytes"]), (horizon, reach)]


def _numa(report: dict) -> str:
    caption = "NUMA placement: memory vs CPU time per node"
    numa = (report.get("target") or {}).get("numa") or {}
    memory = numa.get("memory_bytes_by_node") or {}
    cpu = {k: v for k, v in (numa.get("cpu_seconds_by_node") or {}).items() if k != "-1"}
    if not memory and not cpu:
        return _figure("numa", caption, "", empty_reason="numa_maps and thread CPUs unreadable")
    nodes = sorted(set(memory) | set(cpu), key=lambda n: int(n))
    total_memory = sum(memory.values()) or 0
    total_cpu = sum(cpu.values()) or 0
    groups = [
        Bars("memory", [memory.get(n, 0) / total_memory if total_memory else None for n in nodes],
             0, [_bytes(memory.get(n, 0)) for n in nodes]),
        Bars("CPU time", [cpu.get(n, 0) / total_cpu if total_cpu else None for n in nodes], 1,
             [f"{cpu.get(n, 0):.2f} s" for n in nodes]),
    ]
    chart = svg.bar_chart("numa", caption, [f"node {n}" for n in nodes], groups,
                          "share of the target's total (%)", lambda v: f"{v * 100:.0f}",
                          x_max=1.0)
    return _figure("numa", caption, chart,
                   f"locality {_pct(numa.get('memory_local_ratio'))} (overlap of the two)")


def _io(report: dict) -> str:
    caption = "I/O rates"
    names = (("read_bytes_per_second", "storage read", 0),
             ("write_bytes_per_second", "storage write", 1),
             ("rchar_per_second", "read(2) and similar", 2))
    raw = {name: _series(report, name) for name, _, _ in names}
    kinds = {label: _measured(raw[name]) for name, label, _ in names}
    if all(kind == "absent" for kind in kinds.values()):
        return _figure("io", caption, "", empty_reason="/proc/PID/io unreadable")
    drawn = [(name, label, style) for name, label, style in names if kinds[label] == "data"]
    if not drawn:
        intervals = max(_intervals(report, name) for name, _, _ in names)
        return _figure("io", caption, "", zero_reason=(
            f"no I/O: 0 B/s read and written from storage, and read through syscalls, in "
            f"each of the {intervals} intervals"))
    unit, size = byte_scale(max(y for name, _, _ in drawn for _, y in raw[name] if y is not None))
    series = [Series(label, [(t, None if y is None else y / size) for t, y in raw[name]], style)
              for name, label, style in drawn]
    chart = svg.line_chart("io", caption, series, "time since the first sample (s)",
                           f"{unit}/s", lambda v: f"{v:g}")
    quiet = _quiet_note(kinds, "0 B/s")
    return _figure("io", caption, chart, "storage = block device I/O; read(2) = all reads"
                   + (f"; {quiet}" if quiet else ""))


def _gpu_memory(report: dict) -> str:
    caption = "GPU memory"
    gpu = report.get("gpu") or {}
    cards = gpu.get("gpus") or []
    if not cards:
        return _figure("gpu-memory", caption, "",
                       empty_reason=gpu.get("error") or "no GPU seen by NVML")
    total = max((c.get("memory_total_bytes") or 0) for c in cards)
    unit, size = byte_scale(total or 1)
    pid = str((report.get("target") or {}).get("pid"))
    usage = (gpu.get("targets") or {}).get(pid) or {}
    target_per_gpu: dict = {}
    for entry in usage.get("per_gpu") or []:      # one entry per process of the target
        index = entry.get("gpu_index")
        target_per_gpu[index] = target_per_gpu.get(index, 0) + (entry.get("used_bytes") or 0)

    def scaled(value):
        return None if value is None else value / size

    groups = [Bars("used (all processes)", [scaled(c.get("memory_used_bytes")) for c in cards],
                   0, [f"{_bytes(c.get('memory_used_bytes'))} of "
                       f"{_bytes(c.get('memory_total_bytes'))}" for c in cards]),
              Bars("this target", [scaled(target_per_gpu.get(c.get("index"), 0)) for c in cards],
                   1, [_bytes(target_per_gpu.get(c.get("index"), 0)) for c in cards])]
    chart = svg.bar_chart("gpu-memory", caption,
                          [f"GPU{c.get('index')} {c.get('name') or ''}" for c in cards], groups,
                          f"memory ({unit})", lambda v: f"{v:g}",
                          capacities=[scaled(c.get("memory_total_bytes")) for c in cards])
    return _figure("gpu-memory", caption, chart, f"target: {usage.get('status', 'n/a')}")


def _gpu_topology(report: dict) -> str:
    caption = "GPU topology"
    topology = (report.get("gpu") or {}).get("topology") or {}
    matrix = topology.get("matrix") or []
    if not matrix:
        return _figure("gpu-topology", caption, "", empty_reason="no GPU topology from NVML")
    gpus = topology.get("gpus") or []
    head = "".join(f"<th>GPU{i}</th>" for i in range(len(matrix)))
    rows = []
    for i, row in enumerate(matrix):
        cells = []
        for cell in row:
            text = str(cell)
            klass = "nv" if text.startswith("NV") else "pcie-near" if text in (
                "PIX", "PXB", "PHB") else "pcie-far"
            cells.append(f'<td class="mark {klass}">{escape(text)}</td>')
        entry = gpus[i] if i < len(gpus) else {}
        affinity = entry.get("cpu_affinity")
        nodes = entry.get("numa_affinity")
        rows.append(f"<tr><th>GPU{i}</th>{''.join(cells)}"
                    f"<td>{escape(format_cpulist(affinity)) if affinity else 'n/a'}</td>"
                    f"<td>{escape(', '.join(map(str, nodes))) if nodes else 'n/a'}</td></tr>")
    table = (f'<table class="topology"><tr><th></th>{head}<th>CPU affinity</th>'
             f"<th>NUMA</th></tr>{''.join(rows)}</table>"
             '<p class="meta">X = self; NV# = # bonded NVLinks; PIX/PXB = PCIe bridges; '
             "PHB = through the CPU's host bridge; NODE = between host bridges of one NUMA node;"
             " SYS = across NUMA nodes (slowest)</p>")
    return _figure("gpu-topology", caption, table)


def _target_facts(report: dict) -> str:
    target = report.get("target") or {}
    if not target:
        return ""
    cpu = target.get("cpu") or {}
    effective = target.get("effective_cpus") or {}
    memory = target.get("memory") or {}
    settings = target.get("thread_settings") or {}
    io = target.get("io") or {}
    rows = [
        ("CPU", f"{_num(cpu.get('cores'))} cores (min {_num(cpu.get('cores_min'))}, max "
                f"{_num(cpu.get('cores_max'))}), {_pct(cpu.get('utilisation_of_capacity_ratio'))}"
                f" of capacity; throttled {_num(cpu.get('throttled_seconds'), '{:.3f}')} s"),
        ("effective CPUs", f"{format_cpulist(effective.get('cpus') or [])} "
                           f"({effective.get('count')} logical, {effective.get('physical_cores')}"
                           f" physical, capacity {effective.get('capacity_cores')} cores)"),
        ("memory", f"RSS {_bytes(memory.get('rss_bytes'))}, peak "
                   f"{_bytes(memory.get('peak_rss_bytes'))}, swap {_bytes(memory.get('swap_bytes'))}"
                   f"; headroom to {memory.get('limit_kind') or 'limit'} "
                   f"{_bytes(memory.get('headroom_bytes'))}; time to limit "
                   f"{_duration(memory.get('seconds_to_limit'))}"),
        ("I/O", f"storage read {_bytes(io.get('read_bytes_per_second'))}/s, write "
                f"{_bytes(io.get('write_bytes_per_second'))}/s; syscalls read "
                f"{_bytes(io.get('rchar_per_second'))}/s, write "
                f"{_bytes(io.get('wchar_per_second'))}/s"),
        ("threading", f"recommended {settings.get('recommended_threads')} threads (85% of "
                      f"{settings.get('usable_physical_cores')} usable physical cores); "
                      + "; ".join(settings.get("advice") or [])),
    ]
    environment = target.get("environment")
    if environment:
        rows.append(("environment", ", ".join(f"{k}={v}" for k, v in sorted(environment.items()))))
    return ("<h2>Target</h2><table>" + "".join(
        f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows) + "</table>")


def _finding_stacks(finding: dict) -> str:
    """The Python stacks a `capture: stack` finding cites (py-spy)."""
    threads = (finding.get("stacks") or {}).get("threads") or []
    if not threads:
        return ""
    return ('<ul class="evidence">' + "".join(
        f'<li>stack of thread {_e(t.get("tid"))} {_e(t.get("name") or "")} ({_e(t.get("why"))},'
        f' GIL {_pct(t.get("gil_ratio"))}): <code>'
        + _stack(t.get("frames") or []) + "</code></li>"
        for t in threads[:4]) + "</ul>")


def _stack(frames: list) -> str:
    return " &larr; ".join(_e(frame) for frame in user_frames(frames)[:STACK_FRAMES])


def _thread_row(row: dict) -> str:
    python = (row.get("python") or {}).get("top_frame") or ""
    return (f'<tr><td class="num">{_e(row.get("tid"))}</td><td class="mono">{_e(row.get("name"))}'
            f'</td><td>{_e(row.get("state"))}</td><td class="num">{_pct(row.get("cpu_ratio"))}</td>'
            f'<td class="num">{_num(row.get("run_queue_wait_seconds"), "{:.3f}")}</td>'
            f'<td class="num">{_pct(row.get("run_queue_wait_ratio"))}</td>'
            f'<td class="num">{_e(row.get("last_cpu"))}</td><td>{_e(row.get("wchan") or "")}'
            f'</td><td class="mono">{_e(python)}</td></tr>')


THREAD_HEAD = ("<tr><th>tid</th><th>name</th><th>state</th><th>CPU</th><th>rq wait s</th>"
               "<th>wait %</th><th>CPU#</th><th>wchan</th><th>Python frame</th></tr>")


def _python_stacks(report: dict) -> str:
    python = report.get("python")
    if not python:
        return ""
    if python.get("status") != "ok":
        return (f"<h2>Python stacks (py-spy)</h2><p>Unavailable: {_e(python.get('error'))}"
                + (f"<br><b>Fix:</b> {_e(python['hint'])}" if python.get("hint") else "")
                + "</p>")
    holders = ", ".join(f"{_e(h.get('name'))} {_pct(h.get('gil_ratio'))}"
                        for h in (python.get("gil_holders") or [])[:6])
    rows = "".join(
        f'<tr><td class="num">{_e(t.get("tid"))}</td><td class="mono">{_e(t.get("name"))}</td>'
        f'<td class="num">{_pct(t.get("cpu_ratio"))}</td>'
        f'<td class="num">{_pct(t.get("active_ratio"))}</td>'
        f'<td class="num">{_pct(t.get("gil_ratio"))}</td><td class="mono">'
        + "<br>".join(f"{_pct(stack.get('share'))} " + _stack(stack.get("frames") or [])
                      for stack in (t.get("top_stacks") or [])[:2])
        + "</td></tr>" for t in (python.get("threads") or [])[:MAX_THREAD_ROWS])
    return (f"<h2>Python stacks (py-spy)</h2><p>{_e(python.get('samples'))} non-blocking samples;"
            f" {_e(python.get('python_threads'))} Python threads, "
            f"{_e(python.get('active_threads'))} active; GIL held "
            f"{_pct(python.get('gil_held_ratio'))} of the samples"
            + (f" (by {holders})" if holders else "") + "</p>"
            "<table><tr><th>tid</th><th>name</th><th>CPU</th><th>active</th><th>GIL</th>"
            f"<th>top stacks (innermost first)</th></tr>{rows}</table>")


def _thread_tables(report: dict) -> str:
    threads = report.get("threads") or {}
    if not threads:
        return ""
    out = [f"<h2>Threads</h2><p>{_e(threads.get('listed'))} threads, {_e(threads.get('busy'))}"
           f" busy; runnable but waiting {_pct(threads.get('runnable_waiting_ratio'))} of "
           f"runnable time; D state {_pct(threads.get('d_state_ratio'))}</p>"]
    for table in thread_tables(threads):
        out.append(f"<h3>{escape(table.title[:1].upper() + table.title[1:])}</h3><table>"
                   f"{THREAD_HEAD}" + "".join(_thread_row(r) for r in table.rows) + "</table>")
    blocked = threads.get("blocked") or []
    if blocked:
        out.append("<h3>Seen in D state</h3><table><tr><th>tid</th><th>name</th><th>wchan</th>"
                   "<th>samples</th></tr>" + "".join(
                       f"<tr><td>{_e(b.get('tid'))}</td><td>{_e(b.get('name'))}</td>"
                       f"<td>{_e(b.get('wchan'))}</td><td>{_e(b.get('d_state_samples'))}</td></tr>"
                       for b in blocked) + "</table>")
    every = threads.get("all") or []
    if every:
        shown = every[:MAX_THREAD_ROWS]
        rest = f" (first {len(shown)}; all in the JSON report)" if len(every) > len(shown) else ""
        out.append(f"<details><summary>All {len(every)} threads{rest}</summary><table>"
                   f"{THREAD_HEAD}{''.join(_thread_row(r) for r in shown)}</table></details>")
    return "".join(out)


def _collectors(report: dict) -> str:
    rows = []
    for name, entry in (report.get("collectors") or {}).items():
        problem = "; ".join(filter(None, [entry.get("error"), entry.get("hint") and
                                          f"fix: {entry['hint']}"]))
        unavailable = "; ".join(f"{k}: {v}" for k, v in (entry.get("unavailable") or {}).items())
        rows.append(f"<tr><td>{_e(name)}</td><td>{_e(entry.get('status'))}</td>"
                    f"<td>{_e(problem)}</td><td>{_e(unavailable)}</td></tr>")
    if not rows:
        return ""
    return ("<h2>Collectors</h2><table><tr><th>source</th><th>status</th><th>error</th>"
            "<th>unavailable</th></tr>" + "".join(rows) + "</table>")
