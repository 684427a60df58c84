"""What a person sees on a terminal: the destructive prompt (what it destroys,
declined vs. Ctrl-C), the live bar's rate and ETA, and plain progress lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import cli_env, on_terminal, run_cmd, write_csv

from bulkmdm.cli import PlainEvents
from bulkmdm.model import Outcome, Reason, Status
from bulkmdm.sim.duostation import FACTS


def _wipe_job(tmp_path: Path) -> Path:
    return write_csv(
        tmp_path / "wipe.csv",
        [
            ["serial", "name"],
            [FACTS["untagged_device"]["serial"], "Elev-iPad 7A"],
            [FACTS["leading_zero_serial"], ""],
            ["NOSUCHSERIAL", ""],
        ],
    )


def _args(job: Path, url: str) -> list[str]:
    return run_cmd(job, url, "--action", "wipe")


def test_prompt_names_what_it_destroys(duo: Any, tmp_path: Path) -> None:
    job = _wipe_job(tmp_path)
    code, text, _ = on_terminal(_args(job, duo.url), cli_env(tmp_path, TERM="dumb"), answer="no")
    assert code == 2, text
    assert "This will wipe 2 devices:" in text
    assert "line 2: wipe device FREEIPAD0001 (Elev-iPad 7A)" in text
    assert "line 3: wipe device 001234567890" in text
    assert "Type 2 to go ahead" in text
    assert "Declined" in text and "nterrupted" not in text
    assert duo.stats.mutating == 0
    assert not job.with_name("wipe.outcome.csv").exists()
    # a declined prompt leaves nothing to resume: the same command asks again
    code, text, _ = on_terminal(_args(job, duo.url), cli_env(tmp_path, TERM="dumb"), answer="2")
    assert code == 1, text  # NOSUCHSERIAL failed
    assert "Resuming" not in text
    assert duo.stats.mutating == 2


def test_ctrl_c_at_the_prompt_stops_at_once(duo: Any, tmp_path: Path) -> None:
    job = _wipe_job(tmp_path)
    code, text, seconds = on_terminal(_args(job, duo.url), cli_env(tmp_path, TERM="dumb"), answer=None)
    assert code == 130, text
    assert seconds < 5, seconds
    assert "Traceback" not in text and "Declined" not in text
    assert duo.stats.mutating == 0
    code, text, _ = on_terminal(_args(job, duo.url), cli_env(tmp_path, TERM="dumb"), answer="0")
    assert "Resuming" not in text


def test_the_bar_shows_rate_eta_and_invalid_rows(duo: Any, tmp_path: Path) -> None:
    rows = [["action", "serial"], ["lock", FACTS["untagged_device"]["serial"]], ["lock", ""], ["frobnicate", "X"]]
    job = write_csv(tmp_path / "lock.csv", rows)
    args = run_cmd(job, duo.url)
    code, text, _ = on_terminal(args, cli_env(tmp_path, TERM="dumb"), answer="")
    assert code == 1, text
    assert "rows/s" in text and "ETA" in text
    assert "3/3" in text and "2 invalid" in text


def test_plain_lines_count_rows_done_before_and_say_eta(capsys: Any) -> None:
    events = PlainEvents(every=0)
    events.start(10, 2, {"invalid": 2, "pending": 8})
    events.started -= 2.0
    events.advance(
        [Outcome(2, Status.SUCCEEDED, "ok", reason=Reason.DONE), Outcome(3, Status.SUCCEEDED, "ok", reason=Reason.DONE)]
    )
    line = capsys.readouterr().err
    assert line.startswith("4/10 rows (2 succeeded, 2 invalid);"), line
    assert "1.0 rows/s, ETA 0:06" in line
