"""The features layer: the line fit, and the native-runtime flags read from real processes."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from contextlib import contextmanager

import pytest

from dsmon.collectors.runtimes import RuntimesCollector, parse_maps
from dsmon.engine.monitor import RuleMonitor
from dsmon.features import FEATURES, FeatureExtractor
from dsmon.features.series import fit_line, linear_slope
from dsmon.model import run_collector
from dsmon.paths import HostPaths
from dsmon.sampler import TargetSampler

# ------------------------------------------------------------------------------ fit


def test_a_clean_line_fits_exactly():
    fit = fit_line([(t, 100.0 + 2.5 * t) for t in range(10)])
    assert fit.slope == pytest.approx(2.5)
    assert fit.intercept == pytest.approx(100.0)
    assert fit.r_squared == pytest.approx(1.0)
    assert (fit.points, fit.span_s) == (10, 9)


def test_noise_has_no_fit():
    noise = random.Random(15)
    fit = fit_line([(float(t), noise.gauss(0.0, 1.0)) for t in range(400)])
    assert fit.r_squared < 0.02
    assert abs(fit.slope) < 0.005


def test_a_line_in_noise_fits_in_between():
    noise = random.Random(16)
    fit = fit_line([(float(t), t + noise.gauss(0.0, 20.0)) for t in range(100)])
    # Variance of the line over t = 0..99 is ~833, of the noise 400: r^2 ~ 833 / 1233.
    assert 0.5 < fit.r_squared < 0.85
    assert fit.slope == pytest.approx(1.0, abs=0.2)


def test_too_few_points_or_no_time_spread_give_no_fit():
    assert fit_line([]) is None
    assert fit_line([(0.0, 1.0), (1.0, 2.0)]) is None
    assert fit_line([(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)]) is None
    assert linear_slope([(0.0, 1.0), (1.0, 2.0)]) is None


def test_a_flat_series_is_a_perfect_flat_fit():
    fit = fit_line([(0.0, 5.0), (1.0, 5.0), (2.0, 5.0)])
    assert (fit.slope, fit.r_squared) == (0.0, 1.0)


# ------------------------------------------------------------------------------ maps parser

MAPS = b"""\
55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 1 /usr/bin/python3.11
7f0000000000-7f0000100000 rw-p 00000000 00:00 0 [heap]
7f1000000000-7f1000200000 r-xp 00000000 08:01 2 /opt/venv/lib/python3.11/site-packages/numpy/core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so
7f1000200000-7f1000300000 r-xp 00000000 08:01 3 /opt/venv/lib/python3.11/site-packages/numpy.libs/libscipy_openblas64_-ff651d7f.so
7f2000000000-7f2000100000 r-xp 00000000 08:01 4 /usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0 (deleted)
7f3000000000-7f3000001000 rw-p 00000000 00:00 0
"""


def test_maps_names_the_libraries_loaded():
    runtimes = parse_maps(MAPS)
    assert runtimes.loaded == {"numpy", "openblas", "gomp"}
    assert (runtimes.torch, runtimes.blas, runtimes.openmp) == (False, True, True)
    assert runtimes.thread_pool_library == "OpenBLAS"
    assert "libgomp.so.1.0.0" in runtimes.libraries


def test_thread_pool_library_precedence():
    line = b"7f00-7f01 r-xp 0 08:01 1 /lib/%s\n"
    names = {name: line % name.encode() for name in
             ("libtorch_cpu.so", "libmkl_core.so.2", "libopenblas.so.0", "libiomp5.so")}
    assert parse_maps(b"".join(names.values())).thread_pool_library == "torch"
    without_torch = b"".join(v for k, v in names.items() if k != "libtorch_cpu.so")
    assert parse_maps(without_torch).thread_pool_library == "MKL"
    assert parse_maps(names["libiomp5.so"]).thread_pool_library == "OpenMP"
    assert parse_maps(b"7f00-7f01 r-xp 0 08:01 1 /usr/bin/python3\n").thread_pool_library == ""


# ------------------------------------------------------------------------------ real processes

# The child waits on stdin: each line is Python to run, answered by "done".
CHILD = """
import sys
print("ready", flush=True)
for line in sys.stdin:
    exec(line)
    print("done", flush=True)
"""


@contextmanager
def child(python: str = sys.executable):
    process = subprocess.Popen([python, "-c", CHILD], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "ready\n"
        yield process
    finally:
        process.kill()
        process.wait()
        process.stdin.close()
        process.stdout.close()


def run_in(process, code: str) -> None:
    process.stdin.write(code + "\n")
    process.stdin.flush()
    assert process.stdout.readline() == "done\n", f"the child failed to run {code!r}"


def flags(runtimes) -> dict:
    return {"torch": runtimes.torch, "blas": runtimes.blas, "openmp": runtimes.openmp,
            "library": runtimes.thread_pool_library}


def test_a_plain_python_loads_no_runtime():
    with child() as process:
        runtimes = RuntimesCollector(HostPaths(), process.pid).collect()
    assert flags(runtimes) == {"torch": False, "blas": False, "openmp": False, "library": ""}


def test_a_ctypes_loaded_libgomp_is_openmp_only():
    with child() as process:
        run_in(process, "import ctypes, ctypes.util; "
                        "ctypes.CDLL(ctypes.util.find_library('gomp') or 'libgomp.so.1')")
        runtimes = RuntimesCollector(HostPaths(), process.pid).collect()
    assert flags(runtimes) == {"torch": False, "blas": False, "openmp": True, "library": "OpenMP"}


def _python_with_numpy() -> str | None:
    for python in (sys.executable, shutil.which("python3")):
        if python and subprocess.run([python, "-c", "import numpy"],
                                     capture_output=True).returncode == 0:
            return python
    return None


def test_numpy_is_a_blas_pool():
    python = _python_with_numpy()
    if python is None:
        pytest.skip("no Python with numpy on this host")
    with child(python) as process:
        before = RuntimesCollector(HostPaths(), process.pid).collect()
        run_in(process, "import numpy")
        after = RuntimesCollector(HostPaths(), process.pid).collect()
    assert not before.blas
    assert after.blas and not after.torch
    assert after.thread_pool_library in ("OpenBLAS", "MKL")


def test_torch_loaded_is_a_feature_and_reread_after_import():
    """The flags come from the static facts and their periodic re-reading: a process that
    imports torch after sampling started shows torch_loaded 0, then 1."""
    with child() as process:
        sampler = TargetSampler(HostPaths(), process.pid, runtimes_reread_s=3600.0)
        try:
            static = sampler.static()
            monitor = RuleMonitor(static, [])
            assert monitor.engine_name == "python"
            extractor = FeatureExtractor(static)
            values = extractor.update(sampler.tick())
            assert (values["torch_loaded"], values["blas_loaded"], values["openmp_loaded"]) \
                == (0.0, 0.0, 0.0)
            assert extractor.context["thread_pool_library"] == ""
            run_in(process, "import torch")
            assert extractor.update(sampler.tick())["torch_loaded"] == 0.0   # not re-read yet
            sampler.runtimes_reread_s = 0.0
            tick = sampler.tick()
            values = extractor.update(tick)
            monitor.record(tick)
        finally:
            sampler.close()
        assert values["torch_loaded"] == 1.0
        assert monitor.engine_name == "pytorch"    # its hints now speak torch
        assert values["openmp_loaded"] == 1.0    # torch's CPU build maps libgomp
        assert extractor.context["thread_pool_library"] == "torch"
        # ... and a monitor started now names the engine from the static facts.
        late = TargetSampler(HostPaths(), process.pid)
        try:
            assert RuleMonitor(late.static(), []).engine_name == "pytorch"
        finally:
            late.close()


def test_unreadable_maps_leave_the_flags_absent(fake_host):
    """No maps (another user's process without ptrace rights reads as an error): the flags
    are None, never 0."""
    assert all(FEATURES[name].unit == "flag"
               for name in ("torch_loaded", "blas_loaded", "openmp_loaded"))
    with child() as process:
        sampler = TargetSampler(HostPaths(), process.pid)
        try:
            static = sampler.static()
            static.runtimes = run_collector(
                "runtimes", RuntimesCollector(fake_host.paths, process.pid).collect)
            assert not static.runtimes.ok
            sampler.runtimes_reread_s = 3600.0
            values = FeatureExtractor(static).update(sampler.tick())
        finally:
            sampler.close()
    assert values["torch_loaded"] is None and values["blas_loaded"] is None


# ------------------------------------------------------------------------------ fixture trees


def test_growth_fit_and_host_run_queue_on_a_fixture_tree(fake_host):
    """Anonymous memory growing 1 MiB per second fits a line (r^2 ~1, the slope exact); 24
    runnable tasks on 16 CPUs is a run queue of 1.5 per CPU."""
    fake_host.add_smt_host()                     # 16 CPUs
    fake_host.set_hostname()
    fake_host.set_meminfo(MemTotal=64 * 2**20, MemFree=32 * 2**20, MemAvailable=40 * 2**20)
    fake_host.set_proc_stat({cpu: (100, 0, 50, 1000) for cpu in range(16)}, running=24)
    fake_host.add_process(900, cpus_allowed=range(16))
    sampler = TargetSampler(fake_host.paths, 900)
    extractor = FeatureExtractor(sampler.static())
    for second in range(6):
        fake_host.add_process(900, cpus_allowed=range(16),
                              status={"rss_anon_kb": 1_500_000 + 1024 * second})
        tick = sampler.tick()
        tick.mono_ts = float(second)
        values = extractor.update(tick)
    sampler.close()
    assert values["memory_growth_bytes_per_second"] == pytest.approx(2**20)
    assert values["memory_growth_fit_ratio"] == pytest.approx(1.0)
    assert values["memory_growth_window_seconds"] == 5.0
    assert values["host_run_queue_ratio"] == 24 / 16
