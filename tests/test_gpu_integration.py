"""GPUs in the CLI: `dsmon topo`, the GPU section of `dsmon diagnose`, and no driver at all."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.spawn import run_dsmon, workload

GPU_FIXTURES = Path(__file__).parent / "fixtures" / "gpu"
EIGHT = GPU_FIXTURES / "hgx-h100-8gpu-2node.json"


def test_topo_on_a_two_node_eight_gpu_recording():
    result = run_dsmon("topo", "--nvml-replay", str(EIGHT))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = lines[0].split("\t")
    body = [line.split("\t") for line in lines[1:] if line.startswith("GPU")]
    assert [cell.strip() for cell in header[1:9]] == [f"GPU{i}" for i in range(8)]
    assert len(body) == 8
    # GPUs 0-3 are local to node 0 (CPUs 0-63), 4-7 to node 1 (CPUs 64-127).
    assert [row[9].strip() for row in body] == ["0-63"] * 4 + ["64-127"] * 4
    assert [row[10].strip() for row in body] == ["0"] * 4 + ["1"] * 4
    assert body[0][1].strip() == "X" and body[0][2].strip() == "NV18"


def test_topo_of_a_missing_pid_exits_3():
    result = run_dsmon("topo", "4000000", "--nvml-replay", str(EIGHT))
    assert result.returncode == 3 and "no process with pid" in result.stderr


def test_diagnose_reports_gpus_from_a_recording():
    with workload("threads", "--idle", "1") as target:
        result = run_dsmon("diagnose", str(target.pid), "--duration", "1s", "--interval", "0.5s",
                           "--format", "json", "--nvml-replay", str(GPU_FIXTURES / "h200-2gpu.json"))
    assert result.returncode == 0, result.stderr
    gpu = json.loads(result.stdout)["gpu"]
    assert gpu["status"] == "ok" and gpu["device_count"] == 2
    assert [card["name"] for card in gpu["gpus"]] == ["NVIDIA H200", "NVIDIA H200"]
    assert gpu["gpus"][0]["memory_total_bytes"] == 150754820096
    usage = gpu["targets"][str(target.pid)]
    assert usage["status"] == "none"          # a CPU-only process: measured, not guessed


def test_no_driver_is_said_once_and_everything_else_works():
    with workload("threads", "--busy", "1") as target:
        result = run_dsmon("diagnose", str(target.pid), "--duration", "1s", "--interval", "0.5s",
                           "--format", "json")
    assert result.returncode in (0, 6), result.stderr
    report = json.loads(result.stdout)
    assert report["gpu"]["status"] == "no_data"
    assert report["gpu"]["error"].startswith("no NVIDIA driver")
    assert "NVIDIA container toolkit" in report["gpu"]["hint"]
    assert report["collectors"]["gpu"]["runs"] == 1          # not retried every sample
    assert report["collectors"]["threads"]["status"] == "ok"
    assert report["threads"]["busy"] == 1
    assert "no NVIDIA driver" not in result.stderr


def test_snapshot_records_nvml_and_its_replay_answers_offline(tmp_path):
    """A snapshot keeps NVML's answers; diagnose on the unpacked snapshot finds them itself."""
    import tarfile
    archive = tmp_path / "snap.tar.gz"
    with workload("threads", "--idle", "1") as target:
        recorded = run_dsmon("snapshot", str(target.pid), "-o", str(archive),
                             "--nvml-replay", str(GPU_FIXTURES / "h200-2gpu.json"))
        assert recorded.returncode == 0, recorded.stderr
    replay = tmp_path / "replay"
    with tarfile.open(archive) as tar:
        tar.extractall(replay)
    manifest = json.loads((replay / "SNAPSHOT.json").read_text())
    assert manifest["nvml"] == "2 GPU(s)"
    result = run_dsmon("diagnose", str(target.pid), "--path.procfs", str(replay / "proc"),
                       "--path.sysfs", str(replay / "sys"), "--path.rootfs", str(replay),
                       "--duration", "0.2s", "--interval", "0.1s", "--format", "json")
    assert result.returncode == 0, result.stderr
    gpu = json.loads(result.stdout)["gpu"]
    assert gpu["status"] == "ok" and gpu["device_count"] == 2
    assert gpu["gpus"][1]["name"] == "NVIDIA H200"
    topo = run_dsmon("topo", "--path.procfs", str(replay / "proc"), "--path.sysfs",
                     str(replay / "sys"), "--path.rootfs", str(replay))
    assert "GPU1" in topo.stdout and "NV18" in topo.stdout


def test_snapshot_without_a_driver_says_so():
    import tarfile
    import tempfile
    with tempfile.TemporaryDirectory() as directory, workload("threads", "--idle", "1") as target:
        archive = Path(directory) / "s.tgz"
        result = run_dsmon("snapshot", str(target.pid), "-o", str(archive))
        assert result.returncode == 0, result.stderr
        with tarfile.open(archive) as tar:
            manifest = json.loads(tar.extractfile("SNAPSHOT.json").read())
            assert "nvml.json" not in tar.getnames()
    assert manifest["nvml"].startswith("NVML not recorded")
