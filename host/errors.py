"""Every error plait raises, by the phase it belongs to.

The tree::

    PlaitError
    ├── DefinitionError (ValueError)        a workflow is invalid; raised at load, before any run
    │   └── TemplateSyntaxError             a template does not parse or names what does not exist
    ├── PluginError                         a plugin failed to load, register or answer a hook
    ├── ConfigError (ValueError)            the host configuration is invalid
    ├── InputsInvalid (ValueError)          a run's inputs do not fit the workflow's schema
    ├── WorkflowNotFound (LookupError)      no workflow (or version) of that name is registered
    ├── RunNotFound (LookupError)           no run with that id
    ├── InvalidRunState                     the run's status does not allow the operation
    ├── LimitReached                        a host limit was hit; retry later
    ├── StoreError                          the run store cannot be used
    │   ├── StoreCorrupt                    the database is damaged or not plait's; names the file
    │   ├── StoreUnavailable                it cannot write now (disk full, read-only, log gone)
    │   └── DataDirLocked                   another host is using the data dir
    └── RunError (RuntimeError)             something failed while a run ran
        ├── StepFailed                      a step ended in failure (carries the step id)
        ├── StepTimeout                     one attempt of a step ran past its timeout
        ├── TemplateError                   a template failed while rendering
        │   ├── TemplateSecurityError       it reached for something the sandbox forbids
        │   └── TemplateLimitError          it hit an output, size, loop or time limit
        ├── ToolFailed                      a tool raised, or was called with bad arguments
        │   ├── ToolNotFound
        │   └── ExecutorFailed              an executor lost the call (its worker died, ...)
        ├── AgentFailed                     an agent provider failed or broke its contract
        │   └── AgentNotFound
        ├── CircuitOpen                     a circuit breaker refused the call (retry at retry_at)
        ├── OutputError                     a step produced a value that is not JSON
        ├── StepInterrupted                 a crash stopped a step that is not safe to re-run
        ├── StepQuarantined                 a step was in flight through crash after crash
        └── RunCancelled                    the run was cancelled

The wire errors (JSON-RPC codes) are a separate tree owned by the RPC layer; only its dispatcher
maps these domain errors onto codes.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "AgentFailed",
    "AgentNotFound",
    "CircuitOpen",
    "ConfigError",
    "DataDirLocked",
    "DefinitionError",
    "ExecutorFailed",
    "InputsInvalid",
    "InvalidRunState",
    "Issue",
    "LimitReached",
    "OutputError",
    "PlaitError",
    "PluginError",
    "RunCancelled",
    "RunError",
    "RunNotFound",
    "StepFailed",
    "StepInterrupted",
    "StepQuarantined",
    "StepTimeout",
    "StoreCorrupt",
    "StoreError",
    "StoreUnavailable",
    "TemplateError",
    "TemplateLimitError",
    "TemplateSecurityError",
    "TemplateSyntaxError",
    "ToolFailed",
    "ToolNotFound",
    "WorkflowNotFound",
]


class PlaitError(Exception):
    """Base of every error plait raises on purpose.

    Every one pickles and comes back the same (class, message and attributes), whatever its
    constructor takes: an executor's worker raising one hands it back to the host that way.
    """

    __module__ = "plait"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (type(self), self.args, self.__dict__))


def _restore(cls: type[PlaitError], args: tuple[Any, ...], state: dict[str, Any]) -> PlaitError:
    """A pickled plait error, made again without calling its constructor."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


@dataclass(frozen=True)
class Issue:
    """One problem found in a definition: where it is and what is wrong."""

    path: str
    """Dotted path into the definition, e.g. ``steps[3].with.repo`` (empty for the whole)."""
    message: str
    """What is wrong, in words a person can act on."""
    line: int | None = None
    """1-based line in the source file, when the definition came from text."""

    def to_dict(self) -> dict[str, Any]:
        """The wire form used by ``workflows/validate`` and error data."""
        out: dict[str, Any] = {"path": self.path, "message": self.message}
        if self.line is not None:
            out["line"] = self.line
        return out

    def __str__(self) -> str:
        where = self.path or "<workflow>"
        if self.line is not None:
            where = f"{where} (line {self.line})"
        return f"{where}: {self.message}"


class DefinitionError(PlaitError, ValueError):
    """A workflow definition is invalid. Carries every issue found, not just the first."""

    __module__ = "plait"

    def __init__(self, issues: list[Issue] | str, *, source: str | None = None) -> None:
        if isinstance(issues, str):
            issues = [Issue("", issues)]
        self.issues: list[Issue] = issues
        self.source = source
        head = f"invalid workflow{f' {source}' if source else ''}"
        lines = "\n".join(f"  - {issue}" for issue in issues)
        super().__init__(f"{head}: {len(issues)} problem(s)\n{lines}")


class TemplateSyntaxError(DefinitionError):
    """A template does not parse, or refers to a root or step that does not exist."""

    __module__ = "plait"


class PluginError(PlaitError):
    """A plugin failed: at import, at registration, or inside a hook."""

    __module__ = "plait"

    def __init__(self, plugin: str, message: str) -> None:
        self.plugin = plugin
        super().__init__(f"plugin {plugin!r}: {message}")


class ConfigError(PlaitError, ValueError):
    """The host configuration is invalid."""

    __module__ = "plait"


class InputsInvalid(PlaitError, ValueError):
    """A run's inputs break the workflow's input schema; lists every violation."""

    __module__ = "plait"

    def __init__(self, workflow: str, problems: list[str]) -> None:
        self.workflow = workflow
        self.problems = problems
        super().__init__(f"invalid inputs for workflow {workflow!r}: " + "; ".join(problems))


class WorkflowNotFound(PlaitError, LookupError):
    """No workflow, or no such version of it, is registered."""

    __module__ = "plait"

    def __init__(
        self, name: str, version: int | None = None, known: list[str] | None = None
    ) -> None:
        self.name = name
        self.version = version
        what = f"workflow {name!r}" + (f" version {version}" if version is not None else "")
        hint = f"; registered: {', '.join(sorted(known))}" if known else ""
        super().__init__(f"{what} is not registered{hint}")


class RunNotFound(PlaitError, LookupError):
    """No run with that id."""

    __module__ = "plait"

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} not found")


class AmbiguousRunId(RunNotFound):
    """A run-id prefix that starts the ids of more than one run: no one run has that id."""

    __module__ = "plait"

    def __init__(self, prefix: str, matches: list[str], *, more: bool = False) -> None:
        self.matches = matches
        """The first ids it matches, in order."""
        super().__init__(prefix)
        listed = ", ".join(matches) + (", …" if more else "")
        self.args = (
            f"run id {prefix!r} is ambiguous: {'more than ' if more else ''}{len(matches)} "
            f"runs have ids starting with it ({listed}); give more of the id's characters",
        )


class DebugError(PlaitError):
    """A debugger request that cannot be done as asked: an unknown step, a condition that
    does not parse, an output that can no longer be replaced... The run is left as it was."""

    __module__ = "plait"


class DeadLetterError(PlaitError):
    """A dead-letter request that cannot be done: no entry for that run, an entry already
    replayed or discarded, a run that can no longer be re-run (the reason is given)."""

    __module__ = "plait"


class InvalidRunState(PlaitError):
    """The run's status does not allow the operation (e.g. pausing a finished run)."""

    __module__ = "plait"

    def __init__(self, run_id: str, status: str, action: str) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(f"cannot {action} run {run_id}: it is {status}")


class LimitReached(PlaitError):
    """A host limit was hit; the request may succeed later."""

    __module__ = "plait"


class StoreError(PlaitError):
    """The run store cannot be opened, read or written."""

    __module__ = "plait"

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"run store {path}: {message}")


class StoreUnavailable(StoreError):
    """The store cannot write now: the disk is full or read-only, or its write-ahead log was
    deleted. New work is refused until it can write again; reads of what is kept go on."""

    __module__ = "plait"

    def __init__(self, path: str, reason: str) -> None:
        self.reason = reason
        super().__init__(path, f"store unavailable: {reason}")


class StoreCorrupt(StoreError):
    """The database file is damaged, or is not a plait store; it is left untouched."""

    __module__ = "plait"


class DataDirLocked(StoreError):
    """Another host process is using the data dir (two hosts would resume the same runs)."""

    __module__ = "plait"


class RunError(PlaitError, RuntimeError):
    """Something failed while a run ran.

    ``kind`` is a short stable name used in step errors and by ``retry_on``.
    """

    __module__ = "plait"
    kind = "error"
    retryable = True
    """Whether a retry policy may try the step again after this error."""
    correlation_id: str | None = None
    """Set when plugin code raised something unexpected and its traceback went to the host's
    log under this id: the client sees it as ``correlationId`` and finds the traceback by it."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored as a step's or run's ``error``."""
        if self.correlation_id is not None:
            return {"type": self.kind, "message": str(self), "correlationId": self.correlation_id}
        return {"type": self.kind, "message": str(self)}


class StepFailed(RunError):
    """A step failed; ``cause`` keeps the error of its last attempt."""

    __module__ = "plait"
    kind = "step_failed"

    def __init__(self, step_id: str, message: str, *, error: dict[str, Any] | None = None) -> None:
        self.step_id = step_id
        self.error = error or {"type": self.kind, "message": message}
        super().__init__(f"step {step_id!r} failed: {message}")


class StepTimeout(RunError):
    """One attempt of a step ran longer than its ``timeout``."""

    __module__ = "plait"
    kind = "timeout"


class TemplateError(RunError):
    """A template failed while rendering; names the step, the field and the expression."""

    __module__ = "plait"
    kind = "template"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        expression: str | None = None,
        field: str | None = None,
        step: str | None = None,
    ) -> None:
        self.message = message
        self.expression = expression
        self.field = field
        self.step = step
        super().__init__(self._compose())

    def _compose(self) -> str:
        parts = []
        if self.step:
            parts.append(f"step {self.step!r}")
        if self.field:
            parts.append(f"field {self.field!r}")
        if self.expression is not None:
            expr = self.expression if len(self.expression) <= 200 else self.expression[:200] + "…"
            parts.append(f"expression {expr!r}")
        where = ", ".join(parts)
        return f"{self.message} ({where})" if where else self.message

    def located(self, *, step: str | None = None, field: str | None = None) -> TemplateError:
        """Fill in where the failure happened, keeping what is already known."""
        self.step = self.step or step
        self.field = self.field or field
        self.args = (self._compose(),)
        return self


class TemplateSecurityError(TemplateError):
    """A template reached for an attribute, method or object the sandbox forbids."""

    __module__ = "plait"
    kind = "template_security"


class TemplateLimitError(TemplateError):
    """A template exceeded an output, operand, loop or time limit."""

    __module__ = "plait"
    kind = "template_limit"


class ToolFailed(RunError):
    """A tool raised, or was called with arguments that do not fit its schema."""

    __module__ = "plait"
    kind = "tool"

    def __init__(self, tool: str, message: str, *, retryable: bool = True) -> None:
        self.tool = tool
        self.retryable = retryable
        super().__init__(f"tool {tool!r}: {message}")


class ToolNotFound(ToolFailed):
    """No tool is registered under that name."""

    __module__ = "plait"
    kind = "tool_not_found"

    def __init__(self, tool: str, known: list[str] | None = None) -> None:
        hint = f"; known tools: {', '.join(sorted(known))}" if known else ""
        super().__init__(tool, f"no such tool{hint}", retryable=False)


class ExecutorFailed(ToolFailed):
    """An executor lost a tool call it was running elsewhere: the worker running it died, the
    cluster's scheduler went away, or the call could not be submitted. The call itself did not
    fail, so it is retryable (``retry_on: [executor]`` names it alone); the cause is chained."""

    __module__ = "plait"
    kind = "executor"

    def __init__(self, tool: str, executor: str, message: str) -> None:
        self.executor = executor
        super().__init__(tool, f"executor {executor!r}: {message}", retryable=True)


class AgentFailed(RunError):
    """An agent provider failed, or its reply broke the agent step's contract."""

    __module__ = "plait"
    kind = "agent"

    def __init__(self, agent: str, message: str, *, retryable: bool = True) -> None:
        self.agent = agent
        self.retryable = retryable
        super().__init__(f"agent {agent!r}: {message}")


class AgentNotFound(AgentFailed):
    """No agent of that name is configured."""

    __module__ = "plait"
    kind = "agent_not_found"

    def __init__(self, agent: str, known: list[str] | None = None) -> None:
        hint = f"; configured agents: {', '.join(sorted(known))}" if known else ""
        super().__init__(agent, f"no such agent{hint}", retryable=False)


class CircuitOpen(RunError):
    """A circuit breaker (``tool:<name>``, ``agent:<name>``, ``mcp:<server>``) is open, or
    half-open with its probe calls taken: the call was refused at once, without running.

    Retryable: a retry policy waits until ``retry_at`` (epoch seconds) before the next attempt.
    """

    __module__ = "plait"
    kind = "circuit_open"

    def __init__(self, breaker: str, retry_at: float, *, failures: int | None = None) -> None:
        self.breaker = breaker
        self.retry_at = retry_at
        """When the breaker lets a call through again, in epoch seconds."""
        self.failures = failures
        when = datetime.fromtimestamp(retry_at, UTC).isoformat(timespec="milliseconds")
        after = f" after {failures} failure{'s' if failures != 1 else ''}" if failures else ""
        super().__init__(
            f"circuit breaker {breaker!r} is open{after}: calls fail at once until it lets "
            f"one through again at {when.replace('+00:00', 'Z')}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "breaker": self.breaker, "retry_at": self.retry_at}


class OutputError(RunError):
    """A step, tool or plugin produced a value that cannot be stored as JSON."""

    __module__ = "plait"
    kind = "output"
    retryable = False


class StepInterrupted(RunError):
    """The host stopped while this step ran, and its step type is not safe to run again."""

    __module__ = "plait"
    kind = "interrupted"
    retryable = False


class StepQuarantined(RunError):
    """A step attempt was in flight each time the host crashed, several times in a row, so it
    is not run again: it may be what brings the host down (``[limits] max_crash_restarts``)."""

    __module__ = "plait"
    kind = "quarantined"
    retryable = False


class RunCancelled(RunError):
    """The run was cancelled before it finished."""

    __module__ = "plait"
    kind = "cancelled"
    retryable = False


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` with the known name closest to ``name``, or ``""``: the hint
    every "unknown ..." message of plait ends with."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
