"""Shared by the web tests: a real `bulkmdm serve` in a child process."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def serve_process(state_dir: Path, env: dict[str, str], *flags: str) -> subprocess.Popen[str]:
    """`bulkmdm serve --port 0` in a child process, its output piped as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "bulkmdm", "serve", "--port", "0", *flags, "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@contextmanager
def serving(state_dir: Path) -> Iterator[str]:
    """Start `bulkmdm serve --port 0` and yield the address it prints (with its secret)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMDM_")}
    proc = serve_process(state_dir, env, "--no-browser")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("Open http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() is not None else "")
        yield line.removeprefix("Open ")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def downloaded_csv(page: Any, click: str, to: Path) -> list[list[str]]:
    """Click ``click`` on a Playwright ``page``, save the CSV it downloads at ``to``, and read it back."""
    with page.expect_download() as download:
        page.click(click)
    download.value.save_as(to)
    with open(to, newline="", encoding="utf-8-sig") as fh:
        return list(csv.reader(fh))


def screenshot(page: Any, tmp_path: Path, name: str, *, full_page: bool) -> Path:
    """A screenshot of ``page`` under ``tmp_path/screens``, copied to
    ``$SERVE_SCREENSHOTS`` when it is set (to look at them after a run)."""
    path = tmp_path / "screens" / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    if os.environ.get("SERVE_SCREENSHOTS"):
        target = Path(os.environ["SERVE_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return path
