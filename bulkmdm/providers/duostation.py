"""DuoSTATION MDM (vendor doc: duostation-mdm-rest-api-4.8.46.en.txt).

Every request goes to ``<site>/api/...`` with HTTP Basic auth; bodies of PUT
and POST are JSON ("Data in DELETE-, PUT- and POST-commands must be
structured as JSON objects"). The doc shows no object fields, only query
parameters and bodies, so fields are read forgivingly (``get_field``) under
the names the doc uses for its parameters (``serialNumber``, ``userId``,
``tagId``, ``groupId``, ``packageId`` ...).

Look-ups are made from lists fetched once per run (devices, users, tags,
apps, device tags, user tags); groups are resolved with the documented
``GET /api/groups?path=`` once per distinct path, because the doc promises
that call matches the *full path* while the group list need not carry one.

The doc documents no paging and no object fields. So that a server whose
lists are cut short (or whose objects spell a field differently) does not
turn a real device into "not found", a value that misses the fetched list is
looked up once more with the documented search (``GET /api/devices?
serialNumber=``, ``/api/users?email=`` / ``?account=``, ``/api/devices/<id>``,
``/api/users/<id>``) before the row fails; the tag links of an object found
that way are read with ``GET /api/devicetags?deviceId=`` /
``/api/usertags?userId=``.

Query strings are encoded by us, spaces as ``%20`` like the doc's example
(``?path=Customers%5CCompany%20Inc``), not as ``+``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from ..errors import AuthError, TransportError
from ..model import JobRow, Outcome, Step
from ..transport import Auth, BasicAuth, Client, Response
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
    outcome_from_response,
    skipped,
)

DEVICE_ACTIONS = frozenset(
    {"tag", "untag", "assign-user", "install-app", "remove-app", "lock", "wipe",
     "inventory", "clear-passcode", "message"}
)
USER_ACTIONS = frozenset({"tag-user", "untag-user", "assign-user", "move-user", "delete-user"})

#: action -> (device command path segment, what the report says)
COMMANDS = {
    "lock": ("lockdevice", "screen lock sent"),
    "wipe": ("wipedevice", "wipe sent"),
    "inventory": ("inventorydevice", "inventory request sent"),
    "clear-passcode": ("clearpasscode", "clear-passcode sent"),
    "message": ("sendmessage", "message sent"),
    "install-app": ("installapp", "app installation sent"),
    "remove-app": ("removeapp", "app removal sent"),
}

#: Keys a list may be wrapped under. The doc says "Array of devices" (a bare
#: array); these are read too, in case a server wraps it.
WRAPPERS = ("data", "items", "results", "value", "list")

# Field names as the doc spells its parameters first, then common variants.
SERIAL = ("serialNumber", "serial", "serialNo")
EMAIL = ("email", "emailAddress", "mail")
ACCOUNT = ("accountName", "account", "userName", "login")
PACKAGE = ("packageId", "identifier", "bundleId", "packageName")


def _id(obj: Any, *alternatives: str) -> Any:
    return get_field(obj, "id", *alternatives)


def _ref(obj: Any, field: str, nested: str) -> Any:
    """An id an object refers to: ``userId`` or, failing that, ``user.id``."""
    value = get_field(obj, field)
    if value is None:
        inner = get_field(obj, nested)
        if isinstance(inner, Mapping):
            value = _id(inner)
    return value


def _key(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _fkey(value: Any) -> str:
    """GUIDs and e-mail addresses compare ignoring case."""
    return _key(value).casefold()


def _int(value: Any) -> Any:
    """The doc's integer ids ("<tagId> is the unique id (integer)") go out as
    JSON numbers even if a server handed them to us as numeric strings."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return value


class _Links:
    """Tag links of one kind (device tags or user tags): (owner, tag) -> link ids."""

    def __init__(self, links: list[Any], owner_field: str, nested: str) -> None:
        self.owner_field = owner_field
        #: "deviceTagId" / "userTagId": the link's own id under its specific name
        self.link_field = owner_field[:-2] + "TagId"
        self.nested = nested
        self.by_pair: dict[tuple[str, str], list[Any]] = {}
        self._seen: set[str] = set()
        self.add(links)

    def add(self, links: list[Any]) -> None:
        for link in links:
            # "Search for tags linked to a specific device" answers an "Array of
            # device tags"; a server may shape a device tag as the linked tag
            # itself ({"deviceTagId": 11, "id": <tag id>, "name": ...}). A
            # specific deviceTagId/userTagId is therefore the link's id when
            # present (never DELETE a tag's id as a link's), and "id" is then
            # the tag's id unless a tagId says otherwise.
            specific = get_field(link, self.link_field)
            link_id = specific if specific is not None else _id(link, "deviceTagId", "userTagId")
            owner = _fkey(_ref(link, self.owner_field, self.nested))
            tag_ref = _ref(link, "tagId", "tag")
            if tag_ref is None and specific is not None:
                tag_ref = _id(link)
            tag = _key(tag_ref)
            if not (owner and tag) or (link_id is not None and _key(link_id) in self._seen):
                continue
            if link_id is not None:
                self._seen.add(_key(link_id))
            self.by_pair.setdefault((owner, tag), []).append(link_id)

    def ids(self, owner: Any, tag: Any) -> list[Any]:
        return self.by_pair.get((_fkey(owner), _key(tag)), [])


class DuoStation(Provider):
    name = "duostation"
    actions = frozenset(DEVICE_ACTIONS | USER_ACTIONS)
    # The doc states no limit; 20 requests/s with 8 in flight is gentle on a
    # school's server and still does 3,000 rows in under three minutes. The
    # adaptive controller may go up to 4x this until the server answers 429.
    default_rate = 20.0
    default_concurrency = 8
    max_batch = 1
    # Lists, searches and duplicate checks are kept across plan() calls.
    chunk_rows = 10_000

    def __init__(self, client: Client, settings: Settings) -> None:
        super().__init__(client, settings)
        #: everything fetched for the look-ups so far, kept for the next chunk
        self._lists: dict[str, Any] = {"extra": {}}
        #: (what, which) -> the line that asked for it, across chunks
        self._planned: dict[tuple[Any, ...], int] = {}
        #: whether any list has been read (a 403 before that is a refusal of the credentials)
        self._read_once = False

    @classmethod
    def auth_from_env(cls, env: Mapping[str, str]) -> Auth:
        user, password = env_required(env, "BULKMDM_USERNAME", "BULKMDM_PASSWORD", provider="duostation")
        return BasicAuth(user, password)

    @classmethod
    def api_base(cls, url: str) -> str:
        return url.rstrip("/") + "/api"

    # -- reading ------------------------------------------------------------
    async def _get(self, path: str) -> Any:
        resp = await self.client.request("GET", path)
        if resp.status == 403 and not self._read_once:
            # "The API uses Basic Authentication": a server that answers our
            # very first request with 403 instead of 401 refused the
            # credentials (or the account may not use the API at all); nothing
            # can be looked up, so the run stops like for a 401 (exit 2).
            raise AuthError(f"the MDM refused the credentials (HTTP 403 on GET /api/{path.partition('?')[0]}); "
                            "check the user name, the password and that the account may use the API",
                            attempts=resp.attempts, status=403)
        if not resp.ok:
            raise _ListFailed(path.partition("?")[0], resp)
        self._read_once = True
        return resp.body

    async def _list(self, path: str, *keys: str) -> list[Any]:
        return as_list(await self._get(path), path, *keys, *WRAPPERS)

    async def _search(self, path: str, what: str, value: str, *, by_id: bool) -> list[Any] | LookupFailed:
        """A documented search (or get-by-id) for one value that missed the
        list: the objects found, or why the look-up could not be made."""
        try:
            resp = await self.client.request("GET", path)
        except AuthError:
            raise
        except TransportError as exc:
            return LookupFailed(f"{what} '{value}' could not be looked up ({exc})")
        # a get-by-id for a value that is no id at all may be refused as malformed
        if resp.status == 404 or (by_id and resp.status == 400):
            return []
        if not resp.ok:
            reason = explain_status(resp.status, resp.body, resp.attempts)
            return LookupFailed(f"{what} '{value}' could not be looked up; the MDM answered {reason}")
        body = resp.body
        if isinstance(body, Mapping) and _id(body) is not None:
            return [body]
        return as_list(body, path.partition("?")[0], *WRAPPERS)

    async def _group(self, path: str) -> Any:
        """GET /api/groups?path=<path>: "If more than one group matches the
        name an error will be returned" — the doc names no status, so any
        error answer (a 400, a 409, or a 500 from a server that throws) fails
        the rows that name this path, and only them."""
        try:
            # "<path> is the full path for the group separated with / or \": a
            # path written with a leading or trailing separator (\Skolor\Klass 7A\)
            # names the same group, so it is sent without them, for a server
            # that compares the path as written.
            trimmed = path.strip().strip("\\/").strip()
            if not trimmed:
                raise LookupFailed(f"group '{path}' names no group")
            resp = await self.client.request("GET", _query("groups", path=trimmed))
        except AuthError:
            raise
        except TransportError as exc:
            raise LookupFailed(f"group '{path}' could not be looked up ({exc})") from None
        if resp.status == 404:
            raise LookupFailed(f"group '{path}' was not found")
        if not resp.ok:
            reason = explain_status(resp.status, resp.body, resp.attempts)
            raise LookupFailed(f"group '{path}' could not be resolved (it may match more than one group); "
                               f"the MDM answered {reason}")
        body = resp.body
        if isinstance(body, Mapping) and _id(body) is None:
            inner = get_field(body, "group")
            body = inner if isinstance(inner, Mapping) else as_list(body, "groups", *WRAPPERS)
        found = body if isinstance(body, list) else [body] if isinstance(body, Mapping) else []
        if len(found) > 1:
            # The doc promises one group or an error; a server that answers
            # with a list (or ignores the filter) is narrowed to the path asked.
            found = _groups_at(found, path)
        if not found:
            raise LookupFailed(f"group '{path}' was not found")
        if len(found) > 1:
            raise LookupFailed(f"group '{path}' matches {len(found)} groups; make it unique")
        return found[0]

    # -- planning -----------------------------------------------------------
    async def plan(self, rows: Sequence[JobRow]) -> list[Step | Outcome]:
        actions = {row.action for row in rows}
        try:
            lists = await self._fetch_lists(actions, rows)
        except _ListFailed as exc:
            detail = exc.detail()
            return [failed(row, detail, http_status=exc.resp.status, attempts=exc.resp.attempts) for row in rows]
        except TransportError as exc:
            if isinstance(exc, AuthError):
                raise
            detail = f"Could not read the MDM's lists: {exc}. Run the job again."
            return [failed(row, detail, attempts=exc.attempts) for row in rows]
        seen = self._planned
        out: list[Step | Outcome] = []
        for row in rows:
            try:
                out.append(self._plan_row(row, lists, seen))
            except LookupFailed as exc:
                out.append(failed(row, _sentence(str(exc))))
        return out

    async def _fetch_lists(self, actions: set[str], rows: Sequence[JobRow]) -> dict[str, Any]:
        # Called once per chunk of rows: what an earlier chunk fetched is kept.
        lists = self._lists
        if actions & DEVICE_ACTIONS and "device_by_serial" not in lists:
            devices = await self._list("devices", "devices")
            lists["device_by_serial"] = Index("device", devices, lambda d: get_field(d, *SERIAL))
            lists["device_by_id"] = Index("device", devices, lambda d: _id(d, "deviceId", "guid"), fold=True)
        if actions & USER_ACTIONS and "user_by_email" not in lists:
            users = await self._list("users", "users")
            lists["user_by_email"] = Index("user", users, lambda u: get_field(u, *EMAIL), fold=True)
            lists["user_by_account"] = Index("user", users, lambda u: get_field(u, *ACCOUNT), fold=True)
            lists["user_by_id"] = Index("user", users, lambda u: _id(u, "userId"))
        if actions & {"tag", "untag", "tag-user", "untag-user"} and "tag_by_name" not in lists:
            tags = await self._list("tags", "tags")
            lists["tag_by_name"] = Index("tag", tags, lambda t: get_field(t, "name", "tagName"))
            lists["tag_by_name_folded"] = Index("tag", tags, lambda t: get_field(t, "name", "tagName"), fold=True)
        if actions & {"tag", "untag"} and "devicetags" not in lists:
            lists["devicetags"] = await self._links("devicetags", "deviceId", "device", lists)
        if actions & {"tag-user", "untag-user"} and "usertags" not in lists:
            lists["usertags"] = await self._links("usertags", "userId", "user", lists)
        if actions & {"install-app", "remove-app"} and "app_by_key" not in lists:
            apps = await self._list("apps", "apps")
            lists["app_by_key"] = Index("app", apps, lambda a: [get_field(a, "name"), get_field(a, *PACKAGE)])
            lists["app_by_key_folded"] = Index("app", apps, lambda a: [get_field(a, "name"), get_field(a, *PACKAGE)],
                                               fold=True)
            lists["app_by_id"] = Index("app", apps, lambda a: _id(a, "appId"))
        if "move-user" in actions:
            groups: dict[str, Any] = lists.setdefault("groups", {})
            for path in sorted({row.get("group") for row in rows if row.action == "move-user" and row.get("group")}
                               - groups.keys()):
                try:
                    groups[path] = await self._group(path)
                except LookupFailed as exc:
                    groups[path] = exc
        await self._search_misses(rows, lists)
        return lists

    async def _links(self, kind: str, owner_field: str, nested: str, lists: dict[str, Any]) -> _Links:
        """All device (or user) tags: "GET /api/devicetags - Get all available
        device tags". A server that refuses the whole list (one that wants a
        search parameter, or cannot list a large site) is asked the documented
        search instead, "GET /api/devicetags?deviceId=<deviceId>" once per
        device of the job, and only the rows whose search fails fail."""
        try:
            return _Links(await self._list(kind, kind, kind[:-4] + "Tags"), owner_field, nested)
        except _ListFailed:
            lists[kind + "_by_owner"] = True
            return _Links([], owner_field, nested)

    async def _search_misses(self, rows: Sequence[JobRow], lists: dict[str, Any]) -> None:
        """Look up, with the documented searches, the values the lists did not hold."""
        extra: dict[tuple[str, str], Any] = lists["extra"]
        todo: dict[tuple[str, str], Callable[[], Awaitable[Any]]] = {}

        def search(kind: str, value: str, path: str, what: str, fields: tuple[str, ...],
                   then: tuple[str, str, str, tuple[str, ...]] | None = None) -> None:
            key = (kind, _fkey(value))
            if not key[1] or key in todo or key in extra:
                return

            async def run() -> None:
                found = await self._search(path, what, value, by_id=not fields)
                if isinstance(found, list) and fields:
                    # The server did the matching; objects that carry the field
                    # must match it too (a server that ignored the filter).
                    found = [o for o in found
                             if get_field(o, *fields) is None or _fkey(get_field(o, *fields)) == key[1]]
                extra[key] = found
                if then is not None and not found:
                    # an account name may itself look like an address (anna@skola.se)
                    next_kind, next_path, next_what, next_fields = then
                    more = await self._search(next_path, next_what, value, by_id=False)
                    if isinstance(more, list):
                        more = [o for o in more if get_field(o, *next_fields) is None
                                or _fkey(get_field(o, *next_fields)) == key[1]]
                    extra[(next_kind, key[1])] = more

            todo[key] = run

        for row in rows:
            if row.action in DEVICE_ACTIONS:
                device_id, serial = row.get("device_id"), row.get("serial")
                if device_id and not lists["device_by_id"].find(device_id):
                    search("device_id", device_id, f"devices/{_seg(device_id)}", "device id", ())
                elif not device_id and serial and not lists["device_by_serial"].find(serial):
                    search("serial", serial, _query("devices", serialNumber=serial), "serial", SERIAL)
            if row.action in USER_ACTIONS:
                value = _user_value(row)
                if row.action == "delete-user" and not row.get("email"):
                    if value and not lists["user_by_id"].find(value):
                        search("user_id", value, f"users/{_seg(value)}", "user id", ())
                    continue
                if not value or lists["user_by_email"].find(value) or lists["user_by_account"].find(value):
                    continue
                by_account = _query("users", account=value)
                if "@" in value:
                    search("email", value, _query("users", email=value), "user with email", EMAIL,
                           then=("account", by_account, "user with account name", ACCOUNT))
                else:
                    search("account", value, by_account, "user with account name", ACCOUNT)
        await self._gather(todo.values())

        # Tag links of objects the lists did not hold are not in the link lists either.
        reads: dict[str, Callable[[], Awaitable[Any]]] = {}
        already: set[str] = lists.setdefault("links_read", set())
        failures: dict[str, LookupFailed] = lists.setdefault("link_failures", {})

        def read_links(kind: str, owner_field: str, owner: Any) -> None:
            key = _fkey(owner)
            if key in reads or key in already:
                return
            already.add(key)

            async def run() -> None:
                path = _query(kind, **{owner_field: owner})
                try:
                    lists[kind].add(await self._list(path, kind))
                except AuthError:
                    raise
                except _ListFailed as exc:
                    failures[key] = LookupFailed(f"the tags of {owner_field[:-2]} {owner} could not be read: "
                                                 + explain_status(exc.resp.status, exc.resp.body, exc.resp.attempts))
                except TransportError as exc:
                    failures[key] = LookupFailed(f"the tags of {owner_field[:-2]} {owner} could not be read ({exc})")

            reads[key] = run

        for row in rows:
            try:
                if row.action in ("tag", "untag"):
                    device, listed = self._device(row, lists)
                    if not listed or lists.get("devicetags_by_owner"):
                        read_links("devicetags", "deviceId", _id(device, "deviceId", "guid"))
                elif row.action in ("tag-user", "untag-user"):
                    user, listed = self._user(row.get("email"), lists)
                    if not listed or lists.get("usertags_by_owner"):
                        read_links("usertags", "userId", _int(_id(user, "userId")))
            except LookupFailed:
                continue
        await self._gather(reads.values())

    async def _gather(self, jobs: Iterable[Callable[[], Awaitable[Any]]]) -> None:
        """Run look-ups a few at a time (the rate limit still applies to each)."""
        gate = asyncio.Semaphore(self.default_concurrency)

        async def one(job: Callable[[], Awaitable[Any]]) -> None:
            async with gate:
                await job()

        tasks = [asyncio.ensure_future(one(job)) for job in jobs]
        try:
            await asyncio.gather(*tasks)
        finally:
            # an AuthError (or a cancelled plan) stops the other look-ups too
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _find(self, lists: dict[str, Any], index: str, kind: str, value: str) -> tuple[list[Any], bool]:
        """(objects matching ``value``, whether they came from the fetched list)."""
        found = lists[index].find(value)
        if found:
            return found, True
        extra = lists["extra"].get((kind, _fkey(value)), [])
        if isinstance(extra, LookupFailed):
            raise extra
        return list(extra), False

    def _device(self, row: JobRow, lists: dict[str, Any]) -> tuple[Any, bool]:
        if row.get("device_id"):
            value, label, found = row.get("device_id"), "device id", self._find(lists, "device_by_id", "device_id",
                                                                                  row.get("device_id"))
        else:
            value, label, found = row.get("serial"), "serial", self._find(lists, "device_by_serial", "serial",
                                                                          row.get("serial"))
        return _only(found[0], value, label, "device"), found[1]

    def _user(self, value: str, lists: dict[str, Any]) -> tuple[Any, bool]:
        if not value.strip():
            raise LookupFailed("the user is blank")
        if "@" in value:
            found = self._find(lists, "user_by_email", "email", value)
            if found[0]:
                return _only(found[0], value, "user with email", "user"), found[1]
            # an account name may itself look like an address (anna@skola.se)
            found = self._find(lists, "user_by_account", "account", value)
            if not found[0]:
                raise LookupFailed(f"user with email '{value}' was not found")
            return _only(found[0], value, "user with account name", "user"), found[1]
        found = self._find(lists, "user_by_account", "account", value)
        return _only(found[0], value, "user with account name", "user"), found[1]

    def _tag(self, name: str, lists: dict[str, Any]) -> Any:
        # Exact name first; a different capitalisation is accepted only when it
        # points at exactly one tag.
        if lists["tag_by_name"].find(name):
            return lists["tag_by_name"].one(name, "tag")
        return lists["tag_by_name_folded"].one(name, "tag")

    def _app(self, value: str, lists: dict[str, Any]) -> Any:
        if not value.strip():
            raise LookupFailed("the app is blank")
        found = {id(a): a for a in lists["app_by_key"].find(value)}
        if not found:
            # As for tags: a different capitalisation of a name or package id
            # is accepted only when it points at exactly one app.
            found = {id(a): a for a in lists["app_by_key_folded"].find(value)}
        if not found and value.strip().isdigit():
            found = {id(a): a for a in lists["app_by_id"].find(value)}
        if not found:
            raise LookupFailed(f"app '{value}' was not found (give its name, package id or id)")
        if len(found) > 1:
            raise LookupFailed(f"app '{value}' matches {len(found)} apps; give its package id instead")
        return next(iter(found.values()))

    def _plan_row(self, row: JobRow, lists: dict[str, Any], seen: dict[tuple[Any, ...], int]) -> Step | Outcome:
        action = row.action

        def digest(change: tuple[Any, ...]) -> tuple[bytes]:
            # Kept for the whole run as a 16-byte digest, not the tuple: a
            # million distinct messages would otherwise hold ~150 MB here.
            return (hashlib.blake2b("\x1f".join(map(str, change)).encode(), digest_size=16).digest(),)

        def once(change: tuple[Any, ...], resolved: str) -> Outcome | None:
            # Two rows asking for the same change: the second is not sent again.
            key = digest(change)
            if key in seen:
                return skipped(row, f"Same change as line {seen[key]}; sent once.", resolved)
            seen[key] = row.line
            return None

        def contradicted(change: tuple[Any, ...], opposite: str, what: str, resolved: str) -> Outcome | None:
            # tag and untag (or tag-user and untag-user) of the same pair in one
            # job, the earlier of them a change: every row is planned against
            # the state before the run, so the later one would be judged on a
            # state the earlier one changes, and its "skipped" (or its request)
            # would not be what the MDM ends in. Like two assignments of one
            # device, the later row fails and says which line it contradicts.
            # (An earlier opposite row that was skipped changed nothing.)
            key = digest(("changes", opposite, *change[1:]))
            if key in seen:
                verb = "untagged" if opposite.startswith("untag") else "tagged"
                return failed(row, f"{_cap(what)} is also {verb} with this tag on line {seen[key]}; "
                                   "give each tag one change per job.", resolved)
            return None

        def changes(change: tuple[Any, ...], step: Step) -> Step:
            seen.setdefault(digest(("changes", *change)), row.line)
            return step

        if action in ("tag", "untag"):
            device = self._device(row, lists)[0]
            tag = self._tag(row.get("tag"), lists)
            dev_id, tag_id = _id(device, "deviceId", "guid"), _int(_id(tag, "tagId"))
            serial = get_field(device, *SERIAL) or row.get("serial")
            resolved = f"device_id={dev_id}; tag_id={tag_id}"
            change = (action, _fkey(dev_id), _key(tag_id))
            dup = contradicted(change, "untag" if action == "tag" else "tag", f"device {serial}", resolved) \
                or once(change, resolved)
            if dup:
                return dup
            if _fkey(dev_id) in lists.get("link_failures", {}):
                raise lists["link_failures"][_fkey(dev_id)]
            links = lists["devicetags"].ids(dev_id, tag_id)
            tag_name = get_field(tag, "name", "tagName")
            if action == "tag":
                if links:
                    return skipped(row, f"Device {serial} already has tag '{tag_name}'; nothing sent.", resolved)
                return changes(change, Step(row, action, f"device {serial}",
                                            {"device": dev_id, "tag": tag_id, "name": tag_name}, resolved, (action,)))
            if not links:
                return skipped(row, f"Device {serial} does not have tag '{tag_name}'; nothing sent.", resolved)
            if None in links:
                raise LookupFailed(f"the MDM lists the link of tag '{tag_name}' to device {serial} without an id")
            return changes(change, Step(row, action, f"device {serial}",
                                        {"device": dev_id, "tag": tag_id, "links": tuple(links), "name": tag_name},
                                        resolved, (action,)))

        if action in ("tag-user", "untag-user"):
            user = self._user(row.get("email"), lists)[0]
            tag = self._tag(row.get("tag"), lists)
            user_id, tag_id = _int(_id(user, "userId")), _int(_id(tag, "tagId"))
            email = get_field(user, *EMAIL) or row.get("email")
            resolved = f"user_id={user_id}; tag_id={tag_id}"
            change = (action, _key(user_id), _key(tag_id))
            opposite = "untag-user" if action == "tag-user" else "tag-user"
            dup = contradicted(change, opposite, f"user {email}", resolved) or once(change, resolved)
            if dup:
                return dup
            if _fkey(user_id) in lists.get("link_failures", {}):
                raise lists["link_failures"][_fkey(user_id)]
            links = lists["usertags"].ids(user_id, tag_id)
            tag_name = get_field(tag, "name", "tagName")
            if action == "tag-user":
                if links:
                    return skipped(row, f"User {email} already has tag '{tag_name}'; nothing sent.", resolved)
                return changes(change, Step(row, action, f"user {email}",
                                            {"user": user_id, "tag": tag_id, "name": tag_name}, resolved, (action,)))
            if not links:
                return skipped(row, f"User {email} does not have tag '{tag_name}'; nothing sent.", resolved)
            if None in links:
                raise LookupFailed(f"the MDM lists the link of tag '{tag_name}' to user {email} without an id")
            return changes(change, Step(row, action, f"user {email}",
                                        {"user": user_id, "tag": tag_id, "links": tuple(links), "name": tag_name},
                                        resolved, (action,)))

        if action == "assign-user":
            device = self._device(row, lists)[0]
            user = self._user(row.get("user") or row.get("email"), lists)[0]
            dev_id, user_id = _id(device, "deviceId", "guid"), _int(_id(user, "userId"))
            serial = get_field(device, *SERIAL) or row.get("serial")
            who = get_field(user, *EMAIL) or get_field(user, *ACCOUNT) or user_id
            resolved = f"device_id={dev_id}; user_id={user_id}"
            key = ("assign-user", _fkey(dev_id))
            if key in seen:
                return failed(row, f"Device {serial} is also assigned on line {seen[key]}; "
                                   "give each device one assignment per job.", resolved)
            seen[key] = row.line
            if _assigned_to(device, user, user_id):
                return skipped(row, f"Device {serial} is already assigned to {who}; nothing sent.", resolved)
            return Step(row, action, f"device {serial}", {"device": dev_id, "user": user_id, "who": who},
                        resolved, (action,))

        if action == "move-user":
            user = self._user(row.get("email"), lists)[0]
            group = lists["groups"].get(row.get("group"))
            if isinstance(group, LookupFailed):
                raise group
            if group is None:
                raise LookupFailed("the group is blank")
            user_id, group_id = _int(_id(user, "userId")), _int(_id(group, "groupId"))
            email = get_field(user, *EMAIL) or row.get("email")
            resolved = f"user_id={user_id}; group_id={group_id}"
            key = ("move-user", _key(user_id))
            if key in seen:
                return failed(row, f"User {email} is also moved on line {seen[key]}; "
                                   "give each user one group per job.", resolved)
            seen[key] = row.line
            if _key(_ref(user, "groupId", "group")) == _key(group_id):
                return skipped(row, f"User {email} is already in group '{row.get('group')}'; nothing sent.",
                               resolved)
            return Step(row, action, f"user {email}", {"user": user_id, "group": group_id,
                                                       "path": row.get("group")}, resolved, (action,))

        if action == "delete-user":
            if row.get("email"):
                user = self._user(row.get("email"), lists)[0]
            else:
                # CONTRACT: delete-user takes email or user_id
                found = self._find(lists, "user_by_id", "user_id", row.get("user_id"))
                user = _only(found[0], row.get("user_id"), "user id", "user")
            user_id = _id(user, "userId")
            resolved = f"user_id={user_id}"
            dup = once((action, _key(user_id)), resolved)
            if dup:
                return dup
            who = get_field(user, *EMAIL) or row.get("email") or user_id
            return Step(row, action, f"user {who}", {"user": user_id}, resolved, (action,))

        if action in COMMANDS:
            device = self._device(row, lists)[0]
            dev_id = _id(device, "deviceId", "guid")
            serial = get_field(device, *SERIAL) or row.get("serial")
            params: dict[str, Any] = {"device": dev_id}
            resolved = f"device_id={dev_id}"
            if action in ("install-app", "remove-app"):
                app = self._app(row.get("app"), lists)
                params["app"] = _int(_id(app, "appId"))
                params["identifier"] = get_field(app, *PACKAGE)
                params["name"] = get_field(app, "name") or params["identifier"]
                resolved += f"; app_id={params['app']}"
                if action == "remove-app" and not params["identifier"]:
                    raise LookupFailed(f"app '{row.get('app')}' has no package id to uninstall by")
            if action == "message":
                params["message"] = row.get("message")
            dup = once((action, _fkey(dev_id), _key(params.get("app")), params.get("message")), resolved)
            if dup:
                return dup
            return Step(row, action, f"device {serial}", params, resolved, (action,))

        return failed(row, f"duostation cannot {action}.")

    # -- executing ----------------------------------------------------------
    async def execute(self, steps: Sequence[Step]) -> list[Outcome]:
        out = []
        for step in steps:
            try:
                out.append(await self._execute_one(step))
            except AuthError:
                raise
            except TransportError as exc:
                out.append(outcome_from_error(step, exc))
        return out

    async def _execute_one(self, step: Step) -> Outcome:
        p = step.params
        action = step.action
        if action == "tag":
            # POST /api/devicetags { "deviceId": "<deviceId>", "tagId": <tagId> }
            resp = await self._link("devicetags", "deviceId", p["device"], p["tag"])
            return outcome_from_response(step, resp, f"Tag '{p['name']}' linked to {step.target}.")
        if action == "tag-user":
            # POST /api/usertags { "userId": "<userId>", "tagId": <tagId> }: the
            # doc quotes <userId> but calls it "the unique id (integer)"; an
            # integer is what the text says, and what a typed server binds.
            resp = await self._link("usertags", "userId", p["user"], p["tag"])
            return outcome_from_response(step, resp, f"Tag '{p['name']}' linked to {step.target}.")
        if action in ("untag", "untag-user"):
            return await self._unlink("devicetags" if action == "untag" else "usertags", step)
        if action == "assign-user":
            # PUT /api/devices/<id> { "userId": <userId> }
            resp = await self.client.request("PUT", f"devices/{_seg(p['device'])}", json={"userId": p["user"]})
            return outcome_from_response(step, resp, _cap(f"{step.target} assigned to {p['who']}."))
        if action == "move-user":
            # PUT /api/users/<id>: "Change the name, email, phone number and/or
            # group of a user" ("och/eller" in the Swedish doc): each field is
            # optional, so only the group is sent and nothing else is touched.
            resp = await self.client.request("PUT", f"users/{_seg(p['user'])}", json={"groupId": p["group"]})
            return outcome_from_response(step, resp, _cap(f"{step.target} moved to group '{p['path']}'."))
        if action == "delete-user":
            resp = await self.client.request("DELETE", f"users/{_seg(p['user'])}")
            if resp.status == 404 and resp.attempts > 1:
                # our earlier attempt went through and the answer was lost
                resp = Response(200, None, resp.headers, resp.attempts, verified=True)
            return outcome_from_response(step, resp, _cap(f"{step.target} deleted."))
        segment, done = COMMANDS[action]
        # "Data in DELETE-, PUT- and POST-commands must be structured as JSON
        # objects": commands without in-data get an empty object, not no body.
        body: dict[str, Any] = {}
        if action == "install-app":
            # { "appId": <appId>, "vpp": <vpp> }: vpp is optional; left to the MDM's default
            body = {"appId": p["app"]}
            done = f"installation of '{p['name']}' sent"
        elif action == "remove-app":
            # { "identifier": "<identifier>" }: the app's identifier (com.xxxx.yyy), not its id
            body = {"identifier": p["identifier"]}
            done = f"removal of '{p['name']}' sent"
        elif action == "message":
            body = {"message": p["message"]}
        # Commands cannot be read back: a request that may have arrived is not
        # resent (transport raises AmbiguousError -> status unknown).
        resp = await self.client.request("POST", f"devices/{_seg(p['device'])}/{segment}", json=body)
        return outcome_from_response(step, resp, f"{_cap(done)} to {step.target}.")

    async def _link(self, kind: str, owner_field: str, owner: Any, tag: Any) -> Response:
        nested = "device" if kind == "devicetags" else "user"

        async def already_linked() -> bool | None:
            # the documented search: GET /api/devicetags?deviceId= / usertags?userId=
            try:
                resp = await self.client.request("GET", _query(kind, **{owner_field: owner}))
            except TransportError:
                return None
            if not resp.ok:
                return None
            return bool(_Links(as_list(resp.body, kind, *WRAPPERS), owner_field, nested).ids(owner, tag))

        return await self.client.request("POST", kind, json={owner_field: owner, "tagId": tag}, verify=already_linked)

    async def _unlink(self, kind: str, step: Step) -> Outcome:
        last: Response | None = None
        for link in step.params["links"]:
            resp = await self.client.request("DELETE", f"{kind}/{_seg(link)}")
            if resp.status == 404 and resp.attempts > 1:
                resp = Response(200, None, resp.headers, resp.attempts, verified=True)
            if not resp.ok:
                return outcome_from_response(step, resp, "")
            last = resp
        assert last is not None
        return outcome_from_response(step, last, f"Tag '{step.params['name']}' unlinked from {step.target}.")

    def requests_for(self, step: Step) -> int:
        return len(step.params.get("links", ())) or 1


class _ListFailed(Exception):
    def __init__(self, path: str, resp: Response) -> None:
        self.path = path
        self.resp = resp

    def detail(self) -> str:
        return (f"Could not read the MDM's {self.path} list: "
                + explain_status(self.resp.status, self.resp.body, self.resp.attempts))


def _user_value(row: JobRow) -> str:
    """The value a row names its user by (see ``_plan_row``)."""
    if row.action == "assign-user":
        return row.get("user") or row.get("email")
    if row.action == "delete-user" and not row.get("email"):
        return row.get("user_id")
    return row.get("email")


def _only(found: list[Any], value: str, label: str, what: str) -> Any:
    """The one object found for ``value``: blank, none and several fail the row."""
    if not _key(value):
        raise LookupFailed(f"the {label} is blank")
    if not found:
        raise LookupFailed(f"{label} '{value}' was not found")
    if len(found) > 1:
        raise LookupFailed(f"{label} '{value}' matches {len(found)} {what}s; make it unique")
    return found[0]


def _assigned_to(device: Any, user: Any, user_id: Any) -> bool:
    current = _ref(device, "userId", "user")
    if current not in (None, ""):
        return _key(current) == _key(user_id)
    # a device object that names its user only by account name
    account, wanted = get_field(device, "accountName"), get_field(user, *ACCOUNT)
    return bool(account) and bool(wanted) and _fkey(account) == _fkey(wanted)


def _norm_path(path: str) -> str:
    return "\\".join(part for part in path.replace("/", "\\").split("\\") if part)


def _groups_at(groups: list[Any], path: str) -> list[Any]:
    """The groups whose full path is ``path`` (separators / or \\): from a
    ``path`` field when the objects have one, else built from name + parentId."""
    by_id = {_key(_id(g)): g for g in groups}

    def full(group: Any, depth: int = 0) -> str:
        given = get_field(group, "path", "fullPath", "groupPath")
        if given:
            return _norm_path(str(given))
        name = str(get_field(group, "name", default=""))
        parent = by_id.get(_key(get_field(group, "parentId")))
        if parent is None or parent is group or depth > 50:
            return name
        return full(parent, depth + 1) + "\\" + name

    wanted = _norm_path(path)
    return [g for g in groups if full(g) == wanted]


def _query(resource: str, /, **params: Any) -> str:
    """``path?k=v`` with every value percent-encoded, a space as ``%20`` (the
    doc: "Text parameters in URLs must be URL encoded"; its example is
    ``?path=Customers%5CCompany%20Inc``)."""
    return resource + "?" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())


def _seg(value: Any) -> str:
    return quote(str(value), safe="")


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[0].upper() + text[1:] if text else "Look-up failed"
    return text if text.endswith(".") else text + "."


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]
