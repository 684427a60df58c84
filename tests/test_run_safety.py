"""Run safety: one process per job, resuming by content, signals, stops that
leave rows not-run, and crash-class errors as one sentence. Each test runs
the real CLI (`python -m bulkmdm run ...`) against the built-in simulator on
127.0.0.1."""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    cli_env,
    journal_reasons,
    journal_run,
    journal_states,
    read_report,
    run_cmd,
    spawn,
    unique_devices,
    wait_for,
    write_csv,
)

from bulkmdm.model import Reason
from bulkmdm.sim.common import SimServer
from bulkmdm.sim.duostation import FACTS, make_app


def _run(args: Sequence[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout)


def _locks_per_device(sim: SimServer, devices: Sequence[tuple[str, str]]) -> list[int]:
    st = sim.app["state"]
    return sim.call(lambda: [len(st.commands_for(dev_id, "lockdevice")) for _, dev_id in devices])  # type: ignore


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text and "internal error" not in text, text


# -- one process per job -------------------------------------------------------


def test_a_second_run_of_a_running_job_sends_nothing_and_names_the_holder(tmp_path: Path) -> None:
    with SimServer(make_app(devices=300, seed=21)) as sim:
        sim.faults.update({"latency": 0.05, "mutating_only": True})
        devices = unique_devices(sim, 40)
        job = write_csv(tmp_path / "lock.csv", [["serial"], *[[s] for s, _ in devices]])
        env = cli_env(tmp_path)
        args = run_cmd(job, sim.url, "--action", "lock", "--concurrency", "2", "--rate", "none")
        first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: sim.stats.mutating >= 4 or first.poll() is not None, what="four locks sent")
            # from now on every answer is held: the first run is still running whenever the second starts
            sim.faults.update({"slow_rate": 1.0, "slow_seconds": 30.0})
            second = _run(args, env, timeout=60)
            assert first.poll() is None
            assert second.returncode == 2, second.stderr
            assert "already running" in second.stderr and f"process {first.pid}" in second.stderr, second.stderr
            assert "started" in second.stderr and len(second.stderr.strip().splitlines()) == 1
            _no_traceback(second.stderr)
        finally:
            first.kill()
            first.wait(10)
        sim.faults.update({"slow_rate": 0.0})
        # a lock left by a process that is gone does not block: the same command continues
        third = _run(args, env)
        assert "Resuming run" in third.stderr, third.stderr
        locks = _locks_per_device(sim, devices)
        assert max(locks) == 1, "no device locked twice"
        statuses = [r["status"] for r in read_report(job.with_name("lock.outcome.csv"))]
        # devices whose lock was in flight at the kill are unknown (never resent); the rest are done
        assert set(statuses) <= {"succeeded", "unknown"}
        assert third.returncode == (1 if "unknown" in statuses else 0), third.stderr
        assert all(n == 1 for status, n in zip(statuses, locks, strict=True) if status == "succeeded")


# -- signals -------------------------------------------------------------------


def test_sigterm_is_handled_like_ctrl_c_and_an_edited_job_continues_by_content(tmp_path: Path) -> None:
    with SimServer(make_app(devices=500, seed=22)) as sim:
        sim.faults.update({"latency": 0.01, "mutating_only": True})
        devices = unique_devices(sim, 400)
        job = write_csv(tmp_path / "lock.csv", [["serial"], *[[s] for s, _ in devices[:300]]])
        env = cli_env(tmp_path)
        report = tmp_path / "out" / "locks.csv"
        report.parent.mkdir()
        flags = [
            "--action",
            "lock",
            "--concurrency",
            "4",
            "--rate",
            "none",
            "--timeout",
            "20",
            "--max-destructive",
            "5",
            "--report",
            str(report),
        ]
        proc = subprocess.Popen(
            run_cmd(job, sim.url, *flags), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            wait_for(lambda: sim.stats.mutating >= 40 or proc.poll() is not None)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 143, err
        _no_traceback(err)
        rows = read_report(report)
        statuses = [r["status"] for r in rows]
        assert 0 < statuses.count("succeeded") < 300
        assert set(statuses) <= {"succeeded", "not-run"}
        assert all("the run stopped first" in r["detail"] for r in rows if r["status"] == "not-run")
        # the hint repeats every flag that was given, so following it writes to the same report
        hint = err.strip().splitlines()[-1]
        for flag in (
            "--report",
            str(report),
            "--concurrency 4",
            "--timeout 20.0",
            "--max-destructive 5",
            "--rate none",
            "--action lock",
        ):
            assert flag in hint, hint
        done = statuses.count("succeeded")

        # saved again: other line endings, rows reordered, 100 rows added
        edited = [[s] for s, _ in reversed(devices[:300])] + [[s] for s, _ in devices[300:]]
        with open(job, "w", newline="", encoding="utf-8") as fh:
            fh.write("serial\r\n" + "".join(f"{s}\r\n" for (s,) in edited))
        again = _run(run_cmd(job, sim.url, *flags), env)
        assert again.returncode == 0, again.stderr
        assert f"{done} rows already done are kept, {400 - done} new rows will run" in again.stderr, again.stderr
        assert _locks_per_device(sim, devices) == [1] * 400, "nothing twice, nothing lost"
        assert sim.stats.mutating == 400
        rows = read_report(report)
        assert [r["serial"] for r in rows] == [s for (s,) in edited]
        assert {r["status"] for r in rows} == {"succeeded"}


def test_no_new_batch_starts_after_ctrl_c(tmp_path: Path) -> None:
    with SimServer(make_app(devices=200, seed=23)) as sim:
        devices = unique_devices(sim, 60)
        job = write_csv(tmp_path / "lock.csv", [["serial"], *[[s] for s, _ in devices]])
        with spawn(
            run_cmd(job, sim.url, "--action", "lock", "--rate", "4/s", "--concurrency", "2"), cli_env(tmp_path)
        ) as proc:
            wait_for(lambda: sim.stats.mutating >= 3 or proc.poll() is not None)
            proc.send_signal(signal.SIGINT)
            at_signal = sim.stats.mutating
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        # at most the two batches already taken (one per worker) may still go out
        assert sim.stats.mutating - at_signal <= 2
        statuses = [r["status"] for r in read_report(job.with_name("lock.outcome.csv"))]
        assert statuses.count("succeeded") == sim.stats.mutating
        assert statuses.count("not-run") == 60 - sim.stats.mutating


def test_rows_waiting_for_a_rate_slot_are_not_in_flight_at_a_kill(tmp_path: Path) -> None:
    with SimServer(make_app(devices=200, seed=24)) as sim:
        # three sent before the kill and eight taken by the pool's workers (one
        # sent or about to be, seven waiting for a slot of 2/s): the kill lands
        # with rows waiting, and the run after it is short
        devices = unique_devices(sim, 12)
        job = write_csv(tmp_path / "msg.csv", [["serial", "message"], *[[s, "Hej"] for s, _ in devices]])
        env = cli_env(tmp_path)
        args = run_cmd(job, sim.url, "--action", "message", "--rate", "2/s", "--concurrency", "8")
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            # the answer to the third change is journaled; the next waits for its slot (0.5 s apart)
            wait_for(
                lambda: journal_states(tmp_path / "state")["done"] >= 3 or proc.poll() is not None,
                what="three changes answered",
            )
            proc.kill()
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        sent = sim.stats.mutating
        # the rest at any pace: a run continues whatever its --rate (not part of the job's identity)
        again = _run([*args[: args.index("--rate")], "--rate", "none", "--concurrency", "8"], env)
        assert "Resuming run" in again.stderr, again.stderr
        statuses = [r["status"] for r in read_report(job.with_name("msg.outcome.csv"))]
        # only a message actually sent without its answer can be unknown, not the rows waiting for a slot
        assert statuses.count("unknown") <= 1, (statuses, again.stderr)
        succeeded, unknown = statuses.count("succeeded"), statuses.count("unknown")
        assert succeeded <= sim.stats.mutating <= succeeded + unknown and succeeded + unknown == 12
        assert 3 <= sent <= sim.stats.mutating


# -- stops ---------------------------------------------------------------------


def test_credentials_refused_after_rows_ran_exit_1_with_the_rest_not_run(tmp_path: Path) -> None:
    with SimServer(make_app(devices=300, seed=25)) as sim:
        sim.faults.update({"latency": 0.02, "mutating_only": True})
        devices = unique_devices(sim, 150)
        job = write_csv(tmp_path / "lock.csv", [["serial"], *[[s] for s, _ in devices]])
        env = cli_env(tmp_path)
        args = run_cmd(job, sim.url, "--action", "lock", "--rate", "none", "--concurrency", "2")
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: sim.stats.mutating >= 10 or proc.poll() is not None)
            sim.faults.update({"error_rate": 1.0, "error_status": 401})
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 1, err
        _no_traceback(err)
        assert "refused the credentials" in err and "run the same command again" in err
        rows = read_report(job.with_name("lock.outcome.csv"))
        statuses = [r["status"] for r in rows]
        assert statuses.count("succeeded") >= 5 and statuses.count("not-run") > 100
        assert set(statuses) <= {"succeeded", "not-run"}  # the rows refused with 401 are not-run too
        reasons = journal_reasons(tmp_path / "state", job.with_name("lock.outcome.csv"))
        assert Reason.AUTH in reasons and set(reasons) <= {Reason.DONE, Reason.AUTH, Reason.NOT_SENT}
        # fixed: the same command continues with the rows not sent (the latency only had to keep
        # the first run going until the credentials were refused)
        sim.faults.update({"error_rate": 0.0, "latency": 0.0})
        again = _run(args, env)
        assert again.returncode == 0, again.stderr
        assert {r["status"] for r in read_report(job.with_name("lock.outcome.csv"))} == {"succeeded"}
        assert max(_locks_per_device(sim, devices)) == 1


# -- finished jobs, dry runs, report names -------------------------------------------


def test_a_finished_job_is_not_run_again_by_the_same_command(duo: Any, tmp_path: Path) -> None:
    job = write_csv(tmp_path / "j.csv", [["serial"], [FACTS["untagged_device"]["serial"]], ["NOPE"]])
    env = cli_env(tmp_path)
    args = run_cmd(job, duo.url, "--action", "lock")
    first = _run(args, env)
    assert first.returncode == 1, first.stderr
    report = job.with_name("j.outcome.csv")
    before = report.read_bytes()
    mutating = duo.stats.mutating
    again = _run(args, env)
    assert again.returncode == 1, again.stderr  # exits as that run did
    assert duo.stats.mutating == mutating
    assert "already ran to the end" in again.stderr and "finished" in again.stderr
    assert "1 failed" in again.stderr and "1 succeeded" in again.stderr
    assert f"bulkmdm run {report}" in again.stderr and "--fresh" in again.stderr
    assert report.read_bytes() == before


def test_a_dry_run_never_replaces_the_real_report_and_counts_by_action(duo: Any, tmp_path: Path) -> None:
    free = FACTS["untagged_device"]["serial"]
    job = write_csv(tmp_path / "j.csv", [["serial", "action"], [free, "lock"], [free, "wipe"], ["NOPE", "wipe"]])
    env = cli_env(tmp_path)
    real = job.with_name("j.outcome.csv")
    real.write_text("serial,status\nX,succeeded\n")
    dry = _run(run_cmd(job, duo.url, "--dry-run"), env)
    assert dry.returncode == 1, dry.stderr
    assert real.read_text() == "serial,status\nX,succeeded\n"
    statuses = [r["status"] for r in read_report(job.with_name("j.dryrun.csv"))]
    assert statuses == ["planned", "planned", "failed"]
    assert "lock: 1 planned" in dry.stderr and "wipe: 1 planned, 1 failed" in dry.stderr
    assert f"would wipe 1 device: {free}" in dry.stderr
    assert duo.stats.mutating == 0


def test_report_names_do_not_grow(duo: Any, tmp_path: Path) -> None:
    job = write_csv(tmp_path / "x.csv", [["serial"], [FACTS["untagged_device"]["serial"]], ["NOPE"]])
    env = cli_env(tmp_path)
    assert _run(run_cmd(job, duo.url, "--action", "lock"), env).returncode == 1
    report = tmp_path / "x.outcome.csv"
    again = _run(run_cmd(report, duo.url, "--action", "lock"), env)
    assert again.returncode == 1, again.stderr
    assert not (tmp_path / "x.outcome.outcome.csv").exists()
    assert [r["status"] for r in read_report(report)] == ["succeeded", "failed"]
    assert f"bulkmdm run {report}" in again.stderr
    assert duo.stats.mutating == 1


def test_report_naming_the_job_itself_is_refused(duo: Any, tmp_path: Path) -> None:
    job = write_csv(tmp_path / "j.csv", [["serial"], [FACTS["untagged_device"]["serial"]]])
    before = job.read_bytes()
    res = _run(run_cmd(job, duo.url, "--action", "lock", "--report", str(job)), cli_env(tmp_path))
    assert res.returncode == 2, res.stderr
    assert "job file itself" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert job.read_bytes() == before and duo.stats.requests == 0


def test_a_report_replacing_an_earlier_one_keeps_its_permissions(duo: Any, tmp_path: Path) -> None:
    job = write_csv(tmp_path / "j.csv", [["serial"], [FACTS["untagged_device"]["serial"]]])
    env = cli_env(tmp_path)
    assert _run(run_cmd(job, duo.url, "--action", "lock"), env).returncode == 0
    report = tmp_path / "j.outcome.csv"
    os.chmod(report, 0o640)
    assert _run(run_cmd(job, duo.url, "--action", "lock", "--fresh"), env).returncode == 0
    assert stat.S_IMODE(report.stat().st_mode) == 0o640


# -- crash-class errors --------------------------------------------------------------


def _limit_file_size(limit: int) -> Any:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_while_journaling_is_one_sentence(duo: Any, tmp_path: Path) -> None:
    serial = FACTS["untagged_device"]["serial"]
    job = write_csv(tmp_path / "big.csv", [["serial", "message"], *[[serial, "x" * 200] for _ in range(3000)]])
    env = cli_env(tmp_path)
    res = subprocess.run(
        run_cmd(job, duo.url, "--action", "message"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_file_size(256 * 1024),
    )
    assert res.returncode == 2, res.stderr
    _no_traceback(res.stderr)
    assert "disk is full" in res.stderr and str(tmp_path / "state") in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert duo.stats.mutating == 0


def test_a_disk_full_mid_run_stops_with_one_sentence_and_nothing_is_sent_twice(tmp_path: Path) -> None:
    with SimServer(make_app(devices=2500, seed=29)) as sim:
        devices = unique_devices(sim, 2000)
        job = write_csv(tmp_path / "lock.csv", [["serial"], *[[s] for s, _ in devices]])
        env = cli_env(tmp_path)
        args = run_cmd(job, sim.url, "--action", "lock", "--rate", "none")
        full = subprocess.run(
            args, env=env, capture_output=True, text=True, timeout=120, preexec_fn=_limit_file_size(600 * 1024)
        )
        assert full.returncode == 1, full.stderr  # rows ran, so not 2
        _no_traceback(full.stderr)
        assert "disk is full" in full.stderr and "run the same command again" in full.stderr
        assert len([line for line in full.stderr.splitlines() if line.startswith("Error:")]) == 1
        assert 0 < sim.stats.mutating < 2000
        again = _run(args, env)  # space freed
        assert "Resuming run" in again.stderr, again.stderr
        assert max(_locks_per_device(sim, devices)) == 1, "nothing sent twice"
        statuses = [r["status"] for r in read_report(job.with_name("lock.outcome.csv"))]
        assert set(statuses) <= {"succeeded", "unknown"} and statuses.count("succeeded") >= 1900


def test_a_damaged_journal_says_how_to_start_over(duo: Any, tmp_path: Path) -> None:
    job = write_csv(tmp_path / "j.csv", [["serial"], [FACTS["untagged_device"]["serial"]]])
    env = cli_env(tmp_path)
    assert _run(run_cmd(job, duo.url, "--action", "lock"), env).returncode == 0
    journal = tmp_path / "state" / "journal.sqlite3"
    with sqlite3.connect(journal) as db:  # fold the WAL in, so the damage lands in the file that is read
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(journal.read_bytes())
    data[0:4096] = b"\xde\xad\xbe\xef" * 1024
    journal.write_bytes(bytes(data))
    res = _run(run_cmd(job, duo.url, "--action", "lock", "--fresh"), env)
    assert res.returncode == 2, res.stderr
    _no_traceback(res.stderr)
    assert str(journal) in res.stderr and "damaged" in res.stderr and "--state-dir" in res.stderr
    assert "run the same command again" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_closed_pipe_on_stdout_is_quiet(tmp_path: Path) -> None:
    from bulkmdm.journal import Journal

    with Journal(tmp_path / "state") as journal:
        for n in range(3000):
            journal_run(journal, identity=str(n), job_path=f"/jobs/job-{n}.csv", content="", url="http://127.0.0.1:1")
    env = cli_env(tmp_path)
    res = subprocess.run(
        f"'{sys.executable}' -m bulkmdm runs --limit 3000 | head -1",
        shell=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.stdout.strip(), res.stderr
    assert res.stderr == "", res.stderr


def test_a_port_in_use_for_the_simulator_is_one_sentence() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = subprocess.run(
            [sys.executable, "-m", "bulkmdm", "sim", "duostation", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert res.returncode == 2, res.stderr
    assert f"Port {port}" in res.stderr and "in use" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


# -- the canary and the circuit breaker ----------------------------------------------


def test_a_job_whose_every_change_is_refused_stops_within_a_couple_of_dozen(tmp_path: Path) -> None:
    with SimServer(make_app(devices=500, seed=26)) as sim:
        devices = unique_devices(sim, 400)
        sim.faults.update({"error_rate": 1.0, "error_status": 403, "mutating_only": True})
        job = write_csv(tmp_path / "lock.csv", [["serial"], *[[s] for s, _ in devices]])
        env = cli_env(tmp_path)
        args = run_cmd(job, sim.url, "--action", "lock", "--rate", "none", "--concurrency", "8")
        res = _run(args, env)
        assert res.returncode == 1, res.stderr
        _no_traceback(res.stderr)
        assert sim.stats.mutating <= 28, sim.stats.mutating  # 20 in a row, and at most the pool's 8 in flight
        assert "refused 20 changes in a row the same way" in res.stderr
        assert "Service temporarily unavailable" in res.stderr  # the MDM's own words
        rows = read_report(job.with_name("lock.outcome.csv"))
        statuses = [r["status"] for r in rows]
        assert statuses.count("failed") == sim.stats.mutating
        assert statuses.count("not-run") == 400 - sim.stats.mutating
        assert all("refused 20 changes" in r["detail"] for r in rows if r["status"] == "not-run")
        reasons = journal_reasons(tmp_path / "state", job.with_name("lock.outcome.csv"))
        assert [str(reason) for reason in reasons] == [
            Reason.AUTH if r["status"] == "failed" else Reason.NOT_SENT for r in rows
        ]
        # fixed: the same command continues with the rows not sent
        sim.faults.update({"error_rate": 0.0})
        again = _run(args, env)
        assert "Resuming run" in again.stderr, again.stderr
        assert [r["status"] for r in read_report(job.with_name("lock.outcome.csv"))].count("succeeded") == (
            400 - statuses.count("failed")
        )


def test_the_canary_sends_the_first_changes_alone(tmp_path: Path) -> None:
    with SimServer(make_app(devices=200, seed=27)) as sim:
        devices = unique_devices(sim, 40)
        sim.faults.update({"latency": 0.3, "mutating_only": True})
        job = write_csv(tmp_path / "lock.csv", [["serial"], *[[s] for s, _ in devices]])
        with spawn(
            run_cmd(job, sim.url, "--action", "lock", "--rate", "none", "--concurrency", "8"), cli_env(tmp_path)
        ) as proc:
            wait_for(lambda: sim.stats.mutating >= 1 or proc.poll() is not None)
            time.sleep(0.15)
            assert sim.stats.mutating == 1  # alone while the first answer is awaited
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert sim.stats.mutating == 40


@pytest.mark.parametrize(
    ("fault", "after", "within"),
    [
        # each change answered 429, Retry-After 3: the second in a row is evidence of a
        # limit, and every send holds for its Retry-After before the third goes
        ({"throttle_rate": 1.0, "throttle_retry_after": 3.0}, 2.5, 4.5),
        ({"slow_rate": 1.0, "slow_seconds": 3.0}, 0.0, 2.6),  # each change held 3 s (passed on after CANARY_PATIENCE)
    ],
    ids=["429", "held"],
)
def test_a_canary_batch_waiting_out_a_fault_lets_the_next_go_alongside(
    tmp_path: Path, fault: dict[str, float], after: float, within: float
) -> None:
    """A 429 or a reply held for seconds says nothing about whether the job is
    right: while the first change waits it out, the next canary batch goes
    out (after the hold a limit's Retry-After asks of every send), up to
    three at once; no more, since nothing has succeeded yet."""
    with SimServer(make_app(devices=200, seed=29)) as sim:
        devices = unique_devices(sim, 20)
        sim.faults.update({**fault, "mutating_only": True, "seed": 29})
        job = write_csv(tmp_path / "lock.csv", [["serial"], *[[s] for s, _ in devices]])
        with spawn(
            run_cmd(job, sim.url, "--action", "lock", "--rate", "none", "--concurrency", "8"), cli_env(tmp_path)
        ) as proc:
            wait_for(lambda: sim.stats.mutating >= 1 or proc.poll() is not None)
            started = time.monotonic()
            wait_for(lambda: sim.stats.mutating >= 3 or proc.poll() is not None)
            assert after <= time.monotonic() - started < within
            time.sleep(0.2)
            assert sim.stats.mutating == 3  # the canary's three, the pool not widened
            sim.faults.update({"throttle_rate": 0.0, "slow_rate": 0.0})
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        statuses = [r["status"] for r in read_report(job.with_name("lock.outcome.csv"))]
        assert statuses == ["succeeded"] * 20


def test_a_server_gone_mid_run_stops_the_run(tmp_path: Path) -> None:
    sim = SimServer(make_app(devices=400, seed=28))
    sim.start()
    try:
        sim.faults.update({"latency": 0.01, "mutating_only": True})
        devices = unique_devices(sim, 300)
        job = write_csv(tmp_path / "lock.csv", [["serial"], *[[s] for s, _ in devices]])
        proc = subprocess.Popen(
            run_cmd(job, sim.url, "--action", "lock", "--rate", "none", "--concurrency", "16"),
            env=cli_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: sim.stats.mutating >= 30 or proc.poll() is not None)
        finally:
            sim.stop()
        try:
            _, err = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        sim.stop()
    assert proc.returncode == 1, err
    _no_traceback(err)
    # connections refused after answers: the run stops at once, the rows it
    # could not deliver are not-run (not spent on connection attempts until
    # the breaker has seen 20 outcomes)
    assert re.search(r"the MDM stopped answering: the last 2\d requests got no answer, and connections to 127", err), (
        err
    )
    assert "can no longer be made; check that it is up and reachable" in err
    statuses = [r["status"] for r in read_report(job.with_name("lock.outcome.csv"))]
    assert statuses.count("failed") == 0, err
    assert statuses.count("not-run") >= 300 - sim.stats.mutating - 16, (statuses.count("not-run"), sim.stats.mutating)


def test_an_mdm_that_stops_answering_changes_stops_the_run(tmp_path: Path) -> None:
    """Changes held past the timeout while reads are answered (each read
    back, not there, sent again) would keep a job going for minutes: 20
    changes in a row without an answer stop the run."""
    with SimServer(make_app(devices=400, seed=28)) as sim:
        devices = unique_devices(sim, 300)
        sim.faults.update({"slow_rate": 1.0, "slow_seconds": 30.0, "mutating_only": True})
        job = write_csv(tmp_path / "tag.csv", [["serial", "tag"], *[[s, "Musik"] for s, _ in devices]])
        started = time.monotonic()
        res = _run(run_cmd(job, sim.url, "--action", "tag", "--timeout", "1"), cli_env(tmp_path))
        took = time.monotonic() - started
        posts = sim.stats.mutating
    assert res.returncode == 1, res.stderr
    _no_traceback(res.stderr)
    assert re.search(r"the MDM stopped answering changes: the last 2\d sent got no answer", res.stderr), res.stderr
    assert posts <= 45, (posts, took, res.stderr)  # 20 in a row, and the ones in flight then
    assert took < 45, took
    statuses = [r["status"] for r in read_report(job.with_name("tag.outcome.csv"))]
    assert statuses.count("not-run") >= 300 - posts, statuses
    # the changes in flight at the stop are read back (this server makes a
    # change, then holds its answer): none is left unknown
    assert statuses.count("unknown") == 0 and statuses.count("succeeded") == posts, statuses


def test_rows_are_carried_over_by_content_each_done_row_at_most_once(tmp_path: Path) -> None:
    from bulkmdm.journal import IN_FLIGHT, Journal, NewRow
    from bulkmdm.model import Outcome, Reason, Status

    def create(journal: Journal, digests: list[str]) -> int:
        rows = [NewRow([d], "lock", d, d) for d in digests]
        return journal_run(journal, rows, identity="job", content="-".join(digests), action="lock")

    with Journal(tmp_path / "state") as journal:
        old = create(journal, ["a", "a", "b", "c", "d"])
        journal.record(
            old,
            [
                Outcome(0, Status.SUCCEEDED, "ok", reason=Reason.DONE),
                Outcome(1, Status.SUCCEEDED, "ok", reason=Reason.DONE),
                Outcome(2, Status.FAILED, "no", reason=Reason.REFUSED),
                Outcome(3, Status.NOT_RUN, "stopped", reason=Reason.NOT_SENT),
            ],
        )
        journal.mark_in_flight(old, [4])
        new = create(journal, ["d", "c", "a", "e", "a", "a", "b"])
        assert journal.carry_over(old, new) == 4  # a, a, b done and d in flight; c was not-run
        assert journal.indices(new, IN_FLIGHT) == [0]
        assert journal.to_send(new) == [1, 3, 5]  # c, e and the third a
        statuses = {record.idx: record.status for record in journal.rows(new)}
        assert statuses[2] == statuses[4] == "succeeded" and statuses[6] == "failed"


def test_a_lock_whose_process_id_was_taken_by_a_newer_process_does_not_block(duo: Any, tmp_path: Path) -> None:
    job = write_csv(tmp_path / "j.csv", [["serial"], [FACTS["untagged_device"]["serial"]]])
    env = cli_env(tmp_path)
    args = run_cmd(job, duo.url, "--action", "lock")
    assert _run(args, env).returncode == 0
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # a lock left an hour ago by a process whose id the (younger) stranger now has
        with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as db:
            an_hour_ago = time.time() - 3600
            db.execute(
                "INSERT INTO locks (identity, run_id, pid, host, started) SELECT identity, id, ?, ?, ? FROM runs",
                (stranger.pid, socket.gethostname(), an_hour_ago),
            )
        again = _run([*args, "--fresh"], env)
        assert again.returncode == 0, again.stderr
    finally:
        stranger.kill()
        stranger.wait(10)
