"""Executors as plugins, and their configuration: what is refused at start and at validation,
how a call is keyed, and what loads when (no cluster here; see test_dask.py for one).

A third-party executor comes through the same ``register_executors`` hook as the built-in
``dask`` one; this file's ``inline`` executor runs each job in a thread of the host, which is
enough to see what the host hands an executor and what it does with the answer.
"""

from __future__ import annotations

import json
import pickle
import socket
import subprocess
import sys
import types

import anyio
import pytest

import plait
from plait.errors import CircuitOpen, ConfigError, DefinitionError, ExecutorFailed, ToolFailed
from plait.plugins import Tool, ToolContext, ToolJob, create_plugin_manager
from plait.services.executors import job_key
from plait.testing import memory_config, started_host

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


def double(x: int) -> int:
    return 2 * x


def heavy(x: int) -> int:
    return x + 1


async def _mcp_like(args: dict) -> str:
    return "from elsewhere"


class Inline:
    """An executor running each job on a thread of the host, recording what it was given."""

    def __init__(self, name: str, jobs: list[ToolJob], fail_first: bool) -> None:
        self.name = name
        self.jobs = jobs
        self.fail_first = fail_first
        self.detached = self.closed = False

    async def run(self, job: ToolJob) -> object:
        self.jobs.append(job)
        if self.fail_first and len(self.jobs) == 1:
            raise ExecutorFailed(job.tool, self.name, "the worker went away")
        return await anyio.to_thread.run_sync(job)

    def detach(self) -> None:
        self.detached = True

    async def aclose(self) -> None:
        self.closed = True


class InlineProvider:
    name = "inline"

    def __init__(self) -> None:
        self.jobs: list[ToolJob] = []
        self.made: list[Inline] = []

    def create(self, name, config):
        unknown = set(config) - {"fail_first"}
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
        executor = Inline(name, self.jobs, bool(config.get("fail_first")))
        self.made.append(executor)
        return executor


def plugin(provider=None, **tools):
    """A plugin of tools (name: function, or (function, options)) and an executor provider."""

    @plait.hookimpl
    def register_tools(register):
        for name, given in tools.items():
            fn, options = given if isinstance(given, tuple) else (given, {})
            if isinstance(fn, Tool):
                register(fn)
            else:
                register(fn, name, **options)

    @plait.hookimpl
    def register_executors(register):
        if provider is not None:
            register(provider)

    return types.SimpleNamespace(
        __name__="testexec", register_tools=register_tools, register_executors=register_executors
    )


def one_step(**step):
    return {"name": "one", "steps": [{"id": "a", **step}], "outputs": {"a": "${steps.a.output}"}}


# -- configuration refused at start ----------------------------------------------------------


async def start(config, *plugins):
    async with started_host(config=config, plugins=plugins):
        pass


async def test_a_dask_table_without_an_address_stops_the_host_naming_the_setting():
    with pytest.raises(ConfigError) as caught:
        await start(memory_config(executors={"dask": {"connect_timeout": 5}}))
    assert str(caught.value) == (
        'executors: [executors.dask]: no scheduler address: set address = "tcp://<scheduler>:8786"'
        " (or local_cluster = true to start a local cluster, for development only)"
    )


async def test_a_wrong_key_of_a_dask_table_is_named():
    with pytest.raises(ConfigError) as caught:
        await start(memory_config(executors={"dask": {"adress": "tcp://x:8786"}}))
    assert "[executors.dask]: adress: unknown key" in str(caught.value)


async def test_a_tool_on_an_executor_nobody_configured_stops_the_host():
    tools = plugin(**{"ml.fit": (heavy, {"executor": "dask"})})
    with pytest.raises(ConfigError) as caught:
        await start(memory_config(), tools)
    assert str(caught.value) == (
        "executors: tool 'ml.fit' (plugin 'testexec') runs on executor 'dask': no "
        "[executors.dask] table in the host configuration, and it needs one: no scheduler "
        'address: set address = "tcp://<scheduler>:8786" (or local_cluster = true to start a '
        "local cluster, for development only)"
    )


async def test_an_unknown_executor_or_provider_is_named_with_the_known_ones():
    tools = plugin(**{"ml.fit": (heavy, {"executor": "dsak"})})
    with pytest.raises(ConfigError) as caught:
        await start(memory_config(), tools)
    assert str(caught.value) == (
        "executors: tool 'ml.fit' (plugin 'testexec') runs on executor 'dsak': unknown "
        "executor 'dsak' (did you mean 'dask'?); known executors: dask"
    )
    with pytest.raises(ConfigError) as caught:
        await start(memory_config(executors={"gpu": {"provider": "ray"}}))
    assert str(caught.value) == (
        "executors: [executors.gpu]: no executor provider 'ray' is installed; installed: dask"
    )


async def test_a_tool_without_a_function_cannot_name_an_executor():
    mcp_like = Tool("remote.thing", _mcp_like, executor="dask")
    pm = create_plugin_manager(entry_points=False, extra=[plugin(**{"remote.thing": mcp_like})])
    pm.registries  # noqa: B018 - registering runs the hooks
    (failure,) = pm.failures
    assert failure.stage == "register_tools"
    assert "tool 'remote.thing' names executor 'dask' but has no function to send it" in (
        failure.error
    )


# -- names refused at validation -------------------------------------------------------------


def issues(config, workflow, *plugins):
    engine = plait.Engine(create_plugin_manager(entry_points=False, extra=plugins), config)
    with pytest.raises(DefinitionError) as caught:
        engine.compile(workflow)
    return [(i.path, i.message) for i in caught.value.issues]


def test_a_step_naming_an_unknown_executor_is_refused_at_validation():
    workflow = one_step(tool="math.sum", **{"with": {"values": [1]}}, executor="dsak")
    assert issues(memory_config(), workflow) == [
        (
            "steps[0].executor",
            "unknown executor 'dsak' (did you mean 'dask'?); known executors: dask",
        )
    ]


def test_a_step_naming_dask_without_its_table_is_told_the_missing_setting():
    workflow = one_step(tool="math.sum", **{"with": {"values": [1]}}, executor="dask")
    ((path, message),) = issues(memory_config(), workflow)
    assert path == "steps[0].executor"
    assert message.startswith(
        "no [executors.dask] table in the host configuration, and it needs one: no scheduler "
        'address: set address = "tcp://<scheduler>:8786"'
    )


def test_a_step_cannot_send_a_tool_that_is_no_python_function():
    config = memory_config(executors={"dask": {"address": "tcp://127.0.0.1:8786"}})
    remote = plugin(**{"remote.thing": Tool("remote.thing", _mcp_like)})
    assert issues(config, one_step(tool="remote.thing", executor="dask"), remote) == [
        (
            "steps[0].tool",
            "tool 'remote.thing' cannot run on an executor: it is not a Python function plait "
            "can send (an MCP server's tool, or a Tool made without from_function)",
        )
    ]


def test_a_configured_dask_executor_validates_without_connecting():
    config = memory_config(executors={"dask": {"address": "tcp://127.0.0.1:1"}})
    engine = plait.Engine(create_plugin_manager(entry_points=False), config)
    engine.compile(one_step(tool="math.sum", **{"with": {"values": [1]}}, executor="dask"))


# -- a third-party executor, through the same hook ---------------------------------------------


async def test_a_plugin_executor_runs_the_calls_of_the_steps_that_name_it():
    provider = InlineProvider()
    tools = plugin(provider, **{"math.double": double})
    config = memory_config(executors={"here": {"provider": "inline"}})
    workflow = {
        "name": "inline",
        "steps": [
            {"id": "a", "tool": "math.double", "with": {"x": 21}, "executor": "here"},
            {"id": "b", "tool": "math.double", "with": {"x": 1}},
        ],
    }
    async with started_host(config=config, plugins=[tools], workflows=[workflow]) as host:
        run = await host.wait(await host.start_run("inline"))
        (made,) = provider.made
        listed = {p.name: p for p in host.pm.info()}
    assert run.status == "succeeded", run.error
    assert (run.steps["a"].output, run.steps["b"].output) == (42, 2)
    (job,) = provider.jobs  # only the step that named it
    assert (job.tool, job.function, job.kwargs) == ("math.double", double, {"x": 21})
    assert job.context == ToolContext(run.id, "a", 1, f"{run.id}/a")
    assert job.key == job_key(host.engine.tools.get("math.double"), {"x": 21}, job.context)
    assert made.closed and not made.detached  # a memory store: nothing to resume
    assert listed["testexec"].executor_providers == ["inline"]
    assert listed["plait.executors.dask"].executor_providers == ["dask"]
    assert listed["plait.executors.dask"].builtin


async def test_a_lost_call_is_an_executor_error_the_retry_policy_retries():
    provider = InlineProvider()
    tools = plugin(provider, **{"math.double": (double, {"executor": "inline"})})
    config = memory_config(executors={"inline": {"fail_first": True}})
    workflow = one_step(
        tool="math.double", retry={"attempts": 2, "base": 0.01}, **{"with": {"x": 4}}
    )
    async with started_host(config=config, plugins=[tools], workflows=[workflow]) as host:
        run = await host.wait(await host.start_run("one"))
    assert run.status == "succeeded", run.error
    assert run.outputs == {"a": 8}
    first, second = provider.jobs
    assert (first.context.attempt, second.context.attempt) == (1, 2)
    assert first.key != second.key  # a retry is a new task
    (retry,) = [e.data for e in run.events if e.type == "step.retrying"]
    assert retry["error"] == {
        "type": "executor",
        "message": "tool 'math.double': executor 'inline': the worker went away",
    }


def test_the_job_key_is_the_step_attempt_and_its_arguments():
    tool = Tool.from_function(heavy, name="ml.fit")
    ctx = ToolContext("r1", "fit", 1, "r1/fit")
    key = job_key(tool, {"x": 1}, ctx)
    assert key.startswith("plait-ml.fit-") and len(key) == len("plait-ml.fit-") + 32
    assert job_key(tool, {"x": 1}, ToolContext("r1", "fit", 1, "r1/fit")) == key
    assert job_key(tool, {"x": 2}, ctx) != key
    assert job_key(tool, {"x": 1}, ToolContext("r1", "fit", 2, "r1/fit")) != key
    assert job_key(tool, {"x": 1}, ToolContext("r2", "fit", 1, "r2/fit")) != key
    direct = {job_key(tool, {"x": 1}, None) for _ in range(2)}
    assert len(direct) == 2  # tools/call: no step, no idempotency key, a key of its own


def test_plait_errors_pickle_as_they_are():
    for error in (
        ToolFailed("t", "no", retryable=False),
        ExecutorFailed("t", "dask", "the worker died"),
        CircuitOpen("tool:t", 1_700_000_000.0, failures=3),
    ):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error)
        assert str(back) == str(error) and back.to_dict() == error.to_dict()
        assert back.retryable == error.retryable


# -- the dask executor, without a cluster ------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_an_unreachable_scheduler_fails_the_call_with_a_retryable_error():
    address = f"tcp://127.0.0.1:{closed_port()}"
    config = memory_config(executors={"dask": {"address": address, "connect_timeout": 0.5}})
    workflow = one_step(
        tool="math.sum",
        executor="dask",
        retry={"attempts": 2, "base": 0.01},
        **{"with": {"values": [1]}},
    )
    async with started_host(config=config, workflows=[workflow]) as host:
        run = await host.wait(await host.start_run("one"))
    assert run.status == "failed"
    assert run.steps["a"].attempts == 2
    assert run.error["type"] == "executor"
    assert run.error["message"].startswith(
        f"tool 'math.sum': executor 'dask': cannot reach the Dask scheduler at {address}: "
    )


def test_distributed_is_imported_only_when_a_call_goes_to_dask():
    code = """
import json, sys
import plait
from plait.testing import memory_config
config = memory_config(executors={"dask": {"address": "tcp://127.0.0.1:1"}})
run = plait.run_sync(
    {"name": "w", "steps": [{"id": "a", "tool": "math.sum", "with": {"values": [1, 2]}}]},
    config=config,
)
print(json.dumps([run.status, "plait.executors.dask" in sys.modules, "distributed" in sys.modules]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["succeeded", True, False]
