"""Headless Chromium driven over the DevTools protocol, for the HTML report tests.

The protocol (not `--dump-dom`) is used because it can prove what a screenshot cannot: every
network request the page made (Network.requestWillBeSent) and every console message or
uncaught exception (Runtime.* and Log.entryAdded).
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import websocket   # websocket-client, a test extra

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Headless, no sandbox (tests may run as root), and every background fetch of the browser's
# own switched off, so a request seen is one the page made.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps",
         "--disable-extensions", "--disable-domain-reliability", "--no-first-run",
         "--no-default-browser-check", "--metrics-recording-only", "--mute-audio",
         "--hide-scrollbars",
         "--disable-features=Translate,OptimizationHints,MediaRouter",
         "--remote-debugging-port=0", "--remote-allow-origins=*")


@dataclass
class PageVisit:
    url: str
    requests: list[str] = field(default_factory=list)
    console: list[dict] = field(default_factory=list)      # {"level", "text"}
    exceptions: list[str] = field(default_factory=list)
    result: object = None                                   # what the probe script returned
    screenshot: bytes = b""
    seconds: float = 0.0

    @property
    def errors(self) -> list[str]:
        return self.exceptions + [m["text"] for m in self.console
                                  if m["level"] in ("error", "assert")]


class Chromium:
    """One browser process with its own profile directory; close() ends it."""

    def __init__(self, profile: Path, timeout: float = 90.0):
        if CHROMIUM is None:
            raise RuntimeError("chromium is not installed (scripts/test installs Debian's)")
        self.timeout = timeout
        self.profile = profile
        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--window-size=1200,900",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        self.port = int(port_file.read_text().split("\n")[0])
        self._ids = itertools.count(1)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def visit(self, url: str, probe: str, settle_s: float = 0.5,
              scale: float = 1.0) -> PageVisit:
        """Open `url` in a fresh tab, wait for the load event, run the `probe` expression
        (its value must be JSON-serialisable) and take a full-page screenshot."""
        browser = websocket.create_connection(self._browser_ws(), timeout=self.timeout,
                                              suppress_origin=True)
        try:
            target = self._call(browser, "Target.createTarget", {"url": "about:blank"})
            page = websocket.create_connection(
                f"ws://127.0.0.1:{self.port}/devtools/page/{target['targetId']}",
                timeout=self.timeout, suppress_origin=True)
            try:
                return self._visit(page, url, probe, settle_s, scale)
            finally:
                page.close()
                self._call(browser, "Target.closeTarget", {"targetId": target["targetId"]})
        finally:
            browser.close()

    def _browser_ws(self) -> str:
        path = (self.profile / "DevToolsActivePort").read_text().split("\n")[1]
        return f"ws://127.0.0.1:{self.port}{path}"

    def _visit(self, page, url: str, probe: str, settle_s: float, scale: float) -> PageVisit:
        visit = PageVisit(url)
        events: list[dict] = []
        for domain in ("Page", "Network", "Runtime", "Log"):
            self._call(page, f"{domain}.enable", {}, events)
        started = time.monotonic()
        self._call(page, "Page.navigate", {"url": url}, events)
        self._wait_event(page, "Page.loadEventFired", events)
        visit.seconds = time.monotonic() - started
        time.sleep(settle_s)    # late requests or errors would show up here
        result = self._call(page, "Runtime.evaluate",
                            {"expression": f"JSON.stringify({probe})", "returnByValue": True},
                            events)
        if "exceptionDetails" in result:
            raise AssertionError(f"probe failed: {result['exceptionDetails']}")
        visit.result = json.loads(result["result"]["value"])
        metrics = self._call(page, "Page.getLayoutMetrics", {}, events)
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = self._call(page, "Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                     "scale": scale}}, events)
        visit.screenshot = base64.b64decode(shot["data"])
        for event in events:
            params = event.get("params", {})
            method = event.get("method")
            if method == "Network.requestWillBeSent":
                visit.requests.append(params["request"]["url"])
            elif method == "Runtime.consoleAPICalled":
                visit.console.append({"level": params["type"], "text": " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params["args"])})
            elif method == "Runtime.exceptionThrown":
                visit.exceptions.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Log.entryAdded":
                entry = params["entry"]
                visit.console.append({"level": entry["level"], "text": entry["text"]})
        return visit

    def _call(self, ws, method: str, params: dict, events: list | None = None) -> dict:
        ident = next(self._ids)
        ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            message = json.loads(ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if events is not None and "method" in message:
                events.append(message)
        raise TimeoutError(method)

    def _wait_event(self, ws, name: str, events: list) -> None:
        if any(e.get("method") == name for e in events):
            return
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            message = json.loads(ws.recv())
            if "method" in message:
                events.append(message)
                if message["method"] == name:
                    return
        raise TimeoutError(name)


# Per chart: how many data-carrying elements (class "mark": a line, a bar, a heatmap colour
# group, a matrix cell) it drew, whether it said "not available" (empty) and whether it said
# its data was measured and zero throughout (zero, e.g. "no I/O").
CHART_PROBE = """(() => {
  const charts = {};
  for (const figure of document.querySelectorAll('figure[data-chart]')) {
    charts[figure.dataset.chart] = {
      marks: figure.querySelectorAll('.mark').length,
      empty: figure.dataset.empty || null,
      zero: figure.dataset.zero || null,
      width: figure.getBoundingClientRect().width,
    };
  }
  return {charts, title: document.title, findings: document.querySelectorAll('.finding').length};
})()"""
