"""`dsmon plan`: the memory a model needs, and what of it fits on this host.

The arithmetic is the seed's (weights = parameters x bytes per parameter), plus the KV cache from
a HuggingFace config.json and an activation estimate whose method is written down in
docs/plan.md. Every figure is pure arithmetic on numbers given or read; the host facts (RAM,
physical cores, NUMA nodes, GPUs) come from HostPaths and the NVML wrapper, so fixture trees and
NVML recordings plan the same way as a live host.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field

from dsmon.features.placement import recommended_threads

# The seed's bytes per parameter (FP32 4, FP16/BF16 2, INT8 1, INT4 0.5); FP8 is one byte too
# (vLLM's --kv-cache-dtype fp8 and FP8 weights).
BYTES_PER_PARAMETER = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0,
                       "int4": 0.5}
# Candidates for "which dtype fits", most precise first.
DTYPE_PREFERENCE = ("bf16", "int8", "int4")
# Weight-only quantisation keeps activations in 16 bits; FP32 models compute in FP32.
ACTIVATION_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 2.0, "int8": 2.0, "int4": 2.0}
GB = 1e9            # the seed's figures are decimal: 6.5 B x 4 bytes = 26 GB
GIB = 1024 ** 3
# Share of each GPU's memory a plan may use (vLLM's --gpu-memory-utilization default): the
# rest is the CUDA context, the allocator's fragmentation and NCCL buffers.
GPU_MEMORY_UTILIZATION = 0.90
# A machine sold with 64 GB shows a little less in MemTotal/NVML (kernel and firmware
# reservations), so a tier's "64 GB" is met by 64 GiB less this share.
TIER_TOLERANCE = 0.05
# The seed's rule of thumb when the model's shape is unknown: 5-10 GB of activations for a
# 2048-token input.
SEED_ACTIVATION_GB_PER_2048_TOKENS = (5.0, 10.0)


@dataclass(frozen=True)
class Tier:
    name: str
    physical_cores: int
    min_ghz: float
    ram_gb: int
    gpu_memory_gb: int


# The seed's hardware tiers (minimum CPU / recommended RAM / minimum GPU memory), exactly.
TIERS = (
    Tier("development and test", 16, 3.0, 64, 16),
    Tier("production", 32, 3.5, 128, 32),
    Tier("extreme quantisation (INT4)", 8, 2.5, 32, 8),
)


class PlanError(Exception):
    """Bad input: an unknown dtype, a malformed or incomplete model config, a bad number."""


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmbt]?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def parse_parameters(text: str) -> float:
    """'6.5B' -> 6.5e9; also 350M, 1.5T, 70b and plain numbers."""
    match = _SIZE.match(str(text))
    if not match:
        raise PlanError(f"{text!r} is not a parameter count (examples: 6.5B, 70B, 350M)")
    value = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if value <= 0:
        raise PlanError("the parameter count must be positive")
    return value


def dtype_bytes(dtype: str) -> float:
    try:
        return BYTES_PER_PARAMETER[dtype.lower()]
    except KeyError:
        raise PlanError(f"unknown dtype {dtype!r} (one of {', '.join(BYTES_PER_PARAMETER)})") \
            from None


def weight_bytes(parameters: float, dtype: str) -> float:
    """The seed's formula: parameters x bytes per parameter."""
    return parameters * dtype_bytes(dtype)


# --------------------------------------------------------------------------- model shape

@dataclass(frozen=True)
class ModelShape:
    """What the KV cache and activation arithmetic needs from a HuggingFace config.json."""

    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int | None = None
    vocab_size: int | None = None
    max_position_embeddings: int | None = None
    torch_dtype: str | None = None
    model_type: str | None = None
    # MLA (DeepSeek-V2/V3): one compressed latent of kv_lora_rank plus the decoupled RoPE key
    # of qk_rope_head_dim per token and layer, shared by all heads.
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None

    @property
    def attention(self) -> str:
        if self.kv_lora_rank is not None:
            return "MLA"
        if self.kv_heads == 1:
            return "MQA"
        return "GQA" if self.kv_heads < self.attention_heads else "MHA"


def _whole(config: dict, key: str, source: str, required: bool = True) -> int | None:
    value = config.get(key)
    if value is None:
        if required:
            raise PlanError(f"{source}: missing {key!r} (needed for the KV cache)")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PlanError(f"{source}: {key!r} must be a positive whole number, got {value!r}")
    return value


def parse_model_config(config, source: str = "config.json") -> ModelShape:
    """A ModelShape from a config.json document (already parsed). Multimodal configs keep the
    language model under text_config; that part is used."""
    if not isinstance(config, dict):
        raise PlanError(f"{source}: a model config must be a JSON object")
    if "num_hidden_layers" not in config and isinstance(config.get("text_config"), dict):
        config = config["text_config"]
    layers = _whole(config, "num_hidden_layers", source)
    hidden = _whole(config, "hidden_size", source)
    heads = _whole(config, "num_attention_heads", source)
    # No num_key_value_heads means multi-head attention: one KV head per query head.
    kv_heads = _whole(config, "num_key_value_heads", source, required=False) or heads
    if kv_heads > heads:
        raise PlanError(f"{source}: num_key_value_heads ({kv_heads}) exceeds "
                        f"num_attention_heads ({heads})")
    head_dim = _whole(config, "head_dim", source, required=False)
    if head_dim is None:
        if hidden % heads:
            raise PlanError(f"{source}: hidden_size {hidden} is not a multiple of "
                            f"num_attention_heads {heads}; give head_dim")
        head_dim = hidden // heads
    kv_lora_rank = _whole(config, "kv_lora_rank", source, required=False)
    rope_dim = _whole(config, "qk_rope_head_dim", source, required=False)
    if (kv_lora_rank is None) != (rope_dim is None):
        raise PlanError(f"{source}: an MLA config needs both kv_lora_rank and "
                        "qk_rope_head_dim")
    intermediate = _whole(config, "intermediate_size", source, required=False)
    dtype = config.get("torch_dtype") or config.get("dtype")
    return ModelShape(layers, hidden, heads, kv_heads, head_dim, intermediate,
                      _whole(config, "vocab_size", source, required=False),
                      _whole(config, "max_position_embeddings", source, required=False),
                      dtype if isinstance(dtype, str) else None,
                      config.get("model_type") if isinstance(config.get("model_type"), str)
                      else None, kv_lora_rank, rope_dim)


def load_model_config(path: str) -> ModelShape:
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except OSError as exc:
        raise PlanError(f"cannot read {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"{path} is not valid JSON: {exc}") from None
    return parse_model_config(document, path)


def kv_bytes_per_token(shape: ModelShape, kv_dtype: str, tensor_parallel: int = 1) -> float:
    """KV cache bytes one token needs on one GPU.

    Standard attention: 2 (K and V) x layers x KV heads x head dim x bytes. Tensor parallelism
    splits the KV heads across GPUs; with more GPUs than KV heads each GPU still holds one (the
    heads are replicated), hence ceil(kv_heads / tp).
    MLA: layers x (kv_lora_rank + qk_rope_head_dim) x bytes, a single latent (no x2); every GPU
    of a tensor-parallel group holds the whole latent, since all heads read it.
    """
    size = dtype_bytes(kv_dtype)
    if shape.kv_lora_rank is not None:
        return shape.layers * (shape.kv_lora_rank + shape.qk_rope_head_dim) * size
    heads_per_gpu = math.ceil(shape.kv_heads / max(1, tensor_parallel))
    return 2 * shape.layers * heads_per_gpu * shape.head_dim * size


def activation_bytes(shape: ModelShape | None, tokens: int, batch: int, dtype: str,
                     tensor_parallel: int = 1) -> tuple[float, float, str]:
    """(low, high, method) for the transient memory of one forward pass over `tokens` tokens of
    each of `batch` sequences on one GPU. docs/plan.md derives the formula."""
    size = ACTIVATION_BYTES.get(dtype.lower(), 2.0)
    total_tokens = tokens * batch
    tp = max(1, tensor_parallel)
    if shape is None:
        low, high = (gb * GB * total_tokens / 2048 / tp
                     for gb in SEED_ACTIVATION_GB_PER_2048_TOKENS)
        return low, high, "seed rule of thumb: 5-10 GB per 2048 tokens (no model config)"
    intermediate = shape.intermediate_size or 4 * shape.hidden_size
    kv_width = (shape.kv_lora_rank + shape.qk_rope_head_dim) if shape.kv_lora_rank is not None \
        else 2 * shape.kv_heads * shape.head_dim
    # Live at the peak of one layer (a layer's buffers are freed before the next one runs):
    # residual + normed input + attention output (3 x hidden), the Q and K/V projections
    # (hidden + kv_width) split across TP, and the MLP's gate, up and their product
    # (3 x intermediate) split across TP. FlashAttention never materialises the score matrix.
    per_token = 3 * shape.hidden_size + (shape.hidden_size + kv_width + 3 * intermediate) / tp
    layer_peak = total_tokens * per_token * size
    # Logits of the last position of each sequence in FP32 (what serving engines compute).
    logits = batch * (shape.vocab_size or 0) * 4 / tp
    estimate = layer_peak + logits
    return estimate, estimate, "one layer's peak buffers + last-token logits (docs/plan.md)"


# --------------------------------------------------------------------------- host facts

@dataclass
class HostGpu:
    index: int
    name: str
    memory_total_bytes: int | None
    memory_free_bytes: int | None
    numa_node: int | None


@dataclass
class HostNode:
    node: int
    cpus: list[int]
    physical_cores: int
    memory_total_bytes: int | None


@dataclass
class HostFacts:
    memory_total_bytes: int | None = None
    memory_available_bytes: int | None = None
    logical_cpus: int | None = None
    physical_cores: int | None = None
    max_ghz: float | None = None
    nodes: list[HostNode] = field(default_factory=list)
    gpus: list[HostGpu] = field(default_factory=list)
    gpu_status: str = ""          # why no GPUs are listed, when none are
    notes: list[str] = field(default_factory=list)


def read_host(paths, nvml=None) -> HostFacts:
    """RAM, cores, NUMA and GPUs of the host under `paths` (through NVML or a recording)."""
    from dsmon.collectors.memory import parse_meminfo
    from dsmon.collectors.topology import TopologyCollector
    from dsmon.model import run_collector
    from dsmon.sources import SourceError, read_text

    facts = HostFacts()
    try:
        meminfo = parse_meminfo(read_text(paths.proc("meminfo")))
        facts.memory_total_bytes = meminfo.get("MemTotal")
        facts.memory_available_bytes = meminfo.get("MemAvailable")
    except SourceError as exc:
        facts.notes.append(f"RAM unknown: {exc.describe()}")
    topology = run_collector("topology", TopologyCollector(paths).collect)
    if topology.ok:
        topo = topology.data
        facts.logical_cpus = len(topo.online)
        facts.physical_cores = topo.physical_cores()
        for node in sorted(topo.nodes.values(), key=lambda n: n.node):
            online = [cpu for cpu in node.cpus if cpu in topo.cpus]
            facts.nodes.append(HostNode(node.node, online, topo.physical_cores(online),
                                        node.mem_total_bytes))
    else:
        facts.notes.append(f"CPU topology unknown: {topology.error}")
    try:
        khz = int(read_text(paths.sys("devices", "system", "cpu", "cpu0", "cpufreq",
                                      "cpuinfo_max_freq")).strip())
        facts.max_ghz = khz / 1e6
    except (SourceError, ValueError):
        pass   # virtual machines often have no cpufreq: the GHz check says "unknown"
    _read_gpus(facts, paths, nvml)
    return facts


def _read_gpus(facts: HostFacts, paths, nvml) -> None:
    from dsmon.gpu.sample import GpuCollector
    from dsmon.model import run_collector

    collector = GpuCollector(paths, nvml)
    batch = run_collector("gpu", collector.collect)
    if not batch.ok:
        facts.gpu_status = f"no GPUs visible: {batch.error}" + \
            (f" ({batch.hint})" if batch.hint else "")
        return
    topology = collector.topology
    for gpu in batch.data.gpus:
        node = None
        if topology is not None and gpu.index < len(topology.gpus):
            entry = topology.gpus[gpu.index]
            node = entry.sysfs_numa_node if entry.sysfs_numa_node is not None and \
                entry.sysfs_numa_node >= 0 else (entry.numa_affinity[0]
                                                 if entry.numa_affinity else None)
        facts.gpus.append(HostGpu(gpu.index, gpu.name or f"GPU {gpu.index}",
                                  gpu.memory_total_bytes, gpu.memory_free_bytes, node))
    if not facts.gpus:
        facts.gpu_status = "no GPUs visible: NVML lists none"


# --------------------------------------------------------------------------- the plan

@dataclass
class PlanRequest:
    parameters: float
    dtype: str = "bf16"
    seq_len: int | None = None
    batch: int = 1
    kv_dtype: str | None = None
    gpus: int | None = None
    shape: ModelShape | None = None
    config_path: str | None = None


def _fits_on_gpu(request: PlanRequest, dtype: str, tp: int, batch: int,
                 gpu_bytes: float) -> bool:
    need = per_gpu_need(request, dtype, tp, batch)
    return need is not None and need <= gpu_bytes * GPU_MEMORY_UTILIZATION


def per_gpu_need(request: PlanRequest, dtype: str, tp: int, batch: int) -> float | None:
    """Weights / tp + KV cache for `batch` sequences + activations (high estimate)."""
    seq_len = _seq_len(request)
    weights = weight_bytes(request.parameters, dtype) / tp
    if request.shape is None:
        _, act, _ = activation_bytes(None, seq_len, batch, dtype, tp)
        return weights + act
    kv = kv_bytes_per_token(request.shape, request.kv_dtype or _kv_default(dtype), tp)
    _, act, _ = activation_bytes(request.shape, seq_len, batch, dtype, tp)
    return weights + kv * seq_len * batch + act


def _kv_default(dtype: str) -> str:
    # Engines keep the KV cache in the activation precision unless told otherwise
    # (--kv-cache-dtype), so quantised weights still have a 16-bit KV cache.
    return "fp32" if dtype.lower() == "fp32" else "bf16"


def _seq_len(request: PlanRequest) -> int:
    if request.seq_len is not None:
        return request.seq_len
    if request.shape is not None and request.shape.max_position_embeddings:
        return request.shape.max_position_embeddings
    return 2048   # the seed's example input


def max_batch(request: PlanRequest, dtype: str, tp: int, gpu_bytes: float) -> int | None:
    """The largest batch of `seq_len`-token sequences that fits per GPU (0 if even one does
    not); None without a model config (the KV cache is unknown)."""
    if request.shape is None:
        return None
    budget = gpu_bytes * GPU_MEMORY_UTILIZATION
    fixed = per_gpu_need(request, dtype, tp, 0)
    per_sequence = per_gpu_need(request, dtype, tp, 1) - fixed
    if per_sequence <= 0 or fixed >= budget:
        return 0
    return int((budget - fixed) // per_sequence)


def _tensor_parallel_sizes(request: PlanRequest, limit: int) -> list[int]:
    sizes = []
    size = 1
    while size <= max(limit, 1):
        # vLLM and SGLang need the attention heads to divide evenly across the GPUs.
        if request.shape is None or request.shape.attention_heads % size == 0:
            sizes.append(size)
        size *= 2
    return sizes


def tier_check(host: HostFacts) -> list[dict]:
    """Each seed tier, and whether this host meets its cores, clock, RAM and GPU memory."""
    rows = []
    largest_gpu = max((g.memory_total_bytes or 0 for g in host.gpus), default=None) \
        if host.gpus else None
    for tier in TIERS:
        def meets(have, need_gib):
            if have is None:
                return None
            return have >= need_gib * GIB * (1 - TIER_TOLERANCE)
        rows.append({
            "tier": tier.name,
            "requires": {"physical_cores": tier.physical_cores, "min_ghz": tier.min_ghz,
                         "ram_gb": tier.ram_gb, "gpu_memory_gb": tier.gpu_memory_gb},
            "cores_ok": None if host.physical_cores is None
            else host.physical_cores >= tier.physical_cores,
            "clock_ok": None if host.max_ghz is None else host.max_ghz >= tier.min_ghz,
            "ram_ok": meets(host.memory_total_bytes, tier.ram_gb),
            "gpu_memory_ok": meets(largest_gpu, tier.gpu_memory_gb) if largest_gpu else False,
        })
    for row in rows:
        checks = [row["cores_ok"], row["ram_ok"], row["gpu_memory_ok"]]
        row["meets"] = all(checks) if None not in checks else None
    return rows


def worker_binding(host: HostFacts, workers: int) -> list[dict]:
    """One worker per GPU: its NUMA node (the GPU's), numactl binding and thread count (85% of
    that node's physical cores, shared by the workers on the node)."""
    rows = []
    gpus = host.gpus[:workers] if host.gpus else []
    by_node: dict[int | None, int] = {}
    for gpu in gpus:
        by_node[gpu.numa_node] = by_node.get(gpu.numa_node, 0) + 1
    nodes = {node.node: node for node in host.nodes}
    for rank, gpu in enumerate(gpus):
        node = nodes.get(gpu.numa_node)
        cores = node.physical_cores if node is not None else (host.physical_cores or 1)
        share = max(1, cores // by_node[gpu.numa_node]) if node is not None \
            else max(1, cores // max(1, len(gpus)))
        threads = recommended_threads(share)
        binding = (f"numactl --cpunodebind={gpu.numa_node} --membind={gpu.numa_node}"
                   if node is not None else "")
        rows.append({"worker": rank, "gpu": gpu.index, "numa_node": gpu.numa_node,
                     "physical_cores": share, "threads": threads, "numactl": binding,
                     "env": f"OMP_NUM_THREADS={threads}"})
    return rows


def make_plan(request: PlanRequest, host: HostFacts) -> dict:
    """Everything `dsmon plan` prints, as one JSON-ready dict."""
    dtype = request.dtype.lower()
    dtype_bytes(dtype)
    if request.kv_dtype:
        dtype_bytes(request.kv_dtype)
    seq_len = _seq_len(request)
    weights = {name: {"bytes": weight_bytes(request.parameters, name),
                      "gb": round(weight_bytes(request.parameters, name) / GB, 3)}
               for name in ("fp32", "fp16", "bf16", "int8", "int4")}
    tp = request.gpus or 1
    kv_dtype = (request.kv_dtype or _kv_default(dtype)).lower()
    plan: dict = {
        "parameters": request.parameters,
        "dtype": dtype,
        "seq_len": seq_len,
        "batch": request.batch,
        "tensor_parallel": tp,
        "weights_by_dtype": weights,
        "weights_bytes": weight_bytes(request.parameters, dtype),
    }
    if request.shape is not None:
        shape = request.shape
        per_token = kv_bytes_per_token(shape, kv_dtype)
        plan["model"] = {**asdict(shape), "attention": shape.attention,
                         "config": request.config_path}
        plan["kv_cache"] = {
            "kv_dtype": kv_dtype,
            "bytes_per_token": per_token,
            "bytes_per_token_per_gpu": kv_bytes_per_token(shape, kv_dtype, tp),
            "bytes_per_sequence": per_token * seq_len,
            "bytes_total": per_token * seq_len * request.batch,
            "formula": ("layers x (kv_lora_rank + qk_rope_head_dim) x bytes (MLA latent)"
                        if shape.kv_lora_rank is not None else
                        "2 x layers x kv_heads x head_dim x bytes"),
        }
    else:
        plan["kv_cache"] = None
    low, high, method = activation_bytes(request.shape, seq_len, request.batch, dtype)
    plan["activations"] = {"bytes_low": low, "bytes_high": high, "method": method}
    per_gpu_weights = plan["weights_bytes"] / tp
    plan["per_gpu"] = {
        "weights_bytes": per_gpu_weights,
        "kv_cache_bytes": (kv_bytes_per_token(request.shape, kv_dtype, tp) * seq_len
                           * request.batch) if request.shape is not None else None,
        "activation_bytes": activation_bytes(request.shape, seq_len, request.batch, dtype,
                                             tp)[1],
        "total_bytes": per_gpu_need(request, dtype, tp, request.batch),
    }
    plan["host"] = _host_dict(host)
    plan["tiers"] = tier_check(host)
    plan["recommendation"] = recommend(request, host)
    return plan


def _host_dict(host: HostFacts) -> dict:
    return asdict(host)


def recommend(request: PlanRequest, host: HostFacts) -> dict:
    """What fits here: the dtype, the max batch at seq_len, the GPUs needed, and per worker the
    threads and NUMA binding."""
    dtype = request.dtype.lower()
    out: dict = {"notes": []}
    gpu_sizes = [g.memory_total_bytes for g in host.gpus if g.memory_total_bytes]
    if not gpu_sizes:
        out["notes"].append("no GPUs visible: planned for CPU inference in RAM")
        ram = host.memory_available_bytes or host.memory_total_bytes
        out["device"] = "cpu"
        if ram:
            need = per_gpu_need(request, dtype, 1, request.batch)
            out["fits_in_ram"] = need <= ram
            out["fitting_dtype"] = next(
                (d for d in DTYPE_PREFERENCE
                 if per_gpu_need(request, d, 1, request.batch) <= ram), None)
        out["gpus_needed"] = None
        cores = host.physical_cores or host.logical_cpus or 1
        out["workers"] = [{"worker": 0, "gpu": None, "numa_node": None,
                           "physical_cores": cores, "threads": recommended_threads(cores),
                           "numactl": "",
                           "env": f"OMP_NUM_THREADS={recommended_threads(cores)}"}]
        if len(host.nodes) > 1:
            out["notes"].append("on a multi-node host a CPU-only worker per NUMA node "
                                "(numactl --cpunodebind=N --membind=N) avoids remote memory")
        return out
    gpu_bytes = min(gpu_sizes)   # a tensor-parallel group runs at its smallest GPU's pace
    available = len(gpu_sizes)
    out["device"] = "gpu"
    out["gpu_memory_bytes"] = gpu_bytes
    sizes = _tensor_parallel_sizes(request, 64)
    out["gpus_needed"] = next((tp for tp in sizes
                               if _fits_on_gpu(request, dtype, tp, request.batch, gpu_bytes)),
                              None)
    tp = request.gpus or out["gpus_needed"] or 1
    out["tensor_parallel"] = tp
    if tp > available:
        out["notes"].append(f"{tp} GPUs needed, this host has {available}")
    out["fits"] = _fits_on_gpu(request, dtype, tp, request.batch, gpu_bytes) and \
        tp <= available
    usable_tp = _tensor_parallel_sizes(request, available)
    out["fitting_dtype"] = next(
        (d for d in DTYPE_PREFERENCE
         if any(_fits_on_gpu(request, d, t, request.batch, gpu_bytes) for t in usable_tp)),
        None)
    out["max_batch"] = max_batch(request, dtype, tp, gpu_bytes)
    out["max_batch_seq_len"] = _seq_len(request)
    out["workers"] = worker_binding(host, min(tp, available))
    known = {node.node for node in host.nodes}
    unknown = sorted({w["numa_node"] for w in out["workers"]
                      if w["numa_node"] is not None and w["numa_node"] not in known})
    if unknown:
        out["notes"].append(f"GPU NUMA node(s) {', '.join(map(str, unknown))} not among this "
                            "host's nodes (a recording replayed on another host?): no binding")
    return out


# --------------------------------------------------------------------------- text

def _gb(value) -> str:
    return "unknown" if value is None else f"{value / GB:.2f} GB"


def _yes(value) -> str:
    return {True: "yes", False: "no", None: "unknown"}[value]


def render_text(plan: dict) -> str:
    lines = [f"dsmon plan: {plan['parameters'] / 1e9:g} B parameters, {plan['dtype']}, "
             f"seq_len {plan['seq_len']}, batch {plan['batch']}, "
             f"tensor parallel {plan['tensor_parallel']}", "", "Weights (parameters x bytes):"]
    for name, entry in plan["weights_by_dtype"].items():
        mark = "  <-" if name == plan["dtype"] else ""
        lines.append(f"  {name:<5} {entry['gb']:>10g} GB{mark}")
    kv = plan["kv_cache"]
    lines.append("")
    if kv is None:
        lines.append("KV cache: unknown without --model-config (config.json gives layers, KV "
                     "heads and head dim)")
    else:
        model = plan["model"]
        lines.append(f"KV cache ({model['attention']}, {model['layers']} layers, "
                     + (f"kv_lora_rank {model['kv_lora_rank']} + rope {model['qk_rope_head_dim']}"
                        if model["kv_lora_rank"] is not None else
                        f"{model['kv_heads']} KV heads x {model['head_dim']}")
                     + f", {kv['kv_dtype']}):")
        lines.append(f"  per token      {kv['bytes_per_token']:,.0f} bytes  ({kv['formula']})")
        lines.append(f"  per sequence   {_gb(kv['bytes_per_sequence'])} at {plan['seq_len']} "
                     "tokens")
        lines.append(f"  whole batch    {_gb(kv['bytes_total'])}")
    act = plan["activations"]
    rng = _gb(act["bytes_high"]) if act["bytes_low"] == act["bytes_high"] else \
        f"{_gb(act['bytes_low'])} - {_gb(act['bytes_high'])}"
    lines += ["", f"Activations: {rng}  ({act['method']})"]
    per_gpu = plan["per_gpu"]
    lines += ["", f"Per GPU (tensor parallel {plan['tensor_parallel']}): weights "
              f"{_gb(per_gpu['weights_bytes'])}, KV cache {_gb(per_gpu['kv_cache_bytes'])}, "
              f"activations {_gb(per_gpu['activation_bytes'])}, total "
              f"{_gb(per_gpu['total_bytes'])}"]
    host = plan["host"]
    lines += ["", "This host:",
              f"  RAM {_gb(host['memory_total_bytes'])} ({_gb(host['memory_available_bytes'])} "
              f"available), {host['physical_cores'] or 'unknown'} physical cores "
              f"({host['logical_cpus'] or 'unknown'} CPUs), "
              f"{len(host['nodes']) or 1} NUMA node(s), max clock "
              + (f"{host['max_ghz']:.2f} GHz" if host["max_ghz"] else "unknown")]
    for node in host["nodes"]:
        lines.append(f"  node {node['node']}: {node['physical_cores']} physical cores, "
                     f"{_gb(node['memory_total_bytes'])}")
    if host["gpus"]:
        for gpu in host["gpus"]:
            lines.append(f"  GPU {gpu['index']}: {gpu['name']}, {_gb(gpu['memory_total_bytes'])}"
                         + (f", NUMA node {gpu['numa_node']}" if gpu["numa_node"] is not None
                            else ""))
    else:
        lines.append(f"  {host['gpu_status'] or 'no GPUs visible'}")
    for note in host["notes"]:
        lines.append(f"  note: {note}")
    lines += ["", "Seed tiers (cores / clock / RAM / GPU memory):"]
    for row in plan["tiers"]:
        need = row["requires"]
        lines.append(f"  {row['tier']:<28} {need['physical_cores']:>2} cores "
                     f"{need['min_ghz']:.1f} GHz+ {need['ram_gb']:>3} GB "
                     f"{need['gpu_memory_gb']:>2} GB"
                     f"  -> cores {_yes(row['cores_ok'])}, clock {_yes(row['clock_ok'])}, "
                     f"RAM {_yes(row['ram_ok'])}, GPU {_yes(row['gpu_memory_ok'])}")
    rec = plan["recommendation"]
    lines += ["", "Recommendation:"]
    if rec["device"] == "cpu":
        lines.append(f"  CPU only: {'fits' if rec.get('fits_in_ram') else 'does not fit'} in "
                     f"available RAM as {plan['dtype']}"
                     + (f"; {rec['fitting_dtype']} fits" if rec.get("fitting_dtype") else ""))
    else:
        lines.append(f"  {plan['dtype']} at batch {plan['batch']} x {plan['seq_len']} tokens: "
                     + ("fits" if rec["fits"] else "does not fit")
                     + f" on {rec['tensor_parallel']} GPU(s) of {_gb(rec['gpu_memory_bytes'])} "
                     f"(at {GPU_MEMORY_UTILIZATION:.0%} of each)")
        lines.append("  GPUs needed: " + (str(rec["gpus_needed"]) if rec["gpus_needed"]
                                           else "more than 64 of this size"))
        lines.append("  most precise dtype that fits on this host: "
                     + (rec["fitting_dtype"] or "none"))
        if rec["max_batch"] is not None:
            lines.append(f"  max batch at {rec['max_batch_seq_len']} tokens: {rec['max_batch']}")
    for worker in rec["workers"]:
        where = f"GPU {worker['gpu']}" if worker["gpu"] is not None else "CPU"
        lines.append(f"  worker {worker['worker']} ({where}): {worker['env']}"
                     + (f", {worker['numactl']}" if worker["numactl"] else ""))
    for note in rec["notes"]:
        lines.append(f"  note: {note}")
    return "\n".join(lines) + "\n"
