"""The journal: owner-only SQLite in WAL mode, runs listed, reports rebuilt."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
from pathlib import Path
from typing import Any

from conftest import journal_run, read_report, write_csv
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkmdm.journal import SCHEMA_VERSION, Journal, NewRow, cells_json
from bulkmdm.model import JobRow, Outcome, Reason, Status
from bulkmdm.validate import row_digest
from bulkmdm.sim.duostation import FACTS


def test_journal_file_is_owner_only_and_wal(tmp_path: Path) -> None:
    with Journal(tmp_path / "st") as journal:
        rows = [NewRow(["A"], "lock", "a", "A"), NewRow(["B"], "lock", "b", "B")]
        run_id = journal_run(journal, rows)
        journal.mark_in_flight(run_id, [0])
        journal.record(run_id, [Outcome(1, Status.SUCCEEDED, "ok", 200, 1, reason=Reason.DONE)])
        assert journal.counts(run_id) == {"in_flight": 1, "succeeded": 1}
        latest = journal.latest("x")
        assert latest is not None and latest.id == run_id and latest.finished is None
        journal.finish(run_id)
        latest = journal.latest("x")
        assert latest is not None and latest.finished is not None
    mode = stat.S_IMODE((tmp_path / "st" / "journal.sqlite3").stat().st_mode)
    assert mode == 0o600
    db = sqlite3.connect(tmp_path / "st" / "journal.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION == 6


def test_runs_and_report_rebuild(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = write_csv(
        tmp_path / "j.csv", [["serial", "action"], [FACTS["untagged_device"]["serial"], "lock"], ["NOPE", "lock"]]
    )
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url])
    assert res.exit_code == 1
    listed = run_cli(["runs"])
    assert listed.exit_code == 0 and "j.csv" in listed.output and "1 succeeded" in listed.output
    header, first = listed.output.splitlines()[:2]
    assert header.split()[:3] == ["RUN", "STARTED", "STATE"] and duo.url in first
    run_id = first.split()[0]
    res.report_path.unlink()
    out = tmp_path / "again.xlsx"
    rebuilt = run_cli(["report", run_id, "--out", str(out)])
    assert rebuilt.exit_code == 0, rebuilt.output
    rows = read_report(out)
    assert [r["status"] for r in rows] == ["succeeded", "failed"]
    assert run_cli(["report", "999"]).exit_code == 2


def test_completed_run_is_not_run_again(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = write_csv(tmp_path / "j.csv", [["serial"], [FACTS["untagged_device"]["serial"]]])
    args = ["run", str(job), "--provider", "duostation", "--url", duo.url, "--action", "tag"]
    first = run_cli([*args[:-1], "tag", "--report", str(tmp_path / "o.csv")])
    assert first.exit_code == 2  # no tag column: nothing run
    job = write_csv(tmp_path / "j.csv", [["serial", "tag"], [FACTS["untagged_device"]["serial"], "Lärare"]])
    assert run_cli(args).report[0]["status"] == "succeeded"
    mutating = duo.stats.mutating
    # the same command on a job that ran to the end sends nothing and keeps its report
    again = run_cli(args)
    assert again.exit_code == 0, again.output
    assert again.report[0]["status"] == "succeeded"
    assert duo.stats.mutating == mutating
    # --fresh runs it again: the tag is there now, so the row is skipped
    assert run_cli([*args, "--fresh"]).report[0]["status"] == "skipped"


def test_a_journal_of_schema_3_is_migrated_keeping_its_runs(tmp_path: Path) -> None:
    """Version 4 adds the run's undo file and rows carried in from a report."""
    from bulkmdm.journal import _MIGRATIONS

    (tmp_path / "st").mkdir()
    db = sqlite3.connect(tmp_path / "st" / "journal.sqlite3")
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version in (1, 2, 3):
        db.executescript(_MIGRATIONS[version])
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
    db.commit()
    db.close()
    with Journal(tmp_path / "st") as journal:
        run_id = journal_run(journal, [NewRow(["A"], "tag", "a", "A")])
        journal.record(
            run_id, [Outcome(0, Status.SUCCEEDED, "ok", 200, 1, undo={"action": "untag"}, reason=Reason.DONE)]
        )
        assert list(journal.undo_rows(run_id)) == [("tag", {"action": "untag"})]
        assert journal.run(run_id).undo_path is None
        journal.set_undo_path(run_id, "/u.csv")
        assert journal.run(run_id).undo_path == "/u.csv"


def test_rows_keep_their_reason_code_and_an_older_journals_read_as_their_status_says(tmp_path: Path) -> None:
    """Version 6 stores each row's reason code; a row written before it (or
    carried in from a report's columns) reads as its status's usual reason."""
    from bulkmdm.journal import _MIGRATIONS

    (tmp_path / "st").mkdir()
    db = sqlite3.connect(tmp_path / "st" / "journal.sqlite3")
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version in range(1, 6):
        db.executescript(_MIGRATIONS[version])
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
    db.execute(
        "INSERT INTO runs (id, identity, job_path, content, provider, url, headers, report_path, created, updated)"
        " VALUES (1, 'x', '/j.csv', '0', 'duostation', 'http://h', '[\"serial\"]', '/r.csv', 0, 0)"
    )
    for idx, status in enumerate(("succeeded", "skipped", "failed", "unknown")):
        db.execute(
            "INSERT INTO rows (run_id, idx, cells, state, status, detail) VALUES (1, ?, '[\"A\"]', 'done', ?, 'x')",
            (idx, status),
        )
    db.execute("INSERT INTO rows (run_id, idx, cells, state) VALUES (1, 4, '[\"B\"]', 'in_flight')")
    db.commit()
    db.close()
    with Journal(tmp_path / "st") as journal:
        assert [r.reason for r in journal.rows(1)] == [
            Reason.DONE,
            Reason.ALREADY,
            Reason.REFUSED,
            Reason.NO_ANSWER,
            Reason.NO_ANSWER,
        ]
        run_id = journal_run(journal, [NewRow([s], "tag", s, s) for s in ("A", "B", "C")])
        journal.record(
            run_id,
            [
                Outcome(0, Status.FAILED, "Serial 'A' was not found.", reason=Reason.NOT_FOUND),
                Outcome(1, Status.NOT_RUN, "Not sent: over the day's quota.", reason=Reason.QUOTA),
            ],
        )
        journal.record_raw(run_id, [(2, ["succeeded", "Tagged earlier.", "200", "1", ""])])
        assert [r.reason for r in journal.rows(run_id)] == [Reason.NOT_FOUND, Reason.QUOTA, Reason.DONE]
        # a changed job's run keeps the codes of the rows it carries over
        later = journal_run(journal, [NewRow([s], "tag", s, s) for s in ("C", "A")])
        journal.carry_over(run_id, later)
        assert [r.reason for r in journal.rows(later)] == [Reason.DONE, Reason.NOT_FOUND]


def test_a_changes_undo_row_is_kept_from_when_it_went_out(tmp_path: Path) -> None:
    """Marked in flight with its undo row, a change found done when the run
    continues (an outcome without an undo row) keeps it; rows carried in from
    a report are not this run's changes."""
    with Journal(tmp_path / "st") as journal:
        run_id = journal_run(journal, [NewRow([s], "tag", s, s) for s in ("A", "B")])
        journal.mark_in_flight(run_id, [0], [(0, {"action": "untag", "serial": "A"})])
        journal.record(run_id, [Outcome(0, Status.SUCCEEDED, "Done by the earlier run.", 200, 1, reason=Reason.DONE)])
        journal.record_raw(run_id, [(1, ["succeeded", "Tagged earlier.", "200", "1", ""])])
        assert list(journal.undo_rows(run_id)) == [("tag", {"action": "untag", "serial": "A"})]


def test_changes_that_cannot_be_undone_are_counted_per_action(tmp_path: Path) -> None:
    """A change made without an undo row counts as one that cannot be put back;
    a row still in flight without one, a failed row and a carried row do not."""
    with Journal(tmp_path / "st") as journal:
        rows = [
            NewRow([s], action, s, s)
            for s, action in zip("ABCDEF", ["message", "lock", "message", "tag", "lock", "message"], strict=True)
        ]
        run_id = journal_run(journal, rows)
        journal.mark_in_flight(run_id, [4])
        journal.record(
            run_id,
            [
                Outcome(0, Status.SUCCEEDED, "Sent.", 200, 1, reason=Reason.DONE),
                Outcome(1, Status.SUCCEEDED, "Locked.", 200, 1, reason=Reason.DONE),
                Outcome(2, Status.SUCCEEDED, "Sent.", 200, 1, reason=Reason.DONE),
                Outcome(3, Status.SUCCEEDED, "Tagged.", 200, 1, undo={"action": "untag"}, reason=Reason.DONE),
                Outcome(5, Status.FAILED, "Refused.", 400, 1, reason=Reason.REFUSED),
            ],
        )
        journal.record_raw(run_id, [(2, ["succeeded", "Sent earlier.", "200", "1", ""])])
        assert journal.not_undoable(run_id) == {"message": 1, "lock": 1}
        assert list(journal.undo_rows(run_id)) == [("tag", {"action": "untag"})]


def test_rows_carried_over_to_a_changed_job_keep_their_undo_rows(tmp_path: Path) -> None:
    """The job saved again (rows reordered) continues the earlier run: its
    undo file still puts back what that run changed, none of it "cannot be
    undone"."""
    with Journal(tmp_path / "st") as journal:
        old = journal_run(journal, [NewRow([s], "tag", s, s) for s in ("A", "B")])
        journal.record(
            old,
            [Outcome(0, Status.SUCCEEDED, "ok", 200, 1, undo={"action": "untag", "serial": "A"}, reason=Reason.DONE)],
        )
        new = journal_run(journal, [NewRow([s], "tag", s, s) for s in ("B", "A")])
        assert journal.carry_over(old, new) == 1
        journal.record(
            new,
            [Outcome(0, Status.SUCCEEDED, "ok", 200, 1, undo={"action": "untag", "serial": "B"}, reason=Reason.DONE)],
        )
        assert list(journal.undo_rows(new)) == [
            ("tag", {"action": "untag", "serial": "A"}),
            ("tag", {"action": "untag", "serial": "B"}),
        ]


def test_a_migration_another_bulkmdm_made_meanwhile_is_not_made_again(tmp_path: Path) -> None:
    """Two runs started at once in a new folder may both read no schema
    before either takes the write lock; each step reads the version again
    under the lock, so the second finds the tables made instead of failing
    on "table already exists"."""
    with Journal(tmp_path / "st") as first, Journal(tmp_path / "st") as second:
        second._migrate_from(0)  # what it read before the first migrated
        run_id = journal_run(second, [NewRow(["A"], "lock", "a", "A")])
        assert first.counts(run_id) == {"pending": 1}
    db = sqlite3.connect(tmp_path / "st" / "journal.sqlite3")
    assert [v for (v,) in db.execute("SELECT version FROM schema_version ORDER BY version")] == list(
        range(1, SCHEMA_VERSION + 1)
    )


_TEXT = st.text(st.characters(codec="utf-8") | st.sampled_from('"\\\x00\x1f\x7f\u2028é€😀'))


@settings(max_examples=300, deadline=None)
@given(st.lists(_TEXT, max_size=6))
def test_cells_are_stored_as_json_dumps_wrote_them(cells: list[str]) -> None:
    # a journal written before keeps its rows' text: the same cells must give the same text
    assert cells_json(tuple(cells)) == json.dumps(cells, ensure_ascii=False)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12), st.dictionaries(st.sampled_from(["serial", "message", "tag", "action", "email"]), _TEXT))
def test_row_digest_is_the_digest_earlier_runs_stored(action: str, fields: dict[str, str]) -> None:
    # a job continued after an upgrade is matched row by row on these digests
    normalised = sorted((name, " ".join(value.split())) for name, value in fields.items() if name != "action")
    text = json.dumps([action, normalised], ensure_ascii=False)
    assert row_digest(JobRow(0, action, fields)) == hashlib.sha256(text.encode()).hexdigest()[:32]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=30), st.lists(st.integers(0, 40), max_size=30, unique=True))
def test_a_write_marks_exactly_the_rows_it_names_and_records_exactly_its_outcomes(
    marked: list[int], answered: list[int]
) -> None:
    """Rows in any order, repeated, with gaps and runs: those marked are in
    flight (those answered in the same write done), and every other row is untouched."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder, Journal(Path(folder)) as journal:
        run_id = journal_run(journal, [NewRow([str(i)], "lock", str(i), str(i)) for i in range(41)])
        outcomes = [
            Outcome(i, Status.NOT_RUN if i % 5 == 0 else Status.SUCCEEDED, f"row {i}", 200, i % 3, reason=Reason.DONE)
            for i in answered
        ]
        journal.write(run_id, outcomes, [i for i in marked if i not in answered])
        rows = {r.idx: r for r in journal.rows(run_id)}
        for idx, row in rows.items():
            if idx in answered:
                expected = ("pending", "not-run") if idx % 5 == 0 else ("done", "succeeded")
                assert (row.state, row.status, row.detail) == (*expected, f"row {idx}")
                assert (row.http_status, row.attempts) == ("200", None if idx % 3 == 0 else str(idx % 3))
            elif idx in marked:
                assert (row.state, row.status) == ("in_flight", None)
            else:
                assert (row.state, row.status) == ("pending", None)
