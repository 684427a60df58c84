"""Reason codes: the breaker, the failure summary and the reconciling of rows
in flight decide on an outcome's code; its sentence is for people, and
rewording it changes none of those decisions."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bulkmdm.model import JobRow, Outcome, Reason, Status
from bulkmdm.plan import reconciled
from bulkmdm.report import FailureTally
from bulkmdm.schedule import Breaker


def _row(action: str, index: int = 0) -> JobRow:
    return JobRow(index, action, {"serial": f"S{index}"})


def _reworded(detail: str) -> str:
    """The same sentence in other words (as a later bulkmdm may put it)."""
    return "Could not do it: " + detail.lower().replace("was not found", "is unknown to the MDM").rstrip(".") + "!"


# -- reconciling a row whose request was in flight ---------------------------------


@pytest.mark.parametrize("words", [str, _reworded])
def test_a_row_in_flight_found_in_the_wanted_state_succeeded_whatever_the_wording(words: Callable[[str], str]) -> None:
    item = Outcome(0, Status.SKIPPED, words("Device S0 already has tag 'x'; nothing sent."), reason=Reason.ALREADY)
    done = reconciled(_row("tag"), item)
    assert (done.status, done.reason) == (Status.SUCCEEDED, Reason.READ_BACK)


@pytest.mark.parametrize(
    "detail", ["User 'a@b.se' was not found.", "No such user: a@b.se.", "The MDM knows nobody called a@b.se."]
)
def test_a_delete_in_flight_whose_object_is_gone_succeeded_however_the_look_up_says_it(detail: str) -> None:
    item = Outcome(0, Status.FAILED, detail, reason=Reason.NOT_FOUND)
    done = reconciled(_row("delete-user"), item)
    assert (done.status, done.reason) == (Status.SUCCEEDED, Reason.READ_BACK)


def test_a_look_up_that_failed_otherwise_is_no_proof_of_a_delete_even_if_it_says_not_found() -> None:
    """A list that could not be read (its 404 says "Not Found") says nothing
    about the device: the row stays failed, to be checked."""
    detail = "Could not read the MDM's devices list: HTTP 404 (Not Found)."
    item = Outcome(0, Status.FAILED, detail, http_status=404, reason=Reason.REFUSED)
    assert reconciled(_row("delete-device"), item) is item
    # and not-found decides only for a delete
    missing = Outcome(0, Status.FAILED, "Serial 'S0' was not found.", reason=Reason.NOT_FOUND)
    assert reconciled(_row("lock"), missing) is missing


# -- the breaker ----------------------------------------------------------------------


def _refusals(n: int, words: Callable[[str], str]) -> list[Outcome]:
    # every row refused in its own words: the device's name, and a sentence that differs per row
    sentences = ["Access denied on {}.", "The account may not change {}.", "Read-only role; {} untouched."]
    return [
        Outcome(i, Status.FAILED, words(sentences[i % 3].format(f"GEN{i:04d}")), 403, reason=Reason.AUTH)
        for i in range(n)
    ]


@pytest.mark.parametrize("words", [str, _reworded])
def test_the_breaker_trips_on_one_code_and_status_however_each_row_words_it(words: Callable[[str], str]) -> None:
    breaker = Breaker(threshold=20)
    tripped = [breaker.observe([outcome]) for outcome in _refusals(20, words)]
    assert tripped == [False] * 19 + [True]
    assert breaker.why().startswith("The run stopped: the MDM refused 20 changes in a row the same way: ")


def test_the_breaker_does_not_trip_on_rows_refused_for_different_reasons_worded_alike() -> None:
    breaker = Breaker(threshold=20)
    codes = [(Reason.NOT_FOUND, 404), (Reason.REFUSED, 400)]
    outcomes = [Outcome(i, Status.FAILED, "HTTP error.", codes[i % 2][1], reason=codes[i % 2][0]) for i in range(60)]
    assert not any(breaker.observe([outcome]) for outcome in outcomes)


@pytest.mark.parametrize("reason", [Reason.UNAVAILABLE, Reason.NO_ANSWER])
def test_changes_without_an_answer_trip_the_breaker_as_the_mdm_gone_whatever_the_error_says(reason: Reason) -> None:
    breaker = Breaker(threshold=3)
    details = ["Connection refused.", "Timed out after 30 s.", "The request may have been made."]
    assert [breaker.observe([Outcome(i, Status.UNKNOWN, d, reason=reason)]) for i, d in enumerate(details)] == [
        False,
        False,
        True,
    ]
    assert "did not answer 3 changes in a row" in breaker.why()


def test_a_failure_without_an_http_status_is_not_taken_for_no_answer() -> None:
    breaker = Breaker(threshold=2)
    for i in range(2):
        breaker.observe([Outcome(i, Status.FAILED, "Device S0 is RETIRED.", reason=Reason.REFUSED)])
    assert "refused 2 changes in a row the same way" in breaker.why()


# -- the failure summary's grouping -----------------------------------------------------


_ROWS = [
    (Status.FAILED, Reason.NOT_FOUND, "Serial 'A1' was not found."),
    (Status.FAILED, Reason.NOT_FOUND, "Serial 'B22' was not found."),
    (Status.FAILED, Reason.AMBIGUOUS, "Serial 'C3' matches 2 devices; make it unique."),
    (Status.FAILED, Reason.REFUSED, "HTTP 400: the MDM rejected the request as malformed."),
    (Status.FAILED, Reason.REFUSED, "HTTP 400: the MDM rejected the request as malformed."),
    (Status.UNKNOWN, Reason.NO_ANSWER, "The MDM did not answer; check the device."),
    (Status.NOT_RUN, Reason.QUOTA, "Not sent: over the day's API calls."),
]


def _groups(words: Callable[[str], str]) -> list[tuple[int, tuple[int, ...]]]:
    tally = FailureTally()
    for line, (status, reason, detail) in enumerate(_ROWS, start=2):
        tally.add(str(status), words(detail), line, reason)
    return sorted((g.count, g.lines) for g in tally.groups())


def test_rewording_every_sentence_leaves_the_groups_as_they_were() -> None:
    assert _groups(str) == _groups(_reworded) == [(1, (4,)), (1, (7,)), (1, (8,)), (2, (2, 3)), (2, (5, 6))]


def test_rows_worded_alike_for_different_reasons_are_two_groups() -> None:
    tally = FailureTally()
    tally.add("failed", "The MDM said no.", 2, Reason.AUTH)
    tally.add("failed", "The MDM said no.", 3, Reason.REFUSED)
    assert sorted(g.lines for g in tally.groups()) == [(2,), (3,)]


def test_a_group_of_rows_naming_their_own_values_shows_the_sentence_with_them_left_out() -> None:
    tally = FailureTally()
    tally.add("failed", "Serial 'A1' was not found.", 2, Reason.NOT_FOUND)
    tally.add("failed", "Serial 'B22' was not found.", 3, Reason.NOT_FOUND)
    (group,) = tally.groups()
    assert (group.reason, group.count) == ("Serial '…' was not found.", 2)


def test_a_report_read_back_without_codes_groups_by_its_statuses_usual_reason() -> None:
    tally = FailureTally()
    tally.add("failed", "Serial 'A1' was not found.", 2)
    tally.add("failed", "Serial 'B22' was not found.", 3, Reason.of_status("failed"))
    assert [g.count for g in tally.groups()] == [2]


# -- the codes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (None, Reason.UNAVAILABLE),
        (400, Reason.REFUSED),
        (401, Reason.AUTH),
        (403, Reason.AUTH),
        (404, Reason.NOT_FOUND),
        (409, Reason.REFUSED),
        (429, Reason.RATE_LIMITED),
        (500, Reason.UNAVAILABLE),
        (503, Reason.UNAVAILABLE),
    ],
)
def test_an_error_answers_code(status: int | None, reason: Reason) -> None:
    assert Reason.of_http(status) is reason


def test_every_status_has_a_usual_reason() -> None:
    assert {s: Reason.of_status(s) for s in Status} == {
        Status.SUCCEEDED: Reason.DONE,
        Status.SKIPPED: Reason.ALREADY,
        Status.FAILED: Reason.REFUSED,
        Status.INVALID: Reason.INVALID_ROW,
        Status.PLANNED: Reason.PLANNED,
        Status.UNKNOWN: Reason.NO_ANSWER,
        Status.NOT_RUN: Reason.NOT_SENT,
    }
