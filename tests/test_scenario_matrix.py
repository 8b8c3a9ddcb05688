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

# Cells that fail on today's code (measured), with the mismatch; remove a line when it passes.
# None do since issue 15 (arbitration, runtime-aware hints) and 18 (kernel threads) landed.
TODAY: dict[tuple[str, str], str] = {
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
