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


class Reason(StrEnum):
    """Why a row ended as it did, as a code (like ``http.HTTPStatus`` or
    ``errno``): the breaker, the failure summary and a continued run decide on
    it; the row's detail sentence says it to people and is free to change."""

    #: the MDM answered the change with success
    DONE = "done"
    #: the answer was lost or held up; reading the object back showed the change made
    READ_BACK = "read-back"
    #: already in the wanted state, or the same change as an earlier line: nothing sent
    ALREADY = "already"
    #: a dry run: what would be sent
    PLANNED = "planned"
    #: a value in the row names nothing in the MDM (or the MDM answered 404)
    NOT_FOUND = "not-found"
    #: a value in the row names more than one object
    AMBIGUOUS = "ambiguous"
    #: the row cannot run as written: a blank or bad value, an action the vendor lacks,
    #: a change that clashes with another line's
    INVALID_ROW = "invalid-row"
    #: the MDM said no: a 4xx other than those below, a 2xx whose body says it failed,
    #: or a state in which the MDM refuses the change
    REFUSED = "refused"
    #: the credentials or their permissions were refused (401, 403)
    AUTH = "auth"
    #: the MDM kept answering 429
    RATE_LIMITED = "rate-limited"
    #: the MDM failed (5xx) or could not be reached, after the retries
    UNAVAILABLE = "unavailable"
    #: the MDM answered in a form that does not say what happened
    BAD_ANSWER = "bad-answer"
    #: sent, and the answer lost: the change may or may not have been made
    NO_ANSWER = "no-answer"
    #: not sent: the run stopped first
    NOT_SENT = "not-sent"
    #: not sent: the day's API calls would not cover it
    QUOTA = "quota"

    @classmethod
    def of_status(cls, status: str | None) -> Reason:
        """The usual reason of a status: what a row recorded without a code (an
        older journal, a report's columns) is read as."""
        return _USUAL.get(status or "", cls.NOT_SENT)

    @classmethod
    def of_http(cls, status: int | None) -> Reason:
        """The reason an error answer with HTTP ``status`` gives a row (no answer: UNAVAILABLE)."""
        if status is None or status >= 500:
            return cls.UNAVAILABLE
        if status in (401, 403):
            return cls.AUTH
        if status == 404:
            return cls.NOT_FOUND
        if status == 429:
            return cls.RATE_LIMITED
        return cls.REFUSED


_USUAL: dict[str, Reason] = {
    Status.SUCCEEDED: Reason.DONE,
    Status.SKIPPED: Reason.ALREADY,
    Status.FAILED: Reason.REFUSED,
    Status.INVALID: Reason.INVALID_ROW,
    Status.PLANNED: Reason.PLANNED,
    Status.UNKNOWN: Reason.NO_ANSWER,
    Status.NOT_RUN: Reason.NOT_SENT,
}

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
    """What happened to one row: ``reason`` is what decisions read, ``detail`` what people do."""

    index: int
    status: Status
    detail: str
    http_status: int | None = None
    attempts: int = 0
    resolved: str = ""
    #: for a change made: the job row that puts back what was there before (Step.undo)
    undo: Mapping[str, str] | None = None
    reason: Reason = field(kw_only=True)

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
    "on device GEN0007"): the shape of the sentence, for showing one sentence for many rows.
    Decisions read :class:`Reason`, never this."""
    return _VALUE.sub("…", _ID_SEGMENT.sub("…", _LINE.sub("line N", _QUOTED.sub("'…'", detail))))
