"""Rate and concurrency control shared by every worker of a run.

A run is paced by two controllers, built together by :func:`for_run`: a
:class:`RateController` (how fast requests go out, adapted to the MDM's 429
answers) holding a :class:`ConcurrencyLimit` (how many may be in flight,
adapted to the MDM's latency). Every attempt, first or retry, takes a slot
from :meth:`RateController.acquire`: a :class:`Slot` value that the caller
hands back with the answer (:meth:`RateController.release`) and, for a 429,
with its Retry-After (:meth:`RateController.throttled`). Time is the event
loop's clock (``loop.time()``), or a clock passed in.

The rate after a throttle: the AWS SDKs' adaptive retry mode
---------------------------------------------------------------

botocore's ``retries/adaptive.py``, ``retries/throttling.py`` and
``retries/bucket.py`` (``ClientRateLimiter``, ``CubicCalculator``,
``RateClocker``, ``TokenBucket``), which apply TCP CUBIC (RFC 8312) to a
request rate. From them:

* **A token bucket for sending.** Every attempt takes a token; tokens come at
  the sending rate (``TokenBucket``). Ours holds one token, not a second's
  worth (and, once CUBIC sets the rate, the tokens due while the event loop
  was late to give a turn, so that the rate found is the rate sent): a
  server that counts any one second (a sliding window) refuses a burst
  above the rate. Before the first 429 a run with no rate of its own
  (``--rate none``) sends without a bucket, as botocore does until its
  first throttle (``_enabled``).
* **The measured rate.** Answers are counted in half-second buckets, each
  closed bucket weighing ``RATE_SMOOTHING`` against the rate before
  (``RateClocker``: ``_TIME_BUCKET_RANGE`` 0.5, ``_DEFAULT_SMOOTHING`` 0.8);
  a bucket cut short by a start or a hold is left out (it would measure the
  hold). A new rate is never more than ``MAX_RATE_ADJUST`` times it
  (``_MAX_RATE_ADJUST_SCALE``): before any 429 this is slow start, the rate
  doubling with what actually went out (and never under the vendor's
  ``default_rate`` it started from).
* **CUBIC.** On a throttle, ``W_max`` is the measured rate of the answers
  the server took, not 429 (botocore takes every answer: a run sent far
  past a limit, ``--rate none``, would measure its own pace, while what was
  taken is the limit), at most the bucket's rate and at most what the server
  took over its own last ``window`` (the span it counts its limit over; the
  half-second buckets also catch the burst a token bucket lets through as it
  empties, which is not its rate) unless a hold ended within it (a few
  answers after a hold are no rate). At slow start's end it is what the
  server took over that window alone: the rate doubles faster than the
  half-second buckets close, and the meter lags it (a measure under the
  limit would hold the plateau under it; one over it, a bucket's burst,
  ends at the next cut, which the time since the hold measures). After a hold of at least that window
  (a Retry-After that long empties what the server counts: a window's
  requests, a bucket's debt) it is also at most what the server took since
  the hold ended: a probe past a bucket's rate empties its burst before a
  429 says so, and the last window then holds all of the burst and measures
  the pace sent, where the time since the hold spreads it (BBR's estimate of
  a token-bucket policer, Linux ``tcp_bbr.c`` ``bbr_lt_bw_sampling``: the
  average rate delivered over an interval that starts at a loss). Not for a
  probe past slow start's ``W_max``: that is a ramp's figure (the meter lags
  a ramp), and the time since the hold is mostly the plateau held at it, the
  run's own pace, which would keep an underestimate probe after probe. The
  rate becomes ``BETA * W_max`` and then regrows as ``SCALE * (t - K)**3 +
  W_max``, with ``K = cbrt(W_max * (1 - BETA) / SCALE)``
  (``CubicCalculator``: ``_BETA`` 0.7, ``_SCALE_CONSTANT`` 0.4): quickly
  back to ``W_max``, a plateau near it, then a probe past it.

Three rules are ours. **One cut per overload:** a 429 cuts the rate only for
a request sent a whole ``window`` after the last cut, the span over which
the vendor counts its limit (RFC 8312 reduces once per congestion event; the
429s of requests sent before the server's window emptied of the old pace
belong to the cut already made). **A Retry-After holds everyone:** a 429
that is evidence of a limit (below) holds every send until its Retry-After,
and the waiting rows then take tokens at the new rate, retries first: never
as a wave. **A probe is worth its hold:** against a limit that has not
moved, CUBIC's probe past ``W_max`` ends in a 429 whose Retry-After holds
every send, time the limit goes unused (a second's Retry-After on a bucket
that refills in a fifth of one loses four fifths of a second). The plateau
at ``W_max`` is therefore stretched: CUBIC's clock stops at ``K`` for
``PROBE_EVERY`` times the hold of the cut, at most ``PLATEAU_MOST`` seconds,
so that the holds of probes take at most ``1 / PROBE_EVERY`` of the time,
while a limit that was raised is probed for again at most ``PLATEAU_MOST``
seconds after the rate is back at ``W_max``.

429s that do not depend on our pace
-----------------------------------

The rule: *the background share is the share of 429s over the last*
``BACKGROUND_WINDOWS`` *windows in which no 429 was evidence and the rate
was below the last limit (Laplace's rule of succession: one more 429 than
seen, over two more answers); a 429 is evidence of a limit only when the
last window's answers hold more 429s than that share explains at*
``SIGMAS`` *standard deviations.* With no window counted yet the share is
taken to be ``STARTING_SHARE`` before the first cut (a run's first answers
are too few to tell noise from a limit, and a limit overshot by slow start
soon refuses far more) and none after a cut (a limit was seen: any 429 may
be it). Evidence strikes out the window counted just
before it, which the last window's answers reach into. Laplace's estimate
keeps a background of none from making one 429 evidence: a window left out
for a lone 429 would keep the share at none, and every sporadic 429 would cut
the rate again. A 429 that is not evidence makes only its own request wait.

Concurrency from latency: TCP Vegas / Netflix Gradient2
-------------------------------------------------------

The number of requests in flight is the control variable (TCP Vegas compares
each round trip with the lowest seen; Netflix concurrency-limits'
``Gradient2Limit`` turns their ratio into a limit). After each window of
answers (at least the limit's worth), the window's median latency of
successful answers is compared with the lowest window median of the last
``BASE_MEMORY`` seconds (Vegas' base RTT): ``gradient = TOLERANCE * base /
median`` clamped to 0.5..1 (Gradient2's ``rttTolerance`` 1.5 and clamp). The
limit becomes ``limit * gradient + QUEUE * sqrt(limit)`` (the queue the
server may hold: Gradient's ``SquareRootFunction``), smoothed, and grows only
when at least half the slots were used (Gradient2's application-limited
check). Overload answers (502, 503, 504, timeouts) cut it by ``DROP`` only
when their share exceeds what the recent windows showed (the background
rule above, applied to overloads). Replies a server holds for seconds stop
counting against the limit (they are not its queue), and the event loop's
own delay is taken out of the latency (a client short of CPU is not a server
queueing); a base under ``TIMER_GRAIN`` counts as that grain, since the
loop's own turns are latencies that long.

Until the latency first says "queueing" (or overload answers cut it), the
limit doubles after every other window whose slots were used: TCP Vegas'
slow start (Brakmo and Peterson, *TCP Vegas: End to End Congestion
Avoidance on a Global Internet*, IEEE JSAC 1995, section 3.3: exponential
growth every other round trip, the window held in between so that its
latency is measured at one size, until the round trips show a queue), so
that a run reaches a fast server's concurrency within a few windows, not
after thousands of answers of square-root steps. The first window held past
the server's size shows its queue, and the gradient takes over from there.

What counts as "not queueing" is at least the client's own share of the
latency. By the asymptotic bounds of a closed queueing network (Lazowska,
Zahorjan, Graham and Sevcik, *Quantitative System Performance*, 1984, ch. 5:
with N requests circulating, the response time is at least N times the
demand of the busiest centre), N requests in flight through an event loop
that spends ``c`` seconds of CPU on each answer take at least ``N * c``
each, however fast the server: so the base the gradient compares with is at
least the window's mean in flight times the loop's CPU per answer. A client
short of CPU (a fast server on loopback) then keeps its requests in flight,
which handle more answers per turn of the loop, instead of shrinking the
limit on latency that is its own. (The bound holds whichever side is
slower; what it hides is a queue at a server whose own capacity is within
``TOLERANCE`` of the client's rate, a server that then answers as fast as
the client can take its answers.) The CPU is the event loop thread's
(``time.thread_time``), counted only where the loop's clock is asyncio's
own (``time.monotonic``: the same seconds); on a virtual clock the CPU the
test takes is no part of the latency.

Workers and retries
-------------------

A row waiting out a Retry-After or a backoff gives its slot in flight back
but keeps its worker, so an adaptive run starts ``WORKERS_PER_SLOT`` workers
for each slot it may reach. The workers wait for room
(:meth:`ConcurrencyLimit.room`) before they take a row: one that frees a slot
and goes on to its next row takes it back, and the others are woken only for
a slot still free once the loop has run what was ready.
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
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$", re.I)
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}

#: CUBIC's multiplicative decrease (botocore CubicCalculator._BETA; RFC 8312 §4.5).
BETA = 0.7
#: CUBIC's scale, in requests/s per s³ (botocore CubicCalculator._SCALE_CONSTANT; RFC 8312 §5.1).
SCALE = 0.4
#: A new rate is at most this many times the measured rate (botocore ClientRateLimiter._MAX_RATE_ADJUST_SCALE).
MAX_RATE_ADJUST = 2.0
#: The measured rate's buckets (seconds) and the weight of each new one (botocore RateClocker).
RATE_BUCKET, RATE_SMOOTHING = 0.5, 0.8
#: The lowest sending rate, requests/s (botocore TokenBucket._MIN_RATE).
MIN_RATE = 0.5
#: CUBIC's plateau at W_max lasts this many times the hold that came with the cut: a probe
#: that finds the limit where it was costs that hold, here at most a tenth of the time.
PROBE_EVERY = 10.0
#: ... and at most this long (seconds): a limit that was raised is probed for again
#: within it (a 60-s window's Retry-After would otherwise stretch it to ten minutes).
PLATEAU_MOST = 10.0
#: The background share of 429s taken before a run has counted any (its first window is
#: still open): one in ten. A 5% background exceeds it by three sigmas in under one first
#: window in a thousand; a slow start past a limit soon has half its requests refused.
STARTING_SHARE = 0.1
#: Windows over which the background share of 429s is counted: ten windows
#: hold five 429s of a 5% background at 10 requests/s, enough to see it.
BACKGROUND_WINDOWS = 10
#: Standard deviations over the background that make 429s evidence (the
#: three-sigma rule: a background share passes it about once in 700 windows).
SIGMAS = 3.0
#: Seconds between two wake-ups of a loaded event loop, at the least: epoll
#: waits in whole milliseconds (asyncio rounds a timer's timeout up to one),
#: and a loop turn under load takes a few. The bucket keeps the tokens due in
#: that time (at 50/s a quarter token more than one; at 2,000/s ten), or turns
#: given late would cap the rate under the one CUBIC set (in slow start and at
#: a ceiling: one token, or a grain's worth where that is more; see
#: ``RateController._refill``).
TIMER_GRAIN = 0.005
#: While requests wait for their turn, whether the run is stopping is looked
#: at this often (seconds): Ctrl-C ends the wait within it.
STOP_CHECK = 0.25

#: Concurrency: latency up to TOLERANCE x the lowest counts as "not queueing" (Gradient2's rttTolerance).
TOLERANCE = 1.5
#: Concurrency: an answer waits about this many rounds of the event loop here before it is read.
LAG_FACTOR = 2.0
#: Concurrency: the queue allowed at the server, x sqrt(limit) (Gradient's SquareRootFunction, halved
#: so that a request waits at most about one service time behind the others).
QUEUE = 0.5
#: Concurrency: weight of a new limit against the old one, per window (Gradient2's smoothing is
#: 0.2 per sample window of 10; ours are windows of at least the limit's worth of answers).
SMOOTHING = 0.3
#: Concurrency: the factor applied when overload answers exceed their usual share (a cut as
#: CUBIC's, gentler: the latency gradient does most of the work).
DROP = 0.8
#: Concurrency: answers per adjustment, at least (Gradient2's window of 10 samples).
MIN_SAMPLES = 10
#: Concurrency: how long the lowest latency is remembered (seconds; TCP Vegas' base RTT, refreshed
#: so that a server that got slower for good is measured again).
BASE_MEMORY = 30.0
#: Concurrency: a request in flight this long (seconds; or this many times the lowest
#: latency, if more) is held by the server, not queued: it stops counting against the limit.
HELD, HELD_FACTOR = 0.25, 20.0
#: A change held this long (seconds; or HELD_FACTOR times the lowest latency, if more)
#: is read back while its answer is awaited (transport.py): shown in place, it is done.
READ_BACK = 0.5
#: ... up to this many times the limit: past that, held requests count again (a bound on
#: what is in flight).
HELD_SHARE = 3
#: seconds a count of the held requests stands before it is made again
HELD_RECOUNT = 0.005
#: The most requests in flight an adaptive run reaches (and workers the engine starts).
MAX_CONCURRENCY = 128
#: Workers per slot in flight of an adaptive run: a row waiting out a Retry-After
#: or a backoff keeps its worker but not its slot.
WORKERS_PER_SLOT = 4
#: With a documented rate ceiling, requests in flight beyond this many seconds of it are pointless.
CEILING_SECONDS = 8.0
#: Answers that say the server (or a gateway before it) is overloaded.
OVERLOAD_STATUSES = frozenset({502, 503, 504})

Clock = Callable[[], float]


def loop_clock() -> float:
    """The running event loop's clock (virtual under a fake-time loop)."""
    return asyncio.get_running_loop().time()


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
    it says True (checked every STOP_CHECK seconds)."""
    if stopping is None:
        await asyncio.sleep(seconds)
        return True
    deadline = loop_clock() + seconds
    while (left := deadline - loop_clock()) > 0:
        if stopping():
            return False
        await asyncio.sleep(min(left, STOP_CHECK))
    return not stopping()


def _excess(count: int, total: int, share: float) -> bool:
    """Whether ``count`` of ``total`` is more than a share of ``share`` explains
    (SIGMAS standard deviations over it; with no share, any count is)."""
    share = min(1.0, max(0.0, share))
    expected = total * share
    return count > expected + SIGMAS * math.sqrt(total * share * (1.0 - share))


@dataclass(frozen=True, slots=True)
class Slot:
    """One attempt's turn, handed back with its answer."""

    #: when it went out (the controller's clock)
    sent: float
    #: its slot in flight (0: no concurrency limit)
    number: int = 0


@dataclass(slots=True)
class RateStats:
    #: slots handed out (every attempt takes one)
    sent: int = 0
    #: 429 answers reported
    throttled: int = 0
    #: 429s taken for evidence of a limit (each held every send for its Retry-After)
    evidence: int = 0
    #: times the rate was cut (CUBIC's multiplicative decrease)
    cuts: int = 0
    #: CUBIC's W_max: the rate measured at the last cut (requests/s), if any
    limit: float | None = None
    #: the background share of 429s (see the module docstring)
    background: float = 0.0


class _Meter:
    """A rate of answers as botocore's ``RateClocker`` measures it: counted in
    RATE_BUCKET buckets, each closed bucket weighing RATE_SMOOTHING. The first
    bucket after a start or a hold is partial and is not taken for a
    measurement. ``counted`` answers came since the last restart (``after``)."""

    def __init__(self) -> None:
        self.rate = 0.0
        self._bucket: int | None = None
        self._count = 0
        self.counted = 0

    def restart(self, at: float) -> None:
        """Count afresh from ``at`` (the end of a hold: a bucket spanning it
        would measure the hold, not the server)."""
        self._bucket = None
        self.after = at
        self.counted = 0

    after = -math.inf
    _partial = True

    def record(self, now: float) -> None:
        if now < self.after:
            return  # an answer to a request sent before the hold
        self.counted += 1
        bucket = math.floor(now / RATE_BUCKET)
        if self._bucket is None:
            self._bucket, self._count, self._partial = bucket, 0, True
        elif bucket > self._bucket:
            if not self._partial:
                current = self._count / ((bucket - self._bucket) * RATE_BUCKET)
                self.rate = current * RATE_SMOOTHING + self.rate * (1 - RATE_SMOOTHING)
            self._bucket, self._count, self._partial = bucket, 0, False
        self._count += 1


class _Answers:
    """The 429s among the answers of the last window, and the background share."""

    def __init__(self, window: float) -> None:
        self.window = window
        #: (when, was a 429) of the last window's answers
        self._recent: deque[tuple[float, bool]] = deque()
        self.recent_throttled = 0
        self._first: float | None = None
        #: the window being counted for the background: its start, answers, 429s
        self._tally_start = 0.0
        self._tally_answers = 0
        self._tally_throttled = 0
        self._tally_evidence = False
        #: (429s, answers, when it closed) of the last windows that count for the background
        self._background: deque[tuple[int, int, float]] = deque(maxlen=BACKGROUND_WINDOWS)
        self.background = 0.0

    @property
    def recent(self) -> int:
        return len(self._recent)

    def record(self, now: float, throttled: bool) -> None:
        recent = self._recent
        recent.append((now, throttled))
        self.recent_throttled += throttled
        cutoff = now - self.window
        while recent[0][0] <= cutoff:
            self.recent_throttled -= recent.popleft()[1]
        if self._first is None:
            self._first = self._tally_start = now
        elif now >= self._tally_start + self.window:
            self._close_tally(now)
            self._tally_start = now
        self._tally_answers += 1
        self._tally_throttled += throttled

    def _close_tally(self, now: float) -> None:
        answers, throttled, evidence = self._tally_answers, self._tally_throttled, self._tally_evidence
        self._tally_answers = self._tally_throttled = 0
        self._tally_evidence = False
        if answers and not evidence:
            self._background.append((throttled, answers, now))
            self._share()

    def pace_bound(self) -> None:
        """The window being counted holds answers to requests sent at the last
        limit or past it: its 429s may depend on the pace, and it does not
        count for the background."""
        self._tally_evidence = True

    def _share(self) -> None:
        """Laplace's rule of succession over the windows counted."""
        answers = sum(n for _, n, _ in self._background)
        self.background = (sum(t for t, _, _ in self._background) + 1) / (answers + 2) if answers else 0.0

    def measured(self, now: float) -> float:
        """Answers a second over the last window (or since the first answer)."""
        if self._first is None:
            return 0.0
        return len(self._recent) / max(min(self.window, now - self._first), RATE_BUCKET)

    def served(self, now: float, since: float) -> float | None:
        """Answers not 429 a second over the last window; None when the server
        was not asked for part of it (a hold ended at ``since``, less than a
        window ago): a count over a fraction of its window, a few answers just
        after a hold, says nothing of the rate it takes."""
        if self._first is None or since > now - self.window:
            return None
        start = max(now - self.window, self._first)
        taken = sum(1 for at, throttled in self._recent if at >= start and not throttled)
        return taken / max(now - start, RATE_BUCKET)

    def evidence(self, now: float, *, cut: bool) -> bool:
        """Whether the last window's 429s are more than the background explains
        (with no window counted yet, it is taken to be STARTING_SHARE before
        the first cut and none after it); the window being counted then no
        longer counts for the background."""
        background = self.background if self._background else 0.0 if cut else STARTING_SHARE
        found = _excess(self.recent_throttled, len(self._recent), background)
        if found:
            # the last window's answers, which show it, reach into the window counted before
            self._tally_evidence = True
            while self._background and self._background[-1][2] > now - self.window:
                self._background.pop()
            self._share()
        return found


class RateController:
    """The sending rate: a token bucket whose rate follows botocore's adaptive
    mode (see the module docstring), and the concurrency limit it holds.

    ``rate=None`` sends without a bucket until a 429 that is evidence of a
    limit. ``ceiling`` caps the rate (the vendor's documented limit or an
    explicit ``--rate``). ``adaptive=False`` keeps the rate fixed and lets
    every Retry-After hold everyone. ``floor``: the lowest rate (botocore's
    MIN_RATE). ``window``: the span (seconds) over which the vendor counts its
    limit. ``clock``: seconds, by default the running event loop's.
    """

    def __init__(
        self,
        *,
        rate: float | None,
        ceiling: float | None = None,
        adaptive: bool = True,
        floor: float = MIN_RATE,
        window: float = 1.0,
        concurrency: ConcurrencyLimit | None = None,
        clock: Clock | None = None,
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
        self.rate = rate if rate is None or ceiling is None else min(rate, ceiling)
        self.adaptive = adaptive
        self.floor = floor
        self.window = window
        self.concurrency = concurrency
        self.stats = RateStats()
        self._clock: Clock = clock or loop_clock
        #: before the first cut the rate stays at least where it started (the vendor's default)
        self._least = self.rate or floor
        #: the rate of every answer (botocore's), and of those the server took (not 429)
        self._meter = _Meter()
        self._served = _Meter()
        self._answers = _Answers(window)
        # CUBIC: W_max, K and the time of the last cut
        self._w_max: float | None = None
        self._k = 0.0
        self._cut_at = -math.inf
        #: how long CUBIC's clock stops at K after the last cut (see PROBE_EVERY)
        self._plateau = 0.0
        # the token bucket (one token) and the hold of a Retry-After
        self._tokens = 1.0
        self._filled = -math.inf
        self._paused_until = -math.inf
        #: the last hold was at least a window long: the server's count started afresh after it
        self._emptied = False
        #: W_max is slow start's (a ramp's measure: the meter lags it), not yet a cut's after a probe
        self._ramp = False
        #: requests waiting for their turn (retries at the front), and what stops each
        self._waiters: deque[tuple[asyncio.Future[bool], Callable[[], bool] | None]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._stop_timer: asyncio.TimerHandle | None = None

    # -- the turns -----------------------------------------------------------
    async def acquire(self, stopping: Callable[[], bool] | None = None, *, retry: bool = False) -> Slot | None:
        """Wait for a slot in flight (with ``concurrency``) and a token; the
        :class:`Slot` to hand back, or None (nothing taken) once ``stopping``
        says True. A ``retry`` goes before the first attempts waiting."""
        slot = self.take_now()
        if slot is not None:
            return slot
        number = 0
        concurrency = self.concurrency
        if concurrency is not None:
            taken = await concurrency.acquire(stopping, retry=retry)
            if taken is None:
                return None
            number = taken
        if not self._take_now() and not await self._wait_turn(stopping, retry):
            if concurrency is not None:
                concurrency.release(number, None)
            return None
        now = self._clock()
        if concurrency is not None:
            concurrency.sent(number, now)
        self.stats.sent += 1
        return Slot(now, number)

    def take_now(self) -> Slot | None:
        """A slot at once when one is free and no request waits for its turn
        (every attempt of a run below its limits), without a wait; None:
        :meth:`acquire` waits for one."""
        if self._clock is loop_clock:
            self._clock = asyncio.get_running_loop().time  # (bound once: asked several times a request)
        concurrency = self.concurrency
        if concurrency is not None and not concurrency.free():
            return None
        now = self._clock()
        if not self._take_now(now):
            return None
        self.stats.sent += 1
        return Slot(now, 0 if concurrency is None else concurrency.take_now(now))

    def room(self) -> asyncio.Future[None] | None:
        """None when a request could take a slot in flight now; otherwise a
        future done once one may be free (:meth:`ConcurrencyLimit.room`)."""
        return None if self.concurrency is None else self.concurrency.room()

    def open_all(self) -> None:
        """Wake every worker waiting for room: the run is ending."""
        if self.concurrency is not None:
            self.concurrency.open_all()

    def _take_now(self, now: float | None = None) -> bool:
        """A token at once (``now``: the clock just read, if it was)."""
        if self._waiters:
            return False
        if now is None:
            now = self._clock()
        if now < self._paused_until:
            return False
        if self.rate is None:
            return True
        self._refill(now)
        if self._tokens >= 1.0 - 1e-9:
            self._tokens -= 1.0
            return True
        return False

    async def _wait_turn(self, stopping: Callable[[], bool] | None, retry: bool) -> bool:
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[bool] = loop.create_future()
        if retry:
            self._waiters.appendleft((turn, stopping))
        else:
            self._waiters.append((turn, stopping))
        self._schedule()
        if stopping is not None and self._stop_timer is None:
            self._stop_timer = loop.call_later(STOP_CHECK, self._check_stopping)
        try:
            return await turn
        finally:
            turn.cancel()  # (no-op once it has a result)

    def _refill(self, now: float) -> None:
        rate = self.rate
        if rate is not None and now > self._filled:
            # A turn cannot come sooner than the event loop wakes. Once CUBIC sets the rate
            # (after the first cut), below a ceiling, a turn given late keeps the tokens that
            # came meanwhile, up to TIMER_GRAIN's worth, so the rate found is the rate that
            # goes out (botocore's TokenBucket refills by the time elapsed and keeps a
            # second's worth; a loop a millisecond late at every 20-ms token would send 5%
            # under the limit it found). Otherwise the bucket holds one token, or a timer
            # grain's worth at rates past 1/TIMER_GRAIN: a ceiling (--rate, the vendor's
            # documented limit) is a pace not to pass in any second a sliding window counts,
            # and slow start's rate is a bound on its growth (twice what went out), where
            # turns given late slow the ramp and with it the overshoot past a limit.
            ceiling = self.ceiling
            if self._w_max is None or (ceiling is not None and rate >= ceiling):
                depth = max(1.0, rate * TIMER_GRAIN)
            else:
                depth = 1.0 + rate * TIMER_GRAIN
            self._tokens = min(depth, self._tokens + (now - self._filled) * rate)
        self._filled = max(self._filled, now)

    def _next_turn(self, now: float) -> float:
        if now < self._paused_until:
            return self._paused_until
        if self.rate is None:
            return now
        self._refill(now)
        return now + max(0.0, 1.0 - self._tokens) / self.rate

    def _schedule(self) -> None:
        if not self._waiters:
            return
        at = self._next_turn(self._clock())
        if self._timer is not None:
            if self._timer_at <= at + 1e-4:
                return  # it fires first and schedules again
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_at(at, self._dispatch)

    def _dispatch(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self._clock()
        waiters = self._waiters
        while waiters:
            turn = waiters[0][0]
            if turn.done():
                waiters.popleft()
                continue
            if now < self._paused_until:
                break
            if self.rate is not None:
                self._refill(now)
                if self._tokens < 1.0 - 1e-9:
                    break
                self._tokens -= 1.0
            waiters.popleft()
            turn.set_result(True)
        self._schedule()

    def _check_stopping(self) -> None:
        self._stop_timer = None
        waiting = False
        for turn, stopping in self._waiters:
            if turn.done() or stopping is None:
                continue
            if stopping():
                turn.set_result(False)
            else:
                waiting = True
        if waiting:
            self._stop_timer = asyncio.get_running_loop().call_later(STOP_CHECK, self._check_stopping)

    # -- answers -------------------------------------------------------------
    def release(self, slot: Slot, status: int | None, latency: float | None = None, *, timed_out: bool = False) -> None:
        """An attempt ended: with an HTTP ``status``, or none (no answer, or
        not sent); ``latency``: how long it took. Frees its slot in flight
        and counts the answer."""
        now = self._clock()
        if self.concurrency is not None:
            ok = status is not None and 200 <= status < 300
            overloaded = timed_out or status in OVERLOAD_STATUSES
            self.concurrency.release(slot.number, latency if ok else None, overloaded=overloaded)
        if status is None:
            return
        throttled = status == 429
        self._meter.record(now)
        if not throttled:
            self._served.record(now)
        self._answers.record(now, throttled)
        self.stats.background = self._answers.background
        if not throttled and self.adaptive and self.rate is not None:
            self._grow(now)

    def throttled(self, slot: Slot, retry_after: float | None) -> None:
        """The server answered ``slot``'s request 429 (after :meth:`release`).
        Its own request waits in any case (the caller's business); evidence
        of a limit holds every send for ``retry_after`` and cuts the rate."""
        self.stats.throttled += 1
        now = self._clock()
        if not self.adaptive:
            self._pause(now, retry_after)
            return
        if not self._answers.evidence(now, cut=self._w_max is not None):
            return
        self.stats.evidence += 1
        if slot.sent >= self._cut_at + self.window:
            self._cut(now, retry_after or 0.0)
        self._pause(now, retry_after)

    def held_after(self) -> float | None:
        """Seconds after which a change still unanswered is held by the MDM
        (far longer than its answers take) and worth reading back; None
        while that is not known (no adaptive concurrency, no answers yet)."""
        return self.concurrency.held_after() if self.concurrency is not None else None

    # -- the rate ------------------------------------------------------------
    def _measured(self, now: float) -> float:
        return self._meter.rate or self._answers.measured(now)

    def _cut(self, now: float, hold: float = 0.0) -> None:
        """CUBIC's decrease: W_max is the rate the server took (at most the
        bucket's, at most what it took over its window, and after a hold of a
        window or more at most what it took since); ``hold``: the Retry-After
        that came with it, which sets the plateau."""
        served = self._served.rate or self._answers.measured(now)
        taken = self._answers.served(now, self._paused_until) if self._answers.recent else None
        if taken is not None:
            # at slow start's end the meter lags the ramp (the rate doubles faster than its
            # half-second buckets close): what the server took over its window is the measure
            served = taken if self._w_max is None else min(served, taken)
        since = now - self._served.after
        # a probe past slow start's W_max: the plateau held at it was a lagging
        # meter's figure, and the epoch would be the run's own pace, not the server's
        past_ramp = self._ramp and self.rate is not None and self._w_max is not None and self.rate > self._w_max
        if self._emptied and not past_ramp and since >= self.window:
            # the epoch since the server's count started afresh: a bucket's burst
            # spread over it, not all of it in the last window
            served = min(served, self._served.counted / since)
        self._ramp = self._w_max is None
        w_max = min(served, self.rate if self.rate is not None else math.inf)
        if not w_max > 0:
            w_max = self.rate or self.floor
        self._w_max = w_max
        self._k = (w_max * (1 - BETA) / SCALE) ** (1 / 3)
        self._cut_at = now
        self._plateau = min(PROBE_EVERY * hold, PLATEAU_MOST)
        # the rate measured just after a hold counts only its first answers: the cut's
        # rate stands until CUBIC regrows past it
        self._least = BETA * w_max
        self.stats.cuts += 1
        self.stats.limit = w_max
        self._set_rate(now, BETA * w_max)

    def _grow(self, now: float) -> None:
        """CUBIC's growth, at most MAX_RATE_ADJUST times the measured rate."""
        # before the first cut (slow start) only the measured rate bounds it
        if self._w_max is None:
            new = math.inf
        else:
            t = now - self._cut_at
            if t >= self._k:
                # at W_max or past it: 429s now may be the limit's, not the background
                self._answers.pace_bound()
                t = max(self._k, t - self._plateau)  # the plateau at W_max (see PROBE_EVERY)
            new = SCALE * (t - self._k) ** 3 + self._w_max
        measured = self._measured(now)
        if measured > 0:
            new = min(new, MAX_RATE_ADJUST * measured)
        if new == math.inf:
            return
        self._set_rate(now, max(new, self._least))

    def _set_rate(self, now: float, rate: float) -> None:
        rate = max(self.floor, rate)
        if self.ceiling is not None:
            rate = min(rate, self.ceiling)
        if rate == self.rate:
            return
        self._refill(now)  # tokens so far at the old rate (botocore's max_rate setter)
        faster = self.rate is not None and rate > self.rate
        if self.rate is None:
            self._tokens, self._filled = 0.0, max(now, self._filled)
        self.rate = rate
        if faster and self._timer is not None:
            self._schedule()

    def _pause(self, now: float, retry_after: float | None) -> None:
        """Hold every send until ``retry_after`` from now; then tokens start afresh (no burst)."""
        if not retry_after or now + retry_after <= self._paused_until:
            return
        self._paused_until = now + retry_after
        self._emptied = retry_after >= self.window
        self._tokens, self._filled = 0.0, self._paused_until
        self._meter.restart(self._paused_until)
        self._served.restart(self._paused_until)


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
    ``clock``: seconds, by default the running event loop's; ``cpu``: CPU
    seconds of the thread that runs the loop, by default ``time.thread_time``
    where that clock is asyncio's own, none with a ``clock`` given or a
    virtual loop clock (see the module docstring).
    """

    def __init__(
        self,
        *,
        initial: int,
        maximum: int | None = None,
        adaptive: bool = True,
        minimum: int = 1,
        clock: Clock | None = None,
        cpu: Clock | None = None,
    ) -> None:
        if initial < 1 or minimum < 1:
            raise UsageError("The concurrency must be at least 1.")
        self.adaptive = adaptive
        self.minimum = minimum
        self.maximum = max(initial, maximum if maximum is not None and adaptive else initial)
        self.limit = float(initial)
        self.in_flight = 0
        self.stats = ConcurrencyStats(highest=self.limit, lowest=self.limit)
        self._waiters: deque[asyncio.Future[None]] = deque()
        #: slots kept for the waiters woken to take them (not free to anyone else meanwhile)
        self._promised = 0
        #: workers waiting for room before they take a row (:meth:`room`), and the look that wakes them
        self._idle: deque[asyncio.Future[None]] = deque()
        self._opening: asyncio.Handle | None = None
        # the current window
        self._answers = 0
        self._overloaded = 0
        self._latencies: list[float] = []
        self._peak = 0
        #: (when, median latency) of recent windows, each lower than the ones before it
        #: (see _adjust), and recent overload shares
        self._medians: deque[tuple[float, float]] = deque()
        self._overload_shares: deque[tuple[int, int]] = deque(maxlen=8)
        #: slot number -> when it was taken, in the order taken
        self._started: dict[int, float] = {}
        self._taken = 0
        #: slot numbers whose request went out (not waiting for the rate's token)
        self._out: set[int] = set()
        #: the last count of held requests, the cutoff it used, and until when it stands
        self._held_count = 0
        self._held_cutoff = -math.inf
        self._held_until = -math.inf
        self._held_timer: asyncio.TimerHandle | None = None
        #: the event loop's last measured delay in running a callback (seconds)
        self._lag = 0.0
        #: requests in flight summed over the window's answers (its mean in flight), and the
        #: event loop thread's CPU clock when the window began (see the module docstring)
        self._loaded = 0
        self._cpu_at: float | None = None
        self._cpu = cpu
        self._probing = False
        #: Vegas' slow start: the limit doubles until the latency first shows a queue,
        #: held for a window after each doubling (its answers were sent at both sizes)
        self._slow_start = adaptive
        self._doubled = False
        self._clock: Clock = clock or loop_clock

    @property
    def limit(self) -> float:
        return self._limit

    @limit.setter
    def limit(self, value: float) -> None:
        self._limit = value
        # the whole slots it allows, kept: asked a few times per request
        self._slots = max(1, int(value))

    @property
    def slots(self) -> int:
        return self._slots

    def _room(self) -> int:
        """Slots free now. A request held for much longer than answers take
        (a reply the server holds for seconds) is not the server's queue: it
        stops counting, up to ``HELD_SHARE`` times the limit (a server slow for everyone
        moves the median latency, which lowers the limit instead)."""
        free = self._slots - self.in_flight - self._promised
        if free > 0 or not self.adaptive or self.stats.base_latency is None:
            return free
        return free + self._held()

    def _held(self) -> int:
        """Requests in flight that count as held: a walk from the oldest,
        done again at most every ``HELD_RECOUNT`` seconds (asked two or three
        times per request, it walked some 100 held replies each time)."""
        now = self._clock()
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

    async def acquire(self, stopping: Callable[[], bool] | None = None, *, retry: bool = False) -> int | None:
        """Wait for a slot in flight: its number, or None (no slot taken) once
        ``stopping`` says True.

        A ``retry`` (a request that waited out a Retry-After or a backoff)
        queues before the first attempts: its row was started already, and
        the rows refused two or three times are a faulty run's last."""
        if self._clock is loop_clock:
            self._bind()
        while self._room() <= 0:
            if stopping is not None and stopping():
                return None
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if retry:
                self._waiters.appendleft(waiter)
            else:
                self._waiters.append(waiter)
            self._wake_when_held()
            try:
                # woken when a request in flight ends (each ends within the
                # client's timeout), with a slot kept for it; then
                # ``stopping`` is checked again
                await waiter
            except BaseException:
                self._forget(waiter)
                raise
            self._promised -= 1  # the slot kept is taken below, if the limit did not shrink meanwhile
        self.in_flight += 1
        self._taken += 1
        self._started[self._taken] = self._clock()
        return self._taken

    def free(self) -> bool:
        """A slot is free now and no request waits for one."""
        if self._clock is loop_clock:
            self._bind()
        return not self._waiters and self._room() > 0

    def _bind(self) -> None:
        """The running loop's clock, bound once (asked several times a request);
        the CPU clock where the loop's clock is asyncio's own (see the module docstring)."""
        loop = asyncio.get_running_loop()
        self._clock = loop.time
        if self._cpu is None and type(loop).time is asyncio.BaseEventLoop.time:
            self._cpu = time.thread_time

    def take_now(self, now: float) -> int:
        """Take the slot :meth:`free` found, its request going out at ``now``: its number."""
        self.in_flight += 1
        self._taken += 1
        self._started[self._taken] = now
        self._out.add(self._taken)
        self._peak = max(self._peak, len(self._out))
        return self._taken

    def sent(self, number: int, now: float) -> None:
        """Slot ``number``'s request goes out at ``now`` (it may have waited for
        a token since it took its slot in flight): whether the server holds
        it is counted from here, not from a wait of the client's own."""
        if number in self._started:
            self._unstart(number)
            self._started[number] = now  # (last: the oldest stay first)
        # slots used are requests sent: a slot waiting for the rate's token shows
        # the rate binding, not that more in flight would be used (Gradient2's
        # application-limited check counts requests in flight at the server)
        self._out.add(number)
        self._peak = max(self._peak, len(self._out))

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        """A waiter that will not take its slot (cancelled)."""
        if not waiter.done():
            waiter.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        elif not waiter.cancelled():
            self._promised -= 1
            self._wake()  # woken with a slot kept for it: the slot goes to the next

    def release(self, number: int, latency: float | None, *, overloaded: bool = False) -> None:
        """Slot ``number``'s attempt ended; ``latency`` of a successful answer (None: no success)."""
        self.in_flight = max(0, self.in_flight - 1)
        self._out.discard(number)
        self._unstart(number)
        if self.adaptive:
            self._observe(latency, overloaded)
        self._wake()

    def _wake_when_held(self) -> None:
        """With every slot taken, wake the waiters (and the workers waiting for
        room) when the oldest request in flight starts to count as held (no
        answer may come to wake them before)."""
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
            if self._waiters or self._idle:
                self._wake_when_held()

        delay = max(HELD_RECOUNT, oldest + after - self._clock())
        self._held_timer = asyncio.get_running_loop().call_later(delay, wake)

    def _wake(self) -> None:
        """Wake a waiter for each free slot, the slot kept for it: a request
        that comes meanwhile (``free``) cannot take it, so the waiter woken
        never finds it gone and waits again. Workers waiting for room
        (:meth:`room`) are looked at once the loop has run what is ready."""
        if self._idle and self._opening is None:
            self._opening = asyncio.get_running_loop().call_soon(self._open)
        if not self._waiters:
            return  # (most releases: the room need not be counted)
        free = self._room()
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._promised += 1
                free -= 1

    def room(self) -> asyncio.Future[None] | None:
        """None when a request could take a slot now; otherwise a future done
        once one may be free (none is kept for it), for a worker that waits
        for room before it takes a row (a row taken meanwhile would wait
        here in its place, its worker woken once more to send it)."""
        if self.free():
            return None
        opening: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle.append(opening)
        # a slot whose request the server holds frees room without an answer to say so
        self._wake_when_held()
        return opening

    def _open(self) -> None:
        """Wake a worker waiting for room for each slot still free once the
        callbacks that were ready have run: a worker that freed a slot and
        went straight on to its next row took it back meanwhile, and no one
        is woken to find it gone."""
        self._opening = None
        free = 0 if self._waiters else self._room()
        idle = self._idle
        while free > 0 and idle:
            opening = idle.popleft()
            if not opening.done():
                opening.set_result(None)
                free -= 1

    def open_all(self) -> None:
        """Wake every worker waiting for room (the run is ending: no row is left, or it stopped)."""
        while self._idle:
            opening = self._idle.popleft()
            if not opening.done():
                opening.set_result(None)

    def _observe(self, latency: float | None, overloaded: bool) -> None:
        self._answers += 1
        self._overloaded += overloaded
        self._loaded += self.in_flight + 1  # (this answer's own request included)
        if latency is not None:
            self._latencies.append(latency)
        if self._answers < max(MIN_SAMPLES, self._slots):
            return
        self._adjust()
        self._answers = self._overloaded = self._loaded = 0
        self._latencies = []
        self._peak = len(self._out)
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

    def _own_share(self) -> float:
        """The least latency the client's own CPU makes for the window's requests:
        the mean in flight times the event loop's CPU per answer (0 without a CPU clock)."""
        if self._cpu is None:
            return 0.0
        now, began = self._cpu(), self._cpu_at
        self._cpu_at = now
        if began is None or not self._answers:
            return 0.0  # (the first window: counted from here)
        return (self._loaded / self._answers) * ((now - began) / self._answers)

    def _adjust(self) -> None:
        limit = self.limit
        answers, overloaded = self._answers, self._overloaded
        own = self._own_share()
        history = self._overload_shares
        # more than the usual share (one overload answer more than seen, so that a quiet
        # start is not "none at all"); with little history it is taken to be 1 - BETA, as for 429s
        usual = (sum(o for o, _ in history) + 1) / sum(n for _, n in history) if len(history) >= 3 else 1 - BETA
        history.append((overloaded, answers))
        if overloaded > 2 and _excess(overloaded, answers, usual):
            self.limit = max(self.minimum, limit * DROP)
            self.stats.drops += 1
            self._slow_start = False
            self._note()
            return
        gradient = 1.0
        if self._latencies:
            now = self._clock()
            median = max(statistics.median(self._latencies) - LAG_FACTOR * self._lag, min(self._latencies))
            # the lowest of the last BASE_MEMORY seconds as a monotonic queue (a sliding
            # window's minimum): a median no lower than a later one can never be the lowest
            # again, so it goes; the oldest left is the lowest (one look per window, where a
            # walk of the whole memory took thousands of windows at loopback's pace)
            medians = self._medians
            while medians and medians[-1][1] >= median:
                medians.pop()
            medians.append((now, median))
            while medians[0][0] < now - BASE_MEMORY:
                medians.popleft()
            base = medians[0][1]
            self.stats.base_latency = base
            # a latency under the loop's timer grain is the client's own turn (and the
            # host's scheduling), not a queue at the server: a loopback server's
            # sub-millisecond base would take every loop turn for one; nor is one under
            # what the client's own CPU takes for the requests in flight
            least = max(base, TIMER_GRAIN, own)
            gradient = max(0.5, min(1.0, TOLERANCE * least / median)) if median > 0 else 1.0
        # grow only when the slots were used: an idle limit shows nothing
        used = self._peak >= limit / 2
        if self._slow_start and self._latencies and gradient >= 1.0:
            if used and not self._doubled:
                self.limit = min(self.maximum, 2 * limit)
                self._note()
            self._doubled = used and not self._doubled
            return
        self._slow_start = False
        queue = QUEUE * math.sqrt(limit) if used else 0.0
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
    window = float(provider_cls.rate_window)
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
            # an explicit --rate wins (a server may allow more than
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
