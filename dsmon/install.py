"""`dsmon install-service`: the systemd unit with this installation's real paths, a config
skeleton, the state directory and, for a central Prometheus, the remote-scrape drop-in.

Everything is written below `root` (default `/`), so an image build or a test can install into
a directory; the paths written *into* the files are the ones the system sees when that
directory is its root. An existing config is never overwritten (it is the operator's); the
unit and the drop-in are dsmon's and are replaced.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dsmon.agent.config import listen_address
from dsmon.shipped import shipped_dir

UNIT_NAME = "dsmon.service"
UNIT_DIR = Path("etc/systemd/system")
CONFIG_PATH = Path("etc/dsmon/dsmon.toml")
# DynamicUser=yes keeps StateDirectory= under /var/lib/private (0700) and links
# /var/lib/dsmon to it; systemd hands the directory to the dynamic user at start.
STATE_DIR = Path("var/lib/private/dsmon")
REMOTE_DROP_IN = "remote-scrape.conf"
TEMPLATE_EXEC = "/opt/dsmon/bin/dsmon"
RUNBOOK_INDEX = "README.md"


class InstallError(Exception):
    """A one-line reason the service cannot be installed, with the fix."""


def unit_template() -> str:
    return (shipped_dir("systemd", "systemd") / UNIT_NAME).read_text(encoding="utf-8")


def config_template() -> str:
    return (shipped_dir("systemd", "systemd") / "dsmon.toml.example").read_text(encoding="utf-8")


def runbook_index() -> Path:
    return shipped_dir("runbooks", "docs/runbooks") / RUNBOOK_INDEX


def this_executable() -> Path:
    """The `dsmon` command of the running installation: the console script beside this
    Python (a venv's bin/), never resolved through symlinks (that would leave the venv)."""
    invoked = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if invoked is not None and invoked.name == "dsmon" and invoked.is_file():
        return Path(os.path.abspath(invoked))
    beside = Path(os.path.abspath(sys.executable)).parent / "dsmon"
    if beside.is_file():
        return beside
    raise InstallError(f"no dsmon command beside {sys.executable}: install dsmon first "
                       f"(python3 -m venv /opt/dsmon && /opt/dsmon/bin/pip install .) or pass "
                       f"--executable PATH")


def _systemd_word(path: Path) -> str:
    """A path as one ExecStart= word: % is a specifier, and blanks need quoting."""
    text = str(path).replace("%", "%%")
    if any(c in text for c in ' \t"\'\\'):
        raise InstallError(f"{path}: the executable's path has blanks, quotes or backslashes; "
                           f"install dsmon under a plain path such as /opt/dsmon")
    return text


def render_unit(executable: Path, documentation: Path) -> str:
    """The shipped unit with this installation's executable and runbooks."""
    lines = []
    for line in unit_template().splitlines():
        if line.startswith("ExecStart="):
            line = line.replace(TEMPLATE_EXEC, _systemd_word(executable), 1)
        elif line.startswith("Documentation="):
            line = f"Documentation=file:{_systemd_word(documentation)}"
        lines.append(line)
    text = "\n".join(lines) + "\n"
    if TEMPLATE_EXEC in text:
        raise InstallError("the shipped unit changed shape: ExecStart= no longer names "
                           f"{TEMPLATE_EXEC}")
    return text


def render_config(listen: str | None, web_config: str | None) -> str:
    text = config_template()
    if listen is not None:
        text = text.replace('listen = "127.0.0.1:9848"', f'listen = "{listen}"', 1)
    if web_config is not None:
        text = text.replace("[agent]\n", f'[agent]\nweb_config = "{web_config}"   '
                            "# TLS and basic auth (exporter-toolkit format)\n", 1)
    return text


def parse_networks(values: tuple[str, ...] | list[str]) -> list[str]:
    """IPAddressAllow= entries: addresses or CIDR prefixes, checked here rather than ignored
    by systemd with a warning (which would leave the scrape blocked)."""
    networks = []
    for value in values:
        try:
            networks.append(str(ipaddress.ip_network(value.strip(), strict=False)))
        except ValueError:
            raise InstallError(f"--allow-from {value!r} is not an IP address or CIDR prefix "
                               f"(examples: 10.0.0.0/8, 192.0.2.7)") from None
    return networks


def _check_listen(listen: str) -> None:
    """What the agent will accept (dsmon.agent.config's listen_address), refused here rather
    than at the service's first start."""
    try:
        _host, port = listen_address(listen)
    except ValueError:
        port = -1
    if not listen.rpartition(":")[0] or not 0 < port < 65536:
        raise InstallError(f"--listen {listen!r} must be HOST:PORT (example: 0.0.0.0:9848)")


def render_remote_drop_in(networks: list[str]) -> str:
    allow = "\n".join(f"IPAddressAllow={network}" for network in networks)
    return ("# Written by `dsmon install-service --allow-from ...`: the Prometheus servers that\n"
            "# scrape this agent (dsmon.service allows only localhost otherwise).\n"
            f"[Service]\n{allow}\n")


@dataclass
class Installed:
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def install_service(root: Path, executable: Path | None = None, listen: str | None = None,
                    web_config: str | None = None, allow_from: tuple[str, ...] = ()) -> Installed:
    root = Path(root)
    executable = this_executable() if executable is None else Path(executable)
    if not executable.is_absolute():
        raise InstallError(f"--executable {executable}: give an absolute path")
    if not (root / str(executable).lstrip("/")).is_file() and not executable.is_file():
        raise InstallError(f"{executable}: no such file; install dsmon there first")
    if listen is not None:
        _check_listen(listen)
    networks = parse_networks(allow_from)
    documentation = runbook_index()
    result = Installed()
    if listen is not None and not listen.startswith(("127.", "localhost:", "[::1]:")):
        if not networks:
            result.warnings.append(f"listening on {listen} but no --allow-from: the unit "
                                   "allows only localhost, so remote scrapes are dropped")
        if web_config is None:
            result.warnings.append(f"listening on {listen} without --web-config: scrapes are "
                                   "plain HTTP without authentication")

    unit_dir = root / UNIT_DIR
    _write(unit_dir / UNIT_NAME, render_unit(executable, documentation), 0o644, result)
    drop_in = unit_dir / f"{UNIT_NAME}.d" / REMOTE_DROP_IN
    if networks:
        _write(drop_in, render_remote_drop_in(networks), 0o644, result)
    elif drop_in.exists():
        drop_in.unlink()
        result.removed.append(drop_in)

    config = root / CONFIG_PATH
    if config.exists():
        result.kept.append(config)
        if listen is not None or web_config is not None:
            result.warnings.append(f"{config} exists and was kept: set listen and web_config "
                                   "in its [agent] table yourself")
    else:
        _write(config, render_config(listen, web_config), 0o644, result)

    state = root / STATE_DIR
    (state.parent).mkdir(parents=True, exist_ok=True)
    state.parent.chmod(0o700)
    state.mkdir(exist_ok=True)
    state.chmod(0o700)
    result.written.append(state)
    return result


def _write(path: Path, text: str, mode: int, result: Installed) -> None:
    """Through a temporary file beside it, so a reader never sees half a unit; an error names
    the file meant, not the temporary one."""
    temporary = path.with_name(path.name + ".dsmon-new")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(text, encoding="utf-8")
        temporary.chmod(mode)
        temporary.replace(path)
    except OSError as exc:
        if temporary.parent.is_dir():
            temporary.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    result.written.append(path)
