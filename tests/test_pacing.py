"""Pacing against real servers on 127.0.0.1: sporadic 429s do not collapse the
rate, a real limit is found and held, the requests in flight follow the
server's latency. Every server here is bounded (a few hundred requests, a few
seconds) and stops with its test; assertions are on counts and ratios with
wide margins, not on timings."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, deque
from collections.abc import Iterator

import pytest
from aiohttp import web

from bulkmdm.limits import (
    PROBE_EVERY,
    HELD_SHARE,
    MAX_CONCURRENCY,
    WORKERS_PER_SLOT,
    BASE_MEMORY,
    BETA,
    SCALE,
    ConcurrencyLimit,
    RateController,
    Slot,
    for_run,
    parse_rate,
)
from bulkmdm.providers import get as provider
from bulkmdm.retry import RetryPolicy
from bulkmdm.sim.common import FAULT_MIX, Faults, SimServer, TokenBucket, instrument
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
    # the share is learned as background: no cut, and the rate is where it started or above
    assert limiter.stats.cuts == 0
    assert 0.03 <= limiter.stats.background <= 0.15
    assert limiter.rate is not None and limiter.rate >= 40.0


@pytest.mark.parametrize("server", [Faults(rate_limit=60)], indirect=True)
async def test_a_real_limit_is_found_and_held(server: SimServer) -> None:
    limiter = RateController(rate=20.0, window=1.0)
    statuses = await _drive(server.url, limiter, 360, 8)
    assert statuses == {200: 360}
    assert limiter.stats.cuts >= 1
    assert limiter.stats.limit is not None and 40 <= limiter.stats.limit <= 75
    assert limiter.rate is not None and limiter.rate <= 75
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


@pytest.mark.looptime
async def test_503_noise_does_not_shrink_the_requests_in_flight() -> None:
    """A 5-ms server answering 503 to 10% of requests, each retried until it
    is answered 200, on the event loop's (virtual) clock: every latency is the
    server's, so what the limit does is the noise's doing, whatever the
    machine's load."""
    concurrency = ConcurrencyLimit(initial=8, maximum=64)
    limiter = RateController(rate=None, concurrency=concurrency)
    noise = random.Random(3)
    statuses: Counter[int] = Counter()
    queue = iter(range(600))

    async def worker() -> None:
        for _ in queue:
            while True:
                slot = await limiter.acquire()
                assert slot is not None
                await asyncio.sleep(0.005)
                status = 503 if noise.random() < 0.10 else 200
                limiter.release(slot, status, 0.005)
                statuses[status] += 1
                if status == 200:
                    break

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(32))), 60)
    assert statuses[200] == 600 and statuses[503] >= 40
    # a window of ten answers holds three or four 503s now and then; a drop on
    # every window with two or more would be some twenty
    assert concurrency.stats.drops <= 6
    assert concurrency.limit >= 8
    assert concurrency.in_flight == 0


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
    assert pacing.rate.stats.cuts <= 1


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


async def test_a_retry_takes_a_free_slot_before_first_attempts_waiting() -> None:
    """Rows waiting for their first attempt queue in order; a retry (its row
    started already, refused once) goes before them."""
    concurrency = ConcurrencyLimit(initial=1, adaptive=False)
    held = await concurrency.acquire()
    assert held is not None
    order: list[str] = []

    async def wait(name: str, retry: bool) -> None:
        number = await concurrency.acquire(retry=retry)
        assert number is not None
        order.append(name)
        concurrency.release(number, None)

    waiting = [asyncio.ensure_future(wait(f"first {n}", False)) for n in range(3)]
    await asyncio.sleep(0)
    waiting.append(asyncio.ensure_future(wait("retry", True)))
    await asyncio.sleep(0)
    concurrency.release(held, None)
    await asyncio.wait_for(asyncio.gather(*waiting), 5)
    assert order == ["retry", "first 0", "first 1", "first 2"]


async def test_a_slot_freed_for_a_waiter_is_kept_for_it() -> None:
    """A slot freed while a request waits goes to that request: one that
    comes before the waiter has run (a worker going straight on to its next
    row) finds no slot free, and the waiter is not woken only to wait again;
    a waiter cancelled after it was woken passes its slot to the next."""
    concurrency = ConcurrencyLimit(initial=1, adaptive=False)
    held = await concurrency.acquire()
    assert held is not None
    waiter = asyncio.ensure_future(concurrency.acquire())
    await asyncio.sleep(0)
    concurrency.release(held, None)
    assert not concurrency.free()  # kept for the waiter, which has not run yet
    number = await asyncio.wait_for(waiter, 5)
    assert number is not None and concurrency.in_flight == 1

    first = asyncio.ensure_future(concurrency.acquire())
    second = asyncio.ensure_future(concurrency.acquire())
    await asyncio.sleep(0)
    concurrency.release(number, None)
    first.cancel()  # woken, then cancelled before it took the slot
    taken = await asyncio.wait_for(second, 5)
    assert taken is not None and first.cancelled() and concurrency.in_flight == 1
    concurrency.release(taken, None)
    assert concurrency.free() and concurrency.in_flight == 0


async def test_every_answer_an_overload_for_window_after_window_is_no_crash() -> None:
    """An MDM answering 503 to every change: the usual overload share (one
    more than seen, over the answers) stays a share, and the test of a share
    no noise explains raises no math domain error."""
    concurrency = ConcurrencyLimit(initial=8, maximum=64)
    for _ in range(40 * 8):
        number = await concurrency.acquire()
        assert number is not None
        concurrency.release(number, None, overloaded=True)
    assert concurrency.minimum <= concurrency.limit <= 8


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _answer(limiter: RateController, clock: FakeClock, rate: float, seconds: float, status: int = 200) -> None:
    """Answers at ``rate`` a second for ``seconds``, each to a request sent as it comes."""
    for _ in range(round(rate * seconds)):
        clock.now += 1 / rate
        limiter.release(Slot(clock.now), status)


def _refused(limiter: RateController, clock: FakeClock, times: int = 1, retry_after: float = 1.0) -> None:
    """``times`` answers 429 with ``retry_after``, each to a request sent now."""
    for _ in range(times):
        limiter.release(Slot(clock.now), 429)
        limiter.throttled(Slot(clock.now), retry_after)


def _turns_given_late(limiter: RateController, clock: FakeClock, turns: int, late: float) -> float:
    """Seconds ``turns`` sends take when every turn is given ``late`` after it
    is due (an event loop wakes a millisecond or more after its timer)."""
    started = clock.now
    for _ in range(turns):
        clock.now = limiter._next_turn(clock.now) + late
        assert limiter.take_now() is not None
    return clock.now - started


def test_turns_given_late_keep_the_rate_cubic_set_and_not_at_a_ceiling_or_in_slow_start() -> None:
    """Once CUBIC sets the rate, below a ceiling, the tokens due while a turn
    came late are kept: the rate goes out, not 5% under it. At a ceiling
    (``--rate``) and in slow start the bucket holds one token: a late turn
    does not make the next one early."""
    clock = FakeClock()
    cut = RateController(rate=100.0, clock=clock)
    _answer(cut, clock, 50.0, 3.0)
    _refused(cut, clock, 4)
    clock.now += 1.0  # the hold
    rate = cut.rate
    assert cut.stats.cuts == 1 and rate is not None
    assert 500 / _turns_given_late(cut, clock, 500, 0.001) == pytest.approx(rate, rel=0.005)
    late = 1 / (1 / rate + 0.001)
    clock = FakeClock()
    fixed = RateController(rate=rate, ceiling=rate, clock=clock)
    assert 500 / _turns_given_late(fixed, clock, 500, 0.001) == pytest.approx(late, rel=0.005)
    clock = FakeClock()
    starting = RateController(rate=rate, clock=clock)
    assert 500 / _turns_given_late(starting, clock, 500, 0.001) == pytest.approx(late, rel=0.005)


def test_a_throttle_cuts_to_beta_of_the_measured_rate_and_regrows_cubically() -> None:
    """botocore's CubicCalculator: W_max is the measured rate, the rate goes
    to BETA x W_max, and is back at W_max after K = cbrt(W_max (1 - BETA) / SCALE);
    it stays there PROBE_EVERY times the cut's Retry-After, then probes past it."""
    clock = FakeClock()
    limiter = RateController(rate=100.0, clock=clock)
    _answer(limiter, clock, 40.0, 3.0)  # the server takes 40/s (the run sends no more)
    _refused(limiter, clock, 4)  # (a 429 or two after none is what Laplace's background explains)
    w_max = limiter.stats.limit
    assert w_max is not None and w_max == pytest.approx(40.0, rel=0.05)
    assert limiter.rate == pytest.approx(BETA * w_max)
    k = (w_max * (1 - BETA) / SCALE) ** (1 / 3)
    clock.now += 1.0  # the Retry-After
    _answer(limiter, clock, 40.0, k - 1.0)
    assert limiter.rate == pytest.approx(w_max, rel=0.02)
    _answer(limiter, clock, 40.0, PROBE_EVERY * 1.0 - 1.0)  # the plateau: a probe would cost a 1-s hold
    assert limiter.rate == pytest.approx(w_max, rel=0.02)
    _answer(limiter, clock, 40.0, 3.0)  # past it: convex, probing above W_max
    assert limiter.rate is not None and limiter.rate > 1.05 * w_max


def test_a_cut_just_after_a_hold_does_not_take_its_few_answers_for_the_limit() -> None:
    """The first answers after a Retry-After's hold are a fraction of the
    server's window: one taken and one refused there is not a limit of 2/s."""
    clock = FakeClock()
    limiter = RateController(rate=100.0, clock=clock)
    _answer(limiter, clock, 40.0, 3.0)
    _refused(limiter, clock, 4)
    first = limiter.stats.limit
    assert limiter.stats.cuts == 1 and first is not None
    clock.now += 1.0  # the hold
    limiter.release(Slot(clock.now), 200)
    _refused(limiter, clock)
    assert limiter.stats.cuts == 2 and limiter.stats.limit is not None
    assert limiter.stats.limit >= 0.5 * first


def test_the_limit_is_what_the_server_took_over_its_window_not_a_buckets_burst() -> None:
    """A token bucket lets its burst through as it empties: the half-second
    meter sees more than the bucket's rate, the server's own window does not."""
    clock = FakeClock()
    limiter = RateController(rate=100.0, clock=clock)
    _answer(limiter, clock, 40.0, 3.0)
    _answer(limiter, clock, 80.0, 0.25)  # the burst of a bucket of 40/s, 10 deep
    _answer(limiter, clock, 40.0, 0.75)
    _refused(limiter, clock, 4)
    assert limiter.stats.limit == pytest.approx(50.0, rel=0.05)  # 40/s and the burst of 10 in the last second


def _limits_found(
    server: TokenBucket, cuts: int, limiter: RateController | None = None, clock: FakeClock | None = None
) -> list[float]:
    """W_max at each of the next ``cuts`` cuts of a run (by default from 20/s,
    slow start) against ``server``, every turn taken as it comes and answered
    at once, each 429's Retry-After holding everyone."""
    clock = clock or FakeClock()
    limiter = limiter or RateController(rate=20.0, clock=clock)
    found: list[float] = []
    cut = limiter.stats.cuts
    while len(found) < cuts and clock.now < 120.0:
        slot = None
        while slot is None:
            clock.now = limiter._next_turn(clock.now)
            slot = limiter.take_now()
        wait = server.allow(clock.now)
        limiter.release(slot, 200 if wait is None else 429)
        if wait is not None:
            limiter.throttled(slot, wait)
            if limiter.stats.cuts > cut + len(found) and limiter.stats.limit is not None:
                found.append(limiter.stats.limit)
    return found


def test_after_a_hold_of_a_window_the_limit_is_what_the_server_took_since() -> None:
    """A token bucket of 50/s with a burst of 10, Retry-After rounded up to a
    second: a probe past W_max empties the burst before a 429 says so, and
    the last window then measures the pace sent. A hold of at least the
    vendor's window empties what the server counts, so what it took since
    spreads the burst over that time (cf. BBR's policer estimate, the rate
    delivered between losses): the probe's W_max is the bucket's rate."""
    found = _limits_found(TokenBucket(50.0, 10.0), 3)
    assert len(found) == 3
    assert found[-1] == pytest.approx(50.0, rel=0.03)


def test_a_probe_past_slow_starts_limit_measures_the_server_not_the_plateau() -> None:
    """Slow start's W_max is a lagging meter's figure, here 30/s for a bucket
    of 50/s: the plateau held at it is the run's own pace, and what the server
    took since the hold (that plateau, mostly) would keep the rate there
    probe after probe. The probe's cut measures the last window instead."""
    clock = FakeClock()
    limiter = RateController(rate=100.0, clock=clock)
    _answer(limiter, clock, 30.0, 3.0)
    _refused(limiter, clock, 4)
    assert limiter.stats.cuts == 1 and limiter.stats.limit == pytest.approx(30.0, rel=0.05)
    clock.now += 1.0  # the hold
    found = _limits_found(TokenBucket(50.0, 10.0), 1, limiter, clock)
    assert found and found[0] >= 45.0


def test_at_slow_starts_end_the_limit_is_the_servers_window_not_the_lagging_meter() -> None:
    """Slow start doubles the rate faster than the half-second buckets close:
    at the first 429s the meter still shows the ramp's slower part (36/s),
    while the server took 53 over its last second. W_max is the latter."""
    clock = FakeClock()
    limiter = RateController(rate=20.0, clock=clock)
    _answer(limiter, clock, 20.0, 1.0)
    _answer(limiter, clock, 40.0, 0.5)
    _answer(limiter, clock, 80.0, 0.375)
    _refused(limiter, clock, 15)  # (before any window, a large share is evidence)
    assert limiter.stats.cuts == 1
    assert limiter.stats.limit == pytest.approx(53.0, rel=0.03)


def test_429s_at_the_last_limit_are_not_taken_for_the_background() -> None:
    """Past K the rate is back at W_max: a trickle of 429s there is the limit
    refusing a pace a little over it, and must not teach the background rule
    that such a share is noise (it would never be evidence)."""
    clock = FakeClock()
    limiter = RateController(rate=100.0, clock=clock)
    _answer(limiter, clock, 40.0, 3.0)
    _refused(limiter, clock, 4)
    w_max = limiter.stats.limit
    assert w_max is not None
    k = (w_max * (1 - BETA) / SCALE) ** (1 / 3)
    clock.now += 1.0
    _answer(limiter, clock, 40.0, k + 1.0)  # back at W_max
    background = limiter.stats.background
    for _ in range(6):  # one 429 a second among 40 answers, for six seconds
        _answer(limiter, clock, 40.0, 1.0)
        _refused(limiter, clock)
    assert limiter.stats.background == background


def _overshoot_at_the_start(limiter: RateController, clock: FakeClock) -> float:
    """A run's first 0.4 s at 40/s (no half-second bucket measured yet), then
    a limit's 429s and their hold of a second: W_max."""
    _answer(limiter, clock, 40.0, 0.4)
    _refused(limiter, clock, 8)
    assert limiter.stats.cuts == 1
    clock.now += 1.0
    assert limiter.stats.limit is not None
    return limiter.stats.limit


def test_after_a_hold_the_rate_stays_at_the_cuts_until_cubic_regrows() -> None:
    """Just after a hold the last window holds a handful of answers: twice
    that is no measure of what the server takes, and the rate stays at
    BETA x W_max (the cut's) while CUBIC regrows from it."""
    clock = FakeClock()
    limiter = RateController(rate=100.0, clock=clock)
    w_max = _overshoot_at_the_start(limiter, clock)
    _answer(limiter, clock, 10.0, 0.2)  # the first answers after it
    assert limiter.rate is not None and limiter.rate >= BETA * w_max


def test_one_cut_per_window_of_the_vendor() -> None:
    """429s to requests sent within a window of the cut belong to the overload
    already cut for (ManageEngine counts its 100 calls over a minute)."""
    clock = FakeClock()
    limiter = RateController(rate=100 / 60, ceiling=100 / 60, window=60.0, clock=clock)
    _answer(limiter, clock, 100 / 60, 120.0)

    def refused(count: int) -> None:
        for _ in range(count):
            clock.now += 1.0
            _refused(limiter, clock, retry_after=5.0)

    refused(8)
    assert limiter.stats.cuts == 1 and limiter.stats.evidence >= 3
    clock.now += 61.0
    refused(8)
    assert limiter.stats.cuts == 2


def test_a_steady_share_of_429s_is_background_and_cuts_nothing() -> None:
    """The two-sentence rule: 5% of the answers refused window after window is
    the background; only a share it does not explain is a limit."""
    clock = FakeClock()
    limiter = RateController(rate=50.0, clock=clock)
    for second in range(30):
        for n in range(50):
            clock.now = second + n / 50
            refused = (second * 50 + n) % 20 == 7  # one in twenty
            limiter.release(Slot(clock.now), 429 if refused else 200)
            if refused:
                limiter.throttled(Slot(clock.now), 1.0)
    assert limiter.stats.cuts == 0
    assert limiter.stats.background == pytest.approx(0.05, abs=0.01)
    # then a limit: a third of a second's answers refused is evidence
    for n in range(50):
        clock.now = 30 + n / 50
        refused = n % 3 == 0
        limiter.release(Slot(clock.now), 429 if refused else 200)
        if refused:
            limiter.throttled(Slot(clock.now), 1.0)
    assert limiter.stats.cuts == 1


def test_before_any_window_only_a_large_share_is_evidence() -> None:
    """A run's first 429 (no background counted yet) is not a limit unless
    more than 1 - BETA of the answers are refused."""
    clock = FakeClock()
    limiter = RateController(rate=20.0, clock=clock)
    _answer(limiter, clock, 20.0, 0.5)
    _refused(limiter, clock)
    assert limiter.stats.cuts == 0 and limiter.rate is not None and limiter.rate >= 20.0


@pytest.mark.looptime
async def test_a_retry_after_holds_everyone_then_the_waiting_go_at_the_paced_rate_retries_first() -> None:
    limiter = RateController(rate=10.0)
    loop = asyncio.get_running_loop()
    first = await limiter.acquire()
    assert first is not None
    for _ in range(30):  # three seconds of answers at 10/s, none refused
        await asyncio.sleep(0.1)
        limiter.release(Slot(loop.time()), 200)
    for _ in range(4):  # (a 429 or two after none is what Laplace's background explains)
        limiter.release(first, 429)
        limiter.throttled(Slot(loop.time()), 2.0)
    held = loop.time()
    rate = limiter.rate
    assert limiter.stats.cuts == 1 and rate is not None
    order: list[tuple[str, float]] = []

    async def send(name: str, retry: bool) -> None:
        slot = await limiter.acquire(retry=retry)
        assert slot is not None
        order.append((name, slot.sent))

    waiting = [asyncio.ensure_future(send(f"first {n}", False)) for n in range(5)]
    await asyncio.sleep(0)
    waiting += [asyncio.ensure_future(send(f"retry {n}", True)) for n in range(3)]
    await asyncio.gather(*waiting)
    times = [sent for _, sent in order]
    assert times[0] >= held + 2.0  # nothing before the Retry-After
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.99 / rate  # one at a time at the paced rate: no wave
    assert [name for name, _ in order[:3]] == ["retry 2", "retry 1", "retry 0"]


@pytest.mark.looptime
async def test_a_wait_for_a_turn_ends_with_none_when_the_run_stops() -> None:
    limiter = RateController(rate=1.0, adaptive=False)
    refused = Slot(0.0)
    limiter.throttled(refused, 600.0)
    stop = False
    task = asyncio.ensure_future(limiter.acquire(lambda: stop))
    await asyncio.sleep(1.0)
    assert not task.done()
    stop = True
    assert await asyncio.wait_for(task, 1.0) is None


@pytest.mark.looptime
async def test_rate_none_sends_without_a_bucket_until_a_limit_shows() -> None:
    limiter = RateController(rate=None)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(1000):
        slot = await limiter.acquire()
        assert slot is not None
        limiter.release(slot, 200)
    assert loop.time() == started and limiter.rate is None


async def test_base_latency_is_the_lowest_window_median_of_the_memory() -> None:
    """The base latency (Vegas' base RTT) is the lowest window median of the
    last BASE_MEMORY seconds: a low one stands until it is that old, then
    the lowest of those after it takes over."""
    now = [0.0]
    concurrency = ConcurrencyLimit(initial=1, maximum=1, clock=lambda: now[0])
    medians = [0.050, 0.030, 0.040, 0.020, 0.060, 0.035, 0.045, 0.025, 0.070, 0.055] * 3
    seen: list[tuple[float, float]] = []
    for i, latency in enumerate(medians):
        now[0] = i * BASE_MEMORY / 7  # some seven windows in memory at a time
        for _ in range(10):  # a window of ten answers of the same latency: its median
            number = await concurrency.acquire()
            assert number is not None
            concurrency.release(number, latency)
        seen.append((now[0], latency))
        expected = min(m for at, m in seen if at >= now[0] - BASE_MEMORY)
        assert concurrency.stats.base_latency == pytest.approx(expected)


async def test_latency_the_clients_own_cpu_makes_does_not_shrink_the_limit() -> None:
    """A fast server and a client short of CPU: N requests in flight through
    an event loop that spends 1 ms of CPU on each answer take N ms each (a
    closed network's bound), on the controller's fake clocks. That latency is
    the client's own: counted with the loop's CPU, the limit grows to its
    maximum; the same latencies with no CPU clock keep it near the base."""

    def run(cpu_counted: bool) -> ConcurrencyLimit:
        now, cpu, demand = [0.0], [0.0], 0.001
        concurrency = ConcurrencyLimit(
            initial=4, maximum=64, clock=lambda: now[0], cpu=(lambda: cpu[0]) if cpu_counted else None
        )
        limiter = RateController(rate=None, concurrency=concurrency, clock=lambda: now[0])
        flying: deque[Slot] = deque()
        for _ in range(5000):
            while (slot := limiter.take_now()) is not None:
                flying.append(slot)
            now[0] += demand
            cpu[0] += demand
            limiter.release(flying.popleft(), 200, concurrency.in_flight * demand)
        return concurrency

    assert run(cpu_counted=True).limit == 64
    assert run(cpu_counted=False).limit <= 12


async def test_the_limit_doubles_every_other_window_until_the_latency_shows_a_queue() -> None:
    """Vegas' slow start on fake clocks: a server with room for 32 answering
    in 10 ms while it has it (queueing past it) takes the limit from 8 to 16,
    32 and 64 within a few hundred answers (square-root steps took
    thousands), each doubling held for a window; the window held at 64 shows
    the queue (20 ms, past TOLERANCE times 10), which ends the doubling."""
    now = [0.0]
    concurrency = ConcurrencyLimit(initial=8, maximum=128, clock=lambda: now[0])
    limiter = RateController(rate=None, concurrency=concurrency, clock=lambda: now[0])
    flying: deque[Slot] = deque()
    seen: list[float] = []
    for _ in range(400):
        while (slot := limiter.take_now()) is not None:
            flying.append(slot)
        now[0] += 0.001
        latency = 0.010 * max(1.0, concurrency.in_flight / 32)
        limiter.release(flying.popleft(), 200, latency)
        if not seen or concurrency.limit != seen[-1]:
            seen.append(concurrency.limit)
    assert seen[:4] == [8, 16, 32, 64]
    assert concurrency.stats.highest == 64 and concurrency.limit < 64
