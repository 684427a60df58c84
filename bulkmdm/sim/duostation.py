"""A DuoSTATION MDM simulator (vendor doc: duostation-mdm-rest-api-4.8.46.en.txt).

Every endpoint of the doc is served under ``/api`` with HTTP Basic auth,
from an in-memory :class:`DuoState` seeded with a fake Swedish school
district (:mod:`bulkmdm.sim.fleet`) plus the deliberate edge cases listed in
:data:`FACTS`.

The doc shows parameters and bodies but no objects, so the objects use the
doc's parameter names (camelCase)::

    group     {id, name, parentId, path}                      path: "Skolor\\Björkskolan\\Klass 7A"
    user      {id, name, email, phoneNumber, accountName, accountGroup, groupId,
               company, office, department, position}
    device    {id (GUID), serialNumber, name, model, platform, osVersion,
               userId, accountName, groupId, lastSeen}
    tag       {id, name, description, groupId}
    devicetag {id, deviceId, tagId, serialNumber, tagName}
    usertag   {id, userId, tagId, userName}
    grouptag  {id, groupId, tagId}
    app       {id, name, description, company, packageId, versionText,
               versionNumber, platform, size, store, storeId, imageUrl}

Requests: bodies must be JSON objects sent as ``application/json`` (else
400/415); integers the doc writes unquoted (``"tagId": <tagId>``) must be
JSON numbers, a numeric string is 400 (only the two ids the doc itself
quotes, usertags ``userId`` and grouptags ``groupId``, may be strings).

Answers: 200 with a JSON object or array for reads; 200 with the new id as a
bare JSON number for a POST that creates; 200 with an empty body for PUT,
DELETE and device commands. Errors are JSON ``{"message": ...}``: 400 bad
body or parameter, 401 bad credentials, 404 unknown id, 415 a body that is
not JSON, 409 conflict (a
group path that matches several groups, deleting a user with devices or a
group that is in use).

Where the doc is silent, the simulator behaves as a plausible real server:
linking a tag that is already linked creates a second link (tests use this
to catch double sends); unknown query parameters and unknown body fields are
ignored; e-mail searches ignore case, every other match (serial numbers,
account names, group paths) is exact; ``PUT /api/devices/<id>`` with
``{"userId": null}`` or ``0`` unlinks the user; deleting a tag deletes its
links; deleting a user deletes the user's tag links.

The doc shows no answer objects, so a real server may shape them otherwise;
:class:`Shape` (``app["shape"]``, changeable while running) makes the
simulator answer like such a server, for tests of a tolerant client: lists
cut short, wrapped lists, PascalCase field names (Json.NET's default),
integer ids as strings, another status for an ambiguous group path; and
hostile answers for the tests (fields null or renamed, lists
under unknown wrappers, searches that ignore their filter, changes answered
200 with no body, a sign-in page or a failure in the JSON). Every
``/api`` request is kept in ``app["requests"]`` (method, raw path with query
string, content type, body) so tests can assert the exact wire request.

Simulator-only routes (no auth, like the other ``/_sim`` routes):
``GET /_sim/state/summary`` (counts) and ``GET /_sim/commands`` (the command
log; ``?deviceId=`` and ``?command=`` filter it).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import random
import warnings
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from . import fleet
from .common import Faults, Handler, basic_credentials, instrument

__all__ = ["COMMANDS", "FACTS", "PORT", "ApiError", "DuoState", "Shape", "client_env", "make_app", "seed_state"]

#: the port the README's "Try it on a simulator" and `bulkmdm demo` serve it on
PORT = 8080

#: the device commands (POST /api/devices/<id>/<command>)
COMMANDS = ("inventorydevice", "installapp", "removeapp", "lockdevice", "wipedevice", "clearpasscode", "sendmessage")

REALM = "DuoSTATION MDM"
SEP = "\\"

_edge_rng = random.Random("bulkmdm-duostation-edge-cases")
_EDGE_GUIDS = [fleet.guid(_edge_rng) for _ in range(8)]

#: The deliberate edge cases every seed holds (same values for every seed
#: and size). Ids are those a fresh ``make_app()`` gives; tests assert them.
FACTS: dict[str, Any] = {
    "username": "admin",
    "password": "admin",
    # two devices share one serial number
    "duplicate_serial": "DUPSERIAL001",
    "duplicate_serial_device_ids": _EDGE_GUIDS[0:2],
    # two tags have the same name
    "duplicate_tag_name": "Dubblett",
    "duplicate_tag_ids": [29, 30],
    # two groups have the same path (the second was added later)
    "duplicate_group_path": "Skolor\\Södra skolan\\Klass 9A",
    "duplicate_group_ids": [28, 33],
    # an ordinary group with a unique path
    "group_path": "Skolor\\Björkskolan\\Klass 8B",
    "group_id": 13,
    # two users have the same e-mail address
    "duplicate_email": "kim.lindqvist@skola.se",
    "duplicate_email_user_ids": [2, 3],
    # a user with no devices and no tags: DELETE succeeds
    "user_without_devices": {"id": 4, "email": "sam.nystrom@skola.se", "account": "samnys01"},
    # a user with two devices: DELETE answers 409
    "user_with_devices": {
        "id": 1,
        "email": "asa.oberg@skola.se",
        "account": "asaobe01",
        "name": "Åsa Öberg",
        "serials": ["OBERGIPAD001", "OBERGCHROME1"],
        "device_ids": _EDGE_GUIDS[2:4],
    },
    # a device that carries tag "Prov-läge" (one link)
    "tagged_device": {"id": _EDGE_GUIDS[4], "serial": "TAGGEDIPAD01", "tag": "Prov-läge", "tag_id": 3, "link_id": 1},
    # a device with no user and no tags
    "untagged_device": {"id": _EDGE_GUIDS[5], "serial": "FREEIPAD0001"},
    # a device assigned to Lars Håkansson
    "assigned_device": {
        "id": _EDGE_GUIDS[6],
        "serial": "ASSIGNEDPAD1",
        "user_id": 5,
        "email": "lars.hakansson@skola.se",
        "account": "larhak01",
    },
    # a user who carries tag "Lärare" (one link)
    "tagged_user": {"id": 5, "email": "lars.hakansson@skola.se", "tag": "Lärare", "tag_id": 2, "link_id": 1},
    # a user already in group "Skolor\\Björkskolan\\Klass 8B"
    "user_in_group": {
        "id": 6,
        "email": "marta.sjoberg@skola.se",
        "account": "marsjo01",
        "group": "Skolor\\Björkskolan\\Klass 8B",
        "group_id": 13,
    },
    # an e-mail stored with capitals (searches ignore case)
    "mixed_case_email": "Maja.Ekstrom@Skola.SE",
    "mixed_case_email_user_id": 7,
    # a serial with leading zeros (spreadsheets must keep them)
    "leading_zero_serial": "001234567890",
    "leading_zero_device_id": _EDGE_GUIDS[7],
    # an app name shared by two apps (iOS and Android)
    "shared_app_name": "Google Chrome",
    "shared_app_name_ids": [1, 2],
    # a package id shared by two apps (iOS and Android)
    "shared_package_id": "se.skolverket.app",
    "shared_package_id_ids": [3, 4],
    # an app with a unique name and package id
    "app": {"id": 12, "name": "Kahoot!", "packageId": "no.mobitroll.kahoot-app"},
    # a group tag: tag "Gymnasiet" on group "Skolor\\Norra gymnasiet"
    "group_tag": {"id": 1, "group_id": 2, "tag_id": 8},
    # how many edge-case users and devices come before the generated ones
    "edge_users": 7,
    "edge_devices": 8,
}


class ApiError(Exception):
    """Answered as ``status`` with ``{"message": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def _bad(message: str) -> ApiError:
    return ApiError(400, message)


def _missing(message: str) -> ApiError:
    return ApiError(404, message)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def as_int(value: Any, name: str, *, quoted: bool = False) -> int:
    """An integer id. In bodies the doc writes integers unquoted
    (``"tagId": <tagId>``), so a JSON number is required; ``quoted`` also
    accepts a numeric string, for query parameters and for the two fields the
    doc itself quotes while calling them integers (``"userId": "<userId>"``
    in usertags, ``"groupId": "<groupId>"`` in grouptags)."""
    if isinstance(value, bool):
        raise _bad(f"{name} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and quoted:
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
    raise _bad(f"{name} must be an integer")


def _text(value: Any, name: str, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise _bad(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise _bad(f"{name} must be a string")
    if required and not value.strip():
        raise _bad(f"{name} is required")
    return value


def _add(index: dict[Any, dict[Any, None]], key: Any, item: Any) -> None:
    # dicts as ordered sets: O(1) add/remove, insertion order kept
    bucket = index.get(key)
    if bucket is None:
        index[key] = {item: None}
    else:
        bucket[item] = None


def _remove(index: dict[Any, dict[Any, None]], key: Any, item: Any) -> None:
    bucket = index.get(key)
    if bucket is not None:
        bucket.pop(item, None)
        if not bucket:
            del index[key]


class _Links:
    """One kind of tag link (device, user or group tags) with its indexes."""

    def __init__(self, owner_field: str) -> None:
        self.owner_field = owner_field
        self.rows: dict[int, dict[str, Any]] = {}
        self.by_owner: dict[Any, dict[int, None]] = {}
        self.by_tag: dict[int, dict[int, None]] = {}
        self.by_pair: dict[tuple[Any, int], dict[int, None]] = {}
        self.next_id = 1

    def add(self, row: dict[str, Any]) -> int:
        link_id = self.next_id
        self.next_id += 1
        row = {"id": link_id, **row}
        self.rows[link_id] = row
        owner, tag = row[self.owner_field], row["tagId"]
        _add(self.by_owner, owner, link_id)
        _add(self.by_tag, tag, link_id)
        _add(self.by_pair, (owner, tag), link_id)
        return link_id

    def remove(self, link_id: int) -> dict[str, Any]:
        row = self.rows.pop(link_id)
        owner, tag = row[self.owner_field], row["tagId"]
        _remove(self.by_owner, owner, link_id)
        _remove(self.by_tag, tag, link_id)
        _remove(self.by_pair, (owner, tag), link_id)
        return row

    def of_owner(self, owner: Any) -> list[dict[str, Any]]:
        return [self.rows[i] for i in self.by_owner.get(owner, ())]

    def of_tag(self, tag: int) -> list[dict[str, Any]]:
        return [self.rows[i] for i in self.by_tag.get(tag, ())]

    def duplicates(self) -> list[tuple[Any, int]]:
        return [pair for pair, ids in self.by_pair.items() if len(ids) > 1]


class DuoState:
    """The simulator's data, with indexes so every look-up the API offers is
    O(1) (or O(result)). Methods raise :class:`ApiError`; call them from the
    server's loop (``SimServer.call(lambda: state.…)``)."""

    def __init__(self) -> None:
        self.groups: dict[int, dict[str, Any]] = {}
        self._groups_by_path: dict[str, dict[int, None]] = {}
        self._children: dict[int, dict[int, None]] = {}
        self.users: dict[int, dict[str, Any]] = {}
        self._users_by_email: dict[str, dict[int, None]] = {}
        self._users_by_account: dict[str, dict[int, None]] = {}
        self._users_by_phone: dict[str, dict[int, None]] = {}
        self._users_by_group: dict[int, dict[int, None]] = {}
        self.devices: dict[str, dict[str, Any]] = {}
        self._device_order: dict[str, int] = {}
        self._devices_by_serial: dict[str, dict[str, None]] = {}
        self._devices_by_user: dict[int, dict[str, None]] = {}
        self._devices_by_group: dict[int, dict[str, None]] = {}
        self.tags: dict[int, dict[str, Any]] = {}
        self._tags_by_group: dict[int, dict[int, None]] = {}
        self.devicetags = _Links("deviceId")
        self.usertags = _Links("userId")
        self.grouptags = _Links("groupId")
        self.apps: dict[int, dict[str, Any]] = {}
        self._apps_by_key: dict[tuple[str, int, int], int] = {}
        #: every accepted device command: {seq, deviceId, serialNumber, command, payload, time}
        self.commands: list[dict[str, Any]] = []
        self._next = {"group": 1, "user": 1, "tag": 1, "app": 1}
        self._cache: dict[str, bytes] = {}

    # -- helpers --------------------------------------------------------------
    def _new_id(self, kind: str) -> int:
        value = self._next[kind]
        self._next[kind] = value + 1
        return value

    def _changed(self, *kinds: str) -> None:
        for kind in kinds:
            self._cache.pop(kind, None)

    def list_json(self, kind: str) -> bytes:
        """The full list of ``kind`` as JSON bytes, cached until it changes."""
        cached = self._cache.get(kind)
        if cached is None:
            rows: Iterable[dict[str, Any]]
            if kind in ("devicetags", "usertags", "grouptags"):
                rows = getattr(self, kind).rows.values()
            else:
                rows = getattr(self, kind).values()
            cached = json.dumps(list(rows), ensure_ascii=False).encode()
            self._cache[kind] = cached
        return cached

    def group(self, group_id: int) -> dict[str, Any]:
        try:
            return self.groups[group_id]
        except KeyError:
            raise _missing(f"Group {group_id} not found") from None

    def user(self, user_id: int) -> dict[str, Any]:
        try:
            return self.users[user_id]
        except KeyError:
            raise _missing(f"User {user_id} not found") from None

    def device(self, device_id: str) -> dict[str, Any]:
        try:
            return self.devices[device_id.lower()]
        except KeyError:
            raise _missing(f"Device {device_id} not found") from None

    def tag(self, tag_id: int) -> dict[str, Any]:
        try:
            return self.tags[tag_id]
        except KeyError:
            raise _missing(f"Tag {tag_id} not found") from None

    def app(self, app_id: int) -> dict[str, Any]:
        try:
            return self.apps[app_id]
        except KeyError:
            raise _missing(f"App {app_id} not found") from None

    def _check_group(self, group_id: int) -> None:
        """404 unless ``group_id`` is a group or 0 (the root, "All")."""
        if group_id:
            self.group(group_id)

    # -- groups ---------------------------------------------------------------
    def add_group(self, name: str, parent_id: int = 0) -> int:
        name = _text(name, "name", required=True) or ""
        if "/" in name or SEP in name:
            raise _bad("name must not contain / or \\")
        parent_path = ""
        if parent_id:
            parent_path = self.group(parent_id)["path"] + SEP
        group_id = self._new_id("group")
        path = parent_path + name
        self.groups[group_id] = {"id": group_id, "name": name, "parentId": parent_id, "path": path}
        _add(self._groups_by_path, path, group_id)
        _add(self._children, parent_id, group_id)
        self._changed("groups")
        return group_id

    def rename_group(self, group_id: int, name: str) -> None:
        group = self.group(group_id)
        name = _text(name, "name", required=True) or ""
        if "/" in name or SEP in name:
            raise _bad("name must not contain / or \\")
        group["name"] = name
        todo = [group_id]
        while todo:
            gid = todo.pop()
            g = self.groups[gid]
            _remove(self._groups_by_path, g["path"], gid)
            parent = self.groups.get(g["parentId"])
            g["path"] = (parent["path"] + SEP if parent else "") + g["name"]
            _add(self._groups_by_path, g["path"], gid)
            todo.extend(self._children.get(gid, ()))
        self._changed("groups")

    def delete_group(self, group_id: int) -> None:
        group = self.group(group_id)
        in_use = [
            ("subgroups", self._children.get(group_id)),
            ("users", self._users_by_group.get(group_id)),
            ("devices", self._devices_by_group.get(group_id)),
            ("tags", self._tags_by_group.get(group_id)),
            ("group tags", self.grouptags.by_owner.get(group_id)),
        ]
        linked = [what for what, ids in in_use if ids]
        if linked:
            raise ApiError(409, f"Group {group_id} cannot be deleted: it has linked {', '.join(linked)}")
        del self.groups[group_id]
        _remove(self._groups_by_path, group["path"], group_id)
        _remove(self._children, group["parentId"], group_id)
        self._changed("groups")

    def groups_by_path(self, path: str) -> list[dict[str, Any]]:
        """Groups whose full path is ``path`` (``/`` and ``\\`` both separate)."""
        key = path.replace("/", SEP).strip(SEP)
        return [self.groups[i] for i in self._groups_by_path.get(key, ())]

    def group_by_path(self, path: str) -> dict[str, Any]:
        """The one group at ``path``: 404 if none, 409 if several."""
        if not path.replace("/", SEP).strip(SEP):
            raise _bad("path must not be empty")
        found = self.groups_by_path(path)
        if not found:
            raise _missing(f"No group matches the path {path}")
        if len(found) > 1:
            raise ApiError(409, "More than one group matches the path")
        return found[0]

    # -- users ----------------------------------------------------------------
    #: a user's fields, in the order they are answered
    USER_FIELDS = (
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
    )
    #: what PUT may change (the doc's "Update a user" body)
    USER_UPDATABLE = frozenset(USER_FIELDS) - {"accountName", "accountGroup"}

    def _user_value(self, key: str, value: Any) -> Any:
        if key == "groupId":
            group_id = as_int(value, "groupId")
            self._check_group(group_id)
            return group_id
        return _text(value, key, required=key == "name")

    def _index_user(self, user: dict[str, Any], on: bool) -> None:
        op = _add if on else _remove
        uid = user["id"]
        if user.get("email") is not None:
            op(self._users_by_email, user["email"].lower(), uid)
        if user.get("accountName") is not None:
            op(self._users_by_account, user["accountName"], uid)
        if user.get("phoneNumber") is not None:
            op(self._users_by_phone, user["phoneNumber"], uid)
        op(self._users_by_group, user["groupId"], uid)

    def add_user(self, fields: dict[str, Any]) -> int:
        """Add a user; ``groupId`` omitted means the root (0)."""
        values = {
            key: self._user_value(key, fields.get(key, 0) if key == "groupId" else fields.get(key))
            for key in self.USER_FIELDS
        }
        user_id = self._new_id("user")
        user = self.users[user_id] = {"id": user_id, **values}
        self._index_user(user, True)
        self._changed("users")
        return user_id

    def update_user(self, user_id: int, fields: dict[str, Any]) -> None:
        """Change the fields given (unknown fields, and accountName, are ignored)."""
        user = self.user(user_id)
        changes = {key: self._user_value(key, value) for key, value in fields.items() if key in self.USER_UPDATABLE}
        self._index_user(user, False)
        user.update(changes)
        self._index_user(user, True)
        self._changed("users")
        if "name" in changes:
            for link in self.usertags.of_owner(user_id):
                link["userName"] = user["name"]
            self._changed("usertags")
        if "groupId" in changes:
            # "If the group of the user is changed, the devices of the user also will be moved."
            for device_id in list(self._devices_by_user.get(user_id, ())):
                self._move_device(self.devices[device_id], user["groupId"])
            self._changed("devices")

    def delete_user(self, user_id: int) -> None:
        user = self.user(user_id)
        devices = self._devices_by_user.get(user_id)
        if devices:
            raise ApiError(409, f"User {user_id} cannot be deleted: the user has {len(devices)} linked device(s)")
        for link_id in list(self.usertags.by_owner.get(user_id, ())):
            self.usertags.remove(link_id)
        self._index_user(user, False)
        del self.users[user_id]
        self._changed("users", "usertags")

    def search_users(
        self,
        *,
        email: str | None = None,
        phone: str | None = None,
        account: str | None = None,
        group_id: int | None = None,
        tag_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Users matching every given criterion (e-mail ignores case)."""
        sets: list[Iterable[int]] = []
        if email is not None:
            sets.append(self._users_by_email.get(email.lower(), {}))
        if phone is not None:
            sets.append(self._users_by_phone.get(phone, {}))
        if account is not None:
            sets.append(self._users_by_account.get(account, {}))
        if group_id is not None:
            sets.append(self._users_by_group.get(group_id, {}))
        if tag_id is not None:
            sets.append({link["userId"]: None for link in self.usertags.of_tag(tag_id)})
        if not sets:
            return list(self.users.values())
        ids = _intersect(sets)
        return [self.users[i] for i in sorted(ids)]

    # -- devices --------------------------------------------------------------
    def add_device(self, device: dict[str, Any]) -> str:
        """Add a device (the API cannot; used by seeding and tests)."""
        device_id = device["id"].lower()
        if device_id in self.devices:
            raise ApiError(409, f"Device {device_id} exists")
        row = {
            "id": device_id,
            "serialNumber": device["serialNumber"],
            "name": device.get("name"),
            "model": device.get("model"),
            "platform": device.get("platform"),
            "osVersion": device.get("osVersion"),
            "userId": None,
            "accountName": None,
            "groupId": device.get("groupId") or 0,
            "lastSeen": device.get("lastSeen"),
        }
        self.devices[device_id] = row
        self._device_order[device_id] = len(self._device_order)
        _add(self._devices_by_serial, row["serialNumber"], device_id)
        _add(self._devices_by_group, row["groupId"], device_id)
        if device.get("userId") is not None:
            self.assign_device(device_id, device["userId"])
        self._changed("devices")
        return device_id

    def remove_device(self, device_id: str) -> None:
        """Remove a device and its tag links (the API cannot; tests: a device
        deleted in the console since the look-up)."""
        device = self.device(device_id)
        for link_id in list(self.devicetags.by_owner.get(device["id"], ())):
            self.devicetags.remove(link_id)
        _remove(self._devices_by_serial, device["serialNumber"], device["id"])
        _remove(self._devices_by_group, device["groupId"], device["id"])
        if device["userId"] is not None:
            _remove(self._devices_by_user, device["userId"], device["id"])
        del self.devices[device["id"]]
        self._changed("devices", "devicetags")

    def _move_device(self, device: dict[str, Any], group_id: int) -> None:
        _remove(self._devices_by_group, device["groupId"], device["id"])
        device["groupId"] = group_id
        _add(self._devices_by_group, group_id, device["id"])

    def assign_device(self, device_id: str, user_id: int | None) -> None:
        """Link ``user_id`` to the device (None or 0 unlinks); the device
        follows the user's group."""
        device = self.device(device_id)
        user = self.user(user_id) if user_id else None
        if device["userId"] is not None:
            _remove(self._devices_by_user, device["userId"], device["id"])
        if user is None:
            device["userId"] = None
            device["accountName"] = None
        else:
            device["userId"] = user["id"]
            device["accountName"] = user["accountName"]
            _add(self._devices_by_user, user["id"], device["id"])
            self._move_device(device, user["groupId"])
        self._changed("devices")

    def devices_by_serial(self, serial: str) -> list[dict[str, Any]]:
        return [self.devices[i] for i in self._devices_by_serial.get(serial, ())]

    def devices_of_user(self, user_id: int) -> list[dict[str, Any]]:
        return [self.devices[i] for i in self._devices_by_user.get(user_id, ())]

    def search_devices(
        self,
        *,
        serial: str | None = None,
        group_id: int | None = None,
        user_id: int | None = None,
        account: str | None = None,
        tag_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Devices matching every given criterion (all exact)."""
        sets: list[Iterable[str]] = []
        if serial is not None:
            sets.append(self._devices_by_serial.get(serial, {}))
        if group_id is not None:
            sets.append(self._devices_by_group.get(group_id, {}))
        if user_id is not None:
            sets.append(self._devices_by_user.get(user_id, {}))
        if account is not None:
            sets.append(
                {d: None for u in self._users_by_account.get(account, ()) for d in self._devices_by_user.get(u, ())}
            )
        if tag_id is not None:
            sets.append({link["deviceId"]: None for link in self.devicetags.of_tag(tag_id)})
        if not sets:
            return list(self.devices.values())
        ids = _intersect(sets)
        return [self.devices[i] for i in sorted(ids, key=self._device_order.__getitem__)]

    def command(self, device_id: str, command: str, payload: dict[str, Any] | None) -> None:
        """Check and log a device command (see the doc's "Send commands")."""
        device = self.device(device_id)
        if command not in COMMANDS:
            raise _missing(f"Unknown command {command}")
        payload = payload or {}
        if command == "installapp":
            if payload.get("appId") is None:
                raise _bad("appId is required")
            app_id = as_int(payload["appId"], "appId")
            if "vpp" in payload and payload["vpp"] is not None and not isinstance(payload["vpp"], bool):
                raise _bad("vpp must be true or false")
            if app_id not in self.apps:
                raise _missing("App not found")
        elif command == "removeapp":
            _text(payload.get("identifier"), "identifier", required=True)
        elif command == "sendmessage":
            _text(payload.get("message"), "message", required=True)
        self.commands.append(
            {
                "seq": len(self.commands) + 1,
                "deviceId": device["id"],
                "serialNumber": device["serialNumber"],
                "command": command,
                "payload": payload,
                "time": _now(),
            }
        )

    def commands_for(self, device_id: str, command: str | None = None) -> list[dict[str, Any]]:
        device_id = device_id.lower()
        return [c for c in self.commands if c["deviceId"] == device_id and (command is None or c["command"] == command)]

    # -- tags -----------------------------------------------------------------
    def add_tag(self, fields: dict[str, Any]) -> int:
        name = _text(fields.get("name"), "name", required=True)
        description = _text(fields.get("description"), "description")
        group_id = as_int(fields["groupId"], "groupId") if fields.get("groupId") is not None else 0
        self._check_group(group_id)
        tag_id = self._new_id("tag")
        self.tags[tag_id] = {"id": tag_id, "name": name, "description": description, "groupId": group_id}
        _add(self._tags_by_group, group_id, tag_id)
        self._changed("tags")
        return tag_id

    def update_tag(self, tag_id: int, fields: dict[str, Any]) -> None:
        tag = self.tag(tag_id)
        changes: dict[str, Any] = {}
        if "name" in fields:
            changes["name"] = _text(fields["name"], "name", required=True)
        if "description" in fields:
            changes["description"] = _text(fields["description"], "description")
        if "groupId" in fields:
            changes["groupId"] = as_int(fields["groupId"], "groupId")
            self._check_group(changes["groupId"])
        if "groupId" in changes:
            _remove(self._tags_by_group, tag["groupId"], tag_id)
            _add(self._tags_by_group, changes["groupId"], tag_id)
        tag.update(changes)
        self._changed("tags")
        if "name" in changes:
            for link in self.devicetags.of_tag(tag_id):
                link["tagName"] = tag["name"]
            self._changed("devicetags")

    def delete_tag(self, tag_id: int) -> None:
        """Deletes the tag and its links (the doc forbids it only for tags
        with linked configurations, which the simulator does not have)."""
        tag = self.tag(tag_id)
        for links in (self.devicetags, self.usertags, self.grouptags):
            for link_id in list(links.by_tag.get(tag_id, ())):
                links.remove(link_id)
        _remove(self._tags_by_group, tag["groupId"], tag_id)
        del self.tags[tag_id]
        self._changed("tags", "devicetags", "usertags", "grouptags")

    def tags_by_name(self, name: str) -> list[dict[str, Any]]:
        return [t for t in self.tags.values() if t["name"] == name]

    # -- tag links --------------------------------------------------------------
    def link_device_tag(self, device_id: str, tag_id: int) -> int:
        """Link a tag to a device. A pair already linked gets a second link."""
        device = self.device(device_id)
        tag = self.tag(tag_id)
        link_id = self.devicetags.add(
            {"deviceId": device["id"], "tagId": tag_id, "serialNumber": device["serialNumber"], "tagName": tag["name"]}
        )
        self._changed("devicetags")
        return link_id

    def link_user_tag(self, user_id: int, tag_id: int) -> int:
        user = self.user(user_id)
        self.tag(tag_id)
        link_id = self.usertags.add({"userId": user_id, "tagId": tag_id, "userName": user["name"]})
        self._changed("usertags")
        return link_id

    def link_group_tag(self, group_id: int, tag_id: int) -> int:
        """Link a tag to a group; group 0 is "All"."""
        self._check_group(group_id)
        self.tag(tag_id)
        link_id = self.grouptags.add({"groupId": group_id, "tagId": tag_id})
        self._changed("grouptags")
        return link_id

    def unlink(self, kind: str, link_id: int) -> None:
        links: _Links = getattr(self, kind)
        if link_id not in links.rows:
            raise _missing(f"{_LINK_NAMES[kind]} {link_id} not found")
        links.remove(link_id)
        self._changed(kind)

    def link(self, kind: str, link_id: int) -> dict[str, Any]:
        links: _Links = getattr(self, kind)
        try:
            return links.rows[link_id]
        except KeyError:
            raise _missing(f"{_LINK_NAMES[kind]} {link_id} not found") from None

    def search_device_tags(self, *, device_id: str | None = None, serial: str | None = None) -> list[dict[str, Any]]:
        sets: list[Iterable[str]] = []
        if device_id is not None:
            sets.append({device_id.lower(): None})
        if serial is not None:
            sets.append(self._devices_by_serial.get(serial, {}))
        if not sets:
            return list(self.devicetags.rows.values())
        ids = sorted(i for d in _intersect(sets) for i in self.devicetags.by_owner.get(d, ()))
        return [self.devicetags.rows[i] for i in ids]

    def search_user_tags(self, *, user_id: int | None = None, email: str | None = None) -> list[dict[str, Any]]:
        sets: list[Iterable[int]] = []
        if user_id is not None:
            sets.append({user_id: None})
        if email is not None:
            sets.append(self._users_by_email.get(email.lower(), {}))
        if not sets:
            return list(self.usertags.rows.values())
        ids = sorted(i for u in _intersect(sets) for i in self.usertags.by_owner.get(u, ()))
        return [self.usertags.rows[i] for i in ids]

    def device_tags_of(self, device_id: str) -> list[str]:
        """Names of the tags linked to a device, once per link (a tag linked
        twice appears twice)."""
        return [link["tagName"] for link in self.devicetags.of_owner(device_id.lower())]

    def user_tags_of(self, user_id: int) -> list[str]:
        """Names of the tags linked to a user, once per link."""
        return [self.tags[link["tagId"]]["name"] for link in self.usertags.of_owner(user_id)]

    def duplicate_links(self) -> list[tuple[str, int]]:
        """(device id, tag id) pairs linked more than once."""
        return self.devicetags.duplicates()  # type: ignore[return-value]

    def duplicate_user_links(self) -> list[tuple[int, int]]:
        """(user id, tag id) pairs linked more than once."""
        return self.usertags.duplicates()  # type: ignore[return-value]

    # -- apps -----------------------------------------------------------------
    #: an app's fields in answer order: (name, type, required by the doc)
    APP_FIELDS = (
        ("name", str, True),
        ("description", str, False),
        ("company", str, True),
        ("packageId", str, True),
        ("versionText", str, True),
        ("versionNumber", int, False),
        ("platform", int, True),
        ("size", int, True),
        ("store", int, True),
        ("storeId", str, True),
        ("imageUrl", str, False),
    )

    def upsert_app(self, fields: dict[str, Any]) -> int:
        """Add an app, or update the one with the same packageId, platform
        and store (the doc's "Add or update app")."""
        values: dict[str, Any] = {}
        for key, kind, required in self.APP_FIELDS:
            raw = fields.get(key)
            if kind is str:
                values[key] = _text(raw, key, required=required)
            elif raw is None:
                if required:
                    raise _bad(f"{key} is required")
                values[key] = None
            else:
                values[key] = as_int(raw, key)
        if values["platform"] not in (0, 1, 2, 3):
            raise _bad("platform must be 0 (iOS), 1 (Android), 2 (macOS) or 3 (tvOS)")
        if values["store"] not in (0, 1, 2):
            raise _bad("store must be 0 (Appstore), 1 (Play) or 2 (In house)")
        if values["size"] < 0:
            raise _bad("size must not be negative")
        # "<imageData> and <imageUrl> cannot be combined": exactly one of them
        image_data = _text(fields.get("imageData"), "imageData")
        if image_data and values["imageUrl"]:
            raise _bad("imageData and imageUrl cannot be combined")
        if not image_data and not values["imageUrl"]:
            raise _bad("imageData or imageUrl is required")
        if image_data:
            try:
                base64.b64decode(image_data, validate=True)
            except (binascii.Error, ValueError):
                raise _bad("imageData must be base64") from None
        app_key = (values["packageId"], values["platform"], values["store"])
        app_id = self._apps_by_key.get(app_key)
        if app_id is None:
            app_id = self._apps_by_key[app_key] = self._new_id("app")
        self.apps[app_id] = {"id": app_id, **values}
        self._changed("apps")
        return app_id

    def apps_by_name(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.apps.values() if a["name"] == name]

    # -- for tests --------------------------------------------------------------
    def summary(self) -> dict[str, int]:
        return {
            "groups": len(self.groups),
            "users": len(self.users),
            "devices": len(self.devices),
            "assignedDevices": sum(1 for d in self.devices.values() if d["userId"] is not None),
            "tags": len(self.tags),
            "devicetags": len(self.devicetags.rows),
            "usertags": len(self.usertags.rows),
            "grouptags": len(self.grouptags.rows),
            "apps": len(self.apps),
            "commands": len(self.commands),
            "duplicateDeviceTagLinks": len(self.devicetags.duplicates()),
            "duplicateUserTagLinks": len(self.usertags.duplicates()),
        }


#: a search filter: the search's keyword and how to read the query's value
_Filter = tuple[str, Callable[[web.Request, str], Any]]

_LINK_NAMES = {"devicetags": "Device tag", "usertags": "User tag", "grouptags": "Group tag"}


def _intersect(sets: list[Iterable[Any]]) -> set[Any]:
    ordered = sorted(sets, key=len)  # type: ignore[arg-type]
    result = set(ordered[0])
    for other in ordered[1:]:
        if not result:
            break
        result.intersection_update(other)
    return result


# -- seeding ------------------------------------------------------------------

_TAG_GROUPS = {
    "Gymnasiet": "Skolor\\Norra gymnasiet",
    "Skrivare Norra": "Skolor\\Norra gymnasiet",
    "Wi-Fi Personal": "Personal",
}
_TAG_DESCRIPTIONS = {
    "Elev-iPad": "iPad utlämnad till elev",
    "Lärare": "Personalens enheter",
    "Prov-läge": "Låst läge vid prov",
    "Lånedator": "Utlånad från biblioteket",
    "Kiosk-läge": "En app i helskärm",
    "Trasig": "Inlämnad för service",
    "Dubblett": "Skapad två gånger av misstag",
}


def _kind(model: str) -> str:
    return "iPad" if "iPad" in model else "Chromebook" if "Chromebook" in model else "surfplatta"


def _genitive(first: str) -> str:
    return first if first.endswith(("s", "x", "z")) else first + "s"


def seed_state(  # noqa: C901 (one pass over the district, in the order the ids must come)
    state: DuoState, *, devices: int = 3000, users: int | None = None, seed: int = 1
) -> DuoState:
    """Fill an empty ``state`` with the district and the :data:`FACTS`."""
    group_ids: dict[str, int] = {}
    for path in fleet.school_groups(seed):
        parent, _, name = path.rpartition(SEP)
        group_ids[path] = state.add_group(name, group_ids[parent] if parent else 0)
    dup_parent, _, dup_name = FACTS["duplicate_group_path"].rpartition(SEP)
    state.add_group(dup_name, group_ids[dup_parent])

    for name in fleet.TAG_NAMES:
        group = _TAG_GROUPS.get(name)
        state.add_tag(
            {"name": name, "description": _TAG_DESCRIPTIONS.get(name), "groupId": group_ids[group] if group else 0}
        )
    tag_ids = {t["name"]: t["id"] for t in reversed(state.tags.values())}  # first of a duplicate name wins

    for name, company, package, app_platform, store, store_id, version in fleet.APP_CATALOG:
        state.upsert_app(
            {
                "name": name,
                "description": f"{name} från {company}",
                "company": company,
                "packageId": package,
                "versionText": version,
                "versionNumber": int(version.split(".")[0]),
                "platform": app_platform,
                "size": 20_000_000 + 1_000_000 * (len(package) % 97),
                "store": store,
                "storeId": store_id,
                "imageUrl": f"https://mdm.norrby.se/icons/{package}.png",
            }
        )

    # -- edge cases first, so their ids are the same for every seed and size
    company = fleet.MUNICIPALITY

    def add_device(
        device_id: str,
        serial: str,
        name: str,
        model: tuple[str, str, str],
        owner: int | None,
        group_id: int,
        last_seen: str | None,
    ) -> None:
        """``model``: (model, platform, OS version), as :func:`fleet.device_model` gives it."""
        model_name, platform, os_version = model
        state.add_device(
            {
                "id": device_id,
                "serialNumber": serial,
                "name": name,
                "model": model_name,
                "platform": platform,
                "osVersion": os_version,
                "userId": owner,
                "groupId": group_id,
                "lastSeen": last_seen,
            }
        )

    def edge_user(name: str, email: str, account: str, group: str, position: str) -> int:
        school = group.split(SEP)[1] if group.startswith("Skolor") else "Förvaltningen"
        return state.add_user(
            {
                "name": name,
                "email": email,
                "phoneNumber": None,
                "accountName": account,
                "accountGroup": "Elever" if position == "Elev" else "Personal",
                "groupId": group_ids[group],
                "company": company,
                "office": school,
                "department": group.split(SEP)[-1],
                "position": position,
            }
        )

    asa = edge_user("Åsa Öberg", "asa.oberg@skola.se", "asaobe01", "Skolor\\Björkskolan\\Klass 7A", "Elev")
    edge_user("Kim Lindqvist", "kim.lindqvist@skola.se", "kimlin01", "Skolor\\Norra gymnasiet\\Klass 9A", "Elev")
    edge_user("Kim Lindqvist", "kim.lindqvist@skola.se", "kimlin02", "Skolor\\Ekbackens skola\\Klass 8A", "Elev")
    edge_user("Sam Nyström", "sam.nystrom@skola.se", "samnys01", "Personal\\Administration", "Administratör")
    lars = edge_user("Lars Håkansson", "lars.hakansson@skola.se", "larhak01", "Personal\\Lärare", "Lärare")
    edge_user("Märta Sjöberg", "marta.sjoberg@skola.se", "marsjo01", FACTS["user_in_group"]["group"], "Elev")
    edge_user("Maja Ekström", FACTS["mixed_case_email"], "majeks01", "Skolor\\Södra skolan\\Klass 7B", "Elev")

    ipad = ("iPad (9th generation)", "iOS", "17.6.1")
    chrome = ("Lenovo 300e Chromebook Gen 3", "ChromeOS", "126.0.6478.222")
    lab = group_ids["Skolor\\Norra gymnasiet"]
    edge_devices = [
        (FACTS["duplicate_serial"], "NOR-IPAD-DUP1", ipad, None, lab),
        (FACTS["duplicate_serial"], "NOR-IPAD-DUP2", ipad, None, lab),
        ("OBERGIPAD001", "Åsas iPad", ipad, asa, 0),
        ("OBERGCHROME1", "Åsas Chromebook", chrome, asa, 0),
        ("TAGGEDIPAD01", "NOR-IPAD-PROV", ipad, None, lab),
        ("FREEIPAD0001", "BJO-IPAD-RESERV", ipad, None, group_ids["Skolor\\Björkskolan"]),
        ("ASSIGNEDPAD1", "Lars iPad", ipad, lars, 0),
        (FACTS["leading_zero_serial"], "EKB-IPAD-0001", ipad, None, group_ids["Skolor\\Ekbackens skola"]),
    ]
    for (serial, name, described, owner, group_id), device_id in zip(edge_devices, _EDGE_GUIDS, strict=True):
        add_device(device_id, serial, name, described, owner, group_id, "2025-01-14T13:37:00Z")
    state.link_device_tag(FACTS["tagged_device"]["id"], tag_ids["Prov-läge"])
    state.link_user_tag(lars, tag_ids["Lärare"])
    state.link_group_tag(group_ids["Skolor\\Norra gymnasiet"], tag_ids["Gymnasiet"])
    state.link_group_tag(group_ids["Personal\\Lärare"], tag_ids["Lärare"])
    state.link_group_tag(group_ids["Skolor"], tag_ids["Wi-Fi Elev"])

    # -- the generated district
    n_edge_users = len(state.users)
    n_users = max(0, (users if users is not None else round(devices * 0.8)) - n_edge_users)
    taken = {u["email"].lower() for u in state.users.values()} | {u["accountName"] for u in state.users.values()}
    classes = fleet.class_groups()
    rng = random.Random(f"bulkmdm-duostation:{seed}")
    staff: list[Any] = []
    pupils: list[Any] = []
    for person in fleet.people(n_users, seed, taken=taken):
        is_staff = rng.random() < 0.1
        group = (
            rng.choice(("Personal\\Lärare", "Personal\\Lärare", "Personal\\Administration"))
            if is_staff
            else rng.choice(classes)
        )
        user_id = state.add_user(
            {
                "name": person.name,
                "email": person.email,
                "phoneNumber": person.phone if is_staff or rng.random() < 0.3 else None,
                "accountName": person.account,
                "accountGroup": "Personal" if is_staff else "Elever",
                "groupId": group_ids[group],
                "company": company,
                "office": group.split(SEP)[1] if not is_staff else "Förvaltningen",
                "department": group.split(SEP)[-1],
                "position": ("Lärare" if "Lärare" in group else "Administratör") if is_staff else "Elev",
            }
        )
        (staff if is_staff else pupils).append((user_id, person, group))
        if is_staff and "Lärare" in group and rng.random() < 0.6:
            state.link_user_tag(user_id, tag_ids["Lärare"])
        elif not is_staff and rng.random() < 0.03:
            state.link_user_tag(user_id, tag_ids["Specialpedagog"])

    n_devices = max(0, devices - len(edge_devices))
    reserved = {d["serialNumber"] for d in state.devices.values()}
    serial_list = [s for s in fleet.serials(n_devices + len(reserved), seed) if s not in reserved][:n_devices]
    owners = staff + pupils
    rng.shuffle(owners)
    n_assigned = round(n_devices * 0.7) if owners else 0
    guid_rng = random.Random(f"bulkmdm-duostation-guids:{seed}")
    for i, serial in enumerate(serial_list):
        described = fleet.device_model(rng)
        model, platform, _ = described
        device_id = fleet.guid(guid_rng)
        while device_id in state.devices:
            device_id = fleet.guid(guid_rng)
        owner = owners[i % len(owners)] if i < n_assigned else None
        owner_id: int | None = None
        if owner is not None:
            owner_id, owner_person, group = owner
            name = f"{_genitive(owner_person.first)} {_kind(model)}"
            group_id = 0
        else:
            group = rng.choice(classes)
            name = f"{fleet.school_code(group)}-{_kind(model).upper()}-{i:04d}"
            group_id = group_ids[group if rng.random() < 0.5 else group.rpartition(SEP)[0]]
        add_device(device_id, serial, name, described, owner_id, group_id, fleet.last_seen(rng))
        if group.startswith("Personal"):
            if rng.random() < 0.7:
                state.link_device_tag(device_id, tag_ids["Lärare"])
        else:
            if platform == "iOS" and owner is not None and rng.random() < 0.5:
                state.link_device_tag(device_id, tag_ids["Elev-iPad"])
            grade = group.split(SEP)[-1][6:7]
            if rng.random() < 0.3:
                state.link_device_tag(device_id, tag_ids[f"Åk {grade}"])
            if owner is None and rng.random() < 0.2:
                state.link_device_tag(device_id, tag_ids["Lånedator"])
        if rng.random() < 0.02:
            state.link_device_tag(device_id, tag_ids[rng.choice(("Trasig", "Service", "Ny 2024", "Ny 2025"))])
    return state


# -- HTTP -----------------------------------------------------------------------

_JSON = "application/json"


def _json(data: Any, *, bom: bool = False) -> web.Response:
    body = json.dumps(data, ensure_ascii=False).encode()
    return web.Response(body=b"\xef\xbb\xbf" + body if bom else body, content_type=_JSON, charset="utf-8")


def _ok() -> web.Response:
    return web.Response(status=200)


def _created(new_id: int) -> web.Response:
    # "Id of the newly created ...": a bare JSON number
    return web.Response(body=str(new_id).encode(), content_type=_JSON, charset="utf-8")


async def _body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        if optional:
            return {}
        raise _bad("The request body must be a JSON object")
    # "Data in DELETE-, PUT- and POST-commands must be structured as JSON
    # objects": a form or text body is refused the way ASP.NET refuses it.
    if "json" not in request.content_type:
        raise ApiError(
            415,
            f"The request body must be JSON (Content-Type: application/json), not {request.content_type or 'untyped'}",
        )
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _bad("The request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise _bad("The request body must be a JSON object")
    return data


def _id_of(request: web.Request, what: str) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit():
        raise _missing(f"{what} {raw} not found")
    return int(raw)


def _q(request: web.Request, name: str) -> str | None:
    return request.query.get(name)


def _qint(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    return None if value is None else as_int(value, name, quoted=True)


def _required(data: dict[str, Any], name: str) -> Any:
    if data.get(name) is None or data.get(name) == "":
        raise _bad(f"{name} is required")
    return data[name]


def _auth_middleware(username: str, password: str, shape: Shape) -> Any:
    expected = (username, password)
    token = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/api"):
            header = request.headers.get("Authorization", "")
            if header != token and basic_credentials(header) != expected:
                raise ApiError(
                    shape.auth_status,
                    "Authorization has been denied for this request.",
                    {"WWW-Authenticate": f'Basic realm="{REALM}"'} if shape.auth_status == 401 else None,
                )
        return await handler(request)

    return middleware


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response({"message": exc.message}, status=exc.status, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response(
            {"message": exc.reason},
            status=exc.status,
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
        )


@dataclass
class Shape:
    """How ``/api`` answers are shaped; the defaults are the doc's plain reading."""

    #: answer a full (unfiltered) list of the ``limited`` kinds with only its
    #: first n objects (tags and apps, which have no search, stay whole)
    list_limit: int | None = None
    limited: tuple[str, ...] = ("devices", "users", "devicetags", "usertags", "groups")
    #: wrap every array answer as ``{wrap: [...]}``
    wrap: str | None = None
    #: field names in PascalCase (``SerialNumber``), as Json.NET writes by default
    pascal_case: bool = False
    #: integer ids (``id``, ``userId``, ``tagId``, ``groupId``, ``parentId``) as strings
    string_ids: bool = False
    #: the status for ``GET /api/groups?path=`` matching several groups
    ambiguous_group_status: int = 409
    #: JSON answers start with a UTF-8 byte order mark (as .NET's Encoding.UTF8 writes)
    bom: bool = False
    #: ``GET /api/devicetags`` / ``/api/usertags`` without a search parameter
    #: refused with this status (a server that wants ``?deviceId=`` / ``?userId=``)
    unfiltered_links_status: int | None = None
    #: device/user tags answered as the linked tag (``id``/``name`` of the tag)
    #: with the link's own id as ``deviceTagId`` / ``userTagId``
    links_as_tags: bool = False
    #: the status for refused credentials (some servers answer 403)
    auth_status: int = 401
    #: ``?path=`` with a leading or trailing separator (``\\Skolor\\``) matches nothing
    exact_group_paths: bool = False
    # -- hostile answers: what bulkmdm must never read as success --
    #: (kind, field) pairs answered without a value, e.g. ``("devices", "id")``:
    #: every device comes with ``"id": null`` (renamed to ``"oldId"`` with
    #: ``hidden_renamed``); kinds: groups, users, devices, tags, apps,
    #: devicetags, usertags
    hidden: tuple[tuple[str, str], ...] = ()
    hidden_renamed: bool = False
    #: how a change (POST, PUT, DELETE under /api) is answered: None as the doc
    #: says; "empty": done, answered 200 with no body; "ignored": a tag link
    #: not made, answered 200 with no body (other changes as the doc says);
    #: "html": not done, 200 with a sign-in page; "refused": not done, 200
    #: with ``{"success": false, "message": ...}``
    change_answer: str | None = None
    #: searches (``?serialNumber=``, ``?email=``, ``?path=``, ``?deviceId=`` ...)
    #: ignore their parameters and answer the whole, uncut list
    ignore_filters: bool = False

    @property
    def plain(self) -> bool:
        return self == Shape()


_ID_KEYS = frozenset({"id", "userId", "tagId", "groupId", "parentId", "appId"})


def _shaped(data: Any, shape: Shape, kind: str = "") -> Any:
    if isinstance(data, list):
        return [_shaped(x, shape, kind) for x in data]
    if isinstance(data, dict):
        hidden = {name for what, name in shape.hidden if what == kind}
        out: dict[str, Any] = {}
        for key, value in data.items():
            if shape.string_ids and key in _ID_KEYS and isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            if key in hidden:
                if not shape.hidden_renamed:
                    value = None
                else:
                    key = "old" + key[:1].upper() + key[1:]
            out[key[:1].upper() + key[1:] if shape.pascal_case else key] = value
        return out
    return data


def _wrapped(data: Any, wrap: str | None) -> Any:
    """``data`` under ``wrap`` (dots nest: ``"result.rows"``)."""
    if not wrap or not isinstance(data, list):
        return data
    for key in reversed(wrap.split(".")):
        data = {key: data}
    return data


_SIGN_IN_PAGE = (
    b"<!DOCTYPE html><html><head><title>Sign in</title></head>"
    b"<body><form method=post action=/login>Your session has expired.</form></body></html>"
)


def _change_answers(shape: Shape) -> Any:
    """Answers a change as ``shape.change_answer`` says (see :class:`Shape`)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        mode = shape.change_answer
        if mode is None or request.method in ("GET", "HEAD") or not request.path.startswith("/api"):
            return await handler(request)
        if mode == "html":
            return web.Response(body=_SIGN_IN_PAGE, content_type="text/html", charset="utf-8")
        if mode == "refused":
            return _json({"success": False, "message": "The operation could not be completed."})
        if mode == "ignored":
            if request.method == "POST" and request.path in ("/api/devicetags", "/api/usertags"):
                return web.Response(status=200)
            return await handler(request)
        response = await handler(request)
        return web.Response(status=200) if mode == "empty" and response.status == 200 else response

    return middleware


def _request_log(log: deque[dict[str, Any]]) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/api"):
            raw = await request.read()  # aiohttp keeps it for the handler
            body: Any = None
            if raw:
                try:
                    body = json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    body = raw.decode("utf-8", errors="replace")
            log.append(
                {
                    "method": request.method,
                    "path": request.raw_path,
                    "contentType": request.content_type if raw else None,
                    "body": body,
                }
            )
        return await handler(request)

    return middleware


def _routes(state: DuoState, shape: Shape) -> web.RouteTableDef:
    r = web.RouteTableDef()

    def cached(kind: str) -> web.Response:
        if shape.plain:
            return web.Response(body=state.list_json(kind), content_type=_JSON, charset="utf-8")
        rows = json.loads(state.list_json(kind))
        if shape.list_limit is not None and kind in shape.limited:
            rows = rows[: shape.list_limit]
        return out(rows, kind)

    def out(data: Any, kind: str) -> web.Response:
        if shape.plain:
            return _json(data)
        return _json(_wrapped(_shaped(data, shape, kind), shape.wrap), bom=shape.bom)

    def links(kind: str, rows: list[dict[str, Any]] | None) -> web.Response:
        """A device/user tag list, as ``shape`` says (``None``: the unfiltered list)."""
        if rows is None:
            if shape.unfiltered_links_status is not None:
                raise ApiError(shape.unfiltered_links_status, "A search parameter is required.")
            if not shape.links_as_tags:
                return cached(kind)
            rows = json.loads(state.list_json(kind))
            if shape.list_limit is not None and kind in shape.limited:
                rows = rows[: shape.list_limit]
        if shape.links_as_tags:
            link_id = kind[:-4] + "TagId"
            rows = [
                {
                    link_id: row["id"],
                    **{k: v for k, v in row.items() if k not in ("id", "tagId")},
                    "id": row["tagId"],
                    "name": state.tag(row["tagId"])["name"],
                }
                for row in rows
            ]
        return out(rows, kind)

    def rows_or_list(kind: str, rows: list[dict[str, Any]] | None) -> web.Response:
        return cached(kind) if rows is None else out(rows, kind)

    def listing(
        kind: str,
        search: Callable[..., list[dict[str, Any]]] | None = None,
        filters: dict[str, _Filter] | None = None,
        *,
        answer: Callable[[str, list[dict[str, Any]] | None], web.Response] = rows_or_list,
    ) -> None:
        """GET /api/<kind>: the whole list, or the ``search`` by the query's
        ``filters`` (query name -> the search's keyword and how to read the
        value); a server that ignores filters answers every object."""
        by = filters or {}

        async def get_list(request: web.Request) -> web.Response:
            rows: list[dict[str, Any]] | None = None
            if search is not None and request.query.keys() & by.keys():
                if shape.ignore_filters:
                    rows = json.loads(state.list_json(kind))
                else:
                    rows = search(**{arg: read(request, name) for name, (arg, read) in by.items()})
            return answer(kind, rows)

        r.get(f"/api/{kind}")(get_list)

    def objects(
        kind: str,
        key: Callable[[web.Request], Any],
        one: Callable[[Any], dict[str, Any]],
        *,
        update: Callable[[Any, dict[str, Any]], None] | None = None,
        add: Callable[[dict[str, Any]], int] | None = None,
        delete: Callable[[Any], None] | None = None,
    ) -> None:
        """The doc's endpoints on one object of ``kind``: GET and, where
        given, PUT (after a 404 for an unknown id), POST and DELETE."""

        async def get_one(request: web.Request) -> web.Response:
            return out(one(key(request)), kind)

        r.get(f"/api/{kind}/{{id}}")(get_one)
        if update is not None:
            change = update

            async def put_one(request: web.Request) -> web.Response:
                object_id = key(request)
                one(object_id)
                change(object_id, await _body(request))
                return _ok()

            r.put(f"/api/{kind}/{{id}}")(put_one)
        if add is not None:
            create = add

            async def post_one(request: web.Request) -> web.Response:
                return _created(create(await _body(request)))

            r.post(f"/api/{kind}")(post_one)
        if delete is not None:
            remove = delete

            async def delete_one(request: web.Request) -> web.Response:
                remove(key(request))
                return _ok()

            r.delete(f"/api/{kind}/{{id}}")(delete_one)

    def numbered(what: str) -> Callable[[web.Request], int]:
        return lambda request: _id_of(request, what)

    # -- groups
    @r.get("/api/groups")
    async def groups(request: web.Request) -> web.Response:
        path = _q(request, "path")
        if path is not None and shape.ignore_filters:
            return out(json.loads(state.list_json("groups")), "groups")
        if path is not None:
            if shape.exact_group_paths and path != path.strip().strip("\\/"):
                raise _missing(f"No group matches the path {path}")
            try:
                return out(state.group_by_path(path), "groups")
            except ApiError as exc:
                if exc.status == 409:
                    exc.status = shape.ambiguous_group_status
                raise
        return cached("groups")

    def add_group(data: dict[str, Any]) -> int:
        parent = data.get("parentId")
        return state.add_group(_required(data, "name"), 0 if parent is None else as_int(parent, "parentId"))

    objects(
        "groups",
        numbered("Group"),
        state.group,
        update=lambda group_id, data: state.rename_group(group_id, _required(data, "name")),
        add=add_group,
        delete=state.delete_group,
    )

    # -- users
    listing(
        "users",
        state.search_users,
        {
            "email": ("email", _q),
            "phoneNumber": ("phone", _q),
            "account": ("account", _q),
            "groupId": ("group_id", _qint),
            "tagId": ("tag_id", _qint),
        },
    )
    objects(
        "users", numbered("User"), state.user, update=state.update_user, add=state.add_user, delete=state.delete_user
    )

    # -- devices
    listing(
        "devices",
        state.search_devices,
        {
            "serialNumber": ("serial", _q),
            "groupId": ("group_id", _qint),
            "userId": ("user_id", _qint),
            "accountName": ("account", _q),
            "tagId": ("tag_id", _qint),
        },
    )

    def assign(device_id: str, data: dict[str, Any]) -> None:
        if "userId" not in data:
            raise _bad("userId is required")
        # null or 0 unlinks the user (the doc only shows linking)
        state.assign_device(device_id, None if data["userId"] is None else as_int(data["userId"], "userId"))

    objects("devices", lambda request: request.match_info["id"], state.device, update=assign)

    @r.post("/api/devices/{id}/{command}")
    async def command(request: web.Request) -> web.Response:
        device_id, name = request.match_info["id"], request.match_info["command"]
        state.device(device_id)
        if name not in COMMANDS:
            raise _missing(f"Unknown command {name}")
        payload = await _body(request, optional=name not in ("installapp", "removeapp", "sendmessage"))
        state.command(device_id, name, payload)
        return _ok()

    # -- tags
    listing("tags")
    objects("tags", numbered("Tag"), state.tag, update=state.update_tag, add=state.add_tag, delete=state.delete_tag)

    # -- tag links
    def add_device_tag(data: dict[str, Any]) -> int:
        device_id = _required(data, "deviceId")
        if not isinstance(device_id, str):
            raise _bad("deviceId must be a GUID string")
        return state.link_device_tag(device_id, as_int(_required(data, "tagId"), "tagId"))

    def add_user_tag(data: dict[str, Any]) -> int:
        user_id = as_int(_required(data, "userId"), "userId", quoted=True)
        return state.link_user_tag(user_id, as_int(_required(data, "tagId"), "tagId"))

    def add_group_tag(data: dict[str, Any]) -> int:
        if data.get("groupId") is None or data.get("groupId") == "":
            raise _bad("groupId is required")
        group_id = as_int(data["groupId"], "groupId", quoted=True)
        return state.link_group_tag(group_id, as_int(_required(data, "tagId"), "tagId"))

    listing(
        "devicetags",
        state.search_device_tags,
        {"deviceId": ("device_id", _q), "serialNumber": ("serial", _q)},
        answer=links,
    )
    listing("usertags", state.search_user_tags, {"userId": ("user_id", _qint), "email": ("email", _q)}, answer=links)
    listing("grouptags")
    for kind, add in (("devicetags", add_device_tag), ("usertags", add_user_tag), ("grouptags", add_group_tag)):
        objects(
            kind,
            numbered(_LINK_NAMES[kind]),
            functools.partial(state.link, kind),
            add=add,
            delete=functools.partial(state.unlink, kind),
        )

    # -- apps
    listing("apps")
    objects("apps", numbered("App"), state.app, add=state.upsert_app)

    # -- simulator-only, no auth
    @r.get("/_sim/state/summary")
    async def summary(request: web.Request) -> web.Response:
        return _json(state.summary())

    @r.get("/_sim/commands")
    async def commands(request: web.Request) -> web.Response:
        log: list[dict[str, Any]] = state.commands
        device_id, name = _q(request, "deviceId"), _q(request, "command")
        if device_id is not None:
            log = [c for c in log if c["deviceId"] == device_id.lower()]
        if name is not None:
            log = [c for c in log if c["command"] == name]
        return _json(log)

    return r


def client_env(*, username: str, password: str, partition: str) -> dict[str, str]:
    """What ``bulkmdm run`` needs against this simulator: its HTTP Basic account."""
    return {"BULKMDM_USERNAME": username, "BULKMDM_PASSWORD": password}


def make_app(
    *,
    devices: int = 3000,
    users: int | None = None,
    seed: int = 1,
    username: str = "admin",
    password: str = "admin",
    faults: Faults | None = None,
    shape: Shape | None = None,
) -> web.Application:
    """A DuoSTATION simulator with a freshly seeded district.

    ``devices``/``users``: sizes (users default to 80% of devices; the
    :data:`FACTS` edge cases are always there and count towards both).
    The state is ``app["state"]`` (a :class:`DuoState`), the answer shape
    ``app["shape"]`` (a :class:`Shape`), the last 10,000 ``/api`` requests
    ``app["requests"]``."""
    state = seed_state(DuoState(), devices=devices, users=users, seed=seed)
    shape = shape or Shape()
    log: deque[dict[str, Any]] = deque(maxlen=10_000)
    app = web.Application(
        middlewares=[
            _request_log(log),
            _error_middleware,
            _auth_middleware(username, password, shape),
            _change_answers(shape),
        ]
    )
    with warnings.catch_warnings():
        # a plain string key, like common.py's app["faults"], so tests can write app["state"]
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        app["state"] = state
        app["shape"] = shape
        app["requests"] = log
    app.add_routes(_routes(state, shape))
    instrument(app, faults)
    return app
