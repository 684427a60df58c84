"""What is retried, and how long to wait: the retry policy, declared once.

Written here rather than taken from stamina/tenacity because each attempt
must (1) take a fresh token from the shared rate controller, (2) honour a
server's Retry-After, and (3) ask, before resending a request that may
already have been applied, whether it took effect. Those three hooks sit in
the middle of the attempt loop in ``transport.py``; what stays here is the
small, pure part: which answers are worth another try and how long to sleep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

#: Answers that mean "not done, try again later". 408 and 429 say the server
#: did not process the request; 502/503/504 say the request failed before an
#: answer was made. 500 and other 4xx are final: sending the same thing again
#: will not change the answer.
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be greater than 0, not {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped; Retry-After wins."""

    attempts: int = 6
    base: float = 0.5
    cap: float = 30.0
    #: the longest Retry-After we agree to wait; longer fails the attempt
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        check_positive("attempts", self.attempts)
        check_positive("base", self.base)
        check_positive("cap", self.cap)

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the given (1-based) failed attempt."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return random.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())
