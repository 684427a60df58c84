"""The one client: every request of a run, each attempt through its steps.

:meth:`Client.request` carries out the provider's declared
:class:`~bulkmdm.retry.RetryPolicy` for every request (token fetches
included). Each attempt goes through the steps of ``steps/``, in order:

1. :class:`~.steps.credentials.Credentials` ready (a token fetched if due);
2. :class:`~.steps.pacing.Pace`: a slot from the shared rate and
   concurrency controller;
3. :class:`~.steps.quota.DailyQuota`: one call of the day's quota;
4. :class:`~.steps.inflight.InFlightMark`: a change's batch marked in flight;
5. the :class:`~bulkmdm.transport.Transport` sends it (redirects of a read
   followed within the same origin);
6. :class:`~.steps.readback.ReadBack` of a change held, or answered
   ambiguously (no answer, a gateway's 502/504) before it is sent again;
7. :class:`~.steps.reachability.Reachability`: the run stops when the MDM
   went away;

and between attempts the policy's wait (:meth:`~.steps.pacing.Pace.wait`),
during which :class:`~.steps.canary.CanaryTurn` lets the canary's next
batch go. The request's retry state is a frozen
:class:`~bulkmdm.retry.RetryState`; what a batch tells the request path is
its :class:`~.steps.context.RequestContext`, passed as ``context=``.

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

import json as jsonlib
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urljoin, urlsplit

from .errors import (
    BadAnswer,
    BulkMDMError,
    ConnectError,
    NotSent,
    QuotaExhausted,
    RedirectRefused,
    RequestTimeout,
    TLSFailed,
    TransportError,
)
from .limits import RateController
from .quota import DayQuota
from .response import Failure, Response
from .retry import FIRST, READ_METHODS, RetryPolicy, RetryState, parse_retry_after
from .steps.canary import CanaryTurn
from .steps.context import NO_CONTEXT, RequestContext
from .steps.credentials import Auth, BasicAuth, Credentials, HeaderAuth
from .steps.inflight import InFlightMark
from .steps.pacing import Pace, Slot
from .steps.quota import DailyQuota
from .steps.reachability import UNREACHABLE_AFTER, Reachability, never_delivered
from .steps.readback import MAYBE_DONE, ReadBack, Verify
from .transport import MAX_BODY, AiohttpTransport, Answer, Request, Transport, origin, shown

__all__ = [
    "MAX_BODY",
    "NO_CONTEXT",
    "UNREACHABLE_AFTER",
    "Auth",
    "BasicAuth",
    "Client",
    "HeaderAuth",
    "RequestContext",
    "Response",
    "Verify",
]

#: Same-origin redirects a read follows before giving up.
MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _never() -> bool:
    return False


class Client:
    """Sends requests to one MDM, with retries and the shared rate limit.

    Everything it works with is given here, once: the transport (default: an
    :class:`~bulkmdm.transport.AiohttpTransport` with ``timeout``,
    ``connect_timeout``, ``connections`` and ``max_body``), the credentials,
    the rate controller, the day's quota, the run's ``stopping`` and what
    stops it (``halt``)."""

    def __init__(
        self,
        base_url: str,
        *,
        auth: Auth | None = None,
        limiter: RateController | None = None,
        retry: RetryPolicy | None = None,
        quota: DayQuota | None = None,
        transport: Transport | None = None,
        timeout: float = 30.0,
        connect_timeout: float | None = None,
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
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        if transport is None:
            wire = {"connect_timeout": connect_timeout} if connect_timeout is not None else {}
            transport = AiohttpTransport(timeout=timeout, connections=connections, max_body=max_body, **wire)
        self.transport = transport
        #: True once the run is stopping (Ctrl-C): no new request is started.
        self._stopping = stopping or _never
        # the steps, in the order an attempt meets them
        self.credentials = Credentials(auth, headers=headers, hint=credential_hint)
        self.pace = Pace(limiter)
        self.quota = DailyQuota(quota)
        self.in_flight = InFlightMark()
        self.canary = CanaryTurn()
        self.read_back = ReadBack(self._stopping)
        self.reach = Reachability(halt)
        #: the vendor answers JSON: a 2xx answer that is not JSON is not an answer
        self.answers_json = answers_json
        self.requests_sent = 0
        self.mutating_sent = 0

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def auth(self) -> Auth:
        return self.credentials.auth

    @property
    def limiter(self) -> RateController:
        return self.pace.limiter

    @property
    def answered(self) -> bool:
        """Any HTTP answer came from the MDM in this run."""
        return self.reach.answered

    @property
    def answered_ok(self) -> bool:
        """A 2xx answer of the vendor's kind came in this run."""
        return self.reach.answered_ok

    @property
    def stopping(self) -> bool:
        return self._stopping()

    async def aclose(self) -> None:
        self.read_back.close()
        await self.transport.aclose()

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
        verify: Verify | None = None,
        read_back_held: bool = True,
        credential: bool = False,
        expect_json: bool | None = None,
        context: RequestContext = NO_CONTEXT,
    ) -> Response:
        """Send one logical request, retrying what the policy says is worth retrying.

        A change (any method but GET/HEAD/OPTIONS; not a credential request)
        that may have reached the server without an answer (timeout, dropped
        connection, a gateway's 502/504) is sent again only if
        ``verify(context)`` says it is not in place, whatever its method;
        when it says it is, the result is a ``Response(verified=True)``;
        without a ``verify``, or when it cannot tell,
        :class:`AmbiguousError` is raised and nothing is sent again. Reads
        and credential requests are simply sent again. A change with
        ``verify`` whose answer the MDM holds far longer than its answers
        take is read back meanwhile, unless ``read_back_held`` is False (a
        read-back of many requests' worth).

        ``context`` is the batch's (see ``steps/context.py``): its hooks run
        as the request goes out and waits. ``credential=True`` marks a token
        request: sent without the run's credentials, never redirected, its
        URL and body never logged. Raises :class:`AuthError` when the
        credentials are refused (and cannot be renewed) and :class:`NotSent`
        when the run stopped before it went out.
        """
        method = method.upper()
        credentials = self.credentials
        # the headers known now (credentials to ready first are known once ready): the
        # request is built again only when an attempt carries other ones (renewed)
        headers = None if credentials.readies and not credential else credentials.headers(credential=credential) or None
        req = Request(method, self.url(path), _clean_params(params), json, data, headers)
        # a change may be made by an attempt that gets no answer: it is read back before it is sent again
        change = method not in READ_METHODS and not credential
        expect = self.answers_json if expect_json is None else expect_json
        held_verify = verify if read_back_held and method not in READ_METHODS else None
        state: RetryState = FIRST
        last: Response | TransportError | None = None
        while True:
            attempt = state.attempt + 1
            slot = self._turn_now(context, credential) or await self._turn(
                req, context, credential=credential, first=last is None
            )
            if slot is None:
                return _give_up(last, req, state.reached)
            if (sent := credentials.headers(credential=credential) or None) is not req.headers:
                req = Request(method, req.url, req.params, json, data, sent)
            result = await self._paced_attempt(slot, req, attempt, context, held_verify, expect, credential)
            if isinstance(result, Failure):
                state = state.increment(type(result.error).__name__, reached=result.ambiguous)
                settled = await self._after_failure(req, result, state, change, verify, context)
                if settled is not None:
                    return settled
                last = result.error
                self.canary.waiting_out(context)
                await self.pace.wait(self.retry.backoff(state.failures), self._stopping)
                continue
            if (
                not credential
                and credentials.refuses(result.status, result.body)
                and await credentials.refused(
                    self, result.status, sent or {}, what=req.what, attempt=attempt, renewed=state.renewed
                )
            ):
                state = state.renewing()
                continue
            if result.ok and not self.retry.retries(method, result.status):
                # final at once (most answers): no wait, and a 2xx is no gateway's "maybe done"
                return result
            state = state.increment(result.status)
            if change and result.status in MAYBE_DONE:
                settled = await self.read_back.after_gateway(req.what, result, verify, context)
                if settled is not None:
                    return settled
                state = replace(state, reached=True) if not state.reached else state
            try:
                wait, note = self._retry_wait(slot, req, result, state)
            except QuotaExhausted:
                if not self.quota.waits():
                    raise
                self.quota.refused_by_server()  # the next attempt holds until the quota resets
                state, last = state.new_day(), result
                continue
            if wait is None:
                if result.status == 429 and self._stopping():
                    return _give_up(result, req, state.reached)
                return replace(result, note=note) if note else result
            last = result
            state = state.waiting(wait >= (self.retry.throttle_wait or float("inf")))
            self.canary.waiting_out(context)
            await self.pace.wait(wait, self._stopping)

    # -- the parts of one attempt ---------------------------------------------
    def _turn_now(self, context: RequestContext, credential: bool) -> Slot | None:
        """What :meth:`_turn` comes to when nothing needs a wait (no await:
        most attempts): the slot; None: :meth:`_turn` sees to it."""
        if (self.credentials.readies and not credential) or (not context.read_back and self._stopping()):
            return None
        slot = self.pace.take_now()
        if slot is None or not self.quota.counts(credential=credential) or self.quota.take_now():
            return slot
        self.pace.give_back(slot)  # the day's calls are spent: _turn holds or raises
        return None

    async def _turn(self, req: Request, context: RequestContext, *, credential: bool, first: bool) -> Slot | None:
        """Credentials ready, a rate slot and a call of the day's quota taken:
        the slot; None when the run is stopping. A retry (not ``first``) goes before
        the first attempts waiting. A change's read-back goes even while the
        run stops: it settles a request in flight (was the change made?),
        which the stop lets finish."""
        stopping = _never if context.read_back else self._stopping
        if stopping():
            return None
        readies = self.credentials.readies and not credential
        while True:
            if readies:
                await self.credentials.ready(self)
            slot = self.pace.take_now() or await self.pace.take(stopping, retry=not first)
            if slot is None:
                return None
            if stopping():
                self.pace.give_back(slot)
                return None
            if not readies or self.credentials.current():
                break
            # refused meanwhile (another request's answer): not sent with them, each refused too
            self.pace.give_back(slot)
        if not self.quota.counts(credential=credential):
            return slot
        # counted as it goes out (not while it queues for a slot); holds while the day's quota is spent
        try:
            counted = self.quota.take_now() or await self.quota.take(self._stopping)
        except BaseException:
            self.pace.give_back(slot)
            raise
        if not counted:
            self.pace.give_back(slot)
            return None
        return slot

    async def _paced_attempt(
        self,
        slot: Slot,
        req: Request,
        attempt: int,
        context: RequestContext,
        verify: Verify | None,
        expect_json: bool,
        credential: bool,
    ) -> Response | Failure:
        """One attempt in the slot just taken; the pacing gets the slot back
        with the answer's status and latency (what adaptive concurrency reads).
        With ``verify``, a change whose answer is held is read back meanwhile;
        a read-back held is sent once more alongside."""
        started = time.monotonic()
        learned = True  # the answer is this attempt's own (its latency is the MDM's)
        change = req.method not in READ_METHODS and not credential
        try:
            if change and (committed := self.in_flight.mark(context)) is not None:
                await committed
                started = time.monotonic()  # the latency is the MDM's, not the journal's commit
            if verify is not None and (held := self.pace.held_after()) is not None:
                result = await self.read_back.while_held(
                    req.what,
                    attempt,
                    verify,
                    context,
                    held,
                    lambda: self._attempt(req, attempt, expect_json, credential),
                )
            elif context.read_back and req.method in READ_METHODS and (held := self._hedge_after()) is not None:
                result, learned = await self._hedged(req, attempt, context, expect_json, held)
            else:
                result = await self._attempt(req, attempt, expect_json, credential)
        except BaseException:
            self.pace.give_back(slot, time.monotonic() - started)
            raise
        if isinstance(result, Failure):
            self.pace.no_answer(slot, time.monotonic() - started, timed_out=isinstance(result.error, RequestTimeout))
        elif result.verified or not learned:  # no answer came: nothing to learn about the MDM's latency
            self.pace.give_back(slot, time.monotonic() - started)
        else:
            self.pace.answered(slot, result.status, time.monotonic() - started)
        return result

    def _hedge_after(self) -> float | None:
        """Seconds after which a read-back still unanswered is sent once more;
        None: never (latency not known yet, or each call spends a day's quota)."""
        return None if self.quota.limited() else self.pace.held_after()

    async def _hedged(
        self,
        req: Request,
        attempt: int,
        context: RequestContext,
        expect_json: bool,
        held: float,
    ) -> tuple[Response | Failure, bool]:
        async def again() -> Response | None:
            # A held read-back sent once more: one attempt in a slot of its own,
            # never retried (a server that holds every read would otherwise be
            # asked the policy's tries for each of the first's); None when it
            # got no answer worth having (the held one may yet).
            try:
                slot = await self._turn(req, NO_CONTEXT, credential=False, first=False)
                if slot is None:
                    return None
                second = await self._paced_attempt(slot, req, attempt, NO_CONTEXT, None, expect_json, False)
            except BulkMDMError:
                return None
            return second if isinstance(second, Response) and self._settles(req, second) else None

        return await self.read_back.hedged(
            req.what,
            held,
            lambda: self._attempt(req, attempt, expect_json, False),
            again,
            lambda result: self._settles(req, result),
        )

    def _settles(self, req: Request, result: object) -> bool:
        """An answer that settles the attempt (not one worth retrying, nor none)."""
        return isinstance(result, Response) and not self.retry.retries(req.method, result.status)

    async def _attempt(self, req: Request, attempt: int, expect_json: bool, credential: bool) -> Response | Failure:
        """Send once (following same-origin redirects of a read); an answer or why there is none."""
        change = req.method not in READ_METHODS
        wire = req
        for _hop in range(MAX_REDIRECTS + 1):
            self.requests_sent += 1
            if change:
                self.mutating_sent += 1
            try:
                answer = await self.transport.send(wire)
            except TransportError as exc:
                exc.attempts = attempt
                return self._failed(req, wire.url, exc, change=change, credential=credential)
            self.reach.answer(change=change, credential=credential)
            if answer.status not in REDIRECTS:
                return self._answer(req, answer, attempt, expect_json, credential)
            target = self._redirect_target(req, wire.url, answer, attempt, credential)
            wire = replace(wire, url=target)
        return Failure(
            RedirectRefused(
                f"{req.what} was redirected more than {MAX_REDIRECTS} times; check --url", attempts=attempt
            ),
            ambiguous=False,
        )

    def _failed(self, req: Request, url: str, exc: TransportError, *, change: bool, credential: bool) -> Failure:
        if isinstance(exc, BadAnswer):
            return Failure(exc, ambiguous=change)
        if isinstance(exc, TLSFailed):
            return Failure(exc, ambiguous=False, final=True)
        self.reach.no_answer(exc, urlsplit(url).netloc, change=change, credential=credential)
        return Failure(exc, ambiguous=type(exc) is not ConnectError)

    def _redirect_target(self, req: Request, url: str, answer: Answer, attempt: int, credential: bool) -> str:
        """Where a redirect may be followed to; raises RedirectRefused otherwise."""
        location = answer.headers.get("Location", "").strip()
        target = urljoin(url, location) if location else ""
        where = shown(target) if target else "nowhere"
        if credential or req.method not in READ_METHODS:
            why = "a credential request is never redirected" if credential else "a change is never redirected"
        elif not target or origin(target) != origin(url):
            why = "it leads away from the MDM's address"
        else:
            return target
        raise RedirectRefused(
            f"the MDM answered {req.what} with HTTP {answer.status}, a redirect to {where}, which was not followed "
            f"({why}); check --url (the MDM's own address, https:// if it uses TLS)",
            attempts=attempt,
            status=answer.status,
        )

    def _answer(self, req: Request, answer: Answer, attempt: int, expect_json: bool, credential: bool) -> Response:
        status = answer.status
        content_type = answer.headers.get("Content-Type", "")
        try:
            body, is_json = _decode(answer.body, content_type)
        except RecursionError:
            raise BadAnswer(
                f"the MDM's answer to {req.what} is JSON nested too deep to read", attempts=attempt, status=status
            ) from None
        if 200 <= status < 300:
            if expect_json and not is_json:
                raise BadAnswer(_not_json(req, status, content_type, body), attempts=attempt, status=status)
            if not credential:
                self.reach.answered_as_the_mdm()
        return Response(status, body, answer.headers, attempt)

    def _retry_wait(self, slot: Slot, req: Request, resp: Response, state: RetryState) -> tuple[float | None, str]:
        """Seconds to wait before the next attempt, or None: this answer is final (and why, if early)."""
        policy = self.retry
        tries = state.throttled if resp.status == 429 else state.failures
        if not policy.retries(req.method, resp.status) or tries >= policy.attempts or self._stopping():
            return None, ""
        retry_after = parse_retry_after(resp.headers.get("Retry-After"), date=resp.headers.get("Date"))
        if retry_after is not None and retry_after > policy.max_wait:
            return None, (
                f"the MDM asked to wait {_duration(retry_after)}, longer than the "
                f"{_duration(policy.max_wait)} bulkmdm waits"
            )
        if resp.status != 429:
            return (retry_after if retry_after is not None else policy.backoff(tries)), ""
        if retry_after is None and policy.throttle_wait is not None:
            if state.waited_window:
                raise QuotaExhausted(
                    f"the MDM still answers {req.what} with 429 after a whole {_duration(policy.throttle_wait)} "
                    "wait: its API quota for the day seems spent; run the same command after it resets to continue "
                    "(or add --wait-for-quota to hold until then)",
                    attempts=state.attempt,
                    status=429,
                )
            retry_after = policy.throttle_wait
        # this request waits either way; whether the 429 is evidence of a limit
        # (a pause for every worker) is the pacing's business
        self.pace.throttled(slot, retry_after)
        return (retry_after if retry_after is not None else policy.backoff(tries) / 4), ""

    async def _after_failure(
        self,
        req: Request,
        failure: Failure,
        state: RetryState,
        change: bool,
        verify: Verify | None,
        context: RequestContext,
    ) -> Response | None:
        """Raise, settle (a verified change), or None: worth another attempt."""
        error = failure.error
        self.reach.check(error, reached=state.reached)
        if failure.final or isinstance(error, (BadAnswer, RedirectRefused)):
            raise error  # the same server will answer the same way
        if failure.ambiguous and change:
            settled = await self.read_back.after_no_answer(error, state.attempt, verify, context)
            if settled is not None:
                return settled
        # Until the MDM has answered once, a connection that fails is most
        # likely a wrong --url: two tries, not the whole retry budget.
        attempts = self.retry.attempts if self.reach.answered else min(2, self.retry.attempts)
        if self._stopping() and never_delivered(error, state.reached):
            raise _not_sent(req)
        if state.failures >= attempts or self._stopping():
            raise error
        return None


def _not_sent(req: Request) -> NotSent:
    return NotSent(f"{req.what} was not sent: the run was stopping")


def _give_up(last: Response | TransportError | None, req: Request, reached: bool) -> Response:
    """The run is stopping: the last attempt's answer is the row's answer
    (a 429 did nothing: the row was not run; nor did connections never made)."""
    if (
        last is None
        or (isinstance(last, Response) and last.status == 429)
        or (isinstance(last, TransportError) and never_delivered(last, reached))
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


def _not_json(req: Request, status: int, content_type: str, body: str) -> str:
    kind = "an HTML page" if body.lstrip()[:1] == "<" or "html" in content_type.casefold() else "text that is not JSON"
    return (
        f"the MDM answered {req.what} with {kind} (HTTP {status}), not the JSON it sends: a login page or a "
        "proxy in the way? Check --url and the network"
    )


def _duration(seconds: float) -> str:
    if seconds == float("inf") or seconds > 10 * 365 * 86400:
        return "for years"
    if seconds >= 3600:
        return f"{seconds / 3600:.0f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:g} s"
