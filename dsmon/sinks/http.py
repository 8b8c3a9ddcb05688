"""The agent's HTTP endpoints: /metrics, / (landing page), /targets/NAME (a target's live
report), /findings (JSON), /healthz.

Every handler reads published state only: no sampling and no I/O on the request path.
"""

from __future__ import annotations

import html
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from dsmon import __version__
from dsmon.agent.live import live_link, live_page

log = logging.getLogger("dsmon.http")


def findings_document(agent) -> dict:
    with agent.lock:
        runtimes = list(agent.targets.values())
    targets = []
    for runtime in runtimes:
        identity = runtime.static.identity
        targets.append({
            "target": runtime.label, "pid": identity.pid, "comm": identity.comm,
            "engine": runtime.monitor.engine_name or None, "found_by": runtime.resolved.spec.describe(),
            "gone": runtime.gone or None,
            "findings": [_with_captures(finding.as_dict(), agent, runtime.label)
                         for finding in runtime.monitor.engine.current()],
        })
    now = time.monotonic()
    return {"dsmon_version": __version__, "generated_at": time.time(), "targets": targets,
            "oom_killed_seconds_ago": {label: round(now - when, 1)
                                       for label, when in agent.oom_killed.items()},
            "unresolved": agent.resolver.problems,
            "captures": {"directory": agent.captures.directory,
                         "problem": agent.captures.problem or None,
                         "recent": [_capture_link(c) for c in agent.captures.listing()[:20]]}}


def _capture_link(record: dict) -> dict:
    return {**record, "url": f"/captures/{record['name']}"}


def _with_captures(finding: dict, agent, target: str) -> dict:
    """A finding's stack captures (newest first), linked for the operator."""
    finding["captures"] = [_capture_link(c) for c in
                           agent.captures.for_target(target, finding["rule_id"])[:5]]
    return finding


def landing_page(agent) -> str:
    document = findings_document(agent)
    rows = []
    for target in document["targets"]:
        findings = target["findings"] or []
        items = "".join(
            f"<li><b>[{html.escape(f['severity'])} {html.escape(f['state'])}] "
            f"{html.escape(f['rule_id'])}</b>: {html.escape(f['summary'])}"
            f"<br><i>fix:</i> {html.escape(f['hint'])}<ul>"
            + "".join(f"<li>{html.escape(e['text'])}</li>" for e in f["evidence"])
            + "".join(f'<li>stacks captured: <a href="{html.escape(c["url"])}">'
                      f'{html.escape(c["name"])}</a> ({html.escape(c["status"])})</li>'
                      for c in f.get("captures", []))
            + "</ul></li>" for f in findings) or "<li>no findings</li>"
        rows.append(f"<tr><td>{html.escape(target['target'])}<br>{live_link(target['target'])}"
                    f"</td><td>{target['pid']}</td>"
                    f"<td>{html.escape(target['comm'])}</td>"
                    f"<td>{html.escape(target['engine'] or '')}</td>"
                    f"<td>{html.escape(target['found_by'])}</td><td><ul>{items}</ul></td></tr>")
    unresolved = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>"
                         for k, v in document["unresolved"].items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>dsmon</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:4px 8px;vertical-align:top}}</style></head>
<body><h1>dsmon {html.escape(__version__)}</h1>
<p><a href="/metrics">/metrics</a> · <a href="/findings">/findings</a> (JSON) ·
<a href="/healthz">/healthz</a></p>
<h2>Targets</h2>
<table><tr><th>target</th><th>pid</th><th>comm</th><th>engine</th><th>found by</th>
<th>findings</th></tr>{''.join(rows) or '<tr><td colspan="6">none: host-only mode</td></tr>'}
</table>{'<h2>Not found</h2><ul>' + unresolved + '</ul>' if unresolved else ''}
</body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    agent = None
    web = None
    server_version = f"dsmon/{__version__}"

    def do_GET(self):  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if self.web is not None and not self.web.authorized(self.headers.get("Authorization")):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="dsmon"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        try:
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.agent.exposition.registry))
            elif path == "/findings":
                self._send(200, "application/json",
                           json.dumps(findings_document(self.agent), indent=2).encode())
            elif path == "/":
                self._send(200, "text/html; charset=utf-8", landing_page(self.agent).encode())
            elif path.startswith("/captures/"):
                body = self.agent.captures.read(path.removeprefix("/captures/"))
                if body is None:
                    self._send(404, "text/plain; charset=utf-8", b"no such capture\n")
                else:
                    self._send(200, "application/json", body)
            elif path.startswith("/targets/"):
                page = live_page(self.agent, unquote(path[len("/targets/"):]))
                if page is None:
                    self._send(404, "text/plain; charset=utf-8", b"no such target\n")
                else:
                    self._send(200, "text/html; charset=utf-8", page.encode())
            elif path == "/debug/stacks":
                self._send(*self.agent.stacks.debug_response(parse_qs(urlsplit(self.path).query)))
            elif path == "/healthz":
                self._send(200, "text/plain; charset=utf-8", b"ok\n")
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")
        except BrokenPipeError:
            pass
        except Exception:  # noqa: BLE001 - answer 500 and keep serving
            log.exception("error serving %s", path)
            self._send(500, "text/plain; charset=utf-8", b"internal error\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def start_server(agent, host: str, port: int, web=None) -> _Server:
    handler = type("Handler", (_Handler,), {"agent": agent, "web": web})
    server = _Server((host, port), handler)
    if web is not None and web.ssl_context is not None:
        # The handshake happens in each request's thread, not in the accept loop, so a slow
        # or broken client cannot stall the other scrapes.
        server.socket = web.ssl_context.wrap_socket(server.socket, server_side=True,
                                                    do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, name="dsmon-http", daemon=True)
    thread.start()
    return server
