"""The webhook methods: ``webhooks/put``, ``list``, ``get``, ``delete`` and ``deliveries``.

Every one goes through the host's :class:`~plait.services.webhooks.Webhooks`. A subscription
is checked in full before anything changes: a bad field (a URL that is not http(s), a target on
a private address, an unknown event, a secret that is not one) is ``-32602`` naming the field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from plait.config import WEBHOOK_ID, EventPattern, WebhookSecret, WebhookUrl
from plait.errors import ConfigError
from plait.rpc.dispatcher import Dispatcher
from plait.rpc.errors import InvalidParams
from plait.rpc.session import Session
from plait.services.webhooks import Webhooks

__all__ = ["register_webhooks"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class PutParams(_Params):
    id: str | None = Field(None, pattern=WEBHOOK_ID)
    """Replace the subscription with this id, or make it; one is made up when absent."""
    url: WebhookUrl
    events: list[EventPattern] = Field(min_length=1, max_length=100)
    workflows: list[str] = Field(default_factory=list, max_length=1000)
    """Only runs of these workflows; every workflow when empty."""
    secret: WebhookSecret | None = None
    """The signing secret; one is made (and returned, this once) when a new subscription has
    none. A replaced subscription keeps its secret unless given another."""


class IdParams(_Params):
    id: str = Field(min_length=1, max_length=64)


class DeliveriesParams(IdParams):
    limit: int = Field(50, ge=1, le=500)
    cursor: str | None = Field(None, max_length=32)


def register_webhooks(dispatcher: Dispatcher, webhooks: Webhooks) -> None:
    """Add the webhook methods, bound to the host's ``webhooks``, to ``dispatcher``."""
    method = dispatcher.method

    @method("webhooks/put", PutParams)
    async def put(session: Session, p: PutParams) -> dict[str, Any]:
        try:
            sub, made = await webhooks.put(
                webhook_id=p.id,
                url=p.url,
                events=p.events,
                workflows=p.workflows,
                secret=p.secret,
            )
            out: dict[str, Any] = {"webhook": await webhooks.view(sub.id)}
        except ConfigError as exc:
            raise InvalidParams(str(exc)) from None
        if made is not None:
            out["secret"] = made
        return out

    @method("webhooks/list")
    async def list_webhooks(session: Session, p: None) -> dict[str, Any]:
        return {"webhooks": await webhooks.views()}

    @method("webhooks/get", IdParams)
    async def get(session: Session, p: IdParams) -> dict[str, Any]:
        try:
            return {"webhook": await webhooks.view(p.id)}
        except ConfigError as exc:
            raise InvalidParams(str(exc)) from None

    @method("webhooks/delete", IdParams)
    async def delete(session: Session, p: IdParams) -> dict[str, Any]:
        try:
            await webhooks.delete(p.id)
        except ConfigError as exc:
            raise InvalidParams(str(exc)) from None
        return {}

    @method("webhooks/deliveries", DeliveriesParams)
    async def deliveries(session: Session, p: DeliveriesParams) -> dict[str, Any]:
        try:
            rows, cursor = await webhooks.deliveries(p.id, cursor=p.cursor, limit=p.limit)
        except ConfigError as exc:
            raise InvalidParams(str(exc)) from None
        return {"deliveries": rows, "nextCursor": cursor}
