"""The suite's slice of the scenario matrix (bench/scenario_matrix.py): one scenario per rule
family and per known past failure, each diagnosed once by `dsmon diagnose --format json`, then
every must / must-not cell checked as its own test against the expectation written from the
workload's physics.

Past failures covered: a GIL-bound process must not get thread-oversubscription (gil-t8-c2);
page cache filling a cgroup must not get oom-risk (page-cache-*); a plain Python process (no
torch) must not get torch advice (hint:torch on gil, hashlib, numpy, grow); a kernel thread
(pid 2) must not be reported as exited (kernel-thread).

Cells that fail against today's rules are xfail(strict=False), each naming the mismatch: the
rules are being rewritten (issue 15), and whoever lands the fix removes the mark. The full
matrix: `.venv/bin/python -m bench.scenario_matrix` (docs/scenario-matrix.md).
"""

from __future__ import annotations

import importlib.util

import pytest

from bench.scenario_matrix import ALLOWED, MUST, judge, run_scenario, scenarios
from tests.helpers.cgroups import unavailable_reason

pytestmark = pytest.mark.slow

SUITE = ("gil-t8-c2", "hashlib-t8-c2", "numpy-t8-c2", "torch-t8-c1-hog", "torch-t1-c2",
         "page-cache-dirty", "page-cache-written-back", "grow-fast", "kernel-thread")

# Cells that fail on today's rules (measured), with the mismatch; remove a line when it passes.
TODAY = {
    ("gil-t8-c2", "thread-oversubscription"):
        "fires for 8 GIL-bound threads (busy threads > cores with GIL hand-off run-queue wait); "
        "nothing arbitrates it against gil-contention yet",
    ("gil-t8-c2", "hint:torch"):
        "thread-oversubscription's hint says torch.set_num_threads(1) to a process without torch",
    ("hashlib-t8-c2", "hint:torch"):
        "thread-oversubscription's hint says torch.set_num_threads(1) to a process without torch",
    ("numpy-t8-c2", "hint:torch"):
        "thread-oversubscription's hint says torch.set_num_threads(1) to a NumPy process "
        "without torch (OPENBLAS_NUM_THREADS is the knob)",
    ("grow-fast", "hint:torch"):
        "oom-risk-critical's hint proposes torch.autocast to a process without torch",
    ("kernel-thread", "report:exited"):
        "the environment and py-spy collectors report pid 2 as 'the process exited'",
    ("kernel-thread", "report:kernel-thread-named"):
        "nothing in the report says pid 2 is a kernel thread",
    ("kernel-thread", "report:cgroup-memory-as-own"):
        "the report gives the root cgroup's usage as pid 2's cgroup memory",
}

SCENARIOS = {scenario.id: scenario for scenario in scenarios() if scenario.id in SUITE}


def _why_not_runnable(scenario) -> str | None:
    if scenario.family == "memory" and (reason := unavailable_reason()):
        return f"no memory cgroup: {reason}"
    if scenario.workload in ("torch", "numpy") and importlib.util.find_spec(
            scenario.workload) is None:
        return f"{scenario.workload} is not installed (pip install -e '.[test]'; torch==2.13.0)"
    return None


@pytest.fixture(scope="module")
def results() -> dict:
    """Each scenario's run, by id: it runs once, however many of its cells are checked."""
    return {}


def _cells():
    for scenario_id in SUITE:
        for cell, expect in SCENARIOS[scenario_id].expected.items():
            if expect.kind == ALLOWED:
                continue
            marks = ()
            if (scenario_id, cell) in TODAY:
                marks = pytest.mark.xfail(reason=TODAY[scenario_id, cell], strict=False)
            yield pytest.param(scenario_id, cell, id=f"{scenario_id}:{cell}", marks=marks)


@pytest.mark.parametrize("scenario_id,cell", list(_cells()))
def test_cell(scenario_id, cell, results):
    scenario = SCENARIOS[scenario_id]
    if reason := _why_not_runnable(scenario):
        pytest.skip(reason)
    if scenario_id not in results:
        results[scenario_id] = run_scenario(scenario)
    result = results[scenario_id]
    assert "error" not in result, result["error"]
    judged = judge(scenario, result)[cell]
    verb = "fire" if judged["expect"] == MUST else "not fire"
    assert judged["ok"], (f"{scenario.title}: {cell} should {verb} ({judged['reason']}), got "
                          f"{judged['got']}; findings: "
                          + ", ".join(f"{f['rule_id']} {f['state']}"
                                      for f in result["report"]["findings"]))
