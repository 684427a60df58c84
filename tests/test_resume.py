"""Nothing lost, nothing twice: kill -9 and Ctrl-C part way through a real
`bulkmdm run` subprocess, then run the same command again and check the
simulator's side."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from conftest import (
    Lines,
    cli_env,
    journal_reasons,
    read_report,
    run_cmd,
    sim_idle,
    spawn,
    unique_devices,
    wait_for,
    write_csv,
)

from bulkmdm.model import Reason
from bulkmdm.sim.common import SimServer
from bulkmdm.sim.duostation import make_app


def _cmd(job: Path, url: str, *extra: str) -> list[str]:
    return run_cmd(job, url, "--rate", "none", "--concurrency", "8", *extra)


def test_sigkill_then_resume_loses_nothing_and_repeats_nothing(tmp_path: Path) -> None:
    with SimServer(make_app(devices=1700, seed=3)) as sim:
        sim.faults.latency = 0.002
        sim.faults.mutating_only = True
        st = sim.app["state"]
        tag_id = sim.call(lambda: st.add_tag({"name": "Läsår 2027"}))
        devices = unique_devices(sim, 1500)
        job = write_csv(tmp_path / "rollout.csv", [["serial", "tag"], *[[s, "Läsår 2027"] for s, _ in devices]])
        env = cli_env(tmp_path)
        proc = subprocess.Popen(
            _cmd(job, sim.url, "--action", "tag"), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            wait_for(lambda: sim.stats.mutating >= 400 or proc.poll() is not None, what="400 changes sent")
        finally:
            proc.kill()
            proc.wait(10)

        def links() -> tuple[int, list[Any]]:
            tagged = sum(
                1
                for _, dev_id in devices
                if st.devicetags.of_owner(dev_id)
                and any(link["tagId"] == tag_id for link in st.devicetags.of_owner(dev_id))
            )
            return tagged, st.duplicate_links()

        # Let the handlers the kill left running finish, then count what the
        # first run really applied. A request whose body the kill cut short
        # reached the simulator's counter but was never applied: sending it
        # again is right, so the count of requests alone cannot be the check.
        wait_for(lambda: sim_idle(sim), what="the simulator to finish the killed run's requests")
        sent_before = sim.stats.mutating
        assert 0 < sent_before < 1500, "the kill should land part way through"
        tagged_first = sim.call(links)[0]
        assert 0 < tagged_first < 1500

        second = subprocess.run(
            _cmd(job, sim.url, "--action", "tag"), env=env, capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 0, second.stdout + second.stderr
        assert "Resuming run" in second.stderr
        report = read_report(job.with_name("rollout.outcome.csv"))
        assert len(report) == 1500
        assert {r["status"] for r in report} == {"succeeded"}
        # made by this run, or (in flight when the first died) found made by reading it back
        assert set(journal_reasons(tmp_path / "state", job.with_name("rollout.outcome.csv"))) <= {
            Reason.DONE,
            Reason.READ_BACK,
        }

        tagged, duplicates = sim.call(links)
        assert tagged == 1500, "no row lost"
        assert duplicates == [], "no row applied twice"
        # the second run sent exactly the rows the first had not applied:
        # in-flight rows were read back, not sent blind
        assert sim.stats.mutating - sent_before == 1500 - tagged_first


def test_sigkill_during_messages_marks_in_flight_unknown_never_resends(tmp_path: Path) -> None:
    with SimServer(make_app(devices=700, seed=4)) as sim:
        sim.faults.latency = 0.01
        sim.faults.mutating_only = True
        st = sim.app["state"]
        devices = unique_devices(sim, 600)
        job = write_csv(tmp_path / "msg.csv", [["serial", "message"], *[[s, "Hej"] for s, _ in devices]])
        env = cli_env(tmp_path)
        proc = subprocess.Popen(
            _cmd(job, sim.url, "--action", "message"), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            wait_for(lambda: sim.stats.mutating >= 150 or proc.poll() is not None, what="150 messages sent")
        finally:
            proc.kill()
            proc.wait(10)
        second = subprocess.run(
            _cmd(job, sim.url, "--action", "message"), env=env, capture_output=True, text=True, timeout=120
        )
        report = read_report(job.with_name("msg.outcome.csv"))
        statuses = [r["status"] for r in report]
        assert set(statuses) <= {"succeeded", "unknown"}
        per_device = sim.call(lambda: {d: len(st.commands_for(d, "sendmessage")) for _, d in devices})
        assert max(per_device.values()) == 1, "no message sent twice"
        # every row either got its message or is reported unknown (a request was in flight at the kill)
        reasons = journal_reasons(tmp_path / "state", job.with_name("msg.outcome.csv"))
        for (serial, dev_id), row, reason in zip(devices, report, reasons, strict=True):
            assert row["serial"] == serial
            if row["status"] == "unknown":
                assert reason == Reason.NO_ANSWER
            else:
                assert per_device[dev_id] == 1
        assert second.returncode == (1 if "unknown" in statuses else 0)
        # the report re-runs only the unknown rows
        if "unknown" in statuses:
            before = sim.stats.mutating
            third = subprocess.run(
                _cmd(job.with_name("msg.outcome.csv"), sim.url, "--action", "message"),
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert third.returncode == 0, third.stderr
            assert sim.stats.mutating - before == statuses.count("unknown")


def test_ctrl_c_writes_report_exits_130_and_resumes(tmp_path: Path) -> None:
    with SimServer(make_app(devices=1200, seed=5)) as sim:
        sim.faults.latency = 0.005
        sim.faults.mutating_only = True
        st = sim.app["state"]
        devices = unique_devices(sim, 1000)
        job = write_csv(tmp_path / "lock.csv", [["serial"], *[[s] for s, _ in devices]])
        env = cli_env(tmp_path)
        proc = subprocess.Popen(
            _cmd(job, sim.url, "--action", "lock"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            wait_for(lambda: sim.stats.mutating >= 300 or proc.poll() is not None, what="300 locks sent")
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, err
        assert "run the same command again" in err
        report = read_report(job.with_name("lock.outcome.csv"))
        done = [r for r in report if r["status"] == "succeeded"]
        assert 0 < len(done) < 1000
        # in-flight requests were let finish; rows never sent are not-run
        assert all(r["status"] in ("succeeded", "not-run") for r in report)
        second = subprocess.run(
            _cmd(job, sim.url, "--action", "lock"), env=env, capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 0, second.stderr
        per_device = sim.call(lambda: [len(st.commands_for(d, "lockdevice")) for _, d in devices])
        assert per_device == [1] * 1000


def test_fresh_starts_over(tmp_path: Path) -> None:
    with SimServer(make_app(devices=100, seed=6)) as sim:
        devices = unique_devices(sim, 5)
        job = write_csv(tmp_path / "m.csv", [["serial", "message"], *[[s, "Hej"] for s, _ in devices]])
        env = cli_env(tmp_path)
        # a run that dies before finishing leaves rows pending; simulate by stopping at a 401
        first = subprocess.run(
            _cmd(job, sim.url, "--action", "message"), env=env, capture_output=True, text=True, timeout=60
        )
        assert first.returncode == 0
        again = subprocess.run(
            _cmd(job, sim.url, "--action", "message", "--fresh"), env=env, capture_output=True, text=True, timeout=60
        )
        assert again.returncode == 0
        assert sim.stats.mutating == 10


def test_second_ctrl_c_abandons_in_flight_requests_as_unknown(tmp_path: Path) -> None:
    with SimServer(make_app(devices=300, seed=8)) as sim:
        sim.faults.update({"latency": 0.2, "mutating_only": True})
        devices = unique_devices(sim, 100)
        job = write_csv(tmp_path / "lock.csv", [["serial"], *[[s] for s, _ in devices]])
        env = cli_env(tmp_path)
        proc = subprocess.Popen(
            _cmd(job, sim.url, "--action", "lock"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        err = Lines(proc.stderr)
        try:
            # past the canary (more than its three sent: the pool has widened), every answer is held 20 s
            wait_for(lambda: sim.stats.mutating >= 5 or proc.poll() is not None, what="the pool to widen")
            sim.faults.update({"slow_rate": 1.0, "slow_seconds": 20.0})
            # each of the eight workers waits on a held answer (a worker sends its
            # next change only once it has the last one's answer: none is on its way)
            wait_for(lambda: sim.stats.faults >= 8 or proc.poll() is not None, what="eight answers held")
            proc.send_signal(signal.SIGINT)
            wait_for(lambda: "again to abandon" in err or proc.poll() is not None, what="the first Ctrl-C's notice")
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, err.text()
        assert sim.stats.faults == 8
        report = read_report(job.with_name("lock.outcome.csv"))
        statuses = [r["status"] for r in report]
        assert statuses.count("unknown") == 8  # the eight in flight (--concurrency 8)
        assert statuses.count("not-run") == 92 - statuses.count("succeeded")
        assert all("in flight" in r["detail"] for r in report if r["status"] == "unknown")


def test_429_with_retry_after_is_waited_out(tmp_path: Path) -> None:
    with SimServer(make_app(devices=200, seed=9)) as sim:
        sim.faults.update({"rate_limit": 40, "retry_after": 1})
        devices = unique_devices(sim, 120)
        st = sim.app["state"]
        job = write_csv(tmp_path / "t.csv", [["serial", "tag"], *[[s, "Musik"] for s, _ in devices]])
        res = subprocess.run(
            _cmd(job, sim.url, "--action", "tag"), env=cli_env(tmp_path), capture_output=True, text=True, timeout=120
        )
        assert res.returncode == 0, res.stderr
        assert sim.stats.throttled > 0
        report = read_report(job.with_name("t.outcome.csv"))
        assert {r["status"] for r in report} <= {"succeeded", "skipped"}
        assert sim.call(lambda: st.duplicate_links()) == []


def test_ctrl_c_does_not_wait_out_retries(tmp_path: Path) -> None:
    """After the first Ctrl-C no retry is started: rows that were waiting out a
    long Retry-After end not-run (a 429 did nothing; the same command sends them
    again), and the run exits at once."""
    with SimServer(make_app(devices=200, seed=10)) as sim:
        sim.faults.update({"rate_limit": 2, "retry_after": 60})
        devices = unique_devices(sim, 40)
        job = write_csv(tmp_path / "lock.csv", [["serial"], *[[s] for s, _ in devices]])
        with spawn(_cmd(job, sim.url, "--action", "lock"), cli_env(tmp_path)) as proc:
            wait_for(lambda: sim.stats.throttled >= 1 or proc.poll() is not None)
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            started = time.monotonic()
            _, err = proc.communicate(timeout=30)
            took = time.monotonic() - started
        assert proc.returncode == 130, err
        assert took < 10, took  # not the 60 s Retry-After
        report = read_report(job.with_name("lock.outcome.csv"))
        assert sim.stats.throttled >= 1
        assert not any(r["http_status"] == "429" for r in report), report
        assert {r["status"] for r in report} == {"succeeded", "not-run"}, report
        assert sum(r["status"] == "succeeded" for r in report) == sim.stats.mutating - sim.stats.throttled
