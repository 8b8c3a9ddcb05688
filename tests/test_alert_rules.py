"""The Prometheus rules: promtool check and unit tests, runbooks for every alert."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dsmon.alert_rules import DEFAULT_RUNBOOK_BASE

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules" / "prometheus" / "dsmon-alerts.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian prometheus) missing")


@needs_promtool
def test_promtool_check_rules():
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests():
    tests = ROOT / "rules" / "prometheus" / "tests" / "dsmon-alerts.test.yml"
    result = subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True,
                            text=True, cwd=tests.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def alerts():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_alert_has_severity_annotations_and_a_runbook():
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    tested = (ROOT / "rules" / "prometheus" / "tests" / "dsmon-alerts.test.yml").read_text()
    for rule in alerts():
        name = rule["alert"]
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(annotations), name
        assert annotations["runbook_url"] == f"{DEFAULT_RUNBOOK_BASE}{name}.md"
        page = ROOT / "docs" / "runbooks" / f"{name}.md"
        assert page.exists(), page
        assert "## Meaning" in page.read_text() and "## Fixes" in page.read_text()
        assert "severity" in rule.get("labels", {}) or "severity" in rule["expr"] \
            or "dsmon_finding_active" in rule["expr"], name
        assert f"alertname: {name}" in tested, f"{name} has no promtool unit test"


def test_every_finding_rule_is_covered_by_an_alert():
    from dsmon.engine.rules import load_rules
    import re
    expressions = " ".join(rule["expr"] for rule in alerts())
    selectors = re.findall(r'rule_id=~?"([^"]+)"', expressions)
    for rule in load_rules():
        if rule.id == "page-cache-fills-cgroup" or rule.id == "numa-spread":
            continue  # info findings that by design never alert
        assert any(re.fullmatch(pattern, rule.id) for pattern in selectors), rule.id
