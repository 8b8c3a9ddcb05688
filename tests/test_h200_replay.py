"""Diagnose on the snapshot of a real PyTorch process recorded on a GPU host (H200, cgroup v2)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from tests.helpers.spawn import diagnose_json

FIXTURE = Path(__file__).parent / "fixtures" / "h200-torch"


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    root = tmp_path_factory.mktemp("h200")
    with tarfile.open(FIXTURE / "h200-torch-snapshot.tar.gz") as tar:
        tar.extractall(root)
    return root


def test_replay_matches_the_live_report(replay):
    live = json.loads((FIXTURE / "h200-torch-diagnose.json").read_text())
    pid = live["target"]["pid"]
    report = diagnose_json(pid, "--path.procfs", str(replay / "proc"), "--path.sysfs",
                           str(replay / "sys"), "--path.rootfs", str(replay),
                           duration="0.2s", interval="0.1s", expect_rc=(0,))
    host, target = report["host"], report["target"]
    assert (host["cpus_online"], host["sockets"], host["physical_cores"]) == (16, 1, 16)
    assert host["smt"] is False and len(host["numa_nodes"]) == 1
    assert host["memory"]["total_bytes"] == live["host"]["memory"]["total_bytes"]
    for key in ("pid", "start_ticks", "comm", "exe", "user", "cgroup_version", "threads",
                "environment"):
        assert target[key] == live["target"][key], key
    # Recorded before reports named the cgroup by its path rather than its directory.
    assert live["target"]["cgroup"] == "/sys/fs/cgroup" + target["cgroup"]
    assert target["cgroup_version"] == "v2"
    # The limit is on the parent /process_api (128 GiB), and binds at that level.
    cgroup = target["memory"]["cgroup"]
    assert cgroup["limit_bytes"] == 128 * 2**30
    assert cgroup["limit_set_at"] == "/process_api"
    assert target["effective_cpus"]["capacity_cores"] == 16
    assert report["threads"]["listed"] == 36
    pools = {p["pool"]: p["threads"] for p in report["threads"]["pools"]}
    assert pools["python3"] == 34 and sum(pools.values()) == 36
    # Recorded before snapshots kept the library mappings, so libtorch is not visible: a
    # plain Python process (live, the agent reads maps and says "pytorch").
    assert report["engine"] == "python"
    # A replay does not move: no finding may come out of frozen counters.
    assert report["findings"] == []
