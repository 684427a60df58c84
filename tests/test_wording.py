"""One voice: counts in one order, one wording per situation, destructive actions
said per action, and plurals that agree."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from bulkmdm.actions import destroys
from bulkmdm.cli import main
from bulkmdm.report import NOT_RUN_DETAIL
from bulkmdm.schedule import INTERRUPTED
from bulkmdm.sim import client_env, load
from bulkmdm.sim.common import SimServer
from bulkmdm.errors import AmbiguousError
from bulkmdm.model import JobRow, Step
from bulkmdm.providers.base import outcome_from_error
from bulkmdm.words import CHECK_THEN_RESEND, IN_FLIGHT_DETAIL, counts_list, counts_text, plural

JOBS = Path(__file__).parent.parent / "jobs"


def test_counts_come_in_one_order_and_agree_in_number() -> None:
    counts = {"not-run": 2, "invalid": 1, "skipped": 3, "succeeded": 1, "failed": 0, "planned": 4, "unknown": 5}
    assert counts_list(counts) == "1 succeeded, 3 skipped, 4 planned, 1 invalid, 5 unknown, 2 not-run"
    assert counts_text({"succeeded": 1}) == "1 row: 1 succeeded"
    assert counts_text({"failed": 2}, 2) == "2 rows: 2 failed"
    assert (plural(1, "row"), plural(0, "row"), plural(2, "entry")) == ("1 row", "0 rows", "2 entries")


def test_destructive_actions_are_said_per_action() -> None:
    assert destroys({"wipe": 3}) == "wipe 3 devices"
    assert destroys({"delete-user": 1}) == "delete 1 user"
    assert destroys({"delete-user": 1, "wipe": 3, "retire": 1}) == "wipe 3 devices, retire 1 device and delete 1 user"
    assert destroys({"delete-device": 2, "delete-user": 1}) == "delete 2 devices and 1 user"


def test_a_row_never_sent_reads_the_same_whatever_stopped_the_run() -> None:
    assert INTERRUPTED == NOT_RUN_DETAIL == "Not sent: the run stopped first. Run the same command again to continue."


def test_an_unknown_row_says_to_check_it_in_the_mdm_whatever_it_names() -> None:
    """A user row left unknown (in flight at the stop, or answered ambiguously)
    is not told to check "the device": the same words serve devices and users."""
    step = Step(JobRow(0, "move-user", {"email": "ada@example.org"}), "move-user", "ada@example.org")
    ambiguous = outcome_from_error(step, AmbiguousError("no answer came back; it cannot be read back"))
    for detail in (IN_FLIGHT_DETAIL, ambiguous.detail):
        assert detail.endswith(CHECK_THEN_RESEND) and "device" not in detail


def test_dry_run_and_max_destructive_say_what_each_action_destroys(tmp_path: Path) -> None:
    job = Path(shutil.copy(JOBS / "banyan-lost.csv", tmp_path / "lost.csv"))
    with SimServer(load("banyan")(devices=3000)) as sim:
        base = ["run", str(job), "-p", "banyan", "-u", sim.url]
        dry = CliRunner().invoke(main, [*base, "--dry-run"], env=client_env("banyan"))
        capped = CliRunner().invoke(main, [*base, "--yes", "--max-destructive", "1"], env=client_env("banyan"))
    assert dry.exit_code == 0, dry.output
    assert "9 rows: 1 skipped, 8 planned." in dry.stderr
    assert "  ban: 1 skipped, 4 planned" in dry.stderr
    assert "  would delete 2 devices: " in dry.stderr and "  would delete 1 user: " in dry.stderr
    assert "request(s)" not in dry.stderr and "The real run will send 8 requests" in dry.stderr
    assert capped.exit_code == 2
    assert "This job would delete 2 devices and 1 user, more than --max-destructive 1; nothing was sent." in (
        capped.stderr
    )


def test_already_finished_names_counts_in_the_one_order(duo: Any, tmp_path: Path, run_cli: Any) -> None:
    from conftest import unique_devices, write_csv

    (serial, _), (other, _) = unique_devices(duo, 2)
    job = write_csv(tmp_path / "j.csv", [["serial"], [serial], [other], ["NOSUCH"]])
    args = ["run", str(job), "-p", "duostation", "-u", duo.url, "-a", "lock"]
    assert run_cli(args).exit_code == 1
    again = run_cli(args)
    assert "finished " in again.output and ": 2 succeeded, 1 failed); nothing was sent." in again.output
