"""Outcome report writers (CSV, XLSX), formula-safe and atomic.

Rows are streamed: a report of a million rows never sits in memory. The file
appears under its name only when it is complete (written to a temporary file
in the same folder, then renamed), so a killed run never leaves half a report
where the last good one was.

Excel must never run a cell as a formula. In CSV, a cell that starts with
``= + - @``, tab, CR or ``'`` gets a leading ``'`` (:func:`neutralise`);
:func:`bulkmdm.jobfile.read_job` takes one ``'`` off every cell that begins
with one when it reads a file bulkmdm wrote (:mod:`bulkmdm.ownfiles`), which
gives back exactly what was written. In XLSX every cell is written as a text
cell, so nothing needs a prefix; a value no Excel cell can hold (too long)
is never written cut: its cell holds ``jobfile.NOT_WRITTEN`` instead, which
``read_job`` turns into an ``invalid`` row, and a CSV keeps it whole.

:func:`write_run_report` assembles a run's report from the journal (the
only source: ``bulkmdm report RUN`` uses it too) and tallies, as the rows
stream past, what the end-of-run summary tells: counts per status and per
action, failures grouped by reason, and the destructive rows.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import secrets
import stat
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .actions import ACTIONS
from .columns import CANONICAL, OUTCOME_COLUMNS
from .errors import ReportError, UsageError
from .jobfile import NOT_WRITTEN, not_in_excel
from .journal import row_reason
from .model import BAD_STATUSES, Reason, Status, reason_key
from .ownfiles import file_digest, mdm_key, remember
from .words import IN_FLIGHT_DETAIL, NOT_SENT
from .shown import plain

if TYPE_CHECKING:
    from .journal import Journal, RowRecord

#: The most data rows one Excel sheet holds (1,048,576 rows minus the header).
XLSX_MAX_ROWS = 1_048_575

_XLSX_OPTIONS = {
    "constant_memory": True,
    "strings_to_formulas": False,
    "strings_to_numbers": False,
    "strings_to_urls": False,
}


#: The first characters of a CSV cell that get a leading "'": those Excel
#: starts a formula with (OWASP, "CSV Injection"), and "'" itself, so that
#: taking one "'" off every cell that begins with one is exact on the way
#: back in ("=1" -> "'=1" -> "=1", "'x" -> "''x" -> "'x").
_GUARDED = frozenset("'=+-@\t\r")


def neutralise(cell: str) -> str:
    """Prefix ``'`` to a CSV cell Excel would otherwise read as a formula (or that begins with ``'``)."""
    return "'" + cell if cell[:1] in _GUARDED else cell


def write_report(
    path: str | Path,
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    delimiter: str = ",",
    sheet: str = "Outcome",
    state: Path | None = None,
    mdm: str | None = None,
) -> None:
    """Write ``headers`` and ``rows`` to ``path`` (``.csv`` or ``.xlsx``), atomically.

    Cells are written as text: ``None`` becomes ``""``, anything else
    ``str(value)``. ``delimiter`` applies to CSV only. With ``state`` (the
    state folder), the file is remembered there as bulkmdm's own
    (:mod:`bulkmdm.ownfiles`, ``mdm`` saying which MDM it is about), so that
    reading a CSV back undoes the formula guard.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".xlsx"):
        raise UsageError(f"The report {path} must end in .csv or .xlsx; choose a --report name with one of those.")
    if suffix == ".csv" and (len(delimiter) != 1 or delimiter in '"\r\n'):
        raise UsageError(f"{delimiter!r} cannot separate the cells of a CSV report; use ',' or ';'.")

    temporary = _reserve(path)
    try:
        if suffix == ".csv":
            _write_csv(temporary, headers, rows, delimiter)
        else:
            _write_xlsx(temporary, path, headers, rows, sheet)
        _fsync(temporary)
        _keep_mode(path, temporary)
        if state is not None:
            remember(state, file_digest(temporary), mdm)
        os.replace(temporary, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, PermissionError):
            raise UsageError(
                f"The report {path} cannot be replaced (permission denied); close it if Excel has it open, "
                "or choose another --report."
            ) from exc
        if isinstance(exc, OSError):
            raise UsageError(
                f"The report {path} could not be written ({exc.strerror or exc}); free some space "
                "or choose another --report."
            ) from exc
        raise


def check_writable(path: Path, what: str, remedy: str) -> None:
    """Stop (``UsageError``, one sentence) unless a file can be written at ``path``.

    The file is created and removed again (or, when it exists, opened for
    writing without being changed), and so is a temporary file beside it, so
    a name too long for the file system, a folder that is missing or
    read-only, or a file held open elsewhere is found before a run changes
    anything, not after.
    """
    created = False
    try:
        if path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        else:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            created = True
        temporary = _reserve(path)
        os.unlink(temporary)
    except (OSError, UsageError) as exc:
        why = f" ({exc.strerror or exc})" if isinstance(exc, OSError) else ""
        raise UsageError(f"The {what} {path} cannot be written{why}, so nothing was sent; {remedy}.") from None
    finally:
        if created:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _reserve(path: Path) -> Path:
    """Create an empty temporary file next to ``path`` (mode from the umask, like any new file)."""
    for _ in range(100):
        # the name's first 40 characters: a temporary name must fit wherever the file's own does
        candidate = path.with_name(f".{path.name[:40]}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise UsageError(
                f"The report cannot be written in {path.parent} ({exc.strerror or exc}); "
                "check that the folder exists and is writable, or choose another --report."
            ) from exc
        os.close(fd)
        return candidate
    raise UsageError(
        f"The report cannot be written in {path.parent}; remove stale .{path.name[:40]}.*.tmp files there."
    )


def _keep_mode(path: Path, temporary: Path) -> None:
    """A report that replaces an earlier one keeps that file's permissions."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    os.chmod(temporary, mode)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _text(value: object) -> str:
    if value is None:
        return ""
    return value if type(value) is str else str(value)


def _csv_cell(value: object) -> str:
    """A cell as the CSV holds it: as text (:func:`_text`), formula-guarded (:func:`neutralise`)."""
    text = value if type(value) is str else _text(value)
    return "'" + text if text[:1] in _GUARDED else text


def _write_csv(temporary: Path, headers: Sequence[str], rows: Iterable[Sequence[object]], delimiter: str) -> None:
    # The BOM is what makes Excel read å/ä/ö as UTF-8. It is written by hand,
    # not by the utf-8-sig codec, whose encoder is Python code called for
    # every row the csv writer writes; the bytes are the same.
    with open(temporary, "w", encoding="utf-8", newline="") as handle:
        handle.write("\ufeff")
        writer = csv.writer(handle, delimiter=delimiter, lineterminator="\r\n")
        writer.writerow(list(map(_csv_cell, headers)))
        writer.writerows(list(map(_csv_cell, row)) for row in rows)


#: status -> (fill, font colour) of its cell: Excel's own Good / Neutral / Bad styles, and grey
STATUS_COLOURS: dict[str, tuple[str, str]] = {
    "succeeded": ("#C6EFCE", "#006100"),
    "skipped": ("#EDEDED", "#595959"),
    "failed": ("#FFC7CE", "#9C0006"),
    "invalid": ("#FFC7CE", "#9C0006"),
    "unknown": ("#FFEB9C", "#9C5700"),
    "not-run": ("#FFEB9C", "#9C5700"),
    "not run": ("#FFEB9C", "#9C5700"),
}
_MIN_WIDTH, _MAX_WIDTH = 8, 60


def _write_xlsx(
    temporary: Path, path: Path, headers: Sequence[str], rows: Iterable[Sequence[object]], sheet_name: str
) -> None:
    """A sheet people read in Excel: a frozen, filterable header, columns as wide
    as their text (within limits) and the status cell coloured by status.

    Every cell and column is formatted as Text (``@``), so that a value typed
    into the sheet afterwards (a serial ``00123``, a long id) stays as typed
    when the file is used as a job; only the report's own counts
    (``http_status``, ``attempts``) are numbers, which Excel sums and filters.
    """
    import xlsxwriter

    workbook = xlsxwriter.Workbook(str(temporary), _XLSX_OPTIONS)
    try:
        sheet = workbook.add_worksheet(sheet_name)
        sheet.freeze_panes(1, 0)
        heading = workbook.add_format({"bold": True, "bottom": 1, "bg_color": "#F2F2F2"})
        text_format = workbook.add_format({"num_format": "@"})
        coloured = {
            status: workbook.add_format({"bg_color": fill, "font_color": font, "num_format": "@"})
            for status, (fill, font) in STATUS_COLOURS.items()
        }
        status_column = _status_column(headers)
        numeric = _number_columns(headers)
        write = sheet.write_string
        # header text + room for the filter button
        widths = [len(_text(header)) + 3 for header in headers]
        for column, header in enumerate(headers):
            write(0, column, _text(header), heading)
        number = 0
        for number, row in enumerate(rows, start=1):
            if number > XLSX_MAX_ROWS:
                raise UsageError(
                    f"The report {path} would have more than {XLSX_MAX_ROWS:,} rows, more than an Excel sheet holds; "
                    "write the report as .csv instead."
                )
            for column, cell in enumerate(row):
                # write_string even for numbers: a text cell is never a
                # formula, a number or a link, whatever it holds.
                text = _text(cell)
                if not text:
                    continue
                if (why := not_in_excel(text)) is not None:
                    # never the value cut or changed: a marker that makes the row invalid when read back
                    text = NOT_WRITTEN.format(why=why)
                if column == status_column:
                    write(number, column, text, coloured.get(text.strip().casefold(), text_format))
                elif column in numeric and _COUNT.fullmatch(text):
                    sheet.write_number(number, column, int(text))
                else:
                    write(number, column, text, text_format)
                if column < len(widths):
                    widths[column] = max(widths[column], len(text) if len(text) < _MAX_WIDTH else _MAX_WIDTH)
                else:
                    widths.append(min(len(text), _MAX_WIDTH))
        for column, width in enumerate(widths):
            shown = min(max(width + 1, _MIN_WIDTH), _MAX_WIDTH)
            sheet.set_column(column, column, shown, None if column in numeric else text_format)
        if headers:
            sheet.autofilter(0, 0, number, len(headers) - 1)
    finally:
        workbook.close()


#: a count as the report writes it: digits, no leading zero, short enough to be exact in Excel
_COUNT = re.compile(r"0|[1-9][0-9]{0,14}")


def _number_columns(headers: Sequence[str]) -> frozenset[int]:
    """The positions of the report's own ``http_status`` and ``attempts`` columns
    (the last of each name, as for ``status``)."""
    found = {}
    for i, header in enumerate(headers):
        name = _text(header).strip().casefold()
        if name in ("http_status", "attempts"):
            found[name] = i
    return frozenset(found.values()) if _status_column(headers) is not None else frozenset()


def _status_column(headers: Sequence[str]) -> int | None:
    """The position of the report's own ``status`` column: the last one, since
    bulkmdm appends its columns after the job's."""
    found = [i for i, header in enumerate(headers) if _text(header).strip().casefold() == "status"]
    return found[-1] if found else None


# -- a run's report, from the journal -----------------------------------------

#: The detail of a row the run never sent, when the journal holds no reason.
NOT_RUN_DETAIL = NOT_SENT
#: Failure reasons grouped at most; a job with more distinct ones lumps the rest.
_MAX_REASONS = 200
_EXAMPLES = 5
_BAD = {str(status) for status in BAD_STATUSES}
_DESTRUCTIVE = frozenset(name for name, spec in ACTIONS.items() if spec.destructive)
#: the statuses of a destructive row the summary names: it would run, or it ran
_DESTROYING = frozenset({str(Status.PLANNED), str(Status.SUCCEEDED)})


@dataclass(frozen=True, slots=True)
class FailureGroup:
    """Rows that went wrong for one reason."""

    #: the rows' detail; where they differ in the values they name, with those left out ("Serial '…' was not found")
    reason: str
    count: int
    #: the spreadsheet lines of the first few rows
    lines: tuple[int, ...]


@dataclass(slots=True)
class RunSummary:
    """What a run's report holds, counted while it was written."""

    path: Path
    counts: Counter[str] = field(default_factory=Counter)
    #: action -> status -> rows
    by_action: dict[str, Counter[str]] = field(default_factory=dict)
    failures: list[FailureGroup] = field(default_factory=list)
    #: destructive action -> what planned or succeeded rows act on (the first few)
    destructive: dict[str, list[str]] = field(default_factory=dict)
    destructive_counts: Counter[str] = field(default_factory=Counter)
    #: some rows were never sent or their request was in flight: the run can be continued
    incomplete: bool = False

    @property
    def rows(self) -> int:
        return sum(self.counts.values())


@dataclass(slots=True)
class _Reason:
    detail: str
    count: int = 0
    lines: list[int] = field(default_factory=list)
    #: the rows' details differ (in the values they name): the first would speak for the others
    varied: bool = False


class FailureTally:
    """Rows that went wrong, grouped by reason: the one grouping the end-of-run
    summary and the pages of ``bulkmdm serve`` show."""

    def __init__(self) -> None:
        self.reasons: dict[str, _Reason] = {}

    def add(self, status: str, detail: str, line: int, reason: Reason | None = None) -> None:
        """Count a row; without a ``reason`` (a report's columns) it is its status's usual one."""
        # grouped by code, and within it by the sentence's shape: rows that differ
        # only in the value they name ('X' not found) share a group
        code = reason or Reason.of_status(status)
        key = f"{status}:{code}:{reason_key(detail)}"
        if key not in self.reasons and len(self.reasons) >= _MAX_REASONS:
            key, detail = "other", "Other reasons: see the report."
        group = self.reasons.setdefault(key, _Reason(detail))
        group.count += 1
        group.varied = group.varied or detail != group.detail
        if len(group.lines) < _EXAMPLES:
            group.lines.append(line)

    def groups(self) -> list[FailureGroup]:
        """The groups, the largest first."""
        groups = [
            FailureGroup(reason_key(r.detail) if r.varied else r.detail, r.count, tuple(r.lines))
            for r in self.reasons.values()
        ]
        return sorted(groups, key=lambda group: -group.count)


class _Tally:
    """Builds a RunSummary from rows as they stream past.

    A row is counted by its (action, status) alone, one dict update; only
    the rows the summary names (those that went wrong, destructive ones)
    are looked at further."""

    def __init__(self, path: Path) -> None:
        self.summary = RunSummary(path)
        self.failures = FailureTally()
        #: (action, status) -> rows, in the order each pair first came
        self.pairs: Counter[tuple[str, str]] = Counter()

    def add(self, idx: int, action: str, label: str, reason: Reason | None, status: str, detail: str) -> None:
        self.pairs[action, status] += 1
        if status in _BAD:
            self.failures.add(status, detail, idx + 2, reason)
        if action in _DESTRUCTIVE and status in _DESTROYING:
            summary = self.summary
            summary.destructive_counts[action] += 1
            names = summary.destructive.setdefault(action, [])
            if len(names) < _EXAMPLES:
                names.append(label or f"line {idx + 2}")

    def done(self) -> RunSummary:
        summary = self.summary
        for (action, status), count in self.pairs.items():
            summary.counts[status] += count
            by_status = summary.by_action.get(action or "?")
            if by_status is None:
                by_status = summary.by_action[action or "?"] = Counter()
            by_status[status] += count
        summary.failures = self.failures.groups()
        return summary


def outcome_values(record: RowRecord, stop_reason: str | None) -> list[str]:
    """The report's outcome columns for one journal row (the journal holds
    them cleaned; a journal written by an older bulkmdm may not: ``plain``)."""
    return _outcome_values(
        record.state, record.status, record.detail, record.http_status, record.attempts, record.resolved, stop_reason
    )


def _outcome_values(
    state: str,
    status: str | None,
    detail: str | None,
    http_status: str | None,
    attempts: str | None,
    resolved: str | None,
    stop_reason: str | None,
) -> list[str]:
    if state == "done":
        return [status or "", plain(detail or ""), http_status or "", attempts or "", plain(resolved or "")]
    if state == "in_flight":
        return [str(Status.UNKNOWN), IN_FLIGHT_DETAIL, "", "", ""]
    if status == str(Status.NOT_RUN) and detail:
        # why this row was held back
        return [str(Status.NOT_RUN), plain(detail), "", "", plain(resolved or "")]
    return [str(Status.NOT_RUN), plain(stop_reason or NOT_RUN_DETAIL), "", "", ""]


def write_run_report(journal: Journal, run_id: int, path: Path) -> RunSummary:
    """Write run ``run_id``'s report to ``path`` from the journal; what it holds, counted."""
    run = journal.run(run_id)
    tally = _Tally(path)

    xlsx = path.suffix.lower() == ".xlsx"

    not_run = str(Status.NOT_RUN)

    def records() -> Iterator[list[str]]:
        stop_reason, add = run.stop_reason, tally.add
        for idx, cells, state, status, detail, http, attempts, resolved, action, label, code in journal.row_values(
            run_id
        ):
            values = _outcome_values(state, status, detail, http, attempts, resolved, stop_reason)
            shown = values[0]
            if state != "done" or shown == not_run:
                tally.summary.incomplete = True
            # (the reason is read only for a row the summary names)
            add(idx, action, label, row_reason(state, code, status) if shown in _BAD else None, shown, values[1])
            if xlsx:
                values[1] = _not_in_xlsx(run_id, run.headers, cells, values[1])
            yield [*cells, *values]

    try:
        write_report(
            path,
            [*run.headers, *OUTCOME_COLUMNS],
            records(),
            delimiter=run.delimiter,
            state=journal.dir,
            mdm=mdm_key(run.provider, run.url, run.partition_id),
        )
    except UsageError as exc:
        raise ReportError(
            f"{exc} Every outcome is in the journal: write it elsewhere with "
            f"`bulkmdm report {run_id} --out OTHER.csv --undo`."
        ) from None
    return tally.done()


def _not_in_xlsx(run_id: int, headers: Sequence[str], cells: Sequence[str], detail: str) -> str:
    """The row's detail, saying which of its values the .xlsx report cannot hold."""
    for position, cell in enumerate(cells):
        if (why := not_in_excel(cell)) is not None:
            column = headers[position] if position < len(headers) else str(position + 1)
            detail = (
                f"{detail} This .xlsx report leaves out the value in column '{column}' ({why}); "
                f"`bulkmdm report {run_id} --out FILE.csv` writes it in full."
            ).strip()
    return detail


def rebuild_report(
    run_id: int, *, out: Path | None = None, state: Path | None = None, env: Mapping[str, str] | None = None
) -> RunSummary:
    """``bulkmdm report RUN``: write a run's report again from the journal."""
    from .journal import Journal, state_dir

    env = env if env is not None else dict(os.environ)
    with Journal(state_dir(state, env)) as journal:
        path = out or Path(journal.run(run_id).report_path)
        return write_run_report(journal, run_id, path)


def rebuild_undo(
    run_id: int, report: Path, *, state: Path | None = None, env: Mapping[str, str] | None = None
) -> UndoFile:
    """``bulkmdm report RUN --undo``: write a run's undo file again from the journal."""
    from .journal import Journal, state_dir

    env = env if env is not None else dict(os.environ)
    with Journal(state_dir(state, env)) as journal:
        if journal.run(run_id).dry_run:
            return UndoFile(None)
        try:
            return write_undo_file(journal, run_id, report)
        except UsageError as exc:
            raise ReportError(str(exc).replace("The report", "The undo file", 1)) from None


# -- the undo file -------------------------------------------------------------


@dataclass(slots=True)
class UndoFile:
    """What a run changed that can be put back, and what cannot."""

    #: the job file that puts back what the run changed (None: nothing to undo)
    path: Path | None
    rows: int = 0
    #: action -> changes made that cannot be undone (messages, locks, wipes, deletions...)
    not_undoable: Counter[str] = field(default_factory=Counter)


def undo_path(report: Path, job: Path, written: str | None = None) -> Path:
    """The run's undo file: the one it ``written`` before (a run continued), else
    ``<job stem>.undo.<ext>`` beside the report, or ``.undo-2``, ``.undo-3``, ...
    where that name is taken. An undo file never replaces another run's (a
    report run again keeps the first run's), nor the job being run (the undo of
    an undo file would otherwise become that file, and the same command would
    then redo what was just undone)."""
    if written:
        return Path(written)
    stem = job.stem
    while (shorter := _RUN_FILE_TAIL.sub("", stem)) != stem:
        stem = shorter
    running, n = job.resolve(), 1
    while True:
        tail = f".undo{'' if n == 1 else f'-{n}'}{report.suffix}"
        path = report.with_name(_fit(stem, tail))
        if not path.exists() and path.resolve() != running:
            return path
        n += 1


#: the longest file name, in bytes, of the usual file systems (ext4, APFS, and NTFS in UTF-16 units)
NAME_MAX = 255


def _fit(stem: str, tail: str) -> str:
    """``stem + tail``, the stem cut (never the tail) so the name fits NAME_MAX."""
    room = NAME_MAX - len(os.fsencode(tail))
    encoded = os.fsencode(stem)
    if len(encoded) > room:
        stem = encoded[:room].decode("utf-8", "ignore")
    return stem + tail


#: what bulkmdm adds to a job's name for the files it writes beside it
_RUN_FILE_TAIL = re.compile(r"\.(?:undo(?:-\d+)?|outcome|dryrun)$")


def write_undo_file(journal: Journal, run_id: int, report: Path) -> UndoFile:
    """Write the job that reverses this run's changes, last change first.

    Changes whose effect is unknown (in flight when the run stopped) are in
    it too: putting back a change that was not made changes nothing. Only
    changes whose earlier state the provider read before changing them
    are in it (a tag, a user, a group, an app, a ban, an attribute); the rest
    are counted in ``not_undoable`` so the summary can name them.
    """
    run = journal.run(run_id)
    undo_rows: list[dict[str, str]] = []
    result = UndoFile(None)
    for action, count in journal.not_undoable(run_id).items():
        result.not_undoable[action or "?"] += count
    for action, undo in journal.undo_rows(run_id):
        if undo:
            undo_rows.append(undo)
        else:
            result.not_undoable[action or "?"] += 1
    if not undo_rows:
        return result
    columns = ["action", *[c for c in CANONICAL if c != "action" and any(c in r for r in undo_rows)]]
    path = undo_path(report, Path(run.job_path), run.undo_path)
    write_report(
        path,
        columns,
        ([row.get(c, "") for c in columns] for row in undo_rows),
        delimiter=run.delimiter,
        state=journal.dir,
        mdm=mdm_key(run.provider, run.url, run.partition_id),
    )
    journal.set_undo_path(run_id, str(path))
    result.path, result.rows = path, len(undo_rows)
    return result
