"""Webhooks in process: the routing index, outbox rows written with their events, the memory
store's outbox, the checks of a subscription, and the delivery loop's lifetime.

The delivery itself, against a real HTTP receiver and a real ``plait serve``, is in
tests/e2e/test_webhooks.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import pytest
from standardwebhooks import Webhook

import plait
from plait.config import HostConfig, WebhookPolicy, WebhookSettings
from plait.errors import ConfigError
from plait.rpc.errors import InvalidParams
from plait.services.webhooks import Webhooks, message_id, new_secret
from plait.state.run_store import WebhookAttempt
from plait.state.runs import Event, Run
from plait.store.memory import MemoryStore
from plait.store.postgres import PostgresStore
from plait.store.sqlite import _EVENT, _OUTBOX, SqliteStore
from plait.testing import Client, memory_config, started_host

pytestmark = pytest.mark.anyio

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()

OK = {"name": "ok", "steps": [{"id": "double", "transform": "${2 * 2}"}]}
BAD = {"name": "bad", "steps": [{"id": "check", "validate": 1, "assert": ["false"]}]}


def hook(hook_id: str, events: list[str], workflows: list[str] | None = None, **extra: Any):
    return {
        "id": hook_id,
        "url": f"http://127.0.0.1:9/{hook_id}",
        "events": events,
        "workflows": workflows or [],
        "secret": SECRET,
        **extra,
    }


def settings(*hooks: dict[str, Any]) -> list[WebhookSettings]:
    return [WebhookSettings.model_validate(h) for h in hooks]


def run_of(workflow: str) -> Run:
    return Run(id=os.urandom(16).hex(), workflow=workflow, version=1, inputs={})


def event(run: Run, kind: str, step: str | None = None) -> Event:
    run.seq += 1
    return Event(run.seq, run.id, kind, step, {"x": 1}, time.time())


async def loaded(*hooks: dict[str, Any], store: Any = None) -> Webhooks:
    webhooks = Webhooks(settings(*hooks), WebhookPolicy(allow_private=True))
    await webhooks.load(store or MemoryStore())
    return webhooks


async def until(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await anyio.sleep(0.02)


# -- the index -------------------------------------------------------------------------------


async def test_no_subscription_routes_nothing() -> None:
    webhooks = await loaded()
    run = run_of("ok")
    assert webhooks.route(run, event(run, "run.failed")) is None


async def test_the_index_routes_by_type_family_and_workflow() -> None:
    webhooks = await loaded(
        hook("failures", ["run.failed", "step.failed"]),
        hook("ok_runs", ["run.*"], ["ok"]),
        hook("steps", ["step.*"], ["ok", "other"]),
    )
    ok, bad = run_of("ok"), run_of("bad")

    def ids(run: Run, kind: str) -> list[str]:
        routed = webhooks.route(run, event(run, kind, "s" if kind.startswith("step") else None))
        return sorted(routed[0]) if routed else []

    assert ids(ok, "run.created") == ["ok_runs"]
    assert ids(ok, "run.failed") == ["failures", "ok_runs"]
    assert ids(bad, "run.failed") == ["failures"]
    assert ids(bad, "run.succeeded") == []
    assert ids(ok, "step.failed") == ["failures", "steps"]
    assert ids(bad, "step.failed") == ["failures"]
    assert ids(ok, "step.succeeded") == ["steps"]
    assert ids(ok, "agent.message") == []
    assert ids(ok, "conversation.appended") == []


async def test_the_message_is_the_standard_webhooks_payload_of_the_event() -> None:
    webhooks = await loaded(hook("all", ["run.*"]))
    run = run_of("ok")
    routed = webhooks.route(run, event(run, "run.started"))
    assert routed is not None
    (hook_id,), body = routed
    assert hook_id == "all"
    payload = json.loads(body)
    assert payload["type"] == "run.started"
    assert payload["timestamp"].endswith("Z")
    assert payload["data"] | {"ts": None} == {
        "runId": run.id,
        "seq": 1,
        "workflow": "ok",
        "version": 1,
        "parentId": None,
        "status": "pending",
        "step": None,
        "data": {"x": 1},
        "ts": None,
    }
    assert message_id(body) == f"msg_{run.id}_1"


async def test_the_index_remembers_each_answer_and_starts_over_on_a_change(monkeypatch) -> None:
    store = MemoryStore()
    webhooks = Webhooks([], WebhookPolicy(allow_private=True))
    await webhooks.load(store)
    for i in range(100):
        await webhooks.put(
            webhook_id=f"h{i}",
            url=f"http://127.0.0.1:9/{i}",
            events=["run.failed"] if i % 2 else ["step.*"],
            workflows=[f"w{i % 10}"],
        )
    computed = []
    match = webhooks._match
    monkeypatch.setattr(webhooks, "_match", lambda key: computed.append(key) or match(key))
    run = run_of("w3")
    for _ in range(1000):
        routed = webhooks.route(run, event(run, "run.failed"))
    assert routed is not None  # h3, h13, ... h93: the odd ones, all of workflow w3
    assert sorted(routed[0]) == sorted(f"h{i}" for i in range(3, 100, 10))
    assert computed == [("run.failed", "w3")]  # once, then remembered
    await webhooks.delete("h3")
    routed = webhooks.route(run, event(run, "run.failed"))
    assert routed is not None and "h3" not in routed[0] and len(routed[0]) == 9
    assert computed == [("run.failed", "w3")] * 2


async def test_routing_with_no_or_a_hundred_subscriptions_costs_little() -> None:
    """Not a benchmark: a bound loose enough for any machine, tight enough to catch a scan."""
    webhooks = await loaded()
    run = run_of("w")
    events = [event(run, "step.started", "s") for _ in range(20_000)]
    start = time.perf_counter()
    for e in events:
        webhooks.route(run, e)
    idle = time.perf_counter() - start
    for i in range(100):
        await webhooks.put(
            webhook_id=f"h{i}", url="http://127.0.0.1:9/x", events=["run.failed"], workflows=[]
        )
    start = time.perf_counter()
    for e in events:
        assert webhooks.route(run, e) is None  # no subscription wants step.started
    busy = time.perf_counter() - start
    assert idle / len(events) < 5e-6 and busy / len(events) < 20e-6, (idle, busy)


# -- the outbox ------------------------------------------------------------------------------


def _config(tmp_path, **tables: Any) -> HostConfig:
    return HostConfig.model_validate(
        {
            "host": {"data_dir": str(tmp_path / "data"), "port": 0},
            "plugins": {"entry_points": False},
            **tables,
        }
    )


def _outbox(tmp_path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(tmp_path / "data" / "plait.db")
    try:
        rows = conn.execute("SELECT webhook, message FROM webhook_outbox ORDER BY id").fetchall()
    finally:
        conn.close()
    return [(hook_id, message_id(body)) for hook_id, body in rows]


async def test_outbox_rows_are_queued_with_their_event_and_committed_with_it(
    tmp_path, monkeypatch
) -> None:
    queued: list[list[str]] = []
    real_queue = SqliteStore._queue

    def spy(self, rows, told=None):
        queued.append([sql for sql, _ in rows])
        return real_queue(self, rows, told)

    monkeypatch.setattr(SqliteStore, "_queue", spy)
    config = _config(
        tmp_path,
        webhooks=[hook("fails", ["run.failed", "step.failed"]), hook("ok", ["run.*"], ["ok"])],
        webhooks_policy={"allow_private": True},
    )
    host = plait.Host(config, recover_runs=False)  # no delivery loop: the rows stay
    async with host:
        host.register(OK)
        host.register(BAD)
        ok = await host.wait(await host.start_run("ok"))
        bad = await host.wait(await host.start_run("bad"))
        assert (ok.status, bad.status) == ("succeeded", "failed")
        ok_events = await host.events(ok.id)
        bad_events = await host.events(bad.id)
    # Each event that a subscription wants went to the writer in the same _queue call as its
    # outbox rows: the writer takes a call's rows whole, into one transaction.
    for kinds in queued:
        if _OUTBOX in kinds:
            assert kinds[0] == _EVENT and kinds.count(_EVENT) == 1
    expected = [("ok", f"msg_{ok.id}_{e.seq}") for e in ok_events if e.type.startswith("run.")]
    expected += [
        ("fails", f"msg_{bad.id}_{e.seq}")
        for e in bad_events
        if e.type in ("run.failed", "step.failed")
    ]
    assert sorted(_outbox(tmp_path)) == sorted(expected)
    assert len([e for e in bad_events if e.type == "step.failed"]) == 1


async def test_a_frozen_store_queues_no_outbox_row(tmp_path) -> None:
    """What is not kept is not sent: the outbox rows go only with the events that are."""
    webhooks = await loaded(hook("all", ["run.*"]))
    async with SqliteStore(tmp_path, webhooks=webhooks) as store:
        run = run_of("ok")
        store.freeze()
        store.record(run, event(run, "run.created"))
        await store.sync()
        assert await store.webhook_backlog() == {}


async def test_the_sqlite_store_keeps_attempts_and_the_delivery_log(tmp_path) -> None:
    webhooks = await loaded(hook("all", ["run.*"]))
    async with SqliteStore(tmp_path, webhooks=webhooks) as store:
        await _outbox_contract(store, webhooks)


async def test_the_postgres_store_keeps_attempts_and_the_delivery_log(pg_url) -> None:
    webhooks = await loaded(hook("all", ["run.*"]))
    async with PostgresStore(pg_url, webhooks=webhooks) as store:
        await _outbox_contract(store, webhooks)


async def test_the_memory_store_keeps_an_outbox_of_told_events() -> None:
    webhooks = Webhooks(settings(hook("all", ["run.*"])), WebhookPolicy(allow_private=True))
    store = MemoryStore(webhooks=webhooks)
    await webhooks.load(store)
    await _outbox_contract(store, webhooks)


async def _outbox_contract(store: Any, webhooks: Webhooks) -> None:
    """What both stores do with outbox messages and attempts."""
    store.put_webhook("all", {"id": "all"}, {"enabled": True})
    run = run_of("ok")
    store.attach(run)  # the memory store routes told events; SQLite routes what it records
    for kind in ("run.created", "run.started", "step.started", "run.succeeded"):
        run.record(kind, "s" if kind.startswith("step") else None, {})
    await store.sync()
    now = time.time() + 1
    due, later = await store.due_webhook_messages(now, ["all"], 10)
    assert [message_id(m.message) for m in due] == [f"msg_{run.id}_{s}" for s in (1, 2, 4)]
    assert later is None and all(m.attempts == 0 for m in due)
    assert await store.due_webhook_messages(now, ["other"], 10) == ([], None)
    first, second, third = due
    store.webhook_attempt(WebhookAttempt(first.id, "all", "m1", 1, 500, "HTTP 500", now, now + 60))
    store.webhook_attempt(WebhookAttempt(second.id, "all", "m2", 1, 200, None, now, None))
    await store.sync()
    due, later = await store.due_webhook_messages(now, ["all"], 10)
    assert [m.id for m in due] == [third.id] and later == pytest.approx(now + 60)
    assert await store.webhook_backlog() == {"all": 2}
    log = await store.webhook_deliveries("all")
    assert [(d["messageId"], d["status"]) for d in log] == [("m2", 200), ("m1", 500)]
    assert await store.webhook_deliveries("all", before=log[0]["id"]) == log[1:]
    store.put_webhook("all", {"id": "all"}, {"enabled": True}, requeue_at=now)
    await store.sync()
    due, _ = await store.due_webhook_messages(now, ["all"], 10)
    assert sorted(m.id for m in due) == sorted([first.id, third.id])
    assert all(m.attempts == 0 for m in due)
    store.set_webhook_state("all", {"enabled": False})
    await store.sync()
    assert await store.webhooks() == [("all", {"id": "all"}, {"enabled": False})]
    store.delete_webhook("all")
    store.set_webhook_state("all", {"enabled": True})  # a late state does not bring it back
    await store.sync()
    assert await store.webhooks() == []
    assert await store.webhook_backlog() == {}
    assert await store.webhook_deliveries("all") == []


# -- checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ({"url": "ftp://example.com/x"}, "webhooks[0].url: only http and https"),
        ({"url": "http:///nohost"}, "webhooks[0].url: the URL names no host"),
        ({"url": "https://u:p@example.com/"}, "webhooks[0].url: the URL must not carry"),
        ({"events": ["run.finished"]}, "webhooks[0].events[0]: unknown event 'run.finished'"),
        ({"events": ["runs.*"]}, "webhooks[0].events[0]: unknown event 'runs.*'"),
        ({"events": []}, "webhooks[0].events"),
        ({"secret": "hunter2"}, "webhooks[0].secret: a signing secret is whsec_"),
        ({"secret": "whsec_!!"}, "webhooks[0].secret: the part after whsec_ is not base64"),
        ({"secret": "whsec_" + base64.b64encode(b"short").decode()}, "holds 5 bytes"),
        ({"secret": None}, "webhooks[0]: give the signing secret"),
        ({"secret_env": "X"}, "webhooks[0]: give the signing secret"),
        ({"id": "no spaces"}, "webhooks[0].id"),
        ({"bogus": 1}, "webhooks[0].bogus: unknown key"),
    ],
)
def test_the_config_file_refuses_a_bad_subscription_naming_the_field(table, named) -> None:
    entry = {k: v for k, v in (hook("ops", ["run.failed"]) | table).items() if v is not None}
    with pytest.raises(ConfigError) as caught:
        plait.load_config(environ={}, overrides={"webhooks.ops": entry})
    assert named in str(caught.value), str(caught.value)


def test_both_config_forms_give_the_same_subscriptions(tmp_path) -> None:
    listed = tmp_path / "listed.toml"
    listed.write_text(
        '[[webhooks]]\nid = "ops"\nurl = "https://hooks.example.com/x"\n'
        f'events = ["run.failed"]\nsecret = "{SECRET}"\n'
    )
    named = tmp_path / "named.toml"
    named.write_text(
        '[webhooks.ops]\nurl = "https://hooks.example.com/x"\n'
        f'events = ["run.failed"]\nsecret = "{SECRET}"\n'
    )
    first = plait.load_config(listed, environ={})
    assert first.webhooks == plait.load_config(named, environ={}).webhooks
    assert first.webhooks[0].id == "ops"
    twice = tmp_path / "twice.toml"
    twice.write_text(listed.read_text() * 2)
    with pytest.raises(ConfigError, match="webhooks: two subscriptions have the id 'ops'"):
        plait.load_config(twice, environ={})


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://127.0.0.1:9/x", "127.0.0.1 is 127.0.0.1, a private, loopback"),
        ("http://10.1.2.3/x", "10.1.2.3 is 10.1.2.3, a private"),
        ("http://[::1]:9/x", "::1 is ::1, a private"),
        ("http://169.254.169.254/latest", "169.254.169.254 is 169.254.169.254"),
        ("http://localhost:9/x", "localhost resolves to"),
    ],
)
async def test_a_private_target_in_the_config_file_stops_the_start(url, said) -> None:
    config = memory_config(webhooks={"ops": hook("ops", ["run.failed"], url=url)})
    with pytest.raises(ConfigError) as caught:
        async with started_host(config=config):
            pass
    assert "webhooks.ops.url" in str(caught.value) and said in str(caught.value)
    assert "allow_private = true" in str(caught.value)


async def test_a_secret_env_that_is_not_set_stops_the_start(monkeypatch) -> None:
    monkeypatch.delenv("PLAIT_TEST_NO_SUCH_SECRET", raising=False)
    entry = hook("ops", ["run.failed"], secret_env="PLAIT_TEST_NO_SUCH_SECRET")
    del entry["secret"]
    config = memory_config(webhooks={"ops": entry}, webhooks_policy={"allow_private": True})
    with pytest.raises(ConfigError, match="webhooks.ops.secret_env: the variable"):
        async with started_host(config=config):
            pass
    monkeypatch.setenv("PLAIT_TEST_NO_SUCH_SECRET", "not-a-secret")
    with pytest.raises(ConfigError, match="webhooks.ops.secret_env: a signing secret is whsec_"):
        async with started_host(config=config):
            pass


async def test_bad_subscriptions_through_the_api_are_refused_naming_the_field() -> None:
    # A public address that nothing here sends to: the host delivers nothing (no loop).
    public = "https://93.184.215.14/hook"
    config = memory_config(webhooks={"cfg": hook("cfg", ["run.failed"], url=public)})
    host = plait.Host(config, recover_runs=False)
    async with host, Client(host) as client:
        good = {"url": public, "events": ["run.failed"]}
        cases = [
            ({**good, "url": "ftp://example.com/x"}, "url: only http and https URLs"),
            ({**good, "url": "http://no-such-host.invalid/x"}, "url: cannot resolve the host"),
            ({**good, "url": "http://127.0.0.1:8080/x"}, "url: 127.0.0.1 is 127.0.0.1, a priv"),
            ({**good, "url": "http://192.168.1.10/x"}, "url: 192.168.1.10 is 192.168.1.10"),
            ({**good, "url": "http://localhost/x"}, "url: localhost resolves to"),
            ({**good, "events": ["run.done"]}, "events.0: unknown event 'run.done'"),
            ({**good, "events": ["run.succeded"]}, "did you mean 'run.succeeded'?"),
            ({**good, "secret": "nope"}, "secret: a signing secret is whsec_"),
            ({**good, "id": "cfg"}, "id: the subscription 'cfg' is declared in the config"),
            ({**good, "id": "has space"}, "id: String should match pattern"),
            ({**good, "extra": 1}, "extra: unknown param"),
        ]
        for params, said in cases:
            with pytest.raises(InvalidParams) as caught:
                await client.call("webhooks/put", **params)
            assert said in caught.value.message, (params, caught.value.message)
        listed = await client.call("webhooks/list")
        assert [w["id"] for w in listed["webhooks"]] == ["cfg"]  # nothing else changed
        for method in ("webhooks/get", "webhooks/delete", "webhooks/deliveries"):
            with pytest.raises(InvalidParams, match="id: no webhook subscription 'nope'"):
                await client.call(method, id="nope")
        with pytest.raises(InvalidParams, match="declared in the config file; remove it"):
            await client.call("webhooks/delete", id="cfg")
        made = await client.call("webhooks/put", **good)
        assert made["secret"].startswith("whsec_") and "secret" not in made["webhook"]
        assert made["webhook"]["id"].startswith("wh_") and made["webhook"]["enabled"]
        again = await client.call("webhooks/put", id=made["webhook"]["id"], **good)
        assert "secret" not in again  # a replaced subscription keeps its secret
        await client.call("webhooks/delete", id=made["webhook"]["id"])
        assert [w["id"] for w in (await client.call("webhooks/list"))["webhooks"]] == ["cfg"]


# -- delivery, in process --------------------------------------------------------------------


class _Receiver:
    """A tiny webhook endpoint on 127.0.0.1 answering ``status``."""

    def __init__(self) -> None:
        self.status = 200
        self.received: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.received.append((dict(self.headers.items()), body))
                self.send_response(outer.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = _Receiver()
    yield r
    r.close()


async def test_a_memory_host_delivers_signed_messages_and_stops_its_loop(receiver) -> None:
    secret = new_secret()
    config = memory_config(
        webhooks={"all": hook("all", ["run.succeeded"], url=receiver.url("/a"), secret=secret)},
        webhooks_policy={"allow_private": True},
    )
    async with started_host(config=config, workflows=[OK]) as host:
        run = await host.wait(await host.start_run("ok"))

        async def delivered() -> bool:
            return len(receiver.received) == 1 and not (await host.store.webhook_backlog())

        await until(delivered)
        headers, body = receiver.received[0]
        payload = Webhook(secret).verify(body, headers)
        assert payload["type"] == "run.succeeded" and payload["data"]["runId"] == run.id
        assert headers["webhook-id"] == f"msg_{run.id}_{run.seq}"
        assert any("Webhooks.deliver" in t.get_name() for t in asyncio.all_tasks())
    assert not any("Webhooks" in t.get_name() for t in asyncio.all_tasks())
