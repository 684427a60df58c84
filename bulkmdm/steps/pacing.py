"""Pacing: every call the request path makes to the rate and concurrency
controllers (``limits.py``), in one place.

An attempt takes a slot (:meth:`Pace.take`) before it goes out and gives it
back with what came of it (:meth:`Pace.answered`, :meth:`Pace.no_answer`);
a 429 is reported with its Retry-After (:meth:`Pace.throttled`), and the
waits before a retry, a 429's included, are :meth:`Pace.wait`, cut short
when the run stops. The controllers decide what a slot costs and whether a
429 holds everyone; this class only carries the request path's side of it.

Every call after :meth:`Pace.take` carries the attempt's
:class:`~bulkmdm.limits.Slot` back: the controller hands out a ticket
(``slot = await acquire(...)``) and takes it back with what came of it
(``release(slot, ...)``, ``throttled(slot, ...)``), so no state about an
attempt lives anywhere but in the value passed along.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..limits import RateController, Slot

__all__ = ["STOP_CHECK", "Pace", "Slot"]

#: seconds between two looks at the run's stop during a wait
STOP_CHECK = 0.25


class Pace:
    """The request path's side of the shared rate and concurrency controller."""

    def __init__(self, limiter: RateController | None = None) -> None:
        self.limiter = limiter or RateController(rate=None, adaptive=False)

    def take_now(self) -> Slot | None:
        """A slot at once, when one is free and nothing waits for one (no await:
        most attempts); None: :meth:`take` waits for one."""
        return self.limiter.take_now()

    async def take(self, stopping: Callable[[], bool], *, retry: bool) -> Slot | None:
        """A slot for one attempt; None when the run stopped first. A ``retry``
        goes before the first attempts waiting."""
        return await self.limiter.acquire(stopping, retry=retry)

    def give_back(self, slot: Slot, seconds: float = 0.0) -> None:
        """The slot taken, unused or with nothing learned (no answer of the MDM's own)."""
        self.limiter.release(slot, None, seconds)

    def answered(self, slot: Slot, status: int, seconds: float) -> None:
        """The attempt's answer and how long it took (what adaptive concurrency reads)."""
        self.limiter.release(slot, status, seconds)

    def no_answer(self, slot: Slot, seconds: float, *, timed_out: bool) -> None:
        self.limiter.release(slot, None, seconds, timed_out=timed_out)

    def throttled(self, slot: Slot, retry_after: float | None) -> None:
        """The attempt in ``slot`` was answered 429: whether it is evidence of
        a limit (a pause for everyone) is the controller's business."""
        self.limiter.throttled(slot, retry_after)

    def held_after(self) -> float | None:
        """Seconds after which an answer not yet come is held far longer than answers take (None: not known)."""
        return self.limiter.held_after()

    async def wait(self, seconds: float, stopping: Callable[[], bool]) -> bool:
        """Wait before a retry (a backoff, a Retry-After); False when cut short
        by the stop. On the event loop's clock (monotonic, as ``time.monotonic``),
        so that tests can run it on a fake one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            if stopping():
                return False
            await asyncio.sleep(min(left, STOP_CHECK))
        return not stopping()
