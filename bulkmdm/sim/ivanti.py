"""A simulator of the Ivanti Neurons for MDM device API (vendor doc:
ivanti-neurons-for-mdm-device-api.txt), for tests, the demo and benchmarks.

It serves what bulkmdm's ``ivanti`` provider uses, the way the doc shows it:

* every answer is the envelope ``{"errors": ..., "result": ...}``;
* ``GET /api/v1/device?dmPartitionId=&rows=&start=`` pages a device search
  (``rows`` 1..500, as the doc demands), with ``fq`` filters
  (``EMAILADDRESS EQ x``, ``UID EQ x``, ``CFDEVICE[name]=v``, ``field=v``)
  and ``searchAfterValues`` for large fleets: once a search has
  :attr:`IvantiState.search_after_from` or more hits, every page carries the
  ``searchAfterValues`` to continue after it, and ``start + rows`` may not go
  past that window (as with any search-after engine);
* the bulk actions (``PUT device/lock|unlock|wipe|retire|restart|
  forceCheckin|message|updateAccount``) take ids from a form-encoded body
  or the query string (repeated or comma separated; ``ids``/``guids``, but
  ``deviceIds`` for message and updateAccount, as documented), refuse any
  other body with 415, skip devices that are not eligible, and answer a
  count (``updateAccount``: the rejected devices; ``message``: ``true``,
  and its ``dmPartitionId`` is required); ``GET device/<action>?
  checkViability=true`` lists the devices that are not eligible, each with
  ``actionExceptionCodes``;
* an id that names no device fails the whole request with 400, the way a
  server validating its parameters does;
* custom attributes per device: GET, POST (replace all), PATCH (merge;
  ``forceOverwrite``), DELETE (both methods); JSON bodies only (415);
* ``DELETE device?deviceIds=`` (ids in the query string, as the URI shows;
  refused while a device is ACTIVE or WIPE_PENDING) and
  ``GET device/{id or guid}``;
* HTTP Basic auth (401 otherwise).

State lives in :class:`IvantiState` at ``app["state"]``; ``state.log`` and
:meth:`IvantiState.applied` tell tests what was done to which device.
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
import warnings
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from aiohttp import web
from multidict import MultiDict, MultiMapping

from .common import CheckIns, Faults, Handler, auth_middleware, basic_credentials, instrument

#: the port the README's "Try it on a simulator" and `bulkmdm demo` serve it on
PORT = 8081
#: what ``real=True`` (`bulkmdm sim ivanti --real`) changes, for the command's help
REAL = "device searches in check-in order that moves while you page, sortFields honoured"

MAX_ROWS = 500

_FIRST = (
    "Ana",
    "Ben",
    "Chloé",
    "David",
    "Emma",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonas",
    "Kofi",
    "Lena",
    "Mateo",
    "Nora",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tara",
    "Umar",
    "Vera",
    "Wei",
    "Ximena",
    "Yusuf",
    "Zoe",
    "Liam",
    "Maja",
    "Noah",
    "Olga",
)
_LAST = (
    "Smith",
    "García",
    "Müller",
    "Kowalski",
    "Nguyen",
    "Okafor",
    "Rossi",
    "Silva",
    "Tanaka",
    "Jensen",
    "Dubois",
    "Ivanova",
    "Kim",
    "Larsen",
    "Moreau",
    "Novak",
    "Patel",
    "Quispe",
    "Schmidt",
    "Walsh",
)
_CITIES = ("SF", "NYC", "LON", "BER", "PAR", "TYO", "SYD")
_MODELS = {
    "IOS": (
        ("iPhone14,5", "iPhone 13"),
        ("iPhone15,2", "iPhone 14 Pro"),
        ("iPad13,1", "iPad Air 4th gen"),
        ("iPad7,5", "iPad 6th gen"),
    ),
    "ANDROID": (("Pixel 7", "Pixel 7"), ("SM-G991B", "Galaxy S21"), ("TC52", "Zebra TC52")),
    "OSX": (("MacBookAir10,1", "MacBook Air (M1)"),),
    "WINDOWS": (("Surface Pro 8", "Surface Pro 8"),),
}
_SERIAL_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"

#: registrationState after each action that changes it
_NEW_STATE = {"wipe": "WIPE_PENDING", "retire": "RETIRED"}
#: with check-ins (``CheckIns.delay`` set), a command waits for the device:
#: its registrationState while it waits, and once the device took it
_QUEUED_STATE = {"wipe": "WIPE_PENDING", "retire": "RETIRE_PENDING"}
_TAKEN_STATE = {"wipe": "WIPED", "retire": "RETIRED"}
#: the commands a device takes at its check-in (the rest change the MDM's own records)
_AT_CHECKIN = frozenset({"lock", "unlock", "wipe", "retire", "restart", "checkin", "message"})


def _check_in(device: dict[str, Any], action: str) -> None:
    """The device checks in and takes ``action``."""
    device["lastCheckin"] = int(time.time() * 1000)
    if action in _TAKEN_STATE and device["registrationState"] == _QUEUED_STATE[action]:
        device["registrationState"] = _TAKEN_STATE[action]


def _reasons_active(device: dict[str, Any]) -> list[str]:
    state = device["registrationState"]
    if state == "ACTIVE":
        return []
    if state in ("RETIRED", "RETIRE_PENDING", "RETIRE_SENT"):
        return ["DEVICE_RETIRED"]
    if state in ("WIPED", "WIPE_PENDING", "WIPE_SENT"):
        return ["DEVICE_WIPED"]
    return ["DEVICE_NOT_ACTIVE"]


def _reasons_unlock(device: dict[str, Any]) -> list[str]:
    return _reasons_active(device) or (["PLATFORM_NOT_SUPPORTED"] if device["platformType"] == "WINDOWS" else [])


def _reasons_wipe(device: dict[str, Any]) -> list[str]:
    if device["registrationState"] in ("WIPE_PENDING", "WIPE_SENT"):
        return ["WIPE_ALREADY_PENDING"]
    return _reasons_active(device)


def _reasons_retire(device: dict[str, Any]) -> list[str]:
    if device["registrationState"] in ("RETIRED", "RETIRE_PENDING", "RETIRE_SENT"):
        return ["DEVICE_RETIRED"]
    return []


def _reasons_supervised_ios(device: dict[str, Any]) -> list[str]:
    # "Restart Supervised iOS Devices"
    reasons = _reasons_active(device)
    if reasons:
        return reasons
    if device["platformType"] != "IOS":
        return ["PLATFORM_NOT_SUPPORTED"]
    return [] if device["supervised"] else ["DEVICE_NOT_SUPERVISED"]


def _reasons_reassign(device: dict[str, Any]) -> list[str]:
    # "supported on supervised iOS devices and on the Android Enterprise devices"
    reasons = _reasons_active(device)
    if reasons:
        return reasons
    if device["platformType"] == "ANDROID":
        return []
    if device["platformType"] != "IOS":
        return ["PLATFORM_NOT_SUPPORTED"]
    return [] if device["supervised"] else ["DEVICE_NOT_SUPERVISED"]


#: action path segment -> (log name, eligibility rule, has a checkViability GET)
ACTIONS: dict[str, tuple[str, Callable[[dict[str, Any]], list[str]], bool]] = {
    "lock": ("lock", _reasons_active, True),
    "unlock": ("unlock", _reasons_unlock, False),
    "wipe": ("wipe", _reasons_wipe, True),
    "retire": ("retire", _reasons_retire, True),
    "restart": ("restart", _reasons_supervised_ios, False),
    "forceCheckin": ("checkin", _reasons_active, True),
    "message": ("message", _reasons_active, False),
    "updateAccount": ("assign-user", _reasons_reassign, False),
}


class IvantiState:
    """The fleet: devices by id, with O(1) indexes by GUID, serial, email and
    uid, accounts by id, and a log of what was applied to which device."""

    def __init__(self, *, devices: int, seed: int, partition: str) -> None:
        self.partition = partition
        self.partition_value: int | str = int(partition) if partition.isdigit() else partition
        self.devices: dict[int, dict[str, Any]] = {}
        self.sorted_ids: list[int] = []
        self.by_guid: dict[str, int] = {}
        #: device ids by owner email address / uid (casefolded), for fq=EMAILADDRESS EQ ...
        self.by_owner_key: dict[tuple[str, str], set[int]] = {}
        self.accounts: dict[int, dict[str, str]] = {}
        self.account_by_email: dict[str, int] = {}
        #: every change applied: (device id, action, detail)
        self.log: list[tuple[int, str, str]] = []
        self.counts: Counter[tuple[int, str]] = Counter()
        #: from this many hits on, a search pages with searchAfterValues only
        self.search_after_from = 10_000
        self.search_after_requests = 0
        #: the serial deliberately held by two devices (a re-enrolled device)
        self.duplicate_serial = ""
        # -- what another server, as faithful to the doc, may do instead --
        #: segments that read one id only, as their doc shows ("ids: id of the
        #: device to wipe"): the first of repeated ids; a comma list is refused
        self.single_id: set[str] = set()
        #: checkViability lists every device sent, eligible ones with no codes
        self.viability_lists_every = False
        #: checkViability answers the number of eligible devices (as Check
        #: Relinquish Viability does) instead of the list of those that cannot
        self.viability_counts = False
        #: commands answer a list of every device with its own status
        self.answers_per_device = False
        #: updateAccount answers the number of devices reassigned
        self.update_account_counts = False
        #: a search's totalCount is the number of devices on the page
        self.total_is_page = False
        # -- the live service, as the public clients of this API meet it --
        #: answer as the real service does where it differs from the doc:
        #: a search without ``sortFields`` comes most recent check-in first,
        #: and devices check in while a client pages (so pages by ``start``
        #: overlap and skip unless the client sorts by a field that does not
        #: move); ``sortFields[i].name`` / ``.order`` are honoured (400 for a
        #: field a device does not have); ``searchAfterValues`` are handed
        #: out only under an order by id; the answer's ``offset`` is always
        #: 0, as in every example answer of the doc
        self.real = False
        #: devices that check in before each device search (real mode)
        self.checkins_per_search = 3
        #: the real service refuses sortFields with 400 (a variant, to test
        #: the fallback to the doc's unsorted search)
        self.refuses_sort = False
        self._checkin_rng = random.Random(seed + 1)
        self._generate(devices, random.Random(seed))
        self._clock = max((d["lastCheckin"] for d in self.devices.values()), default=1_700_000_000_000)

    # -- the fleet ------------------------------------------------------------
    def _generate(self, count: int, rng: random.Random) -> None:
        n_users = max(1, int(count * 0.85))
        taken: set[str] = set()
        for k in range(n_users):
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            base = f"{first}.{last}".casefold().replace("é", "e").replace("ü", "u").replace("í", "i")
            email = f"{base}@example.com"
            n = 2
            while email in taken:
                email = f"{base}{n}@example.com"
                n += 1
            taken.add(email)
            uid = email if rng.random() < 0.8 else f"{first[0]}{last}{k}".casefold()
            account_id = 10_540_000 + k * 7
            self.accounts[account_id] = {"email": email, "uid": uid, "first": first, "last": last}
            self.account_by_email[email] = account_id
        account_ids = list(self.accounts)
        next_id = 22_000
        serials: set[str] = set()
        for i in range(count):
            next_id += rng.randint(1, 9)
            platform = rng.choices(("IOS", "ANDROID", "OSX", "WINDOWS"), (55, 35, 5, 5))[0]
            model, pretty = rng.choice(_MODELS[platform])
            length = 12 if platform in ("IOS", "OSX") else 11
            serial = "".join(rng.choice(_SERIAL_CHARS) for _ in range(length))
            while serial in serials:
                serial = "".join(rng.choice(_SERIAL_CHARS) for _ in range(length))
            serials.add(serial)
            if rng.random() < 0.01:
                serial = ""  # some Android devices report none (see the doc's Pixel 2)
            state = rng.choices(("ACTIVE", "RETIRED", "WIPED", "WIPE_PENDING", "RETIRE_PENDING"), (92, 5, 1, 1, 1))[0]
            attrs: dict[str, list[str]] | None = None
            if rng.random() < 0.4:
                attrs = {"cityid": [rng.choice(_CITIES)]}
                if rng.random() < 0.5:
                    attrs["costcenter"] = [str(rng.randint(1000, 1099))]
            owner = rng.choice(account_ids)
            self._add(
                {
                    "id": next_id,
                    "guid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "serialNumber": serial,
                    "deviceModel": model,
                    "prettyModel": pretty,
                    "deviceName": f"{pretty} {i}",
                    "platformType": platform,
                    "platformVersion": {"IOS": "17.4", "ANDROID": "14", "OSX": "14.4", "WINDOWS": "10.0.22631"}[
                        platform
                    ],
                    "manufacturer": {
                        "IOS": "Apple Inc.",
                        "OSX": "Apple Inc.",
                        "ANDROID": "Google",
                        "WINDOWS": "Microsoft",
                    }[platform],
                    "registrationState": state,
                    "supervised": platform == "IOS" and rng.random() < 0.75,
                    "lastCheckin": 1_700_000_000_000 + rng.randint(0, 10**10),
                    "ownerId": owner,
                    "customAttributes": {"attrs": attrs} if attrs else None,
                    "actionExceptionCodes": [],
                    "kioskState": "NOT_CONFIGURED",
                    "dmPartitionId": self.partition_value,
                    "dmPartitionName": "Default Space",
                },
                owner,
            )
        # A re-enrolled device: the old, retired record keeps its serial.
        active = [d for d in self.devices.values() if d["serialNumber"] and d["registrationState"] == "ACTIVE"]
        if len(active) >= 2:
            original, old = active[len(active) // 3], active[len(active) // 3 + 1]
            old["serialNumber"] = original["serialNumber"]
            old["registrationState"] = "RETIRED"
            self.duplicate_serial = original["serialNumber"]

    def _add(self, device: dict[str, Any], owner: int) -> None:
        self._set_owner(device, owner)
        self.devices[device["id"]] = device
        self.sorted_ids.append(device["id"])
        self.by_guid[device["guid"]] = device["id"]

    def _set_owner(self, device: dict[str, Any], account_id: int) -> None:
        self._unindex_owner(device)
        account = self.accounts[account_id]
        for key in (("emailAddress", account["email"].casefold()), ("uid", account["uid"].casefold())):
            self.by_owner_key.setdefault(key, set()).add(device["id"])
        device["ownerId"] = account_id
        device["emailAddress"] = account["email"]
        device["uid"] = account["uid"]
        device["firstName"] = account["first"]
        device["lastName"] = account["last"]
        device["displayName"] = f"{account['first']} {account['last']}"

    def _unindex_owner(self, device: dict[str, Any]) -> None:
        for field in ("emailAddress", "uid"):
            ids = self.by_owner_key.get((field, str(device.get(field) or "").strip().casefold()))
            if ids is not None:
                ids.discard(device["id"])

    # -- look-ups -------------------------------------------------------------
    def device(self, ref: str) -> dict[str, Any] | None:
        ref = ref.strip()
        if ref.isdigit():
            return self.devices.get(int(ref))
        device_id = self.by_guid.get(ref.casefold())
        return self.devices.get(device_id) if device_id is not None else None

    def applied(self, device_id: int, action: str) -> int:
        """How many times ``action`` was applied to the device."""
        return self.counts[(device_id, action)]

    def record(self, device: dict[str, Any], action: str, detail: str = "") -> None:
        self.log.append((device["id"], action, detail))
        self.counts[(device["id"], action)] += 1

    def delete(self, device_id: int) -> None:
        device = self.devices.pop(device_id)
        self._unindex_owner(device)
        self.sorted_ids.remove(device_id)
        self.by_guid.pop(device["guid"], None)

    def check_in_some(self) -> None:
        """A few devices check in (the real service's order moves under a client)."""
        if not self.sorted_ids:
            return
        for _ in range(self.checkins_per_search):
            self._clock += 1_000
            self.devices[self._checkin_rng.choice(self.sorted_ids)]["lastCheckin"] = self._clock

    def ordered(self, ids: list[int], sort: list[tuple[str, bool]]) -> tuple[list[int], bool]:
        """``ids`` in the order of the answer, and whether that is by id,
        ascending (the order search-after values continue). ``sort`` holds
        (field, descending) pairs; the doc's server ignores them."""
        if not self.real:
            return ids, True
        sort = sort or [("lastCheckin", True)]
        if sort[0] == ("id", False):
            return ids, True
        out = list(ids)
        for name, descending in reversed(sort):
            out.sort(key=lambda i: _sort_value(self.devices[i].get(name)), reverse=descending)
        return out, False

    def matching(self, fq: str) -> list[int] | None:
        """Ids of the devices an ``fq`` filter selects (None: bad filter)."""
        fq = fq.strip()
        if not fq:
            return self.sorted_ids
        parts = fq.split(None, 2)
        if len(parts) == 3 and parts[1].upper() == "EQ":
            field, value = parts[0].upper(), parts[2].strip().casefold()
            if field == "EMAILADDRESS":
                key = "emailAddress"
            elif field == "UID":
                key = "uid"
            else:
                return None
            return sorted(self.by_owner_key.get((key, value), ()))
        match = re.fullmatch(r"(CFDEVICE|CFLDAP)\[([^\]]+)\]\s*=\s*(.*)", fq, re.I)
        if match:
            if match.group(1).upper() == "CFLDAP":
                return []
            name, value = match.group(2), match.group(3)
            out = []
            for i in self.sorted_ids:
                attrs = (self.devices[i].get("customAttributes") or {}).get("attrs") or {}
                if value in attrs.get(name, ()):
                    out.append(i)
            return out
        match = re.fullmatch(r"(\w+)\s*=\s*(.*)", fq)
        if match:
            name, value = match.group(1).casefold(), match.group(2).strip()
            out = []
            for i in self.sorted_ids:
                device = self.devices[i]
                for k, v in device.items():
                    if k.casefold() == name and str(v) == value:
                        out.append(i)
                        break
            return out
        return None


# -- the HTTP side ------------------------------------------------------------


def _envelope(result: Any, status: int = 200) -> web.Response:
    return web.json_response({"errors": None, "result": result}, status=status)


def _error(status: int, message: str, *, field: str | None = None, code: str = "Invalid") -> web.Response:
    if field:
        errors = {"globalErrors": None, "fieldErrors": [{"code": code, "message": message, "field": field}]}
    else:
        errors = {"globalErrors": [{"code": code, "message": message}], "fieldErrors": None}
    return web.json_response({"errors": errors, "result": None}, status=status)


def _basic_auth_middleware(username: str, password: str) -> Any:
    def refusal() -> web.Response:
        response = _error(401, "Full authentication is required to access this resource", code="Unauthorized")
        response.headers["WWW-Authenticate"] = 'Basic realm="Ivanti Neurons for MDM"'
        return response

    return auth_middleware(lambda header: basic_credentials(header) == (username, password), refusal)


#: media types the form endpoints read, as a Spring ``@RequestParam`` server does
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


async def _form(request: web.Request) -> MultiDict[str] | web.Response:
    """Query parameters and form body together: the doc says the server
    "will parse [query parameters] into a request body for you". The bodies
    of the doc's examples are form-encoded (``--data``, ``--data-urlencode``;
    Unlock's ``--form`` is multipart): any other body (JSON, say) is refused
    with 415, so that a client sending the wrong encoding is caught."""
    params: MultiDict[str] = MultiDict(request.query)
    if request.body_exists:
        ctype = request.content_type
        if ctype in FORM_TYPES:
            body = await request.post()
            for key, value in body.items():
                params.add(key, value if isinstance(value, str) else str(value))
        elif await request.read():
            return _error(
                415,
                f"Content type '{ctype}' not supported; send the parameters form-encoded",
                code="UnsupportedMediaType",
            )
    return params


async def _json_body(request: web.Request) -> Any:
    """The JSON body of the custom-attribute calls ("a JSON payload"): 415
    for another content type, 400 for malformed JSON."""
    if request.content_type != "application/json":
        return _error(
            415,
            f"Content type '{request.content_type}' not supported; send application/json",
            code="UnsupportedMediaType",
        )
    try:
        return json.loads(await request.read() or b"{}")
    except ValueError:
        return _error(400, "the body must be JSON", code="MalformedJson")


def _split_ids(params: MultiMapping[str], *names: str) -> list[str]:
    out: list[str] = []
    for name in names:
        for value in params.getall(name, []):
            out.extend(part.strip() for part in value.split(",") if part.strip())
    return out


def _resolve(state: IvantiState, refs: Iterable[str]) -> tuple[list[dict[str, Any]], list[str]]:
    found: dict[int, dict[str, Any]] = {}
    missing = []
    for ref in refs:
        device = state.device(ref)
        if device is None:
            missing.append(ref)
        else:
            found.setdefault(device["id"], device)
    return list(found.values()), missing


def _sort_value(value: Any) -> tuple[bool, Any]:
    return (value is None, value if value is not None else 0)


def _sort_fields(query: MultiMapping[str], state: IvantiState) -> list[tuple[str, bool]] | web.Response:
    """``sortFields[i].name`` / ``sortFields[i].order`` as (field, descending) pairs."""
    out: list[tuple[str, bool]] = []
    for i in range(10):
        name = query.get(f"sortFields[{i}].name")
        if name is None:
            break
        order = query.get(f"sortFields[{i}].order", "ASC").upper()
        if (
            state.refuses_sort
            or order not in ("ASC", "DESC")
            or (state.devices and name not in next(iter(state.devices.values())))
        ):
            return _error(400, f"Cannot sort by {name} {order}", field=f"sortFields[{i}]", code="InvalidSort")
        out.append((name, order == "DESC"))
    return out


def _search_page(devices: list[dict[str, Any]], total: int, start: int, rows: int) -> dict[str, Any]:
    return {
        "totalCount": total,
        "queryTime": 1,
        "searchResults": devices,
        "offset": start,
        "limit": rows,
        "facetedResults": {},
        "totalUnfilteredResultCount": 0,
    }


def client_env(*, username: str, password: str, partition: str) -> dict[str, str]:
    """What ``bulkmdm run`` needs against this simulator: its HTTP Basic account and the
    device space it serves (``--partition`` says the same)."""
    return {"BULKMDM_USERNAME": username, "BULKMDM_PASSWORD": password, "BULKMDM_PARTITION_ID": partition}


def make_app(
    *,
    devices: int = 2000,
    seed: int = 1,
    username: str = "admin",
    password: str = "admin",
    partition: str = "1",
    faults: Faults | None = None,
    real: bool = False,
    checkins: CheckIns | None = None,
) -> web.Application:
    """An Ivanti Neurons for MDM tenant with ``devices`` devices in device
    space ``partition``, answering on ``/api/v1/...`` as the doc shows, or
    with ``real`` as the live service does (see :attr:`IvantiState.real`).
    ``checkins``: when devices take the commands sent to them (default: at
    once; see :class:`~bulkmdm.sim.common.CheckIns`)."""
    checkins = checkins or CheckIns(seed=seed)
    state = IvantiState(devices=devices, seed=seed, partition=str(partition))
    state.real = real
    app = web.Application(middlewares=[_basic_auth_middleware(username, password)])
    with warnings.catch_warnings():
        # plain string keys, like common.instrument's app["faults"]
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        app["state"] = state
    instrument(app, faults, checkins)

    def wrong_partition(value: str | None) -> web.Response | None:
        if not value:
            return _error(400, "dmPartitionId is required", field="dmPartitionId", code="NotNull")
        if value.strip() != state.partition:
            return _error(403, f"Access denied to device space {value}", code="AccessDenied")
        return None

    async def search(request: web.Request) -> web.Response:
        q = request.query
        bad = wrong_partition(q.get("dmPartitionId"))
        if bad:
            return bad
        try:
            rows = int(q.get("rows", "50"))
            start = int(q.get("start", "0"))
        except ValueError:
            return _error(400, "rows and start must be integers", field="rows", code="TypeMismatch")
        if not 1 <= rows <= MAX_ROWS:
            return _error(400, "must be between 1 and 500", field="rows", code="Range")
        if start < 0:
            return _error(400, "must be 0 or more", field="start", code="Range")
        ids = state.matching(q.get("fq", ""))
        if ids is None:
            return _error(400, f"Unsupported filter query {q.get('fq')!r}", field="fq")
        sort = _sort_fields(q, state) if state.real else []
        if isinstance(sort, web.Response):
            return sort
        if state.real:
            state.check_in_some()
        ids, by_id = state.ordered(ids, sort)
        total = len(ids)
        after = q.get("searchAfterValues", "").split(",")[0].strip()
        large = total >= state.search_after_from
        if after and by_id:
            state.search_after_requests += 1
            try:
                position = bisect_right(ids, int(after))
            except ValueError:
                return _error(400, "searchAfterValues must come from an earlier answer", field="searchAfterValues")
            page_ids = ids[position : position + rows]
        elif after:
            return _error(400, "searchAfterValues need the search sorted by id", field="searchAfterValues")
        else:
            if large and start + rows > state.search_after_from:
                return _error(
                    400,
                    f"Result window is too large: start + rows must be at most {state.search_after_from}; "
                    "use searchAfterValues",
                    field="start",
                    code="Range",
                )
            page_ids = ids[start : start + rows]
        result = _search_page(
            [state.devices[i] for i in page_ids],
            len(page_ids) if state.total_is_page else total,
            0 if state.real else start,
            rows,
        )
        if large and page_ids and by_id:
            result["searchAfterValues"] = [str(page_ids[-1])]
        return _envelope(result)

    def bulk_handler(segment: str) -> Handler:
        action, rule, checkable = ACTIONS[segment]

        # message and updateAccount name their list "deviceIds" (and take no
        # GUIDs); the other commands take "ids" or "guids".
        id_names = ("deviceIds",) if segment in ("message", "updateAccount") else ("ids", "guids")

        async def handler(request: web.Request) -> web.Response:
            params = await _form(request)
            if isinstance(params, web.Response):
                return params
            refs = _split_ids(params, *id_names)
            if segment in state.single_id:
                first = next((v for name in id_names for v in params.getall(name, [])), "")
                if "," in first:
                    return _error(400, f"{id_names[0]} must be one device id", field=id_names[0], code="TypeMismatch")
                refs = [first.strip()] if first.strip() else []
            viability = params.get("checkViability", "").casefold() == "true"
            if request.method == "GET" and not (checkable and viability):
                return _error(405, f"GET {segment} only checks viability (checkViability=true)", code="NotAllowed")
            if not refs:
                return _error(400, f"{id_names[0]} is required", field=id_names[0], code="NotEmpty")
            found, missing = _resolve(state, refs)
            if missing:
                return _error(400, f"Invalid device id(s): {', '.join(missing[:10])}", field="ids", code="NotFound")
            if viability:
                if state.viability_counts:
                    return _envelope(sum(1 for d in found if not rule(d)))
                if state.viability_lists_every:
                    every = [dict(d, actionExceptionCodes=rule(d)) for d in found]
                    return _envelope(_search_page(every, len(every), 0, len(every)))
                bad = [dict(d, actionExceptionCodes=codes) for d in found if (codes := rule(d))]
                return _envelope(_search_page(bad, len(bad), 0, len(bad)))
            extra = ""
            account_id = 0
            if segment == "message":
                # "dmPartitionId: The device space ID of the device(s)."
                bad_space = wrong_partition(params.get("dmPartitionId"))
                if bad_space:
                    return bad_space
                if params.get("sendPushNotification", "").casefold() != "true":
                    return _error(400, "sendPushNotification must be true", field="sendPushNotification")
                extra = params.get("pushNotificationMessage", "")
                if not extra.strip():
                    return _error(400, "pushNotificationMessage may not be empty", field="pushNotificationMessage")
            if segment == "updateAccount":
                try:
                    account_id = int(params.get("accountId", ""))
                except ValueError:
                    return _error(400, "accountId is required", field="accountId", code="NotNull")
                if account_id not in state.accounts:
                    return _error(400, f"Invalid account id {account_id}", field="accountId", code="NotFound")
                extra = str(account_id)
            if segment == "unlock":
                pin = params.get("deviceUnlockPin", "")
                if pin and not re.fullmatch(r"[a-zA-Z0-9]{6,8}", pin):
                    return _error(400, "deviceUnlockPin must be 6-8 letters or digits", field="deviceUnlockPin")
            sent = 0
            rejected = []
            each = []
            for device in found:
                codes = rule(device)
                each.append(
                    {
                        "id": device["id"],
                        "guid": device["guid"],
                        "status": "FAILED" if codes else "SUCCESS",
                        "actionExceptionCodes": codes,
                    }
                )
                if codes:
                    rejected.append(dict(device, actionExceptionCodes=codes))
                    continue
                sent += 1
                if checkins.delay is not None and action in _AT_CHECKIN:
                    device["registrationState"] = _QUEUED_STATE.get(action, device["registrationState"])
                    checkins.later(str(device["id"]), partial(_check_in, device, action))
                elif action in _NEW_STATE:
                    device["registrationState"] = _NEW_STATE[action]
                if segment == "updateAccount":
                    state._set_owner(device, account_id)
                state.record(device, action, extra)
            if segment == "updateAccount":
                if state.update_account_counts:
                    return _envelope(sent)
                return _envelope(_search_page(rejected, len(rejected), 0, 0))
            if state.answers_per_device and segment != "message":
                return _envelope(each)
            if segment == "message":
                return _envelope(sent > 0)
            return _envelope(sent)

        return handler

    async def delete_devices(request: web.Request) -> web.Response:
        # "DELETE /api/v1/device?deviceIds={id}": the ids in the query string
        refs = _split_ids(request.query, "deviceIds")
        if not refs:
            return _error(400, "deviceIds is required", field="deviceIds", code="NotEmpty")
        found, missing = _resolve(state, refs)
        if missing:
            return _error(400, f"Invalid device id(s): {', '.join(missing[:10])}", field="deviceIds", code="NotFound")
        busy = [d for d in found if d["registrationState"] in ("ACTIVE", "WIPE_PENDING")]
        if busy:
            return _error(
                400,
                f"Device {busy[0]['id']} is {busy[0]['registrationState']}; retire it before deleting it",
                code="InvalidState",
            )
        for device in found:
            state.record(device, "delete-device")
            state.delete(device["id"])
        return _envelope(len(found))

    async def details(request: web.Request) -> web.Response:
        device = state.device(request.match_info["ref"])
        if device is None:
            return _error(404, f"Device {request.match_info['ref']} not found", code="NotFound")
        return _envelope(device)

    async def attributes(request: web.Request) -> web.Response:
        device = state.device(request.match_info["ref"])
        if device is None:
            return _error(404, f"Device {request.match_info['ref']} not found", code="NotFound")
        current = (device.get("customAttributes") or {}).get("attrs") or {}
        if request.method == "GET":
            return _envelope({"deviceId": device["id"], "guid": device["guid"], "attrs": current})
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        attrs = body.get("attrs") if isinstance(body, dict) else None
        if not isinstance(attrs, dict):
            return _error(400, "attrs is required", field="attrs", code="NotNull")
        wanted: dict[str, list[str]] = {}
        for key, value in attrs.items():
            values = value if isinstance(value, list) else [value]
            wanted[str(key)] = [str(v) for v in values]
        if request.method == "POST":
            new = wanted
        elif request.method == "PATCH":
            new = {k: list(v) for k, v in current.items()}
            overwrite = body.get("forceOverwrite") in (True, "true")
            for key, values in wanted.items():
                if overwrite or key not in new:
                    new[key] = values
                else:
                    new[key] = new[key] + [v for v in values if v not in new[key]]
        else:  # DELETE, method 2
            new = {k: v for k, v in current.items() if k not in wanted}
        device["customAttributes"] = {"attrs": new} if new else None
        state.record(device, f"customattributes-{request.method.lower()}", json.dumps(wanted, sort_keys=True))
        return _envelope(1)

    async def delete_attributes(request: web.Request) -> web.Response:
        # method 1: {"ids": ["73542"], "attrKeys": ["ForDocs001"]}
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        refs = [str(v) for v in body.get("ids") or []] if isinstance(body, dict) else []
        keys = [str(v) for v in body.get("attrKeys") or []] if isinstance(body, dict) else []
        if not refs or not keys:
            return _error(400, "ids and attrKeys are required", field="ids", code="NotEmpty")
        found, missing = _resolve(state, refs)
        if missing:
            return _error(400, f"Invalid device id(s): {', '.join(missing[:10])}", field="ids", code="NotFound")
        for device in found:
            current = (device.get("customAttributes") or {}).get("attrs") or {}
            new = {k: v for k, v in current.items() if k not in keys}
            device["customAttributes"] = {"attrs": new} if new else None
            state.record(device, "customattributes-delete", ",".join(keys))
        return _envelope(1)

    r = app.router
    r.add_get("/api/v1/device", search)
    r.add_delete("/api/v1/device", delete_devices)
    r.add_delete("/api/v1/device/customattributes", delete_attributes)
    for segment in ACTIONS:
        handler = bulk_handler(segment)
        r.add_put(f"/api/v1/device/{segment}", handler)
        r.add_get(f"/api/v1/device/{segment}", handler)
    r.add_get("/api/v1/device/{ref}", details)
    for method in ("GET", "POST", "PATCH", "DELETE"):
        r.add_route(method, "/api/v1/device/{ref}/customattributes", attributes)
    return app
