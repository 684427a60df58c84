"""Shared fixtures: simulators on 127.0.0.1 and a CLI runner with real files."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import pty
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner

from bulkmdm.cli import main
from bulkmdm.sim.common import SimServer

CREDS = {"BULKMDM_USERNAME": "admin", "BULKMDM_PASSWORD": "admin"}


def journal_run(journal: Any, rows: Sequence[Any] = (), **fields: Any) -> int:
    """A run in ``journal`` (a bulkmdm.journal.Journal) with these rows (NewRow); the
    fields a test does not name are those of a one-column DuoSTATION job."""
    defaults: dict[str, Any] = {
        "identity": "x",
        "job_path": "/j.csv",
        "content": "0",
        "provider": "duostation",
        "url": "http://h",
        "action": None,
        "partition_id": None,
        "dry_run": False,
        "headers": ["serial"],
        "delimiter": ",",
        "report_path": "/r.csv",
    }
    return int(journal.create_run(**{**defaults, **fields}, rows=list(rows)))


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment for a ``bulkmdm`` subprocess: no BULKMDM_ variable of the
    caller's, the simulators' credentials, a journal folder of the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMDM_")}
    env.update(CREDS, BULKMDM_STATE_DIR=str(tmp_path / "state"), **extra)
    return env


def run_cmd(job: Path, url: str, *extra: str) -> list[str]:
    """``bulkmdm run JOB`` against DuoSTATION at ``url``, as a subprocess's argv."""
    return [sys.executable, "-m", "bulkmdm", "run", str(job), "--provider", "duostation", "--url", url, *extra]


@contextlib.contextmanager
def spawn(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """A command run in the background, its output kept (``communicate()``);
    killed if it is still running when the block ends."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def on_terminal(
    args: list[str], env: dict[str, str], *, answer: str | None = None, timeout: float = 60
) -> tuple[int, str, float]:
    """Run a command on a pseudo-terminal; at its prompt type ``answer``, or
    (``answer`` None) press Ctrl-C. Returns the exit code, the screen text and
    the seconds from the prompt to the exit."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    seen = b""
    asked_at = 0.0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
                if not asked_at and b"Type" in seen and seen.rstrip().endswith(b":"):
                    asked_at = time.monotonic()
                    if answer is None:
                        proc.send_signal(signal.SIGINT)  # what Ctrl-C on its terminal sends
                    else:
                        os.write(master, answer.encode() + b"\r")
            elif proc.poll() is not None:
                break
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return proc.returncode, seen.decode(errors="replace"), time.monotonic() - asked_at


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own journal folder and no real credentials."""
    monkeypatch.setenv("BULKMDM_STATE_DIR", str(tmp_path / "state"))
    for name in list(os.environ):
        if name.startswith("BULKMDM_") and name != "BULKMDM_STATE_DIR":
            monkeypatch.delenv(name)


@pytest.fixture
def duo() -> Iterator[SimServer]:
    from bulkmdm.sim.duostation import make_app

    with SimServer(make_app(devices=400, seed=1)) as server:
        yield server


#: the bearer token the Banyan simulators of the tests accept
BANYAN_TOKEN = "s3cr3t-banyan-token"


@pytest.fixture(params=["doc", "real"])
def any_banyan(request: pytest.FixtureRequest) -> Iterator[SimServer]:
    """A Banyan simulator in each behaviour in turn: the doc's, then the real service's."""
    from bulkmdm.sim.banyan import make_app

    with SimServer(make_app(devices=220, seed=3, token=BANYAN_TOKEN, real=request.param == "real")) as server:
        yield server


@dataclass
class Result:
    exit_code: int
    output: str
    report: list[dict[str, str]]
    report_path: Path
    #: each row's reason code (bulkmdm.model.Reason), as the journal of the run that wrote the report holds it
    reasons: list[str] = field(default_factory=list)


def journal_reasons(state: Path, report: Path) -> list[str]:
    """The reason code of each row of the run that last wrote ``report``, from the journal in ``state``."""
    from bulkmdm.journal import Journal

    if not (state / "journal.sqlite3").exists():
        return []
    with Journal(state) as journal:
        run = journal.for_report(str(report.resolve()))
        return [str(record.reason) for record in journal.rows(run.id)] if run is not None else []


def write_csv(path: Path, rows: Sequence[Sequence[str]], *, delimiter: str = ",", encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as fh:
        csv.writer(fh, delimiter=delimiter).writerows(rows)
    return path


def read_report(path: Path) -> list[dict[str, str]]:
    if path.suffix == ".xlsx":
        import openpyxl

        wb = openpyxl.load_workbook(path)
        ws = wb.worksheets[0]
        values = [[("" if c is None else str(c)) for c in row] for row in ws.iter_rows(values_only=True)]
        return [dict(zip(values[0], r, strict=False)) for r in values[1:]]
    with open(path, newline="", encoding="utf-8-sig") as fh:
        sample = fh.read(4096)
        fh.seek(0)
        delimiter = ";" if sample.split("\n")[0].count(";") > sample.split("\n")[0].count(",") else ","
        return list(csv.DictReader(fh, delimiter=delimiter))


@pytest.fixture
def run_cli() -> object:
    def invoke(
        args: Sequence[str], *, env: dict[str, str] | None = None, report: Path | None = None, input: str | None = None
    ) -> Result:
        runner = CliRunner()
        merged = dict(CREDS)
        merged.update(env or {})
        result = runner.invoke(main, list(args), env=merged, input=input, catch_exceptions=False)
        output = result.output
        path = report
        if path is None and args and args[0] == "run":
            from bulkmdm.engine import default_report_path

            path = default_report_path(Path(args[1]), dry_run="--dry-run" in args)
            if "--report" in args:
                path = Path(args[list(args).index("--report") + 1])
        rows = read_report(path) if path is not None and path.exists() else []
        state = Path(merged.get("BULKMDM_STATE_DIR") or os.environ["BULKMDM_STATE_DIR"])
        reasons = journal_reasons(state, path) if path is not None and "--dry-run" not in args else []
        return Result(result.exit_code, output, rows, path or Path(), reasons)

    return invoke


def wait_for(predicate: Any, timeout: float = 60.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds (AssertionError naming ``what`` after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        time.sleep(0.01)


def journal_states(state: Path) -> Counter[str]:
    """How many rows of every run in the journal in ``state`` are in each state
    (``in_flight``, ``done``, ...), read while a ``bulkmdm run`` child may be
    writing it (the journal is in WAL mode: a reader does not block the writer)."""
    path = state / "journal.sqlite3"
    if not path.exists():
        return Counter()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return Counter(dict(db.execute("SELECT state, count(*) FROM rows GROUP BY state").fetchall()))
    except sqlite3.OperationalError:  # the child has not created its tables yet
        return Counter()
    finally:
        db.close()


class Lines:
    """The lines a child writes to a pipe, read as they come by a thread of their own."""

    def __init__(self, pipe: Any) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(iter(pipe.readline, "")), daemon=True)
        self._thread.start()

    def __contains__(self, words: str) -> bool:
        return any(words in line for line in list(self.lines))

    def text(self) -> str:
        self._thread.join(10)
        return "".join(self.lines)


def sim_idle(sim: SimServer) -> bool:
    """True when the simulator holds no connection and handles no request: no
    task is left on its loop (a connection is one until it is closed, a
    request one until it is answered)."""
    return sim.call(lambda: not asyncio.all_tasks())  # type: ignore[no-any-return]


def unique_devices(sim: SimServer, n: int) -> list[tuple[str, str]]:
    """``n`` (serial, device id) pairs of generated DuoSTATION devices with a unique serial."""
    from bulkmdm.sim.duostation import FACTS

    st = sim.app["state"]

    def pick() -> list[tuple[str, str]]:
        out = []
        for dev in list(st.devices.values())[FACTS["edge_devices"] :]:
            if len(st.devices_by_serial(dev["serialNumber"])) == 1:
                out.append((dev["serialNumber"], dev["id"]))
        return out[:n]

    return sim.call(pick)  # type: ignore[no-any-return]


@pytest.fixture
async def loopback() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    """Start aiohttp apps on 127.0.0.1 (a free port each); their base URLs; stopped after the test."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()
