"""The journal's in-flight mark: a batch's rows are marked in flight only when
one of its changes is about to go out, so a run killed while rows wait for a
slot leaves them ``not-run``, not ``unknown``."""

from __future__ import annotations

from collections.abc import Awaitable

from .context import RequestContext


class InFlightMark:
    """Calls the batch's ``before_change`` hook before a change is sent."""

    def mark(self, context: RequestContext) -> Awaitable[None] | None:
        """Mark the batch in flight before a change goes out (the client calls
        this for changes only): the journal's commit of the mark, which the
        client awaits before sending (the attempt's latency starts after it),
        or None when there is nothing to wait for (no hook, or the batch was
        marked already). Not a coroutine itself: a change with nothing to
        wait for here goes out without one more coroutine to run."""
        if context.before_change is None:
            return None
        return context.before_change()
