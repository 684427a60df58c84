"""Credentials: what every request to the MDM carries, and what happens when
the MDM refuses them.

An :class:`Auth` adds its headers to each request; ``ready`` (before every
attempt) and ``renew`` (once, when refused) get the client, so that a token
request is one more request of the run: paced, counted, retried by the
policy, never redirected (``request(..., credential=True)``). ``renew`` is
told which headers the refused attempt carried, so that workers refused
together renew once: the others find newer credentials and retry with them.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import AuthError

if TYPE_CHECKING:
    from ..client import Client


#: what a token request carries of the run's headers: none
_NONE: Mapping[str, str] = {}


class Auth:
    """Adds credentials to a request. Subclasses may fetch or renew them."""

    def headers(self) -> Mapping[str, str]:
        return {}

    def refused(self, status: int, body: Any) -> bool:
        """Whether this answer means the credentials were refused."""
        return status == 401

    async def ready(self, client: Client) -> None:
        """Called before every request: have credentials that will work."""

    def current(self) -> bool:
        """Whether the credentials :meth:`ready` made are still good to send
        (asked again once the request has its turn: a refusal meanwhile, or
        their expiry, sends it back to :meth:`ready`)."""
        return True

    async def renew(self, client: Client, sent: Mapping[str, str]) -> bool:
        """Called once when the credentials ``sent`` were refused; True if new ones are worth a retry."""
        return False

    def __repr__(self) -> str:  # never print credentials
        return f"<{type(self).__name__} (redacted)>"


class BasicAuth(Auth):
    def __init__(self, username: str, password: str) -> None:
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        # the same mapping each time: Credentials merges it with the vendor's headers once
        self._headers = {"Authorization": f"Basic {token}"}

    def headers(self) -> Mapping[str, str]:
        return self._headers


class HeaderAuth(Auth):
    """A fixed Authorization header, e.g. ``Bearer <token>``."""

    def __init__(self, value: str) -> None:
        self._headers = {"Authorization": value}

    def headers(self) -> Mapping[str, str]:
        return self._headers


class Credentials:
    """The run's :class:`Auth` on every request, the vendor's required headers before it."""

    def __init__(self, auth: Auth | None = None, *, headers: Mapping[str, str] | None = None, hint: str = "") -> None:
        self.auth = auth or Auth()
        self._headers = dict(headers or {})
        #: what to check when the MDM refuses the credentials ("check BULKMDM_TOKEN")
        self.hint = hint
        #: the credentials have something to do before a request (the base's ``ready`` does nothing)
        self.readies = type(self.auth).ready is not Auth.ready
        #: the last headers the Auth gave, and what requests carried with them
        self._auth_headers: Mapping[str, str] | None = None
        self._sent: Mapping[str, str] = {}

    async def ready(self, client: Client) -> None:
        """Have credentials that will work (the client asks only when ``readies``; never for a token request)."""
        await self.auth.ready(client)

    def current(self) -> bool:
        """Whether the credentials are still good to send (see :meth:`Auth.current`)."""
        return self.auth.current()

    def headers(self, *, credential: bool) -> Mapping[str, str]:
        """What a request carries; a token request is the token endpoint's: no MDM headers, no credentials."""
        if credential:
            return _NONE
        auth = self.auth.headers()
        if auth is not self._auth_headers and auth != self._auth_headers:
            # merged again only when the Auth gives other headers (a new
            # token): a dict per request is a cost each request would pay
            self._auth_headers, self._sent = auth, {**self._headers, **auth}
        return self._sent

    def refuses(self, status: int, body: Any) -> bool:
        """Whether this answer refused the credentials (asked of every answer,
        without an await: :meth:`refused` then renews them or raises)."""
        return self.auth.refused(status, body)

    async def refused(
        self,
        client: Client,
        status: int,
        sent: Mapping[str, str],
        *,
        what: str | Callable[[], str],
        attempt: int,
        renewed: bool,
    ) -> bool:
        """An answer :meth:`refuses` refused the credentials ``sent``: True when
        new ones are worth a retry; raises :class:`AuthError` when they cannot be
        renewed. ``what`` names the request in that error (a callable is called
        only then)."""
        if renewed or not await self.auth.renew(client, sent):
            named = what if isinstance(what, str) else what()
            raise AuthError(
                f"the MDM refused the credentials (HTTP {status} on {named})" + (f"; {self.hint}" if self.hint else ""),
                attempts=attempt,
                status=status,
            )
        return True
