"""plait.run reuses what does not change between calls (issue 10): the plugin manager, its
registries, the template engine and compiled workflows, per configuration and plugin list."""

from __future__ import annotations

import types

import anyio
import pytest

import plait
from plait.config import HostConfig
from plait.host.compose import engine_parts

pytestmark = pytest.mark.anyio

CONFIG = HostConfig.model_validate(
    {"host": {"data_dir": ":memory:"}, "plugins": {"entry_points": False}}
)
TWO = {
    "name": "two",
    "inputs": {"type": "object", "properties": {"n": {"type": "integer"}}},
    "steps": [{"id": "a", "transform": "${inputs.n + 1}"}, {"id": "b", "transform": 2}],
    "outputs": {"a": "${steps.a.output}"},
}


def _counting_plugin(counts: dict[str, int]) -> types.SimpleNamespace:
    @plait.hookimpl
    def register_tools(register):
        counts["registered"] = counts.get("registered", 0) + 1

        def echo(value: int) -> int:
            return value

        register(echo, "count.echo")

    return types.SimpleNamespace(__name__="counting", register_tools=register_tools)


async def test_calls_share_plugins_and_compiled_workflows():
    counts: dict[str, int] = {}
    plugin = _counting_plugin(counts)
    runs = [await plait.run(TWO, {"n": n}, config=CONFIG, plugins=[plugin]) for n in range(5)]
    assert [r.outputs for r in runs] == [{"a": n + 1} for n in range(5)]
    assert counts["registered"] == 1, "the plugins were loaded again for a later call"
    parts = engine_parts(CONFIG, [plugin])
    assert len(parts._compiled) == 1  # one definition, compiled once
    changed = dict(TWO, steps=[{"id": "a", "transform": "${inputs.n * 10}"}])
    assert (await plait.run(changed, {"n": 2}, config=CONFIG, plugins=[plugin])).outputs == {
        "a": 20
    }
    assert len(parts._compiled) == 2  # new content, compiled anew


async def test_another_configuration_gets_parts_of_its_own():
    counts: dict[str, int] = {}
    plugin = _counting_plugin(counts)
    other = CONFIG.model_copy(update={"limits": CONFIG.limits.model_copy(update={"max_batch": 7})})
    await plait.run(TWO, {"n": 1}, config=CONFIG, plugins=[plugin])
    await plait.run(TWO, {"n": 1}, config=other, plugins=[plugin])
    assert counts["registered"] == 2
    assert engine_parts(CONFIG, [plugin]) is not engine_parts(other, [plugin])


async def test_each_call_has_its_own_runs():
    """Shared parts, not a shared engine: one call's runs are not another's."""
    first, second = await plait.run(TWO, {"n": 1}, config=CONFIG), None
    async with anyio.create_task_group() as tg:

        async def go() -> None:
            nonlocal second
            second = await plait.run(TWO, {"n": 2}, config=CONFIG)

        tg.start_soon(go)
    assert second is not None and first.id != second.id
    assert (first.outputs, second.outputs) == ({"a": 2}, {"a": 3})


async def test_many_calls_at_once_all_finish():
    results = []

    async def one(n: int) -> None:
        results.append((n, await plait.run(TWO, {"n": n}, config=CONFIG)))

    async with anyio.create_task_group() as tg:
        for n in range(200):
            tg.start_soon(one, n)
    assert sorted((n, r.outputs["a"]) for n, r in results) == [(n, n + 1) for n in range(200)]
