"""The wire: one request out, its raw answer back, and nothing else.

As httpx's ``AsyncBaseTransport`` is one ``handle_async_request`` and
``aclose``, a :class:`Transport` is one :meth:`~Transport.send` and
:meth:`~Transport.aclose`. It knows nothing of retries, pacing, credentials
or rows: that is the policy of ``client.py``. What it does own:

* :class:`AiohttpTransport`: the aiohttp session, TLS, connection limits,
  the body cap (``max_body`` after decompression), reading answers past
  ``SHARED_BODY`` one at a time, and aiohttp's exceptions mapped onto
  ``errors.py`` here, once (httpx's ``map_httpcore_exceptions``);
* :class:`MemoryTransport`: an async handler answering in memory, for the
  unit tests of the request path (httpx's ``MockTransport``).

What a transport raises says whether the request may have reached the server:

* :class:`~bulkmdm.errors.ConnectError` (exactly) or
  :class:`~bulkmdm.errors.TLSFailed`: no connection was made, so nothing was
  sent (a separate connect timeout makes "could not connect" known, unlike
  "no answer");
* :class:`~bulkmdm.errors.RequestTimeout` or
  :class:`~bulkmdm.errors.ConnectionDropped`: it went out, and no answer
  came: it may have been applied;
* :class:`~bulkmdm.errors.BadAnswer`: an answer too big to read.
"""

from __future__ import annotations

import asyncio
import functools
import json as jsonlib
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .errors import BadAnswer, ConnectError, ConnectionDropped, RequestTimeout, TLSFailed

log = logging.getLogger("bulkmdm.http")

#: The largest answer read, after decompression. A fleet list of 100,000
#: devices is some tens of MB; past this an answer is refused, not read.
MAX_BODY = 128 * 1024 * 1024
#: Past this many bytes, an answer is read only while no other is: answers
#: this big come one at a time (a fleet list), so requests in flight cannot
#: each hold up to MAX_BODY (a server answering every change with a 1 GB
#: body would otherwise hold that much per request in flight).
SHARED_BODY = 2 * 1024 * 1024
#: Seconds a connection may take to be made: slightly more than a multiple
#: of 3 s, TCP's initial retransmission window, as the requests library's
#: documentation advises for a connect timeout (RFC 6298 lowers the initial
#: RTO to 1 s; Linux still waits 1 + 2 + 4 s for three SYNs).
CONNECT_TIMEOUT = 9.5
#: A path yarl leaves as it is when it parses a URL: only the characters its
#: path quoter keeps (RFC 3986's unreserved and sub-delims, ":", "@", "/"),
#: no percent-escape to requote, and (checked apart) no dot segment to remove.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9\-._~!$'()*,+&=;:@/]*")


@dataclass(frozen=True, slots=True)
class Request:
    """One request as it goes on the wire."""

    method: str
    url: str
    params: Mapping[str, str] | None = None
    json: Any = None
    data: Mapping[str, Any] | str | None = None
    headers: Mapping[str, str] | None = None

    @property
    def what(self) -> str:
        """How messages name it: the method and the path (never the query: it may hold secrets)."""
        return f"{self.method} {urlsplit(self.url).path or '/'}"


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer as it came: status, the whole body, headers (case-insensitive)."""

    status: int
    body: bytes
    headers: Mapping[str, str]


def json_answer(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Answer:
    """An Answer carrying ``body`` as JSON (for a :class:`MemoryTransport` handler)."""
    out: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
    out.update(headers or {})
    return Answer(status, jsonlib.dumps(body).encode(), out)


class Transport:
    """Sends one request and returns its raw answer (see the module docstring for what it raises)."""

    async def send(self, request: Request) -> Answer:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


#: A MemoryTransport's handler: answers a request, or raises what a transport raises.
Handler = Callable[[Request], Awaitable[Answer]]


class MemoryTransport(Transport):
    """Requests answered in memory by ``handler``, for tests.

    The handler simulates the failures by raising them: ``ConnectError`` (a
    connection that could not be made), ``ConnectionDropped`` (after doing
    the work, say). A handler that does not answer within ``timeout``
    seconds is "no answer" (``RequestTimeout``), as on the wire.
    """

    def __init__(self, handler: Handler, *, timeout: float | None = None) -> None:
        self.handler = handler
        self.timeout = timeout
        #: every request sent, in order
        self.sent: list[Request] = []

    async def send(self, request: Request) -> Answer:
        self.sent.append(request)
        if self.timeout is None:
            return await self.handler(request)
        try:
            return await asyncio.wait_for(self.handler(request), self.timeout)
        except TimeoutError:
            raise RequestTimeout(f"{request.what} got no answer within {self.timeout:g} s") from None


class AiohttpTransport(Transport):
    """The wire over aiohttp: one session (opened on first use), at most
    ``connections`` at once, TLS verified against the system's certificates."""

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        connect_timeout: float = CONNECT_TIMEOUT,
        connections: int = 32,
        max_body: int = MAX_BODY,
    ) -> None:
        self.timeout = timeout
        #: how long making a connection may take (within ``timeout``)
        self.connect_timeout = min(connect_timeout, timeout)
        self.max_body = max_body
        #: an answer of known length up to this, not compressed, is read in one go
        self._one_read = min(max_body, SHARED_BODY)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        #: held while an answer past SHARED_BODY is read
        self._big_body = asyncio.Lock()
        #: the origin of the last URL parsed, and as text (see :meth:`_url`)
        self._origin: URL | None = None
        self._prefix = ""

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections, ssl=_tls_context(), ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                # a connection not made within connect_timeout is known never
                # sent, unlike a request that got no answer within the total
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=self.connect_timeout),
                headers={"Accept": "application/json", "User-Agent": "bulkmdm"},
            )
            # aiohttp quietly resends an idempotent request once when a kept-alive
            # connection drops; every attempt must go through the client's loop
            # instead, so that it is paced and counted (aiohttp's own test client
            # turns this off the same way).
            if hasattr(self._session, "_retry_connection"):
                self._session._retry_connection = False
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, request: Request) -> Answer:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with self.session.request(
                request.method,
                self._url(request.url),
                params=request.params,
                json=request.json,
                data=request.data,
                headers=request.headers,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                # case-insensitive, as HTTP's are (a proxy speaking HTTP/2 lower-cases
                # every name); read-only, and a copy only to leave cookies out
                headers: Mapping[str, str] = resp.headers
                if "Set-Cookie" in resp.headers:
                    kept = resp.headers.copy()
                    kept.popall("Set-Cookie", None)
                    headers = kept
                length = resp.content_length
                if length is not None and length <= self._one_read and "Content-Encoding" not in resp.headers:
                    # the length is the body's own (nothing to decompress) and small: one read, as most answers are
                    body = await resp.read()
                else:
                    body = await self._read_body(request, resp, length)
        except aiohttp.ClientSSLError as exc:
            # never reached the server either, and the same handshake fails the same way again
            log.info("%s -> TLS error", request.what)
            raise TLSFailed(_tls_failed(request.url, exc)) from None
        except aiohttp.ConnectionTimeoutError:
            raise self._not_connected(request, f"no connection within {self.connect_timeout:g} s", started) from None
        except aiohttp.ClientConnectorError as exc:
            raise self._not_connected(request, _reason(exc), started) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            log.info("%s -> timeout", request.what)
            raise RequestTimeout(f"{request.what} got no answer within {self.timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            # (also aiohttp's parser refusing an absurd header or status line)
            log.info("%s -> %s", request.what, type(exc).__name__)
            raise ConnectionDropped(f"{request.what} failed: the connection dropped ({_reason(exc)})") from None
        if log.isEnabledFor(logging.INFO):
            log.info("%s -> %s in %.3fs", request.what, status, loop.time() - started)
        return Answer(status, body, headers)

    def _url(self, url: str) -> URL | str:
        """``url`` parsed as aiohttp would parse it. A URL on the origin of the
        last one, whose path yarl would leave as it is, is that origin with the
        path put in as it is: every request of a run goes to one origin, and
        parsing the whole URL afresh each time (host, port, quoting) took more
        CPU than anything else the transport does for a small answer."""
        origin = self._origin
        if origin is not None and url.startswith(self._prefix):
            path = url[len(self._prefix) :]
            if _PLAIN_PATH.fullmatch(path) and "/." not in path:
                return origin.with_path(path, encoded=True)
        try:
            parsed = URL(url)
        except ValueError:
            return url  # (aiohttp refuses it, as it refuses any URL it cannot parse)
        if parsed.absolute:
            self._origin = parsed.origin()
            self._prefix = str(self._origin)
        return parsed

    def _not_connected(self, request: Request, why: str, started: float) -> ConnectError:
        log.info("%s -> connect error after %.3fs", request.what, asyncio.get_running_loop().time() - started)
        return ConnectError(f"could not connect to {urlsplit(request.url).netloc} ({why})")

    async def _read_body(self, request: Request, resp: aiohttp.ClientResponse, length: int | None) -> bytes:
        """A body of unknown, large or compressed ``length``, refused past
        ``max_body`` bytes (after decompression); :meth:`send` reads a small
        one of known length at once."""
        limit = self.max_body
        if length is not None and length > limit:
            raise BadAnswer(_too_big(request, limit))
        body = bytearray()
        big = False
        try:
            async for chunk in resp.content.iter_chunked(256 * 1024):
                body += chunk
                if len(body) > limit:
                    body.clear()  # (not kept alive by the error's traceback)
                    raise BadAnswer(_too_big(request, limit))
                if not big and len(body) > SHARED_BODY:
                    await self._big_body.acquire()  # (the server waits meanwhile: TCP flow control)
                    big = True
            return bytes(body)
        finally:
            if big:
                self._big_body.release()


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The system's verifying TLS context: reading its certificates takes tens
    of milliseconds, so once per process, not once per run."""
    return ssl.create_default_context()


def _tls_failed(url: str, exc: BaseException) -> str:
    where = shown(url)
    if url.startswith("https://") and "WRONG_VERSION_NUMBER" in str(exc):
        return (
            f"the server at {where} does not speak TLS (it answered in plain HTTP); use http:// in --url if that is "
            "really the MDM, or check the port"
        )
    return f"the TLS handshake with {where} failed ({_reason(exc)}); check --url and the server's certificate"


def _too_big(request: Request, limit: int) -> str:
    return f"the MDM's answer to {request.what} is larger than {limit // (1024 * 1024)} MB; it was not read"


def origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port of ``url`` (the port its scheme implies when none is given)."""
    parts = urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        port = None
    return parts.scheme, (parts.hostname or ""), port


def shown(url: str) -> str:
    """``url`` as messages show it: its origin only."""
    scheme, host, port = origin(url)
    return f"{scheme}://{host}" + (f":{port}" if port not in (None, 80, 443) else "")


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 120 else text[:117] + "..."
