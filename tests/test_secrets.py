"""Secrets stay secret: not in reports, journal, logs or error messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import write_csv

from bulkmdm.sim.common import SimServer
from bulkmdm.sim.duostation import FACTS, make_app

SECRET = "Pa55-very-secret-word"


def test_password_appears_nowhere(run_cli: Any, tmp_path: Path) -> None:
    with SimServer(make_app(devices=50, password=SECRET)) as sim:
        sim.faults.update({"error_rate": 0.3, "seed": 2, "mutating_only": True})
        job = write_csv(
            tmp_path / "s.csv", [["serial", "message"], [FACTS["untagged_device"]["serial"], "hej"], ["NOPE", "hej"]]
        )
        res = run_cli(
            ["run", str(job), "--provider", "duostation", "--url", sim.url, "--action", "message", "--verbose"],
            env={"BULKMDM_PASSWORD": SECRET},
        )
        assert res.exit_code == 1
        assert "POST /api/devices/" in res.output  # --verbose logs requests...
        bad = run_cli(
            [
                "run",
                str(job),
                "--provider",
                "duostation",
                "--url",
                sim.url,
                "--action",
                "message",
                "--verbose",
                "--fresh",
            ],
            env={"BULKMDM_PASSWORD": SECRET + "x"},
        )
        assert bad.exit_code == 2
    encoded = __import__("base64").b64encode(f"admin:{SECRET}".encode()).decode()
    for text in (res.output, bad.output):
        assert SECRET not in text and encoded not in text and "Authorization" not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data and encoded.encode() not in data, path
