"""The unit: `dsmon install-service` into a temporary root, then `systemd-analyze verify` and
`systemd-analyze security --offline=true` (exposure <= 2.5) on what it wrote, with and without
the remote-scrape drop-in. (install-service from a built wheel, without the source tree:
tests/test_deploy.py, on the wheel built from the Containerfile's files.)"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.spawn import REPO

UNIT = REPO / "systemd" / "dsmon.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
DSMON = Path(sys.executable).parent / "dsmon"          # the venv's console script


def install(root: Path, *args: str, env: dict | None = None, executable: Path = DSMON):
    return subprocess.run([sys.executable, "-m", "dsmon", "install-service", "--root",
                           str(root), "--executable", str(executable), *args],
                          capture_output=True, text=True, timeout=60, env=env)


def installed_unit(root: Path) -> Path:
    return root / "etc" / "systemd" / "system" / "dsmon.service"


def verify(unit: Path) -> None:
    """verify loads the unit and its drop-in directory beside it; a bad line is reported as
    a warning naming the file, with exit status 0, so the output is checked too."""
    result = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "dsmon.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def exposure(root: Path) -> float:
    result = subprocess.run([ANALYZE, "security", "--offline=true", f"--root={root}",
                             "dsmon.service"], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for dsmon\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    return float(match.group(1))


def _directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


@needs_analyze
def test_installed_unit_verifies_and_keeps_exposure_at_most_2_5(tmp_path):
    if not DSMON.is_file():
        pytest.skip(f"no dsmon console script at {DSMON} (pip install -e . first)")
    result = install(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    unit = installed_unit(tmp_path)
    text = unit.read_text()
    assert f"ExecStart={DSMON} agent --config /etc/dsmon/dsmon.toml" in _directives(text)
    documentation = re.search(r"^Documentation=file:(\S+)$", text, re.M).group(1)
    assert Path(documentation).is_file() and Path(documentation).parent.name == "runbooks"
    # The rest of the unit is the shipped one, line for line.
    shipped = [line for line in _directives(UNIT.read_text())
               if not line.startswith(("ExecStart=", "Documentation="))]
    assert [line for line in _directives(text)
            if not line.startswith(("ExecStart=", "Documentation="))] == shipped
    verify(unit)
    assert exposure(tmp_path) <= 2.5
    config = tmp_path / "etc" / "dsmon" / "dsmon.toml"
    assert config.read_text() == (REPO / "systemd" / "dsmon.toml.example").read_text()
    state = tmp_path / "var" / "lib" / "private" / "dsmon"
    assert state.is_dir() and stat.S_IMODE(state.parent.stat().st_mode) == 0o700
    assert not (unit.parent / "dsmon.service.d").exists()     # localhost only by default
    # The installed config is one the agent accepts.
    check = subprocess.run([sys.executable, "-c", "from dsmon.agent.config import load_config;"
                            f"load_config({str(config)!r}, {{}})"], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stderr


@needs_analyze
def test_remote_scraping_is_one_change_and_keeps_exposure(tmp_path):
    if not DSMON.is_file():
        pytest.skip(f"no dsmon console script at {DSMON}")
    result = install(tmp_path, "--listen", "0.0.0.0:9848", "--web-config",
                     "/etc/dsmon/web-config.yml", "--allow-from", "10.20.0.0/16",
                     "--allow-from", "192.0.2.7")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stderr, result.stderr
    drop_in = installed_unit(tmp_path).parent / "dsmon.service.d" / "remote-scrape.conf"
    assert _directives(drop_in.read_text()) == [
        "[Service]", "IPAddressAllow=10.20.0.0/16", "IPAddressAllow=192.0.2.7/32"]
    config = (tmp_path / "etc" / "dsmon" / "dsmon.toml").read_text()
    assert 'listen = "0.0.0.0:9848"' in config
    assert 'web_config = "/etc/dsmon/web-config.yml"' in config
    verify(installed_unit(tmp_path))                 # the drop-in's lines are parsed too
    assert exposure(tmp_path) <= 2.5
    # Installing again keeps the operator's config and, without --allow-from, drops the
    # drop-in: back to localhost only.
    config_path = tmp_path / "etc" / "dsmon" / "dsmon.toml"
    config_path.write_text(config + "\n# edited by the operator\n")
    again = install(tmp_path)
    assert again.returncode == 0, again.stderr
    assert "edited by the operator" in config_path.read_text() and "kept" in again.stdout
    assert not drop_in.exists()


def test_bad_input_is_one_line_with_the_fix(tmp_path):
    cases = [(("--allow-from", "10.0.0.0/33"), "is not an IP address or CIDR prefix"),
             (("--listen", "9848"), "must be HOST:PORT"),
             ((), "no such file")]
    for args, expected in cases:
        executable = tmp_path / "missing" / "dsmon" if not args else DSMON
        result = install(tmp_path / "root", *args, executable=executable)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr
    blocked = tmp_path / "file"
    blocked.write_text("")                           # a file where a directory must go
    result = install(blocked / "root")
    assert result.returncode == 2 and "cannot write" in result.stderr, result.stderr


def test_unit_keeps_proc_whole_and_talks_notify():
    text = "\n".join(_directives(UNIT.read_text()))
    assert "Type=notify" in text and "WatchdogSec=" in text and "NotifyAccess=main" in text
    assert "ProcSubset=pid" not in text and "ProtectProc=invisible" not in text
    assert "CAP_SYS_PTRACE" in text and "Restart=on-failure" in text
    assert "IPAddressAllow=localhost" in text      # remote scrapers come from the drop-in
