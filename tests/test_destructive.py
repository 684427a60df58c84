"""Destructive actions: typed confirmation on a terminal, --yes without one."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import CREDS, write_csv

from bulkmdm.sim.duostation import FACTS


def _run_on_terminal(args: list[str], answer: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run a command with a pseudo-terminal as stdin/stderr, answer its prompt."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    seen = b""
    answered = False
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
                if not answered and b"Type" in seen and seen.rstrip().endswith(b":"):
                    os.write(master, answer.encode() + b"\r")
                    answered = True
            elif proc.poll() is not None:
                break
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return proc.returncode, seen.decode(errors="replace")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMDM_")}
    env.update(CREDS, BULKMDM_STATE_DIR=str(tmp_path / "state"), TERM="dumb")
    return env


def test_terminal_confirmation_typed_count(duo: Any, tmp_path: Path) -> None:
    job = write_csv(
        tmp_path / "wipe.csv", [["serial"], [FACTS["untagged_device"]["serial"]], [FACTS["leading_zero_serial"]]]
    )
    args = [
        sys.executable,
        "-m",
        "bulkmdm",
        "run",
        str(job),
        "--provider",
        "duostation",
        "--url",
        duo.url,
        "--action",
        "wipe",
    ]
    code, text = _run_on_terminal(args, "3", _env(tmp_path))
    assert code == 2, text
    assert "Type 2" in text and "Declined" in text
    assert duo.stats.mutating == 0
    code, text = _run_on_terminal(args, "2", _env(tmp_path))
    assert code == 0, text
    assert duo.stats.mutating == 2
    assert duo.call(lambda: len([c for c in duo.app["state"].commands if c["command"] == "wipedevice"])) == 2


def test_dry_run_of_destructive_job_needs_no_confirmation(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = write_csv(tmp_path / "wipe.csv", [["serial"], [FACTS["untagged_device"]["serial"]]])
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url, "--action", "wipe", "--dry-run"])
    assert res.exit_code == 0 and res.report[0]["status"] == "planned"
    assert duo.stats.mutating == 0
