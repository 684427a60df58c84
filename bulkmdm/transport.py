"""The HTTP boundary: the one client that owns every request, retry and wait.

One aiohttp session per run. :meth:`Client.request` carries out the
provider's declared :class:`~bulkmdm.retry.RetryPolicy` for every request
(token fetches included), takes a slot from the shared rate controller for
every attempt, counts it, cuts waits short when the run stops, and
translates aiohttp's exceptions into ``errors.py`` here, once.

What it refuses to take for an answer, so that no row is ``succeeded`` on
the word of something that is not the MDM:

* a redirect to another origin, or any redirect of a change or of a
  credential request (:class:`RedirectRefused`); reads follow a redirect
  within the same origin;
* a 2xx answer that is not JSON where the vendor answers JSON (an SSO login
  page, a proxy's "session expired"), a body over ``max_body`` bytes after
  decompression, or JSON nested too deep (:class:`BadAnswer`);
* a Retry-After (or throttle wait) longer than the policy's ``max_wait``:
  the attempts end with that answer instead of a wait of years.

Providers get a :class:`Response` for any HTTP answer (2xx or a final error
status), or a ``TransportError`` when no usable answer came. Nothing here
knows about rows or files.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json as jsonlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from .errors import (
    AmbiguousError,
    AuthError,
    BadAnswer,
    BulkMDMError,
    ConnectError,
    NotSent,
    QuotaExhausted,
    RedirectRefused,
    RequestTimeout,
    TLSFailed,
    TransportError,
    Unreachable,
)
from .limits import RateController, Slot, sleep_unless
from .quota import DayQuota
from .retry import IDEMPOTENT_METHODS, READ_METHODS, RetryPolicy, parse_retry_after

log = logging.getLogger("bulkmdm.http")

#: Verify callback: True = the change is in place, False = it is not (safe to
#: send), None = cannot tell.
Verify = Callable[[], Awaitable["bool | None"]]

#: Called (if set) right before any request that is not a read goes out: the
#: engine sets it per batch, to mark the batch's rows in flight only once a
#: change is really being sent. What it returns, if anything, is awaited
#: before the request goes out (the journal's commit of that mark).
about_to_change: ContextVar[Callable[[], Awaitable[None] | None] | None] = ContextVar(
    "bulkmdm_about_to_change", default=None
)

#: Called (if set) when a request is about to wait out an answer worth
#: retrying (a 429, a 5xx, a dropped connection): such an answer says nothing
#: about whether the job is right, so the scheduler's canary lets its next
#: batch go out alongside instead of waiting it out too.
waiting_out: ContextVar[Callable[[], None] | None] = ContextVar("bulkmdm_waiting_out", default=None)

#: Set while the client reads a change back (``verify``): such a read is of
#: one object, answered as fast as any, so one held far longer is sent once
#: more alongside (see ``Client._attempt_hedged``).
_reading_back: ContextVar[bool] = ContextVar("bulkmdm_reading_back", default=False)

#: The largest answer read, after decompression. A fleet list of 100,000
#: devices is some tens of MB; past this an answer is refused, not read.
MAX_BODY = 128 * 1024 * 1024
#: Past this many bytes, an answer is read only while no other is: answers
#: this big come one at a time (a fleet list), so requests in flight cannot
#: each hold up to MAX_BODY (a hostile server answering every change with a
#: 1 GB body took 2 GB at 16 in flight).
SHARED_BODY = 2 * 1024 * 1024
#: Same-origin redirects a read follows before giving up.
MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Connections in a row that could not be made (no answer between them), or
#: changes in a row sent without an answer (timed out, dropped), once the MDM
#: has answered in this run, that show it went away: the run stops then,
#: rather than every row in flight spending its retries on it.
UNREACHABLE_AFTER = 20


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)
    attempts: int = 1
    #: True when the answer was not received but a read-back showed the change
    #: in place (see ``verify`` in :meth:`Client.request`).
    verified: bool = False
    #: why the attempts ended before the policy's last one (e.g. a Retry-After over the cap)
    note: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Auth:
    """Adds credentials to a request. Subclasses may fetch or renew them.

    ``ready`` and ``renew`` get the client, so that a token request is one
    more request of the run: rate-limited, counted, retried by the policy,
    never redirected (``request(..., credential=True)``).
    """

    def headers(self) -> Mapping[str, str]:
        return {}

    def refused(self, status: int, body: Any) -> bool:
        """Whether this answer means the credentials were refused."""
        return status == 401

    async def ready(self, client: Client) -> None:
        """Called before every request: have credentials that will work."""

    async def renew(self, client: Client) -> bool:
        """Called once when the credentials were refused; True if new ones are worth a retry."""
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


@dataclass(slots=True)
class _Failure:
    """An attempt that got no usable answer."""

    error: TransportError
    #: the request may have reached the server
    ambiguous: bool
    #: trying again cannot help (the same server fails the same way)
    final: bool = False


@dataclass(slots=True, eq=False)
class _HeldChange:
    """A change in flight whose answer may be held (see ``Client._attempt_reading_back``)."""

    task: asyncio.Task[Any]
    verify: Verify
    what: str
    #: when it counts as held (monotonic)
    due: float
    #: its attempt ended (an answer, a failure, or given up)
    answered: bool = False
    #: a read-back showed it in place
    confirmed: bool = False
    checking: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _Request:
    method: str
    url: str
    params: dict[str, str] | None
    json: Any
    data: Mapping[str, Any] | str | None
    credential: bool
    expect_json: bool

    @property
    def what(self) -> str:
        return f"{self.method} {urlsplit(self.url).path or '/'}"

    @property
    def is_read(self) -> bool:
        return self.method in READ_METHODS


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
        max_body: int = MAX_BODY,
        answers_json: bool = True,
        credential_hint: str = "",
        halt: Callable[[BulkMDMError], None] | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self.auth = auth or Auth()
        self.limiter = limiter or RateController(rate=None, adaptive=False)
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.max_body = max_body
        #: what to check when the MDM refuses the credentials ("check BULKMDM_TOKEN")
        self.credential_hint = credential_hint
        #: held while an answer past SHARED_BODY is read
        self._big_body = asyncio.Lock()
        #: stops the run (the scheduler's halt) when the MDM is found gone
        self._halt = halt
        #: the vendor answers JSON: a 2xx answer that is not JSON is not an answer
        self.answers_json = answers_json
        self.requests_sent = 0
        self.mutating_sent = 0
        #: the vendor's daily API quota, when it has one (set by the engine; see quota.py)
        self.quota: DayQuota | None = None
        #: any HTTP answer came from the MDM in this run / a 2xx one did
        self.answered = False
        self.answered_ok = False
        #: connections in a row that could not be made (reset by any answer), and to where
        self.unreachable = 0
        self._unreachable_at = ""
        #: changes in a row that got no answer (reset by an answer to a change)
        self.unanswered_changes = 0
        self._connections = connections
        #: True once the run is stopping (Ctrl-C): no new request is started.
        self._stopping = stopping or (lambda: False)
        self._session: aiohttp.ClientSession | None = None
        #: changes in flight that are read back if held, oldest first, and the one watch over them
        self._changes_in_flight: dict[_HeldChange, None] = {}
        self._held_watch: asyncio.TimerHandle | None = None
        #: sent with every request (a vendor's required headers), before the credentials'
        self._headers = dict(headers or {})

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def stopping(self) -> bool:
        return self._stopping()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections, ssl=_tls_context(), ttl_dns_cache=300)
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
        if self._held_watch is not None:
            self._held_watch.cancel()
            self._held_watch = None
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
        read_back_held: bool = True,
        credential: bool = False,
        expect_json: bool | None = None,
    ) -> Response:
        """Send one logical request, retrying what the policy says is worth retrying.

        ``idempotent`` defaults from the method (GET/PUT/DELETE yes, POST/PATCH
        no). A request that may have reached the server without an answer
        (timeout, dropped connection) is resent only if idempotent, or if
        ``verify()`` says the change is not in place; when ``verify`` says it
        is, the result is a ``Response(verified=True)``; when it cannot tell,
        :class:`AmbiguousError` is raised and nothing is resent. A change
        with ``verify`` whose answer the MDM holds far longer than its answers
        take is read back meanwhile (see :meth:`_attempt_reading_back`), unless
        ``read_back_held`` is False (a read-back of many requests' worth).

        ``credential=True`` marks a token request: sent without the run's
        credentials, never redirected, its URL and body never logged.
        Raises :class:`AuthError` when the credentials are refused (and cannot
        be renewed) and :class:`NotSent` when the run stopped before it went out.
        """
        method = method.upper()
        req = _Request(
            method,
            self.url(path),
            _clean_params(params),
            json,
            data,
            credential,
            self.answers_json if expect_json is None else expect_json,
        )
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        attempt = throttled = 0  # tries, and the 429s among them (a budget of their own)
        renewed = waited_window = False
        #: an attempt may have reached the MDM without an answer (else: refused, or never sent)
        reached = False
        last: Response | TransportError | None = None
        while True:
            attempt += 1
            slot = await self._slot(req, first=last is None)
            if slot is None:
                return _give_up(last, req, reached)
            result = await self._paced_attempt(req, slot, attempt, verify if read_back_held else None)
            if isinstance(result, _Failure):
                reached = reached or result.ambiguous
                settled = await self._after_failure(
                    req, result, attempt, idempotent, verify, attempt - throttled, reached=reached
                )
                if settled is not None:
                    return settled
                last = result.error
                await self._pause(self.retry.backoff(attempt - throttled))
                continue
            if self.auth.refused(result.status, result.body) and not req.credential:
                if renewed or not await self.auth.renew(self):
                    raise AuthError(
                        f"the MDM refused the credentials (HTTP {result.status} on {req.what})"
                        + (f"; {self.credential_hint}" if self.credential_hint else ""),
                        attempts=attempt,
                        status=result.status,
                    )
                renewed = True
                attempt -= 1
                continue
            try:
                wait, note = self._retry_wait(req, result, slot, attempt, waited_window, throttled)
            except QuotaExhausted:
                if self.quota is None or not self.quota.wait:
                    raise
                self.quota.refused_by_server()  # the next attempt holds until the quota resets
                # a new day starts the attempts afresh
                attempt, throttled, waited_window, last = 0, 0, False, result
                continue
            if wait is None:
                if result.status == 429 and self._stopping():
                    return _give_up(result, req, reached)
                return replace(result, note=note) if note else result
            throttled += result.status == 429
            last = result
            waited_window = wait >= (self.retry.throttle_wait or float("inf"))
            await self._pause(wait)

    # -- the parts of one attempt ---------------------------------------------
    async def _slot(self, req: _Request, *, first: bool) -> Slot | None:
        """Credentials ready and a rate slot taken; None when the run is stopping.
        A retry (not ``first``) goes before the first attempts waiting. A
        change's read-back goes even while the run stops: it settles a request
        in flight (was the change made?), which the stop lets finish."""
        stopping = _never if _reading_back.get() else self._stopping
        if stopping():
            return None
        if not req.credential and type(self.auth).ready is not Auth.ready:  # (the base's does nothing)
            await self.auth.ready(self)
        slot = await self.limiter.acquire(stopping, retry=not first)
        if slot is None:
            return None
        if stopping():
            self.limiter.release(slot, None)
            return None
        if self.quota is not None and not req.credential:
            # counted as it goes out (not while it queues for a slot); holds while the day's quota is spent
            try:
                counted = await self.quota.take(self._stopping)
            except BaseException:
                self.limiter.release(slot, None)
                raise
            if not counted:
                self.limiter.release(slot, None)
                return None
        return slot

    async def _paced_attempt(
        self, req: _Request, slot: Slot, attempt: int, verify: Verify | None
    ) -> Response | _Failure:
        """One attempt in the slot just taken; the limiter gets the slot back
        with the answer's status and latency (what adaptive concurrency reads).
        With ``verify``, a change whose answer is held is read back meanwhile;
        a read-back held is sent once more alongside."""
        started = time.monotonic()
        learned = True  # the answer is this attempt's own (its latency is the MDM's)
        try:
            if not req.is_read and not req.credential and (hook := about_to_change.get()) is not None:
                committed = hook()
                if committed is not None:
                    await committed
                    started = time.monotonic()  # the latency is the MDM's, not the journal's commit
            if verify is not None and not req.is_read and (held := self.limiter.held_after()) is not None:
                result = await self._attempt_reading_back(req, attempt, verify, held)
            elif req.is_read and _reading_back.get() and (held := self._hedge_after()) is not None:
                result, learned = await self._attempt_hedged(req, attempt, held)
            else:
                result = await self._attempt(req, attempt)
        except BaseException:
            self.limiter.release(slot, None, time.monotonic() - started)
            raise
        if isinstance(result, _Failure):
            timed_out = isinstance(result.error, RequestTimeout)
            self.limiter.release(slot, None, time.monotonic() - started, timed_out=timed_out)
        elif result.verified or not learned:  # no answer came: nothing to learn about the MDM's latency
            self.limiter.release(slot, None, time.monotonic() - started)
        else:
            self.limiter.release(slot, result.status, time.monotonic() - started)
        return result

    def _hedge_after(self) -> float | None:
        """Seconds after which a read-back still unanswered is sent once more;
        None: never (latency not known yet, or each call spends a day's quota)."""
        return None if self.quota is not None and self.quota.limit is not None else self.limiter.held_after()

    async def _attempt_hedged(self, req: _Request, attempt: int, held: float) -> tuple[Response | _Failure, bool]:
        """One attempt of a read-back that, if no answer came after ``held``
        seconds (far longer than answers take), is sent once more alongside:
        the first usable answer of the two is the attempt's, and the other
        is given up. A read is safe to send twice.
        Under issue 11's fault mix, a read-back held 2 s (2% of them) was
        often a faulty run's last row. Returns the answer, and whether it is
        this attempt's own (not the second sending's)."""
        loop = asyncio.get_running_loop()
        first = loop.create_task(self._attempt(req, attempt))
        second: asyncio.Task[Response | None] | None = None
        try:
            done, _ = await asyncio.wait((first,), timeout=held)
            if done or self._stopping():
                return await first, True
            log.info("%s: no answer yet, long after answers come; sending it once more", req.what)
            second = loop.create_task(self._hedge(req, attempt))
            waiting = {first, second}
            while True:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                own = self._settles(req, _result(first))
                if not own and (again := _result(second)) is not None:
                    return again, False
                if own or (first.done() and second.done()):  # (neither usable: the first's failure decides)
                    return first.result(), True
                waiting = {task for task in waiting if not task.done()}
        finally:
            for task in (first, second):
                if task is not None and not task.done():
                    task.cancel()
            # (each ends promptly once cancelled; its slot is given back as it ends)
            await asyncio.gather(*(t for t in (first, second) if t is not None), return_exceptions=True)

    def _settles(self, req: _Request, result: object) -> bool:
        """An answer that settles the attempt (not one worth retrying, nor none)."""
        return isinstance(result, Response) and not self.retry.retries(req.method, result.status)

    async def _hedge(self, req: _Request, attempt: int) -> Response | None:
        """A held read-back sent once more: one attempt in a slot of its own,
        never retried (a server that holds every read would otherwise be
        asked the policy's tries for each of the first's); None when it got
        no answer worth having (the held one may yet)."""
        _reading_back.set(False)  # (this task's own context: the second is not sent again)
        try:
            slot = await self._slot(req, first=False)
            if slot is None:
                return None
            again = await self._paced_attempt(req, slot, attempt, None)
        except BulkMDMError:
            return None
        return again if isinstance(again, Response) and self._settles(req, again) else None

    async def _attempt_reading_back(
        self, req: _Request, attempt: int, verify: Verify, held: float
    ) -> Response | _Failure:
        """One attempt of a change whose answer, if the MDM holds it ``held``
        seconds (far longer than its answers take), is not waited for idly:
        the change is read back meanwhile. Shown in place, the attempt is
        given up and the change is confirmed (``Response(verified=True)``), as
        when a connection drops; not shown, or not readable, the answer is
        waited for as ever, and nothing is sent again. Under issue 11's fault
        mix (2% of replies held 2 s after the work) a row whose reply was held
        waited 2 s, and those rows were much of a run's last seconds."""
        task = asyncio.current_task()
        if task is None:
            return await self._attempt(req, attempt)
        change = _HeldChange(task, verify, req.what, time.monotonic() + held)
        # one watch for all the changes in flight, oldest first (a timer per
        # attempt cost some 5 us of CPU each, 2% of a row; this, 2 us)
        changes = self._changes_in_flight
        changes[change] = None
        if self._held_watch is None:
            self._held_watch = asyncio.get_running_loop().call_later(held, self._watch_held)
        try:
            return await self._attempt(req, attempt)
        except asyncio.CancelledError:
            if change.confirmed and task.uncancel() == 0:
                log.info("%s: in place (read back); its held answer is not waited for", req.what)
                return Response(200, None, {}, attempt, verified=True)
            raise
        finally:
            change.answered = True
            del changes[change]
            if change.checking is not None and not change.checking.done():
                change.checking.cancel()

    def _watch_held(self) -> None:
        """Read back the changes in flight held past their time; again at the next one's."""
        self._held_watch = None
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        for change in self._changes_in_flight:
            if change.due > now:
                self._held_watch = loop.call_later(max(0.01, change.due - now), self._watch_held)
                return
            if change.checking is None and not self._stopping():
                log.info("%s: no answer yet, long after answers come; reading it back", change.what)
                change.checking = loop.create_task(self._read_back(change))

    async def _read_back(self, change: _HeldChange) -> None:
        try:
            shown = await _as_read_back(change.verify)
        except Exception as exc:  # (a read-back that fails changes nothing: the answer decides)
            log.info("%s: read back while its answer was held -> %s", change.what, type(exc).__name__)
            return
        if shown is True and not change.answered:
            change.confirmed = True
            change.task.cancel()

    async def _attempt(self, req: _Request, attempt: int) -> Response | _Failure:
        """Send once (following same-origin redirects of a read); an answer or why there is none."""
        url = req.url
        for _hop in range(MAX_REDIRECTS + 1):
            outcome = await self._send(req, url, attempt)
            if isinstance(outcome, _Failure):
                return outcome
            status, raw, headers = outcome
            if status not in REDIRECTS:
                return self._answer(req, status, raw, headers, attempt)
            url = self._redirect_target(req, url, headers.get("Location", ""), status, attempt)
        return _Failure(
            RedirectRefused(
                f"{req.what} was redirected more than {MAX_REDIRECTS} times; check --url", attempts=attempt
            ),
            ambiguous=False,
        )

    async def _send(self, req: _Request, url: str, attempt: int) -> tuple[int, bytes, Mapping[str, str]] | _Failure:
        self.requests_sent += 1
        if not req.is_read:
            self.mutating_sent += 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = False
        try:
            # a token request is the token endpoint's, not the MDM's: no MDM headers, no credentials
            headers = {} if req.credential else {**self._headers, **self.auth.headers()}
            async with self.session.request(
                req.method,
                url,
                params=req.params,
                json=req.json,
                data=req.data,
                headers=headers,
                allow_redirects=False,
            ) as resp:
                sent = True
                status = resp.status
                # case-insensitive, as HTTP's are (a proxy speaking HTTP/2 lower-cases every name)
                resp_headers = resp.headers.copy()
                resp_headers.popall("Set-Cookie", None)
                raw = await self._read_body(req, resp, attempt)
        except BadAnswer as exc:
            return _Failure(exc, ambiguous=not req.is_read)
        except aiohttp.ClientSSLError as exc:
            # Never reached the server either, and the same handshake fails the same way again.
            log.info("%s -> TLS error", req.what)
            return _Failure(TLSFailed(_tls_failed(url, exc), attempts=attempt), ambiguous=False, final=True)
        except aiohttp.ClientConnectorError as exc:
            # Never reached the server: always safe to try again.
            log.info("%s -> connect error after %.3fs", req.what, loop.time() - started)
            where = urlsplit(url).netloc
            self.unreachable += 1
            self._unreachable_at = where
            self._unanswered(req)
            return _Failure(ConnectError(f"could not connect to {where} ({_reason(exc)})", attempts=attempt), False)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            log.info("%s -> timeout", req.what)
            self._unanswered(req)
            timeout = RequestTimeout(f"{req.what} got no answer within {self.timeout:g} s", attempts=attempt)
            return _Failure(timeout, ambiguous=True)
        except (aiohttp.ClientError, OSError) as exc:
            # (also aiohttp's parser refusing an absurd header or status line)
            log.info("%s -> %s", req.what, type(exc).__name__)
            self._unanswered(req)
            error = ConnectError(f"{req.what} failed: the connection dropped ({_reason(exc)})", attempts=attempt)
            return _Failure(error, ambiguous=sent or not isinstance(exc, aiohttp.ClientConnectorError))
        if log.isEnabledFor(logging.INFO):  # what a request is takes a URL parse: not for nothing
            log.info("%s -> %s in %.3fs", req.what, status, loop.time() - started)
        if not req.credential:
            self.answered = True
        self.unreachable = 0
        if not req.is_read:
            self.unanswered_changes = 0
        return status, raw, resp_headers

    async def _read_body(self, req: _Request, resp: aiohttp.ClientResponse, attempt: int) -> bytes:
        """The whole body, refused past ``max_body`` bytes (after decompression)."""
        limit = self.max_body
        if resp.content_length is not None and resp.content_length > limit:
            raise BadAnswer(_too_big(req, limit), attempts=attempt)
        body = bytearray()
        big = False
        try:
            async for chunk in resp.content.iter_chunked(256 * 1024):
                body += chunk
                if len(body) > limit:
                    body.clear()  # (not kept alive by the error's traceback)
                    raise BadAnswer(_too_big(req, limit), attempts=attempt)
                if not big and len(body) > SHARED_BODY:
                    await self._big_body.acquire()  # (the server waits meanwhile: TCP flow control)
                    big = True
            return bytes(body)
        finally:
            if big:
                self._big_body.release()

    def _redirect_target(self, req: _Request, url: str, location: str, status: int, attempt: int) -> str:
        """Where a redirect may be followed to; raises RedirectRefused otherwise."""
        target = urljoin(url, location.strip()) if location.strip() else ""
        shown = _shown(target) if target else "nowhere"
        if req.credential or not req.is_read:
            why = "a credential request is never redirected" if req.credential else "a change is never redirected"
        elif not target or _origin(target) != _origin(url):
            why = "it leads away from the MDM's address"
        else:
            return target
        raise RedirectRefused(
            f"the MDM answered {req.what} with HTTP {status}, a redirect to {shown}, which was not followed "
            f"({why}); check --url (the MDM's own address, https:// if it uses TLS)",
            attempts=attempt,
            status=status,
        )

    def _answer(self, req: _Request, status: int, raw: bytes, headers: Mapping[str, str], attempt: int) -> Response:
        content_type = headers.get("Content-Type", "")
        try:
            body, is_json = _decode(raw, content_type)
        except RecursionError:
            raise BadAnswer(
                f"the MDM's answer to {req.what} is JSON nested too deep to read", attempts=attempt, status=status
            ) from None
        if req.expect_json and 200 <= status < 300 and not is_json:
            raise BadAnswer(_not_json(req, status, content_type, body), attempts=attempt, status=status)
        if 200 <= status < 300 and not req.credential:
            self.answered_ok = True  # a real answer: from here on, failures are the MDM's, not the set-up's
        return Response(status, body, headers, attempt)

    def _retry_wait(
        self, req: _Request, resp: Response, slot: Slot, attempt: int, waited_window: bool, throttled: int
    ) -> tuple[float | None, str]:
        """Seconds to wait before the next attempt, or None: this answer is final (and why, if early).
        ``throttled``: the 429s before this answer (retry.py: a budget and a wait of their own)."""
        policy = self.retry
        tries = throttled + 1 if resp.status == 429 else attempt - throttled
        if not policy.retries(req.method, resp.status) or tries >= policy.attempts or self._stopping():
            return None, ""
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        if retry_after is not None and retry_after > policy.max_wait:
            return None, (
                f"the MDM asked to wait {_duration(retry_after)}, longer than the "
                f"{_duration(policy.max_wait)} bulkmdm waits"
            )
        if resp.status != 429:
            return (retry_after if retry_after is not None else policy.backoff(tries)), ""
        if retry_after is None and policy.throttle_wait is not None:
            if waited_window:
                raise QuotaExhausted(
                    f"the MDM still answers {req.what} with 429 after a whole {_duration(policy.throttle_wait)} "
                    "wait: its API quota for the day seems spent; run the same command after it resets to continue "
                    "(or add --wait-for-quota to hold until then)",
                    attempts=attempt,
                    status=429,
                )
            retry_after = policy.throttle_wait
        # this request waits either way; whether the 429 is evidence of a limit
        # (a pause for every worker) is the limiter's business
        self.limiter.throttled(slot, retry_after)
        return (retry_after if retry_after is not None else policy.backoff(tries) / 4), ""

    async def _after_failure(
        self,
        req: _Request,
        failure: _Failure,
        attempt: int,
        idempotent: bool,
        verify: Verify | None,
        failures: int,
        *,
        reached: bool,
    ) -> Response | None:
        """Raise, settle (a verified change), or None: worth another attempt.
        ``reached``: some attempt of the request may have reached the MDM."""
        error = failure.error
        self._check_gone(failure, reached)
        if failure.final or isinstance(error, (BadAnswer, RedirectRefused)):
            raise error  # the same server will answer the same way
        if failure.ambiguous and not idempotent:
            if verify is None:
                raise AmbiguousError(
                    f"{error} and may have reached the MDM; not resent, to avoid doing it twice", attempts=attempt
                )
            state = await _as_read_back(verify)
            if state is True:
                return Response(200, None, {}, attempt, verified=True)
            if state is None:
                raise AmbiguousError(
                    f"{error}; could not tell whether it took effect, so it was not resent", attempts=attempt
                )
        # Until the MDM has answered once, a connection that fails is most
        # likely a wrong --url: two tries, not the whole retry budget.
        attempts = self.retry.attempts if self.answered else min(2, self.retry.attempts)
        if self._stopping() and _never_delivered(error, reached):
            raise _not_sent(req)
        if failures >= attempts or self._stopping():
            raise error
        return None

    def _unanswered(self, req: _Request) -> None:
        if not req.is_read and not req.credential:
            self.unanswered_changes += 1

    def _check_gone(self, failure: _Failure, reached: bool) -> None:
        """Stop the run (``halt``) when, after the MDM answered earlier in the
        run, the last ``UNREACHABLE_AFTER`` connections could not be made or
        the last ``UNREACHABLE_AFTER`` changes got no answer: it went away.
        Before it ever answered, a wrong --url is the set-up's error. Without
        a ``halt``, a request that never reached it raises instead."""
        if not self.answered:
            return
        # a connection failed since the last answer: it went (the changes in flight then dropped first)
        connecting = self.unreachable > 0
        if self.unreachable >= UNREACHABLE_AFTER or (self.unanswered_changes >= UNREACHABLE_AFTER and connecting):
            why = (
                f"the MDM stopped answering: the last {max(self.unreachable, self.unanswered_changes)} requests "
                f"got no answer, and connections to {self._unreachable_at} can no longer be made; "
                "check that it is up and reachable"
            )
        elif self.unanswered_changes >= UNREACHABLE_AFTER:
            why = (
                f"the MDM stopped answering changes: the last {self.unanswered_changes} sent got no answer "
                f"({failure.error}); check that it is up and working, or allow it a longer --timeout"
            )
        else:
            return
        gone = Unreachable(why, attempts=failure.error.attempts)
        if self._halt is not None:
            self._halt(gone)
        elif _never_delivered(failure.error, reached):
            raise gone

    async def _pause(self, seconds: float) -> None:
        """Sleep before a retry; cut short when the run is stopping."""
        if (hook := waiting_out.get()) is not None:
            hook()
        await sleep_unless(seconds, self._stopping)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The system's verifying TLS context: reading its certificates takes tens
    of milliseconds, so once per process, not once per run."""
    return ssl.create_default_context()


def _result(task: asyncio.Task[Any]) -> Any:
    """A task's result; None while it runs, or if it was cancelled or raised."""
    if not task.done() or task.cancelled() or task.exception() is not None:
        return None
    return task.result()


async def _as_read_back(verify: Verify) -> bool | None:
    """``verify()``, its reads marked as a change's read-back (see ``_reading_back``)."""
    token = _reading_back.set(True)
    try:
        return await verify()
    finally:
        _reading_back.reset(token)


def _never() -> bool:
    return False


def _never_delivered(error: TransportError, reached: bool) -> bool:
    """No attempt of the request reached the MDM: every one failed to connect."""
    return not reached and type(error) is ConnectError


def _not_sent(req: _Request) -> NotSent:
    return NotSent(f"{req.what} was not sent: the run was stopping")


def _give_up(last: Response | TransportError | None, req: _Request, reached: bool) -> Response:
    """The run is stopping: the last attempt's answer is the row's answer
    (a 429 did nothing: the row was not run; nor did connections never made)."""
    if (
        last is None
        or (isinstance(last, Response) and last.status == 429)
        or (isinstance(last, TransportError) and _never_delivered(last, reached))
    ):
        raise _not_sent(req)
    if isinstance(last, TransportError):
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


def _decode(raw: bytes, content_type: str) -> tuple[Any, bool]:
    """The body, and whether it is JSON: JSON where it parses as JSON;
    otherwise the text (the caller decides what that means). No body at all
    counts as JSON (nothing to misread: a 204, or a 200 with no content)."""
    if not raw.strip():
        return None, True
    # .NET servers writing with Encoding.UTF8 put a byte order mark first;
    # JSON may come as text/plain, after white space
    text = raw.decode("utf-8-sig", errors="replace")
    start = text.lstrip()[:1]
    if "json" in content_type or (start and start in '[{"-0123456789tfn'):
        try:
            return jsonlib.loads(text), True
        except ValueError:
            return text, False
    return text, False


def _not_json(req: _Request, status: int, content_type: str, body: str) -> str:
    kind = "an HTML page" if body.lstrip()[:1] == "<" or "html" in content_type.casefold() else "text that is not JSON"
    return (
        f"the MDM answered {req.what} with {kind} (HTTP {status}), not the JSON it sends: a login page or a "
        "proxy in the way? Check --url and the network"
    )


def _tls_failed(url: str, exc: BaseException) -> str:
    where = _shown(url)
    if url.startswith("https://") and "WRONG_VERSION_NUMBER" in str(exc):
        return (
            f"the server at {where} does not speak TLS (it answered in plain HTTP); use http:// in --url if that is "
            "really the MDM, or check the port"
        )
    return f"the TLS handshake with {where} failed ({_reason(exc)}); check --url and the server's certificate"


def _too_big(req: _Request, limit: int) -> str:
    return f"the MDM's answer to {req.what} is larger than {limit // (1024 * 1024)} MB; it was not read"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        port = None
    return parts.scheme, (parts.hostname or ""), port


def _shown(url: str) -> str:
    scheme, host, port = _origin(url)
    return f"{scheme}://{host}" + (f":{port}" if port not in (None, 80, 443) else "")


def _duration(seconds: float) -> str:
    if seconds == float("inf") or seconds > 10 * 365 * 86400:
        return "for years"
    if seconds >= 3600:
        return f"{seconds / 3600:.0f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:g} s"


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 120 else text[:117] + "..."
