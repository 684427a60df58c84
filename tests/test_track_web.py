"""The web page's "Follow up" view of a finished run, in a real Chromium
against the Ivanti simulator with devices that check in: nobody looked yet ->
Look now (all pending) -> the devices check in, one is off -> Look now
(confirmed, one pending) -> the pending rows downloaded as a job.
Screenshots land in the test's tmp folder (SERVE_SCREENSHOTS=DIR copies them)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import cli_env, write_csv
from test_track import LATER, active, check_in
from web_helpers import downloaded_csv, screenshot, serving

from bulkmdm.sim.common import CheckIns, SimServer
from bulkmdm.sim.ivanti import make_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
PASSWORD = "Iv-Pa55word-77c1"


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(make_app(devices=300, seed=1, password=PASSWORD, checkins=CheckIns(delay=LATER))) as server:
        yield server


@pytest.fixture
def page() -> Iterator[Any]:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        context.set_default_timeout(20_000)
        yield context.new_page()
        context.close()
        browser.close()


def _look(page: Any) -> str:
    with page.expect_navigation():
        page.click("#look-button")
    # the page refreshes itself while the look is on; the button comes back when it ended
    page.wait_for_selector("#look-button:not([disabled])", timeout=60_000)
    return str(page.inner_text("#follow-progress"))


def test_follow_up_view_in_chromium(sim: SimServer, page: Any, tmp_path: Path) -> None:
    devices = active(sim, 3)
    job = write_csv(
        tmp_path / "stolen.csv", [["action", "serial", "Klass"], *(["wipe", d["serialNumber"], "7B"] for d in devices)]
    )
    env = cli_env(tmp_path, BULKMDM_PARTITION_ID="1", BULKMDM_PASSWORD=PASSWORD)
    args = [sys.executable, "-m", "bulkmdm", "run", str(job), "--provider", "ivanti", "--url", sim.url, "--yes"]
    ran = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr

    with serving(tmp_path / "state") as address:
        page.goto(address)
        page.select_option("#provider", "ivanti")
        page.fill("input[name=url]", sim.url)
        page.fill("input[name='ivanti:BULKMDM_USERNAME']", "admin")
        page.fill("input[name='ivanti:BULKMDM_PASSWORD']", PASSWORD)
        page.fill("input[name='ivanti:partition']", "1")
        page.click("#connect-button")
        page.click("text=follow up")
        page.wait_for_url("**/follow-up")
        assert "Nobody has looked at the devices yet." in page.inner_text("#follow-progress")

        assert _look(page).startswith("0/3 confirmed, 3 pending")
        assert page.locator("#pending tbody tr").count() == 3

        check_in(sim, offline=[str(devices[2]["id"])])
        assert _look(page).startswith("2/3 confirmed, 1 pending (oldest")
        rows = page.locator("#pending tbody tr")
        assert rows.count() == 1 and devices[2]["serialNumber"] in rows.first.inner_text()
        screenshot(page, tmp_path, "follow-up", full_page=True)

        pending = downloaded_csv(page, "#pending-download", tmp_path / "pending.csv")
        assert pending == [["action", "serial", "Klass"], ["wipe", devices[2]["serialNumber"], "7B"]]
        assert PASSWORD not in page.content()
    for file in (tmp_path / "state").rglob("*"):
        assert not file.is_file() or PASSWORD.encode() not in file.read_bytes(), file
