"""The xlsx report as people read it in Excel: frozen header, autofilter,
column widths, status cells coloured by status; written in constant memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openpyxl

from conftest import write_csv

from bulkmdm.report import STATUS_COLOURS, write_report
from bulkmdm.sim.duostation import FACTS


def _fill(cell: Any) -> str:
    return "#" + str(cell.fill.fgColor.rgb)[-6:]


def test_run_writes_a_styled_xlsx_report(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = write_csv(
        tmp_path / "j.csv",
        [
            ["action", "serial", "Kommentar"],
            ["lock", FACTS["untagged_device"]["serial"], "a comment that is rather long, as comments are"],
            ["lock", "NOSUCHSERIAL", ""],
            ["frobnicate", "X", ""],
        ],
    )
    out = tmp_path / "out.xlsx"
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url, "--report", str(out)])
    assert res.exit_code == 1, res.output
    sheet = openpyxl.load_workbook(out).worksheets[0]
    assert sheet.freeze_panes == "A2"
    assert sheet.auto_filter.ref == "A1:H4"
    assert [sheet.cell(1, c).font.b for c in range(1, 4)] == [True, True, True]
    status = [sheet.cell(r, 4) for r in range(2, 5)]
    assert [c.value for c in status] == ["succeeded", "failed", "invalid"]
    assert [_fill(c) for c in status] == [
        STATUS_COLOURS["succeeded"][0],
        STATUS_COLOURS["failed"][0],
        STATUS_COLOURS["invalid"][0],
    ]
    widths = {k: v.width for k, v in sheet.column_dimensions.items()}
    assert 8 <= widths["A"] < 20  # 'action'
    assert widths["C"] > 40  # the long comment
    assert widths["E"] <= 61  # details are capped


def test_every_status_colour_and_text_cells(tmp_path: Path) -> None:
    statuses = ["succeeded", "skipped", "failed", "invalid", "unknown", "not-run", "planned"]
    path = tmp_path / "r.xlsx"
    write_report(path, ["Status", "serial", "status", "detail"], [["mine", "=1+1", s, ""] for s in statuses])
    sheet = openpyxl.load_workbook(path).worksheets[0]
    for row, status in enumerate(statuses, start=2):
        cell = sheet.cell(row, 3)
        expected = STATUS_COLOURS.get(status, ("#000000", ""))[0]
        assert _fill(cell) == expected, status
        assert _fill(sheet.cell(row, 1)) == "#000000"  # the job's own 'Status' column stays plain
        assert sheet.cell(row, 2).value == "=1+1" and sheet.cell(row, 2).data_type == "s"
    assert {"amber": _fill(sheet.cell(6, 3)), "grey": _fill(sheet.cell(3, 3))} == {
        "amber": "#FFEB9C",
        "grey": "#EDEDED",
    }
