"""The web app's locks: a session secret, the Host header, a CSRF token.

``bulkmdm serve`` listens on 127.0.0.1, but any page the admin's browser
opens can still send requests there, and a DNS-rebinding page can even read
the answers. So every request must carry the session's secret (in the
address the first time), or the session cookie it was traded for, name this
server in its Host header, and every POST must carry a CSRF token that only
our own pages hold.

The cookie holds a random session id of its own, never the secret: a browser
sends a 127.0.0.1 cookie to every server on 127.0.0.1 (cookies ignore ports),
so a cookie holding the secret would hand it to any other local program the
browser visits. Its name carries the port, so a second ``bulkmdm serve``
does not overwrite it; it is HttpOnly and SameSite=Strict.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

COOKIE = "bulkmdm_session"
#: session ids minted at most; past this the oldest is forgotten (its browser
#: opens the printed address again)
MAX_SESSIONS = 1000
#: the one path that takes multipart/form-data; its handler checks the CSRF token itself
UPLOAD_PATH = "/upload"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: headers every answer carries: no framing, no referrer, no caching, our own scripts only
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Guard:
    """The session secret and CSRF token of one ``bulkmdm serve``."""

    def __init__(self, port: int, *, secret: str | None = None) -> None:
        self.port = port
        self.secret = secret or secrets.token_urlsafe(24)
        self.csrf = secrets.token_urlsafe(24)
        #: the session ids handed out for the secret, one per visit of the address with it
        self._sessions: dict[str, None] = {}

    @property
    def cookie(self) -> str:
        """The session cookie's name: this server's port in it (see the module's docstring)."""
        return f"{COOKIE}_{self.port}"

    def open_session(self) -> str:
        """A new session id, for a browser that showed the secret."""
        session = secrets.token_urlsafe(24)
        self._sessions[session] = None
        while len(self._sessions) > MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        return session

    def holds_session(self, value: str | None) -> bool:
        # (a dict look-up compares hashes first: its timing says nothing of a 192-bit random id)
        return value is not None and value in self._sessions

    def allowed_hosts(self) -> frozenset[str]:
        return frozenset({f"127.0.0.1:{self.port}", f"localhost:{self.port}"})

    def holds_secret(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), self.secret.encode())

    def holds_csrf(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), self.csrf.encode())

    def middleware(self) -> Any:
        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self._check(request, handler)

        return guard

    async def _check(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.host not in self.allowed_hosts():
            # A DNS-rebinding page reaches us under its own name; refuse before anything else.
            return _refuse(
                400, "This address is not bulkmdm serve's; open the address it printed (http://127.0.0.1:PORT/...)."
            )
        token = request.query.get("token")
        if token is not None:
            if not self.holds_secret(token):
                return _refuse(403, "The secret in this address is wrong; open the address bulkmdm serve printed.")
            # Set the cookie and drop the secret from the address bar and the history.
            kept = [(key, value) for key, value in request.query.items() if key != "token"]
            response = web.Response(status=302, headers={"Location": str(request.rel_url.with_query(kept))})
            response.set_cookie(self.cookie, self.open_session(), httponly=True, samesite="Strict", path="/")
            return response
        if not self.holds_session(request.cookies.get(self.cookie)):
            return _refuse(
                403,
                "This page needs the secret address bulkmdm serve printed "
                "(http://127.0.0.1:PORT/?token=...); open that address again.",
            )
        if request.method not in ("GET", "HEAD"):
            if request.content_type == "multipart/form-data" and request.path == UPLOAD_PATH:
                # The upload handler reads the token from the form's first part,
                # before it stores a byte of the file.
                return await handler(request)
            if not self.holds_csrf(await _csrf_of(request)):
                return _refuse(
                    403,
                    "This form is out of date (its security token does not match); reload the page and send it again.",
                )
        return await handler(request)


async def _csrf_of(request: web.Request) -> str | None:
    header = request.headers.get("X-CSRF-Token")
    if header is not None:
        return header
    if request.content_type == "application/x-www-form-urlencoded":
        form = await request.post()
        value = form.get("csrf")
        return value if isinstance(value, str) else None
    return None


def _refuse(status: int, sentence: str) -> web.Response:
    return web.Response(status=status, text=sentence + "\n", content_type="text/plain")


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer (streams and files too) carries the protective headers."""
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)
