"""Read-back: a change whose answer is lost, held or a gateway's is read back
(the provider's ``verify``) before anything is sent again.

* **Ambiguous**: a change that may have reached the MDM without an answer
  (timed out, dropped), or answered 502/504 by a gateway (see
  ``MAYBE_DONE``), is not resent blindly, whatever its method: ``verify``
  shown in place settles it (``Response(verified=True)``); not in place, it
  is safe to send again; unreadable, or without a ``verify``, it is
  :class:`AmbiguousError` (``unknown``), never sent twice. An idempotent
  PUT or DELETE is no exception: sent again after a try that made it, it is
  a second change on the wire, and its answer (a 404, a 409) may be about
  the first try rather than the state the row asked for.
* **Held**: a change whose answer the MDM holds far longer than its answers
  take (``held_after``) is read back meanwhile; shown in place, its attempt
  is given up and the change confirmed; otherwise its answer is waited for
  as ever, and nothing is sent again.
* **Hedged**: a read-back (one object, answered as fast as any) held that
  long is sent once more alongside, and the first usable answer is taken.

A read-back's requests carry ``context.reading_back()``: they go out even
while the run stops, since they settle a change already in flight. A
``verify`` that finds the object of the change gone (a 404 to its read)
raises :class:`~bulkmdm.errors.TargetGone`: the request ends with it, and
its row fails, neither unknown nor sent again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ..errors import AmbiguousError, TargetGone, TransportError
from ..response import Failure, Response
from .context import RequestContext

log = logging.getLogger("bulkmdm.http")

#: Verify callback: True = the change is in place, False = it is not (safe to
#: send), None = cannot tell. Its requests carry the context it is given.
Verify = Callable[[RequestContext], Awaitable["bool | None"]]

#: A gateway's answers for a backend that failed or was slow to answer
#: (RFC 9110, 15.6.3 and 15.6.5): the backend may have made a change before
#: the gateway gave up on it, so to a change they mean "maybe done", as a
#: dropped connection does. 503 and 429 say the request was not processed.
MAYBE_DONE = frozenset({502, 504})

Attempt = Callable[[], Coroutine[Any, Any, "Response | Failure"]]


@dataclass(slots=True, eq=False)
class _HeldChange:
    """A change in flight whose answer may be held."""

    task: asyncio.Task[Any]
    verify: Verify
    context: RequestContext
    what: str
    #: when it counts as held (the event loop's clock)
    due: float
    #: its attempt ended (an answer, a failure, or given up)
    answered: bool = False
    #: a read-back showed it in place
    confirmed: bool = False
    checking: asyncio.Task[None] | None = None


class ReadBack:
    """Reads changes back: after an ambiguous answer, while one is held, and hedges held read-backs."""

    def __init__(self, stopping: Callable[[], bool]) -> None:
        self._stopping = stopping
        #: changes in flight that are read back if held, oldest first, and the one watch over them
        self._changes_in_flight: dict[_HeldChange, None] = {}
        self._held_watch: asyncio.TimerHandle | None = None

    def close(self) -> None:
        if self._held_watch is not None:
            self._held_watch.cancel()
            self._held_watch = None

    # -- after an ambiguous answer ---------------------------------------------
    async def after_no_answer(
        self, error: TransportError, attempt: int, verify: Verify | None, context: RequestContext
    ) -> Response | None:
        """A change that may have reached the MDM without an answer:
        confirmed, or None (not in place: safe to send again)."""
        if verify is None:
            raise AmbiguousError(
                f"{error} and may have reached the MDM; not resent, to avoid doing it twice", attempts=attempt
            )
        state = await _shown(verify, context, attempt)
        if state is None:
            raise AmbiguousError(
                f"{error}; could not tell whether it took effect, so it was not resent", attempts=attempt
            )
        return Response(200, None, {}, attempt, verified=True) if state else None

    async def after_gateway(
        self, what: str, resp: Response, verify: Verify | None, context: RequestContext
    ) -> Response | None:
        """A gateway's 502/504 to a change: confirmed, or None (not in
        place: safe to send again)."""
        if verify is None:
            raise _unsure(what, resp, "; not resent, to avoid doing it twice")
        state = await _shown(verify, context, resp.attempts)
        if state is None:
            raise _unsure(what, resp, "; could not tell whether it took effect, so it was not resent")
        return Response(200, None, {}, resp.attempts, verified=True) if state else None

    # -- a change held ---------------------------------------------------------
    async def while_held(
        self, what: str, attempt: int, verify: Verify, context: RequestContext, held: float, send: Attempt
    ) -> Response | Failure:
        """``send`` the change; if the MDM holds its answer ``held`` seconds,
        read it back meanwhile, and give the attempt up once it shows in place."""
        task = asyncio.current_task()
        if task is None:
            return await send()
        loop = asyncio.get_running_loop()
        change = _HeldChange(task, verify, context.reading_back(), what, loop.time() + held)
        # one watch for all the changes in flight, oldest first (a timer per
        # attempt costs a few microseconds of CPU each; this, less)
        changes = self._changes_in_flight
        changes[change] = None
        if self._held_watch is None:
            self._held_watch = loop.call_later(held, self._watch_held)
        try:
            return await send()
        except asyncio.CancelledError:
            if change.confirmed and task.uncancel() == 0:
                log.info("%s: in place (read back); its held answer is not waited for", what)
                return Response(200, None, {}, attempt, verified=True)
            raise
        finally:
            change.answered = True
            del changes[change]
            if change.checking is not None and not change.checking.done():
                change.checking.cancel()

    def _watch_held(self) -> None:
        """Read back the changes in flight held past their time; again at the next one's."""
        self._held_watch = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for change in self._changes_in_flight:
            if change.due > now:
                self._held_watch = loop.call_later(max(0.01, change.due - now), self._watch_held)
                return
            if change.checking is None and not self._stopping():
                log.info("%s: no answer yet, long after answers come; reading it back", change.what)
                change.checking = loop.create_task(self._read_back(change))

    async def _read_back(self, change: _HeldChange) -> None:
        try:
            shown = await change.verify(change.context)
        except Exception as exc:  # (a read-back that fails changes nothing: the answer decides)
            log.info("%s: read back while its answer was held -> %s", change.what, type(exc).__name__)
            return
        if shown is True and not change.answered:
            change.confirmed = True
            change.task.cancel()

    # -- a read-back held --------------------------------------------------------
    async def hedged(
        self,
        what: str,
        held: float,
        send: Attempt,
        again: Callable[[], Coroutine[Any, Any, Response | None]],
        settles: Callable[[object], bool],
    ) -> tuple[Response | Failure, bool]:
        """``send`` a read-back; if no answer came after ``held`` seconds, send
        it ``again`` alongside: the first usable answer of the two is taken,
        and the other given up (a read is safe to send twice). Returns the
        answer, and whether it is the first sending's own."""
        loop = asyncio.get_running_loop()
        first: asyncio.Task[Response | Failure] = loop.create_task(send())
        second: asyncio.Task[Response | None] | None = None
        try:
            done, _ = await asyncio.wait((first,), timeout=held)
            if done or self._stopping():
                return await first, True
            log.info("%s: no answer yet, long after answers come; sending it once more", what)
            second = loop.create_task(again())
            waiting = {first, second}
            while True:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                own = settles(_result(first))
                if not own and (answer := _result(second)) is not None:
                    return answer, False
                if own or (first.done() and second.done()):  # (neither usable: the first's failure decides)
                    return first.result(), True
                waiting = {task for task in waiting if not task.done()}
        finally:
            for task in (first, second):
                if task is not None and not task.done():
                    task.cancel()
            # (each ends promptly once cancelled; its slot is given back as it ends)
            await asyncio.gather(*(t for t in (first, second) if t is not None), return_exceptions=True)


async def _shown(verify: Verify, context: RequestContext, attempts: int) -> bool | None:
    """What ``verify`` shows of a change after ``attempts`` attempts (a
    :class:`TargetGone` it raises ends the request, counting them)."""
    try:
        return await verify(context.reading_back())
    except TargetGone as gone:
        gone.attempts = attempts
        raise


def _unsure(what: str, resp: Response, then: str) -> AmbiguousError:
    """A gateway's 502/504 to a change that is left as it is."""
    return AmbiguousError(
        f"the MDM answered {what} with HTTP {resp.status}, a gateway's answer: the change may have been "
        f"made behind it{then}",
        attempts=resp.attempts,
        status=resp.status,
    )


def _result(task: asyncio.Task[Any]) -> Any:
    """A task's result; None while it runs, or if it was cancelled or raised."""
    if not task.done() or task.cancelled() or task.exception() is not None:
        return None
    return task.result()
