"""The web view's security, against a real ``plait serve``: one-time links, the session cookie,
the socket's checks, the headers; and the commands that mint links and follow a run."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import plait
from plait.config import HostConfig
from plait.rpc.web import CONTENT_SECURITY_POLICY
from plait.testing import Client

from ..e2e.host_process import PLAIT, HostProcess
from .conftest import base_url, new_link, printed_link, start_run

pytestmark = pytest.mark.anyio


class Answer:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        found = [v for k, v in self.headers if k.lower() == name.lower()]
        return found[0] if found else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


async def get(
    port: int, path: str, *, host: str | None = None, headers: dict[str, str] | None = None
) -> Answer:
    """One plain HTTP GET on a fresh connection (the host closes it after answering)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        with anyio.fail_after(10):
            while True:
                try:
                    data += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    pairs = [tuple(x.strip() for x in line.split(":", 1)) for line in header_lines if ":" in line]
    return Answer(int(status_line.split()[1]), pairs, body)  # type: ignore[arg-type]


def code_of(link: str) -> str:
    return link.split("token=", 1)[1].split("#", 1)[0]


async def session_cookie(host: HostProcess) -> str:
    """A live session: a fresh link redeemed; returns the ``Cookie`` header value."""
    answer = await get(host.port, f"/?token={code_of(await new_link(host))}")
    assert answer.status == 303, answer.text
    return answer.header("Set-Cookie").split(";", 1)[0]  # type: ignore[union-attr]


# -- one-time links ------------------------------------------------------------------------------


async def test_a_link_sets_an_httponly_strict_cookie_and_redirects_once(served):
    link = printed_link(served)
    answer = await get(served.port, f"/?token={code_of(link)}")
    assert answer.status == 303
    assert answer.header("Location") == "/"
    cookie = answer.header("Set-Cookie")
    assert cookie is not None
    name, _, rest = cookie.partition("=")
    value, *attributes = [part.strip() for part in rest.split(";")]
    assert name == f"plait_session_{served.port}"
    assert len(value) >= 40 and value not in (served.token, code_of(link))
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(attributes)
    assert answer.header("Cache-Control") == "no-store"
    assert answer.header("Content-Security-Policy") == CONTENT_SECURITY_POLICY
    # used once: the same link again is refused, and sets nothing
    again = await get(served.port, f"/?token={code_of(link)}")
    assert again.status == 403
    assert again.header("Set-Cookie") is None
    assert "no longer valid" in again.text and "plait debug" in again.text


async def test_a_link_to_a_run_redirects_to_its_page(served):
    run_id = await start_run(served, "debugme")
    link = await new_link(served, run_id[:8])  # a prefix names the run
    assert link.endswith(f"#/runs/{run_id}")
    answer = await get(served.port, f"/?token={code_of(link)}")
    assert answer.status == 303 and answer.header("Location") == f"/#/runs/{run_id}"


@pytest.mark.parametrize(
    "code", ["", "x", secrets.token_urlsafe(32), "%00", "a" * 5000], ids=str.__len__
)
async def test_a_wrong_code_is_refused(served, code):
    answer = await get(served.port, f"/?token={code}")
    assert answer.status in (403, 400)  # 400: websockets refuses a request line too long
    assert answer.header("Set-Cookie") is None


async def test_an_expired_link_is_refused(tmp_path):
    config = HostConfig.model_validate(
        {"host": {"data_dir": ":memory:", "port": 0}, "plugins": {"entry_points": False}}
    )
    async with plait.Host(config) as host, anyio.create_task_group() as tg:
        url, _ = await tg.start(host.serve_websocket)
        port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        link = host.web.link()
        fresh = host.web.link()
        host.web.clock = lambda: time.monotonic() + 601  # ten minutes and a second later
        assert (await get(port, f"/?token={code_of(link)}")).status == 403
        host.web.clock = time.monotonic
        assert (await get(port, f"/?token={code_of(link)}")).status == 403  # used up anyway
        assert (await get(port, f"/?token={code_of(fresh)}")).status == 303
        tg.cancel_scope.cancel()


async def test_host_link_names_an_unknown_run_and_needs_a_listening_host(served):
    reply = await served.request("host/link", {"runId": "f" * 32})
    assert reply["error"]["code"] == -32002
    reply = await served.request("host/link", {"bogus": 1})
    assert reply["error"]["code"] == -32602
    config = HostConfig.model_validate(
        {"host": {"data_dir": ":memory:"}, "plugins": {"entry_points": False}}
    )
    async with plait.Host(config) as host, Client(host) as client:  # serves no WebSocket
        with pytest.raises(Exception, match="serves no web view"):
            await client.call("host/link")


# -- the page and its assets ---------------------------------------------------------------------


async def test_without_the_cookie_the_page_says_how_to_get_a_link(served):
    answer = await get(served.port, "/")
    assert answer.status == 401
    assert "plait debug" in answer.text and "<script" not in answer.text
    assert answer.header("Content-Type") == "text/html; charset=utf-8"
    assert answer.header("Content-Security-Policy") == CONTENT_SECURITY_POLICY
    for path in ("/static/js/app.js", "/static/app.css", "/index.html"):
        refused = await get(served.port, path)
        assert refused.status == 401, path
        assert b"import " not in refused.body
    wrong = await get(served.port, "/", headers={"Cookie": f"plait_session_{served.port}=nope"})
    assert wrong.status == 401


async def test_the_page_and_its_assets_carry_a_strict_csp_and_their_types(served):
    cookie = await session_cookie(served)
    expected = {
        "/": "text/html; charset=utf-8",
        "/static/app.css": "text/css; charset=utf-8",
        "/static/js/app.js": "text/javascript; charset=utf-8",
        "/static/js/graph.js": "text/javascript; charset=utf-8",
    }
    for path, kind in expected.items():
        answer = await get(served.port, path, headers={"Cookie": cookie})
        assert answer.status == 200, path
        assert answer.header("Content-Type") == kind
        assert answer.header("Content-Security-Policy") == CONTENT_SECURITY_POLICY
        assert answer.header("X-Content-Type-Options") == "nosniff"
        assert answer.header("Referrer-Policy") == "no-referrer"
        assert answer.header("X-Frame-Options") == "DENY"
    page = (await get(served.port, "/", headers={"Cookie": cookie})).text
    # nothing inline for the CSP to forbid
    assert "<script>" not in page and " style=" not in page and " onclick" not in page
    assert re.search(r'<script type="module" src="/static/js/app.js"></script>', page)
    missing = await get(served.port, "/static/../pyproject.toml", headers={"Cookie": cookie})
    assert missing.status == 404
    assert (await get(served.port, "/static/nope.js", headers={"Cookie": cookie})).status == 404


async def test_the_host_and_origin_checks_apply_to_the_page(served):
    cookie = await session_cookie(served)
    for bad in ("evil.example", f"evil.example:{served.port}", f"127.0.0.1:{served.port + 1}"):
        answer = await get(served.port, "/", host=bad, headers={"Cookie": cookie})
        assert answer.status == 403, bad
    foreign = await get(
        served.port, "/static/app.css", headers={"Cookie": cookie, "Origin": "http://evil.example"}
    )
    assert foreign.status == 403
    own = await get(
        served.port, "/static/app.css", headers={"Cookie": cookie, "Origin": base_url(served)}
    )
    assert own.status == 200
    health = await get(served.port, "/health")  # still answered as before
    assert health.status == 200 and json.loads(health.body)["status"] == "ok"


# -- the page's socket ---------------------------------------------------------------------------


async def handshake(host: HostProcess, headers: dict[str, str], origin: str | None) -> int:
    """101 when the socket opens (and answers a ping), else the refusal's status."""
    try:
        async with connect(
            host.url,
            additional_headers=headers,
            origin=origin,
            proxy=None,  # type: ignore[arg-type]
        ) as ws:
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
            with anyio.fail_after(5):
                assert json.loads(await ws.recv())["result"] == {}
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_the_socket_takes_the_cookie_only_from_the_page_origin(served):
    cookie = await session_cookie(served)
    own = base_url(served)
    assert await handshake(served, {"Cookie": cookie}, own) == 101
    assert await handshake(served, {"Cookie": cookie}, f"http://localhost:{served.port}") == 101
    # no cookie, a wrong one, another port's: refused
    assert await handshake(served, {}, own) == 401
    assert await handshake(served, {"Cookie": f"plait_session_{served.port}=x"}, own) == 401
    other_port = cookie.replace(f"plait_session_{served.port}", f"plait_session_{served.port + 1}")
    assert await handshake(served, {"Cookie": other_port}, own) == 401
    # the cookie from a foreign origin, or with no Origin at all (not the page): refused
    assert await handshake(served, {"Cookie": cookie}, "http://evil.example") == 403
    assert await handshake(served, {"Cookie": cookie}, f"http://127.0.0.1:{served.port + 1}") == 403
    assert await handshake(served, {"Cookie": cookie}, None) == 401
    # the bearer token works as before, also from the page's origin
    bearer = {"Authorization": f"Bearer {served.token}"}
    assert await handshake(served, bearer, None) == 101
    assert await handshake(served, bearer, own) == 101


async def test_links_and_session_secrets_are_not_logged_even_at_debug(tmp_path):
    host = HostProcess(tmp_path)
    host.starts += 1
    command = host.command("--port", "0")
    command.insert(len(PLAIT), "--debug")  # `plait --debug serve`: every handshake header logged
    with host.stderr_path.open("wb") as errfile:
        host.process = subprocess.Popen(
            command,
            cwd=str(tmp_path),
            env=host.environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errfile,
        )
    try:
        host.wait_listening()
        link = await new_link(host)
        cookie = await session_cookie(host)
        assert await handshake(host, {"Cookie": cookie}, base_url(host)) == 101
        log = host.stderr().split("web view:", 1)[1]  # after the lines printed at start
        assert "Cookie: <redacted>" in log  # the host did log the headers
        assert cookie.split("=", 1)[1] not in log
        assert code_of(link) not in log
    finally:
        host.stop()


class ForeignSite:
    """A page on another port of 127.0.0.1: same site for the browser (it sends the cookie),
    another origin for the host."""

    def __init__(self, target_port: int) -> None:
        page = (
            "<!doctype html><title>foreign</title><script>"
            f"const ws = new WebSocket('ws://127.0.0.1:{target_port}/rpc');"
            "window.outcome = 'pending';"
            "ws.onopen = () => { window.outcome = 'open'; };"
            "ws.onclose = () => { if (window.outcome === 'pending') window.outcome = 'refused'; };"
            "</script>"
        ).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ForeignSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def foreign(served) -> Iterator[ForeignSite]:
    with ForeignSite(served.port) as site:
        yield site


async def test_in_a_browser_the_socket_needs_the_cookie_and_the_page_origin(served, page, foreign):
    # without the cookie: the help page, and a socket opened from it is refused
    await page.goto(f"{base_url(served)}/")
    assert "plait debug" in await page.content()
    opened = await page.evaluate(
        """(url) => new Promise((done) => {
            const ws = new WebSocket(url);
            ws.onopen = () => done("open");
            ws.onclose = () => done("refused");
        })""",
        served.url,
    )
    assert opened == "refused"
    # with the cookie, from the page: it connects
    await page.goto(await new_link(served))
    await page.locator("#connection").filter(has_text="live").wait_for()
    # a page of another origin on 127.0.0.1: the browser sends the cookie, the host refuses
    await page.goto(f"http://127.0.0.1:{foreign.port}/")
    await page.wait_for_function("window.outcome !== 'pending'")
    assert await page.evaluate("window.outcome") == "refused"
    assert any(c["name"] == f"plait_session_{served.port}" for c in await page.context.cookies())


# -- the command line ----------------------------------------------------------------------------


def plait_command(host: HostProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PLAIT, *args, "--config", str(host.tmp / "plait.toml"), "--data-dir", str(host.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=host.environment(),
    )


async def test_plait_debug_prints_a_one_time_link_to_the_run(served):
    run_id = await start_run(served, "debugme")
    done = plait_command(served, "debug", run_id[:6])
    assert done.returncode == 0, done.stderr
    link = done.stdout.strip()
    assert re.fullmatch(rf"http://127\.0\.0\.1:{served.port}/\?token=[\w-]+#/runs/{run_id}", link)
    answer = await get(served.port, f"/?token={code_of(link)}")
    assert answer.status == 303 and answer.header("Location") == f"/#/runs/{run_id}"
    unknown = plait_command(served, "debug", "f" * 32)
    assert unknown.returncode == 1 and "not found" in unknown.stderr
    assert "Traceback" not in unknown.stderr


async def test_runs_events_follow_streams_until_the_run_ends(served):
    run_id = await start_run(served, "gate")
    follow = subprocess.Popen(
        [
            *PLAIT,
            "runs",
            "events",
            run_id,
            "--follow",
            "--json",
            "--data-dir",
            str(served.data_dir),
            "--config",
            str(served.tmp / "plait.toml"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=served.environment(),
    )
    try:
        assert follow.stdout is not None
        seen = []
        with anyio.fail_after(15):
            while True:  # the history, then live events: the wait step waits
                line = await anyio.to_thread.run_sync(follow.stdout.readline)
                assert line, follow.stderr.read() if follow.stderr else ""
                seen.append(json.loads(line))
                if seen[-1]["type"] == "run.waiting":
                    break
            await served.call("runs/signal", {"runId": run_id, "event": "go", "data": 7})
            rest = await anyio.to_thread.run_sync(follow.communicate)
        assert follow.returncode == 0, rest[1]
        seen += [json.loads(line) for line in rest[0].splitlines()]
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    seqs = [e["seq"] for e in seen]
    assert seqs == list(range(1, len(seqs) + 1))  # no gap, no repeat
    assert seen[-1]["type"] == "run.succeeded" and seen[-1]["runId"] == run_id
    assert "signal.taken" in [e["type"] for e in seen] or "run.signal" in [e["type"] for e in seen]
