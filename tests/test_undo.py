"""The undo file: a run that changed anything ends with `Undo file: PATH`, a
job that, run like any other, puts back what the run changed; what cannot be
undone is named in the summary and left out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import read_report, write_csv
from test_duostation_data import JOB, snapshot


def test_running_the_undo_file_restores_the_state(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    before = snapshot(duo)
    job = write_csv(tmp_path / "friday.csv", JOB)
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url])
    assert res.exit_code == 0, res.output
    assert snapshot(duo) != before
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("Undo file: "), res.output
    undo = Path(last.removeprefix("Undo file: "))
    assert undo == tmp_path / "friday.undo.csv"
    assert "Cannot be undone (left out of the undo file): 1 assign-user, 1 lock." in res.output
    rows = read_report(undo)
    # last change first, each the opposite of what the run did
    assert [r["action"] for r in rows] == ["move-user", "assign-user", "tag-user", "untag-user", "tag", "untag"]

    res = run_cli(["run", str(undo), "--provider", "duostation", "--url", duo.url])
    assert res.exit_code == 0, res.output
    assert [r["status"] for r in res.report] == ["succeeded"] * 6
    assert snapshot(duo) == before
    # undoing the undo gets the same name, not friday.undo.undo.csv
    assert res.output.strip().splitlines()[-1] == f"Undo file: {undo}"


def test_a_dry_run_or_a_run_that_changed_nothing_has_no_undo_file(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = write_csv(tmp_path / "job.csv", JOB)
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url, "--dry-run"])
    assert "Undo file" not in res.output and not (tmp_path / "job.undo.csv").exists()
    lock = write_csv(tmp_path / "lock.csv", [["action", "serial"], JOB[-1][:2]])
    res = run_cli(["run", str(lock), "--provider", "duostation", "--url", duo.url])
    assert res.exit_code == 0, res.output
    assert "Undo file" not in res.output and "Cannot be undone (left out of the undo file): 1 lock." in res.output
