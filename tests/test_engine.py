"""The rules engine: aggregation, hysteresis, templates, strict loading, overrides, the CLI,
and rules driven by collectors on fixture trees (NUMA misplacement on a 2-node host)."""

from __future__ import annotations

import textwrap

import pytest

from dsmon.engine.evaluate import Engine, aggregate
from dsmon.features import FeatureStore
from dsmon.engine.monitor import RuleMonitor
from dsmon.engine.rules import RuleLoadError, load_rules, parse_rule_text
from dsmon.sampler import TargetSampler
from fixturetree import FakeThread
from tests.helpers.spawn import run_dsmon


def rules_from(text: str):
    problems: list[str] = []
    rules = parse_rule_text(textwrap.dedent(text), "test.yaml", problems)
    assert problems == []
    return rules


SPIKE_RULE = """
rules:
  - id: busy-spike
    severity: warning
    window: 3s
    for: 3s
    keep_firing_for: 4s
    when:
      all:
        - {feature: cpu_cores, agg: last, op: ">", value: 1.5}
    summary: "$comm uses $cpu_cores cores"
    hint: "generic fix for $comm"
    hints:
      vllm: "vllm fix with $recommended_threads threads"
"""


def drive(engine: Engine, series: list[float | None], context=None, extra=None):
    """Feed one cpu_cores value per second; return the state of busy-spike after each."""
    store = FeatureStore(60)
    states = []
    for second, value in enumerate(series):
        values = {"cpu_cores": value, "recommended_threads": 3.0, **(extra or {})}
        store.add(float(second), values)
        engine.evaluate(store, float(second), 1000.0 + second, context or {"comm": "srv"})
        finding = engine.active.get("busy-spike")
        states.append(finding.state if finding else "-")
    return states


@pytest.mark.parametrize("agg, points, expected", [
    ("last", [(0, 1), (1, 5)], 5), ("min", [(0, 3), (1, 2), (2, 4)], 2),
    ("max", [(0, 3), (1, 7)], 7), ("avg", [(0, 1), (1, 3)], 2),
    ("delta", [(0, 10), (5, 25)], 15), ("rate", [(0, 10), (5, 25)], 3),
    ("slope", [(0, 0), (1, 2), (2, 4)], 2), ("count", [(0, 1), (1, 1)], 2),
    ("delta", [(0, 10), (1, 4)], None),          # a counter that went backwards: no delta
    ("rate", [(0, 10)], None), ("last", [], None),
])
def test_aggregations(agg, points, expected):
    value = aggregate(agg, [(float(t), float(v)) for t, v in points])
    assert value == (pytest.approx(expected) if expected is not None else None)


def test_stddev_aggregation():
    assert aggregate("stddev", [(0.0, 1.0), (1.0, 1.0), (2.0, 1.0)]) == 0.0
    assert aggregate("stddev", [(0.0, 0.0), (1.0, 2.0)]) == pytest.approx(1.4142, rel=1e-3)


def test_pending_then_firing_then_resolved_after_keep_firing_for():
    engine = Engine(rules_from(SPIKE_RULE))
    states = drive(engine, [0.1, 2.0, 2.0, 2.0, 2.0, 2.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert states[0] == "-"
    assert states[1:4] == ["pending"] * 3         # true since t=1
    assert states[4:6] == ["firing"] * 2          # held for 3 s at t=4
    # Last true at t=5; like Prometheus, keep_firing_for (4 s) counts from then.
    assert states[6:9] == ["firing"] * 3
    assert states[9:] == ["-"] * 3                # resolved at t=9
    assert [f.state for f in engine.history] == ["resolved"]
    assert engine.history[0].fired_at == 4.0 and engine.history[0].resolved_at == 9.0


def test_a_single_spike_does_not_fire():
    engine = Engine(rules_from(SPIKE_RULE))
    states = drive(engine, [0.1, 0.1, 6.0, 0.1, 0.1, 0.1, 0.1])
    assert states == ["-", "-", "pending", "-", "-", "-", "-"]
    # A dip shorter than `for` resets the clock: spikes that come and go never fire.
    assert "firing" not in drive(Engine(rules_from(SPIKE_RULE)), [2.0, 2.0, 0.1] * 4)


def test_missing_data_never_fires():
    engine = Engine(rules_from(SPIKE_RULE))
    assert set(drive(engine, [None] * 10)) == {"-"}


def test_none_group_with_unknown_data_is_true_but_all_needs_data():
    rules = rules_from("""
    rules:
      - id: no-io-cause
        severity: info
        window: 5s
        when:
          all:
            - {feature: cpu_cores, agg: last, op: ">=", value: 0}
            - none:
                - {feature: d_state_ratio, agg: avg, op: ">=", value: 0.1}
        summary: s
        hint: h
    """)
    engine = Engine(rules)
    store = FeatureStore(30)
    store.add(0.0, {"cpu_cores": 1.0, "d_state_ratio": None})
    engine.evaluate(store, 0.0, 0.0, {})
    assert "no-io-cause" in engine.active
    store.add(1.0, {"cpu_cores": 1.0, "d_state_ratio": 0.5})
    engine.evaluate(store, 1.0, 1.0, {})
    assert "no-io-cause" not in engine.active


def test_templates_are_filled_with_formatted_values_and_engine_hints():
    engine = Engine(rules_from(SPIKE_RULE))
    drive(engine, [2.0] * 5, context={"comm": "vllm-worker", "engine": "vllm"})
    finding = engine.active["busy-spike"]
    assert finding.summary == "vllm-worker uses 2.00 cores"
    assert finding.hint == "vllm fix with 3 threads"
    evidence = [e.as_dict() for e in finding.evidence]
    assert evidence[0]["feature"] == "cpu_cores" and evidence[0]["met"] is True
    assert evidence[0]["threshold"] == 1.5 and evidence[0]["window_seconds"] == 3.0
    other = Engine(rules_from(SPIKE_RULE))
    drive(other, [2.0] * 5, context={"comm": "srv", "engine": "tgi"})
    assert other.active["busy-spike"].hint == "generic fix for srv"


def test_value_of_compares_two_features():
    rules = rules_from("""
    rules:
      - id: more-busy-than-cores
        severity: warning
        window: 2s
        when:
          all:
            - {feature: busy_threads, agg: min, op: ">", value_of: {feature: effective_physical_cores, factor: 1.0, offset: 0}}
        summary: s
        hint: h
    """)
    engine = Engine(rules)
    store = FeatureStore(30)
    for t, busy in enumerate([3, 3, 3]):
        store.add(float(t), {"busy_threads": busy, "effective_physical_cores": 2})
    engine.evaluate(store, 2.0, 2.0, {})
    assert "more-busy-than-cores" in engine.active
    assert engine.active["more-busy-than-cores"].evidence[0].threshold == 2


# ------------------------------------------------------------------ strict loading

MALFORMED = [
    ("rules: [\n  - id: x\n    severity: [", "not valid YAML at line"),
    ("- just\n- a list\n", "the file must be a mapping with a 'rules' list"),
    ("rules: {id: x}\n", "'rules' must be a list"),
    ("rules:\n  - just-a-string\n", "a rule must be a mapping"),
    ("rules:\n  - {id: a-b, severity: info, summary: s, hint: h, when: "
     "{feature: cpu_cores, op: '>', value: 1}, colour: red}\n", "unknown key(s) colour"),
    ("rules:\n  - {id: Bad_Id, severity: info, summary: s, hint: h, when: "
     "{feature: cpu_cores, op: '>', value: 1}}\n", "id must be lower-case"),
    ("rules:\n  - {id: a-b, severity: urgent, summary: s, hint: h, when: "
     "{feature: cpu_cores, op: '>', value: 1}}\n", "severity 'urgent' is not one of"),
    ("rules:\n  - {id: a-b, severity: info, hint: h, when: "
     "{feature: cpu_cores, op: '>', value: 1}}\n", "summary is required"),
    ("rules:\n  - {id: a-b, severity: info, summary: 'uses $nonsense', hint: h, when: "
     "{feature: cpu_cores, op: '>', value: 1}}\n", "unknown placeholder $nonsense"),
    ("rules:\n  - {id: a-b, severity: info, summary: 'costs $5', hint: h, when: "
     "{feature: cpu_cores, op: '>', value: 1}}\n", "a '$' that is not a placeholder"),
    ("rules:\n  - {id: a-b, severity: info, summary: s, hint: h, when: "
     "{feature: gpu_magic, op: '>', value: 1}}\n", "unknown feature 'gpu_magic'"),
    ("rules:\n  - {id: a-b, severity: info, summary: s, hint: h, when: "
     "{feature: cpu_cores, agg: median, op: '>', value: 1}}\n", "unknown aggregation 'median'"),
    ("rules:\n  - {id: a-b, severity: info, summary: s, hint: h, when: "
     "{feature: cpu_cores, op: '=>', value: 1}}\n", "op '=>' is not one of"),
    ("rules:\n  - {id: a-b, severity: info, summary: s, hint: h, when: "
     "{feature: cpu_cores, op: '>'}}\n", "give exactly one of value or value_of"),
    ("rules:\n  - {id: a-b, severity: info, summary: s, hint: h, when: "
     "{feature: cpu_cores, op: '>', value: lots}}\n", "must be a number"),
    ("rules:\n  - {id: a-b, severity: info, summary: s, hint: h, for: soon, when: "
     "{feature: cpu_cores, op: '>', value: 1}}\n", "'soon' is not a duration"),
    ("rules:\n  - {id: a-b, severity: info, summary: s, hint: h, when: "
     "{feature: cpu_cores, op: '>', value: 1, window: 10 seconds}}\n", "is not a duration"),
    ("rules:\n  - {id: a-b, severity: info, summary: s, hint: h, hints: {kserve: x}, when: "
     "{feature: cpu_cores, op: '>', value: 1}}\n", "unknown engine or runtime 'kserve'"),
    ("rules:\n  - {id: a-b, severity: info, summary: s, hint: h, when: "
     "{all: [], any: []}}\n", "a group has exactly one key"),
    ("rules:\n  - {id: a-b, severity: info, summary: s, hint: h, when: {all: []}}\n",
     "must be a non-empty list"),
    ("rules:\n  - {id: a-b, severity: info, summary: s, hint: h}\n", "when is required"),
    ("rules:\n  - {id: a-b, severity: info, summary: s, hint: h, when: "
     "{feature: cpu_cores, op: '>', value_of: {feature: threads, agg: p99}}}\n",
     "value_of: agg must be last, min, max or avg"),
    ("rules:\n  - {id: a-b, severity: info, summary: s, hint: h, capture: core, when: "
     "{feature: cpu_cores, op: '>', value: 1}}\n", "capture 'core' is not one of"),
]


@pytest.mark.parametrize("text, message", MALFORMED)
def test_every_class_of_malformed_rule_has_a_clear_message(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RuleLoadError) as caught:
        load_rules([path], include_builtin=False)
    joined = "\n".join(caught.value.problems)
    assert message in joined
    assert str(path) in joined


def test_all_problems_are_reported_at_once(tmp_path):
    (tmp_path / "a.yaml").write_text(textwrap.dedent("""
    rules:
      - {id: first-bad, severity: loud, summary: s, hint: h, when: {feature: cpu_cores, op: '>', value: 1}}
      - {id: second-bad, severity: info, summary: s, hint: h, when: {feature: nope, op: '>', value: 1}}
      - {id: fine, severity: info, summary: s, hint: h, when: {feature: cpu_cores, op: '>', value: 1}}
    """))
    (tmp_path / "b.yaml").write_text("rules:\n  - {id: fine, severity: info}\n")
    with pytest.raises(RuleLoadError) as caught:
        load_rules([tmp_path], include_builtin=False)
    problems = caught.value.problems
    assert any("a.yaml: rule first-bad: severity" in p for p in problems)
    assert any("a.yaml: rule second-bad: " in p and "unknown feature 'nope'" in p for p in problems)
    assert any("b.yaml: rule fine: summary is required" in p for p in problems)
    assert len(problems) >= 4


def test_duplicate_ids_in_one_directory_and_unknown_disable(tmp_path):
    rule = "{id: twin, severity: info, summary: s, hint: h, when: {feature: cpu_cores, op: '>', value: 1}}"
    (tmp_path / "a.yaml").write_text(f"rules:\n  - {rule}\n")
    (tmp_path / "b.yaml").write_text(f"rules:\n  - {rule}\ndisable: [no-such-rule]\n")
    with pytest.raises(RuleLoadError) as caught:
        load_rules([tmp_path], include_builtin=False)
    assert any("rule twin: duplicate id" in p for p in caught.value.problems)
    assert any("disable: no rule with id no-such-rule" in p for p in caught.value.problems)


def test_user_rules_override_and_disable_builtin_ones(tmp_path):
    builtin = {rule.id: rule for rule in load_rules()}
    assert "oom-risk-critical" in builtin and "numa-spread" in builtin
    (tmp_path / "site.yaml").write_text(textwrap.dedent("""
    rules:
      - id: oom-risk-critical
        severity: critical
        summary: "site policy: $comm near its memory limit"
        hint: "page the on-call"
        when: {feature: memory_limit_ratio, agg: last, op: ">=", value: 0.9}
    disable: [numa-spread]
    """))
    merged = {rule.id: rule for rule in load_rules([tmp_path])}
    assert merged["oom-risk-critical"].hint == "page the on-call"
    assert "numa-spread" not in merged
    assert len(merged) == len(builtin) - 1


def test_the_shipped_rules_load_and_every_rule_is_documented():
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[1] / "docs" / "rules.md").read_text()
    for rule in load_rules():
        assert f"`{rule.id}`" in doc, f"{rule.id} is not in docs/rules.md"
        assert rule.description, rule.id


def test_rules_cli(tmp_path):
    ok = run_dsmon("rules", "check")
    assert ok.returncode == 0 and ok.stdout.startswith("ok: ")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {id: x-y, severity: loud}\n")
    result = run_dsmon("rules", "check", str(bad))
    assert result.returncode == 8
    assert "rule x-y: severity 'loud'" in result.stderr and "problem(s)" in result.stderr
    listing = run_dsmon("rules", "list")
    assert "thread-oversubscription" in listing.stdout and "oom-risk-critical" in listing.stdout
    explained = run_dsmon("rules", "explain", "numa-misplacement")
    assert explained.returncode == 0
    assert "numa_local_ratio" in explained.stdout and "numactl" in explained.stdout
    assert run_dsmon("rules", "explain", "no-such-rule").returncode == 2
    diagnose_bad = run_dsmon("diagnose", "1", "--rules", str(bad), "--duration", "1s")
    assert diagnose_bad.returncode == 8 and "cannot load rules" in diagnose_bad.stderr


# ------------------------------------------------------------------ rules on collector data

def test_numa_misplacement_names_the_node_to_bind(fake_host):
    """Threads run on node 0 while the memory sits on node 1 of a 2-socket host."""
    fake_host.add_smt_host()                     # node 0: cpus 0-3,8-11; node 1: 4-7,12-15
    fake_host.set_hostname()
    fake_host.set_meminfo(MemTotal=64 * 2**20, MemFree=32 * 2**20, MemAvailable=40 * 2**20)
    numa_maps = ("7f1c00000000 default anon=262144 dirty=262144 N1=250000 N0=12144 "
                 "kernelpagesize_kB=4\n")
    workers = [FakeThread(901, "omp_worker_0", "R", processor=0),
               FakeThread(902, "omp_worker_1", "R", processor=1)]
    fake_host.add_process(900, threads=workers, numa_maps=numa_maps, cpus_allowed=range(16),
                          mems_allowed=(0, 1))
    sampler = TargetSampler(fake_host.paths, 900)
    static = sampler.static()
    monitor = RuleMonitor(static, load_rules())
    for second in range(12):
        for worker in workers:
            worker.utime += 90       # 0.9 s of CPU per second on node 0
            fake_host.add_thread(900, worker, cpus_allowed=range(16), nr_cpus=16)
        tick = sampler.tick()
        tick.mono_ts = float(second)          # a simulated 1 s cadence
        monitor.observe(tick)
    sampler.close()
    active = {f.rule_id: f for f in monitor.engine.current()}
    assert "numa-misplacement" in active and active["numa-misplacement"].state == "firing"
    finding = active["numa-misplacement"]
    assert "numactl --cpunodebind=1 --membind=1" in finding.hint
    assert "node 0" in finding.summary and "node 1" in finding.summary
    local = [e for e in finding.evidence if e.feature == "numa_local_ratio"][0]
    assert local.value < 0.1


def test_cpu_underuse_names_the_seeds_45_percent_case():
    """The seed's worked case: 24 cores, CPU at 45%, a pool far smaller than the cores."""
    rules = [rule for rule in load_rules() if rule.id == "cpu-underuse"]
    engine = Engine(rules)
    store = FeatureStore(60)
    for second in range(12):
        store.add(float(second), {
            "effective_physical_cores": 24, "cpu_capacity_cores": 24.0,
            "cpu_utilisation_ratio": 0.45, "busy_threads": 10, "max_thread_cpu_cores": 0.98,
            "runnable_waiting_ratio": 0.01, "recommended_threads": 20, "cpu_cores": 10.8})
        engine.evaluate(store, float(second), float(second), {"comm": "fin-model"})
    finding = engine.active["cpu-underuse"]
    assert finding.state == "firing" and finding.severity == "info"
    assert "toward 20" in finding.hint and "24" in finding.hint
    assert "45%" in finding.summary
    # Healthy: the same host with threads queueing (pool as large as the cores) stays quiet.
    quiet = Engine(rules)
    store = FeatureStore(60)
    for second in range(12):
        store.add(float(second), {
            "effective_physical_cores": 24, "cpu_capacity_cores": 24.0,
            "cpu_utilisation_ratio": 0.45, "busy_threads": 22, "max_thread_cpu_cores": 0.5,
            "runnable_waiting_ratio": 0.3})
        quiet.evaluate(store, float(second), float(second), {})
    assert "cpu-underuse" not in quiet.active


def _gpu_rules():
    return [rule for rule in load_rules() if rule.id.startswith("gpu-")]


def _drive_gpu(memory_series, utilisation=0.9, thread_cores=0.3, total=80 * 2**30):
    """One sample a second through the feature's arithmetic: slope over the last
    GPU_GROWTH_WINDOW_S, time to full from the fullest GPU's free memory."""
    from dsmon.features.series import linear_slope
    from dsmon.features.gpu import GPU_GROWTH_WINDOW_S
    engine = Engine(_gpu_rules())
    store = FeatureStore(60)
    history = []
    for second, used in enumerate(memory_series):
        history = [(t, v) for t, v in history if second - t <= GPU_GROWTH_WINDOW_S] + \
            [(float(second), used)]
        slope = linear_slope(history)
        free = total - used - 2**30              # other tenants and the CUDA context
        values = {"gpu_memory_bytes": used, "gpu_memory_free_bytes": free,
                  "gpu_memory_total_bytes": total, "gpu_memory_growth_bytes_per_second": slope,
                  "seconds_to_gpu_memory_full": free / slope if slope and slope > 0 else None,
                  "gpu_utilization_ratio": utilisation, "max_thread_cpu_cores": thread_cores}
        store.add(float(second), values)
        engine.evaluate(store, float(second), float(second), {"comm": "srv", "engine": "vllm"})
    return engine


def test_gpu_oom_risk_fires_on_growth_toward_capacity():
    grow = [40 * 2**30 + second * 512 * 2**20 for second in range(40)]   # +512 MiB/s
    engine = _drive_gpu(grow)
    finding = engine.active.get("gpu-oom-risk-critical")
    assert finding is not None and finding.state == "firing"
    assert "--gpu-memory-utilization" in finding.hint          # vLLM's own lever


def test_a_steady_preallocation_is_healthy():
    """vLLM: ~90% of the GPU taken in a few seconds at start, then flat."""
    ramp = [0, 20 * 2**30, 50 * 2**30, 72 * 2**30] + [72 * 2**30] * 60
    engine = _drive_gpu(ramp)
    assert not any(rule_id.startswith("gpu-oom") for rule_id in engine.active)
    assert not any(f.rule_id.startswith("gpu-oom") for f in engine.history)


def test_idle_gpu_beside_a_saturated_cpu_thread_is_cpu_bound():
    engine = _drive_gpu([10 * 2**30] * 20, utilisation=0.05, thread_cores=0.99)
    assert engine.active["gpu-idle-cpu-bound"].state == "firing"
    busy = _drive_gpu([10 * 2**30] * 20, utilisation=0.85, thread_cores=0.99)
    assert "gpu-idle-cpu-bound" not in busy.active


def test_gpu_numa_mismatch_names_the_gpus_node(fake_host):
    """Threads on node 0 while the process's GPU (from NVML affinity) is local to node 1."""
    from types import SimpleNamespace

    fake_host.add_smt_host()                     # node 0: cpus 0-3,8-11; node 1: 4-7,12-15
    fake_host.set_hostname()
    fake_host.set_meminfo(MemTotal=64 * 2**20, MemFree=32 * 2**20, MemAvailable=40 * 2**20)
    workers = [FakeThread(901, "omp_worker_0", "R", processor=0),
               FakeThread(902, "omp_worker_1", "R", processor=1)]
    fake_host.add_process(900, threads=workers, cpus_allowed=range(16), mems_allowed=(0, 1))
    sampler = TargetSampler(fake_host.paths, 900)
    monitor = RuleMonitor(sampler.static(), load_rules())
    usage = SimpleNamespace(status="ok", memory_bytes=40 * 2**30, gpus=[4])
    snapshot = SimpleNamespace(targets={900: usage}, gpus=[])
    topology = SimpleNamespace(local_cpus=lambda gpus: [4, 5, 6, 7, 12, 13, 14, 15],
                               local_nodes=lambda gpus: [1])
    monitor.follow_gpu_locality(snapshot, topology)
    from dsmon.model import Batch, Status
    for second in range(12):
        for worker in workers:
            worker.utime += 90
            fake_host.add_thread(900, worker, cpus_allowed=range(16), nr_cpus=16)
        tick = sampler.tick()
        tick.mono_ts = float(second)
        tick.batches["gpu"] = Batch("gpu", 0.0, 0.0, Status.OK, snapshot)
        monitor.observe(tick)
    sampler.close()
    finding = {f.rule_id: f for f in monitor.engine.current()}["gpu-numa-mismatch"]
    assert finding.state == "firing"
    assert "--cpunodebind=1 --membind=1" in finding.hint
    assert [e.value for e in finding.evidence if e.feature == "gpu_local_cpu_ratio"] == [0.0]


CAUSES = """
rules:
  - id: cause-deep
    severity: warning
    window: 3s
    keep_firing_for: 2s
    inhibits: [symptom]
    when:
      all:
        - {feature: python_gil_held_ratio, agg: avg, op: ">=", value: 0.8}
    summary: "GIL held $python_gil_held_ratio"
    hint: "gil fix"
  - id: symptom
    severity: warning
    window: 3s
    when:
      all:
        - {feature: busy_threads, agg: avg, op: ">", value: 2}
    summary: "$busy_threads busy, peak ${max:busy_threads}, last ${last:busy_threads}"
    hint: "fewer threads"
"""


def _evaluate(engine, store, second):
    return engine.evaluate(store, float(second), 1000.0 + second, {"comm": "srv"})


def test_an_inhibiting_rule_ends_the_symptom_it_explains():
    engine = Engine(rules_from(CAUSES))
    store = FeatureStore(60)
    transitions = []
    for second, (busy, gil) in enumerate([(4, None), (4, None), (4, 0.95), (4, 0.95), (4, 0.95),
                                          (4, 0.1), (4, 0.1), (4, 0.1), (4, 0.1), (4, 0.1)]):
        store.add(float(second), {"busy_threads": busy, "python_gil_held_ratio": gil})
        transitions += [(second, f.rule_id, state) for f, state in _evaluate(engine, store, second)]
    # The symptom fires alone; once the GIL explains it, it resolves at once (not after a
    # keep_firing_for) and says why; it comes back only when the cause has cleared, including
    # the cause's own keep_firing_for.
    assert (0, "symptom", "firing") in transitions
    assert (2, "symptom", "resolved") in transitions and (2, "cause-deep", "firing") in transitions
    resolved = [f for f in engine.history if f.rule_id == "symptom"]
    assert resolved[0].inhibited_by == "cause-deep"
    assert resolved[0].as_dict()["inhibited_by"] == "cause-deep"
    back = [s for s, rule, state in transitions if rule == "symptom" and state == "firing"]
    cause_resolved = [s for s, rule, state in transitions if rule == "cause-deep" and state == "resolved"]
    assert back[-1] > 2 and cause_resolved and back[-1] >= cause_resolved[0]


def test_summaries_quote_the_aggregate_the_evidence_used():
    engine = Engine(rules_from(CAUSES))
    store = FeatureStore(60)
    for second, busy in enumerate([2, 3, 7]):
        store.add(float(second), {"busy_threads": busy})
        _evaluate(engine, store, second)
    finding = engine.active["symptom"]
    evidence = [e.as_dict() for e in finding.evidence]
    assert evidence[0]["value"] == 4.0 and "3 points over 2.0s of 3s" in evidence[0]["text"]
    # `$busy_threads` is the avg the condition computed, not the last sample (7).
    assert finding.summary == "4 busy, peak 7, last 7"


@pytest.mark.parametrize("text, message", [
    ("inhibits: [nope]", "inhibits unknown rule nope"),
    ("inhibits: [a-b]", "a rule cannot inhibit itself"),
    ("inhibits: a-c", "inhibits must be a list of rule ids"),
    ("summary: '${median:cpu_cores}'", "unknown aggregation 'median'"),
    ("summary: '${avg:no_such}'", "unknown feature 'no_such'"),
])
def test_malformed_inhibits_and_placeholders(tmp_path, text, message):
    key = text.split(":")[0]
    base = {"id": "a-b", "severity": "info", "summary": "s", "hint": "h",
            "when": {"feature": "cpu_cores", "op": ">", "value": 1}}
    body = "\n".join(f"    {k}: {v!r}" if isinstance(v, str) else f"    {k}: {v}"
                     for k, v in base.items() if k != key)
    (tmp_path / "bad.yaml").write_text(f"rules:\n  - {body.strip()}\n    {text}\n")
    with pytest.raises(RuleLoadError) as caught:
        load_rules([tmp_path / "bad.yaml"], include_builtin=False)
    assert message in "\n".join(caught.value.problems)


def test_inhibition_cycles_are_load_errors(tmp_path):
    rule = "  - {{id: {0}, severity: info, summary: s, hint: h, inhibits: [{1}], " \
           "when: {{feature: cpu_cores, op: '>', value: 1}}}}\n"
    (tmp_path / "cycle.yaml").write_text("rules:\n" + rule.format("x-a", "x-b")
                                         + rule.format("x-b", "x-c") + rule.format("x-c", "x-a"))
    with pytest.raises(RuleLoadError) as caught:
        load_rules([tmp_path / "cycle.yaml"], include_builtin=False)
    assert "inhibition cycle x-a -> x-b -> x-c -> x-a" in "\n".join(caught.value.problems)


def test_two_rules_naming_one_cause_must_inhibit_each_other(tmp_path):
    rule = "  - {{id: {0}, severity: warning, cause: {1}, summary: s, hint: h{2}, " \
           "when: {{feature: cpu_cores, op: '>', value: 1}}}}\n"
    (tmp_path / "twice.yaml").write_text("rules:\n" + rule.format("quota-a", "cpu-quota", "")
                                         + rule.format("quota-b", "cpu-quota", ""))
    with pytest.raises(RuleLoadError) as caught:
        load_rules([tmp_path / "twice.yaml"], include_builtin=False)
    problems = "\n".join(caught.value.problems)
    assert "rule quota-b: names the cause 'cpu-quota' as rule quota-a does" in problems
    # Inhibition settles it; a chain would not (an inhibited rule inhibits nothing), and a
    # disabled rule takes no part.
    (tmp_path / "twice.yaml").write_text("rules:\n"
                                         + rule.format("quota-a", "cpu-quota", ", inhibits: [quota-b]")
                                         + rule.format("quota-b", "cpu-quota", ""))
    assert [r.cause for r in load_rules([tmp_path / "twice.yaml"], include_builtin=False)] == \
        ["cpu-quota", "cpu-quota"]
    (tmp_path / "chain.yaml").write_text(
        "rules:\n" + rule.format("c-a", "io-blocking", ", inhibits: [c-b]")
        + rule.format("c-b", "io-blocking", ", inhibits: [c-c]")
        + rule.format("c-c", "io-blocking", ""))
    with pytest.raises(RuleLoadError) as caught:
        load_rules([tmp_path / "chain.yaml"], include_builtin=False)
    assert "rule c-c: names the cause 'io-blocking' as rule c-a does" in \
        "\n".join(caught.value.problems)
    (tmp_path / "off.yaml").write_text("disable: [c-c]\n")
    assert len(load_rules([tmp_path / "chain.yaml", tmp_path / "off.yaml"],
                          include_builtin=False)) == 2
    (tmp_path / "bad.yaml").write_text("rules:\n" + rule.format("bad-cause", "'CPU quota'", ""))
    with pytest.raises(RuleLoadError) as caught:
        load_rules([tmp_path / "bad.yaml"], include_builtin=False)
    assert "cause 'CPU quota' must be lower-case words" in "\n".join(caught.value.problems)


def test_every_builtin_rule_names_its_cause_once():
    rules = load_rules()
    assert all(rule.cause for rule in rules), [r.id for r in rules if not r.cause]
    by_cause: dict[str, list[str]] = {}
    for rule in rules:
        by_cause.setdefault(rule.cause, []).append(rule.id)
    # The pairs that used to fire together for one cause, now one finding each.
    assert set(by_cause["cpu-quota"]) == {"cpu-throttling", "cpu-fluctuation-throttling"}
    assert set(by_cause["io-blocking"]) == {"io-stall", "cpu-fluctuation-io"}
    assert set(by_cause["numa-placement"]) == {"gpu-numa-mismatch", "numa-misplacement",
                                               "numa-spread"}


def _run_builtin(samples: list[dict], rule_ids: set[str]) -> Engine:
    engine = Engine([r for r in load_rules() if r.id in rule_ids])
    store = FeatureStore(60)
    for second, values in enumerate(samples):
        store.add(float(second), values)
        engine.evaluate(store, float(second), 1000.0 + second, {"comm": "srv"})
    return engine


def test_a_throttled_swinging_target_gets_one_quota_finding_that_shows_the_swing():
    # Half a core, load switching on and off: 20% of the time throttled, the CPU swinging
    # between 0 and the quota (the real scenario: tests/test_scenarios_cpu.py).
    samples = [{"cpu_throttled_ratio": 0.2, "cpu_cores": 0.5 if s % 4 < 2 else 0.05,
                "cpu_utilisation_ratio": 1.0 if s % 4 < 2 else 0.1, "cpu_quota_cores": 0.5,
                "runnable_waiting_ratio": 0.7, "run_queue_wait_seconds_per_second": 0.5}
               for s in range(12)]
    engine = _run_builtin(samples, {"cpu-throttling", "cpu-fluctuation-throttling",
                                    "cpu-fluctuation-contention", "cpu-fluctuation-unexplained"})
    firing = {f.rule_id: f for f in engine.current() if f.state == "firing"}
    assert set(firing) == {"cpu-throttling"}, engine.current()
    summary = firing["cpu-throttling"].summary
    assert "0.50 cores" in summary and "20%" in summary, summary
    assert "peaked at 0.5" in summary and "varied by" in summary, summary
    document = firing["cpu-throttling"].as_dict()
    assert document["cause"] == "cpu-quota"
    # The peak and the spread are no condition's: the finding lists them as quoted, with the
    # points they cover, so each number of the summary is traced to a measurement.
    quoted = {(q["aggregation"], q["feature"]): q for q in document["quoted"]}
    assert quoted[("max", "cpu_cores")]["value"] == 0.5
    assert quoted[("stddev", "cpu_utilisation_ratio")]["points"] >= 10
    assert ("last", "cpu_quota_cores") in quoted
    assert not any(q["feature"] == "cpu_throttled_ratio" for q in document["quoted"])
    # Throttled less than cpu-throttling's 10%, the swing's own rule names the quota alone.
    light = [dict(sample, cpu_throttled_ratio=0.06) for sample in samples]
    engine = _run_builtin(light, {"cpu-throttling", "cpu-fluctuation-throttling",
                                  "cpu-fluctuation-contention", "cpu-fluctuation-unexplained"})
    assert {f.rule_id for f in engine.current() if f.state == "firing"} == \
        {"cpu-fluctuation-throttling"}


@pytest.mark.parametrize("engine_name, expected", [
    ("vllm", "Raise the CPU limit"),
    ("llamacpp", "--threads 1 for 0.50 cores"),
    ("pytorch", "torch.set_num_threads(1)"),
    ("", "Match threads to the quota (1 thread(s))"),
])
def test_quota_hints_fit_the_engine(engine_name, expected):
    samples = [{"cpu_throttled_ratio": 0.3, "cpu_quota_cores": 0.5, "recommended_threads": 1,
                "cpu_cores": 0.5, "cpu_utilisation_ratio": 1.0}] * 5
    engine = Engine([r for r in load_rules() if r.id == "cpu-throttling"])
    store = FeatureStore(60)
    for second, values in enumerate(samples):
        store.add(float(second), values)
        engine.evaluate(store, float(second), 1000.0 + second,
                        {"comm": "srv", "engine": engine_name})
    (finding,) = engine.current()
    assert finding.state == "firing" and expected in finding.hint, finding.hint


def test_fit_r2_tells_steady_growth_from_noise():
    steady = [(float(t), 1000.0 + 50 * t) for t in range(10)]
    noise = [(float(t), 1000.0 + (37 * t * t) % 11) for t in range(10)]
    assert aggregate("fit_r2", steady) == pytest.approx(1.0)
    assert aggregate("fit_r2", noise) < 0.3
    assert aggregate("fit_r2", steady[:2]) is None


@pytest.mark.parametrize("engine_name, runtime, expected", [
    ("pytorch", "openmp", "torch.set_num_threads"),
    ("python", "blas", "OPENBLAS_NUM_THREADS"),
    ("python", "openmp", "OMP_NUM_THREADS="),
    ("python", "", "ThreadPoolExecutor"),
    ("", "", "lower its thread-pool setting"),
    ("vllm", "blas", "vLLM sizes its torch threads itself"),
])
def test_oversubscription_hint_fits_the_runtime(engine_name, runtime, expected):
    rule = next(r for r in load_rules() if r.id == "thread-oversubscription")
    hint = rule.hint_for(engine_name, runtime)
    assert expected in hint
    if engine_name != "pytorch":
        assert "torch.set_num_threads" not in hint


def test_a_pending_inhibitor_delays_the_symptom_and_a_flapping_one_cannot_silence_it():
    """Only a firing rule inhibits (as in Alertmanager); one that is pending holds the symptom
    in pending, so the deeper cause gets its `for:` first. One that flaps and never fires
    (an average near its threshold) does not silence the symptom for good."""
    text = CAUSES.replace("keep_firing_for: 2s\n    inhibits", "for: 3s\n    inhibits")
    engine = Engine(rules_from(text))
    store = FeatureStore(60)
    transitions = []
    # the GIL reading flaps, so the cause's 3 s average crosses its threshold now and then
    gil = [0.9, 0.9, 0.5] * 4
    for second, ratio in enumerate(gil):
        store.add(float(second), {"busy_threads": 4, "python_gil_held_ratio": ratio})
        transitions += [(second, f.rule_id, state) for f, state in _evaluate(engine, store, second)]
    assert ("cause-deep", "firing") not in {(r, s) for _, r, s in transitions}
    fired = [s for s, rule, state in transitions if rule == "symptom" and state == "firing"]
    # held while the cause was pending (seconds 0-1), fired once it cleared (second 2)
    assert fired and fired[0] == 2, transitions
