"""Reachability: the run's stop when the MDM goes away.

Once the MDM has answered in this run, ``UNREACHABLE_AFTER`` connections in
a row that cannot be made, or as many changes in a row sent without an
answer, show that it went away: the run stops then (``halt``), rather than
every row in flight spending its retries on it. Before it ever answered, a
wrong --url is the set-up's error, not this.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import BulkMDMError, ConnectError, TransportError, Unreachable

#: Connections in a row that could not be made (no answer between them), or
#: changes in a row sent without an answer (timed out, dropped), once the MDM
#: has answered in this run, that show it went away.
UNREACHABLE_AFTER = 20


class Reachability:
    """Counts what the MDM answers and what it does not; stops the run when it is gone."""

    def __init__(self, halt: Callable[[BulkMDMError], None] | None = None) -> None:
        self._halt = halt
        #: any HTTP answer came from the MDM in this run / a 2xx one did
        self.answered = False
        self.answered_ok = False
        #: connections in a row that could not be made (reset by any answer), and to where
        self.unreachable = 0
        self._unreachable_at = ""
        #: changes in a row that got no answer (reset by an answer to a change)
        self.unanswered_changes = 0

    def answer(self, *, change: bool, credential: bool) -> None:
        """An HTTP answer came (any status)."""
        if not credential:
            self.answered = True
        self.unreachable = 0
        if change:
            self.unanswered_changes = 0

    def answered_as_the_mdm(self) -> None:
        """A 2xx answer of the vendor's kind: from here on, failures are the MDM's, not the set-up's."""
        self.answered_ok = True

    def no_answer(self, error: TransportError, where: str, *, change: bool, credential: bool) -> None:
        """An attempt got no answer: ``error`` says whether a connection was made."""
        if type(error) is ConnectError:
            self.unreachable += 1
            self._unreachable_at = where
        if change and not credential:
            self.unanswered_changes += 1

    def check(self, error: TransportError, *, reached: bool) -> None:
        """Stop the run (``halt``) when the MDM is found gone. Without a
        ``halt``, a request that never reached it raises instead."""
        if not self.answered:
            return
        # a connection failed since the last answer: it went (the changes in flight then dropped first)
        connecting = self.unreachable > 0
        if self.unreachable >= UNREACHABLE_AFTER or (self.unanswered_changes >= UNREACHABLE_AFTER and connecting):
            why = (
                f"the MDM stopped answering: the last {max(self.unreachable, self.unanswered_changes)} requests "
                f"got no answer, and connections to {self._unreachable_at} can no longer be made; "
                "check that it is up and reachable"
            )
        elif self.unanswered_changes >= UNREACHABLE_AFTER:
            why = (
                f"the MDM stopped answering changes: the last {self.unanswered_changes} sent got no answer "
                f"({error}); check that it is up and working, or allow it a longer --timeout"
            )
        else:
            return
        gone = Unreachable(why, attempts=error.attempts)
        if self._halt is not None:
            self._halt(gone)
        elif never_delivered(error, reached):
            raise gone


def never_delivered(error: TransportError, reached: bool) -> bool:
    """No attempt of the request reached the MDM: every one failed to connect."""
    return not reached and type(error) is ConnectError
