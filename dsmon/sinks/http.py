"""The agent's HTTP endpoints: /metrics, / (landing page), /targets/NAME (a target's live
report), /findings (JSON), /captures/NAME, /healthz; GET and HEAD.

The server knows nothing of the agent: it serves the last `SiteView` the agent handed it
(`publish`), so no request samples, waits on a sampling lock or does I/O beyond its socket.

Serving under load (issue 20: a listen backlog of 5, a thread per connection and no header
timeout gave p99 1.0 s with 50 scrapers, and 200 slow clients held 212 threads):
- one selector thread accepts (backlog BACKLOG, at most ACCEPTS_PER_WAKEUP between two
  selects) and reads each request head without blocking
  (the TLS handshake too), so a slow or idle client costs a buffer, not a thread; it answers
  /metrics and /healthz itself (from memory) and writes the answer as the client reads it; a
  head not complete within HEAD_TIMEOUT_S is dropped, and at most MAX_CONNECTIONS are open at once
  (the agent's descriptor reserve covers them: dsmon/fdbudget.py); when all are taken, an
  answered connection, else the client that has waited longest without sending a request
  head, is dropped for the new one; after its answer the client closes first (CLOSE_WAIT_S),
  so the TIME_WAIT is the client's;
- WORKERS threads answer the other pages (a live page renders for milliseconds); an answer
  that cannot be written within SEND_TIMEOUT_S is abandoned.
"""

from __future__ import annotations

import html
import io
import json
import logging
import queue
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, quote, unquote

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dsmon import __version__

log = logging.getLogger("dsmon.http")

BACKLOG = 128
MAX_CONNECTIONS = 96
WORKERS = 4
HEAD_TIMEOUT_S = 5.0
# Connections accepted per wake-up of the selector. Under a storm the listener is never
# empty: accepting until it is starves every connection whose head arrives after its accept
# (measured: 5,000 scrapes in 20 s, p50 220 ms, each served only when a periodic re-read
# came round; bounded, the same storm is ~40,000 scrapes at p99 ~25 ms).
ACCEPTS_PER_WAKEUP = 16
SELECT_TIMEOUT_S = 0.25     # how often deadlines are checked on a quiet server
CLOSE_WAIT_S = 2.0          # for the client to close after its answer, then the server does
SEND_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 16 * 1024
_END_OF_HEAD = b"\r\n\r\n"


@dataclass(frozen=True)
class SiteView:
    """What the endpoints show, as the agent last published it: built by the agent, read by
    any number of requests. `metrics` renders the exposition (the agent computes its self
    metrics at that moment); `target_page` and `capture` answer None for unknown names."""

    metrics: Callable[[], bytes]
    findings: dict
    target_page: Callable[[str], str | None] = lambda name: None
    capture: Callable[[str], bytes | None] = lambda name: None
    # /debug/stacks: the query (parse_qs) -> (status, content type, body)
    debug_stacks: Callable[[dict], tuple[int, str, bytes]] = \
        lambda query: (404, "text/plain; charset=utf-8", b"no stack sampler\n")


EMPTY_VIEW = SiteView(metrics=lambda: b"", findings={"targets": [], "unresolved": {}})


def _live_link(label: str) -> str:
    """Markup of a link to a target's live page (the label is escaped and URL-quoted)."""
    return f'<a href="/targets/{html.escape(quote(label, safe=""))}">live view</a>'


def landing_page(document: dict) -> str:
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
        rows.append(f"<tr><td>{html.escape(target['target'])}<br>{_live_link(target['target'])}"
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
    """One request whose head is already read; the response goes to `out` (bytes in memory),
    so whoever answers decides how it is written."""

    server_version = f"dsmon/{__version__}"

    def __init__(self, head: bytes, out: io.BytesIO, address, server: "MetricsServer"):
        self._head = head
        self._out = out
        super().__init__(None, address, server)

    def setup(self):
        self.rfile = io.BytesIO(self._head)
        self.wfile = self._out

    def finish(self):
        pass    # `out` is the caller's

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._answer(send_body=True)

    def do_HEAD(self):  # noqa: N802
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        path, _, query = self.path.partition("?")
        web = self.server.web
        if web is not None and not web.authorized(self.headers.get("Authorization")):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="dsmon"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        view = self.server.view
        try:
            status, content_type, body = _route(view, path, query)
        except Exception:  # noqa: BLE001 - answer 500 and keep serving
            log.exception("error serving %s", path)
            status, content_type, body = 500, "text/plain; charset=utf-8", b"internal error\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        log.debug("%s %s", self.address_string(), format % args)


_TEXT = "text/plain; charset=utf-8"
_HTML = "text/html; charset=utf-8"


def _route(view: SiteView, path: str, query: str = "") -> tuple[int, str, bytes]:
    if path == "/metrics":
        return 200, CONTENT_TYPE_LATEST, view.metrics()
    if path == "/findings":
        return 200, "application/json", json.dumps(view.findings, indent=2).encode()
    if path == "/":
        return 200, _HTML, landing_page(view.findings).encode()
    if path.startswith("/captures/"):
        body = view.capture(path.removeprefix("/captures/"))
        return (404, _TEXT, b"no such capture\n") if body is None else \
            (200, "application/json", body)
    if path.startswith("/targets/"):
        page = view.target_page(unquote(path[len("/targets/"):]))
        return (404, _TEXT, b"no such target\n") if page is None else (200, _HTML, page.encode())
    if path == "/debug/stacks":
        return view.debug_stacks(parse_qs(query))
    if path == "/healthz":
        return 200, _TEXT, b"ok\n"
    return 404, _TEXT, b"not found\n"


def _answered_inline(head: bytes) -> bool:
    """Requests answered on the selector thread: the scrape path, from memory in well under a
    millisecond, without handing the connection to a worker and back (two thread wake-ups,
    which on a loaded host cost more than the answer)."""
    line = head.split(b"\r\n", 1)[0].split(b" ")
    return len(line) >= 2 and line[0] in (b"GET", b"HEAD") and \
        line[1].split(b"?", 1)[0] in (b"/metrics", b"/healthz")


@dataclass
class _Connection:
    """A connection the selector thread follows: its head arriving, or its answer leaving."""

    sock: socket.socket
    address: tuple
    deadline: float
    handshaking: bool
    head: bytearray = field(default_factory=bytearray)
    answer: memoryview | None = None      # what is left to send
    sent: bool = False                    # answered: waiting for the client to close


class MetricsServer:
    """Serves the published view on HOST:PORT; `publish` swaps the view (one reference)."""

    def __init__(self, host: str, port: int, web=None, view: SiteView = EMPTY_VIEW):
        self.web = web
        self.view = view
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            self._listener.listen(BACKLOG)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self.server_address = self._listener.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._connections: dict[int, _Connection] = {}
        self._requests: queue.Queue = queue.Queue()
        self._open = 0              # connections accepted and not yet closed
        self._open_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._select_loop, name="dsmon-http",
                                          daemon=True)]
        self._threads += [threading.Thread(target=self._work, name=f"dsmon-http-{n}",
                                           daemon=True) for n in range(WORKERS)]

    def publish(self, view: SiteView) -> None:
        self.view = view   # requests see the old view or the new one, never half of each

    def start(self) -> "MetricsServer":
        for thread in self._threads:
            thread.start()
        return self

    def shutdown(self) -> None:
        self._stopping.set()
        for _ in range(WORKERS):
            self._requests.put(None)
        deadline = time.monotonic() + 0.5     # a worker stuck writing to a client is left
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def server_close(self) -> None:
        for connection in list(self._connections.values()):
            self._close(connection.sock)
        self._connections.clear()
        self._selector.close()
        self._listener.close()

    def answer(self, head: bytes, address) -> bytes:
        out = io.BytesIO()
        _Handler(head, out, address, self)
        return out.getvalue()

    # -- the selector thread: accept, handshake, read heads, write inline answers ----------

    def _select_loop(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ)
        while not self._stopping.is_set():
            try:
                events = self._selector.select(timeout=SELECT_TIMEOUT_S)
            except OSError:
                return
            for key, mask in events:
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    connection = self._connections.get(key.fd)
                    if connection is not None:
                        self._advance(connection)
            now = time.monotonic()
            for connection in [c for c in self._connections.values() if c.deadline < now]:
                log.debug("%s: no complete request head or answer sent in time; closed",
                          connection.address[0])
                self._drop(connection)

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):    # the rest at the next select (level-triggered)
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:   # EMFILE and the like: say so, keep the listener
                log.warning("cannot accept a connection: %s", exc)
                return
            with self._open_lock:
                full = self._open >= MAX_CONNECTIONS
            if full and self._connections:
                # Room is made by a connection already answered (only its close is awaited),
                # else by the client that has waited longest without sending a request head:
                # idle connections cannot lock scrapers out.
                self._drop(min(self._connections.values(),
                               key=lambda c: (not c.sent, c.deadline)))
                full = False
            if full:                 # every place answers a request: the client retries
                sock.close()
                continue
            with self._open_lock:
                self._open += 1
            sock.setblocking(False)
            handshaking = False
            if self.web is not None and self.web.ssl_context is not None:
                sock = self.web.ssl_context.wrap_socket(sock, server_side=True,
                                                        do_handshake_on_connect=False)
                handshaking = True
            connection = _Connection(sock, address, time.monotonic() + HEAD_TIMEOUT_S,
                                     handshaking)
            self._connections[sock.fileno()] = connection
            self._selector.register(sock, selectors.EVENT_READ)
            self._advance(connection)

    def _advance(self, connection: _Connection) -> None:
        sock = connection.sock
        try:
            if connection.sent:
                # The client closes first (it has the Content-Length), so the TIME_WAIT is
                # its own: thousands of scrapes a second from one address then never meet a
                # 4-tuple still in TIME_WAIT here (a dropped SYN, a 1-3 s retry).
                if not sock.recv(65536):
                    self._drop(connection)
                return
            if connection.answer is not None:
                self._send(connection)
                return
            if connection.handshaking:
                sock.do_handshake()
                connection.handshaking = False
                self._selector.modify(sock, selectors.EVENT_READ)
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    self._drop(connection)
                    return
                connection.head += chunk
                if _END_OF_HEAD in connection.head:
                    self._dispatch(connection, bytes(connection.head))
                    return
                if len(connection.head) > MAX_HEAD_BYTES:
                    self._drop(connection)
                    return
        except ssl.SSLWantReadError:
            self._selector.modify(sock, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            self._selector.modify(sock, selectors.EVENT_WRITE)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:    # a reset, a failed handshake (plain HTTP on a TLS port)
            log.debug("%s: %s", connection.address[0], exc)
            self._drop(connection)

    def _dispatch(self, connection: _Connection, head: bytes) -> None:
        if _answered_inline(head):
            connection.answer = memoryview(self.answer(head, connection.address))
            connection.deadline = time.monotonic() + SEND_TIMEOUT_S
            self._send(connection)
            return
        self._selector.unregister(connection.sock)
        del self._connections[connection.sock.fileno()]
        self._requests.put((connection.sock, connection.address, head))

    def _send(self, connection: _Connection) -> None:
        """As much of the answer as the socket takes now; the rest when it is writable."""
        try:
            while connection.answer:
                sent = connection.sock.send(connection.answer[:1 << 20])
                connection.answer = connection.answer[sent:]
                if sent == 0:
                    break
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
            pass   # the socket's buffer is full (16 KiB to start with): wait until it drains
        if connection.answer:
            self._selector.modify(connection.sock, selectors.EVENT_WRITE)
            return
        connection.sent = True
        connection.deadline = time.monotonic() + CLOSE_WAIT_S
        self._selector.modify(connection.sock, selectors.EVENT_READ)

    def _drop(self, connection: _Connection) -> None:
        self._connections.pop(connection.sock.fileno(), None)
        try:
            self._selector.unregister(connection.sock)
        except (KeyError, ValueError):
            pass
        self._close(connection.sock)

    def _close(self, sock: socket.socket) -> None:
        try:
            sock.close()
        finally:
            with self._open_lock:
                self._open -= 1

    # -- the workers: everything else (pages that take milliseconds to render) --------------

    def _work(self) -> None:
        while True:
            item = self._requests.get()
            if item is None:
                return
            sock, address, head = item
            try:
                answer = self.answer(head, address)
                sock.setblocking(True)
                sock.settimeout(SEND_TIMEOUT_S)
                sock.sendall(answer)
                _end(sock)
            except OSError as exc:   # the client went away or stopped reading
                log.debug("%s: %s", address[0], exc)
            except Exception:  # noqa: BLE001 - one bad request never ends the server
                log.exception("error answering %s", address[0])
            finally:
                self._close(sock)


def _end(sock: socket.socket) -> None:
    """The answer is complete: tell the client (EOF) before closing."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def start_server(host: str, port: int, web=None, view: SiteView = EMPTY_VIEW) -> MetricsServer:
    return MetricsServer(host, port, web, view).start()
