"""`bulkmdm runs` (header, URL, profile) and `bulkmdm report RUN` (a new file unless --replace)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import read_report, write_csv

from bulkmdm.sim.duostation import FACTS


def test_runs_has_a_header_the_url_and_the_profile(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "config.toml").write_text(f'[profiles.skolan]\nprovider = "duostation"\nurl = "{duo.url}/"\n')
    env = {"BULKMDM_CONFIG_DIR": str(folder)}
    job = write_csv(tmp_path / "j.csv", [["serial", "action"], [FACTS["untagged_device"]["serial"], "lock"]])
    assert run_cli(["run", str(job), "--profile", "skolan"], env=env).exit_code == 0
    listed = run_cli(["runs"], env=env)
    header, row = listed.output.splitlines()
    assert header.split() == ["RUN", "STARTED", "STATE", "PROVIDER", "URL", "PROFILE", "JOB", "ROWS"]
    assert row.split()[0] == "1" and duo.url in row and "skolan" in row and "j.csv" in row
    assert "finished" in row and "1 succeeded" in row
    assert header.index("URL") == row.index(duo.url)  # columns line up


def test_report_writes_a_new_file_unless_replace(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = write_csv(tmp_path / "j.csv", [["serial", "action"], [FACTS["untagged_device"]["serial"], "lock"]])
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url])
    assert res.exit_code == 0
    res.report_path.write_text("edited in Excel\n", encoding="utf-8")
    first = run_cli(["report", "1"])
    assert first.exit_code == 0, first.output
    assert res.report_path.read_text(encoding="utf-8") == "edited in Excel\n"
    new = tmp_path / "j.outcome.run1.csv"
    assert f"Report: {new} (1 row)" in first.output
    assert read_report(new)[0]["status"] == "succeeded"
    second = run_cli(["report", "1"])
    assert str(tmp_path / "j.outcome.run1-2.csv") in second.output
    replaced = run_cli(["report", "1", "--replace"])
    assert replaced.exit_code == 0 and str(res.report_path) in replaced.output
    assert read_report(res.report_path)[0]["status"] == "succeeded"
    both = run_cli(["report", "1", "--replace", "--out", str(tmp_path / "x.csv")])
    assert both.exit_code == 2 and "not both" in both.output
