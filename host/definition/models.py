"""The workflow definition: pydantic models for a workflow and the fields every step shares.

A step's own fields (``tool``/``with``, ``if``/``then``...) belong to its step type, which comes
from a plugin; the model keeps them in ``StepDef.config`` and the compiler validates them against
the step type's ``Config``. So this module knows no concrete step type.
"""

from __future__ import annotations

import math
import random
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_core import ValidationError as PydanticValidationError

__all__ = [
    "COMMON_STEP_FIELDS",
    "CachePolicy",
    "Defaults",
    "RetryPolicy",
    "ScheduleDef",
    "StateDef",
    "StepDef",
    "TransitionDef",
    "Trigger",
    "WorkflowDef",
]

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
"""Workflow names: lowercase, digits, ``_ . -``; they appear in tool names (``workflow.<name>``)."""
STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""Step ids are identifiers so that ``${steps.<id>.output}`` reads naturally in templates."""

COMMON_STEP_FIELDS = frozenset(
    {
        "id",
        "type",
        "needs",
        "needs_any",
        "when",
        "retry",
        "timeout",
        "on_error",
        "cache",
        "description",
        "compensate",
    }
)
"""Fields every step may carry, whatever its type; the rest belongs to the step type."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(_Strict):
    """How often, and how far apart, a failing step is tried again."""

    attempts: int = Field(1, ge=1, le=100)
    """Total attempts, the first included (1 = no retry)."""
    backoff: Literal["fixed", "linear", "exponential"] = "exponential"
    base: float = Field(0.5, ge=0, le=3600)
    """Seconds: the fixed delay, the linear step, or the exponential start."""
    max: float = Field(30.0, ge=0, le=86400)
    """Upper bound of one delay, in seconds."""
    jitter: bool | float = False
    """``True`` or a fraction in (0, 1]: randomise each delay down by up to that fraction."""
    retry_on: list[str] = Field(default_factory=list)
    """Error kinds (``timeout``, ``tool``, ``agent``...) or exception class names to retry on;
    empty means every retryable error."""

    @field_validator("jitter")
    @classmethod
    def _jitter_fraction(cls, value: bool | float) -> bool | float:
        if not isinstance(value, bool) and not 0 <= value <= 1:
            raise ValueError("jitter is true, false, or a fraction between 0 and 1")
        return value

    def delay(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after attempt number ``failed_attempt`` (1-based) failed."""
        n = failed_attempt - 1
        if self.backoff == "fixed":
            delay = self.base
        elif self.backoff == "linear":
            delay = self.base * (n + 1)
        else:
            delay = self.base * math.pow(2, min(n, 60))
        delay = min(delay, self.max)
        fraction = 1.0 if self.jitter is True else float(self.jitter or 0)
        if fraction:
            delay -= delay * fraction * (rng or random).random()
        return delay


class CachePolicy(_Strict):
    """Memoization of a tool step: ``cache: true`` or ``cache: {ttl, key, when}``."""

    enabled: bool = True
    ttl: float | None = Field(None, gt=0)
    """Seconds a cached result stays valid (``None``: the tool's default, else until evicted)."""
    key: str | None = None
    """A template whose value is added to the cache key (e.g. ``${inputs.day}``)."""
    when: str | None = None
    """An expression; the result is looked up and stored only when it is true."""


class Defaults(_Strict):
    """Values each step inherits unless it sets its own."""

    retry: RetryPolicy | None = None
    timeout: float | None = Field(None, gt=0)
    on_error: str | None = None


class StepDef(BaseModel):
    """One step as written: the common fields plus the step type's own fields in ``config``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=STEP_ID_PATTERN, max_length=128)
    type: str | None = None
    """The step type, when not given by its type key (``tool:``, ``if:`` ...)."""
    needs: list[str] = Field(default_factory=list)
    needs_any: list[str] = Field(default_factory=list)
    """Steps this one waits for, running when at least one of them succeeded."""
    when: Any = None
    """A guard expression: the step is skipped when it is false."""
    retry: RetryPolicy | None = None
    timeout: float | None = Field(None, gt=0)
    """Seconds per attempt."""
    on_error: str | None = None
    """``fail`` (default), ``continue``, or the id of a fallback step."""
    cache: bool | CachePolicy | None = None
    description: str | None = None
    compensate: dict[str, Any] | None = None
    """A step that undoes this one's effect (a refund for a charge): when the run fails, the
    compensations of the steps that succeeded run, latest first. Top-level steps only."""
    config: dict[str, Any] = Field(default_factory=dict)
    """The step type's own fields, exactly as written."""

    @model_validator(mode="before")
    @classmethod
    def _split(cls, data: Any) -> Any:
        if isinstance(data, StepDef):
            return data
        if not isinstance(data, dict):
            raise ValueError(f"a step is a mapping of fields, got {type(data).__name__}")
        common = {k: v for k, v in data.items() if k in COMMON_STEP_FIELDS}
        common["config"] = {k: v for k, v in data.items() if k not in COMMON_STEP_FIELDS}
        return common

    @field_validator("needs", "needs_any", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_serializer(mode="plain")
    def _flatten(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.type is not None:
            out["type"] = self.type
        out.update(self.config)
        for name in ("needs", "needs_any"):
            if getattr(self, name):
                out[name] = list(getattr(self, name))
        for name in ("when", "timeout", "on_error", "description", "compensate"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.retry is not None:
            out["retry"] = self.retry.model_dump(exclude_defaults=True)
        if isinstance(self.cache, CachePolicy):
            out["cache"] = self.cache.model_dump(exclude_defaults=True) or True
        elif self.cache is not None:
            out["cache"] = self.cache
        return out

    @property
    def fields(self) -> dict[str, Any]:
        """The step as one flat mapping, as it was written."""
        return self._flatten()


class TransitionDef(_Strict):
    """One way out of a state: ``{to: <state>, when: <condition>, on: <signal>}``."""

    to: str
    """The state to go to."""
    when: Any = None
    """A condition over ``output`` (the state's output), ``state``, ``inputs`` and ``vars``;
    absent: always."""
    on: str | None = Field(None, min_length=1)
    """A signal event: the transition is taken when that signal arrives (and ``when`` holds),
    unless a transition without ``on`` applies first."""


class StateDef(_Strict):
    """One state of a state machine (``states.<name>``)."""

    description: str = ""
    steps: list[StepDef] = Field(default_factory=list)
    """The steps run on entering the state, a scope of their own (may be empty)."""
    output: Any = None
    """The state's output, a template over its ``steps`` (and ``state``, ``inputs``,
    ``vars``); default: the output of its last step (null without steps)."""
    transitions: list[TransitionDef] = Field(default_factory=list)
    """Tried in order, the first that applies wins."""
    final: bool = False
    """The run ends here: ``outputs`` become the run's outputs."""
    outputs: dict[str, Any] | None = None
    """A final state's outputs: templates over ``output``, ``state``, ``inputs`` and
    ``vars`` (default: none)."""

    def to_dict(self) -> dict[str, Any]:
        """The state as written (its steps flat)."""
        data = self.model_dump(exclude_none=True, exclude_defaults=True)
        if self.steps:
            data["steps"] = [s.fields for s in self.steps]
        if self.transitions:
            data["transitions"] = [
                t.model_dump(exclude_none=True, exclude_defaults=True) for t in self.transitions
            ]
        return data


RunEnd = Literal["succeeded", "failed", "cancelled"]


class Trigger(_Strict):
    """``on:`` — start a run of this workflow when a run of another one ends."""

    workflow: str = Field(pattern=NAME_PATTERN, max_length=128)
    """The workflow whose runs are watched."""
    status: list[RunEnd] = Field(default_factory=lambda: list[RunEnd](["succeeded"]), min_length=1)
    """Which ends start a run (default: success only)."""
    when: Any = None
    """An expression over the finished run (``run.outputs``, ``run.status``, ``run.inputs``):
    no run starts when it is false."""
    inputs: dict[str, Any] = Field(default_factory=dict)
    """Templates over the finished run (``run.outputs.x``) that make the new run's inputs."""

    @field_validator("status", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


OverlapPolicy = Literal["skip", "buffer_one", "allow", "cancel_previous"]
"""What a schedule's fire does while the previous run it started is still going."""
CatchupPolicy = Literal["none", "latest", "all"]
"""Which of the fires missed while no host ran a schedule start once one runs again."""


class ScheduleDef(_Strict):
    """A schedule: runs of a workflow that start themselves, on a cron expression or an
    interval (``schedules:`` of a workflow, or ``schedules/put``)."""

    name: str = Field(pattern=NAME_PATTERN, max_length=128)
    cron: str | None = Field(None, max_length=256)
    """Five fields (minute hour day month weekday), or six with seconds first, or ``@daily``..."""
    every: float | None = Field(None, ge=1, le=366 * 86400)
    """Seconds between fires, counted from the Unix epoch (3600: on every hour)."""
    timezone: str = Field("UTC", max_length=64)
    """The IANA time zone the cron expression reads in (``Europe/Berlin``)."""
    jitter: float = Field(0, ge=0, le=86400)
    """Delay each fire by up to this many seconds, the same for a fire after a restart."""
    inputs: dict[str, Any] = Field(default_factory=dict)
    """The inputs of each run."""
    overlap: OverlapPolicy = "skip"
    catchup: CatchupPolicy = "none"
    catchup_window: float = Field(86400, gt=0, le=366 * 86400)
    """Seconds: missed fires older than this are never started."""
    max_catchup: int = Field(10, ge=1, le=1000)
    """At most this many missed fires start (the latest ones) with ``catchup: all``."""
    description: str = ""

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            problem = cron_problem(value)
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(value)
        except (ValueError, OSError, LookupError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as 'Europe/Berlin' or 'UTC'"
            ) from None
        return value

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleDef:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of cron (an expression) or every (seconds)")
        return self


def cron_problem(expr: str) -> str | None:
    """Why ``expr`` is not a cron expression plait schedules (``None`` when it is one)."""
    from croniter import CroniterError, croniter

    fields = expr.split()
    if not (len(fields) in (5, 6) or (len(fields) == 1 and fields[0].startswith("@"))):
        return (
            f"a cron expression has 5 fields (minute hour day month weekday) or 6 (seconds "
            f"first); {expr!r} has {len(fields)}"
        )
    try:
        croniter(expr, 0, second_at_beginning=len(fields) == 6).get_next(float)
    except (CroniterError, ValueError, KeyError, IndexError, TypeError) as exc:
        return f"not a valid cron expression {expr!r}: {exc}"
    return None


class WorkflowDef(BaseModel):
    """A workflow: inputs, steps and outputs. Built from YAML, JSON, a dict or the builder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=128)
    version: int | None = Field(None, ge=1)
    description: str = ""
    inputs: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    """JSON Schema of the run's inputs."""
    defaults: Defaults = Field(default_factory=Defaults)
    vars: dict[str, Any] = Field(default_factory=dict)
    """Values computed once at the start of a run (templates over ``inputs``), as ``vars.*``."""
    concurrency: int | None = Field(None, ge=1, le=100_000)
    """How many steps of one run may do work at once (``None``: only the host-wide limit).
    Like the host-wide limit, it counts the steps of step types that use capacity (tools,
    agents, ...), not those that only wait (loops, branches, sub-workflows, delays, waits)."""
    initial: str | None = None
    """A state machine's first state (with ``states``)."""
    max_transitions: int = Field(100, ge=1, le=100_000)
    """A state machine's bound on transitions per run: one more fails the run."""
    states: dict[str, StateDef] | None = None
    """A state machine instead of ``steps``: states by name (see ``StateDef``). Compiled to
    one step of the built-in ``machine`` step type whose bodies are the states."""
    steps: list[StepDef] = Field(default_factory=list, validate_default=True)
    outputs: dict[str, Any] = Field(default_factory=dict)
    """Templates over ``steps``/``inputs`` that make the run's result."""
    on: list[Trigger] = Field(default_factory=list)
    """Runs of other workflows whose end starts a run of this one (chaining)."""

    schedules: list[ScheduleDef] = Field(default_factory=list)
    """Runs of this workflow that start themselves (see ``ScheduleDef``)."""

    @field_validator("steps")
    @classmethod
    def _steps_or_states(cls, value: list[StepDef], info: ValidationInfo) -> list[StepDef]:
        machine = info.data.get("states") is not None
        if machine and value:
            raise PydanticCustomError(
                "steps_or_states",
                "give either `steps` (a graph) or `states` (a state machine), not both",
            )
        if not machine and not value and "states" in info.data:
            raise PydanticCustomError(
                "steps_or_states", "a workflow needs at least one step (or `states`)"
            )
        return value

    @property
    def is_machine(self) -> bool:
        """Whether the workflow is written as states and transitions (``states:``)."""
        return self.states is not None

    @field_validator("schedules")
    @classmethod
    def _schedules_fit(cls, value: list[ScheduleDef], info: ValidationInfo) -> list[ScheduleDef]:
        errors: list[InitErrorDetails] = []
        seen: set[str] = set()
        for i, schedule in enumerate(value):
            if schedule.name in seen:
                errors.append(_error((i, "name"), f"duplicate schedule name {schedule.name!r}"))
            seen.add(schedule.name)
        schema = info.data.get("inputs")
        if value and isinstance(schema, dict):
            from jsonschema import Draft202012Validator
            from jsonschema.exceptions import SchemaError

            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError:
                schema = None  # the compiler reports it at ``inputs``
            validator = Draft202012Validator(schema) if schema is not None else None
            defaults = {
                k: p["default"]
                for k, p in ((schema or {}).get("properties") or {}).items()
                if isinstance(p, dict) and "default" in p
            }
            for i, schedule in enumerate(value):
                if validator is None:
                    break
                found = sorted(validator.iter_errors(defaults | schedule.inputs), key=str)
                if found:
                    said = "; ".join(
                        f"{'.'.join(map(str, e.absolute_path)) or '$'}: {e.message}" for e in found
                    )
                    errors.append(
                        _error((i, "inputs"), f"do not match the workflow's inputs: {said}")
                    )
        if errors:
            raise PydanticValidationError.from_exception_data("schedules", errors)
        return value

    _lines: dict[str, int] = PrivateAttr(default_factory=dict)
    _origin: str | None = PrivateAttr(default=None)

    @property
    def source_lines(self) -> dict[str, int]:
        """Line numbers by path (``steps[2].with``), when the definition came from text."""
        return self._lines

    @property
    def origin(self) -> str | None:
        """The file the definition was read from, if any."""
        return self._origin

    def line_of(self, path: str) -> int | None:
        """The line of ``path`` or of its nearest ancestor that has one."""
        while True:
            if path in self._lines:
                return self._lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            if cut <= 0:
                return self._lines.get(path) if path else None
            path = path[:cut]

    def to_dict(self) -> dict[str, Any]:
        """The definition as plain JSON data, in the form it is written in (fresh containers).

        Not pydantic's JSON mode, which fails on a mapping key holding a lone surrogate: the
        values are JSON already (the loader and the compiler refuse what is not).
        """
        data = self.model_dump(exclude_none=True, exclude_defaults=True) | {"name": self.name}
        if self.states is None:
            data["steps"] = [s.fields for s in self.steps]
        else:
            data.pop("steps", None)
            data["states"] = {name: state.to_dict() for name, state in self.states.items()}
        return _copy(data)


def _error(loc: tuple[int | str, ...], message: str) -> InitErrorDetails:
    error = PydanticCustomError("schedule", "{message}", {"message": message})
    return InitErrorDetails(type=error, loc=loc, input=None)


def _copy(value: Any) -> Any:
    """``value`` with fresh dicts and lists (tuples become lists), sharing nothing."""
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(item) for item in value]
    return value
