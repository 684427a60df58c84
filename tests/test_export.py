"""`bulkmdm export` against every simulator: every device once, serials and
ids as text, column names the job reader knows; with --action the export is
a job that runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bulkmdm.jobfile import read_job
from bulkmdm.sim.common import SimServer

from conftest import read_report

ENV = {
    "duostation": {"BULKMDM_USERNAME": "admin", "BULKMDM_PASSWORD": "admin"},
    "ivanti": {"BULKMDM_USERNAME": "admin", "BULKMDM_PASSWORD": "admin", "BULKMDM_PARTITION_ID": "1"},
    "manageengine": {"BULKMDM_API_KEY": "me-api-key"},
    "banyan": {"BULKMDM_TOKEN": "banyan-token"},
}
#: a read-only-safe action each vendor can do to every exported device (dry run only)
ACTION = {"duostation": "inventory", "ivanti": "checkin", "manageengine": None, "banyan": "ban"}


@pytest.fixture(params=sorted(ENV))
def vendor(request: pytest.FixtureRequest) -> Iterator[tuple[str, SimServer]]:
    from bulkmdm import sim

    with SimServer(sim.load(request.param)(devices=60, seed=2)) as server:
        yield request.param, server


@pytest.mark.parametrize("suffix", [".xlsx", ".csv"])
def test_export_lists_every_device_as_text(
    run_cli: Any, tmp_path: Path, vendor: tuple[str, SimServer], suffix: str
) -> None:
    name, server = vendor
    out = tmp_path / f"fleet{suffix}"
    # (--rate none here and below: what an export writes is tested, not its pace; at
    # ManageEngine's 100 calls a minute each export would take some ten seconds)
    result = run_cli(
        ["export", "--provider", name, "--url", server.url, "-o", str(out), "--rate", "none"], env=ENV[name]
    )
    assert result.exit_code == 0, result.output
    rows = read_report(out)
    assert rows, "no devices exported"
    header = list(rows[0])
    assert header[:2] == ["serial", "device_id"] or header[0] == "serial"
    assert "name" in header and "model" in header and ("email" in header or "user" in header)
    table = read_job(out)
    assert {"serial", "device_id"} <= set(table.canonical)
    ids = [r["device_id"] for r in rows]
    assert all(isinstance(i, str) for i in ids)
    assert len(ids) == len(set(ids)), "a device was exported twice"
    assert f"{len(rows)} devices written" in result.output


def test_an_export_with_an_action_is_a_job(run_cli: Any, tmp_path: Path, vendor: tuple[str, SimServer]) -> None:
    name, server = vendor
    action = ACTION[name]
    if action is None:
        pytest.skip(f"{name} has no action that takes only a serial")
    out = tmp_path / "job.csv"
    result = run_cli(
        ["export", "--provider", name, "--url", server.url, "-o", str(out), "--action", action, "--rate", "none"],
        env=ENV[name],
    )
    assert result.exit_code == 0, result.output
    run = run_cli(
        [
            "run",
            str(out),
            "--provider",
            name,
            "--url",
            server.url,
            "--dry-run",
            "--report",
            str(tmp_path / "job.dryrun.csv"),
        ],
        env=ENV[name],
    )
    statuses = {r["status"] for r in run.report} if run.report else set()
    assert statuses and statuses <= {"planned", "skipped", "failed"}, run.output
    assert server.stats.mutating == 0


def test_an_exports_calls_count_against_manageengines_daily_quota(run_cli: Any, tmp_path: Path) -> None:
    """An export's calls count against the day's budget, so the next run (and
    its dry run's "used today") knows what is left."""
    from bulkmdm import sim
    from bulkmdm.journal import Journal
    from bulkmdm.quota import tenant

    with SimServer(sim.load("manageengine")(devices=60, seed=2)) as server:
        out = tmp_path / "fleet.csv"
        args = ["export", "--provider", "manageengine", "--url", server.url, "-o", str(out), "--rate", "none"]
        result = run_cli(args, env=ENV["manageengine"])
        assert result.exit_code == 0, result.output
        calls = server.stats.requests
    assert calls > 0
    with Journal(tmp_path / "state") as journal:
        assert journal.calls_today(tenant("manageengine", server.url)) == calls
