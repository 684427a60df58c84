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
the server offers them; see :meth:`Ivanti._fetch_page`). Per the contract, a
user's account id is the ``ownerId`` of a device found by ``fq=EMAILADDRESS
EQ <email>`` (or ``UID EQ <uid>``); the run's device list is the fallback
when that search finds nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlencode

from multidict import MultiDict

from ..errors import ConfigError, SetupFailed, TransportError
from ..model import JobRow, Outcome, Reason, Status, Step
from ..retry import RetryPolicy
from ..client import NO_CONTEXT, Client, RequestContext, Response, Verify
from .base import (
    BASIC_CREDENTIAL_FIELDS,
    BASIC_CREDENTIALS,
    Follow,
    Sighting,
    Tracked,
    resolved_ids,
    ExtraSetting,
    Index,
    ListFailed,
    READ_BACK_CONFIRMED,
    LookupFailed,
    Provider,
    Settings,
    as_int,
    as_list,
    cap,
    done_reason,
    error_reason,
    collect_pages,
    explain_response,
    failed,
    get_field,
    iter_pages,
    key,
    one_across,
    outcome_from_error,
    planned,
    read_back,
    seg,
    send_halving,
    skipped,
    not_an_answer,
    unconfirmed,
)

#: The doc: "Do not send a value larger than 500 with the rows parameter
#: because the APIs do not permit a value of greater than 500."
PAGE_ROWS = 500
#: Passes over the device search when one comes up short of its totalCount.
MAX_PASSES = 3
#: A fleet of 5 million devices; past this a paging loop is a server bug.
MAX_PAGES = 10_000
#: The doc names no sort parameter; public clients send Spring-style
#: ``sortFields[0].name`` / ``sortFields[0].order`` (see ``_fetch_page``).
STABLE_SORT = {"sortFields[0].name": "id", "sortFields[0].order": "ASC"}

#: The device fields the plan, its undo rows and the attribute choices read.
PLAN_FIELDS = (
    "id",
    "guid",
    "serialNumber",
    "registrationState",
    "platformType",
    "supervised",
    "ownerId",
    "emailAddress",
    "uid",
    "customAttributes",
)

WIPE_STATES = frozenset({"WIPE_PENDING", "WIPE_SENT", "WIPED"})
RETIRE_STATES = frozenset({"RETIRE_PENDING", "RETIRE_SENT", "RETIRED"})
#: "Device should not be in the "ACTIVE" or "WIPE_PENDING" state when you run
#: the call against it." (Delete Device)
UNDELETABLE_STATES = frozenset({"ACTIVE", "WIPE_PENDING"})

#: Statuses where a batch may have failed because of one of its devices
#: (an id deleted since the look-up, a device in the wrong state): halve it.
#: 403, 405, 415 and 5xx are the same for every device, so splitting cannot help.
SPLIT_STATUSES = frozenset({400, 404, 409, 422})
#: A check answered with these: this server has no checkViability for the
#: action (404/405/501), or this account may not use it (403: the checks
#: "require Tenant Admin credentials", the commands only "Device Actions or
#: Device Management").
NO_CHECK_STATUSES = frozenset({403, 404, 405, 501})

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
    "message": _Bulk("message", "send a message to", "Message sent to {target}.", id_field="deviceIds", joined=True),
    # The doc shows a single id; deviceIds is comma-joined like the message
    # call's field of the same name.
    "assign-user": _Bulk(
        "updateAccount",
        "reassign",
        "Reassignment of {target} to {who} initiated (Ivanti finishes it when the device answers).",
        id_field="deviceIds",
        joined=True,
    ),
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


class _Refused(list[Outcome]):
    """The outcomes of a request refused as a whole (most likely for one of
    its devices): :func:`send_halving` tries each half."""


class _Fleet:
    """The device space's devices, indexed once per run. A device listed
    without a usable ``id`` is no match (no command can name it; two such
    devices must never become one): it is only the reason a row fails."""

    def __init__(self, listed: Sequence[Any]) -> None:
        self.devices = [d for d in listed if key(get_field(d, "id"))]
        self.count = len(self.devices)
        self.by_serial = Index("device", self.devices, lambda d: get_field(d, "serialNumber"))
        self.by_serial_folded = Index("device", self.devices, lambda d: get_field(d, "serialNumber"), fold=True)
        # A device_id column may hold the integer id or the GUID.
        self.by_ref = Index("device", self.devices, lambda d: [get_field(d, "id"), get_field(d, "guid")], fold=True)
        self.without_id = Index(
            "device",
            (d for d in listed if not key(get_field(d, "id"))),
            lambda d: [get_field(d, "serialNumber"), get_field(d, "guid")],
            fold=True,
        )


@dataclass(frozen=True, slots=True)
class _Cursor:
    """Where the next page of the device search starts."""

    start: int = 0
    #: the searchAfterValues to send ("" : page by start)
    after: str = ""
    #: False once this server refused or ignored the values it handed out
    after_ok: bool = True


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
        serial = key(get_field(device, "serialNumber"))
        return cls(
            key(dev_id),
            f"device {serial or dev_id}",
            key(get_field(device, "registrationState")).upper(),
            f"device_id={dev_id}",
            {"id": dev_id, "guid": get_field(device, "guid"), "serial": serial},
        )

    def undo_row(self, action: str, **columns: str) -> dict[str, str]:
        """A job row for this device (by id, and serial where it has one)."""
        serial = key(self.params["serial"])
        return {"action": action, "device_id": self.id, **({"serial": serial} if serial else {}), **columns}


#: registrationState once a device has carried out the command. The doc's
#: REGISTRATIONSTATE facet lists WIPE_PENDING, WIPE_SENT, WIPED and
#: RETIRE_PENDING, RETIRE_SENT, RETIRED: a wipe or retire is queued (PENDING),
#: sent to the device (SENT), and done once the device took it.
DONE_STATES = {"wipe": "WIPED", "retire": "RETIRED"}


class Ivanti(Provider):
    name = "ivanti"
    title = "Ivanti"
    actions = frozenset(BULK) | PER_DEVICE
    # wipe and retire: the device's registrationState (DONE_STATES). The other
    # device commands: "lastCheckin: Last client checkin." later than the
    # command, since a device takes what is queued for it when it checks in
    # (the doc's forceCheckin exists to make that sooner). The owner
    # (updateAccount), custom attributes and deletions are the MDM's own records.
    follow = {
        **{action: Follow.DEVICE for action in ("wipe", "retire", "lock", "unlock", "restart", "checkin", "message")},
        **{action: Follow.MDM for action in ("assign-user", "set-attribute", "delete-device")},
    }
    credential_fields = BASIC_CREDENTIAL_FIELDS
    credentials = BASIC_CREDENTIALS
    api_path = "/api/v1"
    simulator = "bulkmdm.sim.ivanti:make_app"
    # The doc gives no rate limit and no retry advice: the shared policy
    # (408, 429, 502, 503, 504 tried again; Retry-After honoured within its cap).
    retry_policy: ClassVar[RetryPolicy] = RetryPolicy()
    url_hint = "the tenant root, e.g. https://na1.mobileiron.com (requests go to URL/api/v1/...)"
    setup_hint = "the device space id (--partition) and the account's API permissions"
    # "dmPartitionId: Integer. The device space ID." Every device request carries it.
    extra_settings = (
        ExtraSetting("partition", "Device space id", "23505", digits=True, variable="BULKMDM_PARTITION_ID"),
    )
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
            raise ConfigError(
                f"ivanti's device space id is a number (dmPartitionId, e.g. 23505), not "
                f"{partition!r}: correct --partition or BULKMDM_PARTITION_ID."
            )
        self.partition = partition
        self._fleet: _Fleet | None = None
        #: account ids by casefolded email/uid, or why there is none
        self._owners: dict[str, Any] = {}
        #: False once the server refused STABLE_SORT
        self._sorted = True
        #: the totalCount of the current pass's first page
        self._total: int | None = None
        #: actions whose checkViability this server does not offer
        self._no_viability: set[str] = set()

    async def check_access(self) -> None:
        """One device of the device space: the credentials and the device space id both count."""
        await self._search({"dmPartitionId": self.partition, "rows": 1, "start": 0})

    # -- listing and paging -------------------------------------------------
    async def _search(self, params: Mapping[str, Any]) -> Any:
        """``GET device`` (the device search): the envelope's result;
        ListFailed for an error answer, a 2xx with ``errors`` included."""
        resp = await self.client.request("GET", "device", params=params)
        result, errors = _unwrap(resp.body)
        if not resp.ok or errors:
            raise ListFailed("device", resp)
        return result

    def _search_params(self, cursor: _Cursor) -> dict[str, Any]:
        params: dict[str, Any] = {"dmPartitionId": self.partition, "rows": PAGE_ROWS}
        if self._sorted:
            params.update(STABLE_SORT)
        if cursor.after:
            params["searchAfterValues"] = cursor.after
        else:
            params["start"] = cursor.start
        return params

    async def _fetch_page(self, cursor: _Cursor | None) -> tuple[list[Any], _Cursor | None]:
        """One page of the device search, 500 devices, and where the next
        starts (None: this was the last).

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
        search-after style, from the last device of the page) and sent back
        as given, comma-joined, with the same sort."""
        if cursor is None:
            self._total = None
        # past the totalCount, after a full page: only to make sure
        beyond = cursor is not None and self._total is not None and cursor.start >= self._total
        try:
            result, cursor = await self._read_page(cursor or _Cursor())
        except ListFailed:
            if beyond:
                return [], None  # refused past the count it gave: the list ended there
            raise
        page = as_list(result, "searchResults")
        total = as_int(get_field(result, "totalCount"))
        self._total = total if self._total is None else self._total
        start = cursor.start + len(page)
        if not page or (total is not None and start >= total and len(page) < PAGE_ROWS):
            # A full page is followed by one more ask, whatever totalCount
            # says: "totalCount" is not described, and a server counting the
            # page, or counting short, would otherwise lose the devices after it.
            return page, None
        return page, _Cursor(start, _continuation(result, page) if cursor.after_ok else "", cursor.after_ok)

    async def _read_page(self, cursor: _Cursor) -> tuple[Any, _Cursor]:
        """The search answer for ``cursor``, and the cursor it was read with:
        a server that refuses the continuation values it handed out, or
        answers them with the same page again, is paged by ``start`` from
        there; one that refuses the sort with 400 on the first page (the doc
        has no sortFields) is asked the doc's way, and the extra passes of
        :meth:`_fetch_fleet` cover an order that moves."""
        try:
            result = await self._search(self._search_params(cursor))
        except ListFailed as exc:
            if cursor.after:
                return await self._read_page(_Cursor(cursor.start, "", False))
            if not self._sorted or cursor.start or exc.resp.status != 400:
                raise
            self._sorted = False
            return await self._read_page(cursor)
        if cursor.after and _continuation(result, as_list(result, "searchResults")) == cursor.after:
            return await self._read_page(_Cursor(cursor.start, "", False))
        return result, cursor

    async def _fetch_slim_page(self, cursor: _Cursor | None) -> tuple[list[Any], _Cursor | None]:
        """A page of the search with only the fields a plan reads: a device
        of the real service has some 130, and a fleet is held for the run."""
        page, following = await self._fetch_page(cursor)
        return [
            {name: get_field(device, name) for name in PLAN_FIELDS} for device in page if isinstance(device, Mapping)
        ], following

    async def _fetch_fleet(self) -> _Fleet:
        """Every device of the device space, each once.

        A pass that comes up short of the ``totalCount`` of its first page
        (a server that ignores or refuses the sort, a device deleted while we
        paged) is followed by another, while passes still find devices; a
        later pass that fails keeps what the first found."""
        by_id: dict[str, Any] = {}
        without_id: list[Any] = []
        for number in range(MAX_PASSES):
            try:
                listed = await collect_pages(self._fetch_slim_page, ident=lambda d: d["id"], max_pages=MAX_PAGES)
            except (ListFailed, TransportError):
                if number == 0:
                    raise
                break
            before = len(by_id)
            for device in listed:
                if dev_id := key(get_field(device, "id")):
                    by_id.setdefault(dev_id, device)
                elif number == 0:
                    without_id.append(device)
            found = len(by_id) + len(without_id)
            if self._total is None or found >= self._total or (number and len(by_id) == before):
                break
        return _Fleet([*by_id.values(), *without_id])

    # -- following through ---------------------------------------------------
    async def look(self, rows: Sequence[Tracked]) -> list[Sighting]:
        """The device search, paged as for a run (500 devices a request, by
        id), read until every tracked device was seen: each row's device
        shows its change by its ``registrationState`` (wipe, retire) or a
        ``lastCheckin`` after the change went out (the other commands)."""
        wanted = {resolved_ids(row.resolved).get("device_id", "") for row in rows} - {""}
        found: dict[str, Any] = {}
        try:
            async for device in iter_pages(self._fetch_page, ident=lambda d: get_field(d, "id"), max_pages=MAX_PAGES):
                dev_id = key(get_field(device, "id"))
                if dev_id in wanted:
                    found[dev_id] = device
                    if len(found) == len(wanted):
                        break
        except ListFailed as exc:
            raise self._list_error(exc) from None
        return [_sighting(row, found.get(resolved_ids(row.resolved).get("device_id", ""))) for row in rows]

    # -- export and templates ---------------------------------------------
    async def inventory(self) -> AsyncIterator[dict[str, str]]:
        """One row per device of the device space, streamed page by page:
        the job columns ``serial``, ``device_id``, ``name``, ``email``,
        ``user`` (the uid), plus ``model``, ``platform`` and
        ``registration_state`` (which actions a device takes depends on it:
        Ivanti deletes only retired devices). Values are text, as the MDM
        sent them (ids exact, serials with their leading zeros)."""
        try:
            async for device in iter_pages(self._fetch_page, ident=lambda d: get_field(d, "id"), max_pages=MAX_PAGES):
                yield _inventory_row(device)
        except ListFailed as exc:
            raise self._list_error(exc) from None

    async def choices(self, column: str) -> list[str]:
        """Names to offer for a template's column. Ivanti's device API has
        no tags, groups or apps; for ``attribute`` the names of the custom
        attributes the device space's devices carry (one read of the list)."""
        if column != "attribute":
            return []
        try:
            fleet = self._fleet or await self._fetch_fleet()
        except ListFailed as exc:
            raise self._list_error(exc) from None
        names = {
            name.casefold(): name for device in fleet.devices for name in _attrs(get_field(device, "customAttributes"))
        }
        return sorted(names.values(), key=str.casefold)

    def _list_error(self, exc: ListFailed) -> Exception:
        """A list read outside the plan, as the error tree has it (the CLI
        says it in one sentence): a set-up that is wrong stops as a run would."""
        self._stop_if_setup_is_wrong(exc)
        return TransportError(exc.detail(), status=exc.resp.status, attempts=exc.resp.attempts)

    # -- users ----------------------------------------------------------------
    async def _find_owner(self, who: str) -> None:
        """Look up a user's account id once per run (see :meth:`_owner`)."""
        folded = who.strip().casefold()
        if folded not in self._owners:
            try:
                self._owners[folded] = await self._search_owner(who.strip())
            except LookupFailed as exc:
                self._owners[folded] = exc
            except ListFailed as exc:
                self._owners[folded] = LookupFailed(exc.detail().rstrip("."), exc.code)
            except TransportError as exc:
                self._owners[folded] = LookupFailed(f"could not search the devices of {who}: {exc}", error_reason(exc))

    def _owner(self, who: str) -> Any:
        """The account id of a user: the ``ownerId`` of a device found by
        "List Devices by UID or Email Address" (CONTRACT.md)."""
        found = self._owners.get(who.strip().casefold())
        if found is None:
            raise LookupFailed(f"the devices of {who} were not searched", Reason.INVALID_ROW)
        if isinstance(found, Exception):
            raise found
        return found

    async def _search_owner(self, who: str) -> Any:
        searches = [("EMAILADDRESS", "emailAddress")] if "@" in who else []
        searches.append(("UID", "uid"))  # uid is often the email address too
        refused: ListFailed | None = None
        without_owner: set[str] = set()  # devices of this user listed without an ownerId
        # Every search is made and the owners pooled: an address that is one
        # account's e-mail and another's uid names neither.
        found: list[tuple[str, list[Any]]] = []
        for field, attr in searches:
            # "?q=&dmPartitionId=23505&fq=EMAILADDRESS+EQ+<email>"
            try:
                result = await self._search({"q": "", "dmPartitionId": self.partition, "fq": f"{field} EQ {who}"})
                devices = as_list(result, "searchResults")
            except ListFailed as exc:
                if self._fleet is None:
                    refused = refused or exc
                    continue
                # A server that ignores the fq filter answers with an unfiltered
                # first page, one that does not know it with an error; the device
                # list of this run carries the same emailAddress/uid/ownerId fields.
                devices = self._fleet.devices
            # The doc's example answer has " [email protected]" with a
            # leading space: compare trimmed, case-insensitively.
            mine = [d for d in devices if key(get_field(d, attr)).casefold() == who.casefold()]
            found.append((attr, [owner for d in mine if key(owner := get_field(d, "ownerId"))]))
            without_owner.update(
                key(get_field(d, "id")) or json.dumps(d, default=str) for d in mine if not key(get_field(d, "ownerId"))
            )
        if not any(owners for _attr, owners in found) and self._fleet is not None:
            found = [
                (
                    attr,
                    [
                        o
                        for d in self._fleet.devices
                        if key(get_field(d, attr)).casefold() == who.casefold() and key(o := get_field(d, "ownerId"))
                    ],
                )
                for _field, attr in searches
            ]
        if any(owners for _attr, owners in found):
            return one_across(who, "user", "account", found, ident=key, name=lambda owner: f"account {key(owner)}")
        if refused is not None:
            raise refused
        if without_owner:
            raise LookupFailed(
                f"the MDM lists {len(without_owner)} device(s) of {who} without an account id "
                "(their 'ownerId' field is missing or empty), so the account cannot be found; add "
                "the account id in a user_id column",
                Reason.BAD_ANSWER,
            )
        raise LookupFailed(
            f"no device in device space {self.partition} belongs to {who}, so their account id cannot be found "
            "(Ivanti's device API finds a user only through a device they own)"
        )

    # -- planning -------------------------------------------------------------
    async def prepare(self, rows: Sequence[JobRow]) -> _Fleet:
        """The device space's devices (once per run), and the account ids of
        the users the rows assign devices to."""
        if self._fleet is None:
            self._fleet = await self._fetch_fleet()
            if not self._fleet.count:
                # a wrong dmPartitionId is answered with an empty space, not an
                # error: every row would fail "not found among 0"
                raise SetupFailed(
                    f"Device space {self.partition} at {self.settings.url} lists no devices; check --partition "
                    "(or BULKMDM_PARTITION_ID): it is the dmPartitionId of the space that holds the job's "
                    "devices. Nothing was sent."
                )
        users = {
            who.casefold(): who
            for row in rows
            if row.action == "assign-user"
            and not row.get("user_id")
            and (who := (row.get("user") or row.get("email")).strip())
        }
        await asyncio.gather(*(self._find_owner(who) for who in users.values()))
        return self._fleet

    def plan_row(self, row: JobRow, lists: Any) -> Step | Outcome:
        if row.action not in self.actions:
            return failed(
                row,
                f"ivanti cannot {row.action or 'do this'}; it can {', '.join(sorted(self.actions))}.",
                reason=Reason.INVALID_ROW,
            )
        device = self._device(row, lists)
        target = _Target.of(device)
        if row.action == "assign-user":
            return self._plan_assign(row, device, target)
        if row.action == "set-attribute":
            return self._plan_attribute(row, device, target)
        if row.action == "delete-device":
            return self._plan_delete(row, device, target)
        return self._plan_command(row, device, target)

    def _device(self, row: JobRow, fleet: _Fleet) -> Any:
        ref, serial = row.get("device_id"), row.get("serial")
        if ref:
            if not fleet.by_ref.find(ref) and fleet.without_id.find(ref):
                raise LookupFailed(_no_id(f"device {ref}"), Reason.BAD_ANSWER)
            device = fleet.by_ref.one(ref, "device id")
            actual = key(get_field(device, "serialNumber"))
            if serial and actual.casefold() != serial.casefold():
                raise LookupFailed(
                    f"device id {ref} has serial {actual or '(none)'}, not {serial}; correct one of the two columns",
                    Reason.INVALID_ROW,
                )
            return device
        if not serial:
            raise LookupFailed("the serial is blank", Reason.INVALID_ROW)
        found = fleet.by_serial.find(serial) or fleet.by_serial_folded.find(serial)
        if not found and fleet.without_id.find(serial):
            raise LookupFailed(_no_id(f"serial {serial}"), Reason.BAD_ANSWER)
        if not found:
            raise LookupFailed(
                f"serial {serial} was not found among the {fleet.count} devices of device space {self.partition}"
            )
        if len(found) > 1:
            which = ", ".join(
                f"id {get_field(d, 'id')} {get_field(d, 'registrationState') or ''}".strip() for d in found[:5]
            )
            raise LookupFailed(
                f"serial {serial} matches {len(found)} devices ({which}); give the device_id column instead",
                Reason.AMBIGUOUS,
            )
        return found[0]

    def _plan_assign(self, row: JobRow, device: Any, target: _Target) -> Step | Outcome:
        who = (row.get("user") or row.get("email") or row.get("user_id")).strip()
        # An account id in user_id is used as given (the undo rows carry the
        # previous owner's, who may own no other device by then).
        account = row.get("user_id").strip() or self._owner(who)
        resolved = f"{target.resolved}; account_id={account}"
        if same := self.changes.once(row, ("assign-user", target.id, key(account)), resolved):
            return same
        if clash := self.changes.only_one(
            row, ("assign-user", target.id), f"{cap(target.name)} is also assigned", resolved
        ):
            return clash
        previous = get_field(device, "ownerId")
        if key(previous) == key(account):
            return skipped(row, f"{cap(target.name)} already belongs to {who}; nothing sent.", resolved)
        undo = None
        if key(previous):
            before = key(get_field(device, "emailAddress")) or key(get_field(device, "uid")) or key(previous)
            undo = target.undo_row("assign-user", user=before, user_id=key(previous))
        return Step(
            row,
            "assign-user",
            target.name,
            {**target.params, "account": account, "who": who},
            resolved,
            ("assign-user", key(account)),
            undo=undo,
        )

    def _plan_attribute(self, row: JobRow, device: Any, target: _Target) -> Step | Outcome:
        name, value = row.get("attribute"), row.get("value")
        if same := self.changes.once(row, ("set-attribute", target.id, name, value), target.resolved):
            return same
        if clash := self.changes.only_one(
            row, ("set-attribute", target.id, name), f"{name!r} of {target.name} is also set", target.resolved
        ):
            return clash
        # The device search carries "customAttributes": {"attrs": {...}},
        # or null for a device without any: no extra request to skip rows
        # already done.
        before = _attrs(get_field(device, "customAttributes")).get(name)
        if before == [value]:
            return skipped(row, f"{cap(target.name)} already has {name} = {value!r}; nothing sent.", target.resolved)
        # Only one earlier value can be put back by a set-attribute row (an
        # attribute the device did not have, or several values, cannot).
        undo = (
            target.undo_row("set-attribute", attribute=name, value=before[0])
            if (before and len(before) == 1 and before[0])
            else None
        )
        return Step(
            row,
            "set-attribute",
            target.name,
            {**target.params, "name": name, "value": value},
            target.resolved,
            ("set-attribute", row.index),
            undo=undo,
        )

    def _plan_delete(self, row: JobRow, device: Any, target: _Target) -> Step | Outcome:
        email = row.get("email")
        owner_email = key(get_field(device, "emailAddress"))
        if email and owner_email.casefold() != email.casefold():
            return failed(
                row,
                f"{cap(target.name)} belongs to {owner_email or 'nobody'}, not {email}; nothing sent.",
                target.resolved,
                reason=Reason.INVALID_ROW,
            )
        if target.state in UNDELETABLE_STATES:
            return failed(
                row,
                f"{cap(target.name)} is {target.state}; Ivanti deletes only retired devices. "
                "Retire it first, then run the report again.",
                target.resolved,
                reason=Reason.REFUSED,
            )
        if same := self.changes.once(row, ("delete-device", target.id), target.resolved):
            return same
        return Step(row, "delete-device", target.name, target.params, target.resolved, ("delete-device", row.index))

    def _plan_command(self, row: JobRow, device: Any, target: _Target) -> Step | Outcome:
        """The bulk commands: nothing to read back or undo."""
        action, state, name = row.action, target.state, cap(target.name)
        if action in ("unlock", "restart", "message") and state and state != "ACTIVE":
            # No viability check is documented for these, and their answer is
            # a bare count: refuse here what the MDM would silently drop.
            return failed(
                row,
                f"{name} is {state}; the MDM sends commands only to active devices.",
                target.resolved,
                reason=Reason.REFUSED,
            )
        if action == "restart":
            platform = key(get_field(device, "platformType")).upper()
            if (platform and platform != "IOS") or get_field(device, "supervised") is False:
                if platform in ("IOS", ""):
                    what = "an unsupervised iOS device" if platform else "an unsupervised device"
                else:
                    what = f"{'an' if platform[0] in 'AEIOU' else 'a'} {platform} device"
                return failed(
                    row,
                    f"{name} is {what}; Ivanti restarts only supervised iOS devices "
                    '("Restart Supervised iOS Devices").',
                    target.resolved,
                    reason=Reason.REFUSED,
                )
        if (action == "wipe" and state in WIPE_STATES) or (action == "retire" and state in RETIRE_STATES):
            return skipped(row, f"{name} is already {state}; nothing sent.", target.resolved)
        params = dict(target.params)
        batch: tuple[Any, ...] = (action,)
        if action == "message":
            params["message"] = row.get("message")
            batch = ("message", row.get("message"))
        if same := self.changes.once(row, (*batch, target.id), target.resolved):
            return same
        return Step(
            row, action, target.name, params, target.resolved, (action, row.index) if action in SINGLE else batch
        )

    # -- sending --------------------------------------------------------------
    async def send_batch(self, steps: list[Step], context: RequestContext) -> list[Outcome]:
        spec = BULK.get(steps[0].action)
        if spec is None:
            return await super().send_batch(steps, context)  # set-attribute, delete-device: one request each
        verdicts = await self._verdicts(spec, steps, context) if spec.viability else [planned(s) for s in steps]
        eligible = [s for s, v in zip(steps, verdicts, strict=True) if v.status in (Status.PLANNED, Status.UNKNOWN)]
        sent = (
            await send_halving(eligible, lambda part: self._command(spec, part, context), _refused_whole)
            if eligible
            else []
        )
        by_index = {o.index: o for o in sent}
        unchecked = [v for v in verdicts if v.status is Status.UNKNOWN]
        if (
            unchecked
            and all(o.status is Status.SUCCEEDED for o in sent)
            and all(v.http_status is not None and 400 <= v.http_status < 500 for v in unchecked)
        ):
            # The check refused what the command then took: this server
            # refuses the check itself. Stop asking it for this action.
            self._no_viability.add(spec.segment)
        return [by_index.get(v.index, v) for v in verdicts]

    async def check(self, steps: Sequence[Step]) -> list[Outcome]:
        """Dry run: the documented checkViability says which devices cannot."""
        spec = BULK.get(steps[0].action) if steps else None
        if spec is None or not spec.viability:
            return [_planned(s) for s in steps]
        return [
            Outcome(v.index, Status.FAILED, v.detail, v.http_status, v.attempts, v.resolved, reason=v.reason)
            if v.status is Status.UNKNOWN
            else v
            for v in await self._verdicts(spec, list(steps))
        ]

    async def _verdicts(self, spec: _Bulk, steps: list[Step], context: RequestContext = NO_CONTEXT) -> list[Outcome]:
        """Per step: PLANNED (eligible), FAILED (not eligible, with the
        vendor's reason; or no answer), UNKNOWN (the check failed: a real run
        sends the command unchecked and its own answer decides)."""
        if spec.segment in self._no_viability:
            note = f" (the MDM offers no eligibility check for {spec.segment}; the real run sends it unchecked)"
            return [planned(s, _planned(s).detail[:-1] + note + ".") for s in steps]
        return await send_halving(steps, lambda part: self._check_part(spec, part, context), _refused_whole)

    async def _check_part(self, spec: _Bulk, steps: list[Step], context: RequestContext) -> list[Outcome]:
        # "https://[Ivanti Neurons for MDM]/api/v1/device/forceCheckin?checkViability=true&ids=22062&ids=22196"
        query = urlencode([("checkViability", "true"), *(("ids", key(s.params["id"])) for s in steps)])
        try:
            resp = await self.client.request("GET", f"device/{spec.segment}?{query}", context=context)
        except TransportError as exc:
            return [outcome_from_error(s, exc) for s in steps]
        result, errors = _unwrap(resp.body)
        if resp.status in NO_CHECK_STATUSES:
            self._no_viability.add(spec.segment)
            note = (
                f" (the MDM offers no eligibility check for {spec.segment}: HTTP {resp.status}; "
                "the real run sends it unchecked)"
            )
            return [planned(s, _planned(s).detail[:-1] + note + ".") for s in steps]
        if not resp.ok or errors:
            return _refused(steps, resp, errors, Status.UNKNOWN, f"Could not check whether the MDM would {spec.verb}")
        eligible = _eligible_count(result)
        if eligible is not None and eligible <= 0:
            none = "the MDM's check counts none of them eligible"
            return [_not_eligible(spec, s, none, resp) for s in steps]
        rejected = _rejections(result, steps, strict=False)
        if (eligible is not None and eligible < len(steps)) or rejected is None:
            # "result: Number of eligible devices" (the relinquish check's
            # answer) that does not say which, or a list cut short: halves
            return _Refused(planned(s) for s in steps)
        return [
            _planned(s) if (why := _rejection_for(rejected, s)) is None else _not_eligible(spec, s, why, resp)
            for s in steps
        ]

    async def _command(self, spec: _Bulk, steps: list[Step], context: RequestContext) -> list[Outcome]:
        try:
            # A PUT, yet a second lock is a second command to the device:
            # like every change, resent after a lost answer only if a
            # read-back says it was not applied; without one the rows are
            # "unknown".
            resp = await self.client.request(
                "PUT",
                f"device/{spec.segment}",
                data=self._form(spec, steps),
                verify=self._verifier(spec, steps),
                # a read-back is a read of every device in the batch: worth it
                # for a lost answer, not for one that is merely slow
                read_back_held=len(steps) == 1,
                context=context,
            )
        except TransportError as exc:
            return [outcome_from_error(s, exc) for s in steps]
        result, errors = _unwrap(resp.body)
        if not resp.ok or errors:
            return _refused(steps, resp, errors, Status.FAILED, f"The MDM refused to {spec.verb}")
        problem = not_an_answer(result) if not resp.verified else None
        if problem is not None:
            return [unconfirmed(step, resp, problem) for step in steps]
        return _accepted(spec, steps, resp, result)

    def _form(self, spec: _Bulk, steps: list[Step]) -> MultiDict[str]:
        ids = list(dict.fromkeys(key(s.params["id"]) for s in steps))
        form: MultiDict[str] = MultiDict()
        if spec.segment == "updateAccount":
            form.add("accountId", key(steps[0].params["account"]))
        if spec.segment == "message":
            # "sendPushNotification=true&pushNotificationMessage=...&sendEmail=false&emailSubject=
            #  &emailBody=&dmPartitionId=23003&deviceIds=370872%2C383279"
            for name, value in (
                ("sendPushNotification", "true"),
                ("pushNotificationMessage", steps[0].params["message"]),
                ("sendEmail", "false"),
                ("emailSubject", ""),
                ("emailBody", ""),
                ("dmPartitionId", self.partition),
            ):
                form.add(name, value)
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
            for name, value in (
                ("osxWipePin", ""),
                ("iosDisallowProximitySetup", "false"),
                ("iosPreserveDataPlan", "false"),
                ("message", ""),
                ("returnToServiceEnabled", "false"),
            ):
                form.add(name, value)
        return form

    def _verifier(self, spec: _Bulk, steps: list[Step]) -> Verify | None:
        """Whether a command whose answer was lost took effect on every
        device (True), on none (False: resend), or cannot be told (None)."""
        if spec.segment == "updateAccount":

            def applied(device: Any, step: Step) -> bool:
                return key(get_field(device, "ownerId")) == key(step.params["account"])
        elif spec.states:

            def applied(device: Any, step: Step) -> bool:
                return key(get_field(device, "registrationState")).upper() in spec.states
        else:
            return None  # lock, unlock, restart, check-in, message leave nothing to read back
        each = [self._read_back_device(step, applied) for step in steps]

        async def verify(context: RequestContext) -> bool | None:
            flags = await asyncio.gather(*(one(context) for one in each))
            if all(flag is True for flag in flags):
                return True
            return False if all(flag is False for flag in flags) else None

        return verify

    def _read_back_device(self, step: Step, applied: Callable[[Any, Step], bool]) -> Verify:
        def fetch(context: RequestContext) -> Awaitable[Response]:
            return self.client.request("GET", f"device/{seg(step.params['id'])}", context=context)

        def in_place(body: Any) -> bool | None:
            device = _unwrap(body)[0]
            return applied(device, step) if isinstance(device, Mapping) else None

        return read_back(fetch, in_place)

    async def send(self, step: Step, context: RequestContext) -> Outcome:
        """set-attribute and delete-device, one device a request."""
        path_id = seg(step.params["id"])
        if step.action == "set-attribute":
            name, value = step.params["name"], step.params["value"]
            # PATCH keeps the other attributes (the POST of "Add/Replace" would
            # delete them). forceOverwrite makes a resend harmless.
            resp = await self.client.request(
                "PATCH",
                f"device/{path_id}/customattributes",
                json={"attrs": {name: [value]}, "forceOverwrite": True},
                # a 404 to that read proves the device deleted meanwhile: the row fails not-found
                verify=read_back(
                    lambda context: self.client.request("GET", f"device/{path_id}/customattributes", context=context),
                    lambda body: _attrs(_unwrap(body)[0]).get(name) == [value],
                    missing=step.target,
                ),
                context=context,
            )
            done, what = f"Attribute {name} set to {value!r} on {step.target}.", f"The MDM refused to set {name} on"
        else:

            async def device_or_none(context: RequestContext) -> Response:
                read = await self.client.request("GET", f"device/{path_id}", context=context)
                return Response(200, {"result": None}) if read.status == 404 else read

            # The URI and example say "DELETE /api/v1/device?deviceIds={id}"
            # (the parameter table's "ids / Request body" is a copy of Retire's).
            # One device per request: the answer ("result": 1) cannot say which
            # of several devices was refused, and this one cannot be undone.
            resp = await self.client.request(
                "DELETE",
                "device",
                params={"deviceIds": key(step.params["id"])},
                verify=read_back(device_or_none, lambda body: not _unwrap(body)[0]),
                context=context,
            )
            done, what = f"{cap(step.target)} deleted.", "The MDM refused to delete"
        result, errors = _unwrap(resp.body)
        if not resp.ok or errors:
            return Outcome(
                step.index,
                Status.FAILED,
                _refusal(resp, errors, f"{what} {step.target}"),
                resp.status,
                resp.attempts,
                step.resolved,
                reason=_refusal_code(resp),
            )
        problem = not_an_answer(result) if not resp.verified else None
        if problem is not None:
            return unconfirmed(step, resp, problem)
        if result in (0, False) and not resp.verified:
            return Outcome(
                step.index,
                Status.FAILED,
                f"The MDM answered but changed nothing on {step.target} (result {result!r}).",
                resp.status,
                resp.attempts,
                step.resolved,
                reason=Reason.REFUSED,
            )
        if resp.verified:
            done += f" ({cap(READ_BACK_CONFIRMED)}.)"
        return Outcome(
            step.index, Status.SUCCEEDED, done, resp.status, resp.attempts, step.resolved, reason=done_reason(resp)
        )


# -- reading the answers --------------------------------------------------------


def _unwrap(body: Any) -> tuple[Any, str]:
    """The envelope's ``result``, and its ``errors`` as one line ("" when
    none): "Ivanti answers 200 with errors in the body", so the envelope decides."""
    if isinstance(body, Mapping) and ("errors" in body or "result" in body):
        return body.get("result"), _errors_text(body.get("errors"))
    return body, ""


def _splittable(resp: Response, errors: str) -> bool:
    """A refusal that may be down to one device of the request."""
    return resp.status in SPLIT_STATUSES or (resp.ok and bool(errors))


def _refused_whole(outcomes: list[Outcome]) -> bool:
    return isinstance(outcomes, _Refused)


def _refused(steps: Sequence[Step], resp: Response, errors: str, status: Status, what: str) -> list[Outcome]:
    """Every step of a request refused as a whole, ``status``, "``what`` <target> ...";
    a :class:`_Refused` when the refusal may be down to one device of it."""
    outcomes = [
        Outcome(
            s.index,
            status,
            _refusal(resp, errors, f"{what} {s.target}"),
            resp.status,
            resp.attempts,
            s.resolved,
            reason=_refusal_code(resp),
        )
        for s in steps
    ]
    return _Refused(outcomes) if _splittable(resp, errors) else outcomes


def _refusal_code(resp: Response) -> Reason:
    """An error answer's code, or REFUSED for a 2xx whose envelope holds errors."""
    return Reason.REFUSED if resp.ok else Reason.of_http(resp.status)


def _refusal(resp: Response, errors: str, what: str) -> str:
    """Why a request was refused: the vendor's own words say more than a generic hint for the status."""
    if not errors:
        return explain_response(resp)
    tries = f" after {resp.attempts} attempts" if resp.attempts > 1 else ""
    return f"{what} (HTTP {resp.status}{tries}): {errors}."


def _accepted(spec: _Bulk, steps: list[Step], resp: Response, result: Any) -> list[Outcome]:
    """What a 2xx answer to a command says about each of its devices."""

    def ok(step: Step) -> Outcome:
        detail = cap(spec.done.format(target=step.target, who=step.params.get("who", "")))
        if resp.verified:
            detail += f" ({cap(READ_BACK_CONFIRMED)}.)"
        return Outcome(
            step.index, Status.SUCCEEDED, detail, resp.status, resp.attempts, step.resolved, reason=done_reason(resp)
        )

    def each(status: Status, detail: str, reason: Reason) -> list[Outcome]:
        return [
            Outcome(
                s.index, status, detail.format(target=s.target), resp.status, resp.attempts, s.resolved, reason=reason
            )
            for s in steps
        ]

    if resp.verified or result is None or result is True:
        return [ok(s) for s in steps]
    if isinstance(result, (Mapping, list)):
        # updateAccount: "List of devices that were not eligible for
        # reassignment, and hence rejected. Empty list, if all the devices
        # have been initiated reassignment."
        rejected = _rejections(result, steps, strict=spec.segment == "updateAccount") or {}
        return [
            ok(s) if (why := _rejection_for(rejected, s)) is None else _not_eligible(spec, s, why, resp) for s in steps
        ]
    if result is False or (isinstance(result, (int, float)) and result <= 0):
        return each(
            Status.FAILED,
            f"The MDM accepted the request but did not {spec.verb} {{target}} "
            f"(result {result!r}); check that it is enrolled and eligible.",
            Reason.REFUSED,
        )
    if isinstance(result, int) and result < len(steps):
        # A count of the devices acted on: forceCheckin answers 2 for
        # "ids=22062&ids=22196", logoutUser documents "Number of devices to
        # which the API call sent the logout request", and every single-id
        # example answers 1. (Only scheduleOSUpdate, which bulkmdm does not
        # send, calls 1 "success".) Fewer than sent, 1 included: some were
        # dropped without saying which.
        return each(
            Status.UNKNOWN,
            f"The MDM carried out the request for {result} of the {len(steps)} devices "
            "in it without saying which; check {target} before sending it again.",
            Reason.BAD_ANSWER,
        )
    return [ok(s) for s in steps]


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
            message = key(get_field(item, "message", "description", "code"))
            field_name = key(get_field(item, "field"))
            if message:
                parts.append(f"{field_name}: {message}" if field_name else message)
        elif item:
            parts.append(str(item))
    return "; ".join(parts)[:300]


#: per-device "status" values of an answer that lists every device it was sent
_DONE = frozenset(
    {
        "SUCCESS",
        "SUCCEEDED",
        "SUCCESSFUL",
        "OK",
        "ACCEPTED",
        "INITIATED",
        "SENT",
        "QUEUED",
        "PENDING",
        "TRUE",
        "DONE",
        "COMPLETED",
    }
)


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
        total = as_int(get_field(result, "totalCount"))
    else:
        return {}
    if total is not None and total > len(devices):
        return None
    listed = {
        key(ref).casefold()
        for device in devices
        for ref in ((get_field(device, "id"), get_field(device, "guid")) if isinstance(device, Mapping) else (device,))
        if key(ref)
    }
    every = bool(steps) and all(
        key(s.params.get("id")).casefold() in listed or key(s.params.get("guid")).casefold() in listed for s in steps
    )
    out: dict[str, str] = {}
    for device in devices:
        if not isinstance(device, Mapping):
            if isinstance(device, (str, int)) and not isinstance(device, bool) and key(device):
                out[key(device).casefold()] = ""
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
            if key(ref):
                out[key(ref).casefold()] = reason
    return out


def _rejection_for(rejected: Mapping[str, str], step: Step) -> str | None:
    for ref in (step.params.get("id"), step.params.get("guid")):
        if key(ref) and key(ref).casefold() in rejected:
            return rejected[key(ref).casefold()]
    return None


def _planned(step: Step) -> Outcome:
    p = step.params
    if step.action == "set-attribute":
        return planned(step, f"Would set {p['name']} to {p['value']!r} on {step.target}.")
    if step.action == "assign-user":
        return planned(step, f"Would reassign {step.target} to {p['who']}.")
    spec = BULK.get(step.action)
    return planned(step, f"Would {spec.verb if spec else 'delete'} {step.target}.")


def _not_eligible(spec: _Bulk, step: Step, reason: str, resp: Response) -> Outcome:
    why = reason or "the MDM gave no reason"
    return Outcome(
        step.index,
        Status.FAILED,
        f"The MDM says it cannot {spec.verb} {step.target}: not eligible: {why}.",
        resp.status,
        resp.attempts,
        step.resolved,
        reason=Reason.REFUSED,
    )


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


def _inventory_row(device: Any) -> dict[str, str]:
    fields = {
        "serial": "serialNumber",
        "device_id": "id",
        "name": "deviceName",
        "email": "emailAddress",
        "user": "uid",
        "platform": "platformType",
        "registration_state": "registrationState",
    }
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
    return (
        f"the MDM lists {what} without a device id (its 'id' field is missing or empty), so no command can "
        "name it; check the device in the Ivanti portal"
    )


def _sighting(row: Tracked, device: Any) -> Sighting:
    """Whether ``device`` (from the search) shows ``row``'s change."""
    if device is None:
        return Sighting(row.index, None, "The device is not in the device space's search any more.")
    state = key(get_field(device, "registrationState")).upper()
    checkin = as_int(get_field(device, "lastCheckin"))
    seen = checkin / 1000 if checkin else None
    done = DONE_STATES.get(row.action)
    if done is not None:
        if state == done:
            # when it happened: the check-in that reported it, where that is after the command
            return Sighting(row.index, seen if seen and seen >= row.sent_at else time.time(), f"{state}.")
        return Sighting(row.index, None, f"registrationState is {state or 'not given'}.")
    if seen is not None and seen > row.sent_at:
        return Sighting(row.index, seen, "The device checked in after the command.")
    return Sighting(row.index, None, "The device has not checked in since the command.")


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
