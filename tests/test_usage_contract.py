"""Odd command lines are bad usage (exit 2, one sentence, nothing sent), and
a report keeps a job's own columns even when one of them is named like an
outcome column (CONTRACT.md: exit codes, re-running)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bulkmdm.columns import OUTCOME_COLUMNS
from bulkmdm.sim.duostation import FACTS
from conftest import read_report, write_csv


def _job(tmp_path: Path, name: str = "job.csv") -> Path:
    serial = FACTS["untagged_device"]["serial"]
    return write_csv(tmp_path / name, [["serial", "tag", "action"], [serial, "Musik", "tag"]])


@pytest.mark.parametrize(
    "extra",
    [
        ["--rate", "0"],
        ["--rate", "0/min"],
        ["--timeout", "inf"],
        ["--max-destructive", "-1"],
    ],
)
def test_odd_limits_are_bad_usage(duo: Any, run_cli: Any, tmp_path: Path, extra: list[str]) -> None:
    job = _job(tmp_path)
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url, *extra])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("Error: ") and len(res.output.strip().splitlines()) == 1, res.output
    assert "internal error" not in res.output
    assert duo.stats.requests == 0
    assert not res.report_path.exists()


@pytest.mark.parametrize(
    "url",
    [
        "http://",
        "http://[::1",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:0",
        "http://a b",
        "http://a..b",
        "http://" + "a" * 300 + ".com",
    ],
)
def test_a_url_that_names_no_server_is_bad_usage(run_cli: Any, tmp_path: Path, url: str) -> None:
    job = _job(tmp_path)
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", url])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("Error: --url") and len(res.output.strip().splitlines()) == 1, res.output
    assert not res.report_path.exists()


def test_report_path_that_is_a_folder_sends_nothing(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = _job(tmp_path)
    folder = tmp_path / "out.csv"
    folder.mkdir()
    res = run_cli(
        ["run", str(job), "--provider", "duostation", "--url", duo.url, "--report", str(folder)],
        report=tmp_path / "none.csv",
    )
    assert res.exit_code == 2, res.output
    assert "folder" in res.output
    assert duo.stats.requests == 0


def test_sim_port_out_of_range_is_bad_usage(run_cli: Any) -> None:
    res = run_cli(["sim", "duostation", "--port", "-5"])
    assert res.exit_code == 2, res.output
    assert "internal error" not in res.output


def test_default_report_keeps_the_extension_as_written(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = _job(tmp_path, "JOB.CSV")
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "JOB.outcome.CSV").exists()


@pytest.mark.parametrize("ext", ["csv", "xlsx"])
def test_a_job_column_named_status_survives_rerunning_the_report(
    duo: Any, run_cli: Any, tmp_path: Path, ext: str
) -> None:
    serial = FACTS["untagged_device"]["serial"]
    rows = [
        ["serial", "tag", "action", "Status", "note"],
        [serial, "Musik", "tag", "in use", "a"],
        ["NOSUCHSERIAL", "Musik", "tag", "spare", "b"],
    ]
    job = write_csv(tmp_path / "job.csv", rows)
    first = run_cli(
        ["run", str(job), "--provider", "duostation", "--url", duo.url, "--report", str(tmp_path / f"r1.{ext}")]
    )
    assert [r["status"] for r in first.report] == ["succeeded", "failed"]
    mutating = duo.stats.mutating
    again = run_cli(
        [
            "run",
            str(tmp_path / f"r1.{ext}"),
            "--provider",
            "duostation",
            "--url",
            duo.url,
            "--report",
            str(tmp_path / f"r2.{ext}"),
        ]
    )
    assert again.exit_code == 1, again.output
    assert duo.stats.mutating == mutating  # the succeeded row is carried, not resent
    path = tmp_path / f"r2.{ext}"
    if ext == "csv":
        import csv

        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh))
    else:
        import openpyxl

        header = [c.value for c in next(openpyxl.load_workbook(path).worksheets[0].iter_rows())]
    assert header == ["serial", "tag", "action", "Status", "note", *OUTCOME_COLUMNS]
    report = read_report(path)
    assert [r["Status"] for r in report] == ["in use", "spare"]
    assert [r["status"] for r in report] == ["succeeded", "failed"]
    assert [r["note"] for r in report] == ["a", "b"]


def test_every_row_missing_a_column_of_its_own_action_is_exit_2(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    serial = FACTS["untagged_device"]["serial"]
    job = write_csv(tmp_path / "mixed.csv", [["serial", "action"], [serial, "tag"], [serial, "message"]])
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url])
    assert res.exit_code == 2, res.output
    assert "No row of" in res.output and "line 2" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not res.report_path.exists()
    assert duo.stats.requests == 0
