"""run_job(): read -> validate -> plan -> execute -> journal -> report.

The engine owns the order of things and nothing vendor-specific: it builds
the HTTP client and the shared rate controller, asks the provider to plan and
execute, writes every state change to the journal *before* acting on it, and
writes the report from the journal at the end (also after Ctrl-C).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import signal
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import providers
from .actions import ACTIONS, confirmation_prompt, missing_columns, normalise_action
from .columns import OUTCOME_COLUMNS, header_notes, seen
from .errors import AuthError, ConfirmationRefused, JobFileError, ReportError, RunStopped, UsageError
from .journal import DONE, IN_FLIGHT, PENDING, Journal, RunInfo
from .limits import RateController, parse_rate
from .model import BAD_STATUSES, DONE_STATUSES, JobRow, Outcome, Status, Step
from .providers.base import Provider, Settings
from .retry import RetryPolicy, check_positive
from .transport import Client

NOT_RUN = "Not run yet: the run was interrupted. Run the same command again to continue."
NOT_SENT_AUTH = ("Not sent: the MDM refused the credentials. Fix them, then run the same command again "
                 "to continue.")
IN_FLIGHT_DETAIL = (
    "A request was in flight when the run stopped, so its effect is not known. Check the device, "
    "then run this report again to resend it."
)


class Events(Protocol):
    """What the engine tells the person running it (the CLI implements this)."""

    def message(self, text: str) -> None: ...
    def start(self, total: int, done: int, counts: Mapping[str, int] | None = None) -> None:
        """``total`` rows, ``done`` of them already finished (``counts``: their statuses)."""
        ...
    def advance(self, outcomes: Sequence[Outcome]) -> None: ...
    def finish(self) -> None: ...
    def can_ask(self) -> bool:
        """Whether there is a terminal to ask on."""
        ...

    def confirm(self, prompt: str, expected: str) -> bool:
        """Ask the person to type ``expected``; True if they did."""
        ...


class QuietEvents:
    """Events that say nothing and cannot ask (tests, library use)."""

    def message(self, text: str) -> None:
        pass

    def start(self, total: int, done: int, counts: Mapping[str, int] | None = None) -> None:
        pass

    def advance(self, outcomes: Sequence[Outcome]) -> None:
        pass

    def finish(self) -> None:
        pass

    def can_ask(self) -> bool:
        return False

    def confirm(self, prompt: str, expected: str) -> bool:
        return False


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
    retry: RetryPolicy = field(default_factory=RetryPolicy)
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


def state_dir(explicit: Path | None, env: Mapping[str, str]) -> Path:
    if explicit is not None:
        return explicit
    if env.get("BULKMDM_STATE_DIR"):
        return Path(env["BULKMDM_STATE_DIR"])
    from platformdirs import user_state_dir

    return Path(user_state_dir("bulkmdm", appauthor=False))


def default_report_path(job: Path) -> Path:
    return job.with_name(f"{job.stem}.outcome{job.suffix}")


def run_job(options: RunOptions, events: Events | None = None) -> RunResult:
    """Run a job file to the end (or to Ctrl-C) and write its report."""
    return asyncio.run(_Run(options, events or QuietEvents()).main())


class _Run:
    def __init__(self, options: RunOptions, events: Events) -> None:
        self.o = options
        self.events = events
        self.stop: asyncio.Event | None = None  # created inside the loop
        self.interrupts = 0
        self.workers: list[asyncio.Task[None]] = []
        self.auth_error: RunStopped | None = None
        #: set once a batch has been sent (an answer or an error came back)
        self.sent_any = False
        self.concurrency = 8
        #: the destructive prompt was declined (or interrupted): forget the run, write no report
        self.declined = False

    # -- set-up -------------------------------------------------------------
    def _validate_options(self) -> tuple[type[Provider], str]:
        o = self.o
        provider_cls = providers.get(o.provider)
        url = (o.url or "").strip()
        if not url:
            raise UsageError("Give the MDM's address with --url (e.g. --url https://mdm.example.com).")
        if not url.startswith(("https://", "http://")):
            raise UsageError(f"--url {url!r} must start with https:// (or http:// for a local server).")
        if "@" in url.split("://", 1)[1].split("/", 1)[0]:
            # user:password@host would end up in the journal and in printed commands
            raise UsageError("--url must not hold credentials; set them in the environment (see `bulkmdm run --help`).")
        _check_url(url)
        if o.concurrency is not None:
            try:
                check_positive("--concurrency", o.concurrency)
            except ValueError as exc:
                raise UsageError(f"{exc}.") from None
        if not (o.timeout > 0 and math.isfinite(o.timeout)):
            raise UsageError("--timeout must be a number of seconds greater than 0.")
        if o.max_destructive is not None and o.max_destructive < 0:
            raise UsageError("--max-destructive must be 0 or more.")
        if o.batch_size is not None and o.batch_size < 1:
            raise UsageError("--batch-size must be at least 1.")
        if o.action is not None and normalise_action(o.action) not in ACTIONS:
            raise UsageError(f"--action {o.action!r} is not an action; `bulkmdm actions` lists them.")
        if o.action is not None and normalise_action(o.action) not in provider_cls.actions:
            can = ", ".join(sorted(provider_cls.actions))
            raise UsageError(f"{provider_cls.name} cannot {normalise_action(o.action)}; it can: {can}.")
        return provider_cls, url

    def _rate(self, provider_cls: type[Provider]) -> RateController:
        if self.o.rate is None:
            rate = provider_cls.default_rate
            ceiling = provider_cls.max_rate or (rate * 4 if rate else None)
            return RateController(rate=rate, ceiling=ceiling, adaptive=True)
        rate = parse_rate(self.o.rate)
        return RateController(rate=rate, ceiling=rate, adaptive=True)

    def _identity(self, table_sha: str, url: str) -> str:
        o = self.o
        parts = [
            str(o.job.resolve()), table_sha, o.provider.casefold(), url.rstrip("/"),
            normalise_action(o.action) if o.action else "", o.partition or o.env.get("BULKMDM_PARTITION_ID", ""),
        ]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    # -- the run ------------------------------------------------------------
    async def main(self) -> RunResult:
        started = time.monotonic()
        o = self.o
        provider_cls, url = self._validate_options()
        auth = provider_cls.auth_from_env(o.env)
        from .jobfile import read_job

        table = read_job(o.job)
        for note in header_notes(table.headers):
            self.events.message(note)
        rows_cells, headers, carried = _split_report(table)
        action_override = normalise_action(o.action) if o.action else None
        if not table.rows:
            raise JobFileError(f"{o.job} has a header but no rows; there is nothing to do.")
        if action_override is None and "action" not in table.canonical:
            raise JobFileError(
                f"{o.job} has no action column ({seen(table.headers)}); add one (e.g. 'action' with lock, tag, ...) "
                "or pass --action."
            )

        # validate every row
        job_rows: dict[int, JobRow] = {}
        invalid: dict[int, Outcome] = {}
        for idx, cells in enumerate(rows_cells):
            if idx in carried:
                continue
            row = _job_row(idx, cells, table.canonical, action_override)
            problem = table.problems.get(idx) or _validate(row, provider_cls)
            if problem:
                invalid[idx] = Outcome(idx, Status.INVALID, problem)
            else:
                job_rows[idx] = row
        if len(carried) < len(rows_cells) and not job_rows:
            reasons = Counter(o.detail for o in invalid.values())
            common, n = reasons.most_common(1)[0]
            if n == len(invalid) and common.startswith("Missing "):
                raise JobFileError(f"No row of {o.job} can run: {common[0].lower()}{common[1:-1]} "
                                   f"({seen(headers)}).")
            if all(x.detail.startswith("Missing ") for x in invalid.values()):
                # rows of several actions, each missing what its action needs
                first = invalid[min(invalid)]
                raise JobFileError(
                    f"No row of {o.job} can run: every row misses a column its action needs "
                    f"(line {first.index + 2}: {first.detail[0].lower()}{first.detail[1:].rstrip('.')}; "
                    f"{seen(headers)})."
                )

        destructive = [r for r in job_rows.values() if ACTIONS[r.action].destructive]
        # "a job that holds any destructive row": invalid ones count too
        held = {r.action for r in destructive} | {
            action for i, cells in enumerate(rows_cells) if i not in carried and i not in job_rows
            and (action := action_override or _job_row(i, cells, table.canonical, None).action) in ACTIONS
            and ACTIONS[action].destructive
        }
        if held and not o.dry_run and not o.yes:
            if not self.events.can_ask():
                verbs = ", ".join(sorted(held))
                raise ConfirmationRefused(
                    f"This job holds destructive rows ({verbs}) and there is no terminal to "
                    "confirm on; nothing was sent. Check the file, then run again with --yes."
                )
        if o.max_destructive is not None and len(destructive) > o.max_destructive:
            raise ConfirmationRefused(
                f"This job would {destructive[0].action} {len(destructive)} devices or users, more than "
                f"--max-destructive {o.max_destructive}; nothing was sent."
            )

        journal = Journal(state_dir(o.state_dir, o.env))
        try:
            return await self._with_journal(
                journal, provider_cls, auth, url, table, headers, rows_cells, carried, job_rows, invalid, started
            )
        finally:
            journal.close()

    async def _with_journal(
        self,
        journal: Journal,
        provider_cls: type[Provider],
        auth: Any,
        url: str,
        table: Any,
        headers: tuple[str, ...],
        rows_cells: list[Sequence[str]],
        carried: dict[int, tuple[str, ...]],
        job_rows: dict[int, JobRow],
        invalid: dict[int, Outcome],
        started: float,
    ) -> RunResult:
        o = self.o
        report_path = o.report or default_report_path(o.job)
        if report_path.suffix.lower() not in (".csv", ".xlsx"):
            raise UsageError(f"--report {report_path} must end in .csv or .xlsx.")
        if report_path.is_dir():
            raise UsageError(f"--report {report_path} is a folder; give the path of a .csv or .xlsx file.")
        folder = report_path.parent if str(report_path.parent) else Path(".")
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise UsageError(f"Cannot write the report to {report_path}: {folder} is not a writable folder; "
                             "pass --report with another path.")
        # The provider is built before the journal is touched: a setting it
        # refuses (ConfigError) leaves no run and no report behind.
        limiter = self._rate(provider_cls)
        concurrency = self.concurrency = o.concurrency or provider_cls.default_concurrency
        client = Client(
            provider_cls.api_base(url), auth=auth, limiter=limiter, retry=o.retry, timeout=o.timeout,
            connections=concurrency + 4, stopping=lambda: self.stop is not None and self.stop.is_set(),
            headers=provider_cls.request_headers,
        )
        settings = Settings(url=url, env=o.env, partition=o.partition, batch_size=o.batch_size, dry_run=o.dry_run)
        provider = provider_cls(client, settings)
        identity = self._identity(table.sha256, url)
        run: RunInfo | None = None if (o.fresh or o.dry_run) else journal.resumable(identity)
        resumed = run is not None
        if run is None:
            run_id = journal.create_run(
                identity=identity, job_path=str(o.job.resolve()), job_sha256=table.sha256, provider=o.provider,
                url=url, action=o.action, partition_id=o.partition, dry_run=o.dry_run, headers=headers,
                delimiter=table.delimiter, report_path=str(report_path.resolve()), rows=rows_cells,
            )
            journal.record_raw(run_id, carried.items())
            journal.record(run_id, invalid.values())
        else:
            run_id = run.id
            journal.set_report_path(run_id, str(report_path.resolve()))
        # The journal holds every row's cells now (the report is written from
        # it); the parsed grid is not needed again, and on a million-row job
        # it is a few hundred MB.
        n_rows = len(rows_cells)
        rows_cells.clear()
        table.rows.clear()
        in_flight_before = set(journal.indices(run_id, IN_FLIGHT))
        todo = set(journal.indices(run_id, PENDING)) | in_flight_before
        rows = [job_rows[i] for i in sorted(todo) if i in job_rows]
        done_already = n_rows - len(todo)
        del todo
        job_rows.clear()  # ``rows`` holds them now
        if resumed:
            self.events.message(
                f"Resuming run {run_id}: {done_already} of {n_rows} rows were already done"
                + (f"; {len(in_flight_before)} were in flight and will be checked" if in_flight_before else "")
                + " (--fresh starts over)."
            )

        result = RunResult(run_id, report_path, Counter(), 0, resumed=resumed, rows=n_rows)
        self.stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = _install_sigint(loop, self._on_sigint)
        try:
            async with client:
                try:
                    await self._plan_and_execute(journal, run_id, provider, rows, in_flight_before, result)
                except RunStopped as exc:
                    self.auth_error = exc
                finally:
                    await provider.aclose()
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGINT)
            result.requests = client.requests_sent
            result.mutating_requests = client.mutating_sent
            result.interrupted = self.interrupts > 0
            if self.declined or (self.auth_error is not None and not self.sent_any):
                # Refused at the first request: nothing was run (exit 2). An
                # earlier report at this path stays as it was, and a new run
                # is forgotten, so the corrected command starts clean.
                if not resumed:
                    journal.delete_run(run_id)
            else:
                self._write_report(journal, run_id, report_path, result)
            result.elapsed = time.monotonic() - started
        if self.auth_error is not None:
            raise self.auth_error
        return result

    async def _plan_and_execute(
        self,
        journal: Journal,
        run_id: int,
        provider: Provider,
        rows: list[JobRow],
        in_flight_before: set[int],
        result: RunResult,
    ) -> None:
        """Plan and send in chunks, so that a million-row job never holds a
        million Steps: the first chunk is planned here (and a destructive job
        confirmed); later chunks are planned by whichever worker runs out of
        batches first, while the others keep sending."""
        o = self.o
        if not rows:
            return
        self.events.message(f"Looking up {len(rows)} row(s) on the MDM...")
        confirm = not o.dry_run and not o.yes and any(ACTIONS[r.action].destructive for r in rows)
        # The number a person types is the whole job's, so a job to confirm is
        # planned in one piece; so is everything for a provider that needs to
        # see all rows at once (chunk_rows None).
        size = provider.chunk_rows if provider.chunk_rows and not confirm else len(rows)
        feed = _Feed(self, journal, run_id, provider, rows, size, in_flight_before, result)
        self.events.start(result.rows, result.rows - len(rows), journal.counts(run_id))
        if not await feed.plan_next():
            return
        if confirm:
            destructive = [s for s in feed.queued() if ACTIONS[s.action].destructive]
            if destructive:
                # Declined or Ctrl-C at the prompt: nothing was sent, so no run is left to resume.
                self.declined = True
                answer = self.events.confirm(confirmation_prompt(destructive), str(len(destructive)))
                if answer is not True:
                    raise ConfirmationRefused("Declined: nothing was sent. Run the same command again to be asked "
                                              "again, or check the file first with --dry-run.")
                self.declined = False
        await self._pool(journal, run_id, feed, provider.check if o.dry_run else provider.execute,
                         self.concurrency)
        if feed.error is not None:
            raise feed.error
        self.events.finish()

    async def _pool(self, journal: Journal, run_id: int, feed: _Feed, send: Any, concurrency: int) -> None:
        """A bounded pool of workers pulling batches; no task per row."""
        o = self.o
        assert self.stop is not None
        stop = self.stop

        async def worker() -> None:
            while not stop.is_set():
                batch = await feed.next()
                if batch is None:
                    return
                indices = [s.index for s in batch]
                if not o.dry_run:
                    journal.mark_in_flight(run_id, indices)
                try:
                    outcomes = await send(batch)
                    self.sent_any = True
                except RunStopped as exc:
                    self.auth_error = exc
                    stop.set()
                    hint = "check the credentials" if isinstance(exc, AuthError) else "run the same command later"
                    outcomes = [Outcome(s.index, Status.FAILED, f"{_cap(str(exc))}; {hint}.",
                                        exc.status, exc.attempts, s.resolved) for s in batch]
                if [x.index for x in outcomes] != indices:
                    raise RuntimeError("provider returned outcomes that do not match its batch")
                journal.record(run_id, outcomes)
                self.events.advance(outcomes)

        size = max(1, min(concurrency, feed.batches_hint()))
        self.workers = [asyncio.ensure_future(worker()) for _ in range(size)]
        try:
            await asyncio.gather(*self.workers)
        except asyncio.CancelledError:
            if self.interrupts < 2:
                raise
        except BaseException:
            for task in self.workers:
                task.cancel()
            raise

    def _on_sigint(self) -> None:
        self.interrupts += 1
        assert self.stop is not None
        if self.interrupts == 1:
            self.stop.set()
            self.events.message(
                "Stopping: no new rows are started; waiting for requests in flight. Press Ctrl-C again to abandon them."
            )
        else:
            for task in self.workers:
                task.cancel()

    def _not_sent(self) -> str:
        if self.auth_error is None:
            return NOT_RUN
        if isinstance(self.auth_error, AuthError):
            return NOT_SENT_AUTH
        return f"Not sent: {self.auth_error}. Run the same command again later to continue."

    def _write_report(self, journal: Journal, run_id: int, path: Path, result: RunResult) -> None:
        from .report import write_report

        run = journal.run(run_id)
        counts: Counter[str] = Counter()
        incomplete = False

        def records() -> Iterable[list[str]]:
            nonlocal incomplete
            for rec in journal.rows(run_id):
                if rec.state == DONE:
                    status = rec.status or ""
                    values = [status, rec.detail or "", rec.http_status or "", rec.attempts or "", rec.resolved or ""]
                elif rec.state == IN_FLIGHT:
                    incomplete = True
                    status = str(Status.UNKNOWN)
                    values = [status, IN_FLIGHT_DETAIL, "", "", ""]
                else:
                    incomplete = True
                    status = ""
                    values = ["", self._not_sent(), "", "", ""]
                counts[status or "not run"] += 1
                yield [*rec.cells, *values]

        try:
            write_report(path, [*run.headers, *OUTCOME_COLUMNS], records(), delimiter=run.delimiter)
        except UsageError as exc:
            raise ReportError(
                f"{exc} Every outcome is in the journal: write it elsewhere with "
                f"`bulkmdm report {run_id} --out OTHER.csv`."
            ) from None
        if not incomplete and not run.dry_run:
            journal.finish(run_id)
        result.counts = counts
        bad = any(counts.get(str(s)) for s in BAD_STATUSES) or counts.get("not run", 0) > 0
        if result.interrupted:
            result.exit_code = 130
        else:
            result.exit_code = 1 if bad else 0


class _Feed:
    """Batches for the workers, planned a chunk of rows at a time."""

    def __init__(self, run: _Run, journal: Journal, run_id: int, provider: Provider, rows: list[JobRow],
                 size: int, in_flight_before: set[int], result: RunResult) -> None:
        self.run = run
        self.journal = journal
        self.run_id = run_id
        self.provider = provider
        self.rows = rows
        self.size = max(1, size)
        self.start = 0
        self.in_flight_before = in_flight_before
        self.result = result
        self.batches: deque[list[Step]] = deque()
        self.lock = asyncio.Lock()
        #: an error raised while planning a later chunk (raised after the pool stops)
        self.error: BaseException | None = None
        if run.o.dry_run:
            result.planned_requests = 0

    def queued(self) -> list[Step]:
        return [s for b in self.batches for s in b]

    def batches_hint(self) -> int:
        """How many workers are worth starting."""
        more = len(self.rows) - self.start
        return len(self.batches) + more

    async def next(self) -> list[Step] | None:
        if self.batches:
            return self.batches.popleft()
        async with self.lock:
            while not self.batches:
                if self.start >= len(self.rows) or self.error is not None:
                    return None
                try:
                    if not await self.plan_next():
                        return None
                except BaseException as exc:  # handed to the engine once the pool stops
                    self.error = exc
                    assert self.run.stop is not None
                    self.run.stop.set()
                    return None
            return self.batches.popleft()

    async def plan_next(self) -> bool:
        """Plan the next chunk; False when Ctrl-C came first."""
        o = self.run.o
        stop = self.run.stop
        assert stop is not None
        chunk = self.rows[self.start:self.start + self.size]
        plan_task = asyncio.ensure_future(self.provider.plan(chunk))
        stop_task = asyncio.ensure_future(stop.wait())
        await asyncio.wait({plan_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        stop_task.cancel()
        if not plan_task.done():
            plan_task.cancel()
            return False
        planned = plan_task.result()
        self.start += len(chunk)
        if len(planned) != len(chunk):
            raise RuntimeError("provider.plan returned the wrong number of results")
        steps: list[Step] = []
        early: list[Outcome] = []
        for row, item in zip(chunk, planned):
            if isinstance(item, Step):
                if row.index in self.in_flight_before and not ACTIONS[row.action].verifiable \
                        and not o.resend_unknown:
                    early.append(Outcome(row.index, Status.UNKNOWN, IN_FLIGHT_DETAIL, resolved=item.resolved))
                else:
                    steps.append(item)
            else:
                if row.index in self.in_flight_before:
                    item = _reconciled(row, item)
                early.append(item)
        self.journal.record(self.run_id, early)
        self.run.events.advance(early)
        batches = _batches(steps, self.provider.batch_size())
        if o.dry_run and self.result.planned_requests is not None:
            self.result.planned_requests += sum(
                1 if len(b) > 1 else self.provider.requests_for(b[0]) for b in batches)
        self.batches.extend(batches)
        return True


def rebuild_report(run_id: int, *, out: Path | None = None, state: Path | None = None,
                   env: Mapping[str, str] | None = None) -> RunResult:
    """``bulkmdm report RUN``: write a run's report again from the journal."""
    env = env if env is not None else dict(os.environ)
    with Journal(state_dir(state, env)) as journal:
        info = journal.run(run_id)
        path = out or Path(info.report_path)
        result = RunResult(run_id, path, Counter(), 0, rows=0)
        runner = _Run(RunOptions(job=Path(info.job_path), provider=info.provider, url=info.url), QuietEvents())
        runner._write_report(journal, run_id, path, result)
        result.rows = sum(result.counts.values())
        return result


# -- helpers -----------------------------------------------------------------


def _split_report(table: Any) -> tuple[list[Sequence[str]], tuple[str, ...], dict[int, tuple[str, ...]]]:
    """Input cells without our outcome columns, and the rows an earlier report
    marks done (carried over untouched, with their outcome values)."""
    outcome_pos = sorted(table.outcome.values()) if table.is_report else []
    if not outcome_pos:
        return list(table.rows), tuple(table.headers), {}
    keep = [i for i in range(len(table.headers)) if i not in set(outcome_pos)]
    headers = tuple(table.headers[i] for i in keep)
    status_pos = table.outcome["status"]
    carried: dict[int, tuple[str, ...]] = {}
    rows: list[Sequence[str]] = []
    done = {str(s) for s in DONE_STATUSES}
    for idx, cells in enumerate(table.rows):
        rows.append([cells[i] for i in keep])
        if cells[status_pos].strip().casefold() in done:
            carried[idx] = tuple(
                cells[table.outcome[name]] if name in table.outcome else "" for name in OUTCOME_COLUMNS
            )
    return rows, headers, carried


def _check_url(url: str) -> None:
    """Refuse a --url that names no server (``http://``, a bad port, spaces)."""
    from urllib.parse import urlsplit

    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise UsageError(f"--url {url!r} holds spaces or control characters; give the MDM's address, "
                         "e.g. --url https://mdm.example.com.")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
        if host:
            host.encode("idna")  # what the resolver does: 'a..b' fails here
    except (ValueError, UnicodeError):
        host = port = None
        parts = None
    if parts is None or not host or port == 0:
        raise UsageError(f"--url {url!r} is not a usable address; give the MDM's address, "
                         "e.g. --url https://mdm.example.com.")


def _job_row(idx: int, cells: Sequence[str], canonical: Mapping[str, int], action: str | None) -> JobRow:
    fields = {}
    for name, pos in canonical.items():
        if pos < len(cells):
            value = str(cells[pos]).strip()
            if value:
                fields[name] = value
    return JobRow(idx, action or normalise_action(fields.get("action", "")), fields)


def _validate(row: JobRow, provider_cls: type[Provider]) -> str | None:
    if not row.action:
        return "No action: fill in the action column (e.g. tag, lock, message) or pass --action."
    spec = ACTIONS.get(row.action)
    if spec is None:
        given = row.get("action") or row.action
        return f"Unknown action '{given}'; `bulkmdm actions` lists the actions."
    if row.action not in provider_cls.actions:
        can = ", ".join(sorted(provider_cls.actions))
        return f"{provider_cls.name} cannot {row.action}; it can: {can}."
    missing = missing_columns(spec, row)
    if missing:
        return f"Missing {' and '.join(missing)}: the {row.action} action needs {'them' if len(missing) > 1 else 'it'}."
    return None


def _reconciled(row: JobRow, item: Outcome) -> Outcome:
    """A row whose request was in flight when the earlier run died, re-planned
    against the MDM's current state: already in the wanted state means the
    earlier request took effect; for a delete, the object being gone means
    the same."""
    if item.status is Status.SKIPPED:
        return item.with_(status=Status.SUCCEEDED, detail="Done by the earlier run (confirmed by reading it back).")
    if (item.status is Status.FAILED and row.action in ("delete-device", "delete-user")
            and "not found" in item.detail.casefold()):
        return item.with_(status=Status.SUCCEEDED, detail="Deleted by the earlier run (it is gone now).")
    return item


def _batches(steps: list[Step], size: int) -> list[list[Step]]:
    if size <= 1:
        return [[s] for s in steps]
    groups: dict[Any, list[Step]] = {}
    for step in steps:
        groups.setdefault(step.batch_key, []).append(step)
    out = []
    for group in groups.values():
        for start in range(0, len(group), size):
            out.append(group[start:start + size])
    out.sort(key=lambda b: b[0].index)
    return out


def _install_sigint(loop: asyncio.AbstractEventLoop, handler: Any) -> bool:
    try:
        loop.add_signal_handler(signal.SIGINT, handler)
        return True
    except (NotImplementedError, RuntimeError, ValueError):
        return False


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]
