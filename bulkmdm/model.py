"""The values that flow through the pipeline: JobRow -> Step -> Outcome.

Small frozen dataclasses, never DataFrames or dicts of dicts (see STYLE.md).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """A row's status in the outcome report (CONTRACT.md)."""

    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
    FAILED = "failed"
    INVALID = "invalid"
    PLANNED = "planned"
    UNKNOWN = "unknown"
    NOT_RUN = "not-run"


#: Statuses a re-run of a report carries over untouched.
DONE_STATUSES = frozenset({Status.SUCCEEDED, Status.SKIPPED})
#: Statuses that make the exit code 1.
BAD_STATUSES = frozenset({Status.FAILED, Status.INVALID, Status.UNKNOWN, Status.NOT_RUN})


@dataclass(frozen=True, slots=True)
class JobRow:
    """One input row, reduced to what the pipeline needs.

    ``index`` is the 0-based position among the data rows; the spreadsheet
    line a person sees is ``index + 2`` (header on line 1). ``fields`` holds
    the canonical columns (``columns.CANONICAL``) with surrounding white space
    stripped; ``action`` is the normalised verb ('' when none was given).
    """

    index: int
    action: str
    fields: Mapping[str, str]

    def get(self, column: str) -> str:
        return self.fields.get(column, "")

    @property
    def line(self) -> int:
        return self.index + 2


@dataclass(frozen=True, slots=True)
class Step:
    """A row whose look-ups are resolved: ready to send.

    ``params`` are the resolved vendor values the provider needs (ids exactly
    as the vendor returned them). ``batch_key`` groups steps that one vendor
    request may carry together (same action, same parameters); ``resolved`` is
    what the report shows in ``resolved_ids``.
    """

    row: JobRow
    action: str
    target: str
    params: Mapping[str, Any] = field(default_factory=dict)
    resolved: str = ""
    batch_key: Hashable = None
    #: the job row (canonical columns + ``action``) that puts back the state
    #: read before this change; None for what cannot be undone
    undo: Mapping[str, str] | None = None

    @property
    def index(self) -> int:
        return self.row.index


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one row."""

    index: int
    status: Status
    detail: str
    http_status: int | None = None
    attempts: int = 0
    resolved: str = ""
    #: for a change made: the job row that puts back what was there before (Step.undo)
    undo: Mapping[str, str] | None = None

    def with_(self, **changes: Any) -> Outcome:
        from dataclasses import replace

        return replace(self, **changes)


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_LINE = re.compile(r"\bline \d+")
#: a path segment holding an id (``/api/devices/3f2a.../lock``)
_ID_SEGMENT = re.compile(r"(?<=/)[^/\s)]*\d[^/\s)]*")
#: an unquoted value with a digit in it (a serial, an id, an email, a count), not the HTTP status
_VALUE = re.compile(r"(?<!HTTP )(?<![\w.@+-])[\w.@+-]*\d[\w.@+-]*")


def reason_key(detail: str) -> str:
    """A detail with the row's own values left out ('X' not found, line 5, ids in a path,
    "on device GEN0007"), so that rows that went wrong for the same reason compare equal."""
    return _VALUE.sub("…", _ID_SEGMENT.sub("…", _LINE.sub("line N", _QUOTED.sub("'…'", detail))))
