"""The `dsmon` command line. Heavy modules are imported inside commands so --help stays fast."""

from __future__ import annotations

import functools
import re
import sys

import click

from dsmon import __version__

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class Duration(click.ParamType):
    name = "duration"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        match = _DURATION.match(str(value))
        if not match:
            self.fail(f"{value!r} is not a duration (examples: 10s, 500ms, 2m)", param, ctx)
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        if seconds <= 0:
            self.fail("a duration must be positive", param, ctx)
        return seconds


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
        return command(*args, paths=HostPaths(procfs, sysfs, rootfs), **kwargs)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dsmon")
def main():
    """dsmon: measure LLM inference processes and the host they run on."""


def _write(text: str, output: str | None) -> None:
    from dsmon.diagnose import EXIT_OUTPUT
    if output in (None, "-"):
        click.echo(text, nl=False)
        return
    try:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        click.echo(f"dsmon: cannot write {output}: {exc.strerror}", err=True)
        sys.exit(EXIT_OUTPUT)


@main.command()
@click.argument("pid", type=int)
@click.option("--duration", type=Duration(), default="10s", show_default=True,
              help="sampling window")
@click.option("--interval", type=Duration(), default="1s", show_default=True,
              help="time between samples")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("-o", "--output", default=None, help="write the report to FILE instead of stdout")
@click.option("--max-threads", type=click.IntRange(1), default=2048, show_default=True,
              help="threads read per sample; above it each sample reads a rotating window")
@host_path_options
def diagnose(pid, duration, interval, output_format, output, max_threads, paths):
    """Sample process PID over a short window and report what slows it down.

    Exit codes: 0 report complete; 3 no such process; 4 partial report (the target exited
    during the window); 5 the report could not be written; 2 usage error; 1 internal error.
    """
    import json

    from dsmon.diagnose import EXIT_NO_TARGET, EXIT_PARTIAL, DiagnoseOptions
    from dsmon.diagnose import diagnose as run
    from dsmon.report.text import render_text
    from dsmon.sampler import TargetNotFound

    if interval > duration:
        interval = duration
    try:
        report = run(paths, pid, DiagnoseOptions(duration, interval, max_threads))
    except TargetNotFound as exc:
        click.echo(f"dsmon: {exc}. Check the pid with `ps -p {pid}`; inside a container, "
                   f"pass the pid as this dsmon's PID namespace sees it.", err=True)
        sys.exit(EXIT_NO_TARGET)
    if output_format == "json":
        text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    else:
        text = render_text(report)
    _write(text, output)
    if not report["window"]["complete"] and report["window"]["end_reason"] == "target exited":
        sys.exit(EXIT_PARTIAL)


@main.command()
@click.argument("pid", type=int, required=False)
@click.option("-o", "--output", required=True, help="the tar.gz file to write")
@host_path_options
def snapshot(pid, output, paths):
    """Record the files dsmon reads (host, and process PID) into a replayable tar.gz.

    Unpack it and point --path.procfs/--path.sysfs/--path.rootfs at it to replay.
    """
    from dsmon.diagnose import EXIT_NO_TARGET
    from dsmon.snapshot import SnapshotError, write_snapshot

    try:
        summary = write_snapshot(paths, pid, output)
    except SnapshotError as exc:
        click.echo(f"dsmon: {exc}", err=True)
        sys.exit(EXIT_NO_TARGET if exc.no_target else 1)
    click.echo(f"wrote {output}: {summary.files} files, {summary.bytes} bytes"
               + (f"; {len(summary.skipped)} unreadable (listed in SNAPSHOT.json)"
                  if summary.skipped else ""))


if __name__ == "__main__":
    main()
