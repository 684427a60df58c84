"""A wrong set-up stops the run before it starts: nothing listening, TLS
against a plain server, a URL whose first list answers 404, a login page, a
device space that is not the account's. Nothing is sent, one sentence names
the cause, an earlier report stays as it was, exit 2, within seconds."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bulkmdm.sim.common import SimServer

from conftest import write_csv

ENV = {
    "duostation": {"BULKMDM_USERNAME": "admin", "BULKMDM_PASSWORD": "admin"},
    "ivanti": {"BULKMDM_USERNAME": "admin", "BULKMDM_PASSWORD": "admin", "BULKMDM_PARTITION_ID": "1"},
    "manageengine": {"BULKMDM_API_KEY": "me-api-key"},
    "banyan": {"BULKMDM_TOKEN": "banyan-token"},
}
#: an action each vendor can do, and the columns of one row of it
ROW = {
    "duostation": (["serial", "action"], ["SERIAL-1", "lock"]),
    "ivanti": (["serial", "action"], ["SERIAL-1", "lock"]),
    "manageengine": (["serial", "group", "action"], ["SERIAL-1", "Klass 7A", "add-to-group"]),
    "banyan": (["serial", "action"], ["SERIAL-1", "ban"]),
}
PROVIDERS = sorted(ENV)


@pytest.fixture(params=PROVIDERS)
def vendor(request: pytest.FixtureRequest) -> Iterator[tuple[str, SimServer]]:
    from bulkmdm import sim

    name = request.param
    with SimServer(sim.load(name)(devices=30, seed=1)) as server:
        yield name, server


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def job_for(tmp_path: Path, name: str) -> Path:
    header, row = ROW[name]
    job = write_csv(tmp_path / "job.csv", [header, row, row[:-1] + [row[-1]]])
    report = job.with_name("job.outcome.csv")
    report.write_text("an earlier report\n")
    return job


def check_stopped(result: Any, job: Path, started: float, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert job.with_name("job.outcome.csv").read_text() == "an earlier report\n"
    for word in words:
        assert word in result.output, result.output
    assert time.monotonic() - started < 15


def test_nothing_listening(run_cli: Any, tmp_path: Path) -> None:
    for name in PROVIDERS:
        job = job_for(tmp_path, name)
        started = time.monotonic()
        url = f"http://127.0.0.1:{closed_port()}"
        result = run_cli(["run", str(job), "--provider", name, "--url", url, "--yes"], env=ENV[name])
        check_stopped(result, job, started, "Nothing answers at", "--url")


def test_tls_against_a_plain_http_server(run_cli: Any, tmp_path: Path, vendor: tuple[str, SimServer]) -> None:
    name, server = vendor
    job = job_for(tmp_path, name)
    started = time.monotonic()
    url = server.url.replace("http://", "https://")
    result = run_cli(["run", str(job), "--provider", name, "--url", url, "--yes"], env=ENV[name])
    check_stopped(result, job, started, "does not speak TLS", "http://")
    assert server.stats.mutating == 0


def test_a_wrong_path_whose_first_list_answers_404(run_cli: Any, tmp_path: Path, vendor: tuple[str, SimServer]) -> None:
    name, server = vendor
    job = job_for(tmp_path, name)
    started = time.monotonic()
    result = run_cli(
        ["run", str(job), "--provider", name, "--url", server.url + "/wrong/place", "--yes"], env=ENV[name]
    )
    check_stopped(result, job, started, "check --url")
    assert server.stats.mutating == 0


def test_a_login_page_in_front_of_the_mdm(run_cli: Any, tmp_path: Path) -> None:
    async def login(request: web.Request) -> web.Response:
        return web.Response(text="<html><body>Please sign in</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", login)
    with SimServer(app) as server:
        for name in PROVIDERS:
            job = job_for(tmp_path, name)
            started = time.monotonic()
            result = run_cli(["run", str(job), "--provider", name, "--url", server.url, "--yes"], env=ENV[name])
            check_stopped(result, job, started, "HTML page", "login page")


def test_a_device_space_that_is_not_the_accounts(run_cli: Any, tmp_path: Path) -> None:
    from bulkmdm import sim

    with SimServer(sim.load("ivanti")(devices=30, seed=1, partition="7")) as server:
        job = job_for(tmp_path, "ivanti")
        started = time.monotonic()
        env = {**ENV["ivanti"], "BULKMDM_PARTITION_ID": "8"}
        result = run_cli(["run", str(job), "--provider", "ivanti", "--url", server.url, "--yes"], env=env)
        check_stopped(result, job, started, "--partition")
        assert server.stats.mutating == 0
