"""run_job(): read -> validate -> plan -> execute -> journal -> report.

The engine holds the order of the stages and nothing else; each stage lives
in the module named after it (``jobfile``, ``validate``, ``resume``, ``plan``,
``schedule``, ``journal``, ``report``). Every state change is written to the
journal *before* it is acted on, and the report is written from the journal
at the end (also after Ctrl-C, SIGTERM or a stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .actions import ACTIONS, confirmation_prompt, normalise_action
from .columns import header_notes
from .words import plural
from .errors import AuthError, BulkMDMError, ConfirmationRefused, JournalError
from .events import Events, QuietEvents
from .journal import IN_FLIGHT, Journal, state_dir
from .model import BAD_STATUSES, Outcome, Step
from .plan import FIRST_CHUNK, PlanFeed, PlanSettings
from .providers.base import Provider
from .ownfiles import written
from .report import RunSummary, UndoFile, check_writable, undo_path, write_run_report, write_undo_file
from .resume import FinishedBefore, OpenedRun, job_identity, job_lock, open_run
from .schedule import Scheduler
from .shown import Secrets
from .connect import Connection, provider_for_run
from .limits import for_run
from .client import Client, RequestContext
from .validate import check_destructive, check_options, default_report_path, report_path, validate_job

__all__ = [
    "Events",
    "QuietEvents",
    "RunOptions",
    "RunResult",
    "default_report_path",
    "rebuild_report",
    "run_job",
    "state_dir",
]

#: A file whose appearance stops the run as Ctrl-C does (the report is written,
#: the rest stays not-run, the same command continues it): how ``bulkmdm serve``
#: stops its runs, on Windows too, where no signal reaches a child process.
STOP_FILE_VARIABLE = "BULKMDM_STOP_FILE"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    job: Path
    provider: str
    url: str
    action: str | None = None
    report: Path | None = None
    dry_run: bool = False
    yes: bool = False
    concurrency: int | None = None
    rate: str | None = None
    partition: str | None = None
    timeout: float = 30.0
    fresh: bool = False
    state_dir: Path | None = None
    max_destructive: int | None = None
    batch_size: int | None = None
    resend_unknown: bool = False
    #: a vendor's daily API quota spent: hold until it resets instead of leaving rows not-run
    wait_for_quota: bool = False
    #: overrides of the provider's declared retry policy (tests and benchmarks shorten waits)
    retry: Mapping[str, object] | None = None
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


@dataclass(slots=True)
class RunResult:
    run_id: int
    report_path: Path
    counts: Counter[str]
    exit_code: int
    interrupted: bool = False
    resumed: bool = False
    requests: int = 0
    mutating_requests: int = 0
    planned_requests: int | None = None
    elapsed: float = 0.0
    rows: int = 0
    notes: list[str] = field(default_factory=list)
    #: what the report holds, counted (per action, failures by reason, destructive rows)
    summary: RunSummary | None = None
    #: why the run stopped before its end (credentials refused mid-run, ...): one sentence
    stopped: str | None = None
    #: when the job had already run to its end (nothing was sent this time)
    finished_before: float | None = None
    #: the job that puts back what the run changed, and what it cannot put back
    undo: UndoFile | None = None


def run_job(options: RunOptions, events: Events | None = None) -> RunResult:
    """Run a job file to the end (or to a stop) and write its report."""
    return asyncio.run(_run(options, events or QuietEvents()))


async def _run(options: RunOptions, events: Events) -> RunResult:
    started = time.monotonic()
    provider_cls, url = check_options(options)
    provider_cls.auth_from_env(options.env)  # missing credentials stop the run before the job is read
    from .jobfile import read_job

    state = state_dir(options.state_dir, options.env)
    table = read_job(options.job, own=written(state))
    for note in (*table.notes, *header_notes(table.headers)):
        events.message(note)
    job = validate_job(table, provider_cls, normalise_action(options.action) if options.action else None)
    del table
    report = report_path(options, job)
    _check_writable(report, options)
    check_destructive(job, options, events)
    identity = job_identity(options, url)
    with (
        Journal(state) as journal,
        job_lock(journal, identity, dry_run=options.dry_run),
    ):
        pacing = for_run(options.rate, options.concurrency, provider_cls)
        for note in pacing.notes:
            events.message(note)
        scheduler = Scheduler(
            concurrency=pacing.workers,
            events=events,
            marks_in_flight=not options.dry_run,
            room=pacing.rate,
        )
        # The provider is built before the journal is touched: a setting it
        # refuses (ConfigError) leaves no run and no report behind.
        connection = Connection(
            provider=provider_cls.name,
            url=url,
            env=options.env,
            partition=options.partition,
            rate=options.rate,
            concurrency=options.concurrency,
            timeout=options.timeout,
            batch_size=options.batch_size,
            dry_run=options.dry_run,
            retry=options.retry,
        )
        provider, client, _ = provider_for_run(
            journal,
            connection,
            provider_cls,
            wait_for_quota=options.wait_for_quota,
            stopping=scheduler.stopping,
            pacing=pacing,
            on_hold=events.message,
            halt=scheduler.halt,
        )
        opened = open_run(journal, job, identity=identity, options=options, url=url, report_path=report)
        del job  # the journal holds every row's cells now; on a million-row job this is a few hundred MB
        if isinstance(opened, FinishedBefore):
            return _finished_before(journal, opened, report)
        journal.lock_run(identity, opened.run_id)
        if opened.note:
            events.message(opened.note)
        result = RunResult(opened.run_id, report, Counter(), 0, resumed=opened.resumed, rows=opened.rows)
        # Ctrl-C and SIGTERM stay handled until the report and the undo file
        # are written: a second Ctrl-C while they are written must not cut
        # them off (the loop only notes a signal while the files are written).
        remove_signal_handlers = scheduler.install_signals()
        try:
            try:
                await _execute(journal, opened, provider, client, scheduler, options, events, result)
            except (ConfirmationRefused, KeyboardInterrupt):
                # declined, or Ctrl-C at the prompt: nothing was sent, so leave no run to resume
                if not opened.resumed and not scheduler.sent_any:
                    journal.delete_run(opened.run_id)
                raise
            except JournalError as exc:
                _write_files_if_possible(journal, opened.run_id, report, options)
                if scheduler.sent_any:
                    exc.exit_code = 1  # rows ran: 2 would say nothing was run
                raise
            except BaseException:
                # a bug: what went out is still reported, and can be undone
                if scheduler.sent_any or _in_flight(journal, opened.run_id):
                    _write_files_if_possible(journal, opened.run_id, report, options)
                raise
            _conclude(journal, opened, scheduler, result, options)
        finally:
            remove_signal_handlers()
        result.elapsed = time.monotonic() - started
        return result


def rebuild_report(
    run_id: int, *, out: Path | None = None, state: Path | None = None, env: Mapping[str, str] | None = None
) -> RunResult:
    """``bulkmdm report RUN``: write a run's report again from the journal."""
    from . import report

    summary = report.rebuild_report(run_id, out=out, state=state, env=env)
    return RunResult(run_id, summary.path, summary.counts, 0, rows=summary.rows, summary=summary)


async def _execute(
    journal: Journal,
    opened: OpenedRun,
    provider: Provider,
    client: Client,
    scheduler: Scheduler,
    options: RunOptions,
    events: Events,
    result: RunResult,
) -> None:
    """Plan and send the rows still to do, until the end or a stop."""
    stop_file = options.env.get(STOP_FILE_VARIABLE, "").strip()
    watcher = asyncio.ensure_future(scheduler.watch_stop_file(Path(stop_file))) if stop_file else None
    try:
        async with client:
            try:
                await _plan_and_send(journal, opened, provider, scheduler, options, events, result)
            except (ConfirmationRefused, JournalError):
                raise
            except BulkMDMError as exc:  # a stop while planning: credentials refused, a set-up that cannot work
                scheduler.halt(exc)
            finally:
                await provider.aclose()
    finally:
        if watcher is not None:
            watcher.cancel()
        result.requests = client.requests_sent
        result.mutating_requests = client.mutating_sent
        result.interrupted = scheduler.signal is not None
        with contextlib.suppress(JournalError):
            client.quota.flush()  # the calls not written as they went out


async def _plan_and_send(
    journal: Journal,
    opened: OpenedRun,
    provider: Provider,
    scheduler: Scheduler,
    options: RunOptions,
    events: Events,
    result: RunResult,
) -> None:
    rows = opened.todo
    if not rows:
        return
    events.message(f"Looking up {plural(len(rows), 'row')} on the MDM...")
    confirm = not options.dry_run and not options.yes and any(ACTIONS[r.action].destructive for r in rows)
    # The number a person types is the whole job's, so a job to confirm is
    # planned in one piece; so is everything for a provider that needs to
    # see all rows at once (chunk_rows None).
    chunked = bool(provider.chunk_rows) and not confirm
    chunk_rows = (provider.chunk_rows or len(rows)) if chunked else len(rows)
    ledger = _RunLedger(journal, opened.run_id, events, Secrets.from_env(options.env, auth=provider.client.auth))
    feed = PlanFeed(
        provider,
        rows,
        PlanSettings(
            chunk_rows=chunk_rows,
            first_chunk_rows=FIRST_CHUNK if chunked else None,
            in_flight_before=opened.in_flight_before,
            resend_unknown=options.resend_unknown,
            dry_run=options.dry_run,
        ),
        record=ledger.record_decided,
        stop=scheduler.stop,
    )
    events.start(opened.rows, opened.rows - len(rows), journal.counts(opened.run_id))
    if not await feed.plan_next_chunk():
        return
    if confirm:
        _confirm_destructive(feed, events)
    await scheduler.run(feed, _dry_run(provider) if options.dry_run else provider.execute, ledger)
    if options.dry_run:
        result.planned_requests = feed.planned_requests
        if note := provider.quota_note():
            events.message(note)
    if feed.error is not None:
        raise feed.error
    events.finish()


def _dry_run(provider: Provider) -> Callable[[Sequence[Step], RequestContext], Awaitable[list[Outcome]]]:
    """The dry run's send: ``provider.check`` (read-only: no batch hook to run)."""

    async def check(steps: Sequence[Step], context: RequestContext) -> list[Outcome]:
        return await provider.check(steps)

    return check


def _confirm_destructive(feed: PlanFeed, events: Events) -> None:
    destructive = [s for s in feed.queued_steps() if ACTIONS[s.action].destructive]
    if not destructive:
        return
    answer = events.confirm(confirmation_prompt(destructive), str(len(destructive)))
    if answer is not True:
        raise ConfirmationRefused(
            "Declined: nothing was sent. Run the same command again to be asked again, "
            "or check the file first with --dry-run."
        )


class _RunLedger:
    """The journal for one run, as the plan feed and the scheduler write to it."""

    def __init__(self, journal: Journal, run_id: int, events: Events, secrets: Secrets) -> None:
        self.journal = journal
        self.run_id = run_id
        self.events = events
        #: what a server said enters the journal here, and only as text fit to show
        self.secrets = secrets

    def mark_in_flight(self, indices: Sequence[int]) -> None:
        self.journal.mark_in_flight(self.run_id, indices)

    def record(self, outcomes: Sequence[Outcome]) -> None:
        self.journal.record(self.run_id, self.secrets.outcomes(outcomes))

    def write(
        self, outcomes: Sequence[Outcome], in_flight: Sequence[int], undo: Sequence[tuple[int, Mapping[str, str]]]
    ) -> None:
        self.journal.write(self.run_id, self.secrets.outcomes(outcomes) or None, in_flight, undo)

    def record_decided(self, outcomes: list[Outcome]) -> None:
        """Rows planning decided (skipped, failed look-up): journaled and shown at once."""
        outcomes = self.secrets.outcomes(outcomes)
        self.record(outcomes)
        self.events.advance(outcomes)


def _conclude(
    journal: Journal, opened: OpenedRun, scheduler: Scheduler, result: RunResult, options: RunOptions
) -> None:
    """Write the report and settle the exit code; a run refused at its first request is forgotten."""
    run_error = scheduler.run_error
    if run_error is not None and not scheduler.sent_any:
        # Stopped before anything was sent (credentials refused at the first
        # request, ...): nothing was run (exit 2). An earlier report at this
        # path stays as it was, and a new run is forgotten, so the corrected
        # command starts clean.
        if not opened.resumed:
            journal.delete_run(opened.run_id)
        raise run_error
    secrets = Secrets.from_env(options.env)
    if scheduler.stop_reason is not None:
        journal.set_stop_reason(opened.run_id, secrets.clean(scheduler.stop_reason))
    try:
        summary = write_run_report(journal, opened.run_id, result.report_path)
    except BulkMDMError:
        if not options.dry_run:  # the undo file still goes out if it can; the report's error is the one to tell
            with contextlib.suppress(Exception):
                write_undo_file(journal, opened.run_id, result.report_path)
        raise
    if not options.dry_run:
        result.undo = write_undo_file(journal, opened.run_id, result.report_path)
    result.summary = summary
    result.counts = summary.counts
    if scheduler.signal is not None:
        result.exit_code = 143 if scheduler.signal == signal.SIGTERM else 130
    else:
        result.exit_code = 1 if any(summary.counts.get(str(s)) for s in BAD_STATUSES) else 0
    if isinstance(run_error, AuthError):
        result.stopped = (
            f"The MDM refused the credentials part way through ({run_error}); the rows not sent are "
            "not-run. Fix the credentials, then run the same command again to continue."
        )
    elif run_error is not None:
        result.stopped = (
            f"The run stopped part way through: {str(run_error).rstrip('.')}. The rows not sent are not-run."
        )
    elif scheduler.breaker_stop is not None:
        result.stopped = f"{scheduler.breaker_stop.rstrip('.')}. The rows not sent are not-run."
    result.stopped = secrets.clean(result.stopped) if result.stopped else result.stopped
    if not summary.incomplete and not options.dry_run:
        journal.finish(opened.run_id, result.exit_code)


def _finished_before(journal: Journal, finished: FinishedBefore, report: Path) -> RunResult:
    """The job already ran to its end: send nothing, keep (or restore) its report, exit as it did."""
    run = finished.run
    if not report.exists():
        write_run_report(journal, run.id, report)
    counts = Counter(finished.counts)
    return RunResult(
        run.id, report, counts, run.exit_code or 0, rows=sum(counts.values()), finished_before=run.finished
    )


def _write_files_if_possible(journal: Journal, run_id: int, report: Path, options: RunOptions) -> None:
    """After a run ended by an error: its report and undo file from what the journal holds, if it can be read."""
    with contextlib.suppress(Exception):  # the error that ended the run is the one to tell
        write_run_report(journal, run_id, report)
    if not options.dry_run:
        with contextlib.suppress(Exception):
            write_undo_file(journal, run_id, report)


def _in_flight(journal: Journal, run_id: int) -> bool:
    with contextlib.suppress(Exception):
        return bool(journal.indices(run_id, IN_FLIGHT))
    return False


def _check_writable(report: Path, options: RunOptions) -> None:
    """The report and the undo file can be written: found out before anything is sent, not after."""
    check_writable(report, "report", "choose another name or folder with --report")
    if not options.dry_run:
        where = "choose another folder with --report (it goes beside the report)"
        check_writable(undo_path(report, options.job), "undo file", where)
