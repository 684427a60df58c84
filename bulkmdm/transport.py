"""The HTTP boundary: one aiohttp session per run, the retry loop, the rate
controller, and the translation of aiohttp exceptions into ``errors.py``.

Providers call :meth:`Client.request` and get a :class:`Response` for any
HTTP answer (2xx or a final error status), or a ``TransportError`` when no
usable answer came. Nothing here knows about rows or files.
"""

from __future__ import annotations

import asyncio
import base64
import json as jsonlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .errors import AmbiguousError, AuthError, ConnectError, RequestTimeout
from .limits import RateController, sleep_unless
from .retry import IDEMPOTENT_METHODS, RETRY_STATUSES, RetryPolicy, parse_retry_after

log = logging.getLogger("bulkmdm.http")

#: Verify callback: True = the change is in place, False = it is not (safe to
#: send), None = cannot tell.
Verify = Callable[[], Awaitable["bool | None"]]


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)
    attempts: int = 1
    #: True when the answer was not received but a read-back showed the change
    #: in place (see ``verify`` in :meth:`Client.request`).
    verified: bool = False

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Auth:
    """Adds credentials to a request. Subclasses may refresh on a 401."""

    def headers(self) -> Mapping[str, str]:
        return {}

    async def refresh(self, session: aiohttp.ClientSession) -> bool:
        """Called on a 401; return True if new credentials are worth a retry."""
        return False

    def __repr__(self) -> str:  # never print credentials
        return f"<{type(self).__name__} (redacted)>"


class BasicAuth(Auth):
    def __init__(self, username: str, password: str) -> None:
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._header = f"Basic {token}"

    def headers(self) -> Mapping[str, str]:
        return {"Authorization": self._header}


class HeaderAuth(Auth):
    """A fixed Authorization header, e.g. ``Bearer <token>``."""

    def __init__(self, value: str) -> None:
        self._value = value

    def headers(self) -> Mapping[str, str]:
        return {"Authorization": self._value}


def _describe(method: str, url: str) -> str:
    parts = urlsplit(url)
    return f"{method} {parts.path}"


class Client:
    """Sends requests to one MDM, with retries and the shared rate limit."""

    def __init__(
        self,
        base_url: str,
        *,
        auth: Auth | None = None,
        limiter: RateController | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        connections: int = 32,
        stopping: Callable[[], bool] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self.auth = auth or Auth()
        self.limiter = limiter or RateController(rate=None, adaptive=False)
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.requests_sent = 0
        self.mutating_sent = 0
        self._connections = connections
        #: True once the run is stopping (Ctrl-C): an attempt in flight may
        #: finish, but no new one is started for a retry.
        self._stopping = stopping or (lambda: False)
        self._session: aiohttp.ClientSession | None = None
        #: sent with every request (a vendor's required headers), before the credentials'
        self._headers = dict(headers or {})

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._connections, ssl=ssl.create_default_context(), ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"Accept": "application/json", "User-Agent": "bulkmdm"},
            )
            # aiohttp quietly resends an idempotent request once when a kept-alive
            # connection drops; every attempt must go through our loop instead, so
            # that it takes a rate slot and is counted (aiohttp's own test client
            # turns this off the same way).
            if hasattr(self._session, "_retry_connection"):
                self._session._retry_connection = False
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return self.base_url + "/" + path.lstrip("/")

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Mapping[str, Any] | str | None = None,
        idempotent: bool | None = None,
        verify: Verify | None = None,
    ) -> Response:
        """Send one logical request, retrying what is worth retrying.

        ``idempotent`` defaults from the method (GET/PUT/DELETE yes, POST/PATCH
        no). A request that may have reached the server without an answer
        (timeout, dropped connection) is resent only if idempotent, or if
        ``verify()`` says the change is not in place; when ``verify`` says it
        is, the result is a ``Response(verified=True)``; when it cannot tell,
        :class:`AmbiguousError` is raised and nothing is resent.
        """
        method = method.upper()
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        url = self.url(path)
        what = _describe(method, url)
        policy = self.retry
        attempt = 0
        refreshed = False
        #: what the last attempt got, handed back if the run stops before the next
        last: Response | Exception | None = None
        while True:
            attempt += 1
            if last is None:
                await self.limiter.acquire()
            elif self._stopping() or not await self.limiter.acquire(self._stopping):
                # (a retry may wait out a long Retry-After pause here)
                return _give_up(last)
            self.requests_sent += 1
            if method not in ("GET", "HEAD"):
                self.mutating_sent += 1
            loop = asyncio.get_running_loop()
            started = loop.time()
            sent = False
            try:
                headers = {**self._headers, **self.auth.headers()}
                async with self.session.request(
                    method, url, params=_clean_params(params), json=json, data=data, headers=headers
                ) as resp:
                    sent = True
                    raw = await resp.read()
                    status = resp.status
                    resp_headers = {k: v for k, v in resp.headers.items() if k.lower() != "set-cookie"}
            except aiohttp.ClientConnectorError as exc:
                # Never reached the server: always safe to try again.
                error: Exception = ConnectError(
                    f"could not connect to {urlsplit(url).netloc} ({_reason(exc)})", attempts=attempt
                )
                log.info("%s -> connect error after %.3fs", what, loop.time() - started)
                ambiguous = False
            except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
                error = RequestTimeout(f"{what} got no answer within {self.timeout:g} s", attempts=attempt)
                log.info("%s -> timeout", what)
                ambiguous = True
            except (aiohttp.ClientError, OSError) as exc:
                error = ConnectError(f"{what} failed: the connection dropped ({_reason(exc)})", attempts=attempt)
                log.info("%s -> %s", what, type(exc).__name__)
                ambiguous = not isinstance(exc, aiohttp.ClientConnectorError) or sent
            else:
                body = _decode(raw, resp_headers.get("Content-Type", ""))
                log.info("%s -> %s in %.3fs", what, status, loop.time() - started)
                if status == 401 and not refreshed:
                    refreshed = True
                    if await self.auth.refresh(self.session):
                        attempt -= 1
                        continue
                if status == 401:
                    raise AuthError(
                        f"the MDM refused the credentials (HTTP 401 on {what})", attempts=attempt, status=401
                    )
                if status in RETRY_STATUSES and attempt < policy.attempts and not self._stopping():
                    last = Response(status, body, resp_headers, attempt)
                    retry_after = parse_retry_after(resp_headers.get("Retry-After"))
                    if status == 429:
                        self.limiter.throttled(retry_after)
                        # a 429 is the limiter's business; the pause above already
                        # holds every worker, so wait only a little more here
                        await self._pause(policy.backoff(attempt) / 4 if retry_after is None else 0)
                    else:
                        await self._pause(policy.backoff(attempt, retry_after))
                    continue
                if 200 <= status < 300:
                    self.limiter.succeeded()
                return Response(status, body, resp_headers, attempt)

            # No usable answer.
            if ambiguous and not idempotent:
                if verify is None:
                    raise AmbiguousError(
                        f"{error} and may have reached the MDM; not resent, to avoid doing it twice",
                        attempts=attempt,
                    )
                state = await verify()
                if state is True:
                    return Response(200, None, {}, attempt, verified=True)
                if state is None:
                    raise AmbiguousError(
                        f"{error}; could not tell whether it took effect, so it was not resent",
                        attempts=attempt,
                    )
            if attempt >= policy.attempts or self._stopping():
                raise error
            last = error
            await self._pause(policy.backoff(attempt))

    async def _pause(self, seconds: float) -> None:
        """Sleep before a retry; cut short when the run is stopping."""
        await sleep_unless(seconds, self._stopping)


def _give_up(last: Response | Exception) -> Response:
    """The run is stopping: the last attempt's answer is the row's answer."""
    if isinstance(last, Exception):
        raise last
    return last


def _clean_params(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if params is None:
        return None
    out = {}
    for key, value in params.items():
        if value is None:
            continue
        out[key] = "true" if value is True else "false" if value is False else str(value)
    return out


def _decode(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    # .NET servers writing with Encoding.UTF8 put a byte order mark first;
    # JSON may come as text/plain, after white space
    text = raw.decode("utf-8-sig", errors="replace")
    start = text.lstrip()[:1]
    if "json" in content_type or (start and start in "[{\"") or text.strip().lstrip("-").isdigit():
        try:
            return jsonlib.loads(text)
        except ValueError:
            return text
    return text


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 120 else text[:117] + "..."


#: Called (if set) right before any request that is not a read goes out: the
#: engine sets it per batch, to mark the batch's rows in flight only once a
#: change is really being sent.
about_to_change: ContextVar[Callable[[], None] | None] = ContextVar("bulkmdm_about_to_change", default=None)
