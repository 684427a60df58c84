"""An in-memory run against a limit shape, on the event loop's clock: the
pacer's own rows, each retried after a 429 as the client retries it (its
Retry-After, then a retry's turn), against a server model with a fixed
latency. No sockets: under ``@pytest.mark.looptime`` minutes run in
milliseconds."""

from __future__ import annotations

import asyncio
import math
import random
import statistics
from dataclasses import dataclass, field
from typing import Protocol

from bulkmdm.limits import Pacing, for_run
from bulkmdm.providers import get as provider


class Allows(Protocol):
    """A server's limit (``bulkmdm.sim.common``): None, or the Retry-After of a 429."""

    def allow(self, now: float) -> float | None: ...


@dataclass
class Outcome:
    rows: int
    #: (when, allowed) of every request the server saw
    requests: list[tuple[float, bool]] = field(default_factory=list)
    done: int = 0
    #: seconds each request waited for its turn
    waits: list[float] = field(default_factory=list)
    #: when each row was done
    finished: list[float] = field(default_factory=list)

    @property
    def throttled(self) -> int:
        return sum(not ok for _, ok in self.requests)

    @property
    def share(self) -> float:
        return self.throttled / max(1, len(self.requests))

    def rate(self, start: float = 0.0, end: float | None = None) -> float:
        """Requests allowed a second between ``start`` and ``end`` (s after the first request)."""
        first = self.requests[0][0]
        last = self.requests[-1][0] if end is None else first + end
        allowed = [t for t, ok in self.requests if ok and first + start <= t <= last]
        return (len(allowed) - 1) / (allowed[-1] - allowed[0]) if len(allowed) > 1 else 0.0

    def median_wait(self) -> float:
        return statistics.median(self.waits)

    def most_rate(self, share: float = 0.99) -> float:
        """Rows a second until ``share`` of them were done (the rest is the
        tail of rows waiting out the server's Retry-After)."""
        first = self.requests[0][0]
        return share * self.rows / (self.finished[math.ceil(share * self.rows) - 1] - first)

    def share_between(self, start: float, end: float) -> float:
        """The share of requests answered 429 between ``start`` and ``end`` (s after the first)."""
        first = self.requests[0][0]
        inside = [ok for t, ok in self.requests if first + start <= t <= first + end]
        return sum(not ok for ok in inside) / max(1, len(inside))


async def drive(
    limit: Allows | None,
    rows: int,
    *,
    pacing: Pacing | None = None,
    latency: float = 0.005,
    workers: int | None = None,
    throttle_rate: float = 0.0,
    throttle_retry_after: float = 1.0,
    seed: int = 1,
) -> Outcome:
    """Send ``rows`` requests through the pacing of a default DuoSTATION run
    (or ``pacing``) to a server allowing what ``limit`` allows."""
    pacing = pacing or for_run(None, None, provider("duostation"))
    limiter = pacing.rate
    loop = asyncio.get_running_loop()
    outcome = Outcome(rows)
    rng = random.Random(seed)
    todo = iter(range(rows))

    async def one() -> None:
        retry = False
        while True:
            asked = loop.time()
            slot = await limiter.acquire(retry=retry)
            assert slot is not None
            outcome.waits.append(loop.time() - asked)
            await asyncio.sleep(latency / 2)
            now = loop.time()
            wait = limit.allow(now) if limit is not None else None
            if wait is None and throttle_rate and rng.random() < throttle_rate:
                wait = throttle_retry_after
            outcome.requests.append((now, wait is None))
            await asyncio.sleep(latency / 2)
            if wait is None:
                limiter.release(slot, 200, latency)
                outcome.done += 1
                outcome.finished.append(loop.time())
                return
            limiter.release(slot, 429, latency)
            limiter.throttled(slot, wait)
            await asyncio.sleep(wait)
            retry = True

    async def worker() -> None:
        for _ in todo:
            await one()

    await asyncio.gather(*(worker() for _ in range(workers or pacing.workers)))
    return outcome
