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
    field_validator,
    model_serializer,
    model_validator,
)

__all__ = [
    "COMMON_STEP_FIELDS",
    "CachePolicy",
    "Defaults",
    "RetryPolicy",
    "StepDef",
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
        for name in ("when", "timeout", "on_error", "description"):
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
    """How many steps of one run may run at once (``None``: only the host-wide limit)."""
    steps: list[StepDef] = Field(min_length=1)
    outputs: dict[str, Any] = Field(default_factory=dict)
    """Templates over ``steps``/``inputs`` that make the run's result."""

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
        data = self.model_dump(exclude_none=True, exclude_defaults=True) | {
            "name": self.name,
            "steps": [s.fields for s in self.steps],
        }
        return _copy(data)


def _copy(value: Any) -> Any:
    """``value`` with fresh dicts and lists (tuples become lists), sharing nothing."""
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(item) for item in value]
    return value
