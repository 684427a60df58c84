"""Pacing against real servers on 127.0.0.1: sporadic 429s do not collapse the
rate, a real limit is found and held, the requests in flight follow the
server's latency. Every server here is bounded (a few hundred requests, a few
seconds) and stops with its test; assertions are on counts and ratios with
wide margins, not on timings."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from aiohttp import web

from bulkmdm import limits
from bulkmdm.limits import (
    HELD_SHARE,
    MAX_CONCURRENCY,
    WORKERS_PER_SLOT,
    ConcurrencyLimit,
    RateController,
    _Test,
    for_run,
    parse_rate,
)
from bulkmdm.providers import get as provider
from bulkmdm.retry import RetryPolicy
from bulkmdm.sim.common import FAULT_MIX, Faults, SimServer, instrument
from bulkmdm.client import Client

RETRY = RetryPolicy(attempts=10, base=0.01, cap=0.05)


def _server(faults: Faults) -> SimServer:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/x", answer)
    return SimServer(instrument(app, faults))


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[SimServer]:
    with _server(request.param) as sim:
        yield sim


async def _drive(url: str, limiter: RateController, requests: int, workers: int) -> Counter[int]:
    """``requests`` GETs from ``workers`` tasks; the final status of each."""
    statuses: Counter[int] = Counter()
    queue = iter(range(requests))

    async def worker(client: Client) -> None:
        for _ in queue:
            statuses[(await client.request("GET", "/x")).status] += 1

    async with Client(url, limiter=limiter, retry=RETRY, timeout=10, connections=workers + 4) as client:
        await asyncio.wait_for(asyncio.gather(*(worker(client) for _ in range(workers))), 60)
    return statuses


@pytest.mark.parametrize("server", [Faults(throttle_rate=0.08, throttle_retry_after=1.0, seed=7)], indirect=True)
async def test_sporadic_429s_do_not_collapse_the_rate(server: SimServer) -> None:
    """429s at a steady share whatever the pace are noise: they pause only their
    own request, the rate is not ratcheted down (no death spiral)."""
    limiter = RateController(rate=40.0, window=1.0)
    statuses = await _drive(server.url, limiter, 600, 16)
    assert statuses == {200: 600}
    assert server.stats.throttled >= 20  # the noise was there
    # at most a couple of cuts were tried, and each was found not to be about our pace
    assert limiter.stats.cuts <= 3
    assert limiter.stats.cuts - limiter.stats.forgiven <= 1
    # the rate is not below where it started (it is lifted once it no longer binds)
    assert limiter.rate is None or limiter.rate >= 40.0


@pytest.mark.parametrize("server", [Faults(rate_limit=60)], indirect=True)
async def test_a_real_limit_is_found_and_held(server: SimServer) -> None:
    limiter = RateController(rate=20.0, window=1.0)
    statuses = await _drive(server.url, limiter, 360, 8)
    assert statuses == {200: 360}
    assert limiter.stats.cuts >= 1
    assert limiter.stats.limit is not None and 40 <= limiter.stats.limit <= 70
    assert limiter.rate is not None and limiter.rate <= 66
    # slow start overshoots once; after that the limit is held with few 429s
    assert server.stats.throttled <= 0.15 * server.stats.requests


@pytest.mark.parametrize("server", [Faults(latency=0.01)], indirect=True)
async def test_concurrency_grows_while_latency_stays_flat(server: SimServer) -> None:
    concurrency = ConcurrencyLimit(initial=2, maximum=64)
    statuses = await _drive(server.url, RateController(rate=None, concurrency=concurrency), 600, 48)
    assert statuses == {200: 600}
    assert concurrency.stats.highest >= 8
    assert concurrency.in_flight == 0


@pytest.mark.parametrize("server", [Faults(capacity_workers=2, service_seconds=0.02, queue_limit=100)], indirect=True)
async def test_concurrency_stays_gentle_on_a_small_server(server: SimServer) -> None:
    """2 workers x 20 ms and 48 tasks pushing: more than a few in flight only
    queue, so the limit stays near the server's size and the queue short."""
    concurrency = ConcurrencyLimit(initial=4, maximum=64)
    statuses = await _drive(server.url, RateController(rate=None, concurrency=concurrency), 400, 48)
    assert statuses == {200: 400}
    assert concurrency.stats.highest <= 12
    assert concurrency.limit <= 10
    assert concurrency.stats.shrinks >= 1
    # the median request waited a few service times at most (48 in flight: 23)
    median = server.stats.as_dict()["queue_wait_median"]
    assert median is not None and median <= 5 * 0.02
    assert concurrency.in_flight == 0


@pytest.mark.parametrize("server", [Faults(latency=0.005, error_rate=0.10, seed=3)], indirect=True)
async def test_503_noise_does_not_shrink_the_requests_in_flight(server: SimServer) -> None:
    concurrency = ConcurrencyLimit(initial=8, maximum=64)
    statuses = await _drive(server.url, RateController(rate=None, concurrency=concurrency), 600, 32)
    assert statuses == {200: 600}
    assert server.stats.faults >= 12
    # a window of ten answers holds three or four 503s now and then; a drop on
    # every window with two or more would be some twenty
    assert concurrency.stats.drops <= 6
    assert concurrency.limit >= 8


@pytest.mark.parametrize("server", [Faults(latency=0.005, slow_rate=0.15, slow_seconds=1.0, seed=5)], indirect=True)
async def test_held_replies_give_their_slots_up_to_three_times_the_limit(server: SimServer) -> None:
    """15% of the answers held 1 s by a 5-ms server: a held reply is not the
    server's queue, so it stops counting against the limit of 4, and more
    than 4 go out at once; but at most HELD_SHARE x 4 held ones do, on top of
    the 4 (what is in flight stays bounded)."""
    concurrency = ConcurrencyLimit(initial=4, maximum=4)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, concurrency.in_flight)
            await asyncio.sleep(0.005)

    watcher = asyncio.ensure_future(watch())
    try:
        statuses = await _drive(server.url, RateController(rate=None, concurrency=concurrency), 160, 48)
    finally:
        watcher.cancel()
    assert statuses == {200: 160}
    assert server.stats.faults >= 12
    assert 8 < peak <= (HELD_SHARE + 1) * 4, peak
    assert concurrency.in_flight == 0


@pytest.mark.parametrize(
    "server", [Faults(latency=0.005, **{**FAULT_MIX, "slow_seconds": 0.5}, seed=11)], indirect=True
)
async def test_the_fault_mix_finishes_and_every_slot_comes_back(server: SimServer) -> None:
    """503s, 429s, dropped connections, held replies: every GET ends 200 and
    no slot in flight is lost on any of those paths."""
    pacing = for_run(None, None, provider("duostation"))
    statuses = await _drive(server.url, pacing.rate, 400, 32)
    assert statuses == {200: 400}
    assert pacing.concurrency.in_flight == 0
    assert pacing.rate.stats.cuts - pacing.rate.stats.forgiven <= 1


def test_for_run_reads_the_vendor_and_the_flags() -> None:
    duo = for_run(None, None, provider("duostation"))
    assert duo.rate.rate == provider("duostation").default_rate
    assert duo.rate.ceiling is None  # no documented limit: no ceiling
    assert duo.concurrency.adaptive and duo.concurrency.maximum == MAX_CONCURRENCY
    # rows waiting out a Retry-After or a backoff hold a worker, not a slot in flight
    assert duo.workers == WORKERS_PER_SLOT * MAX_CONCURRENCY
    me = for_run(None, None, provider("manageengine"))
    assert me.rate.ceiling == pytest.approx(100 / 60)
    assert me.rate.window == getattr(provider("manageengine"), "rate_window", 1.0)
    assert me.concurrency.maximum < MAX_CONCURRENCY  # 100/min needs few in flight
    fixed = for_run("20/s", 5, provider("duostation"))
    assert fixed.rate.rate == fixed.rate.ceiling == 20
    assert not fixed.concurrency.adaptive and fixed.workers == 5
    unlimited = for_run("none", None, provider("duostation"))
    assert unlimited.rate.rate is None and not unlimited.notes
    # an explicit --rate past a documented limit wins, and says so (found
    # from outside: 20/s sent ManageEngine 101 calls in 5 s without a word)
    for flag in ("20/s", "none"):
        faster = for_run(flag, None, provider("manageengine"))
        assert faster.rate.ceiling == parse_rate(flag)
        assert faster.notes == (
            f"manageengine documents at most 100 calls a minute; --rate {flag} asks for more: "
            "where the MDM holds to it, its 429s will hold the run.",
        )
    slower = for_run("50/min", None, provider("manageengine"))
    assert slower.rate.rate == pytest.approx(50 / 60) and not slower.notes


def test_a_window_of_a_minute_measures_per_minute() -> None:
    """ManageEngine counts 100 calls a minute: a cut measured over a minute,
    not over the last second (which would drive the rate to its floor)."""
    limiter = RateController(rate=100 / 60, ceiling=100 / 60, window=60.0)
    for call in range(90):
        limiter._count(1.0 + call * 0.6, 1)  # 90 served in the minute
    limiter._count(61.0, 2)  # refused just after it
    limiter._cut(limiter._bucket(61.0))
    assert limiter.stats.limit == pytest.approx(90 / 60)
    assert limiter.rate is not None and limiter.rate >= 0.9 * 90 / 60 * 0.95


def test_a_test_in_a_runs_tail_does_not_measure_its_few_rows_as_a_limit() -> None:
    """A cut whose test saw a run's last rows (few requests, some 429s among
    them) shows nothing about the server's pace: what those few rows were
    served is not taken for the limit (it drove the rest of a run to 1 row/s)."""
    limiter = RateController(rate=None, window=1.0)
    limiter.rate = 900.0  # just cut from no limit
    now = time.monotonic()
    limiter._test = _Test(None, None, share=0.1, resume=now - 4.5, cut_bucket=limiter._bucket(now - 4.6))
    limiter._test.served, limiter._test.throttled = 8, 4  # a third refused, but only 12 answers in 4.5 s
    limiter._judge(now)
    assert limiter.rate is None or limiter.rate >= 900.0
    assert limiter.stats.noise <= 0.25


def test_a_share_no_noise_explains_is_never_forgiven() -> None:
    """Cut from no limit, then 8 of the next 20 answers 429 while the requests did
    not go at the cut's rate (the client short of CPU for a moment): that is
    not noise. Taking it for noise set the rate loose again and learned a
    noise of 25%, after which a real limit was overrun with 12% of the
    answers 429 (seen in a bench run)."""
    limiter = RateController(rate=None, window=1.0)
    limiter.rate = 45.0  # just cut
    now = time.monotonic()
    limiter._test = _Test(None, None, share=0.6, resume=now - 1.5, cut_bucket=limiter._bucket(now - 1.6))
    limiter._test.served, limiter._test.throttled = 12, 8  # 20 answers in 1.5 s at 45/s: not at its rate
    limiter._judge(now)
    assert limiter._test is None
    assert limiter.rate == 45.0
    assert limiter.stats.noise == 0.0 and limiter.stats.forgiven == 0


def test_a_forgiven_cut_past_a_measured_limit_keeps_that_limit() -> None:
    """Creeping just past a limit measured earlier (50/s) drew a 429, and the
    cut's test saw two more among 160 answers (requests bunched at the
    window's edge): forgiven, the rate goes back, but the limit measured
    before stays, so the climb goes on creeping instead of doubling through it."""
    limiter = RateController(rate=None, window=1.0)
    limiter.rate, limiter.stats.limit = 48.5, 50.0  # just cut from 50.4
    now = time.monotonic()
    limiter._test = _Test(50.4, 50.0, share=0.02, resume=now - 3.0, cut_bucket=limiter._bucket(now - 3.1))
    limiter._test.served, limiter._test.throttled = 158, 2
    limiter._judge(now)
    assert limiter.stats.forgiven == 1
    assert limiter.rate == 50.4 and limiter.stats.limit == 50.0


def test_one_429_after_a_cut_from_slow_start_is_noise() -> None:
    """Slow start at 80/s cut to 29/s on four 429s among twenty answers (5%
    noise does that now and then); one more among the 60 answers after the cut
    is that noise again, since under the limit measured nothing is refused:
    forgiven, back to 80/s (taken for a limit of 30/s, it held a 3,000-row
    job there for seven seconds). Only the run's first: after it, and after a
    cut from a known limit, one 429 is not enough to forgive a cut."""
    now = time.monotonic()
    slow_start = RateController(rate=None, window=1.0)
    slow_start.rate, slow_start.stats.limit = 29.1, 30.0
    slow_start._test = _Test(80.0, None, share=0.2, resume=now - 2.5, cut_bucket=slow_start._bucket(now - 2.6))
    slow_start._test.served, slow_start._test.throttled = 59, 1
    slow_start._judge(now)
    assert slow_start.stats.forgiven == 1 and slow_start.rate == 80.0 and slow_start.stats.limit is None
    # once only: the next cut from slow start takes two (a window still full after the cut refuses one)
    slow_start.rate, slow_start.stats.limit = 29.1, 30.0
    slow_start._test = _Test(80.0, None, share=0.2, resume=now - 2.5, cut_bucket=slow_start._bucket(now - 2.6))
    slow_start._test.served, slow_start._test.throttled = 59, 1
    slow_start._judge(now)
    assert slow_start.stats.forgiven == 1 and slow_start.rate == 29.1
    known = RateController(rate=None, window=1.0)
    known.rate, known.stats.limit = 48.5, 50.0
    known._test = _Test(51.0, 50.0, share=0.2, resume=now - 2.5, cut_bucket=known._bucket(now - 2.6))
    known._test.served, known._test.throttled = 59, 1
    known._judge(now)
    assert known.stats.forgiven == 0 and known.rate == 48.5


def test_a_cut_that_was_not_enough_is_measured_again() -> None:
    """The same share refused while the requests went at the new rate: the
    cut was not enough, and the rate goes under what was served since."""
    limiter = RateController(rate=None, window=1.0)
    limiter.rate = 60.0
    now = time.monotonic()
    limiter._test = _Test(None, None, share=0.3, resume=now - 1.0, cut_bucket=limiter._bucket(now - 1.1))
    limiter._test.served, limiter._test.throttled = 40, 20  # 60 answers in a second at 60/s
    limiter._judge(now)
    assert limiter.rate is not None and limiter.rate <= 40.0


def test_slow_start_takes_a_limit_overshot_but_not_two_429s_in_ten_for_one() -> None:
    """At 20/s a quarter window holds five answers: two 429s among the last ten
    are common 5% noise (and cost a pause and a three-second test at the run's
    lowest rate); a third of twenty refused at once is a limit overshot."""
    noisy = RateController(rate=20.0, window=1.0)
    index = noisy._bucket(100.0)
    served = (3, 2, 3, 2, 3, 3, 1, 1)  # a window at 20/s, two of its last five answers refused
    for bucket, count in zip(range(index - 7, index + 1), served, strict=True):
        for column in [1] * count + ([2] if bucket >= index - 1 else []):
            noisy._count(bucket / 8 + 0.001, column)
    assert noisy._span(index - 7, index) == (0, 18, 2)
    assert not noisy._overshot(index)
    overshot = RateController(rate=80.0, window=1.0)
    for bucket in range(index - 1, index + 1):  # the last quarter window at 80/s: 20 answers, 7 refused
        for column in [1] * 6 + [2] * 4 if bucket == index else [1] * 7 + [2] * 3:
            overshot._count(bucket / 8 + 0.001, column)
    assert overshot._overshot(index)


def test_429s_in_a_runs_tail_are_not_an_overshoot() -> None:
    """A run's last quarter second: 30 requests (most of them retries of
    rows refused before), 12 of them refused. Sent at a fifth of the pace the
    run had just kept up with few 429s, they are not our pace outrunning the
    server's (taken for one, they paused everyone for a second at the end of
    a faulty run); the same answers at the run's fastest pace are."""
    index = 1000

    def limiter(earlier_sent_per_bucket: int) -> RateController:
        rate = RateController(rate=None, window=1.0)
        for bucket in range(index - 9, index - 1):  # the window before: 5% refused
            for column in [0] * earlier_sent_per_bucket + [1] * 19 + [2]:
                rate._count(bucket / 8 + 0.001, column)
        for bucket in (index - 1, index):  # the last quarter window: 15 sent, 6 refused, each
            for column in [0] * 15 + [1] * 9 + [2] * 6:
                rate._count(bucket / 8 + 0.001, column)
        return rate

    assert not limiter(earlier_sent_per_bucket=80)._overshot(index)  # the tail of a run at 640/s
    assert limiter(earlier_sent_per_bucket=15)._overshot(index)  # as fast as ever: a limit


def test_slow_start_doubles_every_eighth_window_once_an_eighth_holds_enough_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Answered at once and at its pace, slow start from 20/s doubles every
    quarter window while a quarter holds few answers (a 60/s limit must show
    before the climb outruns it), then every eighth: 20/s to past 2,000/s in
    1.25 s instead of 1.75 s (a 20,000-row job's ramp was a quarter of it)."""
    clock = [100.0]
    monkeypatch.setattr(limits, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    limiter = RateController(rate=20.0, window=1.0)
    raised_at: dict[float, float] = {}

    def answer() -> None:  # (in a context of its own: the send time it sets stays there)
        limiter._took(clock[0], limiter._generation)
        limiter._served()

    while limiter.rate is not None and limiter.rate < 2000 and clock[0] < 110:
        contextvars.copy_context().run(answer)
        raised_at.setdefault(limiter.rate, clock[0] - 100.0)
        clock[0] += 1.0 / limiter.rate
    assert limiter.rate == 2560.0
    assert raised_at[40.0] == pytest.approx(0.25, abs=0.06)  # a quarter window at 20/s
    assert raised_at[320.0] - raised_at[160.0] == pytest.approx(0.125, abs=0.02)  # an eighth at 160/s
    assert clock[0] - 100.0 == pytest.approx(1.25, abs=0.1)


def test_slow_start_counts_its_first_round_from_the_first_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the lists and planning the first rows take the run's own time
    before the rows go: the first round counts from the first row, so five
    answers at 20/s raise the rate (counted from the start, the round looked
    unused and the first raise came a round later)."""
    clock = [100.0]
    monkeypatch.setattr(limits, "time", SimpleNamespace(monotonic=lambda: clock[0]))

    def first_raise(rows_start: bool) -> float:
        clock[0] = 100.0
        limiter = RateController(rate=20.0, window=1.0)

        def answer() -> None:
            limiter._took(clock[0], limiter._generation)
            limiter._served()

        contextvars.copy_context().run(answer)  # the list read
        clock[0] += 0.4  # planning the first rows
        if rows_start:
            limiter.rows_start()
        while limiter.rate == 20.0:
            contextvars.copy_context().run(answer)
            clock[0] += 1 / 20
        return clock[0] - 100.0

    assert first_raise(True) == pytest.approx(0.4 + 0.25, abs=0.06)
    assert first_raise(False) >= 0.4 + 0.4  # a round (0.25 s) later


async def test_a_forgiven_cut_hands_out_the_slots_reserved_at_its_rate_again() -> None:
    """A cut to 2/s found to be noise goes back to 40/s: the requests that had
    reserved slots at 2/s go at the new spacing, not 0.5 s apart (a 3,000-row
    run under the fault mix sent 15 rows/s for 2.5 s after such a forgiveness)."""
    controller = RateController(rate=40.0, window=1.0)
    controller.rate = 2.0  # just cut
    now = time.monotonic()
    controller._test = _Test(40.0, None, share=0.2, resume=now, cut_bucket=controller._bucket(now - 0.1))
    started = time.monotonic()
    waiting = [asyncio.ensure_future(controller.acquire()) for _ in range(12)]  # 6 s of slots at 2/s
    await asyncio.sleep(0.3)
    assert sum(task.done() for task in waiting) <= 2
    controller._test.served, controller._test.throttled = 57, 3  # 5% refused after the cut: noise
    controller._judge(time.monotonic() + 1.0)
    assert controller.stats.forgiven == 1 and controller.rate == 40.0
    assert all(await asyncio.wait_for(asyncio.gather(*waiting), 5))
    assert time.monotonic() - started < 1.5


async def test_a_raise_hands_out_the_slots_already_reserved_again_at_the_new_spacing() -> None:
    # 20 requests waiting at 2/s have reserved 10 s of slots; once the rate is 200/s they
    # go at the new spacing (what slow start does with a pool of hundreds of workers)
    controller = RateController(rate=2.0, adaptive=False)
    started = time.monotonic()
    waiting = [asyncio.ensure_future(controller.acquire()) for _ in range(20)]
    await asyncio.sleep(0.3)
    assert sum(task.done() for task in waiting) <= 2
    controller.rate = 200.0
    controller._respace()
    assert all(await asyncio.wait_for(asyncio.gather(*waiting), 5))
    assert time.monotonic() - started < 3


async def test_a_retry_takes_a_free_slot_before_first_attempts_waiting() -> None:
    """Rows waiting for their first attempt queue in order; a retry (its row
    started already, refused once) goes before them."""
    concurrency = ConcurrencyLimit(initial=1, adaptive=False)
    assert await concurrency.acquire()
    order: list[str] = []

    async def wait(name: str, retry: bool) -> None:
        assert await concurrency.acquire(retry=retry)
        order.append(name)
        concurrency.release(None)

    waiting = [asyncio.ensure_future(wait(f"first {n}", False)) for n in range(3)]
    await asyncio.sleep(0)
    waiting.append(asyncio.ensure_future(wait("retry", True)))
    await asyncio.sleep(0)
    concurrency.release(None)
    await asyncio.wait_for(asyncio.gather(*waiting), 5)
    assert order == ["retry", "first 0", "first 1", "first 2"]


async def test_every_answer_an_overload_for_window_after_window_is_no_crash() -> None:
    """Found from outside: an MDM answering 503 to every change made the
    usual overload share (one more than seen, over the answers) pass 1, and
    the test of a share no noise explains raised a math domain error."""
    concurrency = ConcurrencyLimit(initial=8, maximum=64)
    for _ in range(40 * 8):
        assert await concurrency.acquire()
        concurrency.release(None, overloaded=True)
    assert concurrency.minimum <= concurrency.limit <= 8
