"""The `dsmon` command line. Heavy modules are imported inside commands so --help stays fast."""

from __future__ import annotations

import functools
import os
import re
import sys

import click

from dsmon import __version__

class Duration(click.ParamType):
    """A positive duration: 10s, 500ms, 2m, 1h, 1d (dsmon.units, as in the TOML and the rule
    files), or a bare number of seconds."""

    name = "duration"

    def convert(self, value, param, ctx):
        from dsmon.units import parse_duration
        text = re.sub(r"\s+", "", str(value))
        seconds = parse_duration(float(text) if re.fullmatch(r"\d+(\.\d+)?", text) else text,
                                 "", [], allow_zero=False)
        if seconds is None:
            self.fail(f"{value!r} is not a positive duration (examples: 10s, 500ms, 2m)",
                      param, ctx)
        return seconds


class Pid(click.ParamType):
    name = "pid"

    def convert(self, value, param, ctx):
        text = str(value).strip()
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            self.fail(f"{value!r} is not a pid (a whole number >= 1, as `ps` shows it)",
                      param, ctx)
        return int(text)


PID = Pid()

# The agent's exit codes (the README); usage (2) and the others are dsmon.diagnose's.
EXIT_USAGE_CONFIG = 9
EXIT_LISTEN = 10


class DsmonGroup(click.Group):
    """Every usage error on one line -- `dsmon diagnose: Invalid value for '--duration': ...
    (see 'dsmon diagnose --help')` -- with exit code 2, instead of click's usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        # Errors are always handled here, whatever standalone_mode a caller asks for.
        try:
            code = super().main(args, prog_name or "dsmon", complete_var, standalone_mode=False,
                                **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()                     # plain `dsmon`: the help text, as before
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "dsmon"
            message = " ".join(exc.format_message().split())
            click.echo(f"{where}: {message} (see '{where} --help')", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"dsmon: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("dsmon: interrupted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def host_path_options(command):
    """--path.procfs/--path.sysfs/--path.rootfs on every command (node_exporter's names)."""

    @click.option("--path.procfs", "procfs", default="/proc", show_default=True,
                  envvar="DSMON_PATH_PROCFS", help="procfs mount point")
    @click.option("--path.sysfs", "sysfs", default="/sys", show_default=True,
                  envvar="DSMON_PATH_SYSFS", help="sysfs mount point")
    @click.option("--path.rootfs", "rootfs", default="/", show_default=True,
                  envvar="DSMON_PATH_ROOTFS", help="root filesystem (for /etc/passwd)")
    @functools.wraps(command)
    def wrapper(*args, procfs, sysfs, rootfs, **kwargs):
        from dsmon.paths import HostPaths
        paths = HostPaths(procfs, sysfs, rootfs)
        problems = paths.problems()
        if problems:
            raise click.UsageError("; ".join(problems), click.get_current_context())
        return command(*args, paths=paths, **kwargs)

    return wrapper


@click.group(cls=DsmonGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dsmon")
def main():
    """dsmon: measure LLM inference processes and the host they run on."""


def _check_output(output: str | None) -> None:
    """Exit 5 before any sampling when -o names a file that cannot be written."""
    from dsmon.diagnose import EXIT_OUTPUT
    from dsmon.outputs import output_problem
    problem = output_problem(output) if output not in (None, "-") else None
    if problem:
        click.echo(f"dsmon: cannot write {output}: {problem}", err=True)
        sys.exit(EXIT_OUTPUT)


def _write(text: str, output: str | None) -> None:
    from dsmon.diagnose import EXIT_OUTPUT
    from dsmon.outputs import replacing
    if output in (None, "-"):
        click.echo(text, nl=False)
        return
    try:
        with replacing(output) as partial, open(partial, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        click.echo(f"dsmon: cannot write {output}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_OUTPUT)


def _require_process(paths, pid: int | None) -> None:
    """Exit 3 when PID names no process under the procfs root."""
    from dsmon.diagnose import EXIT_NO_TARGET
    if pid is not None and not os.path.exists(paths.pid(pid, "stat")):
        click.echo(f"dsmon: no process with pid {pid} under {paths.procfs}. Check the pid with "
                   f"`ps -p {pid}`", err=True)
        sys.exit(EXIT_NO_TARGET)


def _unknown_rule_ids(rule_ids, rules, where: str) -> list[str]:
    """One line per id that names no loaded rule, with the known ids closest to it."""
    known = sorted(rule.id for rule in rules)
    problems = []
    for rule_id in dict.fromkeys(rule_ids):
        if rule_id not in known:
            import difflib
            close = difflib.get_close_matches(rule_id, known, n=3, cutoff=0.5)
            problems.append(f"{where} {rule_id!r}: no such rule; "
                            + (f"did you mean {', '.join(close)}?" if close
                               else "`dsmon rules list` shows the ids"))
    return problems


@main.command()
@click.argument("pid", type=PID)
@click.option("--duration", type=Duration(), default="10s", show_default=True,
              help="sampling window")
@click.option("--interval", type=Duration(), default="1s", show_default=True,
              help="time between samples")
@click.option("--format", "output_format", type=click.Choice(["text", "json", "html"]),
              default="text", show_default=True,
              help="text for terminals, json for programs, html: one self-contained page with charts")
@click.option("-o", "--output", default=None, help="write the report to FILE instead of stdout")
@click.option("--max-threads", type=click.IntRange(1), default=2048, show_default=True,
              help="threads read per sample; above it each sample reads a rotating window")
@click.option("--rules", "rule_paths", multiple=True, envvar="DSMON_RULES",
              type=click.Path(), help="extra rule directory or file (repeatable); a rule with "
              "the id of a built-in one replaces it")
@click.option("--disable-rule", "disabled", multiple=True, help="rule id to skip (repeatable)")
@click.option("--nvml-replay", type=click.Path(exists=True, dir_okay=False), default=None,
              help="answer NVML questions from a recording instead of the driver")
@click.option("--stacks/--no-stacks", default=True, show_default=True,
              help="sample Python stacks and the GIL with py-spy (non-blocking dumps)")
@click.option("--stacks-interval", type=Duration(), default="200ms", show_default=True,
              help="time between py-spy dumps")
@click.option("--py-spy", "pyspy_path", default=None, envvar="DSMON_PY_SPY",
              help="the py-spy binary (default: next to dsmon's Python, then PATH)")
@host_path_options
def diagnose(pid, duration, interval, output_format, output, max_threads, rule_paths, disabled,
             nvml_replay, stacks, stacks_interval, pyspy_path, paths):
    """Sample process PID over a short window and report what slows it down.

    Exit codes: 0 no warning or critical finding; 6 a warning and 7 a critical finding firing
    at the end of the window; 4 partial report (the target exited, turned zombie or its pid
    was reused during the window, or was a zombie already) with nothing worse; 3 no such
    process; 5 the report cannot be written (checked before sampling too); 8 a rule file is
    invalid; 2 usage error; 1 internal error. A kernel thread gets a report as any process.
    """
    import json

    from dsmon.diagnose import EXIT_NO_TARGET, EXIT_RULES, DiagnoseOptions, exit_code
    from dsmon.diagnose import diagnose as run
    from dsmon.engine.rules import RuleLoadError, load_rules
    from dsmon.report.text import render_text
    from dsmon.sampler import TargetNotFound

    import logging
    # The report's GPU and collector sections carry NVML's message and fix; no stderr copy.
    logging.getLogger("dsmon.gpu").setLevel(logging.ERROR)
    if interval > duration:
        interval = duration
    _check_output(output)
    try:
        rules = load_rules(rule_paths)
        problems = _unknown_rule_ids(disabled, rules, "--disable-rule")
        if problems:
            raise click.UsageError("; ".join(problems), click.get_current_context())
        report = run(paths, pid, DiagnoseOptions(duration, interval, max_threads,
                                                 tuple(rule_paths), tuple(disabled), stacks,
                                                 stacks_interval, pyspy_path),
                     rules=rules, nvml=_nvml_backend(nvml_replay, paths))
    except RuleLoadError as exc:
        _fail("cannot load rules", exc.problems, EXIT_RULES)
    except TargetNotFound as exc:
        click.echo(f"dsmon: {exc}. Check the pid with `ps -p {pid}`; inside a container, "
                   f"pass the pid as this dsmon's PID namespace sees it.", err=True)
        sys.exit(EXIT_NO_TARGET)
    if output_format == "json":
        text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    elif output_format == "html":
        from dsmon.report.html import render_html
        text = render_html(report)
    else:
        text = render_text(report)
    _write(text, output)
    sys.exit(exit_code(report))


@main.command()
@click.argument("pid", type=PID, required=False)
@click.option("-o", "--output", required=True, help="the tar.gz file to write")
@click.option("--nvml-replay", type=click.Path(exists=True, dir_okay=False), default=None,
              help="record NVML answers from a recording instead of the driver")
@host_path_options
def snapshot(pid, output, nvml_replay, paths):
    """Record the files dsmon reads (host, and process PID) into a replayable tar.gz.

    Unpack it and point --path.procfs/--path.sysfs/--path.rootfs at it to replay.
    Exit codes: 0 written; 3 no such process; 5 FILE cannot be written; 2 usage error.
    """
    from dsmon.diagnose import EXIT_NO_TARGET, EXIT_OUTPUT
    from dsmon.snapshot import SnapshotError, SnapshotWriteError, write_snapshot

    _require_process(paths, pid)
    _check_output(output)
    try:
        summary = write_snapshot(paths, pid, output, _nvml_backend(nvml_replay))
    except SnapshotError as exc:
        click.echo(f"dsmon: {exc}", err=True)
        sys.exit(EXIT_OUTPUT if isinstance(exc, SnapshotWriteError)
                 else EXIT_NO_TARGET if exc.no_target else 1)
    click.echo(f"wrote {output}: {summary.files} files, {summary.bytes} bytes"
               + (f"; {len(summary.skipped)} unreadable (listed in SNAPSHOT.json)"
                  if summary.skipped else ""))


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own malloc arena; the agent's job threads
    each keep theirs half empty (measured: peak RSS 57.8 MB against a 10,000-thread target,
    47.0 MB with one arena). Must run before the agent starts its threads; glibc only."""
    import ctypes
    try:
        ctypes.CDLL(None).mallopt(-8, arenas)        # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


@main.command()
@click.option("--config", "config_path", default=None, envvar="DSMON_CONFIG",
              help="TOML configuration (default /etc/dsmon/dsmon.toml if it exists)")
@click.option("--listen", default=None, callback=lambda ctx, param, value: _checked_listen(value),
              help="HOST:PORT or [IPv6]:PORT for /metrics (default 127.0.0.1:9848)")
@click.option("--interval", type=Duration(), default=None, help="sampling interval (1s)")
@click.option("--rules-interval", type=Duration(), default=None, help="rule evaluation (1s)")
@click.option("--discovery-interval", type=Duration(), default=None, help="target discovery (10s)")
@click.option("--target", "targets", multiple=True,
              help="NAME=pid:N | NAME=pidfile:PATH | NAME=unit:X.service | NAME=pattern:REGEX "
                   "| auto (repeatable; default auto)")
@click.option("--rules", "rule_paths", multiple=True, type=click.Path(),
              help="extra rule directory or file (repeatable)")
@click.option("--disable-rule", "disabled", multiple=True, help="rule id to skip")
@click.option("--max-series", type=click.IntRange(1), default=None, help="series cap (50000)")
@click.option("--web-config", default=None, type=click.Path(),
              help="TLS and basic auth file (Prometheus exporter-toolkit format)")
@click.option("--nvml-replay", type=click.Path(exists=True, dir_okay=False), default=None,
              help="answer NVML questions from a recording instead of the driver")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
@click.option("--captures/--no-captures", "captures_enabled", default=None,
              help="py-spy dumps when a rule with `capture: stack` fires (default on)")
@click.option("--capture-dir", default=None,
              help="where captures are kept ($STATE_DIRECTORY/captures or /var/lib/dsmon/captures)")
@host_path_options
def agent(config_path, listen, interval, rules_interval, discovery_interval, targets, rule_paths,
          disabled, max_series, web_config, nvml_replay, log_level, captures_enabled,
          capture_dir, paths):
    """Run the monitoring agent: sample targets, evaluate rules, serve /metrics.

    Signals: SIGHUP reloads the configuration and rules (a broken file keeps the running
    ones); SIGTERM stops within 2 s. Under systemd (Type=notify) it sends READY=1 after the
    first sample and WATCHDOG=1 after each good sampling cycle.

    Exit codes: 2 a bad flag; 9 an invalid configuration file; 8 invalid rules; 10 cannot
    listen.
    """
    from dsmon.agent.config import DEFAULT_CONFIG_PATH, ConfigError, load_config, parse_target
    from dsmon.agent.daemon import Agent, run_forever
    from dsmon.agent.logs import setup_logging
    from dsmon.diagnose import EXIT_RULES, EXIT_USAGE
    from dsmon.engine.rules import RuleLoadError, load_rules
    from dsmon.paths import HostPaths

    problems: list[str] = []
    specs = tuple(filter(None, (parse_target(t, "--target", problems) for t in targets)))
    if problems:
        raise click.UsageError("; ".join(problems), click.get_current_context())
    nvml = _nvml_backend(nvml_replay)
    setup_logging(log_level)
    _limit_malloc_arenas()

    def load():
        config = load_config(config_path or DEFAULT_CONFIG_PATH, required=config_path is not None)
        config = config.with_overrides(
            listen=listen, interval_s=interval, rules_interval_s=rules_interval,
            discovery_interval_s=discovery_interval, targets=specs, max_series=max_series,
            web_config=web_config,
            rule_paths=tuple(config.rule_paths) + tuple(rule_paths),
            disabled_rules=tuple(config.disabled_rules) + tuple(disabled),
            procfs=paths.procfs if paths.procfs != "/proc" else None,
            sysfs=paths.sysfs if paths.sysfs != "/sys" else None,
            rootfs=paths.rootfs if paths.rootfs != "/" else None)
        if captures_enabled is not None or capture_dir:
            from dataclasses import replace
            config = replace(config, captures=replace(
                config.captures, **({"enabled": captures_enabled}
                                    if captures_enabled is not None else {}),
                **({"directory": capture_dir} if capture_dir else {})))
        rules = load_rules(config.rule_paths)
        problems = _unknown_rule_ids(disabled, rules, "--disable-rule")
        problems += _unknown_rule_ids([i for i in config.disabled_rules if i not in disabled],
                                      rules, f"{config.source}: [rules] disable")
        roots = HostPaths(config.procfs, config.sysfs, config.rootfs)
        if roots != paths:      # the flags' roots were checked at the edge
            problems += [f"{config.source}: [paths] {p.removeprefix('--path.')}"
                         for p in roots.problems()]
        if problems:
            raise ConfigError(problems)
        rules = [r for r in rules if r.id not in set(config.disabled_rules)]
        return config, rules

    try:
        config, loaded_rules = load()
    except ConfigError as exc:
        # A flag's problem names the flag first (--disable-rule 'x': ...), a file's its path.
        flags_only = all(p.startswith("--") for p in exc.problems)
        _fail("invalid command line" if flags_only else "invalid configuration", exc.problems,
              EXIT_USAGE if flags_only else EXIT_USAGE_CONFIG)
    except RuleLoadError as exc:
        _fail("cannot load rules", exc.problems, EXIT_RULES)
    if config.web_config:
        from dsmon.sinks.webconfig import WebConfigError, load_web_config
        try:
            load_web_config(config.web_config)
        except WebConfigError as exc:
            click.echo(f"dsmon: invalid web config: {' '.join(str(exc).split())}", err=True)
            sys.exit(EXIT_USAGE_CONFIG)
    try:
        sys.exit(run_forever(Agent(config, loaded_rules, nvml=nvml), load))
    except OSError as exc:
        click.echo(f"dsmon: cannot listen on {config.listen}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_LISTEN)


def _checked_listen(value: str | None) -> str | None:
    from dsmon.agent.config import parse_listen
    if value is not None:
        try:
            parse_listen(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _fail(heading: str, problems: list[str], code: int):
    """`dsmon: HEADING: PROBLEM` on one line; several problems one per line below it."""
    if len(problems) == 1:
        click.echo(f"dsmon: {heading}: {problems[0]}", err=True)
    else:
        click.echo(f"dsmon: {heading}:\n" + "\n".join(f"  {p}" for p in problems), err=True)
    sys.exit(code)


def _nvml_backend(replay: str | None, paths=None):
    """None for the real NVML, or a fake replaying a recording (tests/fixtures/gpu/*.json).
    A replayed snapshot (roots other than this host's) answers from its own nvml.json."""
    import os
    if replay is None and paths is not None and not paths.is_live:
        recorded = paths.root("nvml.json")
        if os.path.exists(recorded):
            replay = recorded
    if replay is None:
        return None
    from dsmon.gpu.fake import FakeBackend
    try:
        return FakeBackend(replay)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) else str(exc).removeprefix(f"{replay}: ")
        raise click.UsageError(f"--nvml-replay {replay}: not an NVML recording ({detail}); "
                               "record one with `dsmon snapshot` (its nvml.json)",
                               click.get_current_context()) from None


@main.command()
@click.argument("pid", type=PID, required=False)
@click.option("--nvml-replay", type=click.Path(exists=True, dir_okay=False), default=None,
              help="answer NVML questions from a recording instead of the driver")
@host_path_options
def topo(pid, nvml_replay, paths):
    """The GPU topology (`nvidia-smi topo -m`'s picture) and, with PID, where the process's
    threads run against the CPUs local to its GPUs. Exit codes: 0; 3 no such process; 2 usage
    error."""
    from dsmon.diagnose import EXIT_NO_TARGET
    from dsmon.gpu.topo import topo_command
    from dsmon.sources import Gone

    _require_process(paths, pid)
    try:
        click.echo(topo_command(paths, pid, _nvml_backend(nvml_replay, paths)), nl=False)
    except Gone as exc:
        click.echo(f"dsmon: no process with pid {pid} ({exc.describe()})", err=True)
        sys.exit(EXIT_NO_TARGET)


@main.command()
@click.option("--params", "parameters", required=True,
              help="parameter count, e.g. 6.5B, 70B, 350M")
@click.option("--dtype", default="bf16", show_default=True,
              help="weight precision: fp32, fp16, bf16, fp8, int8, int4")
@click.option("--model-config", type=click.Path(dir_okay=False), default=None,
              help="the model's HuggingFace config.json (for the KV cache and activations)")
@click.option("--seq-len", type=click.IntRange(1), default=None,
              help="tokens per sequence (default: the config's max_position_embeddings, "
                   "else 2048)")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True,
              help="concurrent sequences")
@click.option("--kv-dtype", default=None, help="KV cache precision (default: bf16, fp32 "
              "for fp32 models)")
@click.option("--gpus", type=click.IntRange(1), default=None,
              help="tensor-parallel size (default: the fewest GPUs that fit)")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--nvml-replay", type=click.Path(exists=True, dir_okay=False), default=None,
              help="answer NVML questions from a recording instead of the driver")
@host_path_options
def plan(parameters, dtype, model_config, seq_len, batch, kv_dtype, gpus, output_format,
         nvml_replay, paths):
    """The memory a model needs (weights, KV cache, activations) and what fits on this host.

    Exit codes: 0 the plan fits on this host; 11 it does not; 2 bad input.
    """
    import json
    import logging

    from dsmon.plan import (PlanError, PlanRequest, load_model_config, make_plan,
                            parse_parameters, read_host, render_text)

    logging.getLogger("dsmon.gpu").setLevel(logging.ERROR)   # the plan says why, once
    try:
        request = PlanRequest(parse_parameters(parameters), dtype.lower(), seq_len, batch,
                              kv_dtype.lower() if kv_dtype else None, gpus,
                              load_model_config(model_config) if model_config else None,
                              model_config)
        result = make_plan(request, read_host(paths, _nvml_backend(nvml_replay, paths)))
    except PlanError as exc:
        click.echo(f"dsmon: {exc}", err=True)
        sys.exit(2)
    if output_format == "json":
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(render_text(result), nl=False)
    recommendation = result["recommendation"]
    fits = recommendation.get("fits", recommendation.get("fits_in_ram"))
    sys.exit(0 if fits else EXIT_PLAN_DOES_NOT_FIT)


EXIT_PLAN_DOES_NOT_FIT = 11


@main.group()
def rules():
    """Check, list and explain dsmon's rules (rules/dsmon/*.yaml and your own)."""


@rules.command("check")
@click.argument("paths", nargs=-1, type=click.Path())
def rules_check(paths):
    """Validate rule files or directories (the built-in rules when none are given).

    Every problem is reported at once, each with file, rule and reason; exit 8 if any.
    """
    from dsmon.diagnose import EXIT_RULES
    from dsmon.engine.rules import RuleLoadError, load_rules

    try:
        loaded = load_rules(paths, include_builtin=not paths)
    except RuleLoadError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        if len(exc.problems) > 1:
            click.echo(f"{len(exc.problems)} problem(s)", err=True)
        sys.exit(EXIT_RULES)
    click.echo(f"ok: {len(loaded)} rules")


def _load_or_exit(paths):
    from dsmon.diagnose import EXIT_RULES
    from dsmon.engine.rules import RuleLoadError, load_rules
    try:
        return load_rules(paths)
    except RuleLoadError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        sys.exit(EXIT_RULES)


@rules.command("list")
@click.option("--rules", "rule_paths", multiple=True, envvar="DSMON_RULES", type=click.Path())
def rules_list(rule_paths):
    """List the rules in effect: id, severity, for, and what each detects."""
    for rule in _load_or_exit(rule_paths):
        click.echo(f"{rule.id:<30} {rule.severity:<8} {rule.subject:<6} for {rule.for_s:>4g}s  "
                   f"{rule.description.splitlines()[0] if rule.description else rule.summary[:60]}")


@rules.command("explain")
@click.argument("rule_id")
@click.option("--rules", "rule_paths", multiple=True, envvar="DSMON_RULES", type=click.Path())
def rules_explain(rule_id, rule_paths):
    """Show one rule: what it detects, its conditions, hysteresis, and its hints."""
    from dsmon.features import FEATURES
    from dsmon.engine.rules import Leaf, inhibited_by

    loaded = _load_or_exit(rule_paths)
    by_id = {rule.id: rule for rule in loaded}
    rule = by_id.get(rule_id)
    if rule is None:
        raise click.UsageError(_unknown_rule_ids([rule_id], by_id.values(), "rule")[0],
                               click.get_current_context())
    click.echo(f"{rule.id} ({rule.severity}) from {rule.source}")
    click.echo(f"  {rule.description}")
    click.echo(f"  fires after the condition holds for {rule.for_s:g}s; stays firing "
               f"{rule.keep_firing_for_s:g}s after it clears; subject: {rule.subject}")
    if rule.cause:
        click.echo(f"  cause named: {rule.cause}")
    if rule.inhibits:
        click.echo(f"  explains away (inhibits): {', '.join(rule.inhibits)}")
    inhibitors = inhibited_by(loaded).get(rule.id)
    if inhibitors:
        click.echo(f"  does not fire while these hold (inhibited by): {', '.join(inhibitors)}")

    def show(node, depth):
        pad = "  " * depth
        if isinstance(node, Leaf):
            click.echo(f"{pad}- {node.describe()}   [{FEATURES[node.feature].help}]")
        else:
            click.echo(f"{pad}{node.kind} of:")
            for child in node.children:
                show(child, depth + 1)

    click.echo("  condition:")
    show(rule.when, 2)
    click.echo(f"  summary: {rule.summary}")
    click.echo(f"  hint: {rule.hint}")
    for engine, hint in rule.hints.items():
        click.echo(f"  hint for {engine}: {hint}")


@rules.command("features")
def rules_features():
    """List the features rules can use, with units."""
    from dsmon.features import CONTEXT_FIELDS, FEATURES
    for name, feature in FEATURES.items():
        click.echo(f"{name:<36} {feature.unit:<17} {feature.help}")
    click.echo("template-only values: " + ", ".join(CONTEXT_FIELDS))


@main.command("install-service")
@click.option("--root", default="/", show_default=True, type=click.Path(file_okay=False),
              help="install below this directory (an image, a chroot, a test)")
@click.option("--executable", default=None, type=click.Path(),
              help="the dsmon command ExecStart= runs (default: this one)")
@click.option("--listen", default=None, help="HOST:PORT for a new config (default 127.0.0.1:9848)")
@click.option("--web-config", default=None, help="TLS/basic-auth file for a new config")
@click.option("--allow-from", multiple=True,
              help="address or CIDR allowed to scrape (repeatable; writes a unit drop-in)")
def install_service(root, executable, listen, web_config, allow_from):
    """Install the systemd unit, a config and the state directory."""
    from pathlib import Path
    from dsmon.install import InstallError, install_service as install
    try:
        done = install(Path(root), None if executable is None else Path(executable), listen,
                       web_config, allow_from)
    except InstallError as exc:
        click.echo(f"dsmon: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:
        click.echo(f"dsmon: cannot write {exc.filename}: {exc.strerror} (run as root, or "
                   f"--root DIR)", err=True)
        sys.exit(2)
    for path in done.written:
        click.echo(f"wrote {path}")
    for path in done.kept:
        click.echo(f"kept {path} (exists)")
    for path in done.removed:
        click.echo(f"removed {path}")
    for warning in done.warnings:
        click.echo(f"warning: {warning}", err=True)
    if Path(root).resolve() == Path("/"):
        click.echo("next: systemctl daemon-reload && systemctl enable --now dsmon")


if __name__ == "__main__":
    main()
