"""The HTTP boundary against a real loopback loopback: retries, Retry-After,
ambiguous requests, rate pacing, and aiohttp errors mapped to our tree."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, UTC
from email.utils import format_datetime

import pytest
from aiohttp import web

from bulkmdm.errors import AmbiguousError, AuthError, ConnectError, TransportError, UsageError
from bulkmdm.limits import READ_BACK, ConcurrencyLimit, RateController, Slot, parse_rate
from bulkmdm.retry import RetryPolicy, parse_retry_after
from bulkmdm.client import BasicAuth, Client, RequestContext, Verify

FAST = RetryPolicy(attempts=4, base=0.01, cap=0.05)


def scripted(answers: list[Callable[[web.Request], web.StreamResponse]], hits: list[web.Request]) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        hits.append(request)
        answer = answers[min(len(hits), len(answers)) - 1]
        result = answer(request)
        if asyncio.iscoroutine(result):
            result = await result
        return result

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def test_retries_503_then_succeeds(loopback) -> None:  # type: ignore[no-untyped-def]
    hits: list[web.Request] = []
    url = await loopback(
        scripted([lambda r: web.json_response({}, status=503), lambda r: web.json_response([1])], hits)
    )
    async with Client(url, retry=FAST) as client:
        resp = await client.request("POST", "x", json={"a": 1})
    assert resp.status == 200 and resp.body == [1] and resp.attempts == 2
    assert len(hits) == 2


async def test_final_4xx_is_not_retried(loopback) -> None:  # type: ignore[no-untyped-def]
    hits: list[web.Request] = []
    url = await loopback(scripted([lambda r: web.json_response({"message": "nope"}, status=400)], hits))
    async with Client(url, retry=FAST) as client:
        resp = await client.request("GET", "x")
    assert resp.status == 400 and len(hits) == 1


async def test_401_is_auth_error_and_credentials_never_in_message(loopback) -> None:  # type: ignore[no-untyped-def]
    hits: list[web.Request] = []
    url = await loopback(scripted([lambda r: web.json_response({}, status=401)], hits))
    async with Client(url, auth=BasicAuth("admin", "s3cr3t-pw"), retry=FAST) as client:
        with pytest.raises(AuthError) as info:
            await client.request("GET", "x")
    assert "s3cr3t" not in str(info.value) and "s3cr3t" not in repr(client.auth)
    assert hits[0].headers["Authorization"].startswith("Basic ")


async def test_retry_after_seconds_is_honoured(loopback) -> None:  # type: ignore[no-untyped-def]
    hits: list[web.Request] = []
    url = await loopback(
        scripted(
            [
                lambda r: web.json_response({}, status=429, headers={"Retry-After": "1"}),
                lambda r: web.json_response({}),
            ],
            hits,
        )
    )
    limiter = RateController(rate=None)
    async with Client(url, limiter=limiter, retry=FAST) as client:
        t0 = time.monotonic()
        resp = await client.request("GET", "x")
        waited = time.monotonic() - t0
    assert resp.ok and waited >= 0.95
    assert limiter.stats.throttled == 1


def test_retry_after_http_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    header = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(30)
    assert parse_retry_after("7") == 7
    assert parse_retry_after("soon") is None


async def test_timeout_on_post_is_not_resent_without_verify(loopback) -> None:  # type: ignore[no-untyped-def]
    hits: list[web.Request] = []

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.json_response({})

    url = await loopback(scripted([slow], hits))  # type: ignore[list-item]
    async with Client(url, retry=FAST, timeout=0.2) as client:
        with pytest.raises(AmbiguousError):
            await client.request("POST", "x", json={})
    assert len(hits) == 1


async def test_timeout_on_post_is_verified_instead_of_resent(loopback) -> None:  # type: ignore[no-untyped-def]
    hits: list[web.Request] = []

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.json_response({})

    url = await loopback(scripted([slow], hits))  # type: ignore[list-item]
    checks = []

    async def verify(context: RequestContext) -> bool:
        checks.append(1)
        return True

    async with Client(url, retry=FAST, timeout=0.2) as client:
        resp = await client.request("POST", "x", json={}, verify=verify)
    assert resp.verified and len(hits) == 1 and checks == [1]


async def test_timeout_on_put_is_read_back_then_resent_when_not_in_place(loopback) -> None:  # type: ignore[no-untyped-def]
    hits: list[web.Request] = []

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.json_response({})

    url = await loopback(scripted([slow, lambda r: web.json_response({})], hits))  # type: ignore[list-item]
    checks = []

    async def verify(context: RequestContext) -> bool:
        checks.append(len(hits))
        return False

    async with Client(url, retry=FAST, timeout=0.2) as client:
        resp = await client.request("PUT", "x", json={}, verify=verify)
    assert resp.ok and not resp.verified and len(hits) == 2 and checks == [1]


async def test_connection_refused_is_connect_error() -> None:
    async with Client("http://127.0.0.1:9", retry=RetryPolicy(attempts=2, base=0.01, cap=0.01)) as client:
        with pytest.raises(ConnectError) as info:
            await client.request("POST", "x", json={})
    assert info.value.attempts == 2


async def test_strict_pacing_has_no_burst() -> None:
    limiter = RateController(rate=50, adaptive=False)
    stamps: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        stamps.append(time.monotonic())

    await asyncio.gather(*(one() for _ in range(25)))
    stamps.sort()
    # no 0.2 s window holds more than 0.2 * 50 requests (+1 for the edge)
    for i, start in enumerate(stamps):
        assert sum(1 for t in stamps[i:] if t < start + 0.2) <= 11
    assert stamps[-1] - stamps[0] >= 24 / 50 * 0.95


def test_parse_rate() -> None:
    assert parse_rate("100/min") == pytest.approx(100 / 60)
    assert parse_rate("20/s") == 20
    assert parse_rate("5") == 5
    assert parse_rate("none") is None
    with pytest.raises(UsageError):
        parse_rate("fast")


def test_adaptive_rate_drops_on_429_and_recovers_below_ceiling() -> None:
    now = [0.0]
    limiter = RateController(rate=100, ceiling=100, clock=lambda: now[0])
    for _ in range(200):  # two windows of answers, none refused
        now[0] += 0.01
        limiter.release(Slot(now[0]), 200)
    for _ in range(6):  # (a few 429s after none are what the background explains)
        limiter.release(Slot(now[0]), 429)
        limiter.throttled(Slot(now[0]), None)
    assert limiter.rate is not None and limiter.rate < 100
    for _ in range(2000):  # twenty seconds at the new rate
        now[0] += 0.01
        limiter.release(Slot(now[0]), 200)
    assert limiter.rate == 100


async def test_an_answer_slower_than_the_measuring_window_is_counted_safely() -> None:
    """A success whose request was sent long ago (a slow loopback) must not
    empty the controller's window and crash the run."""
    limiter = RateController(rate=20, ceiling=40)
    slot = await limiter.acquire()
    assert slot is not None
    old = Slot(slot.sent - 10.0, slot.number)
    limiter.release(old, 200)
    limiter.release(old, 200)
    assert limiter.rate is not None


async def test_a_retry_stops_waiting_for_its_slot_when_the_run_stops() -> None:
    limiter = RateController(rate=1, adaptive=False)
    limiter.throttled(Slot(asyncio.get_running_loop().time()), 30.0)  # everyone held for 30 s
    stop = False

    def stopping() -> bool:
        return stop

    task = asyncio.ensure_future(limiter.acquire(stopping))
    await asyncio.sleep(0.1)
    stop = True
    assert await asyncio.wait_for(task, 2) is None


def test_json_with_a_byte_order_mark_is_json() -> None:
    from bulkmdm.client import _decode

    assert _decode(b'\xef\xbb\xbf[{"id": 1}]', "application/json; charset=utf-8")[0] == [{"id": 1}]


async def _warmed(client: Client) -> None:
    """Enough quick answers that adaptive concurrency knows the MDM's latency."""
    for _ in range(30):
        assert (await client.request("GET", "quick")).ok
    assert client.limiter.held_after() is not None


def _held_change(done: list[str], *, work_first: bool, hold: float) -> web.Application:
    """Reads answer at once; a change is held ``hold`` seconds, after its
    work (``work_first``) or before it (a queue), as servers do."""

    async def quick(request: web.Request) -> web.Response:
        return web.json_response({"done": list(done)})

    async def change(request: web.Request) -> web.Response:
        if work_first:
            done.append(request.path)
        await asyncio.sleep(hold)
        if not work_first:
            done.append(request.path)
        return web.json_response({"id": 1}, status=201)

    app = web.Application()
    app.router.add_get("/quick", quick)
    app.router.add_post("/change", change)
    return app


def _adaptive() -> RateController:
    return RateController(rate=None, concurrency=ConcurrencyLimit(initial=8, maximum=32))


async def test_a_held_change_is_read_back_and_confirmed_without_its_answer(loopback) -> None:  # type: ignore[no-untyped-def]
    """The MDM did the change but holds its answer 3 s, where answers take
    milliseconds: after READ_BACK the change is read back, shown in place,
    and confirmed, without waiting out the hold or sending it again."""
    done: list[str] = []
    url = await loopback(_held_change(done, work_first=True, hold=3.0))
    reads: list[bool] = []

    async def verify(context: RequestContext) -> bool:
        reads.append("/change" in done)
        return reads[-1]

    async with Client(url, limiter=_adaptive(), retry=FAST) as client:
        await _warmed(client)
        t0 = time.monotonic()
        resp = await client.request("POST", "change", json={}, verify=verify)
        took = time.monotonic() - t0
        sent = client.mutating_sent
    assert resp.verified and resp.ok
    assert reads == [True] and sent == 1 and done == ["/change"]
    assert READ_BACK * 0.9 <= took < 1.5, took
    assert client.limiter.concurrency is not None and client.limiter.concurrency.in_flight == 0


async def test_a_held_change_not_yet_in_place_is_waited_for_not_sent_again(loopback) -> None:  # type: ignore[no-untyped-def]
    """Held before the work (a queue): the read-back shows nothing, so the
    answer is waited for as ever, and the change is sent once."""
    done: list[str] = []
    url = await loopback(_held_change(done, work_first=False, hold=1.2))
    calls: list[str] = []

    async def verify(context: RequestContext) -> bool:
        calls.append("read")
        return "/change" in done

    async def unreadable(context: RequestContext) -> bool | None:
        calls.append("unreadable")
        raise ConnectError("the read-back failed too")

    async with Client(url, limiter=_adaptive(), retry=FAST) as client:
        await _warmed(client)
        for check in (verify, unreadable):
            t0 = time.monotonic()
            resp = await client.request("POST", "change", json={}, verify=check)
            took = time.monotonic() - t0
            assert resp.status == 201 and not resp.verified
            assert 1.1 <= took < 2.5, took
        sent = client.mutating_sent
    assert calls == ["read", "unreadable"] and sent == 2 and done == ["/change", "/change"]


async def test_a_held_change_is_not_read_back_when_asked_not_to(loopback) -> None:  # type: ignore[no-untyped-def]
    """A read-back worth many requests (a bulk command's devices) is left to
    a lost answer: a merely held one is waited for."""
    done: list[str] = []
    url = await loopback(_held_change(done, work_first=True, hold=1.0))
    calls: list[str] = []

    async def verify(context: RequestContext) -> bool:
        calls.append("read")
        return True

    async with Client(url, limiter=_adaptive(), retry=FAST) as client:
        await _warmed(client)
        resp = await client.request("POST", "change", json={}, verify=verify, read_back_held=False)
    assert resp.status == 201 and not resp.verified and calls == []


async def test_a_row_cancelled_as_its_held_change_is_confirmed_stays_cancelled(loopback) -> None:  # type: ignore[no-untyped-def]
    """The read-back gives the attempt up by cancelling it; a cancellation of
    the row's own at the same moment (a second Ctrl-C) is not swallowed as
    that read-back's: the request ends cancelled, and no task is left."""
    done: list[str] = []
    url = await loopback(_held_change(done, work_first=True, hold=3.0))
    request: list[asyncio.Task[object]] = []

    async def verify(context: RequestContext) -> bool:
        asyncio.get_running_loop().call_soon(request[0].cancel)  # the stop, just before the confirmation
        return True

    async with Client(url, limiter=_adaptive(), retry=FAST) as client:
        await _warmed(client)
        request.append(asyncio.ensure_future(client.request("POST", "change", json={}, verify=verify)))
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(request[0]), 5)
        assert request[0].cancelled()
        assert client.limiter.concurrency is not None and client.limiter.concurrency.in_flight == 0
    assert done == ["/change"]


def _read_back_held(
    state: dict[str, int],
    *,
    held_reads: int = 0,
    hold: float = 0.0,
    then: int = 200,
    check: Callable[[web.Request], Awaitable[web.Response]] | None = None,
) -> web.Application:
    """A change whose connection drops after its work (so it is read back);
    the first ``held_reads`` read-backs are held ``hold`` seconds, the rest
    answer at once with ``then`` (or as ``check`` answers them)."""

    async def quick(request: web.Request) -> web.Response:
        return web.json_response({})

    async def change(request: web.Request) -> web.Response:
        state["changes"] += 1
        assert request.transport is not None
        request.transport.abort()  # done, and no answer
        raise asyncio.CancelledError

    async def held(request: web.Request) -> web.Response:
        state["reads"] += 1
        if state["reads"] <= held_reads:
            await asyncio.sleep(hold)
        elif then != 200:
            return web.json_response({}, status=then)
        return web.json_response({"done": state["changes"] > 0})

    app = web.Application()
    app.router.add_get("/quick", quick)
    app.router.add_get("/check", check or held)
    app.router.add_post("/change", change)
    return app


def _checker(client: Client) -> Verify:
    async def verify(context: RequestContext) -> bool | None:
        resp = await client.request("GET", "check", context=context)
        return bool(resp.body["done"]) if resp.ok else None

    return verify


async def test_a_held_read_back_is_sent_once_more_and_the_first_answer_taken(loopback) -> None:  # type: ignore[no-untyped-def]
    """A read-back (after a dropped connection) held 3 s where answers take
    milliseconds is sent once more after READ_BACK: the second answer
    confirms the change; the change itself is sent once, and the held read
    is given up with its slot."""
    state = {"changes": 0, "reads": 0}
    url = await loopback(_read_back_held(state, held_reads=1, hold=3.0))
    async with Client(url, limiter=_adaptive(), retry=FAST) as client:
        await _warmed(client)
        t0 = time.monotonic()
        resp = await client.request("POST", "change", json={}, verify=_checker(client))
        took = time.monotonic() - t0
        assert client.limiter.concurrency is not None and client.limiter.concurrency.in_flight == 0
    assert resp.verified and state == {"changes": 1, "reads": 2}
    assert READ_BACK * 0.9 <= took < 1.5, took


async def test_a_held_read_back_whose_second_sending_is_refused_is_waited_for(loopback) -> None:  # type: ignore[no-untyped-def]
    """The second sending answered 503: the held read still answers, and
    decides. The second is one attempt, never retried: a server that holds
    every read is not asked the policy's tries for each held one."""
    state = {"changes": 0, "reads": 0}
    url = await loopback(_read_back_held(state, held_reads=1, hold=1.2, then=503))
    async with Client(url, limiter=_adaptive(), retry=FAST) as client:
        await _warmed(client)
        t0 = time.monotonic()
        resp = await client.request("POST", "change", json={}, verify=_checker(client))
        took = time.monotonic() - t0
    assert resp.verified and state["changes"] == 1
    assert state["reads"] == 2  # the held one, and the second sending, once
    assert 1.1 <= took < 2.5, took


async def test_a_held_read_back_that_then_fails_leaves_the_second_sending_to_answer(loopback) -> None:  # type: ignore[no-untyped-def]
    """The held read's connection drops while the second sending is on its
    way: the second's answer is taken (not a third read after a backoff)."""
    state = {"changes": 0, "reads": 0}

    async def check(request: web.Request) -> web.Response:
        state["reads"] += 1
        if state["reads"] == 1:  # held, then dropped
            await asyncio.sleep(READ_BACK + 0.3)
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        await asyncio.sleep(0.6)  # the second: slower than the first's failure
        return web.json_response({"done": True})

    url = await loopback(_read_back_held(state, check=check))
    async with Client(url, limiter=_adaptive(), retry=FAST) as client:
        await _warmed(client)
        resp = await client.request("POST", "change", json={}, verify=_checker(client))
        assert client.limiter.concurrency is not None and client.limiter.concurrency.in_flight == 0
    assert resp.verified and state == {"changes": 1, "reads": 2}


async def test_a_server_holding_every_read_back_is_asked_twice_per_try_not_more(loopback) -> None:  # type: ignore[no-untyped-def]
    """Every read-back held past the client's timeout: each try of the read
    is sent once more, and that second sending is not itself retried, so
    the reads stay at two per try and the row ends within its tries."""
    state = {"changes": 0, "reads": 0}
    url = await loopback(_read_back_held(state, held_reads=100, hold=5.0))
    tries = RetryPolicy(attempts=2, base=0.01, cap=0.05)
    async with Client(url, limiter=_adaptive(), retry=tries, timeout=0.7) as client:
        await _warmed(client)
        t0 = time.monotonic()
        with pytest.raises(TransportError):
            await client.request("POST", "change", json={}, verify=_checker(client))
        took = time.monotonic() - t0
        assert client.limiter.concurrency is not None and client.limiter.concurrency.in_flight == 0
    assert state == {"changes": 1, "reads": 2 * tries.attempts}
    assert took < 4.0, took


async def test_reads_are_sent_once_more_only_as_read_backs_and_not_against_a_daily_quota(loopback) -> None:  # type: ignore[no-untyped-def]
    """A read that is not a change's read-back (a list may take long) is
    waited for; so is a read-back where each call spends a day's quota."""
    from bulkmdm.quota import DayQuota

    state = {"changes": 0, "reads": 0}
    url = await loopback(_read_back_held(state, held_reads=2, hold=1.0))
    async with Client(url, limiter=_adaptive(), retry=FAST, quota=DayQuota(2500)) as client:
        await _warmed(client)
        assert (await client.request("GET", "check")).ok
        assert state["reads"] == 1
        resp = await client.request("POST", "change", json={}, verify=_checker(client))
    assert resp.verified and state == {"changes": 1, "reads": 2}


async def test_a_stopping_run_starts_no_read_back(loopback) -> None:  # type: ignore[no-untyped-def]
    """Once the run is stopping, no new request starts: a held change's
    answer is waited for (it says what happened), not read back."""
    done: list[str] = []
    url = await loopback(_held_change(done, work_first=True, hold=1.0))
    stopping = [False]
    calls: list[str] = []

    async def verify(context: RequestContext) -> bool:
        calls.append("read")
        return True

    async with Client(url, limiter=_adaptive(), retry=FAST, stopping=lambda: stopping[0]) as client:
        await _warmed(client)
        asyncio.get_running_loop().call_later(0.1, stopping.__setitem__, 0, True)
        resp = await client.request("POST", "change", json={}, verify=verify)
    assert resp.status == 201 and not resp.verified and calls == []


def test_retry_after_date_is_measured_against_the_answers_date() -> None:
    ours = datetime(2026, 1, 1, 12, tzinfo=UTC)
    for skew in (timedelta(hours=1), -timedelta(hours=1)):
        server = ours + skew
        date = format_datetime(server, usegmt=True)
        retry_after = format_datetime(server + timedelta(seconds=2), usegmt=True)
        assert parse_retry_after(retry_after, date=date, now=ours) == pytest.approx(2)
    # without a readable Date, our own clock is all there is
    later = format_datetime(ours + timedelta(seconds=5), usegmt=True)
    assert parse_retry_after(later, date="yesterday", now=ours) == pytest.approx(5)


@pytest.mark.parametrize("skew", [timedelta(hours=1), -timedelta(hours=1)])
async def test_a_retry_after_date_from_a_skewed_server_waits_what_it_asks(loopback, skew: timedelta) -> None:  # type: ignore[no-untyped-def]
    """A server an hour ahead is not "asking for an hour"; one an hour behind
    does not have its retries sent at once."""
    hits: list[web.Request] = []

    def throttled(request: web.Request) -> web.Response:
        server = datetime.now(UTC) + skew
        headers = {
            "Date": format_datetime(server, usegmt=True),
            "Retry-After": format_datetime(server + timedelta(seconds=1), usegmt=True),
        }
        return web.json_response({}, status=429, headers=headers)

    url = await loopback(scripted([throttled, lambda r: web.json_response({})], hits))
    async with Client(url, retry=FAST) as client:
        t0 = time.monotonic()
        resp = await client.request("GET", "x")
        waited = time.monotonic() - t0
    assert resp.ok and len(hits) == 2
    assert 0.5 <= waited < 5


async def test_a_connection_never_made_is_not_ambiguous() -> None:
    """A connect timeout says the request never left: a POST without a
    read-back fails as "could not connect", not as "may have been applied"."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    # fill the accept queue: the kernel then leaves further handshakes unanswered
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        async with Client(f"http://127.0.0.1:{port}", retry=FAST, timeout=5, connect_timeout=0.2) as client:
            t0 = time.monotonic()
            with pytest.raises(ConnectError) as info:
                await client.request("POST", "x", json={})
        assert not isinstance(info.value, AmbiguousError)
        assert "no connection within 0.2 s" in str(info.value)
        assert time.monotonic() - t0 < 3
    finally:
        for filler in fillers:
            filler.close()
        server.close()


def test_a_url_on_the_last_origin_is_parsed_as_yarl_parses_it() -> None:
    """The transport puts a plain path on the last origin as it is, and
    parses anything else afresh: either way the URL is the one yarl (and so
    aiohttp) makes of the text."""
    from yarl import URL

    from bulkmdm.transport import AiohttpTransport

    transport = AiohttpTransport()
    base = "http://127.0.0.1:844"
    urls = [
        f"{base}/api/devices/12/sendmessage",  # parsed whole: no origin yet
        f"{base}/api/devices/12/sendmessage",
        f"{base}/api/v1.0/users/a@b.se/tags;x=1,(y)!$'*+&=:~",
        f"{base}/api/devices/C02X%2fY/lock",  # an escape: requoted by yarl
        f"{base}/api/devices/C02X%2FY/lock",
        f"{base}/api/a b/é",  # quoted by yarl
        f"{base}/api/./devices/../users",  # dot segments: removed by yarl
        f"{base}/api/devices?serialNumber=C02X",  # a query
        f"{base}/api/devices#top",
        f"{base}5/api/devices",  # another port that starts like the origin
        "http://user:secret@127.0.0.1:844/api/devices",
        "https://mdm.example/api/devices",
        f"{base}/api/devices/12",  # back on the first origin
        f"{base}/",
    ]
    for url in urls:
        made = transport._url(url)
        assert transport._prefix  # an origin kept: the plain paths after the first are put on it
        assert isinstance(made, URL) and str(made) == str(URL(url)) and made == URL(url), url
    assert transport._url("http://[::1") == "http://[::1"  # left to aiohttp to refuse, as ever
