"""The store keeps serving when the disk does not (issue 12, item 3), through a real
``plait serve`` whose data dir is on a small tmpfs mounted for the test (root only)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .host_process import PLAIT, HostProcess

pytestmark = pytest.mark.anyio

WORKFLOWS = {
    "echo": """\
name: echo
inputs: {type: object, properties: {text: {type: string}}}
steps:
  - {id: say, transform: "${inputs.text}"}
outputs:
  said: "${steps.say.output}"
""",
}


def _mount(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
    )
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    if os.geteuid() != 0 or not _mount(mount, "size=4m"):
        pytest.skip("mounting a tmpfs needs root and a kernel that allows it")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    # Unbuffered: a buffered file keeps what the last write could not place and fails again
    # when closed, so whether the fill "worked" would depend on the free space's size.
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


async def test_a_full_disk_refuses_new_work_at_once_and_serves_reads(tmp_path, small_disk):
    host = HostProcess(tmp_path, workflows=WORKFLOWS, data_dir=small_disk / "data")
    host.start()
    try:
        old = await host.call("runs/start", {"workflow": "echo", "inputs": {"text": "kept"}})
        assert (await host.wait_run(old["runId"]))["status"] == "succeeded"
        filler = _fill(small_disk)

        began = time.monotonic()
        refused = await host.request(
            "runs/start", {"workflow": "echo", "inputs": {"text": "x" * 200_000}}
        )
        assert refused["error"]["code"] == -32006, refused
        message = refused["error"]["message"]
        assert "store unavailable" in message and "full" in message, message
        assert "rollback" not in message  # the real reason, not a secondary one
        again = await host.request(
            "workflows/put", {"source": "name: other\nsteps: [{id: a, transform: 1}]"}
        )
        assert again["error"]["code"] == -32006 and "store unavailable" in again["error"]["message"]
        assert time.monotonic() - began < 10  # refused, not held until the disk recovers

        kept = await host.call("runs/get", {"runId": old["runId"]})
        assert kept["run"]["outputs"] == {"said": "kept"}
        status, health = await host.health()
        assert status == 503 and "full" in health["store"], health
        info = await host.call("host/info")
        assert "full" in info["store"]["unavailable"]
        assert "rollback" not in (info["store"]["lastError"] or "")

        filler.unlink()  # room again: everything resumes
        deadline = time.monotonic() + 30
        while (await host.health())[0] != 200:
            assert time.monotonic() < deadline, "the store did not recover"
            time.sleep(0.2)
        new = await host.call("runs/start", {"workflow": "echo", "inputs": {"text": "after"}})
        assert (await host.wait_run(new["runId"]))["outputs"] == {"said": "after"}
    finally:
        host.stop()
    host.start()  # nothing acknowledged was lost
    try:
        kept = await host.call("runs/get", {"runId": old["runId"]})
        assert kept["run"]["outputs"] == {"said": "kept"}
    finally:
        host.stop()


async def test_a_deleted_write_ahead_log_is_noticed_and_writing_stops(tmp_path, small_disk):
    host = HostProcess(tmp_path, workflows=WORKFLOWS, data_dir=small_disk / "data")
    host.start()
    try:
        first = await host.call("runs/start", {"workflow": "echo", "inputs": {"text": "one"}})
        await host.wait_run(first["runId"])
        (host.data_dir / "plait.db-wal").unlink()
        reply = await host.request("runs/start", {"workflow": "echo", "inputs": {"text": "two"}})
        assert reply["error"]["code"] == -32006, reply
        assert "write-ahead log" in reply["error"]["message"]
        assert "write-ahead log plait.db-wal was deleted" in host.stderr()
        assert (await host.health())[0] == 503
    finally:
        host.stop()


def test_a_read_only_data_dir_at_start_is_one_clear_error(tmp_path, small_disk):
    data = small_disk / "data"
    data.mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    done = subprocess.run(
        [*PLAIT, "serve", "--port", "0", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "read-only" in lines[0], done.stderr
