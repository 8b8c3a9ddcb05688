"""Journald-friendly logging: one line per event, level first, no timestamps (journald adds
them); a message that repeats is logged once per minute with a count of what was held back."""

from __future__ import annotations

import logging
import sys
import time

REPEAT_WINDOW_S = 60.0


class RepeatFilter(logging.Filter):
    def __init__(self, window_s: float = REPEAT_WINDOW_S):
        super().__init__()
        self.window_s = window_s
        self._seen: dict[tuple[str, str], list] = {}   # (logger, message) -> [first, held]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        now = time.monotonic()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window_s:
            held = entry[1] if entry else 0
            self._seen[key] = [now, 0]
            if held:
                record.msg = f"{record.getMessage()} (repeated {held} more times in the last minute)"
                record.args = ()
            if len(self._seen) > 1000:
                self._seen.clear()
            return True
        entry[1] += 1
        return False


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # APScheduler's own "skipped" warnings carry a changing time; dsmon logs a stable one.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
