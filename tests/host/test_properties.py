"""Property-based tests: JSON values, the wire, workflow documents and templates.

Each property says what must hold for *every* input, and hypothesis looks for a counterexample:

* values: what :func:`plait.values.json_problem` lets through is written by ``dumps`` and the
  wire's codec and read back unchanged; what it refuses, it says why;
* the wire: any text a client may send gets a well-formed JSON-RPC answer (or, for a
  notification, none) from the real dispatcher of a real host, and the session goes on
  answering;
* workflow documents: loading and compiling any document ends in a ``CompiledWorkflow`` or a
  ``DefinitionError``, never another exception;
* templates: compiling and rendering any source ends in a value or a ``TemplateError``, within
  the configured limits.

Example counts are bounded so the whole module stays a few seconds long. Regression tests for
what the properties found sit beside each property.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, assume, given, reject, settings
from hypothesis import strategies as st

import plait
from plait.rpc.codec import decode, encode
from plait.rpc.errors import ParseError
from plait.rpc.session import Session
from plait.templates import TemplateEngine, TemplateLimits
from plait.testing.hosts import memory_config
from plait.values import MAX_INT_DIGITS, dumps, json_problem

pytestmark = pytest.mark.anyio

FEW = settings(
    max_examples=60,
    deadline=None,
    database=None,
    # the same examples on every run: CI is not where a new counterexample should surface
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SOME = settings(FEW, max_examples=100)

# -- strategies ----------------------------------------------------------------------------------

CHARS = st.one_of(
    st.characters(),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),  # lone surrogates
    st.sampled_from('"\\/\x00\x1f\x7f\u2028\u2029\ufeff\uffff\U0010ffff${}%#'),
)
TEXT = st.lists(CHARS, max_size=30).map("".join)  # st.text() would drop the surrogates
PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def unpair(text: str) -> str:
    """``text`` with a '-' between the halves of each surrogate pair."""
    return PAIR.sub(lambda m: m.group()[0] + "-" + m.group()[1], text)


KEPT_TEXT = TEXT.map(unpair)
"""Text JSON keeps exactly: lone surrogates, but no pair of them side by side (JSON text
writes a pair as two escapes, which every reader joins into one character)."""
HUGE_INTS = st.tuples(st.integers(0, MAX_INT_DIGITS), st.sampled_from([1, -1])).map(
    lambda t: t[1] * (10 ** t[0] - 1)
)
INTS = st.one_of(st.integers(), st.integers(-(2**80), 2**80), HUGE_INTS)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, KEPT_TEXT)


def json_values(
    scalars: st.SearchStrategy[Any] = SCALARS,
    leaves: int = 25,
    keys: st.SearchStrategy[str] = KEPT_TEXT,
) -> Any:
    return st.recursive(
        scalars,
        lambda kids: st.lists(kids, max_size=5) | st.dictionaries(keys, kids, max_size=5),
        max_leaves=leaves,
    )


JSON = json_values()

NOT_KEPT = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, {1, 2}, b"x", object(), 1j]),
    st.integers(MAX_INT_DIGITS, MAX_INT_DIGITS + 50).map(lambda n: 10**n),
    st.integers(MAX_INT_DIGITS, MAX_INT_DIGITS + 50).map(lambda n: -(10**n)),
    st.just({1: "int key"}),
    st.just({None: "null key"}),
    st.just("\ud83d\ude00"),  # U+1F600 as a surrogate pair: JSON reads back the one character
    st.just({"a\udbff\udfff": 1}),
)
"""Values neither the store nor the wire can keep exactly."""
ANY_VALUES = json_values(st.one_of(SCALARS, NOT_KEPT))


def strict_loads(text: str) -> Any:
    """Standard JSON only: NaN and infinities are refused, as every other JSON parser does."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


# -- values: what json_problem lets through is kept exactly ----------------------------------------


@SOME
@given(JSON)
def test_json_values_round_trip_through_store_and_wire(value):
    assert json_problem(value) is None
    text = dumps(value)
    text.encode("utf-8")  # storable and sendable: no lone surrogate left raw
    assert strict_loads(text) == value
    wire = encode(value)
    wire.encode("utf-8")
    assert decode(wire, max_depth=1000) == value


@SOME
@given(ANY_VALUES)
def test_json_problem_is_exact(value):
    """Everything json_problem accepts round-trips; everything else it names a reason for."""
    problem = json_problem(value)
    if problem is None:
        assert strict_loads(dumps(value)) == value
        assert decode(encode(value), max_depth=1000) == value
    else:
        assert isinstance(problem, str) and problem


def test_json_problem_refuses_what_cannot_be_kept():
    assert "not a finite number" in json_problem({"a": [1, math.nan]})
    assert json_problem({"a": [1, math.nan]}).startswith("a[1]:")
    assert "4,300-digit" in json_problem(10**5000)
    assert "4,300-digit" in json_problem([-(10**MAX_INT_DIGITS)])
    assert json_problem(10**MAX_INT_DIGITS - 1) is None
    assert json_problem(-(10**MAX_INT_DIGITS - 1)) is None
    assert "not a string" in json_problem({"x": {1: 2}})
    assert json_problem("\ud800") is None  # a JSON string escape may carry it


def test_json_problem_follows_a_lower_int_digit_limit():
    """A program that lowered Python's int-to-str limit gets integers refused at it."""
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(1000)
    try:
        assert json_problem(10**1000) is not None
        assert json_problem(10**999) is None
    finally:
        sys.set_int_max_str_digits(old)


def test_dumps_escapes_lone_surrogates():
    """Found by the round trip: a lone surrogate was written raw, which UTF-8 cannot carry
    (the SQLite store and the WebSocket both failed on it)."""
    text = dumps({"k\udc80": ["\ud800", 2**70]})
    assert text == '{"k\\udc80":["\\ud800",1180591620717411303424]}'
    assert strict_loads(text) == {"k\udc80": ["\ud800", 2**70]}


def test_codec_reads_the_longest_negative_integer_it_writes():
    """Found by the round trip: '-' counted as a digit, so -(10**4300 - 1) was written and
    then refused as too long."""
    value = -(10**MAX_INT_DIGITS - 1)
    assert decode(encode([value])) == [value]
    with pytest.raises(ParseError):
        decode("-1" + "0" * MAX_INT_DIGITS)


def test_codec_refuses_raw_surrogates_in_text():
    """Found by the decode property: text holding surrogate code units raw (not as \\u
    escapes, which no UTF-8 transport can deliver) was read as is, and a pair of them made a
    string JSON cannot keep. It is refused as bytes that are not UTF-8 are."""
    with pytest.raises(ParseError, match="Parse error") as caught:
        decode('"\ud800\udc00"')
    assert "not UTF-8" in caught.value.data["reason"]
    assert decode('"\\ud800\\udc00"') == "\U00010000"  # escapes: JSON's own pair
    assert decode('"\\ud800"') == "\ud800"  # a lone escaped surrogate: kept


@SOME
@given(st.one_of(TEXT, st.binary(max_size=40), JSON.map(lambda v: dumps(v)[:-1])))
def test_codec_decode_refuses_with_a_parse_error_only(text):
    try:
        value = decode(text)
    except ParseError:
        return
    assert json_problem(value) is None
    assert decode(encode(value)) == value


# -- the wire: the dispatcher of a real host -------------------------------------------------------

PARAM_NAMES = [
    "name",
    "workflow",
    "runId",
    "inputs",
    "definition",
    "source",
    "version",
    "timeout",
    "since",
    "limit",
    "cursor",
    "status",
    "createdAfter",
    "createdBefore",
    "event",
    "data",
    "subscription",
    "protocolVersion",
    "capabilities",
    "clientInfo",
    "requestId",
    "arguments",
    "idempotencyKey",
]
SAFE_METHODS = [
    "ping",
    "initialize",
    "notifications/initialized",
    "notifications/cancelled",
    "tools/list",
    "tools/call",
    "workflows/put",
    "workflows/validate",
    "workflows/list",
    "workflows/get",
    "workflows/versions",
    "runs/start",
    "runs/get",
    "runs/list",
    "runs/wait",
    "runs/cancel",
    "runs/pause",
    "runs/resume",
    "runs/signal",
    "runs/events",
    "runs/subscribe",
    "runs/unsubscribe",
    "plugins/list",
    "host/info",
    "rpc.discover",
    "",
]
"""Every method but ``workflows/delete`` and ``workflows/rollback`` (which could take away
the workflows other examples use), plus names no method has."""

SMALL_JSON = json_values(leaves=8)
IDS = st.one_of(st.none(), INTS, FLOATS, TEXT, st.booleans(), st.lists(st.integers(), max_size=2))
PARAMS = st.one_of(
    st.dictionaries(st.sampled_from(PARAM_NAMES) | TEXT, SMALL_JSON, max_size=4),
    st.fixed_dictionaries(
        {"workflow": st.sampled_from(["quick", "echo", "nope"])},
        optional={"inputs": st.dictionaries(st.sampled_from(["x", "value"]), SMALL_JSON)},
    ),
    st.fixed_dictionaries({"runId": TEXT}, optional={"timeout": st.floats(0.001, 0.05)}),
    st.lists(SMALL_JSON, max_size=3),
    SMALL_JSON,
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        message["jsonrpc"] = "2.0"
    else:
        message["jsonrpc"] = draw(SMALL_JSON)
    message["method"] = draw(st.sampled_from(SAFE_METHODS) | TEXT | SMALL_JSON)
    if draw(st.booleans()):
        message["params"] = draw(PARAMS)
    if draw(st.integers(0, 3)):
        message["id"] = draw(IDS)
    if not draw(st.integers(0, 9)):
        message[draw(TEXT)] = draw(SMALL_JSON)
    return message


MESSAGES = st.one_of(
    requests(),
    st.lists(requests(), min_size=0, max_size=4),
    st.fixed_dictionaries({"jsonrpc": st.just("2.0"), "id": IDS, "result": SMALL_JSON}),
    SMALL_JSON,
)


@st.composite
def wire_texts(draw: st.DrawFn) -> str | bytes:
    """What a client may send: JSON text of a message (escaped or not), or anything at all."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(TEXT)
    if kind == 1:
        return draw(st.binary(max_size=30))
    if kind == 2:  # deep, around the codec's limit of 64
        depth = draw(st.integers(55, 80))
        return (
            '{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":'
            + "[" * depth
            + ("]" * depth + "}}")
        )
    message = draw(MESSAGES)
    text = json.dumps(message, ensure_ascii=draw(st.booleans()))
    if kind == 3:
        return text.encode("utf-8", "surrogatepass")  # lone surrogates as invalid UTF-8
    return text


def check_reply(reply: str | None, text: str | bytes) -> None:
    """A reply is standard JSON in UTF-8: one response object, or a non-empty array of them."""
    if reply is None:
        return
    reply.encode("utf-8")
    frame = strict_loads(reply)
    items = frame if isinstance(frame, list) else [frame]
    assert items, reply
    for item in items:
        assert isinstance(item, dict), reply
        assert item.get("jsonrpc") == "2.0", reply
        assert "id" in item, reply
        assert ("result" in item) != ("error" in item), reply
        assert set(item) <= {"jsonrpc", "id", "result", "error"}, reply
        if "error" in item:
            error = item["error"]
            assert isinstance(error["code"], int) and isinstance(error["message"], str), reply
            assert set(error) <= {"code", "message", "data"}, reply
            # an internal error is a handler that crashed: a bug, whatever the input
            assert error["code"] != -32603, (text, reply)
    message = _parsed(text)
    if isinstance(message, dict) and "id" in message and _valid_envelope(message):
        assert isinstance(frame, dict)
        assert frame["id"] == message["id"] or _same_nan(frame["id"], message["id"])


def _parsed(text: str | bytes) -> Any:
    try:
        return decode(text)
    except ParseError:
        return None


def _valid_envelope(message: dict[str, Any]) -> bool:
    rid = message["id"]
    return (
        message.get("jsonrpc") == "2.0"
        and isinstance(message.get("method"), str)
        and not isinstance(rid, bool)
        and isinstance(rid, str | int | float | type(None))
        and (not isinstance(message.get("params"), bool))
        and isinstance(message.get("params", {}), dict | list)
        and set(message) <= {"jsonrpc", "method", "params", "id"}
    )


def _same_nan(a: Any, b: Any) -> bool:
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)


ECHO_WORKFLOW = {
    "name": "echo",
    "inputs": {"type": "object"},
    "steps": [{"id": "e", "tool": "probe.echo", "with": {"value": "${inputs.value}"}}],
    "outputs": {"value": "${steps.e.output}"},
}
QUICK_WORKFLOW = {
    "name": "quick",
    "inputs": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
    "steps": [{"id": "double", "transform": "${inputs.x * 2}"}],
    "outputs": {"y": "${steps.double.output}"},
}


@pytest.fixture
async def wire(pm) -> AsyncIterator[tuple[plait.Host, Session]]:
    """A started memory host and one session of it, whose queued frames are read and kept."""
    host = plait.Host(memory_config(), pm=pm)
    async with host:
        host.register(ECHO_WORKFLOW)
        host.register(QUICK_WORKFLOW)
        session = Session(transport="memory")
        host.sessions.add(session)

        async def drain() -> None:
            async with session.outbox as outbox:
                async for frame in outbox:
                    session.sent(frame)
                    check_reply_or_notification(frame)

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            yield host, session
            session.close()
        host.sessions.discard(session)


def check_reply_or_notification(frame: str) -> None:
    message = strict_loads(frame)
    if isinstance(message, dict) and "method" in message:
        assert message.get("jsonrpc") == "2.0" and "id" not in message, frame
    else:
        check_reply(frame, "null")


async def ping(host: plait.Host, session: Session) -> None:
    with anyio.fail_after(5):
        reply = await host.dispatcher.handle(
            '{"jsonrpc":"2.0","id":"ping-after","method":"ping"}', session
        )
    assert reply is not None
    assert strict_loads(reply) == {"jsonrpc": "2.0", "id": "ping-after", "result": {}}


@FEW
@given(text=wire_texts())
async def test_dispatcher_answers_any_message_well_formed(wire, text):
    host, session = wire
    with anyio.fail_after(5):
        reply = await host.dispatcher.handle(text, session)
    check_reply(reply, text)
    await ping(host, session)
    assert not session.closed


@FEW
@given(
    rid=st.one_of(KEPT_TEXT, INTS, FLOATS),
    method=st.one_of(TEXT, st.sampled_from(SAFE_METHODS)),
    ascii_only=st.booleans(),
)
async def test_dispatcher_echoes_any_id_and_method(wire, rid, method, ascii_only):
    """Every id JSON can express comes back as it was sent, whatever the method."""
    host, session = wire
    text = json.dumps(
        {"jsonrpc": "2.0", "id": rid, "method": method, "params": {}}, ensure_ascii=ascii_only
    )
    with anyio.fail_after(5):
        reply = await host.dispatcher.handle(text, session)
    check_reply(reply, text)
    assert reply is not None
    if re.search("[\ud800-\udfff]", text):  # raw, not escaped: no transport sends that
        assert strict_loads(reply)["error"]["code"] == -32700
    else:
        assert strict_loads(reply)["id"] == rid
    await ping(host, session)


@pytest.mark.parametrize(
    "message",
    [
        {"method": "workflows/validate", "params": {"source": "x" * 1_000_000}},
        {"method": "runs/list", "params": {"cursor": "\ud800" * 100_000}},
        {"method": "ping", "params": {"a": list(range(50_000))}},
        {
            "method": "runs/start",
            "params": {"workflow": "echo", "inputs": {"value": "é" * 500_000}},
        },
        {"method": "no/such", "params": {"k" * 100_000: 10**4299}},
    ],
)
async def test_dispatcher_answers_huge_messages(wire, message):
    """Large (within the limits) messages get well-formed answers too."""
    host, session = wire
    text = json.dumps({"jsonrpc": "2.0", "id": "big", **message})
    with anyio.fail_after(10):
        reply = await host.dispatcher.handle(text, session)
    check_reply(reply, text)
    await ping(host, session)


async def test_reply_to_an_id_with_a_lone_surrogate_is_utf8(wire):
    """Found by the wire property: the id "\\ud800" came back raw in the reply, which no
    transport can send as UTF-8 (the WebSocket connection broke)."""
    host, session = wire
    reply = await host.dispatcher.handle(
        '{"jsonrpc":"2.0","id":"\\ud800","method":"no/such"}', session
    )
    assert reply is not None and "\\ud800" in reply
    reply.encode("utf-8")
    assert strict_loads(reply)["id"] == "\ud800"
    assert strict_loads(reply)["error"]["code"] == -32601


@FEW
@given(inputs=st.dictionaries(KEPT_TEXT, JSON, max_size=3))
async def test_run_inputs_round_trip_through_the_api(wire, inputs):
    """Run inputs that the wire carries come back exactly from runs/get."""
    host, session = wire
    text = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "runs/start",
            "params": {"workflow": "echo", "inputs": {"value": inputs}},
        }
    )
    assume(len(text) < 200_000)
    with anyio.fail_after(5):
        started = strict_loads(await host.dispatcher.handle(text, session))
        run_id = started["result"]["runId"]
        wait = {"jsonrpc": "2.0", "id": 2, "method": "runs/wait", "params": {"runId": run_id}}
        done = strict_loads(await host.dispatcher.handle(json.dumps(wait), session))
    run = done["result"]["run"]
    assert run["inputs"] == {"value": inputs}
    assert run["status"] == "succeeded", run
    assert run["outputs"] == {"value": inputs}


# -- workflow documents: a CompiledWorkflow or a DefinitionError -----------------------------------


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], odds: int = 9) -> Any:
    """``common`` about ``odds`` times in ``odds + 1``, else ``rare``."""
    return st.integers(0, odds).flatmap(lambda n: common if n else rare)


STEP_IDS = mostly(
    st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["1bad", "", "a.b"]) | TEXT
)
TEMPLATES = st.one_of(
    st.sampled_from(
        [
            "${inputs.x}",
            "${steps.a.output}",
            "${steps.b.output | length}",
            "$inputs.x",
            "${item}",
            "${index + 1}",
            "{{ steps.c.output }}",
            "${",
            "${steps.a.output + 1}",
            "$$",
            "${vars.v}",
            "${env.HOME}",
            "${run.id}",
            "${nope}",
            "{% for i in range(3) %}{{ i }}{% endfor %}",
            "${steps['a'].output.x}",
            "${ self }",
            "${ ().__class__ }",
            "pr-${inputs.x}-$steps.d.output",
        ]
    ),
    TEXT,
)
DEF_SCALARS = st.one_of(SCALARS, TEMPLATES)
DEF_VALUES = json_values(mostly(DEF_SCALARS, NOT_KEPT, 30), leaves=6)
"""Values of a definition: JSON, templates, and now and then something not JSON."""
ODD_VALUES = json_values(st.one_of(DEF_SCALARS, NOT_KEPT), leaves=4)
STEP_TYPE_NAMES = [
    "tool",
    "transform",
    "agent",
    "if",
    "loop",
    "parallel",
    "wait",
    "delay",
    "validate",
    "workflow",
]
COMMON_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "needs": st.lists(STEP_IDS, max_size=2) | STEP_IDS,
    "needs_any": st.lists(STEP_IDS, max_size=2),
    "when": TEMPLATES | st.booleans(),
    "retry": st.fixed_dictionaries(
        {},
        optional={
            "attempts": st.integers(0, 5),
            "backoff": st.sampled_from(["fixed", "linear", "exponential", "odd"]),
            "base": st.floats(0, 2),
            "max": st.floats(0, 10),
            "jitter": st.booleans() | st.floats(0, 1.5),
            "retry_on": st.lists(st.sampled_from(["timeout", "tool", "x"]), max_size=2),
        },
    ),
    "timeout": st.floats(0, 100) | st.integers(-1, 10**6),
    "on_error": st.sampled_from(["fail", "continue"]) | STEP_IDS,
    "cache": st.booleans()
    | st.fixed_dictionaries(
        {}, optional={"ttl": st.floats(0, 10), "key": TEMPLATES, "when": TEMPLATES}
    ),
    "description": TEXT,
}


def steps_of(depth: int) -> st.SearchStrategy[Any]:
    """A step shaped like one: a type's own fields, some common ones, now and then noise."""
    body = (
        st.lists(st.deferred(lambda: steps_of(depth - 1)), min_size=1, max_size=3)
        if depth
        else st.just([{"id": "leaf", "transform": 1}])
    )
    own: dict[str, st.SearchStrategy[dict[str, Any]]] = {
        "tool": st.fixed_dictionaries(
            {"tool": st.sampled_from(["probe.echo", "probe.add", "probe.work", "nope"])},
            optional={"with": st.dictionaries(st.sampled_from(["value", "a", "b"]), DEF_VALUES)},
        ),
        "transform": st.fixed_dictionaries({"transform": DEF_VALUES}),
        "if": st.fixed_dictionaries(
            {"if": TEMPLATES},
            optional={
                "then": st.lists(STEP_IDS, max_size=2),
                "else": st.lists(STEP_IDS, max_size=2),
            },
        ),
        "loop": st.fixed_dictionaries(
            {"loop": TEMPLATES | st.lists(DEF_SCALARS, max_size=3), "steps": body},
            optional={"output": TEMPLATES, "concurrency": st.integers(0, 3)},
        ),
        "while": st.fixed_dictionaries(
            {"while": TEMPLATES, "steps": body}, optional={"max_iterations": st.integers(0, 5)}
        ),
        "parallel": st.fixed_dictionaries(
            {"parallel": st.dictionaries(st.sampled_from(["l", "r"]) | TEXT, body, max_size=2)},
            optional={"wait": st.sampled_from(["all", "any", "some"])},
        ),
        "wait": st.fixed_dictionaries(
            {"wait": st.sampled_from(["go", ""])},
            optional={"within": st.floats(0, 5), "default": DEF_VALUES},
        ),
        "delay": st.fixed_dictionaries({"delay": st.floats(-1, 5) | TEMPLATES}),
        "validate": st.fixed_dictionaries(
            {"validate": DEF_VALUES},
            optional={
                "schema": st.just({"type": "object"}) | DEF_VALUES,
                "assert": st.lists(TEMPLATES, max_size=2),
            },
        ),
        "workflow": st.fixed_dictionaries(
            {"workflow": st.sampled_from(["w", "other"])},
            optional={"inputs": st.dictionaries(TEXT, DEF_VALUES, max_size=2)},
        ),
        "agent": st.fixed_dictionaries(
            {"agent": st.sampled_from(["bot", ""]), "prompt": TEMPLATES}
        ),
    }

    @st.composite
    def step(draw: st.DrawFn) -> Any:
        if not draw(st.integers(0, 29)):
            return draw(ODD_VALUES)  # not a mapping of fields at all
        out: dict[str, Any] = {"id": draw(STEP_IDS)} if draw(st.integers(0, 19)) else {}
        out.update(draw(st.sampled_from(sorted(own)).flatmap(lambda kind: own[kind])))
        for name in draw(st.lists(st.sampled_from(sorted(COMMON_FIELDS)), max_size=2)):
            out[name] = draw(COMMON_FIELDS[name])
        if not draw(st.integers(0, 9)):
            field = draw(st.sampled_from([*STEP_TYPE_NAMES, "type", "steps", "output"]) | TEXT)
            out[field] = draw(ODD_VALUES)
        return out

    return step()


DOCUMENTS = st.fixed_dictionaries(
    {
        "name": mostly(st.sampled_from(["w", "my-flow.v2"]), TEXT),
        "steps": mostly(st.lists(steps_of(2), min_size=1, max_size=4), ODD_VALUES),
    },
    optional={
        "version": mostly(st.integers(1, 3), ODD_VALUES),
        "description": mostly(TEXT, ODD_VALUES),
        "inputs": mostly(
            st.just({"type": "object", "properties": {"x": {"type": "integer"}}}), ODD_VALUES
        ),
        "defaults": mostly(
            st.fixed_dictionaries(
                {},
                optional={
                    "retry": COMMON_FIELDS["retry"],
                    "timeout": COMMON_FIELDS["timeout"],
                    "on_error": st.sampled_from(["fail", "continue"]),
                },
            ),
            ODD_VALUES,
        ),
        "vars": mostly(st.dictionaries(st.sampled_from(["v", "w"]), DEF_VALUES), ODD_VALUES),
        "concurrency": mostly(st.integers(1, 4), ODD_VALUES),
        "outputs": mostly(st.dictionaries(st.sampled_from(["o", "p"]), TEMPLATES), ODD_VALUES),
    },
)


@pytest.fixture
def engine(pm) -> plait.Engine:
    return plait.Engine(pm)


def compile_or_refuse(engine: plait.Engine, source: Any) -> plait.CompiledWorkflow | None:
    """The property: a CompiledWorkflow whose definition is JSON plait keeps, or a
    DefinitionError; and a compiled definition compiles again, from its stored form, to the
    same content (the host recompiles stored snapshots after a restart)."""
    try:
        compiled = engine.compile(source, text_only=True)
    except plait.DefinitionError as exc:
        assert exc.issues and all(isinstance(i.message, str) for i in exc.issues)
        return None
    stored = compiled.definition.to_dict()
    assert json_problem(stored) is None
    again = engine.compile(strict_loads(dumps(stored)))
    assert again.digest == compiled.digest
    return compiled


@SOME
@given(DOCUMENTS)
def test_any_document_compiles_or_is_refused(engine, document):
    compile_or_refuse(engine, document)


PLAIN_TEXT = st.text(st.characters(exclude_characters="${}%#", codec="utf-8"), max_size=12)
KEPT_VALUES = json_values(st.one_of(st.none(), st.booleans(), INTS, FLOATS, PLAIN_TEXT), 6)


@st.composite
def sound_steps(
    draw: st.DrawFn, prefix: str, visible: list[str], depth: int, in_loop: bool = False
) -> list[Any]:
    """Steps with unique ids that refer only to steps before them (or around them)."""
    steps: list[dict[str, Any]] = []
    for i in range(draw(st.integers(1, 3))):
        sid = f"{prefix}{i}"
        seen = visible + [s["id"] for s in steps]
        refs = [f"${{steps.{r}.output}}" for r in seen] + [f"$steps.{r}.output" for r in seen]
        templates = ["${inputs.x}", "$inputs.x", "${vars.v}", "${run.id}", "pr-${inputs.x}", *refs]
        if in_loop:
            templates += ["${item}", "${index}"]
        value = json_values(st.one_of(KEPT_VALUES, st.sampled_from(templates)), 5)
        kinds = ["tool", "transform", "validate", "wait", "delay"]
        if depth:
            kinds += ["loop", "parallel"]
        kind = draw(st.sampled_from(kinds))
        step: dict[str, Any] = {"id": sid}
        if kind == "tool":
            step |= {"tool": "probe.echo", "with": {"value": draw(value)}}
        elif kind == "transform":
            step["transform"] = draw(value)
        elif kind == "validate":
            step |= {"validate": draw(value), "assert": [f"${{ {draw(st.integers())} > 0 }}"]}
        elif kind == "wait":
            step |= {"wait": "go", "within": draw(st.floats(0.1, 5)), "default": draw(value)}
        elif kind == "delay":
            step["delay"] = draw(st.floats(0, 1))
        elif kind == "loop":
            step["loop"] = draw(st.sampled_from(["${range(3) | list}", "$inputs.items"]))
            step["steps"] = draw(sound_steps(f"{sid}_", seen, depth - 1, True))
        else:
            step["parallel"] = {
                "l": draw(sound_steps(f"{sid}_l", seen, depth - 1, in_loop)),
                "r": draw(sound_steps(f"{sid}_r", seen, depth - 1, in_loop)),
            }
        local = [s["id"] for s in steps]  # `needs` names steps of the same scope only
        if local and draw(st.booleans()):
            step["needs"] = draw(st.lists(st.sampled_from(local), max_size=2, unique=True))
        for name in draw(st.lists(st.sampled_from(["retry", "timeout", "cache"]), max_size=1)):
            step[name] = draw(
                {
                    "retry": st.fixed_dictionaries({"attempts": st.integers(1, 3)}),
                    "timeout": st.floats(0.5, 60),
                    "cache": st.booleans(),
                }[name]
            )
        steps.append(step)
    return steps


@st.composite
def sound_documents(draw: st.DrawFn) -> dict[str, Any]:
    steps = draw(sound_steps("s", [], 2))
    ids = [s["id"] for s in steps]
    return {
        "name": "w",
        "inputs": {"type": "object", "properties": {"x": {"type": "integer", "default": 2}}},
        "vars": {"v": draw(st.sampled_from(["${inputs.x}", "v"]))},
        "steps": steps,
        "outputs": {"o": draw(st.sampled_from([f"${{steps.{i}.output}}" for i in ids]))},
    }


def _places(value: Any) -> int:
    """How many values :func:`poison` can replace in ``value``."""
    if isinstance(value, dict):
        return 1 + sum(_places(v) for k, v in value.items() if k not in ("id", "name"))
    if isinstance(value, list):
        return 1 + sum(_places(v) for v in value)
    return 1


def poison(document: Any, where: int, bad: Any) -> Any:
    """``document`` with its ``where``-th value (in a walk, 1 is the whole) replaced by ``bad``."""
    count = [0]

    def walk(value: Any) -> Any:
        count[0] += 1
        if count[0] == where:
            return bad
        if isinstance(value, dict):
            return {k: v if k in ("id", "name") else walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(document)


@FEW
@given(sound_documents())
def test_sound_documents_compile(engine, document):
    compiled = compile_or_refuse(engine, document)
    assert compiled is not None
    text = dumps(document)
    assert compile_or_refuse(engine, text) is not None


@FEW
@given(sound_documents(), st.data(), NOT_KEPT)
def test_a_value_not_kept_anywhere_makes_a_document_invalid(engine, document, data, bad):
    """Task A as a property: wherever a value the store or the wire cannot keep sits in a
    definition, the definition is invalid, with that value's path."""
    poisoned = poison(document, data.draw(st.integers(2, _places(document))), bad)
    with pytest.raises(plait.DefinitionError) as caught:
        engine.compile(poisoned)
    reasons = ("finite", "digit", "not a string", "got ", "surrogate pair")
    assert any(r in i.message for r in reasons for i in caught.value.issues), caught.value.issues


@FEW
@given(DOCUMENTS, st.booleans())
def test_any_document_as_text_loads_or_is_refused(engine, document, as_yaml):
    try:
        text = _yaml_text(document) if as_yaml else json.dumps(document)  # NaN as 'NaN'
    except (TypeError, ValueError):
        reject()  # a 5,000-digit integer, a set: not text of either kind
    try:
        plait.load(text)
    except plait.DefinitionError:
        pass
    compile_or_refuse(engine, text)


def _yaml_text(document: Any) -> str:
    import io

    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    buffer = io.StringIO()
    try:
        yaml.dump(document, buffer)
    except Exception:  # noqa: BLE001 - what YAML cannot represent, JSON text stands in for
        return json.dumps(document)
    return buffer.getvalue()


YAML_BITS = st.sampled_from(
    [
        "name: w\n",
        "steps:\n",
        "  - id: a\n",
        "    transform: ",
        "    tool: probe.echo\n",
        "    with: {value: ",
        "}\n",
        "&a ",
        "*a",
        "!!binary aGk=",
        "!!set {a}",
        "!!omap [a: 1]",
        "!!pairs [a: 1]",
        "!foo x",
        "!!timestamp 2024-01-01",
        "2024-01-01",
        "2024-01-01T10:00:00Z",
        ".inf",
        "-.inf",
        ".nan",
        "0x" + "f" * 20,
        "1" * (MAX_INT_DIGITS + 1),
        "0o17",
        "1e400",
        "? [a, b] : c\n",
        "<<: {a: 1}\n",
        "[",
        "]",
        "{",
        "}",
        ",",
        "'",
        '"',
        "\\ud800",
        "\t",
        "\n",
        "- ",
        "%YAML 1.1\n---\n",
        "---\n",
        "...\n",
        "# c\n",
        "|\n  x\n",
        "true",
        "~",
        "null",
    ]
)


@SOME
@given(st.lists(st.one_of(YAML_BITS, TEXT), max_size=14).map("".join))
def test_any_text_loads_or_is_refused(engine, text):
    try:
        plait.load(text)
    except plait.DefinitionError:
        pass
    compile_or_refuse(engine, text)


def test_yaml_non_finite_numbers_are_invalid_with_their_path(engine):
    """Task A: `.inf` and `.nan` were accepted, then stored as null."""
    text = (
        "name: w\nsteps:\n  - id: a\n    transform: {x: [1, .inf]}\n"
        "  - id: b\n    transform: .nan\n"
    )
    with pytest.raises(plait.DefinitionError) as caught:
        engine.compile(text)
    issues = {(i.path, i.line) for i in caught.value.issues}
    assert issues == {("steps[0].transform.x[1]", 4), ("steps[1].transform", 6)}
    assert all("not a finite number" in i.message for i in caught.value.issues)
    with pytest.raises(plait.DefinitionError, match=r"steps\[0\].transform.x\[1\]"):
        plait.load(text)


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"inputs": {"type": "object", "default": math.inf}}, "inputs.default"),
        ({"vars": {"v": [math.nan]}}, "vars.v[0]"),
        ({"outputs": {"o": 10**5000}}, "outputs.o"),
        ({"defaults": {"timeout": math.inf}}, "defaults.timeout"),
        ({"version": 10**5000}, "version"),
        ({"description": {1: 2}}, "description"),
        ({"steps": [{"id": "a", "tool": "probe.echo", "with": {"value": -math.inf}}]}, None),
        ({"steps": [{"id": "a", "tool": "probe.echo", "cache": {"ttl": math.inf}}]}, None),
        ({"steps": [{"id": "a", "loop": [1], "steps": [{"id": "b", "transform": {1: 1}}]}]}, None),
    ],
)
def test_definition_values_not_kept_are_invalid(engine, document, path):
    data = {"name": "w", "steps": [{"id": "s", "transform": 1}], **document}
    with pytest.raises(plait.DefinitionError) as caught:
        engine.compile(data)
    paths = [i.path for i in caught.value.issues]
    expected = {
        None: ["steps[0].with.value", "steps[0].cache.ttl", "steps[0].steps[0].transform"],
    }.get(path, [path])
    assert any(p in expected for p in paths), paths


def test_a_model_built_in_python_is_checked_too(engine):
    wf = plait.WorkflowDef(name="w", steps=[{"id": "a", "transform": math.nan}])
    with pytest.raises(plait.DefinitionError, match=r"steps\[0\].transform: nan"):
        engine.compile(wf)


def test_yaml_types_that_are_not_json(engine):
    """Found by the document property: a YAML date, binary, set or tagged scalar reached the
    digest or the store and raised TypeError / PydanticSerializationError."""
    base = "name: w\nsteps:\n  - id: a\n    transform: {}\n"
    compiled = engine.compile(base.format("2024-01-01"))  # YAML 1.2 core schema: a string
    assert compiled.definition.steps[0].config["transform"] == "2024-01-01"
    for value, message in [
        ("!!binary aGk=", "binary"),
        ("!!set {a, b}", "a set"),
        ("!foo bar", "!foo"),
        ("{? [a, b] : c}", "mapping key"),
    ]:
        with pytest.raises(plait.DefinitionError, match=message) as caught:
            engine.compile(base.format(value))
        assert caught.value.issues[0].line == 4


def test_yaml_integer_past_the_digit_limit_is_invalid_at_its_line(engine):
    """Found by the document property: ruamel raised Python's ValueError for it."""
    text = "name: w\nsteps:\n  - id: a\n    transform: " + "7" * 5000 + "\n"
    with pytest.raises(plait.DefinitionError, match="5,000 digits") as caught:
        plait.load(text)
    assert caught.value.issues[0].line == 4


def test_anchored_boolean_stays_a_boolean(engine):
    """Found by the document property: an anchored `true` came back as the integer 1."""
    text = "name: w\nsteps:\n  - id: a\n    transform: &t true\n  - id: b\n    transform: *t\n"
    steps = engine.compile(text).definition.steps
    assert steps[0].config["transform"] is True and steps[1].config["transform"] is True


def test_yaml_alias_bomb_is_refused_quickly(engine):
    """An alias bomb: 11 lines that expand to 10**8 values took minutes before it failed."""
    lines = ["name: w", "a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    lines += ["steps:", "  - id: s", "    transform: *a7"]
    start = time.monotonic()
    with pytest.raises(plait.DefinitionError, match="aliases expand"):
        plait.load("\n".join(lines))
    assert time.monotonic() - start < 5


def test_surrogates_in_a_definition_compile_and_digest(engine):
    """Found by the document property: a lone surrogate (valid in JSON text as \\ud800) made
    the content digest raise UnicodeEncodeError."""
    compiled = engine.compile(
        json.dumps({"name": "w", "steps": [{"id": "a", "transform": "\ud800"}]})
    )
    assert compiled.definition.steps[0].config["transform"] == "\ud800"
    assert len(compiled.digest) == 64


def test_a_surrogate_in_a_mapping_key_of_a_definition(engine):
    """Found by the document property: pydantic's JSON mode (to_dict, so the digest and the
    stored definition) raised UnicodeEncodeError on a mapping key with a lone surrogate."""
    document = {"name": "w", "steps": [{"id": "a", "transform": {"k\udec7": "v\ud800"}}]}
    compiled = engine.compile(document)
    stored = compiled.definition.to_dict()
    assert stored["steps"][0]["transform"] == {"k\udec7": "v\ud800"}
    assert engine.compile(strict_loads(dumps(stored))).digest == compiled.digest


def test_run_inputs_not_kept_are_refused(engine):
    """Run inputs from Python (the wire's codec refuses them already) are checked too."""
    compiled = engine.compile({"name": "w", "steps": [{"id": "a", "transform": 1}]})
    assert compiled.check_inputs({"x": math.nan})
    assert "4,300-digit" in compiled.check_inputs({"x": [10**5000]})[0]
    assert compiled.check_inputs({"x": "\ud800", "y": -(10**4299)}) == []


# -- templates: a value or a TemplateError, within the limits --------------------------------------

LIMITS = TemplateLimits(
    max_source=4096, max_output=20_000, max_iterations=5_000, max_seconds=0.5, max_range=500
)
TEMPLATE_BITS = st.sampled_from(
    [
        "${",
        "}",
        "{{",
        "}}",
        "{%",
        "%}",
        "{#",
        "#}",
        "$",
        "$$",
        "inputs",
        "steps",
        "steps.a.output",
        "inputs.x",
        "item",
        "index",
        "vars",
        "run",
        "env",
        ".",
        "[",
        "]",
        "(",
        ")",
        "'",
        '"',
        "|",
        "length",
        "upper",
        "join",
        "list",
        "tojson",
        "int",
        "float",
        "string",
        "sum",
        "sort",
        "unique",
        "first",
        "map",
        "center",
        "format",
        "replace",
        "indent",
        "wordwrap",
        "truncate",
        "range(",
        "lipsum(",
        "dict(",
        "for x in ",
        "endfor",
        "if ",
        "else",
        "endif",
        "set ",
        "macro m()",
        "endmacro",
        "m()",
        "loop",
        "caller",
        "self",
        "__class__",
        "_x",
        "mro",
        "*",
        "**",
        "+",
        "-",
        "/",
        "//",
        "%",
        "~",
        "==",
        " and ",
        " or ",
        " not ",
        " in ",
        "9",
        "999",
        "99999999",
        "0.5",
        "1e308",
        "-1",
        ",",
        ":",
        " ",
        "\n",
        "x",
        "true",
        "none",
        "'a'",
    ]
)
TEMPLATE_SOURCES = st.lists(st.one_of(TEMPLATE_BITS, KEPT_TEXT), max_size=16).map(
    lambda bits: unpair("".join(bits))
)
"""Template sources as a definition may hold them: no surrogate pair (the compiler refuses)."""


def render_context(value: Any) -> dict[str, Any]:
    return {
        "inputs": {"x": 3, "s": "text", "v": value},
        "steps": {"a": {"output": value}, "b": {"output": [1, 2, 3]}},
        "vars": {"v": "v"},
        "item": value,
        "index": 2,
        "run": {"id": "r1", "workflow": "w"},
        "env": {"HOME": "/home"},
    }


def check_template(template_engine: Any, source: str, value: Any, expression: bool) -> None:
    try:
        if expression:
            template = template_engine.compile_expression(source, where="p")
        else:
            template = template_engine.compile(source, where="p")
    except plait.DefinitionError:  # TemplateSyntaxError
        return
    start = time.monotonic()
    try:
        result = template.render(render_context(value))
    except plait.TemplateError:
        result = None
    elapsed = time.monotonic() - start
    assert elapsed < LIMITS.max_seconds + 1.5, (source, elapsed)
    assert json_problem(result) is None, (source, result)
    assert len(dumps(result)) <= LIMITS.max_output * 2 + len(dumps(value)), source


@pytest.fixture(scope="module")
def template_engine() -> Any:
    return TemplateEngine(LIMITS)


@SOME
@given(TEMPLATE_SOURCES, SMALL_JSON, st.booleans())
def test_any_template_renders_or_raises_a_template_error(template_engine, source, value, expr):
    check_template(template_engine, source, value, expr)


ATOMS = st.one_of(
    st.sampled_from(
        [
            "inputs.x",
            "inputs.s",
            "inputs.v",
            "inputs['v']",
            "steps.a.output",
            "steps.b.output",
            "steps.b.output[0]",
            "item",
            "index",
            "vars.v",
            "run.id",
            "env.HOME",
            "none",
            "true",
            "range(5)",
            "range(10**9)",
            "[1, 2, 3]",
            "{'k': 1}",
            "(1, 2)",
            "lipsum(2)",
            "dict(a=1)",
            "'nan'",
            "'inf'",
            "1e308",
            "9" * 40,
            "loop",
            "caller",
            "self",
            "namespace(a=1)",
            "cycler(1, 2)",
            "joiner()",
        ]
    ),
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    KEPT_TEXT.map(lambda t: repr(t).replace("\\U", "\\u")),
)
OPERATORS = st.sampled_from(
    ["+", "-", "*", "/", "//", "%", "**", "~", "==", "<", "and", "or", "in", "not in", "is"]
)
FILTERS = st.sampled_from(
    "length upper lower list sort unique first last tojson int float string sum abs round "
    "reverse trim title capitalize wordcount urlize escape safe pprint xmlattr "
    "filesizeformat dictsort items min max count striptags random center(9) center(10**9) "
    "indent(4) wordwrap(5) truncate(5) batch(2) slice(2) join(',') join "
    "replace('a','bbb') format(1) default(1) map('upper') map('string') select reject "
    "attr('x') groupby('x') selectattr('x') sort(attribute='x') int(base=2) "
    "float(default=1) string|length".split()
)
METHODS = st.sampled_from(
    [
        ".upper()",
        ".split()",
        ".replace('a', 'bb')",
        ".format(1)",
        ".format_map({})",
        "[0]",
        "[1:]",
        "[::-1]",
        ".items()",
        ".keys()",
        ".get('k')",
        ".center(99999999)",
        ".zfill(9999999)",
        ".ljust(5)",
        ".expandtabs(999999)",
        ".join(['a', 'b'])",
        ".count('a')",
        ".mro()",
        ".__class__",
        ".append(1)",
        ".update({})",
        ".pop()",
        ".bit_length()",
        ".hex()",
        ".is_integer()",
    ]
)


def _expression_forms(kid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(kid, OPERATORS, kid).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(kid, FILTERS).map(lambda t: f"({t[0]} | {t[1]})"),
        st.tuples(kid, METHODS).map(lambda t: f"{t[0]}{t[1]}"),
        st.tuples(kid, kid, kid).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
        st.lists(kid, max_size=3).map(lambda items: f"[{', '.join(items)}]"),
        st.tuples(KEPT_TEXT.map(repr), kid).map(lambda t: f"{{{t[0]}: {t[1]}}}"),
        kid.map(lambda e: f"(not {e})"),
        kid.map(lambda e: f"(-{e})"),
    )


EXPRESSIONS = st.recursive(ATOMS, _expression_forms, max_leaves=6)


def _statements(kid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    body = st.lists(kid, min_size=1, max_size=3).map("".join)
    return st.one_of(
        st.tuples(EXPRESSIONS, body).map(lambda t: f"{{% for x in {t[0]} %}}{t[1]}{{% endfor %}}"),
        st.tuples(EXPRESSIONS, body, body).map(
            lambda t: f"{{% if {t[0]} %}}{t[1]}{{% else %}}{t[2]}{{% endif %}}"
        ),
        st.tuples(EXPRESSIONS, body).map(lambda t: f"{{% set y = {t[0]} %}}{t[1]}"),
        st.tuples(body, EXPRESSIONS).map(
            lambda t: f"{{% macro m(a) %}}{t[0]}{{% endmacro %}}{{{{ m({t[1]}) }}}}"
        ),
        body.map(lambda b: f"{{% macro m(n) %}}{b}{{{{ m(n) }}}}{{% endmacro %}}{{{{ m(1) }}}}"),
        body.map(lambda b: f"{{% filter upper %}}{b}{{% endfilter %}}"),
        body.map(lambda b: f"{{% call m() %}}{b}{{% endcall %}}"),
    )


TEMPLATES_TEXT = st.recursive(
    st.one_of(
        KEPT_TEXT.filter(lambda t: "{" not in t and "$" not in t),
        EXPRESSIONS.map(lambda e: "${" + e + "}"),
        EXPRESSIONS.map(lambda e: "{{ " + e + " }}"),
        st.sampled_from(["$inputs.x", "$steps.a.output", "$$", "{# c #}", "x", "{{ y }}"]),
    ),
    lambda kid: st.one_of(st.lists(kid, min_size=2, max_size=4).map("".join), _statements(kid)),
    max_leaves=6,
).map(unpair)


@SOME
@given(EXPRESSIONS, SMALL_JSON, st.booleans())
def test_any_expression_renders_or_raises_a_template_error(template_engine, expr, value, bare):
    source = expr if bare else "${" + expr + "}"
    check_template(template_engine, source, value, bare)


@SOME
@given(TEMPLATES_TEXT, SMALL_JSON)
def test_any_jinja_template_renders_or_raises_a_template_error(template_engine, source, value):
    check_template(template_engine, source, value, False)


def test_surrogate_pairs_are_refused_where_they_enter(engine, template_engine):
    """Found by the round trip: a str holding a surrogate pair as two code units (a Python
    plugin decoding UTF-16 with 'surrogatepass', say) is written as two escapes, which every
    JSON reader joins into one character: after a restart, the value was another."""
    assert "U+1F600" in json_problem({"out": ["\ud83d\ude00"]})
    assert json_problem("\ude00\ud83d") is None  # the other order is two lone ones: kept
    with pytest.raises(plait.DefinitionError, match="surrogate pair"):
        engine.compile({"name": "w", "steps": [{"id": "a", "transform": {"k\ud83d\ude00": 1}}]})
    # two lone halves meeting in a rendered string: refused as a template error
    template = template_engine.compile("${inputs.a}${inputs.b}")
    with pytest.raises(plait.TemplateError, match="surrogate pair"):
        template.render(render_context(None) | {"inputs": {"a": "x\ud83d", "b": "\ude00"}})
    expression = template_engine.compile("${ inputs.a ~ inputs.b }")
    with pytest.raises(plait.TemplateError, match="surrogate pair"):
        expression.render(render_context(None) | {"inputs": {"a": "\ud83d", "b": "\ude00"}})


def test_json_text_definitions_load_as_json_reads_them(engine):
    """Found by the text property: JSON is YAML 1.2 only up to a point. A JSON string may hold
    C1 controls, DEL or U+FFFF raw (ruamel refused the text), U+0085/U+2028 raw (ruamel read
    them as line breaks and folded them into spaces) and characters past U+FFFF as escaped
    surrogate pairs (ruamel kept two lone surrogates)."""
    description = "a\x85b\u2028c\x7f\x9f\uffff \U0001f600"
    for text in (
        json.dumps(
            {"name": "w", "description": description, "steps": [{"id": "a", "transform": 1}]},
            ensure_ascii=False,
        ),
        json.dumps(
            {"name": "w", "description": description, "steps": [{"id": "a", "transform": 1}]}
        ),
    ):
        assert engine.compile(text).definition.description == description
    yaml_text = 'name: w\ndescription: "\\ud83d\\ude00"\nsteps: [{id: a, transform: 1}]\n'
    assert plait.load(yaml_text).description == "\U0001f600"


@FEW
@given(
    st.dictionaries(KEPT_TEXT, JSON, max_size=4), st.booleans(), st.sampled_from([None, 2, "\t"])
)
def test_json_text_parses_as_json(document, ascii_only, indent):
    """A JSON text of a mapping reads, through the YAML loader, as json.loads reads it."""
    from plait.definition.loader import parse_text

    text = json.dumps(document, ensure_ascii=ascii_only, indent=indent)
    data, _ = parse_text(text)
    assert data == strict_loads(text)
