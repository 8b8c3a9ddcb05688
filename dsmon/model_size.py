"""What a GPU process's memory says about its model: `dsmon diagnose`'s "model size" note.

Three readings, most certain first: the checkpoint named on its command line (config.json's
dtype and the safetensors size give the weights exactly); an engine that pre-allocates (vLLM,
SGLang: the size is a setting, not the model); otherwise plan's arithmetic (parameters x bytes
per parameter) over common model sizes, for the sizes and dtypes whose weights explain it.
"""

from __future__ import annotations

import json
import os

from dsmon.plan import BYTES_PER_PARAMETER, GB

# Published sizes of common open models, in billions of parameters.
COMMON_SIZES_B = (0.5, 1, 1.5, 2, 3, 4, 7, 8, 9, 13, 14, 27, 32, 34, 70, 72, 123, 405, 671)
# GPU memory / weights for "the weights explain it": the weights, plus the CUDA context
# (~0.5 GiB), the allocator's cache and transient activations.
MATCH_RATIO = (1.0, 1.35)
PREALLOCATED_SHARE = 0.80
PREALLOCATING = {"vllm": "--gpu-memory-utilization (default 0.9)",
                 "sglang": "--mem-fraction-static"}
MODEL_FLAGS = ("--model", "--model-path", "--model-id")
_TORCH_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float8_e4m3fn": "fp8"}


def model_path(cmdline: list[str]) -> str | None:
    """The model the command line loads: --model/--model-path/--model-id, or `vllm serve X`."""
    for index, arg in enumerate(cmdline):
        for flag in MODEL_FLAGS:
            if arg == flag and index + 1 < len(cmdline):
                return cmdline[index + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    for index, arg in enumerate(cmdline[:-1]):
        if arg == "serve" and not cmdline[index + 1].startswith("-"):
            return cmdline[index + 1]
    return None


def read_checkpoint(directory: str) -> dict | None:
    """dtype and weight bytes of a local HuggingFace checkpoint directory, or None."""
    try:
        with open(os.path.join(directory, "config.json"), encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    dtype = _TORCH_DTYPES.get(str(config.get("torch_dtype") or config.get("dtype") or ""))
    quantization = config.get("quantization_config")
    weights = None
    try:
        with open(os.path.join(directory, "model.safetensors.index.json"),
                  encoding="utf-8") as handle:
            weights = json.load(handle).get("metadata", {}).get("total_size")
    except (OSError, ValueError, AttributeError):
        try:
            weights = sum(entry.stat().st_size for entry in os.scandir(directory)
                          if entry.name.endswith(".safetensors"))
        except OSError:
            weights = None
    return {"config": os.path.join(directory, "config.json"), "dtype": dtype,
            "quantization": quantization.get("quant_method") if isinstance(quantization, dict)
            else None,
            "weights_bytes": weights if isinstance(weights, (int, float)) and weights > 0
            else None}


def arithmetic_matches(memory_bytes: float) -> list[dict]:
    """(size, dtype) pairs whose weights explain `memory_bytes`, the closest first."""
    matches = []
    for size in COMMON_SIZES_B:
        for dtype in ("fp32", "bf16", "int8", "int4"):
            weights = size * 1e9 * BYTES_PER_PARAMETER[dtype]
            ratio = memory_bytes / weights
            if MATCH_RATIO[0] <= ratio <= MATCH_RATIO[1]:
                matches.append({"parameters_b": size, "dtype": dtype, "weights_bytes": weights,
                                "ratio": round(ratio, 3)})
    return sorted(matches, key=lambda m: m["ratio"])[:3]


def explain(memory_bytes: float | None, gpu_total_bytes: float | None, engine: str,
            cmdline: list[str], resolve=lambda path: [path]) -> dict | None:
    """The model-size note for one GPU process; None without GPU memory to explain.
    `resolve(path)` lists where the command line's model path may be read from (the target's
    /proc/PID/root or cwd first, so a containerised engine's path resolves)."""
    if not memory_bytes:
        return None
    out: dict = {"memory_bytes": memory_bytes, "source": "", "checkpoint": None,
                 "matches": [], "text": ""}
    path = model_path(cmdline)
    if path:
        for directory in resolve(path):
            checkpoint = read_checkpoint(directory)
            if checkpoint is not None:
                checkpoint["path"] = path
                out["checkpoint"] = checkpoint
                break
    checkpoint = out["checkpoint"]
    share = memory_bytes / gpu_total_bytes if gpu_total_bytes else None
    if checkpoint is not None and checkpoint["weights_bytes"]:
        weights = checkpoint["weights_bytes"]
        rest = memory_bytes - weights
        out["source"] = "checkpoint"
        out["text"] = (f"the model on its command line ({path}: "
                       f"{checkpoint['dtype'] or 'unknown dtype'}"
                       + (f", {checkpoint['quantization']}" if checkpoint["quantization"] else "")
                       + f") has {weights / GB:.2f} GB of weights; "
                       + (f"the other {rest / GB:.2f} GB of the {memory_bytes / GB:.2f} GB it "
                          "holds is KV cache, activations and the CUDA context"
                          if rest >= 0 else
                          f"it holds only {memory_bytes / GB:.2f} GB on this GPU: a tensor- or "
                          "pipeline-parallel shard, or weights still loading"))
    elif engine in PREALLOCATING and share is not None and share >= PREALLOCATED_SHARE:
        out["source"] = "preallocation"
        out["text"] = (f"{engine} pre-allocates {PREALLOCATING[engine]} of the GPU for weights "
                       f"and KV cache; holding {share:.0%} of it reflects that setting, not the "
                       "model's size (its own metrics say how full the KV cache is)")
    else:
        out["matches"] = arithmetic_matches(memory_bytes)
        out["source"] = "arithmetic"
        if out["matches"]:
            out["text"] = (f"{memory_bytes / GB:.2f} GB matches the weights of " + " or ".join(
                f"a {m['parameters_b']:g} B model in {m['dtype'].upper()} "
                f"({m['weights_bytes'] / GB:.2f} GB)" for m in out["matches"])
                + " plus the CUDA context and activations (parameters x bytes per parameter)")
        else:
            out["text"] = (f"{memory_bytes / GB:.2f} GB matches no common model size at FP32, "
                           "BF16, INT8 or INT4: it is mostly KV cache, activations or cache")
    return out


def report_note(gpu_report: dict, pid: int, cmdline: list[str], engine: str,
                paths) -> dict | None:
    """The note for diagnose's GPU section (its dict form): the target's GPU memory against
    the largest GPU it uses."""
    targets = gpu_report.get("targets") or {}
    usage = targets.get(pid) or targets.get(str(pid))
    if not usage or usage.get("memory_bytes") is None:
        return None
    usage = usage if isinstance(usage, dict) else vars(usage)
    totals = [card.get("memory_total_bytes") for card in gpu_report.get("gpus", [])
              if card.get("index") in set(usage.get("gpus") or ()) and
              card.get("memory_total_bytes")]
    per_gpu = [entry.get("used_bytes") for entry in usage.get("per_gpu") or ()
               if entry.get("used_bytes") is not None]
    memory = max(per_gpu) if per_gpu else usage["memory_bytes"]
    def resolve(path: str) -> list[str]:
        # The target's view of its filesystem first (containers), then ours. A relative path
        # is the target's cwd's (a HuggingFace hub id such as org/name resolves to nothing).
        # A replayed snapshot's paths name another machine's files: only its own tree counts.
        if os.path.isabs(path):
            return [paths.pid(pid, "root") + path] + ([path] if paths.is_live else [])
        return [os.path.join(paths.pid(pid, "cwd"), path)]

    return explain(memory, max(totals) if totals else None, engine, cmdline, resolve)
