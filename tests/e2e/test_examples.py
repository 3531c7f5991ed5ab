"""Every example workflow runs offline to success through the real ``plait`` command.

``clock.yaml`` uses the real ``mcp-server-time`` MCP server. ``draft.yaml`` is written for an
OpenAI-compatible endpoint; here it talks to a local HTTP server speaking that wire format
(streamed answers included), started by the test: the one stand-in, for a paid API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
PLAIT = [
    sys.executable,
    "-c",
    "import sys; from plait.cli.commands import main; sys.exit(main(sys.argv[1:]))",
]


def check_review(out: dict[str, Any]) -> None:
    assert out["decision"].startswith("approved:")
    assert out["files"] >= 4
    assert "Steps are small and named well" in out["review"]


def check_fanout(out: dict[str, Any]) -> None:
    assert out["squares"] == [1, 4, 9, 16, 25, 36, 49, 64]
    assert out["total"] == 204
    assert out["largest"] == 64


def check_retry(out: dict[str, Any]) -> None:
    assert out == {"report": "third time lucky; primary gave backup", "primary_status": "failed"}


def check_onboard(out: dict[str, Any]) -> None:
    assert out == {"message": "HELLO, ADA!"}


def check_greet(out: dict[str, Any]) -> None:
    assert out == {"greeting": "hello, bob"}


def check_clock(out: dict[str, Any]) -> None:
    assert out["zone"] == "Europe/Paris"
    assert out["difference"] in ("+1.0h", "+2.0h")
    assert out["announcement"].startswith("Announcing: It is ")
    assert "UTC noon is 1" in out["announcement"]  # 13:00 or 14:00 in Paris


OUTLINE = {
    "title": "Durable workflows",
    "points": ["log every change", "replay after a crash", "run steps at least once"],
}


def check_draft(out: dict[str, Any]) -> None:
    assert out["title"] == OUTLINE["title"] and out["points"] == OUTLINE["points"]
    assert out["text"] == "Every change is logged. A crash replays. Steps run again."


class FakeModel(BaseHTTPRequestHandler):
    """Answers chat completions: the JSON outline when asked for JSON, else the draft."""

    requests: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(body)
        wants_json = "JSON" in body["messages"][-1]["content"]
        text = (
            json.dumps(OUTLINE)
            if wants_json
            else "Every change is logged. A crash replays. Steps run again."
        )
        usage = {"prompt_tokens": 40, "completion_tokens": 20, "total_tokens": 60}
        if not body.get("stream"):
            reply = json.dumps(
                {
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
                    "usage": usage,
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for piece in (text[:10], text[10:]):
            chunk = {"choices": [{"index": 0, "delta": {"content": piece}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


@contextmanager
def fake_model() -> Iterator[dict[str, str]]:
    """A local OpenAI-compatible endpoint; yields the environment that points at it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeModel)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {
            "OPENAI_BASE_URL": f"http://127.0.0.1:{server.server_port}/v1",
            "OPENAI_API_KEY": "sk-local",
        }
    finally:
        server.shutdown()
        server.server_close()


# Each example: extra arguments for `plait run`, and what its outputs must be. A new example
# needs an entry here (test_every_example_has_an_expectation fails until it has one).
EXPECTATIONS: dict[str, tuple[list[str], Any]] = {
    "review.yaml": ([], check_review),
    "fanout.yaml": ([], check_fanout),
    "retry.yaml": ([], check_retry),
    "onboard.yaml": ([], check_onboard),
    "greet.yaml": (["--input", "name=bob"], check_greet),
    "clock.yaml": (["--input", "zone=Europe/Paris"], check_clock),
    "draft.yaml": (["--input", "topic=durable workflows"], check_draft),
}


def plait_run(
    path: Path, extra: list[str], data_dir: Path, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PLAIT_HOST_DATA_DIR": str(data_dir), **(env_extra or {})}
    return subprocess.run(
        [
            *PLAIT,
            "run",
            str(path.relative_to(REPO)),
            "--config",
            "examples/plait.toml",
            "--json",
            *extra,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_example_has_an_expectation():
    assert EXAMPLES, "no examples found"
    assert {p.name for p in EXAMPLES} == set(EXPECTATIONS)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_offline_to_success(path, tmp_path):
    assert path.name in EXPECTATIONS, f"add an expectation for {path.name} to EXPECTATIONS"
    extra, check = EXPECTATIONS[path.name]
    if path.name == "draft.yaml":
        with fake_model() as env:
            done = plait_run(path, extra, tmp_path / "data", env)
        assert [r["model"] for r in FakeModel.requests[-2:]] == ["local-model"] * 2
        # the draft continues the outline's conversation: its whole history goes along
        assert [m["role"] for m in FakeModel.requests[-1]["messages"]] == [
            "system",
            "user",
            "assistant",
            "user",
        ]
    else:
        done = plait_run(path, extra, tmp_path / "data")
    assert done.returncode == 0, done.stderr or done.stdout
    run = json.loads(done.stdout)
    assert run["status"] == "succeeded"
    assert run["error"] is None
    assert run["workflow"] == path.stem
    assert run["progress"]["done"] == run["progress"]["total"]
    check(run["outputs"])
    assert (tmp_path / "data").is_dir()  # the data dir came from the environment
