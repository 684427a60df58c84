"""The journal's in-flight mark: a batch's rows are marked in flight only when
one of its changes is about to go out, so a run killed while rows wait for a
slot leaves them ``not-run``, not ``unknown``."""

from __future__ import annotations

from .context import RequestContext


class InFlightMark:
    """Calls the batch's ``before_change`` hook before a change is sent."""

    async def before(self, context: RequestContext) -> bool:
        """Mark the batch in flight before a change goes out (the client
        calls this for changes only, when the batch has the hook); True when
        that waited for the journal's commit (the attempt's latency starts
        after it)."""
        if context.before_change is None:
            return False
        committed = context.before_change()
        if committed is None:
            return False
        await committed
        return True
