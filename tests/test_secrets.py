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


def test_outcomes_are_cleaned_field_by_field_and_kept_when_clean() -> None:
    from urllib.parse import quote

    from bulkmdm.model import Outcome, Reason, Status
    from bulkmdm.shown import REDACTED, Secrets

    secrets = Secrets([SECRET])
    clean = Outcome(0, Status.SUCCEEDED, "The message was sent.", 200, 1, "device_id=7", reason=Reason.DONE)
    echoed = Outcome(1, Status.FAILED, f"Refused: bad password {SECRET}.", 400, 1, "device_id=8", reason=Reason.REFUSED)
    in_resolved = Outcome(2, Status.FAILED, "Refused.", 400, 1, f"user={quote(SECRET)}", reason=Reason.REFUSED)
    hidden = Outcome(3, Status.FAILED, f"Refused\x1b[2J {SECRET}", 400, 1, "device_id=\u202e9", reason=Reason.REFUSED)
    # a secret's form that spans the two texts is not in either: nothing is taken out
    spanning = Outcome(4, Status.FAILED, SECRET[:5], 400, 1, SECRET[5:], reason=Reason.REFUSED)
    out = secrets.outcomes([clean, echoed, in_resolved, hidden, spanning])
    assert out[0] is clean and out[4] is spanning
    assert out[1].detail == f"Refused: bad password {REDACTED}." and out[1].resolved == "device_id=8"
    assert out[2].detail == "Refused." and out[2].resolved == f"user={REDACTED}"
    assert out[3].detail == f"Refused {REDACTED}" and out[3].resolved == "device_id=9"
    # a clean batch comes back as it was, and so do outcomes a secret's form spans (in the batch, not in one)
    other = Outcome(5, Status.FAILED, SECRET[5:], 400, 1, "", reason=Reason.REFUSED)
    halves = Outcome(6, Status.FAILED, SECRET[:5], 400, 1, "", reason=Reason.REFUSED)
    assert all(a is b for a, b in zip(secrets.outcomes([clean, other]), [clean, other], strict=True))
    assert all(a is b for a, b in zip(secrets.outcomes([halves, other]), [halves, other], strict=True))
