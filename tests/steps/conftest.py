"""A stand-in for the engine's step context, enough to run step types without an engine."""

from __future__ import annotations

import logging

import pytest

from plait.errors import AgentNotFound, ToolFailed, ToolNotFound


class FakeCtx:
    """Records what a step asks of the engine; templates are plain callables here.

    ``tools``: name → function(args) (sync or async). ``bodies``: label → async
    function(vars) returning the body's output. A deferred template is a callable taking the
    extra roots as keywords.
    """

    def __init__(
        self, *, definition=None, tools=None, agents=None, bodies=None, signal=None, workflows=None
    ):
        self.run_id = "run-1"
        self.step_id = "step"
        self.attempt = 1
        self.idempotency_key = "run-1/step"
        self.log = logging.getLogger("plait.test")
        self.definition = definition or {}
        self.tools = tools or {}
        self.agents = agents or {}
        self.bodies = bodies or {}
        self.signal = signal
        self.workflows = workflows or {}
        self.events: list[tuple[str, dict]] = []
        self.conversations: dict[str, list] = {}
        self.appends: list[tuple[str, list]] = []
        self.tool_calls: list[tuple[str, dict]] = []
        self.body_runs: list[tuple[str, dict, str | None]] = []
        self.selected: list[str] = []
        self.requests: list = []
        self.slept_until: float | None = None
        self.checkpoints: dict[str, object] = {}

    async def emit(self, type, data=None):
        self.events.append((type, dict(data or {})))

    def events_of(self, type):
        return [data for t, data in self.events if t == type]

    def render(self, template, **extra):
        return template(**extra)

    async def call_tool(self, name, args, *, cache=None, key=None):
        self.tool_calls.append((name, dict(args)))
        if name not in self.tools:
            raise ToolNotFound(name, list(self.tools))
        try:
            result = self.tools[name](dict(args))
            if hasattr(result, "__await__"):
                result = await result
        except ToolFailed:
            raise
        except Exception as exc:
            raise ToolFailed(name, str(exc)) from exc
        return result

    def tool_specs(self, names):
        for name in names:
            if name not in self.tools:
                raise ToolNotFound(name, list(self.tools))
        return [{"name": n, "description": "", "input_schema": {"type": "object"}} for n in names]

    def agent(self, name):
        if name not in self.agents:
            raise AgentNotFound(name, list(self.agents))
        return self.agents[name]

    async def conversation(self, name):
        return list(self.conversations.get(name, []))

    async def append_messages(self, name, messages):
        self.appends.append((name, list(messages)))
        self.conversations.setdefault(name, []).extend(messages)

    async def run_body(self, label, *, vars=None, output=None, key=None):
        vars = dict(vars or {})
        self.body_runs.append((label, vars, key))
        result = await self.bodies[label](vars)
        return output(last=result, **vars) if output is not None else result

    def select_branch(self, label):
        self.selected.append(label)

    async def run_workflow(self, name, inputs, *, version=None):
        return self.workflows[name](dict(inputs), version)

    async def wait_signal(self, event, *, timeout, reason=None):
        if self.signal is None:
            raise TimeoutError
        return self.signal

    async def sleep_until(self, deadline):
        self.slept_until = deadline

    async def checkpoint(self, key, value):
        return self.checkpoints.setdefault(key, value)


@pytest.fixture
def make_ctx():
    """Build a :class:`FakeCtx` with the given keyword arguments."""
    return FakeCtx
