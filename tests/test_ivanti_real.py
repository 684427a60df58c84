"""Ivanti as the live service answers where it differs from its doc (issue
13): the device search pages in an order that moves under the client unless
it sorts by a field that does not; every action runs end to end through the
CLI against both behaviours of the simulator, with its exact state checked.
Also: devices listed without an id, and how to choose the device
space id for the simulator and the demo's printed commands."""

from __future__ import annotations

import asyncio
import base64
import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner
from conftest import write_csv  # type: ignore[import-not-found]
from test_ivanti import ivanti, rewrite_search  # type: ignore[import-not-found]

from bulkmdm.cli import main
from bulkmdm.demo import shown_command
from bulkmdm.model import JobRow, Status, Step
from bulkmdm.sim.common import SimServer
from bulkmdm.sim.ivanti import IvantiState, make_app

#: three pages of 500: the order of the search matters
FLEET = 1200


@pytest.fixture(params=["doc", "real"])
def any_sim(request: pytest.FixtureRequest) -> Iterator[SimServer]:
    """The simulator answering as the doc shows, then as the real service does."""
    with SimServer(make_app(devices=FLEET, seed=7, real=request.param == "real")) as server:
        yield server


@pytest.fixture
def real_sim() -> Iterator[SimServer]:
    with SimServer(make_app(devices=FLEET, seed=7, real=True)) as server:
        yield server


def state_of(sim: SimServer) -> IvantiState:
    return sim.app["state"]  # type: ignore[no-any-return]


class Picker:
    """Distinct devices with a unique serial, last page first (the page a
    search that skips is most likely to miss)."""

    def __init__(self, state: IvantiState) -> None:
        self.state = state
        self.taken: set[int] = set()

    def __call__(self, **where: Any) -> dict[str, Any]:
        for device_id in reversed(self.state.sorted_ids):
            device = self.state.devices[device_id]
            if (
                device_id in self.taken
                or not device["serialNumber"]
                or device["serialNumber"] == self.state.duplicate_serial
            ):
                continue
            if all(device.get(k) == v for k, v in where.items()):
                self.taken.add(device_id)
                return device
        raise AssertionError(f"no device left with {where}")


async def page_ids(url: str, **extra: str) -> list[int]:
    """Every id a client paging by ``start`` (advanced by the rows each page
    returned) is given, overlaps included."""
    seen: list[int] = []
    start = 0
    auth = {"Authorization": "Basic " + base64.b64encode(b"admin:admin").decode()}
    async with aiohttp.ClientSession(headers=auth) as session:
        while True:
            params = {"dmPartitionId": "1", "rows": "500", "start": str(start), **extra}
            async with session.get(f"{url}/api/v1/device", params=params) as resp:
                result = (await resp.json())["result"]
            page = result["searchResults"]
            seen += [d["id"] for d in page]
            start += len(page)
            if not page or start >= result["totalCount"]:
                return seen


# -- the device search ----------------------------------------------------------


async def test_the_real_order_moves_while_a_client_pages_unless_it_sorts_by_id(real_sim: SimServer) -> None:
    unsorted = await page_ids(real_sim.url)
    assert len(set(unsorted)) < FLEET  # devices that checked in meanwhile were skipped
    by_checkin = await page_ids(real_sim.url, **{"sortFields[0].name": "lastCheckin", "sortFields[0].order": "DESC"})
    assert len(set(by_checkin)) < FLEET  # the order of Oomnitza's connector moves too
    by_id = await page_ids(real_sim.url, **{"sortFields[0].name": "id", "sortFields[0].order": "ASC"})
    assert by_id == sorted(state_of(real_sim).devices)  # neither overlap nor skip


async def test_every_device_is_found_in_both_behaviours(any_sim: SimServer) -> None:
    state = state_of(any_sim)
    async with ivanti(any_sim) as provider:
        out = await provider.plan([JobRow(0, "lock", {"device_id": str(max(state.devices))})])
        assert provider._fleet is not None and provider._fleet.count == FLEET
    assert isinstance(out[0], Step)
    assert any_sim.stats.by_route["GET /api/v1/device"] == 3


async def test_a_server_refusing_the_sort_is_paged_the_docs_way_until_nothing_is_missing(real_sim: SimServer) -> None:
    state = state_of(real_sim)
    state.refuses_sort = True
    async with ivanti(real_sim) as provider:
        await provider.plan([JobRow(0, "lock", {"device_id": str(max(state.devices))})])
        assert provider._fleet is not None and provider._fleet.count == FLEET
    # one refused sorted page, then passes of 3 unsorted pages until none is
    # missing: the devices a pass skipped checked in, so the next finds them
    assert real_sim.stats.by_route["GET /api/v1/device"] == 1 + 3 + 3


async def test_large_real_fleets_page_with_search_after_values_under_the_id_order() -> None:
    app = make_app(devices=FLEET, seed=5, real=True)
    state: IvantiState = app["state"]
    state.search_after_from = 1000  # what the simulator does from 10,000 devices on
    with SimServer(app) as server:
        async with ivanti(server) as provider:
            out = await provider.plan([JobRow(0, "lock", {"device_id": str(max(state.devices))})])
            assert provider._fleet is not None and provider._fleet.count == FLEET
        assert isinstance(out[0], Step)
        assert state.search_after_requests == 2


@pytest.mark.parametrize("real", [False, True], ids=["doc", "real"])
async def test_devices_listed_without_an_id_are_no_match_and_never_one_device(real: bool) -> None:
    app = make_app(devices=FLEET, seed=7, real=real)
    state: IvantiState = app["state"]
    pick = Picker(state)
    nulled, renamed, fine = (pick(registrationState="ACTIVE") for _ in range(3))

    def strip_ids(result: dict[str, Any], request: Any) -> None:
        for device in result["searchResults"]:
            if device["id"] == nulled["id"]:
                device["id"] = None
            elif device.get("id") == renamed["id"]:
                device["deviceId"] = device.pop("id")

    rewrite_search(app, strip_ids)
    job = [
        JobRow(0, "lock", {"serial": nulled["serialNumber"]}),
        JobRow(1, "lock", {"serial": renamed["serialNumber"]}),
        JobRow(2, "lock", {"device_id": renamed["guid"]}),
        JobRow(3, "lock", {"serial": fine["serialNumber"]}),
    ]
    with SimServer(app) as server:
        async with ivanti(server) as provider:
            out = await provider.plan(job)
            assert provider._fleet is not None and provider._fleet.count == FLEET - 2
    for item in out[:3]:
        assert not isinstance(item, Step) and item.status is Status.FAILED
        assert "without a device id (its 'id' field is missing or empty)" in item.detail
    assert isinstance(out[3], Step) and out[3].params["id"] == fine["id"]


# -- every action, end to end, against both behaviours ------------------------------


def test_every_action_through_the_cli(any_sim: SimServer, tmp_path: Path, run_cli: Any) -> None:
    state = state_of(any_sim)
    pick = Picker(state)
    locks = [pick(registrationState="ACTIVE"), pick(registrationState="ACTIVE")]
    unlock = pick(registrationState="ACTIVE", platformType="IOS")
    wipe, retire = pick(registrationState="ACTIVE"), pick(registrationState="ACTIVE")
    restart = pick(registrationState="ACTIVE", platformType="IOS", supervised=True)
    checkin, message = pick(registrationState="ACTIVE"), pick(registrationState="ACTIVE")
    moved = pick(registrationState="ACTIVE", platformType="ANDROID")
    new_owner = next(
        d for d in (pick(registrationState="ACTIVE") for _ in range(20)) if d["ownerId"] != moved["ownerId"]
    )
    attribute = pick(registrationState="ACTIVE")
    gone = pick(registrationState="RETIRED")
    job = write_csv(
        tmp_path / "job.csv",
        [
            ["action", "serial", "user", "message", "attribute", "value"],
            *(["lock", d["serialNumber"], "", "", "", ""] for d in locks),
            ["unlock", unlock["serialNumber"], "", "", "", ""],
            ["wipe", wipe["serialNumber"], "", "", "", ""],
            ["retire", retire["serialNumber"], "", "", "", ""],
            ["restart", restart["serialNumber"], "", "", "", ""],
            ["checkin", checkin["serialNumber"], "", "", "", ""],
            ["message", message["serialNumber"], "", "Please return the iPad", "", ""],
            ["assign-user", moved["serialNumber"], new_owner["emailAddress"], "", "", ""],
            ["set-attribute", attribute["serialNumber"], "", "", "floor", "007"],
            ["delete-device", gone["serialNumber"], "", "", "", ""],
        ],
    )
    result = run_cli(["run", str(job), "--provider", "ivanti", "--url", any_sim.url, "--partition", "1", "--yes"])
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in result.report] == ["succeeded"] * 11, [r["detail"] for r in result.report]
    account = new_owner["ownerId"]
    assert sorted(state.log) == sorted(
        [
            *((d["id"], "lock", "") for d in locks),
            (unlock["id"], "unlock", ""),
            (wipe["id"], "wipe", ""),
            (retire["id"], "retire", ""),
            (restart["id"], "restart", ""),
            (checkin["id"], "checkin", ""),
            (message["id"], "message", "Please return the iPad"),
            (moved["id"], "assign-user", str(account)),
            (attribute["id"], "customattributes-patch", json.dumps({"floor": ["007"]})),
            (gone["id"], "delete-device", ""),
        ]
    )
    assert wipe["registrationState"] == "WIPE_PENDING" and retire["registrationState"] == "RETIRED"
    assert moved["ownerId"] == account and moved["emailAddress"] == new_owner["emailAddress"]
    assert attribute["customAttributes"]["attrs"]["floor"] == ["007"]
    assert gone["id"] not in state.devices and len(state.devices) == FLEET - 1


# -- choosing the device space ----------------------------------------------------


def test_sim_help_says_how_to_choose_the_device_space() -> None:
    result = CliRunner().invoke(main, ["sim", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--partition ID" in text and "Ivanti: the device space id it serves" in text
    assert "bulkmdm run --partition ID" in text and "--real" in text


def test_sim_prints_the_device_space_id() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulkmdm", "sim", "ivanti", "--port", "0", "--devices", "5", "--partition", "23505"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        announced = proc.stderr.readline()
        url = proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert url.startswith("http://127.0.0.1:")
    assert "device space id 23505 (--partition 23505 or BULKMDM_PARTITION_ID=23505)" in announced


def test_the_demos_printed_ivanti_command_works_when_copied(
    any_sim: SimServer, tmp_path: Path, run_cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = Picker(state_of(any_sim))(registrationState="ACTIVE")
    write_csv(tmp_path / "ivanti-lock.csv", [["serial"], [device["serialNumber"]]])
    shown = shown_command(tmp_path / "ivanti-lock.csv", "ivanti", any_sim.url, action="lock", partition="1")
    assert "--partition 1" in shown
    monkeypatch.chdir(tmp_path)
    args = shlex.split(shown)
    assert args[:2] == ["bulkmdm", "run"]
    result = run_cli(args[1:])
    assert result.exit_code == 0, result.output
    assert state_of(any_sim).log == [(device["id"], "lock", "")]


# -- undo --------------------------------------------------------------------------


def _owners_and_attributes(state: IvantiState) -> dict[int, tuple[Any, ...]]:
    return {
        i: (d["ownerId"], d["emailAddress"], d["uid"], json.dumps(d["customAttributes"], sort_keys=True))
        for i, d in state.devices.items()
    }


def test_undo_rows_put_back_owners_and_attributes(any_sim: SimServer, tmp_path: Path, run_cli: Any) -> None:
    state = state_of(any_sim)
    pick = Picker(state)
    moved = pick(registrationState="ACTIVE", platformType="ANDROID")
    new_owner = next(
        d for d in (pick(registrationState="ACTIVE") for _ in range(20)) if d["ownerId"] != moved["ownerId"]
    )
    changed = next(
        d
        for d in (pick(registrationState="ACTIVE") for _ in range(50))
        if d["customAttributes"] and len(d["customAttributes"]["attrs"].get("cityid", ())) == 1
    )
    fresh = next(d for d in (pick(registrationState="ACTIVE") for _ in range(50)) if not d["customAttributes"])
    locked = pick(registrationState="ACTIVE")
    job = [
        JobRow(0, "assign-user", {"serial": moved["serialNumber"], "user": new_owner["emailAddress"]}),
        JobRow(1, "set-attribute", {"serial": changed["serialNumber"], "attribute": "cityid", "value": "XYZ"}),
        JobRow(2, "set-attribute", {"serial": fresh["serialNumber"], "attribute": "floor", "value": "3"}),
        JobRow(3, "lock", {"serial": locked["serialNumber"]}),
    ]
    before = _owners_and_attributes(state)
    previous_city = changed["customAttributes"]["attrs"]["cityid"][0]

    async def plan() -> list[Any]:
        async with ivanti(any_sim) as provider:
            return await provider.plan(job)

    steps = asyncio.run(plan())
    assert all(isinstance(s, Step) for s in steps)
    undo = [s.undo for s in steps]
    assert undo[0] == {
        "action": "assign-user",
        "device_id": str(moved["id"]),
        "serial": moved["serialNumber"],
        "user": moved["emailAddress"],
        "user_id": str(moved["ownerId"]),
    }
    assert undo[1] == {
        "action": "set-attribute",
        "device_id": str(changed["id"]),
        "serial": changed["serialNumber"],
        "attribute": "cityid",
        "value": previous_city,
    }
    assert undo[2] is None and undo[3] is None  # no earlier value to put back; a lock is a command

    header = ["action", "serial", "user", "attribute", "value"]
    forward = write_csv(tmp_path / "job.csv", [header, *([r.action, *(r.get(c) for c in header[1:])] for r in job)])
    assert (
        run_cli(["run", str(forward), "--provider", "ivanti", "--url", any_sim.url, "--partition", "1"]).exit_code == 0
    )
    assert moved["ownerId"] == new_owner["ownerId"] and changed["customAttributes"]["attrs"]["cityid"] == ["XYZ"]

    columns = ["action", "device_id", "serial", "user", "user_id", "attribute", "value"]
    back = write_csv(tmp_path / "undo.csv", [columns, *([u.get(c, "") for c in columns] for u in undo if u)])
    result = run_cli(["run", str(back), "--provider", "ivanti", "--url", any_sim.url, "--partition", "1"])
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in result.report] == ["succeeded", "succeeded"]
    after = _owners_and_attributes(state)
    assert after.pop(fresh["id"])[3] == json.dumps({"attrs": {"floor": ["3"]}})  # not undoable: left as set
    before.pop(fresh["id"])
    assert after == before


async def test_a_users_devices_without_an_owner_id_say_so() -> None:
    app = make_app(devices=300, seed=7)
    state: IvantiState = app["state"]
    device = Picker(state)(registrationState="ACTIVE", platformType="ANDROID")
    email = state.devices[state.sorted_ids[0]]["emailAddress"]
    owned = [d for d in state.devices.values() if d["emailAddress"] == email]

    def strip_owner(result: dict[str, Any], request: Any) -> None:
        for listed in result["searchResults"]:
            if listed["emailAddress"] == email:
                listed.pop("ownerId")

    rewrite_search(app, strip_owner)
    with SimServer(app) as server:
        async with ivanti(server) as provider:
            out = await provider.plan([JobRow(0, "assign-user", {"serial": device["serialNumber"], "user": email})])
    assert not isinstance(out[0], Step) and out[0].status is Status.FAILED
    assert f"The MDM lists {len(owned)} device(s) of {email} without an account id (their 'ownerId'" in out[0].detail


# -- export and templates -------------------------------------------------------------


async def test_inventory_streams_every_device_as_text(any_sim: SimServer) -> None:
    state = state_of(any_sim)
    template = state.devices[state.sorted_ids[0]]
    huge = dict(
        template,
        id=2**60 + 1,
        guid="0f8e2b4c-0000-4000-8000-000000000001",
        serialNumber="000123",
        deviceName="Lab iPad",
        supervised=True,
    )
    any_sim.call(lambda: state._add(huge, template["ownerId"]))
    async with ivanti(any_sim) as provider:
        stream = provider.inventory()
        first = await anext(stream)
        assert any_sim.stats.by_route["GET /api/v1/device"] == 1  # streamed: one page read so far
        rows = [first] + [row async for row in stream]
    assert len(rows) == FLEET + 1 and len({r["device_id"] for r in rows}) == FLEET + 1
    assert any_sim.stats.by_route["GET /api/v1/device"] == 3
    by_id = {r["device_id"]: r for r in rows}
    assert by_id[str(2**60 + 1)] == {
        "serial": "000123",
        "device_id": "1152921504606846977",
        "name": "Lab iPad",
        "email": template["emailAddress"],
        "user": template["uid"],
        "platform": template["platformType"],
        "registration_state": template["registrationState"],
        "model": template["prettyModel"],
    }
    assert {r["registration_state"] for r in rows} >= {"ACTIVE", "RETIRED"}


async def test_inventory_of_a_device_space_that_is_not_the_accounts_raises_one_clear_error(any_sim: SimServer) -> None:
    from bulkmdm.errors import BulkMDMError

    async with ivanti(any_sim, partition="999") as provider:
        with pytest.raises(BulkMDMError) as caught:
            [row async for row in provider.inventory()]
    assert "device space 999" in str(caught.value) and "403" in str(caught.value)


async def test_choices_offer_attribute_names_and_nothing_for_tags_groups_apps(any_sim: SimServer) -> None:
    async with ivanti(any_sim) as provider:
        assert await provider.choices("tag") == await provider.choices("group") == await provider.choices("app") == []
        assert await provider.choices("attribute") == ["cityid", "costcenter"]


async def test_search_after_values_the_server_ignores_fall_back_to_start() -> None:
    """A server that hands out continuation values but answers them with the
    first page again is paged by ``start``: every device, no endless loop."""
    app = make_app(devices=FLEET, seed=5)
    state: IvantiState = app["state"]
    rewrite_search(app, lambda result, request: result.update(searchAfterValues=["42"]))

    @web.middleware
    async def ignore_after(request: web.Request, handler: Any) -> web.StreamResponse:
        if "searchAfterValues" in request.query:
            query = {k: v for k, v in request.query.items() if k != "searchAfterValues"}
            request = request.clone(rel_url=request.rel_url.with_query(query))
        return await handler(request)

    app.middlewares.insert(0, ignore_after)
    with SimServer(app) as server:
        async with ivanti(server) as provider:
            out = await provider.plan([JobRow(0, "lock", {"device_id": str(max(state.devices))})])
            assert provider._fleet is not None and provider._fleet.count == FLEET
        assert isinstance(out[0], Step)
        # page 1, its continuation answered with page 1 again, then pages 2 and 3 by start
        assert server.stats.by_route["GET /api/v1/device"] == 4


# -- a read-only account (the refusal names each device) --------------------------


def test_a_read_only_account_stops_the_run_although_each_refusal_names_its_device(tmp_path: Path, run_cli: Any) -> None:
    """Ivanti's 403 in its own envelope: each row's detail names its device
    ("... on device GEN0007 ..."), yet it is one refusal, and the breaker
    stops the run within a couple of dozen requests, the rest `not-run`."""
    writes: list[str] = []

    @web.middleware
    async def read_only(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            writes.append(request.path)
            body = {"errors": [{"message": "Access denied: read-only role"}], "result": None}
            return web.json_response(body, status=403)
        return await handler(request)

    app = make_app(devices=FLEET, seed=7, real=True)
    app.middlewares.append(read_only)
    with SimServer(app) as sim:
        pick = Picker(state_of(sim))
        devices = [pick(registrationState="ACTIVE") for _ in range(60)]
        job = write_csv(
            tmp_path / "attrs.csv",
            [["serial", "attribute", "value"], *([d["serialNumber"], "floor", "3"] for d in devices)],
        )
        args = ["run", str(job), "--provider", "ivanti", "--url", sim.url, "--partition", "1"]
        result = run_cli([*args, "--action", "set-attribute", "--concurrency", "4"])
    assert result.exit_code == 1, result.output
    assert "refused 20 changes in a row the same way" in result.output, result.output
    assert "Access denied: read-only role" in result.output
    statuses = [r["status"] for r in result.report]
    assert len(writes) <= 24 and statuses.count("failed") == len(writes), (len(writes), statuses)
    assert statuses.count("not-run") == 60 - len(writes)
    # and the summary counts them as one reason, not one per device
    assert f"{len(writes)} x The MDM refused to set floor on device" in result.output, result.output
