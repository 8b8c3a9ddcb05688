"""A fleet past one Prometheus: three dsmon agents on loopback, scraped by a leaf Prometheus
that remote-writes everything to a central one (Debian's prometheus with
--web.enable-remote-write-receiver, the stand-in for Thanos Receive or Mimir), where the alert
and recording rules run. On the central one only:

- every query of dashboards/dsmon-fleet.json, its variables resolved as Grafana would, returns
  data, with the `instance` labels of the leaf's scrape (the agents' addresses);
- the alerts evaluate there: DsmonCPUContention pending for the over-subscribed target (its
  finding fired on the agent), DsmonSeriesDropped firing for the agent run with a tiny series
  cap, DsmonAgentDown pending for the configured agent that never started;
- the findings families exist for every loaded rule of every target, at 0 where nothing can
  fire (the GPU rules: no GPU here), so increase() on the central one counts the first fire of
  thread-oversubscription (a counter born at 1 would show no increase).

Agent 0 watches a process running 4 GIL-releasing hashing threads on this 2-core machine
(thread-oversubscription fires within seconds) and one inside a memory cgroup with a limit
(the headroom-share panel); agent 1 a healthy thread pool; agent 2 runs host-only with
--max-series 20; slot 3 is configured but never started.
"""

from __future__ import annotations

import os
import time

import pytest

from dsmon.engine.rules import load_rules
from tests.helpers.cgroups import memory_cgroup, unavailable_reason
from tests.helpers.prometheus_stack import JOB, RULES_FILE, PrometheusStack, missing_binaries
from tests.helpers.spawn import workload
from tests.test_dashboards import (_label_values, all_exprs, load, regex_value, substitute,
                                   variable)

MIB = 1 << 20
_MISSING = missing_binaries(alertmanager=False)
_CGROUP = unavailable_reason()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_MISSING is not None, reason=str(_MISSING)),
    pytest.mark.skipif(_CGROUP is not None, reason=f"no memory cgroup: {_CGROUP}"),
]


def remote_write_to(central: PrometheusStack) -> str:
    return ("remote_write:\n"
            f"  - url: {central.prometheus_url}/api/v1/write\n"
            "    queue_config: {batch_send_deadline: 1s, min_backoff: 100ms}\n")


def _values(series: list) -> dict:
    return {tuple(sorted(s["metric"].items())): float(s["value"][1]) for s in series}


def _alert(stack: PrometheusStack, name: str, **labels) -> dict | None:
    return next((a for a in stack.prometheus_alerts() if a["labels"].get("alertname") == name
                 and all(a["labels"].get(k) == v for k, v in labels.items())), None)


def test_fleet_dashboard_and_alerts_on_a_central_prometheus(tmp_path, record_property):
    started = time.monotonic()
    # The target's rules (the host's GPU-health rules start at 0 only once there are GPUs).
    rules = [rule for rule in load_rules() if rule.subject == "target"]
    omp = dict(os.environ, OMP_NUM_THREADS="8")
    with PrometheusStack(tmp_path / "central", agents=0, alertmanager=False,
                         rules_file=RULES_FILE,
                         extra_flags=("--web.enable-remote-write-receiver",)) as central:
        with PrometheusStack(tmp_path / "leaf", agents=4, alertmanager=False, rules_file=None,
                             extra_config=remote_write_to(central)) as leaf, \
                memory_cgroup(256 * MIB, prefix="dsmon-fleet") as group, \
                group.workload("grow", "--rate-mib", "0.5") as grower, \
                workload("threads", "--busy", "4", "--idle", "3", env=omp) as llm, \
                workload("threads", "--busy", "1", "--idle", "3") as svc:
            try:
                leaf.start_agent(0, {"llm": llm.pid, "mem": grower.pid})
                leaf.start_agent(1, {"svc": svc.pid})
                leaf.start_agent(2, {}, "--max-series", "20")
                agents = [leaf.agent_instance(i) for i in range(3)]
                down = leaf.agent_instance(3)
                _check_central(central, agents, down, rules, record_property, started)
            except BaseException:
                print(leaf.logs(), central.logs())
                raise


def _check_central(central, agents, down, rules, record_property, started):
    llm_instance = agents[0]
    central.wait_until(lambda: _alert(central, "DsmonCPUContention", instance=llm_instance,
                                      target="llm"), 45, "DsmonCPUContention on the central one")
    central.wait_until(lambda: _firing(central, "DsmonSeriesDropped", agents[2]), 30,
                       "DsmonSeriesDropped firing for the capped agent")
    agent_down = central.wait_until(lambda: _alert(central, "DsmonAgentDown", instance=down),
                                    30, "DsmonAgentDown pending for the agent never started")
    assert agent_down["state"] == "pending"          # for: 2m
    # The first fire counted: the counter was exported at 0 before the finding fired.
    central.wait_until(lambda: central.query(
        'increase(dsmon_findings_fired_total{rule_id="thread-oversubscription",'
        f'target="llm",instance="{llm_instance}"}}[1m]) > 0.5'), 30,
        "increase() of the first fire on the central one")
    record_property("fleet_ready_s", round(time.monotonic() - started, 1))
    # Zero-initialised: both families for every loaded rule of every target, 0 where nothing
    # fired (the healthy target: all of them).
    for family in ("dsmon_findings_fired_total", "dsmon_finding_active"):
        per_target = _values(central.query(f"count by (instance, target) ({family})"))
        assert per_target == {
            (("instance", agents[0]), ("target", "llm")): len(rules),
            (("instance", agents[0]), ("target", "mem")): len(rules),
            (("instance", agents[1]), ("target", "svc")): len(rules)}, (family, per_target)
        # No GPU here: the target's GPU rules cannot fire, and read 0 (not absent) on every
        # target; the host's GPU-health rules are not exported at all.
        gpu_rules = [rule for rule in rules if rule.id.startswith("gpu-")]
        gpu = _values(central.query(f'{family}{{rule_id=~"gpu-.*"}}'))
        assert gpu_rules and len(gpu) == 3 * len(gpu_rules) and set(gpu.values()) == {0.0}, gpu
        assert not central.query(f'{family}{{target="host"}}')
    _check_fleet_dashboard(central, agents, down)


def _firing(stack: PrometheusStack, name: str, instance: str) -> dict | None:
    alert = _alert(stack, name, instance=instance)
    return alert if alert is not None and alert["state"] == "firing" else None


def _check_fleet_dashboard(central: PrometheusStack, agents: list[str], down: str) -> None:
    fleet = load("dsmon-fleet")
    instances = _label_values(central, variable(fleet, "instance"), {})
    assert sorted(instances) == sorted(agents + [down]), instances
    values = {"datasource": "prometheus", "instance": regex_value(instances)}
    targets = _label_values(central, variable(fleet, "target"), values)
    assert sorted(targets) == ["llm", "mem", "svc"], targets
    values["target"] = regex_value(targets)
    # Recording rules over 1 m windows need two remote-written samples; retry briefly.
    deadline = time.monotonic() + 20
    while True:
        empty = [expr for expr in all_exprs(fleet)
                 if not central.query(substitute(expr, values))]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not empty, f"fleet dashboard queries empty on the central Prometheus: {empty}"
    for expr in all_exprs(fleet):
        for series in central.query(substitute(expr, values)):
            instance = series["metric"].get("instance")
            assert instance is None or instance in agents + [down], (expr, series["metric"])
            if "job" in series["metric"]:
                assert series["metric"]["job"] == JOB
    # Retried for up to 15 s: on a loaded machine one scrape may time out (up == 0 once).
    deadline = time.monotonic() + 15
    while True:
        try:
            return _check_fleet_values(central, fleet, values, agents, down)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _check_fleet_values(central, fleet, values, agents, down) -> None:
    by_title = {panel["title"]: panel for panel in fleet["panels"]}

    def instant(title: str) -> list:
        return central.query(substitute(by_title[title]["targets"][0]["expr"], values))

    assert [float(s["value"][1]) for s in instant("Agents down (should read 0)")] == [1.0]
    assert [float(s["value"][1]) for s in instant("Agents up")] == [3.0]
    assert [float(s["value"][1]) for s in instant("Targets followed")] == [3.0]
    ranked = {s["metric"]["instance"]: float(s["value"][1])
              for s in instant("Hosts ranked by active findings")}
    assert set(ranked) == set(agents + [down]), ranked       # hosts without findings: 0
    assert ranked[agents[0]] >= 1 and ranked[down] == 0, ranked
