"""The pages and actions of ``bulkmdm serve``, in the order an admin meets them:
connect, upload, preview, dry run, confirm, run, done, history."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import BodyPartReader, web

from ..actions import ACTIONS, destroys, normalise_action
from ..errors import BulkMDMError, UsageError
from .app import STATE, Upload, WebState, find_upload, incoming_file, job_name, keep_upload
from .children import ChildRun, RunRequest, count_statuses
from .connection import (
    credential_fields,
    Connection,
    check_connection,
    connection_from_form,
    extra_settings,
    profile_names,
    typed_values,
    values_of,
)
from .rows import TO_FIX, read_table, rows_to_fix

routes = web.RouteTableDef()


def add_routes(app: web.Application) -> None:
    app.router.add_routes(routes)


def _state(request: web.Request) -> WebState:
    return request.app[STATE]


def _see(location: str) -> web.Response:
    """After a POST: go to the page (303, so a reload does not send the form again)."""
    return web.Response(status=303, headers={"Location": location})


def _upload(request: web.Request) -> Upload:
    upload = find_upload(_state(request), request.match_info["upload"])
    if upload is None:
        raise web.HTTPNotFound(text="There is no such job in this session; upload it again.\n")
    return upload


def _child(request: web.Request) -> ChildRun:
    child = _state(request).children.get(request.match_info["child"])
    if child is None:
        raise web.HTTPNotFound(
            text="There is no such run in this session; the history on the first page lists every run.\n"
        )
    return child


# -- connect and upload -------------------------------------------------------


@routes.get("/")
async def home(request: web.Request) -> web.Response:
    state = _state(request)
    history = await asyncio.to_thread(_history, state)
    profiles = await asyncio.to_thread(profile_names) if state.connection is None else []
    return state.render(
        "home.html",
        history=history,
        profiles=profiles,
        max_upload_mb=state.max_upload // (1024 * 1024),
        typed=state.typed,
        settings_of={name: extra_settings(name) for name in credential_fields()},
    )


def _history(state: WebState, limit: int = 15) -> list[dict[str, Any]]:
    """Runs from the journal, newest first: those started here and from the terminal alike."""
    from ..journal import Journal

    ours = {c.run_id: c for c in state.children.values() if c.run_id is not None}
    uploads = state.uploads_dir.resolve()
    try:
        with Journal(state.state_dir) as journal:
            listed = journal.runs(limit)
    except BulkMDMError:
        return []
    history = []
    for info, counts in listed:
        job = Path(info.job_path)
        history.append(
            {
                "info": info,
                "counts": count_statuses(counts),
                "child": ours.get(info.id),
                "report": Path(info.report_path).exists(),
                "upload": job.parent.name if job.parent.parent == uploads and job.exists() else None,
            }
        )
    return history


@routes.get("/favicon.ico")
async def favicon(request: web.Request) -> web.StreamResponse:
    """For a client that asks for the icon at its old place, not where the pages' <link> says."""
    return web.FileResponse(
        Path(__file__).with_name("static") / "favicon.svg", headers={"Content-Type": "image/svg+xml"}
    )


@routes.post("/connect")
async def connect(request: web.Request) -> web.Response:
    state = _state(request)
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    try:
        connection = connection_from_form(form)
        await check_connection(connection)
    except BulkMDMError as exc:  # a typo in the form, a profile without credentials, a refusal of the MDM
        state.flash = str(exc)
        state.typed = typed_values(form) if not form.get("profile") else state.typed
        return _see("/")
    state.connection, state.typed = connection, {}
    state.note = f"Connected: {connection.label} answered a first look-up with these credentials."
    return _see("/")


@routes.post("/disconnect")
async def disconnect(request: web.Request) -> web.Response:
    state = _state(request)
    if state.connection is not None:
        state.typed = values_of(state.connection)
    state.connection = None
    return _see("/")


@routes.post("/upload")
async def upload(request: web.Request) -> web.Response:
    state = _state(request)
    reader = await request.multipart()
    part = await reader.next()
    if (
        not isinstance(part, BodyPartReader)
        or part.name != "csrf"
        or not state.guard.holds_csrf((await part.read(decode=False))[:200].decode(errors="replace"))
    ):
        return web.Response(
            status=403,
            text="This form is out of date (its security token does not match); reload the page and send it again.\n",
        )
    part = await reader.next()
    filename = getattr(part, "filename", None) or ""
    if part is None or not filename:
        state.flash = "Choose a .csv or .xlsx job file first."
        return _see("/")
    # browsers send the name as UTF-8 with '"' as %22; some clients percent-encode all of it
    name = job_name(unquote(filename))
    if name is None:
        state.flash = f"{Path(filename).name} is not a .csv or .xlsx file; save the sheet as one and upload it."
        return _see("/")
    incoming = incoming_file(state)
    digest = await _save(part, incoming, state.max_upload)
    if digest is None:
        state.flash = (
            f"{name} is larger than {state.max_upload // (1024 * 1024)} MB; split it into smaller jobs and upload each."
        )
        return _see("/")
    job = keep_upload(state, incoming, name, digest)
    return _see(f"/jobs/{job.id}")


async def _save(part: Any, path: Path, limit: int) -> str | None:
    """Write an uploaded file to ``path`` and return its SHA-256; None (and nothing kept) when it is over
    ``limit`` bytes."""
    size = 0
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        while chunk := await part.read_chunk(256 * 1024):
            size += len(chunk)
            if size > limit:
                break
            digest.update(chunk)
            out.write(chunk)
    if size > limit:
        path.unlink(missing_ok=True)
        return None
    return digest.hexdigest()


# -- preview -------------------------------------------------------------


@routes.get("/jobs/{upload}")
async def preview(request: web.Request) -> web.Response:
    from . import preview as look

    state, job = _state(request), _upload(request)
    try:
        table = await state.table(job)
    except BulkMDMError as exc:
        return state.render("error.html", message=str(exc), status=400)
    can_do = _can_do(state)
    only_problems = request.query.get("show") == "problems"
    problems = await asyncio.to_thread(look.problem_rows, table, job.action, can_do)
    page = look.page_of(table, problems if only_problems else None, _number(request), job.action, can_do)
    earlier = [
        item
        for item in await asyncio.to_thread(_history, state, 50)
        if item["info"].job_path == str(job.path.resolve())
    ]
    return state.render(
        "job.html",
        job=job,
        table=table,
        columns=look.read_columns(table),
        page=page,
        problems=len(problems),
        only_problems=only_problems,
        earlier=earlier,
        actions=sorted(can_do) if can_do is not None else sorted(ACTIONS),
    )


def _can_do(state: WebState) -> frozenset[str] | None:
    from .. import providers

    if state.connection is None:
        return None
    try:
        return frozenset(providers.get(state.connection.provider).actions)
    except (BulkMDMError, ImportError):
        return None


def _number(request: web.Request, name: str = "page") -> int:
    try:
        return int(request.query.get(name, "1"))
    except ValueError:
        return 1


# -- dry run, confirm, run ---------------------------------------------------


def _connection(state: WebState) -> Connection:
    if state.connection is None:
        raise UsageError("Connect to your MDM first (the first page), then start the run again.")
    return state.connection


@routes.post("/jobs/{upload}/dry-run")
async def dry_run(request: web.Request) -> web.Response:
    state, job = _state(request), _upload(request)
    form = await request.post()
    if "action" in form:
        action = normalise_action(str(form["action"]))
        if action not in ACTIONS:
            raise UsageError("Choose the action for every row from the list.")
        job.action = action
    run = RunRequest(
        "dry run",
        job.path,
        job.report_path("dry run"),
        _connection(state),
        state.state_dir,
        job.id,
        dry_run=True,
        action=job.action,
    )
    job.dry_run = await state.start(run)
    return _see(f"/runs/{job.dry_run.id}")


@routes.post("/jobs/{upload}/run")
async def run(request: web.Request) -> web.Response:
    state, job = _state(request), _upload(request)
    form = await request.post()
    if job.dry_run is None or not job.dry_run.finished or not job.dry_run.request.report.exists():
        raise UsageError("Do a dry run of this job first; the real run is started from its results.")
    return await _run_after(state, job, form, job.dry_run, "run", job.path, ("planned",))


async def _run_after(
    state: WebState, job: Upload, form: Any, earlier: ChildRun, kind: str, source: Path, statuses: tuple[str, ...]
) -> web.Response:
    """Start the ``kind`` run of ``job`` on ``source`` from ``earlier``'s results: against the
    MDM ``earlier`` ran on (even if the page has been switched to another since), with its
    action, once the destructive rows of ``statuses`` in its report are confirmed."""
    summary = await state.summary(earlier.request.report, earlier.request.action)
    to_confirm = Counter(row.action for row in summary.destructive if row.status in statuses)
    yes = _confirmed(state, to_confirm, bool(summary.destructive), str(form.get("confirm", "")))
    if yes is None:
        return _see(f"/runs/{earlier.id}")
    request = RunRequest(
        kind,
        source,
        job.report_path(kind),
        earlier.request.connection,
        state.state_dir,
        job.id,
        yes=yes,
        rate=_rate(form),
        action=earlier.request.action,
    )
    return await _start(state, job, request)


async def _start(state: WebState, job: Upload, request: RunRequest) -> web.Response:
    """Start a run of ``job`` and show its page."""
    child = await state.start(request)
    job.runs.append(child)
    return _see(f"/runs/{child.id}")


def _confirmed(state: WebState, by_action: Counter[str], holds_destructive: bool, typed: str) -> bool | None:
    """True/False for --yes; None (and a message) when a destructive job's count was not typed.
    ``by_action``: the destructive rows the run will send, per action."""
    if not holds_destructive:
        return False
    destructive = sum(by_action.values())
    if destructive == 0:
        # Its destructive rows are all invalid or failed in the dry run, so none is sent; the
        # engine still wants --yes for a job that holds one (invalid rows count there too).
        return True
    if typed.strip() != str(destructive):
        state.flash = f"Type {destructive} to go ahead: this run will {destroys(by_action)}, for good."
        return None
    return True


def _rate(form: Any) -> str | None:
    rate = str(form.get("rate", "")).strip()
    return rate or None


@routes.post("/runs/{child}/stop")
async def stop(request: web.Request) -> web.Response:
    child = _child(request)
    child.stop()
    return _see(f"/runs/{child.id}")


@routes.post("/runs/{child}/resume")
async def resume(request: web.Request) -> web.Response:
    state, child = _state(request), _child(request)
    if not child.finished:
        return _see(f"/runs/{child.id}")
    return await _start(state, state.uploads[child.request.upload_id], child.request)


@routes.post("/runs/{child}/rerun")
async def rerun(request: web.Request) -> web.Response:
    """Run the report as the job: only its failed, invalid, unknown and not-run rows are sent."""
    state, child = _state(request), _child(request)
    job = state.uploads[child.request.upload_id]
    form = await request.post()
    return await _run_after(state, job, form, child, "re-run", child.request.report, TO_FIX)


# -- watching and results ------------------------------------------------------


@routes.get("/runs/{child}")
async def watch(request: web.Request) -> web.Response:
    state, child = _state(request), _child(request)
    job = state.uploads[child.request.upload_id]
    progress = await child.progress()
    rows = await _rows(request, child, progress)
    # asked after the last read that may let the child end: a child that ended during
    # the reads is shown ended with its results, not ended without them and no longer
    # followed (the page would wait for good)
    summary = None
    if child.finished and child.request.report.exists() and child.returncode != 2:
        summary = await state.summary(child.request.report, child.request.action)
    return state.render(
        "run.html", child=child, job=job, progress=progress, summary=summary, page=_number(request), **rows
    )


@routes.get("/runs/{child}/rows")
async def rows_part(request: web.Request) -> web.Response:
    """The row table alone, as the run goes: the run's page fetches it again as rows get done."""
    state, child = _state(request), _child(request)
    context = await _rows(request, child, await child.progress())
    if context["table"] is None:
        return web.Response(status=204)
    return state.render("rows_part.html", child=child, **context)


async def _rows(request: web.Request, child: ChildRun, progress: Any) -> dict[str, Any]:
    """The run's row table, as the address asks for it."""
    counts = count_statuses(progress.counts, running=not child.finished)
    run_id = child.run_id if child.returncode != 2 else None
    return await _row_table(request, child.request.state_dir, run_id, counts, f"/runs/{child.id}", not child.finished)


async def _row_table(
    request: web.Request, state_dir: Path, run_id: int | None, counts: Any, base: str, live: bool
) -> dict[str, Any]:
    """The page of a run's rows the address asks for (its status, search and page), and the counts."""
    table = None
    if run_id is not None:
        with contextlib.suppress(BulkMDMError):  # a run refused at its start leaves no rows behind
            table = await asyncio.to_thread(
                read_table,
                state_dir,
                run_id,
                status=request.query.get("status", ""),
                search=request.query.get("q", "")[:200],
                number=_number(request, "rows"),
                running=live,
            )
    to_fix = sum(counts.get(s, 0) for s in TO_FIX)
    return {"table": table, "counts": counts, "to_fix": to_fix, "rows_base": base, "rows_live": live}


@routes.get("/history/{run_id:\\d+}")
async def history_run(request: web.Request) -> web.Response:
    """Any run of the journal (started in the terminal, or by an earlier `bulkmdm serve`): its rows."""
    from ..journal import Journal

    state, run_id = _state(request), int(request.match_info["run_id"])

    def read() -> tuple[Any, dict[str, int]]:
        with Journal(state.state_dir) as journal:
            return journal.run(run_id), journal.counts(run_id)

    info, counts = await asyncio.to_thread(read)
    named = count_statuses(counts)
    context = await _row_table(request, state.state_dir, run_id, named, f"/history/{run_id}", False)
    return state.render("history_run.html", info=info, report=Path(info.report_path).exists(), **context)


@routes.get("/history/{run_id:\\d+}/rows-to-fix.csv")
async def history_rows_to_fix(request: web.Request) -> web.Response:
    from ..journal import Journal

    state, run_id = _state(request), int(request.match_info["run_id"])

    def read() -> tuple[Any, str]:
        with Journal(state.state_dir) as journal:
            info = journal.run(run_id)
        return info, rows_to_fix(state.state_dir, run_id)[0]

    info, text = await asyncio.to_thread(read)
    return _csv_download(text, Path(info.job_path))


@routes.get("/runs/{child}/rows-to-fix.csv")
async def rows_to_fix_download(request: web.Request) -> web.Response:
    """The rows that did not succeed, as a job: fix them in a spreadsheet, upload, run."""
    child = _child(request)
    if child.run_id is None or not child.finished:
        raise UsageError("The rows to fix can be downloaded once the run has ended.")
    text, _count = await asyncio.to_thread(rows_to_fix, child.request.state_dir, child.run_id)
    return _csv_download(text, child.request.job)


def _csv_download(text: str, job: Path) -> web.Response:
    name = f"{job.stem.removesuffix('.outcome')}.to-fix.csv"
    return web.Response(
        body=text.encode("utf-8-sig"),  # the BOM makes Excel read å/ä/ö as UTF-8, as in the report
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}"},
    )


@routes.get("/runs/{child}/events")
async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the progress every second until the child ends.

    Written by hand on StreamResponse (a dozen lines) rather than with
    aiohttp-sse: one more dependency for one endpoint is not worth it."""
    child = _child(request)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    try:
        while True:
            progress = await child.progress()
            payload = asdict(progress)
            payload["counts"] = count_statuses(progress.counts, running=not child.finished)
            await response.write(f"data: {json.dumps(payload)}\n\n".encode())
            if child.finished:
                await response.write(b"event: end\ndata: {}\n\n")
                return response
            await child.wait(1.0)
    except ConnectionResetError:  # the page was closed or left; the run goes on
        return response


@routes.get("/runs/{child}/report.{ext:csv|xlsx}")
async def report(request: web.Request) -> web.StreamResponse:
    """The run's report, converted by `bulkmdm report` from the journal when asked in the other format."""
    child = _child(request)
    wanted = "." + request.match_info["ext"]
    path = child.request.report
    if path.suffix.lower() != wanted:
        path = path.with_name(f"{path.stem}{wanted}")
        if child.run_id is None or not await _rebuild(child, path):
            raise UsageError(
                "This report cannot be written in that format now; download it as "
                f"{child.request.report.suffix} instead."
            )
    return _download(path)


async def _rebuild(child: ChildRun, out: Path) -> bool:
    import sys

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bulkmdm",
        "report",
        str(child.run_id),
        "--out",
        str(out),
        "--state-dir",
        str(child.request.state_dir),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await process.wait() == 0 and out.exists()


@routes.get("/runs/{child}/undo")
async def undo(request: web.Request) -> web.StreamResponse:
    child = _child(request)
    if child.undo_file is None or not child.undo_file.exists():
        raise UsageError("This run wrote no undo file (it changed nothing that can be put back).")
    return _download(child.undo_file)


@routes.get("/history/{run_id:\\d+}/report")
async def history_report(request: web.Request) -> web.StreamResponse:
    from ..journal import Journal

    state = _state(request)
    with Journal(state.state_dir) as journal:
        path = Path(journal.run(int(request.match_info["run_id"])).report_path)
    if not path.exists():
        raise UsageError(f"The report {path} is no longer there; `bulkmdm report RUN` writes it again.")
    return _download(path)


def _download(path: Path) -> web.FileResponse:
    if path.suffix.lower() not in (".csv", ".xlsx"):
        raise UsageError("Only .csv and .xlsx reports can be downloaded here.")
    disposition = f"attachment; filename*=UTF-8''{quote(path.name)}"
    return web.FileResponse(path, headers={"Content-Disposition": disposition})


# -- template filters --------------------------------------------------------


def _when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else ""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    return (
        f"{seconds // 3600} h {seconds % 3600 // 60} min"
        if seconds >= 3600
        else (f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s")
    )


def _sentence(text: str) -> str:
    """The child's message as a sentence: first letter capital, a full stop at the end."""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


FILTERS = {"when": _when, "duration": _duration, "sentence": _sentence}
