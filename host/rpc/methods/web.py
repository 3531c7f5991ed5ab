"""The web view's method: ``host/link`` mints a one-time link to the page the host serves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from plait.rpc.dispatcher import Dispatcher
from plait.rpc.errors import NotAllowed
from plait.rpc.session import Session

if TYPE_CHECKING:
    from plait.rpc.host_api import HostApi
    from plait.rpc.web import WebAccess

__all__ = ["register_web"]


class LinkParams(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)

    run_id: str | None = Field(None, alias="runId", min_length=1, max_length=256)
    """Open this run's page (a run id or a unique prefix of it); the runs list without."""


def register_web(dispatcher: Dispatcher, host: HostApi, web: WebAccess) -> None:
    """Add ``host/link``, minting links of ``web``, to ``dispatcher``."""

    @dispatcher.method("host/link", LinkParams)
    async def link(session: Session, p: LinkParams) -> dict[str, Any]:
        if not web.serving:
            raise NotAllowed(
                "this host serves no web view: it does not listen on WebSocket "
                "(start it with `plait serve`, not --stdio)"
            )
        run_id = None
        if p.run_id is not None:
            run_id = (await host.get_run(p.run_id)).id  # a prefix names the whole id
        return {"url": web.link(run_id)}
