"""Core types shared by collectors, analysis and reports. Pure data, no I/O."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from dsmon.sources import SourceError

T = TypeVar("T")


class Status(str, enum.Enum):
    OK = "ok"
    NO_DATA = "no_data"      # the source does not apply here (no PSI, no cgroup limit, ...)
    PARTIAL = "partial"      # some fields unavailable; `unavailable` says which and why
    FAILED = "failed"        # nothing usable; `error` says why


@dataclass
class Batch:
    """One run of one collector: its data (None when it failed), status and timing.

    Absence is a missing value plus a status and a reason, never a zero.
    """

    collector: str
    mono_ts: float
    wall_ts: float
    status: Status
    data: Any = None
    error: str = ""
    hint: str = ""
    unavailable: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in (Status.OK, Status.PARTIAL)


def run_collector(name: str, collect: Callable[[], T], no_data_kinds=("missing",)) -> Batch:
    """Run one collector once; the only place a collector's failure becomes a status.

    `collect` returns its data, or a (data, unavailable) pair where `unavailable` maps field
    names to reasons. A SourceError whose kind is in `no_data_kinds` means "not on this host".
    Any other exception is a bug in dsmon: it is reported, with its type, as a failure of this
    collector only.
    """
    mono, wall = time.monotonic(), time.time()
    started = time.perf_counter()
    try:
        result = collect()
    except SourceError as exc:
        status = Status.NO_DATA if exc.kind in no_data_kinds else Status.FAILED
        return Batch(name, mono, wall, status, None, exc.describe(), exc.hint,
                     duration_s=time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 - one collector must never take the others down
        return Batch(name, mono, wall, Status.FAILED, None,
                     f"internal error in collector {name}: {type(exc).__name__}: {exc}",
                     "this is a dsmon bug; please report it with `dsmon snapshot`",
                     duration_s=time.perf_counter() - started)
    unavailable: dict[str, str] = {}
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict):
        result, unavailable = result
    status = Status.PARTIAL if unavailable else Status.OK
    return Batch(name, mono, wall, status, result, unavailable=unavailable,
                 duration_s=time.perf_counter() - started)
