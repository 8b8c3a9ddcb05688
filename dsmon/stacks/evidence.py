"""Which Python stacks back a finding: the threads that held the GIL, the busiest Python
threads, and the Python threads among those blocked in I/O. The same selection serves every
rule that asks for `capture: stack`, so a rule file needs no code to cite stacks."""

from __future__ import annotations

from dsmon.features import FS_WAIT_CHANNELS

CITED_THREADS = 4


def stack_evidence(python: dict, threads: dict) -> dict:
    """From the report's `python` and `threads` sections."""
    if python.get("status") != "ok":
        return {"status": python.get("status"), "error": python.get("error", ""),
                "hint": python.get("hint", "")}
    by_tid = {t["tid"]: t for t in python["threads"] if t["tid"] is not None}
    # Blocked: in D state during the window, or asleep in a FUSE/network filesystem wait.
    blocked_tids = [row["tid"] for row in threads.get("blocked", [])]
    blocked_tids += [row["tid"] for row in threads.get("all", [])
                     if (row.get("wchan") or "").startswith(FS_WAIT_CHANNELS)
                     and row["tid"] not in blocked_tids]

    def cite(thread: dict, why: str) -> dict:
        top = thread["top_stacks"][0] if thread["top_stacks"] else {"frames": [], "share": None}
        return {"tid": thread["tid"], "name": thread["name"], "why": why,
                "gil_ratio": thread["gil_ratio"], "active_ratio": thread["active_ratio"],
                "cpu_ratio": thread["cpu_ratio"], "stack_share": top["share"],
                "frames": top["frames"]}

    cited: list[dict] = []
    seen: set = set()
    holders = sorted((t for t in python["threads"] if t["gil_ratio"] > 0),
                     key=lambda t: -t["gil_ratio"])
    busiest = [t for t in python["threads"] if (t["cpu_ratio"] or 0) > 0 or t["active_ratio"] > 0]
    blocked = [by_tid[tid] for tid in blocked_tids if tid in by_tid]
    for group, why in ((holders, "held the GIL"), (blocked, "blocked in I/O"),
                       (busiest, "busy")):
        for thread in group[:CITED_THREADS]:
            if thread["tid"] not in seen:
                seen.add(thread["tid"])
                cited.append(cite(thread, why))
    return {"status": "ok", "samples": python["samples"],
            "gil_held_ratio": python["gil_held_ratio"],
            "blocked_threads_without_python_stack": len([t for t in blocked_tids
                                                         if t not in by_tid]),
            "threads": cited}
