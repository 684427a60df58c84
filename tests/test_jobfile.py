"""read_job: every kind of job file an admin may hand us, good and bad."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import zipfile
from pathlib import Path

import openpyxl
import pytest
import xlsxwriter

from bulkmdm.errors import JobFileError
from bulkmdm.jobfile import EXCEL_CELL_LIMIT, JobTable, read_job
from bulkmdm.report import write_report


def write(tmp_path: Path, name: str, content: bytes | str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
    return path


def file_error(path: Path) -> str:
    with pytest.raises(JobFileError) as caught:
        read_job(path)
    message = str(caught.value)
    # One sentence that names the file; never a traceback or a second line.
    assert str(path) in message
    assert "\n" not in message
    assert message.endswith(".")
    return message


def assert_shape(table: JobTable) -> None:
    assert all(len(row) == len(table.headers) for row in table.rows)
    assert all(0 <= index < len(table.rows) for index in table.problems)


# --------------------------------------------------------------------------
# CSV: encodings and delimiters


def test_plain_utf8_comma(tmp_path: Path) -> None:
    path = write(tmp_path, "job.csv", "Serial Number,Tag,Action\nC02X1,Lärare,tag\nC02X2,Elev,untag\n")
    table = read_job(path)
    assert table.kind == "csv"
    assert table.delimiter == ","
    assert table.headers == ("Serial Number", "Tag", "Action")
    assert table.canonical == {"serial": 0, "tag": 1, "action": 2}
    assert table.outcome == {}
    assert not table.is_report
    assert table.rows == [("C02X1", "Lärare", "tag"), ("C02X2", "Elev", "untag")]
    assert table.problems == {}
    assert table.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert table.path == path


def test_utf8_with_bom_semicolon(tmp_path: Path) -> None:
    path = write(tmp_path, "job.csv", "\ufeffserial;tag\r\nA1;Åsa Öberg\r\n", "utf-8")
    table = read_job(path)
    assert table.delimiter == ";"
    assert table.headers == ("serial", "tag")
    assert table.rows == [("A1", "Åsa Öberg")]


def test_cp1252_as_excel_writes_it(tmp_path: Path) -> None:
    text = "Serienummer;Tagg;Åtgärd\r\nX1;Lärare på skolan;tag\r\nX2;Överlärare;tag\r\n"
    path = write(tmp_path, "job.csv", text, "cp1252")
    table = read_job(path)
    assert table.delimiter == ";"
    assert table.headers == ("Serienummer", "Tagg", "Åtgärd")
    assert table.rows == [("X1", "Lärare på skolan", "tag"), ("X2", "Överlärare", "tag")]


def test_cp1252_specials_and_undefined_bytes(tmp_path: Path) -> None:
    # 0x80 is the euro sign in Windows-1252; 0x81 is undefined there and
    # reads as Latin-1 rather than failing the file.
    path = write(tmp_path, "job.csv", b"serial,note\nA,\x80 5 \x93quoted\x94\nB,x\x81y\n")
    table = read_job(path)
    assert table.rows == [("A", "€ 5 “quoted”"), ("B", "x\x81y")]


def test_invalid_utf8_after_bom_falls_back_to_cp1252(tmp_path: Path) -> None:
    path = write(tmp_path, "job.csv", b"\xef\xbb\xbfserial,tag\nA,L\xe4rare\n")
    table = read_job(path)
    assert table.headers == ("serial", "tag")
    assert table.rows == [("A", "Lärare")]


def test_delimiter_sniffed_outside_quotes(tmp_path: Path) -> None:
    path = write(tmp_path, "job.csv", 'serial;"name, full"\nA;"Smith, John"\n')
    table = read_job(path)
    assert table.delimiter == ";"
    assert table.headers == ("serial", "name, full")
    assert table.rows == [("A", "Smith, John")]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('"say ""hi"", then";tag', ('say "hi", then', "tag")),
        ('serial;5" screen, big;tag', ("serial", '5" screen, big', "tag")),
        ('"a;b",c,d', ("a;b", "c", "d")),
    ],
)
def test_delimiter_sniffed_with_tricky_quotes(tmp_path: Path, header: str, expected: tuple[str, ...]) -> None:
    table = read_job(write(tmp_path, "job.csv", header + "\n"))
    assert table.headers == expected


def test_comma_wins_when_more_commas_than_semicolons(tmp_path: Path) -> None:
    path = write(tmp_path, "job.csv", "serial,tag,note\nA,t,a;b\n")
    table = read_job(path)
    assert table.delimiter == ","
    assert table.rows == [("A", "t", "a;b")]


def test_single_column(tmp_path: Path) -> None:
    table = read_job(write(tmp_path, "job.csv", "serial\nA\nB\n"))
    assert table.headers == ("serial",)
    assert table.rows == [("A",), ("B",)]


# --------------------------------------------------------------------------
# CSV: values stay text, as written


def test_values_are_text_as_written(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "job.csv",
        "serial,a,b,c,d,e,f\n00123,NA,N/A,null,None,nan, padded \n1234567890123456789012,1e5,TRUE,0,-,,NaN\n",
    )
    table = read_job(path)
    assert table.rows == [
        ("00123", "NA", "N/A", "null", "None", "nan", " padded "),
        ("1234567890123456789012", "1e5", "TRUE", "0", "-", "", "NaN"),
    ]


def test_quoted_newlines_delimiters_and_quotes(tmp_path: Path) -> None:
    path = write(tmp_path, "job.csv", 'serial,message\r\nA,"Hello,\r\nworld ""quoted"""\r\nB,5" screen\r\n')
    table = read_job(path)
    assert table.rows == [("A", 'Hello,\r\nworld "quoted"'), ("B", '5" screen')]


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r", "\r\r\n"])
def test_no_trailing_carriage_return(tmp_path: Path, ending: str) -> None:
    path = write(tmp_path, "job.csv", ending.join(["serial,tag", "A,t1", "B,t2", ""]))
    table = read_job(path)
    assert table.headers == ("serial", "tag")
    assert table.rows == [("A", "t1"), ("B", "t2")]


def test_blank_lines_are_not_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "job.csv", "\n\nserial;tag\n\nA;t\n   \n;;\n ; \nB;u\n\n;\n")
    table = read_job(path)
    assert table.headers == ("serial", "tag")
    assert table.rows == [("A", "t"), ("B", "u")]


@pytest.mark.parametrize("content", ["serial,tag\n", "serial,tag", "serial,tag\r\n\r\n\r\n", "\ufeffserial;tag\n;\n"])
def test_header_only_is_zero_rows(tmp_path: Path, content: str) -> None:
    table = read_job(write(tmp_path, "job.csv", content))
    assert table.headers == ("serial", "tag")
    assert table.rows == []
    assert table.problems == {}


def test_duplicate_headers_kept_canonical_is_first(tmp_path: Path) -> None:
    path = write(tmp_path, "job.csv", "serial,Tag,serial,Serial Number,tag\nA,t,B,C,u\n")
    table = read_job(path)
    assert table.headers == ("serial", "Tag", "serial", "Serial Number", "tag")
    assert table.canonical == {"serial": 0, "tag": 1}
    assert table.rows == [("A", "t", "B", "C", "u")]


def test_blank_header_cells(tmp_path: Path) -> None:
    # A blank header over data is kept as ""; a blank header over nothing
    # (Excel's trailing ";;") is not a column.
    path = write(tmp_path, "job.csv", "serial;;tag;;\nA;note;t;;\nB;;u;;\n")
    table = read_job(path)
    assert table.headers == ("serial", "", "tag")
    assert table.canonical == {"serial": 0, "tag": 2}
    assert table.rows == [("A", "note", "t"), ("B", "", "u")]


def test_short_rows_are_padded(tmp_path: Path) -> None:
    table = read_job(write(tmp_path, "job.csv", "serial,tag,action\nA\nB,t\n"))
    assert table.rows == [("A", "", ""), ("B", "t", "")]
    assert table.problems == {}


def test_long_row_is_a_problem_and_keeps_its_cells(tmp_path: Path) -> None:
    path = write(tmp_path, "job.csv", "serial,tag,action\nA,t,tag\nB,t,tag,x,y\nC,t,tag\n")
    table = read_job(path)
    assert table.rows == [("A", "t", "tag"), ("B", "t", "tag"), ("C", "t", "tag")]
    assert list(table.problems) == [1]
    assert table.problems[1].startswith("line 3 has 5 cells but the header has 3")


def test_extra_empty_cells_are_not_a_problem(tmp_path: Path) -> None:
    table = read_job(write(tmp_path, "job.csv", "serial,tag\nA,t,,\nB,u\n"))
    assert table.rows == [("A", "t"), ("B", "u")]
    assert table.problems == {}


def test_long_rows_of_growing_width(tmp_path: Path) -> None:
    lines = ["a,b"] + [",".join(["x"] * n) for n in range(1, 12)]
    table = read_job(write(tmp_path, "job.csv", "\n".join(lines) + "\n"))
    assert len(table.rows) == 11
    assert sorted(table.problems) == list(range(2, 11))
    assert table.problems[10].startswith("line 12 has 11 cells but the header has 2")


def test_long_row_counted_after_blank_lines_and_multiline_cells(tmp_path: Path) -> None:
    path = write(tmp_path, "job.csv", 'serial,message\n\nA,"two\nlines"\n\nB,m,extra\n')
    table = read_job(path)
    assert table.rows == [("A", "two\nlines"), ("B", "m")]
    assert table.problems == {
        1: "line 3 has 3 cells but the header has 2; remove the extra cells or give them a header."
    }


def test_nul_byte_makes_only_that_row_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "job.csv", b"serial,tag\nA,t\nB\x00X,t\nC,t\n")
    table = read_job(path)
    assert len(table.rows) == 3
    assert table.rows[1][0] == "B\x00X"
    assert table.problems == {1: "line 3 has a NUL byte in column 'serial'; retype that cell."}


def test_nul_byte_in_blank_header_column(tmp_path: Path) -> None:
    table = read_job(write(tmp_path, "job.csv", b"serial,,tag\nA,\x00,t\n"))
    assert table.problems == {0: "line 2 has a NUL byte in column 2; retype that cell."}


def test_huge_cell_is_a_problem(tmp_path: Path) -> None:
    huge = "x" * (EXCEL_CELL_LIMIT + 1)
    path = write(tmp_path, "job.csv", f"serial,message\nA,ok\nB,{huge}\nC,{'y' * EXCEL_CELL_LIMIT}\n")
    table = read_job(path)
    assert table.rows[1] == ("B", huge)
    assert list(table.problems) == [1]
    assert "line 3 has 32,768 characters in column 'message'" in table.problems[1]


def test_broken_row_in_the_middle_of_100k(tmp_path: Path) -> None:
    lines = ["serial,tag,action"] + [f"S{i:06d},t,tag" for i in range(100_000)]
    lines[50_001] = "S050000,t,tag,surplus"
    path = write(tmp_path, "job.csv", "\n".join(lines) + "\n")
    table = read_job(path)
    assert len(table.rows) == 100_000
    assert table.rows[50_000] == ("S050000", "t", "tag")
    assert table.rows[99_999] == ("S099999", "t", "tag")
    assert table.problems == {
        50_000: "line 50002 has 4 cells but the header has 3; remove the extra cells or give them a header."
    }


def test_unclosed_quote_is_a_file_error(tmp_path: Path) -> None:
    path = write(tmp_path, "job.csv", 'serial,message\nA,ok\nB,"never closed\nC,x\n')
    message = file_error(path)
    assert "line 3" in message
    assert "never closed" in message


# --------------------------------------------------------------------------
# File-level errors


def test_missing_file(tmp_path: Path) -> None:
    assert "does not exist" in file_error(tmp_path / "nope.csv")


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "jobs.csv"
    folder.mkdir()
    assert "is a folder" in file_error(folder)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "job.csv", "serial\nA\n")
    path.chmod(0)
    try:
        assert "permission denied" in file_error(path)
    finally:
        path.chmod(0o644)


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The test above cannot run as root; this one stands in for it anywhere.
    path = write(tmp_path, "job.csv", "serial\nA\n")

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    assert "permission denied" in file_error(path)


@pytest.mark.parametrize("name", ["job.csv", "job.xlsx"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    assert "is empty" in file_error(write(tmp_path, name, b""))


@pytest.mark.parametrize("content", ["\ufeff", "\n\n\r\n", "  \n\t\n", ";;;\n,,\n"])
def test_no_header_row(tmp_path: Path, content: str) -> None:
    assert "no header row" in file_error(write(tmp_path, "job.csv", content))


@pytest.mark.parametrize("name", ["job.txt", "job.tsv", "job", "job.json"])
def test_unsupported_extension(tmp_path: Path, name: str) -> None:
    message = file_error(write(tmp_path, name, "serial\nA\n"))
    assert ".csv and .xlsx" in message


def test_old_xls_extension(tmp_path: Path) -> None:
    assert "save it as an Excel Workbook (.xlsx)" in file_error(write(tmp_path, "job.xls", b"\xd0\xcf\x11\xe0"))


def test_upper_case_extension(tmp_path: Path) -> None:
    assert read_job(write(tmp_path, "JOB.CSV", "serial\nA\n")).rows == [("A",)]


def make_xlsx(path: Path, rows: list[list[object]]) -> Path:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    for row in rows:
        sheet.append(row)
    workbook.save(path)
    return path


def test_csv_that_is_an_xlsx(tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "job.csv", [["serial"], ["A"]])
    message = file_error(path)
    assert "is an Excel workbook" in message
    assert "rename it to job.xlsx" in message


@pytest.mark.parametrize("name", ["job.csv", "job.xlsx"])
def test_a_job_that_is_a_plain_zip(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("job.csv", "serial\nA\n")
    assert "ZIP archive" in file_error(path)


def test_csv_that_is_a_pdf(tmp_path: Path) -> None:
    assert "PDF" in file_error(write(tmp_path, "job.csv", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"))


def test_csv_that_is_binary(tmp_path: Path) -> None:
    content = b"\x7fELG\x02\x01\x01\x00" + bytes(range(64)) * 64
    assert "binary" in file_error(write(tmp_path, "job.csv", content))


def test_a_few_control_characters_do_not_make_a_binary_file(tmp_path: Path) -> None:
    table = read_job(write(tmp_path, "job.csv", b"serial,tag\nA,\x1f\x08\x07\nB,\x01\n"))
    assert table.rows == [("A", "\x1f\x08\x07"), ("B", "\x01")]


def test_csv_that_is_utf16(tmp_path: Path) -> None:
    path = write(tmp_path, "job.csv", "serial\ttag\r\nA\tt\r\n", "utf-16")
    assert "UTF-16" in file_error(path)


def test_xlsx_that_is_a_csv(tmp_path: Path) -> None:
    message = file_error(write(tmp_path, "job.xlsx", "serial,tag\nA,t\n"))
    assert "rename it to job.csv" in message


def test_xlsx_that_is_a_pdf(tmp_path: Path) -> None:
    assert "PDF" in file_error(write(tmp_path, "job.xlsx", b"%PDF-1.4\n\x00\x01\x02"))


def test_xlsx_that_is_binary(tmp_path: Path) -> None:
    assert "not an Excel workbook" in file_error(write(tmp_path, "job.xlsx", bytes(range(256)) * 4))


def test_truncated_xlsx(tmp_path: Path) -> None:
    whole = make_xlsx(tmp_path / "whole.xlsx", [["serial"], ["A"]]).read_bytes()
    assert "damaged" in file_error(write(tmp_path, "job.xlsx", whole[: len(whole) // 2]))


def test_xlsx_with_a_damaged_sheet(tmp_path: Path) -> None:
    path = tmp_path / "job.xlsx"
    make_xlsx(path, [["serial"], ["A"]])
    broken = tmp_path / "broken.xlsx"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(broken, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.startswith("xl/worksheets/"):
                data = data[: len(data) // 2]
            target.writestr(item, data)
    assert "damaged" in file_error(broken) or "not a valid Excel workbook" in file_error(broken)


def test_encrypted_xlsx(tmp_path: Path) -> None:
    # Excel saves a password-protected workbook as an OLE2 container holding
    # an "EncryptedPackage" stream; the header and that name are what we see.
    content = (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 504 + "EncryptedPackage".encode("utf-16-le") + b"\x00" * 512
    )
    assert "password-protected" in file_error(write(tmp_path, "job.xlsx", content))


def test_xls_named_xlsx(tmp_path: Path) -> None:
    content = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 1024
    assert "old-format Excel workbook" in file_error(write(tmp_path, "job.xlsx", content))


# --------------------------------------------------------------------------
# XLSX


def test_xlsx_values_as_a_person_sees_them(tmp_path: Path) -> None:
    path = make_xlsx(
        tmp_path / "job.xlsx",
        [
            ["serial", "number", "text", "when", "flag", "fraction", "blank"],
            [123, 123.0, "00123", dt.date(2024, 1, 31), True, 0.1, None],
            [12345678901234567890, 1234567890123456, "NA", dt.datetime(2024, 1, 31, 8, 30), False, 1e-5, None],
            ["N/A", 0.30000000000000004, "null", dt.time(8, 30), "TRUE", -2.5, None],
            ["None", 1.5e20, "nan", dt.datetime(2024, 2, 29), "  spaced  ", 100, None],
        ],
    )
    table = read_job(path)
    assert table.kind == "xlsx"
    assert table.delimiter == ","
    assert table.headers == ("serial", "number", "text", "when", "flag", "fraction", "blank")
    assert table.rows == [
        ("123", "123", "00123", "2024-01-31", "TRUE", "0.1", ""),
        ("12345678901234570000", "1234567890123456", "NA", "2024-01-31 08:30:00", "FALSE", "0.00001", ""),
        ("N/A", "0.3", "null", "08:30:00", "TRUE", "-2.5", ""),
        ("None", "150000000000000000000", "nan", "2024-02-29", "  spaced  ", "100", ""),
    ]
    assert table.problems == {}


def test_xlsx_formula_gives_its_cached_value(tmp_path: Path) -> None:
    path = tmp_path / "job.xlsx"
    workbook = xlsxwriter.Workbook(path)
    sheet = workbook.add_worksheet()
    sheet.write_row(0, 0, ["serial", "tag"])
    sheet.write_formula(1, 0, '="C02"&"X1"', None, "C02X1")
    sheet.write_formula(1, 1, "=40+2", None, 42)
    workbook.close()
    assert read_job(path).rows == [("C02X1", "42")]


def test_xlsx_merged_cells(tmp_path: Path) -> None:
    path = tmp_path / "job.xlsx"
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["serial", "tag", "action"])
    sheet.append(["A", "shared", None])
    sheet.append(["B", None, "tag"])
    sheet.merge_cells("B2:C3")
    workbook.save(path)
    assert read_job(path).rows == [("A", "shared", ""), ("B", "", "")]


def test_xlsx_first_sheet_blank_rows_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "job.xlsx"
    workbook = openpyxl.Workbook()
    first = workbook.active
    first["B3"] = "serial"
    first["C3"] = "tag"
    first["B5"] = "A"
    first["C5"] = "t"
    first["B6"] = "B"
    workbook.create_sheet("other")["A1"] = "ignored"
    workbook.save(path)
    table = read_job(path)
    assert table.headers == ("serial", "tag")
    assert table.rows == [("A", "t"), ("B", "")]


def test_xlsx_duplicate_and_outcome_headers(tmp_path: Path) -> None:
    path = make_xlsx(
        tmp_path / "job.xlsx",
        [
            ["Serial", "serial no", "Status", "Detail", "http_status", "Attempts", "resolved ids"],
            ["A", "B", "failed", "x", 500, 3, ""],
        ],
    )
    table = read_job(path)
    assert table.canonical == {"serial": 0}
    assert table.outcome == {"status": 2, "detail": 3, "http_status": 4, "attempts": 5, "resolved_ids": 6}
    assert table.is_report
    assert table.rows == [("A", "B", "failed", "x", "500", "3", "")]


def test_xlsx_header_only(tmp_path: Path) -> None:
    table = read_job(make_xlsx(tmp_path / "job.xlsx", [["serial", "tag"]]))
    assert table.headers == ("serial", "tag")
    assert table.rows == []


def test_xlsx_empty_sheet(tmp_path: Path) -> None:
    message = file_error(make_xlsx(tmp_path / "job.xlsx", []))
    assert "first sheet" in message


def test_xlsx_huge_cell_and_nul(tmp_path: Path) -> None:
    path = tmp_path / "job.xlsx"
    workbook = xlsxwriter.Workbook(path, {"strings_to_numbers": False})
    sheet = workbook.add_worksheet()
    sheet.write_row(0, 0, ["serial", "message"])
    sheet.write_row(1, 0, ["A", "ok"])
    sheet.write_row(2, 0, ["B\x00", "ok"])
    workbook.close()
    table = read_job(path)
    assert table.rows == [("A", "ok"), ("B\x00", "ok")]
    assert table.problems == {1: "line 3 has a NUL byte in column 'serial'; retype that cell."}


# --------------------------------------------------------------------------
# Reports used as jobs


def test_csv_report_round_trips_neutralised_cells(tmp_path: Path) -> None:
    path = tmp_path / "job.outcome.csv"
    values = ("=SUM(A1)", "+46701234567", "-5", "@user", "\tx", "\rx", "'=x", "plain", "'quoted")
    write_report(
        path, ("serial", "=odd header", "status", "detail"), [(value, value, "failed", "d") for value in values]
    )
    table = read_job(path)
    assert table.is_report
    assert table.headers == ("serial", "=odd header", "status", "detail")
    assert [row[0] for row in table.rows] == list(values)


def test_apostrophes_kept_in_a_file_that_is_not_a_report(tmp_path: Path) -> None:
    table = read_job(write(tmp_path, "job.csv", "serial,detail\n'=x,'-5\n"))
    assert not table.is_report
    assert table.rows == [("'=x", "'-5")]


def test_xlsx_report_is_taken_literally(tmp_path: Path) -> None:
    path = tmp_path / "job.outcome.xlsx"
    write_report(path, ("serial", "status", "detail"), [("'=x", "failed", "=y")])
    table = read_job(path)
    assert table.is_report
    assert table.rows == [("'=x", "failed", "=y")]
