"""A smoke run of the benchmark (small sizes): every figure is measured and
printed with its target. The full bench (`python bench/run.py`) is not run in
CI; its figures are too slow and too noisy for a test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent.parent / "bench" / "run.py"


def test_quick_bench_prints_every_figure() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    for figure in (
        "throughput: message",
        "requests per row: DuoSTATION tag",
        "requests per row: Ivanti lock",
        "known (--rate",
        "token bucket, burst 1 s",
        "token bucket, burst 0.2 s",
        "sliding 1-s window",
        "per fixed 10-s window",
        "per fixed 60-s window",
        "halved at",
        "5% random 429s",
        "fault mix: DuoSTATION tag",
        "unknown capacity:",
        "CPU per row, marginal",
        "throughput, --rate none",
        "CPU per row:",
        "XLSX (read_job)",
        "CSV (read_job)",
        "peak memory",
        "start-up: bulkmdm --help",
    ):
        assert figure in out, out
    assert "19 figures" in out, out
