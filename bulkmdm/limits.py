"""Rate and concurrency control shared by every worker of a run.

A run is paced by two controllers, built together by :func:`for_run`:

* :class:`RateController`: send slots spaced ``(1 + GUARD)/rate`` apart (no
  burst above the rate, unlike ``aiolimiter.AsyncLimiter(N, T)``, which lets
  up to 2N through at a window edge), adapted to the MDM's 429 answers;
* :class:`ConcurrencyLimit`: how many requests may be in flight, adapted to
  the MDM's latency (for a server with no rate limit but a finite capacity).

The client takes a concurrency slot, then a send slot, for every attempt
(:meth:`RateController.acquire`) and gives the concurrency slot back with the
attempt's answer and latency (:meth:`RateController.release`).

The rate and 429s (``adaptive=True``)
-------------------------------------

A 429 always makes its own request wait (Retry-After, or a short backoff).
It is *evidence of a limit* only when it correlates with our own pace; a
429 that comes whatever the pace (a quota shared with other integrations, a
flaky gateway) is forgotten, so that sporadic 429s cannot ratchet the rate
down to nothing (the "death spiral" of issue 11):

* **Windows without pauses.** Sends, answers and 429s are counted per
  window of the vendor's ``rate_window`` (ManageEngine counts per minute,
  most vendors per second). A window that held a pause for a Retry-After is
  never taken for a measurement: the pause emptied it (the old controller
  measured a "limit" from such a second and ratcheted down), and the
  server's own window emptied with it.
* **Noise is learned.** A 429 is evidence when the window's 429s exceed what
  the learned noise share explains (three standard deviations over it; with
  no noise learned, any 429 is). While slow start climbs below the ceiling,
  a limit overshot refuses a large share at once: 429s are evidence only
  when they are a fifth of the latest answers (the last quarter window, or
  as much of the last window as holds 20 answers) and more than a 5% noise
  explains (at 20/s, two 429s among ten answers are common noise: taken for
  a limit, they cost a pause and a test at the lowest rate of the run).
  Evidence pauses every worker for the Retry-After and cuts the rate to 97%
  of what the server served in its best recent window (never below that:
  what it served, it can serve).
* **A cut is a test.** After a cut, the next window (and enough answers to
  see a 5% noise) shows whether the 429s went away. If they did (no more
  than the noise learned explains), the limit is confirmed (the measured
  limit). If they kept coming at the lower pace, they were not about our
  pace: the old rate is restored (the slots waiting at the cut's spacing
  are handed out again), slow start may climb again, and their share
  becomes the noise level; for the run's first cut from slow start, one
  429 is enough (under the limit it measured a sliding window refuses
  nothing at that spacing). If more than a quarter were still refused
  while the requests went at the new rate, the cut was not enough: the rate
  goes under what was served since. Only then: a run's last rows, sent one
  by one as they come back from their retries, are served slowly because
  they are few, not because of a limit (measuring them as one drove the
  rate of a run's tail to 1/s).
* **A limit is forgotten** when 429s come while the server serves clearly
  less than the limit it showed (they are not about our pace either).
* **Echoes.** 429s for requests sent before the last cut are echoes of the
  overload already acted on; they do not cut again. Slots handed out before
  a cut are handed out again at the new rate, after the pause.

Slots already handed out are handed out again at the new spacing when the
rate goes up (a big pool reserves seconds of slots at a slow start's rate).
Increases come after each round's worth of answers at the current rate, and
only when the round's slots were used (a run held back by concurrency or
slow answers shows nothing about the server): with no limit measured,
"slow start" doubles the rate every quarter window, or every eighth once
an eighth holds TEST_ANSWERS answers (and lifts it once it no longer
binds: the requests in flight pace the run until a 429); below
97% of the measured limit it returns there by x1.2 a window; near it, it
creeps by 0.25% of it a window (a probe past the limit every ~12 windows,
answered by a cut without a pause); well past it with no 429, the limit
has gone up: +5% a window. Never above ``ceiling`` (the vendor's documented
limit or an explicit ``--rate``), never below ``floor``.

Concurrency and latency (``ConcurrencyLimit(adaptive=True)``)
-------------------------------------------------------------

The number of requests in flight is the control variable (TCP Vegas,
Netflix concurrency-limits' Gradient2, Envoy's adaptive concurrency). After
each window of answers (at least the limit's worth), the window's median
latency of successful answers is compared with the lowest window median of
the last half minute: ``gradient = TOLERANCE * base / median`` (0.5..1).
The limit becomes ``limit * gradient + sqrt(limit) / 2`` (smoothed), so it grows
while the latency stays near its minimum and the slots are used, and shrinks
when the latency grows (the server is queueing). Overload answers (502, 503,
504, timeouts) shrink it by a fifth only when their share exceeds what the
recent windows showed (a server that answers 10% 503 whatever the load is
noisy, not full). Medians ignore the few replies a server holds for seconds,
and those stop counting against the limit after a quarter second (or twenty
times the lowest latency, if more); the event loop's own delay is taken out
of the latency (a client short of CPU is not a server queueing).

Workers and retries
-------------------

A row waiting out a Retry-After or a backoff gives its slot in flight back
but keeps its worker, so an adaptive run starts ``WORKERS_PER_SLOT`` workers
for each slot it may reach: under issue 11's fault mix a row spends far
longer waiting than in flight, and 128 workers capped the run at a third of
its fault-free rate with slots to spare.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import re
import statistics
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$", re.I)
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}

#: Slots are spaced (1 + GUARD)/rate apart. A server that allows N requests
#: in *any* one-second window sees N+1 in one when the first of N+1 requests
#: paced exactly 1/N apart is delayed a little more than the last (a timer
#: firing late, a busy event loop, the network). Spacing them 2% wider means
#: N+1 requests span 1.02 s: up to 20 ms of such jitter is absorbed, at a
#: cost of 2% of the rate.
GUARD = 0.02
#: After evidence of a limit the rate goes to this share of what was served
#: (with GUARD, 95% of it is sent: the best window a sliding-window limit
#: lets through is its limit, so this is under it).
BACKOFF = 0.97
#: An increase needs this share of the round's slots to have been used.
USED = 0.75
#: Growth per round: before any limit (per quarter or eighth window), back towards the
#: measured limit, near it (a share of the limit, added), past it.
SLOW_START, RECOVER, CREEP, PROBE = 2.0, 1.2, 0.0025, 1.05
#: This far past the measured limit with no 429, the limit has gone up.
PAST = 1.0 + 2 * GUARD
#: Slow start lifts the rate (no ceiling, no limit seen) once it stops binding after this many raises.
UNBOUND_AFTER = 3
#: Start from here when a run with no rate is refused and nothing can be measured.
FALLBACK = 10.0
#: Counting buckets per window (windows slide by this step).
BUCKETS = 8
#: A cut under test is judged on at least this many answers after it.
TEST_ANSWERS = 20
#: While slow start climbs (no limit seen, below the ceiling), 429s are evidence
#: past this share of the last quarter window's answers.
SUSPECT = 0.2
#: 429s while the server serves less than this share of a measured limit are not about our pace.
FORGET = 0.75
#: The lowest share of noise a test is sure to see (three 429s expected in its answers).
NOISE_SEEN = 0.05
#: A share of 429s above this is never taken for noise.
MAX_NOISE = 0.25
#: Standard deviations of the noise share that a window's 429s must exceed to be evidence.
SIGMAS = 3.0

#: Concurrency: latency up to TOLERANCE x the minimum counts as "not queueing"
#: (Gradient2's rttTolerance default; at 1.25 a fast server's own jitter held the
#: limit near 30 in flight: 28x the naive script instead of 35x, same capacity figure).
TOLERANCE = 1.5
#: Concurrency: an answer waits about this many rounds of the event loop here before it is read.
LAG_FACTOR = 2.0
#: Concurrency: requests allowed to queue at the server, x sqrt(limit) (what the limit grows by).
QUEUE = 0.5
#: Concurrency: weight of a new limit against the old one, per window.
SMOOTHING = 0.3
#: Concurrency: the factor applied when overload answers exceed their usual share.
DROP = 0.8
#: Concurrency: answers per adjustment, at least.
MIN_SAMPLES = 10
#: Concurrency: how long the lowest latency is remembered (seconds).
BASE_MEMORY = 30.0
#: Concurrency: a request in flight this long (seconds; or this many times the lowest
#: latency, if more) is held by the server, not queued: it stops counting against the limit.
#: (At a second, 2% of replies held 2 s by a 5-ms server took three slots in four.)
HELD, HELD_FACTOR = 0.25, 20.0
#: A change held this long (seconds; or HELD_FACTOR times the lowest latency, if more)
#: is read back while its answer is awaited (transport.py): shown in place, it is done.
READ_BACK = 0.5
#: ... up to this many times the limit: past that, held requests count again (a bound on
#: what is in flight). 2% of replies held 2 s at 3,000 requests/s is some 100 held at once.
HELD_SHARE = 3
#: seconds a count of the held requests stands before it is made again
HELD_RECOUNT = 0.005
#: The most requests in flight an adaptive run reaches (and workers the engine starts).
MAX_CONCURRENCY = 128
#: Workers per slot in flight of an adaptive run: a row waiting out a Retry-After
#: or a backoff keeps its worker but not its slot (under issue 11's fault mix a
#: row spends some 25x longer waiting than in flight).
WORKERS_PER_SLOT = 4
#: With a documented rate ceiling, requests in flight beyond this many seconds of it are pointless.
CEILING_SECONDS = 8.0
#: Answers that say the server (or a gateway before it) is overloaded.
OVERLOAD_STATUSES = frozenset({502, 503, 504})

#: (send time, generation) of the request the current task sent last.
_SENT: ContextVar[tuple[float, int] | None] = ContextVar("bulkmdm_rate_slot", default=None)
#: the slot in flight the current task holds (its number)
_SLOT: ContextVar[int] = ContextVar("bulkmdm_flight_slot", default=0)


def _shown_rate(rate: float, window: float) -> str:
    """A rate as the vendor counts it: "100 calls a minute", "20 calls a second"."""
    if window >= 60:
        return f"{rate * 60:g} calls a minute"
    return f"{rate:g} calls a second"


def parse_rate(text: str) -> float | None:
    """'100/min' -> 1.667 requests/s; '20/s' or '20' -> 20.0; 'none',
    'unlimited' -> None (no limit). A rate of 0 is refused: it would never
    send anything, and reading it as "no limit" would hammer the MDM."""
    if text.strip().casefold() in {"none", "unlimited", "off"}:
        return None
    match = _RATE.match(text)
    if not match:
        raise UsageError(f"--rate {text!r} is not a rate; write it like 20/s or 100/min.")
    per = _PER[(match.group(2) or "s").casefold()]
    value = float(match.group(1)) / per
    if not value > 0:
        raise UsageError(f"--rate {text!r} must be more than 0; write it like 20/s or 100/min, or 'none' for no limit.")
    return value


async def sleep_unless(seconds: float, stopping: Callable[[], bool] | None) -> bool:
    """Sleep ``seconds``; with ``stopping``, wake early and return False once
    it says True (checked every quarter second)."""
    if stopping is None:
        await asyncio.sleep(seconds)
        return True
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if stopping():
            return False
        await asyncio.sleep(min(left, 0.25))
    return not stopping()


def _excess(count: int, total: int, share: float) -> bool:
    """Whether ``count`` of ``total`` is more than a share of ``share`` explains
    (SIGMAS standard deviations over it; with no share, any count is)."""
    share = min(1.0, max(0.0, share))  # (a usual share counted with one more than seen may pass 1)
    expected = total * share
    return count > expected + SIGMAS * math.sqrt(total * share * (1.0 - share))


class _Pauses:
    """The run-wide pauses (Retry-After), so that no window that held one is
    taken for a measurement of the server's limit."""

    def __init__(self) -> None:
        self._spans: deque[tuple[float, float]] = deque(maxlen=64)

    def add(self, start: float, end: float) -> None:
        if self._spans and start <= self._spans[-1][1]:
            first, _ = self._spans.pop()
            start = min(first, start)
        self._spans.append((start, end))

    def ended_in(self, start: float, end: float) -> bool:
        """Whether a pause ended inside ``start``..``end`` (a pause still on at
        ``end`` began after every send of the span: it does not matter)."""
        return any(first < end and start < last < end for first, last in self._spans)


@dataclass(slots=True)
class _Test:
    """A cut under test: did the 429s go away at the lower pace?"""

    previous_rate: float | None
    previous_limit: float | None
    #: the 429 share of the window that was taken as evidence
    share: float
    #: when sending resumes (after the pause)
    resume: float
    #: the bucket of the refused request (the windows before it were measured)
    cut_bucket: int
    #: answers to requests sent after the cut
    served: int = 0
    throttled: int = 0


@dataclass(slots=True)
class RateStats:
    #: slots handed out (every attempt takes one)
    sent: int = 0
    #: 429 answers reported
    throttled: int = 0
    #: times the rate was lowered on evidence (one per overload, not per 429)
    cuts: int = 0
    #: cuts undone: the 429s came just as often at the lower pace
    forgiven: int = 0
    #: measured limits forgotten: 429s came while the server served less
    forgotten: int = 0
    #: times the rate was raised
    raises: int = 0
    #: the server's limit as last measured (requests/s), if any
    limit: float | None = None
    #: the share of 429s learned to be noise (not about our pace)
    noise: float = 0.0


class RateController:
    """Strict pacing; on evidence of a limit a measured cut, then a careful climb.

    ``rate=None`` means no limit (until a 429 says otherwise, if adaptive).
    ``ceiling`` caps every increase (an explicit ``--rate`` is its own
    ceiling; ``None``: no cap, the rate grows while the server keeps up).
    ``adaptive=False`` keeps the rate fixed and lets every Retry-After pause
    everyone. ``floor`` is the lowest rate a cut may reach. ``window`` is
    the span (seconds) over which the vendor counts its limit. With
    ``concurrency``, every slot is also a slot in flight, given back by
    :meth:`release`.
    """

    def __init__(
        self,
        *,
        rate: float | None,
        ceiling: float | None = None,
        adaptive: bool = True,
        floor: float = 0.2,
        window: float = 1.0,
        concurrency: ConcurrencyLimit | None = None,
    ) -> None:
        if rate is not None and not rate > 0:
            raise UsageError("The rate must be greater than 0.")
        if ceiling is not None and not ceiling > 0:
            raise UsageError("The rate ceiling must be greater than 0.")
        if not floor > 0:
            raise UsageError("The rate floor must be greater than 0.")
        if not window > 0:
            raise UsageError("The rate window must be greater than 0.")
        self.ceiling = ceiling
        self.rate = rate if rate is None or self.ceiling is None else min(rate, self.ceiling)
        self.adaptive = adaptive
        self.floor = floor
        self.window = window
        self.concurrency = concurrency
        self.stats = RateStats()
        #: the earliest time the next slot may be handed out
        self._next = 0.0
        self._paused_until = 0.0
        #: bumped on every cut: slots and answers from before it are stale
        self._generation = 0
        #: bumped on every raise: slots handed out at the old spacing are handed out again
        self._spacing = 0
        self._respaced: asyncio.Event | None = None
        self._pauses = _Pauses()
        #: bucket index -> [sent, served, throttled], by send time
        self._buckets: dict[int, list[int]] = {}
        self._test: _Test | None = None
        #: answers since the round began, and when it began (monotonic)
        self._round_answers = 0
        self._round_started = time.monotonic()

    # -- the counts ----------------------------------------------------------
    def _bucket(self, at: float) -> int:
        return math.floor(at * BUCKETS / self.window)

    def _paused_in(self, last: int) -> bool:
        """Whether the window ending with bucket ``last`` held a pause."""
        step = self.window / BUCKETS
        return self._pauses.ended_in((last - BUCKETS + 1) * step, (last + 1) * step)

    def _count(self, at: float, column: int) -> None:
        index = self._bucket(at)
        counts = self._buckets.get(index)
        if counts is None:
            counts = self._buckets[index] = [0, 0, 0]
            if len(self._buckets) > 8 * BUCKETS:
                for old in [i for i in self._buckets if i < index - 6 * BUCKETS]:
                    del self._buckets[old]
        counts[column] += 1

    def _span(self, first: int, last: int) -> tuple[int, int, int]:
        """(sent, served, throttled) of buckets first..last."""
        sent = served = throttled = 0
        for index in range(first, last + 1):
            counts = self._buckets.get(index)
            if counts is not None:
                sent, served, throttled = sent + counts[0], served + counts[1], throttled + counts[2]
        return sent, served, throttled

    def _best_window(self, last: int, *, sent: bool = False) -> int:
        """The most answers served (with ``sent``: requests sent) in one
        recent window ending at or before bucket ``last``, of the windows
        that held no pause (a server's window empties during a pause: one
        spanning it shows more than the limit)."""
        ends = range(last - 4 * BUCKETS, last + 1)
        whole = [end for end in ends if not self._paused_in(end)] or list(ends)
        column = 0 if sent else 1  # (_span: sent, served, throttled)
        return max(self._span(end - BUCKETS + 1, end)[column] for end in whole)

    def _sent_at(self, now: float) -> tuple[float, int]:
        sent = _SENT.get()
        return sent if sent is not None else (now, self._generation)

    # -- the slots -----------------------------------------------------------
    async def acquire(self, stopping: Callable[[], bool] | None = None, *, retry: bool = False) -> bool:
        """Wait for this request's slot in flight (with ``concurrency``) and its
        send slot. With ``stopping``, give the wait up (return False) once it
        says True; otherwise return True. A ``retry`` waits for its slot in
        flight before the first attempts (see :meth:`ConcurrencyLimit.acquire`)."""
        if self.concurrency is not None and not await self.concurrency.acquire(stopping, retry=retry):
            return False
        if await self._send_slot(stopping):
            if self.concurrency is not None:
                self.concurrency.sent()
            return True
        if self.concurrency is not None:
            self.concurrency.release(None, overloaded=False)
        return False

    async def _send_slot(self, stopping: Callable[[], bool] | None) -> bool:
        self.stats.sent += 1
        while True:
            now = time.monotonic()
            if self.rate is None and self._paused_until <= now:
                self._took(now, self._generation)
                return True
            slot = max(now, self._next, self._paused_until)
            if self.rate is not None:
                self._next = slot + (1.0 + GUARD) / self.rate
            generation, spacing = self._generation, self._spacing
            if slot > now and not await self._sleep(slot - now, stopping):
                return False
            if generation == self._generation and spacing == self._spacing:
                self._took(max(slot, time.monotonic()) if slot > now else now, generation)
                return True
            # A cut came while this request waited: its slot belonged to the
            # schedule before the cut (or a raise: to the old spacing, which
            # would hold a big pool's reserved slots seconds behind the new
            # rate). Take one from the new schedule.

    async def _sleep(self, seconds: float, stopping: Callable[[], bool] | None) -> bool:
        """Sleep until a slot, or until a raise re-spaces the slots (True); False once ``stopping``."""
        if self._respaced is None:
            self._respaced = asyncio.Event()
        respaced = self._respaced
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if stopping is not None and stopping():
                return False
            try:
                await asyncio.wait_for(respaced.wait(), min(left, 0.25))
                return True
            except TimeoutError:
                continue
        return stopping is None or not stopping()

    def _respace(self) -> None:
        """The rate went up: slots already handed out are handed out again at the new spacing."""
        self._spacing += 1
        self._next = min(self._next, time.monotonic())
        if self._respaced is not None:
            self._respaced.set()
            self._respaced = None

    def _took(self, at: float, generation: int) -> None:
        _SENT.set((at, generation))
        self._count(at, 0)

    def release(self, status: int | None, seconds: float = 0.0, *, timed_out: bool = False) -> None:
        """An attempt ended: with an HTTP ``status``, or none (no answer); it
        took ``seconds``. Frees its slot in flight and counts the answer."""
        if status is not None and status != 429:
            self._served()
        if self.concurrency is not None:
            ok = status is not None and 200 <= status < 300
            overloaded = timed_out or status in OVERLOAD_STATUSES
            self.concurrency.release(seconds if ok else None, overloaded=overloaded)

    def succeeded(self) -> None:
        """A request's final answer was a success (counted already by :meth:`release`
        when the client reports every attempt; counted here otherwise)."""
        if _SENT.get() is None:
            self._served()

    def held_after(self) -> float | None:
        """Seconds after which a change still unanswered is held by the MDM
        (far longer than its answers take) and worth reading back; None
        while that is not known (no adaptive concurrency, no answers yet)."""
        return self.concurrency.held_after() if self.concurrency is not None else None

    # -- answers -------------------------------------------------------------
    def _served(self) -> None:
        now = time.monotonic()
        sent_at, generation = self._sent_at(now)
        self._count(sent_at, 1)
        if not self.adaptive or self.rate is None:
            return
        if self._test is not None:
            if generation == self._generation:
                self._test.served += 1
            self._judge(now)
            return
        self._round_answers += 1
        self._maybe_raise(now)

    def throttled(self, retry_after: float | None) -> None:
        """The server said 429: this request waits; evidence of a limit slows
        everyone down (and pauses everyone for Retry-After)."""
        self.stats.throttled += 1
        now = time.monotonic()
        sent_at, generation = self._sent_at(now)
        self._count(sent_at, 2)
        if not self.adaptive:
            self._pause(now, retry_after)
            if generation == self._generation:
                self._generation += 1
                self._next = max(now, self._paused_until)
            return
        if self._test is not None:
            if generation == self._generation:
                self._test.throttled += 1
            self._judge(now)
            return  # a cut under test: the test decides what these 429s mean
        if generation != self._generation:
            return  # an echo of the overload already acted on
        index = self._bucket(sent_at)
        sent, served, throttled = self._span(index - BUCKETS + 1, index)
        limit = self.stats.limit
        if limit is not None and served < FORGET * limit * self.window and not self._paused_in(index):
            # refused while the server served clearly less than it has shown it
            # takes: not about our pace, so what was measured was not a limit
            self.stats.limit = None
            self.stats.forgotten += 1
            self.stats.noise = max(self.stats.noise, throttled / max(1, served + throttled))
            return
        if not _excess(throttled, served + throttled, self.stats.noise):
            return
        climbing = limit is None and (self.ceiling is None or (self.rate or 0.0) < self.ceiling)
        if climbing and not self._overshot(index):
            return
        if limit is None or (self.rate or math.inf) > PAST * limit:
            # a probe just past a known limit needs no pause: the cut below
            # it is enough (and the probe's own requests wait their Retry-After)
            self._pause(now, retry_after)
        self._generation += 1
        self._next = max(now, self._paused_until)
        self.stats.cuts += 1
        resume = max(now, self._paused_until)
        self._test = _Test(self.rate, limit, throttled / max(1, served + throttled), resume, index)
        self._cut(index)

    def _overshot(self, index: int) -> bool:
        """While slow start climbs: whether the latest answers (the last quarter
        window, or as much of the last window as holds TEST_ANSWERS) show a
        limit overshot, which refuses a large share of them at once, rather
        than noise (taken to be at least NOISE_SEEN until one is learned: at
        20/s, two 429s among ten answers are common noise)."""
        first = index - BUCKETS // 4 + 1
        sent, served, throttled = self._span(first, index)
        while served + throttled < TEST_ANSWERS and first > index - BUCKETS + 1:
            first -= 1
            sent, served, throttled = self._span(first, index)
        answers = served + throttled
        if not (
            answers >= TEST_ANSWERS
            and throttled >= SUSPECT * answers
            and _excess(throttled, answers, max(self.stats.noise, NOISE_SEEN))
        ):
            return False
        # An overshoot is our pace outrunning the server's: these requests
        # went out faster than any before them. Sent at a pace well below one
        # the run has just kept up (its tail, where what is left to send is
        # mostly retries of rows already refused once, so refused again more
        # often), they say nothing about our pace: at the end of a faulty run
        # such a "limit" paused everyone for a second.
        return sent * BUCKETS / (index - first + 1) >= FORGET * self._best_window(index, sent=True)

    def _pause(self, now: float, retry_after: float | None) -> None:
        if retry_after:
            until = now + retry_after
            if until > self._paused_until:
                self._pauses.add(max(now, self._paused_until), until)
                self._paused_until = until

    def _cut(self, index: int) -> None:
        """Cut to just under what the server served in its best recent window."""
        best = self._best_window(index)
        if best >= 2:
            new = BACKOFF * best / self.window
            if self.rate is not None:
                new = min(new, BACKOFF * self.rate)
            self.stats.limit = best / self.window
        else:
            new = 0.5 * (self.rate if self.rate is not None else FALLBACK)
            self.stats.limit = new
        self.rate = max(self.floor, new)
        self._new_round()

    def _judge(self, now: float) -> None:
        """Decide a cut under test, once enough answers came after it."""
        test = self._test
        assert test is not None
        served, throttled = test.served, test.throttled
        answers = served + throttled
        # enough answers that the share before would have shown three 429s
        enough = answers >= max(TEST_ANSWERS, 3 / max(test.share, 0.01), 3 / NOISE_SEEN) and (
            now - test.resume >= self.window or answers >= (self.rate or 0.0) * self.window
        )
        # 429s coming back at the lower pace about as often as before settle it early
        persisting = throttled >= 3 and throttled >= answers * test.share / 2
        if not (enough or persisting) and now - test.resume < 4 * self.window:
            return
        self._test = None
        before = self.rate
        share = throttled / max(1, answers)
        elapsed = max(now - test.resume, self.window)
        # the requests after the cut went at its rate: not held back by a run
        # with few rows left (its tail) or by the requests in flight, which
        # would make what the server served look like its limit
        paced = answers >= USED * (self.rate or 0.0) * elapsed
        if share > MAX_NOISE and paced:
            # still refused at a high share: the cut was not enough (a fixed
            # window lets up to twice its limit through across its edge)
            served_rate = served / elapsed
            self.stats.limit = served_rate
            self.rate = max(self.floor, min(BACKOFF * (self.rate or served_rate), BACKOFF * served_rate))
        elif share > MAX_NOISE:
            # refused at a share no noise explains, though the requests since the
            # cut did not go at its rate (a run's tail, a client short of CPU):
            # nothing was measured, so the cut stands (taking it for noise let
            # the rate loose again with a quarter of the answers 429 forgiven)
            pass
        elif throttled > answers * self.stats.noise + 1 or (
            # the run's first cut from slow start (a rate that was climbing, no
            # limit known): under the limit it measured, a sliding window
            # refuses nothing at this spacing, so one 429 in the test says
            # noise (a 5% noise shows none among 60 answers one time in twenty,
            # not one in five: taken for a limit, it held a 3,000-row job near
            # 30/s for seven seconds). Once only: a server whose window was
            # still full after the cut (no Retry-After to wait out) may refuse
            # one; the noise learned from this test then takes two as before.
            throttled >= 1
            and self.stats.forgiven == 0
            and test.previous_limit is None
            and test.previous_rate is not None
        ):
            # the 429s kept coming at the lower pace: not (only) about our pace
            noise = self.stats.noise
            self.stats.noise = min(MAX_NOISE, share if noise == 0 else (noise + share) / 2)
            self.stats.forgiven += 1
            self.rate = test.previous_rate
            # a limit measured at this cut may have been noise too: climb again,
            # but not past one measured before it (the cut came of creeping just
            # past that one: cleared, slow start doubled through it and overshot)
            self.stats.limit = test.previous_limit
        else:
            # confirmed; answers to requests sent before the cut may have come since
            best = self._best_window(test.cut_bucket) / self.window
            if self.stats.limit is not None and best > self.stats.limit:
                self.stats.limit = best
                self.rate = max(self.rate or 0.0, min(BACKOFF * best, self.ceiling or math.inf))
        if before is not None and (self.rate is None or self.rate > before):
            # the requests waiting hold slots spaced at the cut's rate (seconds
            # of them at a low one): they are handed out again at the new spacing
            self._respace()
        self._new_round()

    # -- increases -----------------------------------------------------------
    def rows_start(self) -> None:
        """The run starts sending its rows: the round under way begins again
        here. Reading the MDM's lists and planning the first rows before took
        the run's own time (0.2-0.3 s), which the first round counted as the
        rate not being used: slow start's first raise came a round late."""
        if self._test is None:
            self._new_round()

    def _new_round(self) -> None:
        self._round_answers = 0
        self._round_started = time.monotonic()

    def _round_span(self, rate: float, limit: float | None) -> float:
        """How long a round of increases lasts: a window near a measured limit;
        in slow start a quarter window, or an eighth once an eighth holds
        TEST_ANSWERS answers (an overshoot still shows in the last quarter
        window's answers, which is what :meth:`_overshot` looks at; below
        that, an eighth-window round outran a 60/s limit before the server's
        window had filled and refused anything)."""
        if limit is not None:
            return self.window
        if rate * self.window / 8 >= TEST_ANSWERS:
            return self.window / 8
        return self.window / 4

    def _maybe_raise(self, now: float) -> None:
        rate, limit = self.rate, self.stats.limit
        assert rate is not None
        span = self._round_span(rate, limit)
        if self._round_answers < max(1.0, rate * span):
            return
        # A round's worth of answers at the current rate: did they come at
        # that rate, or was the run held back by something else (concurrency,
        # slow answers)? Then nothing shows the server could take more.
        elapsed = now - self._round_started
        self._new_round()
        if elapsed * USED > span:
            if limit is None and self.ceiling is None and self.stats.raises >= UNBOUND_AFTER:
                # slow start has outgrown what the run sends: the rate no
                # longer binds, so it is lifted (no timer per request) until a
                # 429 shows a limit; the requests in flight pace the run
                self.rate = None
                self._respace()
            return
        if limit is None:
            new = rate * SLOW_START
        elif rate < BACKOFF * limit:
            new = min(rate * RECOVER, BACKOFF * limit)
        elif rate < PAST * limit:
            new = rate + CREEP * limit
        else:
            new = rate * PROBE
        if self.ceiling is not None:
            new = min(new, self.ceiling)
        if new > rate:
            self.rate = new
            self.stats.raises += 1
            self._respace()


@dataclass(slots=True)
class ConcurrencyStats:
    #: the highest and lowest limit reached
    highest: float = 0.0
    lowest: float = math.inf
    #: adjustments that lowered the limit on latency, and on overload answers
    shrinks: int = 0
    drops: int = 0
    #: the lowest window median latency seen (seconds)
    base_latency: float | None = None


class ConcurrencyLimit:
    """How many requests may be in flight; with ``adaptive``, moved by latency.

    Starts at ``initial``, stays within ``minimum``..``maximum``; a fixed
    limit (``adaptive=False``) is a plain semaphore of ``initial``.
    """

    def __init__(self, *, initial: int, maximum: int | None = None, adaptive: bool = True, minimum: int = 1) -> None:
        if initial < 1 or minimum < 1:
            raise UsageError("The concurrency must be at least 1.")
        self.adaptive = adaptive
        self.minimum = minimum
        self.maximum = max(initial, maximum if maximum is not None and adaptive else initial)
        self.limit = float(initial)
        self.in_flight = 0
        self.stats = ConcurrencyStats(highest=self.limit, lowest=self.limit)
        self._waiters: deque[asyncio.Future[None]] = deque()
        # the current window
        self._answers = 0
        self._overloaded = 0
        self._latencies: list[float] = []
        self._peak = 0
        #: (when, median latency) of recent windows, and recent overload shares
        self._medians: deque[tuple[float, float]] = deque()
        self._overload_shares: deque[tuple[int, int]] = deque(maxlen=8)
        #: slot number -> when it was taken, in the order taken
        self._started: dict[int, float] = {}
        self._taken = 0
        #: the last count of held requests, the cutoff it used, and until when it stands
        self._held_count = 0
        self._held_cutoff = -math.inf
        self._held_until = -math.inf
        self._held_timer: asyncio.TimerHandle | None = None
        #: the event loop's last measured delay in running a callback (seconds)
        self._lag = 0.0
        self._probing = False

    @property
    def slots(self) -> int:
        return max(1, int(self.limit))

    def _room(self) -> int:
        """Slots free now. A request held for much longer than answers take
        (a reply the server holds for seconds) is not the server's queue: it
        stops counting, up to ``HELD_SHARE`` times the limit (a server slow for everyone
        moves the median latency, which lowers the limit instead)."""
        free = self.slots - self.in_flight
        if free > 0 or not self.adaptive or self.stats.base_latency is None:
            return free
        return free + self._held()

    def _held(self) -> int:
        """Requests in flight that count as held: a walk from the oldest,
        done again at most every ``HELD_RECOUNT`` seconds (asked two or three
        times per request, it walked some 100 held replies each time)."""
        now = time.monotonic()
        if now < self._held_until:
            return self._held_count
        cutoff = now - max(HELD, HELD_FACTOR * (self.stats.base_latency or 0.0))
        most = HELD_SHARE * self.slots
        held = 0
        for started in self._started.values():
            if started >= cutoff or held >= most:
                break
            held += 1
        self._held_count, self._held_cutoff, self._held_until = held, cutoff, now + HELD_RECOUNT
        return held

    def held_after(self) -> float | None:
        """See :meth:`RateController.held_after`: from the lowest latency seen."""
        base = self.stats.base_latency
        if not self.adaptive or base is None:
            return None
        return max(READ_BACK, HELD_FACTOR * base)

    def _unstart(self, slot: int) -> None:
        """The slot's request is no longer waiting for its answer (or is sent again)."""
        started = self._started.pop(slot, None)
        if started is not None and started < self._held_cutoff and self._held_count > 0:
            self._held_count -= 1  # it was counted held: the count stays right until the next walk

    async def acquire(self, stopping: Callable[[], bool] | None = None, *, retry: bool = False) -> bool:
        """Wait for a slot in flight; False (no slot taken) once ``stopping`` says True.

        A ``retry`` (a request that waited out a Retry-After or a backoff)
        queues before the first attempts: its row was started already, and
        the rows refused two or three times are a faulty run's last. Under
        issue 11's fault mix, one wait for a slot in ten took 130-170 ms in
        the order of arrival; retries first, one retry's in ten takes 35-50 ms."""
        while self._room() <= 0:
            if stopping is not None and stopping():
                return False
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if retry:
                self._waiters.appendleft(waiter)
            else:
                self._waiters.append(waiter)
            self._wake_when_held()
            try:
                # woken when a request in flight ends (each ends within the
                # client's timeout), then ``stopping`` is checked again
                await waiter
            except BaseException:
                self._forget(waiter)
                raise
            self._forget(waiter)
        self.in_flight += 1
        self._peak = max(self._peak, self.in_flight)
        self._taken += 1
        self._started[self._taken] = time.monotonic()
        _SLOT.set(self._taken)
        return True

    def sent(self) -> None:
        """The current task's request goes out now (it may have waited for a
        send slot since it took its slot in flight): whether the server holds
        it is counted from here, not from a wait of the client's own."""
        slot = _SLOT.get()
        if slot in self._started:
            self._unstart(slot)
            self._started[slot] = time.monotonic()  # (last: the oldest stay first)

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        elif not waiter.cancelled():
            self._wake()  # woken, but it may not take the slot: pass the turn on

    def release(self, latency: float | None, *, overloaded: bool = False) -> None:
        """An attempt ended; ``latency`` of a successful answer (None: no success)."""
        self.in_flight = max(0, self.in_flight - 1)
        self._unstart(_SLOT.get())
        if self.adaptive:
            self._observe(latency, overloaded)
        self._wake()

    def _wake_when_held(self) -> None:
        """With every slot taken, wake the waiters when the oldest request in
        flight starts to count as held (no answer may come to wake them before)."""
        if self._held_timer is not None or not self.adaptive or self.stats.base_latency is None:
            return
        after = max(HELD, HELD_FACTOR * self.stats.base_latency)
        held = self._held()
        # the oldest request not yet counted held
        oldest = next(itertools.islice(self._started.values(), held, None), None)
        if oldest is None or held >= HELD_SHARE * self.slots:
            return

        def wake() -> None:
            self._held_timer = None
            self._held_until = -math.inf  # count again: one more is held now
            self._wake()
            if self._waiters:
                self._wake_when_held()

        delay = max(HELD_RECOUNT, oldest + after - time.monotonic())
        self._held_timer = asyncio.get_running_loop().call_later(delay, wake)

    def _wake(self) -> None:
        free = self._room()
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    def _observe(self, latency: float | None, overloaded: bool) -> None:
        self._answers += 1
        self._overloaded += overloaded
        if latency is not None:
            self._latencies.append(latency)
        if self._answers < max(MIN_SAMPLES, self.slots):
            return
        self._adjust()
        self._answers = self._overloaded = 0
        self._latencies = []
        self._peak = self.in_flight
        self._probe_lag()

    def _probe_lag(self) -> None:
        """Measure how long this event loop takes to get round to a callback:
        answers wait that long here, not at the server (a client short of CPU
        is not a server queueing)."""
        if self._probing:
            return
        loop = asyncio.get_running_loop()
        self._probing = True

        def done(started: float) -> None:
            self._probing = False
            self._lag = loop.time() - started

        loop.call_soon(done, loop.time())

    def _adjust(self) -> None:
        limit = self.limit
        answers, overloaded = self._answers, self._overloaded
        share = overloaded / answers
        history = self._overload_shares
        # with little history, only a share no noise explains; then more than the usual share
        # (one overload answer more than seen, so that a quiet start is not "none at all")
        usual = (sum(o for o, _ in history) + 1) / sum(n for _, n in history) if len(history) >= 3 else None
        history.append((overloaded, answers))
        if overloaded > 2 and (share > 2 * MAX_NOISE if usual is None else _excess(overloaded, answers, usual)):
            self.limit = max(self.minimum, limit * DROP)
            self.stats.drops += 1
            self._note()
            return
        gradient = 1.0
        if self._latencies:
            now = time.monotonic()
            median = max(statistics.median(self._latencies) - LAG_FACTOR * self._lag, min(self._latencies))
            self._medians.append((now, median))
            while self._medians[0][0] < now - BASE_MEMORY:
                self._medians.popleft()
            base = min(m for _, m in self._medians)
            self.stats.base_latency = base
            gradient = max(0.5, min(1.0, TOLERANCE * base / median)) if median > 0 else 1.0
        # grow only when the slots were used: an idle limit shows nothing
        queue = QUEUE * math.sqrt(limit) if self._peak >= limit / 2 else 0.0
        target = limit * gradient + queue
        new = limit * (1 - SMOOTHING) + target * SMOOTHING
        if new < limit:
            self.stats.shrinks += 1
        self.limit = min(self.maximum, max(self.minimum, new))
        self._note()

    def _note(self) -> None:
        self.stats.highest = max(self.stats.highest, self.limit)
        self.stats.lowest = min(self.stats.lowest, self.limit)


@dataclass(frozen=True, slots=True)
class Pacing:
    """A run's pacing: the rate controller (what the client takes as its
    ``limiter``; it holds the concurrency limit too) and how many workers
    the engine starts: with adaptive concurrency, WORKERS_PER_SLOT for each
    request it may have in flight, since a row waiting out a Retry-After or
    a backoff keeps its worker but gives its slot back."""

    rate: RateController
    concurrency: ConcurrencyLimit
    workers: int
    notes: tuple[str, ...] = field(default=())


def for_run(rate_flag: str | None, concurrency_flag: int | None, provider_cls: Any) -> Pacing:
    """The pacing of a run from its ``--rate`` and ``--concurrency`` (None:
    not given) and the provider's declared limits.

    Without ``--rate`` the rate starts at the provider's ``default_rate``
    and adapts, never above its documented ``max_rate`` (no ceiling where
    the vendor documents none); ``--rate R`` is fixed at most R (a 429 still
    lowers it); ``--rate none`` starts unlimited. Without ``--concurrency``
    the requests in flight start at ``default_concurrency`` and adapt to the
    MDM's latency; ``--concurrency N`` is fixed at N. The vendor counts its
    limit over ``rate_window`` seconds (1 unless the provider says).
    """
    window = float(getattr(provider_cls, "rate_window", 1.0) or 1.0)
    notes: list[str] = []
    if rate_flag is None:
        rate = provider_cls.default_rate
        ceiling = provider_cls.max_rate
        start = rate if rate is None or ceiling is None else min(rate, ceiling)
        controller_rate, controller_ceiling = start, ceiling
    else:
        controller_rate = controller_ceiling = parse_rate(rate_flag)
        documented = provider_cls.max_rate
        if documented is not None and (controller_rate is None or controller_rate > documented):
            # an explicit --rate wins (issue 11: a server may allow more than
            # its vendor documents), but the admin is told what they asked for
            notes.append(
                f"{provider_cls.name} documents at most {_shown_rate(documented, window)}; --rate {rate_flag} "
                "asks for more: where the MDM holds to it, its 429s will hold the run."
            )
    initial = max(1, int(provider_cls.default_concurrency))
    if concurrency_flag is not None:
        if concurrency_flag < 1:
            raise UsageError("--concurrency must be at least 1.")
        concurrency = ConcurrencyLimit(initial=concurrency_flag, adaptive=False)
    else:
        maximum = MAX_CONCURRENCY
        if controller_ceiling is not None:
            maximum = min(maximum, max(initial, math.ceil(controller_ceiling * CEILING_SECONDS)))
        concurrency = ConcurrencyLimit(initial=initial, maximum=maximum, adaptive=True)
    controller = RateController(
        rate=controller_rate, ceiling=controller_ceiling, adaptive=True, window=window, concurrency=concurrency
    )
    # workers wait out their own retries (Retry-After, backoff) without a slot
    # in flight: enough of them that those waits do not bind before the limit
    workers = concurrency.maximum * (WORKERS_PER_SLOT if concurrency.adaptive else 1)
    return Pacing(controller, concurrency, workers, tuple(notes))
