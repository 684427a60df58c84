"""Ivanti Neurons for MDM (vendor doc: ivanti-neurons-for-mdm-device-api.txt).

Requests go to ``<tenant>/api/v1/...`` with HTTP Basic auth; every answer is
the envelope ``{"errors": ..., "result": ...}``, and a 2xx whose ``errors``
is set is a refusal. The device actions take *lists* of device ids, so rows
that share an action (and its parameters) go out together, up to
``max_batch`` ids per request:

=============  ===================================================  =========================
action         request                                              body
=============  ===================================================  =========================
lock           ``PUT device/lock``                                  form: ``ids`` (repeated)
unlock         ``PUT device/unlock``                                form: ``ids``
wipe           ``PUT device/wipe`` (per device)                     form: ``ids`` + options
retire         ``PUT device/retire`` (per device)                   form: ``ids``
restart        ``PUT device/restart``                               form: ``ids`` (a,b,c)
checkin        ``PUT device/forceCheckin``                          form: ``ids``
message        ``PUT device/message``                               form: ``deviceIds`` (a,b,c)
assign-user    ``PUT device/updateAccount``                         form: ``accountId``, ``deviceIds``
set-attribute  ``PATCH device/{id}/customattributes`` (per device)  JSON: attrs, forceOverwrite
delete-device  ``DELETE device?deviceIds={id}`` (per device)        -
=============  ===================================================  =========================

Form bodies are ``application/x-www-form-urlencoded``, as in the doc's curl
examples (``--data``, ``--data-urlencode``); Unlock's example alone uses
``--form`` (multipart), which a server reading form parameters takes either
way. The doc's ids table for every command says "Request body"; the query
string works too ("the server will parse them into a request body for you").

lock, wipe, retire and checkin have a documented ``GET device/<action>?
checkViability=true&ids=...`` that lists the devices which are *not*
eligible, with their ``actionExceptionCodes``. A batch is checked first and
only eligible devices are sent; the rest fail with the vendor's reason. The
same check answers ``--dry-run``. A server without the check (404/405/501),
or an account not allowed to use it (403), gets the commands unchecked.
``updateAccount`` answers with the rejected devices itself; the other
actions answer with a count only.

Look-ups come from one device search per run (``GET device?dmPartitionId=
&rows=500&start=`` sorted by id, continued with ``searchAfterValues`` when
the server offers them; see ``Ivanti._page_through``). Per the contract, a user's account id is the ``ownerId`` of a
device found by ``fq=EMAILADDRESS EQ <email>`` (or ``UID EQ <uid>``); the
run's device list is the fallback when that search finds nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from multidict import MultiDict

from ..errors import AuthError, ConfigError, HTTPStatusError, TransportError
from ..model import JobRow, Outcome, Status, Step
from ..transport import Auth, BasicAuth, Client, Verify
from .base import (
    Index,
    LookupFailed,
    Provider,
    Settings,
    as_list,
    env_required,
    explain_status,
    failed,
    get_field,
    outcome_from_error,
    planned,
    skipped,
)

#: The doc: "Do not send a value larger than 500 with the rows parameter
#: because the APIs do not permit a value of greater than 500."
PAGE_ROWS = 500
#: A fleet of 5 million devices; past this a paging loop is a server bug.
MAX_PAGES = 10_000
#: Passes over the device search when one comes up short of its totalCount.
MAX_PASSES = 3
#: The doc names no sort parameter; public clients send Spring-style
#: ``sortFields[0].name`` / ``sortFields[0].order`` (see ``_page_through``).
STABLE_SORT = {"sortFields[0].name": "id", "sortFields[0].order": "ASC"}

WIPE_STATES = frozenset({"WIPE_PENDING", "WIPE_SENT", "WIPED"})
RETIRE_STATES = frozenset({"RETIRE_PENDING", "RETIRE_SENT", "RETIRED"})
#: "Device should not be in the "ACTIVE" or "WIPE_PENDING" state when you run
#: the call against it." (Delete Device)
UNDELETABLE_STATES = frozenset({"ACTIVE", "WIPE_PENDING"})

#: Statuses where a batch may have failed because of one of its devices
#: (an id deleted since the look-up, a device in the wrong state): halve it.
#: 403, 405, 415 and 5xx are the same for every device, so splitting cannot help.
SPLIT_STATUSES = frozenset({400, 404, 409, 422})

_CODE_TEXT = {
    "PLATFORM_NOT_SUPPORTED": "the device's platform does not support this action",
    "DEVICE_NOT_SUPERVISED": "the device is not supervised",
    "DEVICE_RETIRED": "the device is retired",
    "DEVICE_WIPED": "the device has been wiped",
    "DEVICE_NOT_ACTIVE": "the device is not active",
    "WIPE_ALREADY_PENDING": "a wipe is already pending",
}


@dataclass(frozen=True, slots=True)
class _Bulk:
    """How one action goes out as a list of device ids."""

    segment: str
    verb: str
    done: str
    #: the form field holding the ids, and whether they are comma-joined
    id_field: str = "ids"
    joined: bool = False
    #: the doc gives ``GET device/<segment>?checkViability=true``
    viability: bool = False
    #: registrationStates that show the change in place (read back after a lost answer)
    states: frozenset[str] = frozenset()


BULK: dict[str, _Bulk] = {
    "lock": _Bulk("lock", "lock", "Lock command sent to {target}.", viability=True),
    "unlock": _Bulk("unlock", "unlock", "Unlock command sent to {target}."),
    "wipe": _Bulk("wipe", "wipe", "Wipe command sent to {target}.", viability=True, states=WIPE_STATES),
    "retire": _Bulk("retire", "retire", "Retire command sent to {target}.", viability=True, states=RETIRE_STATES),
    # "You can restart multiple devices by chaining the ids, for example:
    # ids=10542407, 10542400" (Restart Supervised iOS Devices) -- the one call
    # whose doc chains ids with commas rather than by repeating the field.
    "restart": _Bulk("restart", "restart", "Restart command sent to {target}.", joined=True),
    "checkin": _Bulk("forceCheckin", "force a check-in of", "Check-in request sent to {target}.", viability=True),
    # "The IDs of the devices ..., separated by url-encoded commas."
    "message": _Bulk("message", "send a message to", "Message sent to {target}.", id_field="deviceIds",
                     joined=True),
    # The doc shows a single id; deviceIds is comma-joined like the message
    # call's field of the same name.
    "assign-user": _Bulk("updateAccount", "reassign", "Reassignment of {target} to {who} initiated "
                         "(Ivanti finishes it when the device answers).", id_field="deviceIds", joined=True),
}
PER_DEVICE = frozenset({"set-attribute", "delete-device"})
#: Wipe and Retire document one id only ("ids: id of the device to wipe",
#: "id of the device to retire", and their checkViability: "ids: id of the
#: device"), unlike Lock ("you can chain the ids parameter, for example:
#: ids=126070&ids=337552"). A server that reads that single value would act on
#: one device of a batch and still answer "result": 1, which reads as success
#: for all of them; so these two, destructive and not repeatable, go one
#: device per request (the id, the check and the answer then agree). (updateAccount,
#: whose doc also shows one id, sends its ids comma-joined: a single-id server
#: refuses "a,b" outright and the batch is split, nothing is lost silently.)
SINGLE = frozenset({"wipe", "retire"})


@dataclass(frozen=True, slots=True)
class _Reply:
    """One request's answer, with the envelope unwrapped."""

    ok: bool
    result: Any = None
    status: int | None = None
    attempts: int = 0
    #: the envelope's errors, as text ("" when none)
    errors: str = ""
    body: Any = None
    #: no usable answer came (timeout, dropped connection, ambiguous)
    error: TransportError | None = None
    verified: bool = False

    @property
    def splittable(self) -> bool:
        if self.error is not None or self.status is None:
            return False
        return self.status in SPLIT_STATUSES or (200 <= self.status < 300 and bool(self.errors))


class _ReadFailed(Exception):
    def __init__(self, detail: str, reply: _Reply) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reply = reply

    def as_error(self) -> TransportError:
        """The error tree's form, for callers outside the plan (export, templates)."""
        if self.reply.error is not None:
            return self.reply.error
        return HTTPStatusError(self.detail, status=self.reply.status or 0, body=self.reply.body,
                               attempts=self.reply.attempts)


class _Collected:
    """Devices of a paged search, each kept once by its ``id`` (pages may
    overlap). A device listed without a usable ``id`` is kept apart: no
    command can name it, and two such devices must never become one. With
    ``keep=False`` only the keys are kept (a streamed export)."""

    def __init__(self, *, keep: bool = True) -> None:
        self.keep = keep
        self.by_id: dict[str, Any] = {}
        self.without_id: list[Any] = []
        self._seen_without_id: set[str] = set()
        #: the totalCount of the last pass's first page
        self.total: int | None = None

    @property
    def devices(self) -> list[Any]:
        return list(self.by_id.values())

    @property
    def count(self) -> int:
        return len(self.by_id) + len(self._seen_without_id)

    def add(self, page: Sequence[Any]) -> list[Any]:
        """Keep the page's devices; those not seen before."""
        new = []
        for device in page:
            if not isinstance(device, Mapping):
                continue
            key = _key(get_field(device, "id"))
            if key:
                if key not in self.by_id:
                    self.by_id[key] = device if self.keep else None
                    new.append(device)
                continue
            seen = _key(get_field(device, "guid")) or json.dumps(device, sort_keys=True, default=str)
            if seen not in self._seen_without_id:
                self._seen_without_id.add(seen)
                if self.keep:
                    self.without_id.append(device)
                new.append(device)
        return new


class _Fleet:
    """The device space's devices, indexed once per run."""

    def __init__(self, devices: list[Any], without_id: Sequence[Any] = ()) -> None:
        self.devices = devices
        self.count = len(devices)
        self.by_serial = Index("device", devices, lambda d: get_field(d, "serialNumber"))
        self.by_serial_folded = Index("device", devices, lambda d: get_field(d, "serialNumber"), fold=True)
        # A device_id column may hold the integer id or the GUID.
        self.by_ref = Index("device", devices, lambda d: [get_field(d, "id"), get_field(d, "guid")], fold=True)
        #: devices listed without an id, by serial and GUID: never a match,
        #: only the reason a row names no device
        self.without_id = Index("device", without_id, lambda d: [get_field(d, "serialNumber"),
                                                                  get_field(d, "guid")], fold=True)


@dataclass(frozen=True, slots=True)
class _Target:
    """The device a row resolved to, as a plan needs it."""

    id: str
    name: str
    state: str
    resolved: str
    params: Mapping[str, Any]

    @classmethod
    def of(cls, device: Any) -> _Target:
        dev_id = get_field(device, "id")
        serial = _key(get_field(device, "serialNumber"))
        return cls(_key(dev_id), f"device {serial or dev_id}", _key(get_field(device, "registrationState")).upper(),
                   f"device_id={dev_id}", {"id": dev_id, "guid": get_field(device, "guid"), "serial": serial})

    def undo_row(self, action: str, **columns: str) -> dict[str, str]:
        """A job row for this device (by id, and serial where it has one)."""
        serial = _key(self.params["serial"])
        return {"action": action, "device_id": self.id, **({"serial": serial} if serial else {}), **columns}


class Ivanti(Provider):
    name = "ivanti"
    actions = frozenset(BULK) | PER_DEVICE
    # The doc states no request rate. One bulk request carries up to 100
    # devices, so 10 requests/s already acts on 1,000 devices/s; per-device
    # calls (custom attributes, delete) do 3,000 rows in five minutes. Four in
    # flight keeps a shared multi-tenant cloud comfortable; the adaptive
    # controller backs off on 429.
    default_rate = 10.0
    default_concurrency = 4
    # The doc gives no limit for the id lists of the action calls, only 500
    # for ``rows``. 100 ids keep the checkViability GET (ids in the query
    # string) near 1.5 KB, far below the 8 KB many proxies allow; keep the
    # ineligible-device list well inside one 500-row page; and cap what one
    # lost answer leaves unknown to 100 rows. 500 rows are 5 requests.
    max_batch = 100
    # The fleet, owners and duplicate checks are kept across plan() calls.
    chunk_rows = 10_000

    def __init__(self, client: Client, settings: Settings) -> None:
        super().__init__(client, settings)
        partition = (settings.partition or settings.env.get("BULKMDM_PARTITION_ID") or "").strip()
        if not partition:
            raise ConfigError("ivanti needs the device space id: pass --partition or set BULKMDM_PARTITION_ID.")
        if not (partition.isascii() and partition.isdigit()):
            # "dmPartitionId: Integer. The device space ID." Anything else is a
            # typo that every request would carry: bad usage, nothing sent.
            raise ConfigError(f"ivanti's device space id is a number (dmPartitionId, e.g. 23505), not "
                              f"{partition!r}: correct --partition or BULKMDM_PARTITION_ID.")
        self.partition = partition
        self._fleet: _Fleet | None = None
        #: False once the server refused STABLE_SORT
        self._sorted = True
        self._owners: dict[str, Any] = {}
        self._seen: dict[Hashable, tuple[int, str]] = {}
        #: actions whose checkViability the server does not offer (404/405/501)
        self._no_viability: set[str] = set()

    @classmethod
    def auth_from_env(cls, env: Mapping[str, str]) -> Auth:
        user, password = env_required(env, "BULKMDM_USERNAME", "BULKMDM_PASSWORD", provider="ivanti")
        return BasicAuth(user, password)

    @classmethod
    def api_base(cls, url: str) -> str:
        return url.rstrip("/") + "/api/v1"

    # -- talking to the API -------------------------------------------------
    async def _call(self, method: str, path: str, **kwargs: Any) -> _Reply:
        try:
            resp = await self.client.request(method, path, **kwargs)
        except AuthError:
            raise
        except TransportError as exc:
            return _Reply(False, status=exc.status, attempts=exc.attempts, error=exc)
        body = resp.body
        result, errors = body, ""
        if isinstance(body, Mapping) and ("errors" in body or "result" in body):
            # "Ivanti answers 200 with errors in the body": the envelope decides.
            errors = _errors_text(body.get("errors"))
            result = body.get("result")
        return _Reply(resp.ok and not errors, result, resp.status, resp.attempts, errors, body,
                      verified=resp.verified)

    async def _read(self, params: Mapping[str, Any], what: str) -> Any:
        reply = await self._call("GET", "device", params=params)
        if not reply.ok:
            raise _ReadFailed(f"Could not read {what}: {_reply_reason(reply)}", reply)
        return reply.result

    async def _fetch_fleet(self) -> _Fleet:
        """Every device of the device space, indexed for the plan."""
        collected = _Collected()
        async for _device in self._devices(collected):
            pass
        return _Fleet(collected.devices, collected.without_id)

    async def _devices(self, collected: _Collected) -> AsyncIterator[Any]:
        """Every device of the device space once, as its page comes (see
        :meth:`_page_through`).

        A pass that comes up short of the ``totalCount`` of its first page
        (a server that ignores or refuses the sort, a device deleted while we
        paged) is followed by another one, while passes still find devices:
        pages may then overlap, and devices are kept once by id."""
        for number in range(MAX_PASSES):
            before = collected.count
            try:
                async for new in self._page_through(collected):
                    for device in new:
                        yield device
            except _ReadFailed:
                if number == 0:
                    raise
                break  # a later pass only looks for stragglers: keep what the first found
            total = collected.total
            if total is None or collected.count >= total or collected.count == before:
                break

    # -- export and templates ---------------------------------------------
    async def inventory(self) -> AsyncIterator[dict[str, str]]:
        """One row per device of the device space, streamed page by page:
        the job columns ``serial``, ``device_id``, ``name``, ``email``,
        ``user`` (the uid), plus ``model``, ``platform`` and
        ``registration_state`` (which actions a device takes depends on it:
        Ivanti deletes only retired devices). Values are text, as the MDM
        sent them (ids exact, serials with their leading zeros)."""
        try:
            async for device in self._devices(_Collected(keep=False)):
                yield _inventory_row(device)
        except _ReadFailed as exc:
            raise exc.as_error() from None

    async def choices(self, column: str) -> list[str]:
        """Names to offer for a template's column. Ivanti's device API has
        no tags, groups or apps; for ``attribute`` the names of the custom
        attributes the device space's devices carry (one read of the list)."""
        if column != "attribute":
            return []
        names: dict[str, str] = {}
        try:
            async for device in self._devices(_Collected(keep=False)):
                for name in _attrs(get_field(device, "customAttributes")):
                    names.setdefault(name.casefold(), name)
        except _ReadFailed as exc:
            raise exc.as_error() from None
        return sorted(names.values(), key=str.casefold)

    def _search_params(self, start: int, after: str) -> dict[str, Any]:
        params: dict[str, Any] = {"dmPartitionId": self.partition, "rows": PAGE_ROWS}
        if self._sorted:
            params.update(STABLE_SORT)
        if after:
            params["searchAfterValues"] = after
        else:
            params["start"] = start
        return params

    async def _search_page(self, start: int, after: str) -> Any:
        what = f"the device list of device space {self.partition}"
        try:
            return await self._read(self._search_params(start, after), what)
        except _ReadFailed as exc:
            if not self._sorted or after or start or exc.reply.status != 400:
                raise
        # The doc has no sortFields: a server that refuses them with 400 (on
        # the first page, where nothing else can be wrong) is asked the doc's
        # way; the extra passes of _fetch_fleet cover an order that moves.
        self._sorted = False
        return await self._read(self._search_params(start, after), what)

    async def _page_through(self, collected: _Collected) -> AsyncIterator[list[Any]]:
        """One pass over the device search, 500 a page: yields each page's
        devices not seen before; ``collected.total`` is the first page's
        ``totalCount`` (None when it has none).

        "Do not send a value larger than 500 with the rows parameter", and
        ``start`` is "the row on which to start the display". As the public
        clients of this API do, ``start`` is advanced by the number of rows
        each page returned (the Checkmk agent_mobileiron steps it by ``rows``;
        Oomnitza's connector by ``len(searchResults)``, noting that "'offset'
        does not operate as the MobileIron documentation indicates. We should
        instead use 'start' and pass the latest index"), under an explicit
        order (Oomnitza sends ``sortFields[0].name=lastCheckin&
        sortFields[0].order=DESC``). We sort by ``id``, unique and never
        changing, where ``lastCheckin`` moves while we page: pages then
        neither overlap nor skip.

        The doc adds ``searchAfterValues`` ("Useful in searches in
        environments with ten-thousand or more devices"), without showing
        where an answer carries them: they are read from the result (or,
        search-after style, from the last device of the page), sent back as
        given, comma-joined, with the same sort. A server that refuses the
        values it handed out, or answers them with nothing new, is paged by
        ``start`` again."""
        start, after, after_ok = 0, "", True
        for page_number in range(MAX_PAGES):
            try:
                result = await self._search_page(start, after)
            except _ReadFailed:
                if not after:
                    raise
                after, after_ok = "", False
                continue
            page = as_list(result, "searchResults")
            following = _continuation(result, page) if after_ok else ""
            if after and following == after:
                # the values did not move the search on (a server ignoring
                # them answers the first page again): page by start from here
                after, after_ok = "", False
                continue
            new = collected.add(page)
            start += len(page)
            total = _int(get_field(result, "totalCount"))
            if page_number == 0:
                collected.total = total
            if new:
                yield new
            if not page:
                break
            if total is not None and start >= total and not (len(page) >= PAGE_ROWS and total <= len(page)):
                # A full page whose totalCount is no more than the page itself
                # may be a server counting the page ("totalCount" is not
                # described): ask for the next page rather than stop at 500.
                break
            if not new and not after and (total is None or total <= len(page)):
                break  # the server repeats itself (it ignores start); with a
                # totalCount, a page of devices already seen is a later pass's
                # normal and start still moves on to the end
            after = following

    async def _find_owner(self, who: str) -> None:
        """Look up a user's account id once per run (see :meth:`_owner`)."""
        key = who.strip().casefold()
        if key not in self._owners:
            try:
                self._owners[key] = await self._search_owner(who.strip())
            except (LookupFailed, _ReadFailed) as exc:
                self._owners[key] = exc

    async def _owner(self, who: str) -> Any:
        """The account id of a user: the ``ownerId`` of a device found by
        "List Devices by UID or Email Address" (CONTRACT.md)."""
        await self._find_owner(who)
        found = self._owners[who.strip().casefold()]
        if isinstance(found, Exception):
            raise found
        return found

    async def _search_owner(self, who: str) -> Any:
        searches = [("EMAILADDRESS", "emailAddress")] if "@" in who else []
        searches.append(("UID", "uid"))  # uid is often the email address too
        refused: _ReadFailed | None = None
        without_owner: set[str] = set()  # devices of this user listed without an ownerId
        for field, attr in searches:
            # "?q=&dmPartitionId=23505&fq=EMAILADDRESS+EQ+<email>"
            try:
                result = await self._read(
                    {"q": "", "dmPartitionId": self.partition, "fq": f"{field} EQ {who}"}, f"the devices of {who}"
                )
            except _ReadFailed as exc:
                refused = refused or exc
                continue
            owners: dict[str, Any] = {}
            for device in as_list(result, "searchResults"):
                # The doc's example answer has " [email protected]" with a
                # leading space: compare trimmed, case-insensitively.
                if _key(get_field(device, attr)).casefold() == who.casefold():
                    owner = get_field(device, "ownerId")
                    if _key(owner):
                        owners[_key(owner)] = owner
                    else:
                        without_owner.add(_key(get_field(device, "id")) or json.dumps(device, default=str))
            if owners:
                return _one_owner(who, owners)
        if self._fleet is not None:
            # A server that ignores the fq filter answers with an unfiltered
            # first page, one that does not know it with an error; the device
            # list of this run carries the same emailAddress/uid/ownerId fields.
            for _field, attr in searches:
                owners = {_key(o): o for d in self._fleet.devices
                          if _key(get_field(d, attr)).casefold() == who.casefold()
                          and _key(o := get_field(d, "ownerId"))}
                if owners:
                    return _one_owner(who, owners)
        if refused is not None:
            raise refused
        if without_owner:
            raise LookupFailed(f"the MDM lists {len(without_owner)} device(s) of {who} without an account id "
                               "(their 'ownerId' field is missing or empty), so the account cannot be found; add "
                               "the account id in a user_id column")
        raise LookupFailed(
            f"no device in device space {self.partition} belongs to {who}, so their account id cannot be found "
            "(Ivanti's device API finds a user only through a device they own)"
        )

    # -- planning -----------------------------------------------------------
    async def plan(self, rows: Sequence[JobRow]) -> list[Step | Outcome]:
        try:
            if self._fleet is None:
                self._fleet = await self._fetch_fleet()
        except _ReadFailed as exc:
            return [failed(row, exc.detail.rstrip(".") + ". Run the job again.", http_status=exc.reply.status,
                           attempts=exc.reply.attempts) for row in rows]
        users = {who.casefold(): who for row in rows if row.action == "assign-user" and not row.get("user_id")
                 and (who := (row.get("user") or row.get("email")).strip())}
        await asyncio.gather(*(self._find_owner(who) for who in users.values()))
        out: list[Step | Outcome] = []
        for row in rows:
            try:
                out.append(await self._plan_row(row, self._fleet))
            except LookupFailed as exc:
                out.append(failed(row, _sentence(str(exc))))
            except _ReadFailed as exc:
                out.append(failed(row, exc.detail, http_status=exc.reply.status, attempts=exc.reply.attempts))
        return out

    def _device(self, row: JobRow, fleet: _Fleet) -> Any:
        ref, serial = row.get("device_id"), row.get("serial")
        if ref:
            if not fleet.by_ref.find(ref) and fleet.without_id.find(ref):
                raise LookupFailed(_no_id(f"device {ref}"))
            device = fleet.by_ref.one(ref, "device id")
            actual = _key(get_field(device, "serialNumber"))
            if serial and actual.casefold() != serial.casefold():
                raise LookupFailed(f"device id {ref} has serial {actual or '(none)'}, not {serial}; "
                                   "correct one of the two columns")
            return device
        if not serial:
            raise LookupFailed("the serial is blank")
        found = fleet.by_serial.find(serial) or fleet.by_serial_folded.find(serial)
        if not found and fleet.without_id.find(serial):
            raise LookupFailed(_no_id(f"serial {serial}"))
        if not found:
            raise LookupFailed(f"serial {serial} was not found among the {fleet.count} devices of device space "
                               f"{self.partition}")
        if len(found) > 1:
            which = ", ".join(f"id {get_field(d, 'id')} {get_field(d, 'registrationState') or ''}".strip()
                              for d in found[:5])
            raise LookupFailed(f"serial {serial} matches {len(found)} devices ({which}); "
                               "give the device_id column instead")
        return found[0]

    def _once(self, key: Hashable, row: JobRow, value: str = "") -> tuple[int, str] | None:
        """The earlier row asking for the same thing, if any."""
        earlier = self._seen.get(key)
        if earlier is None or earlier[0] == row.line:
            self._seen[key] = (row.line, value)
            return None
        return earlier

    async def _plan_row(self, row: JobRow, fleet: _Fleet) -> Step | Outcome:
        if row.action not in self.actions:
            return failed(row, f"ivanti cannot {row.action or 'do this'}; it can {', '.join(sorted(self.actions))}.")
        device = self._device(row, fleet)
        target = _Target.of(device)
        if row.action == "assign-user":
            return await self._plan_assign(row, device, target)
        if row.action == "set-attribute":
            return self._plan_attribute(row, device, target)
        if row.action == "delete-device":
            return self._plan_delete(row, device, target)
        return self._plan_command(row, device, target)

    async def _plan_assign(self, row: JobRow, device: Any, target: _Target) -> Step | Outcome:
        who = (row.get("user") or row.get("email") or row.get("user_id")).strip()
        # An account id in user_id is used as given (the undo rows carry the
        # previous owner's, who may own no other device by then).
        account = row.get("user_id").strip() or await self._owner(who)
        resolved = f"{target.resolved}; account_id={account}"
        earlier = self._once(("assign-user", target.id), row, _key(account))
        if earlier:
            if earlier[1] == _key(account):
                return skipped(row, f"Same change as line {earlier[0]}; sent once.", resolved)
            return failed(row, f"{_cap(target.name)} is also assigned on line {earlier[0]}; "
                               "give each device one user per job.", resolved)
        previous = get_field(device, "ownerId")
        if _key(previous) == _key(account):
            return skipped(row, f"{_cap(target.name)} already belongs to {who}; nothing sent.", resolved)
        undo = None
        if _key(previous):
            before = _key(get_field(device, "emailAddress")) or _key(get_field(device, "uid")) or _key(previous)
            undo = target.undo_row("assign-user", user=before, user_id=_key(previous))
        return Step(row, "assign-user", target.name, {**target.params, "account": account, "who": who}, resolved,
                    ("assign-user", _key(account)), undo=undo)

    def _plan_attribute(self, row: JobRow, device: Any, target: _Target) -> Step | Outcome:
        name, value = row.get("attribute"), row.get("value")
        earlier = self._once(("set-attribute", target.id, name), row, value)
        if earlier:
            if earlier[1] == value:
                return skipped(row, f"Same change as line {earlier[0]}; sent once.", target.resolved)
            return failed(row, f"Line {earlier[0]} sets {name!r} of {target.name} to {earlier[1]!r}; "
                               "give each attribute one value per job.", target.resolved)
        # The device search carries "customAttributes": {"attrs": {...}},
        # or null for a device without any: no extra request to skip rows
        # already done.
        before = _attrs(get_field(device, "customAttributes")).get(name)
        if before == [value]:
            return skipped(row, f"{_cap(target.name)} already has {name} = {value!r}; nothing sent.",
                           target.resolved)
        # Only one earlier value can be put back by a set-attribute row (an
        # attribute the device did not have, or several values, cannot).
        undo = target.undo_row("set-attribute", attribute=name, value=before[0]) if (
            before and len(before) == 1 and before[0]) else None
        return Step(row, "set-attribute", target.name, {**target.params, "name": name, "value": value},
                    target.resolved, ("set-attribute", row.index), undo=undo)

    def _plan_delete(self, row: JobRow, device: Any, target: _Target) -> Step | Outcome:
        email = row.get("email")
        owner_email = _key(get_field(device, "emailAddress"))
        if email and owner_email.casefold() != email.casefold():
            return failed(row, f"{_cap(target.name)} belongs to {owner_email or 'nobody'}, not {email}; "
                               "nothing sent.", target.resolved)
        if target.state in UNDELETABLE_STATES:
            return failed(row, f"{_cap(target.name)} is {target.state}; Ivanti deletes only retired devices. "
                               "Retire it first, then run the report again.", target.resolved)
        if earlier := self._once(("delete-device", target.id), row):
            return skipped(row, f"Same change as line {earlier[0]}; sent once.", target.resolved)
        return Step(row, "delete-device", target.name, target.params, target.resolved, ("delete-device", row.index))

    def _plan_command(self, row: JobRow, device: Any, target: _Target) -> Step | Outcome:
        """The bulk commands: nothing to read back or undo."""
        action, state, name = row.action, target.state, _cap(target.name)
        if action in ("unlock", "restart", "message") and state and state != "ACTIVE":
            # No viability check is documented for these, and their answer is
            # a bare count: refuse here what the MDM would silently drop.
            return failed(row, f"{name} is {state}; the MDM sends commands only to active devices.", target.resolved)
        if action == "restart":
            platform = _key(get_field(device, "platformType")).upper()
            if (platform and platform != "IOS") or get_field(device, "supervised") is False:
                what = "an unsupervised iOS device" if platform == "IOS" else f"a {platform} device"
                return failed(row, f"{name} is {what}; Ivanti restarts only supervised iOS devices "
                                   "(\"Restart Supervised iOS Devices\").", target.resolved)
        if (action == "wipe" and state in WIPE_STATES) or (action == "retire" and state in RETIRE_STATES):
            return skipped(row, f"{name} is already {state}; nothing sent.", target.resolved)
        params = dict(target.params)
        key: tuple[Any, ...] = (action,)
        if action == "message":
            params["message"] = row.get("message")
            key = ("message", row.get("message"))
        if earlier := self._once((*key, target.id), row):
            return skipped(row, f"Same change as line {earlier[0]}; sent once.", target.resolved)
        if action in SINGLE:
            key = (action, row.index)
        return Step(row, action, target.name, params, target.resolved, key)

    # -- executing ----------------------------------------------------------
    def _groups(self, steps: Sequence[Step]) -> list[list[Step]]:
        """Steps that may share a request, at most ``batch_size()`` each."""
        by_key: dict[Hashable, list[Step]] = {}
        for step in steps:
            by_key.setdefault((step.action, step.batch_key), []).append(step)
        size = self.batch_size()
        return [group[i:i + size] for group in by_key.values() for i in range(0, len(group), size)]

    async def execute(self, steps: Sequence[Step]) -> list[Outcome]:
        out: dict[int, Outcome] = {}
        for group in self._groups(steps):
            action = group[0].action
            if action in BULK:
                out.update(await self._bulk(BULK[action], group))
            else:
                for step in group:
                    out[step.index] = await self._one(step)
        return [out[step.index] for step in steps]

    async def check(self, steps: Sequence[Step]) -> list[Outcome]:
        out: dict[int, Outcome] = {}
        for group in self._groups(steps):
            spec = BULK.get(group[0].action)
            if spec is not None and spec.viability:
                out.update(await self._check(spec, group))
            else:
                out.update((step.index, _planned(step)) for step in group)
        return [out[step.index] for step in steps]

    async def _viability(self, spec: _Bulk, steps: Sequence[Step]) -> _Reply:
        # "https://[Ivanti Neurons for MDM]/api/v1/device/forceCheckin?checkViability=true&ids=22062&ids=22196"
        query = urlencode([("checkViability", "true"), *(("ids", _key(s.params["id"])) for s in steps)])
        return await self._call("GET", f"device/{spec.segment}?{query}")

    async def _check(self, spec: _Bulk, steps: list[Step]) -> dict[int, Outcome]:
        if spec.segment in self._no_viability:
            note = f" (the MDM offers no eligibility check for {spec.segment}; the real run sends it unchecked)"
            return {s.index: planned(s, _planned(s).detail + note) for s in steps}
        reply = await self._viability(spec, steps)
        if self._check_unavailable(spec, reply):
            note = (f" (the MDM offers no eligibility check for {spec.segment}: HTTP {reply.status}; "
                    "the real run sends it unchecked)")
            return {s.index: planned(s, _planned(s).detail + note) for s in steps}
        if not reply.ok and reply.splittable and len(steps) > 1:
            return await self._halves(steps, lambda half: self._check(spec, half))
        if not reply.ok:
            return {s.index: _failure(s, reply, f"Could not check whether the MDM would {spec.verb} "
                                                f"{s.target}") for s in steps}
        eligible = _eligible_count(reply.result)
        if eligible is not None and 0 < eligible < len(steps):
            # a count of eligible devices that does not say which: check halves
            return await self._halves(steps, lambda half: self._check(spec, half))
        rejected = _rejections(reply.result, steps, strict=False)
        if rejected is None and len(steps) > 1:
            return await self._halves(steps, lambda half: self._check(spec, half))
        out = {}
        for step in steps:
            reason = _rejection_for(rejected or {}, step)
            out[step.index] = _planned(step) if reason is None else _not_eligible(spec, step, reason, reply)
        return out

    def _check_unavailable(self, spec: _Bulk, reply: _Reply) -> bool:
        """The server has no checkViability for this action (the route is
        missing: 404/405/501), or this account may not use it (403: the checks
        "require Tenant Admin credentials", the commands only "Device Actions
        or Device Management"). Remembered for the rest of the run."""
        if reply.error is None and reply.status in (403, 404, 405, 501):
            self._no_viability.add(spec.segment)
            return True
        return False

    async def _halves(self, steps: list[Step],
                      run: Callable[[list[Step]], Awaitable[dict[int, Outcome]]]) -> dict[int, Outcome]:
        """A batch refused as a whole: try each half, so that one bad device
        does not fail the other 99 (a batch of one fails on its own)."""
        mid = len(steps) // 2
        first, second = await asyncio.gather(run(steps[:mid]), run(steps[mid:]))
        return {**first, **second}

    async def _bulk(self, spec: _Bulk, steps: list[Step], *, checked: bool = False) -> dict[int, Outcome]:
        out: dict[int, Outcome] = {}
        todo = steps
        if spec.viability and not checked and spec.segment not in self._no_viability:
            reply = await self._viability(spec, steps)
            if self._check_unavailable(spec, reply):
                # The check is a convenience before a real send: a server
                # without it still takes the action.
                return await self._bulk(spec, steps, checked=True)
            if not reply.ok and reply.splittable and len(steps) > 1:
                return await self._halves(steps, lambda half: self._bulk(spec, half))
            if not reply.ok and reply.error is not None:
                detail = f"Could not check whether the MDM would {spec.verb} the device; nothing sent"
                return {s.index: _failure(s, reply, detail) for s in steps}
            if not reply.ok:
                # A check refused for one device, or failing on the server's
                # side (5xx after retries): the command's own answer decides.
                sent = await self._bulk(spec, steps, checked=True)
                if reply.status is not None and 400 <= reply.status < 500 and all(
                        o.status is Status.SUCCEEDED for o in sent.values()):
                    # the device was fine, so the check itself is what this
                    # server refuses: stop asking it for this action
                    self._no_viability.add(spec.segment)
                return sent
            eligible = _eligible_count(reply.result)
            if eligible is not None and 0 < eligible < len(steps):
                # "result: Number of eligible devices" (the relinquish check's
                # answer): some are not, and the number does not say which.
                return await self._halves(steps, lambda half: self._bulk(spec, half))
            rejected = _rejections(reply.result, steps, strict=False)
            if rejected is None and len(steps) > 1:
                # the list of ineligible devices was cut short: check smaller batches
                return await self._halves(steps, lambda half: self._bulk(spec, half))
            todo = []
            for step in steps:
                reason = _rejection_for(rejected or {}, step)
                if reason is None:
                    todo.append(step)
                else:
                    out[step.index] = _not_eligible(spec, step, reason, reply)
            if not todo:
                return out
        reply = await self._send(spec, todo)
        if not reply.ok and reply.splittable and len(todo) > 1:
            out.update(await self._halves(todo, lambda half: self._bulk(spec, half, checked=True)))
        elif not reply.ok:
            out.update((s.index, _failure(s, reply, f"The MDM refused to {spec.verb} {s.target}")) for s in todo)
        else:
            out.update(self._accepted(spec, todo, reply))
        return out

    async def _send(self, spec: _Bulk, steps: list[Step]) -> _Reply:
        ids = list(dict.fromkeys(_key(s.params["id"]) for s in steps))
        form: MultiDict[str] = MultiDict()
        if spec.segment == "updateAccount":
            form.add("accountId", _key(steps[0].params["account"]))
        if spec.segment == "message":
            # "sendPushNotification=true&pushNotificationMessage=...&sendEmail=false&emailSubject=
            #  &emailBody=&dmPartitionId=23003&deviceIds=370872%2C383279"
            form.add("sendPushNotification", "true")
            form.add("pushNotificationMessage", steps[0].params["message"])
            form.add("sendEmail", "false")
            form.add("emailSubject", "")
            form.add("emailBody", "")
            form.add("dmPartitionId", self.partition)
        if spec.joined:
            form.add(spec.id_field, ",".join(ids))
        else:
            # "To lock multiple devices, you can chain the ids parameter, for
            # example: ids=126070&ids=337552"
            for device_id in ids:
                form.add(spec.id_field, device_id)
        if spec.segment == "wipe":
            # The doc's example sends every option; a server reading them as
            # plain booleans may refuse a request without them.
            for name, value in (("osxWipePin", ""), ("iosDisallowProximitySetup", "false"),
                                ("iosPreserveDataPlan", "false"), ("message", ""),
                                ("returnToServiceEnabled", "false")):
                form.add(name, value)
        # PUT, yet not idempotent: a second lock is a second command to the
        # device. Resent after a lost answer only if a read-back says it was
        # not applied; otherwise the rows become "unknown".
        return await self._call("PUT", f"device/{spec.segment}", data=form, idempotent=False,
                                verify=self._verifier(spec, steps))

    def _verifier(self, spec: _Bulk, steps: list[Step]) -> Verify | None:
        if spec.segment == "updateAccount":
            def applied(device: Any, step: Step) -> bool:
                return _key(get_field(device, "ownerId")) == _key(step.params["account"])
        elif spec.states:
            def applied(device: Any, step: Step) -> bool:
                return _key(get_field(device, "registrationState")).upper() in spec.states
        else:
            return None  # lock, unlock, restart, check-in, message leave nothing to read back

        async def verify() -> bool | None:
            replies = await asyncio.gather(*(self._call("GET", f"device/{_seg(s.params['id'])}") for s in steps))
            if not all(r.ok and isinstance(r.result, Mapping) for r in replies):
                return None
            flags = [applied(r.result, s) for r, s in zip(replies, steps, strict=True)]
            if all(flags):
                return True
            return False if not any(flags) else None

        return verify

    def _accepted(self, spec: _Bulk, steps: list[Step], reply: _Reply) -> dict[int, Outcome]:
        def ok(step: Step) -> Outcome:
            detail = _cap(spec.done.format(target=step.target, who=step.params.get("who", "")))
            if reply.verified:
                detail += " (Confirmed by reading it back after the answer was lost.)"
            return Outcome(step.index, Status.SUCCEEDED, detail, reply.status, reply.attempts, step.resolved)

        result = reply.result
        if reply.verified or result is None or result is True:
            return {s.index: ok(s) for s in steps}
        if isinstance(result, (Mapping, list)):
            # updateAccount: "List of devices that were not eligible for
            # reassignment, and hence rejected. Empty list, if all the devices
            # have been initiated reassignment."
            rejected = _rejections(result, steps, strict=spec.segment == "updateAccount") or {}
            return {s.index: ok(s) if (reason := _rejection_for(rejected, s)) is None
                    else _not_eligible(spec, s, reason, reply) for s in steps}
        if result is False or (isinstance(result, (int, float)) and result <= 0):
            return {s.index: Outcome(s.index, Status.FAILED,
                                     f"The MDM accepted the request but did not {spec.verb} {s.target} "
                                     f"(result {result!r}); check that it is enrolled and eligible.",
                                     reply.status, reply.attempts, s.resolved) for s in steps}
        if isinstance(result, int) and 1 < result < len(steps):
            # "result": 1 means success for some calls (scheduleOSUpdate: "1
            # (one) for success") and a count for others (forceCheckin answers
            # 2 for two ids). Fewer than sent, and not 1: some were dropped
            # without saying which.
            return {s.index: Outcome(s.index, Status.UNKNOWN,
                                     f"The MDM carried out the request for {result} of the {len(steps)} devices "
                                     f"in it without saying which; check {s.target} before sending it again.",
                                     reply.status, reply.attempts, s.resolved) for s in steps}
        return {s.index: ok(s) for s in steps}

    async def _one(self, step: Step) -> Outcome:
        p = step.params
        path_id = _seg(p["id"])
        if step.action == "set-attribute":
            name, value = p["name"], p["value"]

            async def is_set() -> bool | None:
                read = await self._call("GET", f"device/{path_id}/customattributes")
                return _attrs(read.result).get(name) == [value] if read.ok else None

            # PATCH keeps the other attributes (the POST of "Add/Replace" would
            # delete them). forceOverwrite makes a resend harmless.
            reply = await self._call("PATCH", f"device/{path_id}/customattributes",
                                     json={"attrs": {name: [value]}, "forceOverwrite": True}, verify=is_set)
            done = f"Attribute {name} set to {value!r} on {step.target}."
            what = f"The MDM refused to set {name} on {step.target}"
        else:
            async def is_gone() -> bool | None:
                read = await self._call("GET", f"device/{path_id}")
                if read.error is not None:
                    return None
                if read.status == 404 or (read.ok and not read.result):
                    return True
                return False if read.ok else None

            # The URI and example say "DELETE /api/v1/device?deviceIds={id}"
            # (the parameter table's "ids / Request body" is a copy of Retire's).
            # One device per request: the answer ("result": 1) cannot say which
            # of several devices was refused, and this one cannot be undone.
            reply = await self._call("DELETE", "device", params={"deviceIds": _key(p["id"])}, idempotent=False,
                                     verify=is_gone)
            done = f"{_cap(step.target)} deleted."
            what = f"The MDM refused to delete {step.target}"
        if not reply.ok:
            return _failure(step, reply, what)
        if reply.result in (0, False) and not reply.verified:
            return Outcome(step.index, Status.FAILED, f"The MDM answered but changed nothing on {step.target} "
                           f"(result {reply.result!r}).", reply.status, reply.attempts, step.resolved)
        if reply.verified:
            done += " (Confirmed by reading it back after the answer was lost.)"
        return Outcome(step.index, Status.SUCCEEDED, done, reply.status, reply.attempts, step.resolved)


# -- helpers ------------------------------------------------------------------


def _key(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _inventory_row(device: Any) -> dict[str, str]:
    fields = {"serial": "serialNumber", "device_id": "id", "name": "deviceName", "email": "emailAddress",
              "user": "uid", "platform": "platformType", "registration_state": "registrationState"}
    row = {column: _text(get_field(device, name)) for column, name in fields.items()}
    row["model"] = _text(get_field(device, "prettyModel")) or _text(get_field(device, "deviceModel"))
    return row


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def _no_id(what: str) -> str:
    return (f"the MDM lists {what} without a device id (its 'id' field is missing or empty), so no command can "
            "name it; check the device in the Ivanti portal")


def _continuation(result: Any, page: Sequence[Any]) -> str:
    """The ``searchAfterValues`` an answer hands out, comma-joined ("" for none)."""
    values = get_field(result, "searchAfterValues")
    if values is None and page and isinstance(page[-1], Mapping):
        values = get_field(page[-1], "searchAfterValues")
    if isinstance(values, list) and values:
        return ",".join(str(v) for v in values)
    if isinstance(values, (str, int)) and not isinstance(values, bool):
        return str(values)
    return ""


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _seg(value: Any) -> str:
    return quote(_key(value), safe="")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _sentence(text: str) -> str:
    text = _cap(text.strip()) or "Look-up failed"
    return text if text.endswith(".") else text + "."


def _errors_text(errors: Any) -> str:
    """The envelope's ``errors`` as one line ("" when there are none).

    Seen shapes: null; ``{"globalErrors": [...], "fieldErrors": [{"code",
    "message", "field"}]}`` (the 500-row error of the API basics); a list."""
    if not errors:
        return ""
    if isinstance(errors, str):
        return errors.strip()
    parts: list[str] = []
    items: list[Any] = []
    if isinstance(errors, Mapping):
        for name in ("globalErrors", "fieldErrors"):
            value = errors.get(name)
            if isinstance(value, list):
                items.extend(value)
        if not items and not any(k in errors for k in ("globalErrors", "fieldErrors")):
            items = [errors]
    elif isinstance(errors, list):
        items = errors
    for item in items:
        if isinstance(item, Mapping):
            message = _key(get_field(item, "message", "description", "code"))
            field_name = _key(get_field(item, "field"))
            if message:
                parts.append(f"{field_name}: {message}" if field_name else message)
        elif item:
            parts.append(str(item))
    return "; ".join(parts)[:300]


def _reply_reason(reply: _Reply) -> str:
    if reply.error is not None:
        return str(reply.error)
    if reply.status is not None and not 200 <= reply.status < 300:
        return explain_status(reply.status, reply.errors or reply.body, reply.attempts)
    return f"the MDM refused the request ({reply.errors})."


def _failure(step: Step, reply: _Reply, what: str) -> Outcome:
    """A request that did not do what was asked, for one step."""
    if reply.error is not None:
        return outcome_from_error(step, reply.error)
    if reply.errors:
        # the vendor's own words say more than a generic hint for the status
        tries = f" after {reply.attempts} attempts" if reply.attempts > 1 else ""
        detail = f"{what} (HTTP {reply.status}{tries}): {reply.errors}."
    else:
        detail = explain_status(reply.status or 0, reply.body, reply.attempts)
    return Outcome(step.index, Status.FAILED, detail, reply.status, reply.attempts, step.resolved)


#: per-device "status" values of an answer that lists every device it was sent
_DONE = frozenset({"SUCCESS", "SUCCEEDED", "SUCCESSFUL", "OK", "ACCEPTED", "INITIATED", "SENT", "QUEUED",
                   "PENDING", "TRUE", "DONE", "COMPLETED"})


def _eligible_count(result: Any) -> int | None:
    """A check answered with a bare number ("result: Number of eligible
    devices", Check Relinquish Viability) rather than the list of devices
    that cannot; None for any other answer."""
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    return None


def _rejections(result: Any, steps: Sequence[Step] = (), *, strict: bool = True) -> dict[str, str] | None:
    """Ineligible devices of a checkViability / updateAccount answer, by id
    and GUID, with their reasons. None when the list is cut short (its
    ``totalCount`` is larger than what came), {} for an answer without one.

    The doc's lists hold only the devices that cannot ("The results only list
    the specified devices that CANNOT ...", "List of devices that were not
    eligible for reassignment, and hence rejected"). A server may instead
    list *every* device it was sent, each with its own result: then a device
    with a success ``status``, or (unless ``strict``: updateAccount's list is
    rejections by definition) with no ``actionExceptionCodes``, is eligible.
    A bare id in the list names a rejected device."""
    devices: list[Any]
    total: int | None = None
    if isinstance(result, list):  # a bare list of the devices, tolerated
        devices = result
    elif isinstance(result, Mapping):
        devices = as_list(result, "searchResults")
        total = _int(get_field(result, "totalCount"))
    else:
        return {}
    if total is not None and total > len(devices):
        return None
    listed = {_key(ref).casefold() for device in devices
              for ref in ((get_field(device, "id"), get_field(device, "guid")) if isinstance(device, Mapping)
                          else (device,)) if _key(ref)}
    every = bool(steps) and all(_key(s.params.get("id")).casefold() in listed
                                or _key(s.params.get("guid")).casefold() in listed for s in steps)
    out: dict[str, str] = {}
    for device in devices:
        if not isinstance(device, Mapping):
            if isinstance(device, (str, int)) and not isinstance(device, bool) and _key(device):
                out[_key(device).casefold()] = ""
            continue
        raw = get_field(device, "actionExceptionCodes")
        codes = [str(c) for c in (raw if isinstance(raw, list) else [raw] if raw else []) if c]  # the doc shows [null]
        status = get_field(device, "status", "result", "success")
        if isinstance(status, bool):
            status = "TRUE" if status else "FALSE"
        if isinstance(status, str) and status.strip():
            if status.strip().upper() in _DONE and not codes:
                continue
            codes = codes or [status.strip()]
        elif not codes and every and not strict:
            continue
        reason = "; ".join(f"{c} ({_CODE_TEXT[c]})" if c in _CODE_TEXT else c for c in codes)
        for ref in (get_field(device, "id"), get_field(device, "guid")):
            if _key(ref):
                out[_key(ref).casefold()] = reason
    return out


def _rejection_for(rejected: Mapping[str, str], step: Step) -> str | None:
    for ref in (step.params.get("id"), step.params.get("guid")):
        if _key(ref) and _key(ref).casefold() in rejected:
            return rejected[_key(ref).casefold()]
    return None


def _one_owner(who: str, owners: Mapping[str, Any]) -> Any:
    if len(owners) > 1:
        raise LookupFailed(f"user {who} owns devices under {len(owners)} accounts "
                           f"({', '.join(sorted(owners))}); give the account name instead")
    return next(iter(owners.values()))


def _planned(step: Step) -> Outcome:
    p = step.params
    if step.action == "set-attribute":
        return planned(step, f"would set {p['name']} to {p['value']!r} on {step.target}")
    if step.action == "assign-user":
        return planned(step, f"would reassign {step.target} to {p['who']}")
    spec = BULK.get(step.action)
    return planned(step, f"would {spec.verb if spec else 'delete'} {step.target}")


def _not_eligible(spec: _Bulk, step: Step, reason: str, reply: _Reply) -> Outcome:
    why = reason or "the MDM gave no reason"
    return Outcome(step.index, Status.FAILED,
                   f"The MDM says it cannot {spec.verb} {step.target}: not eligible: {why}.",
                   reply.status, reply.attempts, step.resolved)


def _attrs(value: Any) -> dict[str, list[str]]:
    """Custom attributes as {name: [values]}, from ``{"attrs": {...}}``, an
    envelope result, or a device's ``customAttributes``. The doc shows both
    ``"cityId": "SF"`` and ``"cityid": ["SF"]``; values become lists."""
    if isinstance(value, Mapping) and "customAttributes" in value:
        value = value.get("customAttributes")
    attrs = get_field(value, "attrs") if isinstance(value, Mapping) else None
    if not isinstance(attrs, Mapping):
        return {}
    return {str(k): [str(v) for v in vals] if isinstance(vals, list) else [str(vals)] for k, vals in attrs.items()}
