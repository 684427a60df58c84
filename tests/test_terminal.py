"""What a person sees on a terminal: the destructive prompt (what it destroys,
declined vs. Ctrl-C), the live bar's rate and ETA, and plain progress lines."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import CREDS, write_csv

from bulkmdm.cli import PlainEvents
from bulkmdm.model import Outcome, Status
from bulkmdm.sim.duostation import FACTS


def _on_terminal(
    args: list[str], env: dict[str, str], *, answer: str | None = None, timeout: float = 60
) -> tuple[int, str, float]:
    """Run a command on a pseudo-terminal; at its prompt type ``answer``, or
    (``answer`` None) press Ctrl-C. Returns the exit code, the screen text and
    the seconds from the prompt to the exit."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    seen = b""
    asked_at = 0.0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
                if not asked_at and b"Type" in seen and seen.rstrip().endswith(b":"):
                    asked_at = time.monotonic()
                    if answer is None:
                        proc.send_signal(signal.SIGINT)  # what Ctrl-C on its terminal sends
                    else:
                        os.write(master, answer.encode() + b"\r")
            elif proc.poll() is not None:
                break
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return proc.returncode, seen.decode(errors="replace"), time.monotonic() - asked_at


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMDM_")}
    env.update(CREDS, BULKMDM_STATE_DIR=str(tmp_path / "state"), TERM="dumb")
    return env


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
    return [
        sys.executable,
        "-m",
        "bulkmdm",
        "run",
        str(job),
        "--provider",
        "duostation",
        "--url",
        url,
        "--action",
        "wipe",
    ]


def test_prompt_names_what_it_destroys(duo: Any, tmp_path: Path) -> None:
    job = _wipe_job(tmp_path)
    code, text, _ = _on_terminal(_args(job, duo.url), _env(tmp_path), answer="no")
    assert code == 2, text
    assert "This will wipe 2 device(s) or user(s):" in text
    assert "line 2: wipe device FREEIPAD0001 (Elev-iPad 7A)" in text
    assert "line 3: wipe device 001234567890" in text
    assert "Type 2 to go ahead" in text
    assert "Declined" in text and "nterrupted" not in text
    assert duo.stats.mutating == 0
    assert not job.with_name("wipe.outcome.csv").exists()
    # a declined prompt leaves nothing to resume: the same command asks again
    code, text, _ = _on_terminal(_args(job, duo.url), _env(tmp_path), answer="2")
    assert code == 1, text  # NOSUCHSERIAL failed
    assert "Resuming" not in text
    assert duo.stats.mutating == 2


def test_ctrl_c_at_the_prompt_stops_at_once(duo: Any, tmp_path: Path) -> None:
    job = _wipe_job(tmp_path)
    code, text, seconds = _on_terminal(_args(job, duo.url), _env(tmp_path), answer=None)
    assert code == 130, text
    assert seconds < 5, seconds
    assert "Traceback" not in text and "Declined" not in text
    assert duo.stats.mutating == 0
    code, text, _ = _on_terminal(_args(job, duo.url), _env(tmp_path), answer="0")
    assert "Resuming" not in text


def test_the_bar_shows_rate_eta_and_invalid_rows(duo: Any, tmp_path: Path) -> None:
    rows = [["action", "serial"], ["lock", FACTS["untagged_device"]["serial"]], ["lock", ""], ["frobnicate", "X"]]
    job = write_csv(tmp_path / "lock.csv", rows)
    args = [sys.executable, "-m", "bulkmdm", "run", str(job), "--provider", "duostation", "--url", duo.url]
    code, text, _ = _on_terminal(args, _env(tmp_path), answer="")
    assert code == 1, text
    assert "rows/s" in text and "ETA" in text
    assert "3/3" in text and "2 invalid" in text


def test_plain_lines_count_rows_done_before_and_say_eta(capsys: Any) -> None:
    events = PlainEvents(every=0)
    events.start(10, 2, {"invalid": 2, "pending": 8})
    events.started -= 2.0
    events.advance([Outcome(2, Status.SUCCEEDED, "ok"), Outcome(3, Status.SUCCEEDED, "ok")])
    line = capsys.readouterr().err
    assert line.startswith("4/10 rows (2 invalid, 2 succeeded);"), line
    assert "1.0 rows/s, ETA 0:06" in line
