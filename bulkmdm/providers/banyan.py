"""Banyan end users and devices (vendor doc: banyan-users-devices-api.txt).

Every request goes to ``<api endpoint>/v1/...`` or ``/v2/...`` with
``Authorization: Bearer <BULKMDM_TOKEN>``. What each action sends:

    ban / unban     POST   v1/mdm/update_device?SerialNumber=S   {"Banned": true | false, <the device's fields>}
                                                     on a 400:    [{"Banned": "TRUE" | "FALSE", ...}] (the doc's)
    delete-device   DELETE v1/delete_device?SerialNumber=S[&Email=E]
                                                on a 404/405:     v1/v1/delete_device (the doc's)
    delete-user     DELETE v2/endusers                           {"enduser_ids": [ID]}

Where the doc and Banyan's own client (banyansecurity/pybanyan) disagree, the
client's form goes first (a real server most likely does what that code does)
and the doc's is tried when the server refuses it; whichever is answered is
kept for the rest of the run (:class:`_TwoForms`).

Banyan acts on devices by *serial number*, not by device id: update_device
"Updates all end user devices for given serial number". A serial that several
devices hold therefore fails the row (it would change all of them), even when
the row names one of them by ``device_id``.

Look-ups come from ``GET v1/devices`` and, for end users, ``GET v2/enduser``
(ids: see :meth:`Banyan._read_users`), read once per run page by page
(``skip``/``limit``), or in one go when a server refuses the paging (the
doc's non-paginated form). Fields are read under the doc's names
(``SerialNumber``, ``DeviceID``, ``Banned``, ``Emails``, ``Email``) and
pybanyan's (``id``, ``email``, ``status``). The doc's paginated device
example carries no ``Emails``; when a page lacks them and a delete-device row
names an e-mail, they are read from ``GET v1/devices?serialnumber=S`` (the
doc's non-paginated example has them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..errors import BadAnswer, TransportError
from ..model import JobRow, Outcome, Reason, Status, Step
from ..client import NO_CONTEXT, Auth, HeaderAuth, RequestContext, Response
from .base import (
    Credential,
    Follow,
    Index,
    ListFailed,
    LookupFailed,
    Page,
    Provider,
    as_int,
    as_list,
    cap,
    error_reason,
    collect_pages,
    env_required,
    failed,
    failure_in_2xx,
    fkey,
    gather_bounded,
    get_field,
    key,
    outcome_from_response,
    read_back,
    sentence,
    skipped,
)

DEVICE_ACTIONS = frozenset({"ban", "unban", "delete-device"})
#: records asked for per listing page; a server that caps pages lower is fine,
#: the next page starts after what actually came
PAGE = 500

# The doc gives the path twice as "DELETE /v1/v1/delete_device" (request line
# and curl); Banyan's published OpenAPI description ("delete /v1/delete_device
# | Delete Enduser Device") and pybanyan (delete_uri = '/delete_device' under
# its '/api/v1' base) use "/v1/delete_device". The real one goes first, the
# doc's on a 404/405 ("no such route": the doc lists only 200/400/500 here).
DELETE_DEVICE_PATHS = ("v1/delete_device", "v1/v1/delete_device")
#: what a server answers for a path or method it does not have
NO_ROUTE = frozenset({404, 405})
#: the device fields pybanyan's ``DeviceAPI.update`` (and Banyan's Google Apps
#: Script integration) send back with ``Banned``; the doc's example body has
#: the same (OS aside)
DEVICE_FIELDS = ("Model", "Ownership", "Platform", "OS", "Architecture")


def _serial(device: Any) -> str:
    return key(get_field(device, "SerialNumber", "Serialnumber", "serial_number"))


def _device_id(device: Any) -> str:
    return key(get_field(device, "DeviceID", "DeviceId", "id"))


def _user_id(user: Any) -> str:
    # CONTRACT.md: the "id" of a GET v2/enduser object, or a v1 object's "ID"
    # (the doc's v1 examples show none); read ignoring case, so one name does.
    return key(get_field(user, "ID", "EnduserID", "UserID"))


def _email(user: Any) -> str:
    return key(get_field(user, "Email"))


def _inactive(user: Any) -> bool:
    # GET v2/enduser lists end users marked inactive too: pybanyan asks
    # "active=true" to leave them out ("use --inactive for all users")
    return fkey(get_field(user, "status")) == "inactive"


def _emails(device: Any) -> list[str] | None:
    """The e-mails registered on a device; None when the listing does not say
    (the doc's paginated example shows no ``Emails``)."""
    value = get_field(device, "Emails")
    if value is None:
        return None
    if isinstance(value, str):
        return [e.strip() for e in value.split(",") if e.strip()]
    return [key(e) for e in value if key(e)] if isinstance(value, list) else None


def _page(body: Any, name: str) -> tuple[list[Any] | None, int | None]:
    """The objects of one listing answer and the total it states, if any.

    Non-paginated: a bare array; paginated: ``{"<name>": [...], "count": N}``;
    v2 (pybanyan reads ``resp['data']`` of every v2 answer): the same inside
    ``{"data": ...}``.
    """
    if isinstance(body, list):
        return body, None
    if not isinstance(body, Mapping):
        return None, None
    items = get_field(body, name)
    if isinstance(items, list):
        return items, as_int(get_field(body, "count", "total"))
    data = get_field(body, "data")
    return _page(data, name) if isinstance(data, (list, Mapping)) else (None, None)


def _banned(device: Any) -> bool:
    # The doc shows "Banned": "FALSE" (a string); a boolean is read the same way.
    value = get_field(device, "Banned")
    return value is True or key(value).upper() == "TRUE"


def _holds(device: Any, email: str) -> bool:
    return email.casefold() in {e.casefold() for e in _emails(device) or ()}


def _devices_with(body: Any, serial: str) -> list[Any]:
    # The serialnumber filter may match loosely (or be ignored); match exactly here.
    return [d for d in as_list(body, "devices") if _serial(d) == serial]


def _user_ident(user: Any) -> str:
    return _user_id(user) or _email(user)


def _content(ident: Callable[[Any], str]) -> Callable[[Any], str]:
    # An object without an id is told apart by its whole content, so that
    # id-less objects never collapse into one, and a server ignoring "skip"
    # cannot make us loop (a page adding nothing new ends the list).
    return lambda obj: ident(obj) or json.dumps(obj, sort_keys=True, default=str)


class _TwoForms:
    """Two forms of one request, the public client's first and the doc's
    second; the first form a server answers is kept for the run.

    What is learnt is tied to the form a request actually used, never read
    back from shared state later: a row whose request started with a form
    not yet proven falls back on a refusal even when another row has
    meanwhile proven the other form (that race failed a delete-device row
    with 404 before). Until a form is proven, one row at a time finds out,
    so that rows side by side do not each spend a refused request.
    """

    def __init__(self, first: str, second: str) -> None:
        self.forms = (first, second)
        self.preferred = first
        #: the form a server has answered as a real one (None: not yet known)
        self.proven: str | None = None
        self._probing = asyncio.Lock()

    async def send(
        self,
        send: Callable[[str], Awaitable[Response]],
        *,
        refused: Callable[[Response], bool],
        proves: Callable[[Response], bool],
    ) -> Response:
        """The answer of the form that was not refused (both refused: the first's)."""
        async with contextlib.nullcontext() if self.proven is not None else self._probing:
            form = self.preferred
            resp = await send(form)
            if refused(resp) and self.proven != form:
                # not proven, so the refusal may be about the form: try the other
                other = self.forms[1] if form == self.forms[0] else self.forms[0]
                second = await send(other)
                if not refused(second):
                    form, resp = other, second
            if proves(resp) and self.proven is None:
                self.preferred = self.proven = form
            return resp


@dataclass(frozen=True, slots=True)
class _Unreadable:
    """A list the plan could not read: the rows that need it fail with this."""

    detail: str
    status: int | None
    attempts: int
    code: Reason

    def fail(self, row: JobRow) -> Outcome:
        return failed(row, self.detail, http_status=self.status, attempts=self.attempts, reason=self.code)


class Banyan(Provider):
    """Ban, unban and delete Banyan devices; delete (mark inactive) end users."""

    name = "banyan"
    title = "Banyan"
    actions = frozenset({"ban", "unban", "delete-device", "delete-user"})
    # Every action changes Banyan's own records (a device's Banned flag, a
    # device or end user removed), which the run's answer and read-back show.
    follow = {action: Follow.MDM for action in ("ban", "unban", "delete-device", "delete-user")}
    credential_fields = (Credential("BULKMDM_TOKEN", "API token"),)
    credentials = (("BULKMDM_TOKEN",),)
    simulator = "bulkmdm.sim.banyan:make_app"
    # the device list's first page, one device long (the doc's ``?skip=0&limit=10``)
    access_check = ("v1/devices", {"skip": 0, "limit": 1})
    url_hint = "Banyan's API endpoint (the root of its /v1/... and /v2/... paths)"
    setup_hint = "and that the API key may read end users and devices"
    # The doc lists 200/400/500 for every endpoint and no retryable status, so
    # the shared policy stands: 408/429/502/503/504 retried, 500 final.
    # The doc states no limit. Banyan is one cloud API shared with the org's
    # live zero-trust traffic, and every delete revokes client certificates,
    # so we start gently: 5 requests/s with 4 in flight. The adaptive
    # controller climbs from there until it sees a 429 or a queue.
    default_rate = 5.0
    default_concurrency = 4
    # DELETE v2/endusers takes a list of ids, but the doc's 400 "record not
    # found" does not say which id; one id per request keeps each row's
    # outcome its own.
    max_batch = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._delete_paths = _TwoForms(*DELETE_DEVICE_PATHS)
        # The doc's "Ban & Unban Devices" body is an array, [{..., "Banned" :
        # "FALSE"}]; pybanyan's DeviceAPI.update and Banyan's Google Apps
        # Script integration POST one object with "Banned" a boolean.
        self._ban_bodies = _TwoForms("object", "array")
        #: the lists read so far, kept across chunks of the job
        self._devices: list[Any] | _Unreadable | None = None
        self._users: list[Any] | _Unreadable | None = None
        self._lists: _Lists | None = None

    @classmethod
    def auth_from_env(cls, env: Mapping[str, str]) -> Auth:
        (token,) = env_required(env, "BULKMDM_TOKEN", provider="banyan")
        return HeaderAuth(f"Bearer {token}")

    # -- list and page ------------------------------------------------------
    async def _page_at(self, path: str, name: str, order_by: str | None, cursor: tuple[int, bool] | None) -> Page:
        """One page of a listing, and the cursor (skip, paged) of the next.

        The doc's examples spell the parameters in lower case
        (``?skip=0&limit=10``, ``?serialnumber=``) and its tables capitalised
        (``Skip``, ``Limit``); we send the examples' spelling, as pybanyan's
        ``paged_request`` does. A server that ignores them answers the
        non-paginated shape, a bare array of every object ("this API response
        changes when you add the pagination query parameters"): the last page.
        """
        skip, paged = cursor or (0, True)
        params: dict[str, Any] | None = None
        if paged:
            params = {"skip": skip, "limit": PAGE} | ({"order": "asc", "orderby": order_by} if order_by else {})
        resp = await self.client.request("GET", path, params=params)
        if resp.status == 400 and paged and skip == 0:
            # The doc gives no largest "limit" and only examples of "OrderBy"
            # values ("such as serialnumber"); a server that rejects ours gets
            # the doc's plain "GET /v1/devices", whose answer is everything.
            return await self._page_at(path, name, order_by, (0, False))
        if not resp.ok:
            raise ListFailed(path, resp)
        page, count = _page(resp.body, name)
        if page is None:
            raise BadAnswer(
                f"Banyan's answer to GET {path} holds no {name!r} list", attempts=resp.attempts, status=resp.status
            )
        skip += len(page)
        # "count" is the total in the doc's example (limit=2, "count": 27);
        # after a full page we still ask once more, in case a server counts
        # only the page (pybanyan pages on until one comes empty).
        last = (
            not paged
            or isinstance(resp.body, list)
            or not page
            or (count is not None and skip >= count and len(page) < PAGE)
        )
        return page, None if last else (skip, True)

    async def _list(self, path: str, name: str, ident: Callable[[Any], str], order_by: str | None = None) -> list[Any]:
        async def fetch(cursor: Any) -> Page:
            return await self._page_at(path, name, order_by, cursor)

        return await collect_pages(fetch, ident=_content(ident))

    async def _read_users(self) -> list[Any]:
        """Every end user, with the id ``DELETE v2/endusers`` needs.

        The doc documents only ``GET /v1/endusers``, whose examples carry no
        id. Banyan's own client reads end users from ``GET /v2/enduser``
        (pybanyan ``UserAPI.Meta.list_uri``), answered ``{"data": {"endusers":
        [{"id", "email", "name", "status", ...}], "count": N}}`` and paged with
        ``skip``/``limit``; that goes first. A server without that route
        (404/405) is asked the doc's v1 list, read for an ``ID`` field
        (CONTRACT.md).
        """
        try:
            return await self._list("v2/enduser", "endusers", _user_ident)
        except ListFailed as exc:
            if exc.resp.status not in NO_ROUTE:
                raise
        return await self._list("v1/endusers", "endusers", _user_ident, "email")

    async def _serial_query(self, serial: str, context: RequestContext = NO_CONTEXT) -> Response:
        # the doc's non-paginated example: GET /devices?serialnumber=...
        return await self.client.request("GET", "v1/devices", params={"serialnumber": serial}, context=context)

    async def _devices_now(self, serial: str) -> list[Any] | None:
        """The devices holding exactly this serial now; None when unreadable."""
        try:
            resp = await self._serial_query(serial)
        except TransportError:
            return None
        return _devices_with(resp.body, serial) if resp.ok else None

    async def _fill_emails(self, devices: list[Any], rows: Sequence[JobRow]) -> None:
        """Complete ``Emails`` of the devices that delete-device rows with an
        e-mail name, where the listing left it out.

        The doc's paginated example (``?skip=0&limit=2``) shows no ``Emails``;
        its non-paginated one (``/devices?serialnumber=27812a90a19df067``)
        does, so that is asked once per serial concerned. What still cannot be
        read stays unknown, and the server decides.
        """
        by_id = Index("device", devices, _device_id, fold=True)
        by_serial = Index("device", devices, _serial)
        serials: set[str] = set()
        for row in rows:
            if row.action == "delete-device" and row.get("email"):
                found = by_id.find(row.get("device_id")) if row.get("device_id") else by_serial.find(row.get("serial"))
                serials.update(_serial(d) for d in found if _emails(d) is None and _serial(d))

        async def fill(serial: str) -> None:
            fetched = await self._devices_now(serial)
            ours = by_serial.find(serial)
            for fresh in fetched or ():
                emails, fresh_id = _emails(fresh), fkey(_device_id(fresh))
                same = [d for d in ours if fresh_id and fkey(_device_id(d)) == fresh_id]
                if emails is None or not (same or len(ours) == len(fetched or ()) == 1):
                    continue
                for device in same or ours:
                    if isinstance(device, MutableMapping):
                        device["Emails"] = emails

        await gather_bounded((partial(fill, s) for s in sorted(serials)), self.default_concurrency)

    # -- export and templates ---------------------------------------------------
    async def inventory(self) -> AsyncIterator[dict[str, str]]:
        """One dict per device, streamed a listing page at a time: ``serial``,
        ``device_id``, ``name``, ``email`` (every e-mail registered on it,
        comma separated; blank where the page leaves ``Emails`` out, as the
        doc's paginated example does), ``model`` and ``banned``
        (``TRUE``/``FALSE``, as Banyan writes it)."""
        seen: set[str] = set()
        ident = _content(_device_id)
        cursor: Any = None
        while True:
            page, cursor = await self._page_at("v1/devices", "devices", "serialnumber", cursor)
            fresh = [d for d in page if ident(d) not in seen]
            seen.update(ident(d) for d in fresh)
            for device in fresh:
                yield {
                    "serial": _serial(device),
                    "device_id": _device_id(device),
                    "name": key(get_field(device, "DeviceFriendlyName")),
                    "email": ", ".join(_emails(device) or ()),
                    "model": key(get_field(device, "Model")),
                    "banned": "TRUE" if _banned(device) else "FALSE",
                }
            if cursor is None or not fresh:
                return

    async def choices(self, column: str) -> list[str]:
        """Banyan has no tags, groups or apps to pick from: always empty."""
        return []

    # -- resolve a row to a change --------------------------------------------
    async def prepare(self, rows: Sequence[JobRow]) -> _Lists:
        """The device list for device rows, the end-user list for delete-user
        rows, each read once per run. Each list fails only the rows that need
        it: a device list that cannot be read says nothing about a delete-user
        row, and the end-user list is still read for those."""
        actions = {row.action for row in rows}
        fresh = False
        if actions & DEVICE_ACTIONS and self._devices is None:
            self._devices = await self._readable(
                "device", self._list("v1/devices", "devices", _device_id, "serialnumber")
            )
            fresh = True
        if (
            isinstance(self._devices, list)
            and any(r.action == "delete-device" and r.get("email") for r in rows)
            and any(_emails(d) is None for d in self._devices)
        ):
            await self._fill_emails(self._devices, rows)
            fresh = True
        if "delete-user" in actions and self._users is None:
            self._users = await self._readable("end-user", self._read_users())
            fresh = True
        if self._lists is None or fresh:
            self._lists = _Lists(self._devices, self._users)
        return self._lists

    async def _readable(self, what: str, reading: Awaitable[list[Any]]) -> list[Any] | _Unreadable:
        try:
            return await reading
        except ListFailed as exc:
            self._stop_if_setup_is_wrong(exc)
            return _Unreadable(exc.detail(), exc.resp.status, exc.resp.attempts, exc.code)
        except TransportError as exc:
            self._stop_if_setup_is_wrong(exc)
            return _Unreadable(
                f"Could not read Banyan's {what} list: {sentence(str(exc))} Run the job again.",
                exc.status,
                exc.attempts,
                error_reason(exc),
            )

    def plan_row(self, row: JobRow, lists: _Lists) -> Step | Outcome:
        if row.action == "delete-user":
            return lists.users.fail(row) if isinstance(lists.users, _Unreadable) else self._plan_user(row, lists)
        if isinstance(lists.devices, _Unreadable):
            return lists.devices.fail(row)
        device, email = lists.device_for(row)
        serial, resolved = _serial(device), f"device_id={_device_id(device)}"
        if row.action == "delete-device":
            return self.changes.once(row, ("delete-device", serial, email.casefold()), resolved) or Step(
                row, row.action, f"device {serial}", {"serial": serial, "email": email}, resolved, (row.action,)
            )
        return self._plan_ban(row, device, resolved)

    def _plan_ban(self, row: JobRow, device: Any, resolved: str) -> Step | Outcome:
        action, serial = row.action, _serial(device)
        opposite = "unban" if action == "ban" else "ban"
        done = self.changes.once(row, (action, serial), resolved) or self.changes.contradicts(
            row, (opposite, serial), f"Device {serial} is also {opposite}ned", resolved
        )
        if done:
            return done
        banned = _banned(device)
        if banned == (action == "ban"):
            return skipped(
                row, f"Device {serial} is already {'banned' if banned else 'not banned'}; nothing sent.", resolved
            )
        self.changes.changing(row, (action, serial))
        fields = {name: value for name in DEVICE_FIELDS if (value := get_field(device, name)) not in (None, "")}
        # undone by the opposite verb: the state read here is the one to put back
        return Step(
            row,
            action,
            f"device {serial}",
            {"serial": serial, "banned": action == "ban", "fields": fields},
            resolved,
            (action,),
            undo={"action": opposite, "serial": serial},
        )

    def _plan_user(self, row: JobRow, lists: _Lists) -> Step | Outcome:
        given_id, email = row.get("user_id"), row.get("email")
        if given_id and not lists.users_have_ids:
            # The list gives no ids to check against (like the doc's v1
            # examples); send the id given and let Banyan say if it is wrong.
            user_id, known_email, user = given_id, email, None
        else:
            user = lists.user_with_id(given_id, email) if given_id else lists.user_with_email(email)
            user_id, known_email = _user_id(user), _email(user)
        resolved = f"user_id={user_id}"
        target = f"end user {known_email}" if known_email else f"end user {user_id}"
        if user is not None and _inactive(user):
            return skipped(row, f"{cap(target)} is already inactive (deleted) in Banyan; nothing sent.", resolved)
        return self.changes.once(row, ("delete-user", fkey(user_id)), resolved) or Step(
            row, row.action, target, {"id": user_id, "email": known_email}, resolved, (row.action,)
        )

    # -- send and read back ---------------------------------------------------
    async def send(self, step: Step, context: RequestContext) -> Outcome:
        if step.action in ("ban", "unban"):
            return await self._ban(step, context)
        if step.action == "delete-device":
            return await self._delete_device(step, context)
        return await self._delete_user(step, context)

    async def _ban(self, step: Step, context: RequestContext) -> Outcome:
        serial, wanted, fields = step.params["serial"], step.params["banned"], step.params["fields"]

        def in_place(body: Any) -> bool | None:
            devices = _devices_with(body, serial)
            return all(_banned(d) == wanted for d in devices) if devices else None

        verify = read_back(lambda context: self._serial_query(serial, context), in_place)

        async def send(form: str) -> Response:
            # The device's own fields go back with "Banned", as pybanyan and
            # the Apps Script send them: a server that sets every field of
            # the body must not blank the model or ownership. POST is not
            # resent blindly: after a lost answer the ban state is read back.
            if form == "object":
                body: Any = {**fields, "Banned": wanted}
            else:  # the doc's: [{"Model": ..., "Banned" : "FALSE"}]
                body = [{**fields, "Banned": "TRUE" if wanted else "FALSE"}]
            return await self.client.request(
                "POST",
                "v1/mdm/update_device",
                params={"SerialNumber": serial},
                json=body,
                verify=verify,
                context=context,
            )

        # The doc lists 400 "Bad Request" for a body it cannot read; the
        # other form is tried then (CONTRACT.md).
        resp = await self._ban_bodies.send(send, refused=lambda r: r.status == 400, proves=lambda r: r.ok)
        return _outcome(step, resp, f"Device {serial} {'banned' if wanted else 'unbanned'}.")

    async def _delete_device(self, step: Step, context: RequestContext) -> Outcome:
        serial, email = step.params["serial"], step.params["email"]

        def gone_from(body: Any) -> bool | None:
            devices = _devices_with(body, serial)
            if not email:
                return not devices
            if any(_emails(d) is None for d in devices):
                return None  # the answer does not say who is registered
            return not any(_holds(d, email) for d in devices)

        gone = read_back(lambda context: self._serial_query(serial, context), gone_from)

        async def send(path: str) -> Response:
            # (a second DELETE after a lost answer gets a 400 for a device
            # that is no longer there: the client reads it back instead)
            params = {"SerialNumber": serial, "Email": email or None}
            return await self.client.request("DELETE", path, params=params, verify=gone, context=context)

        # Any answer but 404/405 shows the path is a route; two 404s prove
        # neither wrong (the 404 may be about the device), so nothing is kept.
        resp = await self._delete_paths.send(
            send, refused=lambda r: r.status in NO_ROUTE, proves=lambda r: r.status not in NO_ROUTE
        )
        if resp.status in (400, 404) and await gone(context) is True:
            what = f"{email}'s registration on device {serial}" if email else f"Device {serial}"
            return _already(
                step,
                resp,
                f"{cap(what)} was already gone when the request arrived "
                "(deleted elsewhere, or with a user or device earlier in this job).",
            )
        if email:
            return _outcome(
                step,
                resp,
                f"Device {serial} no longer registered to {email} (Banyan deletes the "
                "device too when that was its only user, and the user when that was their "
                "only device).",
            )
        return _outcome(step, resp, f"Device {serial} deleted and its certificates revoked.")

    async def _delete_user(self, step: Step, context: RequestContext) -> Outcome:
        user_id, email = step.params["id"], step.params["email"]

        def gone_from(body: Any) -> bool:
            # the doc's v1 list holds active end users only, with or without an id
            return not any(
                fkey(_email(u)) == fkey(email) and fkey(_user_id(u)) in ("", fkey(user_id)) and not _inactive(u)
                for u in as_list(body, "endusers")
            )

        async def no_answer(context: RequestContext) -> bool | None:
            return None

        gone = (
            read_back(
                lambda context: self.client.request("GET", "v1/endusers", params={"email": email}, context=context),
                gone_from,
            )
            if email
            else no_answer
        )
        resp = await self.client.request(
            "DELETE", "v2/endusers", json={"enduser_ids": [user_id]}, verify=gone, context=context
        )
        if resp.status in (400, 404) and await gone(context) is True:
            return _already(
                step,
                resp,
                f"{cap(step.target)} was already gone when the request arrived "
                "(deleted elsewhere, or with their last device earlier in this job).",
            )
        # "This api marks endusers as inactive, checks the devices associated
        # with the user, if the device has no more active users then such
        # devices are marked as inactive too."
        return _outcome(
            step,
            resp,
            f"{cap(step.target)} marked inactive (deleted); devices left without an "
            "active user are marked inactive too.",
        )


class _Lists:
    """The device and end-user lists of one run, indexed for the look-ups."""

    def __init__(self, devices: list[Any] | _Unreadable | None, users: list[Any] | _Unreadable | None) -> None:
        #: what was read (or why it could not be), for ``plan_row``
        self.devices, self.users = devices, users
        devices = devices if isinstance(devices, list) else []
        users = users if isinstance(users, list) else []
        self.device_by_serial = Index("device", devices, _serial)
        self.device_by_id = Index("device", devices, _device_id, fold=True)
        # An object without the field a look-up keys on is no match for it,
        # and the failing row says how many such objects the list held.
        self.devices_without = {
            "SerialNumber": sum(not _serial(d) for d in devices),
            "DeviceID": sum(not _device_id(d) for d in devices),
        }
        # an e-mail listed both inactive and active (deleted, then back): the active one
        active = [u for u in users if not _inactive(u)]
        self.user_by_email = Index("end user", active, _email, fold=True)
        self.inactive_by_email = Index("end user", [u for u in users if _inactive(u)], _email, fold=True)
        self.user_by_id = Index("end user", users, _user_id, fold=True)
        self.users_without = {"id": sum(not _user_id(u) for u in users), "email": sum(not _email(u) for u in users)}
        self.users_have_ids = len(self.user_by_id) > 0

    def _not_found(self, exc: LookupFailed, field: str, count: int, what: str) -> LookupFailed:
        if count and exc.code is Reason.NOT_FOUND:
            return LookupFailed(
                f"{exc}; {count} {what}{'s' if count > 1 else ''} in Banyan's list "
                f"{'have' if count > 1 else 'has'} no {field!r}",
                exc.code,
            )
        return exc

    def device_for(self, row: JobRow) -> tuple[Any, str]:
        """The one device a ban, unban or delete-device row means, and the
        e-mail (delete-device) as Banyan holds it."""
        email = row.get("email") if row.action == "delete-device" else ""
        if row.get("device_id"):
            device = self.device_with_id(row)
        elif email:
            device = self.device_of(row.get("serial"), email)
        else:
            device = self.only_device(row)
        if email:
            # Send the e-mail as Banyan holds it: it was matched here ignoring
            # case, and the server may compare it exactly.
            email = next((e for e in _emails(device) or () if e.casefold() == email.casefold()), email)
        serial = _serial(device)
        if not serial:
            raise LookupFailed(
                f"device {_device_id(device)} has no SerialNumber in Banyan's list, and Banyan "
                "changes devices by serial number",
                Reason.BAD_ANSWER,
            )
        sharing = self.device_by_serial.find(serial)
        if len(sharing) > 1 and not (email and sum(_holds(d, email) for d in sharing) == 1):
            raise LookupFailed(
                f"serial {serial!r} is held by {len(sharing)} devices, and Banyan would change all "
                "of them; resolve the duplicate in Banyan first",
                Reason.AMBIGUOUS,
            )
        return device, email

    def device_with_id(self, row: JobRow) -> Any:
        given_id, given_serial, email = row.get("device_id"), row.get("serial"), row.get("email")
        try:
            device = self.device_by_id.one(given_id, "device id")
        except LookupFailed as exc:
            raise self._not_found(exc, "DeviceID", self.devices_without["DeviceID"], "device") from None
        if given_serial and given_serial != _serial(device):
            raise LookupFailed(
                f"device id {given_id!r} has serial {_serial(device)!r}, not {given_serial!r}", Reason.INVALID_ROW
            )
        if row.action == "delete-device" and email and _emails(device) is not None and not _holds(device, email):
            raise LookupFailed(f"device {given_id!r} is not registered to {email}", Reason.INVALID_ROW)
        return device

    def device_of(self, serial: str, email: str) -> Any:
        """The one device of this serial that ``email`` is registered on.

        Several devices may share a serial; the e-mail says which one (the
        server deletes the mapping for that serial *and* e-mail).
        """
        candidates = self.device_by_serial.find(serial)
        if not candidates:
            exc = (
                LookupFailed(f"serial {serial!r} was not found")
                if serial.strip()
                else LookupFailed("the serial is blank", Reason.INVALID_ROW)
            )
            raise self._not_found(exc, "SerialNumber", self.devices_without["SerialNumber"], "device")
        known = [d for d in candidates if _emails(d) is not None]
        matching = [d for d in known if _holds(d, email)]
        if len(candidates) == 1 and not known:
            matching = candidates  # the listing does not say; the server will
        if not matching and len(known) < len(candidates):
            raise LookupFailed(
                f"serial {serial!r} matches {len(candidates)} devices and Banyan's list does not "
                f"say which one {email} is registered on; make it unique",
                Reason.AMBIGUOUS,
            )
        if not matching:
            raise LookupFailed(f"device {serial!r} is not registered to {email}", Reason.INVALID_ROW)
        if len(matching) > 1:
            raise LookupFailed(
                f"serial {serial!r} with {email} matches {len(matching)} devices; make it unique", Reason.AMBIGUOUS
            )
        return matching[0]

    def only_device(self, row: JobRow) -> Any:
        serial = row.get("serial")
        holders = self.device_by_serial.find(serial)
        if len(holders) > 1:
            # A serial alone cannot tell them apart, and Banyan acts on
            # every device holding it.
            whose = sorted({e for d in holders for e in _emails(d) or ()}, key=str.casefold)
            hint = (
                "add an email column naming whose registration to delete"
                if row.action == "delete-device"
                else "resolve the duplicate in Banyan first"
            )
            raise LookupFailed(
                f"serial {serial!r} matches {len(holders)} devices"
                + (f" (registered to {', '.join(whose)})" if whose else "")
                + f", and Banyan would change all of them; {hint}",
                Reason.AMBIGUOUS,
            )
        try:
            return self.device_by_serial.one(serial, "serial")
        except LookupFailed as exc:
            raise self._not_found(exc, "SerialNumber", self.devices_without["SerialNumber"], "device") from None

    def user_with_id(self, user_id: str, email: str) -> Any:
        try:
            user = self.user_by_id.one(user_id, "end user id")
        except LookupFailed as exc:
            raise self._not_found(exc, "id", self.users_without["id"], "end user") from None
        if email and _email(user).casefold() != email.casefold():
            raise LookupFailed(
                f"end user id {user_id!r} belongs to {_email(user) or 'an end user without email'}, not {email}",
                Reason.INVALID_ROW,
            )
        return user

    def user_with_email(self, email: str) -> Any:
        try:
            user = self.user_by_email.one(email, "end user with email")
        except LookupFailed as exc:
            inactive = self.inactive_by_email.find(email)
            if not inactive or exc.code is not Reason.NOT_FOUND:
                raise self._not_found(exc, "email", self.users_without["email"], "end user") from None
            user = inactive[0]
        if not _user_id(user):
            raise LookupFailed(
                f"Banyan's end-user list has no 'id' for {email} (the field is missing or empty); "
                "put the end user's id in a user_id column",
                Reason.BAD_ANSWER,
            )
        return user


def _outcome(step: Step, resp: Response, done: str) -> Outcome:
    if resp.ok and not resp.verified:
        reason = failure_in_2xx(resp.body)
        if reason:
            return Outcome(
                step.index,
                Status.FAILED,
                f"Banyan answered HTTP {resp.status} but said it failed: {sentence(reason)}",
                resp.status,
                resp.attempts,
                step.resolved,
                reason=Reason.REFUSED,
            )
    return outcome_from_response(step, resp, done)


def _already(step: Step, resp: Response, detail: str) -> Outcome:
    return Outcome(step.index, Status.SKIPPED, detail, resp.status, resp.attempts, step.resolved, reason=Reason.ALREADY)
