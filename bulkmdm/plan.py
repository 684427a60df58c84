"""Plan: the feed of batches the workers send, planned a chunk of rows at a time.

``provider.plan`` resolves a chunk of rows to Steps (to send) or Outcomes
(skipped, failed look-up); the feed records those outcomes at once and queues
the Steps in batches of one ``batch_key``. A million-row job never holds a
million Steps. The first chunk is planned before the workers start (and a
destructive job confirmed on it); it is small, so that the first request
goes out soon (on a 20,000-row job, planning 10,000 rows first held it for
some 0.1 s). The next chunk is planned alongside the sending once fewer
than half a chunk of rows are queued, so the queue does not run dry.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from .actions import ACTIONS
from .model import JobRow, Outcome, Reason, Status, Step
from .words import IN_FLIGHT_DETAIL
from .providers.base import Provider

#: rows in the first chunk at most (the rest of the job is planned while it is sent)
FIRST_CHUNK = 1_000
#: the next chunk is planned once fewer than this share of a chunk's rows are queued
AHEAD = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanSettings:
    """How the feed treats rows (from the run's options)."""

    #: rows per ``provider.plan`` call
    chunk_rows: int
    #: rows in the first call, if fewer (the job's start waits for it)
    first_chunk_rows: int | None = None
    #: rows whose request was in flight when an earlier run died
    in_flight_before: frozenset[int] = frozenset()
    #: resend those (when not verifiable) instead of reporting them unknown
    resend_unknown: bool = False
    dry_run: bool = False


class PlanFeed:
    """Batches for the workers; ``next_batch()`` plans the next chunk when the queue runs dry."""

    def __init__(
        self,
        provider: Provider,
        rows: Sequence[JobRow],
        settings: PlanSettings,
        *,
        record: Callable[[list[Outcome]], None],
        stop: asyncio.Event,
    ) -> None:
        self.provider = provider
        self.rows = rows
        self.settings = settings
        self.record = record
        self.stop = stop
        self.planned_up_to = 0
        self.batches: deque[list[Step]] = deque()
        #: the Steps in ``batches``
        self.queued = 0
        self.lock = asyncio.Lock()
        #: the next chunk, being planned while the workers send
        self._ahead: asyncio.Future[None] | None = None
        #: mutating requests a real run would send (dry run's estimate)
        self.planned_requests = 0
        #: an error raised while planning a later chunk (raised after the pool stops)
        self.error: BaseException | None = None

    def queued_steps(self) -> list[Step]:
        return [step for batch in self.batches for step in batch]

    def batches_hint(self) -> int:
        """How many workers are worth starting."""
        return len(self.batches) + len(self.rows) - self.planned_up_to

    async def next_batch(self) -> list[Step] | None:
        """The next batch to send; None when there is nothing more (or the run is stopping)."""
        if self.stop.is_set():
            return None
        if self.batches:
            return self._pop()
        async with self.lock:
            while not self.batches:
                if not self._more_to_plan():
                    return None
                if not await self._plan_caught():
                    return None
            # another worker (or the plan ahead) may have planned while this one waited for the lock
            return None if self.stop.is_set() else self._pop()

    def _pop(self) -> list[Step]:
        batch = self.batches.popleft()
        self.queued -= len(batch)
        if (
            self._ahead is None
            and self.queued < AHEAD * self.settings.chunk_rows
            and self.planned_up_to < len(self.rows)
            and not self.lock.locked()
        ):
            self._ahead = asyncio.ensure_future(self._plan_ahead())
        return batch

    async def _plan_ahead(self) -> None:
        try:
            async with self.lock:
                if self._more_to_plan():
                    await self._plan_caught()
        finally:
            self._ahead = None

    def _more_to_plan(self) -> bool:
        return self.planned_up_to < len(self.rows) and self.error is None and not self.stop.is_set()

    async def _plan_caught(self) -> bool:
        """Plan the next chunk (under the lock); an error is kept for the engine and stops the run."""
        try:
            return await self.plan_next_chunk()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the engine once the pool stops
            self.error = exc
            self.stop.set()
            return False

    def close(self) -> None:
        """The pool has stopped: a chunk still being planned is not needed."""
        if self._ahead is not None:
            self._ahead.cancel()

    async def plan_next_chunk(self) -> bool:
        """Plan the next chunk; False when the run stopped first."""
        size = self.settings.chunk_rows
        if self.planned_up_to == 0 and self.settings.first_chunk_rows is not None:
            size = min(size, self.settings.first_chunk_rows)
        chunk = self.rows[self.planned_up_to : self.planned_up_to + max(1, size)]
        plan_task = asyncio.ensure_future(self.provider.plan(chunk))
        stop_task = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({plan_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        stop_task.cancel()
        if not plan_task.done():
            plan_task.cancel()
            return False
        planned = plan_task.result()
        self.planned_up_to += len(chunk)
        if len(planned) != len(chunk):
            raise RuntimeError("provider.plan returned the wrong number of results")
        steps, decided = self._sort(chunk, planned)
        self.record(decided)
        batches = batches_of(steps, self.provider.batch_size())
        if self.settings.dry_run:
            self.planned_requests += sum(1 if len(b) > 1 else self.provider.requests_for(b[0]) for b in batches)
        self.batches.extend(batches)
        self.queued += len(steps)
        return True

    def _sort(self, chunk: Sequence[JobRow], planned: Sequence[Step | Outcome]) -> tuple[list[Step], list[Outcome]]:
        """Steps to send, and the rows planning already decided."""
        steps: list[Step] = []
        decided: list[Outcome] = []
        was_in_flight = self.settings.in_flight_before
        for row, item in zip(chunk, planned, strict=True):
            if isinstance(item, Step):
                if (
                    row.index in was_in_flight
                    and not ACTIONS[row.action].verifiable
                    and not self.settings.resend_unknown
                ):
                    decided.append(
                        Outcome(
                            row.index, Status.UNKNOWN, IN_FLIGHT_DETAIL, resolved=item.resolved, reason=Reason.NO_ANSWER
                        )
                    )
                else:
                    steps.append(item)
            else:
                decided.append(reconciled(row, item) if row.index in was_in_flight else item)
        return steps, decided


def reconciled(row: JobRow, item: Outcome) -> Outcome:
    """A row whose request was in flight when the earlier run died, re-planned
    against the MDM's current state: already in the wanted state means the
    earlier request took effect; for a delete, the object being gone means
    the same."""
    if item.reason is Reason.ALREADY:
        return item.with_(
            status=Status.SUCCEEDED,
            detail="Done by the earlier run (confirmed by reading it back).",
            reason=Reason.READ_BACK,
        )
    if item.reason is Reason.NOT_FOUND and row.action in ("delete-device", "delete-user"):
        return item.with_(
            status=Status.SUCCEEDED, detail="Deleted by the earlier run (it is gone now).", reason=Reason.READ_BACK
        )
    return item


def batches_of(steps: list[Step], size: int) -> list[list[Step]]:
    """Steps grouped by ``batch_key`` into batches of at most ``size``, in row order."""
    if size <= 1:
        return [[step] for step in steps]
    groups: dict[Hashable, list[Step]] = {}
    for step in steps:
        groups.setdefault(step.batch_key, []).append(step)
    batches = [group[start : start + size] for group in groups.values() for start in range(0, len(group), size)]
    batches.sort(key=lambda batch: batch[0].index)
    return batches
