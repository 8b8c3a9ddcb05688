"""`dsmon diagnose` on a GPU process: does its GPU memory match a model size at some dtype?"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from dsmon.diagnose import DiagnoseOptions, diagnose
from dsmon.gpu.fake import FakeBackend
from dsmon.model_size import arithmetic_matches, explain, model_path
from dsmon.paths import HostPaths
from dsmon.report.text import render_text

H200 = Path(__file__).parent / "fixtures" / "gpu" / "h200-2gpu.json"
RECORDED_PID, RECORDED_BYTES = 635, 3160408064       # the recording's process on GPU 0


def test_the_seed_example_matches_by_arithmetic():
    # 6.5 B parameters: 26 GB in FP32 (the seed); a process holding 27 GB matches it.
    matches = arithmetic_matches(27e9)
    assert any(m["dtype"] == "bf16" and m["parameters_b"] == 13 for m in matches)
    note = explain(14.9e9, 80e9, "pytorch", ["python3", "serve.py"])
    assert note["source"] == "arithmetic"
    assert "a 7 B model in BF16 (14.00 GB)" in note["text"]
    assert explain(1e6, 80e9, "pytorch", ["python3"])["matches"] == []


def test_a_preallocating_engine_is_not_read_as_a_model_size():
    note = explain(72e9, 80e9, "vllm", ["vllm", "serve", "org/model"])
    assert note["source"] == "preallocation" and "--gpu-memory-utilization" in note["text"]
    assert note["matches"] == []


def test_model_path_from_each_engines_command_line():
    assert model_path(["vllm", "serve", "/models/llama", "--port", "8000"]) == "/models/llama"
    assert model_path(["python3", "-m", "vllm.entrypoints.openai.api_server",
                       "--model=/m"]) == "/m"
    assert model_path(["python3", "-m", "sglang.launch_server", "--model-path", "/s"]) == "/s"
    assert model_path(["text-generation-launcher", "--model-id", "/t"]) == "/t"
    assert model_path(["python3", "train.py"]) is None


def _checkpoint(tmp_path, total_size, dtype="bfloat16"):
    model = tmp_path / "llama-1.5b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "num_hidden_layers": 28, "hidden_size": 1536, "num_attention_heads": 12,
        "num_key_value_heads": 2, "torch_dtype": dtype}))
    (model / "model.safetensors.index.json").write_text(json.dumps({
        "metadata": {"total_size": total_size}, "weight_map": {}}))
    return model


def _diagnose_spawned(args, tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args])
    try:
        deadline = time.monotonic() + 30           # until exec has replaced the command line
        while b"time.sleep(60)" not in Path(f"/proc/{process.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        fake = FakeBackend(H200)
        fake.view_pids({RECORDED_PID: process.pid})     # its GPU memory is the recorded one
        report = diagnose(HostPaths(), process.pid, DiagnoseOptions(1.0, 0.5), nvml=fake)
    finally:
        process.kill()
        process.wait()
    return report


def test_diagnose_names_the_checkpoint_on_the_command_line(tmp_path):
    model = _checkpoint(tmp_path, 3_087_000_000)
    report = _diagnose_spawned(["--model", str(model)], tmp_path)
    note = report["gpu"]["model_size"]
    assert note["memory_bytes"] == RECORDED_BYTES
    assert note["source"] == "checkpoint"
    assert note["checkpoint"]["dtype"] == "bf16"
    assert note["checkpoint"]["weights_bytes"] == 3_087_000_000
    assert "3.09 GB of weights" in note["text"]
    assert "model size: the model on its command line" in render_text(report)
    json.dumps(report)                                     # the report stays JSON


def test_diagnose_falls_back_to_arithmetic(tmp_path):
    report = _diagnose_spawned([], tmp_path)
    note = report["gpu"]["model_size"]
    assert note["source"] == "arithmetic"
    # 3.16 GB: a 1.5 B model in BF16 (3.0 GB of weights) plus the CUDA context.
    assert note["matches"][0]["parameters_b"] == 1.5 and note["matches"][0]["dtype"] == "bf16"
