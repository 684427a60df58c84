"""The day's API quota: ManageEngine's calls a day, with
``--wait-for-quota`` holding until the reset, against the simulator over real
HTTP. The wall clock bulkmdm reads (``bulkmdm.quota.now``) is moved to a few
seconds before midnight, so that the reset comes in the test's lifetime."""

from __future__ import annotations

import csv
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import sim_idle, spawn, wait_for
from test_manageengine import GROUP, env_for, members, serial_of, start, state

from bulkmdm import quota
from bulkmdm.engine import RunOptions, RunResult, run_job
from bulkmdm.events import QuietEvents
from bulkmdm.journal import Journal
from bulkmdm.quota import DayQuota, next_reset
from bulkmdm.sim.common import SimServer


class Recorded(QuietEvents):
    def __init__(self, on_message: Callable[[str], None] | None = None) -> None:
        self.messages: list[str] = []
        self.on_message = on_message

    def message(self, text: str) -> None:
        self.messages.append(text)
        if self.on_message is not None:
            self.on_message(text)


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with start() as server:
        yield server


def clock_at(monkeypatch: pytest.MonkeyPatch, moment: datetime) -> None:
    """bulkmdm's wall clock reads ``moment`` now, and runs on at the real pace."""
    began = time.monotonic()
    monkeypatch.setattr(quota, "now", lambda: moment + timedelta(seconds=time.monotonic() - began))


def before_midnight(seconds: float) -> datetime:
    return next_reset(datetime.now()) - timedelta(seconds=seconds)


def job_of(tmp_path: Path, sim: SimServer, count: int) -> tuple[Path, list[int]]:
    """A job that takes ``count`` devices out of the group; and those devices."""
    inside = sorted(members(sim, GROUP["id"]))[:count]
    path = tmp_path / "leavers.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["action", "serial", "group"])
        writer.writerows(["remove-from-group", serial_of(sim, d), GROUP["name"]] for d in inside)
    return path, inside


def changed_once(sim: SimServer, devices: list[int]) -> bool:
    log = state(sim).log
    return all(log[d] == [f"remove-from-group:{GROUP['id']}"] for d in devices)


def run(tmp_path: Path, sim: SimServer, job: Path, events: Recorded, **options: Any) -> RunResult:
    env = env_for("on-premises", sim, **options.pop("env", {}))
    return run_job(
        RunOptions(
            job=job,
            provider="manageengine",
            url=sim.url,
            rate="none",
            state_dir=tmp_path / "state",
            env=env,
            retry={"base": 0.01, "cap": 0.05, "throttle_wait": 0.2},
            **options,
        ),
        events,
    )


def calls_by_day(tmp_path: Path) -> dict[str, int]:
    with Journal(tmp_path / "state") as journal:
        return {day: count for day, count in journal.db.execute("SELECT day, count FROM calls")}


def test_a_waiting_run_holds_at_its_budget_until_midnight_and_finishes(
    sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, devices = job_of(tmp_path, sim, 24)
    clock_at(monkeypatch, before_midnight(3))
    events = Recorded()
    # 20 calls a day: 3 look-ups and 17 rows today, the other 7 rows after midnight
    result = run(tmp_path, sim, job, events, wait_for_quota=True, env={"BULKMDM_DAILY_LIMIT": "20"})
    assert result.counts == {"succeeded": 24}, events.messages
    assert result.exit_code == 0
    holds = [m for m in events.messages if m.startswith("Waiting for the daily quota")]
    assert holds == [
        "Waiting for the daily quota, resumes at 00:00 (manageengine's 20 API calls for today are used; "
        "Ctrl-C stops here)."
    ]
    assert "The daily quota has reset: continuing." in events.messages
    # every row's change made once, and the calls counted on the day they were made
    assert changed_once(sim, devices) and not members(sim, GROUP["id"]) & set(devices)
    assert state(sim).calls_today == 3 + 24
    today = before_midnight(3).date()
    assert calls_by_day(tmp_path) == {today.isoformat(): 20, (today + timedelta(days=1)).isoformat(): 7}


def test_a_run_that_does_not_wait_leaves_what_does_not_fit_not_run(
    sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, devices = job_of(tmp_path, sim, 24)
    clock_at(monkeypatch, before_midnight(3))
    events = Recorded()
    result = run(tmp_path, sim, job, events, env={"BULKMDM_DAILY_LIMIT": "20"})
    # 10 of the 20 kept for retries: 3 look-ups + 7 rows
    assert result.counts == {"succeeded": 7, "not-run": 17}
    assert result.exit_code == 1
    assert not any(m.startswith("Waiting") for m in events.messages)
    assert changed_once(sim, devices[:7]) and members(sim, GROUP["id"]) >= set(devices[7:])


def test_the_dry_run_says_a_waiting_run_takes_more_days(sim: SimServer, tmp_path: Path) -> None:
    job, _ = job_of(tmp_path, sim, 24)
    events = Recorded()
    result = run(tmp_path, sim, job, events, dry_run=True, wait_for_quota=True, env={"BULKMDM_DAILY_LIMIT": "20"})
    assert result.counts == {"planned": 24}
    note = " ".join(result.notes + events.messages)
    assert "this job needs about 27" in note, note  # 3 look-ups + 24 rows
    assert "With --wait-for-quota the run holds at midnight" in note and "about 1 more day" in note


def test_the_servers_own_quota_refusal_holds_a_waiting_run_until_it_resets(
    sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = state(sim)
    st.calls_per_day, st.limit_window = 8, 0.1
    job, devices = job_of(tmp_path, sim, 10)
    clock_at(monkeypatch, before_midnight(2))

    def on_message(text: str) -> None:
        if text.startswith("Waiting for the daily quota"):
            sim.call(lambda: setattr(st, "calls_today", 0))  # the server's day turns over too

    events = Recorded(on_message)
    # our own count is off: the server's 429s say the quota is spent
    result = run(tmp_path, sim, job, events, wait_for_quota=True, env={"BULKMDM_DAILY_LIMIT": "none"})
    assert result.counts == {"succeeded": 10}, events.messages
    holds = [m for m in events.messages if m.startswith("Waiting for the daily quota")]
    assert holds == [
        "Waiting for the daily quota, resumes at 00:00 (the MDM says its daily API quota is spent; Ctrl-C stops here)."
    ]
    assert changed_once(sim, devices)


def test_the_servers_refusal_stops_a_run_that_does_not_wait(sim: SimServer, tmp_path: Path) -> None:
    st = state(sim)
    st.calls_per_day, st.limit_window = 8, 0.1
    job, _ = job_of(tmp_path, sim, 10)
    events = Recorded()
    result = run(tmp_path, sim, job, events, env={"BULKMDM_DAILY_LIMIT": "none"})
    assert result.exit_code == 1
    assert result.counts["succeeded"] == 5 and result.counts["not-run"] >= 4
    assert result.stopped is not None and "--wait-for-quota" in result.stopped


def test_ctrl_c_during_the_hold_leaves_the_rest_not_run(
    sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, _ = job_of(tmp_path, sim, 24)
    clock_at(monkeypatch, before_midnight(6 * 3600))  # a hold of six hours

    def on_message(text: str) -> None:
        if text.startswith("Waiting for the daily quota"):
            os.kill(os.getpid(), signal.SIGINT)  # the run's own Ctrl-C handler takes it

    events = Recorded(on_message)
    began = time.monotonic()
    result = run(tmp_path, sim, job, events, wait_for_quota=True, env={"BULKMDM_DAILY_LIMIT": "20"})
    assert time.monotonic() - began < 20
    assert result.interrupted
    assert result.counts == {"succeeded": 17, "not-run": 7}
    assert state(sim).calls_today == 20


async def test_a_day_quota_counts_each_call_on_its_day(monkeypatch: pytest.MonkeyPatch) -> None:
    clock_at(monkeypatch, before_midnight(0.3))
    day_quota = DayQuota(3, used=1, wait=True)
    assert [await day_quota.take(lambda: False) for _ in range(4)] == [True] * 4
    today = before_midnight(0.3).date()
    assert dict(day_quota.sent) == {today: 2, today + timedelta(days=1): 2}
    assert day_quota.holds == 1


def test_the_command_line_takes_wait_for_quota(sim: SimServer, tmp_path: Path, run_cli: Any) -> None:
    job, _ = job_of(tmp_path, sim, 24)
    env = {**env_for("on-premises", sim, BULKMDM_DAILY_LIMIT="20"), "BULKMDM_STATE_DIR": str(tmp_path / "s")}
    args = ["run", str(job), "--provider", "manageengine", "--url", sim.url, "--rate", "none"]
    dry = run_cli([*args, "--dry-run", "--wait-for-quota"], env=env)
    assert dry.exit_code == 0, dry.output
    assert "With --wait-for-quota the run holds at midnight" in dry.output
    res = run_cli(args, env=env)  # without it: what does not fit today is not-run, for tomorrow
    assert res.exit_code == 1 and "not-run" in {r["status"] for r in res.report}
    assert "--wait-for-quota" in (run_cli(["run", "--help"]).output)


async def test_a_spent_quota_stops_a_run_that_does_not_wait_before_the_call() -> None:
    from bulkmdm.errors import QuotaExhausted

    day_quota = DayQuota(5, used=5, vendor="manageengine")
    with pytest.raises(QuotaExhausted) as info:
        await day_quota.take(lambda: False)
    assert "manageengine's 5 API calls for today" in str(info.value) and "--wait-for-quota" in str(info.value)
    assert day_quota.used == 5 and not day_quota.sent


def test_a_run_killed_part_way_has_counted_every_call_it_made(sim: SimServer, tmp_path: Path) -> None:
    """Under a daily limit each call is in the journal before it goes out: a
    run killed with SIGKILL (nothing at its end runs) leaves no call
    uncounted, so the next run does not spend what is no longer there."""
    job, _ = job_of(tmp_path, sim, 60)
    sim.faults.update({"latency": 0.05})
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMDM_")}
    env.update(env_for("on-premises", sim), BULKMDM_STATE_DIR=str(tmp_path / "state"))
    args = [sys.executable, "-m", "bulkmdm", "run", str(job), "--provider", "manageengine", "--url", sim.url]
    with spawn([*args, "--rate", "none"], env) as proc:
        wait_for(lambda: state(sim).calls_today >= 15 or proc.poll() is not None, timeout=60)
        proc.kill()
        proc.communicate(timeout=10)
    # the requests the kill cut off mid-way end on the server
    wait_for(lambda: sim_idle(sim), what="the simulator to finish the killed run's requests")
    served = state(sim).calls_today
    assert 15 <= served < 3 + 60  # killed part way
    counted = sum(calls_by_day(tmp_path).values())
    # each call was counted before it went out: at most the ones in flight at the kill were not served
    assert served <= counted <= served + 10


def test_the_daily_quota_is_counted_per_organisation_not_per_url(sim: SimServer, tmp_path: Path) -> None:
    """Organisations share mdm.manageengine.<region>: one's calls must not spend another's day."""
    from test_manageengine import CLIENT_ID

    from bulkmdm.providers.manageengine import ManageEngine

    job, devices = job_of(tmp_path, sim, 4)
    ours = env_for("cloud", sim, BULKMDM_API_KEY="")
    result = run(tmp_path, sim, job, Recorded(), env=ours)
    assert result.counts == {"succeeded": 4}
    other = {**ours, "BULKMDM_CLIENT_ID": "1000.ANOTHER-ORGANISATION"}
    with Journal(tmp_path / "state") as journal:
        # (the token request counts too: every request takes a slot of the run)
        assert journal.calls_today(ManageEngine.quota_tenant(sim.url, ours)) >= state(sim).calls_today > 0
        assert journal.calls_today(ManageEngine.quota_tenant(sim.url, other)) == 0
        kept = [tenant for (tenant,) in journal.db.execute("SELECT DISTINCT tenant FROM calls")]
    assert kept == [ManageEngine.quota_tenant(sim.url, ours)]
    assert CLIENT_ID not in kept[0] and "organisation" in kept[0]
    # an on-premises server is its organisation's own: counted per server
    on_premises = env_for("on-premises", sim)
    assert ManageEngine.quota_tenant(sim.url, on_premises) == f"manageengine {sim.url}"
    cloud_key = ManageEngine.quota_tenant("https://mdm.manageengine.com", on_premises)
    assert cloud_key != "manageengine https://mdm.manageengine.com" and on_premises["BULKMDM_API_KEY"] not in cloud_key


def test_calls_counted_in_a_burst_read_the_wall_clock_once_and_still_roll_at_midnight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wall clock is read at most every LOOK_EVERY seconds while calls
    are counted, and at the reset if that is sooner: a burst of calls just
    before midnight reads it once, and the first call after the reset is
    the new day's."""
    moment, began = before_midnight(0.5), time.monotonic()
    reads = []

    def wall() -> datetime:
        reads.append(1)
        return moment + timedelta(seconds=time.monotonic() - began)

    monkeypatch.setattr(quota, "now", wall)
    day_quota = DayQuota(None)
    reads.clear()
    for _ in range(500):
        assert day_quota.take_now()
    assert len(reads) == 1 and quota.LOOK_EVERY >= 1.0
    time.sleep(0.6)  # past midnight by the monotonic clock the wall clock runs at
    assert day_quota.take_now()
    today = moment.date()
    assert dict(day_quota.sent) == {today: 500, today + timedelta(days=1): 1}
    assert day_quota.used == 1
