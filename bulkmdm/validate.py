"""Validate: the options and the job's rows, before anything is sent.

Options that cannot work are a ``UsageError``; a job no row of which can run
is a ``JobFileError``; a row that is wrong is an ``invalid`` outcome (data,
not an exception) and the other rows still run. Every row leaves here as a
:class:`RowEntry`: its cells as written, a typed :class:`JobRow`, and the
digest of its content that a later run of an edited job recognises it by.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from . import providers
from .actions import ACTIONS, destroys, missing_columns, normalise_action, not_an_action
from .columns import OUTCOME_COLUMNS, seen
from .errors import ConfirmationRefused, JobFileError, UsageError
from .journal import cells_json
from .model import DONE_STATUSES, JobRow
from .providers.base import Provider
from .retry import check_positive

if TYPE_CHECKING:
    from .engine import RunOptions
    from .events import Events
    from .jobfile import JobTable

#: The columns that say what a row acts on, in the order a summary names them.
_LABEL_COLUMNS = ("serial", "device_id", "email", "user", "user_id")
_REPORT_TAILS = (".outcome", ".dryrun")


@dataclass(frozen=True, slots=True)
class RowEntry:
    """One data row: its cells as written (an earlier report's outcome columns
    left out) and what validation made of it."""

    cells: tuple[str, ...]
    row: JobRow
    #: why the row cannot run (it is reported ``invalid``), or None
    invalid: str | None = None
    #: an earlier report's outcome columns for a row it marks done (carried over untouched)
    carried: tuple[str, ...] | None = None

    @property
    def digest(self) -> str:
        """The row's content (see :func:`row_digest`); computed when asked, since a million rows keep it nowhere."""
        return row_digest(self.row)

    @property
    def label(self) -> str:
        """What the row acts on (a serial, device id or email), for summaries."""
        fields = self.row.fields
        for name in _LABEL_COLUMNS:
            if value := fields.get(name):
                return value
        return ""


@dataclass(frozen=True, slots=True)
class ValidJob:
    """A job file's rows, validated, in file order."""

    path: Path
    headers: tuple[str, ...]
    delimiter: str
    #: the file is an earlier outcome report being run again
    is_report: bool
    entries: list[RowEntry]
    #: digest of every row's cells in order: equal when the job is unchanged
    content: str

    def destructive_actions(self) -> set[str]:
        """The destructive verbs the job holds, counting rows that are invalid for other reasons."""
        return {
            e.row.action
            for e in self.entries
            if e.carried is None and e.row.action in ACTIONS and ACTIONS[e.row.action].destructive
        }


# -- options -----------------------------------------------------------------


def check_options(options: RunOptions) -> tuple[type[Provider], str]:
    """The provider class and the cleaned --url; ``UsageError`` for flags that cannot work."""
    provider_cls = providers.get(options.provider)
    url = check_url(options.url)
    if options.concurrency is not None:
        try:
            check_positive("--concurrency", options.concurrency)
        except ValueError as exc:
            raise UsageError(f"{exc}.") from None
    if not (options.timeout > 0 and math.isfinite(options.timeout)):
        raise UsageError("--timeout must be a number of seconds greater than 0.")
    if options.max_destructive is not None and options.max_destructive < 0:
        raise UsageError("--max-destructive must be 0 or more.")
    if options.batch_size is not None and options.batch_size < 1:
        raise UsageError("--batch-size must be at least 1.")
    if options.action is not None:
        action = normalise_action(options.action)
        if action not in ACTIONS:
            raise UsageError(not_an_action(options.action, flag="--action"))
        if action not in provider_cls.actions:
            can = ", ".join(sorted(provider_cls.actions))
            raise UsageError(f"{provider_cls.name} cannot {action}; it can: {can}.")
    return provider_cls, url


def check_url(given: str | None) -> str:
    """The --url, cleaned; ``UsageError`` for one that names no MDM (every command that talks to one)."""
    url = (given or "").strip()
    if not url:
        raise UsageError("Give the MDM's address with --url (e.g. --url https://mdm.example.com).")
    if not url.startswith(("https://", "http://")):
        raise UsageError(f"--url {url!r} must start with https:// (or http:// for a local server).")
    if "@" in url.split("://", 1)[1].split("/", 1)[0]:
        # user:password@host would end up in the journal and in printed commands
        raise UsageError("--url must not hold credentials; set them in the environment (see `bulkmdm run --help`).")
    _check_url(url)
    return url


def _check_url(url: str) -> None:
    """Refuse a --url that names no server (``http://``, a bad port, spaces)."""
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise UsageError(
            f"--url {url!r} holds spaces or control characters; give the MDM's address, "
            "e.g. --url https://mdm.example.com."
        )
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
        if host:
            host.encode("idna")  # what the resolver does: 'a..b' fails here
    except (ValueError, UnicodeError):
        host = port = None
    if not host or port == 0:
        raise UsageError(
            f"--url {url!r} is not a usable address; give the MDM's address, e.g. --url https://mdm.example.com."
        )


def default_report_path(job: Path, *, dry_run: bool = False) -> Path:
    """``<stem>.outcome<ext>`` next to the job (``.dryrun`` for a dry run).

    The name never grows: the report of ``x.outcome.csv`` is ``x.outcome.csv``."""
    stem = job.stem
    for tail in _REPORT_TAILS:
        if stem.casefold().endswith(tail) and len(stem) > len(tail):
            stem = stem[: -len(tail)]
            break
    return job.with_name(f"{stem}{'.dryrun' if dry_run else '.outcome'}{job.suffix}")


def report_path(options: RunOptions, job: ValidJob) -> Path:
    """Where this run's report goes; ``UsageError`` when it cannot go there."""
    path = options.report or default_report_path(options.job, dry_run=options.dry_run)
    if options.report is None and _same_file(path, options.job) and not job.is_report:
        # a job merely named like a report: never write over it
        path = options.job.with_name(
            f"{options.job.stem}{'.dryrun' if options.dry_run else '.outcome'}{options.job.suffix}"
        )
    if path.suffix.lower() not in (".csv", ".xlsx"):
        raise UsageError(f"--report {path} must end in .csv or .xlsx.")
    try:
        folder_named = path.is_dir()
    except OSError:
        folder_named = False  # a name the file system refuses (too long): report.check_writable says so
    if folder_named:
        raise UsageError(f"--report {path} is a folder; give the path of a .csv or .xlsx file.")
    if _same_file(path, options.job) and not job.is_report:
        raise UsageError(
            f"--report {path} is the job file itself; the report would replace the job. Give the report another name."
        )
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UsageError(
            f"Cannot write the report to {path}: {folder} is not a writable folder; pass --report with another path."
        )
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


# -- rows --------------------------------------------------------------------


def validate_job(table: JobTable, provider_cls: type[Provider], action: str | None) -> ValidJob:
    """Every row of ``table`` as a :class:`RowEntry`; ``JobFileError`` when no row can run.

    ``action`` is the normalised --action, if given."""
    if not table.rows:
        raise JobFileError(f"{table.path} has a header but no rows; there is nothing to do.")
    if action is None and "action" not in table.canonical:
        raise JobFileError(
            f"{table.path} has no action column ({seen(table.headers)}); add one (e.g. 'action' with lock, tag, ...) "
            "or pass --action."
        )
    content = hashlib.sha256((action or "").encode())
    entries: list[RowEntry] = []
    for entry in _entries(table, provider_cls, action):
        content.update(cells_json(entry.cells).encode())
        entries.append(entry)
    headers = tuple(h for i, h in enumerate(table.headers) if i not in _outcome_positions(table))
    _refuse_when_nothing_can_run(table.path, entries, seen(table.headers))
    return ValidJob(
        path=table.path,
        headers=headers,
        delimiter=table.delimiter,
        is_report=table.is_report,
        entries=entries,
        content=content.hexdigest(),
    )


def _outcome_positions(table: JobTable) -> frozenset[int]:
    return frozenset(table.outcome.values()) if table.is_report else frozenset()


def _entries(table: JobTable, provider_cls: type[Provider], action: str | None) -> Iterator[RowEntry]:
    outcome_at = _outcome_positions(table)
    keep = [i for i in range(len(table.headers)) if i not in outcome_at]
    status_at = table.outcome.get("status") if outcome_at else None
    done = {str(s) for s in DONE_STATUSES}
    for index, cells in enumerate(table.rows):
        row = job_row(index, cells, table.canonical, action)
        kept = cells if not outcome_at else tuple(cells[i] for i in keep)
        carried = None
        if status_at is not None and cells[status_at].strip().casefold() in done:
            carried = tuple(cells[table.outcome[name]] if name in table.outcome else "" for name in OUTCOME_COLUMNS)
        invalid = None if carried else (table.problems.get(index) or row_problem(row, provider_cls))
        yield RowEntry(kept, row, invalid, carried)


def job_row(index: int, cells: Sequence[str], canonical: Mapping[str, int], action: str | None) -> JobRow:
    """The typed row: canonical columns with white space stripped, blank ones left out."""
    fields = {}
    for name, position in canonical.items():
        if position < len(cells):
            value = str(cells[position]).strip()
            if value:
                fields[name] = value
    return JobRow(index, action or normalise_action(fields.get("action", "")), fields)


def row_digest(row: JobRow) -> str:
    """The row's content: its action and the cells that define the change, normalised.

    The digest is of ``json.dumps([action, sorted([name, value], ...)], ensure_ascii=False)``,
    whose text is built here from the strings quoted as that call quotes them
    (an encoder built per row costs more than the rest of the digest)."""
    fields = sorted([(name, " ".join(value.split())) for name, value in row.fields.items() if name != "action"])
    pairs = ", ".join([f"[{encode_basestring(name)}, {encode_basestring(value)}]" for name, value in fields])
    text = f"[{encode_basestring(row.action)}, [{pairs}]]"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def row_problem(row: JobRow, provider_cls: type[Provider]) -> str | None:
    """Why the row cannot run, or None."""
    if not row.action:
        return "No action: fill in the action column (e.g. tag, lock, message) or pass --action."
    spec = ACTIONS.get(row.action)
    if spec is None:
        return not_an_action(row.get("action") or row.action)
    if row.action not in provider_cls.actions:
        can = ", ".join(sorted(provider_cls.actions))
        return f"{provider_cls.name} cannot {row.action}; it can: {can}."
    missing = missing_columns(spec, row)
    if missing:
        return f"Missing {' and '.join(missing)}: the {row.action} action needs {'them' if len(missing) > 1 else 'it'}."
    return None


def _refuse_when_nothing_can_run(path: Path, entries: list[RowEntry], headers_seen: str) -> None:
    """A job whose every row misses a column is a wrong file, not a run of failures."""
    to_check = [e for e in entries if e.carried is None]
    if not to_check or any(e.invalid is None for e in to_check):
        return
    reasons = Counter(e.invalid for e in to_check)
    common, n = reasons.most_common(1)[0]
    assert common is not None
    if n == len(to_check) and common.startswith("Missing "):
        raise JobFileError(f"No row of {path} can run: {common[0].lower()}{common[1:-1]} ({headers_seen}).")
    if all((e.invalid or "").startswith("Missing ") for e in to_check):
        first = to_check[0]
        detail = first.invalid or ""
        raise JobFileError(
            f"No row of {path} can run: every row misses a column its action needs "
            f"(line {first.row.line}: {detail[0].lower()}{detail[1:].rstrip('.')}; {headers_seen})."
        )


# -- destructive jobs ----------------------------------------------------------


def check_destructive(job: ValidJob, options: RunOptions, events: Events) -> None:
    """Refuse, before anything is sent, a destructive job nobody confirmed or one over --max-destructive."""
    held = job.destructive_actions()
    if held and not options.dry_run and not options.yes and not events.can_ask():
        raise ConfirmationRefused(
            f"This job holds destructive rows ({', '.join(sorted(held))}) and there is no terminal to "
            "confirm on; nothing was sent. Check the file, then run again with --yes."
        )
    destructive = [
        e.row for e in job.entries if e.carried is None and e.invalid is None and ACTIONS[e.row.action].destructive
    ]
    if options.max_destructive is not None and len(destructive) > options.max_destructive:
        raise ConfirmationRefused(
            f"This job would {destroys(Counter(row.action for row in destructive))}, more than "
            f"--max-destructive {options.max_destructive}; nothing was sent."
        )
