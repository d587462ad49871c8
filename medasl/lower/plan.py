"""Lowering: the checked IR of one pipeline -> a `Plan` the executor can run.

The plan is the IR with everything the executor should not have to think about
resolved, and nothing more:

- parameters are folded: a `param` node disappears and every use of it reads the value
  the run uses (its default, or what `medasc run --set name=value` gave), so a changed
  parameter changes exactly the cache keys of the steps downstream of it;
- constants are plain Python values (units were converted by the checker: lengths are
  mm, angles degrees), operator values (`loss=@dice_ce`) are `OpValue`s;
- each step knows which of its arguments read other steps, whether those are datasets
  (a `[map]` step runs once per case, zipping dataset inputs by case id), which of its
  parameters are file paths (their content enters the cache key), and the span of the
  `.medas` text that asked for it, for diagnostics.

Like the IR, a plan is plain data and imports nothing heavy, so `medasc run --dry-run`
can be shown without NumPy; binding steps to implementations is the runtime's job
(`medasl.runtime.registry`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from medasl.ir.graph import Const, Graph, Node, OpRef, Ref, Value
from medasl.ir.types import Ty, format_type
from medasl.semantics.modules import stdlib
from medasl.source import Span


@dataclass(frozen=True)
class OpValue:
    """An operator passed as a value (`loss=@dice_ce(smooth=1e-5)`), options resolved."""

    op: str
    args: tuple[tuple[str, object], ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"op": self.op, "args": {k: to_json(v) for k, v in self.args}}


@dataclass(frozen=True)
class Step:
    """One operator application: the unit the executor runs and caches."""

    id: str
    op: str
    module: str  # std.pre, ...; "" for an operator of a user module
    version: int
    params: dict[str, object]  # constant arguments
    inputs: dict[str, str]  # argument -> the step whose result it reads
    dataset_inputs: frozenset[str]  # the inputs that are datasets
    path_params: tuple[str, ...]  # parameters holding file or folder paths
    lift: tuple[str, ...]
    random: bool
    output_is_dataset: bool
    type: str  # the checked type, as written
    span: Span | None
    binding: str | None
    stage: str
    conversion: bool

    @property
    def mapped(self) -> bool:
        """Whether the step runs once per case of its dataset inputs."""
        return "map" in self.lift

    @property
    def writes(self) -> bool:
        """Whether the step writes files named by its `path` (writers and reports)."""
        return self.stage in ("output", "report") and "path" in self.path_params

    @property
    def label(self) -> str:
        """How the user knows this step: the name they bound, else the node id."""
        return self.binding or self.id

    def location(self) -> str:
        if self.span is None:
            return ""
        return f"{self.span.file}:{self.span.line}"


@dataclass
class Plan:
    """The steps of one pipeline in topological order, and what the run is for."""

    pipeline: str
    steps: dict[str, Step] = field(default_factory=dict)
    params: dict[str, object] = field(default_factory=dict)  # the value each parameter has in this run
    shows: list[str] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)

    def downstream(self, step_ids: set[str]) -> set[str]:
        """`step_ids` and every step that reads from them, directly or not."""
        found = set(step_ids)
        for step in self.steps.values():  # topological order: one pass suffices
            if any(i in found for i in step.inputs.values()):
                found.add(step.id)
        return found

    def find(self, name: str) -> Step | None:
        """The step a user calls `name`: its binding, else its node id."""
        for step in self.steps.values():
            if step.binding == name:
                return step
        return self.steps.get(name)


COLLECTING_REPORTS = frozenset({"html"})
"""Report operators that receive every figure the pipeline shows and every metric."""


class LoweringError(Exception):
    """A request the plan cannot honour (an unknown `--set` name, a value of the wrong
    type); a mistake on the command line, reported with exit code 2."""


# ----- --set values --------------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def parse_literal(text: str) -> object:
    """A command-line value: a number, true/false, "text" or bare text, @operator, or a
    tuple `(a, b, ...)` of those. Never evaluated as code."""
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        inner = text[1:-1].strip()
        return tuple(parse_literal(part) for part in inner.split(",") if part.strip()) if inner else ()
    if text in ("true", "false"):
        return text == "true"
    if _NUMBER.fullmatch(text):
        return float(text) if any(c in text for c in ".eE") else int(text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    if text.startswith("@"):
        return OpValue(text[1:])
    return text


def _fits(value: object, type_text: str) -> bool:
    if type_text == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_text == "float":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if type_text == "bool":
        return isinstance(value, bool)
    if type_text in ("str", "path"):
        return isinstance(value, str)
    if "->" in type_text:  # an operator-valued parameter
        return isinstance(value, OpValue)
    return True


def _in_space(value: object, search: dict[str, object] | None) -> str | None:
    """Why `value` lies outside the parameter's search space, or None when it does not."""
    if not search:
        return None
    kind, bounds = search["kind"], list(search["args"])  # type: ignore[arg-type]
    if kind == "choice":
        options = [str(v) for v in bounds]
        shown = f"@{value.op}" if isinstance(value, OpValue) else str(value)
        return None if shown in options or value in bounds else f"it is not one of {', '.join(options)}"
    if isinstance(value, int | float) and len(bounds) >= 2:
        lo, hi = float(bounds[0]), float(bounds[1])  # type: ignore[arg-type]
        if not lo <= float(value) <= hi:
            return f"it is outside the search range [{bounds[0]}, {bounds[1]}]"
    return None


def _override(node: Node, text: str) -> object:
    value = parse_literal(text)
    type_text = format_type(node.type)
    if isinstance(value, int) and not isinstance(value, bool) and type_text == "float":
        value = float(value)
    if not _fits(value, type_text):
        raise LoweringError(f"--set {node.id}={text}: parameter `{node.id}` is a {type_text}")
    reason = _in_space(value, node.search)
    if reason:
        raise LoweringError(f"--set {node.id}={text}: {reason}")
    return value


# ----- lowering ------------------------------------------------------------------------


def to_json(value: object) -> object:
    """A plan value as JSON data (for cache keys, logs and `--dry-run --format json`)."""
    if isinstance(value, OpValue):
        return value.to_json()
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def _is_dataset(type_: object) -> bool:
    return isinstance(type_, Ty) and type_.name == "Dataset"


def lower(graph: Graph, overrides: dict[str, str] | None = None) -> Plan:
    """The plan of one checked pipeline; `overrides` maps parameter names to `--set` text."""
    overrides = dict(overrides or {})
    params = {n.id: n for n in graph.nodes.values() if n.op == "param"}
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        have = ", ".join(sorted(params)) or "none"
        raise LoweringError(f"--set {unknown[0]}=…: pipeline `{graph.name}` has no parameter `{unknown[0]}` "
                            f"(its parameters: {have})")
    plan = Plan(graph.name, shows=list(graph.shows), reports=list(graph.reports))
    values: dict[str, object] = {}
    for pid, node in params.items():
        default = dict(node.args).get("default")
        values[pid] = _override(node, overrides[pid]) if pid in overrides else _constant(default, values)
    plan.params = dict(values)
    std = stdlib()
    for node in graph.nodes.values():
        if node.op == "param":
            continue
        sig = std.find_op(node.op)
        consts: dict[str, object] = {}
        inputs: dict[str, str] = {}
        for name, value in node.args:
            if isinstance(value, Ref) and value.node not in values:
                inputs[name] = value.node
            else:
                consts[name] = _constant(value, values)
        path_params = tuple(p.name for p in sig.params if format_type(p.type) == "path") if sig else ()
        plan.steps[node.id] = Step(
            id=node.id, op=node.op, module=sig.module if sig else "", version=node.version, params=consts,
            inputs=inputs, dataset_inputs=frozenset(k for k, v in inputs.items() if _is_dataset(graph.nodes[v].type)),
            path_params=path_params, lift=node.lift, random=node.random, output_is_dataset=_is_dataset(node.type),
            type=format_type(node.type), span=node.span, binding=node.binding, stage=node.stage,
            conversion=node.conversion,
        )
    _collect_for_reports(plan)
    return plan


def _collect_for_reports(plan: Plan) -> None:
    """`html` reports what the pipeline shows and measures: give it those steps as inputs
    (`figures.<name>`, `metrics.<name>`), so it runs after them and receives them."""
    metrics = [s for s in plan.steps.values() if s.type.startswith("Metric[")]
    for step in plan.steps.values():
        if step.op not in COLLECTING_REPORTS:
            continue
        extra = {f"figures.{plan.steps[i].label}": i for i in plan.shows if i in plan.steps}
        extra.update({f"metrics.{m.label}": m.id for m in metrics})
        plan.steps[step.id] = replace(step, inputs={**step.inputs, **extra},
                                      dataset_inputs=step.dataset_inputs | {k for k, v in extra.items()
                                                                            if plan.steps[v].output_is_dataset})


def _constant(value: Value | None, params: dict[str, object]) -> object:
    if value is None:
        return None
    if isinstance(value, Ref):
        return params[value.node]
    if isinstance(value, OpRef):
        return OpValue(value.op, tuple((k, _constant(v, params)) for k, v in value.args))
    assert isinstance(value, Const)
    return _resolved(value.value, params)


def _resolved(value: object, params: dict[str, object]) -> object:
    """A literal with the parameters it holds replaced by their values (`(crop, crop)`)."""
    if isinstance(value, Ref):
        return params[value.node]
    if isinstance(value, Const):
        return _resolved(value.value, params)
    if isinstance(value, tuple | list):
        return type(value)(_resolved(v, params) for v in value)
    return value
