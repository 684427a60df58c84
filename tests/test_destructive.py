"""Destructive actions: typed confirmation on a terminal, --yes without one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import cli_env, on_terminal, run_cmd, write_csv

from bulkmdm.sim.duostation import FACTS


def test_terminal_confirmation_typed_count(duo: Any, tmp_path: Path) -> None:
    job = write_csv(
        tmp_path / "wipe.csv", [["serial"], [FACTS["untagged_device"]["serial"]], [FACTS["leading_zero_serial"]]]
    )
    args = run_cmd(job, duo.url, "--action", "wipe")
    code, text = on_terminal(args, cli_env(tmp_path, TERM="dumb"), answer="3")[:2]
    assert code == 2, text
    assert "Type 2" in text and "Declined" in text
    assert duo.stats.mutating == 0
    code, text = on_terminal(args, cli_env(tmp_path, TERM="dumb"), answer="2")[:2]
    assert code == 0, text
    assert duo.stats.mutating == 2
    assert duo.call(lambda: len([c for c in duo.app["state"].commands if c["command"] == "wipedevice"])) == 2


def test_dry_run_of_destructive_job_needs_no_confirmation(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = write_csv(tmp_path / "wipe.csv", [["serial"], [FACTS["untagged_device"]["serial"]]])
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url, "--action", "wipe", "--dry-run"])
    assert res.exit_code == 0 and res.report[0]["status"] == "planned"
    assert duo.stats.mutating == 0
