"""The web view under test: a real ``plait serve`` and Debian's Chromium driven by Playwright.

Nothing is mocked. The host is ``python -m plait.cli serve`` (``tests/e2e/host_process.py``),
one per module, with the workflows below; the browser is ``/usr/bin/chromium`` (``make test``
installs it when missing), launched per test with a fresh profile. Tests wait on conditions
(Playwright's ``expect``), never on sleeps.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..e2e.host_process import HostProcess

CHROMIUM = "/usr/bin/chromium"
WEB_LINK = re.compile(r"web view: (http://\S+)")
TIMEOUT_MS = 10_000
"""Playwright's bound on any one wait in these tests."""


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (`make test` installs Debian's chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


WORKFLOWS: dict[str, str] = {
    # a few delay and transform steps: watched live
    "progress": """\
name: progress
description: Two delays and two transforms.
steps:
  - {id: first, delay: 2.0}
  - {id: double, transform: "${inputs.x * 2}", needs: [first]}
  - {id: second, delay: 1.0, needs: [double]}
  - {id: done, transform: "${steps.double.output + 1}", needs: [second]}
inputs:
  type: object
  properties: {x: {type: integer, default: 3}}
outputs:
  result: "${steps.done.output}"
""",
    # waits for the signal go
    "gate": """\
name: gate
description: Waits for the signal go.
steps:
  - {id: before, transform: "ready"}
  - {id: hold, wait: go, needs: [before]}
  - {id: after, transform: "${steps.hold.output}"}
outputs:
  got: "${steps.after.output}"
""",
    # markup everywhere a workflow or a step can put text
    "markup": """\
name: markup
description: "<img src=x onerror=\\"window.__pwned = 'description'\\"><b>bold?</b>"
steps:
  - id: evil
    description: "<script>window.__pwned = 'step description'</script>"
    transform:
      html: "<img src=x onerror=\\"window.__pwned = 'output'\\">"
      script: "<script>window.__pwned = 'script'</script>"
  - {id: echo, transform: "${steps.evil.output.html}"}
outputs:
  html: "${steps.echo.output}"
""",
    # for the debugger: c depends on b depends on a
    "debugme": """\
name: debugme
description: Three transforms in a row, for breakpoints.
steps:
  - {id: a, transform: {x: 1}}
  - {id: b, transform: "${steps.a.output.x + 1}"}
  - {id: c, transform: "${steps.b.output * 10}"}
outputs:
  c: "${steps.c.output}"
""",
    # fails at `flaky` the first time its key is used, succeeds the next
    "flaky": """\
name: flaky
description: Fails once at flaky, then works.
inputs:
  type: object
  properties: {key: {type: string}}
  required: [key]
steps:
  - {id: prepare, transform: "${inputs.key}"}
  - {id: flaky, tool: chaos.fail, with: {key: "${steps.prepare.output}", times: 1, value: 42}}
  - {id: finish, transform: "${steps.flaky.output + 1}"}
outputs:
  finish: "${steps.finish.output}"
""",
}


def big_workflow(n: int = 1000, width: int = 40, seconds: float = 0.1) -> str:
    """``n`` delay steps in ``n / width`` layers: step ``i`` needs step ``i - width``."""
    lines = ["name: big", f"description: {n} delay steps, {width} at a time.", "steps:"]
    for i in range(n):
        needs = f", needs: [s{i - width}]" if i >= width else ""
        lines.append(f"  - {{id: s{i}, delay: {seconds}{needs}}}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostProcess]:
    """One ``plait serve`` for the module's tests (each starts runs of its own)."""
    tmp = tmp_path_factory.mktemp("web")
    host = HostProcess(tmp, workflows={**WORKFLOWS, "big": big_workflow()})
    host.start()
    try:
        yield host
    finally:
        host.stop()


def base_url(host: HostProcess) -> str:
    return f"http://127.0.0.1:{host.port}"


def printed_link(host: HostProcess) -> str:
    """The one-time link ``plait serve`` printed at start."""
    found = WEB_LINK.search(host.stderr())
    assert found, host.stderr()
    return found.group(1)


async def new_link(host: HostProcess, run_id: str | None = None) -> str:
    """A fresh one-time link from the running host (``host/link``)."""
    params = {"runId": run_id} if run_id else {}
    return str((await host.call("host/link", params))["url"])


async def start_run(
    host: HostProcess, workflow: str, inputs: dict[str, Any] | None = None, **extra: Any
) -> str:
    result = await host.call("runs/start", {"workflow": workflow, "inputs": inputs or {}, **extra})
    return str(result["runId"])


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Debian's Chromium, headless, through Playwright (its own browser download is not used)."""
    problem = chromium_missing()
    if problem:
        pytest.skip(problem)
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield chromium
        finally:
            await chromium.close()


class PageErrors(list[str]):
    """Script errors and CSP violations the page reported (a test asserts there are none)."""


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    tab = await context.new_page()
    errors = PageErrors()
    tab.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    tab.on(
        "console",
        lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    tab.errors = errors
    try:
        yield tab
    finally:
        await context.close()
