"""Resume: which run a job continues, and the lock that keeps a job to one process.

A job is recognised by its path, provider, URL, action and partition (its
*identity*), not by the file's bytes; its rows by their content. So:

* the same job, unchanged, after a crash or Ctrl-C: the run continues where
  it stopped;
* the job saved again in the meantime (other line endings, rows reordered,
  rows added or changed): a new run takes over the earlier one, keeps every
  row whose content the earlier run finished, and sends only the rest;
* the same job after a run that went to the end: nothing is sent;
* an outcome report run again: it retries what the report says failed;
* the journal gone (deleted, or damaged and moved aside): the report beside
  the job is the second record; the rows it says ``succeeded`` or
  ``skipped`` (matched by content, each at most once) are not sent again,
  unless it is known to be about another MDM.

``--fresh`` ignores earlier runs; dry runs never continue one. A second
process running the same job while the first still holds its lock sends
nothing (a lock left by a process that is gone is taken over).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import providers
from .actions import normalise_action
from .columns import OUTCOME_COLUMNS
from .errors import JournalError
from .journal import IN_FLIGHT, Journal, LockHolder, NewRow, RunInfo
from .model import JobRow, Outcome, Reason, Status
from .validate import ValidJob, job_row, row_digest
from .words import plural

if TYPE_CHECKING:
    from .engine import RunOptions


@dataclass(frozen=True, slots=True)
class OpenedRun:
    """The run this process works on, and the rows it still has to do."""

    run_id: int
    #: rows to plan and send, in order
    todo: list[JobRow]
    #: rows whose request was in flight when an earlier run died (to reconcile)
    in_flight_before: frozenset[int]
    rows: int
    resumed: bool
    #: what to tell the person about an earlier run this one continues
    note: str | None = None


@dataclass(frozen=True, slots=True)
class FinishedBefore:
    """The job already ran to its end: nothing is sent."""

    run: RunInfo
    counts: dict[str, int]


def job_identity(options: RunOptions, url: str) -> str:
    """The job as a person would name it: its path, where it runs, and with which action."""
    parts = [
        str(options.job.resolve()),
        options.provider.casefold(),
        url.rstrip("/"),
        normalise_action(options.action) if options.action else "",
        options.partition or providers.settings_from_env(options.provider, options.env).get("partition", ""),
    ]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


@contextmanager
def job_lock(journal: Journal, identity: str, *, dry_run: bool) -> Iterator[None]:
    """Hold the job's lock while the run lasts; ``JournalError`` when another live process holds it."""
    if dry_run:  # a dry run changes nothing, so it may run beside the real one
        yield
        return
    holder = journal.lock(identity)
    if holder is not None:
        raise JournalError(_held(holder))
    try:
        yield
    finally:
        with contextlib.suppress(JournalError):  # the error that ended the run says more than this one
            journal.unlock(identity)


def _held(holder: LockHolder) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.started))
    run = f"run {holder.run_id}" if holder.run_id is not None else "another run"
    return (
        f"This job is already running ({run}: process {holder.pid} on {holder.host}, started {started}); "
        "nothing was sent. Wait for it to finish or stop it, then run again."
    )


def open_run(
    journal: Journal, job: ValidJob, *, identity: str, options: RunOptions, url: str, report_path: Path
) -> OpenedRun | FinishedBefore:
    """Continue the job's earlier run, take it over with the job's new content, or start a new one."""
    previous = None if options.fresh or options.dry_run else journal.latest(identity)
    if previous is not None and previous.finished is not None and job.is_report:
        previous = None  # running a report again retries what it says failed
    if previous is not None and previous.content == job.content:
        if previous.finished is not None:
            return FinishedBefore(previous, journal.counts(previous.id))
        return _resume(journal, previous, job, report_path)
    note = None
    if previous is None and not options.fresh and not options.dry_run and not job.is_report:
        job, note = _done_by_report(journal, job, report_path, options, url)
    run_id = _create(journal, job, identity=identity, options=options, url=url, report_path=report_path)
    if previous is None:
        return OpenedRun(
            run_id,
            [e.row for e in job.entries if e.invalid is None and e.carried is None],
            frozenset(),
            len(job.entries),
            resumed=False,
            note=note,
        )
    return _take_over(journal, previous, run_id, job)


def _done_by_report(
    journal: Journal, job: ValidJob, report_path: Path, options: RunOptions, url: str
) -> tuple[ValidJob, str | None]:
    """The journal has no run of this job: the rows its report says finished are carried, not sent again."""
    from .errors import JobFileError
    from .jobfile import read_job
    from .ownfiles import mdm_key, written

    if not report_path.is_file() or _same(report_path, options.job):
        return job, None
    own = written(journal.dir)
    try:
        table = read_job(report_path, own=own)
    except JobFileError:
        return job, None
    if not table.is_report:
        return job, None
    if own.get(table.sha256) and own[table.sha256] != mdm_key(options.provider, url, options.partition):
        return job, None  # bulkmdm wrote it for another MDM: it says nothing about this one
    status_at = table.outcome["status"]
    done = {str(Status.SUCCEEDED), str(Status.SKIPPED)}
    action = normalise_action(options.action) if options.action else None
    finished: dict[str, list[tuple[str, ...]]] = {}
    for index, cells in enumerate(table.rows):
        if index in table.problems or cells[status_at].strip().casefold() not in done:
            continue
        outcome = tuple(cells[table.outcome[name]] if name in table.outcome else "" for name in OUTCOME_COLUMNS)
        finished.setdefault(row_digest(job_row(index, cells, table.canonical, action)), []).append(outcome)
    entries, carried = [], 0
    for entry in job.entries:
        outcomes = finished.get(entry.digest) if entry.carried is None else None
        if outcomes:
            entry = dataclasses.replace(entry, carried=outcomes.pop(0), invalid=None)
            carried += 1
        entries.append(entry)
    if not carried:
        return job, None
    note = (
        f"No record of an earlier run of this job is left in the state folder, so its report {report_path} "
        f"decides: {carried} rows it says succeeded or skipped are not sent again (--fresh sends them again)."
    )
    return dataclasses.replace(job, entries=entries), note


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _resume(journal: Journal, run: RunInfo, job: ValidJob, report_path: Path) -> OpenedRun:
    journal.set_report_path(run.id, str(report_path.resolve()))
    journal.set_stop_reason(run.id, None)
    in_flight = frozenset(journal.indices(run.id, IN_FLIGHT))
    todo = sorted({*journal.to_send(run.id), *in_flight})
    done = len(job.entries) - len(todo)
    note = (
        f"Resuming run {run.id}: {done} of {plural(len(job.entries), 'row')} "
        + ("was" if done == 1 else "were")
        + " already done"
        + (
            f"; {len(in_flight)} {'was' if len(in_flight) == 1 else 'were'} in flight and will be checked"
            if in_flight
            else ""
        )
        + " (--fresh starts over)."
    )
    return OpenedRun(run.id, _rows(job, todo), in_flight, len(job.entries), resumed=True, note=note)


def _take_over(journal: Journal, previous: RunInfo, run_id: int, job: ValidJob) -> OpenedRun | FinishedBefore:
    """The job changed since ``previous``: keep what it finished, send the rest."""
    carried = journal.carry_over(previous.id, run_id)
    in_flight = frozenset(journal.indices(run_id, IN_FLIGHT))
    to_send = journal.to_send(run_id)
    if previous.finished is not None and not to_send and not in_flight:
        # the same rows, saved again (reordered, other line endings): nothing new to do
        journal.delete_run(run_id)
        return FinishedBefore(previous, journal.counts(previous.id))
    journal.supersede(previous.id, run_id)
    ended = "finished" if previous.finished is not None else "stopped"
    kept = carried - len(in_flight)
    note = (
        f"The job changed since run {previous.id} {ended}: {plural(kept, 'row')} already done "
        f"{'is' if kept == 1 else 'are'} kept, {plural(len(to_send), 'new row')} will run"
        + (f", {len(in_flight)} that were in flight will be checked" if in_flight else "")
        + " (--fresh starts over)."
    )
    todo = sorted({*to_send, *in_flight})
    return OpenedRun(run_id, _rows(job, todo), in_flight, len(job.entries), resumed=True, note=note)


def _rows(job: ValidJob, indices: list[int]) -> list[JobRow]:
    entries = job.entries
    return [entries[i].row for i in indices if entries[i].invalid is None and entries[i].carried is None]


def _create(journal: Journal, job: ValidJob, *, identity: str, options: RunOptions, url: str, report_path: Path) -> int:
    run_id = journal.create_run(
        identity=identity,
        job_path=str(options.job.resolve()),
        content=job.content,
        provider=options.provider,
        url=url,
        action=options.action,
        partition_id=options.partition,
        dry_run=options.dry_run,
        headers=job.headers,
        delimiter=job.delimiter,
        report_path=str(report_path.resolve()),
        rows=(NewRow(e.cells, e.row.action, e.digest, e.label) for e in job.entries),
    )
    journal.record_raw(run_id, ((i, e.carried) for i, e in enumerate(job.entries) if e.carried is not None))
    journal.record(
        run_id,
        (
            Outcome(i, Status.INVALID, e.invalid, reason=Reason.INVALID_ROW)
            for i, e in enumerate(job.entries)
            if e.invalid is not None
        ),
    )
    return run_id
