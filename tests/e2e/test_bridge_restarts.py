"""``plait mcp`` outlives the host it bridges to (issue 11, item 4): when the host restarts,
the bridge connects again (to the new port and with the new token, both read from the data
dir), replays the IDE's ``initialize``, and answers what the old host left unanswered."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from .host_process import PLAIT, HostProcess

pytestmark = pytest.mark.anyio

WORKFLOWS = {
    "slow": "name: slow\nsteps:\n  - {id: nap, delay: 30}\n",
    "quick": "name: quick\nsteps:\n  - {id: a, transform: 1}\noutputs: {a: '${steps.a.output}'}\n",
}


class Ide:
    """The IDE's side of ``plait mcp``: JSON-RPC lines on the bridge's stdin and stdout."""

    def __init__(self, host: HostProcess) -> None:
        self.proc = subprocess.Popen(
            [
                *PLAIT,
                "mcp",
                "--config",
                str(host.tmp / "plait.toml"),
                "--data-dir",
                str(host.data_dir),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=host.environment(),
        )

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read().decode() if self.proc.stderr else "bridge ended"
        return dict(json.loads(line))

    def answer(self, request_id: int) -> dict[str, Any]:
        while True:  # skip notifications
            message = self.receive()
            if message.get("id") == request_id:
                return message

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=20)


def test_the_bridge_reconnects_when_the_host_restarts(tmp_path: Path):
    host = HostProcess(tmp_path, workflows=WORKFLOWS)
    host.start()
    ide = Ide(host)
    try:
        ide.send(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "test-ide", "version": "1"},
                },
            }
        )
        assert ide.answer(1)["result"]["serverInfo"]["name"] == "plait"
        ide.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        ide.send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        names = {t["name"] for t in ide.answer(2)["result"]["tools"]}
        assert {"workflow.slow", "workflow.quick"} <= names
        # a call in flight when the host goes away is answered, not left hanging
        ide.send(
            {
                "jsonrpc": "2.0",
                "id": 3,
                "method": "tools/call",
                "params": {"name": "workflow.slow", "arguments": {}},
            }
        )
        time.sleep(0.5)
        first_token = host.token
        host.stop()
        lost = ide.answer(3)
        assert lost["error"]["code"] == -32000 and "retry" in lost["error"]["message"]
        host.start()  # a new port and a new token, in the same data dir
        assert host.token != first_token
        ide.send(
            {
                "jsonrpc": "2.0",
                "id": 4,
                "method": "tools/call",
                "params": {"name": "workflow.quick", "arguments": {}},
            }
        )
        result = ide.answer(4)["result"]
        assert result["isError"] is False and result["structuredContent"] == {"a": 1}
        assert ide.close() == 0
    finally:
        if ide.proc.poll() is None:
            ide.proc.kill()
            ide.proc.wait(timeout=10)
        for pipe in (ide.proc.stdin, ide.proc.stdout, ide.proc.stderr):
            if pipe is not None:
                pipe.close()
        host.stop()


def test_an_embedded_host_that_cannot_start_answers_the_ide_with_the_reason(tmp_path: Path):
    """``plait serve --stdio`` on a data dir another host holds: the IDE's initialize gets an
    error answer naming the reason (an IDE shows it), not a closed pipe."""
    host = HostProcess(tmp_path)
    host.start()  # holds the data dir
    embedded = subprocess.Popen(
        [*PLAIT, "serve", "--stdio", "--data-dir", str(host.data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=host.environment(),
    )
    try:
        assert embedded.stdin is not None and embedded.stdout is not None
        request = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "test-ide", "version": "1"},
            },
        }
        embedded.stdin.write(json.dumps(request).encode() + b"\n")
        embedded.stdin.flush()
        answer = json.loads(embedded.stdout.readline())
        assert answer["id"] == 1 and "another plait host" in answer["error"]["message"]
        embedded.stdin.close()
        assert embedded.wait(timeout=20) == 1
        assert embedded.stderr is not None
        stderr = embedded.stderr.read().decode()
        assert "Traceback" not in stderr and "another plait host" in stderr
    finally:
        if embedded.poll() is None:
            embedded.kill()
            embedded.wait(timeout=10)
        for pipe in (embedded.stdin, embedded.stdout, embedded.stderr):
            if pipe is not None:
                pipe.close()
        host.stop()
