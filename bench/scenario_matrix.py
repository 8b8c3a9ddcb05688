"""Scenario matrix: real workloads over a parameter grid, each diagnosed by `dsmon diagnose
--format json`, judged against findings expected from the physics of the workload.

    .venv/bin/python -m bench.scenario_matrix                 # all scenarios, writes docs/
    .venv/bin/python -m bench.scenario_matrix --only 'gil-'   # a regex over scenario ids
    .venv/bin/python -m bench.scenario_matrix --list          # ids and expectations, no runs
    .venv/bin/python -m bench.scenario_matrix --render        # the .md again from the .json
    .venv/bin/python -m bench.scenario_matrix --previous OLD.json  # also list changed cells

The grid: thread counts 3, 4, 8 and 24 of four workloads (PyTorch matmuls with
torch.set_num_threads, NumPy matmuls on OpenBLAS with OPENBLAS_NUM_THREADS, pure-Python threads
holding the GIL, hashlib threads that release it), on a cpuset of 1 or 2 CPUs (taskset), alone
or beside a hog that fills the same CPUs 2 s on / 2 s off (one hashlib thread per CPU, with
8 times the target's cpu.shares, as in tests/test_scenarios_cpu.py); controls with 1-2 threads; page
cache (dirty and written-back) filling a 200 MiB memory cgroup; anonymous growth, slow and fast,
toward a cgroup limit; a kernel thread (pid 2).

Each scenario carries its EXPECTED cells, written from the workload's physics, never from what
dsmon prints: `must` (the finding reaches `firing` in the window), `must-not` (it never reaches
`firing`; pending for less than the rule's `for:` is tolerated, that is what `for:` is for) and
`allowed` (either is right). Cells are rule ids plus a few report checks (`hint:torch`,
`report:*`, `any:...`). Writes docs/scenario-matrix.json and docs/scenario-matrix.md (the
confusion matrix, mismatches marked). tests/test_scenario_matrix.py runs a subset in the suite.

Isolation: CPU processes run in the cgroup v1 cpu groups of tests/helpers/cpu_groups.py (a
parent with the largest cpu.shares), so the competition a scenario sets up is what its target
sees even on a shared machine; memory scenarios add a memory cgroup (needs root).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from dsmon.engine.rules import load_rules
from tests.helpers.cgroups import memory_cgroup
from tests.helpers.cpu_groups import diagnose, scenario_groups, started
from tests.helpers.spawn import REPO, WORKLOAD

HELPERS = REPO / "tests" / "helpers"
CPU_WORKLOADS = HELPERS / "cpu_workloads.py"
PAGE_CACHE = HELPERS / "page_cache.py"
MIB = 1 << 20
THREAD_COUNTS = (3, 4, 8, 24)
CPUSETS = (1, 2)
WORKLOADS = ("torch", "numpy", "gil", "hashlib")
HOG_PHASE = ("--on", "2", "--off", "2")
# At 6 s gil-contention (py-spy warm-up, then for: 3s) fired at 6.0 s: on the edge.
DURATION = "8s"
INTERVAL = "1s"

MUST, MUST_NOT, ALLOWED = "must", "must-not", "allowed"
# A cell that fires when either rule fires: the cause is shared (own threads and a neighbour).
ANY_CONTENTION = "any:thread-oversubscription,cpu-fluctuation-contention"
HINT_TORCH = "hint:torch"
HINT_GIL = "hint:gil"
EXITED = "report:exited"
KERNEL_THREAD_NAMED = "report:kernel-thread-named"
CGROUP_MEMORY_AS_OWN = "report:cgroup-memory-as-own"
# Two rules naming the same cause (their `cause:`) firing at the same time: never expected.
CAUSE_NAMED_TWICE = "report:cause-named-twice"
REPORT_CELLS = (ANY_CONTENTION, HINT_TORCH, HINT_GIL, EXITED, KERNEL_THREAD_NAMED,
                CGROUP_MEMORY_AS_OWN, CAUSE_NAMED_TWICE)


@dataclass(frozen=True)
class Expect:
    kind: str        # MUST, MUST_NOT or ALLOWED
    reason: str


@dataclass
class Scenario:
    id: str
    title: str
    family: str                      # cpu, memory or kernel-thread
    workload: str
    threads: int = 0
    cpus: int = 0                    # CPUs in the cpuset (0: as the machine gives)
    hog: bool = False
    limit_mib: int = 0               # memory cgroup limit (memory family)
    rate_mib: float = 0.0            # growth or I/O rate per second (memory family)
    expected: dict[str, Expect] = field(default_factory=dict)


# --- expectations -----------------------------------------------------------------------------

def _quiet_defaults(rule_ids: list[str]) -> dict[str, Expect]:
    """What no scenario here creates: no GPU, one NUMA node, no CPU quota, no OOM kill."""
    expected = {CAUSE_NAMED_TWICE: Expect(MUST_NOT, "one cause, one finding: rules that name "
                                                   "the same cause inhibit each other")}
    for rule_id in rule_ids:
        if rule_id.startswith("gpu-"):
            expected[rule_id] = Expect(MUST_NOT, "no GPU in any scenario")
        elif rule_id.startswith("numa-"):
            expected[rule_id] = Expect(MUST_NOT, "one NUMA node (numa-misplacement and "
                                                  "numa-spread need >= 2)")
        elif rule_id in ("cpu-throttling", "cpu-fluctuation-throttling"):
            expected[rule_id] = Expect(MUST_NOT, "no CFS quota on the target's cgroup")
        elif rule_id in ("memory-pressure", "memory-pressure-critical"):
            expected[rule_id] = Expect(ALLOWED, "PSI memory is host-wide here and the machine "
                                                "is shared: not this scenario's signal")
        elif rule_id == "cpu-fluctuation-unexplained":
            expected[rule_id] = Expect(ALLOWED, "info: a shared machine's noise may swing any "
                                                "target's CPU")
        elif rule_id == "oom-killed":
            expected[rule_id] = Expect(MUST_NOT, "nothing reaches a memory limit in the window")
        else:
            expected[rule_id] = Expect(ALLOWED, "no expectation written for this rule yet")
    expected[EXITED] = Expect(MUST_NOT, "the target lives through the whole window")
    return expected


def _no_memory_risk(reason: str) -> dict[str, Expect]:
    return {"oom-risk-critical": Expect(MUST_NOT, reason),
            "oom-risk-warning": Expect(MUST_NOT, reason),
            "page-cache-fills-cgroup": Expect(MUST_NOT, "no memory limit near: the target's "
                                                        "cgroup has none")}


def cpu_expectations(workload: str, threads: int, cpus: int, hog: bool) -> dict[str, Expect]:
    """The cells a CPU scenario must, must not or may fire, each with its physical reason."""
    over = threads > cpus
    where = f"{threads} threads on {cpus} CPU(s)"
    expected = _no_memory_risk("no memory growth: the pool's buffers are allocated once")
    expected.update({
        "io-stall": Expect(MUST_NOT, "no I/O: compute only"),
        "cpu-fluctuation-io": Expect(MUST_NOT, "no I/O: compute only"),
        "cpu-underuse": Expect(ALLOWED if workload == "gil" else MUST_NOT,
                               "GIL-bound code may leave CPUs unused (the GIL is the cause)"
                               if workload == "gil" else
                               f"{where}: every CPU of the cpuset is busy"),
        HINT_TORCH: Expect(ALLOWED, "torch is loaded: torch advice may apply")
        if workload == "torch" else
        Expect(MUST_NOT, "torch is not loaded: torch.set_num_threads cannot help"),
        "cpu-fluctuation-contention": Expect(ALLOWED, "the hog's 2 s on / 2 s off swings the "
                                                      "target's CPU through run-queue wait"
                                             if hog else "steady load: a swing is only noise"),
    })
    if workload in ("torch", "numpy", "hashlib"):
        expected["gil-contention"] = expected["cpu-fluctuation-gil"] = Expect(
            MUST_NOT, f"{workload} releases the GIL while it computes: py-spy sees it free")
    if workload == "torch":
        own = (Expect(MUST, f"{where}: at any time {threads - cpus} of the OpenMP threads "
                            f"wait for a CPU; set_num_threads({cpus}) does the same work "
                            "without waiting")
               if over else Expect(MUST_NOT, f"{where}: no more threads than CPUs"))
    elif workload == "numpy":
        own = Expect(ALLOWED, f"OPENBLAS_NUM_THREADS={threads} exceeds the CPUs, but OpenBLAS "
                              f"caps its pool at the {cpus} CPU(s) it may use (measured: "
                              "threads = CPUs): a settings warning is fair, contention is not")
    elif workload == "hashlib":
        own = (Expect(MUST, f"{where}: the GIL is released, so all {threads} threads are "
                            f"runnable and at any time {threads - cpus} of them wait for a CPU")
               if over else Expect(MUST_NOT, f"{where}: no more threads than CPUs"))
    else:
        own = Expect(MUST_NOT, f"{where}: the GIL, not the CPUs, serialises the threads: fewer "
                               "threads would not help")
        expected["gil-contention"] = (
            Expect(MUST, f"{threads} pure-Python threads take turns: the GIL is held ~100% of "
                         "the time, about one core in all")
            if threads >= 2 else Expect(MUST_NOT, "one Python thread: nobody waits for the GIL"))
        expected["cpu-fluctuation-gil"] = Expect(
            ALLOWED, "steady GIL-bound load: it swings only if scheduling does")
        if threads >= 2:
            expected[HINT_GIL] = Expect(MUST, "GIL-bound code needs GIL advice (processes, "
                                              "native code that releases it)")
    expected["thread-oversubscription"] = own
    if workload == "gil":
        expected[ANY_CONTENTION] = Expect(ALLOWED, "a neighbour's swing makes the threads wait: "
                                                   "naming contention is right, not required"
                                          if hog else "GIL hand-offs cost some run-queue wait")
    elif hog:
        # Own threads and the neighbour's share the blame: which rule names it is a choice.
        if own.kind == MUST:
            expected["thread-oversubscription"] = Expect(
                ALLOWED, own.reason + "; the hog shares the cause")
        expected[ANY_CONTENTION] = Expect(
            MUST, f"a hog fills the same {cpus} CPU(s) every other 2 s: the target's threads "
                  "wait for CPUs and its CPU swings")
    else:
        expected[ANY_CONTENTION] = (Expect(MUST, own.reason) if own.kind == MUST else
                                    Expect(ALLOWED, "no neighbour; own threads may queue"))
    return expected


def memory_expectations(workload: str, limit_mib: int, rate_mib: float) -> dict[str, Expect]:
    cache = workload.startswith("page-cache")
    expected = {
        # One thread: nothing to over-subscribe or to contend for the GIL.
        "thread-oversubscription": Expect(MUST_NOT, "one busy thread"),
        "gil-contention": Expect(MUST_NOT, "one Python thread"),
        "cpu-fluctuation-gil": Expect(MUST_NOT, "one Python thread"),
        "cpu-underuse": Expect(MUST_NOT, "one thread that waits on I/O or sleeps between "
                                         "allocations: no saturated pool"),
        HINT_TORCH: Expect(MUST_NOT, "torch is not loaded"),
        ANY_CONTENTION: Expect(ALLOWED, "not this scenario's subject"),
    }
    if cache:
        dirty = workload == "page-cache-dirty"
        # Measured in a 200 MiB cgroup: usage 199 MiB, anonymous 6 MiB; dirty 26 -> 52 MiB
        # over 8 s when never synced, 0 when written back.
        reason = (f"page cache filling a {limit_mib} MiB cgroup, the process's own memory "
                  f"~6 MiB (< 20% of the limit): reclaim "
                  + ("writes the dirty pages back, then drops them" if dirty else
                     "drops the clean pages at once") + ": no OOM risk")
        expected.update({
            "oom-risk-critical": Expect(MUST_NOT, reason),
            "oom-risk-warning": Expect(MUST_NOT, reason),
            "page-cache-fills-cgroup": Expect(ALLOWED, "usage sits at the limit, all of it "
                                                       "cache: this info finding or nothing"),
            "io-stall": Expect(ALLOWED, "writeback throttling blocks the writer in D state"
                               if dirty else "reads that miss the cache wait for the disk"),
            "cpu-fluctuation-io": Expect(ALLOWED, "the I/O waits swing its CPU"),
            "cpu-fluctuation-contention": Expect(ALLOWED, "not this scenario's subject"),
        })
        return expected
    seconds = limit_mib / rate_mib
    expected.update({
        "io-stall": Expect(MUST_NOT, "anonymous memory only: no I/O"),
        "cpu-fluctuation-io": Expect(MUST_NOT, "anonymous memory only: no I/O"),
        "page-cache-fills-cgroup": Expect(MUST_NOT, "the usage is anonymous, not cache"),
        "cpu-fluctuation-contention": Expect(ALLOWED, "not this scenario's subject"),
    })
    if seconds < 60:
        risk = (f"anonymous memory (no swap) cannot be reclaimed: at {rate_mib:g} MiB/s it "
                f"reaches the {limit_mib} MiB limit in ~{seconds:.0f} s")
        expected["oom-risk-critical"] = Expect(MUST, risk)
        expected["oom-risk-warning"] = Expect(ALLOWED, "the critical finding supersedes it")
    else:
        risk = (f"{rate_mib:g} MiB/s toward {limit_mib} MiB: ~{seconds / 60:.0f} min to the "
                "limit, time to plan")
        expected["oom-risk-critical"] = Expect(MUST_NOT, risk + ", not an emergency")
        expected["oom-risk-warning"] = Expect(
            ALLOWED, risk + "; a short window cannot tell sustained growth from a warm-up")
    return expected


def kernel_thread_expectations() -> dict[str, Expect]:
    reason = "a kernel thread has no user memory, threads or Python"
    expected = {rule_id: Expect(MUST_NOT, reason) for rule_id in (
        "thread-oversubscription", "gil-contention", "cpu-fluctuation-gil", "io-stall",
        "cpu-fluctuation-contention", "cpu-fluctuation-io", "cpu-underuse", "oom-risk-critical",
        "oom-risk-warning", "page-cache-fills-cgroup")}
    expected.update({
        HINT_TORCH: Expect(MUST_NOT, reason),
        ANY_CONTENTION: Expect(MUST_NOT, reason),
        EXITED: Expect(MUST_NOT, "pid 2 (kthreadd) lives as long as the kernel: never exited"),
        KERNEL_THREAD_NAMED: Expect(MUST, "the report says it is a kernel thread, so empty "
                                          "memory and stacks read as expected, not as errors"),
        CGROUP_MEMORY_AS_OWN: Expect(MUST_NOT, "the root cgroup's usage is not a kernel "
                                               "thread's memory"),
    })
    return expected


def scenarios(rule_ids: list[str] | None = None) -> list[Scenario]:
    """Every scenario of the matrix with its expected cells."""
    if rule_ids is None:
        rule_ids = [rule.id for rule in load_rules()]
    grid: list[Scenario] = []

    def add(scenario: Scenario, expected: dict[str, Expect]) -> None:
        scenario.expected = {**_quiet_defaults(rule_ids), **expected}
        grid.append(scenario)

    for workload in WORKLOADS:
        for threads in THREAD_COUNTS:
            for cpus in CPUSETS:
                for hog in (False, True):
                    sid = f"{workload}-t{threads}-c{cpus}" + ("-hog" if hog else "")
                    title = (f"{threads} {workload} threads on {cpus} CPU(s)"
                             + (", hog 2 s on / 2 s off" if hog else ""))
                    add(Scenario(sid, title, "cpu", workload, threads, cpus, hog),
                        cpu_expectations(workload, threads, cpus, hog))
    for workload, threads, cpus in (("torch", 1, 2), ("hashlib", 2, 2), ("gil", 1, 2)):
        add(Scenario(f"{workload}-t{threads}-c{cpus}", f"control: {threads} {workload} "
                     f"thread(s) on {cpus} CPUs", "cpu", workload, threads, cpus),
            cpu_expectations(workload, threads, cpus, False))
    for workload, rate, title in (
            ("page-cache-dirty", 100, "300 MiB file rewritten at 100 MiB/s, never synced"),
            ("page-cache-written-back", 150, "300 MiB file written, fsynced, re-read at "
                                             "150 MiB/s")):
        add(Scenario(workload, f"{title}, 200 MiB cgroup", "memory", workload, limit_mib=200,
                     rate_mib=rate), memory_expectations(workload, 200, rate))
    for sid, rate, limit in (("grow-slow", 1, 1024), ("grow-fast", 30, 400)):
        add(Scenario(sid, f"anonymous growth {rate} MiB/s, {limit} MiB cgroup", "memory",
                     "grow", limit_mib=limit, rate_mib=rate),
            memory_expectations("grow", limit, rate))
    add(Scenario("kernel-thread", "pid 2 (kthreadd)", "kernel-thread", "kernel-thread"),
        kernel_thread_expectations())
    return grid


# --- running ----------------------------------------------------------------------------------

def cpu_list(count: int) -> str:
    """`count` CPUs this process may use, as taskset wants them (a single one: the last,
    away from CPU 0's interrupts)."""
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[-1:] if count == 1 else allowed[:count]
    return ",".join(str(cpu) for cpu in chosen)


def disk_backed_dir() -> Path:
    """A temporary directory whose files live in reclaimable page cache (not tmpfs/ramfs)."""
    for candidate in (tempfile.gettempdir(), "/var/tmp", str(REPO)):
        kind = subprocess.run(["stat", "-f", "-c", "%T", candidate], capture_output=True,
                              text=True).stdout.strip()
        if kind and kind not in ("tmpfs", "ramfs"):
            return Path(tempfile.mkdtemp(prefix="dsmon-matrix-", dir=candidate))
    raise RuntimeError("no disk-backed directory for the page-cache scenarios "
                       f"({tempfile.gettempdir()}, /var/tmp and {REPO} are tmpfs/ramfs)")


def _cpu_target(stack: ExitStack, groups, scenario: Scenario):
    cpus = cpu_list(scenario.cpus)
    pin = ("taskset", "-c", cpus)
    mode = "hog" if scenario.workload == "hashlib" else scenario.workload
    env = None
    if scenario.workload == "numpy":
        env = {**os.environ, "OPENBLAS_NUM_THREADS": str(scenario.threads)}
    target = stack.enter_context(started(groups.target, CPU_WORKLOADS, mode, "--threads",
                                         str(scenario.threads), prefix=pin, env=env))
    if scenario.hog:
        stack.enter_context(started(groups.neighbours, CPU_WORKLOADS, "hog", "--threads",
                                    str(scenario.cpus), *HOG_PHASE, prefix=pin))
    return target.pid


def _memory_target(stack: ExitStack, groups, scenario: Scenario):
    group = stack.enter_context(memory_cgroup(scenario.limit_mib * MIB, prefix="dsmon-matrix"))
    if scenario.workload == "grow":
        argv = [sys.executable, str(WORKLOAD), "grow", "--rate-mib", str(scenario.rate_mib)]
    else:
        directory = disk_backed_dir()
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
        mode = scenario.workload.removeprefix("page-cache-")
        argv = [sys.executable, str(PAGE_CACHE), mode, str(directory / "cache.bin"), "300",
                str(scenario.rate_mib)]
    return stack.enter_context(group.process(groups.target.wrap(argv))).pid


def run_scenario(scenario: Scenario, duration: str = DURATION, interval: str = INTERVAL) -> dict:
    """Start the scenario's processes, diagnose the target, stop everything: the result
    (report, exit code, timing, load), or the error that kept it from running."""
    load = _loadavg()
    began = time.monotonic()
    try:
        with ExitStack() as stack:
            groups = stack.enter_context(scenario_groups())
            if scenario.family == "cpu":
                pid = _cpu_target(stack, groups, scenario)
            elif scenario.family == "memory":
                pid = _memory_target(stack, groups, scenario)
            else:
                pid = 2
            rc, report = diagnose(groups.monitor, pid, duration, interval, accept=(0, 4, 6, 7))
    except Exception as exc:   # a scenario that cannot run is recorded, not fatal to the rest
        return {"error": f"{type(exc).__name__}: {exc}"[:2000], "load_before": load,
                "seconds": round(time.monotonic() - began, 1)}
    return {"report": report, "rc": rc, "load_before": load,
            "seconds": round(time.monotonic() - began, 1)}


# --- judging ----------------------------------------------------------------------------------

def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def cause_named_twice(report: dict) -> bool:
    """Whether two findings of one subject naming the same cause were firing at once, at any
    transition of the window or at its end."""
    causes = {rule.id: rule.cause for rule in load_rules() if rule.cause}
    firing: set[str] = set()

    def twice(rule_ids) -> bool:
        named = [causes[r] for r in rule_ids if r in causes]
        return len(named) != len(set(named))

    for event in report["finding_transitions"]:
        if event["state"] == "firing":
            firing.add(event["rule_id"])
        else:
            firing.discard(event["rule_id"])
        if twice(firing):
            return True
    for subject in {f.get("subject") for f in report["findings"]}:
        if twice([f["rule_id"] for f in report["findings"]
                  if f["state"] == "firing" and f.get("subject") == subject]):
            return True
    return False


def observed(report: dict) -> dict[str, str]:
    """Per cell what happened: "firing" (reached firing in the window), "pending" (only
    pending) or "none"; report checks give "yes" or "none"."""
    states: dict[str, str] = {}
    for event in [*report["finding_transitions"], *report["findings"]]:
        rank = {"firing": 2, "pending": 1}.get(event["state"], 0)
        if rank > {"firing": 2, "pending": 1, "none": 0}[states.get(event["rule_id"], "none")]:
            states[event["rule_id"]] = event["state"]
        states.setdefault(event["rule_id"], "none")
    contention = [states.get(rule_id, "none") for rule_id in ANY_CONTENTION[4:].split(",")]
    states[ANY_CONTENTION] = ("firing" if "firing" in contention else
                              "pending" if "pending" in contention else "none")
    texts = " ".join(f"{f['summary']} {f['hint']}" for f in report["findings"])
    states[HINT_TORCH] = "yes" if re.search(r"torch\.|set_num_threads", texts) else "none"
    states[HINT_GIL] = "yes" if any("GIL" in f["hint"] for f in report["findings"]
                                    if f["state"] == "firing") else "none"
    strings = list(_strings(report))
    exited = (report["window"].get("end_reason") == "target exited"
              or any(re.search(r"process exited|target exited", text) for text in strings))
    states[EXITED] = "yes" if exited else "none"
    states[KERNEL_THREAD_NAMED] = "yes" if any("kernel thread" in text.lower()
                                               for text in strings) else "none"
    cgroup = (report["target"].get("memory") or {}).get("cgroup") or {}
    states[CGROUP_MEMORY_AS_OWN] = "yes" if cgroup.get("usage_bytes") is not None else "none"
    states[CAUSE_NAMED_TWICE] = "yes" if cause_named_twice(report) else "none"
    return states


def judge(scenario: Scenario, result: dict) -> dict[str, dict]:
    """Each expected cell with what was seen and whether it matches."""
    seen = observed(result["report"]) if "report" in result else {}
    cells = {}
    for cell, expect in scenario.expected.items():
        got = seen.get(cell, "none") if seen else "error"
        hit = got in ("firing", "yes")
        ok = (got != "error") and (expect.kind == ALLOWED or hit == (expect.kind == MUST))
        cells[cell] = {"expect": expect.kind, "reason": expect.reason, "got": got, "ok": ok}
    for cell, got in seen.items():   # findings no expectation names (new rules) are kept
        if cell not in REPORT_CELLS:
                cells.setdefault(cell, {"expect": ALLOWED, "reason": "no expectation written",
                                    "got": got, "ok": True})
    return cells


# --- output -----------------------------------------------------------------------------------

def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text(encoding="utf-8").split()[:3])
    except OSError:
        return "unknown"


SYMBOL = {MUST: "+", MUST_NOT: "-", ALLOWED: "~"}
GOT = {"firing": "F", "yes": "F", "pending": "p", "none": ".", "error": "E"}


def changes(run: dict, previous: dict) -> list[tuple[str, str, str, str]]:
    """(scenario, cell, got before, got now) for each cell whose outcome (fired or not)
    differs from a previous run: flaky cells on an unchanged tree, effects of a rule change."""
    before = {row["id"]: row["cells"] for row in previous["scenarios"]}
    changed = []
    for row in run["scenarios"]:
        for cell, value in row["cells"].items():
            old = before.get(row["id"], {}).get(cell)
            if old is not None and (old["got"] in ("firing", "yes")) != (
                    value["got"] in ("firing", "yes")):
                changed.append((row["id"], cell, old["got"], value["got"]))
    return changed


def render_markdown(run: dict) -> str:
    rows = run["scenarios"]
    mismatches = [(row["id"], cell, value) for row in rows
                  for cell, value in row["cells"].items() if not value["ok"]]
    shown = sorted({cell for row in rows for cell, value in row["cells"].items()
                    if value["expect"] == MUST or not value["ok"]
                    or value["got"] in ("firing", "yes", "pending")},
                   key=lambda cell: (cell in REPORT_CELLS, cell))
    quiet = sorted({cell for row in rows for cell in row["cells"]} - set(shown))
    checked = sum(1 for row in rows for value in row["cells"].values()
                  if value["expect"] != ALLOWED)
    missed = sum(1 for *_, value in mismatches if value["expect"] == MUST)
    lines = [
        "# Scenario matrix: expected vs. measured findings",
        "",
        f"Generated by `{run['command']}` on {run['date']} ({run['host']}), "
        f"`diagnose --duration {run['duration']} --interval {run['interval']}` per scenario, "
        f"{run['wall_seconds']:.0f} s in all. Load average before / after: "
        f"{run['load_before']} / {run['load_after']}. **The machine was shared** with other "
        "sessions' work while this ran; each scenario's processes ran in a cgroup with the "
        "largest cpu.shares to keep that load out of the competition it sets up.",
        "",
        "Expectations come from the physics of each workload (bench/scenario_matrix.py writes "
        "the reason next to every cell), never from dsmon's output. `must`: reaches `firing` "
        "in the window; `must-not`: never reaches `firing` (pending shorter than the rule's "
        "`for:` is tolerated); `allowed`: either.",
        "",
        f"**{len(rows)} scenarios, {checked} must / must-not cells, {len(mismatches)} "
        f"mismatches** ({missed} must-fire cells that did not fire, "
        f"{len(mismatches) - missed} must-not cells that fired"
        + (f", {sum(1 for row in rows if 'error' in row)} scenarios could not run" if
           any('error' in row for row in rows) else "") + ").",
        "",
        "## Mismatches",
        "",
    ]
    by_cell: dict[str, int] = {}
    for _, cell, _ in mismatches:
        by_cell[cell] = by_cell.get(cell, 0) + 1
    if by_cell:
        lines += ["By cell: " + ", ".join(f"`{cell}` {count}" for cell, count in
                                          sorted(by_cell.items(), key=lambda kv: -kv[1])) + ".",
                  ""]
    if mismatches:
        lines += ["| scenario | cell | expected | got | why expected |", "|---|---|---|---|---|"]
        lines += [f"| {sid} | `{cell}` | {value['expect']} | {value['got']} | {value['reason']} |"
                  for sid, cell, value in mismatches]
    else:
        lines.append("None.")
    lines += [
        "",
        "## Matrix",
        "",
        "Each cell: expectation (`+` must, `-` must not, `~` allowed) and what happened (`F` "
        "fired / check true, `p` pending only, `.` nothing, `E` scenario error); **bold ✗** "
        "marks a mismatch.",
        "",
        "| scenario | " + " | ".join(f"`{cell}`" for cell in shown) + " |",
        "|---|" + "---|" * len(shown),
    ]
    for row in rows:
        cells = []
        for cell in shown:
            value = row["cells"].get(cell)
            if value is None:
                cells.append("")
                continue
            text = SYMBOL[value["expect"]] + GOT.get(value["got"], "?")
            cells.append(text if value["ok"] else f"**{text} ✗**")
        lines.append(f"| {row['id']} | " + " | ".join(cells) + " |")
    lines += ["", "Quiet everywhere, as expected (not shown): "
              + ", ".join(f"`{cell}`" for cell in quiet) + ".", ""]
    if "changes" in run:
        lines += ["## Changed since the previous run", "",
                  f"Against the run of {run['changes']['previous_date']} (load "
                  f"{run['changes']['previous_load']}): a cell that fired in one run and not "
                  "in the other. On an unchanged tree these are the cells that flake.", ""]
        lines += ([f"- {sid} `{cell}`: {old} -> {new}"
                   for sid, cell, old, new in run["changes"]["cells"]] or ["None."])
        lines.append("")
    lines += ["## Scenarios", "",
              "| scenario | what runs | exit | s | load before |", "|---|---|---|---|---|"]
    lines += [f"| {row['id']} | {row['title']} | {row.get('rc', row.get('error', ''))} | "
              f"{row['seconds']} | {row['load_before']} |" for row in rows]
    lines += ["", "## Expectations and their reasons", "",
              "Every must / must-not cell of the cells shown above, grouped by reason.", "",
              "| cell | expected | reason | scenarios |", "|---|---|---|---|"]
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for row in rows:
        for cell, value in row["cells"].items():
            if cell in shown and value["expect"] != ALLOWED:
                grouped.setdefault((cell, value["expect"], value["reason"]), []).append(row["id"])
    lines += [f"| `{cell}` | {kind} | {reason} | {', '.join(ids)} |"
              for (cell, kind, reason), ids in sorted(grouped.items())]
    lines.append("")
    return "\n".join(lines)


def write_json(path: Path, run: dict) -> None:
    """The run as JSON, one line per scenario (a diff between runs shows scenarios)."""
    head = json.dumps({key: value for key, value in run.items() if key != "scenarios"},
                      indent=1)
    rows = ",\n".join("  " + json.dumps(row) for row in run["scenarios"])
    path.write_text(f'{head[:-2]},\n "scenarios": [\n{rows}\n ]\n}}\n', encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scenario_matrix",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="regex: run only matching scenario ids")
    parser.add_argument("--duration", default=DURATION, help="diagnose window per scenario")
    parser.add_argument("--interval", default=INTERVAL, help="diagnose sampling interval")
    # The docs hold the full grid: a run of part of it (--only) writes files only when asked.
    parser.add_argument("--json", default=None,
                        help="where the run's JSON goes (default: docs/scenario-matrix.json, "
                             "not written by an --only run unless given)")
    parser.add_argument("--markdown", default=None,
                        help="where its table goes (default: docs/scenario-matrix.md, likewise)")
    parser.add_argument("--list", action="store_true", help="print scenarios and expectations")
    parser.add_argument("--previous", help="JSON of an earlier run: list the cells that changed")
    parser.add_argument("--render", action="store_true",
                        help="no runs: write --markdown again from the --json of a past run")
    args = parser.parse_args(argv)
    write_outputs = not args.only or args.json is not None or args.markdown is not None
    args.json = args.json or str(REPO / "docs" / "scenario-matrix.json")
    args.markdown = args.markdown or str(REPO / "docs" / "scenario-matrix.md")
    if args.render:
        try:
            past = json.loads(Path(args.json).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            parser.error(f"--render needs the JSON of a past run at {args.json}: {exc}")
        Path(args.markdown).write_text(render_markdown(past), encoding="utf-8")
        print(f"wrote {args.markdown}")
        return 0
    try:
        only = re.compile(args.only)
    except re.error as exc:
        parser.error(f"--only {args.only!r} is not a regular expression: {exc}")
    previous = None
    if args.previous:
        try:
            previous = json.loads(Path(args.previous).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            parser.error(f"--previous {args.previous}: not the JSON of a run: {exc}")
    chosen = [s for s in scenarios() if only.search(s.id)]
    if not chosen:
        parser.error(f"--only {args.only!r} matches no scenario id (see --list)")
    if args.list:
        for scenario in chosen:
            print(f"{scenario.id}: {scenario.title}")
            for cell, expect in scenario.expected.items():
                if expect.kind != ALLOWED or cell in REPORT_CELLS:
                    print(f"    {expect.kind:8} {cell}: {expect.reason}")
        return 0
    python = Path(sys.executable)
    if python.is_relative_to(REPO):
        python = python.relative_to(REPO)
    command = f"{python} -m bench.scenario_matrix" + (f" {' '.join(sys.argv[1:])}"
                                                      if argv is None and sys.argv[1:] else "")
    run = {"command": command, "date": datetime.datetime.now(datetime.timezone.utc)
           .strftime("%Y-%m-%d %H:%M UTC"),
           "host": f"{os.cpu_count()} CPUs, kernel {platform.release()}",
           "duration": args.duration, "interval": args.interval, "load_before": _loadavg(),
           "scenarios": []}
    began = time.monotonic()
    for scenario in chosen:
        result = run_scenario(scenario, args.duration, args.interval)
        cells = judge(scenario, result)
        bad = [cell for cell, value in cells.items() if not value["ok"]]
        print(f"{scenario.id:28} {result.get('rc', 'error')!s:5} {result['seconds']:5.1f}s "
              f"load {result['load_before']:15} "
              + ("ok" if not bad else "MISMATCH " + ", ".join(bad))
              + (f" ({result['error']})" if "error" in result else ""), flush=True)
        run["scenarios"].append({"id": scenario.id, "title": scenario.title,
                                 "params": {"workload": scenario.workload,
                                            "threads": scenario.threads, "cpus": scenario.cpus,
                                            "hog": scenario.hog, "limit_mib": scenario.limit_mib,
                                            "rate_mib": scenario.rate_mib},
                                 **{k: result[k] for k in ("rc", "error", "seconds",
                                                           "load_before") if k in result},
                                 "cells": cells})
    run["wall_seconds"] = round(time.monotonic() - began, 1)
    run["load_after"] = _loadavg()
    if args.previous:
        run["changes"] = {"previous_date": previous["date"],
                          "previous_load": f"{previous['load_before']} / {previous['load_after']}",
                          "cells": changes(run, previous)}
    if not write_outputs:
        mismatches = sum(not cell["ok"] for entry in run["scenarios"]
                         for cell in entry["cells"].values())
        print(f"{len(run['scenarios'])} scenario(s), {mismatches} mismatched cell(s); "
              "nothing written (--only: give --json/--markdown to keep the run)")
        return 0
    write_json(Path(args.json), run)
    Path(args.markdown).write_text(render_markdown(run), encoding="utf-8")
    print(f"wrote {args.json} and {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
