"""The job file's columns: 'did you mean' for near-miss headers, the headers a
file has when every row misses a column, and two columns of one meaning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import write_csv

from bulkmdm.columns import closest, header_notes
from bulkmdm.jobfile import read_job
from bulkmdm.sim.duostation import FACTS

FREE = FACTS["untagged_device"]["serial"]


@pytest.mark.parametrize(
    ("header", "suggestion"),
    [
        ("Serail Number", "Serial Number"),
        ("serail_number", "serial_number"),
        ("EMIAL", "EMAIL"),
        ("Mesage", "Message"),
        ("Klass", None),
        ("Kommentar", None),
        ("serial", None),
        ("", None),
    ],
)
def test_closest_known_column(header: str, suggestion: str | None) -> None:
    assert closest(header) == suggestion


def test_header_notes() -> None:
    assert header_notes(["Serail Number", "tag", "Klass", "status"]) == [
        "'Serail Number' is not a column bulkmdm knows; did you mean 'Serial Number'? "
        "(It is kept in the report as it is.)",
        "Not used by bulkmdm, kept in the report: 'Klass'.",
    ]


def test_a_near_miss_header_is_named_at_the_start_and_still_carried(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = write_csv(tmp_path / "j.csv", [["serial", "Mesage", "Klass"], [FREE, "hej", "7A"]])
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url, "--action", "lock"])
    assert res.exit_code == 0, res.output
    assert "'Mesage' is not a column bulkmdm knows; did you mean 'Message'?" in res.output
    assert res.output.index("did you mean") < res.output.index("1 row: 1 succeeded")
    assert res.report[0]["Mesage"] == "hej" and res.report[0]["Klass"] == "7A"


def test_every_row_missing_a_column_lists_the_headers_seen(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = write_csv(tmp_path / "j.csv", [["Serail Number", "Tag"], [FREE, "Lärare"]])
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url, "--action", "tag"])
    assert res.exit_code == 2
    assert "its columns are 'Serail Number', 'Tag'" in res.output
    assert "did you mean 'Serial Number'" in res.output
    job = write_csv(tmp_path / "k.csv", [["Serial", "Tagg"], [FREE, "Lärare"]])
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url])
    assert res.exit_code == 2 and "no action column (its columns are 'Serial', 'Tagg')" in res.output


def test_two_columns_of_one_meaning_must_agree(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    other = FACTS["leading_zero_serial"]
    job = write_csv(
        tmp_path / "j.csv",
        [
            ["action", "serial", "Serial Number", "SN"],
            ["lock", FREE, FREE, f" {FREE} "],
            ["lock", FREE, other, FREE],
            ["lock", "", other, ""],
        ],
    )
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url])
    assert res.exit_code == 1, res.output
    assert [r["status"] for r in res.report] == ["succeeded", "invalid", "invalid"]
    assert res.report[1]["detail"] == (
        f"line 3 has two columns that mean serial, and they differ: 'serial' says '{FREE}' but 'Serial Number' "
        f"says '{other}'; make them agree or delete one of the two columns."
    )
    assert "'serial' is blank but 'Serial Number' says" in res.report[2]["detail"]
    assert duo.stats.mutating == 1


def test_the_reader_leaves_agreeing_rows_alone(tmp_path: Path) -> None:
    job = write_csv(tmp_path / "j.csv", [["serial", "serial"], ["A", "A"], ["A", "B"]])
    table = read_job(job)
    assert list(table.problems) == [1]
    assert "column 1 'serial' says 'A' but column 2 'serial' says 'B'" in table.problems[1]
