"""The Banyan provider against its simulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bulkmdm.errors import AuthError, ConfigError
from bulkmdm.model import JobRow, Outcome, Reason, Status, Step
from bulkmdm.providers.banyan import Banyan, _page
from bulkmdm.providers.base import failure_in_2xx
from bulkmdm.providers.base import Settings
from bulkmdm.retry import RetryPolicy
from bulkmdm.sim.banyan import DOC_DELETE_PATH, DUPLICATE_SERIAL, Org, make_app
from bulkmdm.sim.common import SimServer
from bulkmdm.client import Client

from conftest import BANYAN_TOKEN as TOKEN

FAST = RetryPolicy(attempts=6, base=0.01, cap=0.05)


@pytest.fixture
def sim() -> Iterator[SimServer]:
    """The simulator answering as the vendor doc writes."""
    with SimServer(make_app(devices=220, seed=3, token=TOKEN)) as server:
        yield server


@pytest.fixture
def real_sim() -> Iterator[SimServer]:
    """The simulator answering as Banyan's service does (``bulkmdm sim banyan --real``)."""
    with SimServer(make_app(devices=220, seed=3, token=TOKEN, real=True)) as server:
        yield server


def org(sim: SimServer) -> Org:
    return sim.app["state"]  # type: ignore[no-any-return]


def rows_of(*specs: tuple[str, Mapping[str, str]]) -> list[JobRow]:
    return [JobRow(i, action, {k: v for k, v in fields.items() if v}) for i, (action, fields) in enumerate(specs)]


async def run(
    sim: SimServer, *specs: tuple[str, Mapping[str, str]], token: str = TOKEN, dry_run: bool = False
) -> list[Outcome]:
    """Plan every row, then execute the steps one by one in row order."""
    auth = Banyan.auth_from_env({"BULKMDM_TOKEN": token})
    async with Client(Banyan.api_base(sim.url + "/"), auth=auth, retry=FAST, timeout=5) as client:
        provider = Banyan(client, Settings(url=sim.url, dry_run=dry_run))
        out = []
        for item in await provider.plan(rows_of(*specs)):
            if isinstance(item, Step):
                out.extend(await (provider.check if dry_run else provider.execute)([item]))
            else:
                out.append(item)
    return out


def log(sim: SimServer, obj: Mapping[str, Any]) -> list[str]:
    key = f"device:{obj['DeviceID']}" if "DeviceID" in obj else f"user:{obj['ID']}"
    return list(org(sim).log.get(key, []))


def mutating(sim: SimServer) -> int:
    return sim.stats.mutating


# -- ban / unban ----------------------------------------------------------------


async def test_ban_and_unban_change_only_what_needs_changing(any_banyan: SimServer) -> None:
    sim = any_banyan
    to_ban, already_banned = org(sim).unique_devices(banned=False)[0], org(sim).unique_devices(banned=True)[0]
    to_unban, not_banned = org(sim).unique_devices(banned=True)[1], org(sim).unique_devices(banned=False)[1]
    out = await run(
        sim,
        ("ban", {"serial": to_ban["SerialNumber"]}),
        ("ban", {"serial": already_banned["SerialNumber"]}),
        ("unban", {"device_id": to_unban["DeviceID"].upper()}),
        ("unban", {"serial": not_banned["SerialNumber"]}),
        ("ban", {"serial": to_ban["SerialNumber"]}),
    )
    assert [o.status for o in out] == [
        Status.SUCCEEDED,
        Status.SKIPPED,
        Status.SUCCEEDED,
        Status.SKIPPED,
        Status.SKIPPED,
    ]
    assert all(o.reason is Reason.ALREADY for o in out if o.status is Status.SKIPPED)
    assert "already banned" in out[1].detail and "line 2" in out[4].detail
    assert to_ban["Banned"] == "TRUE" and to_unban["Banned"] == "FALSE"
    assert log(sim, to_ban) == ["ban"] and log(sim, to_unban) == ["unban"]
    assert log(sim, already_banned) == [] and log(sim, not_banned) == []
    assert out[0].resolved == f"device_id={to_ban['DeviceID']}"
    # against the doc's server the public client's object body is refused once (400), then its array is kept
    assert sim.stats.by_route["POST /v1/mdm/update_device"] == 2 + (not org(sim).real)


async def test_ban_look_ups_that_fail_the_row(sim: SimServer) -> None:
    duplicate = org(sim).with_serial(DUPLICATE_SERIAL)
    some = org(sim).unique_devices(banned=False)[0]
    out = await run(
        sim,
        ("ban", {"serial": "NOSUCHSERIAL"}),
        ("ban", {"serial": "   "}),
        ("ban", {"serial": DUPLICATE_SERIAL}),
        ("ban", {"device_id": duplicate[0]["DeviceID"]}),
        ("ban", {"serial": some["SerialNumber"].lower()}),
        ("ban", {"device_id": some["DeviceID"], "serial": "OTHERSERIAL"}),
    )
    assert all(o.status is Status.FAILED for o in out)
    assert [o.reason for o in out] == [
        Reason.NOT_FOUND,
        Reason.INVALID_ROW,  # blank
        Reason.AMBIGUOUS,
        Reason.AMBIGUOUS,  # held by 2 devices
        Reason.NOT_FOUND,  # serials match exactly
        Reason.INVALID_ROW,  # the device id's serial is another
    ]
    assert "not 'OTHERSERIAL'" in out[5].detail
    assert mutating(sim) == 0 and all(d["Banned"] == "FALSE" for d in duplicate)


async def test_ban_and_unban_of_one_device_in_one_job_conflict(sim: SimServer) -> None:
    device = org(sim).unique_devices(banned=False)[0]
    out = await run(sim, ("ban", {"serial": device["SerialNumber"]}), ("unban", {"serial": device["SerialNumber"]}))
    assert [o.status for o in out] == [Status.SUCCEEDED, Status.FAILED]
    assert "line 2" in out[1].detail


async def test_503_is_retried_and_each_ban_applied_once(sim: SimServer) -> None:
    # seeded, and at a rate where six attempts always get through for six rows
    sim.faults.update({"error_rate": 0.3, "mutating_only": True, "seed": 1})
    devices = org(sim).unique_devices(banned=False)[:6]
    out = await run(sim, *[("ban", {"serial": d["SerialNumber"]}) for d in devices])
    assert all(o.status is Status.SUCCEEDED for o in out), [o.detail for o in out]
    assert sim.stats.faults > 0 and max(o.attempts for o in out) > 1
    assert all(log(sim, d) == ["ban"] for d in devices)


async def test_answer_lost_after_the_work_is_read_back_not_resent(real_sim: SimServer) -> None:
    # Against the real service, whose forms (object body, /v1/delete_device)
    # go first: a lost answer is then the answer to the form that works.
    sim = real_sim
    sim.faults.update({"drop_after_rate": 1.0, "mutating_only": True})
    device = org(sim).unique_devices(banned=False)[0]
    gone_device = org(sim).unique_devices(banned=False, users=1)[3]
    users = [u for u in org(sim).users.values() if len(u["SerialNumbers"]) == 2]
    out = await run(
        sim,
        ("ban", {"serial": device["SerialNumber"]}),
        ("delete-device", {"serial": gone_device["SerialNumber"]}),
        ("delete-user", {"email": users[0]["Email"]}),
    )
    assert [o.status for o in out] == [Status.SUCCEEDED] * 3, [o.detail for o in out]
    assert [o.reason for o in out] == [Reason.READ_BACK] * 3
    assert all("confirmed by reading it back" in o.detail for o in out)
    assert log(sim, device) == ["ban"] and log(sim, gone_device) == ["delete"] and log(sim, users[0]) == ["delete"]
    # The POST went once. (aiohttp itself resends a DELETE once on a dropped
    # connection, below our transport; that resend finds nothing to delete.)
    assert sim.stats.by_route["POST /v1/mdm/update_device"] == 1


async def _ban_directly(sim: SimServer, device: dict[str, Any]) -> Outcome:
    """A ban of ``device`` sent through the provider alone (no plan, no run), its outcome."""
    auth = Banyan.auth_from_env({"BULKMDM_TOKEN": TOKEN})
    async with Client(sim.url, auth=auth, retry=FAST, timeout=5) as client:
        provider = Banyan(client, Settings(url=sim.url))
        step = Step(
            rows_of(("ban", {"serial": device["SerialNumber"]}))[0],
            "ban",
            f"device {device['SerialNumber']}",
            {"serial": device["SerialNumber"], "banned": True, "fields": {}},
        )
        (out,) = await provider.execute([step])
    return out


async def test_answer_lost_and_state_unreadable_is_unknown(real_sim: SimServer) -> None:
    sim = real_sim
    sim.faults.update({"drop_after_rate": 1.0})  # GETs are dropped too: nothing can be read back
    device = org(sim).unique_devices(banned=False)[0]
    out = await _ban_directly(sim, device)
    assert (out.status, out.reason) == (Status.UNKNOWN, Reason.NO_ANSWER) and "not resent" in out.detail
    assert log(sim, device) == ["ban"]


async def test_gateway_answer_after_the_work_is_read_back_not_resent(real_sim: SimServer) -> None:
    sim = real_sim
    sim.faults.update({"gateway_after_rate": 1.0, "mutating_only": True})
    device = org(sim).unique_devices(banned=False)[0]
    users = [u for u in org(sim).users.values() if len(u["SerialNumbers"]) == 2]
    out = await run(sim, ("ban", {"serial": device["SerialNumber"]}), ("delete-user", {"email": users[0]["Email"]}))
    assert [o.status for o in out] == [Status.SUCCEEDED] * 2, [o.detail for o in out]
    assert [o.reason for o in out] == [Reason.READ_BACK] * 2
    assert log(sim, device) == ["ban"] and log(sim, users[0]) == ["delete"]
    assert sim.stats.by_route["POST /v1/mdm/update_device"] == 1


async def test_gateway_answer_with_state_unreadable_is_unknown(real_sim: SimServer) -> None:
    sim = real_sim
    sim.faults.update({"gateway_after_rate": 1.0})  # the read-back's GETs too: nothing can be read back
    device = org(sim).unique_devices(banned=False)[0]
    out = await _ban_directly(sim, device)
    assert (
        (out.status, out.reason) == (Status.UNKNOWN, Reason.NO_ANSWER)
        and "not resent" in out.detail
        and "HTTP 504" in out.detail
    )
    assert log(sim, device) == ["ban"]
    assert sim.stats.by_route["POST /v1/mdm/update_device"] == 1


# -- delete-device ----------------------------------------------------------------


async def test_delete_device_with_and_without_email(sim: SimServer) -> None:
    o = org(sim)
    alone = o.unique_devices(users=1)[0]
    shared = o.unique_devices(users=2)[0]
    first, second = shared["Emails"]
    duplicate = o.with_serial(DUPLICATE_SERIAL)
    dup_email = duplicate[1]["Emails"][0]
    out = await run(
        sim,
        ("delete-device", {"serial": alone["SerialNumber"]}),
        ("delete-device", {"serial": shared["SerialNumber"], "email": first.upper()}),
        ("delete-device", {"serial": DUPLICATE_SERIAL, "email": dup_email}),
        ("delete-device", {"serial": shared["SerialNumber"], "email": "nobody@skola.se"}),
        ("delete-device", {"serial": "NOSUCHSERIAL"}),
        ("delete-device", {"serial": DUPLICATE_SERIAL}),
        ("delete-device", {"serial": alone["SerialNumber"]}),
    )
    assert [x.status for x in out] == [
        Status.SUCCEEDED,
        Status.SUCCEEDED,
        Status.SUCCEEDED,
        Status.FAILED,
        Status.FAILED,
        Status.FAILED,
        Status.SKIPPED,
    ]
    assert o.with_serial(alone["SerialNumber"]) == []
    assert o.with_serial(shared["SerialNumber"]) == [shared] and shared["Emails"] == [second]
    assert o.with_serial(DUPLICATE_SERIAL) == [duplicate[0]] and log(sim, duplicate[1]) == [
        f"unlink {dup_email}",
        "delete",
    ]
    assert "not registered to nobody@skola.se" in out[3].detail
    assert (out[4].reason, out[5].reason) == (Reason.NOT_FOUND, Reason.AMBIGUOUS)
    assert sim.stats.by_route["DELETE /v1/v1/delete_device"] == 3


async def test_delete_device_sends_the_email_as_banyan_holds_it(sim: SimServer) -> None:
    # The row's e-mail is matched ignoring case; a server that compares the
    # Email parameter exactly must still get the registration it holds.
    o = org(sim)
    o.exact_emails = True
    shared = o.unique_devices(users=2)[0]
    first, second = shared["Emails"]
    duplicate = o.with_serial(DUPLICATE_SERIAL)
    dup_email = duplicate[1]["Emails"][0]
    out = await run(
        sim,
        ("delete-device", {"serial": shared["SerialNumber"], "email": first.upper()}),
        ("delete-device", {"serial": DUPLICATE_SERIAL, "email": dup_email.swapcase()}),
    )
    assert [x.status for x in out] == [Status.SUCCEEDED] * 2, [x.detail for x in out]
    assert shared["Emails"] == [second] and o.with_serial(DUPLICATE_SERIAL) == [duplicate[0]]
    assert first in out[0].detail
    assert sim.stats.by_route["DELETE /v1/v1/delete_device"] == 2


async def test_a_shared_serial_without_email_says_how_to_choose(sim: SimServer) -> None:
    duplicate = org(sim).with_serial(DUPLICATE_SERIAL)
    out = await run(sim, ("delete-device", {"serial": DUPLICATE_SERIAL}), ("ban", {"serial": DUPLICATE_SERIAL}))
    assert [x.status for x in out] == [Status.FAILED] * 2
    assert "add an email column" in out[0].detail and duplicate[1]["Emails"][0] in out[0].detail
    assert "resolve the duplicate" in out[1].detail
    assert mutating(sim) == 0


async def test_an_unreadable_device_list_fails_only_the_device_rows(sim: SimServer) -> None:
    # delete-user rows need only the end-user list; it is still read.
    o = org(sim)
    o.devices_status = 500
    device = o.unique_devices(banned=False)[0]
    user = list(o.users.values())[10]
    out = await run(sim, ("ban", {"serial": device["SerialNumber"]}), ("delete-user", {"email": user["Email"]}))
    assert [x.status for x in out] == [Status.FAILED, Status.SUCCEEDED], [x.detail for x in out]
    assert "v1/devices" in out[0].detail and out[0].http_status == 500
    assert user["ID"] in o.inactive and device["Banned"] == "FALSE"
    assert sim.stats.by_route["DELETE /v2/endusers"] == 1 and mutating(sim) == 1


@pytest.mark.parametrize("no_route", [404, 405])
async def test_delete_device_falls_back_to_the_doc_path(sim: SimServer, no_route: int) -> None:
    # The doc's server has only /v1/v1/delete_device: the real path is tried
    # once, the doc's kept for the rest of the run.
    org(sim).no_route_status = no_route
    a, b = org(sim).unique_devices(users=1)[:2]
    out = await run(
        sim, ("delete-device", {"serial": a["SerialNumber"]}), ("delete-device", {"serial": b["SerialNumber"]})
    )
    assert [x.status for x in out] == [Status.SUCCEEDED] * 2
    assert sim.stats.by_route["DELETE /v1/delete_device"] == 1  # learnt once per run
    assert sim.stats.by_route["DELETE /v1/v1/delete_device"] == 2
    assert org(sim).with_serial(a["SerialNumber"]) == [] and org(sim).with_serial(b["SerialNumber"]) == []


async def test_delete_device_uses_the_real_path_first(real_sim: SimServer) -> None:
    a, b = org(real_sim).unique_devices(users=1)[:2]
    out = await run(
        real_sim, ("delete-device", {"serial": a["SerialNumber"]}), ("delete-device", {"serial": b["SerialNumber"]})
    )
    assert [x.status for x in out] == [Status.SUCCEEDED] * 2
    assert real_sim.stats.by_route["DELETE /v1/delete_device"] == 2
    assert real_sim.stats.by_route["DELETE /v1/v1/delete_device"] == 0


async def test_a_404_on_both_delete_paths_does_not_switch_paths(sim: SimServer) -> None:
    # A 404 from both paths proves neither wrong (it may be about the device),
    # so every row tries the real path first again.
    org(sim).delete_paths = set()
    a, b = org(sim).unique_devices(users=1)[:2]
    out = await run(
        sim, ("delete-device", {"serial": a["SerialNumber"]}), ("delete-device", {"serial": b["SerialNumber"]})
    )
    assert [x.status for x in out] == [Status.FAILED] * 2 and all(x.http_status == 404 for x in out)
    assert sim.stats.by_route["DELETE /v1/v1/delete_device"] == 2
    assert sim.stats.by_route["DELETE /v1/delete_device"] == 2
    assert org(sim).with_serial(a["SerialNumber"]) == [a]


async def test_delete_device_by_email_when_pages_leave_out_emails(sim: SimServer) -> None:
    # The doc's paginated device example has no "Emails"; the e-mails are then
    # read from the doc's non-paginated "?serialnumber=" answer.
    o = org(sim)
    o.emails_in_pages = False
    shared = o.unique_devices(users=2)[0]
    first, second = shared["Emails"]
    alone = o.unique_devices(users=1)[0]
    duplicate = o.with_serial(DUPLICATE_SERIAL)
    dup_email = duplicate[1]["Emails"][0]
    out = await run(
        sim,
        ("delete-device", {"serial": shared["SerialNumber"], "email": first}),
        ("delete-device", {"serial": DUPLICATE_SERIAL, "email": dup_email}),
        ("delete-device", {"serial": alone["SerialNumber"], "email": "nobody@skola.se"}),
        ("delete-device", {"device_id": alone["DeviceID"], "email": alone["Emails"][0]}),
    )
    assert [x.status for x in out] == [Status.SUCCEEDED, Status.SUCCEEDED, Status.FAILED, Status.SUCCEEDED]
    assert shared["Emails"] == [second] and o.with_serial(DUPLICATE_SERIAL) == [duplicate[0]]
    assert "not registered to nobody@skola.se" in out[2].detail
    assert o.with_serial(alone["SerialNumber"]) == []
    assert sim.stats.by_route["DELETE /v1/v1/delete_device"] == 3
    assert sim.stats.by_route["GET /v1/devices"] <= 1 + 3 + 3  # one page, one look-up per serial, read-backs


# -- delete-user -------------------------------------------------------------------


async def test_delete_user_by_id_and_by_email(sim: SimServer) -> None:
    users = list(org(sim).users.values())
    by_id, by_email, other = users[10], users[11], users[12]
    out = await run(
        sim,
        ("delete-user", {"user_id": by_id["ID"].upper()}),
        ("delete-user", {"email": by_email["Email"].upper()}),
        ("delete-user", {"email": "nobody@skola.se"}),
        ("delete-user", {"user_id": "00000000-0000-4000-8000-000000000000"}),
        ("delete-user", {"user_id": other["ID"], "email": by_email["Email"]}),
        ("delete-user", {"email": by_id["Email"]}),
        ("delete-user", {"email": " "}),
    )
    assert [x.status for x in out] == [
        Status.SUCCEEDED,
        Status.SUCCEEDED,
        Status.FAILED,
        Status.FAILED,
        Status.FAILED,
        Status.SKIPPED,
        Status.FAILED,
    ]
    assert out[0].resolved == f"user_id={by_id['ID']}" and out[1].resolved == f"user_id={by_email['ID']}"
    assert by_id["ID"] in org(sim).inactive and by_email["ID"] in org(sim).inactive
    assert other["ID"] in org(sim).users and log(sim, other) == []
    assert (out[2].reason, out[4].reason, out[6].reason) == (Reason.NOT_FOUND, Reason.INVALID_ROW, Reason.INVALID_ROW)
    assert "belongs to" in out[4].detail
    assert sim.stats.by_route["DELETE /v2/endusers"] == 2


async def test_user_already_deleted_with_their_only_device_is_skipped(sim: SimServer) -> None:
    o = org(sim)
    # Banyan deletes an end user with their only device ("If any user(s) is/are
    # associated with only the mentioned device then that/those user(s) will
    # also get deleted"), so the later delete-user finds nothing to delete.
    device = next(
        d
        for d in o.unique_devices(users=1)
        if (owner := o.user(d["Emails"][0])) is not None and owner["SerialNumbers"] == [d["SerialNumber"]]
    )
    user = o.user(device["Emails"][0])
    assert user is not None
    out = await run(
        sim, ("delete-device", {"serial": device["SerialNumber"]}), ("delete-user", {"email": user["Email"]})
    )
    assert [x.status for x in out] == [Status.SUCCEEDED, Status.SKIPPED]
    assert out[1].reason is Reason.ALREADY and out[1].http_status == 400
    assert "already gone" in out[1].detail


# -- reading, auth, dry run ----------------------------------------------------------


async def test_listing_is_paged_even_when_the_server_caps_pages(sim: SimServer) -> None:
    org(sim).max_limit = 40
    last = sorted(org(sim).unique_devices(banned=False), key=lambda d: d["SerialNumber"])[-1]
    out = await run(sim, ("ban", {"serial": last["SerialNumber"]}))
    assert out[0].status is Status.SUCCEEDED
    assert sim.stats.by_route["GET /v1/devices"] >= 6


async def test_listing_falls_back_to_the_plain_request_when_paging_is_refused(sim: SimServer) -> None:
    org(sim).reject_limit_above = 100
    device = org(sim).unique_devices(banned=False)[-1]
    out = await run(sim, ("ban", {"serial": device["SerialNumber"]}))
    assert out[0].status is Status.SUCCEEDED and device["Banned"] == "TRUE"
    assert sim.stats.by_route["GET /v1/devices"] == 2  # the refused page, then everything at once


def test_listing_answers_are_read_in_every_documented_shape() -> None:
    assert _page([{"SerialNumber": "A"}], "devices") == ([{"SerialNumber": "A"}], None)
    assert _page({"devices": [], "count": 27}, "devices") == ([], 27)
    assert _page({"devices": [{"a": 1}], "count": "3"}, "devices") == ([{"a": 1}], 3)
    assert _page({"error_code": 0, "data": {"endusers": [{"ID": "x"}], "count": 1}}, "endusers") == ([{"ID": "x"}], 1)
    assert _page({"Message": "nope"}, "devices") == (None, None)
    assert _page("Internal Server Error", "devices") == (None, None)


async def test_simulator_is_strict_where_the_doc_is(sim: SimServer) -> None:
    device = org(sim).unique_devices(banned=False, users=1)[0]
    serial = device["SerialNumber"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:

        async def status(method: str, path: str, **kwargs: Any) -> int:
            async with http.request(method, sim.url + path, **kwargs) as resp:
                return resp.status

        update = "/v1/mdm/update_device"
        # "ContentType: application/json" and an array of device objects
        assert (
            await status("POST", update, params={"SerialNumber": serial}, data={"Banned": "TRUE"}, headers=auth) == 400
        )
        assert (
            await status("POST", update, params={"SerialNumber": serial}, json={"Banned": "TRUE"}, headers=auth) == 400
        )
        assert (
            await status("POST", update, params={"serialnumber": serial}, json=[{"Banned": "TRUE"}], headers=auth)
            == 400
        )
        assert await status("POST", update, params={"SerialNumber": serial}, json=[{"Banned": "TRUE"}]) == 401
        # "SerialNumber ... (compulsary parameter)", in that case
        assert await status("DELETE", DOC_DELETE_PATH, params={"serialnumber": serial}, headers=auth) == 400
        assert await status("DELETE", "/v2/endusers", headers=auth) == 400
        assert await status("DELETE", "/v2/endusers", json={"ids": [device["DeviceID"]]}, headers=auth) == 400
        assert await status("GET", "/v1/devices", params={"limit": "ten"}, headers=auth) == 400
        assert device["Banned"] == "FALSE" and org(sim).with_serial(serial) == [device]
        assert (
            await status("POST", update, params={"SerialNumber": serial}, json=[{"Banned": "TRUE"}], headers=auth)
            == 200
        )
    assert device["Banned"] == "TRUE"


async def test_dry_run_sends_nothing_that_changes(sim: SimServer) -> None:
    device = org(sim).unique_devices(banned=False)[0]
    user = list(org(sim).users.values())[0]
    out = await run(
        sim, ("ban", {"serial": device["SerialNumber"]}), ("delete-user", {"email": user["Email"]}), dry_run=True
    )
    assert [x.status for x in out] == [Status.PLANNED, Status.PLANNED]
    assert mutating(sim) == 0 and sim.stats.by_route["GET /v1/endusers"] == 1


async def test_token_is_sent_as_bearer_and_never_shown(sim: SimServer) -> None:
    with pytest.raises(AuthError) as info:
        await run(sim, ("ban", {"serial": "X"}), token="wrong-" + TOKEN)
    assert TOKEN not in str(info.value)
    auth = Banyan.auth_from_env({"BULKMDM_TOKEN": TOKEN})
    assert auth.headers() == {"Authorization": f"Bearer {TOKEN}"} and TOKEN not in repr(auth)
    sim.faults.update({"error_rate": 1.0, "error_status": 500})
    out = await run(sim, ("ban", {"serial": "X"}))
    assert out[0].status is Status.FAILED and "Could not read the MDM's v1/devices list" in out[0].detail
    assert TOKEN not in out[0].detail
    with pytest.raises(ConfigError, match="BULKMDM_TOKEN"):
        Banyan.auth_from_env({})


def test_a_2xx_body_that_reports_an_error_fails() -> None:
    """Banyan's answers as the shared detector reads them (DuoSTATION's ``success: false`` too)."""
    assert failure_in_2xx([{"Message": "Success"}]) is None
    assert failure_in_2xx("Successfully deleted end user device") is None
    assert failure_in_2xx({"error_code": 0, "data": "successfully marked the endusers as inactive"}) is None
    assert "error occoured" in (failure_in_2xx({"error_code": 500, "error_description": "error occoured"}) or "")
    assert failure_in_2xx({"Message": "Device not found"}) == "Device not found"
    assert failure_in_2xx({"success": False, "message": "Tag is locked"}) == "Tag is locked"


# -- the command line ---------------------------------------------------------------


def test_cli_runs_a_mixed_job_and_reports_each_row(sim: SimServer, tmp_path: Path) -> None:
    from conftest import read_report, write_csv  # type: ignore[import-not-found]

    from click.testing import CliRunner

    from bulkmdm.cli import main

    o = org(sim)
    ban, banned = o.unique_devices(banned=False)[0], o.unique_devices(banned=True)[0]
    deleted = o.unique_devices(users=1)[5]
    user = list(o.users.values())[20]
    job = write_csv(
        tmp_path / "banyan job.csv",
        [
            ["Action", "Serial Number", "E-mail", "Enduser ID"],
            ["ban", ban["SerialNumber"], "", ""],
            ["ban", banned["SerialNumber"], "", ""],
            ["Delete Device", deleted["SerialNumber"], "", ""],
            ["delete-user", "", "", user["ID"]],
            ["ban", "NOSUCHSERIAL", "", ""],
            ["lock", ban["SerialNumber"], "", ""],
        ],
    )
    env = {"BULKMDM_TOKEN": TOKEN, "BULKMDM_STATE_DIR": str(tmp_path / "state")}
    result = CliRunner().invoke(main, ["run", str(job), "--provider", "banyan", "--url", sim.url, "--yes"], env=env)
    report = read_report(tmp_path / "banyan job.outcome.csv")
    assert [r["status"] for r in report] == ["succeeded", "skipped", "succeeded", "succeeded", "failed", "invalid"]
    assert result.exit_code == 1
    assert TOKEN not in result.output and TOKEN not in (tmp_path / "banyan job.outcome.csv").read_text()
    assert log(sim, ban) == ["ban"] and o.with_serial(deleted["SerialNumber"]) == []
    assert user["ID"] in o.inactive

    # run the report again: only the failed/invalid rows are tried, nothing is sent twice
    result = CliRunner().invoke(
        main,
        ["run", str(tmp_path / "banyan job.outcome.csv"), "--provider", "banyan", "--url", sim.url, "--yes"],
        env=env,
    )
    assert result.exit_code == 1
    assert log(sim, ban) == ["ban"] and sim.stats.by_route["DELETE /v2/endusers"] == 1


def test_cli_destructive_job_needs_yes_and_missing_token_is_one_message(sim: SimServer, tmp_path: Path) -> None:
    from conftest import write_csv  # type: ignore[import-not-found]

    from click.testing import CliRunner

    from bulkmdm.cli import main

    device = org(sim).unique_devices(users=1)[0]
    job = write_csv(tmp_path / "wipe.csv", [["action", "serial"], ["delete-device", device["SerialNumber"]]])
    env = {"BULKMDM_TOKEN": TOKEN, "BULKMDM_STATE_DIR": str(tmp_path / "state")}
    result = CliRunner().invoke(main, ["run", str(job), "--provider", "banyan", "--url", sim.url], env=env)
    assert result.exit_code == 2 and mutating(sim) == 0
    result = CliRunner().invoke(
        main,
        ["run", str(job), "--provider", "banyan", "--url", sim.url, "--yes"],
        env={"BULKMDM_STATE_DIR": str(tmp_path / "state")},
    )
    assert result.exit_code == 2 and "BULKMDM_TOKEN" in result.output and "Traceback" not in result.output
    assert mutating(sim) == 0 and org(sim).with_serial(device["SerialNumber"]) == [device]


@pytest.mark.parametrize("real", [False, True])
def test_shipped_example_job_runs_against_the_default_simulator(tmp_path: Path, real: bool) -> None:
    # jobs/banyan-lost.csv names devices of `bulkmdm sim banyan` (3000 devices, seed 1)
    from conftest import read_report  # type: ignore[import-not-found]

    from click.testing import CliRunner

    from bulkmdm.cli import main

    job = tmp_path / "banyan-lost.csv"
    job.write_bytes((Path(__file__).parent.parent / "jobs" / "banyan-lost.csv").read_bytes())
    with SimServer(make_app(devices=3000, seed=1, token=TOKEN, real=real)) as server:
        env = {"BULKMDM_TOKEN": TOKEN, "BULKMDM_STATE_DIR": str(tmp_path / "state")}
        result = CliRunner().invoke(
            main, ["run", str(job), "--provider", "banyan", "--url", server.url, "--yes"], env=env
        )
        report = read_report(tmp_path / "banyan-lost.outcome.csv")
        assert result.exit_code == 0, result.output
        assert [r["status"] for r in report] == ["succeeded"] * 4 + ["skipped"] + ["succeeded"] * 4
        # 8 changes; the doc's server refuses the public client's ban body and delete path once each
        assert server.stats.mutating == (8 if real else 10)
