"""Rate and concurrency control shared by every worker of a run.

One :class:`RateController` per run. It hands out send slots spaced
``1/rate`` apart, so there is never a burst above the rate (unlike
``aiolimiter.AsyncLimiter(N, T)``, which lets up to 2N through at a window
edge). It is written here rather than wrapping aiolimiter because the rate
changes while a run goes: it is lowered on 429 and raised slowly after a run
of successes (AIMD), never above an explicit ``--rate``; aiolimiter keeps its
rate in private attributes.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

from .errors import UsageError

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$", re.I)
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def parse_rate(text: str) -> float | None:
    """'100/min' -> 1.667 requests/s; '20/s' or '20' -> 20.0; '0', 'none',
    'unlimited' -> None (no limit)."""
    if text.strip().casefold() in {"none", "unlimited", "off", "0"}:
        return None
    match = _RATE.match(text)
    if not match:
        raise UsageError(f"--rate {text!r} is not a rate; write it like 20/s or 100/min.")
    per = _PER[(match.group(2) or "s").casefold()]
    value = float(match.group(1)) / per
    if value <= 0:
        return None
    return value


@dataclass(slots=True)
class RateStats:
    sent: int = 0
    throttled: int = 0


class RateController:
    """Strict pacing with additive-increase / multiplicative-decrease.

    ``rate=None`` means no limit. ``ceiling`` caps the increase (an explicit
    ``--rate`` is its own ceiling). ``adaptive=False`` keeps the rate fixed.
    """

    def __init__(
        self,
        *,
        rate: float | None,
        ceiling: float | None = None,
        adaptive: bool = True,
        floor: float = 0.2,
    ) -> None:
        if rate is not None and rate <= 0:
            raise UsageError("The rate must be greater than 0.")
        self.rate = rate
        self.ceiling = ceiling if ceiling is not None else rate
        self.adaptive = adaptive
        self.floor = floor
        self.stats = RateStats()
        self._next = 0.0
        self._paused_until = 0.0
        self._streak = 0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait for this request's send slot."""
        self.stats.sent += 1
        if self.rate is None and self._paused_until == 0.0:
            return
        async with self._lock:
            now = time.monotonic()
            slot = max(now, self._next, self._paused_until)
            if self.rate is not None:
                self._next = slot + 1.0 / self.rate
            else:
                self._next = slot
        delay = slot - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def throttled(self, retry_after: float | None) -> None:
        """The server said 429: slow down (and pause everyone for Retry-After)."""
        self.stats.throttled += 1
        self._streak = 0
        now = time.monotonic()
        if retry_after:
            self._paused_until = max(self._paused_until, now + retry_after)
        if not self.adaptive:
            return
        if self.rate is None:
            # We had no limit and hit one: start from what we were doing.
            self.rate = max(self.floor, 20.0)
        # Only one decrease per burst of 429s: answers to requests sent at the
        # old rate keep arriving for a moment after the first one.
        if now - getattr(self, "_last_cut", 0.0) > 1.0 / max(self.rate, 0.1):
            self.rate = max(self.floor, self.rate * 0.7)
            self._last_cut = now

    def succeeded(self) -> None:
        """A request went through: after a run of them, creep the rate up."""
        if not self.adaptive or self.rate is None:
            return
        self._streak += 1
        if self._streak >= max(10, int(self.rate)):
            self._streak = 0
            new = self.rate * 1.05 + 0.1
            if self.ceiling is not None:
                new = min(new, self.ceiling)
            self.rate = new
