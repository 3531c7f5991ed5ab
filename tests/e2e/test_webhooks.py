"""Webhooks end to end: a real ``plait serve`` delivering to a real HTTP receiver.

The receiver is a small ``http.server`` on 127.0.0.1 in a thread of the test: it records every
request and answers what the test planned (200 by default; 500, 429 with ``Retry-After``, 503
to exercise the retries). Every message is checked with the Standard Webhooks verifier
(``standardwebhooks.Webhook.verify``), so the signature is the one the spec defines.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import pytest
from standardwebhooks import Webhook

from .host_process import HostProcess

pytestmark = pytest.mark.anyio

OK = """\
name: ok
steps:
  - {id: double, transform: "${2 * 21}"}
outputs: {answer: "${steps.double.output}"}
"""
BAD = """\
name: bad
steps:
  - {id: check, validate: 1, assert: ["false"], message: "never true"}
"""
CONFIG_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the spec's own example secret
FAST = """
[webhooks_policy]
allow_private = true
retry_base = 0.05
retry_max = 0.2
disable_after = 3
max_attempts = 5
timeout = 5
"""


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    def verified(self, secret: str) -> Any:
        """The payload, once the Standard Webhooks verifier accepted the signature."""
        return Webhook(secret).verify(self.body, self.headers)


class Receiver:
    """A webhook endpoint on 127.0.0.1: records requests, answers from a plan per path."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.plans: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.otherwise: dict[str, int] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["content-length"])
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request: nothing was delivered
                    return
                with outer.lock:
                    plan = outer.plans.get(self.path)
                    status, extra = (
                        plan.pop(0) if plan else (outer.otherwise.get(self.path, 200), {})
                    )
                    outer.requests.append(
                        Received(self.path, dict(self.headers.items()), body, time.time(), status)
                    )
                answer = b"ok" if status < 300 else b"not now"
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def hosts():
    made: list[HostProcess] = []
    yield made
    for host in made:
        host.stop()


def start(tmp_path, hosts, config: str, **env: str) -> HostProcess:
    host = HostProcess(tmp_path, workflows={"ok": OK, "bad": BAD}, config=config, env=env)
    hosts.append(host)
    host.start()
    return host


async def until(check, timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        await anyio.sleep(0.05)


async def run_to_end(host: HostProcess, workflow: str) -> tuple[str, list[dict[str, Any]]]:
    """Start a run, wait for its end; its id and its committed events."""
    run_id = (await host.call("runs/start", {"workflow": workflow}))["runId"]
    await host.wait_run(run_id)
    return run_id, (await host.call("runs/events", {"runId": run_id}))["events"]


async def settled(host: HostProcess, webhook_id: str) -> dict[str, Any]:
    """The subscription once nothing waits for it (the receiver hears of a delivery before the
    host has kept its outcome)."""

    async def view() -> dict[str, Any] | None:
        got = (await host.call("webhooks/get", {"id": webhook_id}))["webhook"]
        return got if got["pending"] == 0 else None

    return dict(await until(view, what=f"{webhook_id} settled"))


def wanted(run_id: str, events: list[dict[str, Any]], *patterns: str) -> set[str]:
    """The webhook-ids of ``events`` that ``patterns`` (types, or ``run.*``) select."""
    return {
        f"msg_{run_id}_{e['seq']}"
        for e in events
        if any(
            e["type"] == p or (p.endswith("*") and e["type"].startswith(p[:-1])) for p in patterns
        )
    }


async def test_run_and_step_events_are_delivered_signed_and_filtered_by_workflow(
    tmp_path, hosts, receiver
) -> None:
    config = f"""{FAST}
[[webhooks]]
id = "ok_runs"
url = "{receiver.url("/ok-runs")}"
events = ["run.*"]
workflows = ["ok"]
secret_env = "TEST_WEBHOOK_SECRET"
"""
    host = start(tmp_path, hosts, config, TEST_WEBHOOK_SECRET=CONFIG_SECRET)
    put = await host.call(
        "webhooks/put",
        {
            "id": "failures",
            "url": receiver.url("/failures"),
            "events": ["run.failed", "step.failed"],
        },
    )
    secret = put["secret"]
    assert put["webhook"]["source"] == "api" and "secret" not in put["webhook"]
    ok_id, ok_events = await run_to_end(host, "ok")
    bad_id, bad_events = await run_to_end(host, "bad")

    ok_runs = wanted(ok_id, ok_events, "run.*")
    assert len(ok_runs) >= 3  # run.created, run.started, run.succeeded
    failures = wanted(bad_id, bad_events, "run.failed", "step.failed")
    assert len(failures) == 2
    await until(lambda: {r.id for r in receiver.at("/ok-runs")} == ok_runs, what="ok runs")
    await until(lambda: {r.id for r in receiver.at("/failures")} == failures, what="failures")
    await anyio.sleep(0.3)  # nothing more comes: the bad run's events are not ok_runs'
    assert {r.id for r in receiver.at("/ok-runs")} == ok_runs
    assert {r.id for r in receiver.at("/failures")} == failures

    by_seq = {f"msg_{ok_id}_{e['seq']}": e for e in ok_events}
    for request in receiver.at("/ok-runs"):
        payload = request.verified(CONFIG_SECRET)
        event = by_seq[request.id]
        assert payload["type"] == event["type"]
        assert payload["data"]["runId"] == ok_id and payload["data"]["workflow"] == "ok"
        assert payload["data"]["seq"] == event["seq"] and payload["data"]["data"] == event["data"]
        assert request.headers["content-type"] == "application/json"
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
        assert request.headers["webhook-signature"].startswith("v1,")
    succeeded = [r.verified(CONFIG_SECRET) for r in receiver.at("/ok-runs")]
    assert {"outputs": {"answer": 42}}.items() <= next(
        p["data"]["data"] for p in succeeded if p["type"] == "run.succeeded"
    ).items()
    kinds = {r.verified(secret)["type"] for r in receiver.at("/failures")}
    assert kinds == {"run.failed", "step.failed"}
    with pytest.raises(Exception, match="No matching signature"):
        receiver.at("/failures")[0].verified(CONFIG_SECRET)  # each its own secret

    await settled(host, "failures")
    await settled(host, "ok_runs")
    listed = (await host.call("webhooks/list"))["webhooks"]
    assert [(w["id"], w["source"], w["enabled"], w["pending"]) for w in listed] == [
        ("failures", "api", True, 0),
        ("ok_runs", "config", True, 0),
    ]
    assert (
        not any("secret" in w for w in listed) and listed[1]["secretEnv"] == "TEST_WEBHOOK_SECRET"
    )
    got = (await host.call("webhooks/get", {"id": "failures"}))["webhook"]
    assert got["lastStatus"] == 200 and got["failures"] == 0 and got["lastSuccessAt"]
    log = (await host.call("webhooks/deliveries", {"id": "failures"}))["deliveries"]
    assert sorted(d["messageId"] for d in log) == sorted(failures)
    assert all(d["status"] == 200 and d["attempt"] == 1 and d["error"] is None for d in log)
    page = await host.call("webhooks/deliveries", {"id": "failures", "limit": 1})
    rest = await host.call(
        "webhooks/deliveries", {"id": "failures", "limit": 1, "cursor": page["nextCursor"]}
    )
    assert page["deliveries"] + rest["deliveries"] == log and rest["nextCursor"] is None

    # Bad subscriptions over the socket: -32602 naming the field, nothing changed.
    for params, said in [
        ({"url": "ftp://127.0.0.1/x", "events": ["run.failed"]}, "url: only http and https"),
        ({"url": receiver.url("/x"), "events": ["run.finished"]}, "events.0: unknown event"),
    ]:
        reply = await host.request("webhooks/put", params)
        assert reply["error"]["code"] == -32602 and said in reply["error"]["message"], reply
    assert len((await host.call("webhooks/list"))["webhooks"]) == 2
    await host.call("webhooks/delete", {"id": "failures"})
    assert [w["id"] for w in (await host.call("webhooks/list"))["webhooks"]] == ["ok_runs"]


async def test_a_failed_delivery_is_retried_with_the_same_id_until_it_succeeds(
    tmp_path, hosts, receiver
) -> None:
    receiver.plans["/flaky"] = [(500, {}), (429, {"Retry-After": "1"}), (200, {})]
    host = start(tmp_path, hosts, FAST)
    secret = (
        await host.call(
            "webhooks/put",
            {"id": "flaky", "url": receiver.url("/flaky"), "events": ["run.succeeded"]},
        )
    )["secret"]
    run_id, events = await run_to_end(host, "ok")
    (expected,) = wanted(run_id, events, "run.succeeded")
    attempts = await until(lambda: len(receiver.at("/flaky")) == 3 and receiver.at("/flaky"))
    assert [r.status for r in attempts] == [500, 429, 200]
    assert {r.id for r in attempts} == {expected}  # one message, the same webhook-id each time
    assert all(r.verified(secret)["type"] == "run.succeeded" for r in attempts)
    assert attempts[0].body == attempts[2].body
    assert attempts[2].at - attempts[1].at >= 0.9  # Retry-After: 1, over a 0.05s backoff

    async def logged() -> list[dict[str, Any]]:
        rows = (await host.call("webhooks/deliveries", {"id": "flaky"}))["deliveries"]
        return rows if len(rows) == 3 else []

    log = await until(logged)
    assert [(d["attempt"], d["status"]) for d in log] == [(3, 200), (2, 429), (1, 500)]
    assert log[2]["error"].startswith("HTTP 500") and log[0]["error"] is None
    got = await settled(host, "flaky")
    assert got["enabled"] and got["failures"] == 0
    await anyio.sleep(0.3)
    assert len(receiver.at("/flaky")) == 3


async def test_a_subscription_that_keeps_failing_is_disabled_and_put_again(
    tmp_path, hosts, receiver
) -> None:
    receiver.otherwise["/down"] = 500
    host = start(tmp_path, hosts, FAST)
    params = {"id": "down", "url": receiver.url("/down"), "events": ["run.succeeded"]}
    secret = (await host.call("webhooks/put", params))["secret"]
    first_run, events = await run_to_end(host, "ok")

    async def disabled() -> dict[str, Any] | None:
        got = (await host.call("webhooks/get", {"id": "down"}))["webhook"]
        return None if got["enabled"] else got

    got = await until(disabled, what="the subscription disabled")
    assert got["disabledReason"].startswith("disabled after 3 failed delivery attempts in a row")
    assert "HTTP 500" in got["disabledReason"] and got["disabledAt"] and got["pending"] == 1
    assert len(receiver.at("/down")) == 3
    log = (await host.call("webhooks/deliveries", {"id": "down"}))["deliveries"]
    assert [d["status"] for d in log] == [500, 500, 500]

    await run_to_end(host, "ok")  # a disabled subscription gets nothing new
    await anyio.sleep(0.5)
    assert len(receiver.at("/down")) == 3
    assert (await host.call("webhooks/get", {"id": "down"}))["webhook"]["pending"] == 1

    receiver.otherwise["/down"] = 200
    again = await host.call("webhooks/put", params)  # enabled again, secret kept
    assert again["webhook"]["enabled"] and "secret" not in again
    (held,) = wanted(first_run, events, "run.succeeded")
    await until(lambda: [r.status for r in receiver.at("/down")][-1:] == [200])
    last = receiver.at("/down")[-1]
    assert last.id == held and last.verified(secret)["data"]["runId"] == first_run
    got = await settled(host, "down")
    assert got["enabled"] and got["disabledReason"] is None


async def test_a_host_killed_before_delivery_delivers_every_committed_event_after_restart(
    tmp_path, hosts, receiver
) -> None:
    slow = FAST.replace("disable_after = 3", "disable_after = 50").replace(
        "max_attempts = 5", "max_attempts = 100"
    )
    receiver.otherwise["/crash"] = 503  # refuses at first
    host = start(tmp_path, hosts, slow)
    secret = (
        await host.call(
            "webhooks/put",
            {"id": "crash", "url": receiver.url("/crash"), "events": ["run.*", "step.*"]},
        )
    )["secret"]
    runs = [await run_to_end(host, "ok") for _ in range(3)]
    bad_id, bad_events = await run_to_end(host, "bad")
    runs.append((bad_id, bad_events))
    expected: set[str] = set()
    for run_id, events in runs:
        expected |= wanted(run_id, events, "run.*", "step.*")
    # Attempts were made (and refused) before the kill.
    await until(lambda: len({r.id for r in receiver.at("/crash")}) >= 3, what="first attempts")
    host.kill()  # SIGKILL: nothing is closed, nothing flushed
    before = {r.id: r.body for r in receiver.at("/crash")}
    assert set(before) <= expected and all(r.status == 503 for r in receiver.at("/crash"))

    receiver.otherwise["/crash"] = 200
    host.start()  # the same data dir
    for run_id, events in runs:  # what was committed is what the restarted host has
        kept = (await host.call("runs/events", {"runId": run_id}))["events"]
        assert [e["seq"] for e in kept] == [e["seq"] for e in events]

    def delivered() -> set[str]:
        return {r.id for r in receiver.at("/crash") if r.status == 200}

    await until(lambda: delivered() == expected, what="every committed event delivered")
    await anyio.sleep(0.3)
    assert delivered() == expected  # exactly the committed events, none invented
    successes = Counter(r.id for r in receiver.at("/crash") if r.status == 200)
    assert set(successes) == expected  # at least once each
    for request in receiver.at("/crash"):
        payload = request.verified(secret)  # the API's secret survived the kill
        assert request.id == f"msg_{payload['data']['runId']}_{payload['data']['seq']}"
        if request.id in before:
            assert request.body == before[request.id]  # same message, same id
    got = await settled(host, "crash")
    assert got["enabled"]
