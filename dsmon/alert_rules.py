"""The Prometheus alert rules with runbook links under your base URL (a build step, as the
monitoring mixins do with their runbook URL pattern).

    python3 -m dsmon.alert_rules --runbook-base-url https://wiki.example.com/dsmon/runbooks/ \\
        -o /etc/prometheus/rules/dsmon-alerts.yml

Every alert's `runbook_url` is BASE + ALERT + ".md"; the pages are docs/runbooks/*.md, shipped
inside the package (dsmon/runbooks) so they can be published from an installed copy. An
external label would put the URL on every series remote-written or federated (part of each
series' identity in Thanos or Mimir), so the base URL is rendered into the file instead.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

from dsmon.shipped import shipped_dir

RULES_FILE = "dsmon-alerts.yml"
# The base the shipped file carries: a placeholder domain (RFC 2606) to render over.
DEFAULT_RUNBOOK_BASE = "https://dsmon.example/runbooks/"
_RUNBOOK_LINE = re.compile(r"^(\s*runbook_url:\s*)(\S+?)(Dsmon[A-Za-z0-9]+\.md)[ \t]*$", re.M)


class BaseUrlError(ValueError):
    pass


def shipped_rules() -> Path:
    return shipped_dir("prometheus", "rules/prometheus") / RULES_FILE


def check_base_url(base: str) -> str:
    """An absolute http(s) URL ending in '/'; a one-line reason otherwise."""
    parsed = urlparse(base)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise BaseUrlError(f"--runbook-base-url {base!r} must be an absolute http(s) URL "
                           "(example: https://wiki.example.com/dsmon/runbooks/)")
    return base if base.endswith("/") else base + "/"


def render_rules(text: str, base: str) -> str:
    """`text` (the rules file) with every runbook_url under `base`; comments kept."""
    base = check_base_url(base)
    rendered, count = _RUNBOOK_LINE.subn(lambda m: m.group(1) + base + m.group(3), text)
    if count == 0:
        raise BaseUrlError("no runbook_url annotations found in the rules file")
    return rendered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m dsmon.alert_rules",
                                     description="Write dsmon's Prometheus alert rules with "
                                                 "runbook links under a base URL.")
    parser.add_argument("--runbook-base-url", required=True,
                        help="where the runbook pages are published (BASE/ALERT.md)")
    parser.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    try:
        text = render_rules(shipped_rules().read_text(encoding="utf-8"), args.runbook_base_url)
    except BaseUrlError as exc:
        print(f"dsmon: {exc}", file=sys.stderr)
        return 2
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"dsmon: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return 5
    return 0


if __name__ == "__main__":
    sys.exit(main())
