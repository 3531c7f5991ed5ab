"""The ``machine`` step: a workflow written as states and transitions (``states:``).

The host compiles a workflow's ``states:`` into one step of this type (its id is ``machine``);
each state's steps are one of its bodies, labelled with the state's name. It is not written as
a step itself.
"""

from __future__ import annotations

import copy
import uuid
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import Field

from plait.errors import RunError
from plait.plugins import StepConfig, StepContext, StepType, hookimpl

if TYPE_CHECKING:
    from collections.abc import Mapping

    from plait.plugins.types import RegisterStepType

__all__ = [
    "MachineConfig",
    "MachineError",
    "MachineLimitExceeded",
    "MachineState",
    "MachineStep",
    "MachineTransition",
]


class MachineError(RunError):
    """A state machine cannot go on: no transition of its state applies."""

    kind = "machine"
    retryable = False


class MachineLimitExceeded(MachineError):
    """A state machine would take more transitions than its ``max_transitions``."""

    kind = "machine_limit"


class MachineTransition(StepConfig):
    """A transition, as the compiler hands it over."""

    to: str
    when: Any = None
    """The compiled condition (``None``: always)."""
    on: str | None = None
    """The signal the transition waits for (``None``: taken when ``when`` holds)."""


class MachineState(StepConfig):
    """A state, as the compiler hands it over (its steps are the body of its name)."""

    steps: bool = False
    """Whether the state has steps (a body labelled with its name)."""
    output: Any = None
    """The compiled output template (``None``: the last step's output, or null)."""
    transitions: list[MachineTransition] = Field(default_factory=list)
    final: bool = False
    outputs: Any = None
    """A final state's compiled outputs (``None``: no outputs)."""


class MachineConfig(StepConfig):
    """The fields of a ``machine`` step, built by the compiler from a workflow's states."""

    states: dict[str, MachineState]
    initial: str
    max_transitions: int = Field(100, ge=1, le=100_000)


class MachineStep(StepType[MachineConfig]):
    """Run a state machine: a state's steps, its output, the first transition that applies,
    and on to the next state until a final state, whose ``outputs`` are the step's output.

    Written as a workflow's ``states:`` (with ``initial:`` and ``max_transitions:``), never as
    a step. Each state's steps run as a body; the body's step paths are
    ``machine[<n>:<state>].<id>``, ``n`` counting the transitions taken before.

    Transitions are tried in order. One without ``on`` is taken when its ``when`` holds (or it
    has none). When none of those applies, the machine waits for the signals of the
    transitions with ``on`` whose ``when`` holds, and takes the one whose signal comes first.

    Templates: a transition's ``when`` and a final state's ``outputs`` see ``output`` (the
    state's output), ``state``, ``inputs`` and ``vars``; a state's steps and its ``output``
    see ``state`` besides their usual roots. ``state.<name>`` is every state's record:
    ``output`` (of its latest visit, null before the first), ``visits``, and ``signal``
    (``{event, data}``, after a signal took the machine out of it).

    Events: ``state.entered`` with ``from``, ``to`` and ``transition`` (the count before it)
    each time the machine enters a state, the initial one included.

    The states taken are kept as checkpoints, so after a host restart the machine replays its
    way (the finished steps of the states it went through are not run again) to the state it
    was in, and goes on from there.

    Example (a workflow, not a step)::

        name: approve
        initial: asked
        states:
          asked:
            steps: [{id: ask, tool: chat.post, with: {text: "approve?"}}]
            transitions:
              - {to: done, on: approve}
              - {to: asked, on: remind}
          done:
            final: true
            outputs: {by: "${ state.asked.signal.data.user }"}
    """

    key = "machine"
    description = "Run a workflow written as states and transitions (states:)."
    uses_capacity = False
    body_roots = frozenset({"state"})

    Config = MachineConfig

    def bodies(self, config: Mapping[str, Any]) -> dict[str, list[Any]]:
        """One body per state with steps, labelled with the state's name."""
        states = config.get("states")
        if not isinstance(states, dict):
            return {}
        return {
            str(name): state["steps"]
            for name, state in states.items()
            if isinstance(state, dict) and isinstance(state.get("steps"), list)
        }

    def signals(self, config: Mapping[str, Any]) -> list[str]:
        """The events of transitions with ``on``."""
        events: list[str] = []
        states = config.get("states")
        for state in states.values() if isinstance(states, dict) else ():
            for t in state.get("transitions") or () if isinstance(state, dict) else ():
                if isinstance(t, dict) and isinstance(t.get("on"), str):
                    events.append(t["on"])
        return events

    async def run(self, ctx: StepContext, config: MachineConfig) -> Any:
        """Go from state to state until a final one; return its outputs."""
        # This run of the step: tells a checkpoint recorded now from one recorded before a
        # restart (a replay), so the events of a replayed transition are not told again.
        life = uuid.uuid4().hex
        seen: dict[str, dict[str, Any]] = {
            name: {"output": None, "visits": 0} for name in config.states
        }
        current, previous, taken = config.initial, None, 0
        while True:
            entered = await ctx.checkpoint(f"entered.{taken}", {"state": current, "life": life})
            current = entered["state"]
            if entered.get("life") == life:  # not a replay: the watcher hears of it once
                await ctx.emit(
                    "state.entered", {"from": previous, "to": current, "transition": taken}
                )
            spec = config.states[current]
            view = copy.deepcopy(seen)
            if spec.steps:
                output = await ctx.run_body(
                    current, vars={"state": view}, output=spec.output, key=f"{taken}:{current}"
                )
            elif spec.output is not None:
                output = ctx.render(spec.output, state=view)
            else:
                output = None
            record = seen[current]
            record["output"] = output
            record["visits"] += 1
            if spec.final:
                if spec.outputs is None:
                    return {}
                outputs = ctx.render(spec.outputs, output=output, state=copy.deepcopy(seen))
                return outputs if isinstance(outputs, dict) else {}
            target = await self._choose(ctx, spec, current, output, seen, taken, life)
            taken += 1
            if taken > config.max_transitions:
                raise MachineLimitExceeded(
                    f"the state machine took max_transitions={config.max_transitions} "
                    f"transitions and would take another, from {current!r} to {target!r}"
                )
            previous, current = current, target

    async def _choose(
        self,
        ctx: StepContext,
        spec: MachineState,
        current: str,
        output: Any,
        seen: dict[str, dict[str, Any]],
        taken: int,
        life: str,
    ) -> str:
        """The state the first applying transition goes to (waiting for a signal if need be)."""
        view = copy.deepcopy(seen)
        waits: list[MachineTransition] = []
        for t in spec.transitions:
            holds = t.when is None or bool(ctx.render(t.when, output=output, state=view))
            if not holds:
                continue
            if t.on is None:
                return t.to
            waits.append(t)
        if not waits:
            raise MachineError(
                f"no transition of state {current!r} applies to its output; "
                "add an unconditional transition last"
            )
        key = f"signalled.{taken}"
        slot, recalled = await _recall(ctx, key, life)
        if recalled is None:
            event, data = await _first_signal(ctx, [t.on for t in waits if t.on is not None])
            recalled = {"event": event, "data": data}
            await ctx.checkpoint(f"{key}.{slot}", {"life": life, "value": recalled})
        seen[current]["signal"] = recalled
        return next(t.to for t in waits if t.on == recalled["event"])


async def _recall(ctx: StepContext, key: str, life: str) -> tuple[int, Any]:
    """What a run of the step before a restart recorded under ``key``: ``(slot, value)``, or
    the free slot to record it in and ``None``.

    A checkpoint is kept once, so a look that finds nothing leaves a mark of this ``life`` in
    its slot; the value then goes to the next slot, where a later run finds it after the marks
    of the runs that stopped before recording anything.
    """
    slot = 0
    while True:
        found = await ctx.checkpoint(f"{key}.{slot}", {"life": life})
        if isinstance(found, dict) and "value" in found:
            return slot, found["value"]
        slot += 1
        if isinstance(found, dict) and found.get("life") == life:
            return slot, None


async def _first_signal(ctx: StepContext, events: list[str]) -> tuple[str, Any]:
    """Wait for the first of ``events`` to arrive; the others stay queued for the run."""
    reason = "signal " + " or ".join(repr(e) for e in dict.fromkeys(events))
    unique = list(dict.fromkeys(events))
    if len(unique) == 1:
        return unique[0], await ctx.wait_signal(unique[0], timeout=None, reason=reason)
    won: list[tuple[str, Any]] = []

    async def wait(event: str, scope: anyio.CancelScope) -> None:
        data = await ctx.wait_signal(event, timeout=None, reason=reason)
        if not won:
            won.append((event, data))
            scope.cancel()

    async with anyio.create_task_group() as tg:
        for event in unique:
            tg.start_soon(wait, event, tg.cancel_scope)
    return won[0]


@hookimpl
def register_step_types(register: RegisterStepType) -> None:
    """Register the ``machine`` step type."""
    register(MachineStep)
