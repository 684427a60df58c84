"""The DuoSTATION simulator, over real HTTP on loopback."""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bulkmdm.sim import fleet
from bulkmdm.sim.common import Faults, SimServer
from bulkmdm.sim.duostation import FACTS, DuoState, make_app

_loads = json.loads


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


ADMIN = basic("admin", "admin")
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


class Api:
    """A tiny client: ``await api("GET", "devices")`` -> (status, body, headers)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, state: DuoState, app: Any) -> None:
        self.session, self.base, self.state, self.app = session, base, state, app

    async def __call__(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Any = None,
        params: dict[str, str] | None = None,
        auth: str | bool = True,
        content_type: str | None = None,
    ) -> tuple[int, Any, Any]:
        url = self.base + path if path.startswith("/_sim") else f"{self.base}/api/{path}"
        headers = {"Authorization": ADMIN if auth is True else auth} if auth else {}
        if content_type:
            headers["Content-Type"] = content_type
        async with self.session.request(method, url, json=json, data=data, params=params, headers=headers) as resp:
            raw = await resp.read()
            body = _loads(raw) if raw else None
            return resp.status, body, resp.headers


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    app = make_app(devices=200)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield Api(session, str(server.make_url("")).rstrip("/"), app["state"], app)
    await server.close()


# -- the seeded district ---------------------------------------------------------


def test_facts_hold_in_a_fresh_state() -> None:
    for devices in (8, 300):
        state: DuoState = make_app(devices=devices)["state"]
        assert [d["id"] for d in state.devices_by_serial(FACTS["duplicate_serial"])] == FACTS[
            "duplicate_serial_device_ids"
        ]
        assert [t["id"] for t in state.tags_by_name(FACTS["duplicate_tag_name"])] == FACTS["duplicate_tag_ids"]
        assert [g["id"] for g in state.groups_by_path(FACTS["duplicate_group_path"])] == FACTS["duplicate_group_ids"]
        assert [g["id"] for g in state.groups_by_path(FACTS["group_path"])] == [FACTS["group_id"]]
        assert [u["id"] for u in state.search_users(email=FACTS["duplicate_email"])] == FACTS[
            "duplicate_email_user_ids"
        ]
        nodev = FACTS["user_without_devices"]
        assert state.devices_of_user(nodev["id"]) == [] and state.user_tags_of(nodev["id"]) == []
        assert state.user(nodev["id"])["email"] == nodev["email"]
        withdev = FACTS["user_with_devices"]
        assert [(d["id"], d["serialNumber"]) for d in state.devices_of_user(withdev["id"])] == list(
            zip(withdev["device_ids"], withdev["serials"], strict=True)
        )
        assert state.user(withdev["id"])["name"] == "Åsa Öberg"
        tagged = FACTS["tagged_device"]
        assert state.device_tags_of(tagged["id"]) == [tagged["tag"]]
        assert state.link("devicetags", tagged["link_id"])["tagId"] == tagged["tag_id"]
        free = FACTS["untagged_device"]
        assert state.device_tags_of(free["id"]) == [] and state.device(free["id"])["userId"] is None
        assigned = FACTS["assigned_device"]
        dev = state.devices_by_serial(assigned["serial"])[0]
        assert (dev["id"], dev["userId"], dev["accountName"]) == (
            assigned["id"],
            assigned["user_id"],
            assigned["account"],
        )
        assert state.user_tags_of(FACTS["tagged_user"]["id"]) == [FACTS["tagged_user"]["tag"]]
        in_group = FACTS["user_in_group"]
        assert state.user(in_group["id"])["groupId"] == in_group["group_id"]
        assert state.user(FACTS["mixed_case_email_user_id"])["email"] == FACTS["mixed_case_email"]
        assert state.devices_by_serial(FACTS["leading_zero_serial"])[0]["id"] == FACTS["leading_zero_device_id"]
        assert [a["id"] for a in state.apps_by_name(FACTS["shared_app_name"])] == FACTS["shared_app_name_ids"]
        assert [a["id"] for a in state.apps.values() if a["packageId"] == FACTS["shared_package_id"]] == FACTS[
            "shared_package_id_ids"
        ]
        assert state.app(FACTS["app"]["id"])["packageId"] == FACTS["app"]["packageId"]
        gt = state.link("grouptags", FACTS["group_tag"]["id"])
        assert (gt["groupId"], gt["tagId"]) == (FACTS["group_tag"]["group_id"], FACTS["group_tag"]["tag_id"])
        assert state.duplicate_links() == [] and state.duplicate_user_links() == []
        assert len(state.devices) == devices


def test_seeding_is_deterministic_and_realistic() -> None:
    a, b, c = (make_app(devices=400, seed=s)["state"] for s in (1, 1, 2))
    for kind in ("devices", "users", "devicetags", "usertags", "groups", "tags", "apps"):
        assert a.list_json(kind) == b.list_json(kind)
    assert a.list_json("devices") != c.list_json("devices")
    summary = a.summary()
    assert summary["users"] == 320 and 0.6 < summary["assignedDevices"] / 400 < 0.8
    assert 25 <= summary["tags"] <= 35 and 15 <= summary["apps"] <= 25
    serials = [d["serialNumber"] for d in a.devices.values()]
    assert len(set(serials)) == len(serials) - 1  # only the deliberate duplicate
    platforms = [d["platform"] for d in a.devices.values()]
    assert platforms.count("iOS") > len(platforms) * 0.6 and {"ChromeOS", "Android"} <= set(platforms)
    assert all(GUID.match(d) for d in a.devices)
    emails = [u["email"].lower() for u in a.users.values()]
    assert len(set(emails)) == len(emails) - 1  # only the deliberate duplicate
    assert any(ch in u["name"] for u in a.users.values() for ch in "åäöÅÄÖ")


def test_fleet_generators() -> None:
    people = fleet.people(5000, seed=3)
    assert people == fleet.people(5000, seed=3)
    assert len({p.email for p in people}) == 5000 and len({p.account for p in people}) == 5000
    assert all(p.email.isascii() and p.email.endswith("@skola.se") and p.account.isascii() for p in people)
    assert all(re.fullmatch(r"07\d-\d{3} \d{2} \d{2}", p.phone) for p in people)
    serials = fleet.serials(3000, seed=3)
    assert len(set(serials)) == 3000
    assert all(re.fullmatch(r"[0-9A-HJ-NP-Z]{12}", s) for s in serials)
    import random

    assert GUID.match(fleet.guid(random.Random(1)))
    groups = fleet.school_groups(1)
    assert "Skolor" in groups and "Personal" in groups and "Skolor\\Norra gymnasiet\\Klass 7A" in groups
    assert all(p.rpartition("\\")[0] in groups for p in groups if "\\" in p)
    assert fleet.fold("Åsa Öberg Ängström") == "Asa Oberg Angstrom"


# -- auth and errors --------------------------------------------------------------


async def test_basic_auth_is_required(api: Api) -> None:
    for auth in (False, basic("admin", "wrong"), basic("root", "admin"), "Bearer x", "Basic !!!"):
        status, body, headers = await api("GET", "devices", auth=auth)
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Basic realm="DuoSTATION MDM"'
        assert body["message"]
    # the scheme name is case-insensitive
    assert (await api("GET", "tags/1", auth="basic " + ADMIN.split()[1]))[0] == 200
    status, body, _ = await api("GET", "/_sim/state/summary", auth=False)
    assert status == 200 and body["devices"] == 200


async def test_unknown_routes_and_methods_answer_json(api: Api) -> None:
    status, body, _ = await api("GET", "nosuchthing")
    assert status == 404 and "message" in body
    status, body, headers = await api("DELETE", "devices")
    assert status == 405 and "message" in body and "GET" in headers["Allow"]
    status, body, _ = await api("GET", "groups/abc")
    assert status == 404
    status, body, _ = await api("GET", "users", params={"groupId": "x"})
    assert status == 400 and "groupId" in body["message"]


async def test_bad_bodies_are_400(api: Api) -> None:
    status, body, _ = await api("POST", "tags", data=b"{not json", content_type="application/json")
    assert status == 400 and body["message"]
    # "Data in DELETE-, PUT- and POST-commands must be structured as JSON objects"
    status, body, _ = await api("POST", "tags", data={"name": "Formulär"})
    assert status == 415 and "JSON" in body["message"]
    status, body, _ = await api("POST", "tags", data=b'{"name": "Text"}', content_type="text/plain")
    assert status == 415
    assert not api.state.tags_by_name("Formulär") and not api.state.tags_by_name("Text")
    status, body, _ = await api("POST", "tags", json=["a list"])
    assert status == 400
    status, body, _ = await api("POST", "tags", json={"description": "no name"})
    assert status == 400 and "name" in body["message"]
    status, body, _ = await api("POST", "devicetags", json={"tagId": 1})
    assert status == 400 and "deviceId" in body["message"]
    status, body, _ = await api("POST", "usertags", json={"userId": "abc", "tagId": 1})
    assert status == 400 and "userId" in body["message"]
    # integers the doc writes unquoted must be JSON numbers
    free = FACTS["untagged_device"]["id"]
    for path, payload, name in (
        ("devicetags", {"deviceId": free, "tagId": "4"}, "tagId"),
        ("usertags", {"userId": 4, "tagId": "2"}, "tagId"),
        (f"devices/{free}/installapp", {"appId": str(FACTS["app"]["id"])}, "appId"),
        ("groups", {"name": "X", "parentId": "9"}, "parentId"),
        ("tags", {"name": "X", "groupId": "9"}, "groupId"),
    ):
        status, body, _ = await api("POST", path, json=payload)
        assert status == 400 and name in body["message"], path
    status, body, _ = await api("PUT", f"devices/{free}", json={"userId": "4"})
    assert status == 400 and "userId" in body["message"]
    status, body, _ = await api("PUT", "users/4", json={"groupId": "13"})
    assert status == 400 and "groupId" in body["message"]
    assert api.state.device(free)["userId"] is None and api.state.commands == []


# -- groups -------------------------------------------------------------------------


async def test_groups(api: Api) -> None:
    status, groups, _ = await api("GET", "groups")
    assert status == 200 and len(groups) == 33
    assert set(groups[0]) == {"id", "name", "parentId", "path"}
    status, group, _ = await api("GET", f"groups/{FACTS['group_id']}")
    assert group["path"] == FACTS["group_path"] and group["name"] == "Klass 8B"
    assert (await api("GET", "groups/999"))[0] == 404

    for path in (FACTS["group_path"], FACTS["group_path"].replace("\\", "/"), "\\" + FACTS["group_path"]):
        status, group, _ = await api("GET", "groups", params={"path": path})
        assert status == 200 and group["id"] == FACTS["group_id"]
    # the doc's own example encodes the backslash as %5C
    async with api.session.get(
        f"{api.base}/api/groups?path=Skolor%5CBj%C3%B6rkskolan%5CKlass%208B", headers={"Authorization": ADMIN}
    ) as resp:
        assert (await resp.json())["id"] == FACTS["group_id"]
    assert (await api("GET", "groups", params={"path": "Skolor\\Björkskolan\\klass 8b"}))[0] == 404
    assert (await api("GET", "groups", params={"path": "Skolor\\Nowhere"}))[0] == 404
    status, body, _ = await api("GET", "groups", params={"path": FACTS["duplicate_group_path"]})
    assert status == 409 and body["message"] == "More than one group matches the path"

    status, new_id, _ = await api("POST", "groups", json={"name": "Klass 9C", "parentId": 9})
    assert status == 200 and isinstance(new_id, int)
    status, sub_id, _ = await api("POST", "groups", json={"name": "Grupp 1", "parentId": new_id})
    status, group, _ = await api("GET", "groups", params={"path": "Skolor/Björkskolan/Klass 9C/Grupp 1"})
    assert group["id"] == sub_id and group["parentId"] == new_id
    status, top, _ = await api("POST", "groups", json={"name": "Fritids"})
    assert (await api("GET", f"groups/{top}"))[1] == {"id": top, "name": "Fritids", "parentId": 0, "path": "Fritids"}
    assert (await api("POST", "groups", json={"name": "X", "parentId": 999}))[0] == 404
    assert (await api("POST", "groups", json={"parentId": 1}))[0] == 400

    status, body, _ = await api("PUT", f"groups/{new_id}", json={"name": "Klass 9D"})
    assert status == 200 and body is None
    assert (await api("GET", f"groups/{sub_id}"))[1]["path"] == "Skolor\\Björkskolan\\Klass 9D\\Grupp 1"
    assert (await api("PUT", f"groups/{new_id}", json={}))[0] == 400
    assert (await api("PUT", "groups/999", json={"name": "x"}))[0] == 404

    assert (await api("DELETE", f"groups/{new_id}"))[0] == 409  # has a subgroup
    assert (await api("DELETE", f"groups/{FACTS['group_id']}"))[0] == 409  # has users
    assert (await api("DELETE", f"groups/{sub_id}"))[0] == 200
    assert (await api("DELETE", f"groups/{new_id}"))[0] == 200
    assert (await api("GET", f"groups/{new_id}"))[0] == 404
    assert (await api("DELETE", f"groups/{new_id}"))[0] == 404


# -- users --------------------------------------------------------------------------


async def test_user_reads_and_searches(api: Api) -> None:
    status, users, _ = await api("GET", "users")
    assert status == 200 and len(users) == 160
    assert set(users[0]) == {
        "id",
        "name",
        "email",
        "phoneNumber",
        "accountName",
        "accountGroup",
        "groupId",
        "company",
        "office",
        "department",
        "position",
    }
    status, user, _ = await api("GET", "users/1")
    assert user["name"] == "Åsa Öberg" and user["accountName"] == "asaobe01"
    assert (await api("GET", "users/99999"))[0] == 404

    async def ids(**params: Any) -> list[int]:
        status, found, _ = await api("GET", "users", params={k: str(v) for k, v in params.items()})
        assert status == 200
        return [u["id"] for u in found]

    assert await ids(email=FACTS["duplicate_email"]) == FACTS["duplicate_email_user_ids"]
    assert await ids(email="maja.ekstrom@skola.se") == [FACTS["mixed_case_email_user_id"]]
    assert await ids(email="KIM.Lindqvist@SKOLA.SE") == FACTS["duplicate_email_user_ids"]
    assert await ids(account="asaobe01") == [1]
    assert await ids(account="ASAOBE01") == []  # account names match exactly
    assert await ids(email="nobody@skola.se") == []
    kim2 = api.state.user(FACTS["duplicate_email_user_ids"][1])
    assert await ids(email=FACTS["duplicate_email"], groupId=kim2["groupId"]) == [kim2["id"]]
    in_group = await ids(groupId=FACTS["group_id"])
    assert FACTS["user_in_group"]["id"] in in_group
    assert all(api.state.user(i)["groupId"] == FACTS["group_id"] for i in in_group)
    teachers = await ids(tagId=FACTS["tagged_user"]["tag_id"])
    assert FACTS["tagged_user"]["id"] in teachers
    assert await ids(tagId=FACTS["tagged_user"]["tag_id"], account="larhak01") == [FACTS["tagged_user"]["id"]]
    phone_user = next(u for u in api.state.users.values() if u["phoneNumber"])
    assert phone_user["id"] in await ids(phoneNumber=phone_user["phoneNumber"])
    assert await ids(unknownParam="x") == [u["id"] for u in users]  # unknown parameters are ignored


async def test_user_changes(api: Api) -> None:
    status, new_id, _ = await api(
        "POST",
        "users",
        json={
            "name": "Göran Ängström",
            "email": "goran.angstrom@skola.se",
            "accountName": "goreng01",
            "accountGroup": "Personal",
            "groupId": 31,
            "phoneNumber": "070-111 22 33",
            "position": "Lärare",
        },
    )
    assert status == 200 and isinstance(new_id, int)
    user = (await api("GET", f"users/{new_id}"))[1]
    assert user["groupId"] == 31 and user["company"] is None
    assert (await api("POST", "users", json={"email": "x@skola.se"}))[0] == 400
    assert (await api("POST", "users", json={"name": "X", "groupId": 999}))[0] == 404

    # moving a user moves the user's devices too (the doc's "Update a user")
    owner = FACTS["user_with_devices"]
    status, body, _ = await api(
        "PUT", f"users/{owner['id']}", json={"groupId": FACTS["group_id"], "name": "Åsa Öberg-Lind"}
    )
    assert status == 200 and body is None
    status, devices, _ = await api("GET", "devices", params={"userId": str(owner["id"])})
    assert {d["groupId"] for d in devices} == {FACTS["group_id"]} and len(devices) == 2
    assert (await api("GET", f"users/{owner['id']}"))[1]["name"] == "Åsa Öberg-Lind"
    assert (await api("PUT", "users/99999", json={"name": "x"}))[0] == 404
    assert (await api("PUT", f"users/{owner['id']}", json={"groupId": 999}))[0] == 404
    assert (await api("PUT", f"users/{owner['id']}", json={"name": ""}))[0] == 400

    # a renamed user's tag links carry the new name
    tagged = FACTS["tagged_user"]
    await api("PUT", f"users/{tagged['id']}", json={"name": "Lars H"})
    assert (await api("GET", f"usertags/{tagged['link_id']}"))[1]["userName"] == "Lars H"

    status, body, _ = await api("DELETE", f"users/{owner['id']}")
    assert status == 409 and "device" in body["message"]
    nodev = FACTS["user_without_devices"]["id"]
    assert (await api("DELETE", f"users/{nodev}"))[0] == 200
    assert (await api("GET", f"users/{nodev}"))[0] == 404
    assert (await api("DELETE", f"users/{nodev}"))[0] == 404
    # the tagged user loses the device, then can be deleted; its tag links go with it
    await api("PUT", f"devices/{FACTS['assigned_device']['id']}", json={"userId": None})
    assert (await api("DELETE", f"users/{tagged['id']}"))[0] == 200
    assert (await api("GET", f"usertags/{tagged['link_id']}"))[0] == 404


# -- devices ------------------------------------------------------------------------


async def test_device_reads_and_searches(api: Api) -> None:
    status, devices, _ = await api("GET", "devices")
    assert status == 200 and len(devices) == 200
    assert set(devices[0]) == {
        "id",
        "serialNumber",
        "name",
        "model",
        "platform",
        "osVersion",
        "userId",
        "accountName",
        "groupId",
        "lastSeen",
    }
    free = FACTS["untagged_device"]
    status, device, _ = await api("GET", f"devices/{free['id']}")
    assert device["serialNumber"] == free["serial"] and device["userId"] is None
    assert (await api("GET", f"devices/{free['id'].upper()}"))[1]["id"] == free["id"]
    assert (await api("GET", "devices/00000000-0000-0000-0000-000000000000"))[0] == 404

    async def serials(**params: Any) -> list[str]:
        status, found, _ = await api("GET", "devices", params={k: str(v) for k, v in params.items()})
        assert status == 200
        return [d["serialNumber"] for d in found]

    assert await serials(serialNumber=FACTS["duplicate_serial"]) == [FACTS["duplicate_serial"]] * 2
    assert await serials(serialNumber=FACTS["leading_zero_serial"]) == [FACTS["leading_zero_serial"]]
    assert await serials(serialNumber="NOSUCHSERIAL") == []
    owner = FACTS["user_with_devices"]
    assert sorted(await serials(userId=owner["id"])) == sorted(owner["serials"])
    assert sorted(await serials(accountName=owner["account"])) == sorted(owner["serials"])
    assert await serials(accountName=owner["account"], serialNumber=owner["serials"][0]) == owner["serials"][:1]
    assert await serials(userId=owner["id"], serialNumber=FACTS["duplicate_serial"]) == []
    tagged = FACTS["tagged_device"]
    assert tagged["serial"] in await serials(tagId=tagged["tag_id"])
    assert await serials(tagId=tagged["tag_id"], serialNumber=tagged["serial"]) == [tagged["serial"]]
    group_id = api.state.devices_by_serial(tagged["serial"])[0]["groupId"]
    in_group = await serials(groupId=group_id)
    assert tagged["serial"] in in_group and FACTS["duplicate_serial"] in in_group


async def test_assigning_a_device(api: Api) -> None:
    free = FACTS["untagged_device"]
    target = FACTS["user_in_group"]
    status, body, _ = await api("PUT", f"devices/{free['id']}", json={"userId": target["id"]})
    assert status == 200 and body is None
    device = (await api("GET", f"devices/{free['id']}"))[1]
    assert device["userId"] == target["id"] and device["accountName"] == target["account"]
    assert device["groupId"] == target["group_id"]  # the device follows its user's group
    # the cached full list sees the change
    listed = next(d for d in (await api("GET", "devices"))[1] if d["id"] == free["id"])
    assert listed["userId"] == target["id"]
    # "{ "userId": <userId> }": a JSON number; a numeric string is refused
    assert (await api("PUT", f"devices/{free['id']}", json={"userId": str(FACTS["tagged_user"]["id"])}))[0] == 400
    assert (await api("PUT", f"devices/{free['id']}", json={"userId": FACTS["tagged_user"]["id"]}))[0] == 200
    assert api.state.device(free["id"])["accountName"] == "larhak01"
    assert (await api("PUT", f"devices/{free['id']}", json={"userId": 99999}))[0] == 404
    assert (await api("PUT", f"devices/{free['id']}", json={}))[0] == 400
    assert (await api("PUT", f"devices/{free['id']}", json={"userId": "abc"}))[0] == 400
    assert (await api("PUT", "devices/nope", json={"userId": 1}))[0] == 404


# -- tags and links -------------------------------------------------------------------


async def test_tags_crud(api: Api) -> None:
    status, tags, _ = await api("GET", "tags")
    assert len(tags) == 30 and set(tags[0]) == {"id", "name", "description", "groupId"}
    assert [t["id"] for t in tags if t["name"] == "Dubblett"] == FACTS["duplicate_tag_ids"]
    assert (await api("GET", "tags/3"))[1]["name"] == "Prov-läge"
    assert (await api("GET", "tags/999"))[0] == 404
    status, tag_id, _ = await api("POST", "tags", json={"name": "Sommarskola", "groupId": 9})
    assert status == 200 and (await api("GET", f"tags/{tag_id}"))[1] == {
        "id": tag_id,
        "name": "Sommarskola",
        "description": None,
        "groupId": 9,
    }
    assert (await api("POST", "tags", json={"name": "X", "groupId": 999}))[0] == 404
    status, body, _ = await api("PUT", f"tags/{tag_id}", json={"description": "Juni", "groupId": 0})
    assert status == 200 and body is None
    assert (await api("GET", f"tags/{tag_id}"))[1]["description"] == "Juni"
    assert (await api("PUT", "tags/999", json={"name": "x"}))[0] == 404

    # renaming a tag renames it in its device links
    tagged = FACTS["tagged_device"]
    await api("PUT", f"tags/{tagged['tag_id']}", json={"name": "Provläge"})
    assert (await api("GET", f"devicetags/{tagged['link_id']}"))[1]["tagName"] == "Provläge"
    # a tag with links may be deleted; its links go with it
    assert (await api("DELETE", f"tags/{tagged['tag_id']}"))[0] == 200
    assert (await api("GET", f"devicetags/{tagged['link_id']}"))[0] == 404
    assert (await api("GET", f"tags/{tagged['tag_id']}"))[0] == 404
    assert (await api("DELETE", f"tags/{tagged['tag_id']}"))[0] == 404


async def test_device_tags_and_duplicate_links(api: Api) -> None:
    status, links, _ = await api("GET", "devicetags")
    assert status == 200 and len(links) == api.state.summary()["devicetags"]
    tagged = FACTS["tagged_device"]
    link = (await api("GET", f"devicetags/{tagged['link_id']}"))[1]
    assert link == {
        "id": tagged["link_id"],
        "deviceId": tagged["id"],
        "tagId": tagged["tag_id"],
        "serialNumber": tagged["serial"],
        "tagName": tagged["tag"],
    }
    assert (await api("GET", "devicetags", params={"deviceId": tagged["id"]}))[1] == [link]
    assert (await api("GET", "devicetags", params={"serialNumber": tagged["serial"]}))[1] == [link]
    assert (await api("GET", "devicetags", params={"serialNumber": tagged["serial"], "deviceId": tagged["id"]}))[1] == [
        link
    ]
    assert (await api("GET", "devicetags", params={"serialNumber": "OTHER", "deviceId": tagged["id"]}))[1] == []
    assert (await api("GET", "devicetags/99999"))[0] == 404

    free = FACTS["untagged_device"]
    status, first, _ = await api("POST", "devicetags", json={"deviceId": free["id"], "tagId": 4})
    assert status == 200 and isinstance(first, int)
    assert api.state.device_tags_of(free["id"]) == ["Lånedator"]
    assert api.state.duplicate_links() == []
    # the same link again is a second link: how a double send shows
    status, second, _ = await api("POST", "devicetags", json={"deviceId": free["id"].upper(), "tagId": 4})
    assert status == 200 and second != first
    assert api.state.device_tags_of(free["id"]) == ["Lånedator", "Lånedator"]
    assert api.state.duplicate_links() == [(free["id"], 4)]
    assert len((await api("GET", "devicetags", params={"deviceId": free["id"]}))[1]) == 2
    assert (await api("GET", "/_sim/state/summary", auth=False))[1]["duplicateDeviceTagLinks"] == 1

    assert (await api("DELETE", f"devicetags/{second}"))[0] == 200
    assert api.state.duplicate_links() == []
    assert (await api("DELETE", f"devicetags/{second}"))[0] == 404
    assert (await api("POST", "devicetags", json={"deviceId": free["id"], "tagId": 999}))[0] == 404
    assert (await api("POST", "devicetags", json={"deviceId": "nope", "tagId": 1}))[0] == 404


async def test_user_tags(api: Api) -> None:
    tagged = FACTS["tagged_user"]
    link = (await api("GET", f"usertags/{tagged['link_id']}"))[1]
    assert link == {
        "id": tagged["link_id"],
        "userId": tagged["id"],
        "tagId": tagged["tag_id"],
        "userName": "Lars Håkansson",
    }
    assert (await api("GET", "usertags", params={"userId": str(tagged["id"])}))[1] == [link]
    assert (await api("GET", "usertags", params={"email": tagged["email"].upper()}))[1] == [link]
    assert (await api("GET", "usertags", params={"email": tagged["email"], "userId": "1"}))[1] == []
    assert len((await api("GET", "usertags"))[1]) == api.state.summary()["usertags"]
    # the doc's example quotes the user id: "<userId>"
    nodev = FACTS["user_without_devices"]
    status, new_id, _ = await api("POST", "usertags", json={"userId": str(nodev["id"]), "tagId": 2})
    assert status == 200 and api.state.user_tags_of(nodev["id"]) == ["Lärare"]
    await api("POST", "usertags", json={"userId": nodev["id"], "tagId": 2})
    assert api.state.duplicate_user_links() == [(nodev["id"], 2)]
    assert (await api("DELETE", f"usertags/{new_id}"))[0] == 200
    assert (await api("GET", f"usertags/{new_id}"))[0] == 404
    assert (await api("POST", "usertags", json={"userId": 99999, "tagId": 2}))[0] == 404


async def test_group_tags(api: Api) -> None:
    status, links, _ = await api("GET", "grouptags")
    assert status == 200 and len(links) == 3
    gt = FACTS["group_tag"]
    assert (await api("GET", f"grouptags/{gt['id']}"))[1] == {
        "id": gt["id"],
        "groupId": gt["group_id"],
        "tagId": gt["tag_id"],
    }
    status, all_id, _ = await api("POST", "grouptags", json={"groupId": 0, "tagId": 18})  # 0 is 'All'
    assert status == 200 and (await api("GET", f"grouptags/{all_id}"))[1]["groupId"] == 0
    assert (await api("POST", "grouptags", json={"groupId": "13", "tagId": 18}))[0] == 200
    assert (await api("POST", "grouptags", json={"groupId": 999, "tagId": 18}))[0] == 404
    assert (await api("POST", "grouptags", json={"tagId": 18}))[0] == 400
    assert (await api("DELETE", f"grouptags/{all_id}"))[0] == 200
    assert (await api("DELETE", f"grouptags/{all_id}"))[0] == 404
    assert (await api("DELETE", "groups/2"))[0] == 409  # in use (users, tags, a group tag)


# -- apps ---------------------------------------------------------------------------------


async def test_apps(api: Api) -> None:
    status, apps, _ = await api("GET", "apps")
    assert status == 200 and len(apps) == 21
    assert set(apps[0]) == {
        "id",
        "name",
        "description",
        "company",
        "packageId",
        "versionText",
        "versionNumber",
        "platform",
        "size",
        "store",
        "storeId",
        "imageUrl",
    }
    assert [a["id"] for a in apps if a["name"] == FACTS["shared_app_name"]] == FACTS["shared_app_name_ids"]
    assert (await api("GET", f"apps/{FACTS['app']['id']}"))[1]["name"] == "Kahoot!"
    assert (await api("GET", "apps/999"))[0] == 404
    new = {
        "name": "Elevkollen",
        "company": "Norrby kommun",
        "packageId": "se.norrby.elevkollen",
        "versionText": "1.0",
        "platform": 0,
        "size": 1234,
        "store": 2,
        "storeId": "https://mdm.norrby.se/apps/elevkollen.ipa",
        "imageData": "iVBORw0KGgo=",
    }
    status, app_id, _ = await api("POST", "apps", json=new)
    assert status == 200 and app_id == 22
    # same packageId + platform + store: the app is updated, not added
    status, same, _ = await api("POST", "apps", json={**new, "versionText": "1.1", "versionNumber": 2})
    assert same == app_id and (await api("GET", f"apps/{app_id}"))[1]["versionText"] == "1.1"
    status, other, _ = await api(
        "POST", "apps", json={**new, "platform": 1, "store": 1, "storeId": "se.norrby.elevkollen"}
    )
    assert other == 23 and len((await api("GET", "apps"))[1]) == 23
    for broken in (
        {k: v for k, v in new.items() if k != "company"},
        {**new, "imageUrl": "https://x/y.png"},
        {k: v for k, v in new.items() if k != "imageData"},
        {**new, "platform": 7},
        {**new, "store": "x"},
        {**new, "imageData": "not base64!"},
    ):
        status, body, _ = await api("POST", "apps", json=broken)
        assert status == 400 and body["message"], broken


# -- commands -------------------------------------------------------------------------------


async def test_device_commands_are_logged(api: Api) -> None:
    dev = FACTS["assigned_device"]["id"]
    bodies: dict[str, Any] = {
        "inventorydevice": None,
        "lockdevice": None,
        "wipedevice": {},
        "clearpasscode": None,
        "installapp": {"appId": FACTS["app"]["id"], "vpp": True},
        "removeapp": {"identifier": "no.mobitroll.kahoot-app"},
        "sendmessage": {"message": "Lämna in din iPad i expeditionen"},
    }
    for name, body in bodies.items():
        status, answer, _ = await api("POST", f"devices/{dev}/{name}", json=body)
        assert (status, answer) == (200, None), name
    log = api.state.commands
    assert [c["command"] for c in log] == list(bodies)
    assert {c["deviceId"] for c in log} == {dev}
    assert log[4]["payload"] == {"appId": FACTS["app"]["id"], "vpp": True}
    assert log[6]["payload"]["message"] == "Lämna in din iPad i expeditionen"
    assert len(api.state.commands_for(dev, "lockdevice")) == 1

    status, served, _ = await api("GET", "/_sim/commands", auth=False)
    assert status == 200 and [c["command"] for c in served] == list(bodies)
    status, served, _ = await api("GET", "/_sim/commands", params={"command": "wipedevice"}, auth=False)
    assert len(served) == 1 and served[0]["serialNumber"] == FACTS["assigned_device"]["serial"]

    refused = [
        ("installapp", {"appId": 999}, 404, "App not found"),
        ("installapp", {}, 400, None),
        ("installapp", {"appId": 12, "vpp": "yes"}, 400, None),
        ("removeapp", {}, 400, None),
        ("sendmessage", {"message": ""}, 400, None),
        ("sendmessage", None, 400, None),
        ("rebootdevice", None, 404, None),
    ]
    for name, body, want, message in refused:
        status, answer, _ = await api("POST", f"devices/{dev}/{name}", json=body)
        assert status == want, name
        if message:
            assert answer == {"message": message}
    assert (await api("POST", "devices/nope/lockdevice"))[0] == 404
    assert (await api("POST", f"devices/{dev}/lockdevice", data=b"{oops", content_type="application/json"))[0] == 400
    assert (await api("POST", f"devices/{dev}/sendmessage", data={"message": "form"}))[0] == 415
    assert len(api.state.commands) == len(bodies)
    assert api.state.summary()["commands"] == len(bodies)


# -- faults -------------------------------------------------------------------------------------


async def test_rate_limit_answers_429_with_retry_after(api: Api) -> None:
    api.app["faults"].rate_limit = 3
    statuses = []
    for _ in range(6):
        status, body, headers = await api("GET", "tags/1")
        statuses.append(status)
        if status == 429:
            # a sliding window: exactly until the oldest request of the last second leaves it
            assert 0 < float(headers["Retry-After"]) <= 1 and body["message"]
    assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429, 429]
    status, faults, _ = await api("POST", "/_sim/faults", json={"rate_limit": None, "retry_after": None}, auth=False)
    assert status == 200 and faults["rate_limit"] is None
    assert (await api("GET", "tags/1"))[0] == 200
    stats = (await api("GET", "/_sim/stats", auth=False))[1]
    assert stats["throttled"] == 3 and stats["by_route"]["GET /api/tags/{id}"] == 7


async def test_error_and_drop_switches_at_runtime(api: Api) -> None:
    status, faults, _ = await api("POST", "/_sim/faults", json={"error_rate": 1}, auth=False)
    assert faults["error_rate"] == 1
    status, body, _ = await api("POST", f"devices/{FACTS['assigned_device']['id']}/lockdevice")
    assert status == 503 and body["message"]
    assert api.state.commands == []  # refused before doing anything

    await api("POST", "/_sim/faults", json={"error_rate": 0, "drop_rate": 1}, auth=False)
    with pytest.raises(aiohttp.ClientError):
        await api("GET", "tags")
    await api("POST", "/_sim/faults", json={"drop_rate": 0, "drop_after_rate": 1, "mutating_only": True}, auth=False)
    assert (await api("GET", "tags/1"))[0] == 200  # reads are spared
    with pytest.raises(aiohttp.ClientError):
        await api("POST", f"devices/{FACTS['assigned_device']['id']}/lockdevice")
    assert len(api.state.commands) == 1  # the work was done, the answer lost
    assert (await api("POST", "/_sim/faults", json={"no_such_switch": 1}, auth=False))[0] == 400
    await api("POST", "/_sim/faults", json={"drop_after_rate": 0}, auth=False)
    assert (await api("GET", "tags/1"))[0] == 200


# -- in a thread, as subprocess tests and benchmarks use it ------------------------------------


def test_sim_server_thread_and_control_routes() -> None:
    with SimServer(make_app(faults=Faults(latency=0.0))) as sim:

        def get(path: str, auth: bool = False) -> Any:
            req = urllib.request.Request(sim.url + path)
            if auth:
                req.add_header("Authorization", ADMIN)
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())

        assert get("/_sim/state/summary")["devices"] == 3000
        assert len(get("/api/devices", auth=True)) == 3000
        serial = FACTS["tagged_device"]["serial"]
        assert get(f"/api/devices?serialNumber={serial}", auth=True)[0]["id"] == FACTS["tagged_device"]["id"]
        state: DuoState = sim.app["state"]
        sim.call(lambda: state.command(FACTS["tagged_device"]["id"], "lockdevice", None))
        assert [c["command"] for c in get("/_sim/commands")] == ["lockdevice"]
        assert sim.call(lambda: state.device_tags_of(FACTS["tagged_device"]["id"])) == ["Prov-läge"]
        assert sim.stats.requests == 2


# -- answer shapes and the request log ---------------------------------------------------------


async def test_answer_shapes_and_request_log(api: Api) -> None:
    shape = api.app["shape"]
    shape.list_limit, shape.wrap, shape.pascal_case, shape.string_ids = 2, "Data", True, True
    status, body, _ = await api("GET", "devices")
    assert status == 200 and list(body) == ["Data"] and len(body["Data"]) == 2
    assert {"Id", "SerialNumber", "UserId"} <= set(body["Data"][0])
    assert len((await api("GET", "tags"))[1]["Data"]) == 30  # no search for tags: never cut
    serial = FACTS["tagged_device"]["serial"]
    found = (await api("GET", "devices", params={"serialNumber": serial}))[1]["Data"]
    assert [d["SerialNumber"] for d in found] == [serial]
    user = (await api("GET", f"users/{FACTS['user_in_group']['id']}"))[1]
    assert user["Id"] == str(FACTS["user_in_group"]["id"]) and user["GroupId"] == str(FACTS["group_id"])
    shape.ambiguous_group_status = 500
    assert (await api("GET", "groups", params={"path": FACTS["duplicate_group_path"]}))[0] == 500

    await api("POST", f"devices/{FACTS['untagged_device']['id']}/sendmessage", json={"message": "Hej"})
    log = list(api.app["requests"])
    assert log[-1] == {
        "method": "POST",
        "path": f"/api/devices/{FACTS['untagged_device']['id']}/sendmessage",
        "contentType": "application/json",
        "body": {"message": "Hej"},
    }
    assert (log[-2]["method"], log[-2]["path"].partition("?")[0]) == ("GET", "/api/groups")
    assert log[0] == {"method": "GET", "path": "/api/devices", "contentType": None, "body": None}
