"""Runbook links: absolute, under a base URL rendered into the rules
(`python3 -m dsmon.alert_rules --runbook-base-url BASE`), each to a page that ships with the
package; the rendered file still passes promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from urllib.parse import urlparse

import pytest
import yaml

from dsmon.alert_rules import DEFAULT_RUNBOOK_BASE, render_rules, shipped_rules
from tests.helpers.spawn import REPO

PROMTOOL = shutil.which("promtool")


def runbook_urls(text: str) -> dict[str, str]:
    return {rule["alert"]: rule["annotations"]["runbook_url"]
            for group in yaml.safe_load(text)["groups"] for rule in group["rules"]
            if "alert" in rule}


def test_shipped_links_are_absolute_and_every_page_is_indexed():
    urls = runbook_urls(shipped_rules().read_text())
    index = (REPO / "docs" / "runbooks" / "README.md").read_text()
    for alert, url in urls.items():
        parsed = urlparse(url)
        assert parsed.scheme == "https" and parsed.netloc, url
        assert url == f"{DEFAULT_RUNBOOK_BASE}{alert}.md"
        assert f"]({alert}.md)" in index, f"docs/runbooks/README.md does not list {alert}"


def test_rendered_under_a_base_url_passes_promtool(tmp_path):
    base = "https://wiki.example.org/sre/dsmon"           # no trailing slash: one is added
    out = tmp_path / "dsmon-alerts.yml"
    result = subprocess.run([sys.executable, "-m", "dsmon.alert_rules", "--runbook-base-url",
                             base, "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    urls = runbook_urls(text)
    assert urls and all(url == f"{base}/{alert}.md" for alert, url in urls.items()), urls
    # Only the links changed: same rules, same comments.
    assert re.sub(r"runbook_url: \S+", "", text) == \
        re.sub(r"runbook_url: \S+", "", shipped_rules().read_text())
    if PROMTOOL is None:
        pytest.skip("promtool (Debian prometheus) missing")
    check = subprocess.run([PROMTOOL, "check", "rules", str(out)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_relative_base_is_refused_in_one_line():
    result = subprocess.run([sys.executable, "-m", "dsmon.alert_rules", "--runbook-base-url",
                             "docs/runbooks/"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "absolute http(s) URL" in result.stderr
    with pytest.raises(ValueError):
        render_rules("groups: []\n", "https://wiki.example.org/")   # nothing to render
