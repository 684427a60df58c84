"""The canary's turn: an answer worth retrying (a 429, a 5xx, a dropped
connection) says nothing about whether the job is right, so the scheduler's
canary lets its next batch go out while this one waits it out."""

from __future__ import annotations

from .context import RequestContext


class CanaryTurn:
    """Passes the canary's turn on when a request of the batch waits out a fault."""

    def waiting_out(self, context: RequestContext) -> None:
        if context.waiting_out is not None:
            context.waiting_out()
