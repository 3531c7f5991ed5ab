"""A :class:`~plait.plugins.StepContext` without an engine, for unit tests of a step type.

A step type's ``run(ctx, config)`` only meets the engine through its context. Handing it a
:class:`FakeStepContext` tests the step's own logic in microseconds: what it emits, which tools
it calls with what, what it returns, how it reacts to a tool failing. The fake keeps the
engine's contract where a step could notice the difference (events and checkpoints must be
JSON, tool errors arrive as ``ToolFailed``, unknown tools, agents and workflows raise the
engine's errors) and records everything else for the test to assert on. To test a step with
the engine itself (config validation, templates, retries), use :func:`plait.testing.run_step`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from plait.errors import (
    AgentFailed,
    AgentNotFound,
    OutputError,
    RunError,
    ToolFailed,
    ToolNotFound,
    WorkflowNotFound,
)
from plait.faults import is_plugin_failure
from plait.plugins.types import Agent, Message, Tool, ToolContext
from plait.templates.engine import Template, TemplateEngine
from plait.values import json_problem

if TYPE_CHECKING:
    from plait.plugins.types import StepContext

__all__ = ["FakeStepContext", "ToolLike"]

log = logging.getLogger("plait.testing")

ToolLike: TypeAlias = Callable[..., Any] | Tool
"""A tool for the fake: a typed function (called with the arguments as keywords) or a Tool."""


async def _settle(value: Any) -> Any:
    """The value, awaited when the test's stand-in was an async function."""
    return await value if inspect.isawaitable(value) else value


async def _nothing() -> None:
    """What ``sleep_until`` returns: time does not pass in a unit test."""


class FakeStepContext:
    """The step context of one attempt of one step, with no engine behind it.

    Everything a step may ask for is given up front; what it did is kept in public lists.

    Args:
        tools: name → a function (called with the arguments as keywords, sync or async) or a
            :class:`plait.Tool`. Functions become tools as a plugin's would, so their
            arguments are validated against their signature.
        agents: name → an :class:`plait.Agent` (anything with ``complete(request)``).
        workflows: name → a function of the inputs returning the child run's outputs.
        bodies: label → a function of the body's ``vars`` returning the body's result; when
            the step passes ``output=``, return ``{"<step id>": {"output": ...}}`` for the
            body's steps and the template is rendered against it as ``steps``.
        signals: event → data that :meth:`wait_signal` finds already delivered.
        sampler: a function of the sampling params returning the client's result.
        roots: what templates may read besides the extra roots of a render: ``inputs``,
            ``steps``, ``vars``, ``run``, ``env``.
        templates: the engine compiling templates given as plain values (default: one with
            the standard limits).
        definition: the step as written (``ctx.definition``).
        checkpoints: values kept by an earlier run of this attempt, to test the re-run after a
            restart.
        run_id: the run's id; ``idempotency_key`` is ``run_id/step_id``.
        step_id: the step's path.
        attempt: 1 for the first attempt.

    Example::

        ctx = FakeStepContext(tools={"hello.greet": greet})
        assert await Greet().run(ctx, Greet.Config(greet="ada")) == "hi ada"
        assert ctx.events == [("hello.greeting", {"name": "ada"})]
    """

    def __init__(
        self,
        *,
        tools: Mapping[str, ToolLike] | None = None,
        agents: Mapping[str, Agent] | None = None,
        workflows: Mapping[str, Callable[[dict[str, Any]], Any]] | None = None,
        bodies: Mapping[str, Callable[[dict[str, Any]], Any]] | None = None,
        signals: Mapping[str, Any] | None = None,
        sampler: Callable[[dict[str, Any]], Any] | None = None,
        roots: Mapping[str, Any] | None = None,
        templates: TemplateEngine | None = None,
        definition: Mapping[str, Any] | None = None,
        checkpoints: Mapping[str, Any] | None = None,
        run_id: str = "run-test",
        step_id: str = "step",
        attempt: int = 1,
    ) -> None:
        self.run_id = run_id
        self.step_id = step_id
        self.attempt = attempt
        self.definition: Mapping[str, Any] = dict(definition or {})
        self.log = logging.LoggerAdapter(log, {"run_id": run_id, "step": step_id})
        self.tools: dict[str, Tool] = {
            name: _as_tool(name, given) for name, given in (tools or {}).items()
        }
        self.agents: dict[str, Agent] = dict(agents or {})
        self.workflows = dict(workflows or {})
        self.bodies = dict(bodies or {})
        self.signals: dict[str, Any] = dict(signals or {})
        self.sampler = sampler
        self.roots: dict[str, Any] = dict(roots or {})
        self._templates = templates

        self.events: list[tuple[str, dict[str, Any]]] = []
        """``(type, data)`` of every event the step emitted, in order (conversation
        appends and checkpoints included, as the engine records them)."""
        self.tool_calls: list[tuple[str, dict[str, Any]]] = []
        """``(name, arguments)`` of every tool call, whether or not it succeeded."""
        self.conversations: dict[str, list[Message]] = {}
        self.checkpoints: dict[str, Any] = dict(checkpoints or {})
        self.selected: list[str] = []
        """Branch labels the step selected."""
        self.body_runs: list[tuple[str, dict[str, Any], str | None]] = []
        """``(label, vars, key)`` of every body the step ran."""
        self.workflow_runs: list[tuple[str, dict[str, Any], int | None]] = []
        """``(name, inputs, version)`` of every child workflow the step ran."""
        self.signals_taken: list[str] = []
        self.slept_until: list[float] = []
        """Deadlines the step slept until (it did not really sleep)."""
        self.waiting_reasons: list[str | None] = []
        """What the step said it waits for, ``None`` when it went on again."""
        self.samples: list[dict[str, Any]] = []
        """Params of every sampling request."""

    @property
    def idempotency_key(self) -> str:
        """``run_id/step_id``, as the engine makes it."""
        return f"{self.run_id}/{self.step_id}"

    def events_of(self, type: str) -> list[dict[str, Any]]:
        """The data of each emitted event of that type, in order."""
        return [data for kind, data in self.events if kind == type]

    # -- events and templates ----------------------------------------------------------------

    async def emit(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        """Record an event; data that is not JSON fails as it does in the engine.

        Raises:
            OutputError: ``data`` holds something that is not a JSON value.
        """
        payload = dict(data or {})
        problem = json_problem(payload)
        if problem is not None:
            raise OutputError(f"event {type!r} data is not JSON: {problem}")
        self.events.append((type, payload))

    def trace_headers(self) -> dict[str, str]:
        """A step tested alone is not traced."""
        return {}

    @property
    def templates(self) -> TemplateEngine:
        """The engine that compiles templates given as plain values (made on first use)."""
        if self._templates is None:
            self._templates = TemplateEngine()
        return self._templates

    def template(self, value: Any, *, expression: bool = False) -> Template:
        """Compile ``value`` as the engine compiles a deferred field (an ``expression``
        field when ``expression``), to build a config holding real templates.

        Raises:
            TemplateSyntaxError: the value does not compile.
        """
        if expression and isinstance(value, str):
            return self.templates.compile_expression(value, where="test")
        return self.templates.compile(value, where="test")

    def render(self, template: Any, **extra: Any) -> Any:
        """Render a deferred template against :attr:`roots` plus ``extra`` roots.

        ``template`` is a compiled template (anything with ``render(context)``), or a plain
        value, compiled first with :attr:`templates`: ``"${item * 2}"`` renders, a value with
        no template in it comes back as it is.

        Raises:
            TemplateError: the template failed, as it would in the engine.
        """
        context = {**self.roots, **extra}
        render = getattr(template, "render", None)
        if callable(render):
            return render(context)
        return self.template(template).render(context)

    # -- tools and agents --------------------------------------------------------------------

    async def call_tool(
        self,
        name: str,
        args: Mapping[str, Any],
        *,
        cache: Any = None,
        key: str | None = None,
        executor: str | None = None,
    ) -> Any:
        """Call a tool of ``tools`` (there is no cache: every call runs it, and runs it here,
        whatever ``executor`` it is asked to run on).

        Raises:
            ToolNotFound: no tool of that name was given.
            ToolFailed: invalid arguments, or the tool raised (the cause is chained).
            OutputError: the tool returned something that is not JSON.
        """
        self.tool_calls.append((name, dict(args)))
        tool = self.tools.get(name)
        if tool is None:
            raise ToolNotFound(name, sorted(self.tools))
        key_suffix = "" if key is None else f"/{key}"
        context = ToolContext(
            self.run_id, self.step_id, self.attempt, self.idempotency_key + key_suffix
        )
        call: Any = tool.call
        try:
            value = await (call(dict(args), context) if tool.takes_context else call(dict(args)))
        except RunError:
            raise
        except BaseException as exc:
            if not is_plugin_failure(exc):
                raise
            raise ToolFailed(name, f"{type(exc).__name__}: {exc}") from exc
        problem = json_problem(value)
        if problem is not None:
            raise OutputError(f"tool {name!r} returned a value that is not JSON: {problem}")
        return value

    def tool_specs(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """``[{name, description, input_schema}]`` of tools of ``tools``.

        Raises:
            ToolNotFound: a name is not among ``tools``.
        """
        specs = []
        for name in names:
            tool = self.tools.get(name)
            if tool is None:
                raise ToolNotFound(name, sorted(self.tools))
            specs.append(
                {"name": name, "description": tool.description, "input_schema": tool.input_schema}
            )
        return specs

    def agent(self, name: str) -> Agent:
        """The agent of ``agents`` of that name.

        Raises:
            AgentNotFound: no agent of that name was given.
        """
        found = self.agents.get(name)
        if found is None:
            raise AgentNotFound(name, sorted(self.agents))
        return found

    async def conversation(self, name: str) -> list[Message]:
        """A copy of the conversation's messages (empty when new)."""
        return list(self.conversations.get(name, ()))

    async def append_messages(self, name: str, messages: Sequence[Message]) -> None:
        """Add messages to a conversation and record ``conversation.appended``."""
        self.conversations.setdefault(name, []).extend(messages)
        await self.emit(
            "conversation.appended",
            {"conversation": name, "messages": [m.to_dict() for m in messages]},
        )

    async def sample(self, params: Mapping[str, Any], *, timeout: float) -> dict[str, Any]:
        """Ask ``sampler`` for a completion; without one, fail as a host with no client does.

        Raises:
            AgentFailed: no ``sampler`` was given.
        """
        self.samples.append(dict(params))
        if self.sampler is None:
            raise AgentFailed(
                "sampling",
                "FakeStepContext has no sampler: pass sampler=<function of the params>",
                retryable=False,
            )
        return dict(await _settle(self.sampler(dict(params))))

    # -- structure ---------------------------------------------------------------------------

    async def run_body(
        self,
        label: str,
        *,
        vars: Mapping[str, Any] | None = None,
        output: Any = None,
        key: str | None = None,
    ) -> Any:
        """Run the stand-in of a body: ``bodies[label](vars)``.

        Without ``output`` its result is the body's; with it, ``output`` is rendered with the
        ``vars`` as roots and the result as ``steps``.

        Raises:
            LookupError: no body of that label was given.
        """
        given = dict(vars or {})
        self.body_runs.append((label, given, key))
        body = self.bodies.get(label)
        if body is None:
            raise LookupError(
                f"FakeStepContext has no body {label!r}: pass bodies={{{label!r}: <function>}}"
            )
        result = await _settle(body(dict(given)))
        if output is None:
            return result
        return self.render(output, **given, steps=result)

    def select_branch(self, label: str) -> None:
        """Record the branch the step chose."""
        self.selected.append(label)

    async def run_workflow(
        self, name: str, inputs: Mapping[str, Any], *, version: int | None = None
    ) -> dict[str, Any]:
        """Run the stand-in of a child workflow: ``workflows[name](inputs)``.

        Raises:
            WorkflowNotFound: no workflow of that name was given.
        """
        self.workflow_runs.append((name, dict(inputs), version))
        child = self.workflows.get(name)
        if child is None:
            raise WorkflowNotFound(name, version, sorted(self.workflows))
        return dict(await _settle(child(dict(inputs))))

    # -- waiting -----------------------------------------------------------------------------

    async def wait_signal(
        self, event: str, *, timeout: float | None, reason: str | None = None
    ) -> Any:
        """The data of a signal of ``signals``, at once (``reason`` is not kept).

        Raises:
            TimeoutError: the signal was not given and ``timeout`` is set (as the engine
                raises once the timeout passes; here no time passes).
            LookupError: the signal was not given and there is no timeout: the step would
                wait forever.
        """
        if event in self.signals:
            self.signals_taken.append(event)
            return self.signals[event]
        if timeout is not None:
            raise TimeoutError(f"no signal {event!r} within {timeout:g}s")
        raise LookupError(
            f"the step waits for signal {event!r} with no timeout, and FakeStepContext has "
            f"none: pass signals={{{event!r}: <data>}}"
        )

    def sleep_until(self, deadline: float) -> Awaitable[None]:
        """Record the deadline and return at once: time does not pass in a unit test."""
        self.slept_until.append(deadline)
        return _nothing()

    async def waiting(self, reason: str | None) -> None:
        """Record what the step waits for (``None``: it runs again)."""
        self.waiting_reasons.append(reason)

    async def checkpoint(self, key: str, value: Any) -> Any:
        """Keep ``value`` under ``key`` unless a value is kept already; return the kept one.

        Raises:
            OutputError: ``value`` is not JSON (as in the engine).
        """
        if key in self.checkpoints:
            return self.checkpoints[key]
        problem = json_problem(value)
        if problem is not None:
            raise OutputError(f"checkpoint {key!r} of step {self.step_id!r} is not JSON: {problem}")
        self.checkpoints[key] = value
        await self.emit("step.checkpoint", {"key": key, "value": value})
        return value


def _as_tool(name: str, given: ToolLike) -> Tool:
    if isinstance(given, Tool):
        return given
    if not callable(given):
        raise TypeError(f"tool {name!r}: expected a function or a plait.Tool, got {given!r}")
    return Tool.from_function(given, name=name)


if TYPE_CHECKING:

    def _conforms(ctx: FakeStepContext) -> StepContext:
        """mypy checks here that the fake satisfies the protocol it stands in for."""
        return ctx
