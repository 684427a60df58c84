"""Each step of the request path alone, on the in-memory transport, in fake
loop time (``looptime``): waits of seconds take milliseconds."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from bulkmdm.client import Client, RequestContext
from bulkmdm.errors import (
    AmbiguousError,
    AuthError,
    BulkMDMError,
    ConnectError,
    ConnectionDropped,
    QuotaExhausted,
    RequestTimeout,
    TargetGone,
    Unreachable,
)
from bulkmdm.limits import ConcurrencyLimit, RateController, Slot
from bulkmdm.providers.base import read_back
from bulkmdm.quota import DayQuota
from bulkmdm.retry import FIRST, RetryPolicy
from bulkmdm.steps.credentials import Auth
from bulkmdm.steps.reachability import UNREACHABLE_AFTER
from bulkmdm.transport import Answer, MemoryTransport, Request, json_answer

FAST = RetryPolicy(attempts=4, base=0.01, cap=0.05)
URL = "https://mdm.example"

Handler = Callable[[Request], Awaitable[Answer]]


def scripted(*answers: Answer | BaseException) -> tuple[MemoryTransport, list[Request]]:
    """A transport answering each request with the next of ``answers`` (the last repeats)."""
    sent: list[Request] = []

    async def handler(request: Request) -> Answer:
        sent.append(request)
        answer = answers[min(len(sent), len(answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    return MemoryTransport(handler), sent


def client(transport: MemoryTransport, **kw: Any) -> Client:
    kw.setdefault("retry", FAST)
    return Client(URL, transport=transport, **kw)


# -- the retry state ---------------------------------------------------------------


def test_retry_state_is_a_value_with_its_history() -> None:
    after = FIRST.increment(503).increment(429).increment("ConnectionDropped", reached=True)
    assert FIRST.attempt == 0 and FIRST.history == ()
    assert (after.attempt, after.throttled, after.failures, after.reached) == (3, 1, 2, True)
    assert after.history == (503, 429, "ConnectionDropped")
    assert after.renewing().attempt == 3 and after.renewing().renewed
    assert after.new_day().attempt == 0 and after.new_day().reached
    with pytest.raises(AttributeError):
        after.attempt = 1  # type: ignore[misc]


# -- the transport ------------------------------------------------------------------


@pytest.mark.looptime
async def test_memory_transport_without_an_answer_is_a_timeout() -> None:
    async def silent(request: Request) -> Answer:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RequestTimeout):
        await MemoryTransport(silent, timeout=30).send(Request("GET", URL))
    assert loop.time() - started == pytest.approx(30)


# -- credentials ------------------------------------------------------------------


class _Renewing(Auth):
    def __init__(self) -> None:
        self.token = "one"
        self.renewals: list[Mapping[str, str]] = []

    def headers(self) -> Mapping[str, str]:
        return {"Authorization": self.token}

    async def renew(self, client: Client, sent: Mapping[str, str]) -> bool:
        self.renewals.append(dict(sent))
        self.token = "two"
        return True


async def test_credentials_renew_once_told_what_was_refused_then_stop() -> None:
    auth = _Renewing()
    transport, sent = scripted(json_answer({}, 401), json_answer([1]))
    async with client(transport, auth=auth) as c:
        resp = await c.request("GET", "x")
    assert resp.ok and resp.attempts == 1  # a renewal is not one more attempt
    assert auth.renewals == [{"Authorization": "one"}]
    assert [r.headers["Authorization"] for r in sent if r.headers] == ["one", "two"]
    transport, sent = scripted(json_answer({}, 401))
    async with client(transport, auth=_Renewing(), credential_hint="check BULKMDM_TOKEN") as c:
        with pytest.raises(AuthError, match="check BULKMDM_TOKEN"):
            await c.request("GET", "x")
    assert len(sent) == 2


class _Refusable(Auth):
    """A token the MDM may refuse: renewed in a tenth of a second; until then
    not current, and ``ready`` waits for the new one."""

    def __init__(self) -> None:
        self.token = "one"
        self.refused_token = ""

    def headers(self) -> Mapping[str, str]:
        return {"Authorization": self.token}

    def current(self) -> bool:
        return self.token != self.refused_token

    async def ready(self, client: Client) -> None:
        while not self.current():
            await asyncio.sleep(0.01)

    async def renew(self, client: Client, sent: Mapping[str, str]) -> bool:
        self.refused_token = sent["Authorization"]
        await asyncio.sleep(0.1)
        self.token = "two"
        return True


@pytest.mark.looptime
async def test_requests_waiting_for_their_turn_when_the_credentials_are_refused_wait_for_new_ones() -> None:
    async def handler(request: Request) -> Answer:
        token = (request.headers or {})["Authorization"]
        sent.append(token)
        await asyncio.sleep(0.01)
        return json_answer({}, 401 if token == "one" else 200)

    sent: list[str] = []
    one_at_a_time = RateController(rate=None, adaptive=False, concurrency=ConcurrencyLimit(initial=1, adaptive=False))
    async with client(MemoryTransport(handler), auth=_Refusable(), limiter=one_at_a_time) as c:
        answers = await asyncio.gather(*(c.request("GET", f"x/{n}") for n in range(3)))
    assert all(resp.ok for resp in answers)
    assert sent == ["one", "two", "two", "two"]  # the refused token went out once


async def test_a_credential_request_carries_no_credentials() -> None:
    transport, sent = scripted(json_answer({"access_token": "t"}))
    async with client(transport, auth=_Renewing(), headers={"X-Vendor": "1"}) as c:
        await c.request("POST", "https://accounts.example/token", data={"a": "b"}, credential=True)
        await c.request("GET", "x")
    assert not sent[0].headers
    assert sent[1].headers == {"X-Vendor": "1", "Authorization": "one"}


# -- pacing -------------------------------------------------------------------------


class _Told(RateController):
    """The controller, told of each 429 but holding no one for it: the
    controller's own pause reads the wall clock, which fake loop time does
    not move; what is tested here is the request path's side."""

    def __init__(self) -> None:
        super().__init__(rate=None, adaptive=False)
        self.told: list[float | None] = []

    def throttled(self, slot: Slot, retry_after: float | None) -> None:
        self.told.append(retry_after)


@pytest.mark.looptime
async def test_a_429_waits_its_retry_after_through_the_pacing() -> None:
    limiter = _Told()
    transport, sent = scripted(json_answer({}, 429, {"Retry-After": "5"}), json_answer([1]))
    loop = asyncio.get_running_loop()
    async with client(transport, limiter=limiter) as c:
        started = loop.time()
        resp = await c.request("GET", "x")
    assert resp.ok and len(sent) == 2
    assert loop.time() - started == pytest.approx(5, abs=0.01)
    assert limiter.told == [5.0]


@pytest.mark.looptime
@pytest.mark.parametrize("skew", [timedelta(hours=1), -timedelta(hours=1)])
async def test_a_retry_after_date_is_read_on_the_servers_clock(skew: timedelta) -> None:
    server = datetime.now(UTC) + skew
    headers = {
        "Date": format_datetime(server, usegmt=True),
        "Retry-After": format_datetime(server + timedelta(seconds=2), usegmt=True),
    }
    transport, sent = scripted(json_answer({}, 429, headers), json_answer([1]))
    loop = asyncio.get_running_loop()
    async with client(transport, limiter=_Told()) as c:
        started = loop.time()
        resp = await c.request("GET", "x")
    assert resp.ok and len(sent) == 2
    assert loop.time() - started == pytest.approx(2, abs=0.01)


@pytest.mark.looptime
async def test_a_wait_is_cut_short_when_the_run_stops() -> None:
    stop = [False]
    transport, sent = scripted(json_answer({}, 503, {"Retry-After": "60"}))
    loop = asyncio.get_running_loop()
    loop.call_later(1, stop.__setitem__, 0, True)
    async with client(transport, stopping=lambda: stop[0]) as c:
        started = loop.time()
        resp = await c.request("GET", "x")
    assert resp.status == 503 and len(sent) == 1
    assert loop.time() - started < 2


# -- the day's quota ----------------------------------------------------------------


async def test_every_attempt_counts_against_the_days_quota_token_requests_not() -> None:
    quota = DayQuota(3)
    transport, sent = scripted(json_answer({"access_token": "t"}), json_answer({}, 503), json_answer([1]))
    async with client(transport, quota=quota) as c:
        await c.request("POST", "https://accounts.example/token", credential=True)
        assert quota.used == 0
        assert (await c.request("GET", "x")).ok
        assert quota.used == 2
        await c.request("GET", "y")
        with pytest.raises(QuotaExhausted):
            await c.request("GET", "z")
    assert len(sent) == 4  # the refused one never went out


# -- the in-flight mark -------------------------------------------------------------


async def test_the_batch_is_marked_in_flight_before_its_change_goes_out_not_before_a_read() -> None:
    order: list[str] = []

    async def handler(request: Request) -> Answer:
        order.append(f"sent {request.method}")
        return json_answer({})

    async def committed() -> None:
        order.append("committed")

    def mark() -> Awaitable[None]:
        order.append("marked")
        return committed()

    context = RequestContext(before_change=mark)
    async with client(MemoryTransport(handler)) as c:
        await c.request("GET", "x", context=context)
        await c.request("POST", "x", json={}, context=context)
    assert order == ["sent GET", "marked", "committed", "sent POST"]


# -- the canary's turn --------------------------------------------------------------


async def test_the_canarys_turn_passes_when_a_request_waits_out_a_fault() -> None:
    turns: list[int] = []
    context = RequestContext(waiting_out=lambda: turns.append(1))
    transport, _ = scripted(json_answer([1]))
    async with client(transport) as c:
        await c.request("GET", "x", context=context)
    assert turns == []
    transport, _ = scripted(json_answer({}, 503), ConnectionDropped("dropped"), json_answer([1]))
    async with client(transport) as c:
        await c.request("GET", "x", context=context)
    assert turns == [1, 1]


# -- read-back ----------------------------------------------------------------------


def _verify(
    state: list[bool | None], contexts: list[RequestContext]
) -> Callable[[RequestContext], Awaitable[bool | None]]:
    async def verify(context: RequestContext) -> bool | None:
        contexts.append(context)
        return state[0]

    return verify


#: every method of a change: none is resent without a read-back, idempotent or not
CHANGES = ("POST", "PATCH", "PUT", "DELETE")
#: what leaves a change in doubt: no answer, or a gateway's
LOST = (ConnectionDropped("dropped"), RequestTimeout("no answer"), json_answer({}, 504), json_answer({}, 502))


def _reading(
    *changes: Answer | BaseException, shown: list[bool | None]
) -> tuple[MemoryTransport, list[Request], Callable[[Client], Callable[[RequestContext], Awaitable[bool | None]]]]:
    """A transport answering each change with the next of ``changes`` and
    every GET (a read-back) with ``shown[0]``; the requests in the order
    they went out; and a ``verify`` that reads back through the client."""
    sent: list[Request] = []
    answers = iter(changes)

    async def handler(request: Request) -> Answer:
        sent.append(request)
        if request.method == "GET":
            return json_answer({"shown": shown[0]})
        answer = next(answers)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def verify(c: Client) -> Callable[[RequestContext], Awaitable[bool | None]]:
        async def read(context: RequestContext) -> bool | None:
            shows: bool | None = (await c.request("GET", "x", context=context)).body["shown"]
            return shows

        return read

    return MemoryTransport(handler), sent, verify


@pytest.mark.parametrize("method", CHANGES)
@pytest.mark.parametrize("lost", LOST)
async def test_a_change_that_may_have_been_made_is_read_back_not_resent(
    method: str, lost: Answer | BaseException
) -> None:
    contexts: list[RequestContext] = []
    transport, sent = scripted(lost, json_answer({}))
    async with client(transport) as c:
        resp = await c.request(method, "x", json={}, verify=_verify([True], contexts))
    assert resp.verified and len(sent) == 1
    assert [context.read_back for context in contexts] == [True]


@pytest.mark.parametrize("method", CHANGES)
@pytest.mark.parametrize("lost", LOST)
async def test_a_change_read_back_not_in_place_is_sent_again_after_each_read(
    method: str, lost: Answer | BaseException
) -> None:
    transport, sent, verify = _reading(lost, lost, json_answer({"id": 1}), shown=[False])
    async with client(transport) as c:
        resp = await c.request(method, "x", json={}, verify=verify(c))
    assert resp.ok and not resp.verified
    assert [r.method for r in sent] == [method, "GET", method, "GET", method]


@pytest.mark.parametrize("method", CHANGES)
@pytest.mark.parametrize("lost", [ConnectionDropped("dropped"), json_answer({}, 504)])
@pytest.mark.parametrize("readable", [False, True])
async def test_a_change_that_cannot_be_read_back_is_unknown_and_sent_once(
    method: str, lost: Answer | BaseException, readable: bool
) -> None:
    transport, sent, verify = _reading(lost, json_answer({}), shown=[None])
    async with client(transport) as c:
        with pytest.raises(AmbiguousError, match="not resent") as info:
            await c.request(method, "x", json={}, verify=verify(c) if readable else None)
    assert [r.method for r in sent] == [method, "GET"] if readable else [method]
    assert info.value.status == (504 if isinstance(lost, Answer) else None)


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
@pytest.mark.parametrize("answered", [404, 409])
async def test_a_refusal_of_a_change_sent_again_after_its_read_back_stands(method: str, answered: int) -> None:
    """Sent again only once a read-back showed it not in place: its 404 or
    409 is the MDM's word on that state, and is not read back again."""
    transport, sent, verify = _reading(
        ConnectionDropped("dropped"), json_answer({"message": "no"}, answered), shown=[False]
    )
    async with client(transport) as c:
        resp = await c.request(method, "x", json={}, verify=verify(c))
    assert (resp.status, resp.verified) == (answered, False)
    assert [r.method for r in sent] == [method, "GET", method]


@pytest.mark.parametrize("lost", [ConnectionDropped("dropped"), json_answer({}, 504)])
@pytest.mark.parametrize("missing", ["", "device SN1"])
async def test_a_change_whose_object_reads_back_404_fails_as_gone_only_where_that_proves_it(
    lost: Answer | BaseException, missing: str
) -> None:
    """A read-back of the object the change is made on (``missing`` names
    it) answered 404 proves it gone: :class:`TargetGone`, counting the
    change's attempts; a read whose 404 proves nothing leaves it unknown.
    Neither is sent again."""
    sent: list[str] = []

    async def handler(request: Request) -> Answer:
        sent.append(request.method)
        if request.method == "GET":
            return json_answer({"message": "Device 1 not found"}, 404)
        if isinstance(lost, BaseException):
            raise lost
        return lost

    async with client(MemoryTransport(handler)) as c:
        verify = read_back(
            lambda context: c.request("GET", "devices/1", context=context), lambda body: True, missing=missing
        )
        change = c.request("PUT", "devices/1", json={}, verify=verify)
        if missing:
            with pytest.raises(TargetGone, match="^Device SN1 no longer exists") as gone:
                await change
            assert (gone.value.status, gone.value.attempts) == (404, 1)
        else:
            with pytest.raises(AmbiguousError, match="could not tell"):
                await change
    assert sent == ["PUT", "GET"]


@pytest.mark.parametrize(("method", "credential"), [("GET", False), ("POST", True)])
async def test_a_read_or_a_credential_request_without_an_answer_is_simply_sent_again(
    method: str, credential: bool
) -> None:
    transport, sent = scripted(ConnectionDropped("dropped"), json_answer({"access_token": "t"}))
    async with client(transport) as c:
        resp = await c.request(method, "https://mdm.example/token", data={"a": "b"}, credential=credential)
    assert resp.ok and len(sent) == 2


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_503_and_429_to_a_change_are_not_done_and_resent(method: str) -> None:
    transport, sent = scripted(json_answer({}, 503), json_answer({}, 429), json_answer({"id": 1}))
    checks: list[RequestContext] = []
    async with client(transport) as c:
        resp = await c.request(method, "x", json={}, verify=_verify([True], checks))
    assert resp.ok and len(sent) == 3 and checks == []


@pytest.mark.parametrize(("first", "answered"), [(json_answer({}, 503), 404), (json_answer({}, 429), 409)])
async def test_a_refusal_after_an_answer_that_did_nothing_is_not_read_back(first: Answer, answered: int) -> None:
    checks: list[RequestContext] = []
    transport, sent = scripted(first, json_answer({}, answered))
    async with client(transport) as c:
        resp = await c.request("PUT", "x", json={}, verify=_verify([True], checks))
    assert (resp.status, resp.verified, len(sent), checks) == (answered, False, 2, [])


async def test_a_read_back_goes_out_while_the_run_stops() -> None:
    stop = [False]
    sent: list[Request] = []

    async def handler(request: Request) -> Answer:
        sent.append(request)
        if request.method == "POST":
            stop[0] = True  # the stop comes while the change is in flight
            raise ConnectionDropped("dropped")
        return json_answer({"done": True})

    async with client(MemoryTransport(handler), stopping=lambda: stop[0]) as c:

        async def verify(context: RequestContext) -> bool | None:
            return bool((await c.request("GET", "check", context=context)).body["done"])

        resp = await c.request("POST", "x", json={}, verify=verify)
        with pytest.raises(BulkMDMError):
            await c.request("GET", "other")  # a request of its own is not started
    assert resp.verified and [r.method for r in sent] == ["POST", "GET"]


# -- reachability -------------------------------------------------------------------


async def test_the_run_stops_once_the_mdm_that_answered_cannot_be_reached() -> None:
    halted: list[BulkMDMError] = []
    transport, _ = scripted(json_answer([1]), ConnectError("could not connect"))
    async with client(transport, halt=halted.append) as c:
        assert (await c.request("GET", "x")).ok
        for _ in range(UNREACHABLE_AFTER // 2):
            if halted:
                break
            with pytest.raises(ConnectError):
                await c.request("GET", "x")
    assert halted and isinstance(halted[0], Unreachable)


async def test_a_connection_never_made_before_any_answer_is_the_set_ups_error() -> None:
    halted: list[BulkMDMError] = []
    transport, sent = scripted(ConnectError("could not connect"))
    async with client(transport, halt=halted.append) as c:
        with pytest.raises(ConnectError):
            await c.request("POST", "x", json={})
    assert not halted and len(sent) == 2  # a wrong --url: two tries, not the whole budget


@pytest.mark.looptime
async def test_a_held_change_is_read_back_and_its_attempt_given_up_once_in_place() -> None:
    from bulkmdm.response import Response
    from bulkmdm.steps.readback import ReadBack

    read_back = ReadBack(lambda: False)
    loop = asyncio.get_running_loop()
    contexts: list[RequestContext] = []

    async def held() -> Response:
        await asyncio.sleep(60)  # the MDM holds the answer
        return Response(200, {})

    started = loop.time()
    resp = await read_back.while_held("POST /x", 1, _verify([True], contexts), RequestContext(), 2.0, held)
    read_back.close()
    assert isinstance(resp, Response) and resp.verified and resp.attempts == 1
    assert loop.time() - started == pytest.approx(2, abs=0.1)
    assert [context.read_back for context in contexts] == [True]


@pytest.mark.looptime
async def test_a_held_change_not_in_place_is_waited_for() -> None:
    from bulkmdm.response import Response
    from bulkmdm.steps.readback import ReadBack

    read_back = ReadBack(lambda: False)

    async def held() -> Response:
        await asyncio.sleep(10)
        return Response(201, {"id": 1})

    resp = await read_back.while_held("POST /x", 1, _verify([False], []), RequestContext(), 2.0, held)
    read_back.close()
    assert isinstance(resp, Response) and resp.status == 201 and not resp.verified


@pytest.mark.looptime
async def test_a_held_read_back_is_sent_once_more_and_the_first_answer_taken() -> None:
    from bulkmdm.response import Failure, Response
    from bulkmdm.steps.readback import ReadBack

    read_back = ReadBack(lambda: False)
    loop = asyncio.get_running_loop()
    seconds = iter([60.0, 0.01])

    async def send() -> Response | Failure:
        await asyncio.sleep(next(seconds))
        return Response(200, {"first": True})

    async def again() -> Response | None:
        await asyncio.sleep(next(seconds))
        return Response(200, {"second": True})

    started = loop.time()
    answer, own = await read_back.hedged("GET /check", 1.0, send, again, lambda r: isinstance(r, Response))
    assert isinstance(answer, Response) and answer.body == {"second": True} and not own
    assert loop.time() - started == pytest.approx(1.01, abs=0.05)
