"""``GET /metrics`` on a real host: scraped over HTTP after a known workload, parsed with
``prometheus_client``'s own parser, and every figure checked against what the workload did.

The host is a real ``plait.Host`` serving its WebSocket on 127.0.0.1 (durable store, disk
cache); the workload goes through a real WebSocket client; the scrape is a real HTTP GET.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import plait
from plait.config import HostConfig

from .conftest import Served, websocket_of

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

ADD = {
    "name": "adder",
    "inputs": {"type": "object", "properties": {"a": {"type": "integer"}}},
    "steps": [
        {"id": "sum", "tool": "probe.add", "with": {"a": "${inputs.a}", "b": 1}, "cache": True},
        {"id": "twice", "transform": "${steps.sum.output * 2}"},
    ],
    "outputs": {"v": "${steps.twice.output}"},
}
FLAKY = {
    "name": "flaky",
    "inputs": {"type": "object", "properties": {"key": {"type": "string"}}},
    "steps": [
        {
            "id": "call",
            "tool": "probe.fail",
            "with": {"key": "${inputs.key}", "times": 5},
            "retry": {"attempts": 2, "backoff": "fixed", "base": 0.01},
        }
    ],
}


def config(tmp_path: Any, **metrics: Any) -> HostConfig:
    return HostConfig.model_validate(
        {
            "host": {"data_dir": str(tmp_path / "data"), "port": 0},
            "plugins": {"entry_points": False},
            "metrics": metrics,
        }
    )


async def scrape(
    served: Served, *, token: str | None = "given", host: str | None = None
) -> httpx.Response:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {served.token if token == 'given' else token}"
    if host is not None:
        headers["Host"] = host
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(f"http://127.0.0.1:{served.port}/metrics", headers=headers)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition, by name and labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_count_a_known_workload(tmp_path, pm):
    async with plait.Host(config(tmp_path), pm=pm) as host:
        host.register(ADD)
        host.register(FLAKY)
        async with websocket_of(host) as served, served.client() as client:
            for a in (1, 2, 1):  # the third is answered from the cache
                run = await client.call("runs/start", {"workflow": "adder", "inputs": {"a": a}})
                done = await client.call("runs/wait", {"runId": run["runId"], "timeout": 10})
                assert done["run"]["status"] == "succeeded"
            run = await client.call("runs/start", {"workflow": "flaky", "inputs": {"key": "k"}})
            done = await client.call("runs/wait", {"runId": run["runId"], "timeout": 10})
            assert done["run"]["status"] == "failed"
            await client.error("no/such/method", {})
            response = await scrape(served)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    found = samples(response.text)

    assert value(found, "plait_runs_started_total", workflow="adder") == 3
    assert value(found, "plait_runs_finished_total", workflow="adder", status="succeeded") == 3
    assert value(found, "plait_runs_finished_total", workflow="flaky", status="failed") == 1
    assert (
        value(found, "plait_run_duration_seconds_count", workflow="adder", status="succeeded") == 3
    )
    step = {"workflow": "adder", "step_type": "tool", "status": "succeeded"}
    assert value(found, "plait_step_duration_seconds_count", **step) == 3
    transform = {"workflow": "adder", "step_type": "transform", "status": "succeeded"}
    assert value(found, "plait_step_duration_seconds_count", **transform) == 3
    assert value(found, "plait_step_queue_seconds_count", workflow="adder", step_type="tool") == 3
    # attempts: 2 → one retry, then the run fails for good
    assert value(found, "plait_step_retries_total", workflow="flaky", step_type="tool") == 1
    assert value(found, "plait_tool_cache_lookups_total", tool="probe.add", result="hit") == 1
    assert value(found, "plait_tool_cache_lookups_total", tool="probe.add", result="miss") == 2
    assert (
        value(found, "plait_tool_call_duration_seconds_count", tool="probe.add", outcome="ok") == 2
    )
    assert (
        value(found, "plait_tool_call_duration_seconds_count", tool="probe.fail", outcome="error")
        == 2
    )
    assert value(found, "plait_rpc_requests_total", method="runs/start", code="0") == 4
    assert value(found, "plait_rpc_requests_total", method="other", code="-32601") == 1
    assert value(found, "plait_connections_opened_total", transport="websocket") == 1
    assert value(found, "plait_connections_open", transport="websocket") == 1
    assert value(found, "plait_store_commit_duration_seconds_count") > 0
    assert value(found, "plait_store_committed_changes_total") > 0
    assert ("plait_store_pending_changes", frozenset()) in found
    assert not any(name == "plait_runs_live" for name, _ in found)  # none in flight
    # no run id is ever a label
    assert not any(dict(labels).get("run_id") for _, labels in found)


async def test_events_sent_to_subscribers_are_counted(tmp_path, pm):
    async with plait.Host(config(tmp_path), pm=pm) as host:
        host.register(ADD)
        async with websocket_of(host) as served, served.client() as client:
            await client.call("runs/subscribe", {})
            run = await client.call("runs/start", {"workflow": "adder", "inputs": {"a": 5}})
            await client.call("runs/wait", {"runId": run["runId"], "timeout": 10})
            seen = len((await client.call("runs/events", {"runId": run["runId"]}))["events"])
            found = samples((await scrape(served)).text)
    assert seen > 0
    assert value(found, "plait_subscriber_events_delivered_total") >= seen


async def test_metrics_need_the_token_and_a_known_host_header(tmp_path, pm):
    async with plait.Host(config(tmp_path), pm=pm) as host, websocket_of(host) as served:
        assert (await scrape(served, token=None)).status_code == 401
        assert "token" in (await scrape(served, token=None)).text
        assert (await scrape(served, token="wrong")).status_code == 401
        assert (await scrape(served, host="evil.example:80")).status_code == 403
        assert (await scrape(served)).status_code == 200
        # the refusals are counted too, by status
        found = samples((await scrape(served)).text)
    assert value(found, "plait_connections_refused_total", status="401") == 3
    assert value(found, "plait_connections_refused_total", status="403") == 1


async def test_public_metrics_on_loopback_need_no_token(tmp_path, pm):
    async with plait.Host(config(tmp_path, public=True), pm=pm) as host, websocket_of(host) as s:
        assert (await scrape(s, token=None)).status_code == 200
        # the rest of the host still wants the token
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.get(f"http://127.0.0.1:{s.port}/rpc")
        assert response.status_code in (401, 426)


async def test_metrics_off_means_no_endpoint(tmp_path, pm):
    async with plait.Host(config(tmp_path, enabled=False), pm=pm) as host:
        assert host.metrics is None
        async with websocket_of(host) as served:
            response = await scrape(served)
    assert response.status_code == 404


async def test_health_says_one_content_type(tmp_path, pm):
    """/health answers JSON with a single Content-Type (not text/plain beside it)."""
    async with plait.Host(config(tmp_path), pm=pm) as host, websocket_of(host) as served:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.get(f"http://127.0.0.1:{served.port}/health")
    assert response.status_code == 200
    assert response.headers.get_list("content-type") == ["application/json"]
    assert response.json()["status"] == "ok"
