"""The web view: a page the host serves at ``/`` beside ``/rpc``, on the same port.

The page is static HTML, CSS and JavaScript modules (``static/``); it speaks the same
JSON-RPC over WebSocket as every other client. A browser gets in through a one-time link
(``plait serve`` prints one, ``host/link`` and ``plait debug RUN`` mint more) that trades the
code for an HttpOnly, SameSite=Strict session cookie; the page's socket authenticates with that
cookie. See docs/debugging.md, "The web view".
"""

from plait.rpc.web.server import (
    CONTENT_SECURITY_POLICY,
    LINK_SECONDS,
    STATIC_DIR,
    WebAccess,
)

__all__ = ["CONTENT_SECURITY_POLICY", "LINK_SECONDS", "STATIC_DIR", "WebAccess"]
