"""Alerting end to end: dsmon agents -> Prometheus (Debian's package, the repo's alert rules,
scrape and evaluation every 1 s) -> Alertmanager (Debian's package), all on loopback.

Scenario: a process grows its memory 20 MiB/s inside a 400 MiB memory cgroup (ground truth:
it reaches the limit ~19 s after it starts). The agent's oom-risk rule fires within a few
samples (window 10 s, `for: 3s`), Prometheus's DsmonOOMRisk has `for: 0s`, so the alert must
reach Alertmanager's /api/v2/alerts within 30 s of the growth starting; the time to each hop
(agent finding, Prometheus alert, Alertmanager) is measured, printed and recorded as junit
properties. Two other agents watch healthy thread pools: no alert above info severity carries
their instance or target.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.helpers.cgroups import memory_cgroup, unavailable_reason
from tests.helpers.prometheus_stack import JOB, PrometheusStack, missing_binaries
from tests.helpers.spawn import workload

MIB = 1 << 20
LIMIT_BYTES = 400 * MIB
GROWTH_MIB_PER_S = 20
ALERT_DEADLINE_S = 30.0

_MISSING = missing_binaries(alertmanager=True)
_CGROUP = unavailable_reason()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_MISSING is not None, reason=f"Prometheus/Alertmanager {_MISSING}"),
    pytest.mark.skipif(_CGROUP is not None, reason=f"no memory cgroup: {_CGROUP}"),
]

OOM_FINDING = re.compile(r'^dsmon_finding_active\{[^}]*rule_id="oom-risk-[a-z]+"[^}]*'
                         r'target="grower"[^}]*\} 1(\.0)?$', re.M)


def _report(record_property, name: str, value) -> None:
    record_property(name, value)
    print(f"[measure] {name} = {value}")


def _am_alerts(stack: PrometheusStack, name: str, **labels) -> list[dict]:
    return [alert for alert in stack.alertmanager_alerts()
            if alert["labels"].get("alertname") == name
            and all(alert["labels"].get(k) == v for k, v in labels.items())]


def _regex(value: str) -> str:
    """A literal inside a PromQL regex matcher: metacharacters escaped, backslash doubled."""
    return re.escape(value).replace("\\", "\\\\")


def test_oom_risk_reaches_alertmanager_and_healthy_agents_stay_quiet(tmp_path, record_property):
    stack_started = time.monotonic()
    with PrometheusStack(tmp_path, agents=3, alertmanager=True) as stack, \
            workload("threads", "--busy", "1", "--idle", "3") as healthy_b, \
            workload("threads", "--busy", "1", "--idle", "3") as healthy_c, \
            memory_cgroup(LIMIT_BYTES, prefix="dsmon-alert") as group:
        try:
            stack.start_agent(1, {"healthy-b": healthy_b.pid})
            stack.start_agent(2, {"healthy-c": healthy_c.pid})
            healthy = {stack.agent_instance(1): "healthy-b", stack.agent_instance(2): "healthy-c"}
            oom_instance = stack.agent_instance(0)
            # Prometheus scrapes the healthy agents, has loaded the rules and found the
            # Alertmanager before the growth starts; agent 0's port is configured but down.
            stack.wait_until(lambda: {s["metric"]["instance"] for s in stack.query(
                f'up{{job="{JOB}"}} == 1')} == set(healthy), 30, "the healthy agents scraped")
            stack.wait_until(lambda: any(
                rule.get("name") == "DsmonOOMRisk" for group_ in stack.api("/api/v1/rules")[
                    "groups"] for rule in group_["rules"]), 15, "the alert rules loaded")
            stack.wait_until(lambda: stack.api("/api/v1/alertmanagers")["activeAlertmanagers"],
                             15, "Prometheus to know its Alertmanager")
            assert not _am_alerts(stack, "DsmonOOMRisk"), stack.alertmanager_alerts()

            with group.workload("grow", "--rate-mib", str(GROWTH_MIB_PER_S)) as grower:
                started = time.monotonic()            # "ready": the growth starts now
                stack.start_agent(0, {"grower": grower.pid})
                agent_ready = time.monotonic() - started
                # First time each hop is seen, polled every ~0.2 s (the later hops are polled
                # later in a round, so a later hop seen first also dates the earlier ones).
                hops: dict[str, float] = {}
                am_alert = None
                while time.monotonic() - started < ALERT_DEADLINE_S:
                    if "agent" not in hops and OOM_FINDING.search(stack.agent_metrics(0)):
                        hops["agent"] = time.monotonic() - started
                    if "prometheus" not in hops and any(
                            a["labels"].get("alertname") == "DsmonOOMRisk"
                            and a["labels"].get("target") == "grower" and a["state"] == "firing"
                            for a in stack.prometheus_alerts()):
                        hops["prometheus"] = time.monotonic() - started
                        hops.setdefault("agent", hops["prometheus"])
                    found = _am_alerts(stack, "DsmonOOMRisk", target="grower")
                    if found:
                        hops["alertmanager"] = time.monotonic() - started
                        for earlier in ("agent", "prometheus"):
                            hops.setdefault(earlier, hops["alertmanager"])
                        am_alert = found[0]
                        break
                    time.sleep(0.2)
                usage_at_alert = group.usage_bytes() if grower.poll() is None else None
                _report(record_property, "agent_ready_after_growth_start_s", round(agent_ready, 2))
                for hop in ("agent", "prometheus", "alertmanager"):
                    _report(record_property, f"oom_risk_{hop}_s",
                            round(hops[hop], 2) if hop in hops else None)
                if usage_at_alert is not None:
                    _report(record_property, "cgroup_usage_at_alert_mib",
                            round(usage_at_alert / MIB, 1))
                assert am_alert is not None, (
                    f"DsmonOOMRisk did not reach Alertmanager within {ALERT_DEADLINE_S} s of the "
                    f"growth starting; hops seen: {hops}; Prometheus alerts: "
                    f"{stack.prometheus_alerts()}")
                # The alert is the agent's finding, with its routing labels and annotations.
                labels = am_alert["labels"]
                assert labels["instance"] == oom_instance
                assert labels["severity"] in ("warning", "critical"), labels
                assert labels["team"] == "inference"
                assert am_alert["status"]["state"] in ("active", "suppressed")
                assert "grower" in am_alert["annotations"]["summary"]
                assert am_alert["annotations"]["runbook_url"].endswith("DsmonOOMRisk.md")
                # Prometheus's ALERTS series shows it too: the query form used for the healthy
                # agents below does see a firing alert.
                own = _regex(oom_instance)
                assert stack.query(f'ALERTS{{alertname="DsmonOOMRisk",alertstate="firing",'
                                   f'instance=~"{own}"}}')

            # Healthy agents: nothing above info severity names their instance or target, in
            # Alertmanager now (a few evaluations after the OOM alert) and in Prometheus's
            # firing alerts at any time since the stack started.
            time.sleep(3)
            for alert in stack.alertmanager_alerts():
                named = alert["labels"].get("instance") in healthy or \
                    alert["labels"].get("target") in healthy.values()
                assert not named or alert["labels"].get("severity") == "info", alert["labels"]
            pattern = "|".join(_regex(instance) for instance in healthy)
            since = int(time.monotonic() - stack_started) + 2
            loud = stack.query(f'count_over_time(ALERTS{{alertstate="firing",severity!="info",'
                               f'instance=~"{pattern}"}}[{since}s])')
            assert loud == [], loud
        except BaseException:
            print(stack.logs())
            raise
