"""``bulkmdm track``: from "the MDM accepted it" to "the device did it".

A run's ``succeeded`` means the MDM accepted a change; many changes reach a
device only when it next checks in. Tracking reads the run's report and its
journal (which knows when each change went out), and asks the MDM, with the
provider's read-only look-ups in bulk, whether each succeeded row's effect
shows, until every trackable row is confirmed or ``until`` has passed. Each
look rewrites the report in place (atomically) with two more columns:

* ``device_status``: ``confirmed``, ``pending``, ``not-trackable``, or blank
  for a row that did not succeed;
* ``device_seen``: when the device was seen to show it (ISO 8601, UTC).

How an action is followed is the provider's declaration
(:attr:`~bulkmdm.providers.base.Provider.follow`): a change that lives in the
MDM is confirmed at once, a device command by ``Provider.look``; an action the
vendor's API cannot show is ``not-trackable``. Every other cell of the report
stays as it was, and a row already ``confirmed`` is not asked about again, so
running it again continues. Requests go through the run's pacing and the
vendor's daily quota (a look that does not fit in today's budget waits, with
``--wait-for-quota``, or stops). Ctrl-C writes what is known so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from . import providers
from .columns import TRACK_COLUMNS
from .errors import BulkMDMError, QuotaExhausted, UsageError
from .journal import Journal, RowRecord, state_dir
from .model import Status
from .providers.base import Follow, ListFailed, Provider, Tracked

if TYPE_CHECKING:
    from .quota import DayQuota

CONFIRMED, PENDING, NOT_TRACKABLE = "confirmed", "pending", "not-trackable"
#: the order statuses are told in
ORDER = (CONFIRMED, PENDING, NOT_TRACKABLE)

#: seconds between two looks when ``--every`` is not given
DEFAULT_EVERY = 60.0

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, *, flag: str) -> float:
    """``30s``, ``15m``, ``2h``, ``1d`` (a bare number: seconds) -> seconds."""
    value = text.strip().casefold()
    unit = value[-1:] if value[-1:] in _UNITS else "s"
    number = value[:-1] if value[-1:] in _UNITS else value
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a duration; write it as 30s, 15m, 2h or 1d.") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise UsageError(f"{flag} {text!r} must be a duration of zero or more (30s, 15m, 2h).")
    return seconds


def iso(moment: float) -> str:
    """Epoch seconds as ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


def age(seconds: float) -> str:
    """45 -> '45 s', 200 -> '3 min', 7500 -> '2 h 5 min', 200000 -> '2 days'."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        hours, minutes = divmod(seconds // 60, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days = seconds // 86400
    return f"{days} day{'s' if days != 1 else ''}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackOptions:
    report: Path
    #: seconds to keep looking (0: one look)
    until: float = 0.0
    #: seconds between looks
    every: float = DEFAULT_EVERY
    rate: str | None = None
    concurrency: int | None = None
    timeout: float = 30.0
    state_dir: Path | None = None
    #: a vendor's daily quota spent: hold until it resets instead of stopping
    wait_for_quota: bool = False
    #: overrides of the provider's retry policy (tests shorten waits)
    retry: Mapping[str, object] | None = None
    #: credentials the environment lacks come from this profile's keyring entries (``bulkmdm login``)
    profile: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class TrackRow:
    """One report row, as tracking sees it."""

    index: int
    action: str
    #: what the row acts on (serial, device id, email)
    label: str
    #: ``device_status``: confirmed, pending, not-trackable or "" (the row did not succeed)
    status: str
    #: ``device_seen`` (ISO 8601) for a confirmed row
    seen: str = ""
    #: for people: why it is what it is
    detail: str = ""
    #: when the change went out (epoch seconds), where the journal knows
    sent_at: float | None = None
    resolved: str = ""

    @property
    def line(self) -> int:
        """The row's line in the spreadsheet (the header is line 1)."""
        return self.index + 2


@dataclass(slots=True)
class TrackResult:
    report: Path
    rows: list[TrackRow]
    exit_code: int = 0
    #: looks that got an answer
    looks: int = 0
    requests: int = 0
    interrupted: bool = False
    #: why tracking stopped before its time (a spent quota, an MDM that stopped answering)
    stopped: str | None = None

    def counts(self) -> Counter[str]:
        return Counter(row.status for row in self.rows if row.status)

    def by_action(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {}
        for row in self.rows:
            if row.status:
                out.setdefault(row.action or "?", Counter())[row.status] += 1
        return out

    def pending(self) -> list[TrackRow]:
        return [row for row in self.rows if row.status == PENDING]

    def progress(self, now: float | None = None) -> str:
        """``45/60 confirmed, 15 pending (oldest 3 min)``."""
        counts = self.counts()
        trackable = counts[CONFIRMED] + counts[PENDING]
        line = f"{counts[CONFIRMED]}/{trackable} confirmed, {counts[PENDING]} pending"
        sent = [row.sent_at for row in self.pending() if row.sent_at is not None]
        if sent:
            line += f" (oldest {age((now or time.time()) - min(sent))})"
        if counts[NOT_TRACKABLE]:
            line += f"; {counts[NOT_TRACKABLE]} not trackable"
        return line


class TrackEvents:
    """What tracking tells as it goes (the CLI prints it; tests record it)."""

    def message(self, text: str) -> None:
        """A sentence for the person running it."""

    def looked(self, result: TrackResult) -> None:
        """A look ended and the report was written."""


def track(options: TrackOptions, events: TrackEvents | None = None) -> TrackResult:
    """Follow a run's report until every trackable row is confirmed or ``until`` has passed."""
    return asyncio.run(_track(options, events or TrackEvents()))


async def _track(options: TrackOptions, events: TrackEvents) -> TrackResult:
    from .jobfile import read_job

    report = options.report
    table = read_job(report)
    if not table.is_report:
        raise UsageError(
            f"{report} is not an outcome report (it has no status and detail columns); "
            "track the report a run wrote (JOB.outcome.csv)."
        )
    with Journal(state_dir(options.state_dir, options.env)) as journal:
        run = journal.for_report(str(report.resolve()))
        if run is None:
            raise UsageError(
                f"No run in the journal ({journal.path}) wrote {report}; track a report written by "
                "`bulkmdm run` on this computer (with the same --state-dir)."
            )
        records = list(journal.rows(run.id))
        if len(records) != len(table.rows):
            raise UsageError(
                f"{report} has {len(table.rows)} rows, but run {run.id} that wrote it has {len(records)}; "
                f"write it again with `bulkmdm report {run.id} --replace`, then track it."
            )
        provider_cls = providers.get(run.provider)
        earlier = _earlier_columns(table.outcome, table.rows)
        sent = journal.sent_times(run.id)
        rows = [_classify(record, earlier[i], sent.get(record.idx), provider_cls) for i, record in enumerate(records)]
        result = TrackResult(report, rows)
        writer = _ReportWriter(report, table.headers, table.rows, table.outcome, table.delimiter)
        watching = [row for row in rows if row.status == PENDING]
        if watching:
            mdm = _Mdm(run.provider, run.url, run.partition_id, provider_cls)
            await _follow(journal, mdm, options, events, result, writer)
        writer.write(rows)
        if result.looks == 0:
            events.looked(result)  # what is known without a look (MDM-side changes, what is not trackable)
        result.exit_code = _exit_code(result, bool(watching))
        return result


def _earlier_columns(outcome: Mapping[str, int], cells: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    """Each row's device_status and device_seen from an earlier look ("" where none)."""
    status_at, seen_at = (outcome.get(name) for name in TRACK_COLUMNS)
    return [
        (
            row[status_at].strip() if status_at is not None else "",
            row[seen_at].strip() if seen_at is not None else "",
        )
        for row in cells
    ]


def _classify(
    record: RowRecord, earlier: tuple[str, str], sent_at: float | None, provider_cls: type[Provider]
) -> TrackRow:
    """What is known of a row before any look."""
    row = TrackRow(record.idx, record.action, record.label, "", sent_at=sent_at, resolved=record.resolved or "")
    if record.state != "done" or record.status != str(Status.SUCCEEDED):
        return row
    if earlier[0] == CONFIRMED:
        row.status, row.seen, row.detail = CONFIRMED, earlier[1], "Confirmed by an earlier look."
        return row
    follow = provider_cls.follow.get(record.action)
    if follow is None:
        row.status, row.detail = NOT_TRACKABLE, provider_cls.untrackable(record.action)
    elif follow is Follow.MDM:
        # the MDM's own record: its accepted answer (read back where it was lost) shows it
        row.status, row.seen = CONFIRMED, iso(sent_at or time.time())
        row.detail = "The change lives in the MDM, which accepted it."
    elif sent_at is None:
        row.status = NOT_TRACKABLE
        row.detail = "The journal does not say when this change went out (it came from an earlier report)."
    else:
        row.status, row.detail = PENDING, "Not looked at yet."
    return row


def _exit_code(result: TrackResult, had_to_look: bool) -> int:
    if result.interrupted:
        return result.exit_code or 130
    if had_to_look and result.looks == 0:
        return 2
    return 1 if result.pending() else 0


class _Stop:
    """Ctrl-C and SIGTERM while tracking: stop looking, keep what is known."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    def install(self) -> Callable[[], None]:
        loop = asyncio.get_running_loop()
        installed = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, self._on, signum)
                installed.append(signum)

        def remove() -> None:
            for signum in installed:
                loop.remove_signal_handler(signum)

        return remove

    def _on(self, signum: int) -> None:
        self.signal = signum


@dataclass(frozen=True, slots=True)
class _Mdm:
    """The MDM the run spoke to (from the journal)."""

    provider: str
    url: str
    partition: str | None
    cls: type[Provider]


async def _follow(
    journal: Journal,
    mdm: _Mdm,
    options: TrackOptions,
    events: TrackEvents,
    result: TrackResult,
    writer: _ReportWriter,
) -> None:
    """Look, write, wait, until every row is confirmed, the time is up, or a stop."""
    from .connect import Connection, provider_for_run
    from .limits import for_run, sleep_unless

    stop = _Stop()
    provider_cls, url, partition = mdm.cls, mdm.url, mdm.partition
    env = _environment(mdm, options)
    pacing = for_run(options.rate, options.concurrency, provider_cls)
    connection = Connection(
        provider=mdm.provider,
        url=url,
        env=env,
        partition=partition,
        rate=options.rate,
        concurrency=options.concurrency,
        timeout=options.timeout,
        retry=options.retry,
    )
    provider, client, quota = provider_for_run(
        journal,
        connection,
        provider_cls,
        wait_for_quota=options.wait_for_quota,
        stopping=stop,
        pacing=pacing,
        on_hold=events.message,
    )
    deadline = time.monotonic() + options.until
    remove_signals = stop.install()
    try:
        async with client:
            try:
                while not stop():
                    watching = result.pending()
                    if not watching:
                        break
                    if not _fits(provider, watching, quota, options.wait_for_quota, result):
                        break
                    if not await _look(provider, watching, stop, events, result):
                        if result.stopped is not None:
                            break
                    else:
                        writer.write(result.rows)
                        events.looked(result)
                    left = deadline - time.monotonic()
                    if left <= 0 or not result.pending():
                        break
                    if not await sleep_unless(min(options.every, left), stop):
                        break
            finally:
                await provider.aclose()
    finally:
        remove_signals()
        result.requests = client.requests_sent
        with contextlib.suppress(BulkMDMError):
            quota.flush()
        if stop.signal is not None:
            result.interrupted = True
            result.exit_code = 143 if stop.signal == signal.SIGTERM else 130


def _environment(mdm: _Mdm, options: TrackOptions) -> dict[str, str]:
    """The environment, with what ``--profile`` keeps in the keyring for the run's MDM."""
    if options.profile is None:
        return dict(options.env)
    from .config import Target, environment_for

    return environment_for(Target(mdm.provider, mdm.url, profile=options.profile), options.env)


def _fits(provider: Provider, watching: Sequence[TrackRow], quota: DayQuota, wait: bool, result: TrackResult) -> bool:
    """Whether the next look fits in today's API budget (a run that waits holds at each call instead)."""
    if quota.limit is None or wait:
        return True
    cost = provider.look_cost([_tracked(row) for row in watching])
    left = quota.limit - quota.used
    if cost <= left:
        return True
    result.stopped = (
        f"One more look needs about {cost} of {provider.name}'s API calls, and {max(left, 0)} of today's "
        f"{quota.limit:,} are left; run the same command after midnight (or add --wait-for-quota to hold until then)."
    )
    return False


def _tracked(row: TrackRow) -> Tracked:
    return Tracked(row.index, row.action, row.resolved, row.sent_at or 0.0)


async def _look(
    provider: Provider, watching: Sequence[TrackRow], stop: _Stop, events: TrackEvents, result: TrackResult
) -> bool:
    """One look at the pending rows; False when it got no answer (said why)."""
    try:
        sightings = await provider.look([_tracked(row) for row in watching])
    except QuotaExhausted as exc:
        result.stopped = str(exc)
        return False
    except ListFailed as exc:
        if not stop():
            events.message(f"This look got no answer: {exc.detail()}")
        return False
    except BulkMDMError as exc:
        if stop():
            return False
        if result.looks == 0 and not provider.client.answered_ok:
            raise  # nothing could be looked at: the one sentence of the error, exit 2
        events.message(f"This look got no answer: {str(exc).rstrip('.')}. Trying again at the next look.")
        return False
    by_index = {row.index: row for row in watching}
    for sighting in sightings:
        row = by_index[sighting.index]
        row.detail = sighting.detail
        if sighting.confirmed and sighting.seen is not None:
            row.status, row.seen = CONFIRMED, iso(sighting.seen)
    result.looks += 1
    return True


class _ReportWriter:
    """The report, rewritten in place with the two tracking columns (every
    other cell as it was read)."""

    def __init__(
        self,
        path: Path,
        headers: Sequence[str],
        cells: Sequence[Sequence[str]],
        outcome: Mapping[str, int],
        delimiter: str,
    ) -> None:
        self.path = path
        self.cells = cells
        self.delimiter = delimiter
        self.headers = list(headers)
        self.at: list[int] = []
        for name in TRACK_COLUMNS:
            position = outcome.get(name)
            if position is None:
                position = len(self.headers)
                self.headers.append(name)
            self.at.append(position)

    def write(self, rows: Sequence[TrackRow]) -> None:
        from .report import write_report

        status_at, seen_at = self.at
        width = len(self.headers)

        def lines() -> Iterator[list[str]]:
            for cells, row in zip(self.cells, rows, strict=True):
                out = list(cells) + [""] * (width - len(cells))
                out[status_at] = row.status
                out[seen_at] = row.seen if row.status == CONFIRMED else ""
                yield out

        write_report(self.path, self.headers, lines(), delimiter=self.delimiter)
