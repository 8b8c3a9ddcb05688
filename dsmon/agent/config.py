"""The agent's configuration: a TOML file (optional), every setting also a flag.

Loading is strict: unknown keys and bad values are reported all at once with where they are.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace

from dsmon.agent.stacks import STACK_KEYS, StackSettings, parse_stack_settings
from dsmon.stacks.capture import CaptureSettings
from dsmon.units import parse_duration

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

DEFAULT_CONFIG_PATH = "/etc/dsmon/dsmon.toml"
# A fixed, documented port; not in use by the common exporters (node 9100, dcgm 9400,
# process-exporter 9256, OpenTelemetry's Prometheus exporter 9464).
DEFAULT_PORT = 9848
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
TARGET_KINDS = ("pid", "pidfile", "unit", "pattern", "auto")
_LABEL = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class ConfigError(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class TargetSpec:
    """How to find one target. `name` becomes the `target` label (never a pid)."""

    kind: str          # pid, pidfile, unit, pattern, auto
    value: str = ""
    name: str = ""

    def describe(self) -> str:
        return "auto" if self.kind == "auto" else f"{self.kind}:{self.value}"


@dataclass(frozen=True)
class AgentConfig:
    listen: str = DEFAULT_LISTEN
    interval_s: float = 1.0
    rules_interval_s: float = 1.0
    discovery_interval_s: float = 10.0
    slow_interval_s: float = 30.0
    engine_interval_s: float = 10.0     # scrapes of the engines' own /metrics
    max_series: int = 50000
    max_threads: int = 2048
    max_pools: int = 20
    targets: tuple[TargetSpec, ...] = (TargetSpec("auto"),)
    rule_paths: tuple[str, ...] = ()
    disabled_rules: tuple[str, ...] = ()
    web_config: str = ""
    procfs: str = "/proc"
    sysfs: str = "/sys"
    rootfs: str = "/"
    captures: CaptureSettings = field(default_factory=CaptureSettings)
    stacks: StackSettings = field(default_factory=StackSettings)
    source: str = "built-in defaults"

    def with_overrides(self, **overrides) -> "AgentConfig":
        return replace(self, **{k: v for k, v in overrides.items() if v not in (None, (), "")})


def parse_target(text: str, where: str, problems: list[str]) -> TargetSpec | None:
    """NAME=KIND:VALUE, KIND:VALUE or auto (the flag's syntax)."""
    name, sep, rest = text.partition("=")
    if not sep:
        name, rest = "", text
    if rest == "auto":
        return TargetSpec("auto", "", name)
    kind, sep, value = rest.partition(":")
    if not sep or kind not in TARGET_KINDS or not value:
        problems.append(f"{where}: {text!r}: use NAME=pid:1234, NAME=pidfile:/run/x.pid, "
                        "NAME=unit:vllm.service, NAME=pattern:REGEX or auto")
        return None
    return _checked(TargetSpec(kind, value, name), where, problems)


def _checked(spec: TargetSpec, where: str, problems: list[str]) -> TargetSpec | None:
    if spec.name and not _LABEL.match(spec.name):
        problems.append(f"{where}: name {spec.name!r} must be 1-64 letters, digits, '_.:-'")
        return None
    if spec.kind == "pid" and not spec.value.isdigit():
        problems.append(f"{where}: pid {spec.value!r} is not a number")
        return None
    if spec.kind == "pattern":
        try:
            re.compile(spec.value)
        except re.error as exc:
            problems.append(f"{where}: pattern {spec.value!r} is not a regular expression: {exc}")
            return None
    if spec.kind != "auto" and not spec.name:
        # A label that stays the same across restarts: derived from how it is found.
        base = spec.value.rsplit("/", 1)[-1] if spec.kind in ("pidfile", "unit") else spec.value
        name = re.sub(r"[^A-Za-z0-9_.:-]+", "_", base.removesuffix(".service")).strip("_")[:64]
        spec = replace(spec, name=name or spec.kind)
    return spec


_KEYS = {
    "agent": {"listen", "interval", "rules_interval", "discovery_interval", "slow_interval",
              "engine_interval", "max_series", "max_threads", "max_pools", "web_config"},
    "paths": {"procfs", "sysfs", "rootfs"},
    "rules": {"paths", "disable"},
    "targets": set(TARGET_KINDS) | {"name"},
    "captures": {"enabled", "dir", "min_interval", "max_bytes", "keep", "max_age", "locals",
                 "py_spy", "timeout"},
    "stacks": STACK_KEYS,
}


def load_config(path: str | None, required: bool = False) -> AgentConfig:
    """Read the TOML file at `path`; a missing default file means built-in defaults."""
    config = AgentConfig()
    if path is None:
        return config
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        if required:
            raise ConfigError([f"{path}: no such file"]) from None
        return config
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_config(document, path)


def parse_config(document: dict, source: str) -> AgentConfig:
    problems: list[str] = []
    for key in sorted(set(document) - set(_KEYS)):
        problems.append(f"{source}: unknown section [{key}] (allowed: agent, paths, rules, "
                        "targets, captures, stacks)")
    agent = document.get("agent", {})
    values: dict = {"source": source}
    if not isinstance(agent, dict):
        problems.append(f"{source}: [agent] must be a table")
        agent = {}
    for key in sorted(set(agent) - _KEYS["agent"]):
        problems.append(f"{source}: [agent] unknown key {key!r}")
    if "listen" in agent:
        values["listen"] = str(agent["listen"])
        try:
            parse_listen(values["listen"])
        except ValueError as exc:
            problems.append(f"{source}: [agent] listen {exc}")
    for key in ("interval", "rules_interval", "discovery_interval", "slow_interval",
                "engine_interval"):
        if key in agent:
            seconds = parse_duration(agent[key], f"{source}: [agent] {key}", problems,
                                     allow_zero=False)
            if seconds is not None:
                values[f"{key}_s"] = seconds
    for key in ("max_series", "max_threads", "max_pools"):
        if key in agent:
            number = agent[key]
            if isinstance(number, bool) or not isinstance(number, int) or number < 1:
                problems.append(f"{source}: [agent] {key} must be a whole number >= 1")
            else:
                values[key] = number
    if "web_config" in agent:
        values["web_config"] = str(agent["web_config"])
    paths = document.get("paths", {})
    for key in sorted(set(paths) - _KEYS["paths"]):
        problems.append(f"{source}: [paths] unknown key {key!r}")
    for key in _KEYS["paths"] & set(paths):
        values[key] = str(paths[key])
    rules = document.get("rules", {})
    for key in sorted(set(rules) - _KEYS["rules"]):
        problems.append(f"{source}: [rules] unknown key {key!r}")
    for key, attribute in (("paths", "rule_paths"), ("disable", "disabled_rules")):
        if key in rules:
            if not isinstance(rules[key], list) or not all(isinstance(v, str) for v in rules[key]):
                problems.append(f"{source}: [rules] {key} must be a list of strings")
            else:
                values[attribute] = tuple(rules[key])
    if "targets" in document:
        targets = []
        entries = document["targets"]
        if not isinstance(entries, list):
            problems.append(f"{source}: targets must be an array of tables ([[targets]])")
            entries = []
        for index, entry in enumerate(entries):
            where = f"{source}: [[targets]] #{index + 1}"
            if not isinstance(entry, dict):
                problems.append(f"{where}: must be a table")
                continue
            unknown = sorted(set(entry) - _KEYS["targets"])
            if unknown:
                problems.append(f"{where}: unknown key(s) {', '.join(unknown)}")
            kinds = [k for k in TARGET_KINDS if k in entry]
            if len(kinds) != 1:
                problems.append(f"{where}: give exactly one of {', '.join(TARGET_KINDS)}")
                continue
            kind = kinds[0]
            value = "" if kind == "auto" else str(entry[kind])
            if kind == "auto" and entry[kind] is not True:
                problems.append(f"{where}: auto must be true")
                continue
            spec = _checked(TargetSpec(kind, value, str(entry.get("name", ""))), where, problems)
            if spec is not None:
                targets.append(spec)
        values["targets"] = tuple(targets)
    if "captures" in document:
        values["captures"] = _parse_captures(document["captures"], source, problems)
    if "stacks" in document:
        values["stacks"] = parse_stack_settings(document["stacks"], source, problems,
                                                parse_duration)
    if problems:
        raise ConfigError(problems)
    return replace(AgentConfig(), **values)


def _parse_captures(table, source: str, problems: list[str]) -> CaptureSettings:
    where = f"{source}: [captures]"
    if not isinstance(table, dict):
        problems.append(f"{where} must be a table")
        return CaptureSettings()
    for key in sorted(set(table) - _KEYS["captures"]):
        problems.append(f"{where} unknown key {key!r}")
    values: dict = {}
    for key, attribute in (("enabled", "enabled"), ("locals", "with_locals")):
        if key in table:
            if not isinstance(table[key], bool):
                problems.append(f"{where} {key} must be true or false")
            else:
                values[attribute] = table[key]
    for key, attribute in (("dir", "directory"), ("py_spy", "pyspy_path")):
        if key in table:
            if not isinstance(table[key], str) or not table[key]:
                problems.append(f"{where} {key} must be a non-empty string")
            else:
                values[attribute] = table[key]
    for key, attribute in (("min_interval", "min_interval_s"), ("max_age", "max_age_s"),
                           ("timeout", "timeout_s")):
        if key in table:
            seconds = parse_duration(table[key], f"{where} {key}", problems, allow_zero=False)
            if seconds is not None:
                values[attribute] = seconds
    for key, attribute, least in (("max_bytes", "max_bytes", 4096), ("keep", "keep", 1)):
        if key in table:
            number = table[key]
            if isinstance(number, bool) or not isinstance(number, int) or number < least:
                problems.append(f"{where} {key} must be a whole number >= {least}")
            else:
                values[attribute] = number
    return CaptureSettings(**values)


LISTEN_FORMS = "HOST:PORT or [IPv6]:PORT, e.g. 127.0.0.1:9848, 0.0.0.0:9848, [::1]:9848"
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")


def parse_listen(listen: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT or [IPv6]:PORT; an empty host is 127.0.0.1. Raises ValueError
    naming the bad value and the forms accepted."""
    bad = f"{listen!r} must be {LISTEN_FORMS}"
    host, sep, port = listen.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        raise ValueError(bad)
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"{listen!r}: port {port} is out of range 0-65535 ({LISTEN_FORMS})")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(bad) from None
        return host[1:-1], int(port)
    if ":" in host:
        raise ValueError(f"{listen!r}: put an IPv6 address in brackets ([IPv6]:PORT), "
                         f"e.g. [::1]:{port}")
    if host and not _HOSTNAME.match(host):
        raise ValueError(bad)
    if re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(bad) from None
    return host or "127.0.0.1", int(port)


def listen_address(listen: str) -> tuple[str, int]:
    return parse_listen(listen)
