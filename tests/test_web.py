"""`bulkmdm serve` over plain HTTP (aiohttp's client against the real app on
127.0.0.1): the locks (secret, Host, CSRF, upload cap), the preview of a big
job, and errors as one sentence. The browser walk-through is test_web_browser.py."""

from __future__ import annotations

import asyncio
import html
import contextlib
import csv
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
from aiohttp import web
from conftest import CREDS, read_report, run_cmd, spawn, write_csv
from web_helpers import serve_process

from bulkmdm.sim.common import SimServer
from bulkmdm.web.app import STATE, WebState, make_app
from bulkmdm.web.children import RunRequest
from bulkmdm.web.connection import connection_from_form

SECRET = "test-secret-1234567890"


@dataclass
class Served:
    url: str
    port: int
    state: WebState

    @property
    def csrf(self) -> str:
        return self.state.guard.csrf


@contextlib.asynccontextmanager
async def _serve_app(state_dir: Path, **options: Any) -> AsyncIterator[Served]:
    app = make_app(state_dir, secret=SECRET, **options)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    app[STATE].guard.port = port
    try:
        yield Served(f"http://127.0.0.1:{port}", port, app[STATE])
    finally:
        await runner.cleanup()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with _serve_app(tmp_path / "state", max_upload=4096) as server:
        yield server


def _client(served: Served | None = None) -> aiohttp.ClientSession:
    """A client; with ``served``, holding a session of that server (as after a visit with the secret)."""
    jar = aiohttp.CookieJar(unsafe=True)  # the default jar ignores cookies of a bare IP address
    session = aiohttp.ClientSession(cookie_jar=jar)
    if served is not None:
        jar.update_cookies({served.state.guard.cookie: served.state.guard.open_session()})
    return session


async def test_first_visit_trades_the_secret_for_a_strict_cookie(served: Served) -> None:
    async with _client() as client:
        async with client.get(f"{served.url}/jobs/x?token={SECRET}&page=2", allow_redirects=False) as resp:
            assert resp.status == 302
            assert resp.headers["Location"] == "/jobs/x?page=2"
            cookie = resp.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            # a session id of its own, named for this port: the browser sends it to every 127.0.0.1 server
            name, _, value = cookie.partition(";")[0].partition("=")
            assert name == f"bulkmdm_session_{served.port}" and SECRET not in cookie and len(value) >= 32
        async with client.get(f"{served.url}/") as resp:
            assert resp.status == 200
            assert "Content-Security-Policy" in resp.headers and resp.headers["X-Frame-Options"] == "DENY"
    # the secret itself as a cookie, under either name, opens nothing
    for name in ("bulkmdm_session", f"bulkmdm_session_{served.port}"):
        async with (
            aiohttp.ClientSession(cookies={name: SECRET}) as client,
            client.get(f"{served.url}/", allow_redirects=False) as resp,
        ):
            assert resp.status == 403


@pytest.mark.parametrize("path", ["/", "/static/app.css", "/jobs/abc", "/runs/abc/events", "/history/1/report"])
async def test_no_secret_no_page(served: Served, path: str) -> None:
    async with _client() as client:
        for url in (f"{served.url}{path}", f"{served.url}{path}?token=wrong-secret"):
            async with client.get(url, allow_redirects=False) as resp:
                assert resp.status == 403
                text = await resp.text()
                assert "secret" in text and text.count("\n") == 1 and "Traceback" not in text


async def test_wrong_host_is_refused_even_with_the_secret(served: Served) -> None:
    async with _client(served) as client:
        for host in (f"evil.example:{served.port}", f"127.0.0.1:{served.port + 1}", "localhost"):
            async with client.get(
                f"{served.url}/?token={SECRET}", headers={"Host": host}, allow_redirects=False
            ) as resp:
                assert resp.status == 400, host
        async with client.get(f"{served.url}/", headers={"Host": f"localhost:{served.port}"}) as resp:
            assert resp.status == 200


async def test_every_post_needs_the_csrf_token(served: Served, tmp_path: Path) -> None:
    from bulkmdm.sim.duostation import make_app as duo_app

    with SimServer(duo_app(devices=20, password="pw-from-the-form")) as sim:  # Connect reads from the MDM
        form = _duo_form(sim.url, "pw-from-the-form")
        async with _client(served) as client:
            for token in (None, "forged"):
                data = dict(form, **({"csrf": token} if token else {}))
                async with client.post(f"{served.url}/connect", data=data, allow_redirects=False) as resp:
                    assert resp.status == 403
            assert served.state.connection is None
            upload = aiohttp.FormData()
            upload.add_field("csrf", "forged")
            upload.add_field("job", b"action,serial\nlock,1\n", filename="job.csv")
            async with client.post(f"{served.url}/upload", data=upload, allow_redirects=False) as resp:
                assert resp.status == 403
            assert not served.state.uploads
            async with client.post(
                f"{served.url}/connect", data=dict(form, csrf=served.csrf), allow_redirects=False
            ) as resp:
                assert resp.status == 303
            assert served.state.connection is not None
            async with client.get(f"{served.url}/") as resp:
                assert "pw-from-the-form" not in await resp.text()
    assert "pw-from-the-form" not in repr(served.state.connection)


async def test_upload_over_the_cap_is_one_sentence_and_keeps_nothing(served: Served) -> None:
    async with _client(served) as client:
        upload = aiohttp.FormData()
        upload.add_field("csrf", served.csrf)
        upload.add_field("job", b"action,serial\n" + b"lock,ABC\n" * 1000, filename="big.csv")
        async with client.post(f"{served.url}/upload", data=upload) as resp:
            text = await resp.text()
            assert resp.status == 200
            assert "big.csv is larger than" in text and "split it" in text
    assert not served.state.uploads
    assert not any((served.state.uploads_dir).glob("*/*"))


async def test_not_a_job_file_and_an_unreadable_one(served: Served) -> None:
    async with _client(served) as client:
        upload = aiohttp.FormData()
        upload.add_field("csrf", served.csrf)
        upload.add_field("job", b"hello", filename="notes.txt")
        async with client.post(f"{served.url}/upload", data=upload) as resp:
            assert "notes.txt is not a .csv or .xlsx file" in await resp.text()
        upload = aiohttp.FormData()
        upload.add_field("csrf", served.csrf)
        upload.add_field("job", b"PK\x03\x04 not really a workbook", filename="broken.xlsx")
        async with client.post(f"{served.url}/upload", data=upload) as resp:
            text = await resp.text()
            assert resp.status == 400 and "broken.xlsx" in text and "Traceback" not in text
    # the page names the file, never where this server keeps it
    assert "web-jobs" not in text and str(served.state.state_dir) not in text


async def test_a_header_only_file_is_not_found_without_problems(served: Served, tmp_path: Path) -> None:
    async with _client(served) as client:
        page = await _upload(client, served, write_csv(tmp_path / "empty.csv", [["action", "serial"]]))
    assert 'id="no-rows"' in page and "No problems found" not in page and 'id="dry-run"' not in page


async def test_pages_are_csp_clean_and_have_an_icon(served: Served) -> None:
    templates = Path(__file__).parent.parent / "bulkmdm" / "web" / "templates"
    for template in templates.glob("*.html"):  # the CSP allows neither inline styles nor inline scripts
        text = template.read_text()
        assert not re.search(r"\sstyle=|<style|<script(?![^>]*\ssrc=)|\son[a-z]+=", text), template.name
    async with _client(served) as client:
        async with client.get(f"{served.url}/") as resp:
            assert '<link rel="icon" href="/static/favicon.svg"' in await resp.text()
        for path in ("/static/favicon.svg", "/favicon.ico"):
            async with client.get(f"{served.url}{path}") as resp:
                assert resp.status == 200 and resp.content_type == "image/svg+xml", path


async def test_a_100000_row_job_is_previewed_a_page_at_a_time(tmp_path: Path) -> None:
    job = tmp_path / "big.csv"
    with open(job, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["action", "serial", "Tagg", "Serail"])
        writer.writerows(["lock" if i % 1000 else "lokc", f"SN{i:07d}", "x", ""] for i in range(100_000))
    async with _serve_app(tmp_path / "state") as server, _client(server) as client:
        started = time.monotonic()
        first = await _upload(client, server, job)
        first_page = time.monotonic() - started
        started = time.monotonic()
        async with client.get(f"{server.url}{_job_page(first)}?show=problems&page=2") as resp:
            problems = await resp.text()
        later_page = time.monotonic() - started
    assert "100000 rows" in first and "Page 1 of 2000" in first and "SN0000049" in first and "SN0000050" not in first
    assert "100 rows cannot run" in first and "did you mean <b>serial</b>" in first
    assert len(first) < 200_000
    assert "Page 2 of 2" in problems and "SN0050000" in problems
    # how long the pages take is a figure for a quiet machine, not a test's bound (shared runners vary 10x)
    print(f"100k-row preview: first page {first_page:.2f} s, a later page {later_page:.2f} s")


def _flash(page: str) -> str:
    found = re.search(r'<div class="notice bad" role="alert" id="flash">(.*?)</div>', page, re.S)
    assert found is not None, page
    return html.unescape(found.group(1))


async def test_connect_checks_the_credentials_and_says_what_was_refused(served: Served) -> None:
    from bulkmdm.sim.duostation import make_app as duo_app

    with SimServer(duo_app(devices=20)) as sim:
        form = {"csrf": served.csrf, **_duo_form(sim.url, "wrong-password")}
        async with _client(served) as client:
            async with client.post(f"{served.url}/connect", data=form) as resp:
                page = await resp.text()
            refused = _flash(page)
            assert served.state.connection is None and "Connected to" not in page
            assert "refused these credentials (HTTP 401)" in refused and "user name and password" in refused
            assert "BULKMDM_" not in refused and "bulkmdm login" not in page and "wrong-password" not in page
            # what was typed is still there (the password is typed again)
            assert f'value="{sim.url}"' in page and 'value="admin"' in page and 'id="type-again"' in page
            assert re.search(r'<option value="duostation"\s+selected>', page)
            form["duostation:BULKMDM_PASSWORD"] = "admin"
            async with client.post(f"{served.url}/connect", data=form) as resp:
                page = await resp.text()
            assert served.state.connection is not None and 'id="note"' in page and "answered" in page
    async with _client(served) as client:
        nothing = dict(form, url="http://127.0.0.1:9")
        served.state.connection = None
        async with client.post(f"{served.url}/connect", data=nothing) as resp:
            page = await resp.text()
    assert "No answer from duostation at http://127.0.0.1:9" in _flash(page) and served.state.connection is None


async def test_the_mdm_form_keeps_what_was_typed_and_use_another_mdm_starts_from_it(served: Served) -> None:
    async with _client(served) as client:
        form = {"csrf": served.csrf, "provider": "ivanti", "url": "https://na1.mobileiron.example"}
        form |= {"ivanti:BULKMDM_USERNAME": "api-user", "ivanti:BULKMDM_PASSWORD": "secret-pw"}
        async with client.post(f"{served.url}/connect", data=form) as resp:
            page = await resp.text()
        assert "ivanti needs the device space id" in _flash(page)
        assert (
            re.search(r'<option value="ivanti"\s+selected>', page) and 'value="https://na1.mobileiron.example"' in page
        )
        assert 'value="api-user"' in page and "secret-pw" not in page
        async with client.post(f"{served.url}/connect", data=form | {"ivanti:partition": "skolan"}) as resp:
            page = await resp.text()
        assert "The device space id is a number (e.g. 23505), not 'skolan'." in _flash(page)
        assert 'value="skolan"' in page
        served.state.connection = connection_from_form(form | {"ivanti:partition": "23505"})
        await _post(client, served, "/disconnect")
        async with client.get(f"{served.url}/") as resp:
            page = await resp.text()
    assert re.search(r'<option value="ivanti"\s+selected>', page) and 'value="23505"' in page
    assert 'value="api-user"' in page and "secret-pw" not in page


async def test_credentials_refused_during_a_run_are_told_in_the_pages_words(served: Served, tmp_path: Path) -> None:
    """The password changed after Connect checked it: the run's one sentence, without the terminal's remedy."""
    from bulkmdm.sim.duostation import make_app as duo_app

    job = write_csv(tmp_path / "lock.csv", [["action", "serial"], ["lock", "ABC"]])
    with SimServer(duo_app(devices=20)) as sim:
        served.state.connection = connection_from_form(_duo_form(sim.url, "changed-since"))
        async with _client(served) as client:
            run_page = await _post(client, served, f"{_job_page(await _upload(client, served, job))}/dry-run")
            text = await _until(client, served, run_page, "nothing was run")
    error = re.search(r'<p class="notice bad" id="error">(.*?)</p>', text, re.S)
    assert error is not None, text
    sentence = html.unescape(error.group(1))
    assert "refused the credentials (HTTP 401" in sentence and "connect again" in sentence
    assert "BULKMDM_" not in sentence and "bulkmdm login" not in sentence and "changed-since" not in text


def test_credentials_go_in_the_environment_never_the_command_line(tmp_path: Path) -> None:
    connection = connection_from_form(
        {"provider": "banyan", "url": "https://banyan.example/", "banyan:BULKMDM_TOKEN": "tok-123456"}
    )
    request = RunRequest("run", tmp_path / "j.csv", tmp_path / "r.csv", connection, tmp_path, "u1")
    assert "tok-123456" not in " ".join(request.arguments())
    assert connection.child_environment()["BULKMDM_TOKEN"] == "tok-123456"
    assert "tok-123456" not in repr(connection) and "tok-123456" not in repr(request)


async def test_history_lists_runs_started_in_the_terminal(served: Served, tmp_path: Path, duo: SimServer) -> None:
    from bulkmdm.sim.duostation import FACTS

    job = write_csv(
        tmp_path / "terminal-job.csv",
        [["action", "serial", "tag"], ["tag", FACTS["untagged_device"]["serial"], "Prov-läge"]],
    )
    process = await asyncio.create_subprocess_exec(
        *run_cmd(job, duo.url),
        env={**os.environ, **CREDS, "BULKMDM_STATE_DIR": str(served.state.state_dir)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert await process.wait() == 0
    async with _client(served) as client:
        async with client.get(f"{served.url}/") as resp:
            page = await resp.text()
        assert "terminal-job.csv" in page and "1</b> succeeded" in page
        link = re.search(r'href="(/history/\d+/report)"', page)
        assert link is not None
        async with client.get(f"{served.url}{link.group(1)}") as resp:
            assert resp.status == 200 and "succeeded" in await resp.text()
        rows = re.search(r'href="(/history/\d+)">rows<', page)
        assert rows is not None
        async with client.get(f"{served.url}{rows.group(1)}") as resp:
            table = await resp.text()  # the rows of a run started in the terminal
        assert 'id="row-table"' in table and FACTS["untagged_device"]["serial"] in table and "1 row" in table
        async with client.get(f"{served.url}{rows.group(1)}", params={"status": "failed"}) as resp:
            assert "No row matches" in await resp.text()


async def _upload(client: aiohttp.ClientSession, server: Served, job: Path) -> str:
    """Upload a job; the preview page's HTML."""
    form = aiohttp.FormData()
    form.add_field("csrf", server.csrf)
    form.add_field("job", job.read_bytes(), filename=job.name)
    async with client.post(f"{server.url}/upload", data=form) as resp:
        return await resp.text()


def _job_page(html: str) -> str:
    match = re.search(r'href="(/jobs/[0-9a-f]{16})\?show=problems"', html)
    assert match is not None, html
    return match.group(1)


def _duo_form(url: str, password: str = "admin") -> dict[str, str]:
    """The page's Connect form filled in for a DuoSTATION simulator at ``url``."""
    return {
        "provider": "duostation",
        "url": url,
        "duostation:BULKMDM_USERNAME": "admin",
        "duostation:BULKMDM_PASSWORD": password,
    }


async def _post(client: aiohttp.ClientSession, server: Served, path: str, **form: str) -> str:
    """POST a form; the path of the page it leads to."""
    async with client.post(f"{server.url}{path}", data={"csrf": server.csrf, **form}, allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()
        return resp.headers["Location"]


async def _until(client: aiohttp.ClientSession, server: Served, path: str, marker: str) -> str:
    for _ in range(300):
        async with client.get(f"{server.url}{path}") as resp:
            text = await resp.text()
        if marker in text:
            return text
        await asyncio.sleep(0.1)
    raise AssertionError(f"{marker!r} never appeared on {path}: {text[-3000:]}")


async def _dry_run_and_run(client: aiohttp.ClientSession, server: Served, job_page: str, rate: str) -> str:
    dry = await _post(client, server, f"{job_page}/dry-run")
    await _until(client, server, dry, 'id="confirm"')
    return await _post(client, server, f"{job_page}/run", rate=rate)


async def test_a_stopped_run_resumes_after_serve_restarts(tmp_path: Path, duo: SimServer) -> None:
    state = duo.app["state"]
    serials = duo.call(lambda: [d["serialNumber"] for d in list(state.devices.values())[40:64]])
    job = write_csv(tmp_path / "lock.csv", [["action", "serial"], *(["lock", s] for s in serials)])
    connect = _duo_form(duo.url)
    duo.faults.update({"latency": 0.2, "mutating_only": True})
    async with _serve_app(tmp_path / "state") as server, _client(server) as client:
        await _post(client, server, "/connect", **connect)
        job_page = _job_page(await _upload(client, server, job))
        run_page = await _dry_run_and_run(client, server, job_page, "2/s")
        for _ in range(200):
            if duo.call(lambda: len(state.commands)) >= 2:
                break
            await asyncio.sleep(0.05)
        await _post(client, server, f"{run_page}/stop")
        await _until(client, server, run_page, 'id="resume"')
    sent = duo.call(lambda: len([c for c in state.commands if c["command"] == "lockdevice"]))
    assert 0 < sent < len(serials)
    duo.faults.update({"latency": 0.0})
    async with _serve_app(tmp_path / "state") as server, _client(server) as client:  # a new `bulkmdm serve`
        await _post(client, server, "/connect", **connect)
        preview = await _upload(client, server, job)
        assert _job_page(preview) == job_page and 'id="unfinished"' in preview
        run_page = await _dry_run_and_run(client, server, job_page, "")
        done = await _until(client, server, run_page, 'id="next"')
        assert "Resuming run" in done
    locks = duo.call(lambda: sorted(c["serialNumber"] for c in state.commands if c["command"] == "lockdevice"))
    assert locks == sorted(serials)


async def test_a_child_ending_while_its_page_is_read_shows_its_results(
    tmp_path: Path, duo: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page of a run reads the journal (awaits) while its child may end: it
    is shown either still running (followed, so it reloads when the child ends)
    or ended with its results, never ended without them (nothing would reload it)."""
    state = duo.app["state"]
    serials = duo.call(lambda: [d["serialNumber"] for d in list(state.devices.values())[40:44]])
    job = write_csv(tmp_path / "wipe.csv", [["action", "serial"], *(["wipe", s] for s in serials)])
    async with _serve_app(tmp_path / "state") as server, _client(server) as client:
        await _post(client, server, "/connect", **_duo_form(duo.url))
        job_page = _job_page(await _upload(client, server, job))
        dry = await _post(client, server, f"{job_page}/dry-run")
        await _until(client, server, dry, 'id="confirm"')
        (child,) = server.state.children.values()
        ended, read = child.returncode, child.progress

        async def ends_while_read() -> Any:
            progress = await read()
            # the child's end, as its reader task sees it: at the page's next await
            asyncio.get_running_loop().call_soon(setattr, child, "returncode", ended)
            return progress

        child.returncode = None  # the child runs again, as far as the page can tell
        monkeypatch.setattr(child, "progress", ends_while_read)
        async with client.get(f"{server.url}{dry}") as resp:
            page = await resp.text()
        assert 'id="confirm"' in page or "data-events" in page, page


async def test_an_xlsx_job_with_a_non_ascii_name_is_previewed(served: Served, tmp_path: Path) -> None:
    source = Path(__file__).parent.parent / "jobs" / "duostation-assign.xlsx"
    job = tmp_path / "Björkskolan lån.xlsx"
    job.write_bytes(source.read_bytes())
    served.state.max_upload = 1024 * 1024
    async with _client(served) as client:
        page = await _upload(client, served, job)
    assert "Björkskolan lån.xlsx" in page and "✓ serial" in page
    assert any(path.name == job.name for path in served.state.uploads_dir.glob("*/*"))


async def test_an_unusable_state_folder_is_one_sentence(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    async with _serve_app(blocker / "state") as server, _client(server) as client:
        page = await _upload(client, server, write_csv(tmp_path / "j.csv", [["action", "serial"], ["lock", "A"]]))
        async with client.get(f"{server.url}/") as resp:
            home = await resp.text()
    assert "--state-dir naming a folder you can write to" in page and "Traceback" not in page
    assert resp.status == 200 and "No runs yet" in home


async def test_a_job_without_an_action_column_gets_one_action_for_every_row(tmp_path: Path, duo: SimServer) -> None:
    state = duo.app["state"]
    serials = duo.call(lambda: [d["serialNumber"] for d in list(state.devices.values())[40:45]])
    job = write_csv(tmp_path / "serials.csv", [["Serial Number"], *([s] for s in serials)])
    connect = _duo_form(duo.url)
    async with _serve_app(tmp_path / "state") as server, _client(server) as client:
        await _post(client, server, "/connect", **connect)
        preview = await _upload(client, server, job)
        assert 'id="action"' in preview and "No problems found" in preview
        job_page = _job_page(preview)
        async with client.post(f"{server.url}{job_page}/dry-run", data={"csrf": server.csrf, "action": "lokc"}) as resp:
            assert resp.status == 400 and "Choose the action" in await resp.text()
        dry = await _post(client, server, f"{job_page}/dry-run", action="lock")
        await _until(client, server, dry, 'id="confirm"')
        run_page = await _post(client, server, f"{job_page}/run")
        await _until(client, server, run_page, 'id="next"')
    locks = duo.call(lambda: sorted(c["serialNumber"] for c in state.commands if c["command"] == "lockdevice"))
    assert locks == sorted(serials)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_serve_command_prints_the_address_and_stops_cleanly(tmp_path: Path, stop: signal.Signals) -> None:
    """`bulkmdm serve` as a user starts it (no --no-browser; no desktop here, so no browser is started)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")}
    proc = serve_process(tmp_path / "state", env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert re.fullmatch(r"Open http://127\.0\.0\.1:\d+/\?token=[\w-]{20,}", line), line
        port = int(line.split(":")[2].split("/")[0])
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())  # keeps the session cookie
        with browser.open(line.removeprefix("Open ")) as resp:
            assert resp.status == 200 and "bulkmdm" in resp.read().decode()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/")
            raise AssertionError("served without the secret")
        except urllib.error.HTTPError as exc:
            assert exc.code == 403
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err


#: A stand-in browser: writes down its command line (what `ps` shows every
#: local user) and what the file it was given holds, with its permissions.
FAKE_BROWSER = """
import json, os, stat, sys
from urllib.parse import unquote, urlsplit
path = unquote(urlsplit(sys.argv[1]).path) if sys.argv[1].startswith("file:") else ""
info = {"argv": sys.argv[1:], "path": path}
if path:
    info["mode"] = stat.S_IMODE(os.stat(path).st_mode)
    info["page"] = open(path, encoding="utf-8").read()
with open(sys.argv[2] + ".tmp", "w") as fh:
    json.dump(info, fh)
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
"""


def test_the_browser_is_opened_through_a_private_file_never_with_the_secret(tmp_path: Path) -> None:
    """As jupyter_server does: the browser's command line names a file only the user can read."""
    import json
    import shlex

    script, record = tmp_path / "browser.py", tmp_path / "browser.json"
    script.write_text(FAKE_BROWSER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMDM_")}
    env.update(DISPLAY=":0", BROWSER=shlex.join([sys.executable, str(script), "%s", str(record)]))
    state_dir = tmp_path / "state"
    proc = serve_process(state_dir, env)
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip().removeprefix("Open ")
        secret = address.partition("token=")[2]
        assert len(secret) >= 20, address
        deadline = time.monotonic() + 60
        while not record.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        opened = json.loads(record.read_text())
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not any(secret in arg for arg in opened["argv"]), opened["argv"]
    assert opened["argv"][0].startswith("file://") and opened["path"].startswith(str(state_dir))
    assert opened["mode"] == 0o600
    assert f'content="0;url={address}"' in opened["page"] and f'href="{address}"' in opened["page"]
    assert not Path(opened["path"]).exists()  # removed when serve stops


async def test_a_saved_profile_connects_with_its_keyring_credentials(
    served: Served, tmp_path: Path, duo: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keyring
    from keyring.backend import KeyringBackend

    class Memory(KeyringBackend):
        priority = 1  # type: ignore[assignment]

        def __init__(self) -> None:
            super().__init__()
            self.values: dict[tuple[str, str], str] = {}

        def get_password(self, service: str, username: str) -> str | None:
            return self.values.get((service, username))

        def set_password(self, service: str, username: str, password: str) -> None:
            self.values[(service, username)] = password

        def delete_password(self, service: str, username: str) -> None:
            self.values.pop((service, username), None)

    memory = Memory()
    memory.set_password("bulkmdm", "skolan:BULKMDM_USERNAME", "admin")
    memory.set_password("bulkmdm", "skolan:BULKMDM_PASSWORD", "admin")
    monkeypatch.setattr(keyring, "get_keyring", lambda: memory)
    config = tmp_path / "config"
    config.mkdir()
    (config / "config.toml").write_text(f'[profiles.skolan]\nprovider = "duostation"\nurl = "{duo.url}"\n')
    monkeypatch.setenv("BULKMDM_CONFIG_DIR", str(config))
    async with _client(served) as client:
        async with client.get(f"{served.url}/") as resp:
            page = await resp.text()
        assert 'id="profile"' in page and ">skolan<" in page
        await _post(client, served, "/connect", profile="skolan")
        async with client.get(f"{served.url}/") as resp:
            page = await resp.text()
    assert served.state.connection is not None and served.state.connection.url == duo.url
    assert served.state.connection.credentials["BULKMDM_PASSWORD"] == "admin"
    assert "Runs go to <strong>duostation</strong>" in page and "admin" not in page.replace("admin@", "")


def test_a_stop_file_stops_a_run_as_ctrl_c_does(tmp_path: Path, duo: SimServer) -> None:
    """The stop `bulkmdm serve` uses: no signal, a file the run looks for (Windows has no SIGINT for a child)."""
    state = duo.app["state"]
    serials = duo.call(lambda: [d["serialNumber"] for d in list(state.devices.values())[40:60]])
    job = write_csv(tmp_path / "lock.csv", [["action", "serial"], *(["lock", s] for s in serials)])
    stop = tmp_path / "stop-now"
    duo.faults.update({"latency": 0.2, "mutating_only": True})
    env = {**os.environ, **CREDS, "BULKMDM_STATE_DIR": str(tmp_path / "state"), "BULKMDM_STOP_FILE": str(stop)}
    with spawn(run_cmd(job, duo.url, "--rate", "4/s"), env) as proc:
        deadline = time.monotonic() + 30
        while duo.call(lambda: len(state.commands)) < 2:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        stop.touch()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err  # as after Ctrl-C
    statuses = [row["status"] for row in read_report(tmp_path / "lock.outcome.csv")]
    sent = duo.call(lambda: len([c for c in state.commands if c["command"] == "lockdevice"]))
    assert 0 < statuses.count("succeeded") == sent < len(serials)
    assert statuses.count("not-run") == len(serials) - sent and "Interrupted" in err


def test_failures_are_grouped_by_reason_as_the_terminal_groups_them(tmp_path: Path, duo: SimServer) -> None:
    from bulkmdm.web.summary import summarise

    state = duo.app["state"]
    serials = duo.call(lambda: [d["serialNumber"] for d in list(state.devices.values())[40:42]])
    missing = [f"NOSUCH{i:03d}" for i in range(12)]
    job = write_csv(tmp_path / "lock.csv", [["action", "serial"], *(["lock", s] for s in serials + missing)])
    env = {**os.environ, **CREDS, "BULKMDM_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run(run_cmd(job, duo.url, "--dry-run"), env=env, capture_output=True, text=True, timeout=60)
    terminal = [line.strip() for line in done.stderr.splitlines() if re.match(r"\s+\d+ x ", line)]
    groups = summarise(tmp_path / "lock.dryrun.csv").failures
    assert len(terminal) == len(groups) == 1, done.stderr
    group = groups[0]
    assert group.count == 12 and "'…'" in group.reason and group.lines == (4, 5, 6, 7, 8)
    assert terminal[0] == f"12 x {group.reason.rstrip('.')}: lines 4, 5, 6, 7, 8, ..."


def _journal_of(state_dir: Path, rows: int) -> int:
    """A finished lock run of ``rows`` rows in the journal: every 100th failed, the last 1,000 not sent."""
    from conftest import journal_run

    from bulkmdm.journal import Journal, NewRow
    from bulkmdm.model import Outcome, Reason, Status

    with Journal(state_dir) as journal:
        run_id = journal_run(
            journal,
            [NewRow([f"SN{i:07d}", f"pupil{i}@skolan.se"], "lock", f"d{i}", f"SN{i:07d}") for i in range(rows)],
            headers=["serial", "email"],
        )
        journal.record(
            run_id,
            (
                Outcome(i, Status.FAILED, f"Serial 'SN{i:07d}' was not found.", reason=Reason.NOT_FOUND)
                if i % 100 == 0
                else Outcome(i, Status.SUCCEEDED, "Locked.", reason=Reason.DONE)
                for i in range(rows - 1000)
            ),
        )
    return run_id


def test_the_row_table_pages_a_100000_row_run_from_the_journal(tmp_path: Path) -> None:
    from bulkmdm.web.rows import read_table, rows_to_fix

    run_id = _journal_of(tmp_path, 100_000)
    timings = {}
    for name, query in {
        "first page": {},
        "last page": {"number": 2000},
        "failed, page 10": {"status": "failed", "number": 10},
        "not-run, last page": {"status": "not-run", "number": 20},
        "search an e-mail": {"search": "PUPIL54321@"},
    }.items():
        started = time.monotonic()
        table = read_table(tmp_path, run_id, **query)  # type: ignore[arg-type]
        timings[name] = time.monotonic() - started
        if name == "last page":
            assert table.number == table.count == 2000 and table.rows[-1].line == 100_001
            assert table.rows[-1].status == "not-run" and "Not sent" in table.rows[-1].detail
        if name == "failed, page 10":
            assert table.matches == 990 and table.count == 20 and table.rows[0].line == 45_002
            assert {row.status for row in table.rows} == {"failed"}
        if name == "not-run, last page":
            assert table.matches == 1000 and table.rows[-1].line == 100_001
        if name == "search an e-mail":
            assert [row.target for row in table.rows] == ["SN0054321"]
    started = time.monotonic()
    text, count = rows_to_fix(tmp_path, run_id)
    timings["rows to fix"] = time.monotonic() - started
    lines = text.splitlines()
    assert count == 1990 and lines[0] == "action,serial,email,status,detail"
    assert lines[1] == "lock,SN0000000,pupil0@skolan.se,failed,Serial 'SN0000000' was not found."
    print("100k-row table:", {name: f"{seconds * 1000:.0f} ms" for name, seconds in timings.items()})
    assert max(t for name, t in timings.items() if name != "rows to fix") < 1.0, timings


def test_the_eta_waits_until_it_means_something(tmp_path: Path) -> None:
    from bulkmdm.web.children import ChildRun

    connection = connection_from_form({"provider": "banyan", "url": "https://b.example", "banyan:BULKMDM_TOKEN": "t"})
    child = ChildRun(RunRequest("run", tmp_path / "j.csv", tmp_path / "r.csv", connection, tmp_path, "u1"))
    # the first second runs far ahead (invalid rows done at once, a full rate bucket), then 10 rows/s
    assert child.speed(0, 10_000, 100.0) == (None, None)
    rate, eta = child.speed(300, 10_000, 101.0)
    assert rate == 300 and eta is None  # at 300 rows/s the job would seem to end in half a minute
    for second in range(2, 13):
        rate, eta = child.speed(300 + 10 * (second - 1), 10_000, 100.0 + second)
    assert rate is not None and eta is not None
    assert abs(rate - 10) < 0.5 and 900 <= eta <= 1000, (rate, eta)  # the true pace: 10 rows/s, ~960 s left


async def test_a_runs_page_has_its_rows_filtered_searched_and_the_failed_ones_as_a_job(
    tmp_path: Path, duo: SimServer
) -> None:
    state = duo.app["state"]
    serials = duo.call(lambda: [d["serialNumber"] for d in list(state.devices.values())[40:100]])
    rows = [["lock", s, "7B"] for s in serials] + [["lock", f"NOSUCH{i}", "=7C"] for i in range(3)]
    job = write_csv(tmp_path / "lås.csv", [["action", "serial", "class"], *rows])
    connect = _duo_form(duo.url)
    async with _serve_app(tmp_path / "state") as server, _client(server) as client:
        await _post(client, server, "/connect", **connect)
        run_page = await _dry_run_and_run(client, server, _job_page(await _upload(client, server, job)), "")
        page = await _until(client, server, run_page, 'id="next"')
        assert 'id="row-table"' in page and "Page 1 of 2" in page and "63 rows" in page
        async with client.get(f"{server.url}{run_page}", params={"status": "failed"}) as resp:
            failed = await resp.text()
        assert "3 rows failed" in failed and failed.count("NOSUCH") >= 3 and serials[0] not in failed
        async with client.get(f"{server.url}{run_page}", params={"q": serials[7].lower()}) as resp:
            found = await resp.text()
        assert "1 row holding" in found and serials[7] in found and serials[8] not in found
        async with client.get(f"{server.url}{run_page}/rows", params={"status": "failed"}) as resp:
            part = await resp.text()  # what the page fetches while a run goes
        assert "<html" not in part and part.count("<tr>") == 4 and "3 rows failed" in part
        async with client.get(f"{server.url}{run_page}/events") as resp:
            stream = await resp.text()  # what the page follows while the run goes; a run that ended ends it
        assert resp.content_type == "text/event-stream" and '"failed": 3' in stream and "event: end" in stream
        async with client.get(f"{server.url}{run_page}/rows-to-fix.csv") as resp:
            assert resp.status == 200 and "lås.to-fix.csv" in unquote(resp.headers["Content-Disposition"])
            fix = (await resp.read()).decode("utf-8-sig")
    assert fix.splitlines() == ["action,serial,class,status,detail"] + [
        f"lock,NOSUCH{i},'=7C,failed,Serial 'NOSUCH{i}' was not found."
        for i in range(3)  # no formula for Excel
    ]
    # uploaded again, it is a job of those rows, each to run
    fixed = tmp_path / "fixed.csv"
    fixed.write_text(fix, encoding="utf-8")
    from bulkmdm.jobfile import read_job

    table = read_job(fixed)
    assert table.is_report and [row[2] for row in table.rows] == ["=7C"] * 3


@pytest.mark.parametrize(
    ("provider", "right", "wrong"),
    [
        ("duostation", {"BULKMDM_USERNAME": "admin", "BULKMDM_PASSWORD": "admin"}, {"BULKMDM_PASSWORD": "nope"}),
        ("ivanti", {"BULKMDM_USERNAME": "admin", "BULKMDM_PASSWORD": "admin"}, {"BULKMDM_PASSWORD": "nope"}),
        ("manageengine", {"BULKMDM_API_KEY": "me-api-key"}, {"BULKMDM_API_KEY": "nope"}),
        (
            "manageengine",
            {
                "BULKMDM_CLIENT_ID": "me-client",
                "BULKMDM_CLIENT_SECRET": "me-secret",
                "BULKMDM_REFRESH_TOKEN": "me-refresh",
            },
            {"BULKMDM_REFRESH_TOKEN": "nope"},
        ),
        ("banyan", {"BULKMDM_TOKEN": "banyan-token"}, {"BULKMDM_TOKEN": "nope"}),
    ],
)
async def test_connect_makes_one_read_on_every_vendor(
    provider: str, right: dict[str, str], wrong: dict[str, str]
) -> None:
    import importlib

    from bulkmdm.errors import UsageError
    from bulkmdm.web.connection import Connection, check_connection

    sim_app = importlib.import_module(f"bulkmdm.sim.{provider}").make_app(devices=30)
    with SimServer(sim_app) as sim:
        partition = "1" if provider == "ivanti" else ""
        oauth = {"BULKMDM_OAUTH_URL": f"{sim.url}/oauth/v2/token"} if "BULKMDM_CLIENT_ID" in right else {}
        await check_connection(Connection(provider, sim.url, partition, {**right, **oauth}))
        with pytest.raises(UsageError, match=r"refused these credentials \(HTTP 40[13]\)"):
            await check_connection(Connection(provider, sim.url, partition, {**right, **oauth, **wrong}))
        if partition:
            with pytest.raises(UsageError, match="refused a first look-up .*check the device space id"):
                await check_connection(Connection(provider, sim.url, "999", right))
