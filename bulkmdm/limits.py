"""Rate and concurrency control shared by every worker of a run.

One :class:`RateController` per run. It hands out send slots spaced
``(1 + GUARD)/rate`` apart, so there is never a burst above the rate (unlike
``aiolimiter.AsyncLimiter(N, T)``, which lets up to 2N through at a window
edge). It is written here rather than wrapping aiolimiter because the rate
changes while a run goes: it is lowered on 429 and raised slowly after a run
of successes, never above an explicit ``--rate``; aiolimiter keeps its rate
in private attributes.

How the rate adapts (``adaptive=True``)
---------------------------------------

Every answer is attributed to the slot its request was sent in (a context
variable set by :meth:`RateController.acquire`, read back by
:meth:`~RateController.throttled` and :meth:`~RateController.succeeded` in
the same task), which gives three things a plain counter cannot:

* **One cut per overload.** 429s for requests sent before the last cut are
  echoes of the overload already acted on; they do not cut again.
* **A measured limit instead of a guess.** When a request sent at time *t*
  is refused, the requests sent in the second before *t* that succeeded are
  what the server let through in its window: that count is the server's
  limit as seen from here. The rate drops to 95% of it (and at least 5%
  below the current rate), so after one 429 the run goes on just under the
  limit instead of sawing between 70% and 100% of it. With no usable count
  (nothing succeeded in that second) the rate is halved.
* **No stale slots.** Slots handed out before a 429 are handed out again,
  after the Retry-After pause and at the new rate; otherwise every waiting
  worker would fire into the server's full window.

Increases come after each second's worth of successes at the current rate
(``rate`` of them), and only when they came at no less than 3/4 of it (a run
held back by ``--concurrency`` or slow answers has shown nothing about the
server):

* before any 429 nothing is known, so it climbs from the provider's safe
  default by half a second (x1.5/s, "slow start") up to the ceiling;
* below 95% of the last measured limit (after repeated cuts) it returns
  there by x1.2/s;
* near the measured limit it creeps by 0.25% of it a second, so a probe
  past the limit (which costs a Retry-After pause) comes every ~20 s;
* more than 4% past the measured limit (2% past, once paced) with no 429, the server has raised
  its limit: +5%/s again.

Never above ``ceiling``, never below ``floor``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

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
#: After a 429 the rate goes to this share of the measured limit.
BACKOFF = 0.95
#: Seconds of successes behind a measurement or an increase.
WINDOW = 1.0
#: An increase needs this share of the rate to have been used.
USED = 0.75
#: Growth per second: before any 429, back towards the measured limit, near
#: it (a share of the limit, added), past it.
SLOW_START, RECOVER, CREEP, PROBE = 2.0, 1.2, 0.0025, 1.05
#: This far past the measured limit with no 429, the limit has gone up.
PAST = 1.0 + 2 * GUARD
#: Start from here when a run with no rate is refused and nothing can be measured.
FALLBACK = 10.0

#: (send time, generation) of the request the current task sent last.
_SENT: ContextVar[tuple[float, int] | None] = ContextVar("bulkmdm_rate_slot", default=None)


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


@dataclass(slots=True)
class _Window:
    """The second before a refused request was sent, and how many requests
    sent in it succeeded (answers still coming in are added as they come)."""

    generation: int
    start: float
    end: float
    counted: int
    #: the rate that was cut (None: there was none)
    rate: float | None


@dataclass(slots=True)
class RateStats:
    #: slots handed out (every attempt takes one)
    sent: int = 0
    #: 429 answers reported
    throttled: int = 0
    #: times the rate was lowered (one per overload, not per 429)
    cuts: int = 0
    #: times it was raised
    raises: int = 0
    #: the server's limit as last measured on a 429 (requests/s), if any
    limit: float | None = None


class RateController:
    """Strict pacing; on 429 a measured cut, then a careful climb.

    ``rate=None`` means no limit (until a 429 says otherwise, if adaptive).
    ``ceiling`` caps every increase (an explicit ``--rate`` is its own
    ceiling; ``None``: no cap). ``adaptive=False`` keeps the rate fixed
    (Retry-After still pauses everyone). ``floor`` is the lowest rate a cut
    may reach.
    """

    def __init__(
        self,
        *,
        rate: float | None,
        ceiling: float | None = None,
        adaptive: bool = True,
        floor: float = 0.2,
    ) -> None:
        if rate is not None and not rate > 0:
            raise UsageError("The rate must be greater than 0.")
        if ceiling is not None and not ceiling > 0:
            raise UsageError("The rate ceiling must be greater than 0.")
        if not floor > 0:
            raise UsageError("The rate floor must be greater than 0.")
        self.ceiling = ceiling if ceiling is not None else rate
        self.rate = rate if rate is None or self.ceiling is None else min(rate, self.ceiling)
        self.adaptive = adaptive
        self.floor = floor
        self.stats = RateStats()
        #: the earliest time the next slot may be handed out
        self._next = 0.0
        self._paused_until = 0.0
        #: bumped on every cut: slots and answers from before it are stale
        self._generation = 0
        #: send times of requests that succeeded, in the order they answered
        self._ok: deque[float] = deque(maxlen=20_000)
        #: successes since the last change of rate, and when that was
        self._ok_since = 0
        self._changed = time.monotonic()
        self._window: _Window | None = None

    async def acquire(self, stopping: Callable[[], bool] | None = None) -> bool:
        """Wait for this request's send slot. With ``stopping``, give the wait
        up (return False) once it says True; otherwise return True."""
        self.stats.sent += 1
        while True:
            now = time.monotonic()
            if self.rate is None and self._paused_until <= now:
                _SENT.set((now, self._generation))
                return True
            slot = max(now, self._next, self._paused_until)
            if self.rate is not None:
                self._next = slot + (1.0 + GUARD) / self.rate
            generation = self._generation
            if slot > now and not await sleep_unless(slot - now, stopping):
                return False
            if generation == self._generation:
                _SENT.set((slot, generation))
                return True
            # A 429 came while this request waited: its slot belonged to the
            # schedule before the cut. Take one from the new schedule.

    def throttled(self, retry_after: float | None) -> None:
        """The server said 429: slow down (and pause everyone for Retry-After)."""
        self.stats.throttled += 1
        now = time.monotonic()
        if retry_after:
            self._paused_until = max(self._paused_until, now + retry_after)
        sent = _SENT.get()
        sent_at, generation = sent if sent is not None else (now, self._generation)
        if generation != self._generation:
            return  # sent before the last cut: an echo of the same overload
        self._generation += 1
        resume = max(now, self._paused_until)
        self._next = resume
        self._changed = resume
        self._ok_since = 0
        if not self.adaptive:
            return
        counted = sum(1 for t in self._ok if sent_at - WINDOW <= t < sent_at)
        self._window = _Window(generation, sent_at - WINDOW, sent_at, counted, self.rate)
        self.stats.cuts += 1
        self._cut()

    def _cut(self) -> None:
        """Set the rate from the window behind the last 429."""
        w = self._window
        assert w is not None
        if w.counted >= 2:
            limit = w.counted / WINDOW
            new = BACKOFF * limit
            if w.rate is not None:
                new = min(new, BACKOFF * w.rate)
        else:
            new = 0.5 * (w.rate if w.rate is not None else FALLBACK)
            limit = new
        self.stats.limit = limit
        self.rate = max(self.floor, new)

    def succeeded(self) -> None:
        """A request went through: after a second of them, maybe speed up."""
        now = time.monotonic()
        sent = _SENT.get()
        ok = self._ok
        ok.append(sent[0] if sent is not None else now)
        while ok and ok[0] < now - 2 * WINDOW - 1.0:
            ok.popleft()
        if not self.adaptive or self.rate is None:
            return
        w = self._window
        if sent is not None and w is not None and sent[1] == w.generation and w.start <= sent[0] < w.end:
            # Sent before the refused request, answered after it (a 429 comes
            # back at once, a success only after the server's work): it was
            # in the server's window too, so the measured limit goes up by one.
            w.counted += 1
            if w.counted >= 2:
                rate = self.rate
                self._cut()
                self.rate = max(self.rate, rate)
            return
        self._ok_since += 1
        if self._ok_since < max(1.0, self.rate * WINDOW):
            return
        # A second's worth of successes at the current rate: did they come at
        # that rate, or was the run held back by something else (--concurrency,
        # slow answers)? Then nothing shows the server could take more.
        elapsed = now - self._changed
        self._changed = now
        self._ok_since = 0
        if elapsed * USED > WINDOW:
            return
        rate, limit = self.rate, self.stats.limit
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
