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

Nothing is taken on trust that the MDM did not say: an object
without the field a row is matched on (an id, a serial, a link's tag) is no
match and the row says which field was missing; two objects sharing an id are
not one object; an answer that is not the doc's "array of X" (an HTML page,
an empty body, a list under a key we do not know) fails the rows that need it
instead of reading as an empty list; and a change is ``succeeded`` only on
the doc's answer (an empty 200, or the new link's id for a tag link), or
when reading it back shows it made.

Undo: tag/untag, tag-user/untag-user, assign-user (back to the device's
earlier user) and move-user (back to the user's earlier group, by its path)
carry the job row that reverses them (``Step.undo``); commands, deletions and
app installs carry none (the doc has no read of the apps on a device). Export:
``inventory()`` reads devices, users, groups, tags and device tags, five
requests for any fleet (the doc pages nothing).

Query strings are encoded by us, spaces as ``%20`` like the doc's example
(``?path=Customers%5CCompany%20Inc``), not as ``+``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote

from ..errors import TransportError
from ..model import JobRow, Outcome, Reason, Status, Step
from ..retry import RetryPolicy
from ..client import Client, RequestContext, Response, Verify
from .base import (
    BASIC_CREDENTIAL_FIELDS,
    BASIC_CREDENTIALS,
    Follow,
    Index,
    ListFailed,
    LookupFailed,
    Provider,
    Settings,
    cap,
    error_reason,
    explain_response,
    failure_in_2xx,
    fkey,
    gather_bounded,
    get_field,
    key,
    one_across,
    one_of,
    outcome_from_response,
    read_back,
    seg,
    sentence,
    skipped,
    wire_int,
    usable_id,
)

DEVICE_ACTIONS = frozenset(
    {
        "tag",
        "untag",
        "assign-user",
        "install-app",
        "remove-app",
        "lock",
        "wipe",
        "inventory",
        "clear-passcode",
        "message",
    }
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

#: Keys a list may be wrapped under (nested ones too: ``{"result": {"rows":
#: [...]}}``). The doc says "Array of devices" (a bare array); these are read
#: too, in case a server wraps it. A list under any other key is not guessed
#: at: the answer is unreadable, never an empty list.
WRAPPERS = ("data", "items", "results", "result", "value", "list", "rows", "records")

# Field names as the doc spells its parameters first, then common variants.
SERIAL = ("serialNumber", "serial", "serialNo")
EMAIL = ("email", "emailAddress", "mail")
ACCOUNT = ("accountName", "account", "userName", "login")
PACKAGE = ("packageId", "identifier", "bundleId", "packageName")
#: the other names an object's own id may come under (after ``id``)
DEVICE_ID = ("deviceId", "guid")
USER_ID = ("userId",)
TAG_ID = ("tagId",)
APP_ID = ("appId",)
GROUP_ID = ("groupId",)


#: the columns ``inventory`` yields, in order
INVENTORY_COLUMNS = ("serial", "device_id", "name", "model", "email", "user", "group", "tags")


def _user_name(user: Any) -> str:
    """A user as a look-up names it: e-mail or account name, and id."""
    shown = key(get_field(user, *EMAIL)) or key(get_field(user, *ACCOUNT)) or "a user"
    return f"{shown} (id {key(_id(user, *USER_ID)) or '?'})"


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


def _identified(obj: Any, what: str, shown: Any, *alternatives: str) -> Any:
    """``obj``'s id, or LookupFailed naming the field that was missing: an
    object without a usable id is no match, and two of them must
    never collapse into "the same change"."""
    value = _id(obj, *alternatives)
    if not usable_id(value):
        quoted = [f"'{name}'" for name in ("id", *alternatives)]
        names = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
        raise LookupFailed(
            f"the MDM lists {what} {shown} without a usable id (no {names} field with a value), "
            f"so it cannot be told apart from other {what}s; nothing was sent",
            Reason.BAD_ANSWER,
        )
    return value


class _Unreadable(Exception):
    """An answer that is not the JSON the doc describes; the text says what it was."""


def _describe_answer(body: Any) -> str:
    if body is None:
        return "an empty answer"
    if isinstance(body, str):
        page = " (an HTML page: a proxy's or sign-in page?)" if body.lstrip().startswith("<") else ""
        return f"a page that is not JSON{page}"
    if isinstance(body, Mapping):
        keys = ", ".join(str(k) for k in list(body)[:5])
        return f"an object with no list under a key bulkmdm knows ({keys})"
    return f"a bare {type(body).__name__}"


def _wrapped(body: Any, keys: Sequence[str], depth: int = 0) -> list[Any] | None:
    if isinstance(body, list):
        return body
    if isinstance(body, Mapping) and depth < 3:
        for key in keys:
            value = get_field(body, key)
            inner = _wrapped(value, keys, depth + 1) if isinstance(value, (list, Mapping)) else None
            if inner is not None:
                return inner
    return None


def _only_objects(found: list[Any]) -> list[Any]:
    if not all(isinstance(obj, Mapping) for obj in found):
        raise _Unreadable("a list of something other than objects")
    return found


def _items(body: Any, *keys: str) -> list[Any]:
    """A documented "Array of X": a bare array, or one under a known wrapper
    key. Anything else raises: read as an empty list, an HTML page or an
    unknown wrapper would turn "untag" into "already untagged" and "tag" into
    a second link."""
    found = _wrapped(body, (*keys, *WRAPPERS))
    if found is None:
        raise _Unreadable(f"{_describe_answer(body)}, not the JSON array the doc describes")
    return _only_objects(found)


def _objects(body: Any) -> list[Any]:
    """A search's or get-by-id's answer: an array (as ``_items``) or one object."""
    found = _wrapped(body, WRAPPERS)
    if found is not None:
        return _only_objects(found)
    if isinstance(body, Mapping):
        if len(body) == 1:  # one object under a wrapper: {"data": {...}}
            key, inner = next(iter(body.items()))
            if isinstance(inner, Mapping) and str(key).replace("_", "").casefold() in WRAPPERS:
                return [inner]
        return [body]
    raise _Unreadable(f"{_describe_answer(body)}, not the JSON the doc describes")


def _matching(found: list[Any], fields: Sequence[str], wanted: str, what: str, value: str) -> list[Any] | LookupFailed:
    """The objects of a search's answer that carry ``fields`` equal to what
    was searched for. The server did the matching, but an object that does not
    say it matches is no match: one without the field fails the row, naming it."""
    carrying = [obj for obj in found if key(get_field(obj, *fields))]
    matches = [obj for obj in carrying if fkey(get_field(obj, *fields)) == wanted]
    if not matches and len(carrying) < len(found):
        return LookupFailed(
            f"the MDM answered the look-up of {what} '{value}' with {len(found) - len(carrying)} "
            f"object(s) without a '{fields[0]}' field, so none can be matched to the row",
            Reason.BAD_ANSWER,
        )
    return matches


class _Links:
    """Tag links of one kind (device tags or user tags): (owner, tag) -> link ids."""

    def __init__(self, links: list[Any], owner_field: str, nested: str) -> None:
        self.owner_field = owner_field
        #: "deviceTagId" / "userTagId": the link's own id under its specific name
        self.link_field = owner_field[:-2] + "TagId"
        self.nested = nested
        self.by_pair: dict[tuple[str, str], list[Any]] = {}
        self._seen: set[tuple[str, str, str]] = set()
        #: owner -> why its links cannot be told (a link of it without a tag id)
        self.unreadable: dict[str, LookupFailed] = {}
        #: a link without an owner was listed: this list cannot say what an owner lacks
        self.orphans = False
        self.add(links)

    def add(self, links: list[Any], owner: Any = None) -> None:
        """Record ``links``; ``owner`` is the one a search asked for (a link
        that does not name its owner belongs to it)."""
        for link in links:
            # "Search for tags linked to a specific device" answers an "Array of
            # device tags"; a server may shape a device tag as the linked tag
            # itself ({"deviceTagId": 11, "id": <tag id>, "name": ...}). A
            # specific deviceTagId/userTagId is therefore the link's id when
            # present (never DELETE a tag's id as a link's), and "id" is then
            # the tag's id unless a tagId says otherwise.
            specific = get_field(link, self.link_field)
            link_id = specific if specific is not None else _id(link, "deviceTagId", "userTagId")
            owner_ref = _ref(link, self.owner_field, self.nested)
            owner_key = fkey(owner_ref if usable_id(owner_ref) else owner)
            tag_ref = _ref(link, "tagId", "tag")
            if tag_ref is None and specific is not None:
                tag_ref = _id(link)
            if not owner_key:
                self.orphans = True
                continue
            if not usable_id(tag_ref):
                self.unreadable.setdefault(
                    owner_key,
                    LookupFailed(
                        f"the MDM lists a tag link of {self.nested} {owner_ref or owner} without a usable tag id "
                        "(no 'tagId' field with a value), so which tags it has cannot be told",
                        Reason.BAD_ANSWER,
                    ),
                )
                continue
            seen = (key(link_id), owner_key, key(tag_ref))
            if link_id is not None and seen in self._seen:
                continue
            self._seen.add(seen)
            self.by_pair.setdefault((owner_key, key(tag_ref)), []).append(link_id)

    def ids(self, owner: Any, tag: Any) -> list[Any]:
        problem = self.unreadable.get(fkey(owner))
        if problem is not None:
            raise problem
        return self.by_pair.get((fkey(owner), key(tag)), [])


def _nothing(obj: Any) -> None:
    return None


@dataclass
class _Lookups:
    """What planning has read so far, kept for the next chunk of a run: the
    lists the rows needed, indexed, and what the documented searches found."""

    #: the lists read so far: "devices", "users", "tags", "apps", "devicetags", "usertags"
    read: set[str] = field(default_factory=set)
    device_by_serial: Index = field(default_factory=lambda: Index("device", (), _nothing))
    device_by_id: Index = field(default_factory=lambda: Index("device", (), _nothing))
    user_by_email: Index = field(default_factory=lambda: Index("user", (), _nothing))
    user_by_account: Index = field(default_factory=lambda: Index("user", (), _nothing))
    user_by_id: Index = field(default_factory=lambda: Index("user", (), _nothing))
    tag_by_name: Index = field(default_factory=lambda: Index("tag", (), _nothing))
    tag_by_name_folded: Index = field(default_factory=lambda: Index("tag", (), _nothing))
    tag_by_id: Index = field(default_factory=lambda: Index("tag", (), _nothing))
    app_by_key: Index = field(default_factory=lambda: Index("app", (), _nothing))
    app_by_key_folded: Index = field(default_factory=lambda: Index("app", (), _nothing))
    app_by_id: Index = field(default_factory=lambda: Index("app", (), _nothing))
    devicetags: _Links = field(default_factory=lambda: _Links([], "deviceId", "device"))
    usertags: _Links = field(default_factory=lambda: _Links([], "userId", "user"))
    #: link kinds the MDM does not list whole: each owner's links are searched
    by_owner: set[str] = field(default_factory=set)
    #: owners whose links were searched, by link kind
    links_read: dict[str, set[str]] = field(default_factory=lambda: {"devicetags": set(), "usertags": set()})
    #: owners whose links could not be read, and why
    link_failures: dict[str, LookupFailed] = field(default_factory=dict)
    #: group path -> the group (or why it was not found), for move-user rows
    groups: dict[str, Any] = field(default_factory=dict)
    #: group id -> its full path (for undo rows); None until read
    group_paths: dict[str, str] | None = None
    #: what the documented searches found: (kind, folded value) -> the objects, or why none
    extra: dict[tuple[str, str], Any] = field(default_factory=dict)

    def links(self, kind: str) -> _Links:
        """The device tags or the user tags."""
        return self.devicetags if kind == "devicetags" else self.usertags

    def take_devices(self, devices: list[Any]) -> None:
        self.device_by_serial = Index("device", devices, lambda d: get_field(d, *SERIAL))
        self.device_by_id = Index("device", devices, lambda d: _id(d, *DEVICE_ID), fold=True)
        self.read.add("devices")

    def take_users(self, users: list[Any]) -> None:
        self.user_by_email = Index("user", users, lambda u: get_field(u, *EMAIL), fold=True)
        self.user_by_account = Index("user", users, lambda u: get_field(u, *ACCOUNT), fold=True)
        self.user_by_id = Index("user", users, lambda u: _id(u, *USER_ID))
        self.read.add("users")

    def take_tags(self, tags: list[Any]) -> None:
        self.tag_by_name = Index("tag", tags, lambda t: get_field(t, "name", "tagName"))
        self.tag_by_name_folded = Index("tag", tags, lambda t: get_field(t, "name", "tagName"), fold=True)
        self.tag_by_id = Index("tag", tags, lambda t: _id(t, *TAG_ID))
        self.read.add("tags")

    def take_apps(self, apps: list[Any]) -> None:
        self.app_by_key = Index("app", apps, lambda a: [get_field(a, "name"), get_field(a, *PACKAGE)])
        self.app_by_key_folded = Index("app", apps, lambda a: [get_field(a, "name"), get_field(a, *PACKAGE)], fold=True)
        self.app_by_id = Index("app", apps, lambda a: _id(a, *APP_ID))
        self.read.add("apps")


def _text(value: Any) -> str:
    """A value as export text: ids keep every digit, serials their zeros."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class DuoStation(Provider):
    name = "duostation"
    title = "DuoSTATION"
    actions = frozenset(DEVICE_ACTIONS | USER_ACTIONS)
    # Tags, users, their groups and deletions live in DuoSTATION itself. The
    # device commands (lockdevice, wipedevice, installapp, ...) answer "200
    # OK will be returned for successful requests" and nothing in the API
    # shows whether a device has since carried one out: not trackable.
    follow = {
        action: Follow.MDM
        for action in ("tag", "untag", "tag-user", "untag-user", "assign-user", "move-user", "delete-user")
    }
    # "The API uses Basic Authentication. User name and password is the same
    # that can be used to log in to DuoSTATION MDM".
    credential_fields = BASIC_CREDENTIAL_FIELDS
    credentials = BASIC_CREDENTIALS
    api_path = "/api"
    simulator = "bulkmdm.sim.duostation:make_app"
    # "Get tags": the smallest list the doc has, read by every run that tags
    access_check = ("tags", {})
    # The doc names no limit and no error statuses beyond "200 OK will be
    # returned for successful requests": the shared policy (408, 429 and
    # 502-504 tried again, Retry-After honoured within its cap).
    retry_policy = RetryPolicy()
    # The doc states no limit; a run starts at 20 requests/s with 8 in flight,
    # gentle on a school's server, and the adaptive controller climbs from
    # there (limits.py: slow start) until the server answers 429 or its
    # latency shows a queue.
    default_rate = 20.0
    default_concurrency = 8
    max_batch = 1
    # Lists, searches and duplicate checks are kept across plan() calls.
    chunk_rows = 10_000
    url_hint = "the site root, e.g. https://mdm.skolan.se (requests go to URL/api/...)"
    # a server may answer refused Basic credentials with 403 rather than 401
    setup_hint = (
        "the credentials (BULKMDM_USERNAME and BULKMDM_PASSWORD, the MDM's own login) and that "
        "the account may use the API"
    )

    def __init__(self, client: Client, settings: Settings) -> None:
        super().__init__(client, settings)
        #: everything fetched for the look-ups so far, kept for the next chunk
        self._lists = _Lookups()

    # -- reading ------------------------------------------------------------
    async def _list(self, path: str, *keys: str) -> list[Any]:
        """A documented "Array of X", or ListFailed (an error, or another shape)."""
        resp = await self.client.request("GET", path)
        if not resp.ok:
            raise ListFailed(path, resp)
        try:
            return _items(resp.body, *keys)
        except _Unreadable as exc:
            raise _ShapeFailed(path, resp, str(exc)) from None

    async def _search(self, path: str, what: str, value: str, *, by_id: bool) -> list[Any] | LookupFailed:
        """A documented search (or get-by-id) for one value that missed the
        list: the objects found, or why the look-up could not be made."""
        try:
            resp = await self.client.request("GET", path)
        except TransportError as exc:
            return LookupFailed(f"{what} '{value}' could not be looked up ({exc})", error_reason(exc))
        # a get-by-id for a value that is no id at all may be refused as malformed
        if resp.status == 404 or (by_id and resp.status == 400):
            return []
        if not resp.ok:
            return LookupFailed(
                f"{what} '{value}' could not be looked up; the MDM answered {explain_response(resp)}",
                Reason.of_http(resp.status),
            )
        try:
            return _objects(resp.body)
        except _Unreadable as exc:
            return LookupFailed(
                f"{what} '{value}' could not be looked up; the MDM answered with {exc}", Reason.BAD_ANSWER
            )

    async def _group(self, path: str) -> Any:
        """GET /api/groups?path=<path>: "If more than one group matches the
        name an error will be returned" — the doc names no status, so any
        error answer (a 400, a 409, or a 500 from a server that throws) fails
        the rows that name this path, and only them."""
        # "<path> is the full path for the group separated with / or \": a
        # path written with a leading or trailing separator (\Skolor\Klass 7A\)
        # names the same group, so it is sent without them, for a server
        # that compares the path as written.
        trimmed = path.strip().strip("\\/").strip()
        if not trimmed:
            raise LookupFailed(f"group '{path}' names no group", Reason.INVALID_ROW)
        try:
            resp = await self.client.request("GET", _query("groups", path=trimmed))
        except TransportError as exc:
            raise LookupFailed(f"group '{path}' could not be looked up ({exc})", error_reason(exc)) from None
        if resp.status == 404:
            raise LookupFailed(f"group '{path}' was not found")
        if not resp.ok:
            raise LookupFailed(
                f"group '{path}' could not be resolved (it may match more than one group); "
                f"the MDM answered {explain_response(resp)}",
                # the doc's "an error" for a name that matches several groups names no status
                Reason.AMBIGUOUS if resp.status in (400, 409, 422) else Reason.of_http(resp.status),
            )
        try:
            found = [
                get_field(g, "group") if isinstance(get_field(g, "group"), Mapping) else g for g in _objects(resp.body)
            ]
        except _Unreadable as exc:
            raise LookupFailed(
                f"group '{path}' could not be looked up; the MDM answered with {exc}", Reason.BAD_ANSWER
            ) from None
        return one_of(_at_path(found, path), path, "group", "group")

    # -- planning: what the rows need -----------------------------------------
    async def prepare(self, rows: Sequence[JobRow]) -> _Lookups:
        """Read the lists these rows need (once per run; a later chunk reuses
        them), then look up what the lists did not hold."""
        actions = {row.action for row in rows}
        lists = self._lists
        if actions & DEVICE_ACTIONS and "devices" not in lists.read:
            lists.take_devices(await self._list("devices", "devices"))
        if actions & USER_ACTIONS and "users" not in lists.read:
            lists.take_users(await self._list("users", "users"))
        if actions & {"tag", "untag", "tag-user", "untag-user"} and "tags" not in lists.read:
            lists.take_tags(await self._list("tags", "tags"))
        if actions & {"tag", "untag"} and "devicetags" not in lists.read:
            lists.devicetags = await self._links("devicetags", "deviceId", "device", lists)
            lists.read.add("devicetags")
        if actions & {"tag-user", "untag-user"} and "usertags" not in lists.read:
            lists.usertags = await self._links("usertags", "userId", "user", lists)
            lists.read.add("usertags")
        if actions & {"install-app", "remove-app"} and "apps" not in lists.read:
            lists.take_apps(await self._list("apps", "apps"))
        if "move-user" in actions:
            await self._groups(rows, lists)
        await self._search_misses(rows, lists)
        return lists

    async def _groups(self, rows: Sequence[JobRow], lists: _Lookups) -> None:
        groups = lists.groups
        for path in sorted(
            {row.get("group") for row in rows if row.action == "move-user" and row.get("group")} - groups.keys()
        ):
            try:
                groups[path] = await self._group(path)
            except LookupFailed as exc:
                groups[path] = exc
        if lists.group_paths is None:
            # Only to write the undo row (the group a user is moved back to):
            # a group list the MDM will not give leaves those rows without one.
            try:
                lists.group_paths = _unique_paths(await self._list("groups", "groups"))
            except ListFailed:
                lists.group_paths = {}

    async def _links(self, kind: str, owner_field: str, nested: str, lists: _Lookups) -> _Links:
        """All device (or user) tags: "GET /api/devicetags - Get all available
        device tags". A server that refuses the whole list (one that wants a
        search parameter, or cannot list a large site), or lists links that do
        not name their device, is asked the documented search instead,
        "GET /api/devicetags?deviceId=<deviceId>" once per device of the job,
        and only the rows whose search fails fail."""
        try:
            links: _Links | None = _Links(await self._list(kind, kind, kind[:-4] + "Tags"), owner_field, nested)
        except ListFailed:
            links = None
        if links is None or links.orphans:
            lists.by_owner.add(kind)
            return _Links([], owner_field, nested)
        return links

    async def _search_misses(self, rows: Sequence[JobRow], lists: _Lookups) -> None:
        """Look up, with the documented searches, the values the lists did not
        hold; then what rows found that way need: their tag links, and the
        user a device had before it is assigned (for the undo row)."""
        todo: dict[tuple[str, str], Callable[[], Awaitable[Any]]] = {}
        for row in rows:
            if row.action in DEVICE_ACTIONS:
                device_id, serial = row.get("device_id"), row.get("serial")
                if device_id and not lists.device_by_id.find(device_id):
                    self._queue_search(
                        todo,
                        lists,
                        "device_id",
                        device_id,
                        f"devices/{seg(device_id)}",
                        "device id",
                        ("id", *DEVICE_ID),
                    )
                elif not device_id and serial and not lists.device_by_serial.find(serial):
                    self._queue_search(
                        todo, lists, "serial", serial, _query("devices", serialNumber=serial), "serial", SERIAL
                    )
            if row.action in USER_ACTIONS:
                self._queue_user_search(todo, lists, row)
        await gather_bounded(todo.values(), self.default_concurrency)
        reads: dict[str, Callable[[], Awaitable[Any]]] = {}
        todo = {}
        for row in rows:
            try:
                self._queue_row_reads(reads, todo, lists, row)
            except LookupFailed:
                continue
        await gather_bounded([*reads.values(), *todo.values()], self.default_concurrency)

    def _queue_search(
        self,
        todo: dict[tuple[str, str], Callable[[], Awaitable[Any]]],
        lists: _Lookups,
        kind: str,
        value: str,
        path: str,
        what: str,
        fields: tuple[str, ...],
        then: tuple[str, str, str, tuple[str, ...]] | None = None,
    ) -> None:
        extra = lists.extra
        wanted = (kind, fkey(value))
        if not wanted[1] or wanted in todo or wanted in extra:
            return

        async def run() -> None:
            found = await self._search(path, what, value, by_id=fields[0] == "id")
            if isinstance(found, list):
                found = _matching(found, fields, wanted[1], what, value)
            extra[wanted] = found
            if then is not None:
                # an account name may itself look like an address (anna@skola.se), another user's
                next_kind, next_path, next_what, next_fields = then
                more = await self._search(next_path, next_what, value, by_id=False)
                if isinstance(more, list):
                    more = _matching(more, next_fields, wanted[1], next_what, value)
                extra[(next_kind, wanted[1])] = more

        todo[wanted] = run

    def _queue_user_search(
        self, todo: dict[tuple[str, str], Callable[[], Awaitable[Any]]], lists: _Lookups, row: JobRow
    ) -> None:
        value = _user_value(row)
        if row.action == "delete-user" and not row.get("email"):
            if value and not lists.user_by_id.find(value):
                self._queue_search(todo, lists, "user_id", value, f"users/{seg(value)}", "user id", ("id", *USER_ID))
            return
        if not value or lists.user_by_email.find(value) or lists.user_by_account.find(value):
            return
        by_account = _query("users", account=value)
        if "@" in value:
            self._queue_search(
                todo,
                lists,
                "email",
                value,
                _query("users", email=value),
                "user with email",
                EMAIL,
                then=("account", by_account, "user with account name", ACCOUNT),
            )
        else:
            self._queue_search(todo, lists, "account", value, by_account, "user with account name", ACCOUNT)

    def _queue_row_reads(
        self,
        reads: dict[str, Callable[[], Awaitable[Any]]],
        todo: dict[tuple[str, str], Callable[[], Awaitable[Any]]],
        lists: _Lookups,
        row: JobRow,
    ) -> None:
        """What one row needs after the searches: tag links of an owner the
        link list could not cover, the earlier user of a device to assign."""
        if row.action in ("tag", "untag"):
            device, listed = self._device(row, lists)
            if not listed or "devicetags" in lists.by_owner:
                dev_id = _identified(device, "device", row.get("serial"), *DEVICE_ID)
                self._queue_links(reads, lists, "devicetags", "deviceId", dev_id)
        elif row.action in ("tag-user", "untag-user"):
            user, listed = self._user(row.get("email"), lists)
            if not listed or "usertags" in lists.by_owner:
                user_id = wire_int(_identified(user, "user", row.get("email"), *USER_ID))
                self._queue_links(reads, lists, "usertags", "userId", user_id)
        elif row.action == "assign-user":
            earlier = _ref(self._device(row, lists)[0], "userId", "user")
            if usable_id(earlier) and key(earlier) != "0" and not lists.user_by_id.find(key(earlier)):
                self._queue_search(
                    todo, lists, "user_id", key(earlier), f"users/{seg(earlier)}", "user id", ("id", *USER_ID)
                )

    def _queue_links(
        self,
        reads: dict[str, Callable[[], Awaitable[Any]]],
        lists: _Lookups,
        kind: str,
        owner_field: str,
        owner: Any,
    ) -> None:
        """Tag links of an object the lists did not hold (nor the link list cover)."""
        already = lists.links_read[kind]
        failures = lists.link_failures
        owner_key = fkey(owner)
        if owner_key in reads or owner_key in already:
            return
        already.add(owner_key)

        async def run() -> None:
            what = f"the tags of {owner_field[:-2]} {owner}"
            try:
                lists.links(kind).add(await self._list(_query(kind, **{owner_field: owner}), kind), owner=owner)
            except ListFailed as exc:
                failures[owner_key] = LookupFailed(
                    f"{what} could not be read: {exc.detail().partition(': ')[2]}", exc.code
                )
            except TransportError as exc:
                failures[owner_key] = LookupFailed(f"{what} could not be read ({exc})", error_reason(exc))

        reads[owner_key] = run

    # -- resolving one value --------------------------------------------------
    def _find(self, lists: _Lookups, index: Index, kind: str, value: str) -> tuple[list[Any], bool]:
        """(objects matching ``value``, whether they came from the fetched list)."""
        found = index.find(value)
        if found:
            return found, True
        extra = lists.extra.get((kind, fkey(value)), [])
        if isinstance(extra, LookupFailed):
            raise extra
        return list(extra), False

    def _device(self, row: JobRow, lists: _Lookups) -> tuple[Any, bool]:
        value = row.get("device_id")
        if value:
            label = "device id"
            found = self._find(lists, lists.device_by_id, "device_id", value)
        else:
            value, label = row.get("serial"), "serial"
            found = self._find(lists, lists.device_by_serial, "serial", value)
        return one_of(found[0], value, label, "device"), found[1]

    def _user(self, value: str, lists: _Lookups) -> tuple[Any, bool]:
        """The user ``value`` names by e-mail or by account name (an account
        name may itself look like an address: anna@skola.se), and whether the
        user list held it. A value that is one user's e-mail and another's
        account name names neither."""
        if not value.strip():
            raise LookupFailed("the user is blank", Reason.INVALID_ROW)
        fields = [("account name", self._find(lists, lists.user_by_account, "account", value))]
        if "@" in value:
            fields.insert(0, ("email", self._find(lists, lists.user_by_email, "email", value)))
        label = "user with email" if "@" in value else "user with account name"
        user = one_across(
            value,
            label,
            "user",
            [(field, found) for field, (found, _listed) in fields],
            ident=lambda u: _id(u, *USER_ID),
            name=_user_name,
        )
        return user, any(listed and any(u is user for u in found) for _field, (found, listed) in fields)

    @staticmethod
    def _tag(name: str, lists: _Lookups) -> Any:
        # Exact name first; a different capitalisation is accepted only when it
        # points at exactly one tag.
        if lists.tag_by_name.find(name):
            return lists.tag_by_name.one(name, "tag")
        return lists.tag_by_name_folded.one(name, "tag")

    @staticmethod
    def _app(value: str, lists: _Lookups) -> Any:
        if not value.strip():
            raise LookupFailed("the app is blank", Reason.INVALID_ROW)
        # As for tags: a different capitalisation of a name or package id is
        # accepted only when it points at exactly one app.
        by_key = lists.app_by_key.find(value) or lists.app_by_key_folded.find(value)
        by_id = lists.app_by_id.find(value) if value.strip().isdigit() else []
        if not by_key and not by_id:
            raise LookupFailed(f"app '{value}' was not found (give its name, package id or id)")
        return one_across(
            value,
            "app",
            "app",
            [("name or package id", by_key), ("id", by_id)],
            ident=lambda a: _id(a, *APP_ID),
            name=lambda a: (
                f"{key(get_field(a, 'name')) or key(get_field(a, *PACKAGE)) or 'an app'} "
                f"(id {key(_id(a, *APP_ID)) or '?'})"
            ),
        )

    @staticmethod
    def _id_of(obj: Any, index: Index, what: str, shown: Any, *alternatives: str) -> Any:
        """``obj``'s id, which no other listed object may share (two devices
        under one id are not one device: rows for each would read as one change)."""
        value = _identified(obj, what, shown, *alternatives)
        holders = index.find(key(value))
        if len(holders) > 1:
            raise LookupFailed(
                f"the MDM lists {len(holders)} {what}s with id {value}, so {what} {shown} cannot be "
                "told apart from the others; nothing was sent",
                Reason.AMBIGUOUS,
            )
        return value

    def _device_ref(self, row: JobRow, lists: _Lookups) -> tuple[Any, Any, str]:
        """(device, its id, its serial) for a row naming a device."""
        device = self._device(row, lists)[0]
        serial = get_field(device, *SERIAL) or row.get("serial") or row.get("device_id")
        return device, self._id_of(device, lists.device_by_id, "device", serial, *DEVICE_ID), _text(serial)

    def _user_ref(self, value: str, lists: _Lookups) -> tuple[Any, Any, str]:
        """(user, its id as the doc's integer, how the report names it)."""
        user = self._user(value, lists)[0]
        shown = get_field(user, *EMAIL) or value
        return user, wire_int(self._id_of(user, lists.user_by_id, "user", shown, *USER_ID)), _text(shown)

    def _tag_ref(self, name: str, lists: _Lookups) -> tuple[Any, str]:
        tag = self._tag(name, lists)
        tag_id = wire_int(self._id_of(tag, lists.tag_by_id, "tag", f"'{name}'", *TAG_ID))
        return tag_id, _text(get_field(tag, "name", "tagName") or name)

    # -- planning one row -----------------------------------------------------
    def plan_row(self, row: JobRow, lists: _Lookups) -> Step | Outcome:
        planner = _PLANNERS.get(row.action)
        if planner is not None:
            return planner(self, row, lists)
        if row.action not in COMMANDS:
            raise LookupFailed(f"duostation cannot {row.action}", Reason.INVALID_ROW)
        return self._plan_command(row, lists)

    def _plan_device_tag(self, row: JobRow, lists: _Lookups) -> Step | Outcome:
        _, dev_id, serial = self._device_ref(row, lists)
        tag_id, tag_name = self._tag_ref(row.get("tag"), lists)
        opposite = "untag" if row.action == "tag" else "tag"
        change = (row.action, fkey(dev_id), key(tag_id))
        # undo: the opposite row, naming the device by its id (exact) and serial (for people)
        undo = {"action": opposite, "serial": serial, "device_id": _text(dev_id), "tag": tag_name}
        return self._plan_link(
            row,
            lists,
            "devicetags",
            dev_id,
            change,
            opposite,
            f"device {serial}",
            {"device": dev_id, "tag": tag_id, "name": tag_name},
            undo,
        )

    def _plan_user_tag(self, row: JobRow, lists: _Lookups) -> Step | Outcome:
        _, user_id, email = self._user_ref(row.get("email"), lists)
        tag_id, tag_name = self._tag_ref(row.get("tag"), lists)
        opposite = "untag-user" if row.action == "tag-user" else "tag-user"
        change = (row.action, key(user_id), key(tag_id))
        undo = {"action": opposite, "email": row.get("email"), "tag": tag_name}
        return self._plan_link(
            row,
            lists,
            "usertags",
            user_id,
            change,
            opposite,
            f"user {email}",
            {"user": user_id, "tag": tag_id, "name": tag_name},
            undo,
        )

    def _plan_link(
        self,
        row: JobRow,
        lists: _Lookups,
        kind: str,
        owner: Any,
        change: tuple[Any, ...],
        opposite: str,
        what: str,
        params: dict[str, Any],
        undo: dict[str, str],
    ) -> Step | Outcome:
        """A tag or untag (of a device or a user): the same change twice is
        sent once, a tag and an untag of one pair contradict each other, and
        the links the owner has now say whether anything is sent."""
        tag_id, name = params["tag"], params["name"]
        resolved = f"{kind[:-4]}_id={owner}; tag_id={tag_id}"
        verb = "untagged" if opposite.startswith("untag") else "tagged"
        dup = self.changes.contradicts(
            row, (opposite, *change[1:]), f"{cap(what)} is also {verb} with this tag", resolved
        ) or self.changes.once(row, change, resolved)
        if dup:
            return dup
        if fkey(owner) in lists.link_failures:
            raise lists.link_failures[fkey(owner)]
        links = lists.links(kind).ids(owner, tag_id)
        if row.action in ("tag", "tag-user") and links:
            return skipped(row, f"{cap(what)} already has tag '{name}'; nothing sent.", resolved)
        if row.action in ("untag", "untag-user"):
            if not links:
                return skipped(row, f"{cap(what)} does not have tag '{name}'; nothing sent.", resolved)
            if not all(usable_id(link) for link in links):
                raise LookupFailed(
                    f"the MDM lists the link of tag '{name}' to {what} without a usable id (no 'id' "
                    f"or '{kind[:-4]}TagId' field with a value), so there is nothing to unlink by",
                    Reason.BAD_ANSWER,
                )
            params = {**params, "links": tuple(links)}
        self.changes.changing(row, change)
        return Step(row, row.action, what, params, resolved, (row.action,), undo)

    def _plan_assign(self, row: JobRow, lists: _Lookups) -> Step | Outcome:
        device, dev_id, serial = self._device_ref(row, lists)
        user, user_id, _ = self._user_ref(row.get("user") or row.get("email"), lists)
        who = get_field(user, *EMAIL) or get_field(user, *ACCOUNT) or user_id
        resolved = f"device_id={dev_id}; user_id={user_id}"
        dup = self.changes.once(row, ("assign-user", fkey(dev_id), key(user_id)), resolved) or self.changes.only_one(
            row, ("assign-user", fkey(dev_id)), f"Device {serial} is also assigned", resolved
        )
        if dup:
            return dup
        if _assigned_to(device, user, user_id):
            return skipped(row, f"Device {serial} is already assigned to {who}; nothing sent.", resolved)
        return Step(
            row,
            "assign-user",
            f"device {serial}",
            {"device": dev_id, "user": user_id, "who": who},
            resolved,
            ("assign-user",),
            self._undo_assign(device, dev_id, serial, lists),
        )

    def _undo_assign(self, device: Any, dev_id: Any, serial: str, lists: _Lookups) -> dict[str, str] | None:
        """The assign-user row that gives the device back its earlier user,
        naming that user by a value that resolves to exactly that user (the
        account name first: it is the login, where e-mail addresses may be
        shared). None when the device had no user: no verb unassigns one."""
        earlier = _ref(device, "userId", "user")
        if usable_id(earlier) and key(earlier) != "0":
            try:
                found = self._find(lists, lists.user_by_id, "user_id", key(earlier))[0]
            except LookupFailed:
                return None
            if len(found) != 1:
                return None
            candidates = [get_field(found[0], *ACCOUNT), get_field(found[0], *EMAIL)]
        else:
            # a device that names its user only by account name
            candidates = [get_field(device, "accountName")]
        for value in candidates:
            try:
                again = self._user(str(value or ""), lists)[0]
            except LookupFailed:
                continue
            if not usable_id(earlier) or key(_id(again, *USER_ID)) == key(earlier):
                return {"action": "assign-user", "serial": serial, "device_id": _text(dev_id), "user": str(value)}
        return None

    def _plan_move(self, row: JobRow, lists: _Lookups) -> Step | Outcome:
        user, user_id, email = self._user_ref(row.get("email"), lists)
        group = lists.groups.get(row.get("group"))
        if isinstance(group, LookupFailed):
            raise group
        if group is None:
            raise LookupFailed("the group is blank", Reason.INVALID_ROW)
        group_id = wire_int(_identified(group, "group", f"'{row.get('group')}'", *GROUP_ID))
        resolved = f"user_id={user_id}; group_id={group_id}"
        # one user twice (an export lists a user once per device): the same
        # group is the same change, another group a contradiction
        dup = self.changes.once(row, ("move-user", key(user_id), key(group_id)), resolved) or self.changes.only_one(
            row, ("move-user", key(user_id)), f"User {email} is also moved", resolved
        )
        if dup:
            return dup
        earlier = _ref(user, "groupId", "group")
        if key(earlier) == key(group_id):
            return skipped(row, f"User {email} is already in group '{row.get('group')}'; nothing sent.", resolved)
        # undo: back to the group the user was in, by its full path (one no other group shares)
        path = (lists.group_paths or {}).get(key(earlier))
        undo = {"action": "move-user", "email": row.get("email"), "group": path} if path else None
        return Step(
            row,
            "move-user",
            f"user {email}",
            {"user": user_id, "group": group_id, "path": row.get("group")},
            resolved,
            ("move-user",),
            undo,
        )

    def _plan_delete_user(self, row: JobRow, lists: _Lookups) -> Step | Outcome:
        if row.get("email"):
            _, user_id, who = self._user_ref(row.get("email"), lists)
        else:
            # CONTRACT: delete-user takes email or user_id
            found = self._find(lists, lists.user_by_id, "user_id", row.get("user_id"))
            user = one_of(found[0], row.get("user_id"), "user id", "user")
            user_id = self._id_of(user, lists.user_by_id, "user", row.get("user_id"), *USER_ID)
            who = _text(get_field(user, *EMAIL) or user_id)
        resolved = f"user_id={user_id}"
        # a deleted user cannot be put back: no undo
        return self.changes.once(row, ("delete-user", key(user_id)), resolved) or Step(
            row, "delete-user", f"user {who}", {"user": user_id}, resolved, ("delete-user",)
        )

    def _plan_command(self, row: JobRow, lists: _Lookups) -> Step | Outcome:
        action = row.action
        _, dev_id, serial = self._device_ref(row, lists)
        params: dict[str, Any] = {"device": dev_id}
        resolved = f"device_id={dev_id}"
        if action in ("install-app", "remove-app"):
            app = self._app(row.get("app"), lists)
            params["identifier"] = get_field(app, *PACKAGE)
            params["name"] = get_field(app, "name") or params["identifier"]
            app_id = _id(app, *APP_ID)
            if action == "install-app":
                # { "appId": <appId> }: the app's own id is what goes out
                app_id = self._id_of(app, lists.app_by_id, "app", f"'{row.get('app')}'", *APP_ID)
            elif not params["identifier"]:
                raise LookupFailed(f"app '{row.get('app')}' has no package id to uninstall by", Reason.BAD_ANSWER)
            params["app"] = wire_int(app_id)
            resolved += f"; app_id={app_id}"
        if action == "message":
            params["message"] = row.get("message")
        which = params.get("app") if action == "install-app" else params.get("identifier")
        # Commands cannot be undone; nor can install-app and remove-app: the
        # doc has no read of the apps on a device, so the state before is not known.
        return self.changes.once(row, (action, fkey(dev_id), key(which), params.get("message")), resolved) or Step(
            row, action, f"device {serial}", params, resolved, (action,)
        )

    # -- sending ------------------------------------------------------------
    #: action -> the method that sends it (the rest are device commands)
    _SENDERS: ClassVar[dict[str, str]] = {
        "tag": "_send_link",
        "tag-user": "_send_link",
        "untag": "_send_unlink",
        "untag-user": "_send_unlink",
        "assign-user": "_send_assign",
        "move-user": "_send_move",
        "delete-user": "_send_delete_user",
    }

    async def send(self, step: Step, context: RequestContext) -> Outcome:
        send: Callable[[Step, RequestContext], Awaitable[Outcome]] = getattr(
            self, self._SENDERS.get(step.action, "_send_command")
        )
        return await send(step, context)

    async def _send_link(self, step: Step, context: RequestContext) -> Outcome:
        p = step.params
        if step.action == "tag":
            # POST /api/devicetags { "deviceId": "<deviceId>", "tagId": <tagId> }
            kind, owner_field, owner = "devicetags", "deviceId", p["device"]
        else:
            # POST /api/usertags { "userId": "<userId>", "tagId": <tagId> }: the
            # doc quotes <userId> but calls it "the unique id (integer)"; an
            # integer is what the text says, and what a typed server binds.
            kind, owner_field, owner = "usertags", "userId", p["user"]
        linked = self._linked(kind, owner_field, owner, p["tag"])
        resp = await self.client.request(
            "POST", kind, json={owner_field: owner, "tagId": p["tag"]}, verify=linked, context=context
        )
        # "Response data: Id of the newly created device tag": a 2xx without it is read back
        done = f"Tag '{p['name']}' linked to {step.target}."
        return await self._settle(step, resp, done, linked, context, new_id=True)

    async def _send_unlink(self, step: Step, context: RequestContext) -> Outcome:
        kind = "devicetags" if step.action == "untag" else "usertags"
        outcome: Outcome | None = None
        for link in step.params["links"]:
            # DELETE /api/devicetags/<id>: <id> is the device tag's, not the tag's
            path = f"{kind}/{seg(link)}"
            gone = self._gone(path)
            resp = await self.client.request("DELETE", path, verify=gone, context=context)
            done = f"Tag '{step.params['name']}' unlinked from {step.target}."
            outcome = await self._settle(step, resp, done, gone, context)
            if outcome.status is not Status.SUCCEEDED:
                return outcome
        assert outcome is not None
        return outcome

    async def _send_assign(self, step: Step, context: RequestContext) -> Outcome:
        p = step.params
        # PUT /api/devices/<id> { "userId": <userId> }
        return await self._put(
            step, f"devices/{seg(p['device'])}", "userId", p["user"], f"{step.target} assigned to {p['who']}.", context
        )

    async def _send_move(self, step: Step, context: RequestContext) -> Outcome:
        p = step.params
        # PUT /api/users/<id>: "Change the name, email, phone number and/or
        # group of a user" ("och/eller" in the Swedish doc): each field is
        # optional, so only the group is sent and nothing else is touched.
        return await self._put(
            step,
            f"users/{seg(p['user'])}",
            "groupId",
            p["group"],
            f"{step.target} moved to group '{p['path']}'.",
            context,
        )

    async def _put(self, step: Step, path: str, field: str, value: Any, done: str, context: RequestContext) -> Outcome:
        """PUT one field of an object; read back as ``field`` (or the id of its nested object)."""
        shows = self._shows(path, (field, field[:-2]), value, step.target)
        resp = await self.client.request("PUT", path, json={field: value}, verify=shows, context=context)
        return await self._settle(step, resp, cap(done), shows, context)

    async def _send_delete_user(self, step: Step, context: RequestContext) -> Outcome:
        path = f"users/{seg(step.params['user'])}"
        gone = self._gone(path)
        resp = await self.client.request("DELETE", path, verify=gone, context=context)
        done = cap(f"{step.target} deleted.")
        return await self._settle(step, resp, done, gone, context)

    async def _send_command(self, step: Step, context: RequestContext) -> Outcome:
        p = step.params
        segment, done = COMMANDS[step.action]
        # "Data in DELETE-, PUT- and POST-commands must be structured as JSON
        # objects": commands without in-data get an empty object, not no body.
        body: dict[str, Any] = {}
        if step.action == "install-app":
            # { "appId": <appId>, "vpp": <vpp> }: vpp is optional; left to the MDM's default
            body = {"appId": p["app"]}
            done = f"installation of '{p['name']}' sent"
        elif step.action == "remove-app":
            # { "identifier": "<identifier>" }: the app's identifier (com.xxxx.yyy), not its id
            body = {"identifier": p["identifier"]}
            done = f"removal of '{p['name']}' sent"
        elif step.action == "message":
            body = {"message": p["message"]}
        # Commands cannot be read back: a request that may have arrived is not
        # resent (the client raises AmbiguousError -> status unknown).
        resp = await self.client.request("POST", f"devices/{seg(p['device'])}/{segment}", json=body, context=context)
        return await self._settle(step, resp, f"{cap(done)} to {step.target}.", None, context)

    async def _settle(
        self,
        step: Step,
        resp: Response,
        done: str,
        confirm: Verify | None,
        context: RequestContext,
        *,
        new_id: bool = False,
    ) -> Outcome:
        """The Outcome of a change. The doc's answer confirms it ("200 OK will be
        returned for successful requests", with no response data, or with the
        new link's id); a 2xx that is not that answer (no id, an array, a
        failure in its JSON) is read back where the API can read it, and
        otherwise not believed."""
        if not resp.ok or resp.verified:
            return outcome_from_response(step, resp, done)
        refusal = failure_in_2xx(resp.body)
        if refusal is not None:
            return Outcome(
                step.index,
                Status.FAILED,
                f"The MDM answered HTTP {resp.status} but said the change failed: {sentence(refusal)}",
                resp.status,
                resp.attempts,
                step.resolved,
                reason=Reason.REFUSED,
            )
        problem = _not_the_answer(resp.body, new_id=new_id)
        if problem is None:
            return outcome_from_response(step, resp, done)
        said = f"The MDM answered HTTP {resp.status} with {problem}"
        state = await confirm(context) if confirm is not None else None
        if state is True:
            return Outcome(
                step.index,
                Status.SUCCEEDED,
                f"{done.rstrip('.')} (confirmed by reading it back: the MDM answered with {problem}).",
                resp.status,
                resp.attempts,
                step.resolved,
                reason=Reason.READ_BACK,
            )
        if state is False:
            return Outcome(
                step.index,
                Status.FAILED,
                f"{said}, and reading it back shows the change is not there. Run the report again to retry.",
                resp.status,
                resp.attempts,
                step.resolved,
                reason=Reason.BAD_ANSWER,
            )
        why = "reading it back could not tell whether it was made" if confirm else "a command cannot be read back"
        return Outcome(
            step.index,
            Status.UNKNOWN,
            f"{said}, not its confirmation, and {why}. Check {step.target}, then run the report again.",
            resp.status,
            resp.attempts,
            step.resolved,
            reason=Reason.BAD_ANSWER,
        )

    # -- reading a change back ------------------------------------------------
    def _linked(self, kind: str, owner_field: str, owner: Any, tag: Any) -> Verify:
        """Whether the tag is linked, by the documented search
        (GET /api/devicetags?deviceId= / usertags?userId=); None: cannot tell."""
        nested = "device" if kind == "devicetags" else "user"

        def applied(body: Any) -> bool | None:
            links = _Links([], owner_field, nested)
            try:
                links.add(_items(body, kind), owner=owner)
                return bool(links.ids(owner, tag))
            except (_Unreadable, LookupFailed):
                return None

        return read_back(
            lambda context: self.client.request("GET", _query(kind, **{owner_field: owner}), context=context), applied
        )

    def _shows(self, path: str, ref: tuple[str, str], wanted: Any, target: str) -> Verify:
        """Whether the object at ``path`` (the row's ``target``) now refers to
        ``wanted`` (``userId``, ``groupId``); a 404 for it proves it deleted."""

        def applied(body: Any) -> bool | None:
            found = _one_object(body)
            if found is None:
                return None
            current = _ref(found, *ref)
            if current is None:
                # "userId": null is an answer (no user); no such field at all is none
                return False if _has_field(found, ref[0]) else None
            return key(current) == key(wanted)

        return read_back(lambda context: self.client.request("GET", path, context=context), applied, missing=target)

    def _gone(self, path: str) -> Verify:
        """Whether the object at ``path`` is gone: the MDM answers 404 for it."""

        async def fetch(context: RequestContext) -> Response:
            resp = await self.client.request("GET", path, context=context)
            return Response(200, _GONE) if resp.status == 404 else resp

        return read_back(fetch, lambda body: True if body is _GONE else False if _one_object(body) else None)

    def requests_for(self, step: Step) -> int:
        return len(step.params.get("links", ())) or 1

    # -- data for export and templates ----------------------------------------
    async def inventory(self) -> AsyncIterator[dict[str, str]]:
        """Every device, one dict of text per device (Provider interface, for
        ``bulkmdm export``): ``serial``, ``device_id``, ``name``, ``model``,
        the user's ``email`` and account name (``user``), the device's
        ``group`` (full path) and its ``tags`` ("; " between names).

        The doc pages nothing ("Get devices: Get all available devices"), so
        the device list is one answer; devices are yielded from it one by one,
        with users, groups and tags held only as the few fields a row needs.
        Raises TransportError (one sentence) when a list cannot be read."""
        try:
            devices = await self._list("devices", "devices")
            users = {
                key(_id(u, *USER_ID)): (get_field(u, *EMAIL), get_field(u, *ACCOUNT))
                for u in await self._list("users", "users")
            }
            paths = _all_paths(await self._list("groups", "groups"))
            tags_of = await self._tags_by_device()
        except ListFailed as exc:
            raise TransportError(exc.detail(), status=exc.resp.status, attempts=exc.resp.attempts) from None
        for device in devices:
            dev_id = _id(device, *DEVICE_ID)
            email, account = users.get(key(_ref(device, "userId", "user")), (None, None))
            yield {
                "serial": _text(get_field(device, *SERIAL)),
                "device_id": _text(dev_id),
                "name": _text(get_field(device, "name", "deviceName")),
                "model": _text(get_field(device, "model", "modelName")),
                "email": _text(email or get_field(device, *EMAIL)),
                "user": _text(account or get_field(device, "accountName")),
                "group": paths.get(key(get_field(device, *GROUP_ID)), ""),
                "tags": "; ".join(sorted(tags_of.get(fkey(dev_id), []), key=str.casefold)),
            }

    async def _tags_by_device(self) -> dict[str, list[str]]:
        """Device id (folded) -> names of its tags, from "GET /api/devicetags";
        where that list is refused or does not say which device and tag a link
        joins, from the documented "GET /api/devices?tagId=<tagId>", one
        request per tag (not per device)."""
        tags = await self._list("tags", "tags")
        names = {key(_id(t, *TAG_ID)): _text(get_field(t, "name", "tagName")) for t in tags}
        out: dict[str, list[str]] = {}
        try:
            listed = await self._list("devicetags", "devicetags", "deviceTags")
            links: _Links | None = _Links(listed, "deviceId", "device")
        except ListFailed:
            links = None
        if links is not None and not links.orphans and not links.unreadable:
            for owner, tag in links.by_pair:
                out.setdefault(owner, []).append(names.get(tag, tag))
            return out
        for tag_id, name in names.items():
            for device in await self._list(_query("devices", tagId=tag_id), "devices"):
                out.setdefault(fkey(_id(device, *DEVICE_ID)), []).append(name)
        return out

    async def choices(self, column: str) -> list[str]:
        """The names to offer in a template's dropdown for ``column``
        (Provider interface, for ``bulkmdm template --url``): tag names for
        ``tag``, full group paths for ``group``, apps for ``app``; each one a
        value a job row can give that matches exactly one object. An empty
        list for any other column. Raises TransportError when a list cannot be read."""
        try:
            if column == "tag":
                return self._tag_choices(await self._list("tags", "tags"))
            if column == "group":
                return sorted(set(_unique_paths(await self._list("groups", "groups")).values()), key=str.casefold)
            if column == "app":
                return self._app_choices(await self._list("apps", "apps"))
        except ListFailed as exc:
            raise TransportError(exc.detail(), status=exc.resp.status, attempts=exc.resp.attempts) from None
        return []

    def _tag_choices(self, tags: list[Any]) -> list[str]:
        lists = _Lookups()
        lists.take_tags(tags)
        names = set()
        for tag in tags:
            name = _text(get_field(tag, "name", "tagName"))
            try:
                if name and self._tag(name, lists) is tag and usable_id(_id(tag, *TAG_ID)):
                    names.add(name)
            except LookupFailed:
                continue  # a name two tags share would fail the row
        return sorted(names, key=str.casefold)

    def _app_choices(self, apps: list[Any]) -> list[str]:
        """Per app the first of its name, package id and id that names only it."""
        lists = _Lookups()
        lists.take_apps(apps)
        values = set()
        for app in apps:
            for value in (get_field(app, "name"), get_field(app, *PACKAGE), _id(app, *APP_ID)):
                try:
                    if usable_id(value) and self._app(str(value), lists) is app:
                        values.add(str(value))
                        break
                except LookupFailed:
                    continue
        return sorted(values, key=str.casefold)


#: the planner of each action that is not a device command (those are ``_plan_command``'s)
_PLANNERS: dict[str, Callable[[DuoStation, JobRow, _Lookups], Step | Outcome]] = {
    "tag": DuoStation._plan_device_tag,
    "untag": DuoStation._plan_device_tag,
    "tag-user": DuoStation._plan_user_tag,
    "untag-user": DuoStation._plan_user_tag,
    "assign-user": DuoStation._plan_assign,
    "move-user": DuoStation._plan_move,
    "delete-user": DuoStation._plan_delete_user,
}


def _not_the_answer(body: Any, *, new_id: bool) -> str | None:
    """Why a 2xx answer to a change is not the doc's answer, or None when it is."""
    blank = body is None or (isinstance(body, str) and not body.strip())
    if isinstance(body, str) and not blank:
        return _describe_answer(body)
    if isinstance(body, list):
        # no change of the doc answers with an array; a read does (a change
        # redirected to a list, or a server that ignored the method)
        return "an array, as a read answers"
    if new_id and _new_link_id(body) is None:
        return "no body (the doc answers with the new link's id)" if blank else "no id of the new link"
    return None


def _has_field(obj: Mapping[str, Any], name: str) -> bool:
    """Whether ``obj`` has the field ``name`` at all, however spelt (as ``get_field`` matches it)."""
    wanted = name.replace("_", "").replace("-", "").casefold()
    return any(str(key).replace("_", "").replace("-", "").casefold() == wanted for key in obj)


def _new_link_id(body: Any) -> Any:
    if isinstance(body, Mapping):
        body = _id(body, "deviceTagId", "userTagId")
    return body if usable_id(body) else None


def _user_value(row: JobRow) -> str:
    """The value a row names its user by (see ``_plan_row``)."""
    if row.action == "assign-user":
        return row.get("user") or row.get("email")
    if row.action == "delete-user" and not row.get("email"):
        return row.get("user_id")
    return row.get("email")


def _assigned_to(device: Any, user: Any, user_id: Any) -> bool:
    current = _ref(device, "userId", "user")
    if current not in (None, ""):
        return key(current) == key(user_id)
    # a device object that names its user only by account name
    account, wanted = get_field(device, "accountName"), get_field(user, *ACCOUNT)
    return bool(account) and bool(wanted) and fkey(account) == fkey(wanted)


def _norm_path(path: str) -> str:
    return "\\".join(part for part in path.replace("/", "\\").split("\\") if part)


def _path_builder(groups: list[Any]) -> Callable[[Any], str]:
    """A group's full path (separator \\): from a ``path`` field when the
    objects have one, else built from name + parentId."""
    by_id = {key(_id(g, *GROUP_ID)): g for g in groups if usable_id(_id(g, *GROUP_ID))}

    def full(group: Any, depth: int = 0) -> str:
        given = get_field(group, "path", "fullPath", "groupPath")
        if given:
            return _norm_path(str(given))
        name = str(get_field(group, "name", default=""))
        parent = by_id.get(key(get_field(group, "parentId")))
        if parent is None or parent is group or depth > 50:
            return name
        return full(parent, depth + 1) + "\\" + name

    return full


def _groups_at(groups: list[Any], path: str) -> list[Any]:
    """The groups whose full path is ``path`` (separators / or \\)."""
    full = _path_builder(groups)
    wanted = _norm_path(path)
    return [g for g in groups if full(g) == wanted]


def _all_paths(groups: list[Any]) -> dict[str, str]:
    """Group id -> full path."""
    full = _path_builder(groups)
    return {key(_id(g, *GROUP_ID)): full(g) for g in groups if usable_id(_id(g, *GROUP_ID))}


def _unique_paths(groups: list[Any]) -> dict[str, str]:
    """Group id -> full path, for the groups whose path no other group shares
    (the only ones ``GET /api/groups?path=`` can name)."""
    paths = _all_paths(groups)
    counts: dict[str, int] = {}
    for path in paths.values():
        counts[path] = counts.get(path, 0) + 1
    return {group_id: path for group_id, path in paths.items() if path and counts[path] == 1}


def _query(resource: str, /, **params: Any) -> str:
    """``path?k=v`` with every value percent-encoded, a space as ``%20`` (the
    doc: "Text parameters in URLs must be URL encoded"; its example is
    ``?path=Customers%5CCompany%20Inc``)."""
    return resource + "?" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())


class _ShapeFailed(ListFailed):
    """A list answered 2xx, but not as the doc's "Array of X"."""

    def __init__(self, path: str, resp: Response, reason: str) -> None:
        super().__init__(path, resp)
        self.reason = reason

    def detail(self) -> str:
        return f"Could not read the MDM's {self.path} list: the MDM answered with {self.reason}."

    @property
    def code(self) -> Reason:
        return Reason.BAD_ANSWER


#: stands for "the MDM answered 404" in a read-back of a deletion
_GONE = object()


def _one_object(body: Any) -> Mapping[str, Any] | None:
    try:
        found = _objects(body)
    except _Unreadable:
        return None
    return found[0] if len(found) == 1 else None


def _at_path(groups: list[Any], path: str) -> list[Any]:
    """The groups of a ``?path=`` answer that are the group at ``path``. The
    doc promises one group or an error; a server that answers with a list (or
    ignores the filter) is narrowed to the path asked, and one group under
    another name is no match."""
    if len(groups) > 1 or get_field(groups[0] if groups else None, "path", "fullPath", "groupPath"):
        return _groups_at(groups, path)
    if groups and key(get_field(groups[0], "name")) not in ("", _norm_path(path).rpartition("\\")[2].strip()):
        return []
    return groups
