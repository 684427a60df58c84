"""The web app of ``bulkmdm serve``: routes, the session's state, pages.

One admin, one browser, one process: the state (the connection, the
uploaded jobs, the runs started from the page) lives in memory. What lasts
is on disk where the terminal puts it too: job files and reports under the
state folder, every run in the journal.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
from aiohttp import web

from ..errors import BulkMDMError
from ..shown import plain
from .children import ChildRun, RunRequest, hide_paths
from .connection import Connection, credential_fields
from .security import Guard, add_headers

#: the largest job file the page takes
MAX_UPLOAD = 50 * 1024 * 1024
_SUFFIXES = (".csv", ".xlsx")
_SAFE_NAME = re.compile(r"[^\w.\- ]+")
_NAME_FILE = "job-name.txt"
#: an upload's id: 16 hex digits of its content and name
UPLOAD_ID = re.compile(r"[0-9a-f]{16}")


@dataclass(slots=True)
class Upload:
    """A job file given to the page, and the runs made of it."""

    id: str
    path: Path
    name: str
    dry_run: ChildRun | None = None
    runs: list[ChildRun] = field(default_factory=list)
    #: the action for every row, chosen on the page when the file has no action column
    action: str | None = None

    @property
    def folder(self) -> Path:
        return self.path.parent

    def report_path(self, kind: str) -> Path:
        stem, suffix = self.path.stem, self.path.suffix
        if kind == "dry run":
            return self.folder / f"{stem}.dryrun{suffix}"
        if kind == "run":
            return self.folder / f"{stem}.outcome{suffix}"
        # each re-run its own report (the one before it is its job), numbered on from the last one on disk
        number = 2
        while (self.folder / f"{stem}.outcome-{number}{suffix}").exists():
            number += 1
        return self.folder / f"{stem}.outcome-{number}{suffix}"


@dataclass(slots=True)
class WebState:
    """Everything one ``bulkmdm serve`` holds in memory."""

    guard: Guard
    state_dir: Path
    templates: jinja2.Environment
    max_upload: int = MAX_UPLOAD
    connection: Connection | None = None
    uploads: dict[str, Upload] = field(default_factory=dict)
    children: dict[str, ChildRun] = field(default_factory=dict)
    tables: OrderedDict[str, Any] = field(default_factory=OrderedDict)
    summaries: dict[tuple[str, float, str | None], Any] = field(default_factory=dict)
    flash: str = ""
    #: a sentence of good news for the next page (connected, say)
    note: str = ""
    #: what the connect form held when it last failed (or the MDM left by "Use another MDM"): never a secret
    typed: dict[str, str] = field(default_factory=dict)

    @property
    def uploads_dir(self) -> Path:
        return self.state_dir / "web-jobs"

    def render(self, name: str, *, status: int = 200, **context: Any) -> web.Response:
        flash, self.flash = self.flash, ""
        note, self.note = self.note, ""
        if "message" in context:
            context["message"] = hide_paths(context["message"], self.state_dir)
        html = self.templates.get_template(name).render(
            csrf=self.guard.csrf,
            connection=self.connection,
            flash=hide_paths(context.pop("flash", flash), self.state_dir),
            note=note,
            **context,
        )
        return web.Response(text=html, content_type="text/html", status=status)

    async def table(self, upload: Upload) -> Any:
        """The upload's parsed job, kept for the last few uploads (paging must not re-read it)."""
        from ..jobfile import read_job
        from ..ownfiles import written

        if upload.id not in self.tables:
            self.tables[upload.id] = await asyncio.to_thread(read_job, upload.path, own=written(self.state_dir))
            while len(self.tables) > 3:
                self.tables.popitem(last=False)
        self.tables.move_to_end(upload.id)
        return self.tables[upload.id]

    async def summary(self, path: Path, action: str | None = None) -> Any:
        from .summary import summarise

        key = (str(path), path.stat().st_mtime, action)
        if key not in self.summaries:
            self.summaries[key] = await asyncio.to_thread(summarise, path, action)
        return self.summaries[key]

    async def start(self, request: RunRequest) -> ChildRun:
        child = ChildRun(request)
        await child.start()
        self.children[child.id] = child
        return child


STATE = web.AppKey("state", WebState)


def _shown(value: Any) -> Any:
    """Every value a page shows (what an MDM said among them), without escape
    sequences or invisible characters; autoescape takes care of the HTML."""
    if isinstance(value, markupsafe.Markup):
        return markupsafe.Markup(plain(str(value), keep_lines=True))
    return plain(value, keep_lines=True) if isinstance(value, str) else value


def make_app(
    state_dir: Path, *, port: int = 0, max_upload: int = MAX_UPLOAD, secret: str | None = None
) -> web.Application:
    """The app; ``app[STATE].guard.port`` must be set to the bound port before it answers."""
    from . import routes
    from .followup import add_follow_up

    templates = jinja2.Environment(
        loader=jinja2.PackageLoader("bulkmdm.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_shown,
    )
    fields = credential_fields()
    templates.globals.update(credential_fields=fields, providers=sorted(fields))
    templates.filters.update(routes.FILTERS)
    guard = Guard(port, secret=secret)
    app = web.Application(middlewares=[guard.middleware(), _errors], client_max_size=1024 * 1024)
    app[STATE] = WebState(guard=guard, state_dir=state_dir, templates=templates, max_upload=max_upload)
    routes.add_routes(app)
    add_follow_up(app)
    app.router.add_static("/static/", Path(__file__).with_name("static"), name="static")
    app.on_response_prepare.append(add_headers)
    app.on_shutdown.append(_stop_children)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """An error we can explain becomes one sentence on the page; a bug never shows a traceback."""
    try:
        return await handler(request)
    except web.HTTPNotFound as exc:
        text = (exc.text or "").strip()
        message = text if text and not text.startswith("404") else "There is no such page; start from the first page."
        return request.app[STATE].render("error.html", message=message, status=404)
    except web.HTTPException:
        raise
    except BulkMDMError as exc:
        return request.app[STATE].render("error.html", message=str(exc), status=400)
    except OSError as exc:
        return request.app[STATE].render(
            "error.html",
            status=500,
            message=f"bulkmdm could not use a file it needs ({exc.strerror or exc}: "
            f"{exc.filename or ''}); start bulkmdm serve with --state-dir naming a folder you can write to.",
        )
    except Exception as exc:  # a bug: one sentence here, the traceback in a file
        path = crash_file(exc)
        return request.app[STATE].render(
            "error.html",
            status=500,
            message=f"bulkmdm hit an internal error ({type(exc).__name__}); runs already "
            f"started go on, and the journal keeps every finished row. Details for a bug report: {path}",
        )


def crash_file(exc: BaseException) -> str:
    """Write the traceback of a bug to a file of its own; its path, for the one sentence a person sees."""
    import tempfile
    import traceback

    try:
        fd, path = tempfile.mkstemp(prefix="bulkmdm-serve-crash-", suffix=".txt")
        with os.fdopen(fd, "w") as out:
            out.write("".join(traceback.format_exception(exc)))
        return path
    except OSError:
        return "(could not write a crash file)"


async def _stop_children(app: web.Application) -> None:
    running = [c for c in app[STATE].children.values() if not c.finished]
    for child in running:
        child.stop()
    await asyncio.gather(*(c.wait(30) for c in running))


def job_name(filename: str) -> str | None:
    """The name an uploaded file is kept under, or None when it is not a .csv/.xlsx file."""
    name = _SAFE_NAME.sub("_", Path(filename.replace("\\", "/")).name).strip(" .") or "job"
    return name if Path(name).suffix.lower() in _SUFFIXES else None


def keep_upload(state: WebState, incoming: Path, name: str, digest: str) -> Upload:
    """Move a received file to its folder and remember it.

    The folder is named by the file's content and name, so the same file
    uploaded again (after a restart, say) is the same job path: a run of it
    resumes, or says it already ran, exactly as `bulkmdm run` on the same file
    does in a terminal."""
    upload_id = hashlib.sha256(f"{digest}\x1f{name}".encode()).hexdigest()[:16]
    folder = state.uploads_dir / upload_id
    folder.mkdir(exist_ok=True, mode=0o700)
    os.replace(incoming, folder / name)
    (folder / _NAME_FILE).write_text(name, encoding="utf-8")
    upload = state.uploads.get(upload_id) or Upload(upload_id, folder / name, name)
    state.uploads[upload_id] = upload
    state.tables.pop(upload_id, None)
    return upload


def find_upload(state: WebState, upload_id: str) -> Upload | None:
    """An upload of this session, or one kept on disk by an earlier `bulkmdm serve`."""
    if upload_id in state.uploads:
        return state.uploads[upload_id]
    if not UPLOAD_ID.fullmatch(upload_id):
        return None
    try:
        name = (state.uploads_dir / upload_id / _NAME_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    path = state.uploads_dir / upload_id / name
    if job_name(name) != name or not path.is_file():
        return None
    upload = state.uploads[upload_id] = Upload(upload_id, path, name)
    return upload


def incoming_file(state: WebState) -> Path:
    """A fresh file to receive an upload into (owner-only folders: job files hold names and e-mail addresses)."""
    state.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    state.uploads_dir.mkdir(exist_ok=True, mode=0o700)
    return state.uploads_dir / f".incoming-{secrets.token_hex(8)}"
