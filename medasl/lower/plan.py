"""Lowering: the optimized IR of one pipeline -> a `Plan` the executor can run.

The plan is a mechanical translation of the optimized graph (medasl/passes): one step
per node, in the same order, keeping what the IR knows. By the time a graph is lowered
its parameters are folded (`specialize`), reports are wired (`wire_reports`) and the
storage of each result is decided (`place_storage`); lowering only changes the form:

- constants become plain Python values (units were converted by the checker: lengths
  are mm, angles degrees), operator values (`loss=@dice_ce`) become `OpValue`s;
- each argument reading another node becomes an input (`inputs`); a tuple holding
  references (`metrics=(dice, hd)`) becomes one input per reference (`metrics[0]`,
  `metrics[1]`) and a template in `params` with `None` where they go;
- each step knows which inputs are datasets (a `[map]` step runs once per case,
  zipping dataset inputs by case id), its std module, its traits, its storage, its
  structural hash, which of its parameters are file paths (their content enters the
  cache key) and the span of the `.medas` text that asked for it.

Like the IR, a plan is plain data and imports nothing heavy, so `medasc run --dry-run`
can be shown without NumPy; binding steps to implementations is the runtime's job
(`medasl.runtime.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medasl.ir.graph import Graph, OpRef, Ref, Tup, Value, format_value, refs
from medasl.ir.types import SPATIAL_KINDS, Ty, TyLike, attr, first_image, format_type, is_dataset
from medasl.passes.wire_reports import COLLECTING_REPORTS  # noqa: F401 - the registry reads it here
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
    goal: str | None = None
    hash: str = ""
    traits: frozenset[str] = frozenset()
    interp: str | None = None
    store: str | None = None  # why the result is stored; "memory": computed in its user's chain; "never"
    fused: tuple[str, ...] = ()  # a fused step: the steps it replaced
    value_type: TyLike | None = None  # the checked type as a structured value (`type` is its text)

    @property
    def mapped(self) -> bool:
        """Whether the step runs once per case of its dataset inputs."""
        return "map" in self.lift

    @property
    def writes(self) -> bool:
        """Whether the step writes files named by its `path` (writers and reports)."""
        return self.stage in ("output", "report") and "path" in self.path_params

    @property
    def modality(self) -> str | None:
        """The modality of the image this step gives (in a dataset, a pair), if it gives one."""
        found = first_image(self.value_type)
        value = attr(found, "modality") if found is not None else None
        return value if isinstance(value, str) else None

    @property
    def declared(self) -> object | None:
        """For a step that reads files (a std.io operator without inputs), what the
        pipeline declares it gives, as plain data (`declaration`); the runtime checks the
        data read against it (`medasl.ops.io.conform`). None for every other step."""
        if self.module != "std.io" or self.inputs:
            return None
        return declaration(self.value_type)

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
    searches: dict[str, dict[str, object]] = field(default_factory=dict)  # searched parameters: their spaces
    resources: dict[str, object] = field(default_factory=dict)
    level: int = 0  # the -O level the graph was optimized at

    @property
    def objective(self) -> Step | None:
        """The metric the pipeline maximizes or minimizes, if any."""
        return next((s for s in self.steps.values() if s.goal), None)

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
        if name in self.steps:
            return self.steps[name]
        return next((s for s in self.steps.values() if name in s.fused), None)  # fused into another step


class LoweringError(Exception):
    """A graph that cannot be lowered: not optimized (a `param` node left), or a value
    with no plain form. A bug in medasl, never the user's."""


def declaration(t: TyLike | None) -> object | None:
    """The facts of a checked type that data read from a file can contradict, as plain
    JSON data: for a spatial value `{"kind": "LabelMap", "dim": 3, "classes": 2}` (None
    where the type leaves it open), for a class label `{"kind": "Class", "classes": 2}`,
    for a pair `{"pair": [input, target]}`; a dataset declares what each case holds.
    None when nothing can be checked."""
    if not isinstance(t, Ty):
        return None
    if t.name == "Dataset" and t.params:
        return declaration(t.params[0])
    if t.name == "Pair" and len(t.params) == 2:
        members = [declaration(p) for p in t.params]
        return {"pair": members} if any(m is not None for m in members) else None
    if t.name in SPATIAL_KINDS or t.name == "Class":
        def known(name: str) -> int | None:
            value = attr(t, name)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        return {"kind": t.name, "dim": None if t.name == "Class" else known("dim"), "classes": known("classes")}
    return None


def to_json(value: object) -> object:
    """A plan value as JSON data (for cache keys, logs and `--dry-run --format json`)."""
    if isinstance(value, OpValue):
        return value.to_json()
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def lower(graph: Graph, level: int = 0) -> Plan:
    """The plan of one optimized pipeline (see `medasl.passes.optimize`)."""
    plan = Plan(graph.name, shows=list(graph.shows), reports=list(graph.reports), level=level,
                params={k: parameter_value(v) for k, v in graph.params.items()},
                searches={k: dict(v) for k, v in graph.searches.items()},
                resources={k: constant(v) for k, v in graph.resources.items()})
    for node in graph.nodes.values():
        if node.op == "param":
            raise LoweringError(f"parameter `{node.id}` is not folded: lower an optimized graph")
        consts: dict[str, object] = {}
        inputs: dict[str, str] = {}
        for name, value in node.args:
            if isinstance(value, Ref):
                inputs[name] = value.node
            elif isinstance(value, Tup) and any(isinstance(v, Ref) for v in value.items):
                inputs.update({f"{name}[{i}]": v.node for i, v in enumerate(value.items) if isinstance(v, Ref)})
                consts[name] = tuple(None if isinstance(v, Ref) else constant(v) for v in value.items)
            else:
                consts[name] = constant(value)
        plan.steps[node.id] = Step(
            id=node.id, op=node.op, module=node.module, version=node.version, params=consts, inputs=inputs,
            dataset_inputs=frozenset(k for k, v in inputs.items() if is_dataset(graph.nodes[v].type)),
            path_params=node.path_params, lift=node.lift, random=node.random, output_is_dataset=is_dataset(node.type),
            type=format_type(node.type), span=node.span, binding=node.binding, stage=node.stage,
            conversion=node.conversion, goal=node.goal, hash=node.hash, traits=node.traits, interp=node.interp,
            store=node.store, fused=node.fused, value_type=node.type,
        )
    return plan


def parameter_value(value: Value) -> object:
    """A parameter's value for the run log: a constant, or for a parameter whose value is
    computed (`param net = unet2d(...)`, a network searched by `medasc tune`) the
    step it names, as the IR prints it (`%unet2d`); the steps read that step itself."""
    return format_value(value) if refs(value) else constant(value)


def constant(value: Value) -> object:
    """An IR value without references as a plain value."""
    if isinstance(value, OpRef):
        return OpValue(value.op, tuple((k, constant(v)) for k, v in value.args))
    if isinstance(value, Tup):
        return tuple(constant(v) for v in value.items)
    if isinstance(value, Ref):
        raise LoweringError(f"a reference to `{value.node}` where a constant was expected")
    return value.value
