"""Shared by the web tests: a real `bulkmdm serve` in a child process."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def serving(state_dir: Path) -> Iterator[str]:
    """Start `bulkmdm serve --port 0` and yield the address it prints (with its secret)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMDM_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulkmdm", "serve", "--port", "0", "--no-browser", "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
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
