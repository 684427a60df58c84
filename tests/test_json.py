"""--json on run and export: stdout is JSON lines a script can read, the last one a
summary with counts, report, undo and exit; people's messages stay on stderr."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from conftest import CREDS, read_report, unique_devices, write_csv

from bulkmdm.cli import main
from bulkmdm.jsonout import JsonLines, JsonProgress
from bulkmdm.model import Outcome, Reason, Status
from bulkmdm.events import QuietEvents

STATUSES = ["succeeded", "skipped", "planned", "failed", "invalid", "unknown", "not-run"]


def invoke(args: list[str], env: dict[str, str] | None = None) -> tuple[int, list[dict[str, Any]], str]:
    """The exit code, stdout parsed line by line (every line must be JSON), and stderr."""
    result = CliRunner().invoke(main, args, env={**CREDS, **(env or {})}, catch_exceptions=False)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return result.exit_code, lines, result.stderr


def test_run_json_ends_with_a_summary_and_keeps_messages_on_stderr(duo: Any, tmp_path: Path) -> None:
    (serial, _), (other, _) = unique_devices(duo, 2)
    job = write_csv(tmp_path / "tags.csv", [["serial", "tag"], [serial, "Elev-iPad"], [other, "No such tag"]])
    code, lines, stderr = invoke(["run", str(job), "-p", "duostation", "-u", duo.url, "-a", "tag", "--json"])
    assert code == 1
    assert lines[0]["event"] == "start" and lines[0]["total"] == 2
    summary = lines[-1]
    assert [line["event"] for line in lines].count("summary") == 1
    assert summary["event"] == "summary" and summary["exit"] == 1 and summary["command"] == "run"
    assert list(summary["counts"]) == STATUSES
    assert summary["counts"]["succeeded"] == 1 and summary["counts"]["failed"] == 1
    assert summary["rows"] == 2 and summary["dry_run"] is False
    assert [r["status"] for r in read_report(Path(summary["report"]))] == ["succeeded", "failed"]
    assert summary["undo"] is not None and Path(summary["undo"]).is_file()
    assert summary["failures"] == [{"reason": "Tag 'No such tag' was not found.", "rows": 1, "lines": [3]}]
    # what a person reads is all on stderr, the undo line included
    assert "2 rows: 1 succeeded, 1 failed" in stderr and f"Undo file: {summary['undo']}" in stderr
    # the README's sample summary has exactly these fields
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    (sample,) = re.findall(r"```json\n(.*?)\n```", readme, flags=re.S)
    shown = json.loads(sample)
    assert list(shown) == list(summary) and list(shown["counts"]) == list(summary["counts"])


def test_dry_run_json_has_no_undo_file(duo: Any, tmp_path: Path) -> None:
    ((serial, _),) = unique_devices(duo, 1)
    job = write_csv(tmp_path / "tags.csv", [["serial", "tag"], [serial, "Elev-iPad"]])
    code, lines, _ = invoke(["run", str(job), "-p", "duostation", "-u", duo.url, "-a", "tag", "--dry-run", "--json"])
    summary = lines[-1]
    assert code == 0 == summary["exit"]
    assert summary["counts"]["planned"] == 1 and summary["undo"] is None and summary["dry_run"] is True
    assert summary["report"].endswith("tags.dryrun.csv")


def test_a_run_that_cannot_start_still_ends_with_a_summary(tmp_path: Path) -> None:
    job = write_csv(tmp_path / "tags.csv", [["serial", "tag"], ["X1", "t"]])
    code, lines, stderr = invoke(
        ["run", str(job), "-p", "duostation", "-u", "http://127.0.0.1:9", "-a", "nope", "--json"]
    )
    assert code == 2
    (summary,) = lines
    assert summary["event"] == "summary" and summary["exit"] == 2 and summary["counts"] == {}
    assert summary["report"] is None and summary["undo"] is None
    assert summary["error"] in stderr and "nope" in summary["error"]


def test_export_json(duo: Any, tmp_path: Path) -> None:
    out = tmp_path / "fleet.csv"
    code, lines, stderr = invoke(["export", "-p", "duostation", "-u", duo.url, "-o", str(out), "--json"])
    assert code == 0
    summary = lines[-1]
    devices = len(read_report(out))
    assert summary == {
        "event": "summary",
        "counts": {"exported": devices},
        "report": str(out),
        "undo": None,
        "exit": 0,
        "command": "export",
        "devices": devices,
    }
    assert f"{devices} devices written to {out}." in stderr


def test_progress_lines_carry_counts_and_rate() -> None:
    out = io.StringIO()
    progress = JsonProgress(QuietEvents(), JsonLines(out), every=0.0)
    progress.start(3, 1, {"invalid": 1})
    progress.advance(
        [Outcome(0, Status.SUCCEEDED, "ok", reason=Reason.DONE), Outcome(1, Status.FAILED, "no", reason=Reason.REFUSED)]
    )
    start, step = (json.loads(line) for line in out.getvalue().splitlines())
    assert start == {"event": "start", "total": 3, "done": 1, "counts": {**dict.fromkeys(STATUSES, 0), "invalid": 1}}
    assert step["event"] == "progress" and step["done"] == 3 and step["total"] == 3
    assert step["counts"]["succeeded"] == step["counts"]["failed"] == step["counts"]["invalid"] == 1
    assert step["rate"] >= 0


def test_an_export_that_cannot_reach_the_mdm_ends_with_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "fleet.csv"
    code, lines, stderr = invoke(["export", "-p", "duostation", "-u", "http://127.0.0.1:9", "-o", str(out), "--json"])
    assert code == 2
    summary = lines[-1]
    assert summary["event"] == "summary" and summary["exit"] == 2 and summary["command"] == "export"
    assert summary["error"] in stderr and not out.exists()
