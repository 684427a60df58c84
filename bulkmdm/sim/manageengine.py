"""A ManageEngine MDM simulator (vendor doc: manageengine-mdm-api-v1.txt).

The API is served twice, as the two editions publish it:

* on-premises: ``/api/v1/mdm/...`` with ``Authorization: <api key>``;
* cloud: ``/api/v1/...`` with ``Authorization: Zoho-oauthtoken <token>``,
  the token issued by a Zoho-style OAuth endpoint on the same app,
  ``POST /oauth/v2/token`` (``grant_type=refresh_token``), so tests point
  ``BULKMDM_OAUTH_URL`` at the simulator. Tokens expire after
  ``access_token_ttl`` seconds; a missing, unknown or expired token is a 401.

Endpoints (under either prefix), with the doc's wrapping keys::

    GET    devices                         {"devices": [device, ...]}
    GET    devices/{device_id}             device details (with serial_number)
    GET    devices/{device_id}/apps        {"apps": [...], "installed_apps": [...]}
    GET    groups                          {"groups": [group, ...]}
    GET    groups/{group_id}               group
    GET    groups/{group_id}/members       {"member_ids": [...]}
    POST   groups/{group_id}/members       {"member_ids": [...]} -> 200, the same
    POST   groups/{group_id}/members/{id}  -> 202
    DELETE groups/{group_id}/members/{id}  -> 204
    GET    apps                            {"apps": [app, ...]}
    GET    apps/{app_id}                   app
    POST   apps/{app_id}/devices           {"device_ids": [...], "silent_install", ...} -> 200, the ids
    POST   apps/{app_id}/devices/{id}      -> 202
    DELETE apps/{app_id}/devices/{id}      -> 204

Errors are the doc's body, ``{"error_code", "error_description",
"localized_error_description"}``, with the codes of its "Common Error codes"
table (COM0005 bad body, COM0008 unknown resource, COM0013 bad token ...).

Where the doc is silent, the simulator behaves as a plausible real server:

* the device list carries ``serial_number`` (the doc's list example shows only
  some fields; its detail example has ``serial_number``) and the app list
  carries ``bundle_identifier`` (same); unknown values are ``"--"`` as in the
  doc's examples;
* a list of ids in a POST body that holds any unknown id fails as a whole
  (400 COM0005) and changes nothing;
* adding a member that is already in the group, or associating an app that
  is already associated, is accepted (a set) -- but it is written to the
  per-device action log, so tests catch a change sent twice;
* removing a member that is not in the group is 404 COM0008;
* ``state.conflict_on_duplicate = True``: adding a member already in the
  group, or associating an app already associated, is 409 COM0010 "Resource
  Already Exists" for the whole request, which changes nothing;
* ``state.unauthorized_status = 403``: a refused key or token is answered
  403 (with COM0013) instead of 401;
* no paging, as in the doc's examples -- unless a test sets
  ``state.page_size``; then the lists (devices, groups, apps) answer pages as
  ManageEngine's API does (group members too): ``offset``/``limit`` query parameters,
  ``"metadata": {"total_record_count": n}`` and ``"paging": {"next": <url>}``
  (``state.next_links = False`` leaves the link out); bad paging
  parameters are 400 COM0003;
* ``state.string_ids = True``: the device list gives ``device_id`` as a
  string (some servers do), while bodies still need numbers;
* ``state.doc_fields = True``: list items carry only the fields of the doc's
  list examples -- devices without ``serial_number``, apps without
  ``bundle_identifier`` -- which a client must read from the details;
* POST bodies must be JSON (``Content-Type: application/json``, as in every
  curl example) and ids in them JSON numbers ("device_ids": [ 1, 2, 3 ],
  type long); anything else is 400 COM0005;
* the doc's API call limits ("100 API calls/minute", "2500 API calls/day")
  are enforced when ``state.calls_per_window`` / ``state.calls_per_day`` are
  set (off by default so demos and benchmarks run fast): over them, 429
  COM0002 "API Limit Exceeded" with no Retry-After (the doc names none).
  Refused calls do not count. ``state.limit_window`` is the window's length
  (60 s; tests shorten it);
* ``state.strict_headers = True``: a request without the examples'
  ``Content-Type: application/json`` header, GET and DELETE included, is
  422 COM0011 "Invalid / Missing headers";
* ``state.own_device_app_ids = True``: "Get device app list" entries carry
  an ``app_id`` of their own, not the repository's (the doc's examples:
  9007199254741340 there, 99731238129 in the App Repository); only the
  ``identifier`` ties them to an app;
* ``state.read_errors = n``: the next ``n`` reads (GET) answer 500 COM0004
  "Internal server error, Please try again in a moment";
* ``state.no_id[id] = "missing"`` (or ``"null"``): that device's, group's or
  app's list entry comes without its id field (or with it null);
* the token endpoint reads its parameters from the query string and a form
  body (``state.token_params`` = "query" or "form" reads only one), and
  records where they came from in ``state.token_sources``.

Two behaviours (``make_app(real=...)``, ``bulkmdm sim manageengine --real``):

* ``real=False`` (the doc): the cloud edition answers under the doc's cloud
  base ``/api/v1/...`` only; ``/api/v1/mdm/...`` is the on-premises edition,
  and a cloud token sent there meets a 404 (the doc's cloud has no such path).
* ``real=True`` (what public clients of the cloud meet): both editions answer
  under ``/api/v1/mdm/...`` (every public cloud client calls
  ``https://mdm.manageengine.com/api/v1/mdm/devices``) and ``/api/v1/...``
  is 404; the device list keeps de-enrolled records beside the current one
  of the same serial (``"is_removed": "true"``; current ones ``"false"``, as
  strings, the way public clients compare them), listed first, with their own
  ``device_id``; ``exclude_removed=true`` leaves them out of a list page
  (unless ``state.honour_exclude_removed`` is False), and a ``paging.next``
  link does not carry it. A removed record still takes changes (a client that
  picks it acts on a dead record); its action log shows that.

Simulator-only (no auth): ``GET /_sim/log`` (the per-device action log) and
the ``/_sim`` routes of :mod:`bulkmdm.sim.common`.
"""

from __future__ import annotations

import json
import random
import secrets
import time
import warnings
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from aiohttp import web

from . import fleet
from .common import CheckIns, Faults, instrument

__all__ = ["FACTS", "PORT", "REAL", "MEState", "client_env", "make_app"]

#: the port the README's "Try it on a simulator" and `bulkmdm demo` serve it on
PORT = 8082
#: what ``real=True`` (`bulkmdm sim manageengine --real`) changes, for the command's help
REAL = "the cloud API under /api/v1/mdm only, de-enrolled device records beside re-enrolled ones"

DEVICE_ID_BASE = 9007199254741000  # above 2**53, like the doc's example ids
GROUP_ID_BASE = 9007199254751000
APP_ID_BASE = 9007199254761000
#: what own_device_app_ids adds to an app's id in a device's app list
DEVICE_APP_ID_OFFSET = 100000
#: a removed (de-enrolled) twin's id is its live device's id plus this
REMOVED_ID_OFFSET = 800000

#: The deliberate edge cases every seed and size holds. Tests assert them.
FACTS: dict[str, Any] = {
    # two device records share one serial (a re-enrolled device)
    "duplicate_serial": "DUPSERIAL001",
    "duplicate_serial_device_ids": [DEVICE_ID_BASE + 0, DEVICE_ID_BASE + 1],
    # two devices whose serial the MDM does not know ("--", as the doc writes unknowns)
    "no_serial_device_ids": [DEVICE_ID_BASE + 2, DEVICE_ID_BASE + 3],
    # a serial with leading zeros
    "leading_zero_serial": "001234567890",
    "leading_zero_device_id": DEVICE_ID_BASE + 4,
    # a device already in group "Lånedatorer"
    "member_device": {"id": DEVICE_ID_BASE + 5, "serial": "MEMBERIPAD01"},
    # a device in no group, with no apps
    "free_device": {"id": DEVICE_ID_BASE + 6, "serial": "FREEIPAD0001"},
    # a device with Keynote associated and installed
    "app_device": {"id": DEVICE_ID_BASE + 7, "serial": "APPIPAD00001"},
    "edge_devices": 8,
    # real behaviour: these devices (and every tenth ordinary one) also have a
    # removed (de-enrolled) record with the same serial, id + REMOVED_ID_OFFSET
    "removed_twin_of": [DEVICE_ID_BASE + 4, DEVICE_ID_BASE + 5, DEVICE_ID_BASE + 6, DEVICE_ID_BASE + 7],
    # an ordinary group, and the group the member device is in
    "group": {"id": GROUP_ID_BASE + 10, "name": "Björkskolan Klass 8A"},
    "member_group": {"id": GROUP_ID_BASE + 0, "name": "Lånedatorer"},
    # two groups with the same name
    "duplicate_group_name": "Reserv",
    "duplicate_group_ids": [GROUP_ID_BASE + 2, GROUP_ID_BASE + 3],
    # an app name shared by two apps (iOS and Android) and a bundle id shared by two
    "shared_app_name": "Google Chrome",
    "shared_bundle_identifier": "se.skolverket.app",
    # an app with a unique name and bundle identifier
    "app": {"id": APP_ID_BASE + 11, "name": "Kahoot!", "bundle_identifier": "no.mobitroll.kahoot-app"},
    "installed_app": {"id": APP_ID_BASE + 7, "name": "Keynote", "bundle_identifier": "com.apple.iWork.Keynote"},
}

_FIXED_GROUPS = ("Lånedatorer", "Lärare", "Reserv", "Reserv", "Prov-läge")

#: the doc's platform names and ids (device: platform_type / platform_type_id)
_PLATFORMS = {"iOS": ("ios", 1), "Android": ("android", 2), "ChromeOS": ("chrome", 4)}

ERRORS = {
    "COM0001": (405, "Method not implemented / Invalid URL"),
    "COM0002": (429, "API Limit Exceeded"),
    "COM0003": (400, "Invalid paging params"),
    "COM0004": (500, "Internal server error, Please try again in a moment"),
    "COM0005": (400, "Parameters in post were invalid or missing"),
    "COM0006": (400, "No request data recieved"),
    "COM0008": (404, "Unknown Resource"),
    "COM0010": (409, "Resource Already Exists"),
    "COM0011": (422, "Invalid / Missing headers"),
    "COM0013": (401, "Not Authorised/ Invalid auth token"),
}


class ApiError(Exception):
    """Answered with the doc's error body for ``code``."""

    def __init__(self, code: str, detail: str = "") -> None:
        status, description = ERRORS[code]
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description
        self.detail = detail


def _error_response(exc: ApiError) -> web.Response:
    # the doc: { "error_code": 1002, "error_description": "Unknown ID", "localized_error_description": ... }
    return web.json_response(
        {"error_code": exc.code, "error_description": exc.description, "localized_error_description": exc.description},
        status=exc.status,
    )


class MEState:
    """The simulator's data. Every look-up is a dict access. Call methods from
    the server's loop (``SimServer.call(lambda: state.…)``)."""

    def __init__(
        self, *, api_key: str, client_id: str, client_secret: str, refresh_token: str, access_token_ttl: float
    ) -> None:
        self.api_key = api_key
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.access_token_ttl = access_token_ttl
        self.devices: dict[int, dict[str, Any]] = {}
        #: de-enrolled records (real behaviour): id -> device, and live id -> its removed twin's id
        self.removed: dict[int, dict[str, Any]] = {}
        self.twin_of: dict[int, int] = {}
        #: answer as the real cloud does (see the module docstring)
        self.real = False
        #: a list asked with exclude_removed=true leaves removed records out
        self.honour_exclude_removed = True
        #: how many device list pages were asked with exclude_removed=true
        self.exclude_removed_asked = 0
        #: device, group or app id -> "missing" or "null": its list entry
        #: comes without that id (renamed, or null)
        self.no_id: dict[int, str] = {}
        self.groups: dict[int, dict[str, Any]] = {}
        #: group id -> member device ids (a dict as an ordered set)
        self.members: dict[int, dict[int, None]] = {}
        self.apps: dict[int, dict[str, Any]] = {}
        #: app id -> devices it is associated with
        self.associations: dict[int, dict[int, None]] = {}
        #: device id -> app ids installed on it
        self.installed: dict[int, dict[int, None]] = {}
        #: when a device takes an app install or removal (default: at once)
        self.checkins = CheckIns()
        #: device id -> every change applied to it, e.g. "add-to-group:<group id>"
        self.log: dict[int, list[str]] = {}
        #: access token -> expiry (time.monotonic())
        self.tokens: dict[str, float] = {}
        self.token_grants = 0
        self.token_refusals = 0
        self.unauthorized = 0
        #: None: one answer, as the doc shows; a number: pages of that size
        self.page_size: int | None = None
        #: pages link the next one (else only metadata.total_record_count tells)
        self.next_links = True
        #: list items with only the fields of the doc's list examples
        self.doc_fields = False
        #: every request must carry the examples' JSON Content-Type (422 COM0011)
        self.strict_headers = False
        #: the device list gives device_id as a string (bodies still want numbers)
        self.string_ids = False
        #: the doc's API call limits (None: not enforced)
        self.calls_per_window: int | None = None
        self.calls_per_day: int | None = None
        self.limit_window = 60.0
        self.calls: list[float] = []
        self.calls_today = 0
        self.limited = 0
        #: device app list entries carry their own app_id (not the repository's)
        self.own_device_app_ids = False
        #: the next this many GETs answer 500 COM0004
        self.read_errors = 0
        #: adding a member already in the group, or associating an app already
        #: associated, is 409 COM0010 "Resource Already Exists" (else a set)
        self.conflict_on_duplicate = False
        #: the status of a refused credential: the doc's table has both "401
        #: Unauthorized (Invalid AuthToken)" and "403 Forbidden ... possibly not
        #: an user of the respective organization"; COM0013 either way
        self.unauthorized_status = 401
        #: where the token endpoint reads parameters: "either", "query", "form"
        self.token_params = "either"
        #: per token request: the parameter names found in the query and form
        self.token_sources: list[dict[str, list[str]]] = []

    # -- auth ---------------------------------------------------------------
    def grant(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The Zoho token endpoint. Zoho answers refusals with HTTP 200 and
        ``{"error": "invalid_code"}`` (or ``invalid_client``), so we do too."""
        if form.get("grant_type") != "refresh_token":
            self.token_refusals += 1
            return 200, {"error": "unsupported_grant_type"}
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            self.token_refusals += 1
            return 200, {"error": "invalid_client"}
        if form.get("refresh_token") != self.refresh_token:
            self.token_refusals += 1
            return 200, {"error": "invalid_code"}
        token = f"1000.{secrets.token_hex(16)}.{secrets.token_hex(16)}"
        self.tokens[token] = time.monotonic() + self.access_token_ttl
        self.token_grants += 1
        ttl = self.access_token_ttl
        return 200, {
            "access_token": token,
            "api_domain": "https://www.zohoapis.com",
            "token_type": "Bearer",
            "expires_in": int(ttl) if float(ttl).is_integer() else ttl,
        }

    def expire_tokens(self) -> None:
        """Make every issued access token invalid (as if an hour had passed)."""
        self.tokens.clear()

    def authorised(self, cloud: bool, header: str) -> bool:
        header = header.strip()
        if not cloud:
            return bool(header) and header == self.api_key
        scheme, _, token = header.partition(" ")
        # The doc's curl examples write "Zoho-authtoken" (the retired auth-token
        # scheme); its text says OAuth tokens go as "Zoho-oauthtoken {access_token}".
        if scheme != "Zoho-oauthtoken":
            return False
        expiry = self.tokens.get(token.strip())
        return expiry is not None and time.monotonic() < expiry

    def within_limits(self) -> bool:
        """Count one API call, unless it is over the doc's limits."""
        now = time.monotonic()
        if self.calls_per_day is not None and self.calls_today >= self.calls_per_day:
            self.limited += 1
            return False
        if self.calls_per_window is not None:
            cutoff = now - self.limit_window
            self.calls = [t for t in self.calls if t > cutoff]
            if len(self.calls) >= self.calls_per_window:
                self.limited += 1
                return False
            self.calls.append(now)
        self.calls_today += 1
        return True

    # -- reads ----------------------------------------------------------------
    def device(self, device_id: int) -> dict[str, Any]:
        device = self.devices.get(device_id) or self.removed.get(device_id)
        if device is None:
            raise ApiError("COM0008")
        return device

    def group(self, group_id: int) -> dict[str, Any]:
        group = self.groups.get(group_id)
        if group is None:
            raise ApiError("COM0008")
        return group

    def app(self, app_id: int) -> dict[str, Any]:
        app = self.apps.get(app_id)
        if app is None:
            raise ApiError("COM0008")
        return app

    def device_summary(self, device: dict[str, Any]) -> dict[str, Any]:
        keys: tuple[str, ...] = (
            "device_id",
            "device_name",
            "serial_number",
            "udid",
            "os_version",
            "platform_type",
            "platform_type_id",
            "model",
            "product_name",
            "device_capacity",
            "is_lost_mode_enabled",
            "owned_by",
            "user",
        )
        if self.doc_fields:
            # exactly the doc's "Get device list" example
            keys = (
                "device_id",
                "device_capacity",
                "os_version",
                "is_lost_mode_enabled",
                "platform_type",
                "platform_type_id",
                "model",
                "device_name",
                "product_name",
                "user",
            )
        summary = {k: device[k] for k in keys if k in device}
        if self.real:
            summary["is_removed"] = "true" if device["device_id"] in self.removed else "false"
        if self.string_ids:
            summary["device_id"] = str(summary["device_id"])
        return self.without_id(summary, "device_id", device["device_id"])

    def without_id(self, item: dict[str, Any], field: str, item_id: int) -> dict[str, Any]:
        """``item`` as listed: without its id field, or with it null, where ``no_id`` says so."""
        how = self.no_id.get(item_id)
        if how == "missing":
            return {k: v for k, v in item.items() if k != field}
        if how == "null":
            return {**item, field: None}
        return item

    def device_list(self, *, exclude_removed: bool) -> list[dict[str, Any]]:
        """The device list: each removed twin just before its live record."""
        hide = exclude_removed and self.honour_exclude_removed
        out = []
        for device_id, device in self.devices.items():
            twin = self.twin_of.get(device_id)
            if twin is not None and not hide:
                out.append(self.device_summary(self.removed[twin]))
            out.append(self.device_summary(device))
        if not hide:
            # twins whose current record was deleted since
            out.extend(
                self.device_summary(self.removed[twin])
                for live, twin in self.twin_of.items()
                if live not in self.devices
            )
        return out

    def device_apps(self, device_id: int) -> dict[str, Any]:
        self.device(device_id)
        apps = [
            {
                "app_name": a["app_name"],
                "identifier": a["bundle_identifier"],
                "app_version": a["version"],
                "app_id": a["app_id"] + DEVICE_APP_ID_OFFSET if self.own_device_app_ids else a["app_id"],
            }
            for a in (self.apps[i] for i in self.installed.get(device_id, ()))
        ]
        return {"apps": apps, "installed_apps": apps}

    def member_ids(self, group_id: int) -> list[int]:
        self.group(group_id)
        return list(self.members.get(group_id, ()))

    # -- changes ----------------------------------------------------------------
    def _known(self, ids: Any, name: str) -> list[int]:
        if not isinstance(ids, list) or not ids:
            raise ApiError("COM0005", f"{name} must be a non-empty list")
        out = []
        for value in ids:
            # the doc: "device_ids": [ 1, 2, 3 ], ids of type long -- numbers, not strings
            device_id = value if isinstance(value, int) and not isinstance(value, bool) else None
            if device_id is None or (device_id not in self.devices and device_id not in self.removed):
                raise ApiError("COM0005", f"unknown id {value!r} in {name}")
            out.append(device_id)
        return out

    def _link(self, links: dict[int, dict[int, None]], owner_id: int, ids: Any, name: str, already: str) -> list[int]:
        """Link the devices of the body's ``name`` to ``owner_id`` (a group, an app) in ``links``."""
        devices = self._known(ids, name)
        bucket = links.setdefault(owner_id, {})
        if self.conflict_on_duplicate and any(d in bucket for d in devices):
            raise ApiError("COM0010", already)
        bucket.update(dict.fromkeys(devices))
        return devices

    def add_members(self, group_id: int, ids: Any) -> list[int]:
        self.group(group_id)
        members = self._link(self.members, group_id, ids, "member_ids", "already a member")
        for device_id in members:
            self._log(device_id, f"add-to-group:{group_id}")
        return members

    def remove_member(self, group_id: int, device_id: int) -> None:
        self.group(group_id)
        bucket = self.members.get(group_id, {})
        if device_id not in bucket:
            raise ApiError("COM0008")
        del bucket[device_id]
        self._log(device_id, f"remove-from-group:{group_id}")

    def associate(self, app_id: int, ids: Any) -> list[int]:
        self.app(app_id)
        devices = self._link(self.associations, app_id, ids, "device_ids", "already associated")
        for device_id in devices:
            # the association is the MDM's at once; the app reaches the device when it checks in
            self.checkins.later(str(device_id), partial(self._install, device_id, app_id))
            self._log(device_id, f"install-app:{app_id}")
        return devices

    def _install(self, device_id: int, app_id: int) -> None:
        self.installed.setdefault(device_id, {})[app_id] = None

    def disassociate(self, app_id: int, device_id: int) -> None:
        self.app(app_id)
        self.device(device_id)
        self.associations.get(app_id, {}).pop(device_id, None)
        self.checkins.later(str(device_id), lambda: self.installed.get(device_id, {}).pop(app_id, None))
        self._log(device_id, f"remove-app:{app_id}")

    def delete_device(self, device_id: int) -> None:
        """Remove a device from management (tests: 'deleted since the look-up')."""
        self.devices.pop(device_id, None)
        for bucket in self.members.values():
            bucket.pop(device_id, None)
        for bucket in self.associations.values():
            bucket.pop(device_id, None)
        self.installed.pop(device_id, None)

    def _log(self, device_id: int, entry: str) -> None:
        self.log.setdefault(device_id, []).append(entry)

    def by_serial(self, serial: str) -> list[dict[str, Any]]:
        """Test helper (O(n)): the devices holding ``serial``."""
        return [d for d in self.devices.values() if d["serial_number"] == serial]


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


# -- seeding -----------------------------------------------------------------


def seed_state(state: MEState, *, devices: int, seed: int) -> MEState:
    rng = random.Random(f"bulkmdm-manageengine:{seed}")
    # groups: fixed names first (ids are FACTS), then one per school and class
    names = list(_FIXED_GROUPS)
    for school in fleet.SCHOOLS:
        names.extend(f"{school} {klass}" for klass in fleet.CLASSES[:3])
    class_groups = []
    for k, name in enumerate(names):
        group_id = GROUP_ID_BASE + k
        state.groups[group_id] = {
            "group_id": group_id,
            "name": name,
            "group_type": 1,
            "description": f"Enheter: {name}",
        }
        if name == "Lärare":
            state.groups[group_id]["domain"] = "SKOLA"
        if k >= len(_FIXED_GROUPS):
            class_groups.append(group_id)
    assert state.groups[FACTS["group"]["id"]]["name"] == FACTS["group"]["name"]

    for k, (app_name, company, bundle, app_platform, store, store_id, version) in enumerate(fleet.APP_CATALOG):
        app_id = APP_ID_BASE + k
        state.apps[app_id] = {
            "app_id": app_id,
            "app_name": app_name,
            "app_category": "Education",
            # the doc leaves the codes out; store apps 1, enterprise (in-house) apps 2
            "app_type": 2 if store == 2 else 1,
            "bundle_identifier": bundle,
            "version": version,
            "platform_type": 2 if app_platform == 1 else 1,
            "description": f"{app_name} ({company})",
            "icon": f"https://mdm.example.se/icons/{app_id}.png",
            "store_url": f"https://apps.apple.com/se/app/id{store_id}" if store == 0 else "--",
            "is_app_paid": False,
            "country_code": "SE",
            "store_id": store_id,
            "added_time": 1704067200000 + k * 86400000,
            "modified_time": 1717200000000 + k * 3600000,
        }
    assert state.apps[FACTS["app"]["id"]]["app_name"] == FACTS["app"]["name"]
    assert state.apps[FACTS["installed_app"]["id"]]["app_name"] == FACTS["installed_app"]["name"]

    edge_serials = [
        FACTS["duplicate_serial"],
        FACTS["duplicate_serial"],
        "--",
        "--",
        FACTS["leading_zero_serial"],
        FACTS["member_device"]["serial"],
        FACTS["free_device"]["serial"],
        FACTS["app_device"]["serial"],
    ]
    generated = max(0, devices - len(edge_serials))
    all_serials = edge_serials + fleet.serials(generated, seed)
    people = fleet.people(len(all_serials), seed)
    for i, (serial, person) in enumerate(zip(all_serials, people, strict=True)):
        device_id = DEVICE_ID_BASE + i
        if i < len(edge_serials):
            model, platform, os_version = "iPad (9th generation)", "iOS", "18.1"
            if i in (2, 3):
                model, platform, os_version = "Samsung Galaxy Tab A8", "Android", "14"
        else:
            model, platform, os_version = fleet.device_model(rng)
        platform_type, platform_id = _PLATFORMS[platform]
        state.devices[device_id] = {
            "device_id": device_id,
            "device_name": f"{person.account}_{model}",
            "serial_number": serial,
            "udid": fleet.guid(rng) if platform == "iOS" else "--",
            "os_version": os_version,
            "platform_type": platform_type,
            "platform_type_id": platform_id,
            "model": model,
            "product_name": model.split(" ")[0],
            "device_capacity": rng.choice((32.0, 64.0, 128.0)),
            "is_lost_mode_enabled": False,
            "owned_by": "1",
            "user": {"user_id": DEVICE_ID_BASE + 500000 + i, "user_name": person.account, "user_email": person.email},
        }
        if i >= len(edge_serials):
            state.members.setdefault(rng.choice(class_groups), {})[device_id] = None
            if rng.random() < 0.1:
                state.members.setdefault(GROUP_ID_BASE + 0, {})[device_id] = None
    state.members.setdefault(FACTS["member_group"]["id"], {})[FACTS["member_device"]["id"]] = None
    keynote, app_device = FACTS["installed_app"]["id"], FACTS["app_device"]["id"]
    state.associations.setdefault(keynote, {})[app_device] = None
    state.installed.setdefault(app_device, {})[keynote] = None
    if state.real:
        _add_removed_twins(state)
    return state


def _add_removed_twins(state: MEState) -> None:
    """De-enrolled records beside re-enrolled devices (real behaviour): the
    FACTS devices that have twins, and every tenth ordinary device."""
    ordinary = sorted(state.devices)[FACTS["edge_devices"] :]
    for device_id in [*FACTS["removed_twin_of"], *ordinary[::10]]:
        twin_id = device_id + REMOVED_ID_OFFSET
        live = state.devices[device_id]
        state.removed[twin_id] = {**live, "device_id": twin_id, "device_name": live["device_name"] + " (old)"}
        state.twin_of[device_id] = twin_id


# -- HTTP ----------------------------------------------------------------------

Route = Callable[[web.Request, MEState], Awaitable[web.StreamResponse]]


def _id(request: web.Request, name: str) -> int:
    value = _int(request.match_info[name])
    if value is None:
        raise ApiError("COM0008")
    return value


async def _json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        raise ApiError("COM0006")
    if "json" not in request.content_type:
        # every curl example sends -H "Content-Type: application/json;charset=UTF-8"
        raise ApiError("COM0005", "body must be JSON")
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError("COM0005", "body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError("COM0005", "body must be a JSON object")
    return body


def _page(request: web.Request, state: MEState, key: str, items: list[Any]) -> web.StreamResponse:
    """One answer, as the doc's examples show, or (``state.page_size``) a page
    as ManageEngine pages its lists."""
    if not state.page_size:
        return web.json_response({key: items})
    offset_text = request.query.get("offset", "0").strip()
    limit_text = request.query.get("limit", str(state.page_size)).strip()
    if not offset_text.isdigit() or not limit_text.isdigit() or int(limit_text) < 1:
        raise ApiError("COM0003")
    offset, limit = int(offset_text), min(int(limit_text), state.page_size)
    body: dict[str, Any] = {"metadata": {"total_record_count": len(items)}, key: items[offset : offset + limit]}
    if offset + limit < len(items) and state.next_links:
        body["paging"] = {"next": str(request.url.with_query({"limit": str(limit), "offset": str(offset + limit)}))}
    return web.json_response(body)


async def list_devices(request: web.Request, state: MEState) -> web.StreamResponse:
    exclude = request.query.get("exclude_removed", "").strip().casefold() == "true"
    state.exclude_removed_asked += exclude
    return _page(request, state, "devices", state.device_list(exclude_removed=exclude))


async def get_device(request: web.Request, state: MEState) -> web.StreamResponse:
    device = state.device(_id(request, "device_id"))
    return web.json_response(
        {
            **device,
            "name": device["device_name"],
            "os": {"serial_number": device["serial_number"], "os_version": device["os_version"]},
        }
    )


async def get_device_apps(request: web.Request, state: MEState) -> web.StreamResponse:
    return web.json_response(state.device_apps(_id(request, "device_id")))


async def list_groups(request: web.Request, state: MEState) -> web.StreamResponse:
    keep = ("group_id", "name", "group_type", "domain")
    groups = [
        state.without_id({k: g[k] for k in keep if k in g}, "group_id", g["group_id"]) for g in state.groups.values()
    ]
    return _page(request, state, "groups", groups)


async def get_group(request: web.Request, state: MEState) -> web.StreamResponse:
    return web.json_response(state.group(_id(request, "group_id")))


async def get_members(request: web.Request, state: MEState) -> web.StreamResponse:
    return _page(request, state, "member_ids", state.member_ids(_id(request, "group_id")))


def _links(
    owner: str,
    member: str,
    listed: str,
    add: Callable[[MEState, int, Any], list[int]],
    remove: Callable[[MEState, int, int], None],
) -> tuple[Route, Route, Route]:
    """The doc's three endpoints on the devices linked to one object (a group's members, an
    app's devices): link those the body's ``listed`` names, link one, unlink one."""

    async def add_many(request: web.Request, state: MEState) -> web.StreamResponse:
        owner_id = _id(request, owner)
        body = await _json(request)
        return web.json_response({listed: add(state, owner_id, body.get(listed))})

    async def add_one(request: web.Request, state: MEState) -> web.StreamResponse:
        add(state, _id(request, owner), [_id(request, member)])
        return web.Response(status=202)

    async def remove_one(request: web.Request, state: MEState) -> web.StreamResponse:
        remove(state, _id(request, owner), _id(request, member))
        return web.Response(status=204)

    return add_many, add_one, remove_one


add_members, add_member, remove_member = _links(
    "group_id", "member_id", "member_ids", MEState.add_members, MEState.remove_member
)


async def list_apps(request: web.Request, state: MEState) -> web.StreamResponse:
    keep: tuple[str, ...] = (
        "app_id",
        "app_name",
        "app_category",
        "app_type",
        "bundle_identifier",
        "version",
        "platform_type",
        "description",
        "icon",
        "added_time",
        "modified_time",
    )
    if state.doc_fields:
        keep = tuple(k for k in keep if k != "bundle_identifier")  # the doc's "Get App List" example
    return _page(
        request,
        state,
        "apps",
        [state.without_id({k: a[k] for k in keep}, "app_id", a["app_id"]) for a in state.apps.values()],
    )


async def get_app(request: web.Request, state: MEState) -> web.StreamResponse:
    return web.json_response(state.app(_id(request, "app_id")))


associate_devices, associate_device, disassociate_device = _links(
    "app_id", "device_id", "device_ids", MEState.associate, MEState.disassociate
)


_API: list[tuple[str, str, Route]] = [
    ("GET", "/devices", list_devices),
    ("GET", "/devices/{device_id}", get_device),
    ("GET", "/devices/{device_id}/apps", get_device_apps),
    ("GET", "/groups", list_groups),
    ("GET", "/groups/{group_id}", get_group),
    ("GET", "/groups/{group_id}/members", get_members),
    ("POST", "/groups/{group_id}/members", add_members),
    ("POST", "/groups/{group_id}/members/{member_id}", add_member),
    ("DELETE", "/groups/{group_id}/members/{member_id}", remove_member),
    ("GET", "/apps", list_apps),
    ("GET", "/apps/{app_id}", get_app),
    ("POST", "/apps/{app_id}/devices", associate_devices),
    ("POST", "/apps/{app_id}/devices/{device_id}", associate_device),
    ("DELETE", "/apps/{app_id}/devices/{device_id}", disassociate_device),
]


def _not_here(state: MEState, mdm_path: bool, header: str) -> bool:
    """Whether this server has no such path: the doc's cloud answers under
    /api/v1 (a cloud token under /api/v1/mdm meets a 404); the real cloud
    answers under /api/v1/mdm only."""
    if state.real:
        return not mdm_path
    return mdm_path and header.strip().startswith("Zoho-oauthtoken ")


def _guarded(state: MEState, mdm_path: bool, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        if _not_here(state, mdm_path, header):
            # the doc's "404 URL Not Found: The URL you've sent is wrong"
            return web.json_response(
                {
                    "error_code": 404,
                    "error_description": "URL Not Found",
                    "localized_error_description": "URL Not Found",
                },
                status=404,
            )
        cloud = not mdm_path or header.strip().startswith("Zoho-oauthtoken ")
        if not state.authorised(cloud, header):
            state.unauthorized += 1
            refusal = ApiError("COM0013")
            refusal.status = state.unauthorized_status
            return _error_response(refusal)
        if state.strict_headers and "json" not in request.headers.get("Content-Type", ""):
            # every curl example sends -H "Content-Type: application/json;charset=UTF-8"
            return _error_response(ApiError("COM0011"))
        if not state.within_limits():
            return _error_response(ApiError("COM0002"))
        if request.method == "GET" and state.read_errors > 0:
            state.read_errors -= 1
            return _error_response(ApiError("COM0004"))
        try:
            return await route(request, state)
        except ApiError as exc:
            return _error_response(exc)

    return handler


async def _token(request: web.Request) -> web.StreamResponse:
    state: MEState = request.app["state"]
    # The doc's examples put the parameters in the query string; Zoho also
    # takes them as a form body (what bulkmdm sends, to keep secrets out of URLs).
    query = {k: v for k, v in request.query.items()}
    posted: dict[str, str] = {}
    if request.content_type == "application/x-www-form-urlencoded":
        posted = {k: str(v) for k, v in (await request.post()).items()}
    state.token_sources.append({"query": sorted(query), "form": sorted(posted)})
    form = {"query": query, "form": posted}.get(state.token_params, {**query, **posted})
    status, body = state.grant(form)
    return web.json_response(body, status=status)


async def _log(request: web.Request) -> web.StreamResponse:
    state: MEState = request.app["state"]
    return web.json_response({str(k): v for k, v in state.log.items()})


def client_env(*, username: str, password: str, partition: str) -> dict[str, str]:
    """What ``bulkmdm run`` needs against this simulator: the on-premises API key it accepts
    (it also grants OAuth tokens to the client me-client / me-secret / me-refresh at
    ``URL/oauth/v2/token``)."""
    return {"BULKMDM_API_KEY": "me-api-key"}


def make_app(
    *,
    devices: int = 1000,
    seed: int = 1,
    username: str = "admin",
    password: str = "admin",
    faults: Faults | None = None,
    api_key: str = "me-api-key",
    client_id: str = "me-client",
    client_secret: str = "me-secret",
    refresh_token: str = "me-refresh",
    access_token_ttl: float = 3600,
    real: bool = False,
    checkins: CheckIns | None = None,
) -> web.Application:
    """A ManageEngine MDM simulator with a freshly seeded fleet.

    ``devices``: fleet size (the :data:`FACTS` edge cases count towards it).
    ``username``/``password`` are accepted so ``bulkmdm sim`` can call every
    simulator alike; ManageEngine has no such credentials. ``real``: answer
    as the real cloud does where it differs from the doc (see the module
    docstring). ``checkins``: when devices take app installs and removals
    (default: at once; see :class:`~bulkmdm.sim.common.CheckIns`). The state
    is ``app["state"]`` (a :class:`MEState`)."""
    del username, password
    state = MEState(
        api_key=api_key,
        client_id=client_id,
        client_secret=client_secret,
        refresh_token=refresh_token,
        access_token_ttl=access_token_ttl,
    )
    state.real = real
    state.checkins = checkins or CheckIns(seed=seed)
    seed_state(state, devices=devices, seed=seed)
    app = web.Application()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        app["state"] = state
    for method, path, route in _API:
        app.router.add_route(method, "/api/v1/mdm" + path, _guarded(state, True, route))
        app.router.add_route(method, "/api/v1" + path, _guarded(state, False, route))
    app.router.add_post("/oauth/v2/token", _token)
    app.router.add_get("/_sim/log", _log)
    instrument(app, faults, state.checkins)
    return app
