"""The GPU OOM-risk rule on a real GPU (skipped without one): it fires on a PyTorch process
growing its GPU memory toward capacity, and not on one that pre-allocated and holds steady,
as vLLM does at ~90%. Run on the lent machine: bench/device/gpu_rules.sh."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers.findings import assert_one_finding_per_cause
from tests.test_gpu_device import GPUS

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.skipif(GPUS == 0, reason="no NVIDIA GPU / driver on this machine"),
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="no PyTorch"),
]

WORKLOAD = textwrap.dedent("""
    import sys, time, torch
    mode = sys.argv[1]
    free, total = torch.cuda.mem_get_info(0)
    held = []
    if mode == "preallocate":               # ~90% at once, then steady (vLLM-like)
        held.append(torch.empty(int(free * 0.9) // 4, dtype=torch.float32, device="cuda:0"))
        torch.cuda.synchronize()
        print("ready", flush=True)
        time.sleep(600)
    else:                                    # grow 2 GiB/s toward capacity
        print("ready", flush=True)
        step = 2 * 2**30 // 10
        while True:
            held.append(torch.ones(step // 4, dtype=torch.float32, device="cuda:0"))
            torch.cuda.synchronize()
            time.sleep(0.1)
""")


def diagnose_gpu(mode: str, tmp_path) -> dict:
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    process = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline().startswith("ready")
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        result = subprocess.run([sys.executable, "-m", "dsmon", "diagnose", str(process.pid),
                                 "--duration", "20s", "--interval", "1s", "--format", "json"],
                                capture_output=True, text=True, timeout=120, env=env)
    finally:
        process.kill()
        process.wait()
    report = json.loads(result.stdout)
    out = os.environ.get("DSMON_GPU_OUT")
    if out:
        Path(out, f"gpu-rules-{mode}.json").write_text(json.dumps({
            "exit": result.returncode, "findings": report["findings"],
            "transitions": report["finding_transitions"],
            "target": report["gpu"].get("targets")}, indent=1))
    return report


def test_growth_toward_capacity_fires_gpu_oom_risk(tmp_path):
    report = diagnose_gpu("grow", tmp_path)
    fired = [f for f in report["finding_transitions"]
             if f["rule_id"].startswith("gpu-oom-risk") and f["state"] == "firing"]
    assert fired, report["findings"]
    assert fired[0]["seconds"] <= 10 + 10 + 2      # window + for + an interval
    # One cause, one finding, with real NVML and NUMA data (the GPU and NUMA placement rules
    # share a cause; the OOM tiers share one).
    assert_one_finding_per_cause(report)


def test_steady_preallocation_is_healthy(tmp_path):
    report = diagnose_gpu("preallocate", tmp_path)
    usage = next(iter(report["gpu"]["targets"].values()))
    assert usage["status"] == "ok" and usage["memory_bytes"] > 0.8 * report["gpu"]["gpus"][0]["memory_total_bytes"]
    assert not [f for f in report["findings"] if f["rule_id"].startswith("gpu-oom")]
    assert_one_finding_per_cause(report)
