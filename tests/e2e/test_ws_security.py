"""docs/reliability.md §25-§33: the WebSocket transport's handshake checks and limits."""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path

import anyio
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

import plait
from plait.config import HostSettings
from plait.errors import ConfigError
from plait.rpc.transports import websocket as ws_module

from .conftest import (
    WAIT,
    close_code,
    http_status,
    make_config,
    raw_websocket,
    read_until_eof,
    serving,
    upgrade_request,
    ws_frame,
)

# Timing-sensitive (pings under 500 ms) or CPU-heavy: `make test` runs these after the rest,
# on their own, so nothing else loads the machine while they measure.
pytestmark = [pytest.mark.anyio, pytest.mark.timing]


async def handshake_status(served, **kwargs) -> int:
    """The HTTP status a refused handshake got (fails if the upgrade succeeded)."""
    with pytest.raises(InvalidStatus) as info:
        async with served.client(**kwargs):
            pass
    return info.value.response.status_code


# -- 25. bind address ----------------------------------------------------------------------------


async def test_default_bind_is_loopback(served):
    assert HostSettings().bind == "127.0.0.1"
    assert served.url == f"ws://127.0.0.1:{served.port}/rpc"
    tcp = Path("/proc/net/tcp")
    if tcp.exists():  # the listening socket's local address is 127.0.0.1 (0100007F)
        listening = [
            line.split()[1] for line in tcp.read_text().splitlines()[1:] if line.split()[3] == "0A"
        ]
        assert f"0100007F:{served.port:04X}" in listening
        assert f"00000000:{served.port:04X}" not in listening


async def test_binding_all_interfaces_needs_the_explicit_flag(tmp_path, pm):
    host = plait.Host(make_config(tmp_path, bind="0.0.0.0"), pm=pm)
    async with host:
        with pytest.raises(ConfigError, match="allow_remote"):
            with anyio.fail_after(WAIT):
                await host.serve_websocket(token="t" * 32)


async def test_binding_all_interfaces_with_the_flag_logs_a_warning(tmp_path, pm, caplog):
    caplog.set_level(logging.WARNING)
    host = plait.Host(make_config(tmp_path, bind="0.0.0.0", allow_remote=True), pm=pm)
    async with host:
        ready = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: host.serve_websocket(token="t" * 32, ready=lambda u, t: ready.set())
            )
            with anyio.fail_after(WAIT):
                await ready.wait()
            tg.cancel_scope.cancel()
    assert any(r.levelno == logging.WARNING and "0.0.0.0" in r.getMessage() for r in caplog.records)


# -- 26. Origin ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "null", "http://localhost:3000", "https://127.0.0.1"]
)
async def test_origin_not_on_the_allow_list_gets_403(served, origin):
    assert await handshake_status(served, origin=origin) == 403


async def test_origin_is_checked_even_with_the_token_in_the_query(served):
    status = await handshake_status(
        served,
        url=f"{served.url}?token={served.token}",
        additional_headers={},
        origin="http://evil.example",
    )
    assert status == 403


async def test_allowed_origin_connects(tmp_path, pm):
    async with serving(tmp_path, pm, allowed_origins=["http://localhost:3000"]) as s:
        async with s.client(origin="http://localhost:3000") as c:
            assert await c.ping_time() < 0.5
        assert await handshake_status(s, origin="http://localhost:3001") == 403


async def test_missing_origin_needs_a_valid_token(served):
    async with served.client() as c:  # no Origin, valid token
        assert await c.ping_time() < 0.5
    assert await handshake_status(served, additional_headers={}) == 401


# -- 27. Host header -----------------------------------------------------------------------------


async def test_host_header_must_name_this_server(served):
    auth = {"Authorization": f"Bearer {served.token}"}
    port = served.port
    for good in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        status, _ = await http_status(port, upgrade_request(port, host=good, headers=auth))
        assert status == 101, good
    for bad in (
        "evil.example",
        f"evil.example:{port}",
        "127.0.0.1",
        "localhost",
        f"127.0.0.1:{port + 1}",
        f"localhost.evil.example:{port}",
        f"0.0.0.0:{port}",
        f"127.0.0.2:{port}",
        "",
    ):
        status, data = await http_status(port, upgrade_request(port, host=bad, headers=auth))
        assert status == 403, (bad, data[:200])
        assert b"Upgrade: websocket" not in data


async def test_missing_host_header_is_refused(served):
    port = served.port
    request = upgrade_request(port, headers={"Authorization": f"Bearer {served.token}"})
    request = b"\r\n".join(line for line in request.split(b"\r\n") if not line.startswith(b"Host:"))
    status, _ = await http_status(port, request)
    assert status in (400, 403)


async def test_health_answers_over_http_and_checks_the_host_header(served):
    port = served.port
    get = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    status, data = await http_status(port, get)
    assert status == 200
    head, body_bytes = data.split(b"\r\n\r\n", 1)
    assert b"content-type: application/json" in head.lower()  # issue 11: JSON, said so
    body = json.loads(body_bytes.decode())
    assert body["status"] == "ok"
    assert body["limits"]["max_connections"] == served.host.config.limits.max_connections
    bad = get.replace(f"127.0.0.1:{port}".encode(), b"rebound.example")
    status, _ = await http_status(port, bad)
    assert status == 403
    status, _ = await http_status(
        port, upgrade_request(port, "/other", headers={"Authorization": f"Bearer {served.token}"})
    )
    assert status == 404


# -- 28. token -----------------------------------------------------------------------------------


async def test_token_is_random_long_and_stored_privately(served):
    assert len(served.token) >= 22  # ≥ 128 bits of urlsafe base64
    data_dir = Path(served.host.config.host.data_dir)
    path = data_dir / "token"
    assert path.read_text().strip() == served.token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert served.host.issue_token() != served.token  # per launch, fresh


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "token"},
    ],
    ids=["none", "empty", "wrong", "basic", "bare"],
)
async def test_missing_or_wrong_token_gets_401(served, headers):
    assert await handshake_status(served, additional_headers=headers) == 401


async def test_near_miss_tokens_get_401(served):
    token = served.token
    for given in (token[:-1], token + "x", token[::-1], token.swapcase(), token[:16]):
        status = await handshake_status(
            served, additional_headers={"Authorization": f"Bearer {given}"}
        )
        assert status == 401


async def test_token_in_the_query(served):
    async with served.client(url=f"{served.url}?token={served.token}", additional_headers={}) as c:
        assert await c.ping_time() < 0.5
    assert (
        await handshake_status(served, url=f"{served.url}?token=wrong", additional_headers={})
        == 401
    )
    assert await handshake_status(served, url=f"{served.url}?token=", additional_headers={}) == 401


async def test_refused_handshake_reaches_no_method(served):
    port = served.port
    request = upgrade_request(port)  # no token
    status, data = await http_status(
        port,
        request
        + ws_frame(
            0x1,
            b'{"jsonrpc":"2.0","method":"runs/start","params":{"workflow":"quick",'
            b'"inputs":{"x":1}},"id":1}',
        ),
    )
    assert status == 401
    assert served.host.engine.runs == {}


def host_log(caplog) -> str:
    """What the host logged (the test client's own ``websockets.client`` logger excluded)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("plait"))


async def test_token_is_not_logged_at_info(served, caplog):
    caplog.set_level(logging.INFO)
    async with served.client() as c:
        await c.ping_time()
    async with served.client(url=f"{served.url}?token={served.token}", additional_headers={}):
        pass
    await handshake_status(served, additional_headers={"Authorization": "Bearer nottoken"})
    assert served.token not in host_log(caplog)
    assert "nottoken" not in host_log(caplog)


@pytest.mark.parametrize("how", ["header", "query"])
async def test_token_is_not_logged_even_at_debug(served, caplog, how):
    caplog.set_level(logging.DEBUG)
    if how == "header":
        async with served.client() as c:
            await c.ping_time()
    else:
        async with served.client(
            url=f"{served.url}?token={served.token}", additional_headers={}
        ) as c:
            await c.ping_time()
    assert host_log(caplog)  # the host did log at DEBUG
    assert served.token not in host_log(caplog)


# -- 29. message size ----------------------------------------------------------------------------


async def test_oversized_message_closes_with_1009_and_others_keep_working(tmp_path, pm):
    async with (
        serving(tmp_path, pm, max_message_bytes=64 * 1024) as s,
        s.client() as other,
        s.client(max_size=None) as big,
    ):
        ok = json.dumps(
            {"jsonrpc": "2.0", "method": "ping", "id": 1, "params": {"pad": "x" * (60 * 1024)}}
        )
        await big.send(ok)
        assert (await big.recv())["result"] == {}
        await big.send(
            json.dumps(
                {"jsonrpc": "2.0", "method": "ping", "id": 2, "params": {"pad": "x" * (70 * 1024)}}
            )
        )
        with pytest.raises(ConnectionClosed) as info:
            await big.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        assert await other.ping_time() < 0.5


async def test_size_limit_applies_after_decompression(served):
    async with served.client() as other, served.client(compression="deflate") as big:
        assert big.ws.protocol.extensions, "permessage-deflate negotiated"
        payload = json.dumps(
            {"jsonrpc": "2.0", "method": "ping", "id": 1, "params": {"pad": " " * (2 << 20)}}
        )  # compresses to ~kB
        await big.send(payload)
        with pytest.raises(ConnectionClosed) as info:
            await big.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        assert await other.ping_time() < 0.5


# -- 30. connection limit ------------------------------------------------------------------------


async def test_connections_over_the_limit_get_503_and_existing_ones_keep_working(tmp_path, pm):
    async with serving(tmp_path, pm, max_connections=3) as s:
        async with s.client() as a, s.client() as b, s.client() as c:
            for x in (a, b, c):
                assert await x.ping_time() < 0.5
            assert await handshake_status(s) == 503
            assert await handshake_status(s) == 503
            for x in (a, b, c):
                assert await x.ping_time() < 0.5
        # a slot frees once a client leaves
        with anyio.fail_after(WAIT):
            while True:
                try:
                    async with s.client() as d:
                        assert await d.ping_time() < 0.5
                        break
                except InvalidStatus:
                    await anyio.sleep(0.05)


async def test_concurrent_handshakes_cannot_exceed_the_connection_limit(tmp_path, pm):
    async with serving(tmp_path, pm, max_connections=3) as s:
        outcomes: list[object] = []
        release = anyio.Event()

        async def one() -> None:
            try:
                async with s.client() as c:
                    await c.ping_time()
                    outcomes.append("open")
                    await release.wait()
            except InvalidStatus as exc:
                outcomes.append(exc.response.status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(12):
                tg.start_soon(one)
            with anyio.fail_after(WAIT):
                while len(outcomes) < 12 and outcomes.count("open") <= 3:
                    await anyio.sleep(0.02)
                await anyio.sleep(0.1)
            opened = outcomes.count("open")
            release.set()
        assert opened == 3 and outcomes.count(503) == 9, outcomes


# -- 31. slow readers ----------------------------------------------------------------------------


BURST = {
    "name": "burst",
    "steps": [
        {"id": "hold", "wait": "go"},
        {
            "id": "each",
            # ~13 MB of events: more than any kernel's socket buffers can take for the client
            "loop": "${range(6000) | list}",
            "max_iterations": 8000,
            "needs": ["hold"],
            "steps": [{"id": "t", "transform": "${ 'x' * 2000 }"}],
            "output": "${steps.t.output | length}",
        },
    ],
    "outputs": {"n": "${steps.each.output | length}"},
}


async def test_slow_reader_is_dropped_with_a_bounded_queue_and_others_keep_receiving(tmp_path, pm):
    limit = 50
    async with (
        serving(tmp_path, pm, send_queue_messages=limit, workflows=(BURST,)) as s,
        s.client() as good,
        s.client() as pinger,
    ):
        run_id = (await good.call("runs/start", {"workflow": "burst"}))["runId"]
        await good.call("runs/subscribe", {"runId": run_id})
        # the slow client: a small receive window, subscribes, then never reads again
        before = set(s.host.sessions)
        stream, _ = await raw_websocket(s.port, s.token, rcvbuf=4096)
        async with stream:
            await stream.send(
                ws_frame(
                    0x1,
                    json.dumps(
                        {
                            "jsonrpc": "2.0",
                            "method": "runs/subscribe",
                            "params": {"runId": run_id},
                            "id": 1,
                        }
                    ).encode(),
                )
            )
            with anyio.fail_after(WAIT):
                while not [x for x in s.host.sessions - before if x.subscriptions]:
                    await anyio.sleep(0.01)
            (slow,) = s.host.sessions - before
            # what the host holds for the slow client, sampled while the run emits events
            peak = {"messages": 0, "bytes": 0}
            seqs: list[int] = []
            pings: list[float] = []

            async def watch() -> None:
                while True:
                    peak["messages"] = max(
                        peak["messages"], slow._send.statistics().current_buffer_used
                    )
                    peak["bytes"] = max(peak["bytes"], slow._queued_bytes)
                    await anyio.sleep(0.002)

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await good.call("runs/signal", {"runId": run_id, "event": "go"})
                with anyio.fail_after(30):
                    while True:
                        params = (await good.notification())["params"]
                        seqs.append(params["seq"])
                        if len(seqs) % 500 == 0:
                            pings.append(await pinger.ping_time())
                        if params["type"] in ("run.succeeded", "run.failed", "run.cancelled"):
                            break
                tg.cancel_scope.cancel()
            assert slow.closed, "the client that stopped reading was dropped"
            assert 0 < peak["messages"] <= limit
            assert peak["bytes"] <= s.host.config.limits.send_queue_bytes
            # the reading client got every event once, in order, and pings stayed fast
            run = await s.host.get_run(run_id)
            assert run.status == "succeeded"
            assert seqs == list(range(1, len(await s.host.engine.events(run_id)) + 1))
            assert pings and max(pings) < 0.5
            assert await pinger.ping_time() < 0.5
            # the dropped peer sees its connection end (with 1008/1011 if the close got through)
            data = await read_until_eof(stream, 10)
            assert close_code(data) in (None, 1008, 1011)
        with anyio.fail_after(WAIT):
            while slow in s.host.sessions:
                await anyio.sleep(0.01)


# -- 32. keepalive -------------------------------------------------------------------------------


async def test_pings_are_answered_while_a_step_runs(served, client, probe):
    async with served.client() as other:
        run_id = (
            await client.call("runs/start", {"workflow": "slow", "inputs": {"seconds": 1.0}})
        )["runId"]
        with anyio.fail_after(WAIT):
            while probe.active == 0:
                await anyio.sleep(0.01)
        times = []
        for _ in range(5):
            times.append(await other.ping_time())
            start = time.perf_counter()
            pong = await other.ws.ping()
            with anyio.fail_after(0.5):
                await pong
            times.append(time.perf_counter() - start)
            await anyio.sleep(0.1)
        assert probe.active == 1, "the step was still running"
        assert max(times) < 0.5
        done = await client.call("runs/wait", {"runId": run_id, "timeout": 5})
        assert done["run"]["status"] == "succeeded"


async def test_peer_that_stops_answering_pings_is_closed(tmp_path, pm, monkeypatch):
    # The keepalive constants are module-level (20 s + 20 s); shortened here to keep the test
    # fast. The wiring constant -> websockets.serve() is what is under test.
    assert ws_module.PING_INTERVAL + ws_module.PING_TIMEOUT <= 40
    monkeypatch.setattr(ws_module, "PING_INTERVAL", 0.2)
    monkeypatch.setattr(ws_module, "PING_TIMEOUT", 0.3)
    async with serving(tmp_path, pm) as s, s.client() as alive:
        stream, _ = await raw_websocket(s.port, s.token)  # never answers a ping
        async with stream:
            start = time.perf_counter()
            data = await read_until_eof(stream, 5)
            elapsed = time.perf_counter() - start
        assert data[:1] == b"\x89"  # it was pinged first
        assert close_code(data) in (None, 1011)
        assert elapsed < 0.2 + 0.3 + 1.5
        await anyio.sleep(0.6)  # several ping intervals: the answering client stays
        assert await alive.ping_time() < 0.5


# -- 33. handshake timeout and malformed frames ---------------------------------------------------


async def test_handshake_not_completed_is_dropped(tmp_path, pm, monkeypatch):
    assert ws_module.OPEN_TIMEOUT == 10.0
    monkeypatch.setattr(ws_module, "OPEN_TIMEOUT", 0.5)  # 10 s in production; shortened
    async with serving(tmp_path, pm) as s, s.client() as alive:
        async with await anyio.connect_tcp("127.0.0.1", s.port) as stream:
            await stream.send(b"GET /rpc HTTP/1.1\r\nHost: 127.0.0.1:")  # and then nothing
            start = time.perf_counter()
            await read_until_eof(stream, 5)
        assert 0.4 < time.perf_counter() - start < 2.5
        assert await alive.ping_time() < 0.5


@pytest.mark.parametrize(
    ("frame", "codes"),
    [
        (ws_frame(0x1, b'{"x":"\xff\xfe"}'), (1007,)),  # text frame, not UTF-8
        (ws_frame(0x3, b"reserved"), (1002,)),  # reserved data opcode
        (ws_frame(0xB, b""), (1002,)),  # reserved control opcode
        (ws_frame(0x0, b"orphan continuation"), (1002,)),
        (bytes([0x81, 0x05]) + b"hello", (1002,)),  # unmasked client frame
    ],
    ids=["non-utf8", "opcode3", "opcode11", "continuation", "unmasked"],
)
async def test_malformed_frame_closes_only_that_connection(served, frame, codes):
    async with served.client() as other:
        stream, _ = await raw_websocket(served.port, served.token)
        async with stream:
            await stream.send(frame)
            data = await read_until_eof(stream, 5)
        assert close_code(data) in codes
        assert await other.ping_time() < 0.5
        assert os.getpid()  # the process is alive (we are in it)


async def test_an_mcp_request_whose_headers_trickle_is_dropped(tmp_path, pm, monkeypatch):
    monkeypatch.setattr(ws_module, "OPEN_TIMEOUT", 0.5)  # 10 s in production; shortened
    async with serving(tmp_path, pm) as s, s.client() as alive:
        async with await anyio.connect_tcp("127.0.0.1", s.port) as stream:
            await stream.send(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:")  # and then nothing
            start = time.perf_counter()
            await read_until_eof(stream, 5)
        assert 0.4 < time.perf_counter() - start < 2.5
        assert await alive.ping_time() < 0.5


async def test_http_connections_past_the_limit_are_answered_503(tmp_path, pm):
    async with serving(tmp_path, pm, max_connections=1) as s, s.client() as alive:
        held = []
        for _ in range(4):  # 4 × max_connections may be open
            stream = await anyio.connect_tcp("127.0.0.1", s.port)
            await stream.send(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:")
            held.append(stream)
        await anyio.sleep(0.2)
        async with await anyio.connect_tcp("127.0.0.1", s.port) as extra:
            await extra.send(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
            data = await read_until_eof(extra, 5)
        assert data.startswith(b"HTTP/1.1 503") and b"too many HTTP connections" in data
        for stream in held:
            await stream.aclose()
        assert await alive.ping_time() < 0.5
