"""Answers to the questions of ``input`` steps (``runs/respond``).

An ``input`` step asks (``input.requested``) and waits for the reserved signal
``input:<step path>``. Only :func:`respond` sends that signal, once the answer fits the step's
schema and comes through a channel the step accepts; the signal machinery keeps it durably
until the step takes it, across a host restart too.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from plait.errors import InputsInvalid, InvalidRunState
from plait.plugins.types import INPUT_SIGNAL_PREFIX

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection

    from plait.state.runs import Run

T = TypeVar("T")


class _Engine(Protocol):
    """What :func:`respond` needs of the engine (``plait.engine.engine.Engine``)."""

    @property
    def executions(self) -> Collection[str]: ...

    async def resolve_run_id(self, run_id: str) -> str: ...

    async def load_run(self, run_id: str) -> Run: ...

    async def until_kept(self, wait: Callable[[], Awaitable[T]]) -> T: ...


__all__ = [
    "CHANNELS",
    "AnswerInvalid",
    "InputNotAwaited",
    "UnknownStep",
    "answer_problems",
    "reserved_signal",
    "respond",
]

CHANNELS = ("api", "mcp", "web")
"""Where an answer may come from: ``runs/respond``, an MCP client, the web view."""


class AnswerInvalid(InputsInvalid):
    """An answer that does not fit the question's schema; ``problems`` lists every way.

    An :class:`InputsInvalid`: JSON-RPC answers it as invalid params (-32602).
    """

    def __init__(self, workflow: str, step: str, problems: list[str]) -> None:
        self.workflow = workflow
        self.problems = problems
        super(InputsInvalid, self).__init__(
            f"the answer does not fit the schema of step {step!r}: " + "; ".join(problems)
        )


class UnknownStep(InputsInvalid):
    """``runs/respond`` named a step the run does not have (-32602)."""

    def __init__(self, workflow: str, run_id: str, step: str, asking: list[str]) -> None:
        self.workflow = workflow
        self.problems = [f"run {run_id} has no step {step!r}"]
        hint = f"; waiting for input: {', '.join(asking)}" if asking else ""
        super(InputsInvalid, self).__init__(self.problems[0] + hint)


class InputNotAwaited(InvalidRunState):
    """The step is not waiting for input, or not from this channel (-32004, not allowed)."""

    def __init__(self, run_id: str, status: str, message: str) -> None:
        self.run_id = run_id
        self.status = status
        super(InvalidRunState, self).__init__(message)


def reserved_signal(event: str) -> bool:
    """Whether a signal name is reserved for answers (``input:<step>``)."""
    return event.startswith(INPUT_SIGNAL_PREFIX)


def answer_problems(answer: Any, schema: dict[str, Any]) -> list[str]:
    """Every way ``answer`` breaks ``schema`` (draft 2020-12), as ``$.path: message``."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:  # checked at registration: only an old stored question
        return [f"the question's schema is invalid: {exc.json_path}: {exc.message}"]
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(answer), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{err.json_path}: {err.message}" for err in errors]


async def respond(
    engine: _Engine,
    run_id: str,
    step: str,
    answer: Any,
    *,
    by: str | None = None,
    channel: str = "api",
) -> None:
    """Answer the question step ``step`` of a run waits for; returns once the answer is kept.

    Raises:
        RunNotFound: no such run.
        UnknownStep: the run has no step ``step``.
        InputNotAwaited: the run is finished, the step asks nothing now (or was answered
            already), its question expired, or ``channel`` is not among its ``answerers``.
        AnswerInvalid: the answer breaks the question's schema (the step keeps waiting).
    """
    run_id = await engine.resolve_run_id(run_id)
    run = await engine.load_run(run_id)
    if run.done or run_id not in engine.executions:
        raise InvalidRunState(run_id, run.status, "answer a question of")
    question = run.question(step)
    if question is None:
        asking = [q["step"] for q in run.questions()]
        state = run.steps.get(step)
        if state is None:
            raise UnknownStep(run.workflow, run_id, step, asking)
        answered = run.queued_signals(INPUT_SIGNAL_PREFIX + step) > 0
        why = "it was answered already" if answered else f"it is {state.status}"
        hint = f" (waiting for input: {', '.join(asking)})" if asking else ""
        raise InputNotAwaited(
            run_id,
            run.status,
            f"step {step!r} of run {run_id} is not waiting for input: {why}{hint}",
        )
    answerers = question.get("answerers") or list(CHANNELS)
    if channel not in answerers:
        raise InputNotAwaited(
            run_id,
            run.status,
            f"step {step!r} takes answers through {', '.join(answerers)} only, not {channel}",
        )
    deadline = question.get("deadline")
    if isinstance(deadline, int | float) and time.time() >= deadline:
        raise InputNotAwaited(
            run_id, run.status, f"the question of step {step!r} expired (its `within` passed)"
        )
    schema = question.get("schema")
    problems = answer_problems(answer, schema if isinstance(schema, dict) else {})
    if problems:
        raise AnswerInvalid(run.workflow, step, problems)
    # No await since the question was read: two answers at once cannot both pass.
    run.signal(INPUT_SIGNAL_PREFIX + step, {"answer": answer, "by": by, "channel": channel})
    await engine.until_kept(run.committed)
