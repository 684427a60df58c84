"""The demo runs end to end, and jobs/ holds exactly what it generates."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from conftest import read_report

from bulkmdm.cli import main
from bulkmdm.demo import _fleets, write_jobs
from bulkmdm.jobfile import read_job

JOBS = Path(__file__).parent.parent / "jobs"


def test_jobs_folder_matches_the_demo_fleet(tmp_path: Path) -> None:
    for path in write_jobs(tmp_path, *(app["state"] for app in _fleets())):
        shipped = JOBS / path.name
        assert shipped.exists(), f"run: python -m bulkmdm.demo jobs ({path.name} missing)"
        assert read_job(shipped).rows == read_job(path).rows, f"jobs/{path.name} is stale"


def test_demo_runs(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["demo"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Ivanti received 3 changing requests for 303 rows" in result.output
    assert "banyan-lost.csv --provider banyan" in result.output and "9 rows: 8 succeeded, 1 skipped" in result.output
    assert "manageengine-classes.csv --provider manageengine" in result.output
    # the wipe goes from pending to confirmed as the simulated iPads check in; the one that is off stays pending
    assert "0/8 confirmed, 8 pending" in result.output and "7/8 confirmed, 1 pending" in result.output
    wiped = read_report(tmp_path / "bulkmdm-demo" / "ivanti-wipe.outcome.csv")
    assert [r["device_status"] for r in wiped] == ["confirmed"] * 7 + ["pending"]
    assert "Undo file: " + str(tmp_path / "bulkmdm-demo" / "banyan-lost.undo.csv") in result.output
    # every command it printed names a simulator it says how to start again, on the same port
    restart = dict(re.findall(r"bulkmdm sim (\w+) --port (\d+)", result.output))
    for provider, port in re.findall(
        r"^\$ bulkmdm run \S+ --provider (\w+) --url http://127.0.0.1:(\d+)", result.output, re.M
    ):
        assert restart[provider] == port, provider
    assert set(restart) == {"duostation", "ivanti", "manageengine", "banyan"}
    message = read_report(tmp_path / "bulkmdm-demo" / "duostation-message.outcome.csv")
    assert [r["status"] for r in message] == ["succeeded"] * 60
