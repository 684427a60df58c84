"""Property tests: no input crashes read_job, and well-formed tables survive it."""

from __future__ import annotations

from typing import Literal

import csv
import io
import tempfile
from pathlib import Path

import openpyxl
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bulkmdm.columns import same_meaning
from bulkmdm.errors import JobFileError
from bulkmdm.jobfile import JobTable, read_job
from bulkmdm.report import write_report

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read_bytes_as(name: str, content: bytes) -> JobTable | None:
    """read_job on ``content`` saved as ``name``; None when it says JobFileError."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        try:
            table = read_job(path)
        except JobFileError as exc:
            message = str(exc)
            assert message and "\n" not in message
            assert path.name in message
            return None
    assert_well_formed(table)
    return table


def assert_well_formed(table: JobTable) -> None:
    assert table.headers
    assert all(isinstance(header, str) for header in table.headers)
    for row in table.rows:
        assert len(row) == len(table.headers)
        assert all(isinstance(cell, str) for cell in row)
    for index, sentence in table.problems.items():
        assert 0 <= index < len(table.rows)
        assert f"line {index + 2} " in sentence
    for position in (*table.canonical.values(), *table.outcome.values()):
        assert 0 <= position < len(table.headers)
    assert table.delimiter in (",", ";")


# --------------------------------------------------------------------------
# Nothing but JobFileError, whatever the bytes


@SETTINGS
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_as_csv(content: bytes) -> None:
    read_bytes_as("job.csv", content)


@SETTINGS
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_as_xlsx(content: bytes) -> None:
    read_bytes_as("job.xlsx", content)


CSV_TOKENS = st.sampled_from(
    [
        b",",
        b";",
        b'"',
        b'""',
        b"\n",
        b"\r\n",
        b"\r",
        b" ",
        b"\t",
        b"a",
        b"serial",
        b"tag",
        b"NA",
        b"007",
        b"\x00",
        b"\xe5",
        b"\xc3\xa5",
        b"\xef\xbb\xbf",
        b"\x81",
        b"'=",
        b"status",
        b"detail",
        b"\xff",
    ]
)


@SETTINGS
@given(st.lists(CSV_TOKENS, max_size=200).map(b"".join))
def test_csv_like_token_soup(content: bytes) -> None:
    read_bytes_as("job.csv", content)


def _small_workbook() -> bytes:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["serial", "tag", "when"])
    sheet.append(["00123", "Lärare", 45321.5])
    sheet.append([123, True, None])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


WORKBOOK = _small_workbook()


@SETTINGS
@given(
    st.lists(st.tuples(st.integers(0, len(WORKBOOK) - 1), st.integers(0, 255)), max_size=8),
    st.integers(1, len(WORKBOOK)),
)
def test_damaged_xlsx(flips: list[tuple[int, int]], keep: int) -> None:
    content = bytearray(WORKBOOK[:keep])
    for offset, value in flips:
        if offset < len(content):
            content[offset] = value
    read_bytes_as("job.xlsx", bytes(content))


# --------------------------------------------------------------------------
# Well-formed tables come back cell for cell

HEADER = st.text(alphabet="abcdefghijklmnopqrstuvwxyzåäöÅÄÖ _-0123456789", min_size=1, max_size=12).filter(str.strip)
CP1252_CHARS = "".join(
    ch
    for ch in (bytes([b]).decode("cp1252", errors="ignore") for b in range(256))
    if ch and (ch >= " " or ch in "\t\n\r")
)


def _cells(alphabet: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, max_size=15)


def _expected(rows: list[list[str]]) -> list[tuple[str, ...]]:
    # A row of nothing but blank cells is not a row.
    return [tuple(row) for row in rows if any(cell.strip() for cell in row)]


@st.composite
def tables(draw: st.DrawFn, cell: st.SearchStrategy[str]) -> tuple[list[str], list[list[str]]]:
    width = draw(st.integers(2, 5))
    headers = draw(st.lists(HEADER, min_size=width, max_size=width))
    rows = draw(st.lists(st.lists(cell, min_size=width, max_size=width), max_size=8))
    return headers, rows


@SETTINGS
@given(
    st.sampled_from(["utf-8", "utf-8-sig", "cp1252"]).flatmap(
        lambda encoding: st.tuples(
            st.just(encoding),
            tables(_cells(st.sampled_from(CP1252_CHARS) if encoding == "cp1252" else st.characters(codec="utf-8"))),
        )
    ),
    st.sampled_from([",", ";"]),
    st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
    st.sampled_from(["\r\n", "\n"]),
)
def test_csv_tables_round_trip(
    encoded: tuple[str, tuple[list[str], list[list[str]]]], delimiter: str, quoting: Literal[0, 1, 2, 3], newline: str
) -> None:
    encoding, (headers, rows) = encoded
    # Two headers that mean one column (two "account"s, "sn" and "serial") make a row
    # where they differ invalid, by design (tests/test_jobfile.py); here every cell is data.
    assume(not same_meaning(headers))
    if newline == "\n" and quoting == csv.QUOTE_MINIMAL:
        # The csv module then leaves a lone CR unquoted, and "x\r\n" is a line
        # ending to every reader; Excel never writes that.
        assume(not any("\r" in cell for row in rows for cell in row))
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=delimiter, quoting=quoting, lineterminator=newline)
    writer.writerow(headers)
    writer.writerows(rows)
    content = buffer.getvalue().encode(encoding)
    if encoding == "cp1252" and not content.isascii():
        # Text that happens to be valid UTF-8 too is read as UTF-8, as it should.
        try:
            content.decode("utf-8")
            assume(False)
        except UnicodeDecodeError:
            pass
    assume(not mostly_control_bytes(content))
    table = read_bytes_as("job.csv", content)
    assert table is not None
    assert table.delimiter == delimiter
    assert table.headers == tuple(headers)
    assert table.rows == _expected(rows)
    nul_rows = {index for index, row in enumerate(table.rows) if any("\x00" in cell for cell in row)}
    assert set(table.problems) == nul_rows


REPORT_CELL = st.text(st.characters(codec="utf-8"), max_size=20)


def mostly_control_bytes(content: bytes) -> bool:
    """What read_job rejects as binary rather than reading as a table."""
    sample = content[:8192]
    controls = sum(1 for byte in sample if byte < 0x20 and byte not in b"\t\n\x0c\r")
    return controls >= 16 and controls > 0.3 * len(sample)


@SETTINGS
@given(tables(REPORT_CELL), st.sampled_from(["out.csv", "out.xlsx"]), st.sampled_from([",", ";"]))
def test_reports_round_trip(table: tuple[list[str], list[list[str]]], name: str, delimiter: str) -> None:
    headers, rows = table
    headers = [*headers, "status", "detail"]
    rows = [[*row, "failed", "=oops"] for row in rows]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        write_report(path, headers, rows, delimiter=delimiter)
        assume(name.endswith(".xlsx") or not mostly_control_bytes(path.read_bytes()))
        back = read_job(path)
    assert_well_formed(back)
    assert back.is_report
    assert back.headers == tuple(headers)
    assert back.rows == [tuple(row) for row in rows]


@pytest.mark.parametrize("name", ["job.csv", "job.xlsx"])
def test_empty_input_is_an_error(name: str) -> None:
    assert read_bytes_as(name, b"") is None
