"""What a server says is data: it reaches the terminal, the report, the journal
and the web page without escape sequences, and without the run's credentials
even when the server echoes them back."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from openpyxl import load_workbook

from bulkmdm.shown import REDACTED, Secrets, plain
from bulkmdm.sim.common import SimServer
from bulkmdm.sim.duostation import FACTS, make_app
from bulkmdm.client import BasicAuth

from conftest import write_csv

Start = Callable[[web.Application], Awaitable[str]]

SECRET = "Pa55-very-secret-word"
BASIC = base64.b64encode(f"admin:{SECRET}".encode()).decode()
#: a clipboard write (OSC 52), a title change (OSC 0), text hidden by SGR 8, a
#: cursor move, a bidi override, a C1 CSI and a bell
ESCAPES = "\x1b]52;c;cm0gLXJmIH4K\x07\x1b]0;pwned\x1b\\\x1b[8mhidden\x1b[0m\x1b[2J\u202eevil\u202c\x9b31m\x07"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text", "plain text"),
        ("a\x1b]52;c;Y2xpcA==\x07b", "ab"),
        ("a\x1b]0;title\x1b\\b", "ab"),
        ("a\x1b[1;31mred\x1b[0mb", "aredb"),
        ("a\x9b2Jb\x9d0;t\x9cc", "abc"),
        ("a\x1bPdcs\x1b\\b", "ab"),
        ("a\u202eb\u2066c\u200bd\U000e0041e", "abcde"),
        ("line\nbreak\ttab\x00nul\x7fdel", "line break tabnuldel"),
        ("unterminated \x1b]52;c;payload", "unterminated "),
        ("Å ä 東京 \U0001f600", "Å ä 東京 \U0001f600"),
    ],
)
def test_plain_removes_escape_sequences_and_hidden_characters(raw: str, shown: str) -> None:
    assert plain(raw) == shown


def test_secrets_are_redacted_in_every_form() -> None:
    env = {"BULKMDM_USERNAME": "admin", "BULKMDM_PASSWORD": SECRET, "BULKMDM_TOKEN": "tok-1234"}
    secrets = Secrets.from_env(env)
    for text in (
        f"bad password {SECRET}!",
        f"Authorization: Basic {BASIC}",
        f"b64 {base64.b64encode(SECRET.encode()).decode()}",
        "url-encoded " + SECRET.replace("-", "%2D"),  # (quote() leaves '-', a server may not)
        "bearer tok-1234",
    ):
        assert SECRET not in secrets.redact(text) and "tok-1234" not in secrets.redact(text)
    assert secrets.redact(f"Basic {BASIC}") == f"Basic {REDACTED}"
    assert secrets.redact("nothing secret here") == "nothing secret here"


def test_the_auth_in_use_is_redacted_as_it_changes() -> None:
    class Token:
        value = "first-token-1"

        def headers(self) -> dict[str, str]:
            return {"Authorization": f"Zoho-oauthtoken {self.value}"}

    token = Token()
    secrets = Secrets.from_env({}, auth=token)
    assert secrets.clean("bad first-token-1") == f"bad {REDACTED}"
    token.value = "second-token-2"  # renewed during the run
    assert secrets.clean("bad second-token-2, was first-token-1") == f"bad {REDACTED}, was {REDACTED}"
    basic = Secrets(auth=BasicAuth("admin", SECRET))
    assert secrets.clean("x") == "x" and basic.clean(f"pw {SECRET}") == f"pw {REDACTED}"


async def _echoing_front(start: Start, sim_url: str) -> str:
    """Reads go to the simulator; every change is refused with an error text
    that echoes the request's credentials among escape sequences."""
    session = aiohttp.ClientSession()

    async def handle(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if request.method == "GET":
            async with session.get(sim_url + request.path_qs, headers={"Authorization": auth}) as resp:
                return web.Response(body=await resp.read(), status=resp.status, content_type=resp.content_type)
        password = base64.b64decode(auth.split()[-1]).decode().partition(":")[2]
        message = f"denied {ESCAPES} for {auth} ({password})"
        return web.json_response({"message": message}, status=400)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)

    async def close(_app: web.Application) -> None:
        await session.close()

    app.on_cleanup.append(close)
    return await start(app)


def _journal_text(path: Path) -> bytes:
    """Every value in every table of a journal, as text."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        values = [str(value) for table in tables for row in db.execute(f'SELECT * FROM "{table}"') for value in row]
    assert any("denied" in value for value in values)
    return "\n".join(values).encode()


def _assert_clean(data: bytes, where: object) -> None:
    for bad in (SECRET.encode(), BASIC.encode(), b"\x1b", "\u202e".encode(), b"\x07", "\x9b".encode()):
        assert bad not in data, (where, bad)


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
async def test_a_server_echoing_credentials_and_escapes_leaks_nothing(
    loopback: Start, run_cli: Any, tmp_path: Path, suffix: str
) -> None:
    with SimServer(make_app(devices=20, password=SECRET)) as sim:
        url = await _echoing_front(loopback, sim.url)
        serial = FACTS["untagged_device"]["serial"]
        job = write_csv(tmp_path / "job.csv", [["serial", "message"], [serial, "hello"]])
        report = tmp_path / f"out{suffix}"
        args = ["run", str(job), "--provider", "duostation", "--url", url, "--action", "message", "--verbose"]
        res = await asyncio.to_thread(
            run_cli, [*args, "--report", str(report)], env={"BULKMDM_PASSWORD": SECRET}, report=report
        )
    assert res.exit_code == 1
    if suffix == ".csv":
        rows = list(csv.DictReader(report.open(encoding="utf-8-sig")))
        detail = rows[0]["detail"]
    else:
        sheet = load_workbook(report).active
        assert sheet is not None
        header = [c.value for c in sheet[1]]
        detail = str(sheet.cell(2, header.index("detail") + 1).value)
    assert detail.startswith("HTTP 400: ") and "denied" in detail and "evil" in detail
    assert f"for {REDACTED} ({REDACTED})" in detail
    _assert_clean(res.output.encode(), "terminal")
    for path in tmp_path.rglob("*"):
        if path.suffix == ".sqlite3":
            _assert_clean(_journal_text(path), path)
        elif path.is_file() and path.suffix != ".xlsx":
            _assert_clean(path.read_bytes(), path)
    if suffix == ".xlsx":
        for sheet in load_workbook(report):
            for row in sheet.iter_rows(values_only=True):
                _assert_clean("".join(map(str, row)).encode(), report)


async def test_the_web_page_shows_what_the_server_said_without_escapes_or_credentials(
    loopback: Start, tmp_path: Path
) -> None:
    from test_web import _client, _duo_form, _job_page, _post, _serve_app, _until, _upload

    with SimServer(make_app(devices=20, password=SECRET)) as sim:
        url = await _echoing_front(loopback, sim.url)
        job = write_csv(tmp_path / "web.csv", [["serial", "message"], [FACTS["untagged_device"]["serial"], "hej"]])
        connect = _duo_form(url, SECRET)
        async with _serve_app(tmp_path / "state") as server, _client(server) as client:
            await _post(client, server, "/connect", **connect)
            job_page = _job_page(await _upload(client, server, job))
            dry = await _post(client, server, f"{job_page}/dry-run", action="message")
            await _until(client, server, dry, 'id="confirm"')
            run_page = await _post(client, server, f"{job_page}/run")
            page = await _until(client, server, run_page, 'id="next"')
            async with client.get(f"{server.url}{run_page}/events") as resp:
                events = await resp.text()
    assert "denied" in page and "evil" in page and REDACTED in page
    _assert_clean(page.encode(), "run page")
    # (JSON writes control characters as \u escapes: read them back first)
    payloads = [json.loads(line[len("data: ") :]) for line in events.splitlines() if line.startswith("data: {")]
    assert payloads
    _assert_clean(json.dumps(payloads, ensure_ascii=False).encode(), "progress events")


async def test_a_token_server_echoing_the_client_secret_leaks_nothing(
    loopback: Start, run_cli: Any, tmp_path: Path
) -> None:
    from urllib.parse import quote

    secret, refresh = "very/secret+client=value", "1000.refresh-token-value"

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        # (a short reason is shown: the token server's own word for what it refused)
        message = f"\x1b]52;c;eA==\x07{form.get('client_secret')!s}\u202e"
        return web.json_response({"error": message}, status=400)

    app = web.Application()
    app.router.add_post("/oauth/v2/token", token)
    url = await loopback(app)
    env = {
        "BULKMDM_USERNAME": "",
        "BULKMDM_PASSWORD": "",
        "BULKMDM_CLIENT_ID": "1000.CLIENT",
        "BULKMDM_CLIENT_SECRET": secret,
        "BULKMDM_REFRESH_TOKEN": refresh,
        "BULKMDM_OAUTH_URL": url + "/oauth/v2/token",
    }
    job = write_csv(tmp_path / "me.csv", [["serial", "group"], ["S1", "Lab"]])
    args = ["run", str(job), "--provider", "manageengine", "--url", url, "--action", "add-to-group", "--verbose"]
    res = await asyncio.to_thread(run_cli, args, env=env)
    assert res.exit_code == 2 and f"({REDACTED})" in res.output, res.output
    for text in (res.output, *(p.read_text(errors="replace") for p in tmp_path.rglob("*.csv"))):
        for bad in (secret, quote(secret, safe=""), refresh, "\x1b", "\u202e", "\x07"):
            assert bad not in text, bad


def test_a_crash_file_holds_no_credential_and_no_escape(monkeypatch: pytest.MonkeyPatch) -> None:
    from bulkmdm.cli import _crash_log

    monkeypatch.setenv("BULKMDM_USERNAME", "admin")
    monkeypatch.setenv("BULKMDM_PASSWORD", SECRET)
    try:
        raise RuntimeError(f"the MDM said {ESCAPES} to Basic {BASIC}\nand {SECRET}")
    except RuntimeError as exc:
        path = Path(_crash_log(exc))
    text = path.read_text()
    path.unlink()
    assert "Traceback" in text and "RuntimeError: the MDM said" in text and f"Basic {REDACTED}" in text
    _assert_clean(text.encode(), path)


async def test_a_template_whose_lists_fail_says_so_without_escapes_or_credentials(
    loopback: Start, run_cli: Any, tmp_path: Path
) -> None:
    async def refuse(request: web.Request) -> web.Response:
        echoed = request.headers.get("Authorization", "")
        return web.json_response({"message": f"broken {ESCAPES} {echoed} {SECRET}"}, status=500)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    url = await loopback(app)
    out = tmp_path / "tag.xlsx"
    args = ["template", "tag", "--provider", "duostation", "--url", url, "-o", str(out)]
    res = await asyncio.to_thread(run_cli, args, env={"BULKMDM_PASSWORD": SECRET})
    assert res.exit_code == 0 and "No dropdowns:" in res.output and "broken" in res.output, res.output
    assert REDACTED in res.output
    _assert_clean(res.output.encode(), "terminal")
