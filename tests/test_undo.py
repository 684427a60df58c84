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
    # the undo of the undo never replaces the file just run (found from
    # outside: it did, and the same command then redid what was undone)
    assert res.output.strip().splitlines()[-1] == f"Undo file: {tmp_path / 'friday.undo-2.csv'}"
    assert [r["action"] for r in read_report(undo)] == [r["action"] for r in rows]
    again = run_cli(["run", str(undo), "--provider", "duostation", "--url", duo.url])
    assert "already ran to the end" in again.output or "finished" in again.output, again.output
    assert snapshot(duo) == before


def test_a_dry_run_or_a_run_that_changed_nothing_has_no_undo_file(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = write_csv(tmp_path / "job.csv", JOB)
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url, "--dry-run"])
    assert "Undo file" not in res.output and not (tmp_path / "job.undo.csv").exists()
    lock = write_csv(tmp_path / "lock.csv", [["action", "serial"], JOB[-1][:2]])
    res = run_cli(["run", str(lock), "--provider", "duostation", "--url", duo.url])
    assert res.exit_code == 0, res.output
    assert "Undo file" not in res.output and "Cannot be undone (left out of the undo file): 1 lock." in res.output


def test_running_the_report_again_keeps_the_first_runs_undo_file(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    """The report run again writes an undo file of its own beside the first
    run's, and the first run's changes are not called "cannot be undone"."""
    from conftest import unique_devices

    (a, _), (b, _) = unique_devices(duo, 2)
    job = write_csv(tmp_path / "job.csv", [["serial", "tag"], [a, "Musik"], [b, "Musikk"]])
    args = ["--provider", "duostation", "--url", duo.url, "--action", "tag"]
    first = run_cli(["run", str(job), *args])
    assert [r["status"] for r in first.report] == ["succeeded", "failed"], first.output
    undo = tmp_path / "job.undo.csv"
    assert [(r["action"], r["serial"]) for r in read_report(undo)] == [("untag", a)]
    fixed = first.report_path.read_text(encoding="utf-8-sig").replace("Musikk", "Musik")
    first.report_path.write_text(fixed, encoding="utf-8")
    again = run_cli(["run", str(first.report_path), *args])
    assert [r["status"] for r in again.report] == ["succeeded", "succeeded"], again.output
    assert "Cannot be undone" not in again.output, again.output
    assert again.output.strip().splitlines()[-1] == f"Undo file: {tmp_path / 'job.undo-2.csv'}"
    assert [(r["action"], r["serial"]) for r in read_report(undo)] == [("untag", a)]
    assert [(r["action"], r["serial"]) for r in read_report(tmp_path / "job.undo-2.csv")] == [("untag", b)]
