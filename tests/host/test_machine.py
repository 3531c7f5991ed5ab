"""State-machine workflows (``states:``): runs, signals, the bound, validation, restarts, graphs."""

from __future__ import annotations

import anyio
import jsonschema
import pytest

import plait
from plait.definition.graph import render_graph
from plait.definition.schema import workflow_schema
from plait.plugins import create_plugin_manager

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


REVIEW = """
name: review
inputs: {type: object, properties: {doc: {type: string}}}
initial: draft
max_transitions: 20
states:
  draft:
    steps:
      - id: write
        tool: probe.echo
        with:
          value:
            text: "${ inputs.doc } v${ state.draft.visits + 1 }"
            ready: true
    output: "${ steps.write.output }"
    transitions:
      - to: review
        when: "${ output.ready }"
      - to: draft
  review:
    steps: [{id: check, transform: {ok: "${ state.draft.visits >= 2 }"}}]
    transitions:
      - to: done
        when: "${ output.ok }"
      - to: draft
  done:
    final: true
    outputs: {doc: "${ state.draft.output.text }", drafts: "${ state.draft.visits }"}
"""


def entered(events) -> list[tuple[str | None, str]]:
    return [(e.data["from"], e.data["to"]) for e in events if e.type == "state.entered"]


async def test_a_machine_loops_through_its_states_until_a_final_one(pm, probe):
    run = await plait.run(REVIEW, {"doc": "hello"}, pm=pm)
    assert run.status == "succeeded", run.error
    assert run.outputs == {"doc": "hello v2", "drafts": 2}
    assert entered(run.events) == [
        (None, "draft"),
        ("draft", "review"),
        ("review", "draft"),
        ("draft", "review"),
        ("review", "done"),
    ]
    assert [e.data["transition"] for e in run.events if e.type == "state.entered"] == [
        0,
        1,
        2,
        3,
        4,
    ]
    assert probe.count("echo") == 2
    # Each visit of a state is a body of its own: the second draft is a new step path.
    assert run.steps["machine[0:draft].write"].output == {"text": "hello v1", "ready": True}
    assert run.steps["machine[2:draft].write"].output == {"text": "hello v2", "ready": True}
    assert run.steps["machine[3:review].check"].output == {"ok": True}


async def test_states_without_steps_route_on_inputs_and_the_first_match_wins(pm):
    wf = {
        "name": "route",
        "inputs": {"type": "object", "properties": {"n": {"type": "integer"}}},
        "initial": "start",
        "states": {
            "start": {
                "output": "${ inputs.n * 2 }",
                "transitions": [
                    {"to": "big", "when": "output > 10"},
                    {"to": "small", "when": "output > 0"},
                    {"to": "zero"},
                ],
            },
            "big": {"final": True, "outputs": {"kind": "big", "n": "${ state.start.output }"}},
            "small": {"final": True, "outputs": {"kind": "small"}},
            "zero": {"final": True},
        },
    }
    assert (await plait.run(wf, {"n": 6}, pm=pm)).outputs == {"kind": "big", "n": 12}
    assert (await plait.run(wf, {"n": 1}, pm=pm)).outputs == {"kind": "small"}
    assert (await plait.run(wf, {"n": 0}, pm=pm)).outputs == {}


async def test_exceeding_max_transitions_fails_the_run(pm):
    wf = {
        "name": "spin",
        "initial": "a",
        "max_transitions": 3,
        "states": {
            "a": {"steps": [{"id": "x", "transform": 1}], "transitions": [{"to": "b"}]},
            "b": {
                "transitions": [
                    {"to": "done", "when": "state.a.visits > 100"},
                    {"to": "a"},
                ]
            },
            "done": {"final": True},
        },
    }
    run = await plait.run(wf, pm=pm)
    assert run.status == "failed"
    assert run.error["type"] == "machine_limit"
    assert "max_transitions=3" in run.error["message"]
    assert "from 'b' to 'a'" in run.error["message"]
    assert len(entered(run.events)) == 4  # the initial state and three transitions


async def test_no_applicable_transition_fails_the_run(pm):
    wf = {
        "name": "stuck",
        "initial": "a",
        "states": {
            "a": {"output": 1, "transitions": [{"to": "b", "when": "output > 5"}]},
            "b": {"final": True},
        },
    }
    run = await plait.run(wf, pm=pm)
    assert run.status == "failed"
    assert run.error["type"] == "machine"
    assert "no transition of state 'a' applies" in run.error["message"]


# -- signals and restarts on a durable host ------------------------------------------------


def open_host(tmp_path, pm):
    config = plait.HostConfig.model_validate(
        {"host": {"data_dir": str(tmp_path / "data")}, "plugins": {"entry_points": False}}
    )
    return plait.Host(config, pm=pm)


async def until(check, timeout=5.0):
    with anyio.fail_after(timeout):
        while True:
            result = check()
            if hasattr(result, "__await__"):
                result = await result
            if result:
                return result
            await anyio.sleep(0.01)


async def is_waiting(host, run_id):
    return (await host.get_run(run_id)).status == "waiting"


GATE = {
    "name": "gate",
    "initial": "asked",
    "states": {
        "asked": {
            "steps": [{"id": "ask", "tool": "probe.echo", "with": {"value": "asked"}}],
            "transitions": [
                {"to": "approved", "on": "approve"},
                {"to": "rejected", "on": "reject"},
            ],
        },
        "approved": {"final": True, "outputs": {"verdict": "yes"}},
        "rejected": {
            "final": True,
            "outputs": {"verdict": "no", "why": "${ state.asked.signal.data.why }"},
        },
    },
}


async def test_a_signal_chooses_the_transition(tmp_path, pm, probe):
    async with open_host(tmp_path, pm) as host:
        host.register(GATE)
        run_id = await host.start_run("gate")
        await until(lambda: is_waiting(host, run_id))
        await host.engine.signal(run_id, "reject", {"why": "too long"})
        with anyio.fail_after(5):
            run = await host.wait(run_id)
        events = await host.engine.events(run_id)
    assert run.status == "succeeded", run.error
    assert run.outputs == {"verdict": "no", "why": "too long"}
    assert entered(events) == [(None, "asked"), ("asked", "rejected")]


async def test_a_condition_applies_before_any_signal_is_awaited(pm):
    wf = {
        "name": "fast",
        "inputs": {"type": "object", "properties": {"skip": {"type": "boolean"}}},
        "initial": "a",
        "states": {
            "a": {
                "transitions": [
                    {"to": "b", "on": "go"},
                    {"to": "b", "when": "inputs.skip"},
                ]
            },
            "b": {"final": True, "outputs": {"signal": "${ state.a.signal is defined }"}},
        },
    }
    run = await plait.run(wf, {"skip": True}, pm=pm)
    assert run.status == "succeeded"
    assert run.outputs == {"signal": False}


async def test_a_restart_resumes_a_machine_in_its_state(tmp_path, pm, probe):
    """Stopped while its second visit of `review` waits: after the restart the finished states
    are replayed, not run again, and no transition is told twice."""
    wf = {
        "name": "loop",
        "initial": "draft",
        "states": {
            "draft": {
                "steps": [{"id": "write", "tool": "probe.work", "with": {"label": "write"}}],
                "transitions": [{"to": "review"}],
            },
            "review": {
                "steps": [{"id": "verdict", "wait": "verdict"}],
                "transitions": [{"to": "done", "when": "output.ok"}, {"to": "draft"}],
            },
            "done": {"final": True, "outputs": {"drafts": "${ state.draft.visits }"}},
        },
    }
    async with open_host(tmp_path, pm) as host:
        host.register(wf)
        run_id = await host.start_run("loop")
        await until(lambda: is_waiting(host, run_id))
        await host.engine.signal(run_id, "verdict", {"ok": False})
        await until(lambda: probe.count("work") == 2)
        await until(lambda: is_waiting(host, run_id))
        await host.engine.committed()
    assert probe.count("work") == 2
    pm2 = create_plugin_manager(entry_points=False, extra=[probe.plugin()])
    async with open_host(tmp_path, pm2) as host:
        assert [r.id for r in host.recovered] == [run_id]
        await until(lambda: is_waiting(host, run_id))
        run = await host.get_run(run_id)
        assert run.steps["machine[3:review].verdict"].status == "waiting"
        await host.engine.signal(run_id, "verdict", {"ok": True})
        with anyio.fail_after(5):
            run = await host.wait(run_id)
        events = await host.engine.events(run_id)
    assert run.status == "succeeded", run.error
    assert run.outputs == {"drafts": 2}
    assert probe.count("work") == 2  # the drafts before the restart did not run again
    assert entered(events) == [
        (None, "draft"),
        ("draft", "review"),
        ("review", "draft"),
        ("draft", "review"),
        ("review", "done"),
    ]


async def test_a_restart_while_the_machine_waits_for_a_signal(tmp_path, pm, probe):
    async with open_host(tmp_path, pm) as host:
        host.register(GATE)
        run_id = await host.start_run("gate")
        await until(lambda: is_waiting(host, run_id))
        await host.engine.committed()
    for restart in range(2):  # a second restart, still waiting, finds the same state
        pm2 = create_plugin_manager(entry_points=False, extra=[probe.plugin()])
        async with open_host(tmp_path, pm2) as host:
            await until(lambda: is_waiting(host, run_id))
            if restart:
                await host.engine.signal(run_id, "approve", {})
                with anyio.fail_after(5):
                    run = await host.wait(run_id)
                events = await host.engine.events(run_id)
            else:
                await host.engine.committed()
    assert run.status == "succeeded", run.error
    assert run.outputs == {"verdict": "yes"}
    assert probe.count("echo") == 1
    assert entered(events) == [(None, "asked"), ("asked", "approved")]


# -- validation ------------------------------------------------------------------------------


def problems(pm, source) -> dict[str, str]:
    with pytest.raises(plait.DefinitionError) as info:
        plait.Engine(pm).compile(source)
    return {i.path: i.message for i in info.value.issues}


def machine(states, **extra):
    return {"name": "m", "initial": "a", "states": states, **extra}


FINAL = {"final": True}


def test_initial_is_required(pm):
    found = problems(pm, {"name": "m", "states": {"a": FINAL}})
    assert found == {
        "initial": "a state machine needs `initial`, the state it starts in (one of: a)"
    }


def test_an_unknown_initial_state_has_a_suggestion(pm):
    found = problems(pm, machine({"start": FINAL}, initial="strat"))
    assert found == {"initial": "unknown state 'strat' (did you mean 'start'?)"}


def test_a_transition_to_an_unknown_state_is_named_with_its_path_and_line(pm):
    text = (
        "name: m\ninitial: a\nstates:\n  a:\n    transitions:\n      - {to: b, when: inputs.x}\n"
        "      - to: reveiw\n  review: {final: true}\n  b: {transitions: [{to: review}]}\n"
    )
    with pytest.raises(plait.DefinitionError) as info:
        plait.Engine(pm).compile(text)
    [issue] = info.value.issues
    assert (issue.path, issue.line) == ("states.a.transitions[1].to", 7)
    assert issue.message == "unknown state 'reveiw' (did you mean 'review'?)"


def test_unreachable_states_are_reported(pm):
    found = problems(pm, machine({"a": {"transitions": [{"to": "b"}]}, "b": FINAL, "c": FINAL}))
    assert found == {"states.c": "unreachable: no transition from 'a' leads here"}


def test_a_state_that_is_not_final_needs_a_way_out(pm):
    found = problems(pm, machine({"a": {"transitions": [{"to": "b"}]}, "b": {}, "c": FINAL}))
    assert "no way out" in found["states.b"]


def test_a_final_state_has_no_transitions_and_only_final_states_have_outputs(pm):
    found = problems(
        pm,
        machine(
            {
                "a": {"outputs": {"x": 1}, "transitions": [{"to": "b"}]},
                "b": {"final": True, "transitions": [{"to": "a"}]},
            }
        ),
    )
    assert found["states.b.transitions"].startswith("a final state has no transitions")
    assert found["states.a.outputs"] == "only a final state has outputs (add final: true)"


def test_a_machine_with_no_reachable_end_is_refused(pm):
    found = problems(pm, machine({"a": {"transitions": [{"to": "a"}]}}))
    assert found == {"states": "no final state: a run of this machine could never end"}
    found = problems(
        pm,
        machine(
            {
                "a": {"transitions": [{"to": "loop", "when": "inputs.x"}, {"to": "b"}]},
                "loop": {"transitions": [{"to": "loop"}]},
                "b": FINAL,
            }
        ),
    )
    assert "no final state can be reached from here" in found["states.loop"]


def test_steps_and_states_together_are_refused(pm):
    found = problems(pm, machine({"a": FINAL}, steps=[{"id": "x", "transform": 1}]))
    assert found == {
        "steps": "give either `steps` (a graph) or `states` (a state machine), not both"
    }


def test_transitions_after_an_unconditional_one_are_never_taken(pm):
    found = problems(
        pm, machine({"a": {"transitions": [{"to": "b"}, {"to": "b", "on": "go"}]}, "b": FINAL})
    )
    assert found == {
        "states.a.transitions[1]": "never taken: transitions[0] before it always applies"
    }


def test_template_roots_of_a_machine(pm):
    found = problems(
        pm,
        machine(
            {
                "a": {
                    "steps": [
                        {"id": "w", "transform": "${ output }"},
                        {"id": "v", "transform": "${ steps.z.output }"},
                    ],
                    "transitions": [{"to": "b", "when": "${ steps.w.output }"}],
                },
                "b": {"steps": [{"id": "z", "transform": "${ state.a.output }"}], "final": True},
            }
        ),
    )
    assert found["states.a.steps[0].transform"].startswith("'output' is only defined in a state")
    assert "not a step of state 'a'" in found["states.a.steps[1].transform"]
    assert found["states.a.transitions[0].when"].startswith("'steps' is not defined here")
    assert len(found) == 3  # `state` is fine in a state's steps
    found = problems(pm, {"name": "g", "steps": [{"id": "a", "transform": "${ state.x }"}]})
    assert found["steps[0].transform"] == (
        "'state' is only defined in a state machine (a workflow with `states:`)"
    )


def test_a_machine_step_is_not_written_as_a_step(pm):
    found = problems(pm, {"name": "g", "steps": [{"id": "a", "type": "machine"}]})
    assert "written as the workflow's `states:`" in found["steps[0]"]


def test_initial_belongs_to_state_machines(pm):
    found = problems(pm, {"name": "g", "initial": "a", "steps": [{"id": "a", "transform": 1}]})
    assert found == {"initial": "is for state machines (a workflow with `states:`)"}


def test_every_problem_is_reported_at_once(pm):
    found = problems(
        pm,
        machine(
            {
                "a": {"transitions": [{"to": "bb"}]},
                "b": {"final": True, "transitions": [{"to": "a"}]},
                "c": {},
            },
            initial="a",
        ),
    )
    assert set(found) == {
        "states.a.transitions[0].to",
        "states.b",
        "states.b.transitions",
        "states.c",
    }


# -- drawing, schema, round trip --------------------------------------------------------------


def test_the_graph_draws_states_and_transitions(pm):
    compiled = plait.Engine(pm).compile(REVIEW)
    mermaid = render_graph(compiled, "mermaid")
    assert "machine__start --> machine__state_draft" in mermaid
    assert 'machine__state_draft -->|"output.ready"| machine__state_review' in mermaid
    assert "machine__state_draft --> machine__state_draft" in mermaid
    assert 'machine__state_done((("done")))' in mermaid
    assert 'subgraph machine__body_draft["draft: steps"]' in mermaid
    assert "machine__draft__write" in mermaid
    dot = render_graph(compiled, "dot")
    assert 'machine__state_done [label="done", shape=doublecircle];' in dot
    assert 'machine__state_review -> machine__state_done [label="output.ok"];' in dot
    assert "subgraph cluster_machine__body_review {" in dot
    gate = render_graph(plait.Engine(pm).compile(GATE), "dot")
    assert 'machine__state_asked -> machine__state_rejected [label="on reject"];' in gate


def test_plait_graph_and_validate_on_the_command_line(tmp_path, monkeypatch, capsys):
    from plait.cli.commands import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PLAIT_HOST_DATA_DIR", str(tmp_path / "data"))
    good = tmp_path / "review.yaml"
    good.write_text(
        "name: ok\ninitial: a\nstates:\n  a:\n    steps: [{id: s, transform: 1}]\n"
        "    transitions: [{to: b, when: 'output == 1'}, {to: a}]\n  b: {final: true}\n"
    )
    assert main(["graph", str(good)]) == 0
    out = capsys.readouterr().out
    assert 'machine__state_a -->|"output == 1"| machine__state_b' in out
    assert "machine__state_a --> machine__state_a" in out
    assert main(["validate", str(good)]) == 0
    capsys.readouterr()
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ninitial: a\nstates:\n  a:\n    transitions: [{to: b}]\n")
    assert main(["validate", str(bad)]) != 0
    said = capsys.readouterr()
    assert "bad.yaml:5: states.a.transitions[0].to: unknown state 'b'" in said.out + said.err


def test_the_json_schema_accepts_a_machine_and_refuses_both_forms(pm):
    schema = workflow_schema(plait.Engine(pm).registries.step_types)
    doc = plait.load(REVIEW).to_dict()
    jsonschema.validate(doc, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**doc, "steps": [{"id": "a", "transform": 1}]}, schema)
    assert "machine step" not in [
        v["title"] for v in schema["properties"]["steps"]["items"]["oneOf"]
    ]
    with pytest.raises(jsonschema.ValidationError):  # a state's steps are checked too
        bad = plait.load(REVIEW).to_dict()
        bad["states"]["review"]["steps"][0]["bogus"] = 1
        jsonschema.validate(bad, schema)


def test_a_machine_round_trips_through_its_plain_form(pm):
    wf = plait.load(REVIEW)
    again = plait.load(wf.to_dict())
    assert again.to_dict() == wf.to_dict()
    assert "steps" not in wf.to_dict()
    assert wf.to_dict()["states"]["review"]["steps"] == [
        {"id": "check", "transform": {"ok": "${ state.draft.visits >= 2 }"}}
    ]
