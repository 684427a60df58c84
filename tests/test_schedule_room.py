"""The worker pool waits for room in flight before it takes a batch: a
worker that could not send takes no row, and the pool still ends when the
feed runs dry or the run stops (on the in-memory side: a fake feed, ledger
and send, the real rate and concurrency controllers)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from bulkmdm.events import QuietEvents
from bulkmdm.limits import HELD, ConcurrencyLimit, RateController
from bulkmdm.model import Outcome, Reason, Status, Step
from bulkmdm.plan import PlanFeed
from bulkmdm.schedule import Scheduler
from bulkmdm.steps.context import RequestContext


@dataclass
class _Step:
    index: int
    undo: Mapping[str, str] | None = None


class _Feed:
    """Hands out one-row batches and counts them."""

    def __init__(self, batches: int) -> None:
        self.left = list(range(batches))
        self.taken = 0

    def batches_hint(self) -> int:
        return len(self.left)

    async def next_batch(self) -> list[Any] | None:
        if not self.left:
            return None
        self.taken += 1
        return [_Step(self.left.pop(0))]

    def close(self) -> None:
        pass


class _Ledger:
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def write(
        self, outcomes: Sequence[Outcome], in_flight: Sequence[int], undo: Sequence[tuple[int, Mapping[str, str]]]
    ) -> None:
        self.outcomes += outcomes


def _pacing(slots: int) -> RateController:
    return RateController(rate=None, adaptive=False, concurrency=ConcurrencyLimit(initial=slots, adaptive=False))


async def test_a_worker_takes_no_batch_while_no_slot_is_free() -> None:
    """Three workers, one slot: while the slot's request waits for its
    answer, the other two wait for room without a row; each answer lets
    exactly one more batch be taken, and every batch is sent once."""
    rate = _pacing(1)
    feed = _Feed(4)
    answers: list[asyncio.Future[None]] = []
    sent: list[int] = []

    async def send(batch: Sequence[Step], context: RequestContext) -> list[Outcome]:
        slot = await rate.acquire()
        assert slot is not None
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        answers.append(answer)
        try:
            await answer
        finally:
            rate.release(slot, 200, 0.001)
        sent.extend(step.index for step in batch)
        return [Outcome(step.index, Status.SUCCEEDED, "done", 200, 1, reason=Reason.DONE) for step in batch]

    scheduler = Scheduler(concurrency=3, events=QuietEvents(), marks_in_flight=False, room=rate)
    ledger = _Ledger()
    pool = asyncio.ensure_future(scheduler.run(cast(PlanFeed, feed), send, ledger))
    for number in range(1, 5):
        while len(answers) < number:
            await asyncio.sleep(0)
        for _ in range(5):  # the other workers have had their turns
            await asyncio.sleep(0)
        assert feed.taken == number  # the batch in flight, none held by a waiting worker
        answers[-1].set_result(None)
    await asyncio.wait_for(pool, 5)
    assert sent == [0, 1, 2, 3] and feed.taken == 4
    assert sorted(o.index for o in ledger.outcomes) == [0, 1, 2, 3]


async def test_workers_waiting_for_room_end_when_the_run_stops() -> None:
    """A stop while workers wait for room: the request in flight finishes,
    the waiting workers end without taking a batch, the pool returns."""
    rate = _pacing(1)
    feed = _Feed(10)
    answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def send(batch: Sequence[Step], context: RequestContext) -> list[Outcome]:
        slot = await rate.acquire()
        assert slot is not None
        try:
            await answer
        finally:
            rate.release(slot, 200, 0.001)
        return [Outcome(step.index, Status.SUCCEEDED, "done", 200, 1, reason=Reason.DONE) for step in batch]

    scheduler = Scheduler(concurrency=4, events=QuietEvents(), marks_in_flight=False, room=rate)
    pool = asyncio.ensure_future(scheduler.run(cast(PlanFeed, feed), send, _Ledger()))
    for _ in range(10):
        await asyncio.sleep(0)
    assert feed.taken == 1
    scheduler.interrupt()
    answer.set_result(None)
    await asyncio.wait_for(pool, 5)
    assert feed.taken == 1


async def test_a_slot_freed_and_taken_back_at_once_wakes_no_one() -> None:
    """A worker that frees its slot and goes straight on takes it back: the
    workers waiting for room are not woken to find it gone; a slot left
    free wakes one of them."""
    concurrency = ConcurrencyLimit(initial=1, adaptive=False)
    held = await concurrency.acquire()
    assert held is not None
    waiting = [concurrency.room() for _ in range(2)]
    assert all(w is not None for w in waiting)
    concurrency.release(held, None)
    again = await concurrency.acquire()  # the same turn: no wait
    assert again is not None
    await asyncio.sleep(0)
    assert not any(w is not None and w.done() for w in waiting)
    concurrency.release(again, None)
    await asyncio.sleep(0)
    assert [w is not None and w.done() for w in waiting] == [True, False]
    assert concurrency.room() is None


async def test_a_worker_waiting_for_room_is_woken_when_the_request_in_its_slot_is_held() -> None:
    """The one slot's request gets no answer for far longer than answers take
    (the server holds it): it stops counting against the limit, and a worker
    waiting for room is woken for the slot without any answer coming."""
    concurrency = ConcurrencyLimit(initial=1, maximum=1, adaptive=True)
    concurrency.stats.base_latency = 0.005  # (answers so far took 5 ms)
    taken = await concurrency.acquire()
    assert taken is not None
    opening = concurrency.room()
    assert opening is not None
    await asyncio.sleep(0.1)
    assert not opening.done()  # not held yet: the slot is the request's
    await asyncio.wait_for(opening, HELD + 0.1)
    assert concurrency.free()
    concurrency.release(taken, None)
