"""The parts of the host's log that a real ``plait serve`` (tests/e2e/test_host_log.py) does not
reach cheaply: an agent provider that raises, the formatters on their own, and the error dicts
with and without a correlation id."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

import pytest

from plait.errors import AgentFailed, RunError, ToolFailed
from plait.host.logs import JsonFormatter, TextFormatter, configure_logging
from plait.plugins import AgentRequest, Message
from plait.plugins.registry import Registry
from plait.services.agents import AgentPool

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


class Broken:
    """An agent provider whose agents raise what no provider should."""

    name = "broken"

    def create(self, name: str, config: Mapping[str, Any]) -> Any:
        class Agent:
            max_concurrency = None

            async def complete(self, request: AgentRequest) -> Any:
                raise KeyError("choices")

        agent = Agent()
        agent.name = name  # type: ignore[attr-defined]
        return agent


async def test_an_agent_provider_that_raises_logs_its_traceback_under_the_errors_id(caplog):
    providers: Registry[Any] = Registry("agent provider")
    providers.add("broken", Broken(), plugin="brokenplugin")
    pool = AgentPool(providers, {"writer": {"provider": "broken"}})
    request = AgentRequest(messages=[Message(role="user", content="hi")], run_id="r1", step_id="s")
    caplog.set_level(logging.ERROR, logger="plait.failures")
    with pytest.raises(AgentFailed) as info:
        await pool.get("writer").complete(request)
    error = info.value.to_dict()
    assert error["type"] == "agent" and "KeyError" in error["message"]
    (record,) = [r for r in caplog.records if r.name == "plait.failures"]
    assert record.correlation_id == error["correlationId"]  # type: ignore[attr-defined]
    assert (record.run_id, record.step, record.plugin) == ("r1", "s", "broken")  # type: ignore[attr-defined]
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    assert f"[correlation {error['correlationId']}]" in record.getMessage()


def test_an_expected_failure_has_no_correlation_id():
    assert ToolFailed("t", "bad arguments").to_dict() == {
        "type": "tool",
        "message": "tool 't': bad arguments",
    }
    error = RunError("x")
    error.correlation_id = "abc"
    assert error.to_dict() == {"type": "error", "message": "x", "correlationId": "abc"}


def _record(**extra: Any) -> logging.LogRecord:
    try:
        raise ValueError("inner")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("plait.x", logging.ERROR, __file__, 1, "boom %s", ("now",), exc_info)
    record.__dict__.update(extra)
    return record


def test_the_json_format_is_one_object_per_line_with_the_fields_and_the_traceback():
    record = _record(run_id="r1", peer="127.0.0.1:5", message_extra={"a": 1}, odd=object())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "ERROR" and out["logger"] == "plait.x" and out["message"] == "boom now"
    assert out["ts"].endswith("Z") and out["run_id"] == "r1" and out["peer"] == "127.0.0.1:5"
    assert out["message_extra"] == {"a": 1} and out["odd"].startswith("<object")
    assert out["traceback"].startswith("Traceback") and "ValueError: inner" in out["traceback"]
    assert "args" not in out and "exc_info" not in out and "levelno" not in out


def test_the_text_format_is_a_line_then_the_traceback():
    text = TextFormatter().format(_record(run_id="r1"))
    first, *rest = text.splitlines()
    assert first.endswith(" ERROR plait.x: boom now") and first[:4].isdigit()
    assert rest[0].startswith("Traceback") and rest[-1] == "ValueError: inner"


def test_configure_logging_sets_plaits_level_and_keeps_other_libraries_at_warning():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("plait").level)
    stream = io.StringIO()
    try:
        configure_logging("info", "json", stream)
        logging.getLogger("plait.runs").info("run lines on")
        logging.getLogger("httpx").info("a request")  # another library: left out
        logging.getLogger("plait.ws.protocol").info("connection open")  # websockets' trace
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [line["message"] for line in lines] == ["run lines on"]
        configure_logging("warning", "text", stream)
        assert not logging.getLogger("plait.runs").isEnabledFor(logging.INFO)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.getLogger("plait").setLevel(saved[2])
        logging.getLogger("plait.ws.protocol").setLevel(logging.NOTSET)
