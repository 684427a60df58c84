"""Schedule: the worker pool that sends the planned batches, and the stop.

A bounded pool of workers pulls batches from the plan feed (no task per
row). A batch's rows are marked in flight in the journal only when its first
change is about to go out (the ``before_change`` hook of the batch's
:class:`~bulkmdm.steps.context.RequestContext`, which the batch's requests
carry), so a run killed while rows wait for a rate slot leaves them
``not-run``, not ``unknown``. A worker takes a batch only once a request
could go out (``room``: a slot in flight free): a run has more workers than
slots (a row waiting out a Retry-After keeps its worker, not its slot), and
the others wait without a row rather than each holding one that waits for a
slot, woken once more to send it.

The run stops (no new batch starts; requests in flight may finish) on the
first Ctrl-C or SIGTERM, when the MDM refuses the credentials, and when the
circuit breaker sees the MDM refuse change after change the same way or go
away; the rows left unsent are ``not-run``. A second Ctrl-C abandons the
requests in flight (their rows are ``unknown``).

A real run starts with a canary: the first batches go out alone, one at a
time, and the pool widens to ``concurrency`` once a change succeeds, or once
``CANARY_BATCHES`` batches show that not every change is refused the same
way; a job that is wrong throughout is caught before it fans out. A canary
batch that waits out a fault (a 429, a 5xx, a dropped connection: it says
nothing about the job) or has no answer after ``CANARY_PATIENCE`` lets the
next go out alongside it, up to ``CANARY_BATCHES`` at once, so a noisy MDM
does not hold the whole run while one row retries. Canary and breaker look
only at Outcomes (status, HTTP status, detail), so they need nothing from the
providers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from .errors import AuthError, BulkMDMError, ConfirmationRefused, JournalError, QuotaExhausted
from .events import Events
from .model import Outcome, Reason, Status, Step
from .plan import PlanFeed
from .steps.context import RequestContext
from .words import NOT_SENT

#: sends one batch with its context (``Provider.execute``)
Send = Callable[[Sequence[Step], RequestContext], Awaitable[list[Outcome]]]

INTERRUPTED = NOT_SENT
CREDENTIALS_REFUSED = (
    "Not sent: the MDM refused the credentials during the run. Fix them, then run the same command again to continue."
)


#: Seconds the pool's writes gather before they are committed in one
#: transaction. Committing every turn of the event loop took some 5,000
#: transactions for a 20,000-row job at full speed (4 rows each, 0.7 s of
#: the run); within a millisecond, some 1,900 (0.44 s). A change waits that
#: long at most before it goes out, an outcome as long before it is durable.
COMMIT_DELAY = 0.001

#: batches the canary sends alone (one at a time) before the pool widens, unless one succeeds first
CANARY_BATCHES = 3
#: seconds a canary batch may go unanswered before the next goes out alongside it
CANARY_PATIENCE = 1.0
#: seconds between two looks for a stop file: a stop is seen well within a second, at one stat() each time
STOP_FILE_POLL = 0.25
#: batches in a row refused the same way (or without an answer) that stop the run
BREAKER_BATCHES = 20
#: allocations between two young passes of the cycle collector while the pool runs
YOUNG_COLLECTION = 10_000


class Breaker:
    """Counts batches in a row that went wrong the same way: the same reason
    code and HTTP status, or no answer at all (the MDM gone away)."""

    def __init__(self, threshold: int = BREAKER_BATCHES) -> None:
        self.threshold = threshold
        self.streak = 0
        self._key: tuple[str, ...] | None = None
        #: the detail of the first outcome of the streak (the MDM's own words)
        self.example = ""

    def observe(self, outcomes: Sequence[Outcome]) -> bool:
        """Count one batch's outcomes; True when the run should stop."""
        key: tuple[str, ...] | None = None
        seen = False
        for outcome in outcomes:
            if outcome.status is Status.NOT_RUN:
                continue
            refusal = _refusal(outcome)
            if not seen:
                key, seen = refusal, True
            elif refusal != key:
                key = None  # went wrong in more than one way (or not at all for some)
                break
        if not seen:
            return False
        if key is None:
            self.streak, self._key = 0, None
        elif key == self._key:
            self.streak += 1
        else:
            self.streak, self._key = 1, key
            self.example = next(o.detail for o in outcomes if o.status is not Status.NOT_RUN)
        return self.streak >= self.threshold

    def why(self) -> str:
        """The sentence that says why the run stopped, in the MDM's words."""
        if self._key == ("no answer",):
            return (
                f"The run stopped: the MDM did not answer {self.streak} changes in a row; it may be down or "
                f"unreachable (the first: {self.example.rstrip('.')})."
            )
        return f"The run stopped: the MDM refused {self.streak} changes in a row the same way: {self.example}"


#: the reasons of a change that got no answer at all (the MDM gone away), whatever the error
_NO_ANSWER = frozenset({Reason.NO_ANSWER, Reason.UNAVAILABLE})


def _refusal(outcome: Outcome) -> tuple[str, ...] | None:
    """How a change went wrong, as the breaker compares it (its reason code and
    HTTP status, never its wording); None when it did not."""
    if outcome.status not in (Status.FAILED, Status.UNKNOWN):
        return None
    if outcome.http_status is None and outcome.reason in _NO_ANSWER:
        return ("no answer",)
    return (str(outcome.reason), str(outcome.http_status or ""))


def _not_sent_reason(exc: BulkMDMError) -> Reason:
    """Why a batch a run-stopping error held back was not sent."""
    if isinstance(exc, AuthError):
        return Reason.AUTH
    if isinstance(exc, QuotaExhausted):
        return Reason.QUOTA
    return Reason.NOT_SENT


class Ledger(Protocol):
    """Where the pool writes what happens to rows (the journal, for one run)."""

    def write(
        self, outcomes: Sequence[Outcome], in_flight: Sequence[int], undo: Sequence[tuple[int, Mapping[str, str]]]
    ) -> None:
        """Record ``outcomes`` and mark the rows ``in_flight`` (with the ``undo``
        rows of their changes), committed in one transaction."""
        ...


class Room(Protocol):
    """Room in flight for one more request (the run's rate controller): a
    worker waits for it before it takes a batch, so no row waits with a
    worker that cannot send it."""

    def room(self) -> Awaitable[None] | None:
        """None when a request could go out now; otherwise what to await until one may."""
        ...

    def open_all(self) -> None:
        """Wake every worker waiting for room (the run is ending)."""
        ...


class GroupCommit:
    """The pool's writes to the ledger, a transaction per COMMIT_DELAY at most.

    A transaction costs far more than the rows in it: what the workers hand
    over (outcomes, rows about to be sent) within COMMIT_DELAY of the first
    is written in one transaction. A worker about to send waits for that
    commit, so its rows are durably in flight before the request leaves; an
    outcome is durable within a millisecond of its answer. The outcomes are
    shown (``events.advance``) once they are written.
    """

    def __init__(self, ledger: Ledger, events: Events) -> None:
        self.ledger = ledger
        self.events = events
        self._outcomes: list[Outcome] = []
        self._in_flight: list[int] = []
        self._undo: list[tuple[int, Mapping[str, str]]] = []
        self._waiting: list[asyncio.Future[None]] = []
        self._flush: asyncio.Handle | None = None
        #: why the last write failed: raised to every worker from then on
        self.error: BaseException | None = None

    def record(self, outcomes: Sequence[Outcome]) -> None:
        """Record these outcomes (committed in the loop's next turn)."""
        if self.error is not None:
            raise self.error
        self._outcomes += outcomes
        self._schedule()

    def mark_in_flight(
        self, indices: Sequence[int], undo: Sequence[tuple[int, Mapping[str, str]]] = ()
    ) -> asyncio.Future[None]:
        """Mark rows in flight, with the rows that undo their changes; the
        future is done once that is committed."""
        if self.error is not None:
            raise self.error
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._in_flight += indices
        self._undo += undo
        self._waiting.append(committed)
        self._schedule()
        return committed

    def _schedule(self) -> None:
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(COMMIT_DELAY, self.flush)

    def flush(self) -> None:
        """Write what is pending now; a failure is kept in ``error`` and handed to the waiting workers."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        outcomes, in_flight, undo, waiting = self._outcomes, self._in_flight, self._undo, self._waiting
        if not (outcomes or in_flight):
            return
        self._outcomes, self._in_flight, self._undo, self._waiting = [], [], [], []
        try:
            self.ledger.write(outcomes, in_flight, undo)
            if outcomes:
                self.events.advance(outcomes)
        except Exception as exc:  # the journal's error, raised to the workers (and to the run)
            self.error = self.error or exc
        for committed in waiting:
            if committed.done():
                continue  # its worker was cancelled (a second Ctrl-C)
            if self.error is not None:
                committed.set_exception(self.error)
            else:
                committed.set_result(None)

    def close(self) -> None:
        """Write what is left once the pool has stopped; raise the error a write met, if any."""
        self.flush()
        if self.error is not None:
            raise self.error


class Scheduler:
    """Runs the worker pool for one run and owns its stop."""

    def __init__(
        self, *, concurrency: int, events: Events, marks_in_flight: bool = True, room: Room | None = None
    ) -> None:
        self.concurrency = max(1, concurrency)
        self.events = events
        #: what workers wait for before they take a batch (None: they take one at once)
        self.room = room
        #: dry runs change nothing, so nothing is ever in flight
        self.marks_in_flight = marks_in_flight
        self.stop = asyncio.Event()
        #: the sentence rows left unsent show as their detail, once the run stops
        self.stop_reason: str | None = None
        #: the signal that stopped the run (SIGINT or SIGTERM), if any
        self.signal: int | None = None
        self.interrupts = 0
        #: what stopped the run that no row could absorb (credentials refused, ...)
        self.run_error: BulkMDMError | None = None
        #: set once a batch has been sent (an answer or an error came back)
        self.sent_any = False
        self.workers: list[asyncio.Task[None]] = []
        self.breaker = Breaker()
        #: one sentence for the summary when the breaker stopped the run
        self.breaker_stop: str | None = None
        #: batches that came back; set once the canary is over
        self.batches_done = 0
        self.widened = asyncio.Event()
        #: set while no canary batch holds the turn to go out
        self._turn = asyncio.Event()
        self._turn.set()

    # -- the stop -------------------------------------------------------------
    def stopping(self) -> bool:
        return self.stop.is_set()

    def stop_run(self, reason: str) -> None:
        """No new batch starts from now on; ``reason`` is what unsent rows will say."""
        if not self.stop.is_set():
            self.stop_reason = reason
            self.stop.set()

    def halt(self, exc: BulkMDMError) -> None:
        """Stop the run for an error no row can absorb (credentials refused, a quota spent)."""
        if self.run_error is None:
            self.run_error = exc
        why = str(exc).rstrip(".")
        self.stop_run(
            CREDENTIALS_REFUSED
            if isinstance(exc, AuthError)
            else f"Not sent: the run stopped ({why}). Run the same command again to continue."
        )

    def install_signals(self) -> Callable[[], None]:
        """Handle Ctrl-C and SIGTERM while the run lasts; returns the function that undoes it."""
        loop = asyncio.get_running_loop()
        installed = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
                installed.append(signum)
            except (NotImplementedError, RuntimeError, ValueError):
                pass

        def remove() -> None:
            for signum in installed:
                loop.remove_signal_handler(signum)

        return remove

    def _on_signal(self, signum: int) -> None:
        self.interrupts += 1
        if self.interrupts == 1:
            self.interrupt(signum)
            self.events.message(
                "Stopping: no new rows are started; waiting for requests in flight. Press Ctrl-C again to abandon them."
            )
        else:
            for task in self.workers:
                task.cancel()

    def interrupt(self, signum: int = signal.SIGINT) -> None:
        """Stop as a first Ctrl-C does: no new batch starts, requests in flight finish, the rest stays not-run."""
        if self.signal is None:
            self.signal = signum
            self.stop_run(INTERRUPTED)

    async def watch_stop_file(self, path: Path, every: float = STOP_FILE_POLL) -> None:
        """Stop like Ctrl-C once ``path`` exists: the way to stop a run where no signal can be sent to it
        (``bulkmdm serve`` on Windows, a scheduler that can only write a file)."""
        while not self.stop.is_set():
            if path.exists():
                self.interrupts = max(self.interrupts, 1)
                self.interrupt(signal.SIGINT)
                self.events.message("Stopping (asked for by a stop file): no new rows are started.")
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), every)

    # -- the pool -------------------------------------------------------------
    async def run(self, feed: PlanFeed, send: Send, ledger: Ledger) -> None:
        """Send every batch the feed gives, ``concurrency`` at a time, until it runs dry or the run stops."""
        size = max(1, min(self.concurrency, feed.batches_hint()))
        if not self.marks_in_flight:
            self.widened.set()  # a dry run changes nothing: no canary
        writes = GroupCommit(ledger, self.events)
        self.workers = [
            asyncio.ensure_future(self._work(feed, send, writes, canary=number < CANARY_BATCHES))
            for number in range(size)
        ]
        try:
            with _Collector.eased():
                await self._pool(writes)
        finally:
            feed.close()
        writes.close()

    async def _pool(self, writes: GroupCommit) -> None:
        """Wait for the workers; what they handed over is written whatever way they end."""
        try:
            await asyncio.gather(*self.workers)
        except asyncio.CancelledError:
            if self.interrupts < 2:
                writes.flush()
                raise
        except BaseException:
            for task in self.workers:
                task.cancel()
            writes.flush()
            raise

    async def _work(self, feed: PlanFeed, send: Send, writes: GroupCommit, *, canary: bool) -> None:
        room = self.room
        try:
            if not canary:
                await _first(self.widened, self.stop)
            while not self.stop.is_set():
                if room is not None and (opening := room.room()) is not None:
                    # no batch is taken until a request could go out (a worker
                    # that frees a slot and goes on to its next batch takes it first)
                    await opening
                    continue
                turn = await self._canary_turn() if not self.widened.is_set() else None
                if self.stop.is_set():
                    return
                try:
                    batch = await feed.next_batch()
                    if batch is None:
                        self.widened.set()  # nothing more to send: let the waiting workers end
                        return
                    outcomes = await self._send(batch, send, writes, turn)
                finally:
                    if turn is not None:
                        turn()
                if len(outcomes) != len(batch) or any(
                    outcome.index != step.index for outcome, step in zip(outcomes, batch, strict=True)
                ):
                    raise RuntimeError("provider returned outcomes that do not match its batch")
                writes.record(_with_undo(batch, outcomes))
                self._judge(outcomes)
        finally:
            if room is not None:
                # no more rows from this worker: those waiting for room see whether any are left
                room.open_all()

    async def _canary_turn(self) -> Callable[[], None] | None:
        """Wait for the canary's turn to send a batch alone; the function that
        passes it on, or None when the pool has widened (or the run stopped) first."""
        while not self._turn.is_set():
            if self.widened.is_set() or self.stop.is_set():
                return None
            await _first(self._turn, self.widened, self.stop)
        if self.widened.is_set() or self.stop.is_set():
            return None
        self._turn.clear()
        passed = False

        def pass_on() -> None:
            nonlocal passed
            if not passed:
                passed = True
                self._turn.set()

        return pass_on

    def _judge(self, outcomes: Sequence[Outcome]) -> None:
        """Stop on a breaker trip; widen the pool once the canary shows not every change is refused."""
        self.batches_done += 1
        tripped = self.breaker.observe(outcomes)
        if tripped and not self.stop.is_set():
            self.breaker_stop = self.breaker.why()
            self.stop_run(
                f"Not sent: {self.breaker_stop[0].lower()}{self.breaker_stop[1:].rstrip('.')}. "
                "Fix that, then run the same command again to continue."
            )
        elif (
            not self.widened.is_set()
            and self.breaker.streak < self.batches_done
            and (
                # a change made shows the job is not wrong throughout: the canary's
                # other batches need not be waited out (each fault of theirs, one at a time)
                self.batches_done >= CANARY_BATCHES or any(o.status is Status.SUCCEEDED for o in outcomes)
            )
        ):
            self.widened.set()

    async def _send(
        self, batch: Sequence[Step], send: Send, writes: GroupCommit, turn: Callable[[], None] | None = None
    ) -> list[Outcome]:
        """Send one batch, its rows marked in flight when its first change is
        about to go out; a canary batch passes its ``turn`` on when it waits out
        a fault or goes unanswered for ``CANARY_PATIENCE``."""
        marked = False

        def mark_batch_in_flight() -> Awaitable[None] | None:
            nonlocal marked
            if marked:
                return None
            marked = True
            return writes.mark_in_flight(
                [step.index for step in batch], [(step.index, step.undo) for step in batch if step.undo]
            )

        context = RequestContext(before_change=mark_batch_in_flight if self.marks_in_flight else None, waiting_out=turn)
        impatient = None if turn is None else asyncio.get_running_loop().call_later(CANARY_PATIENCE, turn)
        try:
            outcomes = await send(batch, context)
            self.sent_any = True
            return outcomes
        except (ConfirmationRefused, JournalError):
            raise
        except BulkMDMError as exc:
            self.halt(exc)
            # refused before the MDM did anything: these rows go again once the cause is fixed
            fix = "Fix the credentials" if isinstance(exc, AuthError) else "Fix that"
            detail = f"Not sent: {str(exc).rstrip('.')}. {fix}, then run the same command again to continue."
            return [
                Outcome(
                    step.index,
                    Status.NOT_RUN,
                    detail,
                    getattr(exc, "status", None),
                    getattr(exc, "attempts", 0),
                    step.resolved,
                    reason=_not_sent_reason(exc),
                )
                for step in batch
            ]
        finally:
            if impatient is not None:
                impatient.cancel()


async def _first(*events: asyncio.Event) -> None:
    """Wait until one of ``events`` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


class _Collector:
    """Python's cycle collector, eased while pools run (restored when the last ends).

    Every request allocates a few hundred short-lived objects, and the
    collector's young pass runs every 700 allocations, each time walking
    whatever is in flight; what is alive when a pool starts (the job's rows,
    the look-up lists: millions of objects on a big job) lives until it
    ends, so the full passes need not walk it again and again."""

    lock = threading.Lock()
    pools = 0
    thresholds: tuple[int, ...] = ()

    @classmethod
    @contextlib.contextmanager
    def eased(cls) -> Iterator[None]:
        with cls.lock:
            if cls.pools == 0:
                cls.thresholds = gc.get_threshold()
                gc.freeze()
                gc.set_threshold(max(cls.thresholds[0], YOUNG_COLLECTION), *cls.thresholds[1:])
            cls.pools += 1
        try:
            yield
        finally:
            with cls.lock:
                cls.pools -= 1
                if cls.pools == 0:
                    gc.set_threshold(*cls.thresholds)
                    gc.unfreeze()


def _with_undo(batch: Sequence[Step], outcomes: list[Outcome]) -> list[Outcome]:
    """A change made carries the row that puts back what its step read before it."""
    for step in batch:
        if step.undo:
            break
    else:
        return outcomes  # (most batches: nothing to undo)
    return [
        outcome.with_(undo=step.undo) if step.undo and outcome.status is Status.SUCCEEDED else outcome
        for step, outcome in zip(batch, outcomes, strict=True)
    ]
