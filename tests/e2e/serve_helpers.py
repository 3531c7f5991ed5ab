"""A real ``plait serve --port 0`` subprocess for the stop and reliability tests.

The host is ``python -m plait.cli serve`` on a data dir of the test's, with a ``plait.toml``
written for it and, when the test gives one, a plugin module of its own written beside it and
loaded through ``[plugins] modules`` (the folder is put on the subprocess's ``PYTHONPATH``).
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


class Serve:
    """``plait serve`` on ``<tmp>/data``; each :meth:`start` is a new process."""

    def __init__(
        self,
        tmp: Path,
        *,
        plugin: str | None = None,
        plugin_name: str = "servetestplugin",
        workflows: dict[str, str] | None = None,
        config: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.data_dir = tmp / "data"
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

    def start(self) -> None:
        """Start a WebSocket host on a free port and wait until it listens."""
        self.popen("--port", "0")
        deadline = time.monotonic() + 30
        while True:
            text = self.stderr()
            url, token = LISTENING.search(text), TOKEN.search(text)
            if url and token:
                self.url, self.token = url.group(1), token.group(1)
                return
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"plait serve did not start:\n{text[-4000:]}")
            time.sleep(0.05)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/", 1)[0])

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
