"""What is retried, and how long to wait: the retry policy, declared once.

Each provider declares a :class:`RetryPolicy` (``Provider.retry_policy``);
the one client in ``client.py`` carries it out for every request, token
fetches included. Written here rather than taken from stamina/tenacity
because each attempt must (1) take a fresh slot from the shared rate
controller, (2) honour a server's Retry-After, within a cap, and (3) ask,
before resending a request that may already have been applied, whether it
took effect. Those hooks sit in the middle of the attempt loop in
``client.py``; what stays here is the small, pure part: which answers are
worth another try, how long to sleep, and :class:`RetryState`, where one
request's attempts stand, as a frozen value.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime, UTC
from email.utils import parsedate_to_datetime

#: Answers worth another try. 408, 429 and 503 say the server did not
#: process the request; 502 and 504 are a gateway's, whose backend may have
#: made a change before the gateway gave up on it, so a change is read back
#: before it is sent again (``steps.readback.MAYBE_DONE``).
#: 500 and other 4xx are final: sending the same thing again will not change
#: the answer.
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be greater than 0, not {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped; Retry-After wins, within ``max_wait``.

    A 429 is the server pacing the client, not the request failing: it waits
    its Retry-After (or ``throttle_wait``, or a short backoff), and it has a
    budget of its own, so that it neither doubles the backoff of the next
    failure nor spends the failures' attempts. Under sporadic noise (issue
    11: 10% 503, 5% 429) a request that drew two 429s would otherwise wait
    up to 0.4 s after its next 503 instead of 0.1 s, and six tries of any
    kind in a row failed one row in 60,000.
    """

    #: tries that failed (an overload answer, a lost connection, a timeout)
    #: before the last one's answer is final; 429s count apart, up to as many.
    #: Eight tries wait up to 0.1 + 0.2 + ... + 2 + 2 = 7.1 s in all: a
    #: request rides out an MDM's few seconds away (a node restarting
    #: behind its load balancer) as it did with six tries from 0.5 s.
    attempts: int = 8
    #: The first wait is up to 0.1 s, as gRPC's retry policy examples and
    #: Google's API clients start (and stamina's ``wait_initial``): a lone
    #: 503 among answers that come in milliseconds is not worth half a
    #: second, and under a noisy server the rows retrying are what a run's
    #: last seconds are made of (three 503s in a row wait 0.1 + 0.2 + 0.4 s,
    #: where a first wait of 0.5 s makes it 3.5 s).
    base: float = 0.1
    #: The adaptive concurrency limit (limits.py) is what spares a server in
    #: trouble: it cuts the requests in flight when overload answers exceed
    #: their usual share. A request's own backoff only spreads its retries, so
    #: it stops growing at 2 s: under independent noise (10% 503) a row's
    #: fourth and fifth waits, up to 4 and 8 s, made the last seconds of half
    #: the runs.
    cap: float = 2.0
    #: the longest wait bulkmdm agrees to (a Retry-After, a throttle wait);
    #: an answer asking for longer ends the attempts with that answer
    max_wait: float = 300.0
    #: answers retried for every method
    statuses: frozenset[int] = RETRY_STATUSES
    #: answers retried for reads only (e.g. a vendor's "500: try again in a moment")
    read_statuses: frozenset[int] = field(default_factory=frozenset)
    #: how long a 429 without Retry-After pauses everyone (None: a short backoff).
    #: A vendor whose limit is counted per window declares the window here; a
    #: 429 that comes again after a whole window was waited out means the
    #: quota is spent (``QuotaExhausted``).
    throttle_wait: float | None = None

    def __post_init__(self) -> None:
        check_positive("attempts", self.attempts)
        check_positive("base", self.base)
        check_positive("cap", self.cap)
        check_positive("max_wait", self.max_wait)

    def retries(self, method: str, status: int) -> bool:
        """Whether an answer with this status is worth another attempt."""
        return status in self.statuses or (method in READ_METHODS and status in self.read_statuses)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after the given (1-based) failed attempt (of one kind:
        the failures, or the 429s without Retry-After)."""
        return random.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))


def parse_retry_after(value: str | None, *, date: str | None = None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None if absent or unreadable.

    An HTTP date is the server's clock: it is measured from the answer's own
    ``Date`` header when that is readable (RFC 9110, 10.2.3: "the time the
    message was generated"), so a server whose clock runs an hour ahead
    asking for 2 s gets 2 s; only without one is our clock (``now``) used.
    Absurd values are passed through as large numbers (``inf`` for
    ``Retry-After: inf``): the caller compares them with its cap.
    """
    if not value:
        return None
    value = value.strip()[:100]
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return None if math.isnan(seconds) else max(0.0, seconds)
    when = _http_date(value)
    if when is None:
        return None
    server_now = _http_date(date) if date else None
    return max(0.0, (when - (server_now or now or datetime.now(UTC))).total_seconds())


def _http_date(value: str) -> datetime | None:
    try:
        when = parsedate_to_datetime(value.strip()[:100])
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


@dataclass(frozen=True, slots=True)
class RetryState:
    """Where one request's attempts stand: a frozen value, the next one
    returned by :meth:`increment` (as urllib3's ``Retry.increment`` does),
    with the ``history`` of what each attempt got."""

    #: attempts made (a retry after renewed credentials is not one more)
    attempt: int = 0
    #: the 429s among them (a budget of their own)
    throttled: int = 0
    #: the credentials were renewed once already
    renewed: bool = False
    #: the last wait was a whole throttle window (a 429 after it: the quota is spent)
    waited_window: bool = False
    #: some attempt may have reached the MDM without an answer
    reached: bool = False
    #: what each attempt got: an HTTP status, or the name of the error
    history: tuple[int | str, ...] = ()

    @property
    def failures(self) -> int:
        """The attempts that were not a 429."""
        return self.attempt - self.throttled

    def increment(self, got: int | str, *, reached: bool = False) -> RetryState:
        """The state after one more attempt, which got ``got`` (a status, or an error's name)."""
        return RetryState(
            self.attempt + 1,
            self.throttled + (got == 429),
            self.renewed,
            self.waited_window,
            self.reached or reached,
            (*self.history, got),
        )

    def renewing(self) -> RetryState:
        """The credentials were refused and renewed: the attempt is made again, not counted twice."""
        return RetryState(self.attempt, self.throttled, True, self.waited_window, self.reached, self.history)

    def waiting(self, window: bool) -> RetryState:
        """The wait before the next attempt is (``window``) or is not a whole throttle window."""
        if window == self.waited_window:
            return self
        return RetryState(self.attempt, self.throttled, self.renewed, window, self.reached, self.history)

    def new_day(self) -> RetryState:
        """The day's quota reset: the attempts start afresh (what reached the MDM still did)."""
        return RetryState(renewed=self.renewed, reached=self.reached, history=self.history)


#: every request starts here (shared: a RetryState is never changed)
FIRST = RetryState()
