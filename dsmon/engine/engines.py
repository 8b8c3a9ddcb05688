"""Which inference engine a process runs, so hints speak its language."""

from __future__ import annotations

import os

# (engine, markers in the executable name or the first arguments of the command line)
_MARKERS = (
    ("vllm", ("vllm.entrypoints", "vllm serve", "/vllm", "vllm")),
    ("sglang", ("sglang.launch_server", "sglang")),
    ("tgi", ("text-generation-launcher", "text-generation-server", "text_generation_server")),
    ("triton", ("tritonserver",)),
    ("llamacpp", ("llama-server", "llama-cli", "llama.cpp", "llama_cpp")),
    ("ollama", ("ollama",)),
)


def detect_engine(cmdline: list[str], exe: str | None, comm: str,
                  torch_loaded: bool = False) -> str:
    """The engine's name from ENGINES; for other Python processes "pytorch" when libtorch is
    mapped (`torch_loaded`), else "python"; "" for anything else."""
    head = " ".join(cmdline[:4]).lower()
    names = {os.path.basename(exe or "").lower(), comm.lower()}
    for engine, markers in _MARKERS:
        for marker in markers:
            if marker in head or marker in names:
                return engine
    if any(name.startswith("python") for name in names) or "python" in head.split(" ")[0]:
        return "pytorch" if torch_loaded else "python"
    return ""

