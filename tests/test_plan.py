"""The plan feed: a small first chunk, and the next chunk planned while the
queue still holds rows (so the workers never wait for a whole chunk)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from bulkmdm.model import JobRow, Outcome, Step
from bulkmdm.plan import PlanFeed, PlanSettings


class _Planner:
    """Plans every row to a Step; notes each call's size and how many Steps were queued then."""

    def __init__(self) -> None:
        self.feed: PlanFeed | None = None
        self.calls: list[tuple[int, int]] = []
        self.fail_on_call: int | None = None

    async def plan(self, rows: Sequence[JobRow]) -> list[Step | Outcome]:
        assert self.feed is not None
        self.calls.append((len(rows), self.feed.queued))
        if self.fail_on_call == len(self.calls):
            raise RuntimeError("the MDM's list could not be read")
        await asyncio.sleep(0.01)  # a look-up or two
        return [Step(row, row.action, row.fields["serial"]) for row in rows]

    def batch_size(self) -> int:
        return 1

    def requests_for(self, step: Step) -> int:
        return 1


def _feed(planner: _Planner, rows: int, chunk: int, first: int | None) -> PlanFeed:
    job = [JobRow(index, "message", {"serial": f"S{index}"}) for index in range(rows)]
    settings = PlanSettings(chunk_rows=chunk, first_chunk_rows=first)
    feed = PlanFeed(planner, job, settings, record=lambda outcomes: None, stop=asyncio.Event())  # type: ignore[arg-type]
    planner.feed = feed
    return feed


async def _drain(feed: PlanFeed, workers: int = 4) -> list[int]:
    sent: list[int] = []

    async def worker() -> None:
        while (batch := await feed.next_batch()) is not None:
            await asyncio.sleep(0.001)  # the request
            sent.extend(step.row.index for step in batch)

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(workers))), 10)
    feed.close()
    return sent


async def test_the_first_chunk_is_small_and_the_next_is_planned_before_the_queue_runs_dry() -> None:
    planner = _Planner()
    feed = _feed(planner, rows=250, chunk=100, first=20)
    assert await feed.plan_next_chunk()
    sent = await _drain(feed)
    assert sorted(sent) == list(range(250))
    assert [size for size, _ in planner.calls] == [20, 100, 100, 30]
    # every later chunk was planned while rows were still queued (half a chunk or fewer)
    assert all(0 < queued < 50 for _, queued in planner.calls[1:]), planner.calls
    assert feed.queued == 0


async def test_a_job_planned_in_one_piece_is_planned_once() -> None:
    # a destructive job is confirmed on its whole plan: no first chunk of its own
    planner = _Planner()
    feed = _feed(planner, rows=30, chunk=30, first=None)
    assert await feed.plan_next_chunk()
    assert sorted(await _drain(feed)) == list(range(30))
    assert planner.calls == [(30, 0)]


async def test_a_chunk_planned_ahead_that_fails_stops_the_run_with_its_error() -> None:
    planner = _Planner()
    planner.fail_on_call = 2
    feed = _feed(planner, rows=100, chunk=40, first=10)
    assert await feed.plan_next_chunk()
    sent = await _drain(feed)
    # planned ahead while the first chunk was sent: the failure stops the run
    # there (what was not sent is left to run again), and nothing after it goes
    assert set(sent) <= set(range(10))
    assert isinstance(feed.error, RuntimeError) and feed.stop.is_set()


async def test_closing_the_feed_cancels_a_chunk_being_planned() -> None:
    planner = _Planner()
    feed = _feed(planner, rows=300, chunk=100, first=10)
    assert await feed.plan_next_chunk()
    for _ in range(5):
        assert await feed.next_batch() is not None
    ahead: Any = feed._ahead
    assert ahead is not None  # 5 queued, fewer than half a chunk: the next is being planned
    feed.close()
    await asyncio.sleep(0)
    assert ahead.cancelled() or ahead.done()


def test_a_dry_run_says_what_each_action_would_do_in_words() -> None:
    """Each action is said in words ("Would delete device BSN3"), never as its verb ("Would delete-device")."""
    from bulkmdm.actions import ACTIONS, would
    from bulkmdm.model import JobRow, Step

    for action in ACTIONS:
        text = would(Step(JobRow(0, action, {"tag": "T", "group": "G", "app": "A"}), action, "device X"))
        assert text.startswith("Would ") and text.endswith(".") and ("-" not in action or action not in text), text
    assert would(Step(JobRow(0, "delete-user", {}), "delete-user", "user sam@skola.se")) == (
        "Would delete user sam@skola.se."
    )
