"""The pacer against in-memory models of each limit shape, on fake time
(``looptime``): every limit shape used to at least 0.9 of its limit with at
most 3% of the requests answered 429, a limit halved and restored followed
within 10 s each way, and 5% random 429s costing at most a tenth of the
rate. The same shapes serve the simulator (``bulkmdm.sim.common``); the bench
measures them over real sockets."""

from __future__ import annotations

import pytest

from bulkmdm.sim.common import Faults, FixedWindow, SlidingWindow, TokenBucket, _Limiter

from pacing_model import drive

# Nothing here waits on I/O: the fake clock may jump to the next timer as soon
# as nothing is ready (looptime's default first runs 42 idle loop cycles each
# time, for I/O that may be on its way; here they were most of the CPU spent).
pytestmark = pytest.mark.looptime(noop_cycles=1)

LIMIT = 50


async def test_sliding_one_second_window() -> None:
    outcome = await drive(SlidingWindow(LIMIT), 1500)
    assert outcome.done == 1500
    assert outcome.rate() >= 0.9 * LIMIT
    assert outcome.share <= 0.03


async def test_token_bucket_with_a_second_of_burst() -> None:
    outcome = await drive(TokenBucket(LIMIT, LIMIT), 1500)
    assert outcome.done == 1500
    assert outcome.rate() >= 0.9 * LIMIT
    assert outcome.share <= 0.03


async def test_token_bucket_with_a_fifth_of_a_second_of_burst() -> None:
    outcome = await drive(TokenBucket(LIMIT, LIMIT / 5), 1500)
    assert outcome.done == 1500
    assert outcome.share <= 0.03
    assert outcome.rate() >= 0.9 * LIMIT


async def test_a_slow_start_past_a_small_bucket_is_caught_within_a_few_429s() -> None:
    """25/s with a burst of 5: slow start doubles past it within a second;
    before any window is counted the background is taken to be one in ten,
    so the overshoot is evidence after a handful of 429s, not a third of a
    window's answers."""
    outcome = await drive(TokenBucket(25, 5), 1000)
    assert outcome.done == 1000
    first_second = [ok for t, ok in outcome.requests if t - outcome.requests[0][0] <= 1.5]
    assert first_second.count(False) <= 12
    assert outcome.share <= 0.03


@pytest.mark.parametrize(("span", "limit", "rows"), [(10.0, LIMIT, 1500), (60.0, 10, 1500)])
async def test_fixed_windows(span: float, limit: int, rows: int) -> None:
    """Every window the run spans whole is used to its quota, with one or
    two 429s each (the window's end is what the Retry-After says)."""
    window = FixedWindow(limit, span)
    outcome = await drive(window, rows)
    assert outcome.done == rows
    quota = int(limit * span)
    full = window.counts[:-1]
    assert len(full) >= 2 and all(count >= 0.9 * quota for count in full), window.counts
    assert outcome.share <= 0.03


async def test_a_limit_halved_and_restored_is_followed_within_ten_seconds() -> None:
    halved, restored = 20.0, 45.0
    outcome = await drive(_Limiter(Faults(rate_limit=LIMIT, limit_halved_at=halved, limit_restored_at=restored)), 2600)
    assert outcome.done == 2600
    # down: from 10 s after the halving, at the new limit and (almost) no 429s
    assert outcome.rate(halved + 10, restored) >= 0.9 * LIMIT / 2
    assert outcome.share_between(halved + 10, restored) <= 0.03
    # up: from 10 s after the limit is restored, back at it
    assert outcome.rate(restored + 10, restored + 20) >= 0.9 * LIMIT
    assert outcome.share <= 0.03


async def test_random_429s_cost_at_most_a_tenth_of_the_rate() -> None:
    """5% of the answers 429 (Retry-After: 1) whatever the pace, no limit:
    learned as the background, no cut. Rows/s until 95% are done, against
    the same run without them: the rest of a run this short is rows waiting
    out the server's Retry-After (a second each, chained), which no pacing
    shortens."""
    clean = await drive(None, 4000)
    noisy = await drive(None, 4000, throttle_rate=0.05)
    assert noisy.done == clean.done == 4000
    assert 0.03 <= noisy.share <= 0.07
    assert noisy.most_rate(0.95) >= 0.9 * clean.most_rate(0.95)
