"""``bulkmdm track`` end to end through the CLI, against the Ivanti and
ManageEngine simulators with devices that take commands only when they check
in (``CheckIns``): pending until a check-in, confirmed after it, offline
devices that never do, tracking resumed, the daily quota, Ctrl-C, ``--json``
and ``run --track``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import cli_env, read_report, wait_for, write_csv
from test_manageengine import API_KEY, APP, GROUP, generated, members, serial_of
from test_manageengine import start as start_me
from test_manageengine import state as me_state

from bulkmdm.jobfile import read_job
from bulkmdm.providers.ivanti import Ivanti
from bulkmdm.sim.common import CheckIns, SimServer
from bulkmdm.sim.ivanti import make_app as make_ivanti
from bulkmdm.validate import validate_job

IVANTI = {"BULKMDM_PARTITION_ID": "1"}
ME = {"BULKMDM_API_KEY": API_KEY}
#: a check-in this far off never comes by itself within a test: POST /_sim/checkins/now brings it
LATER = 3600.0


@pytest.fixture
def ivanti() -> Iterator[SimServer]:
    with SimServer(make_ivanti(devices=300, seed=1, checkins=CheckIns(delay=LATER))) as server:
        yield server


@pytest.fixture
def me() -> Iterator[SimServer]:
    with start_me(checkins=CheckIns(delay=LATER)) as server:
        yield server


def active(sim: SimServer, n: int) -> list[dict[str, Any]]:
    """``n`` ACTIVE supervised iOS devices with a serial of their own (every command takes them)."""

    def pick() -> list[dict[str, Any]]:
        state = sim.app["state"]
        serials = [d["serialNumber"] for d in state.devices.values()]
        return [
            dict(d)
            for d in state.devices.values()
            if d["registrationState"] == "ACTIVE"
            and d["platformType"] == "IOS"
            and d["supervised"]
            and d["serialNumber"]
            and serials.count(d["serialNumber"]) == 1
        ][:n]

    return sim.call(pick)  # type: ignore[no-any-return]


def check_in(sim: SimServer, **settings: Any) -> None:
    """Change the check-in settings (offline devices ...), then every online device with a queued command checks in."""
    checkins: CheckIns = sim.app["checkins"]
    if settings:
        sim.call(lambda: checkins.update(settings))
    sim.call(lambda: checkins.settle(everyone=True))


def lookups(sim: SimServer) -> int:
    """Read-only requests the simulator has answered."""
    return sum(n for route, n in sim.stats.by_route.items() if route.startswith("GET"))


def ivanti_job(tmp_path: Path, devices: list[dict[str, Any]], actions: list[str]) -> Path:
    return write_csv(
        tmp_path / "lost.csv",
        [
            ["action", "serial", "note"],
            *([a, d["serialNumber"], "=1+1"] for a, d in zip(actions, devices, strict=True)),
        ],
    )


def run_ivanti(run_cli: Any, job: Path, sim: SimServer, *extra: str) -> Any:
    result = run_cli(
        ["run", str(job), "--provider", "ivanti", "--url", sim.url, "--yes", "--rate", "none", *extra], env=IVANTI
    )
    assert result.exit_code == 0, result.output
    return result


def track(run_cli: Any, report: Path, *extra: str, env: Mapping[str, str | None] | None = None) -> Any:
    return run_cli(["track", str(report), *extra], env=env or IVANTI, report=report)


# -- Ivanti ---------------------------------------------------------------------


def test_a_wipe_is_pending_until_the_device_checks_in_then_confirmed(
    ivanti: SimServer, tmp_path: Path, run_cli: Any
) -> None:
    devices = active(ivanti, 4)
    job = ivanti_job(tmp_path, devices, ["wipe", "wipe", "lock", "lock"])
    ran = run_ivanti(run_cli, job, ivanti)
    before = [dict(row) for row in ran.report]

    first = track(run_cli, ran.report_path)
    assert first.exit_code == 1, first.output
    assert [r["device_status"] for r in first.report] == ["pending"] * 4
    assert [r["device_seen"] for r in first.report] == [""] * 4
    assert "0/4 confirmed, 4 pending (oldest" in first.output
    assert all(d["serialNumber"] in first.output for d in devices)  # the pending rows' serials
    # every input and outcome cell as it was (a formula-like note stays text)
    assert [{k: v for k, v in r.items() if not k.startswith("device_")} for r in first.report] == before
    assert first.report[0]["note"] == "'=1+1" and read_job(ran.report_path).rows[0][2] == "=1+1"

    check_in(ivanti)
    second = track(run_cli, ran.report_path)
    assert second.exit_code == 0, second.output
    assert [r["device_status"] for r in second.report] == ["confirmed"] * 4
    assert all(r["device_seen"].endswith("+00:00") and r["device_seen"][:4].isdigit() for r in second.report)
    assert "4/4 confirmed, 0 pending" in second.output
    assert "wipe: 2 confirmed" in second.output and "lock: 2 confirmed" in second.output
    states = ivanti.call(lambda: [ivanti.app["state"].devices[d["id"]]["registrationState"] for d in devices])
    assert states == ["WIPED", "WIPED", "ACTIVE", "ACTIVE"]
    # a report with the two columns is still a report: the columns appear once
    assert list(second.report[0]).count("device_status") == 1


def test_an_offline_device_stays_pending_and_tracking_again_asks_only_about_it(
    ivanti: SimServer, tmp_path: Path, run_cli: Any
) -> None:
    devices = active(ivanti, 3)
    ran = run_ivanti(run_cli, ivanti_job(tmp_path, devices, ["retire", "lock", "lock"]), ivanti)
    check_in(ivanti, offline=[str(devices[2]["id"])])
    first = track(run_cli, ran.report_path)
    assert first.exit_code == 1
    assert [r["device_status"] for r in first.report] == ["confirmed", "confirmed", "pending"]
    assert f"Pending (1): {devices[2]['serialNumber']}" in first.output
    seen = [r["device_seen"] for r in first.report]

    # the device comes back: the next look confirms it and keeps what was confirmed before
    check_in(ivanti, offline=[])
    asked = lookups(ivanti)
    again = track(run_cli, ran.report_path, "--json")
    assert again.exit_code == 0
    assert [r["device_status"] for r in again.report] == ["confirmed"] * 3
    assert [r["device_seen"] for r in again.report][:2] == seen[:2]
    assert lookups(ivanti) - asked == 1  # one page of the device search

    # everything confirmed: a third time asks the MDM nothing
    asked = lookups(ivanti)
    third = track(run_cli, ran.report_path)
    assert third.exit_code == 0 and lookups(ivanti) == asked


def test_tracking_against_the_live_service_s_moving_search_order(tmp_path: Path, run_cli: Any) -> None:
    # --real: searches come in check-in order that moves while a client pages; devices check in on their own
    with SimServer(make_ivanti(devices=1200, seed=1, real=True, checkins=CheckIns(delay=LATER))) as sim:
        devices = active(sim, 3)
        ran = run_ivanti(run_cli, ivanti_job(tmp_path, devices, ["wipe", "lock", "lock"]), sim)
        first = track(run_cli, ran.report_path)
        assert [r["device_status"] for r in first.report] == ["pending"] * 3, first.output
        check_in(sim, offline=[str(devices[1]["id"])])
        second = track(run_cli, ran.report_path)
        assert [r["device_status"] for r in second.report] == ["confirmed", "pending", "confirmed"], second.output


def test_json_lines_end_in_a_summary(ivanti: SimServer, tmp_path: Path, run_cli: Any) -> None:
    devices = active(ivanti, 2)
    ran = run_ivanti(run_cli, ivanti_job(tmp_path, devices, ["wipe", "lock"]), ivanti)
    check_in(ivanti, offline=[str(devices[0]["id"])])
    result = track(run_cli, ran.report_path, "--json")
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    summary = lines[-1]
    assert summary["event"] == "summary" and summary["command"] == "track"
    assert summary["counts"] == {"confirmed": 1, "pending": 1}
    assert summary["report"] == str(ran.report_path) and summary["undo"] is None and summary["exit"] == 1
    assert summary["pending"] == [devices[0]["serialNumber"]]
    assert summary["by_action"] == {"lock": {"confirmed": 1}, "wipe": {"pending": 1}}
    pending = [line for line in lines if line.get("device_status") == "pending"]
    assert pending == [
        {
            "event": "row",
            "line": 2,
            "label": devices[0]["serialNumber"],
            "action": "wipe",
            "device_status": "pending",
            "device_seen": "",
            "detail": "registrationState is WIPE_PENDING.",
        }
    ]


def test_tracking_polls_until_the_devices_check_in(tmp_path: Path, run_cli: Any) -> None:
    with SimServer(make_ivanti(devices=300, seed=1, checkins=CheckIns(delay=1.0))) as sim:
        devices = active(sim, 3)
        ran = run_ivanti(run_cli, ivanti_job(tmp_path, devices, ["wipe", "lock", "checkin"]), sim)
        began = time.monotonic()
        result = track(run_cli, ran.report_path, "--until", "60s", "--every", "1s")
        assert result.exit_code == 0, result.output
        assert time.monotonic() - began < 30  # it stops once every row is confirmed
        assert [r["device_status"] for r in result.report] == ["confirmed"] * 3
        assert "3/3 confirmed, 0 pending" in result.output


def test_mdm_side_changes_are_confirmed_at_once_without_a_request(
    ivanti: SimServer, tmp_path: Path, run_cli: Any
) -> None:
    devices = active(ivanti, 2)
    job = write_csv(
        tmp_path / "attrs.csv",
        [
            ["action", "serial", "attribute", "value"],
            *(["set-attribute", d["serialNumber"], "room", "B12"] for d in devices),
        ],
    )
    ran = run_ivanti(run_cli, job, ivanti)
    asked = lookups(ivanti)
    result = track(run_cli, ran.report_path)
    assert result.exit_code == 0, result.output
    assert [r["device_status"] for r in result.report] == ["confirmed", "confirmed"]
    assert all(r["device_seen"] for r in result.report)
    assert lookups(ivanti) == asked


def test_a_report_used_as_a_job_ignores_the_two_columns(ivanti: SimServer, tmp_path: Path, run_cli: Any) -> None:
    devices = active(ivanti, 2)
    job = ivanti_job(tmp_path, devices, ["lock", "lock"])
    with open(job, "a", encoding="utf-8") as fh:
        fh.write("lock,NO-SUCH-SERIAL,x\r\n")
    ran = run_cli(["run", str(job), "--provider", "ivanti", "--url", ivanti.url, "--rate", "none"], env=IVANTI)
    assert ran.exit_code == 1
    tracked = track(run_cli, ran.report_path)
    assert [r["device_status"] for r in tracked.report] == ["pending", "pending", ""]
    table = read_job(ran.report_path)
    assert "device_status" in table.headers
    valid = validate_job(table, Ivanti, None)
    assert valid.headers == ("action", "serial", "note")
    again = run_cli(
        ["run", str(ran.report_path), "--provider", "ivanti", "--url", ivanti.url, "--rate", "none"], env=IVANTI
    )
    assert again.exit_code == 1
    assert [r["status"] for r in again.report] == ["succeeded", "succeeded", "failed"]
    assert list(again.report[0]) == [
        "action",
        "serial",
        "note",
        "status",
        "detail",
        "http_status",
        "attempts",
        "resolved_ids",
    ]
    # the rows carried over from the first run are followed with that run's times, as before
    tracked = track(run_cli, ran.report_path)
    assert [r["device_status"] for r in tracked.report] == ["pending", "pending", ""]
    check_in(ivanti)
    assert [r["device_status"] for r in track(run_cli, ran.report_path).report] == ["confirmed", "confirmed", ""]


def test_track_takes_credentials_from_a_profiles_keyring(ivanti: SimServer, tmp_path: Path, run_cli: Any) -> None:
    import keyring
    from test_profiles import MemoryKeyring

    devices = active(ivanti, 1)
    ran = run_ivanti(run_cli, ivanti_job(tmp_path, devices, ["lock"]), ivanti)
    check_in(ivanti)
    without = {**IVANTI, "BULKMDM_USERNAME": None, "BULKMDM_PASSWORD": None}
    before, backend = keyring.get_keyring(), MemoryKeyring()
    keyring.set_keyring(backend)
    try:
        backend.set_password("bulkmdm", "school:BULKMDM_USERNAME", "admin")
        backend.set_password("bulkmdm", "school:BULKMDM_PASSWORD", "admin")
        refused = track(run_cli, ran.report_path, env=without)
        assert refused.exit_code == 2 and "BULKMDM_USERNAME" in refused.output
        result = track(run_cli, ran.report_path, "--profile", "school", env=without)
        assert result.exit_code == 0, result.output
        assert result.report[0]["device_status"] == "confirmed"
    finally:
        keyring.set_keyring(before)


def test_an_xlsx_report_is_tracked_in_place(ivanti: SimServer, tmp_path: Path, run_cli: Any) -> None:
    devices = active(ivanti, 2)
    report = tmp_path / "wiped.xlsx"
    ran = run_ivanti(run_cli, ivanti_job(tmp_path, devices, ["wipe", "lock"]), ivanti, "--report", str(report))
    check_in(ivanti)
    result = track(run_cli, ran.report_path)
    assert result.exit_code == 0, result.output
    assert [r["device_status"] for r in result.report] == ["confirmed", "confirmed"]
    assert [r["note"] for r in result.report] == ["=1+1", "=1+1"]


def test_nothing_could_be_looked_at_exits_2(tmp_path: Path, run_cli: Any) -> None:
    with SimServer(make_ivanti(devices=300, seed=1, checkins=CheckIns(delay=LATER))) as sim:
        devices = active(sim, 1)
        ran = run_ivanti(run_cli, ivanti_job(tmp_path, devices, ["lock"]), sim)
    result = track(run_cli, ran.report_path, "--timeout", "2")
    assert result.exit_code == 2
    assert "Traceback" not in result.output and "Error:" in result.output

    stray = write_csv(tmp_path / "stray.csv", [["serial", "status", "detail"], ["A", "succeeded", "x"]])
    result = track(run_cli, stray)
    assert result.exit_code == 2 and "No run in the journal" in result.output


def test_ctrl_c_writes_what_it_knows(ivanti: SimServer, tmp_path: Path, run_cli: Any) -> None:
    devices = active(ivanti, 3)
    ran = run_ivanti(run_cli, ivanti_job(tmp_path, devices, ["lock", "lock", "lock"]), ivanti)
    check_in(ivanti, offline=[str(devices[2]["id"])])
    env = cli_env(tmp_path, **IVANTI)
    args = [sys.executable, "-m", "bulkmdm", "track", str(ran.report_path), "--until", "10m", "--every", "1s"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _confirmed(ran.report_path) == 2, 60)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Interrupted" in err and "Traceback" not in err
    assert [r["device_status"] for r in read_report(ran.report_path)] == ["confirmed", "confirmed", "pending"]


def _confirmed(report: Path) -> int:
    try:
        return sum(r.get("device_status") == "confirmed" for r in read_report(report))
    except (OSError, ValueError):
        return 0


def test_duostation_commands_are_not_trackable_with_the_reason(duo: SimServer, tmp_path: Path, run_cli: Any) -> None:
    from conftest import unique_devices

    (serial, _), (tagged, _) = unique_devices(duo, 2)
    job = write_csv(
        tmp_path / "duo.csv", [["action", "serial", "tag"], ["lock", serial, ""], ["tag", tagged, "Prov-läge"]]
    )
    ran = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url, "--rate", "none"])
    assert ran.exit_code == 0, ran.output
    result = track(run_cli, ran.report_path, "--json", env={})
    assert result.exit_code == 0, result.output
    assert [r["device_status"] for r in result.report] == ["not-trackable", "confirmed"]
    assert "DuoSTATION's API does not show whether a device took a lock." in result.output


# -- ManageEngine ---------------------------------------------------------------


def me_job(tmp_path: Path, sim: SimServer) -> tuple[Path, list[int]]:
    inside = sorted(members(sim, GROUP["id"]))
    new = [d for d in generated(sim) if d not in inside][:3]
    return (
        write_csv(
            tmp_path / "apps.csv",
            [
                ["action", "serial", "app", "group"],
                ["install-app", serial_of(sim, new[0]), APP["bundle_identifier"], ""],
                ["install-app", serial_of(sim, new[1]), APP["bundle_identifier"], ""],
                ["add-to-group", serial_of(sim, new[2]), "", GROUP["name"]],
            ],
        ),
        new,
    )


def run_me(run_cli: Any, job: Path, sim: SimServer, *extra: str) -> Any:
    result = run_cli(
        ["run", str(job), "--provider", "manageengine", "--url", sim.url, "--rate", "none", *extra], env=ME
    )
    assert result.exit_code == 0, result.output
    return result


def test_manageengine_apps_are_confirmed_once_the_device_lists_them(
    me: SimServer, tmp_path: Path, run_cli: Any
) -> None:
    job, devices = me_job(tmp_path, me)
    ran = run_me(run_cli, job, me)
    first = track(run_cli, ran.report_path, env=ME)
    assert first.exit_code == 1, first.output
    assert [r["device_status"] for r in first.report] == ["pending", "pending", "confirmed"]
    check_in(me, offline=[str(devices[1])])
    second = track(run_cli, ran.report_path, env=ME)
    assert [r["device_status"] for r in second.report] == ["confirmed", "pending", "confirmed"]
    assert me.call(lambda: APP["id"] in me_state(me).installed.get(devices[0], {}))
    # one look: the app repository, then one app list per pending device
    asked = me.stats.by_route.copy()
    track(run_cli, ran.report_path, env=ME)
    grown = {k: n - asked.get(k, 0) for k, n in me.stats.by_route.items() if n != asked.get(k, 0)}
    assert sum(grown.values()) == 2, grown

    # removing it again: pending until the device checks in
    removal = write_csv(
        tmp_path / "remove.csv",
        [["action", "serial", "app"], ["remove-app", serial_of(me, devices[0]), APP["bundle_identifier"]]],
    )
    removed = run_me(run_cli, removal, me)
    assert track(run_cli, removed.report_path, env=ME).report[0]["device_status"] == "pending"
    check_in(me)
    assert track(run_cli, removed.report_path, env=ME).report[0]["device_status"] == "confirmed"


def test_a_look_that_does_not_fit_in_the_days_quota_stops(me: SimServer, tmp_path: Path, run_cli: Any) -> None:
    job, _ = me_job(tmp_path, me)
    ran = run_me(run_cli, job, me)
    spent = me.stats.requests
    # the run's own calls and the look's three (apps, two devices' apps) do not fit in a budget of run + 2
    env = {**ME, "BULKMDM_DAILY_LIMIT": str(spent + 2)}
    result = track(run_cli, ran.report_path, env=env)
    assert result.exit_code == 2, result.output
    assert "after midnight" in result.output and "--wait-for-quota" in result.output
    assert me.stats.requests == spent  # nothing was asked
    assert [r["device_status"] for r in result.report] == ["pending", "pending", "confirmed"]
    # with room for it, the same command looks
    env = {**ME, "BULKMDM_DAILY_LIMIT": str(spent + 3)}
    assert track(run_cli, ran.report_path, env=env).exit_code == 1
    assert me.stats.requests == spent + 3


def test_a_look_waits_for_the_quota_to_reset_with_wait_for_quota(
    me: SimServer, tmp_path: Path, run_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bulkmdm import quota

    job, _ = me_job(tmp_path, me)
    ran = run_me(run_cli, job, me)
    spent = me.stats.requests
    # bulkmdm's wall clock three seconds before midnight, running on at the real pace
    moment, began = quota.next_reset(quota.now()) - timedelta(seconds=3), time.monotonic()
    monkeypatch.setattr(quota, "now", lambda: moment + timedelta(seconds=time.monotonic() - began))
    env = {**ME, "BULKMDM_DAILY_LIMIT": str(spent + 2)}
    result = track(run_cli, ran.report_path, "--wait-for-quota", env=env)
    assert result.exit_code == 1, result.output
    assert "Waiting for the daily quota, resumes at 00:00" in result.output
    assert "The daily quota has reset: continuing." in result.output
    assert me.stats.requests == spent + 3  # the whole look: two calls today, one after midnight
    assert [r["device_status"] for r in result.report] == ["pending", "pending", "confirmed"]


def test_run_with_track_follows_the_changes_after_the_run(tmp_path: Path, run_cli: Any) -> None:
    with start_me(checkins=CheckIns(delay=0.5)) as sim:
        job, _ = me_job(tmp_path, sim)
        result = run_cli(
            ["run", str(job), "--provider", "manageengine", "--url", sim.url, "--rate", "none", "--track", "10s"],
            env=ME,
        )
        assert result.exit_code == 0, result.output
        assert [r["device_status"] for r in result.report] == ["confirmed"] * 3
        assert "3/3 confirmed, 0 pending" in result.output


def test_a_bad_duration_is_one_sentence(run_cli: Any, tmp_path: Path) -> None:
    report = write_csv(tmp_path / "r.csv", [["serial", "status", "detail"]])
    result = run_cli(["track", str(report), "--until", "soon"])
    assert result.exit_code == 2 and "--until 'soon' is not a duration" in result.output


def _sim_json(url: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)  # type: ignore[no-any-return]


def test_the_check_in_control_routes(ivanti: SimServer, tmp_path: Path, run_cli: Any) -> None:
    devices = active(ivanti, 2)
    ran = run_ivanti(run_cli, ivanti_job(tmp_path, devices, ["lock", "lock"]), ivanti)
    assert _sim_json(ivanti.url, "/_sim/checkins")["queued"] == 2
    assert _sim_json(ivanti.url, "/_sim/checkins", {"offline": [devices[1]["id"]]})["offline"] == [
        str(devices[1]["id"])
    ]
    now = _sim_json(ivanti.url, "/_sim/checkins/now", {})
    assert now["taken"] == 1 and now["queued"] == 1
    assert [r["device_status"] for r in track(run_cli, ran.report_path).report] == ["confirmed", "pending"]


def test_the_simulator_command_takes_check_in_settings(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    args = [sys.executable, "-m", "bulkmdm", "sim", "banyan", "--port", "0", "--checkin-delay", "5"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no device check-ins" in done.stderr

    args = [sys.executable, "-m", "bulkmdm", "sim", "ivanti", "--port", "0", "--devices", "50"]
    proc = subprocess.Popen(
        [*args, "--checkin-delay", "5", "--offline-rate", "0.2"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        settings = _sim_json(url, "/_sim/checkins")
        assert settings["delay"] == 5 and settings["offline_rate"] == 0.2
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
