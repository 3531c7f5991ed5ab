"""A host's part among several sharing one PostgreSQL store.

Every host runs the same loops, and the database decides between them (no other broker):

- **Lease.** The heartbeat renews this host's row in ``hosts`` every ``heartbeat_seconds``; the
  runs it owns are its as long as it does. A host that misses renewals for ``lease_seconds``
  (dead, frozen, cut off) is taken for dead.
- **Take-over.** Every second, and at once when a host hands its runs over, each host claims a
  fair share (the orphans divided by the live hosts) of the unfinished runs whose owner is
  dead, with ``FOR UPDATE SKIP LOCKED``, and resumes them exactly as crash recovery does.
- **Fencing.** A run this host's store refused to write for (another host owns it now), or
  that the heartbeat finds gone after a late renewal, is abandoned here: stopped without
  recording anything, so it goes on only where it is owned.
- **Control.** ``cancel``, ``pause``, ``resume``, ``signal`` and ``respond`` for a run owned
  elsewhere become a row in ``commands`` (with a notification); its owner does it and writes
  the outcome, which the sender waits for (an error comes back as the owner raised it).
- **Following.** ``runs/subscribe`` and ``runs/wait`` on a run owned elsewhere follow it
  through the ``plait_events`` notifications each commit sends: the new events are read
  from the store and told to the run's followers here.
- **Spreading.** A new run started through this host while it runs :data:`SPREAD_MARGIN`
  more runs than the least busy live host (as the heartbeats report them) is started there
  instead, through the same commands table, and followed here.
- **Draining.** :meth:`drain` (``plait serve`` on SIGTERM) stops claiming, lets runs finish
  for up to ``drain_seconds``, and the store's close hands the rest over at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from plait.errors import PlaitError
from plait.rpc.dispatcher import to_rpc_error
from plait.rpc.errors import RpcError
from plait.state.recovery import replay
from plait.state.runs import Run
from plait.store.postgres import COMMANDS_CHANNEL, EVENTS_CHANNEL, PostgresStore

if TYPE_CHECKING:
    from plait.config import ClusterSettings
    from plait.engine.engine import Engine
    from plait.telemetry import Metrics

__all__ = ["COMMAND_SECONDS", "Cluster", "control"]

log = logging.getLogger("plait.cluster")

COMMAND_SECONDS = 10.0
"""How long a control request for a run owned elsewhere waits for its owner to answer."""
CLAIM_EVERY = 1.0
"""Seconds between two looks for runs whose owner died."""
SPREAD_MARGIN = 16
"""Runs more than the least busy live host at which a new run is started there instead."""

Command = Callable[[str, dict[str, Any]], Awaitable[Any]]


class Cluster:
    """Drives this host's lease, take-overs, fencing, remote control and following."""

    def __init__(
        self,
        store: PostgresStore,
        engine: Engine,
        settings: ClusterSettings,
        commands: dict[str, Command],
        *,
        metrics: Metrics | None = None,
    ) -> None:
        """``commands``: how this host does each control command for a run it owns;
        ``metrics``: where take-overs and abandoned runs are counted (and the hosts seen)."""
        self.store = store
        self.metrics = metrics
        self.engine = engine
        self.settings = settings
        self.commands = commands
        self.heartbeat = settings.heartbeat_seconds or settings.lease_seconds / 4
        self.draining = False
        self.followed: dict[str, Run] = {}
        """Runs owned elsewhere that someone here follows, by id."""
        self._wake_claim = anyio.Event()
        self._wake_commands = anyio.Event()
        self.peers: list[dict[str, Any]] = []
        """The other live hosts, not draining, as the last heartbeat read them."""
        self.took_over: list[tuple[str, float]] = []
        """(run id, when) of each run this host took over (for the log and tests)."""

    # -- the loops -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run every loop until cancelled (the host's stop)."""
        log.info(
            "cluster: host %s (%s) joined; lease %.1fs, heartbeat %.2fs",
            self.store.name,
            self.store.host_id[:8],
            self.settings.lease_seconds,
            self.heartbeat,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._beat)
            tg.start_soon(self._claim)
            tg.start_soon(self._listen)
            tg.start_soon(self._serve_commands)

    async def _beat(self) -> None:
        renewed = time.monotonic()
        while True:
            try:
                await self.store.heartbeat(len(self.engine.executions))
                self.peers = [
                    host
                    for host in await self.store.hosts()
                    if host["id"] != self.store.host_id
                    and not host["draining"]
                    and host["silent"] < self.settings.lease_seconds
                ]
                now = time.monotonic()
                if now - renewed > self.settings.lease_seconds:
                    # Away longer than the lease: others may have taken runs over meanwhile.
                    log.warning(
                        "cluster: the lease was not renewed for %.1fs; checking which runs "
                        "are still this host's",
                        now - renewed,
                    )
                    self._abandon(await self.store.lost(list(self.engine.executions)))
                renewed = now
            except Exception as exc:  # the database is away: the writer retries, so do we
                log.warning("cluster: heartbeat failed (%s); retrying", _short(exc))
            self._abandon(set(self.store.fenced) & set(self.engine.executions))
            await anyio.sleep(self.heartbeat)

    def _abandon(self, run_ids: set[str]) -> None:
        if run_ids:
            stopped = self.engine.abandon(run_ids)
            if stopped and self.metrics is not None:
                self.metrics.abandoned.inc(len(stopped))
            if stopped:
                log.warning(
                    "cluster: %d run(s) were taken over by another host; stopped here: %s",
                    len(stopped),
                    ", ".join(sorted(stopped)[:10]),
                )

    async def _claim(self) -> None:
        while True:
            if not self.draining:
                try:
                    taken = await self.store.claim()
                except Exception as exc:
                    log.warning("cluster: looking for runs to take over failed (%s)", _short(exc))
                    taken = []
                if taken:
                    now = time.time()
                    ids = [run_id for run_id, _ in taken]
                    self.engine.adopting(ids)
                    self.took_over.extend((run_id, now) for run_id in ids)
                    log.warning(
                        "cluster: took over %d run(s) from a host that stopped: %s",
                        len(ids),
                        ", ".join(ids[:10]),
                    )
                    for crashed in (True, False):
                        group = [run_id for run_id, died in taken if died is crashed]
                        if group and self.metrics is not None:
                            how = "crashed" if crashed else "handed"
                            self.metrics.takeovers.labels(how).inc(len(group))
                        if group:
                            self.store.resuming(crashed)
                            await self.engine.recover(group)
                    continue  # there may be more
            with anyio.move_on_after(CLAIM_EVERY):
                await self._wake_claim.wait()
            self._wake_claim = anyio.Event()

    async def _listen(self) -> None:
        """Follow the notifications of commits and commands (reconnecting when cut off)."""
        import psycopg

        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.store.listen_url(), autocommit=True, connect_timeout=10
                )
                async with conn:
                    await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    await conn.execute(f"LISTEN {COMMANDS_CHANNEL}")
                    async for note in conn.notifies():
                        if note.channel == EVENTS_CHANNEL:
                            await self._events(note.payload)
                        elif note.payload == "released":
                            self._wake_claim.set()
                        else:
                            self._wake_commands.set()
            except Exception as exc:
                log.warning("cluster: listening failed (%s); again in 1s", _short(exc))
                await anyio.sleep(1)

    async def _events(self, payload: str) -> None:
        """Tell the followers here of the new events of runs owned elsewhere."""
        for item in payload.split():
            run_id, _, seq = item.rpartition(":")
            run = self.followed.get(run_id)
            if run is None or int(seq) <= run.published:
                continue
            new = [e for e in await self.store.events(run_id, run.published) if e.seq > run.seq]
            if not new:
                continue
            # What the run says of itself follows its events: its row for its status and
            # outcome, its steps replayed (both read before the events are told, so a
            # follower that looks at the run sees it as of the event it is told).
            row = await self.store.run_row(run_id)
            if row is not None:
                run.status = row["status"]
                run.outputs, run.error = row["outputs"], row["error"]
                run.started_at, run.finished_at = row["started_at"], row["finished_at"]
            run.events.extend(new)
            run.steps = {path: rec.state() for path, rec in replay(run.events).steps.items()}
            run.seq = new[-1].seq
            for event in new:
                run.publish(event)
            if run.finished:
                self.followed.pop(run_id, None)

    async def _serve_commands(self) -> None:
        while True:
            try:
                for command_id, run_id, command, args in await self.store.take_commands():
                    await self.store.answer_command(
                        command_id, await self._do(run_id, command, args)
                    )
            except Exception as exc:
                log.warning("cluster: serving commands failed (%s)", _short(exc))
            with anyio.move_on_after(CLAIM_EVERY):
                await self._wake_commands.wait()
            self._wake_commands = anyio.Event()

    async def _do(self, run_id: str | None, command: str, args: dict[str, Any]) -> dict[str, Any]:
        do = self.commands.get(command)
        if do is None:
            return {"error": {"code": -32601, "message": f"unknown command {command!r}"}}
        try:
            value = await do(run_id or "", args)
        except (PlaitError, RpcError) as exc:
            return {"error": to_rpc_error(exc).to_error_data()}
        return {"ok": True, "value": value}

    # -- for the host --------------------------------------------------------------------------

    def owns(self, run_id: str) -> bool:
        """Whether this host runs ``run_id`` (else it may be owned elsewhere)."""
        return run_id in self.engine.executions

    async def elsewhere(self, run_id: str) -> bool:
        """Whether an unfinished run is owned by another host."""
        if self.owns(run_id):
            return False
        owner = await self.store.owner_of(run_id)
        return owner is not None and owner != self.store.host_id

    async def control(
        self, run_id: str | None, command: str, args: dict[str, Any], *, host: str | None = None
    ) -> Any:
        """Have the owner of ``run_id`` (or the host ``host``) do ``command``; its answer.

        Raises:
            RpcError: the owner refused it (the error it raised), or did not answer in time.
        """
        return await control(self.store, run_id, command, args, host=host)

    def place(self) -> str | None:
        """Another host to start a new run on, when this one runs clearly more than the least
        busy live host (by :data:`SPREAD_MARGIN` runs): that host's id, its count raised by one
        meanwhile so that a burst spreads over every host; ``None``: start it here."""
        if not self.peers or self.draining:
            return None
        idlest = min(self.peers, key=lambda host: host["live"])
        if len(self.engine.executions) - idlest["live"] < SPREAD_MARGIN:
            return None
        idlest["live"] += 1
        return str(idlest["id"])

    async def info(self) -> dict[str, Any]:
        """``host/info``'s ``cluster``: this host, its settings, and every host sharing the
        database (seconds since each one's heartbeat, runs it has in memory, draining)."""
        return {
            "host": self.store.host_id,
            "name": self.store.name,
            "leaseSeconds": self.settings.lease_seconds,
            "draining": self.draining,
            "tookOver": len(self.took_over),
            "hosts": await self.store.hosts(),
        }

    def follow(self, run: Run) -> Run:
        """The run to listen to for a run owned elsewhere: one object per run, told of its
        events as their commits are notified."""
        followed = self.followed.get(run.id)
        if followed is not None:
            return followed
        self.followed[run.id] = run
        return run

    async def drain(self) -> None:
        """Stop taking runs over and let the runs here end, for up to ``drain_seconds``."""
        self.draining = True
        try:
            await self.store.set_draining()
        except Exception as exc:
            log.warning("cluster: could not mark this host draining (%s)", _short(exc))
        live = len(self.engine.executions)
        log.warning(
            "cluster: draining: no more runs are taken over; waiting up to %.0fs for %d run(s)",
            self.settings.drain_seconds,
            live,
        )
        with anyio.move_on_after(self.settings.drain_seconds):
            while self.engine.executions:
                await anyio.sleep(0.1)
        left = len(self.engine.executions)
        if left:
            log.warning("cluster: handing %d unfinished run(s) over to the other hosts", left)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1]}" if text else type(exc).__name__


async def control(
    store: PostgresStore,
    run_id: str | None,
    command: str,
    args: dict[str, Any],
    *,
    host: str | None = None,
) -> Any:
    """Queue ``command`` for the owner of ``run_id`` (or the host ``host``) and wait for its
    answer: what a host does for a run owned elsewhere, and what ``plait runs`` does on a
    shared store without a host of its own.

    Raises:
        RpcError: the owner refused it (the error it raised), or did not answer in time.
    """
    command_id = await store.send_command(run_id, command, args, host=host)
    deadline = time.monotonic() + COMMAND_SECONDS
    delay = 0.005
    while time.monotonic() < deadline:
        result = await store.command_result(command_id)
        if result is not None:
            if "error" in result:
                raise RpcError.from_error_data(result["error"])
            return result.get("value")
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.1)
    whom = f"the host that owns run {run_id}" if run_id else f"host {host}"
    raise RpcError.from_error_data(
        {
            "code": -32006,
            "message": f"{whom} did not answer {command} in {COMMAND_SECONDS:g}s; it stays "
            "queued for it",
        }
    )
