"""write_report: formula-safe, atomic, streaming, and read back unchanged."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

import openpyxl
import pytest

from bulkmdm import report
from bulkmdm.errors import UsageError
from bulkmdm.jobfile import read_job
from bulkmdm.report import neutralise, write_report

DANGEROUS = ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", '=HYPERLINK("http://evil","click")', "=cmd|' /C calc'!A0"]
HARMLESS = ["", "a=b", "x-1", "user@example.com", " =1", "00123", "TRUE", "1.5", "NA", "http://example.com"]
TRICKY = DANGEROUS + HARMLESS + ["'=x", "''-1", "Lärare på Åsögatan", "two\nlines", "a,b;c", 'say "hi"', "  padded  "]


@pytest.mark.parametrize("cell", DANGEROUS)
def test_neutralise_prefixes_formula_starts(cell: str) -> None:
    assert neutralise(cell) == "'" + cell


@pytest.mark.parametrize("cell", HARMLESS)
def test_neutralise_leaves_other_cells(cell: str) -> None:
    assert neutralise(cell) == cell


def test_neutralise_prefixes_every_existing_apostrophe() -> None:
    # So that removing one "'" from every cell that begins with one, when
    # bulkmdm reads its own file back, is exact.
    assert neutralise("'=x") == "''=x"
    assert neutralise("''+1") == "'''+1"
    assert neutralise("'") == "''"
    assert neutralise("'x") == "''x"


def test_csv_is_formula_safe_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    write_report(path, ["=head", "status"], [(cell, "failed") for cell in DANGEROUS + HARMLESS])
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    assert b"\r\n" in raw
    with open(path, encoding="utf-8-sig", newline="") as handle:
        records = list(csv.reader(handle))
    assert records[0] == ["'=head", "status"]
    for record, cell in zip(records[1:], DANGEROUS + HARMLESS, strict=True):
        assert record == [neutralise(cell), "failed"]
    for record in records:
        assert not record[0].startswith(("=", "+", "-", "@", "\t", "\r"))


def test_csv_semicolon_none_and_numbers(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    write_report(path, ["serial", "http_status", "attempts"], iter([("A;B", None, 3), ("Å", 404, -1)]), delimiter=";")
    text = path.read_bytes().decode("utf-8-sig")
    assert text == 'serial;http_status;attempts\r\n"A;B";;3\r\nÅ;404;\'-1\r\n'


def test_xlsx_cells_are_all_text_never_formulas(tmp_path: Path) -> None:
    path = tmp_path / "out.xlsx"
    cells = DANGEROUS + [cell for cell in HARMLESS if cell]
    write_report(path, ["=head", "status"], ((cell, 404) for cell in cells))
    sheet = openpyxl.load_workbook(path).active
    values = list(sheet.iter_rows())
    assert values[0][0].value == "=head"
    assert values[0][0].data_type == "s"
    for row, cell in zip(values[1:], cells, strict=True):
        assert row[0].data_type == "s"
        # openpyxl does not undo the _x000D_ escape that XML needs for CR;
        # Excel and calamine do (see the round-trip tests).
        assert row[0].value == cell.replace("\r", "_x000D_")
        assert row[1].data_type == "s"
        assert row[1].value == "404"
    with open(path, "rb") as handle:
        assert handle.read(2) == b"PK"
    assert all(cell.data_type != "f" for row in values for cell in row)


def test_xlsx_none_is_an_empty_cell(tmp_path: Path) -> None:
    path = tmp_path / "out.xlsx"
    write_report(path, ["a", "b"], [(None, "x")])
    sheet = openpyxl.load_workbook(path).active
    assert [cell.value for cell in sheet[2]] == [None, "x"]


@pytest.mark.parametrize("name", ["out.txt", "out", "out.xls", "out.json"])
def test_unsupported_extension(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError, match=r"must end in \.csv or \.xlsx"):
        write_report(tmp_path / name, ["a"], [])
    assert list(tmp_path.iterdir()) == []


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="folder exists"):
        write_report(tmp_path / "nowhere" / "out.csv", ["a"], [])


def test_bad_delimiter(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        write_report(tmp_path / "out.csv", ["a"], [], delimiter='"')


def failing_rows(count: int) -> Iterator[tuple[str, str]]:
    for number in range(count):
        yield (f"S{number}", "succeeded")
    raise RuntimeError("the run died")


@pytest.mark.parametrize("name", ["out.csv", "out.xlsx"])
def test_atomic_a_failed_write_leaves_the_old_report(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    write_report(path, ["serial", "status"], [("OLD", "failed")])
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="the run died"):
        write_report(path, ["serial", "status"], failing_rows(1000))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("name", ["out.csv", "out.xlsx"])
def test_atomic_replace_and_no_leftovers(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    write_report(path, ["serial", "status"], [("OLD", "failed")])
    write_report(path, ["serial", "status"], [("NEW", "succeeded")])
    assert read_job(path).rows == [("NEW", "succeeded")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_xlsx_row_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "XLSX_MAX_ROWS", 10)
    path = tmp_path / "out.xlsx"
    with pytest.raises(UsageError, match="write the report as .csv"):
        write_report(path, ["serial"], ((str(n),) for n in range(11)))
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_streams_a_generator(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    write_report(path, ["serial", "status"], ((f"S{n:06d}", "succeeded") for n in range(50_000)))
    table = read_job(path)
    assert len(table.rows) == 50_000
    assert table.rows[-1] == ("S049999", "succeeded")


@pytest.mark.parametrize(("name", "delimiter"), [("out.csv", ","), ("out.csv", ";"), ("out.xlsx", ",")])
def test_round_trip(tmp_path: Path, name: str, delimiter: str) -> None:
    path = tmp_path / name
    headers = ("Serial Number", "=weird", "message", "status", "detail", "http_status", "attempts", "resolved_ids")
    rows = [(cell, cell, cell, "failed", "The MDM said =no.", "", "1", "") for cell in TRICKY if cell.strip()]
    write_report(path, headers, rows, delimiter=delimiter)
    table = read_job(path)
    assert table.is_report
    assert table.delimiter == delimiter
    assert table.headers == headers
    assert table.rows == rows
    assert table.problems == {}
    assert table.canonical == {"serial": 0, "message": 2}
    assert table.outcome == {"status": 3, "detail": 4, "http_status": 5, "attempts": 6, "resolved_ids": 7}
