"""The "Follow up" view of a finished run: what ``bulkmdm track`` knows of its
rows on the devices, with the same counts as the terminal (``45/60 confirmed,
15 pending (oldest 3 min)``), the pending rows as a table and as a job to
download, and a button that looks again.

A look is a child ``bulkmdm track REPORT``, the connection's credentials in
its environment only (as a run's are); the page refreshes itself while one is
on. The view reads the report the look writes, so it shows the same whether
the look was made here or in a terminal.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from .. import providers
from ..shown import Secrets, plain
from ..errors import UsageError
from .app import STATE, WebState

routes = web.RouteTableDef()

#: run id -> the child looking at its devices now
LOOKS: web.AppKey[dict[int, asyncio.subprocess.Process]] = web.AppKey("follow-up looks", dict)
#: pending rows shown on the page (the download holds them all)
SHOWN = 200


@dataclass(slots=True)
class FollowUp:
    """A run's report as tracking left it."""

    run_id: int
    report: Path
    #: the report has the tracking columns (a look was made)
    tracked: bool = False
    counts: Counter[str] = field(default_factory=Counter)
    progress: str = ""
    #: the job's own columns, and the pending rows' cells in them (with their spreadsheet line)
    headers: list[str] = field(default_factory=list)
    pending: list[tuple[int, list[str]]] = field(default_factory=list)


def read_follow_up(state_dir: Path, run_id: int) -> FollowUp:
    """The run's report and journal, as the page shows them."""
    from ..jobfile import read_job
    from ..journal import Journal
    from ..track import PENDING, TrackResult, TrackRow

    with Journal(state_dir) as journal:
        run = journal.run(run_id)
        sent = journal.sent_times(run_id)
    report = Path(run.report_path)
    if run.dry_run or not report.exists():
        raise UsageError(f"Run {run_id} has no report to follow up (a dry run, or the report was moved).")
    table = read_job(report)
    status_at = table.outcome.get("device_status")
    outcome_at = set(table.outcome.values())
    keep = [i for i in range(len(table.headers)) if i not in outcome_at]
    follow = FollowUp(run_id, report, tracked=status_at is not None, headers=[table.headers[i] for i in keep])
    if status_at is None:
        return follow
    rows = []
    for index, cells in enumerate(table.rows):
        status = cells[status_at].strip()
        rows.append(TrackRow(index, "", "", status, sent_at=sent.get(index)))
        if status == PENDING:
            follow.pending.append((index + 2, [cells[i] for i in keep]))
    result = TrackResult(report, rows)
    follow.counts = result.counts()
    follow.progress = result.progress()
    return follow


def _state(request: web.Request) -> WebState:
    return request.app[STATE]


def _run_id(request: web.Request) -> int:
    return int(request.match_info["run_id"])


def _looks(request: web.Request) -> dict[int, asyncio.subprocess.Process]:
    return request.app[LOOKS]


def _looking(request: web.Request, run_id: int) -> bool:
    process = _looks(request).get(run_id)
    return process is not None and process.returncode is None


async def _ended(request: web.Request, run_id: int) -> None:
    """A look that ended since the page was last shown: its error, if it could not look, as the page's notice."""
    process = _looks(request).get(run_id)
    if process is None or process.returncode is None:
        return
    del _looks(request)[run_id]
    _, err = await process.communicate()
    if process.returncode == 2:
        state = _state(request)
        lines = [line for line in err.decode(errors="replace").splitlines() if line.startswith("Error:")]
        text = lines[-1].removeprefix("Error:").strip() if lines else "The look could not reach the MDM."
        if state.connection is not None:
            text = Secrets.from_env(state.connection.credentials).clean(text)
        state.flash = plain(text)


@routes.get("/history/{run_id:\\d+}/follow-up")
async def follow_up(request: web.Request) -> web.Response:
    state, run_id = _state(request), _run_id(request)
    await _ended(request, run_id)
    follow = await asyncio.to_thread(read_follow_up, state.state_dir, run_id)
    return state.render(
        "followup.html",
        follow=follow,
        shown=follow.pending[:SHOWN],
        looking=_looking(request, run_id),
        checked=time.strftime("%H:%M:%S"),
    )


@routes.post("/history/{run_id:\\d+}/follow-up/look")
async def look(request: web.Request) -> web.Response:
    """Start one look (a child ``bulkmdm track``) with the connection's credentials."""
    from ..journal import Journal

    state, run_id = _state(request), _run_id(request)
    with Journal(state.state_dir) as journal:
        run = journal.run(run_id)
    connection = state.connection
    if connection is None or (connection.provider, connection.url.rstrip("/")) != (run.provider, run.url.rstrip("/")):
        state.flash = (
            f"Connect to {run.provider} at {run.url} (the MDM this run changed) first; its credentials are needed "
            "to look at the devices."
        )
    elif not _looking(request, run_id):
        args = ["-m", "bulkmdm", "track", run.report_path, "--state-dir", str(state.state_dir)]
        env = connection.child_environment()
        env.update(providers.settings_env(connection.provider, {"partition": connection.partition}))
        _looks(request)[run_id] = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    return web.Response(status=303, headers={"Location": f"/history/{run_id}/follow-up"})


@routes.get("/history/{run_id:\\d+}/follow-up/pending.csv")
async def pending_job(request: web.Request) -> web.StreamResponse:
    """The pending rows as a job: the job's own columns, ready to run again or to hand on."""
    from urllib.parse import quote

    from ..report import write_report

    state, run_id = _state(request), _run_id(request)
    follow = await asyncio.to_thread(read_follow_up, state.state_dir, run_id)
    if not follow.pending:
        raise UsageError("No row of this run is pending on its device.")
    folder = state.state_dir / "follow-up"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    stem = follow.report.name.split(".")[0] or "job"
    path = folder / f"{stem}.pending.csv"
    await asyncio.to_thread(write_report, path, follow.headers, (cells for _, cells in follow.pending))
    disposition = f"attachment; filename*=UTF-8''{quote(path.name)}"
    return web.FileResponse(path, headers={"Content-Disposition": disposition})


def add_follow_up(app: web.Application) -> None:
    """The view's routes, and the looks it starts (ended with the server)."""
    app[LOOKS] = {}
    app.router.add_routes(routes)

    async def stop_looks(app: web.Application) -> None:
        for process in app[LOOKS].values():
            if process.returncode is None:
                process.terminate()

    app.on_shutdown.append(stop_looks)
