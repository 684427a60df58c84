"""Banyan end to end through the CLI against both behaviours of its simulator
(the doc's and the real service's), with the exact server state
checked; plus export (inventory), template choices, undo rows and objects
without the fields we key on."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bulkmdm.cli import main
from bulkmdm.model import JobRow, Reason, Step
from bulkmdm.providers.banyan import Banyan
from bulkmdm.providers.base import Settings
from bulkmdm.retry import RetryPolicy
from bulkmdm.sim.banyan import DOC_DELETE_PATH, SHORT_DELETE_PATH, Org, make_app
from bulkmdm.sim.common import SimServer
from bulkmdm.client import Client

from conftest import BANYAN_TOKEN as TOKEN

FAST = RetryPolicy(attempts=6, base=0.01, cap=0.05)


def org(sim: SimServer) -> Org:
    return sim.app["state"]  # type: ignore[no-any-return]


def state(o: Org) -> dict[str, Any]:
    """Everything a job could change, compared whole after a run."""
    return {
        "devices": {
            d["DeviceID"]: {
                k: (list(v) if isinstance(v, list) else v)
                for k, v in d.items()
                if k in ("SerialNumber", "Banned", "Emails", "Model", "Ownership", "Platform", "OS", "Architecture")
            }
            for d in o.devices.values()
        },
        "users": {uid: {"Email": u["Email"], "SerialNumbers": list(u["SerialNumbers"])} for uid, u in o.users.items()},
        "inactive": sorted(o.inactive),
        "inactive_devices": sorted(o.inactive_devices),
    }


def write_job(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


def cli(run_cli: Any, job: Path, sim: SimServer, *more: str) -> Any:
    return run_cli(
        ["run", str(job), "--provider", "banyan", "--url", sim.url, "--yes", *more], env={"BULKMDM_TOKEN": TOKEN}
    )


async def plan(sim: SimServer, rows: Sequence[tuple[str, Mapping[str, str]]]) -> list[Any]:
    auth = Banyan.auth_from_env({"BULKMDM_TOKEN": TOKEN})
    async with Client(sim.url, auth=auth, retry=FAST, timeout=5) as client:
        provider = Banyan(client, Settings(url=sim.url))
        return await provider.plan([JobRow(i, a, dict(f)) for i, (a, f) in enumerate(rows)])


def test_every_action_end_to_end(any_banyan: SimServer, tmp_path: Path, run_cli: Any) -> None:
    sim, o = any_banyan, org(any_banyan)
    to_ban = o.unique_devices(banned=False)[0]
    to_unban, banned = o.unique_devices(banned=True)[:2]
    # one user on it, who has another device: the device goes, the user stays
    alone = next(d for d in o.unique_devices(users=1) if len(o.user(d["Emails"][0])["SerialNumbers"]) == 2)  # type: ignore[index]
    shared = o.unique_devices(users=2)[0]
    leaving = shared["Emails"][1]  # also on their own device: only this registration goes
    lonely = [u for u in o.users.values() if not u["SerialNumbers"]][:2]
    before = state(o)
    job = write_job(
        tmp_path / "all.csv",
        ["action", "serial", "device_id", "email", "user_id"],
        [
            ["ban", to_ban["SerialNumber"], "", "", ""],
            ["unban", "", to_unban["DeviceID"], "", ""],
            ["ban", banned["SerialNumber"], "", "", ""],
            ["delete-device", alone["SerialNumber"], "", "", ""],
            ["delete-device", shared["SerialNumber"], "", leaving.upper(), ""],
            ["delete-user", "", "", lonely[0]["Email"], ""],
            ["delete-user", "", "", "", lonely[1]["ID"]],
        ],
    )
    result = cli(run_cli, job, sim)
    assert [r["status"] for r in result.report] == [
        "succeeded",
        "succeeded",
        "skipped",
        "succeeded",
        "succeeded",
        "succeeded",
        "succeeded",
    ], result.output
    assert result.exit_code == 0

    expected = before
    expected["devices"][to_ban["DeviceID"]]["Banned"] = "TRUE"
    expected["devices"][to_unban["DeviceID"]]["Banned"] = "FALSE"
    del expected["devices"][alone["DeviceID"]]
    alone_owner = next(uid for uid, u in before["users"].items() if alone["SerialNumber"] in u["SerialNumbers"])
    expected["users"][alone_owner]["SerialNumbers"].remove(alone["SerialNumber"])
    expected["devices"][shared["DeviceID"]]["Emails"] = [shared["Emails"][0]]
    leaver = o.by_email[leaving.casefold()]
    expected["users"][leaver]["SerialNumbers"].remove(shared["SerialNumber"])
    for user in lonely:
        del expected["users"][user["ID"]]
    expected["inactive"] = sorted(u["ID"] for u in lonely)
    assert state(o) == expected

    routes = sim.stats.by_route
    if o.real:  # the public client's forms are answered at once
        assert routes["POST /v1/mdm/update_device"] == 2 and routes[f"DELETE {DOC_DELETE_PATH}"] == 0
        assert routes["GET /v2/enduser"] == 1 and routes[f"DELETE {SHORT_DELETE_PATH}"] == 2
    else:  # each refused once, then the doc's form kept for the run
        assert routes["POST /v1/mdm/update_device"] == 3 and routes[f"DELETE {SHORT_DELETE_PATH}"] == 1
        assert routes["GET /v2/enduser"] == 1 and routes[f"DELETE {DOC_DELETE_PATH}"] == 2
    assert routes["DELETE /v2/endusers"] == 2


def test_ban_body_keeps_the_device_fields(any_banyan: SimServer, tmp_path: Path, run_cli: Any) -> None:
    # The device's own fields travel with "Banned" (as pybanyan sends them);
    # the server must end up with them as they were.
    o = org(any_banyan)
    device = o.unique_devices(banned=False)[3]
    kept = {k: device[k] for k in ("Model", "Ownership", "Platform", "OS", "Architecture")}
    job = write_job(tmp_path / "ban.csv", ["action", "serial"], [["ban", device["SerialNumber"]]])
    assert cli(run_cli, job, any_banyan).exit_code == 0
    assert device["Banned"] == "TRUE" and {k: device[k] for k in kept} == kept
    assert o.log[f"device:{device['DeviceID']}"] == ["ban"]


@pytest.mark.parametrize(("real", "seed"), [(False, 3), (True, 3), (True, 5)])
def test_delete_path_learnt_while_rows_retry_side_by_side(tmp_path: Path, run_cli: Any, real: bool, seed: int) -> None:
    # A row whose first-path request is retried (503) can come back with its
    # 404 after another row has switched paths: it tries the other path
    # rather than failing with 404 (seeds 3 and 5 against a server with
    # /v1/delete_device only, when the doc's path goes first).
    with SimServer(make_app(devices=220, seed=3, token=TOKEN, real=real)) as sim:
        o = org(sim)
        sim.faults.update({"error_rate": 0.4, "mutating_only": True, "seed": seed})
        devices = o.unique_devices(users=1)[:8]
        bans = o.unique_devices(banned=False, users=2)[:4]
        job = write_job(
            tmp_path / "del.csv",
            ["action", "serial"],
            [["delete-device", d["SerialNumber"]] for d in devices] + [["ban", d["SerialNumber"]] for d in bans],
        )
        result = cli(run_cli, job, sim)
        assert [r["status"] for r in result.report] == ["succeeded"] * 12, [r["detail"] for r in result.report]
        assert all(o.with_serial(d["SerialNumber"]) == [] for d in devices)
        assert all(d["Banned"] == "TRUE" and o.log[f"device:{d['DeviceID']}"] == ["ban"] for d in bans)
        if not real:  # refused only until the doc's path was proven (503s aside)
            assert sim.stats.by_route[f"DELETE {SHORT_DELETE_PATH}"] <= 6


def test_end_user_ids_are_read_from_v2_pages(tmp_path: Path, run_cli: Any) -> None:
    with SimServer(make_app(devices=220, seed=3, token=TOKEN, real=True)) as sim:
        o = org(sim)
        o.max_limit = 40  # pages of 40 whatever "limit" asks
        last = max(o.users.values(), key=lambda u: u["ID"])
        gone = min(o.users.values(), key=lambda u: u["ID"])
        o.deactivate([gone["ID"]])  # listed by v2 as "Inactive"
        job = write_job(
            tmp_path / "users.csv",
            ["action", "email"],
            [["delete-user", last["Email"]], ["delete-user", gone["Email"]]],
        )
        result = cli(run_cli, job, sim)
        assert [r["status"] for r in result.report] == ["succeeded", "skipped"], result.output
        assert result.reasons == [Reason.DONE, Reason.ALREADY]
        assert last["ID"] in o.inactive and o.log[f"user:{gone['ID']}"] == ["delete"]
        listed = len(o.users) + len(o.inactive)  # before the run, with the inactive one
        assert sim.stats.by_route["GET /v2/enduser"] == -(-listed // 40) and sim.stats.by_route["GET /v1/endusers"] == 0
        assert sim.stats.by_route["DELETE /v2/endusers"] == 1


def test_objects_without_the_key_field_are_no_match(any_banyan: SimServer, tmp_path: Path, run_cli: Any) -> None:
    # Devices whose DeviceID and end users whose id is null
    # are not collapsed into one object; each row says which field is missing.
    o = org(any_banyan)
    first, second = o.unique_devices(banned=False)[:2]
    users = [u for u in o.users.values() if not u["SerialNumbers"]][:2]
    for obj in (first, second):
        o.blank_fields[obj["DeviceID"]] = "DeviceID"
    for user in users:
        o.blank_fields[user["ID"]] = "id" if o.real else "ID"  # v2's name, or the v1 "ID" (CONTRACT.md)
    job = write_job(
        tmp_path / "keys.csv",
        ["action", "serial", "device_id", "email"],
        [
            ["ban", first["SerialNumber"], "", ""],
            ["ban", second["SerialNumber"], "", ""],
            ["unban", "", first["DeviceID"], ""],
            ["delete-user", "", "", users[0]["Email"]],
            ["delete-user", "", "", users[1]["Email"]],
        ],
    )
    result = cli(run_cli, job, any_banyan)
    assert [r["status"] for r in result.report] == ["succeeded", "succeeded", "failed", "failed", "failed"]
    assert "2 devices in Banyan's list have no 'DeviceID'" in result.report[2]["detail"]
    assert result.reasons[2:] == [Reason.NOT_FOUND, Reason.BAD_ANSWER, Reason.BAD_ANSWER]
    assert first["Banned"] == second["Banned"] == "TRUE"
    assert all(u["ID"] in o.users for u in users)


async def test_inventory_streams_every_device_page_by_page(any_banyan: SimServer) -> None:
    o = org(any_banyan)
    o.max_limit = 50
    auth = Banyan.auth_from_env({"BULKMDM_TOKEN": TOKEN})
    async with Client(any_banyan.url, auth=auth, retry=FAST, timeout=5) as client:
        provider = Banyan(client, Settings(url=any_banyan.url))
        rows = [row async for row in provider.inventory()]
        assert [await provider.choices(c) for c in ("tag", "group", "app")] == [[], [], []]
    expected = {
        d["DeviceID"]: {
            "serial": d["SerialNumber"],
            "device_id": d["DeviceID"],
            "name": d["DeviceFriendlyName"],
            "email": ", ".join(d["Emails"]),
            "model": d["Model"],
            "banned": d["Banned"],
        }
        for d in o.devices.values()
    }
    assert len(rows) == len(o.devices) and {r["device_id"]: r for r in rows} == expected
    assert all(isinstance(v, str) for r in rows for v in r.values())
    assert any_banyan.stats.by_route["GET /v1/devices"] == -(-len(o.devices) // 50)  # a short page is the last


def test_undo_rows_put_the_ban_state_back(any_banyan: SimServer, tmp_path: Path, run_cli: Any) -> None:
    import asyncio

    o = org(any_banyan)
    to_ban = o.unique_devices(banned=False)[:2]
    to_unban = o.unique_devices(banned=True)[0]
    doomed = o.unique_devices(users=1)[7]
    rows = [("ban", {"serial": d["SerialNumber"]}) for d in to_ban]
    rows += [("unban", {"device_id": to_unban["DeviceID"]}), ("delete-device", {"serial": doomed["SerialNumber"]})]
    steps = asyncio.run(plan(any_banyan, rows))
    assert all(isinstance(s, Step) for s in steps)
    assert [s.undo for s in steps] == [{"action": "unban", "serial": d["SerialNumber"]} for d in to_ban] + [
        {"action": "ban", "serial": to_unban["SerialNumber"]},
        None,
    ]
    before = state(o)
    job = write_job(
        tmp_path / "job.csv",
        ["action", "serial", "device_id"],
        [[a, f.get("serial", ""), f.get("device_id", "")] for a, f in rows],
    )
    assert cli(run_cli, job, any_banyan).exit_code == 0
    undo = write_job(
        tmp_path / "undo.csv", ["action", "serial"], [[s.undo["action"], s.undo["serial"]] for s in steps if s.undo]
    )
    assert cli(run_cli, undo, any_banyan).exit_code == 0
    del before["devices"][doomed["DeviceID"]]  # a deletion cannot be undone
    doomed_owner = next(uid for uid, u in before["users"].items() if doomed["SerialNumber"] in u["SerialNumbers"])
    if before["users"][doomed_owner]["SerialNumbers"] == [doomed["SerialNumber"]]:
        del before["users"][doomed_owner]
    else:
        before["users"][doomed_owner]["SerialNumbers"].remove(doomed["SerialNumber"])
    assert state(o) == before


def test_sim_command_offers_the_real_behaviour(run_cli: Any) -> None:
    result = run_cli(["sim", "--help"])
    assert result.exit_code == 0 and "--real" in result.output and "/v1/delete_device" in result.output
    # a simulator without that switch says so in one sentence, before serving anything
    result = CliRunner().invoke(main, ["sim", "duostation", "--real", "--port", "0"])
    assert result.exit_code == 2 and "has no --real behaviour" in result.output and "Traceback" not in result.output
