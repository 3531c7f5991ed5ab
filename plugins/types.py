"""The types a plugin implements or receives: step types, tools, agents and the step context.

This is the one module plugin authors read besides the hookspecs. The engine lives in the host;
a step type reaches it only through :class:`StepContext`, so a step type written against this
module works the same whether it ships with plait or in a third-party package.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

from plait.errors import ToolFailed
from plait.plugins.docstrings import describe
from plait.plugins.threads import run_blocking

__all__ = [
    "INPUT_SIGNAL_PREFIX",
    "Agent",
    "AgentContext",
    "AgentProvider",
    "AgentReply",
    "AgentRequest",
    "Executor",
    "ExecutorProvider",
    "Message",
    "RegisterAgent",
    "RegisterExecutor",
    "RegisterStepType",
    "RegisterTool",
    "Renderable",
    "RunInfo",
    "StepConfig",
    "StepContext",
    "StepType",
    "Tool",
    "ToolCall",
    "ToolContext",
    "ToolFunction",
    "ToolJob",
    "agent_settings",
    "tool",
    "validation_problems",
]

ConfigT = TypeVar("ConfigT", bound="StepConfig")

INPUT_SIGNAL_PREFIX = "input:"
"""Signals named ``input:<step path>`` carry the answer to an ``input`` step's question. They
are reserved: only ``runs/respond`` sends them, once the answer fits the step's schema (a plain
``runs/signal`` with such a name is refused)."""


class StepConfig(BaseModel):
    """Base of every step type's configuration model.

    Unknown fields are errors (``extra="forbid"``), so a typo in a workflow file is reported at
    load instead of being ignored. Fields named like Python keywords (``if``, ``with``) use an
    alias; both spellings are accepted.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, arbitrary_types_allowed=True)


class Renderable(Protocol):
    """A compiled template, as a step receives one in a deferred field of its config."""

    @property
    def source(self) -> Any:
        """What the workflow wrote (a string, or a list or mapping holding templates)."""
        ...

    def render(self, context: Mapping[str, Any]) -> Any:
        """The value in ``context`` (prefer :meth:`StepContext.render`, which adds the roots)."""
        ...


class StepContext(Protocol):
    """What the engine hands to a running step: identity, services and control.

    The same object serves one attempt of one step; a retry gets a new one with ``attempt``
    increased.
    """

    @property
    def run_id(self) -> str:
        """The run this step belongs to (the top-level run for steps in loops and branches)."""
        ...

    @property
    def step_id(self) -> str:
        """The step's path in the run: ``fetch``, or ``each[2].fetch`` inside a loop body."""
        ...

    @property
    def attempt(self) -> int:
        """1 for the first attempt, 2 for the first retry, and so on."""
        ...

    @property
    def idempotency_key(self) -> str:
        """``run_id/step_id``: the same on every attempt and after a restart, so a tool with
        side effects can tell the external system "this is the same request" and not act
        twice."""
        ...

    @property
    def log(self) -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
        """A logger named after the step (its records carry the run and step)."""
        ...

    @property
    def definition(self) -> Mapping[str, Any]:
        """The step exactly as written in the workflow (templates unrendered)."""
        ...

    async def emit(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        """Record an event of this step (``agent.message``, ``log``, ...), after the store."""

    def trace_headers(self) -> dict[str, str]:
        """The W3C trace context of this attempt (``traceparent``...) to send with an outgoing
        HTTP call, so the system called continues the run's trace; empty when the host does
        not trace."""
        ...

    def render(self, template: Renderable, **extra: Any) -> Any:
        """Render one of the step's deferred templates, with ``extra`` roots (``item``, ...)."""

    async def call_tool(
        self,
        name: str,
        args: Mapping[str, Any],
        *,
        cache: Any = None,
        key: str | None = None,
        executor: str | None = None,
    ) -> Any:
        """Call a registered tool through its concurrency limit and the result cache.

        ``key`` tells apart several calls one step makes (an agent's tool calls): it is added
        to the idempotency key the tool sees in its :class:`ToolContext`. ``executor`` runs
        this call on the executor of that name (``[executors.<name>]``) instead of where the
        tool says (its own ``executor``, else the host's process); pass it only when the step
        asks for one.
        """

    def tool_specs(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """Describe tools for a model: ``[{name, description, input_schema}]``.

        Unknown names raise ``ToolNotFound``.
        """

    def agent(self, name: str) -> Agent:
        """The configured agent of that name (raises ``AgentNotFound``)."""

    async def conversation(self, name: str) -> list[Message]:
        """The history of a conversation of this run (a copy; empty when new)."""

    async def append_messages(self, name: str, messages: Sequence[Message]) -> None:
        """Add messages to a conversation, so later steps naming it see them."""

    async def run_body(
        self,
        label: str,
        *,
        vars: Mapping[str, Any] | None = None,
        output: Any = None,
        key: str | None = None,
    ) -> Any:
        """Run a nested body of steps (a loop iteration, a parallel branch) to completion.

        Args:
            label: the body's name as declared by ``StepType.bodies``.
            vars: extra roots visible to the body (``item``, ``index``).
            output: a deferred template rendered in the body's scope for the result; when
                ``None`` the result is the output of the body's last step.
            key: distinguishes repeated runs of one body in step paths (``each[2].fetch``).
        """

    def select_branch(self, label: str) -> None:
        """Choose which gated branch runs; the steps of the other branches are skipped."""

    async def run_workflow(
        self, name: str, inputs: Mapping[str, Any], *, version: int | None = None
    ) -> dict[str, Any]:
        """Run another workflow as a child run and return its outputs (raises if it fails)."""

    async def wait_signal(
        self, event: str, *, timeout: float | None, reason: str | None = None
    ) -> Any:
        """Wait until the run receives the signal ``event``; return its data.

        ``reason`` is what ``runs/get`` shows the step waiting for (default: the signal).
        """

    def sleep_until(self, deadline: float) -> Awaitable[None]:
        """Sleep until a wall-clock time (``time.time()`` seconds): ``await`` it."""

    async def checkpoint(self, key: str, value: Any) -> Any:
        """Keep ``value`` for this attempt across a host restart; return the kept one.

        The first call with a key records ``value`` and returns it. When the host stops while
        the step runs, the step runs again after the restart as the same attempt, and the same
        call then returns what was recorded the first time instead of the new ``value``. Use it
        for what must not change on a re-run: a deadline, the id of a job already submitted.
        A retry (a new attempt) starts with no checkpoints.

        Example::

            deadline = await ctx.checkpoint("deadline", time.time() + config.seconds)
        """

    async def waiting(self, reason: str | None) -> None:
        """Show the step as ``waiting`` with ``reason`` (for a rate budget, say); ``None``
        shows it running again. The reason appears in the step's state in ``runs/get``."""

    async def sample(self, params: Mapping[str, Any], *, timeout: float) -> dict[str, Any]:
        """Ask a connected MCP client to run a completion (``sampling/createMessage``).

        The client that started the run is asked when it can sample, else any connected
        client that declared the ``sampling`` capability. Returns the client's result.

        Raises:
            AgentFailed: no client can sample, it refused, or it did not answer in time.
        """


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A read-only snapshot of a run, as lifecycle observers receive it.

    Taken when the change an observer hears of is already kept by the store; changing it
    changes nothing (its mappings are read-only copies).
    """

    id: str
    workflow: str
    version: int
    status: str
    """The run's status: ``running`` for ``run_started``, the outcome for ``run_finished``;
    for the step hooks, where the run stands when the observer is called."""
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any] | None = None
    error: Mapping[str, Any] | None = None
    parent_id: str | None = None
    """For a sub-workflow's run: the run whose step started it."""
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @classmethod
    def of(cls, run: Any, *, started: bool = False) -> RunInfo:
        """A snapshot of anything with a run's attributes (the engine's live ``Run``).

        ``started``: the run as it was when it started (running, no outcome yet), whatever it
        has done since.
        """
        return cls(
            id=run.id,
            workflow=run.workflow,
            version=run.version,
            status="running" if started else run.status,
            inputs=_frozen(run.inputs) or MappingProxyType({}),
            outputs=None if started else _frozen(run.outputs),
            error=None if started else _frozen(run.error),
            parent_id=run.parent_id,
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=None if started else run.finished_at,
        )


def _frozen(value: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return None if value is None else MappingProxyType(copy.deepcopy(dict(value)))


class StepType(ABC, Generic[ConfigT]):
    """A kind of step. Subclass it, give it a ``key`` and a ``Config``, register it with a hook.

    Generic over its config model, so a type checker knows what ``run`` receives.

    Example::

        class ShoutConfig(StepConfig):
            shout: str

        class Shout(StepType[ShoutConfig]):
            key = "shout"
            Config = ShoutConfig

            async def run(self, ctx: StepContext, config: ShoutConfig) -> str:
                return config.shout.upper()
    """

    key: ClassVar[str]
    """The field that marks a step of this type in a workflow (``tool``, ``if``, ...)."""
    Config: type[ConfigT]
    """The pydantic model of the step's own fields (common fields like ``id`` excluded)."""
    rerunnable: ClassVar[bool] = True
    """Whether a step the host stopped in the middle of may simply run again after a restart.
    ``False`` marks such a step ``interrupted`` instead; it then fails with error type
    ``interrupted`` and follows its ``on_error`` (a fallback step can take over)."""
    uses_capacity: ClassVar[bool] = True
    """Whether a running step holds a slot of the host-wide step limit. Steps that only wait for
    other steps (loops, branches, sub-workflows) say ``False`` so they cannot deadlock it."""
    inline: ClassVar[bool] = False
    """``run`` is a pure computation that never waits for anything (a transform, a branch
    choice): the engine then runs it in its scheduler, without a task of its own, which makes
    such a step several times cheaper. A step type that says so and awaits something that
    suspends fails with a clear error. Retries still apply; a ``timeout`` cannot interrupt
    code that never waits (templates have their own time limit)."""
    deferred: ClassVar[frozenset[str]] = frozenset()
    """Config fields the step renders itself (with ``ctx.render``) instead of the engine."""
    body_roots: ClassVar[frozenset[str]] = frozenset()
    """Template roots this step type gives the steps of its bodies through ``run_body(vars=)``
    (a loop: ``item`` and ``index``). Validation refuses ``item``/``index`` anywhere no
    enclosing step type declares them, instead of failing at run time."""
    expressions: ClassVar[frozenset[str]] = frozenset()
    """Config fields holding an expression: a bare string is Jinja code, not text."""
    description: ClassVar[str] = ""

    def bodies(self, config: Mapping[str, Any]) -> dict[str, list[Any]]:
        """Nested step lists (raw definitions) by label, such as a loop's body.

        The engine validates and compiles each as its own scope. Default: none.
        """
        return {}

    tool_arguments: ClassVar[str | None] = None
    """The config field holding the arguments of the one tool the step calls (a tool step's
    ``with``). Validation checks its literal values against that tool's input JSON Schema."""

    def references(self, config: Mapping[str, Any]) -> dict[str, list[str]]:
        """The tools, agents and executors this step names, by kind:
        ``{"tools": [...], "agents": [...], "executors": [...]}``.

        ``config`` is the step's own fields as written. Validation refuses a literal name no
        plugin registered as a tool (unless it is ``<server>.<tool>`` of a configured MCP
        server), that no ``[agents.<name>]`` configures, or that names no executor the host
        can use (and a tool it cannot send to one); names holding a template are skipped.
        Default: none.
        """
        return {}

    def branches(self, config: Mapping[str, Any]) -> dict[str, list[str]]:
        """Ids of sibling steps gated on this step's choice (``then``/``else``), by label.

        Those steps wait for this one; the ones of unselected labels are skipped.
        """
        return {}

    def signals(self, config: Mapping[str, Any]) -> list[str]:
        """The signal events a step of this config waits for (with ``ctx.wait_signal``).

        ``config`` is the step's own fields as written. ``runs/signal`` refuses an event that
        no step of the run's workflow declares here and no step of the run is waiting for
        right now, so declare every event the step may wait for: only then is a signal sent
        before the step reaches its wait kept for it. A name holding a template is known only
        at run time, so it makes runs of the workflow accept any event. Steps of nested bodies
        declare their own. Default: none.
        """
        return []

    def output_schema(
        self,
        config: Mapping[str, Any],
        tool_output_schema: Callable[[str], dict[str, Any] | None],
    ) -> dict[str, Any] | None:
        """The JSON Schema of the step's output, when its config tells it before the run.

        ``config`` is the step's own fields as written; ``tool_output_schema(name)`` is the
        output schema a registered tool declares (``None`` when it declares none, is not
        registered, or the name holds a template). Validation checks template paths such as
        ``${steps.<id>.output.title}`` against it: an object schema that lists ``properties``,
        has no ``patternProperties`` and does not say ``additionalProperties: true`` has no
        other fields. Default: ``None`` (unknown, nothing is checked).
        """
        return None

    @abstractmethod
    async def run(self, ctx: StepContext, config: ConfigT) -> Any:
        """Do the step's work and return its output (a JSON value)."""


# --------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool may know about the call it serves. A tool function receives it by declaring
    a parameter annotated ``ToolContext`` (left out of its argument schema).

    Example::

        def charge(order: str, amount: int, context: ToolContext) -> str:
            return payments.charge(order, amount, idempotency_key=context.idempotency_key)
    """

    run_id: str | None = None
    """The run calling, or ``None`` for a direct call (MCP ``tools/call``)."""
    step_id: str | None = None
    attempt: int | None = None
    idempotency_key: str | None = None
    """``run_id/step_id`` (plus ``/<call id>`` for an agent's tool calls): the same on every
    attempt and after a restart, so the external system can tell a repeat from a new request."""


@dataclass(frozen=True, slots=True)
class ToolFunction:
    """The Python function behind a tool made with :meth:`Tool.from_function`, in the parts an
    executor needs to run one call away from the host: the arguments are checked in the host
    (:attr:`bind`), the function runs on a worker, and what it returns is made the tool's JSON
    value in the host again (:attr:`to_json`)."""

    function: Callable[..., Any]
    """The function as written (synchronous or ``async``). Executors pickle it by reference to
    its module, so the workers must be able to import it (install the plugin there too)."""
    bind: Callable[[dict[str, Any], ToolContext | None], dict[str, Any]]
    """The keyword arguments of one call: ``args`` checked against the tool's schema (a
    :class:`~plait.ToolFailed` that no retry cures when they do not fit), plus the call's
    :class:`ToolContext` when the function declares a parameter for it."""
    to_json: Callable[[Any], Any]
    """What the function returned, as the tool's value (a pydantic model or a dataclass
    dumped to the JSON its schema declares; anything else as it is)."""


@dataclass(frozen=True, slots=True)
class ToolJob:
    """One tool call for an executor to run elsewhere: call it (``job()``) on a worker.

    The host checked the arguments already; the worker only runs the function and returns its
    value, which comes back to the host, goes through the tool cache and becomes the step's
    output there. The job pickles (the function by reference to its module).
    """

    key: str
    """The call's id, the same for the same step attempt and arguments on every host and
    after a restart (``plait-<tool>-<digest>``; see ``plait.services.executors.job_key``):
    submit the job under it, so that a host submitting it again finds the task already
    there. A retry is a new attempt, so a new key."""
    tool: str
    """The tool's registered name."""
    function: Callable[..., Any]
    kwargs: dict[str, Any]
    """The keyword arguments of the function, checked (with the context, when it takes one)."""
    context: ToolContext | None = None
    """The call's :class:`ToolContext`: run, step, attempt, idempotency key (``None`` for a
    direct call, ``tools/call``)."""

    def __call__(self) -> Any:
        """Run the function here and return its value (an ``async`` one is run to its end on
        an event loop of its own: call this where none is running, as a worker's thread)."""
        value = self.function(**self.kwargs)
        if inspect.isawaitable(value):
            return asyncio.run(_awaited(value))
        return value


async def _awaited(value: Awaitable[Any]) -> Any:
    return await value


@dataclass(frozen=True, slots=True)
class Tool:
    """A callable the engine can run by name, with a JSON Schema for its arguments.

    Build one from a typed function with :meth:`from_function` (or the :func:`tool` decorator);
    sources such as MCP servers build them directly with their own ``call``.
    """

    name: str
    call: Callable[[dict[str, Any]], Awaitable[Any]]
    """Runs the tool with validated keyword arguments and returns a JSON value."""
    input_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    description: str = ""
    version: str = "1"
    """Part of the cache key: bump it when the tool's results change for the same arguments."""
    cacheable: bool | None = None
    """``True``: results are memoized by default. ``None``: only when a step asks with
    ``cache:``. ``False``: never (side effects, or results that change for the same input)."""
    cache_ttl: float | None = None
    """Default time to live of cached results, in seconds (``None``: until evicted)."""
    max_concurrency: int | None = None
    """How many calls may run at once, host-wide (``None``: unlimited)."""
    takes_context: bool = False
    """``call`` takes a second argument, the :class:`ToolContext` of the call."""
    output_schema: dict[str, Any] | None = None
    """JSON Schema of what ``call`` returns, when known (``None``: unknown). From a function,
    derived from its return annotation when that is a pydantic model, a TypedDict or a
    dataclass; from an MCP server, its ``outputSchema``. Validation checks template paths into
    a tool step's output against it."""
    executor: str | None = None
    """Where calls run: ``None`` in the host's process; else the name of an executor
    (``[executors.<name>]`` of the host's configuration, ``dask`` say), for heavy functions
    run on a cluster. A tool step's ``executor:`` chooses for its own calls."""
    function: ToolFunction | None = None
    """The plain function and its argument check, set by :meth:`from_function`; what an
    executor runs. A tool without one (an MCP server's) can only run in the host."""

    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        version: str | None = None,
        cacheable: bool | None = None,
        cache_ttl: float | None = None,
        max_concurrency: int | None = None,
        blocking: bool | None = None,
        executor: str | None = None,
    ) -> Tool:
        """Wrap a typed function: its signature becomes the JSON Schema and the validator.

        Synchronous functions run in a worker thread (``blocking=True``) so a slow one never
        stalls the event loop; pass ``blocking=False`` for cheap pure functions. ``executor``
        runs every call on the executor of that name instead (``"dask"``: a Dask cluster).
        """
        meta: dict[str, Any] = getattr(fn, "__plait_tool__", {})

        def option(key: str, given: Any, default: Any = None) -> Any:
            # Arguments given at registration win over the @tool decorator's.
            if given is not None:
                return given
            found = meta.get(key)
            return default if found is None else found

        tool_name = option("name", name) or fn.__name__
        model, context_param = _arguments_model(fn, tool_name)
        is_async = inspect.iscoroutinefunction(fn)
        run_in_thread = (not is_async) and bool(option("blocking", blocking, True))

        returns = _structured_return(fn)

        def bind(args: dict[str, Any], context: ToolContext | None = None) -> dict[str, Any]:
            try:
                parsed = model.model_validate(args)
            except ValidationError as exc:
                raise ToolFailed(
                    tool_name, f"invalid arguments: {_brief(exc)}", retryable=False
                ) from None
            kwargs = {k: getattr(parsed, k) for k in type(parsed).model_fields}
            if context_param is not None:
                kwargs[context_param] = context or ToolContext()
            return kwargs

        async def invoke(args: dict[str, Any], context: ToolContext | None = None) -> Any:
            kwargs = bind(args, context)
            if is_async:
                return await fn(**kwargs)
            if run_in_thread:
                return await run_blocking(lambda: fn(**kwargs), name=f"plait tool {tool_name}")
            return fn(**kwargs)

        def to_json(result: Any) -> Any:
            if returns is None or type(result) is dict:
                return result
            return returns.dump_python(result, mode="json")

        call = invoke
        if returns is not None:  # a model or dataclass returned becomes the JSON it declares

            async def call(args: dict[str, Any], context: ToolContext | None = None) -> Any:
                return to_json(await invoke(args, context))

        # The docstring, as Markdown without its sections; its Args go into the schema. A
        # description the author gave on purpose is theirs, used as written.
        parsed, params = describe(fn)
        doc = option("description", description)
        return cls(
            name=tool_name,
            call=call,
            input_schema=_schema(model, params),
            description=parsed if doc is None else doc,
            version=str(option("version", version, "1")),
            cacheable=option("cacheable", cacheable),
            cache_ttl=option("cache_ttl", cache_ttl),
            max_concurrency=option("max_concurrency", max_concurrency),
            takes_context=context_param is not None,
            output_schema=None if returns is None else returns.json_schema(mode="serialization"),
            executor=option("executor", executor),
            function=ToolFunction(fn, bind, to_json),
        )


def tool(
    name: str | None = None,
    *,
    description: str | None = None,
    version: str = "1",
    cacheable: bool | None = None,
    cache_ttl: float | None = None,
    max_concurrency: int | None = None,
    blocking: bool = True,
    executor: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a function as a tool and set its name and defaults; the function stays callable.

    ``executor`` names where its calls run (``"dask"``: on the configured Dask cluster);
    ``None`` runs them in the host.

    Example::

        @plait.tool("hello.greet", cacheable=True)
        def greet(name: str) -> str:
            return f"hello, {name}"
    """

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__plait_tool__ = {  # type: ignore[attr-defined]
            "name": name,
            "description": description,
            "version": version,
            "cacheable": cacheable,
            "cache_ttl": cache_ttl,
            "max_concurrency": max_concurrency,
            "blocking": blocking,
            "executor": executor,
        }
        return fn

    return mark


def _arguments_model(fn: Callable[..., Any], tool_name: str) -> tuple[type[BaseModel], str | None]:
    """The arguments' model, and the name of the parameter that takes the ToolContext."""
    fields: dict[str, Any] = {}
    context_param = None
    hints = inspect.get_annotations(fn, eval_str=True)
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(param.name, Any)
        if annotation is ToolContext:
            context_param = param.name
            continue
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, default)
    safe = "".join(c if c.isalnum() else "_" for c in tool_name)
    model = create_model(f"{safe}_args", __config__=ConfigDict(extra="forbid"), **fields)
    return model, context_param


def _schema(model: type[BaseModel], described: Mapping[str, str]) -> dict[str, Any]:
    """The model's JSON Schema; ``described`` fills a property's missing description."""
    schema = model.model_json_schema()
    schema.pop("title", None)
    for name, prop in schema.get("properties", {}).items():
        prop.pop("title", None)
        if name in described and "description" not in prop:  # Field(description=) wins
            prop["description"] = described[name]
    return schema


def _structured_return(fn: Callable[..., Any]) -> TypeAdapter[Any] | None:
    """What ``fn`` returns, when its return annotation is a structured type (a pydantic model,
    a TypedDict or a dataclass): its JSON Schema is the tool's output schema, and a model or
    dataclass instance returned is dumped to that JSON. ``None`` for anything else (``dict``,
    ``Any``, ``str``, no annotation), whose fields are not known."""
    from dataclasses import is_dataclass

    from typing_extensions import is_typeddict

    try:
        returns: Any = inspect.get_annotations(fn, eval_str=True).get("return")
        structured = is_typeddict(returns) or (
            isinstance(returns, type) and (issubclass(returns, BaseModel) or is_dataclass(returns))
        )
        if not structured:
            return None
        adapter: TypeAdapter[Any] = TypeAdapter(returns)
        adapter.json_schema(mode="serialization")
    except Exception:  # noqa: BLE001 - a type pydantic cannot describe declares no output
        return None
    return adapter


def _brief(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "<arguments>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Agents
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ToolCall:
    """A model's request to call a tool."""

    id: str
    name: str
    arguments: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored with the conversation."""
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


@dataclass(slots=True)
class Message:
    """One message of a conversation, in the provider-neutral form stored with the run."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    """For ``role="tool"``: which call this is the result of."""
    name: str | None = None
    """For ``role="tool"``: the tool's name."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored with the conversation and sent in events."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Message:
        """Inverse of :meth:`to_dict`."""
        return cls(
            role=data["role"],
            content=data.get("content") or "",
            tool_calls=[
                ToolCall(c["id"], c["name"], dict(c.get("arguments") or {}))
                for c in data.get("tool_calls") or ()
            ],
            tool_call_id=data.get("tool_call_id"),
            name=data.get("name"),
        )


class AgentContext(Protocol):
    """What a provider may ask of the step it answers (the step's :class:`StepContext`)."""

    async def emit(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        """Record an event of the step (``agent.delta`` for streamed text)."""

    async def waiting(self, reason: str | None) -> None:
        """Show the step as waiting (on a budget, say), or running again with ``None``."""

    async def sample(self, params: Mapping[str, Any], *, timeout: float) -> dict[str, Any]:
        """Have a connected MCP client run the completion (``sampling/createMessage``)."""

    def trace_headers(self) -> dict[str, str]:
        """The trace context to send with the completion's HTTP request (empty: not traced)."""
        ...


@dataclass(slots=True)
class AgentRequest:
    """What the agent step asks a provider for: the next assistant message."""

    messages: list[Message]
    """The whole conversation so far, system prompt first when there is one."""
    tools: list[dict[str, Any]] = field(default_factory=list)
    """Tools the model may call: ``[{name, description, input_schema}]``."""
    output_schema: dict[str, Any] | None = None
    """When set, the final answer must be JSON matching this schema."""
    step_id: str = ""
    run_id: str = ""
    context: AgentContext | None = None
    """The step's services, for providers that stream, wait or sample (``None`` outside a
    step, in tests of a provider alone)."""


@dataclass(slots=True)
class AgentReply:
    """A provider's answer: an assistant message, possibly asking for tool calls."""

    message: Message
    usage: dict[str, int] = field(default_factory=dict)
    """Token counts when the provider reports them (``prompt_tokens``, ``completion_tokens``)."""


class Agent(Protocol):
    """A configured agent: answers one request with one assistant message."""

    name: str
    max_concurrency: int | None

    async def complete(self, request: AgentRequest) -> AgentReply:
        """Return the next assistant message for the conversation in ``request``."""


SettingsT = TypeVar("SettingsT", bound=BaseModel)


def validation_problems(exc: ValidationError, prefix: str = "") -> list[str]:
    """Each error of a settings table as ``where: what`` (``script[1].bogus: unknown key``).

    ``prefix`` names the table (``mcp_servers.git``); an error of the whole table is told at
    the prefix, or at ``<table>`` without one.
    """
    problems = []
    for err in exc.errors(include_url=False):
        where = prefix
        for part in err["loc"]:
            where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
        message = (
            "unknown key"
            if err["type"] == "extra_forbidden"
            else err["msg"].removeprefix("Value error, ")
        )
        problems.append(f"{where or '<table>'}: {message}")
    return problems


def agent_settings(
    model: type[SettingsT], name: str, provider: str, config: Mapping[str, Any]
) -> SettingsT:
    """Validate an ``[agents.<name>]`` table with a provider's settings model.

    Raises:
        ValueError: naming the agent, the provider and every key that is wrong.

    Example::

        def create(self, name, config):
            return MyAgent(name, agent_settings(MySettings, name, "mine", config))
    """
    try:
        return model.model_validate(dict(config))
    except ValidationError as exc:
        raise ValueError(
            f"agent {name!r} ({provider}): invalid configuration: "
            f"{'; '.join(validation_problems(exc))}"
        ) from None


class AgentProvider(Protocol):
    """Makes agents of one kind (``scripted``, ``openai``, ...) from their host configuration."""

    name: str
    """The value of ``provider =`` in the host config that selects this provider."""

    def create(self, name: str, config: Mapping[str, Any]) -> Agent:
        """Build the agent called ``name`` from its ``[agents.<name>]`` table.

        Raise ``ValueError`` with a clear message when the table is invalid.
        """


# --------------------------------------------------------------------------------------------
# Executors: where heavy tool calls run
# --------------------------------------------------------------------------------------------


class Executor(Protocol):
    """Runs tool calls away from the host's process: on a cluster's workers, say.

    The host stays the only writer of its runs: an executor only runs each :class:`ToolJob` it is
    given and hands its value back. Argument checks, the tool cache, limits, breakers, retries and
    every event are the host's.
    """

    name: str
    """The name steps and tools use for it (the ``[executors.<name>]`` table's)."""

    async def run(self, job: ToolJob) -> Any:
        """Run ``job()`` elsewhere and return its value.

        Submit it under ``job.key``, so that a host submitting the same call again (after a
        restart) finds the work already there. Connect on first use, not before: the host
        starts without the executor's libraries.

        Cancellation (the run cancelled, the step's timeout, the host stopping) reaches this
        coroutine the usual way; cancel the remote work then, unless :meth:`detach` was
        called, and never block the event loop while doing it.

        Raises:
            ExecutorFailed: the executor lost the call (the worker running it died, the
                cluster went away, it could not be submitted): retryable, a retry policy
                runs it again. The function's own exception is raised as it is.
        """
        ...

    def detach(self) -> None:
        """The host is stopping and will resume its runs: calls cancelled from now on are left
        running remotely, so that the next host finds them by their keys."""
        ...

    async def aclose(self) -> None:
        """Let go of connections and local clusters (the host has stopped)."""
        ...


class ExecutorProvider(Protocol):
    """Makes executors of one kind (``dask``, ...) from their host configuration."""

    name: str
    """The kind's name: ``[executors.<name>]`` tables of that name, or with
    ``provider = "<name>"``, are its."""

    def create(self, name: str, config: Mapping[str, Any]) -> Executor:
        """Build the executor called ``name`` from its ``[executors.<name>]`` table (empty
        when the configuration has none: an executor that needs no settings works without).

        Check the settings and nothing else: do not connect, nor import the executor's
        libraries (that is :meth:`Executor.run`'s first call). Raise ``ValueError`` saying
        which setting is missing or wrong.
        """
        ...


# --------------------------------------------------------------------------------------------
# Register callbacks handed to the register_* hooks
# --------------------------------------------------------------------------------------------


class RegisterStepType(Protocol):
    """``register(StepTypeClass, replace=False)``."""

    def __call__(self, step_type: type[StepType[Any]], *, replace: bool = False) -> None:
        """Add a step type under its ``key``; a duplicate key is an error unless ``replace``."""


class RegisterTool(Protocol):
    """``register(fn_or_tool, name=None, replace=False, **options)``."""

    def __call__(
        self,
        tool: Callable[..., Any] | Tool,
        name: str | None = None,
        *,
        replace: bool = False,
        **options: Any,
    ) -> None:
        """Add a tool: a :class:`Tool`, or a typed function turned into one."""


class RegisterAgent(Protocol):
    """``register(provider, replace=False)``."""

    def __call__(self, provider: AgentProvider, *, replace: bool = False) -> None:
        """Add an agent provider under its ``name``."""


class RegisterExecutor(Protocol):
    """``register(provider, replace=False)``."""

    def __call__(self, provider: ExecutorProvider, *, replace: bool = False) -> None:
        """Add an executor provider under its ``name``."""
