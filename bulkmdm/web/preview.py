"""What the upload page shows: how a job's columns were understood, a page
of its rows, and the rows that cannot run as written.

The dry run is the authority on every row; this is the quick look before
it, so that a misspelt header is caught before anything is asked of the MDM.
Everything here works on one page at a time: a 100,000-row job is never
rendered whole.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection
from dataclasses import dataclass

from ..actions import ACTIONS, closest_action, missing_columns, normalise_action
from ..columns import ALIASES, canonical, normalise
from ..jobfile import JobTable
from ..model import JobRow

PAGE_ROWS = 50

_ALIAS_TO_CANONICAL = {normalise(alias): name for name, aliases in ALIASES.items() for alias in aliases}


@dataclass(frozen=True, slots=True)
class ColumnReading:
    """How one header of the job was understood."""

    header: str
    #: the canonical column it means, "" when bulkmdm does not use it
    meaning: str
    #: for an unused column: the canonical column it looks like a misspelling of
    suggestion: str = ""
    #: a second column meaning the same thing (the first one is used)
    duplicate: bool = False

    @property
    def is_outcome(self) -> bool:
        return self.meaning.startswith("outcome:")


@dataclass(frozen=True, slots=True)
class RowView:
    line: int
    cells: tuple[str, ...]
    problem: str


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[RowView]
    number: int
    count: int


def read_columns(table: JobTable) -> list[ColumnReading]:
    """Each header, what it means, and a "did you mean" for the ones bulkmdm does not use."""
    readings = []
    seen: set[str] = set()
    for header in table.headers:
        meaning = canonical(header) or ""
        suggestion = "" if meaning else _did_you_mean(header)
        readings.append(ColumnReading(header, meaning, suggestion, duplicate=bool(meaning) and meaning in seen))
        if meaning:
            seen.add(meaning)
    return readings


def _did_you_mean(header: str) -> str:
    key = normalise(header)
    if not key:
        return ""
    close = difflib.get_close_matches(key, list(_ALIAS_TO_CANONICAL), n=1, cutoff=0.75)
    return _ALIAS_TO_CANONICAL[close[0]] if close else ""


def row_problem(table: JobTable, index: int, action_override: str | None, can_do: Collection[str] | None) -> str:
    """Why row ``index`` cannot run as written ('' when it looks runnable)."""
    if index in table.problems:
        return table.problems[index]
    cells = table.rows[index]
    fields = {name: cells[pos].strip() for name, pos in table.canonical.items()}
    status_pos = table.outcome.get("status")
    if table.is_report and status_pos is not None and cells[status_pos].strip() in ("succeeded", "skipped"):
        return ""
    action = normalise_action(action_override or fields.get("action", ""))
    if not action:
        # without an action column the action is chosen on the page for every row
        return "" if "action" not in table.canonical else "No action: fill in the action column (e.g. lock, tag)."
    if action not in ACTIONS:
        close = closest_action(action)
        hint = f"did you mean '{close}'?" if close else "the README lists the actions."
        return f"{fields.get('action', action)!r} is not an action; {hint}"
    if can_do is not None and action not in can_do:
        return f"This MDM cannot {action}."
    missing = missing_columns(ACTIONS[action], JobRow(index, action, fields))
    return f"Missing {', '.join(missing)}." if missing else ""


def problem_rows(table: JobTable, action_override: str | None, can_do: Collection[str] | None) -> list[int]:
    """The indices of every row with a problem (one pass; the page shows them a page at a time)."""
    return [i for i in range(len(table.rows)) if row_problem(table, i, action_override, can_do)]


def page_of(
    table: JobTable, indices: list[int] | None, number: int, action_override: str | None, can_do: Collection[str] | None
) -> Page:
    """Page ``number`` (1-based) of the rows, or of ``indices`` when given."""
    total = len(table.rows) if indices is None else len(indices)
    count = max(1, -(-total // PAGE_ROWS))
    number = min(max(1, number), count)
    start = (number - 1) * PAGE_ROWS
    chosen = range(start, min(start + PAGE_ROWS, total)) if indices is None else indices[start : start + PAGE_ROWS]
    rows = [RowView(i + 2, table.rows[i], row_problem(table, i, action_override, can_do)) for i in chosen]
    return Page(rows, number, count)
