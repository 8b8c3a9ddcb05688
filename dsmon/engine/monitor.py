"""One target's rule evaluation over time: features in, findings out. Shared by every driver."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from dsmon.engine.engines import detect_engine
from dsmon.engine.evaluate import Engine, Finding
from dsmon.features import FeatureExtractor, FeatureStore
from dsmon.features.gpu_health import GpuHealthFeatures
from dsmon.engine.rules import SEVERITY_RANK, Rule

# Feature history is kept a little longer than the longest rule window.
RETENTION_MARGIN_S = 5.0
TRANSITIONS_LIMIT = 10_000   # enough for any diagnose window; bounded for the agent


@dataclass
class Transition:
    mono_ts: float
    rule_id: str
    severity: str
    state: str


class _Evaluating:
    """What both monitors do with their engine: evaluate, keep the transitions, answer."""

    engine: Engine
    store: FeatureStore
    transitions: deque

    def _evaluate(self, now: float, wall: float, context: dict) -> list[tuple[Finding, str]]:
        changed = self.engine.evaluate(self.store, now, wall, context)
        for finding, state in changed:
            self.transitions.append(Transition(now, finding.rule_id, finding.severity, state))
        return changed

    def findings(self) -> list[Finding]:
        """Active findings, then those resolved during the window; most severe first."""
        resolved = sorted(self.engine.history, key=lambda f: -SEVERITY_RANK[f.severity])
        return self.engine.current() + resolved

    def worst_firing(self) -> str | None:
        firing = [f.severity for f in self.engine.current() if f.state == "firing"]
        return max(firing, key=SEVERITY_RANK.get) if firing else None


@dataclass
class RuleMonitor(_Evaluating):
    static: object
    rules: list[Rule]
    transitions: deque = field(default_factory=lambda: deque(maxlen=TRANSITIONS_LIMIT))
    history: dict[float, dict] = field(default_factory=dict)   # mono_ts -> feature values
    last_values: dict = field(default_factory=dict)   # the latest tick's features (live view)

    def __post_init__(self):
        self.rules = [rule for rule in self.rules if rule.subject == "target"]
        identity = self.static.identity
        self.extractor = FeatureExtractor(self.static)
        self.extractor.context["engine"] = detect_engine(
            identity.cmdline, identity.exe, identity.comm, self._torch_loaded())
        retention = max((rule.longest_window_s for rule in self.rules), default=0.0)
        self.store = FeatureStore(retention + RETENTION_MARGIN_S)
        self.engine = Engine(self.rules)

    def _torch_loaded(self) -> bool:
        """From the static facts (dsmon.collectors.runtimes); the engine reads no host file."""
        batch = getattr(self.static, "runtimes", None)
        return batch is not None and batch.ok and batch.data.torch

    def follow_gpu_locality(self, gpu_snapshot, topology) -> None:
        """Tell the features which CPUs are local to the GPUs this target uses."""
        if gpu_snapshot is None or topology is None:
            return
        usage = gpu_snapshot.targets.get(self.static.identity.pid)
        if usage is not None and usage.gpus:
            self.extractor.set_gpu_locality(topology.local_cpus(usage.gpus),
                                            topology.local_nodes(usage.gpus))

    @property
    def engine_name(self) -> str:
        return self.extractor.context["engine"]

    def observe(self, tick) -> list[tuple[Finding, str]]:
        """Record the tick's features and evaluate at its time (what diagnose does)."""
        if not self.record(tick):
            return []
        return self.evaluate(tick.mono_ts, tick.wall_ts)

    def record(self, tick, keep_history: bool = True) -> bool:
        if tick.data("process") is None:
            return False
        values = self.extractor.update(tick)
        if values["torch_loaded"] and self.extractor.context["engine"] == "python":
            self.extractor.context["engine"] = "pytorch"   # torch imported after start
        self.last_values = values
        if keep_history:
            self.history[tick.mono_ts] = values
        self.store.add(tick.mono_ts, values)
        return True

    def record_values(self, mono_ts: float, values: dict) -> None:
        """Feature values measured outside a tick (a gone target's last OOM-kill count)."""
        self.store.add(mono_ts, values)

    def evaluate(self, now: float, wall: float) -> list[tuple[Finding, str]]:
        return self._evaluate(now, wall, self.extractor.context)


@dataclass
class HostRuleMonitor(_Evaluating):
    """The host's rules (`subject: host`: GPU health) over time, one per agent or diagnose run:
    a lost GPU is one finding, whichever processes use it."""

    rules: list[Rule]
    transitions: deque = field(default_factory=lambda: deque(maxlen=TRANSITIONS_LIMIT))

    def __post_init__(self):
        self.rules = [rule for rule in self.rules if rule.subject == "host"]
        self.gpu_health = GpuHealthFeatures()
        retention = max((rule.longest_window_s for rule in self.rules), default=0.0)
        self.store = FeatureStore(retention + RETENTION_MARGIN_S)
        self.engine = Engine(self.rules)
        self.context: dict[str, str] = {"target": "host", "comm": "host"}
        self._started = False

    def observe_gpu(self, snapshot, now: float, wall: float) -> list[tuple[Finding, str]]:
        """Record one NVML snapshot (None: no NVML) and evaluate at its time."""
        if not self._started:
            # The event counters count from dsmon's start: an event in the first snapshot is
            # a delta too.
            self.store.add(now - 1e-3, {"gpu_xid_events": 0.0, "gpu_critical_xid_events": 0.0})
            self._started = True
        values = self.gpu_health.update(snapshot)
        self.store.add(now, values)
        self.context.update(self.gpu_health.context)
        return self._evaluate(now, wall, self.context)
