"""The row table of a run's page: every row's status and detail, read from the
journal a page at a time (filtered by status, searched by serial or e-mail),
and the rows that did not succeed written out as a job to fix and upload.

The journal is read, never the report: the table is there while the run
goes, and a page of a 100,000-row run costs one short query, not a read of
the whole report.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from ..columns import canonical
from ..journal import Journal, RowRecord
from ..report import neutralise, outcome_values

PAGE_ROWS = 50
#: rows read at a time for the job of rows to fix
_CHUNK = 10_000
#: a status the page shows -> the journal's keys for it (Journal.counts); pending rows are
#: waiting while the run goes and not-run once it has ended
_KEYS = {
    "succeeded": ("succeeded",),
    "skipped": ("skipped",),
    "planned": ("planned",),
    "failed": ("failed",),
    "invalid": ("invalid",),
    "unknown": ("unknown",),
    "not-run": ("not-run", "pending"),
    "waiting": ("pending",),
    "in flight": ("in_flight",),
}
#: the rows a re-run sends again, and the job of rows to fix holds
TO_FIX = ("failed", "invalid", "unknown", "not-run")


@dataclass(frozen=True, slots=True)
class TableRow:
    line: int
    action: str
    #: what the row acts on (serial, device id, e-mail)
    target: str
    status: str
    detail: str


@dataclass(frozen=True, slots=True)
class RowTable:
    rows: list[TableRow]
    #: the page shown (1-based) and how many there are
    number: int
    count: int
    #: rows that match the filter and the search
    matches: int
    status: str
    search: str


def statuses() -> tuple[str, ...]:
    """The statuses a filter can name."""
    return tuple(_KEYS)


def read_table(
    state_dir: Path, run_id: int, *, status: str = "", search: str = "", number: int = 1, running: bool = False
) -> RowTable:
    """Page ``number`` of the run's rows with this status ('' for all) that hold ``search``."""
    keys = _KEYS.get(status, ())
    status = status if keys else ""
    with Journal(state_dir) as journal:
        stop_reason = journal.run(run_id).stop_reason
        matches = journal.count_rows(run_id, keys=keys, search=search)
        count = max(1, -(-matches // PAGE_ROWS))
        number = min(max(1, number), count)
        records = journal.find_rows(run_id, keys=keys, search=search, offset=(number - 1) * PAGE_ROWS, limit=PAGE_ROWS)
    rows = [_table_row(record, stop_reason, running) for record in records]
    return RowTable(rows, number, count, matches, status, search.strip())


def _table_row(record: RowRecord, stop_reason: str | None, running: bool) -> TableRow:
    if running and record.state in ("pending", "in_flight"):
        status, detail = ("waiting" if record.state == "pending" else "in flight"), ""
    else:
        status, detail = outcome_values(record, stop_reason)[:2]
    return TableRow(record.idx + 2, record.action, record.label, status, detail)


def rows_to_fix(state_dir: Path, run_id: int) -> tuple[str, int]:
    """The run's failed, invalid, unknown and not-run rows as a CSV job, and how many there are: the
    job's own columns (an action column added when the job had none), then each row's status and
    detail, so the file reads as a report does (why each row is there; cells kept from Excel's formulas
    with a leading ' that reading it removes again) and runs every row of it."""
    keys = {key for status in TO_FIX for key in _KEYS[status]}
    with Journal(state_dir) as journal:
        info = journal.run(run_id)
        # an earlier report used as the job: its outcome columns are not the job's
        kept = [i for i, h in enumerate(info.headers) if not (canonical(h) or "").startswith("outcome:")]
        add_action = not any(canonical(info.headers[i]) == "action" for i in kept)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow((["action"] if add_action else []) + [info.headers[i] for i in kept] + ["status", "detail"])
        written = 0
        while records := journal.find_rows(run_id, keys=keys, offset=written, limit=_CHUNK):
            for record in records:
                cells = [record.cells[i] if i < len(record.cells) else "" for i in kept]
                cells += outcome_values(record, info.stop_reason)[:2]
                writer.writerow([neutralise(cell) for cell in ([record.action] if add_action else []) + cells])
            written += len(records)
    return out.getvalue(), written
