"""Runs as state: runs and steps, the events that change them, their recovery from events, and
the :class:`RunStore` protocol every store implements."""

from plait.state.run_store import (
    RUN_FIELDS,
    UNFINISHED,
    RunPage,
    RunStore,
    page_cursor,
    parse_cursor,
    row_of,
    run_from_row,
)
from plait.state.runs import (
    STEP_SETTLED,
    SUMMARY_FIELDS,
    TERMINAL,
    TERMINAL_EVENTS,
    Event,
    Run,
    RunStatus,
    StepState,
    StepStatus,
    is_top_level,
    new_run_id,
)

__all__ = [
    "RUN_FIELDS",
    "STEP_SETTLED",
    "SUMMARY_FIELDS",
    "TERMINAL",
    "TERMINAL_EVENTS",
    "UNFINISHED",
    "Event",
    "Run",
    "RunPage",
    "RunStatus",
    "RunStore",
    "StepState",
    "StepStatus",
    "is_top_level",
    "new_run_id",
    "page_cursor",
    "parse_cursor",
    "row_of",
    "run_from_row",
]
