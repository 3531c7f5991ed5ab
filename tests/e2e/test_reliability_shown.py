"""Reliability items shown through a real ``plait serve`` (docs/reliability.md §37, §39, §46).

Every host here is a real ``python -m plait.cli serve --port 0`` subprocess, loading the test's
own plugin module through ``[plugins] modules`` where a test needs tools of its own:

* §37: a render that rebuilds a big value again and again stays within a bounded peak of
  memory (the host's ``VmHWM``, its peak resident size, read from ``/proc``: a fresh process,
  so no earlier peak hides growth below it); values kept alive together are bounded too; and
  another connection's ``ping`` is answered in under 500 ms while a heavy render runs;
* §39: a run's templates see the ``env`` variables that ``[env] allow`` lists and no other, and
  nothing of the host (objects, configuration, token) or of Python's internals: each reach is
  refused with a clear error, never the data;
* §46: a tool registered ``cacheable=False`` is called for real on every run even when its step
  asks for ``cache: true`` or ``cache: {ttl: 60}``, while a cacheable tool on the same host is
  served from the cache.

"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect

from .host_process import HostProcess as Serve

# Timing-sensitive (pings under 500 ms) or CPU-heavy: `make test` runs these after the rest,
# on their own, so nothing else loads the machine while they measure.
pytestmark = [pytest.mark.anyio, pytest.mark.timing]

MIB = 1024 * 1024


def proc_kib(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` size field (``VmHWM``, ``VmRSS``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


needs_proc = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads the host's peak memory from /proc"
)


async def run_to_end(serve: Serve, workflow: str, inputs: dict[str, Any] | None = None) -> dict:
    started = await serve.call("runs/start", {"workflow": workflow, "inputs": inputs or {}})
    return await serve.wait_run(started["runId"], timeout=60)


def ended_within_limits(run: dict[str, Any]) -> bool:
    """Succeeded, or failed on a template limit (either way the render was bounded)."""
    if run["status"] == "succeeded":
        return True
    return run["status"] == "failed" and run["error"]["type"] == "template_limit"


# -- §37 template limits: memory and the event loop -----------------------------------------------

TINY = """\
name: tiny
steps:
  - {id: t, transform: "${ 'x' * 10 }"}
outputs: {t: "${steps.t.output}"}
"""

REBUILD = """\
name: rebuild
steps:
  - id: build
    transform: >-
      {% for i in range(100000) %}{% set s = 'a' * 1000000 %}{% set n = s|length %}{% endfor %}ok
outputs: {out: "${steps.build.output}"}
"""

KEPT = (
    'name: kept\nsteps:\n  - id: build\n    transform: "'
    + "".join(f"{{% set v{i} = '{chr(97 + i % 26)}' * 1000000 %}}" for i in range(200))
    + 'done"\noutputs: {out: "${steps.build.output}"}\n'
)
"""200 distinct strings of 1,000,000 characters, each under the output limit, all alive at once."""

HEAVY = """\
name: heavy
steps:
  - id: spin
    transform: >-
      {% for i in range(100000) %}{% set s = 'ab' * 500000 %}{% set n = s.count('a') %}{% endfor %}x
outputs: {out: "${steps.spin.output}"}
"""
"""A render that runs into its 2 s wall-time limit, computing the whole time."""

PEAK_BOUND = 64 * MIB
"""What one render may add to the host's peak memory: a few times the 1 MiB output limit."""


@pytest.fixture
def memory_host(tmp_path: Path):
    host = Serve(tmp_path, workflows={"tiny": TINY, "rebuild": REBUILD, "kept": KEPT})
    host.start()
    yield host
    host.stop()


async def peak_growth(serve: Serve, workflow: str, times: int) -> tuple[int, list[dict]]:
    """Bytes the host's peak resident size grew by over ``times`` runs of ``workflow``."""
    assert serve.process is not None
    pid = serve.process.pid
    assert (await run_to_end(serve, "tiny"))["status"] == "succeeded"  # templates warmed up
    before = proc_kib(pid, "VmHWM")
    runs = [await run_to_end(serve, workflow) for _ in range(times)]
    return (proc_kib(pid, "VmHWM") - before) * 1024, runs


@needs_proc
async def test_a_render_rebuilding_a_big_value_in_a_loop_keeps_memory_bounded(memory_host):
    growth, runs = await peak_growth(memory_host, "rebuild", 3)
    assert all(ended_within_limits(run) for run in runs), [r["error"] for r in runs]
    assert growth < PEAK_BOUND, f"peak grew by {growth / MIB:.0f} MiB"
    # and the host serves on
    assert (await run_to_end(memory_host, "tiny"))["outputs"] == {"t": "x" * 10}


@needs_proc
async def test_values_kept_alive_together_in_one_render_keep_memory_bounded(memory_host):
    growth, runs = await peak_growth(memory_host, "kept", 1)
    assert ended_within_limits(runs[0]), runs[0]["error"]
    assert growth < PEAK_BOUND, f"peak grew by {growth / MIB:.0f} MiB"


async def test_another_connection_is_served_during_a_heavy_render(tmp_path):
    serve = Serve(tmp_path, workflows={"heavy": HEAVY})
    serve.start()
    try:
        headers = {"Authorization": f"Bearer {serve.token}"}
        pings: list[float] = []
        async with connect(serve.url, additional_headers=headers, proxy=None) as pinger:

            async def ping_for(seconds: float) -> None:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    n = len(pings) + 1
                    sent = time.perf_counter()
                    await pinger.send(json.dumps({"jsonrpc": "2.0", "id": n, "method": "ping"}))
                    with anyio.fail_after(10):
                        reply = json.loads(await pinger.recv())
                    assert reply == {"jsonrpc": "2.0", "id": n, "result": {}}
                    pings.append(time.perf_counter() - sent)
                    await anyio.sleep(0.02)

            async with anyio.create_task_group() as tg:
                tg.start_soon(ping_for, 3.0)  # pinging before, during and after the render
                await anyio.sleep(0.3)
                started = await serve.call("runs/start", {"workflow": "heavy"})
            run = await serve.wait_run(started["runId"])
        assert run["status"] == "failed" and run["error"]["type"] == "template_limit", run
        assert max(pings) < 0.5, f"a ping waited {max(pings):.2f} s"
    finally:
        serve.stop()


# -- §39 what a template can see -------------------------------------------------------------------

SECRET = "s3cr3t-value-that-must-not-leak"
ALLOWED = "allowed-value-for-templates"
ENV = {"RELTEST_SECRET": SECRET, "RELTEST_ALLOWED": ALLOWED}

ENV_WORKFLOW = """\
name: envs
steps:
  - {id: allowed, transform: "${env.RELTEST_ALLOWED}"}
  - {id: names, transform: "${env.keys() | list | sort}"}
  - {id: whole, transform: "${env}"}
  - {id: secret, transform: "${env.RELTEST_SECRET}", on_error: continue}
  - {id: unset, transform: "${env.RELTEST_UNSET}", on_error: continue}
outputs:
  allowed: "${steps.allowed.output}"
  names: "${steps.names.output}"
  whole: "${steps.whole.output}"
"""

REFUSED_AT_RUN = [
    "${run.__class__}",
    "${run.id.__class__.__mro__}",
    "${inputs.__class__.__subclasses__()}",
    "${steps.first.__class__}",
    "${steps.first.output.__class__}",
    "${cycler.__init__.__globals__}",
    "${joiner.__init__.__globals__}",
    "${namespace.__init__.__globals__}",
    "${lipsum.__globals__}",
    "${range.__globals__}",
    "${dict.__base__}",
    "${run | attr('__class__')}",
    "${'{0.__class__}'.format(run)}",
    "${'%s' % run.__class__}",
    "${namespace(a=1).__dict__}",
    "${cycler('a').__class__}",
    "${inputs.pop('x')}",
    "${vars.__class__}",
    "${env.__class__}",
]
"""Expressions that compile and must fail their step with a security error."""

REFUSED_AT_COMPILE = {
    "${self}": "self",
    "${config}": "config",
    "${request}": "request",
    "${os}": "os",
    "${__builtins__}": "__builtins__",
    "${host}": "host",
    "${engine}": "engine",
    "${token}": "token",
    "${context}": "context",
    "${environment}": "environment",
    "${steps.__dict__}": "__dict__",
    "${steps.__class__}": "__class__",
}
"""Expressions refused when the workflow is put, with the name they reached for."""

NOT_JSON = ["${cycler}", "${joiner()}", "${namespace()}", "${lipsum}", "${range}", "${dict}"]
"""Globals that exist but are no JSON value: the step fails, showing nothing of them."""


def probe_workflow(name: str, expression: str) -> dict[str, Any]:
    return {
        "name": name,
        "inputs": {"type": "object", "properties": {"x": {"type": "integer"}}},
        "steps": [
            {"id": "first", "transform": {"n": 1}},
            {"id": "probe", "transform": expression, "needs": ["first"]},
        ],
        "outputs": {"o": "${steps.probe.output}"},
    }


@pytest.fixture
def context_host(tmp_path: Path):
    host = Serve(
        tmp_path,
        workflows={"envs": ENV_WORKFLOW},
        config='[env]\nallow = ["RELTEST_ALLOWED", "RELTEST_UNSET"]\n',
        env=ENV,
    )
    host.start()
    yield host
    host.stop()


def assert_nothing_leaks(serve: Serve, text: str) -> None:
    for forbidden in (SECRET, serve.token, "HostConfig", "plait.toml", " object at 0x"):
        assert forbidden not in text, (forbidden, text[:2000])


async def test_env_holds_only_what_env_allow_lists(context_host):
    serve = context_host
    started = await serve.call("runs/start", {"workflow": "envs"})
    run = await serve.wait_run(started["runId"])
    assert run["status"] == "succeeded", run
    assert run["outputs"] == {
        "allowed": ALLOWED,
        "names": ["RELTEST_ALLOWED"],  # allowed but unset: absent; set but not allowed: absent
        "whole": {"RELTEST_ALLOWED": ALLOWED},
    }
    for step in ("secret", "unset"):
        error = run["steps"][step]["error"]
        assert error["type"] == "template", error
        assert "RELTEST_" in error["message"] and "undefined" in error["message"], error
    events = (await serve.call("runs/events", {"runId": started["runId"]}))["events"]
    assert_nothing_leaks(serve, json.dumps(run) + json.dumps(events))


async def test_no_host_object_config_token_or_python_internals_reach_a_template(context_host):
    serve = context_host
    for n, expression in enumerate(REFUSED_AT_RUN):
        await serve.call("workflows/put", {"definition": probe_workflow(f"run{n}", expression)})
        run = await run_to_end(serve, f"run{n}", {"x": 1})
        assert run["status"] == "failed", (expression, run["outputs"])
        error = run["steps"]["probe"]["error"]
        assert error["type"] == "template_security", (expression, error)
        assert "is unsafe" in error["message"] and "'probe'" in error["message"], error
        assert_nothing_leaks(serve, json.dumps(run))

    for n, (expression, name) in enumerate(REFUSED_AT_COMPILE.items()):
        reply = await serve.request(
            "workflows/put", {"definition": probe_workflow(f"compile{n}", expression)}
        )
        assert "error" in reply, (expression, reply)
        text = json.dumps(reply["error"])
        assert name in text and "steps[1].transform" in text, (expression, text)
        assert_nothing_leaks(serve, text)
        missing = await serve.request("runs/start", {"workflow": f"compile{n}"})
        assert "error" in missing, (expression, missing)  # never registered

    for n, expression in enumerate(NOT_JSON):
        await serve.call("workflows/put", {"definition": probe_workflow(f"json{n}", expression)})
        run = await run_to_end(serve, f"json{n}", {"x": 1})
        assert run["status"] == "failed", (expression, run["outputs"])
        error = run["steps"]["probe"]["error"]
        assert error["type"] == "template", (expression, error)
        assert "not a JSON value" in error["message"], (expression, error)
        assert_nothing_leaks(serve, json.dumps(run))

    # What a run does see holds nothing of the host either.
    await serve.call("workflows/put", {"definition": probe_workflow("seen", "${run}")})
    run = await run_to_end(serve, "seen", {"x": 1})
    assert run["status"] == "succeeded", run
    seen = run["outputs"]["o"]
    assert set(seen) == {"id", "workflow", "version", "started_at", "parent_id"}, seen
    assert all(isinstance(v, str | int | float | None) for v in seen.values()), seen
    assert_nothing_leaks(serve, json.dumps(run))
    assert (await serve.call("ping")) == {}  # and the host serves on


async def test_a_template_of_the_whole_steps_root_is_a_json_copy(context_host):
    serve = context_host
    await serve.call("workflows/put", {"definition": probe_workflow("whole", "${steps}")})
    run = await run_to_end(serve, "whole", {"x": 1})
    assert run["status"] == "succeeded", run
    assert "unserializable" not in run["outputs"], run["outputs"]
    assert run["outputs"]["o"]["first"]["output"] == {"n": 1}, run["outputs"]
    assert "not JSON" not in serve.stderr()


# -- §46 cacheable=False is never cached -----------------------------------------------------------

CACHE_PLUGIN = '''\
"""Test tools that count their real calls in a file (one line per call)."""

import os

import plait


def _count(name: str) -> None:
    with open(os.environ["RELTEST_CALLS"], "a", encoding="utf-8") as fh:
        fh.write(name + "\\n")


def side(x: int) -> int:
    _count("side")
    return x * 2


def pure(x: int) -> int:
    _count("pure")
    return x * 2


@plait.hookimpl
def register_tools(register):
    register(side, "rel.side", cacheable=False, blocking=False)
    register(pure, "rel.pure", blocking=False)
'''


def cache_workflow(name: str, tool: str, cache: Any) -> str:
    return (
        f"name: {name}\nsteps:\n"
        f"  - {{id: call, tool: {tool}, with: {{x: 21}}, cache: {json.dumps(cache)}}}\n"
        'outputs: {y: "${steps.call.output}"}\n'
    )


async def test_a_tool_registered_cacheable_false_is_never_served_from_the_cache(tmp_path):
    calls = tmp_path / "calls.txt"
    serve = Serve(
        tmp_path,
        plugin=CACHE_PLUGIN,
        workflows={
            "side_true": cache_workflow("side_true", "rel.side", True),
            "side_ttl": cache_workflow("side_ttl", "rel.side", {"ttl": 60}),
            "pure_true": cache_workflow("pure_true", "rel.pure", True),
        },
        env={"RELTEST_CALLS": str(calls)},
    )
    serve.start()
    try:

        def count(name: str) -> int:
            lines = calls.read_text().splitlines() if calls.exists() else []
            return lines.count(name)

        async def twice(workflow: str) -> list[list[str]]:
            kinds = []
            for _ in range(2):
                started = await serve.call("runs/start", {"workflow": workflow})
                run = await serve.wait_run(started["runId"])
                assert run["status"] == "succeeded" and run["outputs"] == {"y": 42}, run
                events = await serve.call("runs/events", {"runId": started["runId"]})
                kinds.append([e["type"] for e in events["events"]])
            return kinds

        # The control: the cache is on, and serves a cacheable tool's second call.
        pure = await twice("pure_true")
        assert count("pure") == 1
        assert "step.cached" in pure[1]

        for workflow in ("side_true", "side_ttl"):
            before = count("side")
            kinds = await twice(workflow)
            assert count("side") == before + 2, workflow  # both runs called the tool
            assert not any("step.cached" in k for k in kinds), (workflow, kinds)
        assert count("side") == 4
    finally:
        serve.stop()
    assert calls.read_text().splitlines().count("side") == 4
