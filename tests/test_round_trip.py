"""Every file bulkmdm writes (report, undo file, export, template; CSV and
XLSX) reads back into bulkmdm with every value exactly as it was, however it
begins; a value no Excel cell can hold is never written cut."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import openpyxl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkmdm.jobfile import EXCEL_CELL_LIMIT, read_job
from bulkmdm.ownfiles import written
from bulkmdm.report import write_report
from bulkmdm.sim.duostation import FACTS

from conftest import read_report, unique_devices, write_csv

#: values that begin the ways Excel or the guard care about
AWKWARD = ["-Staff", "-5", "=1+1", "+46701234567", "@x", "\tx", "\rx", "'", "'-5", "''=1", "'quoted", "x"]
#: any text a cell can hold (lone surrogates cannot be written as UTF-8 by anything)
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40) | st.sampled_from(AWKWARD)


def _write_and_read(suffix: str, headers: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> Any:
    folder = Path(tempfile.mkdtemp())
    path, state = folder / f"file{suffix}", folder / "state"
    write_report(path, headers, rows, state=state)
    return read_job(path, own=written(state))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=6), st.sampled_from([".csv", ".xlsx"]))
def test_a_file_bulkmdm_wrote_reads_back_exactly(values: list[tuple[str, str]], suffix: str) -> None:
    # a first column that is never blank: a row of blank cells is no row
    rows = [(f"r{i}", a, b) for i, (a, b) in enumerate(values)]
    table = _write_and_read(suffix, ("action", "tag", "value"), rows)
    assert table.headers == ("action", "tag", "value")
    assert table.rows == rows


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(TEXT, min_size=1, max_size=6), st.sampled_from([".csv", ".xlsx"]))
def test_a_report_reads_back_exactly(values: list[str], suffix: str) -> None:
    rows = [(f"S{i}", value, "failed", value) for i, value in enumerate(values)]
    table = _write_and_read(suffix, ("serial", "=odd", "status", "detail"), rows)
    assert table.is_report
    assert table.headers == ("serial", "=odd", "status", "detail")
    assert table.rows == rows


def test_a_csv_of_a_persons_own_keeps_its_apostrophes(tmp_path: Path) -> None:
    ours, state = tmp_path / "ours.csv", tmp_path / "state"
    write_report(ours, ("action", "tag"), [("tag", "'-Staff")], state=state)
    assert read_job(ours, own=written(state)).rows == [("tag", "'-Staff")]
    # the same text, not written by bulkmdm: the apostrophes are the person's
    theirs = write_csv(tmp_path / "theirs.csv", [["action", "tag"], ["tag", "''-Staff"]])
    assert read_job(theirs, own=written(state)).rows == [("tag", "''-Staff")]


def test_the_csv_guard_still_makes_excel_show_text(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    write_report(path, ("tag",), [(value,) for value in AWKWARD])
    lines = path.read_text(encoding="utf-8-sig").splitlines()[1:]
    assert all(not line.startswith(("=", "+", "-", "@", "\t", "\r")) for line in lines)


def test_an_undo_file_puts_back_tags_however_they_begin(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    names = ["-Staff", "=1+1", "+46 Lärare", "@elev", "'citat"]
    st_ = duo.app["state"]
    duo.call(lambda: [st_.add_tag({"name": name}) for name in names])
    devices = unique_devices(duo, len(names))
    rows = [[serial, name] for (serial, _), name in zip(devices, names, strict=True)]
    job = write_csv(tmp_path / "tags.csv", [["serial", "tag"], *rows])
    args = ["--provider", "duostation", "--url", duo.url]

    def tags() -> list[list[str]]:
        return duo.call(lambda: [sorted(st_.device_tags_of(d)) for _, d in devices])  # type: ignore[no-any-return]

    before = tags()
    res = run_cli(["run", str(job), "--action", "tag", *args])
    assert res.exit_code == 0, res.output
    assert [r["status"] for r in res.report] == ["succeeded"] * len(names)
    assert tags() == [sorted([*old, n]) for old, n in zip(before, names, strict=True)]

    undo = tmp_path / "tags.undo.csv"
    res = run_cli(["run", str(undo), *args])
    assert res.exit_code == 0, res.output
    assert [r["status"] for r in res.report] == ["succeeded"] * len(names), res.report
    assert tags() == before


def test_an_export_reads_back_exactly(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    st_ = duo.app["state"]
    device_id = FACTS["untagged_device"]["id"]

    def rename() -> None:
        st_.devices[device_id]["name"] = "-Elev 'iPad' =1"

    duo.call(rename)
    out = tmp_path / "devices.csv"
    res = run_cli(["export", "--provider", "duostation", "--url", duo.url, "-o", str(out)])
    assert res.exit_code == 0, res.output
    table = read_job(out, own=written(tmp_path / "state"))
    names = [row[table.canonical["name"]] for row in table.rows]
    assert "-Elev 'iPad' =1" in names


def test_a_template_reads_back_as_its_columns(run_cli: Any, tmp_path: Path) -> None:
    for suffix in (".csv", ".xlsx"):
        out = tmp_path / f"t{suffix}"
        res = run_cli(["template", "tag", "-o", str(out)])
        assert res.exit_code == 0, res.output
        if suffix == ".xlsx":
            written_headers = [c.value for c in next(openpyxl.load_workbook(out).worksheets[0].iter_rows(max_row=1))]
        else:
            written_headers = out.read_text(encoding="utf-8-sig").splitlines()[0].split(",")
        table = read_job(out)
        assert list(table.headers) == written_headers
        assert {"serial", "tag"} <= set(table.canonical)


def test_a_value_too_long_for_excel_is_never_written_cut(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    serial = FACTS["untagged_device"]["serial"]
    huge = "y" * (EXCEL_CELL_LIMIT + 10)
    job = write_csv(tmp_path / "msg.csv", [["serial", "message"], [serial, "hello"], [serial, huge]])
    args = ["--provider", "duostation", "--url", duo.url, "--action", "message"]
    xlsx = tmp_path / "msg.outcome.xlsx"
    res = run_cli(["run", str(job), *args, "--report", str(xlsx)])
    assert res.exit_code == 1, res.output
    sheet = openpyxl.load_workbook(xlsx).worksheets[0]
    cells = [str(c.value) for row in sheet.iter_rows() for c in row if c.value is not None]
    assert not any(c.startswith("yyyy") for c in cells), "no value cut to Excel's limit"
    detail = read_report(xlsx)[1]["detail"]
    assert "leaves out the value in column 'message'" in detail and "--out FILE.csv" in detail
    # run again, the .xlsx report sends nothing in place of the value it could not hold
    sent = duo.stats.mutating
    again = run_cli(["run", str(xlsx), *args])
    assert again.exit_code == 1, again.output
    rows = read_report(xlsx)
    assert [r["status"] for r in rows] == ["succeeded", "invalid"]
    assert "is not in this file" in rows[1]["detail"]
    assert duo.stats.mutating == sent
    # the CSV report keeps the value whole
    csv_report = tmp_path / "msg.outcome.csv"
    res = run_cli(["run", str(job), *args, "--report", str(csv_report), "--fresh"])
    assert read_report(csv_report)[1]["message"] == huge


def test_an_xlsx_holds_a_marker_not_a_cut_value_and_that_row_cannot_run(tmp_path: Path) -> None:
    path = tmp_path / "undo.xlsx"
    huge = "z" * (EXCEL_CELL_LIMIT + 1)
    write_report(path, ("action", "attribute_value"), [("set-attribute", "short"), ("set-attribute", huge)])
    table = read_job(path)
    assert table.rows[0] == ("set-attribute", "short")
    assert not table.rows[1][1].startswith("z") and "32,768 characters" in table.rows[1][1]
    assert list(table.problems) == [1] and "is not in this file" in table.problems[1]
    # the same rows as CSV keep the value whole
    whole = tmp_path / "undo.csv"
    write_report(whole, ("action", "attribute_value"), [("set-attribute", huge)])
    assert read_job(whole).rows == [("set-attribute", huge)]
