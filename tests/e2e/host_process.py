"""A real ``plait serve`` subprocess with a plugin module of the test's, and a client for it.

The host is ``python -m plait.cli serve`` on a data dir of the test's, with a ``plait.toml``
written for it and, when the test gives one, a plugin module written beside it and loaded
through ``[plugins] modules`` (the folder is put on the subprocess's ``PYTHONPATH``), exactly as
a user's own plugin would be; workflows come from a ``--workflows`` folder. Each start is a new
process with a stderr file of its own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from websockets.asyncio.client import connect

PLAIT = [sys.executable, "-m", "plait.cli"]
LISTENING = re.compile(r"listening on (ws://\S+)")
TOKEN = re.compile(r"^token: (\S+)$", re.MULTILINE)


class HostProcess:
    """``plait serve`` on one data dir, started and stopped as often as a test likes."""

    def __init__(
        self,
        tmp: Path,
        *,
        plugin: str | None = None,
        plugin_name: str = "testplugin",
        workflows: dict[str, str] | None = None,
        config: str = "",
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.tmp = tmp
        self.data_dir = data_dir or tmp / "data"
        self.env = env or {}
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.token = ""
        (tmp / "wf").mkdir(exist_ok=True)
        for name, text in (workflows or {}).items():
            (tmp / "wf" / f"{name}.yaml").write_text(text, encoding="utf-8")
        modules = ""
        if plugin is not None:
            (tmp / f"{plugin_name}.py").write_text(plugin, encoding="utf-8")
            modules = f'modules = ["{plugin_name}"]\n'
        (tmp / "plait.toml").write_text(
            f"[plugins]\nentry_points = false\n{modules}{config}", encoding="utf-8"
        )

    # -- the process -----------------------------------------------------------------------

    @property
    def stderr_path(self) -> Path:
        return self.tmp / f"serve-{self.starts}.stderr"

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def command(self, *extra: str) -> list[str]:
        return [
            *PLAIT,
            "serve",
            "--config",
            str(self.tmp / "plait.toml"),
            "--data-dir",
            str(self.data_dir),
            "--workflows",
            str(self.tmp / "wf"),
            *extra,
        ]

    def environment(self) -> dict[str, str]:
        """The test's environment (the same plait), the plugin's folder on ``PYTHONPATH``."""
        return dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(self.tmp), os.environ.get("PYTHONPATH", "")]),
            **self.env,
        )

    def popen(self, *extra: str, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        """Start ``plait serve`` with ``extra`` arguments; stderr goes to :attr:`stderr_path`."""
        self.starts += 1
        with self.stderr_path.open("wb") as errfile:
            self.process = subprocess.Popen(
                self.command(*extra),
                cwd=str(self.tmp),
                env=self.environment(),
                stdin=stdin,
                stdout=subprocess.PIPE if stdin == subprocess.PIPE else subprocess.DEVNULL,
                stderr=errfile,
            )
        return self.process

    def start(self, *, wait: bool = True) -> None:
        """Start a WebSocket host on a free port; with ``wait``, return once it listens."""
        self.popen("--port", "0")
        if wait:
            self.wait_listening()

    def wait_listening(self, timeout: float = 30) -> None:
        """Wait until the started host listens; AssertionError (with its stderr) if it dies."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            text = self.stderr()
            url, token = LISTENING.search(text), TOKEN.search(text)
            if url and token:
                self.url, self.token = url.group(1), token.group(1)
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"plait serve did not start:\n{text[-4000:]}")
            time.sleep(0.05)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/", 1)[0])

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> float:
        """Send ``signum``; returns the time it was sent (``time.monotonic``)."""
        assert self.process is not None
        sent = time.monotonic()
        self.process.send_signal(signum)
        return sent

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGINT, then SIGKILL if the host has not stopped within 15 s (test cleanup)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    # -- talking to it ---------------------------------------------------------------------

    async def request(self, method: str, params: Any = None, *, timeout: float = 30) -> Any:
        """One request on a fresh connection; the whole reply."""
        async with connect(
            self.url,
            additional_headers={"Authorization": f"Bearer {self.token}"},
            max_size=None,
            proxy=None,
        ) as ws:
            message: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
            if params is not None:
                message["params"] = params
            await ws.send(json.dumps(message))
            with anyio.fail_after(timeout):
                return json.loads(await ws.recv())

    async def call(self, method: str, params: Any = None, *, timeout: float = 30) -> Any:
        """One request on a fresh connection; its result (an error answer fails the test)."""
        reply = await self.request(method, params, timeout=timeout)
        assert "result" in reply, reply
        return reply["result"]

    async def wait_run(self, run_id: str, *, timeout: float = 30) -> dict[str, Any]:
        """The run once it ended (``runs/wait``)."""
        result = await self.call(
            "runs/wait", {"runId": run_id, "timeout": timeout}, timeout=timeout + 5
        )
        return dict(result["run"])

    async def health(self) -> tuple[int, dict[str, Any]]:
        """``GET /health``: the HTTP status and the JSON body."""
        stream = await anyio.connect_tcp("127.0.0.1", self.port)
        async with stream:
            request = (
                f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nConnection: close\r\n"
            )
            await stream.send(request.encode() + b"\r\n")
            data = b""
            with anyio.fail_after(10):
                try:
                    while True:
                        data += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)
