"""`bulkmdm serve` in a real Chromium (Debian's `chromium`, driven by Playwright):
the whole flow against the DuoSTATION simulator, one screenshot per step.

Connect (refused, then accepted) -> upload -> preview -> dry run -> confirm a
destructive job (wipe) -> watch it run -> stop -> resume -> the row table
(filter, search, the rows to fix as a job) -> download the report -> re-run
the failed rows; and the MDM form keeping what was typed. One Chromium for
the module; every page is watched for console errors (a CSP refusal) and
failed requests (a missing favicon). Screenshots (1280x800) land in the
test's tmp folder; SERVE_SCREENSHOTS=DIR copies them there too (that is how
docs/serve.png is made).
"""

from __future__ import annotations

import csv
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import read_report
from web_helpers import downloaded_csv, screenshot, serving

from bulkmdm.sim.common import SimServer
from bulkmdm.sim.duostation import FACTS, make_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it"
)
PASSWORD = "Sim-Pa55word-9f3c"
WIPES = 16


@pytest.fixture
def duo() -> Iterator[SimServer]:
    with SimServer(make_app(devices=200, seed=3, password=PASSWORD)) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    context.set_default_timeout(20_000)
    page = context.new_page()
    troubles: list[str] = []
    page.on("console", lambda message: troubles.append(message.text) if message.type == "error" else None)
    page.on(
        "response",
        lambda response: troubles.append(f"{response.status} {response.url}") if response.status >= 400 else None,
    )
    yield page
    context.close()
    # a CSP refusal is a console error; a missing favicon a 404
    assert troubles == [], troubles


def _serials(sim: SimServer, n: int) -> list[str]:
    state = sim.app["state"]
    return sim.call(lambda: [d["serialNumber"] for d in list(state.devices.values())[FACTS["edge_devices"] :]][:n])


def _wipes(sim: SimServer) -> list[str]:
    state = sim.app["state"]
    return sim.call(lambda: [c["serialNumber"] for c in state.commands if c["command"] == "wipedevice"])


def _shot(page: Any, tmp_path: Path, name: str) -> None:
    # no page shows where the server keeps files (the log of a run included)
    html = page.content()
    assert "web-jobs" not in html and str(tmp_path) not in html, name
    screenshot(page, tmp_path, name, full_page=False)


def _job(tmp_path: Path, serials: list[str]) -> Path:
    path = tmp_path / "förlorade iPads.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Action", "Serial Number", "Klass", "Tgg"])
        writer.writerows(["wipe", s, "7B", ""] for s in serials)
        writer.writerow(["wipe", "NOSUCHSERIAL1", "7C", ""])
        writer.writerow(["wipe", "NOSUCHSERIAL2", "7C", ""])
        writer.writerow(["wipee", serials[0], "7C", ""])
        writer.writerow(["wipe", "", "8A", ""])
    return path


def test_whole_flow_in_chromium(duo: SimServer, page: Any, tmp_path: Path) -> None:
    started = time.monotonic()
    serials = _serials(duo, WIPES)
    job = _job(tmp_path, serials)
    with serving(tmp_path / "state") as address:
        _connect_and_upload(page, tmp_path, address, duo.url, job)
        _dry_run(page, tmp_path)
        _run_stop_resume(page, tmp_path, duo)
        _download_and_rerun(page, tmp_path)
        page.goto(address.split("?")[0])
        assert page.locator("table.data tbody tr").count() == 3  # the history: dry run, run (resumed), re-run
        _shot(page, tmp_path, "08-history")
        page.click("text=Use another MDM")  # starts from the MDM it leaves, the password typed again
        assert page.input_value("#provider") == "duostation" and page.input_value("input[name=url]") == duo.url
        assert page.input_value("input[name='duostation:BULKMDM_USERNAME']") == "admin"
        assert page.input_value("input[name='duostation:BULKMDM_PASSWORD']") == ""
    assert sorted(_wipes(duo)) == sorted(serials)  # each device wiped once, across stop and resume
    for file in (tmp_path / "state").rglob("*"):
        assert not file.is_file() or PASSWORD.encode() not in file.read_bytes(), file
    print(f"browser walk-through: {time.monotonic() - started:.1f} s")


def _connect_and_upload(page: Any, tmp_path: Path, address: str, url: str, job: Path) -> None:
    page.goto(address)
    assert "token=" not in page.url  # the secret left the address bar for a cookie
    page.select_option("#provider", "duostation")
    page.fill("input[name=url]", url)
    page.fill("input[name='duostation:BULKMDM_USERNAME']", "admin")
    page.fill("input[name='duostation:BULKMDM_PASSWORD']", "not-the-password")
    page.click("#connect-button")
    refused = page.inner_text("#flash")
    assert "refused these credentials" in refused and "BULKMDM_" not in refused
    assert "Not connected" in page.inner_text("header") and page.input_value("input[name=url]") == url
    _shot(page, tmp_path, "01-refused")
    page.fill("input[name='duostation:BULKMDM_PASSWORD']", PASSWORD)
    _shot(page, tmp_path, "01-connect")
    page.click("#connect-button")
    assert "answered a first look-up" in page.inner_text("#note")
    assert PASSWORD not in page.content()
    page.set_input_files("input[name=job]", str(job))
    page.click("#upload-button")
    page.wait_for_url("**/jobs/*")
    body = page.inner_text("main")
    assert f"{WIPES + 4} rows" in body and "2 rows cannot run" in body
    assert "did you mean tag" in body and "did you mean 'wipe'" in body
    _shot(page, tmp_path, "02-preview")
    page.click("text=Problems (2)")
    assert page.locator("table.rows tbody tr").count() == 2


def _dry_run(page: Any, tmp_path: Path) -> None:
    page.click("#dry-run")
    page.wait_for_selector("#confirm", timeout=30_000)
    results = page.inner_text("#results")
    assert f"{WIPES} planned" in results and "2 failed" in results and "2 invalid" in results
    assert "Destructive rows" in results and "NOSUCHSERIAL1" in results
    assert "2 ×\tSerial '…' was not found" in page.inner_text("table.failures")  # grouped as in the terminal
    _shot(page, tmp_path, "03-dry-run")


def _run_stop_resume(page: Any, tmp_path: Path, duo: SimServer) -> None:
    duo.faults.update({"latency": 0.2, "mutating_only": True})
    page.fill("#confirm-count", "3")
    page.click("#run")
    assert "Type 16" in page.inner_text(".notice.bad")  # the wrong count sends nothing
    assert _wipes(duo) == []
    page.fill("#confirm-count", str(WIPES))
    page.click("details summary")
    page.fill("#rate-limit", "3/s")
    page.click("#run")
    page.wait_for_url("**/runs/*")
    _wait_until(lambda: len(_wipes(duo)) >= 2)  # sent by the run (rows found invalid count as done at once)
    _wait_until(lambda: int(page.inner_text("#done")) >= 6)
    assert "2 failed" in page.inner_text("#chips") and "NOSUCHSERIAL" in page.inner_text("#failures")
    assert "estimating" in page.inner_text("#eta")  # a few seconds in: no ETA yet
    _wait_until(lambda: "succeeded" in page.inner_text("#row-table"))  # the row table follows the run
    _shot(page, tmp_path, "04-running")
    page.click("#stop")
    page.wait_for_selector("#resume", timeout=20_000)
    sent = len(_wipes(duo))
    assert 0 < sent < WIPES
    assert "stopped" in page.inner_text("#state").lower()
    _shot(page, tmp_path, "05-stopped")
    duo.faults.update({"latency": 0.0})
    page.click("#resume")
    page.wait_for_selector("#next", timeout=30_000)
    _shot(page, tmp_path, "06-done")
    _row_table(page, tmp_path)


def _row_table(page: Any, tmp_path: Path) -> None:
    page.locator("#rows").scroll_into_view_if_needed()
    assert page.locator("#row-table tbody tr").count() == WIPES + 4
    page.click("#rows .filters >> text=failed (2)")
    assert page.locator("#row-table tbody tr").count() == 2 and "2 rows failed" in page.inner_text("#rows")
    _shot(page, tmp_path, "06-rows-failed")
    page.click("#rows .filters >> text=All")
    page.fill("#row-search", "nosuchserial2")
    page.click("#row-search-button")
    assert page.locator("#row-table tbody tr").count() == 1 and "NOSUCHSERIAL2" in page.inner_text("#row-table")
    _shot(page, tmp_path, "06-rows-search")
    rows = downloaded_csv(page, "#to-fix", tmp_path / "to-fix.csv")
    assert rows[0] == ["Action", "Serial Number", "Klass", "Tgg", "status", "detail"] and len(rows) == 5
    assert {row[4] for row in rows[1:]} == {"failed", "invalid"}


def _wait_until(condition: Any, timeout: float = 20.0) -> None:
    # page.wait_for_function evaluates a string, which the app's CSP forbids (no unsafe-eval)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _download_and_rerun(page: Any, tmp_path: Path) -> None:
    header, *rows = downloaded_csv(page, "text=Download report (.csv)", tmp_path / "downloaded.csv")
    statuses = [row[header.index("status")] for row in rows]
    assert statuses.count("succeeded") == WIPES and statuses.count("failed") == 2
    with page.expect_download() as download:
        page.click("text=Download report (.xlsx)")
    assert download.value.suggested_filename.endswith(".xlsx")
    download.value.save_as(tmp_path / "downloaded.xlsx")
    assert [row["status"] for row in read_report(tmp_path / "downloaded.xlsx")] == statuses
    page.fill("input[name=confirm]", "3")  # two wipes not found, one without a serial
    page.click("#rerun")
    page.wait_for_url("**/runs/*")
    page.wait_for_selector("#next", timeout=30_000)
    assert "re-run" in page.inner_text("h1").lower()
    _shot(page, tmp_path, "07-rerun")


def test_the_mdm_form_keeps_what_was_typed(page: Any, tmp_path: Path) -> None:
    with serving(tmp_path / "state") as address:
        page.goto(address)
        page.select_option("#provider", "ivanti")
        page.fill("input[name=url]", "https://na1.mobileiron.example")
        page.fill("input[name='ivanti:BULKMDM_USERNAME']", "api-user")
        page.fill("input[name='ivanti:BULKMDM_PASSWORD']", "secret-pw")
        page.click("#connect-button")
        assert "needs the device space id" in page.inner_text("#flash")
        assert page.input_value("#provider") == "ivanti"
        assert page.input_value("input[name=url]") == "https://na1.mobileiron.example"
        assert page.input_value("input[name='ivanti:BULKMDM_USERNAME']") == "api-user"
        assert page.is_visible("input[name='ivanti:partition']") and not page.is_visible(
            "input[name='banyan:BULKMDM_TOKEN']"
        )
        _shot(page, tmp_path, "09-form-kept")
        empty = tmp_path / "only-a-header.csv"
        empty.write_text("action,serial\n")
        page.set_input_files("input[name=job]", str(empty))
        page.click("#upload-button")
        page.wait_for_url("**/jobs/*")
        assert "no rows under the header" in page.inner_text("#no-rows") and "No problems" not in page.inner_text(
            "main"
        )
        _shot(page, tmp_path, "10-header-only")
