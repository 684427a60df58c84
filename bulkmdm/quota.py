"""A vendor's daily API quota, shared by every request of a run.

ManageEngine allows 2,500 API calls a day (1,000 for a free organisation).
The journal counts each MDM's calls per local day across runs
(``Journal.calls_today``); :class:`DayQuota` carries that count through a run,
one call per attempt, and decides what happens when the budget is spent:

* without ``--wait-for-quota`` the run stops cleanly before the budget is
  exceeded (:class:`QuotaExhausted`): the rows not sent stay ``not-run``, and
  the same command continues them tomorrow;
* with it, every request holds until the day resets (local midnight, the day
  the journal counts in), the person running it is told once ("waiting for
  the daily quota, resumes at HH:MM"), and the run continues.

The vendor's doc does not say when its day resets. When the server itself
says the quota is spent (ManageEngine: a 429 that outlasts the minute's
window) while our own count says there is room (another integration spent
it, or the server's day is not our local day), a waiting run holds until
midnight or for an hour, whichever comes first, and asks again.

The clock is :func:`now` (module level, so that a test can move the wall
clock to just before midnight instead of waiting a day).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable
from datetime import date, datetime, timedelta

from .errors import QuotaExhausted
from .limits import sleep_unless

#: how long a hold after the server's own refusal lasts at most before asking again
SERVER_RETRY = timedelta(hours=1)
#: a long hold sleeps in steps this long, so that a wall clock that jumps is noticed
STEP_SECONDS = 30.0
#: calls counted between two writes to the journal, for an MDM without a daily limit
SAVE_EVERY = 1_000
#: seconds between two reads of the wall clock while calls are counted (the
#: monotonic clock in between): a wall clock that jumps (a laptop woken the
#: next day) is noticed within this
LOOK_EVERY = 1.0


def now() -> datetime:
    """The local wall clock (the day the journal counts calls in)."""
    return datetime.now()


def next_reset(moment: datetime) -> datetime:
    """The local midnight after ``moment``."""
    return datetime.combine(moment.date() + timedelta(days=1), datetime.min.time())


def tenant(provider: str, url: str, organisation: str = "") -> str:
    """Whose API quota calls spend, as the journal counts its calls per day:
    the ``organisation`` where the vendor counts per organisation (several
    share one cloud URL), else the MDM at ``url``. The organisation is kept
    only as a SHA-256 digest: what names it may be a credential."""
    if organisation:
        return f"{provider} organisation {hashlib.sha256(organisation.encode()).hexdigest()[:32]}"
    return f"{provider} {url.rstrip('/')}"


class DayQuota:
    """Today's API calls to one MDM against its daily ``limit`` (None: no limit).

    ``used``: the calls earlier runs made today (from the journal). ``wait``:
    hold until the reset instead of stopping. ``on_hold`` is told, once per
    hold, what the run is waiting for."""

    def __init__(
        self,
        limit: int | None,
        used: int = 0,
        *,
        wait: bool = False,
        vendor: str = "the MDM",
        on_hold: Callable[[str], None] | None = None,
        save: Callable[[date, int], None] | None = None,
    ) -> None:
        self.limit = limit
        self.used = used
        self.wait = wait
        self.vendor = vendor
        self.on_hold = on_hold
        #: adds calls to the journal's count of a day (``Journal.add_calls``)
        self.save = save
        self.day = now().date()
        #: this run's calls per local day
        self.sent: Counter[date] = Counter()
        #: ... and how many of them the journal has
        self._saved: Counter[date] = Counter()
        #: the moment a hold ends, while one is on (every waiting request shares it)
        self._until: datetime | None = None
        #: how many holds this run made
        self.holds = 0
        #: when (monotonic clock) :meth:`_roll` next reads the wall clock
        self._look_at = -math.inf

    # -- one call per attempt -------------------------------------------------
    async def take(self, stopping: Callable[[], bool]) -> bool:
        """Count one call against today's budget, holding first while it is spent
        (``wait``); False when the run stopped during a hold.

        Raises :class:`QuotaExhausted` when the budget is spent and the run does
        not wait."""
        while True:
            if self.take_now():
                return True
            if not self.wait:
                raise QuotaExhausted(
                    f"this run has used {self.vendor}'s {self.limit:,} API calls for today; run the same command "
                    "after midnight to continue (or add --wait-for-quota to hold until then)"
                )
            if not await self._hold(stopping):
                return False

    def take_now(self) -> bool:
        """Count one call when today's budget has it and no hold is on; False: nothing counted."""
        self._roll()
        if self._until is not None or (self.limit is not None and self.used >= self.limit):
            return False
        self.used += 1
        day = self.day
        sent = self.sent[day] = self.sent[day] + 1
        if self.limit is not None or sent - self._saved.get(day, 0) >= SAVE_EVERY:
            self.flush()
        return True

    def flush(self) -> None:
        """Give the journal the calls it does not have yet. Under a daily limit
        each call is written as it goes out (a ManageEngine run makes at most
        100 a minute), so a run killed part way has counted every call it
        made; otherwise every ``SAVE_EVERY`` calls and at the run's end. A
        write that fails raises ``JournalError``, as the run's other journal
        writes do; what it did not write is tried again at the next."""
        if self.save is None:
            return
        for day, count in self.sent.items():
            if count > self._saved[day]:
                self.save(day, count - self._saved[day])
                self._saved[day] = count

    def refused_by_server(self) -> None:
        """The server says the day's quota is spent (whatever our count says):
        the next call of a waiting run holds until midnight, or an hour,
        whichever comes first."""
        if self._until is None:
            moment = now()
            self._until = min(next_reset(moment), moment + SERVER_RETRY)
            self._announce("the MDM says its daily API quota is spent")

    # -- the hold -------------------------------------------------------------
    def _roll(self) -> None:
        """A new day: earlier runs' calls were yesterday's. The wall clock is
        read at most every ``LOOK_EVERY`` seconds (and at the next reset, or
        the end of a hold, if sooner): asked once per call, reading it cost
        more than the rest of counting the call."""
        looked = time.monotonic()
        if looked < self._look_at:
            return
        moment = now()
        if moment.date() != self.day:
            self.day = moment.date()
            self.used = 0
        if self._until is not None and moment >= self._until:
            self._until = None
        due = (next_reset(moment) if self._until is None else min(next_reset(moment), self._until)) - moment
        self._look_at = looked + min(LOOK_EVERY, due.total_seconds())

    def _announce(self, why: str) -> None:
        self.holds += 1
        until = self._until
        assert until is not None
        if self.on_hold is not None:
            self.on_hold(f"Waiting for the daily quota, resumes at {until:%H:%M} ({why}; Ctrl-C stops here).")

    async def _hold(self, stopping: Callable[[], bool]) -> bool:
        if self._until is None:
            self._until = next_reset(now())
            self._announce(f"{self.vendor}'s {self.limit:,} API calls for today are used")
        until = self._until
        while until is not None and (left := (until - now()).total_seconds()) > 0:
            if not await sleep_unless(min(left, STEP_SECONDS), stopping):
                return False
            until = self._until
        if stopping():
            return False
        if self.on_hold is not None and self._until is not None:
            self.on_hold("The daily quota has reset: continuing.")
        self._look_at = -math.inf  # the wall clock says the hold is over: read it now
        self._roll()
        return True
