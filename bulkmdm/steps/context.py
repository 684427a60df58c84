"""What the scheduler tells the client about one batch, passed as a value.

The scheduler builds one :class:`RequestContext` per batch and hands it to
``provider.execute(steps, context)``, which passes it to every
``client.request(..., context=context)`` of the batch. It carries the
batch's hooks: mark its rows in flight just before a change goes out
(:class:`~.inflight.InFlightMark`), and let the canary's next batch go while
a row waits out a fault (:class:`~.canary.CanaryTurn`). A read-back's
requests carry :meth:`RequestContext.reading_back` so that they go out even
while the run stops (they settle a change in flight).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class RequestContext:
    #: called right before a change (not a read) goes out; what it returns, if
    #: anything, is awaited first (the journal's commit of the in-flight mark)
    before_change: Callable[[], Awaitable[None] | None] | None = None
    #: called when a request is about to wait out an answer worth retrying
    waiting_out: Callable[[], None] | None = None
    #: the request reads a change back (``verify``)
    read_back: bool = False

    def reading_back(self) -> RequestContext:
        """The context of this batch's read-backs."""
        return self if self.read_back else replace(self, read_back=True)


#: a request outside any batch (look-ups, exports, token fetches)
NO_CONTEXT = RequestContext()
#: a read-back outside any batch
READ_BACK = RequestContext(read_back=True)
