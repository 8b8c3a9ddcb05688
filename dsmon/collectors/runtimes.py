"""Which native runtimes a process has loaded, from the shared objects in /proc/PID/maps.

Hints depend on them: torch.set_num_threads only helps where torch is loaded; a numpy/BLAS
pool is sized by OPENBLAS_NUM_THREADS or MKL_NUM_THREADS; a plain OpenMP pool by
OMP_NUM_THREADS. Reading maps walks the process's mappings under its mmap lock, so it is a
static fact: read at start and again rarely (a library imported later shows up then), and at
most MAPS_READ_LIMIT bytes of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsmon.paths import HostPaths
from dsmon.sources import read_bytes

MAPS_READ_LIMIT = 8 * 2**20     # ~60,000 mappings; the libraries map early, near the start

# (runtime, how its shared objects' file names start or what they contain)
_MARKERS = (
    ("torch", ("libtorch",), ()),
    ("mkl", ("libmkl",), ()),
    ("openblas", ("libopenblas",), ("openblas",)),    # also numpy's libscipy_openblas64_*
    ("numpy", (), ("_multiarray_umath",)),
    ("gomp", ("libgomp",), ()),
    ("iomp", ("libiomp",), ()),
)


@dataclass(frozen=True)
class NativeRuntimes:
    loaded: frozenset[str]          # names from _MARKERS
    libraries: tuple[str, ...]      # the matching shared objects' file names
    truncated: bool = False         # maps was longer than MAPS_READ_LIMIT

    @property
    def torch(self) -> bool:
        return "torch" in self.loaded

    @property
    def blas(self) -> bool:
        return bool(self.loaded & {"mkl", "openblas", "numpy"})

    @property
    def openmp(self) -> bool:
        return bool(self.loaded & {"gomp", "iomp"})

    @property
    def thread_pool_library(self) -> str:
        """The library whose setting sizes the compute thread pool, most specific first:
        torch's intra-op pool (torch.set_num_threads), MKL (MKL_NUM_THREADS), OpenBLAS
        (OPENBLAS_NUM_THREADS; numpy's PyPI wheels bundle it), OpenMP (OMP_NUM_THREADS);
        "" when none is loaded."""
        if self.torch:
            return "torch"
        if "mkl" in self.loaded:
            return "MKL"
        if self.loaded & {"openblas", "numpy"}:
            return "OpenBLAS"
        if self.openmp:
            return "OpenMP"
        return ""


def parse_maps(data: bytes, truncated: bool = False) -> NativeRuntimes:
    """The runtimes named by the file-backed mappings of a /proc/PID/maps text."""
    loaded: set[str] = set()
    libraries: set[str] = set()
    for line in data.splitlines():
        if b"/" not in line:
            continue        # anonymous, [heap], [stack], [vdso] ...
        name = line[line.rfind(b"/") + 1:].decode("utf-8", "replace")
        lowered = name.lower()
        for runtime, prefixes, parts in _MARKERS:
            if lowered.startswith(prefixes) or any(part in lowered for part in parts):
                loaded.add(runtime)
                libraries.add(name.removesuffix(" (deleted)"))
    return NativeRuntimes(frozenset(loaded), tuple(sorted(libraries)), truncated)


class RuntimesCollector:
    name = "runtimes"

    def __init__(self, paths: HostPaths, pid: int):
        self._path = paths.pid(pid, "maps")

    def collect(self) -> NativeRuntimes:
        data = read_bytes(self._path, process_file=True, limit=MAPS_READ_LIMIT)
        return parse_maps(data, truncated=len(data) >= MAPS_READ_LIMIT)
