"""A run never loses its record: the report and undo file can be written
before anything is sent, they are written on every way out (Ctrl-C, Ctrl-C
twice, SIGTERM, a crash), `bulkmdm report` rebuilds either from the journal,
and with the journal gone the report beside the job is the second record."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import cli_env, read_report, run_cmd, unique_devices, wait_for, write_csv

from bulkmdm.engine import RunOptions, run_job
from bulkmdm.events import QuietEvents
from bulkmdm.jobfile import read_job
from bulkmdm.model import Outcome
from bulkmdm.ownfiles import written
from bulkmdm.sim.common import SimServer
from bulkmdm.sim.duostation import FACTS, make_app

TAG = "-Staff"


def _tagged(sim: SimServer, devices: Sequence[tuple[str, str]]) -> set[str]:
    st = sim.app["state"]
    return sim.call(lambda: {s for s, d in devices if TAG in st.device_tags_of(d)})  # type: ignore[no-any-return]


def _tag_job(sim: SimServer, tmp_path: Path, n: int) -> tuple[Path, list[tuple[str, str]]]:
    st = sim.app["state"]
    sim.call(lambda: st.add_tag({"name": TAG}))
    devices = unique_devices(sim, n)
    return write_csv(tmp_path / "tags.csv", [["serial", "tag"], *[[s, TAG] for s, _ in devices]]), devices


def _undo_rows(path: Path, tmp_path: Path) -> list[dict[str, str]]:
    """An undo file's rows as bulkmdm reads them back (the formula guard taken off)."""
    table = read_job(path, own=written(tmp_path / "state"))
    return [dict(zip(table.headers, row, strict=True)) for row in table.rows]


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text and "internal error" not in text, text


# -- writable before the first change ------------------------------------------


def test_a_job_name_too_long_for_its_report_stops_before_anything_is_sent(duo: Any, tmp_path: Path) -> None:
    serial = FACTS["untagged_device"]["serial"]
    # 249 bytes: a legal name, but "<stem>.outcome.csv" is not
    job = write_csv(tmp_path / ("j" * 245 + ".csv"), [["serial"], [serial]])
    env = cli_env(tmp_path)
    res = subprocess.run(run_cmd(job, duo.url, "--action", "lock"), env=env, capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    _no_traceback(res.stderr)
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "--report" in res.stderr and "nothing was sent" in res.stderr
    assert duo.stats.mutating == 0
    # with a report name that fits, the run goes ahead, and its undo file's name is cut to fit
    st = duo.app["state"]
    duo.call(lambda: st.add_tag({"name": TAG}))
    tag_job = write_csv(tmp_path / ("t" * 245 + ".csv"), [["serial", "tag"], [serial, TAG]])
    report = tmp_path / "short.csv"
    res = subprocess.run(
        run_cmd(tag_job, duo.url, "--action", "tag", "--report", str(report)), env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    undo = Path(res.stdout.strip().splitlines()[-1].removeprefix("Undo file: "))
    assert undo.exists() and undo.parent == tmp_path and len(undo.name.encode()) <= 255
    assert [r["tag"] for r in _undo_rows(undo, tmp_path)] == [TAG]


def test_a_report_folder_that_cannot_be_written_stops_before_anything_is_sent(duo: Any, tmp_path: Path) -> None:
    job = write_csv(tmp_path / "j.csv", [["serial"], [FACTS["untagged_device"]["serial"]]])
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a folder")
    res = subprocess.run(
        run_cmd(job, duo.url, "--action", "lock", "--report", str(blocked / "r.csv")),
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "--report" in res.stderr
    assert duo.stats.mutating == 0


# -- every way out -----------------------------------------------------------


@pytest.mark.parametrize("how", ["ctrl-c twice", "sigterm"])
def test_every_way_out_writes_the_report_and_the_undo_file(tmp_path: Path, how: str) -> None:
    with SimServer(make_app(devices=300, seed=31)) as sim:
        sim.faults.update({"latency": 0.05, "mutating_only": True})
        job, devices = _tag_job(sim, tmp_path, 150)
        args = run_cmd(job, sim.url, "--action", "tag", "--concurrency", "4", "--rate", "none")
        proc = subprocess.Popen(args, env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        err: list[str] = []
        reader = threading.Thread(target=lambda: err.extend(iter(proc.stderr.readline, "")))  # type: ignore[union-attr]
        reader.start()
        try:
            wait_for(lambda: sim.stats.mutating >= 20 or proc.poll() is not None)
            if how == "sigterm":
                proc.send_signal(signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGINT)
                wait_for(lambda: "again to abandon" in "".join(err) or proc.poll() is not None)
                # Ctrl-C again, and again, until the run's summary (said once the files are
                # written) shows: whenever a press lands, the files are written
                while proc.poll() is None and " rows: " not in "".join(err):
                    proc.send_signal(signal.SIGINT)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=0.02)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            reader.join(10)
        # a press that lands after everything is written may end the process itself (-SIGINT)
        assert proc.returncode in ((143,) if how == "sigterm" else (130, -signal.SIGINT)), "".join(err)
        _no_traceback("".join(err))
        rows = read_report(tmp_path / "tags.outcome.csv")
        tagged = _tagged(sim, devices)
        assert {r["status"] for r in rows} <= {"succeeded", "not-run", "unknown"}
        assert {r["serial"] for r in rows if r["status"] == "succeeded"} <= tagged
        assert tagged <= {r["serial"] for r in rows if r["status"] in ("succeeded", "unknown")}
        undo = _undo_rows(tmp_path / "tags.undo.csv", tmp_path)
        assert tagged <= {r["serial"] for r in undo} and {r["tag"] for r in undo} == {TAG}
        # the undo file puts back every change the run made
        sim.faults.update({"latency": 0.0})
        res = subprocess.run(
            run_cmd(tmp_path / "tags.undo.csv", sim.url), env=cli_env(tmp_path), capture_output=True, text=True
        )
        assert res.returncode in (0, 1), res.stderr
        assert _tagged(sim, devices) == set()


class _Broken(QuietEvents):
    """Events whose display breaks once rows have been shown: a crash-class error mid-run."""

    def __init__(self) -> None:
        self.shown = 0

    def advance(self, outcomes: Sequence[Outcome]) -> None:
        self.shown += len(outcomes)
        if self.shown >= 5:
            raise RuntimeError("the display broke")


def test_a_crash_mid_run_still_writes_the_report_and_the_undo_file(tmp_path: Path) -> None:
    with SimServer(make_app(devices=200, seed=32)) as sim:
        job, devices = _tag_job(sim, tmp_path, 60)
        env: Mapping[str, str] = cli_env(tmp_path)
        options = RunOptions(
            job=job, provider="duostation", url=sim.url, action="tag", concurrency=2, rate="none", env=env
        )
        with pytest.raises(RuntimeError, match="the display broke"):
            run_job(options, _Broken())
        tagged = _tagged(sim, devices)
        assert tagged
        rows = read_report(tmp_path / "tags.outcome.csv")
        assert {r["serial"] for r in rows if r["status"] == "succeeded"} <= tagged
        assert tagged <= {r["serial"] for r in _undo_rows(tmp_path / "tags.undo.csv", tmp_path)}


def test_bulkmdm_report_writes_a_runs_undo_file_from_the_journal(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job, devices = _tag_job(duo, tmp_path, 3)
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url, "--action", "tag"])
    assert res.exit_code == 0, res.output
    undo = tmp_path / "tags.undo.csv"
    expected = undo.read_bytes()
    undo.unlink()
    res = run_cli(["report", "1", "--undo"])
    assert res.exit_code == 0, res.output
    assert f"Undo file: {undo} (3 rows)" in res.output
    assert undo.read_bytes() == expected


# -- the report as a second record --------------------------------------------


@pytest.mark.parametrize("journal_gone", ["deleted", "moved aside"])
def test_with_the_journal_gone_the_report_beside_the_job_decides(
    duo: Any, run_cli: Any, tmp_path: Path, journal_gone: str
) -> None:
    devices = unique_devices(duo, 4)
    job = write_csv(tmp_path / "lock.csv", [["serial"], *[[s] for s, _ in devices], ["NO-SUCH-SERIAL"]])
    args = ["run", str(job), "--provider", "duostation", "--url", duo.url, "--action", "lock"]
    first = run_cli(args)
    assert first.exit_code == 1, first.output
    assert [r["status"] for r in first.report] == ["succeeded"] * 4 + ["failed"]
    sent = duo.stats.mutating
    state = tmp_path / "state"
    for side in state.glob("journal.sqlite3*"):
        if journal_gone == "deleted":
            side.unlink()
        else:
            side.rename(side.with_name(side.name.replace("journal", "journal-damaged")))
    again = run_cli(args)
    assert again.exit_code == 1, again.output
    assert duo.stats.mutating == sent, "nothing the report says succeeded is sent again"
    assert "4 rows it says succeeded or skipped are not sent again (--fresh sends them again)" in again.output
    assert [r["status"] for r in again.report] == ["succeeded"] * 4 + ["failed"]
    fresh = run_cli([*args, "--fresh"])
    assert duo.stats.mutating == sent + 4, fresh.output


def test_a_report_of_another_mdm_does_not_decide(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    devices = unique_devices(duo, 2)
    job = write_csv(tmp_path / "lock.csv", [["serial"], *[[s] for s, _ in devices]])
    args = ["run", str(job), "--provider", "duostation", "--action", "lock", "--url"]
    assert run_cli([*args, duo.url]).exit_code == 0
    for side in (tmp_path / "state").glob("journal.sqlite3*"):
        side.unlink()
    with SimServer(make_app(devices=400, seed=1)) as other:
        res = run_cli([*args, other.url])
        assert res.exit_code == 0, res.output
        assert other.stats.mutating == 2


def test_report_replace_refuses_a_file_later_runs_rewrote(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    devices = unique_devices(duo, 2)
    job = write_csv(tmp_path / "lock.csv", [["serial"], *[[s] for s, _ in devices], ["NO-SUCH-SERIAL"]])
    flags = ["--provider", "duostation", "--url", duo.url, "--action", "lock"]
    assert run_cli(["run", str(job), *flags]).exit_code == 1
    report = tmp_path / "lock.outcome.csv"
    # the report run again (run 2) writes the same file
    assert run_cli(["run", str(report), *flags]).exit_code == 1
    before = report.read_bytes()
    res = run_cli(["report", "1", "--replace"])
    assert res.exit_code == 2, res.output
    assert "later run 2" in res.output and "--force" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert report.read_bytes() == before
    res = run_cli(["report", "1", "--replace", "--force"])
    assert res.exit_code == 0, res.output
    assert f"Report: {report}" in res.output
