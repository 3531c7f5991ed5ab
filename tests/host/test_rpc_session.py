"""Host → client requests over a session: matched responses, errors, timeouts, disconnects."""

from __future__ import annotations

import json

import anyio
import pytest

from plait.rpc.dispatcher import Dispatcher
from plait.rpc.errors import InvalidParams, RpcError
from plait.rpc.session import Session, SessionClosed

pytestmark = pytest.mark.anyio


async def _client(session: Session, dispatcher: Dispatcher, answer) -> None:
    """A fake peer: reads what the host queued and answers host requests."""
    async with session.outbox as outbox:
        async for text in outbox:
            session.sent(text)
            message = json.loads(text)
            if "method" in message and "id" in message:
                reply = answer(message)
                if reply is not None:
                    await dispatcher.serve(json.dumps(reply), session)


async def test_host_request_gets_the_matching_response():
    dispatcher, session = Dispatcher(), Session(transport="test")

    def answer(message):
        return {
            "jsonrpc": "2.0",
            "id": message["id"],
            "result": {"echo": message["params"]["text"]},
        }

    async with anyio.create_task_group() as tg:
        tg.start_soon(_client, session, dispatcher, answer)
        with anyio.fail_after(2):
            first, second = (
                await session.request("sampling/createMessage", {"text": "a"}),
                await session.request("sampling/createMessage", {"text": "b"}),
            )
        assert first == {"echo": "a"} and second == {"echo": "b"}
        session.close()


async def test_host_request_error_response_raises_rpc_error():
    dispatcher, session = Dispatcher(), Session(transport="test")

    def answer(message):
        return {
            "jsonrpc": "2.0",
            "id": message["id"],
            "error": {"code": -32602, "message": "no", "data": {"x": 1}},
        }

    async with anyio.create_task_group() as tg:
        tg.start_soon(_client, session, dispatcher, answer)
        with anyio.fail_after(2), pytest.raises(RpcError) as info:
            await session.request("sampling/createMessage", {})
        assert isinstance(info.value, InvalidParams) and info.value.data == {"x": 1}
        session.close()


async def test_host_request_times_out_and_forgets_the_id():
    dispatcher, session = Dispatcher(), Session(transport="test")
    async with anyio.create_task_group() as tg:
        tg.start_soon(_client, session, dispatcher, lambda m: None)  # never answers
        with pytest.raises(TimeoutError):
            await session.request("ping", timeout=0.1)
        assert not session._pending
        session.close()


async def test_pending_host_request_fails_when_the_client_goes_away():
    session = Session(transport="test")

    async def close_soon():
        await anyio.sleep(0.05)
        session.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(close_soon)
        with anyio.fail_after(2), pytest.raises(SessionClosed):
            await session.request("ping", timeout=5)


async def test_unknown_response_ids_are_ignored_and_never_answered():
    dispatcher, session = Dispatcher(), Session(transport="test")
    assert (
        await dispatcher.handle('{"jsonrpc": "2.0", "id": "plait-99", "result": 1}', session)
        is None
    )
    session.close()


def test_slow_reader_is_dropped_when_its_queue_is_full():
    dropped = []
    session = Session(transport="test", max_queue=10, on_overflow=lambda: dropped.append(1))
    for i in range(10):
        session.notify("runs/event", {"i": i})
    session.notify("runs/event", {"i": 10})  # the 11th overflows
    assert dropped == [1] and session.closed


def test_queue_is_bounded_in_bytes_too():
    session = Session(transport="test", max_queue_bytes=1000)
    session.notify("x", {"blob": "a" * 600})
    session.notify("x", {"blob": "b" * 600})
    assert session.closed
