"""The pool's journal writes, grouped: one transaction per turn of the event
loop, a mark committed before its request may go out, nothing left unwritten
(against a real journal file, read back from a second connection)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from typing import Any
from pathlib import Path

import pytest
from conftest import journal_run

from bulkmdm.errors import JournalError
from bulkmdm.events import QuietEvents
from bulkmdm.journal import Journal, NewRow
from bulkmdm.model import Outcome, Reason, Status
from bulkmdm.schedule import GroupCommit


class _Ledger:
    """One run of a real journal, counting its transactions."""

    def __init__(self, journal: Journal, run_id: int) -> None:
        self.journal = journal
        self.run_id = run_id
        self.transactions = 0

    def write(self, outcomes: Sequence[Outcome], in_flight: Sequence[int], undo: Sequence[Any] = ()) -> None:
        self.transactions += 1
        self.journal.write(self.run_id, outcomes or None, in_flight, undo)


def _run(journal: Journal, rows: int) -> int:
    return journal_run(journal, [NewRow([f"S{i}"], "lock", f"d{i}", f"S{i}") for i in range(rows)], action="lock")


def _states(path: Path) -> dict[int, str]:
    """What another process reading the journal sees (committed rows only)."""
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT idx, coalesce(status, state) FROM rows ORDER BY idx").fetchall())
    finally:
        db.close()


def test_one_turn_is_one_transaction_and_marks_are_committed_before_the_wait_ends(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        ledger = _Ledger(journal, _run(journal, 6))

        async def go() -> None:
            writes = GroupCommit(ledger, QuietEvents())
            # three workers about to send in the same turn, two outcomes from the turn before
            writes.record(
                [
                    Outcome(0, Status.SUCCEEDED, "ok", 200, 1, reason=Reason.DONE),
                    Outcome(1, Status.FAILED, "no", 404, 1, reason=Reason.NOT_FOUND),
                ]
            )
            marks = [writes.mark_in_flight([i]) for i in (2, 3, 4)]
            assert _states(journal.path) == dict.fromkeys(range(6), "pending")  # nothing yet: still this turn
            await asyncio.gather(*marks)
            assert ledger.transactions == 1
            assert _states(journal.path) == {
                0: "succeeded",
                1: "failed",
                2: "in_flight",
                3: "in_flight",
                4: "in_flight",
                5: "pending",
            }
            writes.record([Outcome(2, Status.SUCCEEDED, "ok", 200, 1, reason=Reason.DONE)])
            writes.close()  # the pool ended: what is left is written at once
            assert ledger.transactions == 2
            assert _states(journal.path)[2] == "succeeded"

        asyncio.run(go())


def test_what_comes_within_the_commit_delay_shares_one_transaction(tmp_path: Path) -> None:
    """Answers and sends a few turns of the loop apart (as they come at full
    speed) are written together: a transaction a turn was 5,000 of them for a
    20,000-row job."""
    with Journal(tmp_path) as journal:
        ledger = _Ledger(journal, _run(journal, 4))

        async def go() -> None:
            writes = GroupCommit(ledger, QuietEvents())
            writes.record([Outcome(0, Status.SUCCEEDED, "ok", 200, 1, reason=Reason.DONE)])
            await asyncio.sleep(0)  # the next turn of the loop
            marked = writes.mark_in_flight([1])
            await asyncio.sleep(0)
            writes.record([Outcome(2, Status.FAILED, "no", 404, 1, reason=Reason.NOT_FOUND)])
            await marked
            assert ledger.transactions == 1
            assert _states(journal.path) == {0: "succeeded", 1: "in_flight", 2: "failed", 3: "pending"}

        asyncio.run(go())


def test_a_failed_write_reaches_the_waiting_worker_and_the_end_of_the_pool(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        ledger = _Ledger(journal, _run(journal, 2))

        async def go() -> None:
            writes = GroupCommit(ledger, QuietEvents())
            journal.db.close()  # the journal fails under the pool (a disk gone, a file removed)
            with pytest.raises(JournalError):
                await writes.mark_in_flight([0])
            with pytest.raises(JournalError):
                writes.record([Outcome(1, Status.SUCCEEDED, "ok", 200, 1, reason=Reason.DONE)])
            with pytest.raises(JournalError):
                writes.close()

        asyncio.run(go())
