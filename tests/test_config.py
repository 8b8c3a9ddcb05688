"""Agent configuration: the example file, flag syntax, strict errors, target discovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsmon.agent.config import (AgentConfig, ConfigError, TargetSpec, load_config, parse_config,
                                parse_target)
from dsmon.agent.targets import TargetResolver
from dsmon.paths import HostPaths
from tests.helpers.spawn import workload

EXAMPLE = Path(__file__).resolve().parents[1] / "systemd" / "dsmon.toml.example"


def test_the_example_config_is_the_defaults():
    config = load_config(str(EXAMPLE), required=True)
    assert config.listen == "127.0.0.1:9848" and config.interval_s == 1.0
    assert config.targets == (TargetSpec("auto"),)
    defaults = AgentConfig()
    for key in ("listen", "interval_s", "rules_interval_s", "discovery_interval_s",
                "slow_interval_s", "max_series", "max_threads", "max_pools"):
        assert getattr(config, key) == getattr(defaults, key), key


def test_a_missing_default_file_means_defaults_but_a_named_one_is_an_error(tmp_path):
    assert load_config(str(tmp_path / "absent.toml")) == AgentConfig()
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "absent.toml"), required=True)


@pytest.mark.parametrize("text, expected", [
    ("vllm=pid:1234", TargetSpec("pid", "1234", "vllm")),
    ("unit:vllm.service", TargetSpec("unit", "vllm.service", "vllm")),
    ("api=pattern:llama-server .*-m", TargetSpec("pattern", "llama-server .*-m", "api")),
    ("pidfile:/run/tgi.pid", TargetSpec("pidfile", "/run/tgi.pid", "tgi.pid")),
    ("auto", TargetSpec("auto", "", "")),
])
def test_target_flag_syntax(text, expected):
    problems: list[str] = []
    assert parse_target(text, "--target", problems) == expected
    assert problems == []


@pytest.mark.parametrize("text, message", [
    ("x=pid:abc", "is not a number"), ("x=port:80", "use NAME=pid:1234"),
    ("x=pattern:(", "is not a regular expression"), ("bad name=pid:1", "must be 1-64"),
])
def test_bad_target_flags(text, message):
    problems: list[str] = []
    assert parse_target(text, "--target", problems) is None
    assert message in problems[0]


def test_strict_file_errors_are_all_reported(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[agent]\nmax_series = 0\nlisten = 'nowhere'\n[extra]\n"
                    "[[targets]]\npid = 1\nunit = 'x.service'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), required=True)
    text = "\n".join(caught.value.problems)
    assert "max_series must be a whole number" in text
    assert "listen 'nowhere' must be HOST:PORT" in text
    assert "unknown section [extra]" in text
    assert "give exactly one of pid, pidfile, unit, pattern, auto" in text


def test_resolver_finds_pid_and_pattern_targets_and_reports_misses():
    with workload("threads", "--idle", "2") as target:
        specs = (TargetSpec("pid", str(target.pid), "one"),
                 TargetSpec("pattern", r"workload\.py threads --idle 2", "two"),
                 TargetSpec("pattern", "no-such-process-anywhere", "three"))
        # own_pid=-1: dsmon skips its own children, and here the test is their parent.
        resolver = TargetResolver(HostPaths(), specs, own_pid=-1)
        found = {r.label: r for r in resolver.resolve()}
    assert found["one"].pid == target.pid and found["two"].pid == target.pid
    assert "three" not in found
    assert resolver.problems["pattern:no-such-process-anywhere"] == "no matching process"


def test_auto_discovery_finds_a_torch_process_or_an_engine(tmp_path):
    """A process named like an engine is found by auto; plain Python without torch is not."""
    engine = tmp_path / "llama-server"
    engine.symlink_to("/bin/sleep")            # argv[0] and comm say llama-server
    import subprocess
    process = subprocess.Popen([str(engine), "60"])
    try:
        with workload("threads", "--idle", "1") as plain:
            import time
            time.sleep(0.3)
            found = TargetResolver(HostPaths(), (TargetSpec("auto"),), own_pid=-1).resolve()
            pids = {r.pid: r for r in found}
            assert plain.pid not in pids               # Python without libtorch
            match = [r for r in found if r.pid == process.pid]
            assert match and match[0].engine == "llamacpp" and match[0].label == "llamacpp"
    finally:
        process.kill()
        process.wait()


def test_auto_follows_nvml_compute_processes_whatever_their_name():
    """A process NVML lists on a GPU is an inference candidate even without a known name."""
    with workload("threads", "--idle", "1") as plain:
        resolver = TargetResolver(HostPaths(), (TargetSpec("auto"),), own_pid=-1)
        assert plain.pid not in {r.pid for r in resolver.resolve()}
        found = {r.pid: r for r in resolver.resolve(gpu_pids={plain.pid})}
    assert plain.pid in found
    assert found[plain.pid].label == "python"         # its engine: plain Python


def test_captures_section_is_strict_and_reported_at_once():
    with pytest.raises(ConfigError) as raised:
        parse_config({"captures": {"enabled": "yes", "keep": 0, "max_bytes": 100,
                                   "min_interval": "soon", "locals": 1, "colour": "red"}},
                     "x.toml")
    problems = "\n".join(raised.value.problems)
    for needle in ("enabled must be true or false", "keep must be a whole number >= 1",
                   "max_bytes must be a whole number >= 4096", "min_interval",
                   "locals must be true or false", "unknown key 'colour'"):
        assert needle in problems, problems
    config = parse_config({"captures": {"dir": "/srv/captures", "min_interval": "1m",
                                        "max_age": "2d", "locals": True}}, "x.toml")
    assert config.captures.directory == "/srv/captures"
    assert (config.captures.min_interval_s, config.captures.max_age_s) == (60.0, 172800.0)
    assert config.captures.with_locals is True
