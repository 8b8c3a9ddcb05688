"""The Grafana dashboards in dashboards/: their structure, then every panel query against a
real stack (three dsmon agents watching spawned processes, Prometheus with the repo's rules).

Structure: valid JSON, schemaVersion 39, stable uids, unique panel ids, a `datasource`
variable used by every panel and target, `instance`/`target`/`gpu` variables from
label_values() (no hard-coded instance), every variable used, Grafana core panel types, the
"GPUs" row last and the only place with GPU queries, every dsmon_* metric exported by the agent
and every dsmon:* series recorded by rules/prometheus/dsmon-alerts.yml, and every query parsed
by promtool.

Live: every panel's every query, GPU row included, with the variables resolved as Grafana
would (the variables' own label_values() queries against Prometheus), through
/api/v1/query_range over the last 20 s, must return data. Conditions the panels need are
created, not skipped: a process growing slowly inside a memory cgroup with a limit (memory
limit, headroom, time to OOM, oom-risk-warning), a process started with OMP_NUM_THREADS=8 on
this 2-core machine (thread-oversubscription), so the findings panels have rows, and the agent
of the host dashboard answering NVML from a recording of a real 2x H200 host
(tests/fixtures/gpu/h200-2gpu.json), so the GPU panels have data. One panel may be empty, with
its reason checked rather than assumed (ALLOWED_EMPTY): no process here holds GPU memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import pytest
import yaml

from tests.helpers.prometheus_stack import JOB, RULES_FILE, PrometheusStack, missing_binaries
from tests.helpers.spawn import REPO, workload

DASHBOARD_DIR = REPO / "dashboards"
FILES = {"dsmon-host": DASHBOARD_DIR / "dsmon-host.json",
         "dsmon-fleet": DASHBOARD_DIR / "dsmon-fleet.json"}
GPU_ROW_TITLE = "GPUs"
GPU_RECORDING = REPO / "tests" / "fixtures" / "gpu" / "h200-2gpu.json"
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
MIB = 1 << 20

# Grafana 10/11 core panel plugins (no external plugin needed to import the dashboards).
CORE_PANEL_TYPES = {
    "row", "timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "text",
    "piechart", "state-timeline", "status-history", "histogram", "barchart", "xychart",
    "trend", "candlestick", "logs", "nodeGraph", "traces", "flamegraph", "geomap", "canvas",
    "news", "dashlist", "alertlist", "annolist", "datagrid", "welcome", "gettingstarted",
}

# What Grafana substitutes for its built-in interval variables in this test: a 1 s scrape
# interval with the Prometheus data source's default 15 s "scrape interval" setting gives
# $__rate_interval = 1m; the live window is 20 s.
BUILTINS = {"$__rate_interval": "1m", "${__rate_interval}": "1m", "$__interval": "5s",
            "${__interval}": "5s", "$__range": "20s", "${__range}": "20s", "$__range_s": "20",
            "$__range_ms": "20000"}
LIVE_WINDOW_S = 20.0

# The only panels allowed to return no data in the live test, each with its reason; the test
# checks the reason holds whenever the panel is empty (dashboards/README.md documents them).
ALLOWED_EMPTY = {
    ("dsmon-host", "Target GPU memory per GPU"):
        "no process on this machine holds GPU memory: the agent replays NVML from a recording "
        "whose process lists name only the recorded host's own pid (a torch workload there), "
        "which is none of the targets here, and dsmon_process_gpu_memory_bytes is written only "
        "for targets NVML lists (never a made-up 0). Making a target here impersonate that pid "
        "would show GPU memory no process here holds.",
}


# -- loading --------------------------------------------------------------------------------

def load(uid: str) -> dict:
    return json.loads(FILES[uid].read_text(encoding="utf-8"))


def _try_load(uid: str) -> dict | None:
    try:
        return load(uid)
    except (OSError, ValueError):
        return None


def walk(panels: list) -> list[tuple[dict, dict | None]]:
    """(panel, the row it is nested in) for every panel, rows and collapsed rows' panels."""
    found = []
    for panel in panels:
        found.append((panel, None))
        for inner in panel.get("panels", []) or []:
            found.append((inner, panel))
    return found


def gpu_row_panels(dashboard: dict) -> set[int]:
    """Ids of the panels inside the GPU row (collapsed: nested in the row; expanded: the
    panels after the row up to the next row)."""
    ids: set[int] = set()
    in_row = False
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            in_row = panel.get("title") == GPU_ROW_TITLE
            if in_row:
                ids.update(p["id"] for p in panel.get("panels", []) or [])
            continue
        if in_row:
            ids.add(panel["id"])
    return ids


def live_panels(uid: str) -> list[tuple[str, dict]]:
    """(test id, panel) of every panel with queries, the GPU row's included."""
    dashboard = _try_load(uid)
    if dashboard is None:
        return []
    out = []
    for panel, _row in walk(dashboard["panels"]):
        if panel.get("type") == "row" or not panel.get("targets"):
            continue
        slug = re.sub(r"[^a-z0-9]+", "-", panel.get("title", "").lower()).strip("-")
        out.append((f"{uid}:{panel['id']}:{slug}", panel))
    return out


def variable_names(dashboard: dict) -> list[str]:
    return [v["name"] for v in dashboard["templating"]["list"]]


def variable(dashboard: dict, name: str) -> dict:
    return next(v for v in dashboard["templating"]["list"] if v["name"] == name)


def variable_query(var: dict) -> str:
    query = var.get("query")
    return query.get("query", "") if isinstance(query, dict) else (query or "")


def uses(text: str, name: str) -> bool:
    return bool(re.search(r"\$\{" + name + r"(:[^}]*)?\}|\$" + name + r"\b|\[\[" + name + r"\]\]",
                          text))


def all_exprs(dashboard: dict, include_gpu_row: bool = True) -> list[str]:
    skipped = set() if include_gpu_row else gpu_row_panels(dashboard)
    return [target["expr"] for panel, _ in walk(dashboard["panels"])
            if panel["id"] not in skipped for target in panel.get("targets", []) or []]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's interpolation: built-ins and dashboard variables (longest names first)."""
    for key in sorted(BUILTINS, key=len, reverse=True):
        expr = expr.replace(key, BUILTINS[key])
    for name in sorted(values, key=len, reverse=True):
        expr = re.sub(r"\$\{" + name + r"\}|\$" + name + r"\b|\[\[" + name + r"\]\]",
                      lambda _m, value=values[name]: value, expr)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def regex_value(values: list[str]) -> str:
    """A multi-value variable as Grafana writes it into a PromQL regex matcher: (a|b), each
    value's regex metacharacters escaped (a backslash doubled inside the PromQL string)."""
    escaped = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", value) for value in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


# -- structure ------------------------------------------------------------------------------

@pytest.mark.parametrize("uid", sorted(FILES))
def test_valid_json_identity_and_schema(uid):
    dashboard = load(uid)                                # raises on invalid JSON
    assert dashboard["uid"] == uid
    assert dashboard["schemaVersion"] == 39
    assert dashboard.get("id") is None                   # importable into any Grafana
    assert dashboard["title"] and dashboard["panels"]
    assert "dsmon" in dashboard.get("tags", [])
    assert isinstance(dashboard["templating"]["list"], list)


def test_unique_panel_ids_and_uids():
    uids = [load(uid)["uid"] for uid in FILES]
    assert len(set(uids)) == len(uids)
    for uid in FILES:
        ids = [panel["id"] for panel, _ in walk(load(uid)["panels"])]
        assert all(isinstance(i, int) for i in ids)
        duplicates = {i for i in ids if ids.count(i) > 1}
        assert not duplicates, f"{uid}: duplicate panel ids {duplicates}"


@pytest.mark.parametrize("uid", sorted(FILES))
def test_datasource_variable_used_by_every_panel_and_target(uid):
    dashboard = load(uid)
    source = variable(dashboard, "datasource")
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    for panel, _ in walk(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        if panel["type"] != "text" or "datasource" in panel:
            assert panel.get("datasource") == DATASOURCE_REF, (uid, panel["title"])
        for target in panel.get("targets", []) or []:
            assert target.get("datasource") == DATASOURCE_REF, (uid, panel["title"], target)
            assert target.get("expr", "").strip(), (uid, panel["title"], target)
        refs = [t["refId"] for t in panel.get("targets", []) or []]
        assert len(refs) == len(set(refs)), (uid, panel["title"], refs)
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE_REF, var["name"]


@pytest.mark.parametrize("uid", sorted(FILES))
def test_instance_and_target_variables_come_from_label_values(uid):
    dashboard = load(uid)
    for name in ("instance", "target"):
        var = variable(dashboard, name)
        assert var["type"] == "query"
        query = variable_query(var)
        assert re.fullmatch(r"label_values\((.+),\s*" + name + r"\)", query), query
        assert var.get("definition", query) == query
    assert uses(variable_query(variable(dashboard, "target")), "instance")   # chained


@pytest.mark.parametrize("uid", sorted(FILES))
def test_every_variable_is_used_and_no_instance_is_hard_coded(uid):
    dashboard = load(uid)
    panels_text = json.dumps(dashboard["panels"])
    for name in variable_names(dashboard):
        assert uses(panels_text, name), f"{uid}: variable {name} is never used by a panel"
    for expr in all_exprs(dashboard):
        for match in re.finditer(r'instance\s*=~?\s*"([^"]*)"', expr):
            assert match.group(1) in ("$instance", "${instance}"), expr
        assert not re.search(r"\b\d{1,3}(\.\d{1,3}){3}\b|:\d{4,5}\b|localhost", expr), expr
        assert not re.search(r'target\s*=~?\s*"(?!\$target|\$\{target\})', expr), expr


@pytest.mark.parametrize("uid", sorted(FILES))
def test_panel_types_are_grafana_core_and_grid_fits(uid):
    for panel, _ in walk(load(uid)["panels"]):
        assert panel["type"] in CORE_PANEL_TYPES, (uid, panel["title"], panel["type"])
        grid = panel["gridPos"]
        assert 0 < grid["w"] <= 24 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, \
            (uid, panel["title"], grid)
        assert panel.get("title"), panel
    titles = [panel["title"] for panel, _ in walk(load(uid)["panels"])]
    assert len(titles) == len(set(titles)), f"{uid}: panel titles repeat"


# What the GPUs row must show (each family queried by at least one of its panels).
GPU_ROW_METRICS = {
    "dsmon_gpus", "dsmon_gpus_max_seen", "dsmon_gpu_memory_used_bytes",
    "dsmon_gpu_memory_total_bytes", "dsmon_gpu_memory_reserved_bytes",
    "dsmon_gpu_utilization_ratio", "dsmon_process_gpu_memory_bytes",
    "dsmon_gpu_temperature_celsius", "dsmon_gpu_power_watts", "dsmon_gpu_power_limit_watts",
    "dsmon_gpu_pcie_link_generation", "dsmon_gpu_pcie_link_width",
}


def test_gpu_row_comes_last_and_is_the_only_place_with_gpu_queries():
    host = load("dsmon-host")
    rows = [p for p in host["panels"] if p["type"] == "row" and p["title"] == GPU_ROW_TITLE]
    assert len(rows) == 1, "the host dashboard needs exactly one GPUs row"
    row = rows[0]
    position = host["panels"].index(row)
    if row["collapsed"]:
        assert position == len(host["panels"]) - 1, "the GPUs row comes last"
    else:
        assert not row.get("panels"), "an expanded row lists its panels after it"
        assert all(p["type"] != "row" for p in host["panels"][position + 1:]), \
            "the GPUs row comes last"
    inside = [p for p, _ in walk(host["panels"]) if p["id"] in gpu_row_panels(host)]
    assert inside, "the GPUs row is empty"
    for panel in inside:                     # every panel queries something: all are tested
        assert panel.get("targets"), panel["title"]
        assert "placeholder" not in panel["title"].lower(), panel["title"]
    queried = {name for panel in inside for target in panel["targets"]
               for name in re.findall(r"\b(dsmon_[a-z0-9_]+)", target["expr"])}
    assert GPU_ROW_METRICS <= {re.sub(r"_total$", "", name) for name in queried}, \
        GPU_ROW_METRICS - queried
    for panel in inside:
        for target in panel["targets"]:
            # counters: rates and increases over $__rate_interval, which follows the zoom
            if re.search(r"\bdsmon_[a-z0-9_]+_total\b", target["expr"]):
                assert uses(target["expr"], "__rate_interval"), target["expr"]
    assert uses(variable_query(variable(host, "gpu")), "instance")
    assert re.fullmatch(r"label_values\(dsmon_gpu_info\{.*\},\s*gpu\)",
                        variable_query(variable(host, "gpu")))
    readme = (DASHBOARD_DIR / "README.md").read_text(encoding="utf-8")
    assert "awaiting the GPU issue" not in readme + json.dumps(host)
    for uid in FILES:
        for expr in all_exprs(load(uid), include_gpu_row=False):
            assert "gpu" not in expr.lower(), (uid, expr)


def test_allowed_empty_panels_exist_and_are_documented():
    readme = (DASHBOARD_DIR / "README.md").read_text(encoding="utf-8")
    for (uid, title), reason in ALLOWED_EMPTY.items():
        assert _panel(uid, title).get("targets"), (uid, title)
        assert f'"{title}"' in readme, f"dashboards/README.md does not explain {title!r}"
        assert reason


def _exported_metric_patterns() -> list[re.Pattern]:
    """The families the agent writes, from its source (counters get _total)."""
    patterns = []
    for source in sorted((REPO / "dsmon" / "agent").glob("*.py")):
        text = source.read_text(encoding="utf-8")
        counters = set(re.findall(r'out\.counter\(\s*f?"(dsmon_[a-z0-9_{}]+)"', text))
        # Every literal family name: direct out.gauge/out.counter calls and the (feature,
        # name, help) tables the renderer loops over into out.gauge.
        for name in set(re.findall(r'f?"(dsmon_[a-z0-9_{}]+)"', text)):
            regex = re.sub(r"\\\{[a-z_]+\\\}", "[a-z_]+", re.escape(name))
            patterns.append(re.compile(regex + ("_total" if name in counters else "") + "$"))
    return patterns


def test_queried_metrics_are_exported_and_recorded():
    patterns = _exported_metric_patterns()
    assert len(patterns) > 30
    recorded = {rule["record"] for group in yaml.safe_load(RULES_FILE.read_text())["groups"]
                for rule in group["rules"] if "record" in rule}
    for uid in FILES:
        for expr in all_exprs(load(uid)):
            for name in re.findall(r"\b(dsmon_[a-z0-9_]+)", expr):
                assert any(p.match(name) for p in patterns), \
                    f"{uid}: {name} is not exported by the agent ({expr})"
            for name in re.findall(r"\b(dsmon:[a-z0-9_:]+)", expr):
                assert name in recorded, f"{uid}: {name} is not a recording rule ({expr})"


def test_every_query_parses(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    rules = []
    for uid in FILES:
        dashboard = load(uid)
        values = {name: "x" for name in variable_names(dashboard)}
        values.update(instance="127.0.0.1:9848", target="srv", gpu="0")
        exprs = all_exprs(dashboard) + [
            variable_query(v).removeprefix("label_values(").rsplit(",", 1)[0]
            for v in dashboard["templating"]["list"] if v["type"] == "query"]
        for index, expr in enumerate(exprs):
            rules.append({"record": f"dashboard_check:{uid.replace('-', '_')}_{index}",
                          "expr": substitute(expr, values)})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr


# -- live -----------------------------------------------------------------------------------

def _skip_reason() -> str | None:
    reason = missing_binaries(alertmanager=False)
    if reason:
        return reason
    from tests.helpers.cgroups import unavailable_reason
    cgroup = unavailable_reason()
    return f"no memory cgroup for the memory-limit panels: {cgroup}" if cgroup else None


class Live:
    def __init__(self, stack: PrometheusStack, values: dict[str, dict[str, str]],
                 instances: list[str], rich: str, rich_pids: dict[str, int]):
        self.stack = stack
        self.values = values          # dashboard uid -> variable -> substituted text
        self.instances = instances
        self.rich = rich              # the instance the host dashboard is checked on
        self.rich_pids = rich_pids    # its targets: label -> pid


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from tests.helpers.cgroups import memory_cgroup
    directory = tmp_path_factory.mktemp("dashboards-stack")
    omp = dict(os.environ, OMP_NUM_THREADS="8")
    # Agent 0: a process growing 0.5 MiB/s in a 256 MiB cgroup (limit, headroom, time to the
    # limit ~8 min: oom-risk-warning) and one running 4 GIL-releasing hashing threads on 2
    # cores (thread-oversubscription: OMP_NUM_THREADS alone is no finding without an OpenMP
    # runtime loaded), answering NVML from the 2x H200 recording (the GPU row).
    # Agents 1 and 2: healthy services.
    with PrometheusStack(directory, agents=3, alertmanager=False) as stack, \
            memory_cgroup(256 * MIB, prefix="dsmon-dash") as group, \
            group.workload("grow", "--rate-mib", "0.5") as grower, \
            workload("threads", "--busy", "4", "--idle", "3", env=omp) as llm, \
            workload("threads", "--busy", "1", "--idle", "3") as svc_b, \
            workload("threads", "--busy", "1", "--idle", "3") as svc_c:
        rich_pids = {"mem": grower.pid, "llm": llm.pid}
        stack.start_agent(0, rich_pids, "--nvml-replay", str(GPU_RECORDING))
        stack.start_agent(1, {"svc-b": svc_b.pid})
        stack.start_agent(2, {"svc-c": svc_c.pid})
        rich = stack.agent_instance(0)
        try:
            stack.wait_until(lambda: len(stack.query(f'up{{job="{JOB}"}} == 1')) == 3, 30,
                             "Prometheus scraping all three agents")
            data_since = time.monotonic()
            stack.wait_until(lambda: len(stack.query(
                f'dsmon_finding_active{{instance="{rich}"}} == 1')) >= 2, 60,
                "thread-oversubscription and oom-risk-warning firing on agent 0")
            stack.wait_until(lambda: stack.query(
                f'dsmon_process_memory_limit_eta_seconds{{instance="{rich}"}}'), 30,
                "a time to the memory limit")
            stack.wait_until(lambda: stack.query(f'dsmon_gpus{{instance="{rich}"}} == 2'), 30,
                             "the replayed GPUs of agent 0")
            remaining = LIVE_WINDOW_S + 2 - (time.monotonic() - data_since)
            if remaining > 0:
                time.sleep(remaining)
            values = _resolve_variables(stack, rich)
        except BaseException:
            print(stack.logs())
            raise
        yield Live(stack, values, [stack.agent_instance(i) for i in range(3)], rich,
                   rich_pids)


def _label_values(stack: PrometheusStack, var: dict, values: dict[str, str]) -> list[str]:
    """Evaluate a label_values(match, label) variable as Grafana does."""
    match = re.fullmatch(r"label_values\((.+),\s*([a-zA-Z_]+)\)", variable_query(var))
    selector = substitute(match.group(1), values)
    return stack.label_values(match.group(2), selector, seconds=120)


def _resolve_variables(stack: PrometheusStack, rich: str) -> dict[str, dict[str, str]]:
    resolved = {}
    host = load("dsmon-host")
    instances = _label_values(stack, variable(host, "instance"), {})
    assert rich in instances, instances
    host_values = {"datasource": "prometheus", "instance": rich}
    targets = _label_values(stack, variable(host, "target"), host_values)
    assert set(targets) == {"mem", "llm"}, targets
    host_values["target"] = regex_value(targets)
    gpus = _label_values(stack, variable(host, "gpu"), host_values)
    assert sorted(gpus) == ["0", "1"], gpus                   # the recording's two H200s
    host_values["gpu"] = regex_value(gpus)
    resolved["dsmon-host"] = host_values
    fleet = load("dsmon-fleet")
    instances = _label_values(stack, variable(fleet, "instance"), {})
    assert set(instances) == {stack.agent_instance(i) for i in range(3)}, instances
    fleet_values = {"datasource": "prometheus", "instance": regex_value(instances)}
    targets = _label_values(stack, variable(fleet, "target"), fleet_values)
    assert set(targets) == {"mem", "llm", "svc-b", "svc-c"}, targets
    fleet_values["target"] = regex_value(targets)
    resolved["dsmon-fleet"] = fleet_values
    return resolved


LIVE_CASES = [pytest.param(uid, panel, id=case) for uid in sorted(FILES)
              for case, panel in live_panels(uid)]


@pytest.mark.slow
@pytest.mark.parametrize("uid,panel", LIVE_CASES)
def test_panel_has_data(live, uid, panel):
    values = live.values[uid]
    for target in panel["targets"]:
        expr = substitute(target["expr"], values)
        series = live.stack.query_range(expr, seconds=LIVE_WINDOW_S, step=2)
        points = sum(len(s["values"]) for s in series)
        if not points and (uid, panel["title"]) in ALLOWED_EMPTY:
            _check_allowed_empty(live, uid, panel["title"])
            continue
        assert series and points, \
            f"{uid} panel {panel['title']!r} query {target['refId']} is empty: {expr}"
        if target.get("instant"):
            now = live.stack.query(expr)
            assert now, f"{uid} panel {panel['title']!r} instant query {target['refId']} " \
                        f"is empty: {expr}"


def _recorded_gpu_pids() -> set[int]:
    recording = json.loads(GPU_RECORDING.read_text(encoding="utf-8"))
    return {process["pid"] for device in recording["devices"]
            for call in ("compute_processes", "graphics_processes")
            for process in device["calls"].get(call, {}).get("value") or []}


def _check_allowed_empty(live: Live, uid: str, title: str) -> None:
    """An allowed-empty panel is empty for its documented reason, not a broken query."""
    assert (uid, title) == ("dsmon-host", "Target GPU memory per GPU"), (uid, title)
    reason = ALLOWED_EMPTY[(uid, title)]
    body = live.stack.agent_metrics(0)
    assert re.search(r"^dsmon_gpus 2(\.0)?$", body, re.M), \
        "the GPU collector is not running, so the emptiness is not the documented one"
    assert "dsmon_process_gpu_memory_bytes{" not in body, reason
    recorded = _recorded_gpu_pids()
    assert recorded and recorded.isdisjoint(live.rich_pids.values()), (recorded, reason)


def _panel(uid: str, title: str) -> dict:
    return next(p for p, _ in walk(load(uid)["panels"]) if p.get("title") == title)


def _instant(live: Live, uid: str, title: str) -> list:
    return live.stack.query(substitute(_panel(uid, title)["targets"][0]["expr"],
                                       live.values[uid]))


@pytest.mark.slow
def test_panel_values_match_the_setup(live):
    """A few panels read what the test set up, not merely something. Retried for up to 10 s:
    on a loaded machine one scrape may time out (up == 0 for a second)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return _check_values(live)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _check_values(live: Live) -> None:
    assert [float(s["value"][1]) for s in _instant(live, "dsmon-fleet",
                                                   "Agents down (should read 0)")] == [0.0]
    assert [float(s["value"][1]) for s in _instant(live, "dsmon-fleet", "Agents up")] == [3.0]
    assert [float(s["value"][1]) for s in _instant(live, "dsmon-fleet",
                                                   "Targets followed")] == [4.0]
    ranked = {s["metric"]["instance"]: float(s["value"][1])
              for s in _instant(live, "dsmon-fleet", "Hosts ranked by active findings")}
    assert set(ranked) == set(live.instances), ranked          # hosts without findings: 0
    assert ranked[live.rich] >= 2, ranked                        # the two findings set up
    findings = {(s["metric"]["target"], s["metric"]["rule_id"])
                for s in _instant(live, "dsmon-host", "Active findings")}
    assert {("llm", "thread-oversubscription"), ("mem", "oom-risk-warning")} <= findings
    limit_query = substitute(_panel("dsmon-host", "Memory vs limit")["targets"][1]["expr"],
                             live.values["dsmon-host"])
    limits = {s["metric"]["target"]: float(s["value"][1]) for s in live.stack.query(limit_query)}
    assert limits.get("mem") == 256 * MIB, limits
    cpus = _instant(live, "dsmon-host", "Per-core CPU busy")
    topology = live.stack.query(f'dsmon_cpu_info{{instance="{live.rich}"}}')
    assert len(cpus) == len(topology) >= 1, (cpus, topology)      # one heatmap row per CPU
    headroom = {s["metric"]["target"]: float(s["value"][1]) for s in
                _instant(live, "dsmon-fleet", "Least memory headroom (share of the limit)")}
    assert set(headroom) == {"mem"} and 0 < headroom["mem"] < 1, headroom
    count_panel = _panel("dsmon-host", "GPU count")
    counts = [[float(s["value"][1]) for s in live.stack.query(
        substitute(t["expr"], live.values["dsmon-host"]))] for t in count_panel["targets"]]
    assert counts == [[2.0], [2.0], [0.0], [0.0]], counts        # now, max seen, missing, lost
    totals = {s["metric"]["gpu"]: float(s["value"][1]) for s in live.stack.query(substitute(
        _panel("dsmon-host", "GPU memory used vs total")["targets"][1]["expr"],
        live.values["dsmon-host"]))}
    assert totals == {"0": 150754820096.0, "1": 150754820096.0}, totals
