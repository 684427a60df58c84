"""The command line's surface: help for every command, the README names
them all, usage errors are one sentence, start-up stays light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from conftest import write_csv

from bulkmdm.cli import main

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_has_help_and_is_in_readme(name: str) -> None:
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output
    assert main.commands[name].help
    assert f"bulkmdm {name}" in README


def test_every_run_option_is_in_readme() -> None:
    command = main.commands["run"]
    assert isinstance(command, click.Command)
    for param in command.params:
        if isinstance(param, click.Option):
            assert any(opt in README for opt in param.opts), param.opts


def test_readme_has_the_two_commands() -> None:
    assert "bulkmdm demo" in README and "pytest" in README
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert 'pip install --quiet -e ".[test]" && python -m pytest' in ci


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys; from bulkmdm.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('pandas', 'aiohttp', 'rich', 'sqlite3') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_missing_job_file_is_one_sentence(run_cli: Any, tmp_path: Path) -> None:
    res = run_cli(["run", str(tmp_path / "nope.csv"), "--provider", "duostation", "--url", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_header_only_file_exit_2(run_cli: Any, tmp_path: Path) -> None:
    job = tmp_path / "h.csv"
    job.write_text("serial,action\n")
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "no rows" in res.output


def test_refused_credentials_leave_the_earlier_report_alone(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    from bulkmdm.sim.duostation import FACTS

    job = write_csv(tmp_path / "c.csv", [["serial"], [FACTS["untagged_device"]["serial"]], ["X"]])
    args = ["run", str(job), "--provider", "duostation", "--url", duo.url, "--action", "lock"]
    first = run_cli(args)
    assert [r["status"] for r in first.report] == ["succeeded", "failed"]
    before = first.report_path.read_bytes()
    res = run_cli([*args, "--fresh"], env={"BULKMDM_PASSWORD": "wrong-password-123"})
    assert res.exit_code == 2 and "credentials" in res.output
    # the cause and the fix
    assert "check BULKMDM_USERNAME and BULKMDM_PASSWORD" in res.output, res.output
    assert first.report_path.read_bytes() == before  # nothing was run, nothing overwritten
    again = run_cli([args[0], str(first.report_path), *args[2:]])
    assert again.exit_code == 1, again.output
    assert "Resuming" not in again.output
    assert [r["status"] for r in again.report] == ["succeeded", "failed"]
    assert duo.stats.mutating == 1  # the lock was sent once, by the first run


def test_an_action_the_provider_lacks_is_bad_usage(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = write_csv(tmp_path / "b.csv", [["serial"], ["X"]])
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url, "--action", "ban"])
    assert res.exit_code == 2 and "duostation cannot ban" in res.output
    assert not res.report_path.exists() and duo.stats.requests == 0


def test_a_setting_the_provider_refuses_writes_no_report(run_cli: Any, tmp_path: Path) -> None:
    job = write_csv(tmp_path / "p.csv", [["serial"], ["X"]])
    res = run_cli(["run", str(job), "--provider", "ivanti", "--url", "http://127.0.0.1:9", "--action", "lock"])
    assert res.exit_code == 2 and "partition" in res.output
    assert not res.report_path.exists()


def test_rows_failing_alike_are_one_reason_naming_no_single_rows_value(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    """Three serials not found are one reason, told without the first row's
    serial (lines 3 and 4 are not 'NOPE-1'); rows failing with one and the
    same detail keep its value."""
    from conftest import unique_devices

    (a, _), (b, _) = unique_devices(duo, 2)
    job = write_csv(
        tmp_path / "g.csv",
        [["serial", "tag"], ["NOPE-1", "Musik"], ["NOPE-2", "Musik"], ["NOPE-3", "Musik"]]
        + [[a, "No such tag"], [b, "No such tag"]],
    )
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url, "--action", "tag"])
    assert res.exit_code == 1, res.output
    summary = res.output[res.output.index("What went wrong") :]
    assert "3 x Serial '…' was not found" in summary and "NOPE" not in summary, summary
    assert "lines 2, 3, 4" in summary
    assert "2 x " in summary and "'No such tag'" in summary, summary
