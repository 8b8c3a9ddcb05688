"""Rule files: schema, strict loading, overrides. Rules are data; nothing in them is executed.

A rule file is YAML with a top-level `rules:` list (schema in docs/rules.md). Every problem in
every file is collected and reported at once, each with its file, rule id and reason.
"""

from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dsmon.features import CONTEXT_FIELDS, FEATURES
from dsmon.units import parse_duration

AGGREGATIONS = ("last", "min", "max", "avg", "stddev", "rate", "delta", "slope", "fit_r2",
                "count")
OPERATORS = (">", ">=", "<", "<=", "==", "!=")
SEVERITIES = ("info", "warning", "critical")
SEVERITY_RANK = {"info": 1, "warning": 2, "critical": 3}
ENGINES = ("vllm", "sglang", "tgi", "triton", "llamacpp", "ollama", "pytorch", "python")
# Hints may also be keyed by the thread-pool runtime a plain Python process has loaded
# (numpy's OpenBLAS, MKL, an OpenMP runtime): the engine alone cannot say which knob applies.
RUNTIMES = ("blas", "openmp")
HINT_KEYS = ENGINES + RUNTIMES
SUBJECTS = ("target", "host")
RULE_ID = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
# Enough points for each aggregation to mean something.
MIN_POINTS = {"last": 1, "min": 1, "max": 1, "avg": 1, "count": 0, "stddev": 3, "rate": 2,
              "delta": 2, "slope": 3, "fit_r2": 3}

RULE_KEYS = {"id", "severity", "summary", "hint", "hints", "when", "for", "keep_firing_for",
             "window", "subject", "description", "capture", "doc", "inhibits", "cause"}
LEAF_KEYS = {"feature", "agg", "window", "op", "value", "value_of", "min_points"}
VALUE_OF_KEYS = {"feature", "agg", "factor", "offset"}
GROUP_KEYS = ("all", "any", "none")


class RuleLoadError(Exception):
    """All problems found while loading rules, each 'file: rule: reason'."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class ValueOf:
    feature: str
    agg: str = "last"
    factor: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True)
class Leaf:
    feature: str
    agg: str
    window_s: float
    op: str
    value: float | None = None
    value_of: ValueOf | None = None
    min_points: int = 1

    def describe(self) -> str:
        threshold = self.value if self.value_of is None else (
            f"{self.value_of.factor:g} x {self.value_of.feature}"
            + (f" + {self.value_of.offset:g}" if self.value_of.offset else ""))
        return f"{self.agg}({self.feature}[{self.window_s:g}s]) {self.op} {threshold}"


@dataclass(frozen=True)
class Group:
    kind: str                      # all, any, none
    children: tuple


@dataclass
class Rule:
    id: str
    severity: str
    summary: str
    hint: str
    when: Group | Leaf
    for_s: float = 0.0
    keep_firing_for_s: float = 0.0
    subject: str = "target"
    description: str = ""
    hints: dict[str, str] = field(default_factory=dict)
    capture: str | None = None
    source: str = ""
    # Rules this one explains away while it is active (as Alertmanager's inhibit rules): a
    # GIL-bound process is not also over-subscribed, a cgroup full of page cache is not at
    # OOM risk. One cause per symptom.
    inhibits: tuple[str, ...] = ()
    # What the finding blames (a slug: cpu-quota, io-blocking, gil, ...). Rules of one subject
    # that name the same cause must be ordered by `inhibits`, so a cause gives one finding.
    cause: str | None = None

    def hint_for(self, engine: str, runtime: str = "") -> str:
        """The engine's own hint (torch advice is keyed `pytorch`, which the engine detector
        reports only when libtorch is mapped); for a plain Python process, the hint of the
        thread-pool runtime it has mapped (`blas`, `openmp`) before the `python` one, since
        that runtime's knob is what sizes its threads; else the generic hint."""
        if engine == "python" or not engine:
            order = [runtime, engine]
        elif engine == "pytorch":
            order = [engine, runtime]
        else:
            order = [engine]
        return next((self.hints[key] for key in order if key and key in self.hints), self.hint)

    def leaves(self):
        def walk(node):
            if isinstance(node, Leaf):
                yield node
            else:
                for child in node.children:
                    yield from walk(child)
        return list(walk(self.when))

    @property
    def longest_window_s(self) -> float:
        return max((leaf.window_s for leaf in self.leaves()), default=0.0)


class RuleTemplate(string.Template):
    """`$feature`, `${feature}`, and `${agg:feature}` for an explicit aggregation over the
    rule's window (e.g. `${max:cpu_cores}`)."""

    braceidpattern = r"(?a:(?:[a-z_0-9]+:)?[_a-z][_a-z0-9]*)"


def split_placeholder(name: str) -> tuple[str | None, str]:
    """'avg:busy_threads' -> ('avg', 'busy_threads'); 'comm' -> (None, 'comm')."""
    agg, _, feature = name.rpartition(":")
    return (agg or None), feature


def placeholder_problem(name: str) -> str | None:
    if name == "<invalid>":
        return "a '$' that is not a placeholder (write $$ for a literal dollar)"
    agg, feature = split_placeholder(name)
    if agg is not None:
        if agg not in AGGREGATIONS:
            return f"${{{name}}}: unknown aggregation {agg!r} (one of {', '.join(AGGREGATIONS)})"
        if feature not in FEATURES:
            return f"${{{name}}}: unknown feature {feature!r}"
        return None
    if feature not in FEATURES and feature not in CONTEXT_FIELDS:
        return (f"unknown placeholder ${feature} (a feature, ${{agg:feature}}, or one of "
                + ", ".join(CONTEXT_FIELDS) + ")")
    return None


def template_fields(text: str) -> set[str]:
    """Placeholders of a rule template, and malformed ones as '<invalid>'."""
    names = set()
    for match in RuleTemplate.pattern.finditer(text):
        if match.group("invalid") is not None:
            names.add("<invalid>")
        name = match.group("named") or match.group("braced")
        if name:
            names.add(name)
    return names


class _Parser:
    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems

    def fail(self, rule_id: str, reason: str) -> None:
        self.problems.append(f"{self.source}: rule {rule_id}: {reason}")

    def rule(self, raw, index: int) -> Rule | None:
        if not isinstance(raw, dict):
            self.problems.append(f"{self.source}: rules[{index}]: a rule must be a mapping, "
                                 f"got {type(raw).__name__}")
            return None
        rule_id = raw.get("id")
        label = rule_id if isinstance(rule_id, str) else f"#{index}"
        count = len(self.problems)
        unknown = sorted(set(map(str, raw)) - RULE_KEYS)
        if unknown:
            self.fail(label, f"unknown key(s) {', '.join(unknown)} "
                             f"(allowed: {', '.join(sorted(RULE_KEYS))})")
        if not isinstance(rule_id, str) or not RULE_ID.match(rule_id):
            self.fail(label, "id must be lower-case words joined by '-', e.g. oom-risk-critical")
        severity = raw.get("severity")
        if severity not in SEVERITIES:
            self.fail(label, f"severity {severity!r} is not one of {', '.join(SEVERITIES)}")
        subject = raw.get("subject", "target")
        if subject not in SUBJECTS:
            self.fail(label, f"subject {subject!r} is not one of {', '.join(SUBJECTS)}")
        for key in ("summary", "hint"):
            if not isinstance(raw.get(key), str) or not raw.get(key).strip():
                self.fail(label, f"{key} is required and must be text")
        hints = raw.get("hints", {})
        if not isinstance(hints, dict) or not all(isinstance(v, str) for v in hints.values()):
            self.fail(label, "hints must map engine names to text")
            hints = {}
        for engine in hints:
            if engine not in HINT_KEYS:
                self.fail(label, f"hints: unknown engine or runtime {engine!r} "
                                 f"(known: {', '.join(HINT_KEYS)})")
        for where, text in [("summary", raw.get("summary")), ("hint", raw.get("hint"))] + \
                [(f"hints.{k}", v) for k, v in hints.items()]:
            if isinstance(text, str):
                for name in sorted(template_fields(text)):
                    problem = placeholder_problem(name)
                    if problem:
                        self.fail(label, f"{where}: {problem}")
        default_window = raw.get("window", "30s")
        window_s = parse_duration(default_window, f"{self.source}: rule {label}: window",
                                  self.problems)
        for_s = parse_duration(raw.get("for", 0), f"{self.source}: rule {label}: for", self.problems)
        keep_s = parse_duration(raw.get("keep_firing_for", 0),
                                f"{self.source}: rule {label}: keep_firing_for", self.problems)
        if "when" not in raw:
            self.fail(label, "when is required")
            when = None
        else:
            when = self.condition(raw["when"], label, window_s or 30.0, "when")
        capture = raw.get("capture")
        if capture not in (None, "stack"):
            self.fail(label, f"capture {capture!r} is not one of: stack")
        inhibits = raw.get("inhibits", [])
        if not isinstance(inhibits, list) or not all(isinstance(i, str) for i in inhibits):
            self.fail(label, "inhibits must be a list of rule ids")
            inhibits = []
        elif rule_id in inhibits:
            self.fail(label, "a rule cannot inhibit itself")
        cause = raw.get("cause")
        if cause is not None and (not isinstance(cause, str) or not RULE_ID.match(cause)):
            self.fail(label, f"cause {cause!r} must be lower-case words joined by '-', "
                             "e.g. cpu-quota")
        if len(self.problems) > count:
            return None
        return Rule(rule_id, severity, raw["summary"].strip(), raw["hint"].strip(), when,
                    for_s, keep_s, subject, str(raw.get("description", "")).strip(),
                    dict(hints), capture, self.source, tuple(inhibits), cause)

    def condition(self, raw, label: str, window_s: float, where: str):
        if not isinstance(raw, dict):
            self.fail(label, f"{where}: a condition must be a mapping")
            return None
        groups = [key for key in GROUP_KEYS if key in raw]
        if groups:
            if len(raw) != 1:
                self.fail(label, f"{where}: a group has exactly one key of all/any/none, "
                                 f"got {', '.join(map(str, raw))}")
                return None
            kind = groups[0]
            children = raw[kind]
            if not isinstance(children, list) or not children:
                self.fail(label, f"{where}.{kind}: must be a non-empty list of conditions")
                return None
            parsed = [self.condition(child, label, window_s, f"{where}.{kind}[{i}]")
                      for i, child in enumerate(children)]
            return Group(kind, tuple(parsed))
        return self.leaf(raw, label, window_s, where)

    def leaf(self, raw: dict, label: str, window_s: float, where: str) -> Leaf | None:
        count = len(self.problems)
        unknown = sorted(set(map(str, raw)) - LEAF_KEYS)
        if unknown:
            self.fail(label, f"{where}: unknown key(s) {', '.join(unknown)} "
                             f"(allowed: {', '.join(sorted(LEAF_KEYS))}, or all/any/none)")
        feature = raw.get("feature")
        if feature not in FEATURES:
            self.fail(label, f"{where}: unknown feature {feature!r} (see `dsmon rules features`)")
        agg = raw.get("agg", "last")
        if agg not in AGGREGATIONS:
            self.fail(label, f"{where}: unknown aggregation {agg!r} "
                             f"(one of {', '.join(AGGREGATIONS)})")
        op = raw.get("op")
        if op not in OPERATORS:
            self.fail(label, f"{where}: op {op!r} is not one of {' '.join(OPERATORS)}")
        leaf_window = window_s
        if "window" in raw:
            leaf_window = parse_duration(raw["window"], f"{self.source}: rule {label}: {where}.window",
                                         self.problems)
        value, value_of = raw.get("value"), None
        if ("value" in raw) == ("value_of" in raw):
            self.fail(label, f"{where}: give exactly one of value or value_of")
        elif "value" in raw and (isinstance(value, bool) or not isinstance(value, (int, float))):
            self.fail(label, f"{where}: value {value!r} must be a number")
        elif "value_of" in raw:
            value_of = self.value_of(raw["value_of"], label, where)
        min_points = raw.get("min_points", MIN_POINTS.get(agg, 1))
        if isinstance(min_points, bool) or not isinstance(min_points, int) or min_points < 0:
            self.fail(label, f"{where}: min_points must be a whole number >= 0")
        if len(self.problems) > count:
            return None
        return Leaf(feature, agg, leaf_window, op, float(value) if value is not None else None,
                    value_of, max(min_points, MIN_POINTS.get(agg, 1)))

    def value_of(self, raw, label: str, where: str) -> ValueOf | None:
        if not isinstance(raw, dict):
            self.fail(label, f"{where}.value_of: must be a mapping with feature, agg, factor, offset")
            return None
        unknown = sorted(set(map(str, raw)) - VALUE_OF_KEYS)
        if unknown:
            self.fail(label, f"{where}.value_of: unknown key(s) {', '.join(unknown)}")
        if raw.get("feature") not in FEATURES:
            self.fail(label, f"{where}.value_of: unknown feature {raw.get('feature')!r}")
        agg = raw.get("agg", "last")
        if agg not in ("last", "min", "max", "avg"):
            self.fail(label, f"{where}.value_of: agg must be last, min, max or avg")
        numbers = {k: raw.get(k, d) for k, d in (("factor", 1.0), ("offset", 0.0))}
        for key, number in numbers.items():
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                self.fail(label, f"{where}.value_of.{key}: must be a number")
                return None
        return ValueOf(raw.get("feature"), agg, float(numbers["factor"]), float(numbers["offset"]))


def parse_rule_text(text: str, source: str, problems: list[str]) -> list[Rule]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problems.append(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}")
        return []
    if document is None:
        return []
    if not isinstance(document, dict) or set(document) - {"rules", "disable"}:
        problems.append(f"{source}: the file must be a mapping with a 'rules' list "
                        f"(and optionally 'disable'), got "
                        + (", ".join(map(str, document)) if isinstance(document, dict)
                           else type(document).__name__))
        return []
    raw_rules = document.get("rules", [])
    if not isinstance(raw_rules, list):
        problems.append(f"{source}: 'rules' must be a list")
        return []
    parser = _Parser(source, problems)
    rules = [parser.rule(raw, index) for index, raw in enumerate(raw_rules)]
    return [rule for rule in rules if rule is not None]


def _disabled(text: str) -> list[str]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    disable = document.get("disable", []) if isinstance(document, dict) else []
    return [str(item) for item in disable] if isinstance(disable, list) else []


def builtin_rules_dir() -> Path:
    """The shipped rule files: in the package when installed, rules/dsmon in a checkout."""
    packaged = Path(__file__).resolve().parent.parent / "rules"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "rules" / "dsmon"


def rule_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return [path]


def load_rules(extra_paths=(), include_builtin: bool = True) -> list[Rule]:
    """Built-in rules, then each extra directory or file in order: a later rule with the same
    id replaces the earlier one; `disable: [id, ...]` in any file removes rules by id."""
    problems: list[str] = []
    by_id: dict[str, Rule] = {}
    disabled: set[str] = set()
    sources = ([builtin_rules_dir()] if include_builtin else []) + [Path(p) for p in extra_paths]
    for source in sources:
        if not source.exists():
            problems.append(f"{source}: no such file or directory")
            continue
        seen_here: dict[str, str] = {}
        for path in rule_files(source):
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"{path}: cannot read: {exc}")
                continue
            disabled.update(_disabled(text))
            for rule in parse_rule_text(text, str(path), problems):
                if rule.id in seen_here:
                    problems.append(f"{path}: rule {rule.id}: duplicate id (also in "
                                    f"{seen_here[rule.id]})")
                    continue
                seen_here[rule.id] = str(path)
                by_id[rule.id] = rule
    unknown_disabled = sorted(disabled - set(by_id))
    for rule_id in unknown_disabled:
        problems.append(f"disable: no rule with id {rule_id}")
    problems.extend(inhibition_problems(by_id))
    loaded = [rule for rule_id, rule in by_id.items() if rule_id not in disabled]
    problems.extend(shared_cause_problems(loaded))
    if problems:
        raise RuleLoadError(problems)
    return loaded


def inhibition_problems(by_id: dict[str, Rule]) -> list[str]:
    """Unknown ids in `inhibits`, and cycles (A inhibits B inhibits A would silence both)."""
    problems = [f"{rule.source}: rule {rule.id}: inhibits unknown rule {target}"
                for rule in by_id.values() for target in rule.inhibits if target not in by_id]
    state: dict[str, int] = {}          # 1 on the current path, 2 done

    def visit(rule_id: str, path: list[str]) -> None:
        state[rule_id] = 1
        for target in by_id[rule_id].inhibits:
            if target not in by_id:
                continue
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                problems.append(f"{by_id[rule_id].source}: rule {rule_id}: inhibition cycle "
                                + " -> ".join(cycle))
            elif target not in state:
                visit(target, path + [target])
        state[rule_id] = 2

    for rule_id in by_id:
        if rule_id not in state:
            visit(rule_id, [rule_id])
    return problems


def shared_cause_problems(rules: list[Rule]) -> list[str]:
    """Two rules of one subject that blame the same cause, neither inhibiting the other: both
    would fire for it (a throttled, swinging process would read as two quota problems).
    Inhibition only works directly (an inhibited rule is not firing, so it inhibits nothing),
    hence every pair needs its own `inhibits` entry, not a chain."""
    by_cause: dict[tuple[str, str], list[Rule]] = {}
    for rule in rules:
        if rule.cause is not None:
            by_cause.setdefault((rule.subject, rule.cause), []).append(rule)
    problems = []
    for (_, cause), group in by_cause.items():
        for index, first in enumerate(group):
            for second in group[index + 1:]:
                if second.id not in first.inhibits and first.id not in second.inhibits:
                    problems.append(
                        f"{second.source}: rule {second.id}: names the cause {cause!r} as rule "
                        f"{first.id} does ({first.source}), and neither inhibits the other: "
                        f"list one under the other's `inhibits` (one cause, one finding)")
    return problems


def inhibited_by(rules: list[Rule]) -> dict[str, list[str]]:
    """rule id -> the ids of the rules that inhibit it (among those loaded)."""
    out: dict[str, list[str]] = {}
    for rule in rules:
        for target in rule.inhibits:
            out.setdefault(target, []).append(rule.id)
    return out


def default_rule_paths() -> list[str]:
    """Extra rule directories from DSMON_RULES (colon-separated)."""
    value = os.environ.get("DSMON_RULES", "")
    return [p for p in value.split(os.pathsep) if p]
