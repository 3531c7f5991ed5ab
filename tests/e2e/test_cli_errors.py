"""Every way the ``plait`` command fails is ONE line on stderr, a non-zero exit, no traceback.

The real command (``python -m plait.cli``) is run into each situation: a wrong token against a
real ``plait serve``, no host listening, a ``host.json`` naming a host that is gone, a port
already taken (a socket of the test's), a read-only data dir (a tmpfs remounted read-only: root
only, skipped otherwise), a request that gets no answer in time, bad params, an unknown method.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .host_process import PLAIT, HostProcess

pytestmark = pytest.mark.anyio

WORKFLOWS = {
    "waits": "name: waits\nsteps:\n  - {id: w, wait: go}\n",
    "quick": "name: quick\nsteps:\n  - {id: a, tool: time.sleep, with: {seconds: 0.01}}\n",
}


def plait(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PLAIT_TOKEN"}
    return subprocess.run(
        [*PLAIT, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        env=env,
    )


def one_error_line(done: subprocess.CompletedProcess, *needles: str) -> str:
    """The exit is non-zero, stderr is one line without a traceback, naming every needle."""
    assert done.returncode != 0, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle.lower() in line.lower(), (needle, line)
    return line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostProcess]:
    process = HostProcess(tmp_path_factory.mktemp("host"), workflows=WORKFLOWS)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def target(host: HostProcess) -> list[str]:
    return ["--config", str(host.tmp / "plait.toml"), "--data-dir", str(host.data_dir)]


# -- a wrong or stale token ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["call", "host/info"],
        ["runs", "list"],
        ["runs", "show", "r-nope"],
        ["runs", "cancel", "r-nope"],
        ["mcp"],
    ],
    ids=lambda c: " ".join(c),
)
def test_a_wrong_token_is_one_line_naming_the_refusal(host: HostProcess, command: list[str]):
    with_url = plait(*command, "--url", host.url, "--token", "stale", *target(host))
    one_error_line(with_url, host.url, "refused the token", "HTTP 401", "--token")
    # without --url: the host found through host.json and its lock, the token still wrong
    found = plait(*command, "--token", "stale", *target(host))
    line = one_error_line(found, "refused the token", "HTTP 401")
    assert f"{host.data_dir}/token" in line, line


def test_debug_shows_the_traceback(host: HostProcess):
    done = plait("--debug", "call", "host/info", "--url", host.url, "--token", "stale")
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "InvalidStatus" in done.stderr, done.stderr
    assert "error: the host at" in done.stderr.splitlines()[-1]


# -- requests the host answers, or does not --------------------------------------------------------


async def test_a_request_without_an_answer_in_time_says_raise_timeout(host: HostProcess):
    run_id = (await host.call("runs/start", {"workflow": "waits"}))["runId"]
    params = json.dumps({"runId": run_id, "timeout": 30})
    done = plait("call", "runs/wait", params, "--timeout", "1", *target(host))
    one_error_line(done, "no answer", host.url, "within 1 s", "raise --timeout")
    await host.call("runs/cancel", {"runId": run_id})


def test_an_unknown_method_is_the_hosts_message_on_one_line(host: HostProcess):
    done = plait("call", "no/such", *target(host))
    one_error_line(done, "Method not found", "no/such", "-32601")


def test_invalid_params_are_the_hosts_message_on_one_line(host: HostProcess):
    done = plait("call", "runs/get", "{}", *target(host))
    one_error_line(done, "runId", "-32602")


@pytest.mark.parametrize("params", ["{not json", "[1, 2]", '"text"'])
def test_bad_json_params_are_one_line(host: HostProcess, params: str):
    done = plait("call", "runs/list", params, *target(host))
    assert done.returncode == 2
    one_error_line(done, "params")


def test_a_runs_command_on_an_unknown_run_is_one_line(host: HostProcess):
    done = plait("runs", "show", "r-nope", *target(host))
    one_error_line(done, "r-nope")


# -- no host ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [["call", "host/info"], ["runs", "list"], ["mcp"]], ids=lambda c: " ".join(c)
)
def test_no_host_listening_is_one_line(tmp_path: Path, command: list[str]):
    url = f"ws://127.0.0.1:{free_port()}/rpc"
    done = plait(*command, "--url", url, "--token", "t", "--data-dir", str(tmp_path / "d"))
    one_error_line(done, f"no host is listening at {url}", "connection refused", "plait serve")


def test_a_host_json_naming_a_dead_host_is_one_line(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    url = f"ws://127.0.0.1:{free_port()}/rpc"
    (data / "host.json").write_text(json.dumps({"url": url}), encoding="utf-8")
    (data / "token").write_text("old\n", encoding="utf-8")
    for command in (["call", "host/info"], ["mcp"]):
        done = plait(*command, "--data-dir", str(data))
        one_error_line(done, url, "connection refused", "host.json", "plait serve")


@pytest.mark.parametrize(
    "url, needle",
    [("http://127.0.0.1:1/rpc", "not a WebSocket URL"), ("ws://no-such.invalid:1/rpc", "resolve")],
)
def test_a_bad_url_is_one_line(url: str, needle: str):
    one_error_line(plait("call", "host/info", "--url", url, "--token", "t"), needle, "--url")


# -- serve: a port in use ----------------------------------------------------------------------


def test_a_port_in_use_is_one_line_and_leaves_no_token(tmp_path: Path):
    data = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "plait.toml").write_text("[plugins]\nentry_points = false\n")
        done = plait(
            "serve", "--port", str(port), "--data-dir", str(data),
            "--config", str(tmp_path / "plait.toml"),
        )  # fmt: skip
    one_error_line(done, f"127.0.0.1:{port}", "already in use", "--port")
    assert not (data / "token").exists()
    assert not (data / "host.json").exists()


# -- a read-only data dir ------------------------------------------------------------------------


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = os.geteuid() == 0 and (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
        ).returncode
        == 0
    )
    if not mounted:
        pytest.skip("mounting a tmpfs needs root and a kernel that allows it")
    try:
        (disk / "data").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.parametrize("existing", [True, False], ids=["existing", "to-make"])
def test_a_read_only_data_dir_is_one_line_for_every_command_that_opens_one(
    tmp_path: Path, read_only_dir: Path, existing: bool
):
    data = read_only_dir / ("data" if existing else "new")
    (tmp_path / "wf.yaml").write_text(WORKFLOWS["quick"], encoding="utf-8")
    config = tmp_path / "plait.toml"
    config.write_text(f'[plugins]\nentry_points = false\n[host]\ndata_dir = "{data}"\n')
    for command in (
        ["serve", "--port", "0"],
        ["serve", "--stdio"],
        ["runs", "list"],
        ["runs", "show", "r-nope"],
        ["run", str(tmp_path / "wf.yaml")],
    ):
        done = plait(*command, "--config", str(config), cwd=tmp_path)
        if command[0] == "runs" and not existing:  # reading never makes a data dir
            one_error_line(done, str(data), "no plait data dir")
        else:
            one_error_line(done, str(data), "read-only")


def test_runs_on_a_data_dir_held_by_a_stdio_host_is_one_line(tmp_path: Path):
    data = tmp_path / "data"
    (tmp_path / "plait.toml").write_text("[plugins]\nentry_points = false\n")
    stdio = subprocess.Popen(
        [
            *PLAIT,
            "serve",
            "--stdio",
            "--data-dir",
            str(data),
            "--config",
            str(tmp_path / "plait.toml"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert stdio.stdin is not None and stdio.stdout is not None
        stdio.stdin.write(b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}\n')
        stdio.stdin.flush()
        stdio.stdout.readline()  # answered: the data dir is locked by now
        done = plait("runs", "list", "--data-dir", str(data), "--token", "t")
        one_error_line(done, str(data), "--stdio", "--url")
    finally:
        stdio.kill()
        stdio.wait(timeout=10)
        for pipe in (stdio.stdin, stdio.stdout):
            if pipe is not None:
                pipe.close()
