"""From a :class:`WorkflowDef` to an immutable, validated, ready-to-run :class:`CompiledWorkflow`.

Everything that can be checked before a run is checked here, once per workflow version, and
every problem is reported at once: unknown step types and fields, duplicate ids, references to
missing steps, cycles (naming the steps on them), templates that do not parse, and, when the
caller gives what the host offers, tools and agents nobody provides, literal tool arguments
that break the tool's input schema, and template paths into a step's record or output that it
does not have. Templates are compiled here too, so a run never parses one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import ChainMap
from collections.abc import Callable, Collection, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import ValidationError

from plait.config import Limits
from plait.definition.loader import issues_from_validation, value_issues
from plait.definition.models import (
    STEP_ID_PATTERN,
    CachePolicy,
    RetryPolicy,
    StateDef,
    StepDef,
    Trigger,
    WorkflowDef,
)
from plait.errors import (
    DefinitionError,
    InputsInvalid,
    Issue,
    TemplateSyntaxError,
    did_you_mean,
)
from plait.plugins.registry import Registry
from plait.plugins.types import StepConfig, StepType, Tool, validation_problems
from plait.templates.engine import CONTEXT_ROOTS, Template, TemplateEngine
from plait.values import bounded, json_problem

__all__ = [
    "MACHINE_STEP",
    "MACHINE_TYPE",
    "CompiledStep",
    "CompiledTrigger",
    "CompiledWorkflow",
    "Scope",
    "UnknownSignal",
    "compile_workflow",
    "with_compile_issues",
]


MACHINE_TYPE = "machine"
"""The built-in step type that runs a workflow written as ``states:`` (``steps/machine.py``)."""
MACHINE_STEP = "machine"
"""The id of the one step a state machine's workflow compiles to."""


@dataclass(frozen=True, eq=False)
class CompiledTrigger:
    """An ``on:`` entry, its templates compiled (they read the ``run`` that ended)."""

    workflow: str
    status: frozenset[str]
    when: Template | None
    inputs: Template
    where: str

    def fires(self, run: Mapping[str, Any]) -> dict[str, Any] | None:
        """The inputs of the run to start when ``run`` (its view: ``id``, ``workflow``,
        ``status``, ``inputs``, ``outputs``, ``error``) ended, or ``None`` when it does not
        start one.

        Raises:
            TemplateError: a template failed on this run.
        """
        if run.get("status") not in self.status:
            return None
        context = {"run": run}
        if self.when is not None and not self.when.render(context):
            return None
        inputs = self.inputs.render(context)
        return dict(inputs) if isinstance(inputs, dict) else {}


@dataclass(eq=False, slots=True)
class CompiledStep:
    """One step, resolved and compiled. Read-only once the workflow is compiled."""

    id: str
    index: int
    path: str
    """Where it is in the definition (``steps[3]``, ``steps[1].steps[0]``), for messages."""
    key: str
    step_type: StepType
    config_model: type[StepConfig]
    static_config: StepConfig | None
    """The validated config when no field holds a template: built once, reused by every run."""
    templated: dict[str, Template]
    """Fields (raw keys) whose value contains templates, rendered per run."""
    static: dict[str, Any]
    deferred: dict[str, Template]
    when: Template | None
    retry: RetryPolicy
    timeout: float | None
    on_error: str
    """``fail``, ``continue`` or ``fallback``."""
    fallback: int | None
    fallback_for: int | None
    cache: CachePolicy | None
    cache_key: Template | None
    cache_when: Template | None
    bodies: dict[str, Scope]
    gate: tuple[int, str] | None
    """(index of the step whose choice gates this one, the branch label)."""
    definition: dict[str, Any]
    deps: tuple[int, ...] = ()
    any_deps: tuple[int, ...] = ()
    dependents: list[int] = field(default_factory=list)
    gated: dict[str, list[int]] = field(default_factory=dict)
    """For a gating step: label → indices of the steps that label runs."""
    shown: dict[str, Any] = field(default_factory=dict)
    """Its static fields as an event shows them: bounded, without nested step lists (an
    attempt's ``step.started`` adds the templated fields, rendered)."""
    compensation: Scope | None = None
    """Its ``compensate:`` step, as a one-step scope that may read the run's steps."""


@dataclass(eq=False, slots=True)
class Scope:
    """A graph of steps run together: the workflow's top level, or one nested body."""

    steps: list[CompiledStep]
    by_id: dict[str, int]
    roots: tuple[int, ...]
    outer_refs: frozenset[str]
    """Step ids this scope reads from enclosing scopes."""

    @property
    def last(self) -> CompiledStep:
        """The step written last, whose output is a body's default result."""
        return self.steps[-1]

    def count(self) -> int:
        """Steps in this scope and every nested body."""
        return sum(1 + sum(b.count() for b in s.bodies.values()) for s in self.steps)


@dataclass(eq=False, slots=True)
class CompiledWorkflow:
    """A workflow ready to run any number of times."""

    definition: WorkflowDef
    name: str
    version: int
    digest: str
    """sha256 of the canonical JSON definition: the identity of this version's content."""
    scope: Scope
    outputs: Template
    vars: Template
    inputs_validator: Draft202012Validator
    size: int
    signals: frozenset[str] = frozenset()
    """The signal events its steps declare they wait for (``StepType.signals``), nested bodies
    included."""
    triggers: tuple[CompiledTrigger, ...] = ()
    """Its ``on:`` entries: ends of other workflows' runs that start a run of it."""
    any_signal: bool = False
    """A step waits for an event named by a template, known only at run time: any event may
    be awaited."""

    def signal_problem(self, event: str, awaited: Collection[str] = ()) -> str | None:
        """Why a run of this workflow can never take the signal ``event``, or ``None`` when a
        step declares it, a step of the run is waiting for it now (``awaited``: a step type
        may wait without declaring), or a step's event is known only at run time."""
        if self.any_signal or event in self.signals or event in awaited:
            return None
        known = sorted(self.signals.union(awaited))
        listens = f"it waits for: {', '.join(known)}" if known else "it waits for no signal"
        return (
            f"no step of workflow {self.name!r} waits for the signal {event!r}"
            f"{did_you_mean(event, known)}; {listens}"
        )

    def check_inputs(self, inputs: Mapping[str, Any]) -> list[str]:
        """Every way ``inputs`` breaks the workflow's input schema (empty when valid), or why
        they are not JSON values plait can keep exactly (NaN, a 5,000-digit integer...)."""
        problem = json_problem(dict(inputs))
        if problem is not None:
            return [f"$: not a JSON value plait can keep: {problem}"]
        return [
            f"{_json_path(e.absolute_path)}: {e.message}"
            for e in sorted(self.inputs_validator.iter_errors(dict(inputs)), key=str)
        ]


def definition_digest(wf: WorkflowDef) -> str:
    """Content hash of a definition, ignoring its version number."""
    data = wf.to_dict()
    data.pop("version", None)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # A lone surrogate is a valid JSON string escape, but not UTF-8: kept as its code unit.
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def compile_workflow(
    wf: WorkflowDef,
    step_types: Registry[type[StepType]],
    templates: TemplateEngine,
    limits: Limits | None = None,
    *,
    tools: Registry[Tool] | None = None,
    agents: Collection[str] | None = None,
    tool_sources: Collection[str] = (),
    executors: Callable[[str], str | None] | None = None,
) -> CompiledWorkflow:
    """Validate and compile ``wf``; raise :class:`DefinitionError` listing every problem.

    ``tools``: the registered tools; a step naming another one, or giving literal arguments
    its input schema refuses, is an issue. ``tool_sources``: the configured MCP servers, whose
    tools (``<server>.<tool>``) arrive after compiling and are not checked. ``agents``: the
    configured agent names. ``executors``: why calls cannot run on the executor of a name
    (``None`` when they can); a step naming one they cannot, or sending a tool that cannot go
    to an executor, is an issue. ``None`` (the default) checks nothing of that kind. With
    ``tools`` or ``agents``,
    template paths are checked too: ``steps.<id>.<field>`` must be a field of a step's record
    and ``steps.<id>.output.<key>...`` a field of the step's output schema when its step type
    knows one (``StepType.output_schema``); a stored run's snapshot, compiled with neither,
    is never refused for them.
    """
    limits = limits or Limits()
    c = _Compiler(wf, step_types, templates, limits)
    c.known = _Known(tools, agents, frozenset(tool_sources), executors)
    # What the loader checks in text and mappings, again for models built in Python.
    c.issues.extend(value_issues(wf.model_dump(), wf.source_lines))
    if wf.states is not None:
        scope = c.machine(wf, wf.states)
        if wf.outputs:
            c.issue(
                "outputs",
                "a state machine's outputs are its final state's (states.<name>.outputs)",
            )
        outputs = c.template(f"${{ steps.{MACHINE_STEP}.output }}", "outputs")
    else:
        for name in ("initial", "max_transitions"):
            if name in wf.model_fields_set:
                c.issue(name, "is for state machines (a workflow with `states:`)")
        scope = c.scope(list(wf.steps), "steps", nested=False, enclosing=())
        outputs = c.template(wf.outputs, "outputs")
    c.check_roots(outputs, "outputs", frozenset())
    top_ids = set(scope.by_id)
    for ref in sorted(outputs.references - top_ids):
        c.issue("outputs", f"refers to unknown step {ref!r}{did_you_mean(ref, top_ids)}")
    if c.known.tools is not None or c.known.agents is not None:
        c.check_paths(scope, {})
        c.check_template_paths(outputs, "outputs", wf.outputs, {s.id: s for s in scope.steps})
    for step in scope.steps:
        if step.compensation is not None:
            for ref in sorted(step.compensation.outer_refs - top_ids):
                c.issue(
                    f"{step.path}.compensate",
                    f"refers to unknown step {ref!r}{did_you_mean(ref, top_ids)}",
                )
    triggers = [c.trigger(t, f"on[{i}]") for i, t in enumerate(wf.on)]
    variables = c.template(wf.vars, "vars")
    c.check_roots(variables, "vars", frozenset())
    if variables.references:
        c.issue("vars", "vars are computed before any step runs; they may use only inputs")
    try:
        validator_cls = Draft202012Validator
        validator_cls.check_schema(wf.inputs)
        validator = validator_cls(wf.inputs)
    except SchemaError as exc:
        c.issue("inputs", f"not a valid JSON Schema: {exc.message}")
        validator = Draft202012Validator({})
    size = scope.count()
    if size > limits.max_workflow_steps:
        c.issue("steps", f"{size} steps; the limit is {limits.max_workflow_steps}")
    if c.issues:
        issues = sorted(c.issues, key=lambda i: (i.line is None, i.line or 0))
        raise DefinitionError(issues, source=wf.origin)
    return CompiledWorkflow(
        definition=wf,
        name=wf.name,
        version=wf.version or 1,
        digest=definition_digest(wf),
        scope=scope,
        outputs=outputs,
        vars=variables,
        inputs_validator=validator,
        size=size,
        signals=frozenset(c.signals),
        any_signal=c.any_signal,
        triggers=tuple(triggers),
    )


def with_compile_issues(
    error: DefinitionError, compile: Callable[[WorkflowDef], object]
) -> DefinitionError:
    """``error`` (the loader refusing a definition) with the problems of the rest of it.

    The loader keeps what it could read of a definition it refused (``error.partial``);
    ``compile`` runs on that, and its issues join the loader's, so one bad field does not
    hide the other problems of the workflow.
    """
    partial = getattr(error, "partial", None)
    if not isinstance(partial, WorkflowDef):
        return error
    try:
        compile(partial)
    except DefinitionError as more:
        seen = {(i.path, i.message) for i in error.issues}
        extra = [i for i in more.issues if (i.path, i.message) not in seen]
    else:
        extra = []
    if not extra:
        return error
    issues = sorted([*error.issues, *extra], key=lambda i: (i.line is None, i.line or 0))
    return DefinitionError(issues, source=error.source)


class _Compiler:
    def __init__(
        self,
        wf: WorkflowDef,
        step_types: Registry[type[StepType]],
        templates: TemplateEngine,
        limits: Limits,
    ) -> None:
        self.wf = wf
        self.step_types = step_types
        self.templates = templates
        self.limits = limits
        self.issues: list[Issue] = []
        self._instances: dict[str, StepType] = {}
        self.known = _Known(None, None, frozenset(), None)
        self._validators: dict[str, Draft202012Validator | None] = {}
        self.signals: set[str] = set()
        self.any_signal = False
        self._outputs: dict[str, dict[str, Any]] = {}
        """Output schemas that step types know, by step path (only when checking paths)."""
        self._reported: set[tuple[str, str]] = set()

    def issue(self, path: str, message: str) -> None:
        self.issues.append(Issue(path, message, self.wf.line_of(path)))

    def check_roots(self, template: Template, where: str, body_roots: frozenset[str]) -> None:
        """Refuse ``item``/``index`` where no enclosing step's body provides them (and
        ``output``/``state`` outside a state machine)."""
        allowed = (CONTEXT_ROOTS - _BODY_ROOTS) | body_roots
        for name in self.templates.check_names(template, allowed):
            if name in _MACHINE_ROOTS:
                self.issue(
                    where,
                    f"{name!r} is only defined in a state machine (a workflow with `states:`)"
                    + (
                        "; in a state's steps and output, use 'state', not 'output'"
                        if name == "output" and "state" in body_roots
                        else ""
                    ),
                )
                continue
            self.issue(
                where,
                f"{name!r} is only defined inside the body of a step that provides it "
                f"(a loop gives its body 'item' and 'index')",
            )

    # -- state machines ----------------------------------------------------------------------

    def machine(self, wf: WorkflowDef, states: Mapping[str, StateDef]) -> Scope:
        """A workflow written as ``states:``: one step of the ``machine`` step type whose
        bodies are the states' steps. Checks the states' graph: ``initial``, the targets of
        transitions, unreachable states, states with no way out, final states."""
        cls = self.step_types.get(MACHINE_TYPE)
        if cls is None:
            self.issue(
                "states",
                f"state machines need the built-in step type {MACHINE_TYPE!r}, which is not "
                "installed",
            )
        roots = cls.body_roots if cls is not None else frozenset({"state"})
        names = list(states)
        bodies: dict[str, Scope] = {}
        config_states: dict[str, Any] = {}
        for name, state in states.items():
            where = f"states.{name}"
            if not re.fullmatch(STEP_ID_PATTERN, name):
                self.issue(where, "a state's name is an identifier (letters, digits and _)")
            body_ids: set[str] = set()
            if state.steps:
                body = self.scope(
                    list(state.steps),
                    f"{where}.steps",
                    nested=True,
                    enclosing=(MACHINE_STEP,),
                    body_roots=roots,
                )
                bodies[name] = body
                body_ids = set(body.by_id)
                raw = [s.fields for s in state.steps]
                for ref in sorted(body.outer_refs):
                    self.issue(
                        _field_of(raw, ref, f"{where}.steps"),
                        f"refers to step {ref!r}, not a step of state {name!r}"
                        f"{did_you_mean(ref, body_ids)}; a state's steps see each other only "
                        "(another state's output is state.<name>.output)",
                    )
            output = None
            if state.output is not None:
                output = self.template(state.output, f"{where}.output")
                self.check_roots(output, f"{where}.output", roots)
                for ref in sorted(output.references - body_ids):
                    self.issue(
                        _field_of(state.output, ref, f"{where}.output"),
                        f"refers to unknown step {ref!r}{did_you_mean(ref, body_ids)}; a state's "
                        "output sees the state's own steps",
                    )
            transitions = []
            unconditional: int | None = None
            for i, t in enumerate(state.transitions):
                at = f"{where}.transitions[{i}]"
                if t.to not in states:
                    self.issue(f"{at}.to", f"unknown state {t.to!r}{did_you_mean(t.to, names)}")
                if unconditional is not None:
                    self.issue(
                        at,
                        f"never taken: transitions[{unconditional}] before it always applies",
                    )
                when = None
                if t.when is not None and t.when is not True:
                    when = self.template(t.when, f"{at}.when", expression=True)
                    self._machine_roots(when, f"{at}.when")
                if t.on is not None and not self._literal(t.on):
                    self.issue(f"{at}.on", "a signal's name, not a template")
                elif t.on is not None:
                    self.signals.add(t.on)
                if t.on is None and when is None and unconditional is None:
                    unconditional = i
                transitions.append({"to": t.to, "when": when, "on": t.on})
            outputs = None
            if state.outputs is not None:
                outputs = self.template(state.outputs, f"{where}.outputs")
                self._machine_roots(outputs, f"{where}.outputs")
                if not state.final:
                    self.issue(
                        f"{where}.outputs", "only a final state has outputs (add final: true)"
                    )
            if state.final and state.transitions:
                self.issue(
                    f"{where}.transitions",
                    "a final state has no transitions: the run ends when it gets there",
                )
            if not state.final and not state.transitions:
                self.issue(
                    where,
                    "no way out: a state that is not final needs transitions (or final: true)",
                )
            config_states[name] = {
                "steps": bool(state.steps),
                "output": output,
                "transitions": transitions,
                "final": state.final,
                "outputs": outputs,
            }
        self._machine_graph(wf.initial, states)
        definition = {
            "id": MACHINE_STEP,
            "type": MACHINE_TYPE,
            "initial": wf.initial,
            "max_transitions": wf.max_transitions,
            "states": {name: state.to_dict() for name, state in states.items()},
        }
        config = {
            "initial": wf.initial,
            "max_transitions": wf.max_transitions,
            "states": config_states,
        }
        if cls is None:
            return Scope([], {}, (), frozenset())
        inst = self._instances.get(cls.key)
        if inst is None:
            inst = self._instances[cls.key] = cls()
        static_config = None
        if wf.initial in states:
            try:
                static_config = cls.Config.model_validate(config)
            except ValidationError as exc:
                for problem in validation_problems(exc, "states"):
                    where, _, message = problem.partition(": ")
                    self.issue(where, f"the machine step type refuses it: {message}")
        step = CompiledStep(
            id=MACHINE_STEP,
            index=0,
            path="states",
            key=cls.key,
            step_type=inst,
            config_model=cls.Config,
            static_config=static_config,
            templated={},
            static={},
            deferred={},
            when=None,
            retry=RetryPolicy(),
            timeout=None,
            on_error="fail",
            fallback=None,
            fallback_for=None,
            cache=None,
            cache_key=None,
            cache_when=None,
            bodies=bodies,
            gate=None,
            definition=definition,
            shown={"initial": wf.initial, "max_transitions": wf.max_transitions},
        )
        return Scope([step], {MACHINE_STEP: 0}, (0,), frozenset())

    def _machine_roots(self, template: Template, where: str) -> None:
        """A transition's condition and a final state's outputs read ``output``, ``state``,
        ``inputs`` and ``vars``: not ``steps`` (the state's output is ``output``)."""
        allowed = (CONTEXT_ROOTS - _BODY_ROOTS - {"steps"}) | _MACHINE_ROOTS
        for name in self.templates.check_names(template, allowed):
            hint = (
                "; the state's output is 'output', another state's is state.<name>.output"
                if name == "steps"
                else ""
            )
            self.issue(
                where, f"{name!r} is not defined here (it sees output, state, inputs, vars){hint}"
            )

    def _machine_graph(self, initial: str | None, states: Mapping[str, StateDef]) -> None:
        """``initial``; states no run reaches; states from which no final state is reached."""
        names = list(states)
        if initial is None:
            self.issue(
                "initial",
                "a state machine needs `initial`, the state it starts in"
                + (f" (one of: {', '.join(names)})" if names else ""),
            )
            return
        if initial not in states:
            self.issue("initial", f"unknown state {initial!r}{did_you_mean(initial, names)}")
            return
        edges = {n: [t.to for t in s.transitions if t.to in states] for n, s in states.items()}
        reached = _reach(initial, edges)
        for name in names:
            if name not in reached:
                self.issue(
                    f"states.{name}", f"unreachable: no transition from {initial!r} leads here"
                )
        finals = {n for n, s in states.items() if s.final}
        if not finals:
            self.issue("states", "no final state: a run of this machine could never end")
            return
        back: dict[str, list[str]] = {n: [] for n in names}
        for source, targets in edges.items():
            for target in targets:
                back[target].append(source)
        ending: set[str] = set()
        for final in finals:
            ending |= _reach(final, back)
        for name in names:
            dangling = any(t.to not in states for t in states[name].transitions)  # reported
            if name in reached and name not in ending and states[name].transitions and not dangling:
                self.issue(
                    f"states.{name}",
                    "no final state can be reached from here: a run entering it could never end",
                )

    def template(self, value: Any, where: str, *, expression: bool = False) -> Template:
        try:
            if expression and isinstance(value, str):
                return self.templates.compile_expression(value, where=where)
            return self.templates.compile(value, where=where)
        except TemplateSyntaxError as exc:
            for issue in exc.issues:
                self.issue(issue.path or where, issue.message)
            # Keep the references of the parts that do parse, so their problems are reported
            # too; the workflow is invalid either way, so this never renders.
            return _Unrenderable(self._leaf_references(value, where), where)  # type: ignore[return-value]

    def _leaf_references(self, value: Any, where: str) -> frozenset[str]:
        if isinstance(value, dict):
            return frozenset().union(
                *(self._leaf_references(v, f"{where}.{k}") for k, v in value.items())
            )
        if isinstance(value, list):
            return frozenset().union(
                *(self._leaf_references(v, f"{where}[{i}]") for i, v in enumerate(value))
            )
        if isinstance(value, str):
            try:
                return self.templates.compile(value, where=where).references
            except TemplateSyntaxError:
                return frozenset()
        return frozenset()

    # -- scopes ------------------------------------------------------------------------------

    def trigger(self, trigger: Trigger, where: str) -> CompiledTrigger:
        """Compile an ``on:`` entry: its templates may read only the ``run`` that ended."""
        when = None
        if trigger.when is not None and trigger.when is not True:
            when = self.template(trigger.when, f"{where}.when", expression=True)
        inputs = self.template(trigger.inputs, f"{where}.inputs")
        for name, template in (("when", when), ("inputs", inputs)):
            if template is None:
                continue
            if other := sorted(template.roots - {"run"}):
                self.issue(
                    f"{where}.{name}",
                    f"reads {', '.join(other)}; a trigger sees only the run that ended "
                    "(run.outputs, run.inputs, run.status, run.error)",
                )
        return CompiledTrigger(trigger.workflow, frozenset(trigger.status), when, inputs, where)

    def scope(
        self,
        raw_steps: list[Any],
        path: str,
        *,
        nested: bool,
        enclosing: tuple[str, ...],
        body_roots: frozenset[str] = frozenset(),
    ) -> Scope:
        defs: list[tuple[int, StepDef]] = []
        for i, raw in enumerate(raw_steps):
            if isinstance(raw, StepDef):
                defs.append((i, raw))
                continue
            try:
                defs.append((i, StepDef.model_validate(raw)))
            except ValidationError as exc:
                self.issues.extend(
                    issues_from_validation(exc, self.wf.source_lines, prefix=f"{path}[{i}]")
                )
        by_id: dict[str, int] = {}
        steps: list[CompiledStep] = []
        for i, sd in defs:
            if sd.id in by_id:
                self.issue(
                    f"{path}[{i}].id",
                    f"duplicate step id {sd.id!r} (first at {steps[by_id[sd.id]].path})",
                )
                continue
            compiled = self.step(sd, f"{path}[{i}]", len(steps), enclosing, body_roots)
            if compiled is not None:
                by_id[sd.id] = len(steps)
                steps.append(compiled)
        outer_refs = self.link(steps, by_id, nested, enclosing)
        roots = tuple(s.index for s in steps if not s.deps and not s.any_deps)
        self.check_cycles(steps)
        return Scope(steps, by_id, roots, frozenset(outer_refs))

    # -- one step ----------------------------------------------------------------------------

    def step(
        self,
        sd: StepDef,
        path: str,
        index: int,
        enclosing: tuple[str, ...],
        body_roots: frozenset[str] = frozenset(),
    ) -> CompiledStep | None:
        cls = self.resolve_type(sd, path)
        if cls is None:
            return None
        if cls.key == MACHINE_TYPE:
            self.issue(
                path,
                f"a {MACHINE_TYPE!r} step is written as the workflow's `states:` (a state "
                "machine), not as a step",
            )
            return None
        inst = self._instances.get(cls.key)
        if inst is None:
            inst = self._instances[cls.key] = cls()
        raw = dict(sd.config)
        templated: dict[str, Template] = {}
        static: dict[str, Any] = {}
        deferred: dict[str, Template] = {}
        nested: set[str] = set()
        raw_bodies = _safe(lambda: inst.bodies(raw), {}, self, path)
        body_lists = {id(b) for b in raw_bodies.values()}
        for key, value in raw.items():
            where = f"{path}.{key}"
            if key in cls.deferred:
                if _holds_bodies(value, body_lists):
                    static[key] = value  # as written; compiled below as nested scopes
                    nested.add(key)
                    continue
                deferred[key] = self.template(value, where, expression=key in cls.expressions)
                continue
            if key in cls.expressions and isinstance(value, list):
                t = self.expression_list(value, where)
            else:
                t = self.template(value, where, expression=key in cls.expressions)
            if t.is_static:
                static[key] = value
            else:
                templated[key] = t
        static_config = self.check_config(cls, raw, templated, deferred, path)
        self.check_references(inst, cls, raw, path)
        self.declared_signals(inst, raw, path)
        if self.known.tools is not None or self.known.agents is not None:
            schema = _safe(
                lambda: inst.output_schema(raw, self._tool_output_schema), None, self, path
            )
            if schema is not None:
                self._outputs[path] = schema
        bodies: dict[str, Scope] = {}
        for label, body in raw_bodies.items():
            if not isinstance(body, list) or not body:
                self.issue(f"{path}.{label}", "expected a non-empty list of steps")
                continue
            bodies[label] = self.scope(
                body,
                _body_path(raw, body, path, label),
                nested=True,
                enclosing=enclosing + (sd.id,),
                body_roots=body_roots | cls.body_roots,
            )
        compensation = None
        if sd.compensate is not None:
            if enclosing:
                self.issue(
                    f"{path}.compensate",
                    "compensate is for the workflow's own steps, not steps inside another step",
                )
            else:
                compensation = self.scope(
                    [sd.compensate], f"{path}.compensate", nested=True, enclosing=()
                )
        when = None
        if sd.when is not None and sd.when is not True:
            when = self.template(sd.when, f"{path}.when", expression=True)
        for key, t in templated.items():
            self.check_roots(t, f"{path}.{key}", body_roots)
        if when is not None:
            self.check_roots(when, f"{path}.when", body_roots)
        defaults = self.wf.defaults
        retry = sd.retry or defaults.retry or RetryPolicy()
        timeout = sd.timeout or defaults.timeout
        if timeout is None and cls.uses_capacity:
            timeout = self.limits.default_step_timeout
        if timeout is not None and timeout > self.limits.max_step_timeout:
            self.issue(
                f"{path}.timeout",
                f"{timeout} s is above the host's maximum of {self.limits.max_step_timeout} s",
            )
        cache, cache_key, cache_when = self.cache(sd.cache, path)
        return CompiledStep(
            id=sd.id,
            index=index,
            path=path,
            key=cls.key,
            step_type=inst,
            config_model=cls.Config,
            static_config=static_config,
            templated=templated,
            static=static,
            deferred=deferred,
            when=when,
            retry=retry,
            timeout=timeout,
            on_error=sd.on_error or defaults.on_error or "fail",
            fallback=None,
            fallback_for=None,
            cache=cache,
            cache_key=cache_key,
            cache_when=cache_when,
            bodies=bodies,
            gate=None,
            definition=sd.fields,
            shown=bounded({k: v for k, v in static.items() if k not in nested}),
            compensation=compensation,
        )

    def expression_list(self, values: list[Any], where: str) -> Template:
        """A list of expressions (``assert:``) compiled item by item, rendered as a list."""
        items = [self.template(v, f"{where}[{i}]", expression=True) for i, v in enumerate(values)]
        return _ListTemplate(items, where)  # type: ignore[return-value]

    def resolve_type(self, sd: StepDef, path: str) -> type[StepType] | None:
        known = [k for k in self.step_types.names() if k != MACHINE_TYPE]  # written as states:
        if sd.type is not None:
            cls = self.step_types.get(sd.type)
            if cls is None:
                self.issue(
                    f"{path}.type",
                    f"unknown step type {sd.type!r}; known types: {', '.join(known)}",
                )
            return cls
        keys = [k for k in sd.config if k in self.step_types]
        if len(keys) > 1:
            # `wait: any` on a parallel step is a field, not a second type: keep the types
            # whose config accepts every other candidate key as one of its own fields.
            owners = [k for k in keys if set(keys) - {k} <= _field_names(self.step_types[k])]
            keys = owners or keys
        if len(keys) == 1:
            return self.step_types[keys[0]]
        if not keys:
            fields = ", ".join(sd.config) or "none"
            self.issue(
                path,
                f"unknown step type: none of its fields ({fields}) names a step "
                f"type; known types: {', '.join(known)}",
            )
        else:
            self.issue(
                path,
                f"ambiguous step type: fields {' and '.join(keys)} each name a "
                "step type (set `type:` to choose)",
            )
        return None

    def check_config(
        self,
        cls: type[StepType],
        raw: dict[str, Any],
        templated: dict[str, Template],
        deferred: dict[str, Template],
        path: str,
    ) -> StepConfig | None:
        """Validate now what can be validated; type checks of templated fields wait for the run."""
        candidate = dict(raw)
        candidate.update(deferred)
        try:
            model = cls.Config.model_validate(candidate)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                top = str(err["loc"][0]) if err["loc"] else ""
                if top in templated and err["type"] not in ("extra_forbidden", "missing"):
                    continue  # checked again once the template is rendered
                loc = ".".join(str(p) for p in err["loc"])
                where = f"{path}.{loc}" if loc else path
                message = {
                    "extra_forbidden": f"unknown field for a {cls.key!r} step",
                    "missing": "required field is missing",
                }.get(err["type"], err["msg"].removeprefix("Value error, "))
                self.issue(where, message)
            return None
        return None if templated else model

    def check_references(
        self,
        inst: StepType,
        cls: type[StepType],
        raw: dict[str, Any],
        path: str,
    ) -> None:
        """Tools, agents and executors the step names that nothing here provides; literal tool
        arguments that the tool's input schema refuses."""
        known = self.known
        if known.tools is None and known.agents is None and known.executors is None:
            return
        refs = _safe(lambda: inst.references(raw), {}, self, path)
        tools = [n for n in refs.get("tools") or () if isinstance(n, str) and self._literal(n)]
        agents = [n for n in refs.get("agents") or () if isinstance(n, str) and self._literal(n)]
        executors = [
            n for n in refs.get("executors") or () if isinstance(n, str) and self._literal(n)
        ]
        if known.executors is not None:
            for name in executors:
                problem = known.executors(name)
                if problem is not None:
                    self.issue(_field_naming(raw, name, path), problem)
            for name in tools if executors and known.tools is not None else ():
                tool = known.tools.get(name) if known.tools is not None else None
                if tool is not None and tool.function is None:
                    self.issue(
                        _field_naming(raw, name, path),
                        f"tool {name!r} cannot run on an executor: it is not a Python function "
                        "plait can send (an MCP server's tool, or a Tool made without "
                        "from_function)",
                    )
        if known.tools is not None:
            for name in tools:
                if name in known.tools or name.split(".", 1)[0] in known.tool_sources:
                    continue
                self.issue(
                    _field_naming(raw, name, path),
                    f"unknown tool {name!r}: no plugin registers it"
                    f"{did_you_mean(name, known.tools.names())}",
                )
        if known.agents is not None:
            for name in agents:
                if name not in known.agents:
                    hint = did_you_mean(name, known.agents) or (
                        f" (configured: {', '.join(sorted(known.agents))})"
                        if known.agents
                        else " (no agents are configured)"
                    )
                    self.issue(
                        _field_naming(raw, name, path),
                        f"unknown agent {name!r}: no [agents.{name}] in the host "
                        f"configuration{hint}",
                    )
        field_name = cls.tool_arguments
        if known.tools is None or field_name is None or len(tools) != 1:
            return
        args = raw.get(field_name, {})  # absent: no arguments
        tool = known.tools.get(tools[0])
        if tool is None or not isinstance(args, dict):
            return  # missing: the tool is unknown (reported) or the field's type is wrong
        validator = self._validator(tool)
        if validator is None:
            return
        for err in sorted(validator.iter_errors(args), key=lambda e: list(e.absolute_path)):
            if not self._certain(err):
                continue
            where = f"{path}.{field_name}" + "".join(
                f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path
            )
            self.issue(
                where, f"does not match the input schema of tool {tool.name!r}: {err.message}"
            )

    def declared_signals(self, inst: StepType, raw: dict[str, Any], path: str) -> None:
        """Note the signal events the step waits for (``StepType.signals``)."""
        events = _safe(
            lambda: inst.signals(raw), [], self, path, kind=(list, tuple, set, frozenset)
        )
        for event in events:
            if not isinstance(event, str) or not event:
                continue
            try:
                template = self.templates.compile(event, where="")
            except TemplateSyntaxError:
                continue  # reported where the field is compiled
            if template.is_static:
                self.signals.add(template.render({}))
            else:
                self.any_signal = True

    def _tool_output_schema(self, name: str) -> dict[str, Any] | None:
        """The output schema a registered tool declares (for ``StepType.output_schema``)."""
        tools = self.known.tools
        if tools is None or not isinstance(name, str) or not self._literal(name):
            return None
        tool = tools.get(name)
        schema = getattr(tool, "output_schema", None)
        return schema if isinstance(schema, dict) else None

    # -- template paths ----------------------------------------------------------------------

    def check_paths(
        self,
        scope: Scope,
        outer: MutableMapping[str, CompiledStep],
        enclosing: tuple[CompiledStep, ...] = (),
    ) -> None:
        """Check the templates of ``scope`` and its bodies that read ``steps.<id>.<field>...``
        against the record and the known output schema of the step they name, as the run sees
        it: a body's own steps first, then those of the scopes around it."""
        visible = ChainMap({s.id: s for s in scope.steps}, outer)
        for s in scope.steps:
            skip = (*enclosing, s)  # references to these are reported by `link`
            guards = (("when", s.when), ("cache.key", s.cache_key), ("cache.when", s.cache_when))
            for key, t in (*s.templated.items(), *guards):
                if t is not None:
                    where = f"{s.path}.{key}"
                    self.check_template_paths(t, where, s.definition.get(key), visible, skip)
            if s.deferred:  # rendered inside the bodies: they see the bodies' steps too
                inside = ChainMap({b.id: b for body in s.bodies.values() for b in body.steps})
                inside.maps.append(visible)
                for key, t in s.deferred.items():
                    where = f"{s.path}.{key}"
                    self.check_template_paths(t, where, s.definition.get(key), inside, skip)
            for body in s.bodies.values():
                self.check_paths(body, visible, skip)

    def check_template_paths(
        self,
        template: Template,
        where: str,
        raw: Any,
        visible: Mapping[str, CompiledStep],
        skip: tuple[CompiledStep, ...] = (),
    ) -> None:
        """Report each path of ``template`` that the step it names certainly does not have."""
        for chain in sorted(template.step_paths, key=len):
            ref, field_name = chain[0], chain[1]
            target = visible.get(ref)
            if target is None or any(target is other for other in skip):
                continue  # an unknown step, itself or an enclosing one: reported by `link`
            if field_name not in _STEP_RECORD:
                self._report(
                    _field_with(raw, ref, field_name, where),
                    f"step {ref!r} has no field {field_name!r}"
                    f"{did_you_mean(str(field_name), _STEP_RECORD)}; "
                    f"a step has: {', '.join(_STEP_RECORD)}",
                )
                continue
            schema = self._outputs.get(target.path)
            # A step with a fallback: its dependents may see the fallback's output instead.
            if field_name != "output" or schema is None or target.fallback is not None:
                continue
            miss = _missing_key(schema, chain[2:])
            if miss is None:
                continue
            at, known = miss
            bad = chain[2 + at]
            holder = "its output" + _dotted(chain[2 : 2 + at])
            if known:
                has = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
                tail = f"{holder} has: {has}"
            else:
                tail = f"{holder} has no fields"
            self._report(
                _field_with(raw, ref, bad, where),
                f"step {ref!r} has no output field {_dotted(chain[2 : 3 + at]).lstrip('.')!r}"
                f"{did_you_mean(str(bad), known)}; {tail}",
            )

    def _report(self, where: str, message: str) -> None:
        if (where, message) not in self._reported:
            self._reported.add((where, message))
            self.issue(where, message)

    def _literal(self, value: str) -> bool:
        try:
            return self.templates.compile(value, where="").is_static
        except TemplateSyntaxError:
            return False  # reported where the field is compiled

    def _holds_template(self, value: Any) -> bool:
        if isinstance(value, str):
            return not self._literal(value)
        if isinstance(value, dict):
            return any(self._holds_template(v) for v in value.values())
        if isinstance(value, list):
            return any(self._holds_template(v) for v in value)
        return False

    def _certain(self, err: Any) -> bool:
        """Whether a schema error holds whatever the templates in the arguments render to."""
        if err.validator in _SHAPE_KEYWORDS:
            return True  # keys and counts are written literally
        if self._holds_template(err.instance):
            return False
        # A typed-function tool validates with pydantic, which reads "3" as 3, true as 1.0
        # and 1 as True: a scalar where a number or boolean is expected may still work.
        expected = err.validator_value if err.validator == "type" else None
        expected = {expected} if isinstance(expected, str) else set(expected or ())
        scalar = isinstance(err.instance, str | int | float)  # bool is an int
        return not (scalar and expected and expected <= _LAX_SCALARS)

    def _validator(self, tool: Tool) -> Draft202012Validator | None:
        if tool.name not in self._validators:
            try:
                Draft202012Validator.check_schema(tool.input_schema)
                found: Draft202012Validator | None = Draft202012Validator(tool.input_schema)
            except Exception:  # noqa: BLE001 - a tool's schema is plugin (or server) data
                found = None  # a schema that is itself invalid checks nothing
            self._validators[tool.name] = found
        return self._validators[tool.name]

    def cache(
        self, value: bool | CachePolicy | None, path: str
    ) -> tuple[CachePolicy | None, Template | None, Template | None]:
        if value is None:
            return None, None, None
        policy = (
            CachePolicy()
            if value is True
            else (CachePolicy(enabled=False) if value is False else value)
        )
        key = self.template(policy.key, f"{path}.cache.key") if policy.key else None
        when = (
            self.template(policy.when, f"{path}.cache.when", expression=True)
            if policy.when
            else None
        )
        return policy, key, when

    # -- the graph ---------------------------------------------------------------------------

    def link(
        self,
        steps: list[CompiledStep],
        by_id: dict[str, int],
        nested: bool,
        enclosing: tuple[str, ...],
    ) -> set[str]:
        """Turn needs, template references, branches and fallbacks into edges."""
        outer_refs: set[str] = set()
        hard: list[set[int]] = [set() for _ in steps]
        soft: list[set[int]] = [set() for _ in steps]
        for s in steps:
            needs_any = set(s.definition.get("needs_any") or ())
            for dep in s.definition.get("needs") or ():
                self.edge(s, dep, by_id, hard, "needs")
            for dep in needs_any:
                self.edge(s, dep, by_id, soft, "needs_any")
            for ref, where in sorted(self.references(s).items()):
                if ref in by_id:
                    if by_id[ref] == s.index:
                        self.issue(where, f"step {s.id!r} refers to its own output")
                    elif ref not in needs_any:
                        hard[s.index].add(by_id[ref])
                elif ref in enclosing:
                    self.issue(
                        where,
                        f"step {s.id!r} refers to its enclosing step {ref!r}, "
                        "whose output does not exist yet",
                    )
                elif nested:
                    outer_refs.add(ref)
                else:
                    self.issue(where, f"refers to unknown step {ref!r}{did_you_mean(ref, by_id)}")
            for label, targets in _safe(
                lambda s=s: s.step_type.branches(s.definition), {}, self, s.path
            ).items():
                for target in targets:
                    t = by_id.get(target)
                    if t == s.index:
                        self.issue(f"{s.path}.{label}", f"step {s.id!r} cannot be its own branch")
                        continue
                    if t is None:
                        self.issue(
                            f"{s.path}.{label}",
                            f"unknown step {target!r}{did_you_mean(target, by_id)}",
                        )
                        continue
                    gate = steps[t].gate
                    if gate is not None:
                        self.issue(
                            f"{s.path}.{label}",
                            f"step {target!r} is already a branch of step {steps[gate[0]].id!r}",
                        )
                        continue
                    steps[t].gate = (s.index, label)
                    s.gated.setdefault(label, []).append(t)
                    hard[t].add(s.index)
            if s.on_error not in ("fail", "continue"):
                f = by_id.get(s.on_error)
                if f == s.index:
                    self.issue(f"{s.path}.on_error", f"step {s.id!r} cannot be its own fallback")
                    s.on_error = "fail"
                elif f is None:
                    self.issue(
                        f"{s.path}.on_error",
                        f"expected fail, continue or the id of a fallback step; got {s.on_error!r}",
                    )
                    s.on_error = "fail"
                elif steps[f].fallback_for is not None:
                    self.issue(
                        f"{s.path}.on_error",
                        f"step {s.on_error!r} is already the fallback of another step",
                    )
                    s.on_error = "fail"
                else:
                    s.fallback, steps[f].fallback_for = f, s.index
                    s.on_error = "fallback"
                    hard[f].add(s.index)
        # A fallback's dependents wait for it too: they see whichever of the two produced output.
        for s in steps:
            if s.fallback is not None:
                for other in steps:
                    if s.index in hard[other.index] and other.index != s.fallback:
                        hard[other.index].add(s.fallback)
        for s in steps:
            s.deps = tuple(sorted(hard[s.index] - soft[s.index]))
            s.any_deps = tuple(sorted(soft[s.index]))
            for d in (*s.deps, *s.any_deps):
                steps[d].dependents.append(s.index)
        return outer_refs

    def references(self, s: CompiledStep) -> dict[str, str]:
        """Step ids this step's templates read, each with the path of a field reading it."""
        refs: dict[str, str] = {}

        def add(names: Iterable[str], where: str, raw: Any) -> None:
            for name in names:
                refs.setdefault(name, _field_of(raw, name, where))

        for key, template in s.templated.items():
            add(template.references, f"{s.path}.{key}", s.definition.get(key))
        guards = (("when", s.when), ("cache.key", s.cache_key), ("cache.when", s.cache_when))
        for name, guard in guards:
            if guard is not None:
                add(guard.references, f"{s.path}.{name}", None)
        # Deferred templates (a loop's `output`) render inside the step's bodies, so they may
        # name the bodies' own steps as well as outer ones.
        inner = set().union(*(b.by_id for b in s.bodies.values())) if s.bodies else set()
        for key, t in s.deferred.items():
            add(t.references - inner, f"{s.path}.{key}", s.definition.get(key))
        for label, body in s.bodies.items():
            add(body.outer_refs, f"{s.path}.{label}", None)
        return refs

    def edge(
        self,
        s: CompiledStep,
        dep: str,
        by_id: dict[str, int],
        into: list[set[int]],
        field_name: str,
    ) -> None:
        if dep not in by_id:
            self.issue(f"{s.path}.{field_name}", f"unknown step {dep!r}{did_you_mean(dep, by_id)}")
        elif by_id[dep] == s.index:
            self.issue(f"{s.path}.{field_name}", f"step {s.id!r} cannot need itself")
        else:
            into[s.index].add(by_id[dep])

    def check_cycles(self, steps: list[CompiledStep]) -> None:
        """Kahn's algorithm; whatever is left sits on or behind a cycle, which is named."""
        indegree = [len(s.deps) + len(s.any_deps) for s in steps]
        ready = [s.index for s in steps if indegree[s.index] == 0]
        seen = 0
        while ready:
            i = ready.pop()
            seen += 1
            for d in steps[i].dependents:
                indegree[d] -= 1
                if indegree[d] == 0:
                    ready.append(d)
        if seen == len(steps):
            return
        cycle = _find_cycle(steps, {s.index for s in steps if indegree[s.index] > 0})
        names = " → ".join(steps[i].id for i in cycle)
        self.issue(steps[cycle[0]].path, f"dependency cycle: {names}")


class _ListTemplate:
    """A list of compiled expressions that renders to the list of their values."""

    __slots__ = ("items", "references", "roots", "is_static", "source", "step_paths", "where")

    def __init__(self, items: list[Template], where: str) -> None:
        self.items = items
        self.where = where
        self.source = [t.source for t in items]
        self.references = frozenset().union(*(t.references for t in items))
        self.roots = frozenset().union(*(t.roots for t in items))
        self.step_paths = frozenset().union(*(t.step_paths for t in items))
        self.is_static = False  # rendered every run: assertions are about the run's values

    def render(self, context: Mapping[str, Any]) -> list[Any]:
        return [t.render(context) for t in self.items]


def _find_cycle(steps: list[CompiledStep], stuck: set[int]) -> list[int]:
    """A cycle among ``stuck`` steps, as a closed path of indices."""
    start = min(stuck)
    path: list[int] = []
    on_path: dict[int, int] = {}
    node = start
    while node not in on_path:
        on_path[node] = len(path)
        path.append(node)
        node = next(d for d in (*steps[node].deps, *steps[node].any_deps) if d in stuck)
    cycle = path[on_path[node] :]
    cycle.reverse()  # deps point backwards; name the cycle in the order steps run
    return [*cycle, cycle[0]]


class _Unrenderable:
    """Stands in for a template that failed to compile: keeps what it references."""

    is_static = False
    roots: frozenset[str] = frozenset()
    step_paths: frozenset[tuple[Any, ...]] = frozenset()

    def __init__(self, references: frozenset[str], where: str) -> None:
        self.references = references
        self.where = where
        self.source = None

    def render(self, context: Mapping[str, Any]) -> Any:
        raise RuntimeError(f"template at {self.where} did not compile")


@dataclass(frozen=True, slots=True)
class _Known:
    """What the host offers, for checking the tools and agents steps name."""

    tools: Registry[Tool] | None
    agents: Collection[str] | None
    tool_sources: frozenset[str]
    executors: Callable[[str], str | None] | None


_SHAPE_KEYWORDS = frozenset(
    {
        "required",
        "additionalProperties",
        "unevaluatedProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "minItems",
        "maxItems",
    }
)
"""Schema keywords about a value's keys or length, which templates inside it do not change."""
_LAX_SCALARS = frozenset({"integer", "number", "boolean"})


def _field_naming(raw: Mapping[str, Any], name: str, path: str) -> str:
    """The path of the field (or list item) of ``raw`` holding ``name``; the step's if none."""
    for key, value in raw.items():
        if value == name:
            return f"{path}.{key}"
        if isinstance(value, list):
            for i, item in enumerate(value):
                if item == name:
                    return f"{path}.{key}[{i}]"
    return path


_MACHINE_ROOTS = frozenset({"output", "state"})
"""Roots of a state machine's templates (``state`` in its states' steps, too)."""
_BODY_ROOTS = frozenset({"item", "index"}) | _MACHINE_ROOTS
"""Roots only a body's enclosing step provides (see ``StepType.body_roots``)."""


def _reach(start: str, edges: Mapping[str, list[str]]) -> set[str]:
    """The names reached from ``start`` along ``edges`` (``start`` included)."""
    seen = {start}
    todo = [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


_REF = r"steps(?:\.{0}\b|\[\s*['\"]{0}['\"]\s*\])"


def _field_of(raw: Any, ref: str, where: str) -> str:
    """The path of the first field under ``raw`` whose text names step ``ref``."""
    if not isinstance(raw, dict | list):
        return where  # a string (or a guard): the field itself, no search to make
    pattern = re.compile(_REF.format(re.escape(ref)))
    return _first_text(raw, where, pattern.search) or where


def _first_text(value: Any, path: str, matches: Callable[[str], Any]) -> str | None:
    """The path (from ``path``) of the first string under ``value`` that ``matches``."""
    if isinstance(value, str):
        return path if matches(value) else None
    items = (
        value.items()
        if isinstance(value, dict)
        else (enumerate(value) if isinstance(value, list) else ())
    )
    for k, v in items:
        found = _first_text(v, f"{path}[{k}]" if isinstance(k, int) else f"{path}.{k}", matches)
        if found is not None:
            return found
    return None


def _body_path(raw: dict[str, Any], body: list[Any], path: str, label: str) -> str:
    """Where a nested body is written: ``steps[0].steps`` or ``steps[0].parallel.left``."""
    for key, value in raw.items():
        if value is body:
            return f"{path}.{key}"
        if isinstance(value, dict):
            for name, inner in value.items():
                if inner is body:
                    return f"{path}.{key}.{name}"
    return f"{path}.{label}"


def _field_names(cls: type[StepType]) -> set[str]:
    return {f.alias or name for name, f in cls.Config.model_fields.items()}


def _holds_bodies(value: Any, body_lists: set[int]) -> bool:
    """Whether a raw field is a body list, or a mapping of them (``parallel:`` branches)."""
    if id(value) in body_lists:
        return True
    return (
        isinstance(value, dict) and bool(value) and all(id(v) in body_lists for v in value.values())
    )


def _safe(
    fn: Any, default: Any, c: _Compiler, path: str, kind: type | tuple[type, ...] = dict
) -> Any:
    """Call a step type's declaration method; a plugin that raises is a definition issue, and
    an answer that is not of ``kind`` counts as ``default``."""
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - plugin code
        c.issue(path, f"step type failed to describe this step: {type(exc).__name__}: {exc}")
        return default
    return result if isinstance(result, kind) else default


def _json_path(parts: Iterable[Any]) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


class UnknownSignal(InputsInvalid):
    """A signal that no step of the run's workflow waits for (``signal_problem`` says why).

    An :class:`InputsInvalid`: like inputs, a signal is what a caller gives a run, refused
    because the workflow cannot take it. The JSON-RPC methods answer it as invalid params
    (-32602), the command line as bad input.
    """

    def __init__(self, workflow: str, event: str, problem: str) -> None:
        self.workflow = workflow
        self.event = event
        self.problems = [problem]
        super(InputsInvalid, self).__init__(problem)  # its own words, not "invalid inputs"


_STEP_RECORD = ("output", "status", "error", "attempts")
"""What ``steps.<id>`` holds for a template (the records the scheduler builds)."""


def _dotted(keys: Iterable[Any]) -> str:
    """``('items', 0, 'title')`` as ``.items[0].title``."""
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys)


def _field_with(raw: Any, ref: str, key: Any, where: str) -> str:
    """The path of the field under ``raw`` whose text reads ``key`` of step ``ref``; else
    the first naming the step; else ``where``."""
    step = re.compile(_REF.format(re.escape(ref)))
    read = re.compile(rf"[.\[]\s*['\"]?{re.escape(str(key))}\b")
    both = _first_text(raw, where, lambda text: step.search(text) and read.search(text))
    return both or _field_of(raw, ref, where)


_MAX_SCHEMA_DEPTH = 64
"""Subschemas followed at most for one path (``$ref`` cycles end there, accepted)."""


def _missing_key(schema: Any, keys: tuple[Any, ...]) -> tuple[int, list[str]] | None:
    """Where ``keys`` certainly leave what ``schema`` allows: (index of the key, the names
    the object there declares), or ``None`` when the path may exist.

    Certain only for an object schema that lists ``properties``, has no ``patternProperties``
    and no ``additionalProperties`` (or ``unevaluatedProperties``) but ``false``: a schema
    whose objects take other keys says ``additionalProperties: true``. ``$ref`` to the
    schema's own ``$defs`` is followed, ``anyOf``/``oneOf`` accept a path any branch accepts,
    an integer follows ``prefixItems``/``items``, and anything else is accepted.
    """
    return _walk_schema(schema, keys, 0, schema, 0)


def _walk_schema(
    node: Any, keys: tuple[Any, ...], i: int, root: Any, depth: int
) -> tuple[int, list[str]] | None:
    if i >= len(keys) or depth > _MAX_SCHEMA_DEPTH:
        return None
    node = _resolve_ref(node, root)
    if not isinstance(node, dict):
        return None  # `true`, an unresolved $ref, or not a schema: anything goes
    key = keys[i]
    if node.get("type") == "null":
        return (i, [])  # null has no fields (a skipped step's output fails the same way)
    misses: list[tuple[int, list[str]]] = []
    for combinator in ("anyOf", "oneOf"):
        branches = node.get(combinator)
        if isinstance(branches, list) and branches:
            for branch in branches:
                miss = _walk_schema(branch, keys, i, root, depth + 1)
                if miss is None:
                    return None
                misses.append(miss)
    for branch in node.get("allOf") or ():
        miss = _walk_schema(branch, keys, i, root, depth + 1)
        if miss is not None:
            return miss  # every part must hold: one that refuses the path refuses it
    if misses:
        deepest = max(at for at, _ in misses)
        names = sorted({n for at, known in misses if at == deepest for n in known})
        return deepest, names
    if isinstance(key, int):
        prefix = node.get("prefixItems")
        if isinstance(prefix, list) and 0 <= key < len(prefix):
            return _walk_schema(prefix[key], keys, i + 1, root, depth + 1)
        items = node.get("items")
        if isinstance(items, dict):
            return _walk_schema(items, keys, i + 1, root, depth + 1)
        return None
    properties = node.get("properties")
    if not isinstance(properties, dict):
        return None
    if key in properties:
        return _walk_schema(properties[key], keys, i + 1, root, depth + 1)
    if "patternProperties" in node or any(
        node.get(other, False) is not False
        for other in ("additionalProperties", "unevaluatedProperties")
    ):
        return None  # it takes other keys
    return i, sorted(str(name) for name in properties)


def _resolve_ref(node: Any, root: Any) -> Any:
    """``node``, or what its local ``$ref`` (``#/$defs/Item``) points to; ``None`` when the
    reference leaves the schema."""
    for _ in range(_MAX_SCHEMA_DEPTH):
        if not isinstance(node, dict) or not isinstance(node.get("$ref"), str):
            return node
        ref = node["$ref"]
        if not ref.startswith("#"):
            return None
        node = root
        for part in ref[1:].split("/")[1:] if ref != "#" else ():
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return None
    return None
