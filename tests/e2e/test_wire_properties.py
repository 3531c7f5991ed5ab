"""The wire as a property, over a real WebSocket: whatever a client sends, the host answers with
well-formed JSON-RPC (or, for a notification, nothing) and the connection stays usable.

The same property runs against the dispatcher directly, with many more examples, in
tests/host/test_properties.py; here a few dozen go through the socket, the transport's workers
and its writer.
"""

from __future__ import annotations

import json
import math
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plait.rpc.codec import decode
from plait.rpc.errors import ParseError

pytestmark = pytest.mark.anyio

SOCKET = settings(
    max_examples=40,
    deadline=None,
    database=None,
    # the same examples on every run: CI is not where a new counterexample should surface
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

CHARS = st.one_of(
    st.characters(),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.sampled_from('"\\\x00\x7f\u2028\ufeff\U0010ffff'),
)
TEXT = st.lists(CHARS, max_size=20).map("".join)  # st.text() would drop the surrogates
INTS = st.one_of(
    st.integers(),
    st.integers(0, 4300).map(lambda n: 10**n - 1),
    st.integers(0, 4300).map(lambda n: 1 - 10**n),
)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXT, kids, max_size=4),
    max_leaves=10,
)
METHODS = st.one_of(
    st.sampled_from(
        [
            "ping",
            "initialize",
            "notifications/initialized",
            "notifications/cancelled",
            "tools/list",
            "workflows/validate",
            "workflows/list",
            "workflows/get",
            "runs/start",
            "runs/get",
            "runs/list",
            "runs/wait",
            "runs/events",
            "runs/signal",
            "host/info",
            "rpc.discover",
            "",
        ]
    ),
    TEXT,
)
PARAMS = st.one_of(
    st.dictionaries(
        st.sampled_from(["name", "workflow", "runId", "inputs", "source", "limit", "cursor"])
        | TEXT,
        JSON,
        max_size=3,
    ),
    st.fixed_dictionaries(
        {"workflow": st.just("quick"), "inputs": st.fixed_dictionaries({"x": INTS})}
    ),
    st.lists(JSON, max_size=2),
    JSON,
)


@st.composite
def messages(draw: st.DrawFn) -> Any:
    def request() -> dict[str, Any]:
        message: dict[str, Any] = {"jsonrpc": "2.0" if draw(st.integers(0, 9)) else draw(JSON)}
        message["method"] = draw(METHODS)
        if draw(st.booleans()):
            message["params"] = draw(PARAMS)
        if draw(st.integers(0, 3)):
            message["id"] = draw(st.one_of(st.none(), INTS, FLOATS, TEXT, st.booleans()))
        return message

    kind = draw(st.integers(0, 5))
    if kind == 0:
        return [request() for _ in range(draw(st.integers(0, 3)))]
    if kind == 1:
        return draw(JSON)
    return request()


@st.composite
def frames(draw: st.DrawFn) -> str | bytes:
    """A text frame (valid UTF-8, lone surrogates only as JSON escapes) or a binary one."""
    kind = draw(st.integers(0, 7))
    if kind == 0:
        return draw(TEXT).encode("utf-8", "surrogatepass")  # binary, maybe not UTF-8
    if kind == 1:
        return draw(st.text(max_size=20))  # not JSON, most of the time
    if kind == 2:
        depth = draw(st.integers(60, 70))
        return (
            '{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":'
            + "[" * depth
            + ("]" * depth + "}}")
        )
    text = json.dumps(draw(messages()), ensure_ascii=True)
    return text.encode() if kind == 3 else text


def _strict(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _check_response(item: Any, frame: str) -> None:
    assert isinstance(item, dict) and item.get("jsonrpc") == "2.0", frame
    assert "id" in item and ("result" in item) != ("error" in item), frame
    assert set(item) <= {"jsonrpc", "id", "result", "error"}, frame
    if "error" in item:
        error = item["error"]
        assert isinstance(error["code"], int) and isinstance(error["message"], str), frame
        assert error["code"] != -32603, frame  # a handler crashed


def _expected_id(sent: str | bytes) -> tuple[bool, Any]:
    """(True, id) when ``sent`` is one well-formed request, whose answer must carry the id."""
    try:
        message = decode(sent)
    except ParseError:
        return False, None
    if not (isinstance(message, dict) and "id" in message):
        return False, None
    rid = message["id"]
    well_formed = (
        message.get("jsonrpc") == "2.0"
        and isinstance(message.get("method"), str)
        and not isinstance(rid, bool)
        and isinstance(rid, str | int | float | type(None))
        and isinstance(message.get("params", {}), dict | list)
        and set(message) <= {"jsonrpc", "method", "params", "id"}
    )
    return well_formed, rid


@SOCKET
@given(sent=frames())
async def test_any_frame_gets_a_well_formed_answer_and_the_connection_stays(client, sent):
    await client.ws.send(sent)
    await client.ws.send('{"jsonrpc":"2.0","id":"ping-after","method":"ping"}')
    replies: list[Any] = []
    with anyio.fail_after(5):
        while True:
            text = await client.ws.recv()
            assert isinstance(text, str)  # the host sends text frames only
            frame = _strict(text)
            if isinstance(frame, dict) and "method" in frame:
                assert "id" not in frame and frame["jsonrpc"] == "2.0", text  # a notification
                continue
            if isinstance(frame, dict) and frame.get("id") == "ping-after":
                assert frame == {"jsonrpc": "2.0", "id": "ping-after", "result": {}}
                break
            replies.append(frame)
    # the two frames are served concurrently: an answer may follow the ping's
    with anyio.move_on_after(0.05 if not replies else 0):
        text = await client.ws.recv()
        frame = _strict(text)
        if not (isinstance(frame, dict) and "method" in frame):
            replies.append(frame)
    assert len(replies) <= 1, replies
    for frame in replies:
        for item in frame if isinstance(frame, list) else [frame]:
            _check_response(item, json.dumps(frame))
    must, rid = _expected_id(sent)
    if must:
        assert len(replies) == 1 and isinstance(replies[0], dict), (sent, replies)
        got = replies[0]["id"]
        assert got == rid or (isinstance(rid, float) and math.isnan(rid)), (sent, got)


async def test_an_id_with_a_lone_surrogate_comes_back_over_the_socket(client):
    """Found by the wire property: the reply carried the surrogate raw, which a text frame
    (UTF-8) cannot, and the connection broke."""
    await client.send('{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}')
    text = await client.recv_text()
    assert "\\ud800" in text
    assert json.loads(text) == {"jsonrpc": "2.0", "id": "\ud800", "result": {}}
    assert await client.call("ping") == {}
