"""Validation catches two more things that certainly fail at run time, with "did you mean":
a signal no step waits for, and a template path into a step's record or output that the step
does not have (its output's JSON Schema known from the tool, the agent step or the validate
step)."""

from __future__ import annotations

import dataclasses
import types
from typing import Any

import anyio
import pytest
from pydantic import BaseModel
from typing_extensions import TypedDict

import plait
from plait.definition.compiler import UnknownSignal
from plait.plugins import StepConfig, StepContext, StepType, Tool, create_plugin_manager
from plait.templates import TemplateEngine

from .test_validation import by_path, config, problems


def compiles(pm, text, cfg=None) -> plait.CompiledWorkflow:
    return plait.Engine(pm, cfg).compile(text)


# -- tools with a known output -------------------------------------------------------------------


class Page(TypedDict):
    title: str
    url: str


class Author(BaseModel):
    name: str
    email: str


class Post(BaseModel):
    title: str
    author: Author
    tags: list[str]
    comments: list[Author]


@dataclasses.dataclass
class Stats:
    words: int
    lines: int


def fetch(url: str) -> Page:
    return {"title": "t", "url": url}


def post(id: int) -> Post:
    return Post(title="t", author=Author(name="n", email="e"), tags=[], comments=[])


def stats(text: str) -> Stats:
    return Stats(words=1, lines=1)


def loose(x: int) -> dict[str, Any]:
    return {}


def anything(x: int) -> Any:
    return x


def text(x: int) -> str:
    return ""


class Listens(StepConfig):
    listen: str


class Listen(StepType[Listens]):
    """A third-party step that waits for a signal without declaring it."""

    key = "listen"
    Config = Listens
    uses_capacity = False

    async def run(self, ctx: StepContext, config: Listens) -> Any:
        return await ctx.wait_signal(config.listen, timeout=None)


class BrokenConfig(StepConfig):
    broken: str


class Broken(StepType[BrokenConfig]):
    """A step type whose declarations raise."""

    key = "broken"
    Config = BrokenConfig

    def signals(self, config):
        raise RuntimeError("no signals today")

    def output_schema(self, config, tool_output_schema):
        raise RuntimeError("no schema today")

    async def run(self, ctx: StepContext, config: BrokenConfig) -> Any:
        return None


@plait.hookimpl
def register_tools(register):
    for fn, name in (
        (fetch, "web.fetch"),
        (post, "blog.post"),
        (stats, "text.count"),
        (loose, "x.loose"),
        (anything, "x.anything"),
        (text, "x.text"),
    ):
        register(fn, name, blocking=False)


@plait.hookimpl
def register_step_types(register):
    register(Listen)
    register(Broken)


@pytest.fixture
def pm(probe):
    plugin = types.SimpleNamespace(
        __name__="outputs", register_tools=register_tools, register_step_types=register_step_types
    )
    return create_plugin_manager(entry_points=False, extra=[probe.plugin(), plugin])


FETCH = "name: t\nsteps:\n  - id: fetch\n    tool: web.fetch\n    with: {url: x}\n"


def test_a_misspelled_field_of_a_tools_output_is_an_error_with_a_suggestion(pm):
    text = FETCH + "  - id: show\n    transform: {url: '${steps.fetch.output.url}',"
    text += " title: '${steps.fetch.output.titel}'}\n"
    [issue] = problems(pm, text)
    assert (issue.path, issue.line) == ("steps[1].transform.title", 7)
    assert issue.message == (
        "step 'fetch' has no output field 'titel' (did you mean 'title'?); "
        "its output has: title, url"
    )


def test_the_spelled_fields_of_a_tools_output_are_valid(pm):
    text = FETCH + "  - id: show\n    transform: '${steps.fetch.output.title | upper}'\n"
    text += "outputs: {u: '${steps.fetch.output.url}', all: '${steps.fetch.output}'}\n"
    compiles(pm, text)


def test_tool_output_schemas_come_from_structured_return_annotations(pm):
    tools = plait.Engine(pm).registries.tools
    assert tools["web.fetch"].output_schema["properties"].keys() == {"title", "url"}
    assert tools["text.count"].output_schema["properties"].keys() == {"words", "lines"}
    assert "$defs" in tools["blog.post"].output_schema  # nested models are referenced
    for name in ("x.loose", "x.anything", "x.text", "math.sum", "probe.echo"):
        assert tools[name].output_schema is None, name
    assert Tool.from_function(lambda x: x).output_schema is None


def test_nested_models_lists_and_dataclasses_are_walked(pm):
    text = (
        "name: t\nsteps:\n"
        "  - {id: p, tool: blog.post, with: {id: 1}}\n"
        "  - {id: s, tool: text.count, with: {text: x}}\n"
        "  - id: show\n    transform:\n"
        "      - '${steps.p.output.author.name}'\n"
        "      - '${steps.p.output.comments[0].emial}'\n"
        "      - '${steps.p.output.tags[0]}'\n"
        "      - '${steps.p.output.autor}'\n"
        "      - '${steps.s.output.word}'\n"
    )
    issues = by_path(problems(pm, text))
    assert issues == {
        "steps[2].transform[1]": "step 'p' has no output field 'comments[0].emial' "
        "(did you mean 'email'?); its output.comments[0] has: email, name",
        "steps[2].transform[3]": "step 'p' has no output field 'autor' "
        "(did you mean 'author'?); its output has: author, comments, tags, title",
        "steps[2].transform[4]": "step 's' has no output field 'word' "
        "(did you mean 'words'?); its output has: lines, words",
    }


def test_an_unregistered_tool_is_only_the_unknown_tool_problem(pm):
    text = "name: t\nsteps:\n  - {id: fetch, tool: web.fecth, with: {url: x}}\n"
    text += "  - {id: show, transform: '${steps.fetch.output.titel}'}\n"
    [issue] = problems(pm, text)
    assert issue.path == "steps[0].tool"
    assert "did you mean 'web.fetch'?" in issue.message
    # A configured MCP server's tool arrives after validation: nothing to check.
    cfg = config(mcp_servers={"git": {"command": "git-mcp"}})
    compiles(pm, text.replace("web.fecth", "git.log"), cfg)


def test_a_templated_tool_name_has_no_known_output(pm):
    text = "name: t\ninputs: {type: object}\nsteps:\n"
    text += "  - {id: fetch, tool: '${inputs.tool}', with: {url: x}}\n"
    text += "  - {id: show, transform: '${steps.fetch.output.titel}'}\n"
    compiles(pm, text)


# -- agent and validate steps --------------------------------------------------------------------


AGENTS = {"agents": {"writer": {"provider": "scripted", "script": [{"say": "x"}]}}}


def agent_text(schema: str, read: str) -> str:
    return (
        "name: t\nsteps:\n"
        f"  - {{id: ask, agent: writer, prompt: hi, output_schema: {schema}}}\n"
        f"  - {{id: use, transform: '{read}'}}\n"
    )


def test_an_agents_output_schema_is_checked(pm):
    schema = "{type: object, properties: {score: {type: number}, text: {type: string}}}"
    [issue] = problems(pm, agent_text(schema, "${steps.ask.output.scor >= 0.8}"), config(**AGENTS))
    assert issue.path == "steps[1].transform"
    assert issue.message == (
        "step 'ask' has no output field 'scor' (did you mean 'score'?); its output has: score, text"
    )
    compiles(pm, agent_text(schema, "${steps.ask.output.score >= 0.8}"), config(**AGENTS))


@pytest.mark.parametrize(
    "schema",
    [
        "{type: object, properties: {score: {}}, additionalProperties: true}",
        "{type: object, properties: {score: {}}, additionalProperties: {type: string}}",
        "{type: object, properties: {score: {}}, patternProperties: {'^x': {}}}",
        "{type: object}",
        "{type: object, properties: {other: {type: object}}}",
        "{type: array, items: {type: object, properties: {other: {}}}}",
    ],
    ids=["additional-true", "additional-schema", "pattern", "no-properties", "open-inside", "list"],
)
def test_a_schema_that_allows_other_keys_refuses_none(pm, schema):
    read = "${steps.ask.output.other} ${steps.ask.output.other.x} ${steps.ask.output[0].other}"
    compiles(pm, agent_text(schema, read), config(**AGENTS))


def test_any_of_accepts_a_field_of_any_branch_and_follows_local_refs(pm):
    schema = (
        "{anyOf: [{$ref: '#/$defs/A'}, {type: object, properties: {b: {}}}, {type: 'null'}],"
        " $defs: {A: {type: object, properties: {a: {}}}}}"
    )
    cfg = config(**AGENTS)
    compiles(pm, agent_text(schema, "${steps.ask.output.a} ${steps.ask.output.b}"), cfg)
    [issue] = problems(pm, agent_text(schema, "${steps.ask.output.c}"), cfg)
    assert "has no output field 'c'; its output has: a, b" in issue.message


def test_a_validate_steps_schema_is_its_outputs(pm):
    text = (
        "name: t\ninputs: {type: object}\nsteps:\n"
        "  - id: check\n    validate: '${inputs.page}'\n"
        "    schema: {type: object, properties: {title: {type: string}}}\n"
        "  - {id: use, transform: '${steps.check.output.titel}'}\n"
    )
    [issue] = problems(pm, text)
    assert issue.path == "steps[1].transform"
    assert "step 'check' has no output field 'titel' (did you mean 'title'?)" in issue.message


def test_reads_that_tolerate_a_missing_key_are_not_refused(pm):
    reads = [
        "${steps.fetch.output.titel | default('none')}",
        "${steps.fetch.output.titel if steps.fetch.output.titel is defined else 1}",
        "${steps.fetch.output.get('titel')}",
        "${'titel' in steps.fetch.output and steps.fetch.output.titel}",
        "${steps.fetch.output[inputs.key]}",
        "${steps.fetch.output.titel is none}",
    ]
    text = FETCH.replace("name: t\n", "name: t\ninputs: {type: object}\n")
    for i, read in enumerate(reads):
        text += f'  - {{id: r{i}, transform: "{read}"}}\n'
    compiles(pm, text)


def test_a_step_with_a_fallback_may_output_the_fallbacks_value(pm):
    text = "name: t\nsteps:\n  - {id: fetch, tool: web.fetch, with: {url: x}, on_error: backup}\n"
    text += "  - {id: backup, transform: {titel: none}}\n"
    text += "  - {id: show, transform: '${steps.fetch.output.titel}'}\n"
    compiles(pm, text)


def test_fields_are_checked_in_loop_bodies_branches_and_deferred_outputs(pm):
    text = FETCH + (
        "  - id: each\n    loop: [1, 2]\n    steps:\n"
        "      - {id: inner, transform: '${steps.fetch.output.urll}'}\n"
        "    output: '${steps.inner.output} ${steps.fetch.output.tilte}'\n"
        "  - id: both\n    parallel:\n"
        "      left: [{id: l, transform: '${steps.fetch.output.ur}'}]\n"
        "outputs: {t: '${steps.fetch.output.titl}'}\n"
    )
    issues = by_path(problems(pm, text))
    assert set(issues) == {
        "steps[1].steps[0].transform",
        "steps[1].output",
        "steps[2].parallel.left[0].transform",
        "outputs.t",
    }
    assert "'urll' (did you mean 'url'?)" in issues["steps[1].steps[0].transform"]
    assert "'tilte' (did you mean 'title'?)" in issues["steps[1].output"]
    assert "'titl' (did you mean 'title'?)" in issues["outputs.t"]


def test_an_unknown_field_of_a_step_record_is_an_error(pm):
    text = "name: t\nsteps:\n  - {id: a, transform: 1}\n"
    text += "  - {id: b, transform: '${steps.a.outptu}', when: 'steps.a.staus == \"succeeded\"'}\n"
    text += "  - {id: c, transform: '${[steps.a.status, steps.a.error, steps.a.attempts]}'}\n"
    issues = by_path(problems(pm, text))
    assert issues == {
        "steps[1].transform": "step 'a' has no field 'outptu' (did you mean 'output'?); "
        "a step has: output, status, error, attempts",
        "steps[1].when": "step 'a' has no field 'staus' (did you mean 'status'?); "
        "a step has: output, status, error, attempts",
    }


def test_a_stored_snapshot_is_not_refused_for_a_path(pm):
    """A run resuming after a restart compiles its snapshot without the host checks."""
    text = FETCH + "  - {id: show, transform: '${steps.fetch.output.titel} ${steps.fetch.x}'}\n"
    plait.Engine(pm).compile(text, check_plugins=False)


def test_a_step_type_whose_declarations_raise_is_a_definition_issue(pm):
    text = "name: t\nsteps:\n  - {id: a, broken: x}\n"
    issues = problems(pm, text)
    assert [i.path for i in issues] == ["steps[0]", "steps[0]"]
    assert "no signals today" in issues[0].message + issues[1].message
    assert "no schema today" in issues[0].message + issues[1].message


def test_templates_record_the_constant_paths_they_read_under_steps():
    engine = TemplateEngine()
    paths = engine.compile(
        {"a": "${steps.a.output.items[0].title}", "b": "x ${steps['b'].status} y"}
    ).step_paths
    assert paths == {("a", "output", "items", 0, "title"), ("b", "status")}
    jinja = engine.compile("${steps.a.output.n + steps.a.output.get('m') | int}").step_paths
    assert jinja == {("a", "output"), ("a", "output", "n")}
    assert engine.compile("${steps.a.output[inputs.k].x}").step_paths == {("a", "output")}
    assert engine.compile("${inputs.x} ${steps}").step_paths == frozenset()


# -- signals -------------------------------------------------------------------------------------


def test_wait_steps_declare_their_events_nested_bodies_included(pm):
    compiled = compiles(
        pm,
        "name: t\nsteps:\n  - {id: a, wait: approve}\n"
        "  - id: each\n    loop: [1]\n    steps: [{id: w, wait: tick}]\n"
        "  - id: both\n    parallel: {x: [{id: v, wait: left}], y: [{id: u, transform: 1}]}\n",
    )
    assert compiled.signals == {"approve", "tick", "left"}
    assert not compiled.any_signal
    assert compiled.signal_problem("approve") is None
    assert compiled.signal_problem("aprove") == (
        "no step of workflow 't' waits for the signal 'aprove' (did you mean 'approve'?); "
        "it waits for: approve, left, tick"
    )
    assert compiled.signal_problem("other", awaited={"other"}) is None


def test_a_workflow_without_wait_steps_waits_for_no_signal(pm):
    compiled = compiles(pm, "name: t\nsteps:\n  - {id: a, transform: 1}\n")
    assert compiled.signals == frozenset()
    assert compiled.signal_problem("go") == (
        "no step of workflow 't' waits for the signal 'go'; it waits for no signal"
    )


def test_a_templated_wait_event_accepts_any_signal(pm):
    compiled = compiles(
        pm, "name: t\ninputs: {type: object}\nsteps:\n  - {id: a, wait: '${inputs.e}'}\n"
    )
    assert compiled.any_signal
    assert compiled.signal_problem("whatever") is None


@pytest.mark.anyio
async def test_the_engine_refuses_a_misspelled_signal_and_keeps_a_declared_early_one(pm):
    engine = plait.Engine(pm)
    compiled = engine.register(
        {
            "name": "approvals",
            "steps": [
                {"id": "first", "wait": "approve"},
                {"id": "second", "wait": "publish", "needs": ["first"]},
            ],
            "outputs": {"got": "${[steps.first.output, steps.second.output]}"},
        }
    )
    async with engine:
        run = await engine.start(compiled)
        with pytest.raises(UnknownSignal) as info:
            await engine.signal(run.id, "aprove", 1)
        assert isinstance(info.value, plait.InputsInvalid)
        assert info.value.problems == [str(info.value)]
        assert str(info.value) == (
            "no step of workflow 'approvals' waits for the signal 'aprove' "
            "(did you mean 'approve'?); it waits for: approve, publish"
        )
        await engine.signal(run.id, "publish", 2)  # its step has not started: kept for it
        await engine.signal(run.id, "approve", 1)
        with anyio.fail_after(5):
            await run.wait()
    assert run.status == "succeeded"
    assert run.outputs == {"got": [1, 2]}
    assert not any(e.data.get("event") == "aprove" for e in run.events)


@pytest.mark.anyio
async def test_an_undeclared_wait_is_accepted_while_its_step_waits(pm):
    engine = plait.Engine(pm)
    compiled = engine.register({"name": "pings", "steps": [{"id": "l", "listen": "ping"}]})
    async with engine:
        run = await engine.start(compiled)
        with anyio.fail_after(5):
            async for event in run.follow():
                if event.type == "step.waiting" and event.step == "l":
                    break
        await engine.signal(run.id, "ping", "pong")
        with anyio.fail_after(5):
            await run.wait()
    assert run.status == "succeeded"
    assert run.steps["l"].output == "pong"


@pytest.mark.anyio
async def test_an_undeclared_event_is_refused_before_its_step_waits(pm):
    engine = plait.Engine(pm)
    compiled = engine.register(
        {
            "name": "later",
            "steps": [{"id": "w", "wait": "go"}, {"id": "l", "listen": "ping", "needs": ["w"]}],
        }
    )
    async with engine:
        run = await engine.start(compiled)
        with pytest.raises(UnknownSignal, match="'ping'; it waits for: go"):
            await engine.signal(run.id, "ping")
        await engine.cancel(run.id)


def test_a_tool_returning_a_model_or_dataclass_outputs_the_json_its_schema_declares(pm):
    """The output schema comes from the return annotation, so returning an instance of it
    must work: the tool's result is that instance dumped to JSON."""
    workflow = (
        "name: structured\nsteps:\n"
        "  - {id: post, tool: blog.post, with: {id: 1}}\n"
        "  - {id: stats, tool: text.count, with: {text: hi}}\n"
        "outputs: {who: '${steps.post.output.author.name}', words: '${steps.stats.output.words}'}\n"
    )
    run = plait.run_sync(plait.load(workflow), pm=pm)
    assert run.status == "succeeded", run.error
    assert run.outputs == {"who": "n", "words": 1}
    assert run.steps["post"].output["author"] == {"name": "n", "email": "e"}
