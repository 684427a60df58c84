"""``bulkmdm serve``: the whole flow (connect, upload, dry run, confirm, run,
report, re-run) on a local web page, over the same engine and journal.

Modules: ``app`` (state and set-up), ``routes`` (pages), ``security`` (secret,
Host, CSRF), ``connection`` (the MDM and its credentials), ``children`` (each
run a child ``bulkmdm run``), ``preview`` and ``summary`` (what the pages show).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import webbrowser
from collections.abc import Callable
from pathlib import Path

__all__ = ["serve"]


def serve(state_dir: Path, *, port: int = 0, open_browser: bool = True, echo: Callable[[str], None] = print) -> None:
    """Serve the app on 127.0.0.1 until Ctrl-C; print (and open) the address with its secret."""
    asyncio.run(_serve(state_dir, port, open_browser, echo))


async def _serve(state_dir: Path, port: int, open_browser: bool, echo: Callable[[str], None]) -> None:
    from aiohttp import web

    from .app import STATE, make_app

    app = make_app(state_dir, port=port)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        try:
            await site.start()
        except OSError as exc:
            from ..errors import UsageError

            reason = "another program uses it" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise UsageError(f"Cannot listen on 127.0.0.1:{port} ({reason}); pass another --port, "
                             "or --port 0 for any free one.") from None
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        guard = app[STATE].guard
        guard.port = bound
        address = f"http://127.0.0.1:{bound}/?token={guard.secret}"
        echo(f"Open {address}")
        echo("Keep this window open while you work; Ctrl-C stops bulkmdm serve (and any run it started, "
             "which can be resumed).")
        if open_browser:
            webbrowser.open(address)
        stopped = asyncio.Event()
        # SIGTERM stops serve like Ctrl-C does: its runs are stopped (and resumable), not orphaned
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
        await stopped.wait()
    finally:
        await runner.cleanup()
