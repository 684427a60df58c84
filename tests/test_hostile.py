"""Servers that misbehave on purpose: no answer of theirs makes a row
`succeeded` that the MDM did not confirm, hangs a run, or takes unbounded
memory. Each server is a small aiohttp app on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bulkmdm.errors import AuthError, BadAnswer, NotSent, RedirectRefused
from bulkmdm.model import JobRow, Status, Step
from bulkmdm.providers.base import outcome_from_error
from bulkmdm.retry import RetryPolicy, parse_retry_after
from bulkmdm.sim.common import SimServer
from bulkmdm.client import MAX_BODY, Client

from conftest import write_csv

FAST = RetryPolicy(attempts=4, base=0.01, cap=0.05, max_wait=2.0)

Start = Callable[[web.Application], Awaitable[str]]


def app_with(handler: Callable[[web.Request], Any]) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        result = handler(request)
        return await result if asyncio.iscoroutine(result) else result  # type: ignore[no-any-return]

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def counter() -> tuple[list[str], Callable[[web.Request], None]]:
    hits: list[str] = []
    return hits, lambda request: hits.append(f"{request.method} {request.path}")


# -- redirects -----------------------------------------------------------------


async def test_a_change_redirected_to_another_origin_is_not_followed(loopback: Start) -> None:
    elsewhere_hits, count_elsewhere = counter()

    async def elsewhere(request: web.Request) -> web.Response:
        count_elsewhere(request)
        return web.json_response({"ok": True})

    other = await loopback(app_with(elsewhere))

    async def mdm(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(other + request.path)

    url = await loopback(app_with(mdm))
    async with Client(url, retry=FAST) as client:
        with pytest.raises(RedirectRefused) as info:
            await client.request("POST", "devices/1/lockdevice", json={})
    assert elsewhere_hits == []
    assert "redirect to http://127.0.0.1:" in str(info.value) and "not followed" in str(info.value)
    assert info.value.attempts == 1  # one redirect, no retry loop


async def test_a_change_is_not_redirected_even_within_the_origin(loopback: Start) -> None:
    hits, count = counter()

    async def mdm(request: web.Request) -> web.Response:
        count(request)
        if request.path == "/api/devices/1/lockdevice":
            raise web.HTTPPermanentRedirect("/api/v2/devices/1/lockdevice")
        return web.json_response({})

    url = await loopback(app_with(mdm))
    async with Client(url + "/api", retry=FAST) as client:
        with pytest.raises(RedirectRefused):
            await client.request("POST", "devices/1/lockdevice", json={})
    assert hits == ["POST /api/devices/1/lockdevice"]


async def test_a_read_follows_a_redirect_within_the_origin_only(loopback: Start) -> None:
    other = await loopback(app_with(lambda r: web.json_response(["elsewhere"])))

    async def mdm(request: web.Request) -> web.Response:
        if request.path == "/api/devices":
            raise web.HTTPFound("/api/devices/")
        if request.path == "/api/devices/":
            return web.json_response([{"id": 1}])
        raise web.HTTPFound(other + "/api/tags")

    url = await loopback(app_with(mdm))
    async with Client(url + "/api", retry=FAST) as client:
        resp = await client.request("GET", "devices")
        assert resp.ok and resp.body == [{"id": 1}]
        with pytest.raises(RedirectRefused):
            await client.request("GET", "tags")


async def test_a_redirect_loop_ends_quickly(loopback: Start) -> None:
    hits, count = counter()

    async def mdm(request: web.Request) -> web.Response:
        count(request)
        raise web.HTTPFound(request.path)

    url = await loopback(app_with(mdm))
    async with Client(url, retry=FAST) as client:
        with pytest.raises(RedirectRefused):
            await client.request("GET", "devices")
    assert len(hits) <= 6


# -- answers that are not the vendor's ------------------------------------------


LOGIN_PAGE = "<!DOCTYPE html><html><body><form action='/sso/login'>Session expired</form></body></html>"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
async def test_an_html_page_with_200_is_not_an_answer(loopback: Start, method: str) -> None:
    url = await loopback(app_with(lambda r: web.Response(text=LOGIN_PAGE, content_type="text/html")))
    async with Client(url, retry=FAST) as client:
        with pytest.raises(BadAnswer) as info:
            await client.request(method, "devices/1", json={} if method != "GET" else None)
    assert "HTML page (HTTP 200)" in str(info.value) and "login page" in str(info.value)
    outcome = outcome_from_error(step(), info.value)
    assert outcome.status is Status.FAILED


async def test_an_empty_2xx_and_json_text_are_answers(loopback: Start) -> None:
    answers = iter([web.Response(status=204), web.Response(text='{"a": 1}', content_type="text/plain")])
    url = await loopback(app_with(lambda r: next(answers)))
    async with Client(url, retry=FAST) as client:
        assert (await client.request("DELETE", "x")).status == 204
        assert (await client.request("GET", "x")).body == {"a": 1}


async def test_json_nested_too_deep_is_an_unreadable_answer(loopback: Start) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    url = await loopback(app_with(lambda r: web.Response(text=deep, content_type="application/json")))
    async with Client(url, retry=FAST) as client:
        with pytest.raises(BadAnswer) as info:
            await client.request("GET", "devices")
    assert "nested too deep" in str(info.value)


async def test_a_body_over_the_cap_is_refused_unread(loopback: Start) -> None:
    big = b"[" + b"1," * 600_000 + b"1]"
    url = await loopback(app_with(lambda r: web.Response(body=big, content_type="application/json")))
    async with Client(url, retry=FAST, max_body=1_000_000) as client:
        with pytest.raises(BadAnswer) as info:
            await client.request("GET", "devices")
    assert "larger than" in str(info.value)


async def test_a_gzip_bomb_is_refused_in_bounded_memory(loopback: Start) -> None:
    # 200 MB of zeros in ~200 KB: refused at the default cap, never held whole
    bomb = gzip.compress(b"[" + b"0" * (200 * 1024 * 1024) + b"]", compresslevel=9)
    assert len(bomb) < 1_000_000

    async def mdm(request: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    url = await loopback(app_with(mdm))
    async with Client(url, retry=FAST) as client:
        with pytest.raises(BadAnswer) as info:
            await client.request("GET", "devices")
    assert f"larger than {MAX_BODY // (1024 * 1024)} MB" in str(info.value)


async def test_absurd_headers_fail_the_request_cleanly(loopback: Start) -> None:
    async def mdm(request: web.Request) -> web.Response:
        return web.json_response({}, headers={"X-Junk": "a" * 100_000})

    url = await loopback(app_with(mdm))
    async with Client(url, retry=FAST) as client:
        with pytest.raises(Exception) as info:
            await client.request("GET", "devices")
    assert type(info.value).__module__ == "bulkmdm.errors"


# -- waits ----------------------------------------------------------------------


@pytest.mark.parametrize("retry_after", ["1000000000", "inf", "Fri, 31 Dec 2099 23:59:59 GMT"])
async def test_a_retry_after_of_years_ends_the_attempts_at_once(loopback: Start, retry_after: str) -> None:
    hits, count = counter()

    async def mdm(request: web.Request) -> web.Response:
        count(request)
        return web.json_response({"message": "slow down"}, status=429, headers={"Retry-After": retry_after})

    url = await loopback(app_with(mdm))
    started = time.monotonic()
    async with Client(url, retry=FAST) as client:
        resp = await client.request("POST", "devices/1/lockdevice", json={})
    assert time.monotonic() - started < 2
    assert resp.status == 429 and len(hits) == 1
    assert "longer than the 2 s bulkmdm waits" in resp.note
    assert parse_retry_after("nan") is None


async def test_a_503_retry_after_is_waited_up_to_the_cap_only(loopback: Start) -> None:
    answers = iter([web.json_response({}, status=503, headers={"Retry-After": "1"}), web.json_response({"ok": 1})])
    url = await loopback(app_with(lambda r: next(answers)))
    started = time.monotonic()
    async with Client(url, retry=FAST) as client:
        resp = await client.request("GET", "x")
    assert resp.ok and 0.9 < time.monotonic() - started < 2.5


# -- stopping ---------------------------------------------------------------------


async def test_no_request_starts_once_the_run_is_stopping(loopback: Start) -> None:
    hits, count = counter()

    async def mdm(request: web.Request) -> web.Response:
        count(request)
        return web.json_response({})

    url = await loopback(app_with(mdm))
    stop = asyncio.Event()
    from bulkmdm.limits import RateController

    limiter = RateController(rate=2.0, adaptive=False)
    async with Client(url, retry=FAST, limiter=limiter, stopping=stop.is_set) as client:
        first = await client.request("POST", "a", json={})
        waiting = [asyncio.ensure_future(client.request("POST", "b", json={})) for _ in range(4)]
        await asyncio.sleep(0.1)
        stop.set()
        results = await asyncio.gather(*waiting, return_exceptions=True)
    assert first.ok
    assert all(isinstance(r, NotSent) for r in results), results
    assert hits == ["POST /a"]
    assert outcome_from_error(step(), results[0]).status is Status.NOT_RUN  # type: ignore[arg-type]


# -- credentials ------------------------------------------------------------------


async def test_a_credential_request_is_never_redirected(loopback: Start) -> None:
    from bulkmdm.providers.manageengine import ZohoOAuth

    stolen: list[str] = []

    async def thief(request: web.Request) -> web.Response:
        stolen.append((await request.text()) + request.query_string)
        return web.json_response({"access_token": "x", "expires_in": 3600})

    other = await loopback(app_with(thief))

    async def accounts(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(other + "/oauth/v2/token")

    token_url = await loopback(app_with(accounts)) + "/oauth/v2/token"
    auth = ZohoOAuth(client_id="id-1", client_secret="secret-1", refresh_token="refresh-1", token_url=token_url)
    async with Client("http://127.0.0.1:1/api/v1", auth=auth, retry=FAST) as client:
        with pytest.raises(AuthError) as info:
            await auth.ready(client)
    assert stolen == []
    assert "not followed" in str(info.value) and "secret-1" not in str(info.value)


# -- end to end: a proxy in front of the simulator --------------------------------


def step() -> Step:
    return Step(JobRow(0, "lock", {"serial": "S1"}), "lock", "device S1")


async def _front(start: Start, sim_url: str, change: Callable[[web.Request], web.Response]) -> str:
    """Reads go to the simulator; every change gets ``change``'s answer."""
    session = aiohttp.ClientSession()

    async def proxy(request: web.Request) -> web.Response:
        if request.method != "GET":
            return change(request)
        async with session.get(
            sim_url + request.path_qs, headers={"Authorization": request.headers.get("Authorization", "")}
        ) as resp:
            return web.Response(body=await resp.read(), status=resp.status, content_type=resp.content_type)

    app = app_with(proxy)

    async def close(_app: web.Application) -> None:
        await session.close()

    app.on_cleanup.append(close)
    return await start(app)


@pytest.mark.parametrize("answer", ["html", "redirect"])
async def test_changes_answered_by_a_login_page_or_a_redirect_never_succeed(
    loopback: Start, duo: SimServer, tmp_path: Path, answer: str
) -> None:
    from bulkmdm.engine import RunOptions, run_job
    from bulkmdm.sim.duostation import FACTS

    other = await loopback(app_with(lambda r: web.json_response({})))

    def change(request: web.Request) -> web.Response:
        if answer == "html":
            return web.Response(text=LOGIN_PAGE, content_type="text/html")
        raise web.HTTPTemporaryRedirect(other + request.path)

    url = await _front(loopback, duo.url, change)
    devices = duo.call(lambda: list(duo.app["state"].devices.values()))
    serials = [d["serialNumber"] for d in devices[FACTS["edge_devices"] :][:3]]
    job = write_csv(tmp_path / "lock.csv", [["serial", "action"], *([s, "lock"] for s in serials)])
    options = RunOptions(
        job=job,
        provider="duostation",
        url=url,
        yes=True,
        env={"BULKMDM_USERNAME": "admin", "BULKMDM_PASSWORD": "admin"},
        state_dir=tmp_path / "state",
    )
    result = await asyncio.to_thread(run_job, options)
    assert result.counts.get("succeeded", 0) == 0
    assert result.exit_code == 1
    assert duo.stats.mutating == 0


BOMB_SCRIPT = r"""
import asyncio, resource, sys, zlib
from aiohttp import web
from bulkmdm.errors import BadAnswer
from bulkmdm.client import Client

def bomb_bytes():
    # 1 GB of zeros in ~1 MB, compressed a chunk at a time (never 1 GB here);
    # run-length matching packs zeros as tightly as a full search, in 2/5 of the time
    packer = zlib.compressobj(9, zlib.DEFLATED, 31, 9, zlib.Z_RLE)
    chunk = b"0" * (1024 * 1024)
    parts = [packer.compress(b"[")]
    parts += [packer.compress(chunk) for _ in range(1024)]
    parts.append(packer.compress(b"]") + packer.flush())
    return b"".join(parts)

BOMB = bomb_bytes()

async def bomb(request):
    return web.Response(body=BOMB, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

async def main():
    app = web.Application()
    app.router.add_get("/{tail:.*}", bomb)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    async with Client(f"http://127.0.0.1:{port}") as client:
        try:
            await client.request("GET", "devices")
        except BadAnswer:
            pass
        else:
            sys.exit("the bomb was read")
    await runner.cleanup()

asyncio.run(main())
print(len(BOMB), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def test_a_gzip_bomb_keeps_peak_memory_under_a_gigabyte() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", BOMB_SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    compressed, peak = map(int, done.stdout.split())
    assert compressed < 2_000_000
    assert peak < 1_000_000_000, f"peak RSS {peak / 1e6:.0f} MB"
    print(f"gzip bomb of {compressed / 1e6:.1f} MB (1 GB decoded): peak RSS {peak / 1e6:.0f} MB")


# -- header names in any case ---------------------------------------------------------


async def _raw_server(answers: list[bytes]) -> tuple[str, asyncio.AbstractServer]:
    """A server writing these exact answers (header names as given), one per request."""
    queue = list(answers)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while queue:
            head = await reader.readuntil(b"\r\n\r\n")
            lengths = [ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")]
            length = int(lengths[0]) if lengths else 0
            await reader.readexactly(length)
            writer.write(queue.pop(0))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", server


def _answer(status: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items()), f"content-length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_header_names_in_lower_case_are_read_like_any_other() -> None:
    # aiohttp's C parser gives the headers it knows their usual case; its pure-Python
    # parser (AIOHTTP_NO_EXTENSIONS=1, or a Python without aiohttp's wheels) keeps the
    # server's, so a plain dict of them missed "retry-after" and "content-type".
    page = LOGIN_PAGE.encode()
    url, server = await _raw_server(
        [
            _answer("429 Too Many Requests", {"retry-after": "1", "content-type": "application/json"}, b"{}"),
            _answer("200 OK", {"content-type": "text/html; charset=utf-8"}, page),
        ]
    )
    try:
        started = time.monotonic()
        async with Client(url, retry=FAST) as client:
            with pytest.raises(BadAnswer) as info:
                await client.request("POST", "devices/1/lockdevice", json={})
        # the lower-case retry-after was waited out (not FAST's 10 ms backoff), and the lower-case
        # content-type showed the login page for what it is
        assert time.monotonic() - started >= 0.9
        assert "HTML page (HTTP 200)" in str(info.value)
    finally:
        server.close()
        await server.wait_closed()


async def test_answers_past_a_few_mb_are_read_one_at_a_time(loopback: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server answering every change with a huge body must not have each
    request in flight hold up to the cap: past SHARED_BODY an answer is read
    only while no other is."""
    import tracemalloc

    from bulkmdm import transport

    monkeypatch.setattr(transport, "SHARED_BODY", 256 * 1024, raising=False)
    chunk = b"0" * (256 * 1024)

    async def mdm(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b"[")
        for _ in range(32):  # 8 MB, a chunk at a time
            await resp.write(chunk)
            await asyncio.sleep(0.002)
        await resp.write(b"]")
        return resp

    async def refusal(client: Client, i: int) -> str:
        try:
            await client.request("GET", f"devices/{i}")
        except BadAnswer as exc:
            return str(exc)
        return "read"

    url = await loopback(app_with(mdm))
    async with Client(url, retry=FAST, max_body=4 * 1024 * 1024) as client:
        tracemalloc.start()
        try:
            results = await asyncio.gather(*(refusal(client, i) for i in range(6)))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert all("larger than" in r for r in results), results
    # one answer up to its 4 MB cap at a time, the others held at 256 KB: about 6 MB, not 6 x 4 MB
    assert peak < 14 * 1024 * 1024, peak
