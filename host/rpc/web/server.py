"""The web view's HTTP side: one-time links, session cookies, and the page and its assets.

The WebSocket transport hands every plain HTTP ``GET`` that is not ``/rpc`` or ``/health`` to
:meth:`WebAccess.respond` (from its ``process_request`` hook, after its ``Host`` check):

- ``/?token=<code>`` trades a one-time code for a session: the code works once and for
  :data:`LINK_SECONDS`; the answer is a ``303`` to ``/`` (or to the run the link was made
  for) that sets an ``HttpOnly; SameSite=Strict; Path=/`` cookie carrying a fresh random
  session secret, so the code leaves the address bar and the browser history holds nothing
  that still opens the page. A wrong, used or expired code gets ``403``.
- ``/`` with a valid session cookie is the page; without one, a short page saying how to get
  a link (``401``), never the app. ``/static/<file>`` needs the cookie too.
- The page's WebSocket presents the cookie on its handshake; the transport accepts it
  (:meth:`WebAccess.session_ok`) only from the page's own origin.

Every answer carries a strict Content-Security-Policy (no inline script or style), and
``nosniff``, ``no-referrer`` and ``no-store``. Codes and secrets are 256-bit random values kept
only as SHA-256 digests, looked up by digest and compared in constant time; they live as long
as the host process (a restart makes every link and cookie worthless).
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "COOKIE_PREFIX",
    "LINK_SECONDS",
    "MAX_LINKS",
    "MAX_SESSIONS",
    "STATIC_DIR",
    "WebAccess",
]

LINK_SECONDS = 600.0
"""How long a one-time link works (it works once)."""
MAX_LINKS = 100
"""Unused links kept at once; minting more forgets the oldest."""
MAX_SESSIONS = 100
"""Browser sessions kept at once; a new one past this forgets the oldest."""
COOKIE_PREFIX = "plait_session_"
"""The session cookie's name, followed by the port: cookies do not tell ports apart, and two
hosts on one machine must not overwrite each other's."""
STATIC_DIR = Path(__file__).resolve().parent / "static"
"""The page and its assets (resolved: an editable install links this module from the tree)."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
PAGE_PATHS = frozenset({"/", "/index.html"})
STATIC_PREFIX = "/static/"

_NEED_LINK = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>plait</title>
<link rel="icon" href="data:,"></head>
<body><h1>plait</h1>
<p>This page needs a link with a one-time code. Open the link <code>plait serve</code>
printed when it started (<code>web view: http://...</code>), or ask the running host for a
new one:</p>
<pre>plait debug RUN      # a link to that run's page
plait call host/link  # a link to the list of runs</pre>
<p>A link works once, for ten minutes; the page then keeps a session cookie for as long as the
host runs.</p></body></html>
"""

_LINK_REFUSED = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>plait: link not valid</title>
<link rel="icon" href="data:,"></head>
<body><h1>This link is no longer valid</h1>
<p>A link works once, for ten minutes, and only on the host that printed it. Ask the running
host for a new one: <code>plait debug RUN</code>, or <code>plait call host/link</code>.</p>
</body></html>
"""


@dataclass(frozen=True, slots=True)
class _Link:
    expires: float
    target: str


@cache
def _assets() -> dict[str, tuple[bytes, str]]:
    """Every file under :data:`STATIC_DIR` by its relative path, with its content type.

    Read once; a request names one of these keys exactly or gets 404, so no path from a
    request ever reaches the file system.
    """
    found: dict[str, tuple[bytes, str]] = {}
    for path in sorted(STATIC_DIR.rglob("*")):
        kind = CONTENT_TYPES.get(path.suffix)
        if path.is_file() and kind is not None:
            found[path.relative_to(STATIC_DIR).as_posix()] = (path.read_bytes(), kind)
    return found


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


class WebAccess:
    """One-time links and browser sessions for the web view of one host.

    Args:
        link_seconds: how long a minted link works.
        clock: the monotonic clock links expire by (a test may move it).
    """

    def __init__(
        self,
        *,
        link_seconds: float = LINK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link_seconds = link_seconds
        self.clock = clock
        self.base_url = ""
        """``http://127.0.0.1:PORT`` once the transport listens; empty before."""
        self.port = 0
        self._links: OrderedDict[bytes, _Link] = OrderedDict()
        self._sessions: OrderedDict[bytes, float] = OrderedDict()

    # -- links and sessions --------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        """Whether a transport serves the page (links can be made)."""
        return bool(self.base_url)

    def listening(self, base_url: str, port: int) -> None:
        """The transport listens at ``base_url`` (``http://host:port``)."""
        self.base_url = base_url.rstrip("/")
        self.port = port

    @property
    def cookie_name(self) -> str:
        return f"{COOKIE_PREFIX}{self.port}"

    def link(self, run_id: str | None = None) -> str:
        """A new one-time link to the page (to run ``run_id``'s page when given)."""
        if not self.serving:
            raise RuntimeError("the web view is not served: no WebSocket transport listens")
        code = secrets.token_urlsafe(32)
        fragment = f"#/runs/{run_id}" if run_id else ""
        now = self.clock()
        for key in [k for k, v in self._links.items() if v.expires <= now]:
            del self._links[key]
        while len(self._links) >= MAX_LINKS:
            self._links.popitem(last=False)
        self._links[_digest(code)] = _Link(now + self.link_seconds, "/" + fragment)
        return f"{self.base_url}/?token={code}{fragment}"

    def redeem(self, code: str) -> str | None:
        """Use up a link's code: where to send the browser, or ``None`` (wrong, used, expired)."""
        if not code:
            return None
        digest = _digest(code)
        link = self._links.pop(digest, None)  # used once, whatever follows
        if link is None or link.expires <= self.clock():
            return None
        return link.target

    def open_session(self) -> str:
        """A new session secret (the cookie's value)."""
        secret = secrets.token_urlsafe(32)
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.popitem(last=False)
        self._sessions[_digest(secret)] = self.clock()
        return secret

    def session_ok(self, headers: Headers) -> bool:
        """Whether the request carries this host's session cookie with a live secret."""
        given = self._cookie(headers)
        if not given:
            return False
        digest = _digest(given)
        kept = next((k for k in self._sessions if hmac.compare_digest(k, digest)), None)
        return kept is not None

    def _cookie(self, headers: Headers) -> str:
        name = self.cookie_name
        for header in headers.get_all("Cookie"):
            for part in header.split(";"):
                key, _, value = part.strip().partition("=")
                if key == name:
                    return value.strip()
        return ""

    # -- HTTP ----------------------------------------------------------------------------------

    def handles(self, path: str) -> bool:
        """Whether ``path`` is the page's (the transport answers the rest itself)."""
        return path in PAGE_PATHS or path.startswith(STATIC_PREFIX) or path == "/favicon.ico"

    def respond(self, request: Request, own_origins: Iterable[str]) -> Response:
        """The answer to a plain HTTP request for the page or one of its assets."""
        url = urlsplit(request.path)
        origin = request.headers.get("Origin")
        if origin is not None and origin not in set(own_origins):
            return _answer(HTTPStatus.FORBIDDEN, b"Origin not allowed\n", CONTENT_TYPES[".txt"])
        if url.path in PAGE_PATHS:
            query = parse_qs(url.query, keep_blank_values=True)
            if "token" in query:
                target = self.redeem(query["token"][0])
                if target is None:
                    return _answer(
                        HTTPStatus.FORBIDDEN, _LINK_REFUSED.encode(), CONTENT_TYPES[".html"]
                    )
                response = _answer(HTTPStatus.SEE_OTHER, b"", CONTENT_TYPES[".txt"])
                response.headers["Location"] = target
                response.headers["Set-Cookie"] = (
                    f"{self.cookie_name}={self.open_session()}; Path=/; HttpOnly; SameSite=Strict"
                )
                return response
            if not self.session_ok(request.headers):
                return _answer(HTTPStatus.UNAUTHORIZED, _NEED_LINK.encode(), CONTENT_TYPES[".html"])
            body, kind = _assets()["index.html"]
            return _answer(HTTPStatus.OK, body, kind)
        if not self.session_ok(request.headers):
            return _answer(
                HTTPStatus.UNAUTHORIZED,
                b"open the page through a link first\n",
                CONTENT_TYPES[".txt"],
            )
        name = url.path[len(STATIC_PREFIX) :] if url.path.startswith(STATIC_PREFIX) else ""
        asset = _assets().get(name)
        if asset is None:
            return _answer(HTTPStatus.NOT_FOUND, b"not found\n", CONTENT_TYPES[".txt"])
        return _answer(HTTPStatus.OK, *asset)


def _answer(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            *SECURITY_HEADERS,
        ]
    )
    return Response(status.value, status.phrase, headers, body)
