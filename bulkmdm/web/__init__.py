"""``bulkmdm serve``: the whole flow (connect, upload, dry run, confirm, run,
report, re-run) on a local web page, over the same engine and journal.

Modules: ``app`` (state and set-up), ``routes`` (pages), ``security`` (secret,
Host, CSRF), ``connection`` (the MDM and its credentials), ``children`` (each
run a child ``bulkmdm run``), ``preview``, ``summary`` and ``rows`` (what the pages show).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import html
import logging
import os
import signal
import sys
import threading
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["serve"]


def serve(
    state_dir: Path,
    *,
    port: int = 0,
    open_browser: bool = True,
    echo: Callable[[str], None] = print,
    profile: str | None = None,
) -> None:
    """Serve the app on 127.0.0.1 until Ctrl-C; print (and open) the address with its secret.

    With ``profile``, the page starts connected to that profile's MDM."""
    connection = None
    if profile:
        from .connection import connection_from_profile

        connection = connection_from_profile(profile)  # a profile that cannot work stops serve before it starts
    asyncio.run(_serve(state_dir, port, open_browser, echo, connection))


async def _serve(
    state_dir: Path, port: int, open_browser: bool, echo: Callable[[str], None], connection: Any = None
) -> None:
    from aiohttp import web

    from .app import STATE, make_app

    _log_bugs_to_files(echo)
    opener: Path | None = None
    app = make_app(state_dir, port=port)
    app[STATE].connection = connection
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        try:
            await site.start()
        except OSError as exc:
            from ..errors import UsageError

            reason = "another program uses it" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise UsageError(
                f"Cannot listen on 127.0.0.1:{port} ({reason}); pass another --port, or --port 0 for any free one."
            ) from None
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        guard = app[STATE].guard
        guard.port = bound
        address = f"http://127.0.0.1:{bound}/?token={guard.secret}"
        echo(f"Open {address}")
        echo(
            "Keep this window open while you work; Ctrl-C stops bulkmdm serve (and any run it started, "
            "which can be resumed)."
        )
        if open_browser and _has_desktop():
            opener = _redirect_file(state_dir, bound, address)
            # in a thread: webbrowser waits for some browsers to exit, and the page must answer meanwhile
            threading.Thread(target=_open_browser, args=(opener.as_uri(),), daemon=True).start()
        stopped = asyncio.Event()
        # SIGTERM stops serve like Ctrl-C does: its runs are stopped (and resumable), not orphaned
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
        await stopped.wait()
    finally:
        if opener is not None:
            with contextlib.suppress(OSError):
                opener.unlink()
        await runner.cleanup()


class _CrashFiles(logging.Handler):
    """aiohttp's own errors (a bug that escaped a page) as one line on the terminal, the traceback in a file."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        super().__init__(logging.ERROR)
        self.echo = echo

    def emit(self, record: logging.LogRecord) -> None:
        from .app import crash_file

        error = record.exc_info[1] if record.exc_info else None
        if error is None:
            self.echo(f"bulkmdm serve: {record.getMessage()}")
            return
        self.echo(
            f"bulkmdm serve hit an internal error ({type(error).__name__}); it goes on. "
            f"Details for a bug report: {crash_file(error)}"
        )


def _log_bugs_to_files(echo: Callable[[str], None]) -> None:
    logger = logging.getLogger("aiohttp")
    logger.propagate = False
    logger.handlers = [_CrashFiles(echo)]


def _has_desktop() -> bool:
    """A graphical session to open a browser in. Without one, webbrowser would start a console browser
    (lynx, w3m) on this very terminal; the printed address is the way in there."""
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


#: The page the browser is opened on: it goes on to the address with the secret.
_REDIRECT_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={url}">
<title>bulkmdm serve</title></head>
<body><p>Opening <a href="{url}">bulkmdm serve</a>...</p></body></html>
"""


def _redirect_file(state_dir: Path, port: int, address: str) -> Path:
    """A page only this user can read (mode 0600) that sends the browser on to
    ``address``. The browser's command line, which ``ps`` shows every local
    user, then names this file, not the secret: as jupyter_server opens its
    browser through ``jpserver-<pid>-open.html``."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / f"serve-{port}-open.html"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # (one left by a serve that was killed: created afresh, never written through)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(path, flags, 0o600), "w", encoding="utf-8") as page:
        page.write(_REDIRECT_PAGE.format(url=html.escape(address, quote=True)))
    return path


def _open_browser(address: str) -> None:
    with contextlib.suppress(webbrowser.Error, OSError):
        webbrowser.open(address)
