"""Excel as admins use it: text cells in what bulkmdm writes, numbers where they are
counts, an export that reads back as a job without notes, the first sheet that has
rows, and a "did you mean" for a misspelt action."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openpyxl
import pytest
from click.testing import CliRunner
from conftest import CREDS, unique_devices, write_csv

from bulkmdm.cli import main
from bulkmdm.columns import header_notes
from bulkmdm.errors import JobFileError
from bulkmdm.jobfile import read_job
from bulkmdm.sim import client_env, load
from bulkmdm.sim.common import SimServer


@pytest.mark.parametrize("vendor", ["duostation", "ivanti", "manageengine", "banyan"])
def test_an_export_reads_back_as_a_job_without_notes(vendor: str, tmp_path: Path) -> None:
    out = tmp_path / f"{vendor}.xlsx"
    with SimServer(load(vendor)(devices=30, seed=1)) as sim:
        # (--rate none: what the export writes is tested, not its pace)
        result = CliRunner().invoke(
            main, ["export", "-p", vendor, "-u", sim.url, "-o", str(out), "--rate", "none"], env=client_env(vendor)
        )
    assert result.exit_code == 0, result.output
    table = read_job(out)
    assert header_notes(table.headers) == [], table.headers
    sheet = openpyxl.load_workbook(out).worksheets[0]
    # every cell and every column is Text: a serial typed fresh into the sheet keeps its zeros
    assert {cell.number_format for row in sheet.iter_rows(min_row=2) for cell in row if cell.value} == {"@"}
    text_columns = {
        column
        for dimension in sheet.column_dimensions.values()
        if dimension.number_format == "@"
        for column in range(dimension.min or 0, (dimension.max or 0) + 1)
    }
    assert set(range(1, len(table.headers) + 1)) <= text_columns


def test_a_duostation_export_run_as_a_job_says_nothing_about_its_columns(duo: Any, tmp_path: Path) -> None:
    out = tmp_path / "fleet.xlsx"
    env = dict(CREDS)
    assert (
        CliRunner().invoke(main, ["export", "-p", "duostation", "-u", duo.url, "-o", str(out)], env=env).exit_code == 0
    )
    result = CliRunner().invoke(
        main, ["run", str(out), "-p", "duostation", "-u", duo.url, "-a", "inventory", "--dry-run"], env=env
    )
    assert "tags" in read_job(out).headers
    assert "did you mean" not in result.stderr and "Not used by bulkmdm" not in result.stderr, result.stderr


def test_http_status_and_attempts_are_numbers_in_the_xlsx_report(duo: Any, tmp_path: Path) -> None:
    ((serial, _),) = unique_devices(duo, 1)
    job = write_csv(tmp_path / "j.csv", [["serial", "tag", "attempts"], [serial, "No such tag", "007"]])
    out = tmp_path / "out.xlsx"
    result = CliRunner().invoke(
        main, ["run", str(job), "-p", "duostation", "-u", duo.url, "-a", "lock", "--report", str(out)], env=CREDS
    )
    assert result.exit_code == 0, result.output
    sheet = openpyxl.load_workbook(out).worksheets[0]
    header = [cell.value for cell in sheet[1]]
    row = {name: cell for name, cell in zip(header, sheet[2], strict=True) if name != "attempts"}
    counts = [cell for name, cell in zip(header, sheet[2], strict=True) if name in ("http_status", "attempts")]
    # the job's own 'attempts' column (the first) stays text; the report's are numbers
    assert [(c.value, c.data_type) for c in counts] == [("007", "s"), (200, "n"), (1, "n")]
    assert row["serial"].number_format == "@" and row["serial"].data_type == "s"
    assert read_job(out).rows[0][header.index("http_status")] == "200"


def _workbook(path: Path, sheets: dict[str, list[list[str]]]) -> Path:
    book = openpyxl.Workbook()
    book.remove(book.active)  # type: ignore[arg-type]
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(row)
    book.save(path)
    return path


def test_a_blank_first_sheet_reads_the_first_sheet_with_rows_and_names_it(duo: Any, tmp_path: Path) -> None:
    ((serial, _),) = unique_devices(duo, 1)
    path = _workbook(tmp_path / "job.xlsx", {"Blad1": [], "Notes": [["x"]], "Data": [["serial"], [serial]]})
    table = read_job(path)
    assert table.headers == ("serial",) and table.rows == [(serial,)]
    (note,) = table.notes
    assert note == "The first sheet of job.xlsx, 'Blad1', is blank: reading the sheet 'Data', the first that has rows."
    result = CliRunner().invoke(main, ["run", str(path), "-p", "duostation", "-u", duo.url, "-a", "lock"], env=CREDS)
    assert result.exit_code == 0 and note in result.stderr, result.output


def test_a_workbook_with_nothing_on_any_sheet_names_its_sheets(tmp_path: Path) -> None:
    path = _workbook(tmp_path / "job.xlsx", {"Job": [], "Notes": [["serial", "The device's serial"]]})
    with pytest.raises(JobFileError, match=r"nothing on any of its sheets \('Job', 'Notes'\)"):
        read_job(path)


def test_a_first_sheet_with_rows_is_read_as_before(tmp_path: Path) -> None:
    path = _workbook(tmp_path / "job.xlsx", {"Job": [["serial"], ["A"]], "Other": [["tag"], ["B"]]})
    table = read_job(path)
    assert table.headers == ("serial",) and table.notes == ()


def test_a_misspelt_action_gets_a_did_you_mean(duo: Any, tmp_path: Path) -> None:
    ((serial, _),) = unique_devices(duo, 1)
    job = write_csv(tmp_path / "j.csv", [["action", "serial"], ["lcok", serial], ["frobnicate", serial]])
    result = CliRunner().invoke(main, ["run", str(job), "-p", "duostation", "-u", duo.url, "-a", "tagg"], env=CREDS)
    assert result.exit_code == 2
    assert "--action 'tagg' is not an action; did you mean 'tag'?" in result.stderr
    result = CliRunner().invoke(main, ["run", str(job), "-p", "duostation", "-u", duo.url, "--dry-run"], env=CREDS)
    report = read_job(tmp_path / "j.dryrun.csv")
    details = [row[report.outcome["detail"]] for row in report.rows]
    assert details[0].startswith("'lcok' is not an action; did you mean 'lock'?")
    assert details[1] == "'frobnicate' is not an action; `bulkmdm actions` lists them."
    result = CliRunner().invoke(main, ["template", "asign-user", "-o", str(tmp_path / "t.xlsx")])
    assert result.exit_code == 2 and "did you mean 'assign-user'?" in result.stderr
