"""`dsmon plan`: the seed's arithmetic, KV cache for published model shapes, the host comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsmon.gpu.fake import FakeBackend
from dsmon.plan import (GB, TIERS, PlanError, PlanRequest, activation_bytes, kv_bytes_per_token,
                        load_model_config, make_plan, parse_model_config, parse_parameters,
                        read_host, render_text, weight_bytes)
from tests.fixturetree import FakeHost
from tests.helpers.spawn import run_dsmon

MODELS = Path(__file__).parent / "fixtures" / "models"
GPU = Path(__file__).parent / "fixtures" / "gpu"
LLAMA = MODELS / "llama3-8b-like.json"
DEEPSEEK = MODELS / "deepseek-v3-like.json"


def test_seed_weight_figures_exactly():
    params = parse_parameters("6.5B")
    assert params == 6.5e9
    # The seed: 6.5 B parameters -> FP32 26 GB, FP16 13 GB, INT8 6.5 GB (decimal GB).
    assert weight_bytes(params, "fp32") == 26 * GB
    assert weight_bytes(params, "fp16") == 13 * GB
    assert weight_bytes(params, "bf16") == 13 * GB
    assert weight_bytes(params, "int8") == 6.5 * GB
    assert weight_bytes(params, "int4") == 3.25 * GB
    # The worked case: INT8 quantisation takes the model from 26 GB to 6.5 GB.
    assert weight_bytes(params, "fp32") / weight_bytes(params, "int8") == 4


def test_seed_tier_table_exactly():
    table = [(t.name, t.physical_cores, t.min_ghz, t.ram_gb, t.gpu_memory_gb) for t in TIERS]
    assert table == [
        ("development and test", 16, 3.0, 64, 16),
        ("production", 32, 3.5, 128, 32),
        ("extreme quantisation (INT4)", 8, 2.5, 32, 8),
    ]


@pytest.mark.parametrize("text,value", [("70B", 70e9), ("350M", 350e6), ("1.5T", 1.5e12),
                                        ("8b", 8e9), ("123456", 123456.0)])
def test_parameter_counts(text, value):
    assert parse_parameters(text) == value


@pytest.mark.parametrize("text", ["", "six", "-1B", "0B", "7X"])
def test_bad_parameter_counts(text):
    with pytest.raises(PlanError):
        parse_parameters(text)


def test_llama3_8b_gqa_kv_cache_by_hand():
    shape = load_model_config(str(LLAMA))
    assert shape.attention == "GQA"
    assert (shape.layers, shape.kv_heads, shape.head_dim) == (32, 8, 128)
    # 2 (K and V) x 32 layers x 8 KV heads x 128 head dim x 2 bytes (BF16) = 131,072 bytes.
    assert kv_bytes_per_token(shape, "bf16") == 2 * 32 * 8 * 128 * 2 == 131_072
    # FP8 KV cache halves it; an 8192-token sequence in BF16 is exactly 1 GiB.
    assert kv_bytes_per_token(shape, "fp8") == 65_536
    assert kv_bytes_per_token(shape, "bf16") * 8192 == 1024 ** 3
    # Tensor parallel 2 splits the 8 KV heads 4 + 4; 16 GPUs replicate: one head each.
    assert kv_bytes_per_token(shape, "bf16", 2) == 65_536
    assert kv_bytes_per_token(shape, "bf16", 16) == 2 * 32 * 1 * 128 * 2


def test_deepseek_v3_mla_kv_cache_by_hand():
    shape = load_model_config(str(DEEPSEEK))
    assert shape.attention == "MLA"
    # One latent per token and layer: 61 x (512 + 64) x 2 bytes = 70,272 bytes (no x2 for K/V).
    assert kv_bytes_per_token(shape, "bf16") == 61 * (512 + 64) * 2 == 70_272
    # Were it stored as plain MHA (128 heads x (128 + 64) K, 128 V) it would be ~71x larger.
    mha = 61 * 128 * ((128 + 64) + 128) * 2
    assert mha / 70_272 > 60
    # Every tensor-parallel rank holds the whole latent.
    assert kv_bytes_per_token(shape, "bf16", 8) == 70_272


def test_mha_and_mqa_defaults():
    mha = parse_model_config({"num_hidden_layers": 2, "hidden_size": 64,
                              "num_attention_heads": 4})
    assert (mha.kv_heads, mha.head_dim, mha.attention) == (4, 16, "MHA")
    mqa = parse_model_config({"num_hidden_layers": 2, "hidden_size": 64,
                              "num_attention_heads": 4, "num_key_value_heads": 1})
    assert mqa.attention == "MQA"
    assert kv_bytes_per_token(mqa, "fp16") == 2 * 2 * 1 * 16 * 2
    nested = parse_model_config({"model_type": "llava", "text_config": {
        "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4}})
    assert nested.layers == 2


@pytest.mark.parametrize("config,message", [
    ({"hidden_size": 64, "num_attention_heads": 4}, "num_hidden_layers"),
    ({"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": "4"},
     "num_attention_heads"),
    ({"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
      "num_key_value_heads": 8}, "exceeds"),
    ({"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
      "kv_lora_rank": 512}, "qk_rope_head_dim"),
    ([1, 2], "JSON object"),
])
def test_bad_model_configs(config, message):
    with pytest.raises(PlanError, match=message):
        parse_model_config(config)


def test_activation_estimate_method():
    shape = load_model_config(str(LLAMA))
    low, high, method = activation_bytes(shape, 2048, 1, "bf16")
    # One layer's peak: 3 x hidden + (hidden + 2 x kv_heads x head_dim + 3 x intermediate)
    # elements per token, in BF16, plus the last token's FP32 logits.
    per_token = 3 * 4096 + (4096 + 2 * 8 * 128 + 3 * 14336)
    assert low == high == 2048 * per_token * 2 + 128256 * 4
    assert "docs/plan.md" in method
    low, high, method = activation_bytes(None, 2048, 1, "fp16")
    assert (low, high) == (5 * GB, 10 * GB)   # the seed: 5-10 GB for a 2048-token input
    assert "seed" in method


def _fake_host(tmp_path, sockets=2, cores=8, mem_gib=256):
    host = FakeHost(tmp_path)
    host.add_smt_host(sockets=sockets, cores=cores, threads=2,
                      mem_kb_per_node=mem_gib * 1024 * 1024 // sockets)
    host.set_meminfo(MemTotal=mem_gib * 1024 * 1024, MemAvailable=mem_gib * 1024 * 1024 - 10)
    return host


def test_plan_on_8gpu_two_node_host(tmp_path):
    host = _fake_host(tmp_path)
    facts = read_host(host.paths, FakeBackend(GPU / "hgx-h100-8gpu-2node.json"))
    assert len(facts.gpus) == 8 and facts.physical_cores == 16 and len(facts.nodes) == 2
    shape = load_model_config(str(DEEPSEEK))
    # DeepSeek-V3 in INT4 (671 B x 0.5 = 335.5 GB) needs more than 4 x 80 GB H100s.
    request = PlanRequest(671e9, "int4", 4096, 1, None, None, shape, str(DEEPSEEK))
    plan = make_plan(request, facts)
    rec = plan["recommendation"]
    assert plan["weights_bytes"] == 335.5 * GB
    assert rec["gpus_needed"] == 8 and rec["fits"]
    # One worker per GPU, bound to its GPU's node, sharing that node's 8 physical cores.
    nodes = {w["gpu"]: w["numa_node"] for w in rec["workers"]}
    assert set(nodes.values()) == {0, 1}
    for worker in rec["workers"]:
        assert worker["numactl"] == (f"numactl --cpunodebind={worker['numa_node']} "
                                     f"--membind={worker['numa_node']}")
        assert worker["threads"] == 1       # 8 cores / 4 workers on the node = 2, x 85% -> 1
    text = render_text(plan)
    assert "MLA" in text and "GPUs needed: 8" in text
    # The same model in BF16 (1.34 TB) does not fit on this host at all.
    too_big = make_plan(PlanRequest(671e9, "bf16", 4096, 1, None, None, shape), facts)
    assert too_big["recommendation"]["fits"] is False
    assert too_big["recommendation"]["fitting_dtype"] == "int4"


def test_max_batch_matches_hand_calculation(tmp_path):
    facts = read_host(_fake_host(tmp_path).paths, FakeBackend(GPU / "h200-2gpu.json"))
    gpu = facts.gpus[0].memory_total_bytes
    shape = load_model_config(str(LLAMA))
    request = PlanRequest(8.03e9, "bf16", 8192, 1, None, 1, shape)
    plan = make_plan(request, facts)
    per_sequence = 131_072 * 8192 + activation_bytes(shape, 8192, 1, "bf16")[1]
    budget = gpu * 0.9 - 8.03e9 * 2
    assert plan["recommendation"]["max_batch"] == int(budget // per_sequence)
    assert plan["recommendation"]["max_batch"] > 1


def test_tiers_against_host(tmp_path):
    facts = read_host(_fake_host(tmp_path, sockets=2, cores=16, mem_gib=128).paths,
                      FakeBackend(GPU / "h100-4gpu.json"))
    rows = {row["tier"]: row for row in make_plan(PlanRequest(6.5e9), facts)["tiers"]}
    assert rows["production"]["cores_ok"] and rows["production"]["ram_ok"]
    assert rows["production"]["gpu_memory_ok"]
    small = read_host(_fake_host(tmp_path / "small", sockets=1, cores=4, mem_gib=16).paths,
                      FakeBackend(GPU / "h100-4gpu.json"))
    rows = {row["tier"]: row for row in make_plan(PlanRequest(6.5e9), small)["tiers"]}
    assert rows["extreme quantisation (INT4)"]["cores_ok"] is False
    assert rows["extreme quantisation (INT4)"]["ram_ok"] is False
    assert rows["extreme quantisation (INT4)"]["meets"] is False


def test_no_gpus_visible_plans_for_cpu(tmp_path):
    facts = read_host(_fake_host(tmp_path).paths,
                      FakeBackend(GPU / "h200-2gpu.json", init_error="LibraryNotFound"))
    assert facts.gpus == [] and facts.gpu_status.startswith("no GPUs visible")
    plan = make_plan(PlanRequest(6.5e9, "fp32"), facts)
    rec = plan["recommendation"]
    assert rec["device"] == "cpu" and rec["gpus_needed"] is None
    assert rec["workers"][0]["threads"] == 13          # 85% of the 16 physical cores
    assert "no GPUs visible" in render_text(plan)


def test_cli_json_with_replay():
    result = run_dsmon("plan", "--params", "8.03B", "--model-config", str(LLAMA),
                       "--seq-len", "8192", "--batch", "4", "--format", "json",
                       "--nvml-replay", str(GPU / "h200-2gpu.json"))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["kv_cache"]["bytes_per_token"] == 131_072
    assert plan["kv_cache"]["bytes_total"] == 4 * 1024 ** 3
    assert plan["recommendation"]["gpus_needed"] == 1


@pytest.mark.parametrize("args,message", [
    (["--params", "6.5B", "--dtype", "int3"], "unknown dtype 'int3'"),
    (["--params", "lots"], "not a parameter count"),
    (["--params", "6.5B", "--kv-dtype", "fp5"], "unknown dtype 'fp5'"),
])
def test_cli_bad_input(args, message):
    result = run_dsmon("plan", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_cli_bad_config_files(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"num_hidden_layers": 32,')
    result = run_dsmon("plan", "--params", "8B", "--model-config", str(broken))
    assert result.returncode == 2 and "not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr
    partial = tmp_path / "partial.json"
    partial.write_text('{"num_hidden_layers": 32, "num_attention_heads": 32}')
    result = run_dsmon("plan", "--params", "8B", "--model-config", str(partial))
    assert result.returncode == 2 and "missing 'hidden_size'" in result.stderr
    result = run_dsmon("plan", "--params", "8B", "--model-config", str(tmp_path / "none.json"))
    assert result.returncode == 2 and "cannot read" in result.stderr
