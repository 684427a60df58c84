"""Runs started from the page: each one a child ``bulkmdm run`` process.

The web app reimplements nothing of a run: it starts the same command an
admin would type, with the credentials in the child's environment only,
follows it through the journal (read in short transactions) and through the
lines the child prints, and stops it with a stop file (``BULKMDM_STOP_FILE``),
which the child treats as Ctrl-C (report written, exit 130, resumable by
running it again). A file and not a signal: on Windows no SIGINT reaches a
child process.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import signal
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine import STOP_FILE_VARIABLE
from ..shown import Secrets, plain
from .connection import Connection

#: how many of the child's output lines a page can show
_KEPT_LINES = 200
#: the statuses "Latest failures" lists
_FAILED_KEYS = frozenset({"failed", "invalid", "unknown"})
#: seconds of progress the rate is measured over before an ETA is shown: the first seconds run
#: ahead (rows found invalid are done at once, the rate limiter's bucket starts full), and an
#: estimate from them is off by far
_ETA_AFTER = 10.0
_UNDO_LINE = re.compile(r"^Undo file: (.+)$")
#: the terminal's remedy for refused credentials (connect.credential_hint), and the page's
_TERMINAL_REMEDY = re.compile(
    r"check BULKMDM_\w+(?:(?:, | and )BULKMDM_\w+)* \(or what `bulkmdm login` stored for the profile\)"
)
_PAGE_REMEDY = (
    "the credentials may have changed since you connected: use another MDM on the first page and connect again"
)
_RESUMING_LINE = re.compile(r"^Resuming run (\d+):")


@dataclass(frozen=True, slots=True)
class RunRequest:
    """One ``bulkmdm run`` command, as the page asked for it."""

    kind: str  # "dry run", "run" or "re-run"
    job: Path
    report: Path
    connection: Connection
    state_dir: Path
    upload_id: str
    dry_run: bool = False
    yes: bool = False
    rate: str | None = None
    #: the action for every row, for a job without an action column
    action: str | None = None

    def arguments(self) -> list[str]:
        """The command line (never a credential: those go in the environment)."""
        words = [
            sys.executable,
            "-m",
            "bulkmdm",
            "run",
            str(self.job),
            "--provider",
            self.connection.provider,
            "--url",
            self.connection.url,
            "--report",
            str(self.report),
            "--state-dir",
            str(self.state_dir),
        ]
        if self.connection.partition:
            words += ["--partition", self.connection.partition]
        if self.action:
            words += ["--action", self.action]
        if self.dry_run:
            words.append("--dry-run")
        if self.yes:
            words.append("--yes")
        if self.rate:
            words += ["--rate", self.rate]
        return words


@dataclass(frozen=True, slots=True)
class Failure:
    line: int
    status: str
    detail: str


@dataclass(slots=True)
class Progress:
    """A snapshot of a running child, for the live page."""

    state: str
    counts: dict[str, int]
    done: int
    total: int
    rate: float | None
    eta: float | None
    failures: list[Failure] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


class ChildRun:
    """A child ``bulkmdm run`` and what is known about it."""

    def __init__(self, request: RunRequest) -> None:
        self.id = secrets.token_hex(6)
        self.request = request
        self.process: asyncio.subprocess.Process | None = None
        self.lines: deque[str] = deque(maxlen=_KEPT_LINES)
        self.started = time.time()
        self.ended: float | None = None
        self.returncode: int | None = None
        self.run_id: int | None = None
        self.undo_file: Path | None = None
        self.stop_requested = False
        self._reader: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self._samples: deque[tuple[float, int]] = deque(maxlen=64)

    @property
    def finished(self) -> bool:
        return self.returncode is not None

    @property
    def interrupted(self) -> bool:
        return self.returncode in (130, 143, -signal.SIGINT)

    @property
    def error(self) -> str:
        """The child's one-sentence error, when it ran nothing, in the page's words."""
        for line in reversed(self.lines):
            if line.startswith("Error: "):
                return _TERMINAL_REMEDY.sub(_PAGE_REMEDY, line.removeprefix("Error: "))
        return ""

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.request.arguments(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**self.request.connection.child_environment(), STOP_FILE_VARIABLE: str(self.stop_file)},
            # its own session: a Ctrl-C on `bulkmdm serve` does not hit the child; serve stops it itself
            start_new_session=True,
        )
        self._reader = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        shown = Secrets.from_env(self.request.connection.credentials)
        while raw := await _next_line(self.process.stdout):
            line = shown.clean(raw.decode("utf-8", "replace")).rstrip()
            if not line:
                continue
            if match := _UNDO_LINE.match(line):
                self.undo_file = Path(match.group(1).strip())
            if match := _RESUMING_LINE.match(line):
                self.run_id = int(match.group(1))
            self.lines.append(hide_paths(line, self.request.state_dir))
        self.returncode = await self.process.wait()
        self.ended = time.time()
        self.stop_file.unlink(missing_ok=True)
        self._done.set()

    @property
    def stop_file(self) -> Path:
        """The file that stops this child (in its job's folder, named by this run)."""
        return self.request.report.parent / f".stop-{self.id}"

    def stop(self) -> None:
        """Like Ctrl-C: no new rows start, requests in flight finish, the report is written, the run can be
        resumed."""
        if self.process is not None and not self.finished and not self.stop_requested:
            self.stop_requested = True
            self.stop_file.touch()

    async def wait(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def progress(self) -> Progress:
        """Counts from the journal, rate and ETA from their change, the latest failures."""
        run_id, counts, failures = await asyncio.to_thread(read_progress, self.request, self.started, self.run_id)
        self.run_id = run_id
        total = sum(counts.values())
        done = total - counts.get("pending", 0) - counts.get("in_flight", 0)
        rate, eta = self.speed(done, total, time.monotonic())
        state = (
            "finished"
            if self.finished
            else ("stopping" if self.stop_requested else ("running" if run_id is not None else "starting"))
        )
        return Progress(state, counts, done, total, rate, eta, failures, list(self.lines))

    def speed(self, done: int, total: int, now: float) -> tuple[float | None, float | None]:
        """Rows a second over the last ten seconds or so (steady enough to read, quick to follow a
        change), and the seconds left at that rate: None until it has that long a span to go by."""
        if not self._samples or done < self._samples[-1][1]:
            self._samples.clear()  # a resumed run counts afresh
        self._samples.append((now, done))
        then, done_then = next(((t, d) for t, d in self._samples if now - t <= _ETA_AFTER), self._samples[0])
        if now - then < 0.5 or done <= done_then:
            return None, None
        rate = (done - done_then) / (now - then)
        measured = now - self._samples[0][0] >= _ETA_AFTER
        return rate, ((total - done) / rate if measured else None)


def read_progress(
    request: RunRequest, started: float, run_id: int | None
) -> tuple[int | None, dict[str, int], list[Failure]]:
    """The child's journal run (found by its job once it appears), its counts, and its latest failures
    (read after the counts: every failure counted is in the list)."""
    from ..errors import BulkMDMError
    from ..journal import Journal

    try:
        with Journal(request.state_dir) as journal:
            if run_id is None:
                run_id = _find_run(journal, request, started)
            if run_id is None:
                return None, {}, []
            counts = journal.counts(run_id)
            latest = journal.find_rows(run_id, keys=_FAILED_KEYS, limit=6, newest_first=True)
            failures = [Failure(r.idx + 2, r.status or "", plain(r.detail or "")) for r in latest]
            return run_id, counts, failures
    except BulkMDMError:
        return run_id, {}, []


def _find_run(journal: Any, request: RunRequest, started: float) -> int | None:
    job = str(request.job.resolve())
    for info, _counts in journal.runs(10):
        if info.job_path != job or info.dry_run != request.dry_run:
            continue
        # a new run appears after the child started; a resumed one is the unfinished one
        if info.created >= started - 1 or (info.finished is None and not info.dry_run):
            return int(info.id)
    return None


async def _next_line(stream: asyncio.StreamReader) -> bytes:
    """The child's next line; a line past the reader's limit (64 KiB) comes in
    pieces rather than ending the reading, which would leave the page waiting
    for an end it is never told of (asyncio keeps such a line in its buffer)."""
    try:
        return await stream.readline()
    except ValueError:
        return await stream.read(1 << 16)


def hide_paths(text: str, state_dir: Path) -> str:
    """``text`` without this server's own paths, which are no business of a page: a file kept for the
    page is named by its name alone, the state folder as such."""
    for folder in {state_dir, state_dir.resolve()}:
        text = re.sub(re.escape(str(folder / "web-jobs")) + r"[/\\][0-9a-f]{16}[/\\]", "", text)
        text = text.replace(str(folder), "the state folder")
    return text


def count_statuses(counts: dict[str, int], *, running: bool = False) -> Counter[str]:
    """Journal counts under the report's names: pending rows are not-run (waiting, while the run
    still goes), rows in flight are in flight."""
    pending = "waiting" if running else "not-run"
    named: Counter[str] = Counter()
    for key, n in counts.items():
        named[{"pending": pending, "in_flight": "in flight"}.get(key, key)] += n
    return named
