"""What a finished run's report says, for the results pages: counts by
action and status, the destructive rows, and the failures grouped by reason
(as the terminal groups them: :class:`bulkmdm.report.FailureTally`).

It reads the outcome report (the contract's surface), not the engine's
insides, so the pages stay right however the engine is arranged.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..actions import ACTIONS, destroys, normalise_action
from ..jobfile import read_job
from ..model import BAD_STATUSES
from ..report import FailureGroup, FailureTally
from ..words import STATUS_ORDER

#: statuses a re-run of the report runs again
RERUN_STATUSES = frozenset(str(status) for status in BAD_STATUSES)
_TARGET_COLUMNS = ("serial", "device_id", "email", "user_id", "user")


@dataclass(frozen=True, slots=True)
class ReportRow:
    line: int
    action: str
    target: str
    status: str
    detail: str


@dataclass(slots=True)
class Summary:
    """The numbers a results page shows."""

    rows: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    #: action -> status -> rows
    by_action: dict[str, Counter[str]] = field(default_factory=dict)
    destructive: list[ReportRow] = field(default_factory=list)
    failures: list[FailureGroup] = field(default_factory=list)

    @property
    def destructive_planned(self) -> int:
        """The count a person types to confirm: destructive rows the real run will send."""
        return sum(1 for row in self.destructive if row.status == "planned")

    @property
    def destroys(self) -> str:
        """What the real run does for good, per action: 'wipe 3 devices and delete 1 user'."""
        return destroys(Counter(row.action for row in self.destructive if row.status == "planned"))

    @property
    def to_rerun(self) -> int:
        return sum(n for status, n in self.by_status.items() if status in RERUN_STATUSES)

    def statuses(self) -> list[tuple[str, int]]:
        return [(s, self.by_status[s]) for s in STATUS_ORDER if self.by_status.get(s)]


def summarise(report: Path, action_override: str | None = None) -> Summary:
    """Read an outcome report and count what happened."""
    table = read_job(report)
    status_pos, detail_pos = table.outcome.get("status"), table.outcome.get("detail")
    action_pos = table.canonical.get("action")
    target_pos = [table.canonical[c] for c in _TARGET_COLUMNS if c in table.canonical]
    summary = Summary(rows=len(table.rows))
    failures = FailureTally()
    for index, cells in enumerate(table.rows):
        status = (cells[status_pos].strip() if status_pos is not None else "") or "not-run"
        detail = cells[detail_pos].strip() if detail_pos is not None else ""
        action = normalise_action(action_override or (cells[action_pos] if action_pos is not None else ""))
        summary.by_status[status] += 1
        summary.by_action.setdefault(action or "(none)", Counter())[status] += 1
        if action in ACTIONS and ACTIONS[action].destructive:
            target = next((cells[p].strip() for p in target_pos if cells[p].strip()), "")
            summary.destructive.append(ReportRow(index + 2, action, target, status, detail))
        if status in RERUN_STATUSES:
            failures.add(status, detail, index + 2)
    summary.failures = failures.groups()
    return summary
