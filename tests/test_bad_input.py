"""Every command with bad input: a documented exit code, one line on stderr saying what is wrong
(naming the bad value), nothing on stdout, no traceback, and nothing half-written.

Commands that stop at the edge run in-process (click's runner: milliseconds each); those that
get past it (the agent loads its configuration and rules) and the issue's own examples run as
real `python -m dsmon` processes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import pytest
from click.testing import CliRunner

from dsmon.cli import main
from tests.helpers.faults import wait_until_sampling
from tests.helpers.spawn import REPO, workload

USAGE, NO_TARGET, OUTPUT, RULES, CONFIG = 2, 3, 5, 8, 9


def free_pid() -> int:
    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def assert_one_line_error(code: int, stdout: str, stderr: str, expected: int, names: str,
                          args) -> None:
    assert code == expected, (args, code, stderr)
    assert "Traceback" not in stderr, (args, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, (args, stderr)
    assert names in lines[0], (args, names, lines[0])
    assert stdout == "", (args, stdout)


def edge_cases(pid: int, tmp) -> list[tuple[list[str], int, str]]:
    """(arguments, exit code, text the error line must contain)."""
    missing = str(free_pid())
    not_procfs = str(tmp)                       # a directory without the host-wide `stat`
    not_recording = "/etc/os-release"           # a file, but not NVML's answers
    return [
        (["diagnose", "abc"], USAGE, "'abc' is not a pid"),
        (["diagnose", "0"], USAGE, "'0' is not a pid"),
        (["diagnose"], USAGE, "Missing argument 'PID'"),
        (["diagnose", pid, "--duration", "0"], USAGE, "'0' is not a positive duration"),
        (["diagnose", pid, "--duration", "-3s"], USAGE, "'-3s' is not a positive duration"),
        (["diagnose", pid, "--interval", "soon"], USAGE, "'soon' is not a positive duration"),
        (["diagnose", pid, "--stacks-interval", "0ms"], USAGE, "'0ms' is not a positive duration"),
        (["diagnose", pid, "--max-threads", "0"], USAGE, "--max-threads"),
        (["diagnose", pid, "--format", "xml"], USAGE, "'xml'"),
        (["diagnose", pid, "--durration", "1s"], USAGE, "--duration"),
        (["diagnose", pid, "--path.procfs", "/nonexistent"], USAGE,
         "--path.procfs /nonexistent: no such directory"),
        (["diagnose", pid, "--path.procfs", not_procfs], USAGE,
         f"--path.procfs {not_procfs}: not a procfs"),
        (["diagnose", pid, "--path.sysfs", "/nonexistent"], USAGE, "--path.sysfs /nonexistent"),
        (["diagnose", pid, "--path.rootfs", "/etc/hostname"], USAGE, "not a directory"),
        (["diagnose", pid, "--disable-rule", "oom-rsk"], USAGE, "did you mean oom-risk-"),
        (["diagnose", pid, "--disable-rule", "zzzz"], USAGE, "`dsmon rules list` shows"),
        (["diagnose", pid, "--rules", "/nonexistent"], RULES, "/nonexistent"),
        (["diagnose", pid, "-o", "/nonexistent/report.txt"], OUTPUT,
         "directory /nonexistent does not exist"),
        (["diagnose", pid, "-o", not_procfs], OUTPUT, "is a directory"),
        (["diagnose", pid, "-o", "/etc/hostname/report.txt"], OUTPUT, "is not a directory"),
        (["diagnose", pid, "--nvml-replay", "/nonexistent.json"], USAGE, "/nonexistent.json"),
        (["diagnose", pid, "--nvml-replay", "/etc/hostname"], USAGE,
         "--nvml-replay /etc/hostname: not an NVML recording"),
        (["topo", "--nvml-replay", str(not_recording)], USAGE, "not an NVML recording"),
        (["plan", "--params", "7B", "--nvml-replay", "/etc/hostname"], USAGE,
         "not an NVML recording"),
        (["agent", "--nvml-replay", "/etc/hostname"], USAGE, "not an NVML recording"),
        (["diagnose", missing, "--duration", "1s"], NO_TARGET, f"no process with pid {missing}"),
        (["snapshot", "-o", "/nonexistent/x.tgz"], OUTPUT, "directory /nonexistent does not exist"),
        (["snapshot", pid, "-o", not_procfs], OUTPUT, "is a directory"),
        (["snapshot", missing, "-o", f"{tmp}/x.tgz"], NO_TARGET, f"no process with pid {missing}"),
        (["snapshot", "abc", "-o", f"{tmp}/x.tgz"], USAGE, "'abc' is not a pid"),
        (["snapshot", pid], USAGE, "'-o' / '--output'"),
        (["snapshot", "--path.procfs", "/nonexistent", "-o", f"{tmp}/x.tgz"], USAGE,
         "--path.procfs /nonexistent"),
        (["topo", missing], NO_TARGET, f"no process with pid {missing}"),
        (["topo", "-1"], USAGE, "-1"),
        (["topo", "--path.procfs", not_procfs], USAGE, "not a procfs"),
        (["plan", "--params", "lots"], USAGE, "'lots' is not a parameter count"),
        (["plan", "--params", "7B", "--dtype", "fp3"], USAGE, "fp3"),
        (["plan", "--params", "7B", "--batch", "0"], USAGE, "--batch"),
        (["plan", "--params", "7B", "--model-config", "/nonexistent.json"], USAGE,
         "/nonexistent.json"),
        (["plan"], USAGE, "--params"),
        (["rules", "explain", "oom-rsk"], USAGE, "did you mean oom-risk-"),
        (["rules", "check", "/nonexistent"], RULES, "/nonexistent"),
        (["rules", "list", "--rules", "/nonexistent"], RULES, "/nonexistent"),
        (["rules", "nosuch"], USAGE, "nosuch"),
        (["nosuch"], USAGE, "nosuch"),
        (["agent", "--listen", "garbage"], USAGE, "'garbage' must be HOST:PORT or [IPv6]:PORT"),
        (["agent", "--listen", "127.0.0.1:99999"], USAGE, "port 99999 is out of range 0-65535"),
        (["agent", "--listen", "::1:9848"], USAGE, "in brackets"),
        (["agent", "--listen", "300.1.1.1:9848"], USAGE, "'300.1.1.1:9848' must be HOST:PORT"),
        (["agent", "--interval", "0"], USAGE, "'0' is not a positive duration"),
        (["agent", "--rules-interval", "fast"], USAGE, "'fast' is not a positive duration"),
        (["agent", "--target", "foo"], USAGE, "'foo': use NAME=pid:1234"),
        (["agent", "--target", "x=pid:abc"], USAGE, "pid 'abc' is not a number"),
        (["agent", "--max-series", "0"], USAGE, "--max-series"),
        (["agent", "--log-level", "loud"], USAGE, "'loud'"),
        (["agent", "--path.procfs", "/nonexistent"], USAGE, "--path.procfs /nonexistent"),
        (["install-service", "--root", f"{tmp}", "--listen", "garbage"], USAGE,
         "--listen 'garbage' must be HOST:PORT"),
        (["install-service", "--root", f"{tmp}", "--listen", "127.0.0.1:99999"], USAGE,
         "'127.0.0.1:99999'"),
        (["install-service", "--root", f"{tmp}", "--allow-from", "notacidr"], USAGE,
         "'notacidr' is not an IP address"),
    ]


def test_every_command_rejects_bad_input_at_the_edge(tmp_path):
    runner = CliRunner()
    # A live pid (this test's own process): every case must stop before sampling it.
    for args, expected, names in edge_cases(str(os.getpid()), tmp_path):
        result = runner.invoke(main, args, catch_exceptions=True)
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            (args, repr(result.exception))
        assert_one_line_error(result.exit_code, result.stdout, result.stderr, expected,
                              names, args)
    assert os.listdir(tmp_path) == []     # nothing written, not even a partial file


# Runs each case through click's runner in one child interpreter: the agent sets up logging and
# malloc arenas once past the edge, which must not leak into pytest's process.
AGENT_CASES_RUNNER = """
import json, sys
from click.testing import CliRunner
from dsmon.cli import main
out = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(main, ["agent", "--listen", "127.0.0.1:0", *args])
    out.append([result.exit_code, result.stdout, result.stderr, repr(result.exception)])
print(json.dumps(out))
"""


def test_the_agent_rejects_a_bad_configuration_before_it_starts(tmp_path):
    import json
    bad_listen = tmp_path / "listen.toml"
    bad_listen.write_text('[agent]\nlisten = "127.0.0.1:99999"\n')
    bad_rule = tmp_path / "rules.toml"
    bad_rule.write_text('[rules]\ndisable = ["cpu-fluctuatoin"]\n')
    bad_root = tmp_path / "paths.toml"
    bad_root.write_text(f'[paths]\nprocfs = "{tmp_path}"\n')
    broken_yaml = tmp_path / "web.yml"
    broken_yaml.write_text("tls_server_config: [\n")      # a YAML error spans lines
    broken_toml = tmp_path / "broken.toml"
    broken_toml.write_text("[agent\n")
    cases = [
        (["--config", str(bad_listen)], CONFIG, "[agent] listen '127.0.0.1:99999': port 99999"),
        (["--config", str(bad_rule)], CONFIG, "[rules] disable 'cpu-fluctuatoin': no such rule; "
                                              "did you mean cpu-fluctuation"),
        (["--config", str(bad_root)], CONFIG, f"[paths] procfs {tmp_path}: not a procfs"),
        (["--config", str(tmp_path / "none.toml")], CONFIG, "none.toml: no such file"),
        (["--disable-rule", "oom-rsk"], USAGE, "--disable-rule 'oom-rsk': no such rule"),
        (["--web-config", str(tmp_path / "none.yml")], CONFIG, "none.yml"),
        (["--web-config", str(broken_yaml)], CONFIG, "web.yml: not valid YAML"),
        (["--config", str(broken_toml)], CONFIG, "broken.toml: not valid TOML"),
    ]
    child = subprocess.run([sys.executable, "-c", AGENT_CASES_RUNNER,
                            json.dumps([args for args, _, _ in cases])],
                           capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert child.returncode == 0, child.stderr
    for (args, expected, names), (code, stdout, stderr, exception) in \
            zip(cases, json.loads(child.stdout)):
        assert exception in ("None", f"SystemExit({expected})"), (args, exception)
        assert_one_line_error(code, stdout, stderr, expected, names, args)


def test_the_issues_examples_as_real_processes(tmp_path):
    missing = str(free_pid())
    cases = [(["agent", "--listen", "garbage"], USAGE, "'garbage' must be HOST:PORT"),
             (["topo", missing], NO_TARGET, f"no process with pid {missing} under /proc"),
             (["snapshot", "-o", "/nonexistent/x.tgz"], OUTPUT, "/nonexistent does not exist"),
             (["diagnose", "1", "--path.procfs", "/nonexistent"], USAGE,
              "--path.procfs /nonexistent: no such directory")]
    processes = [subprocess.Popen([sys.executable, "-m", "dsmon", *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True,
                                  env=dict(os.environ, PYTHONPATH=str(REPO)))
                 for args, _, _ in cases]                 # at once: one start-up of suite time
    for (args, expected, names), process in zip(cases, processes):
        stdout, stderr = process.communicate(timeout=60)
        assert_one_line_error(process.returncode, stdout, stderr, expected, names, args)


# Imports first: the interpreter's own files may not be readable by nobody.
AS_NOBODY = """
import difflib, json, logging, os, sys
import dsmon.cli, dsmon.diagnose, dsmon.engine.rules, dsmon.outputs, dsmon.report.text
os.setgroups([]); os.setgid(65534); os.setuid(65534)
dsmon.cli.main(sys.argv[1:])
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run dsmon as another user")
def test_an_unwritable_report_file_is_refused_before_sampling_and_left_untouched():
    directory = tempfile.mkdtemp(prefix="dsmon-output-")
    try:
        os.chmod(directory, 0o755)
        report = os.path.join(directory, "report.txt")
        with open(report, "w") as handle:
            handle.write("the previous report\n")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        # As nobody: root may write any file, so only another user meets a read-only one.
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-c", AS_NOBODY, "diagnose", str(os.getpid()),
                                 "--duration", "30s", "-o", report],
                                capture_output=True, text=True, timeout=60, env=env, cwd="/")
        assert time.monotonic() - started < 30     # refused before the 30 s window, not after
        assert_one_line_error(result.returncode, result.stdout, result.stderr, OUTPUT,
                              f"{report} is not writable", "diagnose -o read-only")
        with open(report) as handle:
            assert handle.read() == "the previous report\n"
        assert os.listdir(directory) == ["report.txt"]
    finally:
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)


def test_a_report_is_written_whole_or_not_at_all(tmp_path):
    """The report goes to a temporary file renamed over -o at the end: a reader never sees
    half of one, and a directory that vanishes mid-window costs exit 5 and leaves no file."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with workload("threads", "--idle", "1") as target:
        processes = {}
        for case in ("kept", "removed"):      # both at once: one window of suite time
            directory = tmp_path / case
            directory.mkdir()
            processes[case] = subprocess.Popen(
                [sys.executable, "-m", "dsmon", "diagnose", str(target.pid), "--duration", "1s",
                 "--interval", "0.5s", "--no-stacks", "--format", "json",
                 "-o", str(directory / "report.json")],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        wait_until_sampling(processes["removed"].pid, target.pid)
        (tmp_path / "removed").rmdir()
        results = {case: (process.communicate(timeout=60), process.returncode)
                   for case, process in processes.items()}
    results = {case: (code, out, err) for case, ((out, err), code) in results.items()}
    code, stdout, stderr = results["kept"]
    assert code == 0, stderr
    text = (tmp_path / "kept" / "report.json").read_text()
    assert text.startswith("{") and text.rstrip().endswith("}")
    assert os.listdir(tmp_path / "kept") == ["report.json"]
    code, stdout, stderr = results["removed"]
    assert_one_line_error(code, stdout, stderr, OUTPUT, "cannot write", "-o into a removed dir")
    assert not (tmp_path / "removed").exists()
