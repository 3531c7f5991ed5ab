"""Webhooks: subscriptions to run and step events, the index that routes events to them, and
the loop that delivers them.

A subscription names event types (``run.failed``, or a family: ``run.*``), optionally
workflows, a target URL and a signing secret. It comes from the config file (``[[webhooks]]``)
or from the API (``webhooks/put``), and is kept in the store's ``webhooks`` table with its
state (enabled or disabled and why, its failures in a row, its last attempt).

**Routing.** :class:`Webhooks` is the store's :class:`~plait.state.run_store.EventRouter`: the
store asks it about every event it keeps, and writes one outbox row per subscription it names
*in the event's own transaction*, so a committed event always has its deliveries queued and a
crash loses none. The answer comes from an index (event type to subscriptions, exact types and
families apart) whose result is remembered per (event type, workflow): with no subscription an
event costs one truth test, with a hundred a dict lookup, and the message is encoded once per
event whatever the number of subscriptions it goes to.

**Delivery** (:meth:`Webhooks.deliver`, a task of the host). Due outbox messages are POSTed as
JSON, signed as the Standard Webhooks specification says (``webhook-id``,
``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>``),
one at a time per subscription and up to ``concurrency`` at once overall. A 2xx answer removes
the message; a network error, a timeout, 429 or 5xx is retried after a growing wait with jitter
(or what ``Retry-After`` asks, up to an hour); any other answer gives the message up. Every
attempt goes into the delivery log. A subscription whose attempts have failed
``disable_after`` times in a row, for at least as long as the retry schedule takes to get there,
is disabled with the reason in its state. Delivery is at least once: a message is removed only
once its 2xx answer is kept, so a crash in between sends it again, with the same
``webhook-id``.

**Targets.** Only http(s) URLs; unless ``[webhooks_policy] allow_private`` is true, a host that
resolves to a private, loopback, link-local or otherwise non-public address is refused when the
subscription is made and again before every attempt.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import anyio
import anyio.abc
import httpx
from pydantic import TypeAdapter, ValidationError
from standardwebhooks import Webhook

from plait.config import WebhookPolicy, WebhookSecret, WebhookSettings
from plait.errors import ConfigError, StoreUnavailable
from plait.state.run_store import OutboxMessage, RunStore, WebhookAttempt
from plait.state.runs import Event, Run
from plait.values import dumps

__all__ = [
    "JITTER",
    "MAX_WEBHOOKS",
    "RETRY_AFTER_MAX",
    "Subscription",
    "Webhooks",
    "message_id",
    "new_secret",
]

log = logging.getLogger("plait.services.webhooks")

JITTER: Final = 0.25
"""Each wait between attempts is shortened by a random share of up to this."""
RETRY_AFTER_MAX: Final = 3600.0
"""The longest wait a ``Retry-After`` answer is granted."""
MAX_WEBHOOKS: Final = 1000
"""Subscriptions one host keeps."""
POLL_SECONDS: Final = 30.0
"""The longest the delivery loop sleeps without being woken (it is woken by new messages)."""
BATCH: Final = 256
"""Due messages the delivery loop reads at once."""
ROUTES_KEPT: Final = 4096
"""(event type, workflow) answers the index remembers before it starts over."""
PREVIEW_BYTES: Final = 200
"""Bytes of a failing answer's body kept in the delivery log."""
USER_AGENT: Final = "plait-webhooks"

_secret_adapter: TypeAdapter[str] = TypeAdapter(WebhookSecret)


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and the base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def message_id(body: str) -> str:
    """The ``webhook-id`` of a message: one per event (``msg_<run id>_<seq>``), the same on
    every attempt and for every subscription the event goes to."""
    data = json.loads(body)["data"]
    return f"msg_{data['runId']}_{data['seq']}"


def _timestamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _fresh_state() -> dict[str, Any]:
    return {
        "enabled": True,
        "disabledReason": None,
        "disabledAt": None,
        "failures": 0,
        "failingSince": None,
        "lastAttemptAt": None,
        "lastStatus": None,
        "lastError": None,
        "lastSuccessAt": None,
    }


@dataclass(eq=False)
class Subscription:
    """One webhook subscription, as the host holds it."""

    id: str
    url: str
    events: tuple[str, ...]
    workflows: frozenset[str]
    secret: str
    source: Literal["config", "api"]
    created_at: float
    state: dict[str, Any] = field(default_factory=_fresh_state)
    secret_env: str | None = None
    signer: Webhook = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.signer = Webhook(self.secret)

    @property
    def enabled(self) -> bool:
        return bool(self.state.get("enabled", True))

    def spec(self) -> dict[str, Any]:
        """What the store keeps of it (a config file's subscription without its secret, which
        the file or the environment gives at each start)."""
        out: dict[str, Any] = {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "workflows": sorted(self.workflows),
            "source": self.source,
            "createdAt": self.created_at,
        }
        if self.source == "api":
            out["secret"] = self.secret
        elif self.secret_env is not None:
            out["secretEnv"] = self.secret_env
        return out

    def wants(self, kind: str, workflow: str) -> bool:
        """Whether an event of type ``kind`` of a run of ``workflow`` goes to it."""
        if self.workflows and workflow not in self.workflows:
            return False
        return any(
            kind == pattern or (pattern.endswith(".*") and kind.startswith(pattern[:-1]))
            for pattern in self.events
        )

    def view(self, pending: int) -> dict[str, Any]:
        """``webhooks/get``: everything but the secret."""
        spec = self.spec()
        spec.pop("secret", None)
        return spec | self.state | {"pending": pending}


class Webhooks:
    """The host's webhook subscriptions: their index (the store's event router), their
    changes, and the delivery loop."""

    def __init__(
        self,
        settings: Sequence[WebhookSettings] = (),
        policy: WebhookPolicy | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = list(settings)
        """The config file's subscriptions."""
        self.policy = policy or WebhookPolicy()
        self._environ = os.environ if environ is None else environ
        self._subs: dict[str, Subscription] = {}
        self._active = False
        """Whether any subscription is enabled: routing an event costs this test when not."""
        self._exact: dict[str, list[Subscription]] = {}
        self._family: dict[str, list[Subscription]] = {}
        self._routes: dict[tuple[str, str], tuple[str, ...]] = {}
        self._store: RunStore | None = None
        self._wake: anyio.Event | None = None
        self._lock: anyio.Lock | None = None
        self._busy: set[str] = set()
        """Subscriptions with a delivery task running."""

    # -- routing (the store's EventRouter) ---------------------------------------------------

    def route(self, run: Run, event: Event) -> tuple[Sequence[str], str] | None:
        """The enabled subscriptions ``event`` goes to and its message; ``None`` for most."""
        if not self._active:
            return None
        try:
            key = (event.type, run.workflow)
            ids = self._routes.get(key)
            if ids is None:
                ids = self._match(key)
            if not ids:
                return None
            if self._wake is not None:
                self._wake.set()  # the loop syncs with the store before it reads
            return ids, self._message(run, event)
        except Exception:  # a store's sink must not fail: log, and keep the event
            log.exception("webhooks: routing event %s of run %s failed", event.seq, run.id)
            return None

    def _match(self, key: tuple[str, str]) -> tuple[str, ...]:
        kind, workflow = key
        family = kind.partition(".")[0]
        found: dict[str, None] = {}
        for sub in (*self._exact.get(kind, ()), *self._family.get(family, ())):
            if not sub.workflows or workflow in sub.workflows:
                found[sub.id] = None
        ids = tuple(found)
        if len(self._routes) >= ROUTES_KEPT:
            self._routes.clear()
        self._routes[key] = ids
        return ids

    def _reindex(self) -> None:
        """Build the index again from the enabled subscriptions (after any change)."""
        exact: dict[str, list[Subscription]] = {}
        family: dict[str, list[Subscription]] = {}
        for sub in self._subs.values():
            if not sub.enabled:
                continue
            for pattern in sub.events:
                if pattern.endswith(".*"):
                    family.setdefault(pattern[:-2], []).append(sub)
                else:
                    exact.setdefault(pattern, []).append(sub)
        self._exact, self._family, self._routes = exact, family, {}
        self._active = bool(exact or family)

    @staticmethod
    def _message(run: Run, event: Event) -> str:
        data: Any = event.data
        body = {
            "type": event.type,
            "timestamp": _timestamp(event.ts),
            "data": {
                "runId": run.id,
                "seq": event.seq,
                "workflow": run.workflow,
                "version": run.version,
                "parentId": run.parent_id,
                "status": run.status,
                "step": event.step,
                "data": data,
                "ts": event.ts,
            },
        }
        try:
            return dumps(body)
        except (TypeError, ValueError, RecursionError) as exc:  # checked before, so rare
            body["data"]["data"] = {"unserializable": str(exc)}  # type: ignore[index]
            return dumps(body)

    # -- loading and changing ----------------------------------------------------------------

    async def load(self, store: RunStore) -> None:
        """Take the subscriptions kept in ``store`` and those of the config file (which win,
        and start enabled), check their targets, and start routing.

        Raises:
            ConfigError: a subscription of the config file has no secret (its variable is not
                set) or its target is refused; naming it.
        """
        self._store = store
        self._wake = anyio.Event()
        self._lock = anyio.Lock()
        now = time.time()
        kept = {hook_id: (spec, state) for hook_id, spec, state in await store.webhooks()}
        subs: dict[str, Subscription] = {}
        for hook in self.settings:
            where = f"invalid config: webhooks.{hook.id}"
            secret = hook.secret
            if secret is None:
                assert hook.secret_env is not None
                secret = self._environ.get(hook.secret_env)
                if not secret:
                    raise ConfigError(
                        f"{where}.secret_env: the variable {hook.secret_env} is not set"
                    )
                try:
                    secret = _secret_adapter.validate_python(secret)
                except ValidationError as exc:
                    problem = exc.errors(include_url=False)[0]["msg"]
                    raise ConfigError(f"{where}.secret_env: {problem}") from None
            await self._check_target(hook.url, where=f"{where}.url", at_start=True)
            old = kept.get(hook.id)
            if old is not None and old[0].get("source") == "api":
                log.warning("webhooks: the config file's %r replaces the API's", hook.id)
            sub = Subscription(
                id=hook.id,
                url=hook.url,
                events=tuple(hook.events),
                workflows=frozenset(hook.workflows),
                secret=secret,
                source="config",
                created_at=now,
                secret_env=hook.secret_env,
            )
            requeue = None
            if old is not None:
                sub.created_at = old[0].get("createdAt", now)
                if old[0] == sub.spec():  # unchanged: its history goes on, enabled again
                    sub.state = {**_fresh_state(), **old[1], "enabled": True}
                    sub.state.update(disabledReason=None, disabledAt=None)
                if not old[1].get("enabled", True):
                    requeue = now  # what waited while it was disabled starts over
            subs[sub.id] = sub
            store.put_webhook(sub.id, sub.spec(), sub.state, requeue_at=requeue)
        for hook_id, (spec, state) in kept.items():
            if hook_id in subs:
                continue
            if spec.get("source") != "api":  # gone from the config file
                store.delete_webhook(hook_id)
                continue
            try:
                subs[hook_id] = Subscription(
                    id=hook_id,
                    url=spec["url"],
                    events=tuple(spec["events"]),
                    workflows=frozenset(spec.get("workflows", ())),
                    secret=spec["secret"],
                    source="api",
                    created_at=spec.get("createdAt", now),
                    state={**_fresh_state(), **state},
                )
            except Exception as exc:  # noqa: BLE001 - one bad row must not stop the host
                log.error("webhooks: the kept subscription %r cannot be used (%s)", hook_id, exc)
        self._subs = subs
        self._reindex()
        await store.sync()
        if subs:
            log.info("webhooks: %d subscription(s)", len(subs))

    def detach(self) -> None:
        """The host stopped: no store to route into or to read any more."""
        self._store = None
        self._subs = {}
        self._reindex()

    def _need_store(self) -> RunStore:
        if self._store is None:
            raise RuntimeError("the host is not started")
        return self._store

    def _writable(self) -> RunStore:
        """The store, if it can write now (a change is refused at once while it cannot)."""
        store = self._need_store()
        if store.unavailable is not None:
            where = str(store.describe().get("path", ":memory:"))
            raise StoreUnavailable(where, store.unavailable)
        return store

    async def _kept(self) -> RunStore:
        """The store, once what was queued is kept (at once while it cannot write: reads
        then show what it kept)."""
        store = self._need_store()
        if store.unavailable is None:
            await store.sync()
        return store

    def _locked(self) -> anyio.Lock:
        assert self._lock is not None, "the host is not started"
        return self._lock

    async def put(
        self,
        *,
        webhook_id: str | None,
        url: str,
        events: Sequence[str],
        workflows: Sequence[str] = (),
        secret: str | None = None,
    ) -> tuple[Subscription, str | None]:
        """Make or replace a subscription of the API (checked already by the params' model,
        but for its target's address); returns it once it is kept, with its secret when one
        was made for it (a replaced one keeps its secret unless given another).

        A replaced subscription starts enabled, and its waiting messages start over.

        Raises:
            ConfigError: ``"<field>: <problem>"``; nothing changed.
            StoreUnavailable: the store cannot write now; nothing changed.
        """
        store = self._writable()
        async with self._locked():
            if webhook_id is None:
                webhook_id = "wh_" + secrets.token_hex(8)
            if any(hook.id == webhook_id for hook in self.settings):
                raise ConfigError(
                    f"id: the subscription {webhook_id!r} is declared in the config file; "
                    "change it there"
                )
            old = self._subs.get(webhook_id)
            if old is None and len(self._subs) >= MAX_WEBHOOKS:
                raise ConfigError(f"id: this host keeps at most {MAX_WEBHOOKS} subscriptions")
            await self._check_target(url, where="url")
            made = None
            if secret is None:
                secret = old.secret if old is not None else (made := new_secret())
            now = time.time()
            sub = Subscription(
                id=webhook_id,
                url=url,
                events=tuple(dict.fromkeys(events)),
                workflows=frozenset(workflows),
                secret=secret,
                source="api",
                created_at=old.created_at if old is not None else now,
            )
            self._subs[webhook_id] = sub
            self._reindex()
            store.put_webhook(
                webhook_id, sub.spec(), sub.state, requeue_at=now if old is not None else None
            )
            await store.sync()
        self._poke()
        return sub, made

    async def delete(self, webhook_id: str) -> None:
        """Remove a subscription of the API, its waiting messages and its delivery log, once
        that is kept.

        Raises:
            ConfigError: no such subscription, or it is the config file's.
            StoreUnavailable: the store cannot write now; nothing changed.
        """
        store = self._writable()
        async with self._locked():
            sub = self._get(webhook_id)
            if sub.source == "config":
                raise ConfigError(
                    f"id: the subscription {webhook_id!r} is declared in the config file; "
                    "remove it there"
                )
            del self._subs[webhook_id]
            self._reindex()
            store.delete_webhook(webhook_id)
            await store.sync()

    def _get(self, webhook_id: str) -> Subscription:
        sub = self._subs.get(webhook_id)
        if sub is None:
            raise ConfigError(f"id: no webhook subscription {webhook_id!r}")
        return sub

    async def views(self) -> list[dict[str, Any]]:
        """``webhooks/list``: every subscription, by id, without secrets, as kept."""
        return await self._shown(sorted(self._subs))

    async def view(self, webhook_id: str) -> dict[str, Any]:
        """``webhooks/get``: one subscription, its state and what waits for it, as kept."""
        self._get(webhook_id)
        return (await self._shown([webhook_id]))[0]

    async def _shown(self, ids: list[str]) -> list[dict[str, Any]]:
        """Views of ``ids`` taken now and returned once what they show is kept."""
        snapshot = [(self._subs[i], self._subs[i].view(0)) for i in ids]
        backlog = await (await self._kept()).webhook_backlog()
        return [view | {"pending": backlog.get(sub.id, 0)} for sub, view in snapshot]

    async def deliveries(
        self, webhook_id: str, *, cursor: str | None = None, limit: int = 50
    ) -> tuple[list[dict[str, Any]], str | None]:
        """``webhooks/deliveries``: a page of the delivery log, newest first, and the cursor
        of the next page."""
        self._get(webhook_id)
        store = await self._kept()  # the attempts made so far are in the log
        before = None
        if cursor is not None:
            if not cursor.isdigit():
                raise ConfigError("cursor: not one this host returned")
            before = int(cursor)
        rows = await store.webhook_deliveries(webhook_id, before=before, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, str(rows[-1]["id"]) if more else None

    # -- targets -----------------------------------------------------------------------------

    async def _check_target(self, url: str, *, where: str, at_start: bool = False) -> None:
        """Refuse a target whose host is, or resolves to, an address that is not public
        (unless ``allow_private``).

        Raises:
            ConfigError: ``"<where>: <problem>"``.
        """
        if self.policy.allow_private:
            return
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = [ipaddress.ip_address(host)]
            named = f"{host} is"
        except ValueError:
            try:
                found = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                if at_start:  # the network may come later: each attempt checks again
                    shown = where.removeprefix("invalid config: ")
                    log.warning("webhooks: %s: cannot resolve %s yet (%s)", shown, host, exc)
                    return
                raise ConfigError(f"{where}: cannot resolve the host {host!r} ({exc})") from None
            addresses = [ipaddress.ip_address(info[4][0]) for info in found]
            named = f"{host} resolves to"
        for address in addresses:
            if not _public(address):
                raise ConfigError(
                    f"{where}: {named} {address}, a private, loopback or link-local address; "
                    "webhooks go there only with [webhooks_policy] allow_private = true"
                )

    # -- delivery ----------------------------------------------------------------------------

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt ``attempt`` (1, 2, ...), before jitter."""
        policy = self.policy
        return float(min(policy.retry_max, policy.retry_base * 2 ** min(attempt - 1, 60)))

    def schedule_span(self, attempts: int) -> float:
        """The least time ``attempts`` attempts take on the retry schedule (jitter included)."""
        return sum(self.backoff(n) for n in range(1, attempts)) * (1 - JITTER)

    async def deliver(self) -> None:
        """Deliver due messages until cancelled: the host runs this in its task group, and a
        stop cancels it with its requests (their messages stay in the outbox)."""
        store = self._need_store()
        limiter = anyio.CapacityLimiter(self.policy.concurrency)
        async with (
            httpx.AsyncClient(
                timeout=self.policy.timeout,
                follow_redirects=False,
                trust_env=False,
                headers={"user-agent": USER_AGENT},
            ) as client,
            anyio.create_task_group() as tg,
        ):
            while True:
                self._wake = anyio.Event()
                try:
                    wait = await self._dispatch(store, tg, client, limiter)
                except Exception:  # a store that cannot be read now: try again a bit later
                    log.exception("webhooks: the delivery loop failed; trying again")
                    wait = 1.0
                if wait > 0:
                    with anyio.move_on_after(wait):
                        await self._wake.wait()

    async def _dispatch(
        self,
        store: RunStore,
        tg: anyio.abc.TaskGroup,
        client: httpx.AsyncClient,
        limiter: anyio.CapacityLimiter,
    ) -> float:
        """Start delivering what is due; returns how long nothing else will be."""
        await store.sync()  # what was routed before the wake is committed
        wait = POLL_SECONDS
        ready = [s.id for s in self._subs.values() if s.enabled and s.id not in self._busy]
        if ready:
            due, next_at = await store.due_webhook_messages(time.time(), ready, BATCH)
            by_sub: dict[str, list[OutboxMessage]] = {}
            for message in due:
                by_sub.setdefault(message.webhook, []).append(message)
            for hook_id, messages in by_sub.items():
                sub = self._subs.get(hook_id)
                if sub is None or not sub.enabled or hook_id in self._busy:
                    continue
                self._busy.add(hook_id)
                tg.start_soon(self._drain, client, limiter, sub, messages)
            if next_at is not None:
                wait = min(wait, max(0.0, next_at - time.time()))
        return wait

    async def _drain(
        self,
        client: httpx.AsyncClient,
        limiter: anyio.CapacityLimiter,
        sub: Subscription,
        messages: list[OutboxMessage],
    ) -> None:
        """Deliver one subscription's due messages in order, then let the loop look again
        once their outcome is kept."""
        try:
            for message in messages:
                if self._subs.get(sub.id) is not sub or not sub.enabled:
                    break
                await self._attempt(client, limiter, sub, message)
            if self._store is not None:
                await self._store.sync()
        except Exception:  # never the host's end: the messages stay in the outbox
            log.exception("webhooks: delivering to %s failed", sub.id)
            await anyio.sleep(1.0)
        finally:
            self._busy.discard(sub.id)
            self._poke()

    async def _attempt(
        self,
        client: httpx.AsyncClient,
        limiter: anyio.CapacityLimiter,
        sub: Subscription,
        message: OutboxMessage,
    ) -> None:
        policy = self.policy
        body = message.message
        try:
            msg_id = message_id(body)
        except (ValueError, KeyError, TypeError):  # not a message this host made: still sent
            msg_id = f"msg_outbox_{message.id}"
        attempt = message.attempts + 1
        status: int | None = None
        error: str | None = None
        retry_after: float | None = None
        try:
            await self._check_target(sub.url, where="url")
            async with limiter:
                stamp = int(time.time())
                headers = {
                    "content-type": "application/json",
                    "webhook-id": msg_id,
                    "webhook-timestamp": str(stamp),
                    "webhook-signature": sub.signer.sign(
                        msg_id, datetime.fromtimestamp(stamp, UTC), body
                    ),
                }
                with anyio.move_on_after(policy.timeout) as scope:
                    async with client.stream(
                        "POST", sub.url, content=body.encode(), headers=headers
                    ) as response:
                        status = response.status_code
                        retry_after = _retry_after(response.headers.get("retry-after"))
                        if not 200 <= status < 300:
                            error = f"HTTP {status}"
                            preview = await _preview(response)
                            if preview:
                                error += f": {preview}"
                if scope.cancelled_caught and status is None:
                    error = f"no answer within {policy.timeout:g}s"
        except ConfigError as exc:
            error = str(exc).removeprefix("url: ")
        except Exception as exc:  # noqa: BLE001 - network errors, whatever httpx raises
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        now = time.time()
        state = dict(sub.state, lastAttemptAt=now, lastStatus=status, lastError=error)
        ok = status is not None and 200 <= status < 300
        next_at: float | None = None
        disabled = False
        if ok:
            state.update(failures=0, failingSince=None, lastSuccessAt=now, lastError=None)
        else:
            failures = int(state.get("failures") or 0) + 1
            since = state.get("failingSince") or now
            state.update(failures=failures, failingSince=since)
            retryable = status is None or status == 429 or status >= 500
            if failures >= policy.disable_after and now - since >= self.schedule_span(
                policy.disable_after
            ):
                disabled = True
                state.update(
                    enabled=False,
                    disabledAt=now,
                    disabledReason=(
                        f"disabled after {failures} failed delivery attempts in a row over "
                        f"{now - since:.1f}s; the last: {error}"
                    ),
                )
                next_at = now  # waits in the outbox until the subscription is put again
            elif not retryable:
                error = f"{error} (not retried)"
            elif attempt >= policy.max_attempts:
                error = f"{error} (given up after {attempt} attempts)"
            else:
                wait = self.backoff(attempt) * (1 - JITTER * random.random())
                if retry_after is not None:
                    wait = min(retry_after, RETRY_AFTER_MAX)
                next_at = now + wait
        store = self._store
        if store is None or self._subs.get(sub.id) is not sub:
            return  # deleted or replaced meanwhile: its messages went or start over
        store.webhook_attempt(
            WebhookAttempt(message.id, sub.id, msg_id, attempt, status, error, now, next_at)
        )
        sub.state = state
        store.set_webhook_state(sub.id, state)
        if disabled:
            log.warning("webhooks: %s: %s", sub.id, state["disabledReason"])
            self._reindex()


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (a number or an HTTP date), if any."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


async def _preview(response: httpx.Response) -> str:
    """The start of a failing answer's body, for the delivery log."""
    got = b""
    async for chunk in response.aiter_raw():
        got += chunk
        if len(got) >= PREVIEW_BYTES:
            break
    return " ".join(got[:PREVIEW_BYTES].decode("utf-8", "replace").split())
