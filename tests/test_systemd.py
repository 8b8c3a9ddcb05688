"""The shipped unit: `systemd-analyze verify` passes and its exposure stays <= 2.5."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "dsmon.service"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def unit_for_this_machine(tmp_path) -> Path:
    """The unit with ExecStart pointing at this checkout's dsmon (verify checks it exists)."""
    launcher = tmp_path / "dsmon"
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} -m dsmon \"$@\"\n")
    launcher.chmod(0o755)
    text = UNIT.read_text().replace("/opt/dsmon/bin/dsmon", str(launcher))
    unit = tmp_path / "dsmon.service"
    unit.write_text(text)
    return unit


def test_unit_verifies(tmp_path):
    result = subprocess.run([ANALYZE, "verify", str(unit_for_this_machine(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "dsmon.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_unit_exposure_is_at_most_2_5():
    result = subprocess.run([ANALYZE, "security", "--offline=true", str(UNIT)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for dsmon\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    assert float(match.group(1)) <= 2.5


def test_unit_keeps_proc_whole_and_talks_notify():
    text = "\n".join(line for line in UNIT.read_text().splitlines()
                     if not line.startswith("#"))
    assert "Type=notify" in text and "WatchdogSec=" in text and "NotifyAccess=main" in text
    assert "ProcSubset=pid" not in text and "ProtectProc=invisible" not in text
    assert "CAP_SYS_PTRACE" in text and "Restart=on-failure" in text
