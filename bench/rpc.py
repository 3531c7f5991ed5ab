"""W4 (JSON-RPC over WebSocket) and the ``runs/start`` → first-step latency.

W4 runs a server in one process and the load in another: 8 connections, each keeping 8
requests in flight (64 in all), each sending ``ping`` requests. The same load runs against
plait's host and against a raw ``websockets`` server that only parses and answers, so the ratio
says what plait's dispatch costs on top of the transport.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
import types
from typing import Any

import anyio
import workloads  # bench/ is the script's folder, on sys.path
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

import plait
from plait.config import HostConfig
from plait.host.app import tune_gc


def _config(mode: str, data_dir: str) -> HostConfig:
    return workloads.config(mode, data_dir, max_connections=64, max_inflight=256)


# -- servers (each runs until killed, after printing "READY <url> <token>") ---------------------


async def raw_server() -> None:
    """A websockets server that parses each request and answers it: the transport's ceiling."""

    async def answer(ws: Any) -> None:
        async for message in ws:
            request = json.loads(message)
            await ws.send(json.dumps({"jsonrpc": "2.0", "result": {}, "id": request["id"]}))

    async with serve(answer, "127.0.0.1", 0, max_size=1 << 20) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"READY ws://127.0.0.1:{port}/rpc -", flush=True)
        await asyncio.Future()


async def plait_server(mode: str) -> None:
    """plait's host with its WebSocket transport."""
    with tempfile.TemporaryDirectory() as tmp:
        async with plait.Host(_config(mode, tmp)) as host:
            tune_gc()  # as plait serve does

            def ready(url: str, token: str) -> None:
                print(f"READY {url} {token}", flush=True)

            await host.serve_websocket(ready=ready)


# -- the load ----------------------------------------------------------------------------------


async def load(
    url: str, token: str, connections: int, requests: int, inflight: int
) -> dict[str, Any]:
    """``connections`` × ``requests`` pings, ``inflight`` outstanding per connection."""
    headers = {"Authorization": f"Bearer {token}"} if token != "-" else {}
    latencies: list[float] = []

    async def one_connection() -> None:
        async with connect(url, additional_headers=headers, max_size=None) as ws:
            sent_at: dict[int, float] = {}
            next_id = 0

            async def send_one() -> None:
                nonlocal next_id
                sent_at[next_id] = time.perf_counter()
                await ws.send(f'{{"jsonrpc":"2.0","method":"ping","id":{next_id}}}')
                next_id += 1

            for _ in range(min(inflight, requests)):
                await send_one()
            done = 0
            while done < requests:
                reply = json.loads(await ws.recv())
                latencies.append(time.perf_counter() - sent_at.pop(reply["id"]))
                assert "result" in reply, reply
                done += 1
                if next_id < requests:
                    await send_one()

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(connections):
            tg.start_soon(one_connection)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests_per_s": connections * requests / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
    }


# -- runs/start to the first step --------------------------------------------------------------


async def first_step_latency(mode: str, samples: int) -> dict[str, Any]:
    """Send ``runs/start`` over a real WebSocket and time until the run's first step starts.

    The first step is a tool that notes the time it was called; client and host share this
    process and its clock.
    """
    stamps: dict[str, float] = {}

    def stamp(context: plait.ToolContext) -> None:
        assert context.run_id is not None
        stamps[context.run_id] = time.perf_counter()

    @plait.hookimpl
    def register_tools(register):
        register(stamp, "bench.stamp", blocking=False)

    plugin = types.SimpleNamespace(__name__="bench", register_tools=register_tools)
    workflow = {"name": "first", "steps": [{"id": "s", "tool": "bench.stamp"}]}
    latencies = []
    with tempfile.TemporaryDirectory() as tmp:
        async with plait.Host(_config(mode, tmp), plugins=[plugin]) as host:
            tune_gc()  # as plait serve does
            host.register(workflow)
            async with anyio.create_task_group() as tg:
                url, token = await tg.start(host.serve_websocket)
                async with connect(
                    url, additional_headers={"Authorization": f"Bearer {token}"}
                ) as ws:
                    for i in range(samples + 20):
                        sent = time.perf_counter()
                        await ws.send(
                            json.dumps(
                                {
                                    "jsonrpc": "2.0",
                                    "id": i,
                                    "method": "runs/start",
                                    "params": {"workflow": "first"},
                                }
                            )
                        )
                        run_id = json.loads(await ws.recv())["result"]["runId"]
                        while run_id not in stamps:
                            await anyio.sleep(0.0005)
                        if i >= 20:  # after a warm-up
                            latencies.append(stamps[run_id] - sent)
                tg.cancel_scope.cancel()
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
    }
