"""The plugin manager: built-ins and third parties load one way, fail alone, and can be blocked.

Covers docs/reliability.md §56-§60 through the public API: import and registration failures are
recorded and skipped, hooks that raise fail only themselves, blocking by name, entry points of a
fake distribution on ``sys.path``, step types and tools of plugins in real runs, observer and
customisation hooks, and the guard that every hook is documented in the README.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import anyio
import pytest

import plait
from plait.plugins import (
    DEFAULT_PLUGINS,
    StepConfig,
    StepType,
    create_plugin_manager,
    hookspecs,
)

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------
# Helpers: small plugins built from functions, and step types they register
# --------------------------------------------------------------------------------------------


def plugin(name, *hooks, **attrs):
    """A plugin object named ``name`` whose hooks are the given ``@plait.hookimpl`` functions."""
    return types.SimpleNamespace(__name__=name, **{h.__name__: h for h in hooks}, **attrs)


def wf(*steps, **extra):
    return {"name": "t", "steps": list(steps), **extra}


def failures_of(pm, name):
    return [f for f in pm.failures if f.plugin == name]


class Shout(StepType):
    key = "shout"

    class Config(StepConfig):
        shout: str

    async def run(self, ctx, config):
        return config.shout.upper()


def shout_plugin(name="shouter"):
    @plait.hookimpl
    def register_step_types(register):
        register(Shout)

    return plugin(name, register_step_types)


class Boom(StepType):
    """Raises a ``ValueError`` when ``boom`` is true, else returns ``"calm"``."""

    key = "boom"

    class Config(StepConfig):
        boom: bool

    async def run(self, ctx, config):
        if config.boom:
            raise ValueError("kaboom")
        return "calm"


class SetOutput(StepType):
    key = "setout"

    class Config(StepConfig):
        setout: int

    async def run(self, ctx, config):
        return {1, 2, config.setout}


class FakeTool(StepType):
    """Claims the built-in ``tool`` key."""

    key = "tool"

    class Config(StepConfig):
        tool: str

    async def run(self, ctx, config):
        return f"replaced {config.tool}"


def step_types_plugin(name, *classes):
    @plait.hookimpl
    def register_step_types(register):
        for cls in classes:
            register(cls)

    return plugin(name, register_step_types)


# --------------------------------------------------------------------------------------------
# 1. Built-ins load through the same path as third parties
# --------------------------------------------------------------------------------------------


def test_builtins_load_without_failures_and_are_listed():
    pm = create_plugin_manager(entry_points=False)
    info = {p.name: p for p in pm.info()}
    assert pm.failures == []
    assert set(DEFAULT_PLUGINS) <= set(info)
    for name in DEFAULT_PLUGINS:
        assert pm.get_plugin(name) is not None, f"{name} is not registered"
        assert info[name].builtin, f"{name} is not listed as built-in"
        contributed = (
            info[name].step_types
            + info[name].tools
            + info[name].agent_providers
            + info[name].executor_providers
        )
        assert contributed, f"built-in {name} contributes nothing"
    assert info["plait.steps.tool"].step_types == ["tool"]
    assert info["plait.steps.delay"].step_types == ["delay"]
    assert info["plait.agents.scripted"].agent_providers == ["scripted"]
    assert info["plait.executors.dask"].executor_providers == ["dask"]
    assert {"files.read", "math.sum"} <= set(info["plait.steps.stdtools"].tools)
    # Each contribution is owned by the plugin the listing names.
    regs = pm.registries
    assert regs.step_types.owner("tool") == "plait.steps.tool"
    assert regs.tools.owner("math.sum") == "plait.steps.stdtools"
    assert regs.agent_providers.owner("scripted") == "plait.agents.scripted"
    # The listing is JSON-ready for `plait plugins --json`.
    json.dumps([p.to_dict() for p in pm.info()])


def test_builtins_are_listed_before_third_parties():
    pm = create_plugin_manager(entry_points=False, extra=[shout_plugin("aaa_first_by_name")])
    names = [p.name for p in pm.info()]
    assert names[-1] == "aaa_first_by_name"
    third = next(p for p in pm.info() if p.name == "aaa_first_by_name")
    assert not third.builtin
    assert third.step_types == ["shout"]


# --------------------------------------------------------------------------------------------
# 2. Blocking by name (docs/reliability.md §60)
# --------------------------------------------------------------------------------------------


def test_blocked_builtin_is_not_loaded_and_its_step_type_is_unknown():
    pm = create_plugin_manager(entry_points=False, blocked=["plait.steps.delay"])
    assert pm.failures == []
    assert "delay" not in pm.registries.step_types
    assert "tool" in pm.registries.step_types
    assert "plait.steps.delay" not in {p.name for p in pm.info()}
    assert pm.is_blocked("plait.steps.delay")

    with pytest.raises(plait.DefinitionError) as caught:
        plait.Engine(pm).compile(wf({"id": "wait_a_bit", "delay": 1}))
    message = str(caught.value)
    assert "unknown step type" in message
    known = message.split("known types:", 1)[1]
    assert "tool" in known and "transform" in known
    assert "delay" not in known


async def test_plait_run_blocks_plugins_named_in_host_config():
    config = plait.HostConfig.model_validate(
        {"plugins": {"disabled": ["plait.steps.delay"], "entry_points": False}}
    )
    run = await plait.run(wf({"id": "a", "transform": 1}), config=config)
    assert run.status == "succeeded"
    with pytest.raises(plait.DefinitionError, match="unknown step type"):
        await plait.run(wf({"id": "a", "delay": 0}), config=config)


def test_blocked_extra_plugin_is_not_registered():
    pm = create_plugin_manager(entry_points=False, blocked=["shouter"], extra=[shout_plugin()])
    assert pm.get_plugin("shouter") is None
    assert "shout" not in pm.registries.step_types
    assert pm.failures == []


# --------------------------------------------------------------------------------------------
# 3. Isolation (docs/reliability.md §56-§57)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder on ``sys.path`` for plugin modules; imported modules are forgotten afterwards."""
    monkeypatch.syspath_prepend(tmp_path)
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith(("plugmod_", "fakeplug_")):
            del sys.modules[name]


@pytest.mark.parametrize(
    "body",
    [
        "raise RuntimeError('cannot start')",
        "import a_module_that_is_not_there_at_all",
        "raise SystemExit(3)",
        "raise KeyboardInterrupt",
        "def broken(:\n    pass",
    ],
    ids=["runtime-error", "missing-import", "system-exit", "keyboard-interrupt", "syntax-error"],
)
def test_plugin_that_fails_to_import_is_recorded_and_others_load(plugin_dir, body):
    (plugin_dir / "plugmod_bad.py").write_text(body + "\n")
    (plugin_dir / "plugmod_good.py").write_text(
        textwrap.dedent("""
        import plait
        from plait.plugins import StepConfig, StepType

        class Hush(StepType):
            key = "hush"
            class Config(StepConfig):
                hush: str
            async def run(self, ctx, config):
                return config.hush.lower()

        @plait.hookimpl
        def register_step_types(register):
            register(Hush)
    """)
    )
    pm = create_plugin_manager(
        entry_points=False,
        builtins=[*DEFAULT_PLUGINS[:3], "plugmod_bad", "plugmod_good", *DEFAULT_PLUGINS[3:]],
    )
    [failure] = pm.failures
    assert failure.plugin == "plugmod_bad"
    assert failure.stage == "import"
    assert failure.error  # says what happened
    assert failure.entry_point is None
    assert pm.get_plugin("plugmod_bad") is None
    assert "plugmod_bad" not in {p.name for p in pm.info()}
    steps = pm.registries.step_types
    assert {"hush", "tool", "delay", "wait"} <= set(steps)
    json.dumps([f.to_dict() for f in pm.failures])


def test_load_module_records_import_failure_and_returns_false(plugin_dir):
    (plugin_dir / "plugmod_late.py").write_text("raise ImportError('needs libfoo')\n")
    pm = create_plugin_manager(entry_points=False)
    assert pm.load_module("plugmod_late") is False
    assert pm.load_module("plait.steps.delay") is False  # already registered: refused
    [late] = failures_of(pm, "plugmod_late")
    assert late.stage == "import"
    assert "needs libfoo" in late.error
    [twice] = failures_of(pm, "plait.steps.delay")
    assert twice.stage == "register"
    assert "delay" in pm.registries.step_types


@pytest.mark.parametrize(
    "exc",
    [RuntimeError("registry on fire"), SystemExit(2), KeyboardInterrupt()],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("hook", ["register_step_types", "register_tools", "register_agents"])
def test_registration_hook_that_raises_fails_only_its_plugin(exc, hook):
    def raising(register):
        raise exc

    raising.__name__ = hook
    bad = plugin("raiser", plait.hookimpl(raising))
    pm = create_plugin_manager(entry_points=False, extra=[bad, shout_plugin()])
    regs = pm.registries
    [failure] = pm.failures
    assert failure.plugin == "raiser"
    assert failure.stage == hook
    assert type(exc).__name__ in failure.error
    # Everyone else's contributions are still there, built-ins and the plugin after it.
    assert {"tool", "transform", "delay", "shout"} <= set(regs.step_types)
    assert {"files.read", "math.sum"} <= set(regs.tools)
    assert "scripted" in regs.agent_providers
    assert "shouter" in {p.name for p in pm.info()}


async def test_host_keeps_running_workflows_after_a_registration_hook_raised():
    @plait.hookimpl
    def register_step_types(register):
        raise SystemExit(1)

    pm = create_plugin_manager(
        entry_points=False, extra=[plugin("quitter", register_step_types), shout_plugin()]
    )
    run = await plait.run(wf({"id": "a", "shout": "still here"}), pm=pm)
    assert run.status == "succeeded"
    assert run.steps["a"].output == "STILL HERE"
    assert [f.plugin for f in pm.failures] == ["quitter"]


def test_hookimpl_with_invalid_signature_is_reported_at_register():
    @plait.hookimpl
    def register_tools(register, bogus):
        register(lambda: 1, "never.registered")

    pm = create_plugin_manager(
        entry_points=False, extra=[plugin("badsig", register_tools), shout_plugin()]
    )
    [failure] = pm.failures
    assert failure.plugin == "badsig"
    assert failure.stage == "register"
    assert "bogus" in failure.error
    assert pm.get_plugin("badsig") is None
    assert "never.registered" not in pm.registries.tools
    assert {"tool", "shout"} <= set(pm.registries.step_types)


def test_hookimpl_for_unknown_hook_is_reported_at_register():
    @plait.hookimpl
    def register_tool(register):  # typo: the hook is register_tools
        raise AssertionError("never called")

    pm = create_plugin_manager(
        entry_points=False, extra=[plugin("typo", register_tool), shout_plugin()]
    )
    [failure] = pm.failures
    assert failure.plugin == "typo"
    assert failure.stage == "register"
    assert "register_tool" in failure.error
    assert pm.get_plugin("typo") is None
    assert "shout" in pm.registries.step_types


def test_every_plugin_with_an_unknown_hook_is_reported():
    @plait.hookimpl
    def register_tool(register):
        pass

    @plait.hookimpl
    def step_finish(run, step):
        pass

    pm = create_plugin_manager(
        entry_points=False, extra=[plugin("typo_a", register_tool), plugin("typo_b", step_finish)]
    )
    assert sorted(f.plugin for f in pm.failures) == ["typo_a", "typo_b"]
    assert pm.get_plugin("typo_b") is None
    pm.check_pending()  # nothing unverified is left registered


def test_duplicate_step_type_key_is_refused_naming_both_plugins():
    pm = create_plugin_manager(
        entry_points=False, extra=[step_types_plugin("impostor", FakeTool, Shout)]
    )
    steps = pm.registries.step_types
    [failure] = pm.failures
    assert failure.plugin == "impostor"
    assert failure.stage == "register_step_types"
    assert "PluginError" in failure.error
    assert "'impostor'" in failure.error and "'plait.steps.tool'" in failure.error
    assert "replace=True" in failure.error
    assert steps["tool"] is not FakeTool
    assert steps.owner("tool") == "plait.steps.tool"


def test_duplicate_tool_name_is_refused_and_builtin_stays():
    def fake_sum(values: list) -> str:
        return "fake"

    @plait.hookimpl
    def register_tools(register):
        register(fake_sum, "math.sum", blocking=False)

    pm = create_plugin_manager(entry_points=False, extra=[plugin("tool_thief", register_tools)])
    tools = pm.registries.tools
    [failure] = pm.failures
    assert failure.stage == "register_tools"
    assert "'tool_thief'" in failure.error and "'plait.steps.stdtools'" in failure.error
    assert tools.owner("math.sum") == "plait.steps.stdtools"


async def test_replace_true_overrides_a_builtin_step_type():
    @plait.hookimpl
    def register_step_types(register):
        register(FakeTool, replace=True)

    pm = create_plugin_manager(entry_points=False, extra=[plugin("override", register_step_types)])
    steps = pm.registries.step_types
    assert pm.failures == []
    assert steps["tool"] is FakeTool
    assert steps.owner("tool") == "override"
    info = {p.name: p for p in pm.info()}
    assert info["override"].step_types == ["tool"]
    assert info["plait.steps.tool"].step_types == []
    run = await plait.run(wf({"id": "a", "tool": "anything"}), pm=pm)
    assert run.status == "succeeded"
    assert run.steps["a"].output == "replaced anything"


def test_register_rejects_what_is_not_a_step_type():
    class NoConfig(StepType):
        key = "noconfig"

        async def run(self, ctx, config):
            return None

    @plait.hookimpl
    def register_step_types(register):
        register(NoConfig)

    @plait.hookimpl
    def register_agents(register):
        register(object())

    pm = create_plugin_manager(
        entry_points=False,
        extra=[
            plugin("noconfig_plugin", register_step_types),
            plugin("bad_agent", register_agents),
        ],
    )
    _ = pm.registries  # building the registries calls the hooks and records failures
    by_plugin = {f.plugin: f for f in pm.failures}
    assert "no Config model" in by_plugin["noconfig_plugin"].error
    assert "create()" in by_plugin["bad_agent"].error
    assert "noconfig" not in pm.registries.step_types


def test_registries_follow_plugins_blocked_or_loaded_after_first_use():
    pm = create_plugin_manager(
        entry_points=False, builtins=["plait.steps.tool", "plait.steps.delay"]
    )
    assert "delay" in pm.registries.step_types
    pm.set_blocked("plait.steps.delay")
    assert pm.load_module("plait.steps.transform", builtin=True)
    steps = pm.registries.step_types
    assert "delay" not in steps
    assert "transform" in steps


# --------------------------------------------------------------------------------------------
# 4. Entry points of a fake distribution on sys.path
# --------------------------------------------------------------------------------------------

FAKE_MODULE = '''
import plait
from plait.plugins import StepConfig, StepType


class Reverse(StepType):
    key = "fake_reverse"

    class Config(StepConfig):
        fake_reverse: str

    async def run(self, ctx, config):
        return config.fake_reverse[::-1]


def mul(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


@plait.hookimpl
def register_step_types(register):
    register(Reverse)


@plait.hookimpl
def register_tools(register):
    register(mul, "fake.mul", blocking=False)
'''


def make_distribution(root, name, version, entry_points, modules):
    """A distribution's metadata and modules in ``root``, as if pip had installed it there."""
    info = root / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[plait]\n{lines}")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)


@pytest.fixture
def fake_dist(plugin_dir):
    make_distribution(
        plugin_dir,
        "fakeplug",
        "1.0",
        {"fake": "fakeplug_mod", "broken": "does_not_exist_mod"},
        {"fakeplug_mod": FAKE_MODULE},
    )
    return plugin_dir


async def test_entry_point_plugin_loads_and_a_broken_one_is_recorded(fake_dist):
    pm = create_plugin_manager()
    info = {p.name: p for p in pm.info()}
    assert info["fake"].version == "1.0"
    assert not info["fake"].builtin
    assert info["fake"].step_types == ["fake_reverse"]
    assert info["fake"].tools == ["fake.mul"]
    [broken] = failures_of(pm, "broken")
    assert broken.stage == "import"
    assert broken.entry_point == "broken = does_not_exist_mod"
    assert "does_not_exist_mod" in broken.error
    assert "broken" not in info
    assert set(DEFAULT_PLUGINS) <= set(info)  # the built-ins loaded all the same

    run = await plait.run(
        wf(
            {"id": "rev", "fake_reverse": "${inputs.word}"},
            {"id": "mul", "tool": "fake.mul", "with": {"a": 6, "b": 7}},
            outputs={"rev": "${steps.rev.output}", "mul": "${steps.mul.output}"},
        ),
        {"word": "plait"},
        pm=pm,
    )
    assert run.status == "succeeded", run.error
    assert run.outputs == {"rev": "tialp", "mul": 42}


@pytest.mark.parametrize("name", ["fake", "fakeplug_mod"])
def test_entry_point_plugin_is_blocked_by_entry_point_or_module_name(fake_dist, name):
    pm = create_plugin_manager(blocked=[name])
    assert pm.get_plugin("fake") is None
    assert "fake" not in {p.name for p in pm.info()}
    assert "fake_reverse" not in pm.registries.step_types
    assert "fake.mul" not in pm.registries.tools
    assert not failures_of(pm, "fake")
    assert failures_of(pm, "broken")  # blocking one plugin does not hide the others' failures


def test_entry_points_are_skipped_when_disabled(fake_dist):
    pm = create_plugin_manager(entry_points=False)
    assert pm.get_plugin("fake") is None
    assert pm.failures == []


def test_entry_point_with_invalid_hookimpl_names_plugin_and_entry_point(plugin_dir):
    make_distribution(
        plugin_dir,
        "fakeplug-badsig",
        "2.5",
        {"badsig": "fakeplug_badsig"},
        {
            "fakeplug_badsig": textwrap.dedent("""
                          import plait

                          @plait.hookimpl
                          def register_tools(register, bogus):
                              pass
                      """)
        },
    )
    pm = create_plugin_manager()
    [failure] = failures_of(pm, "badsig")
    assert failure.stage == "register"
    assert failure.entry_point == "badsig = fakeplug_badsig"
    assert "bogus" in failure.error
    assert pm.get_plugin("badsig") is None
    assert "tool" in pm.registries.step_types


def test_entry_point_with_unknown_hook_is_reported_under_its_entry_point_name(plugin_dir):
    make_distribution(
        plugin_dir,
        "fakeplug-typo",
        "0.3",
        {"typo_ep": "fakeplug_typo"},
        {
            "fakeplug_typo": textwrap.dedent("""
                          import plait

                          @plait.hookimpl
                          def register_step_type(register):
                              pass
                      """)
        },
    )
    pm = create_plugin_manager()
    [failure] = failures_of(pm, "typo_ep")
    assert failure.stage == "register"
    assert "register_step_type" in failure.error
    assert pm.get_plugin("typo_ep") is None
    assert "typo_ep" not in {p.name for p in pm.info()}


# --------------------------------------------------------------------------------------------
# 5. Plugin code misbehaving at run time fails only its step (docs/reliability.md §57-§59)
# --------------------------------------------------------------------------------------------


async def test_step_type_that_raises_fails_its_step_naming_the_plugin():
    pm = create_plugin_manager(
        entry_points=False, extra=[step_types_plugin("boomplug", Boom, Shout)]
    )
    run = await plait.run(wf({"id": "a", "boom": True}), pm=pm)
    assert run.status == "failed"
    error = run.steps["a"].error
    assert run.steps["a"].status == "failed"
    assert "boomplug" in error["message"]
    assert "ValueError" in error["message"] and "kaboom" in error["message"]
    assert "boomplug" in run.error["message"]

    again = await plait.run(wf({"id": "a", "boom": False}, {"id": "b", "shout": "ok"}), pm=pm)
    assert again.status == "succeeded"
    assert again.steps["a"].output == "calm"
    assert again.steps["b"].output == "OK"


async def test_failing_plugin_step_does_not_stop_independent_steps_with_on_error_continue():
    pm = create_plugin_manager(
        entry_points=False, extra=[step_types_plugin("boomplug", Boom, Shout)]
    )
    run = await plait.run(
        wf({"id": "a", "boom": True, "on_error": "continue"}, {"id": "b", "shout": "fine"}), pm=pm
    )
    assert run.steps["a"].status == "failed"
    assert run.steps["b"].output == "FINE"


async def test_step_type_returning_non_json_fails_its_step_with_output_error():
    pm = create_plugin_manager(
        entry_points=False, extra=[step_types_plugin("setplug", SetOutput, Shout)]
    )
    run = await plait.run(wf({"id": "a", "setout": 3}), pm=pm)
    assert run.status == "failed"
    assert run.steps["a"].status == "failed"
    assert run.steps["a"].output is None
    error = run.steps["a"].error
    assert error["type"] == "output"
    assert "setout" in error["message"] and "set" in error["message"]
    json.dumps(run.to_dict(), allow_nan=False)  # run state stays serializable

    again = await plait.run(wf({"id": "b", "shout": "next"}), pm=pm)
    assert again.status == "succeeded"


async def test_tool_returning_non_json_fails_its_step_with_output_error(pm):
    run = await plait.run(wf({"id": "a", "tool": "probe.bad"}), pm=pm)
    assert run.status == "failed"
    assert run.steps["a"].error["type"] == "output"
    json.dumps(run.to_dict(), allow_nan=False)


async def test_blocking_sync_tool_does_not_stall_the_event_loop():
    def nap() -> str:
        time.sleep(0.5)
        return "rested"

    @plait.hookimpl
    def register_tools(register):
        register(nap, "sleepy.nap")  # a sync function: runs in a worker thread by default

    pm = create_plugin_manager(entry_points=False, extra=[plugin("sleepy", register_tools)])
    gaps = []
    result = {}

    async def tick(stop):
        last = time.monotonic()
        while not stop.is_set():
            await anyio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async def go(stop):
        try:
            result["run"] = await plait.run(wf({"id": "a", "tool": "sleepy.nap"}), pm=pm)
        finally:
            stop.set()

    stop = anyio.Event()
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(tick, stop)
        tg.start_soon(go, stop)
    assert result["run"].status == "succeeded"
    assert result["run"].steps["a"].output == "rested"
    assert time.monotonic() - started >= 0.5
    assert len(gaps) > 10
    assert max(gaps) < 0.2, f"event loop stalled for {max(gaps):.3f} s"


BASE_EXCEPTIONS_SCRIPT = """
import functools, json, types
import anyio, plait
from plait.plugins import StepConfig, StepType, create_plugin_manager

KINDS = {"exit": SystemExit, "interrupt": KeyboardInterrupt}

class Quit(StepType):
    key = "quit"
    class Config(StepConfig):
        quit: str
    async def run(self, ctx, config):
        raise KINDS[config.quit]("from plugin")

def quit_tool(how: str) -> str:
    raise KINDS[how]("from plugin")

@plait.hookimpl
def register_step_types(register):
    register(Quit)

@plait.hookimpl
def register_tools(register):
    register(quit_tool, "qt.inline", blocking=False)
    register(quit_tool, "qt.thread", blocking=True)

def observer(how, is_async):
    if is_async:
        @plait.hookimpl
        async def step_finished(run, step, outcome):
            await anyio.sleep(0)
            raise KINDS[how]("from observer")
    else:
        @plait.hookimpl
        def step_finished(run, step, outcome):
            raise KINDS[how]("from observer")
    return types.SimpleNamespace(__name__="watcher", step_finished=step_finished)

quitter = types.SimpleNamespace(__name__="quitter", register_step_types=register_step_types,
                                register_tools=register_tools)
plain = create_plugin_manager(entry_points=False, extra=[quitter])
transform = {"id": "a", "transform": 1}
cases = {
    f"{what}-{how}": (pm, step)
    for how in KINDS
    for what, pm, step in [
        ("step", plain, {"id": "a", "quit": how}),
        ("tool-inline", plain, {"id": "a", "tool": "qt.inline", "with": {"how": how}}),
        ("tool-thread", plain, {"id": "a", "tool": "qt.thread", "with": {"how": how}}),
        ("observer", create_plugin_manager(entry_points=False, extra=[observer(how, False)]),
         transform),
        ("async-observer", create_plugin_manager(entry_points=False,
                                                 extra=[observer(how, True)]), transform),
    ]
}

def run(pm, step):
    return anyio.run(functools.partial(plait.run, {"name": "t", "steps": [step]}, pm=pm))

def outcome(pm, step):
    try:
        done = run(pm, step)
    except BaseException as exc:
        return {"raised": type(exc).__name__}
    return {"status": done.status, "error": done.steps["a"].error}

out = {}
for label, (pm, step) in cases.items():
    out[label] = outcome(pm, step)
    out[label]["next_run"] = outcome(pm, transform).get("status")
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def base_exception_outcomes(tmp_path_factory):
    """Plugin code raising SystemExit/KeyboardInterrupt, in a child process (an escaping
    KeyboardInterrupt would end this pytest session): the outcome of each case by label."""
    proc = subprocess.run(
        [sys.executable, "-c", BASE_EXCEPTIONS_SCRIPT],
        cwd=tmp_path_factory.mktemp("base-exceptions"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-3000:]
    return json.loads(lines[-1])


@pytest.mark.parametrize("how", ["exit", "interrupt"])
@pytest.mark.parametrize(
    ("what", "named"),
    [
        ("step", "plugin 'quitter'"),
        ("tool-inline", "'qt.inline'"),
        ("tool-thread", "'qt.thread'"),
    ],
)
def test_systemexit_or_keyboardinterrupt_in_plugin_code_fails_only_its_step(
    base_exception_outcomes, what, named, how
):
    result = base_exception_outcomes[f"{what}-{how}"]
    assert result.get("status") == "failed", result
    assert named in result["error"]["message"], result
    assert {"exit": "SystemExit", "interrupt": "KeyboardInterrupt"}[how] in (
        result["error"]["message"]
    )
    assert result["next_run"] == "succeeded", result


@pytest.mark.parametrize("how", ["exit", "interrupt"])
@pytest.mark.parametrize(
    "what",
    [
        "observer",
        "async-observer",
    ],
)
def test_systemexit_or_keyboardinterrupt_in_an_observer_does_not_affect_the_run(
    base_exception_outcomes, what, how
):
    result = base_exception_outcomes[f"{what}-{how}"]
    assert result.get("status") == "succeeded", result
    assert result["next_run"] == "succeeded", result


# --------------------------------------------------------------------------------------------
# 6. Observer hooks
# --------------------------------------------------------------------------------------------


def recording_observer(name, calls):
    @plait.hookimpl
    def run_started(run):
        calls.append(("run_started", run.id, run.workflow))

    @plait.hookimpl
    def run_finished(run, outcome):
        calls.append(("run_finished", run.id, outcome, run.status))

    @plait.hookimpl
    def step_started(run, step):
        calls.append(("step_started", run.id, step))

    @plait.hookimpl
    def step_finished(run, step, outcome):
        calls.append(("step_finished", run.id, step, outcome))

    return plugin(name, run_started, run_finished, step_started, step_finished)


async def test_observers_see_run_and_step_lifecycle_with_right_arguments():
    calls = []
    pm = create_plugin_manager(entry_points=False, extra=[recording_observer("watcher", calls)])
    run = await plait.run(
        wf(
            {"id": "a", "transform": 1},
            {"id": "b", "transform": "${steps.a.output + 1}"},
            {"id": "c", "transform": 3, "when": "false"},
            name="observed",
        ),
        pm=pm,
    )
    assert run.status == "succeeded"
    assert calls[0] == ("run_started", run.id, "observed")
    assert calls[-1] == ("run_finished", run.id, "succeeded", "succeeded")
    middle = calls[1:-1]
    assert ("step_started", run.id, "a") in middle
    assert ("step_finished", run.id, "a", "succeeded") in middle
    assert ("step_finished", run.id, "b", "succeeded") in middle
    assert ("step_finished", run.id, "c", "skipped") in middle
    assert ("step_started", run.id, "c") not in middle
    assert (
        middle.index(("step_started", run.id, "a"))
        < middle.index(("step_finished", run.id, "a", "succeeded"))
        < middle.index(("step_started", run.id, "b"))
    )


async def test_observers_see_failed_outcomes():
    calls = []
    pm = create_plugin_manager(
        entry_points=False,
        extra=[recording_observer("watcher", calls), step_types_plugin("boomplug", Boom)],
    )
    run = await plait.run(wf({"id": "a", "boom": True}), pm=pm)
    assert run.status == "failed"
    assert ("step_finished", run.id, "a", "failed") in calls
    assert calls[-1] == ("run_finished", run.id, "failed", "failed")


@pytest.mark.parametrize(
    "exc",
    [RuntimeError("observer broke"), SystemExit(1), KeyboardInterrupt()],
    ids=lambda e: type(e).__name__,
)
async def test_observer_that_raises_does_not_affect_the_run(exc):
    calls = []

    @plait.hookimpl
    def step_finished(run, step, outcome):
        raise exc

    @plait.hookimpl
    def run_started(run):
        raise exc

    pm = create_plugin_manager(
        entry_points=False,
        extra=[plugin("clumsy", step_finished, run_started), recording_observer("watcher", calls)],
    )
    run = await plait.run(wf({"id": "a", "transform": 1}, {"id": "b", "transform": 2}), pm=pm)
    assert run.status == "succeeded"
    assert run.steps["a"].output == 1 and run.steps["b"].output == 2
    # The well-behaved observer still heard everything.
    assert ("step_finished", run.id, "b", "succeeded") in calls
    assert calls[-1][:3] == ("run_finished", run.id, "succeeded")


async def test_async_observers_are_awaited():
    seen = []
    done = anyio.Event()

    @plait.hookimpl
    async def run_started(run):
        await anyio.sleep(0.01)
        seen.append(("run_started", run.id))

    @plait.hookimpl
    async def step_finished(run, step, outcome):
        await anyio.sleep(0.01)
        seen.append(("step_finished", step, outcome))

    @plait.hookimpl
    async def run_finished(run, outcome):
        await anyio.sleep(0.01)
        seen.append(("run_finished", outcome))
        done.set()

    pm = create_plugin_manager(
        entry_points=False,
        extra=[plugin("async_watcher", run_started, step_finished, run_finished)],
    )
    engine = plait.Engine(pm)
    compiled = engine.register(wf({"id": "a", "transform": 1}))
    async with engine:
        run = await engine.start(compiled)
        await run.wait()
        with anyio.fail_after(2):
            await done.wait()
    assert run.status == "succeeded"
    assert ("run_started", run.id) in seen
    assert ("step_finished", "a", "succeeded") in seen
    assert ("run_finished", "succeeded") in seen


async def test_async_observer_that_raises_does_not_affect_the_run():
    @plait.hookimpl
    async def step_finished(run, step, outcome):
        await anyio.sleep(0)
        raise RuntimeError("async observer broke")

    pm = create_plugin_manager(entry_points=False, extra=[plugin("async_clumsy", step_finished)])
    engine = plait.Engine(pm)
    compiled = engine.register(wf({"id": "a", "transform": 1}, {"id": "b", "transform": 2}))
    async with engine:
        run = await engine.start(compiled)
        await run.wait()
        await anyio.sleep(0.05)  # let the observers fail in the engine's task group
    assert run.status == "succeeded"


async def test_async_run_finished_observer_is_awaited_by_plait_run():
    seen = []

    @plait.hookimpl
    async def run_finished(run, outcome):
        await anyio.sleep(0.01)
        seen.append(outcome)

    pm = create_plugin_manager(entry_points=False, extra=[plugin("notifier", run_finished)])
    run = await plait.run(wf({"id": "a", "transform": 1}), pm=pm)
    assert run.status == "succeeded"
    assert seen == ["succeeded"]


# --------------------------------------------------------------------------------------------
# 7. Customisation hooks
# --------------------------------------------------------------------------------------------


def shout_filter_plugin():
    @plait.hookimpl
    def prepare_jinja_environment(env):
        env.filters["shout"] = lambda s: str(s).upper() + "!"

    return plugin("shout_filter", prepare_jinja_environment)


async def test_prepare_jinja_environment_adds_a_filter_usable_in_templates():
    pm = create_plugin_manager(entry_points=False, extra=[shout_filter_plugin()])
    run = await plait.run(
        wf(
            {"id": "a", "transform": "${inputs.x | shout}"},
            {"id": "b", "transform": "say ${inputs.x | shout} twice"},
        ),
        {"x": "hi"},
        pm=pm,
    )
    assert run.status == "succeeded", run.error
    assert run.steps["a"].output == "HI!"
    assert run.steps["b"].output == "say HI! twice"


def test_unknown_filter_without_the_plugin_is_a_definition_error():
    pm = create_plugin_manager(entry_points=False)
    with pytest.raises(plait.DefinitionError, match="shout"):
        plait.Engine(pm).compile(wf({"id": "a", "transform": "${inputs.x | shout}"}))


async def test_prepare_jinja_environment_that_raises_leaves_templates_working():
    @plait.hookimpl
    def prepare_jinja_environment(env):
        raise RuntimeError("no filters today")

    pm = create_plugin_manager(
        entry_points=False,
        extra=[plugin("grumpy", prepare_jinja_environment), shout_filter_plugin()],
    )
    run = await plait.run(wf({"id": "a", "transform": "${inputs.x | shout}"}), {"x": "ok"}, pm=pm)
    assert run.steps["a"].output == "OK!"


SIMPLE_SOURCE = """#!simple
name: simple-demo
first = hello
second = world
"""


def simple_format_plugin(name="simple_format", calls=None):
    @plait.hookimpl
    def load_workflow(source, path):
        if calls is not None:
            calls.append(name)
        if not source.startswith("#!simple"):
            return None
        lines = [ln for ln in source.splitlines()[1:] if ln.strip()]
        wf_name = lines[0].split(":", 1)[1].strip()
        steps = []
        for line in lines[1:]:
            step_id, _, value = (p.strip() for p in line.partition("="))
            steps.append({"id": step_id, "transform": value})
        return {
            "name": wf_name,
            "steps": steps,
            "outputs": {s["id"]: f"${{steps.{s['id']}.output}}" for s in steps},
        }

    return plugin(name, load_workflow)


async def test_load_workflow_hook_reads_a_custom_format():
    pm = create_plugin_manager(entry_points=False, extra=[simple_format_plugin()])
    compiled = plait.Engine(pm).compile(SIMPLE_SOURCE)
    assert compiled.name == "simple-demo"
    assert [s.id for s in compiled.scope.steps] == ["first", "second"]

    run = await plait.run(SIMPLE_SOURCE, pm=pm)
    assert run.status == "succeeded"
    assert run.outputs == {"first": "hello", "second": "world"}


def test_load_workflow_hook_returning_none_falls_back_to_yaml(tmp_path):
    pm = create_plugin_manager(entry_points=False, extra=[simple_format_plugin()])
    engine = plait.Engine(pm)
    text = "name: plain-yaml\nsteps:\n  - {id: a, transform: 1}\n"
    assert engine.compile(text).name == "plain-yaml"
    path = tmp_path / "flow.yaml"
    path.write_text(text)
    assert engine.compile(str(path)).name == "plain-yaml"
    path.write_text(SIMPLE_SOURCE)
    assert engine.compile(str(path)).name == "simple-demo"


def test_without_the_plugin_the_custom_format_is_not_a_workflow():
    with pytest.raises(plait.DefinitionError):
        plait.Engine(create_plugin_manager(entry_points=False)).compile(SIMPLE_SOURCE)


def test_load_workflow_hook_that_raises_does_not_stop_other_formats():
    @plait.hookimpl
    def load_workflow(source, path):
        raise ValueError("cannot parse anything")

    pm = create_plugin_manager(
        entry_points=False, extra=[simple_format_plugin(), plugin("failing_format", load_workflow)]
    )
    assert plait.Engine(pm).compile(SIMPLE_SOURCE).name == "simple-demo"
    assert plait.Engine(pm).compile("name: y\nsteps: [{id: a, transform: 1}]\n").name == "y"


def test_load_workflow_stops_at_the_first_non_none_result():
    calls = []
    # pluggy calls the last registered implementation first.
    pm = create_plugin_manager(
        entry_points=False,
        extra=[simple_format_plugin("second", calls), simple_format_plugin("first", calls)],
    )
    assert plait.Engine(pm).compile(SIMPLE_SOURCE).name == "simple-demo"
    assert calls == ["first"]


# --------------------------------------------------------------------------------------------
# 8. Every hook is documented in the README, with its arguments in order
# --------------------------------------------------------------------------------------------


def hook_signatures():
    """``name(arg, ...)`` of every hookspec, from the specs module and from a manager."""
    specs = {
        name: fn
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, f"{hookspecs.PROJECT}_spec")
    }
    pm = create_plugin_manager(entry_points=False, builtins=())
    callers = {
        name: caller
        for name, caller in vars(pm.hook).items()
        if not name.startswith("_") and getattr(caller, "spec", None) is not None
    }
    assert set(specs) == set(callers)
    out = {}
    for name, fn in specs.items():
        params = tuple(inspect.signature(fn).parameters)
        assert params == tuple(callers[name].spec.argnames)
        out[name] = f"`{name}({', '.join(params)})`"
    return out


def test_hook_signatures_cover_the_expected_hooks():
    assert set(hook_signatures()) == {
        "register_step_types",
        "register_tools",
        "register_agents",
        "register_executors",
        "prepare_jinja_environment",
        "load_workflow",
        "host_started",
        "host_stopping",
        "run_started",
        "run_finished",
        "step_started",
        "step_finished",
    }


@pytest.mark.parametrize("hook", sorted(hook_signatures()))
def test_every_hook_is_documented_in_the_readme(hook):
    expected = hook_signatures()[hook]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert any(expected in line for line in readme.splitlines()), (
        f"README.md has no line containing {expected}"
    )
