"""Evidence capture for the agent: a py-spy dump taken when a finding that asks for one
(`capture: stack` in its rule) starts firing, kept in the state directory with retention.

A capture is one JSON file, written atomically with mode 0600 (stacks name files and, with
locals, can hold secrets). Captures are rate-limited per target, size-capped, and pruned by
count and age, so a flapping finding cannot fill the disk.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field

from dsmon.stacks.pyspy import PySpy, PySpyError

log = logging.getLogger("dsmon.capture")

_NAME = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[A-Za-z0-9_.:-]{1,64}-[a-z0-9-]{1,64}-[0-9]+\.json$")


@dataclass(frozen=True)
class CaptureSettings:
    enabled: bool = True
    directory: str = ""              # "" = $STATE_DIRECTORY/captures, else /var/lib/dsmon/captures
    min_interval_s: float = 300.0    # per target
    max_bytes: int = 1024 * 1024
    keep: int = 50
    max_age_s: float = 7 * 86400.0
    with_locals: bool = False        # locals can hold secrets: only when the user asks
    pyspy_path: str = ""
    timeout_s: float = 2.0

    def resolved_directory(self) -> str:
        if self.directory:
            return self.directory
        state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        return os.path.join(state or "/var/lib/dsmon", "captures")


@dataclass
class CaptureRecord:
    name: str
    target: str
    pid: int
    rule_id: str
    captured_at: float
    status: str                     # ok, failed
    bytes: int = 0
    error: str = ""
    hint: str = ""
    truncated: bool = False


@dataclass
class CaptureStore:
    settings: CaptureSettings
    pyspy: PySpy | None = None
    results: dict = field(default_factory=dict)      # result -> count (ok/failed/skipped)
    records: list = field(default_factory=list)      # CaptureRecord, oldest first

    def __post_init__(self):
        self.directory = self.settings.resolved_directory()
        if self.pyspy is None:
            self.pyspy = PySpy(self.settings.pyspy_path or None, self.settings.timeout_s,
                               explicit=bool(self.settings.pyspy_path))
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._sequence = 0
        self.problem = ""
        self._opened = False
        # Earlier captures are listed from the start; the directory is created only when the
        # first capture is written, so an agent that never captures leaves no trace.
        if self.settings.enabled and os.path.isdir(self.directory):
            self._open()

    def _open(self) -> None:
        self._opened = True
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            probe = os.path.join(self.directory, ".write-test")
            with open(probe, "w"):
                pass
            os.unlink(probe)
        except OSError as exc:
            self.problem = (f"captures disabled: cannot write {self.directory}: {exc.strerror}; "
                            "set [captures] dir to a writable directory (under systemd, "
                            "StateDirectory=dsmon gives /var/lib/dsmon)")
            log.warning("%s", self.problem)
            return
        for name in sorted(os.listdir(self.directory)):
            if _NAME.match(name):
                self.records.append(self._load_record(name))
        self.records = [r for r in self.records if r is not None]
        self._prune(time.time())

    def _load_record(self, name: str) -> CaptureRecord | None:
        try:
            with open(os.path.join(self.directory, name), "rb") as handle:
                document = json.load(handle)
            return CaptureRecord(name, document["target"], document["pid"], document["rule_id"],
                                 document["captured_at"], document["status"],
                                 os.path.getsize(os.path.join(self.directory, name)),
                                 document.get("error", ""), document.get("hint", ""),
                                 document.get("truncated", False))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @property
    def active(self) -> bool:
        return self.settings.enabled and not self.problem

    def should_capture(self, target: str, now: float | None = None) -> bool:
        """Claims the target's slot: True at most once per min_interval per target."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if not self.active:
                return False
            last = self._last.get(target)
            if last is not None and now - last < self.settings.min_interval_s:
                self.results["skipped"] = self.results.get("skipped", 0) + 1
                return False
            self._last[target] = now
            return True

    def capture(self, target: str, pid: int, rule_id: str, summary: str,
                context: dict | None = None) -> CaptureRecord | None:
        """Take one dump now and store it. Never raises for py-spy's failures: a failed
        capture is stored too, with its reason, so /findings says why there are no stacks."""
        if not self.active:
            return None
        if not self._opened:
            with self._lock:
                self._open()
            if not self.active:
                return None
        started = time.monotonic()
        wall = time.time()
        document = {"target": target, "pid": pid, "rule_id": rule_id, "summary": summary,
                    "captured_at": wall, "context": context or {}, "locals": self.settings.with_locals,
                    "status": "ok", "error": "", "hint": "", "truncated": False, "threads": []}
        try:
            threads = self.pyspy.dump(pid, with_locals=self.settings.with_locals)
            document["threads"] = [_thread_dict(t) for t in threads]
        except PySpyError as exc:
            document.update(status="failed", error=str(exc), hint=exc.hint)
        document["dump_seconds"] = round(time.monotonic() - started, 4)
        body = _fit(document, self.settings.max_bytes)
        with self._lock:
            self._sequence += 1
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall))
            name = f"{stamp}-{_safe(target)}-{rule_id}-{self._sequence}.json"
            record = CaptureRecord(name, target, pid, rule_id, wall, document["status"],
                                   len(body), document["error"], document["hint"],
                                   b'"truncated": true' in body)
            try:
                _write_atomic(os.path.join(self.directory, name), body)
            except OSError as exc:
                self.results["failed"] = self.results.get("failed", 0) + 1
                log.warning("cannot store capture %s: %s", name, exc.strerror)
                return None
            self.records.append(record)
            result = "ok" if record.status == "ok" else "failed"
            self.results[result] = self.results.get(result, 0) + 1
            self._prune(wall)
        if record.status != "ok":
            log.warning("stack capture for %s (%s) failed: %s", target, rule_id, record.error)
        return record

    def _prune(self, now_wall: float) -> None:
        keep = [r for r in self.records if now_wall - r.captured_at <= self.settings.max_age_s]
        keep = keep[-self.settings.keep:] if self.settings.keep else []
        for record in self.records:
            if record not in keep:
                try:
                    os.unlink(os.path.join(self.directory, record.name))
                except OSError:
                    pass
        self.records = keep

    def for_target(self, target: str, rule_id: str | None = None) -> list[dict]:
        with self._lock:
            return [asdict(r) for r in reversed(self.records)
                    if r.target == target and (rule_id is None or r.rule_id == rule_id)]

    def listing(self) -> list[dict]:
        with self._lock:
            return [asdict(r) for r in reversed(self.records)]

    def read(self, name: str) -> bytes | None:
        """A stored capture by name; None for anything not in the index (no path tricks)."""
        with self._lock:
            if not _NAME.match(name) or name not in {r.name for r in self.records}:
                return None
        try:
            with open(os.path.join(self.directory, name), "rb") as handle:
                return handle.read()
        except OSError:
            return None


def _thread_dict(thread) -> dict:
    entry = {"thread_id": thread.thread_id, "os_thread_id": thread.os_thread_id,
             "name": thread.name, "active": thread.active, "owns_gil": thread.owns_gil,
             "frames": [frame.label() for frame in thread.frames]}
    if thread.locals is not None:
        entry["locals"] = [list(values) for values in thread.locals]
    return entry


def _fit(document: dict, max_bytes: int) -> bytes:
    """Serialise within max_bytes: active threads first, then cut idle threads and deep
    frames, and say so."""
    body = json.dumps(document, indent=1).encode()
    if len(body) <= max_bytes:
        return body
    threads = sorted(document["threads"], key=lambda t: (not t["owns_gil"], not t["active"]))
    document = dict(document, truncated=True, threads_total=len(threads))
    for frames_kept in (16, 8, 3):
        for thread in threads:
            thread["frames"] = thread["frames"][:frames_kept]
            thread.pop("locals", None)
        kept = list(threads)
        while kept:
            body = json.dumps(dict(document, threads=kept), indent=1).encode()
            if len(body) <= max_bytes:
                return body
            kept = kept[:max(0, len(kept) * 3 // 4)]
    return json.dumps(dict(document, threads=[]), indent=1).encode()


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", label)[:64] or "target"


def _write_atomic(path: str, body: bytes) -> None:
    temporary = path + ".tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(body)
        os.replace(temporary, path)
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
