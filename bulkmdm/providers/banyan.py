"""Banyan end users and devices (vendor doc: banyan-users-devices-api.txt).

Every request goes to ``<api endpoint>/v1/...`` or ``/v2/...`` with
``Authorization: Bearer <BULKMDM_TOKEN>``. What each action sends:

    ban / unban     POST   v1/mdm/update_device?SerialNumber=S   [{"Banned": "TRUE" | "FALSE"}]
    delete-device   DELETE v1/v1/delete_device?SerialNumber=S[&Email=E]
    delete-user     DELETE v2/endusers                           {"enduser_ids": [ID]}

Banyan acts on devices by *serial number*, not by device id: update_device
"Updates all end user devices for given serial number". A serial that several
devices hold therefore fails the row (it would change all of them), even when
the row names one of them by ``device_id``.

Look-ups come from ``GET v1/devices`` and ``GET v1/endusers``, read once per
run page by page (``skip``/``limit``), or in one go when a server refuses the
paging (the doc's non-paginated form). Fields are read under the doc's names
(``SerialNumber``, ``DeviceID``, ``Banned``, ``Emails``, ``Email``) and the
end user's id under ``ID`` (CONTRACT.md: the doc's examples show none). The
doc's paginated device example carries no ``Emails``; when a page lacks them
and a delete-device row names an e-mail, they are read from
``GET v1/devices?serialnumber=S`` (the doc's non-paginated example has them).
The doc documents no end-user listing under v2: only ``DELETE v2/endusers``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

from ..errors import AuthError, TransportError
from ..model import JobRow, Outcome, Status, Step
from ..transport import Auth, HeaderAuth, Response
from .base import (
    Index,
    LookupFailed,
    Provider,
    as_list,
    body_message,
    env_required,
    explain_status,
    failed,
    get_field,
    outcome_from_error,
    outcome_from_response,
    skipped,
)

DEVICE_ACTIONS = frozenset({"ban", "unban", "delete-device"})
#: records asked for per listing page; a server that caps pages lower is fine,
#: the next page starts after what actually came
PAGE = 500

# The doc gives the path twice as "DELETE /v1/v1/delete_device" (request line
# and curl), while Banyan's published OpenAPI spec has "/v1/delete_device". We
# send the doc's path and fall back to the other only when the doc's answers
# 404: the doc lists 200/400/500 for this endpoint, so a 404 means "no such
# route" and nothing was done.
DELETE_DEVICE_PATHS = ("v1/v1/delete_device", "v1/delete_device")

#: words in a 2xx answer's "Message" that say it did not work after all
_FAILURE_WORDS = re.compile(r"\b(error|fail\w*|invalid|not found|unable|denied)\b", re.I)


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _serial(device: Any) -> str:
    return _text(get_field(device, "SerialNumber", "Serialnumber", "serial_number"))


def _device_id(device: Any) -> str:
    return _text(get_field(device, "DeviceID", "DeviceId", "id"))


def _user_id(user: Any) -> str:
    # CONTRACT.md: the end user's id is the object's "ID" (the doc's examples
    # show none); the other spellings are read as the same field.
    return _text(get_field(user, "ID", "EnduserID", "UserID"))


def _email(user: Any) -> str:
    return _text(get_field(user, "Email"))


def _emails(device: Any) -> list[str] | None:
    """The e-mails registered on a device; None when the listing does not say
    (the doc's paginated example shows no ``Emails``)."""
    value = get_field(device, "Emails")
    if value is None:
        return None
    if isinstance(value, str):
        return [e.strip() for e in value.split(",") if e.strip()]
    return [_text(e) for e in value if _text(e)] if isinstance(value, list) else None


def _page(body: Any, key: str) -> tuple[list[Any] | None, int | None]:
    """The objects of one listing answer and the total it states, if any.

    Non-paginated: a bare array; paginated: ``{"<key>": [...], "count": N}``.
    The same, wrapped in a v2-style ``{"data": ...}`` envelope, is read too.
    """
    if isinstance(body, list):
        return body, None
    if not isinstance(body, Mapping):
        return None, None
    items = get_field(body, key)
    if isinstance(items, list):
        count = get_field(body, "count", "total")
        try:
            return items, None if count is None or isinstance(count, bool) else int(count)
        except (TypeError, ValueError):
            return items, None
    data = get_field(body, "data")
    return _page(data, key) if isinstance(data, (list, Mapping)) else (None, None)


def _banned(device: Any) -> bool:
    # The doc shows "Banned": "FALSE" (a string); a boolean is read the same way.
    value = get_field(device, "Banned")
    return value is True or _text(value).upper() == "TRUE"


def _holds(device: Any, email: str) -> bool:
    return email.casefold() in {e.casefold() for e in _emails(device) or ()}


def _body_error(body: Any) -> str | None:
    """A reason when a 2xx answer's body says the request failed.

    The v2 DELETE doc shows its 500 body under the heading "500 Ok", so a
    server may well answer HTTP 200 with ``"error_code": 500``; update_device
    answers ``[{"Message": "Success"}]`` (its OpenAPI spec: a bare object).
    """
    for obj in body if isinstance(body, list) else [body]:
        if not isinstance(obj, Mapping):
            continue
        code = get_field(obj, "error_code")
        if code not in (None, 0, "0", ""):
            return f"error code {code}" + (f": {body_message(obj)}" if body_message(obj) else "")
        message = _text(get_field(obj, "Message"))
        if message and _FAILURE_WORDS.search(message):
            return message
    return None


class Banyan(Provider):
    name = "banyan"
    actions = frozenset({"ban", "unban", "delete-device", "delete-user"})
    # The doc states no limit. Banyan is one cloud API shared with the org's
    # live zero-trust traffic, and every delete revokes client certificates,
    # so we start gently: 5 requests/s with 4 in flight (1,000 rows in about
    # 3.5 minutes). The adaptive controller climbs to 4x until it sees a 429.
    default_rate = 5.0
    default_concurrency = 4
    # DELETE v2/endusers takes a list of ids, but the doc's 400 "record not
    # found" does not say which id; one id per request keeps each row's
    # outcome its own.
    max_batch = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._delete_path = DELETE_DEVICE_PATHS[0]
        #: set once a path answered something other than 404 (a real route)
        self._delete_path_known = False

    @classmethod
    def auth_from_env(cls, env: Mapping[str, str]) -> Auth:
        (token,) = env_required(env, "BULKMDM_TOKEN", provider="banyan")
        return HeaderAuth(f"Bearer {token}")

    @classmethod
    def api_base(cls, url: str) -> str:
        return url.rstrip("/")

    # -- reading ------------------------------------------------------------
    async def _list_all(self, path: str, key: str, order_by: str, ident: Callable[[Any], str]) -> list[Any]:
        """Every object of a listing, ``PAGE`` at a time.

        The doc's examples spell the parameters in lower case
        (``?skip=0&limit=10``, ``?serialnumber=``) and its tables capitalised
        (``Skip``, ``Limit``); we send the examples' spelling. A server that
        ignores them answers the non-paginated shape, a bare array of every
        object ("this API response changes when you add the pagination query
        parameters"), which is the whole list as well.
        """
        out: list[Any] = []
        seen: set[str] = set()
        skip = 0
        paged = True
        while True:
            params = {"skip": skip, "limit": PAGE, "order": "asc", "orderby": order_by} if paged else None
            resp = await self.client.request("GET", path, params=params)
            if resp.status == 400 and paged and not out:
                # The doc gives no largest "limit" and only examples of
                # "OrderBy" values ("such as serialnumber"); a server that
                # rejects ours gets the doc's plain "GET /v1/devices", whose
                # answer is every object at once.
                paged = False
                continue
            if not resp.ok:
                raise _ListFailed(path, resp)
            page, count = _page(resp.body, key)
            if page is None:
                raise _ListFailed(path, resp, f"the answer holds no {key!r} list")
            fresh = 0
            for obj in page:
                # an object without an id is told apart by its whole content,
                # so that a server ignoring "skip" cannot make us loop
                oid = ident(obj) or json.dumps(obj, sort_keys=True, default=str)
                if oid in seen:
                    continue  # the list shifted between pages, or was sent again
                seen.add(oid)
                out.append(obj)
                fresh += 1
            if not paged or isinstance(resp.body, list):
                return out  # the non-paginated answer: everything at once
            skip += len(page)
            # "count" is the total in the doc's example (limit=2, "count": 27);
            # after a full page we still ask once more, in case a server
            # counts only the page.
            if not page or not fresh or (count is not None and skip >= count and len(page) < PAGE):
                return out

    async def _with_serial(self, serial: str) -> list[Any] | None:
        """The devices holding exactly this serial now; None when unreadable."""
        try:
            resp = await self.client.request("GET", "v1/devices", params={"serialnumber": serial})
        except AuthError:
            raise
        except TransportError:
            return None
        if not resp.ok:
            return None
        # The filter may match loosely (or be ignored); match exactly here.
        return [d for d in as_list(resp.body, "devices") if _serial(d) == serial]

    async def _user_gone(self, user_id: str, email: str) -> bool | None:
        """Whether the end user no longer shows in the list; None when unreadable."""
        if not email:
            return None
        try:
            resp = await self.client.request("GET", "v1/endusers", params={"email": email})
        except AuthError:
            raise
        except TransportError:
            return None
        if not resp.ok:
            return None
        for user in as_list(resp.body, "endusers"):
            if _email(user).casefold() == email.casefold() and (not _user_id(user) or
                                                                _user_id(user).casefold() == user_id.casefold()):
                return False
        return True

    async def _fill_emails(self, devices: list[Any], rows: Sequence[JobRow]) -> None:
        """Complete ``Emails`` of the devices that delete-device rows with an
        e-mail name, where the listing left it out.

        The doc's paginated example (``?skip=0&limit=2``) shows no ``Emails``;
        its non-paginated one (``/devices?serialnumber=27812a90a19df067``)
        does, so that is asked once per serial concerned. What still cannot be
        read stays unknown, and the server decides.
        """
        if all(_emails(d) is not None for d in devices):
            return
        by_id = Index("device", devices, _device_id, fold=True)
        by_serial = Index("device", devices, _serial)
        serials: set[str] = set()
        for row in rows:
            if row.action == "delete-device" and row.get("email"):
                found = by_id.find(row.get("device_id")) if row.get("device_id") else by_serial.find(row.get("serial"))
                serials.update(_serial(d) for d in found if _emails(d) is None and _serial(d))
        gate = asyncio.Semaphore(self.default_concurrency)

        async def fill(serial: str) -> None:
            async with gate:
                fetched = await self._with_serial(serial)
            ours = by_serial.find(serial)
            for fresh in fetched or ():
                emails = _emails(fresh)
                fresh_id = _device_id(fresh).casefold()
                same = [d for d in ours if fresh_id and _device_id(d).casefold() == fresh_id]
                if emails is None or not (same or len(ours) == len(fetched or ()) == 1):
                    continue
                for device in same or ours:
                    if isinstance(device, MutableMapping):
                        device["Emails"] = emails

        await asyncio.gather(*(fill(s) for s in sorted(serials)))

    # -- planning -----------------------------------------------------------
    async def plan(self, rows: Sequence[JobRow]) -> list[Step | Outcome]:
        actions = {row.action for row in rows}
        # Each list fails only the rows that need it: a device list that
        # cannot be read says nothing about a delete-user row, and the
        # end-user list is still read for those.
        unreadable: dict[str, Callable[[JobRow], Outcome]] = {}

        async def read(what: str, fetch: Callable[[], Any]) -> list[Any]:
            try:
                return await fetch()  # type: ignore[no-any-return]
            except _ListFailed as exc:
                detail, status, attempts = exc.detail(), exc.resp.status, exc.resp.attempts
            except AuthError:
                raise
            except TransportError as exc:
                detail, status, attempts = f"Could not read Banyan's {what} list: {exc}. Run the job again.", None, \
                    exc.attempts
            unreadable[what] = lambda row: failed(row, detail, http_status=status, attempts=attempts)
            return []

        async def fetch_devices() -> list[Any]:
            devices = await self._list_all("v1/devices", "devices", "serialnumber", _device_id)
            if any(r.action == "delete-device" and r.get("email") for r in rows):
                await self._fill_emails(devices, rows)
            return devices

        devices = await read("v1/devices", fetch_devices) if actions & DEVICE_ACTIONS else []
        users = await read("v1/endusers", lambda: self._list_all(
            "v1/endusers", "endusers", "email", lambda u: _user_id(u) or _email(u))) \
            if "delete-user" in actions else []
        lists = _Lists(devices, users)
        seen: dict[tuple[str, ...], tuple[str, int]] = {}
        out: list[Step | Outcome] = []
        for row in rows:
            need = "v1/devices" if row.action in DEVICE_ACTIONS else "v1/endusers" \
                if row.action == "delete-user" else ""
            if need in unreadable:
                out.append(unreadable[need](row))
                continue
            try:
                if row.action in DEVICE_ACTIONS:
                    out.append(self._plan_device(row, lists, seen))
                elif row.action == "delete-user":
                    out.append(self._plan_user(row, lists, seen))
                else:
                    out.append(failed(row, f"banyan cannot {row.action}."))
            except LookupFailed as exc:
                out.append(failed(row, _sentence(str(exc))))
        return out

    def _plan_device(self, row: JobRow, lists: _Lists, seen: dict[tuple[str, ...], tuple[str, int]]) -> Step | Outcome:
        action = row.action
        email = row.get("email") if action == "delete-device" else ""
        given = row.get("serial")
        if row.get("device_id"):
            device = lists.device_by_id.one(row.get("device_id"), "device id")
            if given and given != _serial(device):
                raise LookupFailed(f"device id {row.get('device_id')!r} has serial {_serial(device)!r}, "
                                   f"not {given!r}")
            if email and _emails(device) is not None and not _holds(device, email):
                raise LookupFailed(f"device {row.get('device_id')!r} is not registered to {email}")
        elif email:
            # Several devices may share a serial; the e-mail says which one
            # (the server deletes the mapping for that serial *and* e-mail).
            candidates = lists.device_by_serial.find(given)
            if not candidates:
                raise LookupFailed(f"serial {given!r} was not found" if given.strip() else "the serial is blank")
            known = [d for d in candidates if _emails(d) is not None]
            matching = [d for d in known if _holds(d, email)]
            if len(candidates) == 1 and not known:
                matching = candidates  # the listing does not say; the server will
            if not matching and len(known) < len(candidates):
                raise LookupFailed(f"serial {given!r} matches {len(candidates)} devices and Banyan's list does not "
                                   f"say which one {email} is registered on; make it unique")
            if not matching:
                raise LookupFailed(f"device {given!r} is not registered to {email}")
            if len(matching) > 1:
                raise LookupFailed(f"serial {given!r} with {email} matches {len(matching)} devices; make it unique")
            device = matching[0]
        else:
            holders = lists.device_by_serial.find(given)
            if len(holders) > 1:
                # A serial alone cannot tell them apart, and Banyan acts on
                # every device holding it.
                whose = sorted({e for d in holders for e in _emails(d) or ()}, key=str.casefold)
                hint = ("add an email column naming whose registration to delete"
                        if action == "delete-device" else "resolve the duplicate in Banyan first")
                raise LookupFailed(f"serial {given!r} matches {len(holders)} devices"
                                   + (f" (registered to {', '.join(whose)})" if whose else "")
                                   + f", and Banyan would change all of them; {hint}")
            device = lists.device_by_serial.one(given, "serial")
        if email:
            # Send the e-mail as Banyan holds it: it was matched here ignoring
            # case, and the server may compare it exactly.
            email = next((e for e in _emails(device) or () if e.casefold() == email.casefold()), email)
        serial = _serial(device)
        dev_id = _device_id(device)
        resolved = f"device_id={dev_id}"
        if not serial:
            raise LookupFailed(f"device {dev_id} has no serial number, and Banyan changes devices by serial number")
        sharing = lists.device_by_serial.find(serial)
        if len(sharing) > 1 and not (email and sum(_holds(d, email) for d in sharing) == 1):
            raise LookupFailed(
                f"serial {serial!r} is held by {len(sharing)} devices, and Banyan would change all of them; "
                "resolve the duplicate in Banyan first"
            )

        if action in ("ban", "unban"):
            key = ("ban-state", serial, "")
            if key in seen:
                other, line = seen[key]
                if other == action:
                    return skipped(row, f"Same change as line {line}; sent once.", resolved)
                return failed(row, f"Device {serial} is also {other}ned on line {line}; "
                                   "give each device one of ban or unban per job.", resolved)
            seen[key] = (action, row.line)
            if _banned(device) == (action == "ban"):
                state = "banned" if action == "ban" else "not banned"
                return skipped(row, f"Device {serial} is already {state}; nothing sent.", resolved)
            return Step(row, action, f"device {serial}", {"serial": serial, "banned": "TRUE" if action == "ban"
                                                          else "FALSE"}, resolved, (action,))

        key = ("delete-device", serial, email.casefold())
        if key in seen:
            return skipped(row, f"Same change as line {seen[key][1]}; sent once.", resolved)
        seen[key] = (action, row.line)
        return Step(row, action, f"device {serial}", {"serial": serial, "email": email}, resolved, (action,))

    def _plan_user(self, row: JobRow, lists: _Lists, seen: dict[tuple[str, ...], tuple[str, int]]) -> Step | Outcome:
        given_id, email = row.get("user_id"), row.get("email")
        if given_id:
            if lists.users_have_ids:
                user = lists.user_by_id.one(given_id, "end user id")
                user_id, known_email = _user_id(user), _email(user)
                if email and known_email.casefold() != email.casefold():
                    raise LookupFailed(f"end user id {given_id!r} belongs to {known_email}, not {email}")
            else:
                # The list gives no ids to check against (like the doc's
                # examples); send the id given and let Banyan say if it is wrong.
                user_id, known_email = given_id, email
        else:
            user = lists.user_by_email.one(email, "end user with email")
            user_id, known_email = _user_id(user), _email(user)
            if not user_id:
                raise LookupFailed(f"Banyan's end-user list gives no ID for {email}; "
                                   "put the end user's id in a user_id column")
        resolved = f"user_id={user_id}"
        key = ("delete-user", user_id.casefold())
        if key in seen:
            return skipped(row, f"Same change as line {seen[key][1]}; sent once.", resolved)
        seen[key] = (row.action, row.line)
        target = f"end user {known_email}" if known_email else f"end user {user_id}"
        return Step(row, row.action, target, {"id": user_id, "email": known_email}, resolved, (row.action,))

    # -- executing ----------------------------------------------------------
    async def execute(self, steps: Sequence[Step]) -> list[Outcome]:
        out = []
        for step in steps:
            try:
                if step.action in ("ban", "unban"):
                    out.append(await self._ban(step))
                elif step.action == "delete-device":
                    out.append(await self._delete_device(step))
                else:
                    out.append(await self._delete_user(step))
            except AuthError:
                raise
            except TransportError as exc:
                out.append(outcome_from_error(step, exc))
        return out

    async def _ban(self, step: Step) -> Outcome:
        serial, wanted = step.params["serial"], step.params["banned"]

        async def in_place() -> bool | None:
            devices = await self._with_serial(serial)
            if not devices:
                return None
            return all(_banned(d) == (wanted == "TRUE") for d in devices)

        # Only the field this action is about: the doc says the endpoint bans
        # or unbans "if the device object contains banned=\"TRUE\"/\"FALSE\"",
        # and copying the other fields back could overwrite what the MDM
        # reports in the meantime. POST is not resent blindly: after a lost
        # answer the ban state is read back first.
        resp = await self.client.request(
            "POST", "v1/mdm/update_device", params={"SerialNumber": serial}, json=[{"Banned": wanted}],
            verify=in_place,
        )
        done = f"Device {serial} {'banned' if wanted == 'TRUE' else 'unbanned'}."
        return _outcome(step, resp, done)

    async def _delete_device(self, step: Step) -> Outcome:
        serial, email = step.params["serial"], step.params["email"]

        async def gone() -> bool | None:
            devices = await self._with_serial(serial)
            if devices is None:
                return None
            if not email:
                return not devices
            if any(_emails(d) is None for d in devices):
                return None  # the answer does not say who is registered
            return not any(_holds(d, email) for d in devices)

        params = {"SerialNumber": serial, "Email": email or None}
        # DELETE is idempotent in HTTP terms, but a second one after a lost
        # answer gets a 400 for a device that is no longer there; read back
        # instead of resending.
        resp = await self.client.request("DELETE", self._delete_path, params=params, idempotent=False, verify=gone)
        if resp.status == 404 and not self._delete_path_known:
            other = next(p for p in DELETE_DEVICE_PATHS if p != self._delete_path)
            second = await self.client.request("DELETE", other, params=params, idempotent=False, verify=gone)
            if second.status != 404:
                self._delete_path, resp = other, second
            # Both 404: neither is proven wrong, so the doc's path stays and
            # the 404 is taken as being about the device.
        if resp.status != 404:
            self._delete_path_known = True
        if email:
            done = (f"Device {serial} no longer registered to {email} (Banyan deletes the device too when that "
                    "was its only user, and the user when that was their only device).")
        else:
            done = f"Device {serial} deleted and its certificates revoked."
        if resp.status in (400, 404) and await gone() is True:
            what = f"{email}'s registration on device {serial}" if email else f"Device {serial}"
            return _already(step, resp, f"{_cap(what)} was already gone when the request arrived "
                                        "(deleted elsewhere, or with a user or device earlier in this job).")
        return _outcome(step, resp, done)

    async def _delete_user(self, step: Step) -> Outcome:
        user_id, email = step.params["id"], step.params["email"]

        async def gone() -> bool | None:
            return await self._user_gone(user_id, email)

        resp = await self.client.request(
            "DELETE", "v2/endusers", json={"enduser_ids": [user_id]}, idempotent=False, verify=gone
        )
        if resp.status in (400, 404) and await gone() is True:
            return _already(step, resp, f"{_cap(step.target)} was already gone when the request arrived "
                                        "(deleted elsewhere, or with their last device earlier in this job).")
        # "This api marks endusers as inactive, checks the devices associated
        # with the user, if the device has no more active users then such
        # devices are marked as inactive too."
        return _outcome(step, resp, f"{_cap(step.target)} marked inactive (deleted); devices left without an "
                                    "active user are marked inactive too.")


class _Lists:
    def __init__(self, devices: list[Any], users: list[Any]) -> None:
        self.device_by_serial = Index("device", devices, _serial)
        self.device_by_id = Index("device", devices, _device_id, fold=True)
        self.user_by_email = Index("end user", users, _email, fold=True)
        self.user_by_id = Index("end user", users, _user_id, fold=True)
        self.users_have_ids = len(self.user_by_id) > 0


class _ListFailed(Exception):
    def __init__(self, path: str, resp: Response, why: str = "") -> None:
        self.path = path
        self.resp = resp
        self.why = why

    def detail(self) -> str:
        why = self.why or explain_status(self.resp.status, self.resp.body, self.resp.attempts)
        return f"Could not read Banyan's {self.path} list: {_sentence(why)}"


def _outcome(step: Step, resp: Response, done: str) -> Outcome:
    if resp.ok and not resp.verified:
        reason = _body_error(resp.body)
        if reason:
            return Outcome(step.index, Status.FAILED, f"Banyan answered HTTP {resp.status} but said it failed: "
                           f"{_sentence(reason)}", resp.status, resp.attempts, step.resolved)
    return outcome_from_response(step, resp, done)


def _already(step: Step, resp: Response, detail: str) -> Outcome:
    return Outcome(step.index, Status.SKIPPED, detail, resp.status, resp.attempts, step.resolved)


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[0].upper() + text[1:] if text else "Look-up failed"
    return text if text.endswith(".") else text + "."


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]
