"""A simulator of Banyan's "UsersDevices" API (vendor doc:
banyan-users-devices-api.txt), seeded from :mod:`bulkmdm.sim.fleet`.

Endpoints, as the doc writes them (Bearer token auth; 401 otherwise):

    GET    /v1/endusers                 bare array; ``{"endusers": [...], "count": N}``
                                        when ``skip`` or ``limit`` is given
    GET    /v1/devices                  same, under ``"devices"``
    DELETE /v1/v1/delete_device         ?SerialNumber=..[&Email=..]
    POST   /v1/mdm/update_device        ?SerialNumber=..  body ``[{"Banned": "TRUE"}]``
    DELETE /v2/endusers                 body ``{"enduser_ids": [...]}``

The doc spells the listing's query parameters two ways (table: ``Skip``,
``Limit``, ``Serialnumber``, ``OrderBy``; examples: ``skip``, ``limit``,
``serialnumber``); both spellings are accepted, nothing else is. Where the
doc is exact the simulator is strict: ``SerialNumber`` and ``Email`` on the
device endpoints are matched in exactly that case, ``update_device`` wants a
JSON array under ``Content-Type: application/json`` (the doc's "ContentType:
application/json" header), and ``DELETE /v2/endusers`` a JSON object with
``enduser_ids``; anything else is a 400.

``real=True`` (``bulkmdm sim banyan --real``; :attr:`Org.real`) answers as
Banyan's service does where it differs from the doc, as its own client
(banyansecurity/pybanyan) and its published OpenAPI description show:

    GET    /v2/enduser                  ``{"data": {"endusers": [{"id", "email", "name",
                                        "status", ...}], "count": N}}``, ``skip``/``limit``
                                        paging; inactive end users are listed too
                                        (``"status": "Inactive"``) unless ``active=true``
    GET    /v1/endusers                 as the doc shows it: no id in the objects
    POST   /v1/mdm/update_device        one JSON object, ``"Banned": true | false``; an
                                        array is a 400
    DELETE /v1/delete_device            the only delete path (``/v1/v1/...`` is a 404)

Without it the simulator is the doc taken literally: no ``/v2/enduser``
(a 404), an ``ID`` in the v1 end-user objects (CONTRACT.md: "an ``ID`` field
of the v1 end-user object where a server has one"), arrays only for
``update_device`` and ``/v1/v1/delete_device`` only.

Switches on the :class:`Org` for what a real server may do that the doc leaves
open: ``max_limit`` (pages capped below ``limit``), ``reject_limit_above`` (a
400 for a large ``limit``), ``emails_in_pages`` (paginated pages without
``Emails``, as in the doc's paginated example), ``delete_paths`` (which of
``/v1/v1/delete_device`` and ``/v1/delete_device`` answer), ``exact_emails``
(``delete_device`` matches ``Email`` case-sensitively), ``devices_status``
(``GET /v1/devices`` answers only this error status), ``no_route_status``
(what a delete path that does not exist answers: 404, or 405 as some gateways
do) and ``blank_fields`` (listed objects of these ids show ``null`` for that
field, e.g. a device without ``DeviceID``).

Seeded edge cases (deterministic for a seed): every tenth device is banned;
some devices have two users and some users two devices; two extra devices
share the serial :data:`DUPLICATE_SERIAL`; one extra device has a blank
serial; :data:`LONELY_USERS` end users have no device. ``app["state"]`` is
the :class:`Org`; its ``log`` records every change per object
(``"device:<DeviceID>"`` / ``"user:<ID>"``), so tests can tell a change that
was applied twice.
"""

from __future__ import annotations

import json
import random
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from . import fleet
from .common import Faults, auth_middleware, instrument

#: the port the README's "Try it on a simulator" and `bulkmdm demo` serve it on
PORT = 8083
#: what ``real=True`` (`bulkmdm sim banyan --real`) changes, for the command's help
REAL = "end-user ids only in GET /v2/enduser, object bodies only, /v1/delete_device only"

DUPLICATE_SERIAL = "DUPLICATE001"
LONELY_USERS = 3
#: the doc's path for "Delete Enduser Device", and the one Banyan's OpenAPI
#: spec gives (``/v1/delete_device``); which ones answer is switchable
DOC_DELETE_PATH = "/v1/v1/delete_device"
SHORT_DELETE_PATH = "/v1/delete_device"

_DEVICE_SORT = {"serialnumber": "SerialNumber", "devicefriendlyname": "DeviceFriendlyName", "model": "Model"}
_USER_SORT = {"name": "Name", "email": "Email"}
_OWNERSHIP = ("Corporate Dedicated", "Corporate Shared", "Employee Owned")
_ARCH = {"iOS": "arm64", "ChromeOS": "x86_64", "Android": "arm64"}


def _fold(text: str) -> str:
    return text.strip().casefold()


class Org:
    """One organisation's end users and devices, with O(1) look-ups."""

    def __init__(self, *, real: bool = False) -> None:
        #: answer as Banyan's service does, not as the doc writes (module docstring)
        self.real = real
        self.users: dict[str, dict[str, Any]] = {}  # ID -> end user (active ones)
        self.inactive: dict[str, dict[str, Any]] = {}  # ID -> end user marked inactive
        self.by_email: dict[str, str] = {}  # folded email -> ID
        self.devices: dict[str, dict[str, Any]] = {}  # DeviceID -> device
        self.by_serial: defaultdict[str, list[str]] = defaultdict(list)
        self.devices_by_email: defaultdict[str, set[str]] = defaultdict(set)
        self.inactive_devices: set[str] = set()
        self.log: defaultdict[str, list[str]] = defaultdict(list)
        #: which delete paths answer (None: the doc's, or the real one when ``real``)
        self.delete_paths: set[str] | None = None
        #: the status of a delete path that does not answer
        self.no_route_status = 404
        #: object id (DeviceID / ID) -> field shown as null in listings
        self.blank_fields: dict[str, str] = {}
        #: the most a page may hold whatever ``limit`` asks (None: no cap)
        self.max_limit: int | None = None
        #: answer 400 to a ``limit`` above this (None: any limit is fine)
        self.reject_limit_above: int | None = None
        #: False: paginated device pages leave out ``Emails``, like the doc's
        #: paginated example (its non-paginated example has them)
        self.emails_in_pages = True
        #: True: ``delete_device`` matches ``Email`` in exactly the case Banyan
        #: holds it (the doc does not say; a server may well compare bytes)
        self.exact_emails = False
        #: answer ``GET /v1/devices`` with this status (None: answer normally)
        self.devices_status: int | None = None
        self._requests = 0

    # -- building -----------------------------------------------------------
    def add_user(self, user: dict[str, Any]) -> None:
        self.users[user["ID"]] = user
        self.by_email[_fold(user["Email"])] = user["ID"]

    def add_device(self, device: dict[str, Any], users: Iterable[dict[str, Any]]) -> None:
        self.devices[device["DeviceID"]] = device
        self.by_serial[device["SerialNumber"]].append(device["DeviceID"])
        for user in users:
            device["Emails"].append(user["Email"])
            self.devices_by_email[_fold(user["Email"])].add(device["DeviceID"])
            if device["SerialNumber"] not in user["SerialNumbers"]:
                user["SerialNumbers"].append(device["SerialNumber"])

    # -- reading (for tests) ------------------------------------------------
    def with_serial(self, serial: str) -> list[dict[str, Any]]:
        return [self.devices[d] for d in self.by_serial.get(serial, ())]

    def user(self, email: str) -> dict[str, Any] | None:
        uid = self.by_email.get(_fold(email))
        return self.users.get(uid) if uid else None

    def unique_devices(self, *, banned: bool | None = None, users: int | None = None) -> list[dict[str, Any]]:
        """Devices whose serial is theirs alone (optionally by ban state / user count)."""
        out = []
        for device in self.devices.values():
            serial = device["SerialNumber"]
            if not serial or len(self.by_serial[serial]) != 1:
                continue
            if banned is not None and (device["Banned"] == "TRUE") != banned:
                continue
            if users is not None and len(device["Emails"]) != users:
                continue
            out.append(device)
        return out

    # -- changing -----------------------------------------------------------
    def _unlink(self, device: dict[str, Any], email: str) -> None:
        """Remove one end user <-> device mapping; delete whichever side is left alone."""
        folded = _fold(email)
        device["Emails"] = [e for e in device["Emails"] if _fold(e) != folded]
        self.devices_by_email[folded].discard(device["DeviceID"])
        uid = self.by_email.get(folded)
        user = self.users.get(uid) if uid else None
        if user is None:
            return
        serial = device["SerialNumber"]
        if not any(self.devices[d]["SerialNumber"] == serial for d in self.devices_by_email[folded]):
            user["SerialNumbers"] = [s for s in user["SerialNumbers"] if s != serial]
        if not self.devices_by_email[folded]:
            # "If the mentioned user ... is registered on only the mentioned
            # device then that user will also get deleted"
            del self.users[user["ID"]]
            del self.by_email[folded]
            self.log[f"user:{user['ID']}"].append("delete")

    def _drop_device(self, device: dict[str, Any]) -> None:
        del self.devices[device["DeviceID"]]
        ids = self.by_serial[device["SerialNumber"]]
        ids.remove(device["DeviceID"])
        if not ids:
            del self.by_serial[device["SerialNumber"]]
        self.log[f"device:{device['DeviceID']}"].append("delete")

    def delete_device(self, serial: str, email: str | None) -> None:
        for device in self.with_serial(serial):
            if email is None:
                for mail in list(device["Emails"]):
                    self._unlink(device, mail)
                self._drop_device(device)
                continue
            if not any(_fold(e) == _fold(email) for e in device["Emails"]):
                continue
            self._unlink(device, email)
            self.log[f"device:{device['DeviceID']}"].append(f"unlink {_fold(email)}")
            if not device["Emails"]:
                # "If the mentioned device has only the mentioned user
                # registered then the device will also get deleted"
                self._drop_device(device)

    def deactivate(self, ids: list[str]) -> None:
        for uid in ids:
            user = self.users.pop(uid)
            self.inactive[uid] = user
            del self.by_email[_fold(user["Email"])]
            self.log[f"user:{uid}"].append("delete")
            for dev_id in self.devices_by_email.get(_fold(user["Email"]), ()):
                device = self.devices[dev_id]
                if not any(_fold(e) in self.by_email for e in device["Emails"]):
                    self.inactive_devices.add(dev_id)
                    self.log[f"device:{dev_id}"].append("inactive")

    def delete_routes(self) -> set[str]:
        if self.delete_paths is not None:
            return self.delete_paths
        return {SHORT_DELETE_PATH} if self.real else {DOC_DELETE_PATH}

    def shown(self, obj: dict[str, Any], oid: str) -> dict[str, Any]:
        """An object as a listing shows it (``blank_fields`` applied)."""
        blank = self.blank_fields.get(oid)
        return {**obj, blank: None} if blank else obj

    def request_id(self) -> str:
        self._requests += 1
        return f"sim-{self._requests:06d}"


def seed_org(devices: int, seed: int, *, real: bool = False) -> Org:
    rng = random.Random(f"bulkmdm-banyan:{seed}")
    org = Org(real=real)
    n_people = max(1, devices * 4 // 5)
    people = fleet.people(n_people + LONELY_USERS + 2, seed)
    groups = fleet.class_groups()
    users = []
    for k, person in enumerate(people):
        group = groups[k % len(groups)].split("\\")
        user = {
            "ID": fleet.guid(rng),
            "Name": person.name,
            "Email": person.email,
            "Groups": f"{group[1]},{group[2]},Everyone",
            "LastLogin": 1_736_900_000_000_000_000 - rng.randrange(10**15),
            "LoginCount": rng.randrange(1, 500),
            "SerialNumbers": [],
            "TrustData": {
                "EntityTrustscore": 100,
                "OverrideTrustscore": 100,
                "AccessTrustscore": 100,
                "OverrideActive": "FALSE",
                "Level": "AlwaysAllow",
                "UpdatedAt": 0,
                "Factors": [],
            },
            "Roles": ["all-students" if k % 9 else "all-staff"],
        }
        users.append(user)
        org.add_user(user)
    serials = fleet.serials(devices, seed)

    def make_device(serial: str, owners: list[dict[str, Any]], banned: bool) -> None:
        model, platform, os_version = fleet.device_model(rng)
        device = {
            "DeviceID": fleet.guid(rng),
            "SerialNumber": serial,
            "DeviceFriendlyName": f"{owners[0]['Name'].split()[0]}s {model.split(' (')[0]}" if owners else "",
            "Emails": [],
            "LastLogin": 1_736_900_000_000_000_000 - rng.randrange(10**15),
            "LoginCount": rng.randrange(1, 2000),
            "Ownership": rng.choice(_OWNERSHIP),
            "Platform": platform,
            "Model": model,
            "Architecture": _ARCH.get(platform, "arm64"),
            "RegisteredStatus": "TRUE",
            "MdmData": {"Timestamp": 0, "Source": "BNN", "CompromisedStatus": "FALSE", "CompliantStatus": ""},
            "TrustData": {
                "EntityTrustscore": 100,
                "OverrideTrustscore": 100,
                "AccessTrustscore": 100,
                "OverrideActive": "FALSE",
                "Level": "High",
                "UpdatedAt": 0,
                "Factors": [],
            },
            "Roles": ["Developer"],
            "Banned": "TRUE" if banned else "FALSE",
            "OS": os_version,
            "AppVersion": "3.9.0",
        }
        org.add_device(device, owners)

    for i, serial in enumerate(serials):
        owners = [users[i % n_people]]
        if i % 25 == 7:  # a shared device: two end users registered on it
            owners.append(users[(i + 1) % n_people])
        make_device(serial, owners, banned=i % 10 == 3)
    extra = users[n_people + LONELY_USERS :]
    make_device(DUPLICATE_SERIAL, [extra[0]], banned=False)
    make_device(DUPLICATE_SERIAL, [extra[1]], banned=False)
    make_device("", [users[0]], banned=False)
    return org


# -- the HTTP side -------------------------------------------------------------


def _param(request: web.Request, *names: str) -> str | None:
    for name in names:
        if name in request.query:
            return request.query[name]
    return None


class _BadRequest(Exception):
    pass


def _int(request: web.Request, *names: str) -> int | None:
    raw = _param(request, *names)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(f"{names[0]} must be an integer") from None
    if value < 0:
        raise _BadRequest(f"{names[0]} must not be negative")
    return value


def _listing(
    request: web.Request,
    org: Org,
    items: list[dict[str, Any]],
    key: str,
    sortable: dict[str, str],
    shape: Callable[[dict[str, Any]], dict[str, Any]],
) -> web.Response:
    try:
        skip = _int(request, "skip", "Skip")
        limit = _int(request, "limit", "Limit")
    except _BadRequest as exc:
        return web.json_response({"message": str(exc)}, status=400)
    order_by = _param(request, "orderby", "OrderBy")
    order = (_param(request, "order", "Order") or "asc").casefold()
    if order not in ("asc", "desc"):
        return web.json_response({"message": "order must be asc or desc"}, status=400)
    if order_by:
        field = sortable.get(order_by.casefold())
        if field is None:
            return web.json_response({"message": f"cannot order by {order_by}"}, status=400)
        items = sorted(items, key=lambda o: str(o.get(field, "")).casefold(), reverse=order == "desc")
    if skip is None and limit is None:
        # "this API response changes when you add the pagination query
        # parameters: skip and limit"
        return web.json_response([shape(o) for o in items])
    if limit is not None and org.reject_limit_above is not None and limit > org.reject_limit_above:
        return web.json_response({"message": f"limit must not exceed {org.reject_limit_above}"}, status=400)
    start = skip or 0
    size = len(items) if limit is None else limit
    if org.max_limit is not None:
        size = min(size, org.max_limit)
    page = [shape(o) for o in items[start : start + size]]
    if key == "devices" and not org.emails_in_pages:
        page = [{k: v for k, v in d.items() if k != "Emails"} for d in page]
    return web.json_response({key: page, "count": len(items)})


def _v2_user(org: Org, user: dict[str, Any], active: bool) -> dict[str, Any]:
    """An end user as ``GET /v2/enduser`` shows one (pybanyan's ``UserV2``
    reads ``name``, ``email``, ``status``, ``last_login``, ``security_roles``;
    CONTRACT.md: the id is ``id``)."""
    obj = {
        "id": user["ID"],
        "name": user["Name"],
        "email": user["Email"],
        "status": "Active" if active else "Inactive",
        "created_at": 1_700_000_000_000_000_000,
        "last_login": user["LastLogin"],
        "security_roles": user["Roles"],
    }
    return org.shown(obj, user["ID"])


def _no_route(org: Org) -> web.Response:
    # as a Go server's router answers a path it does not have
    return web.Response(status=org.no_route_status, text=f"{org.no_route_status} page not found")


#: the fields ``update_device`` changes (the doc's example body; pybanyan sends OS too)
_UPDATABLE = ("Model", "Ownership", "Platform", "OS", "Architecture", "Banned")


def _device_changes(body: Any, *, real: bool) -> dict[str, str] | str:
    """The fields an ``update_device`` body sets, or why it is refused.

    The doc: an array of device objects, ``"Banned": "TRUE"``. The real
    service (pybanyan's ``DeviceAPI.update``, Banyan's Google Apps Script
    integration): one object, ``"Banned": true``; it decodes into a typed
    object, so an array or a string for the boolean is a 400.
    """
    if real:
        if not isinstance(body, dict):
            return "request body must be a JSON object"
        objects = [body]
        if "Banned" in body and not isinstance(body["Banned"], bool):
            return "Banned must be true or false"
    else:
        if not isinstance(body, list) or not body or not all(isinstance(o, dict) for o in body):
            return "request body must be an array of device objects"
        objects = body
    changes: dict[str, str] = {}
    for obj in objects:
        for name in _UPDATABLE:
            if name in obj and obj[name] is not None:
                changes[name] = str(obj[name])
    if "Banned" in changes:
        banned = changes["Banned"].upper()
        if banned not in ("TRUE", "FALSE"):
            return 'Banned must be "TRUE" or "FALSE"'
        changes["Banned"] = banned
    return changes


class _Api:
    """The documented endpoints over one :class:`Org` (and the real service's, see the module docstring)."""

    def __init__(self, org: Org) -> None:
        self.org = org

    async def get_endusers(self, request: web.Request) -> web.Response:
        serial = _param(request, "serialnumber", "Serialnumber")
        email = _param(request, "email", "Email")
        name = _param(request, "name", "Name")
        if email is not None:
            user = self.org.user(email)
            items = [user] if user else []
        else:
            items = list(self.org.users.values())
        if serial is not None:
            items = [u for u in items if serial in u["SerialNumbers"]]
        if name is not None:
            items = [u for u in items if _fold(u["Name"]) == _fold(name)]

        def shape(user: dict[str, Any]) -> dict[str, Any]:
            shown = self.org.shown(user, user["ID"])
            # the doc's v1 examples carry no id; the real service keeps it to v2
            return {k: v for k, v in shown.items() if k != "ID"} if self.org.real else shown

        return _listing(request, self.org, items, "endusers", _USER_SORT, shape)

    async def get_v2_endusers(self, request: web.Request) -> web.Response:
        if not self.org.real:
            return _no_route(self.org)  # the doc documents no end-user listing under v2
        try:
            skip = _int(request, "skip") or 0
            limit = _int(request, "limit")
        except _BadRequest as exc:
            return web.json_response(
                {"request_id": self.org.request_id(), "error_code": 400, "error_description": str(exc), "data": None},
                status=400,
            )
        only_active = (_param(request, "active") or "").casefold() == "true"
        listed = [(u, True) for u in self.org.users.values()]
        if not only_active:
            listed += [(u, False) for u in self.org.inactive.values()]
        listed.sort(key=lambda pair: pair[0]["ID"])
        size = len(listed) if limit is None else limit
        if self.org.max_limit is not None:
            size = min(size, self.org.max_limit)
        page = [_v2_user(self.org, user, active) for user, active in listed[skip : skip + size]]
        return web.json_response(
            {
                "request_id": self.org.request_id(),
                "error_code": 0,
                "error_description": "",
                "data": {"endusers": page, "count": len(listed)},
            }
        )

    async def get_devices(self, request: web.Request) -> web.Response:
        if self.org.devices_status is not None:
            return web.json_response({"message": "device list unavailable"}, status=self.org.devices_status)
        serial = _param(request, "serialnumber", "Serialnumber")
        email = _param(request, "email", "Email")
        model = _param(request, "model", "Model")
        friendly = _param(request, "devicefriendlyname", "DeviceFriendlyName")
        if serial is not None:
            items = self.org.with_serial(serial)
        elif email is not None:
            items = [self.org.devices[d] for d in sorted(self.org.devices_by_email.get(_fold(email), ()))]
        else:
            items = list(self.org.devices.values())
        if email is not None:
            items = [d for d in items if any(_fold(e) == _fold(email) for e in d["Emails"])]
        if model is not None:
            items = [d for d in items if _fold(d["Model"]) == _fold(model)]
        if friendly is not None:
            items = [d for d in items if _fold(d["DeviceFriendlyName"]) == _fold(friendly)]
        return _listing(request, self.org, items, "devices", _DEVICE_SORT, lambda d: self.org.shown(d, d["DeviceID"]))

    async def delete_device(self, request: web.Request) -> web.Response:
        if request.path not in self.org.delete_routes():
            return _no_route(self.org)
        serial = request.query.get("SerialNumber")
        email = request.query.get("Email") or None
        if not serial:
            return web.json_response({"message": "SerialNumber is a compulsory parameter"}, status=400)
        found = self.org.with_serial(serial)
        if not found:
            return web.json_response({"message": f"no device with serial number {serial}"}, status=400)
        if email is not None and self.org.exact_emails and not any(e == email for d in found for e in d["Emails"]):
            return web.json_response(
                {"message": f"no device with serial number {serial} is registered to {email}"}, status=400
            )
        if email is not None and not any(_fold(e) == _fold(email) for d in found for e in d["Emails"]):
            return web.json_response(
                {"message": f"no device with serial number {serial} is registered to {email}"}, status=400
            )
        self.org.delete_device(serial, email)
        return web.json_response("Successfully deleted end user device")

    async def update_device(self, request: web.Request) -> web.Response:
        def refuse(message: str) -> web.Response:
            return web.json_response({"Message": message} if self.org.real else [{"Message": message}], status=400)

        serial = request.query.get("SerialNumber")
        if not serial:
            return refuse("SerialNumber is required")
        # The doc's request headers: "ContentType: application/json".
        if request.content_type != "application/json":
            return refuse("Content-Type must be application/json")
        try:
            body = json.loads(await request.text())
        except ValueError:
            return refuse("request body is not JSON")
        changes = _device_changes(body, real=self.org.real)
        if isinstance(changes, str):
            return refuse(changes)
        found = self.org.with_serial(serial)
        if not found:
            return refuse(f"no device with serial number {serial}")
        # "Updates all end user devices for given serial number"
        for device in found:
            device.update(changes)
            entry = {"TRUE": "ban", "FALSE": "unban"}.get(changes.get("Banned", ""), "update")
            self.org.log[f"device:{device['DeviceID']}"].append(entry)
        # pybanyan reads the answer's "Message" from an object; the doc shows an array
        return web.json_response({"Message": "Success"} if self.org.real else [{"Message": "Success"}])

    async def delete_endusers(self, request: web.Request) -> web.Response:
        def answer(status: int, description: str, data: Any) -> web.Response:
            return web.json_response(
                {
                    "request_id": self.org.request_id(),
                    "error_code": 0 if status == 200 else status,
                    "error_description": description,
                    "data": data,
                },
                status=status,
            )

        try:
            body = json.loads(await request.text())
        except ValueError:
            return answer(400, "request body is not JSON", None)
        ids = body.get("enduser_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            return answer(400, "enduser_ids must be a non-empty array of ids", None)
        if any(i not in self.org.users for i in ids):
            return answer(400, "record not found", None)
        self.org.deactivate(list(dict.fromkeys(ids)))
        return answer(200, "", "successfully marked the endusers as inactive")


def client_env(*, username: str, password: str, partition: str) -> dict[str, str]:
    """What ``bulkmdm run`` needs against this simulator: the bearer token it accepts."""
    return {"BULKMDM_TOKEN": "banyan-token"}


def make_app(
    *,
    devices: int = 1000,
    seed: int = 1,
    username: str = "admin",
    password: str = "admin",
    faults: Faults | None = None,
    token: str = "banyan-token",
    real: bool = False,
) -> web.Application:
    """A Banyan API on its own: ``devices`` seeded devices (plus the edge cases).

    ``real``: answer as Banyan's service does where it differs from the doc
    (see the module docstring).

    ``username`` and ``password`` are accepted so that ``bulkmdm sim`` can call
    every simulator alike; Banyan takes only the Bearer ``token``.
    """
    del username, password
    org = seed_org(devices, seed, real=real)

    def bearer(header: str) -> bool:
        scheme, _, value = header.partition(" ")
        return scheme.casefold() == "bearer" and value == token

    refused = auth_middleware(bearer, lambda: web.json_response({"message": "Unauthorized"}, status=401))
    app = web.Application(middlewares=[refused])
    with warnings.catch_warnings():
        # a plain string key, like common.instrument's app["faults"]
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        app["state"] = org

    api = _Api(org)
    app.router.add_get("/v1/endusers", api.get_endusers)
    app.router.add_get("/v1/devices", api.get_devices)
    app.router.add_get("/v2/enduser", api.get_v2_endusers)
    app.router.add_delete(DOC_DELETE_PATH, api.delete_device)
    app.router.add_delete(SHORT_DELETE_PATH, api.delete_device)
    app.router.add_post("/v1/mdm/update_device", api.update_device)
    app.router.add_delete("/v2/endusers", api.delete_endusers)
    return instrument(app, faults)
