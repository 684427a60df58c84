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
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from ..errors import AuthError, TransportError
from ..model import JobRow, Outcome, Step
from ..transport import Auth, BasicAuth, Response
from .base import (
    Index,
    LookupFailed,
    Provider,
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


def _id(obj: Any) -> Any:
    return get_field(obj, "id", "Id")


def _key(value: Any) -> str:
    return "" if value is None else str(value).strip()


class _Links:
    """Tag links of one kind (device tags or user tags): (owner, tag) -> link ids."""

    def __init__(self, links: list[Any], owner_field: str) -> None:
        self.by_pair: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for link in links:
            owner = _key(get_field(link, owner_field))
            tag = _key(get_field(link, "tagId"))
            if owner and tag:
                self.by_pair[(owner, tag)].append(_id(link))

    def ids(self, owner: Any, tag: Any) -> list[Any]:
        return self.by_pair.get((_key(owner), _key(tag)), [])


class DuoStation(Provider):
    name = "duostation"
    actions = frozenset(DEVICE_ACTIONS | USER_ACTIONS)
    # The doc states no limit; 20 requests/s with 8 in flight is gentle on a
    # school's server and still does 3,000 rows in under three minutes. The
    # adaptive controller may go up to 4x this until the server answers 429.
    default_rate = 20.0
    default_concurrency = 8
    max_batch = 1

    @classmethod
    def auth_from_env(cls, env: Mapping[str, str]) -> Auth:
        user, password = env_required(env, "BULKMDM_USERNAME", "BULKMDM_PASSWORD", provider="duostation")
        return BasicAuth(user, password)

    @classmethod
    def api_base(cls, url: str) -> str:
        return url.rstrip("/") + "/api"

    # -- reading ------------------------------------------------------------
    async def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        resp = await self.client.request("GET", path, params=params)
        if not resp.ok:
            raise _ListFailed(path, resp)
        return resp.body

    async def _list(self, path: str, *keys: str) -> list[Any]:
        return as_list(await self._get(path), path, *keys)

    async def _group(self, path: str) -> Any:
        """GET /api/groups?path=<path>: "If more than one group matches the
        name an error will be returned" — the doc names no status, so any 4xx
        other than 404 is read as that error (ambiguous)."""
        resp = await self.client.request("GET", "groups", params={"path": path})
        if resp.status == 404:
            raise LookupFailed(f"group '{path}' was not found")
        if 400 <= resp.status < 500:
            reason = explain_status(resp.status, resp.body, resp.attempts)
            raise LookupFailed(f"group '{path}' could not be resolved; the MDM answered {reason}")
        if not resp.ok:
            raise _ListFailed("groups", resp)
        body = resp.body
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
        seen: dict[tuple[Any, ...], int] = {}
        out: list[Step | Outcome] = []
        for row in rows:
            try:
                out.append(self._plan_row(row, lists, seen))
            except LookupFailed as exc:
                out.append(failed(row, _sentence(str(exc))))
        return out

    async def _fetch_lists(self, actions: set[str], rows: Sequence[JobRow]) -> dict[str, Any]:
        lists: dict[str, Any] = {}
        if actions & DEVICE_ACTIONS:
            devices = await self._list("devices", "devices")
            lists["device_by_serial"] = Index("device", devices, lambda d: get_field(d, "serialNumber", "serial"))
            lists["device_by_id"] = Index("device", devices, _id, fold=True)
        if actions & USER_ACTIONS:
            users = await self._list("users", "users")
            lists["user_by_email"] = Index("user", users, lambda u: get_field(u, "email", "emailAddress", "mail"),
                                           fold=True)
            lists["user_by_account"] = Index(
                "user", users, lambda u: get_field(u, "accountName", "account", "userName", "login"), fold=True
            )
            lists["user_by_id"] = Index("user", users, _id)
        if actions & {"tag", "untag", "tag-user", "untag-user"}:
            tags = await self._list("tags", "tags")
            lists["tag_by_name"] = Index("tag", tags, lambda t: get_field(t, "name"))
            lists["tag_by_name_folded"] = Index("tag", tags, lambda t: get_field(t, "name"), fold=True)
        if actions & {"tag", "untag"}:
            lists["devicetags"] = _Links(await self._list("devicetags", "devicetags"), "deviceId")
        if actions & {"tag-user", "untag-user"}:
            lists["usertags"] = _Links(await self._list("usertags", "usertags"), "userId")
        if actions & {"install-app", "remove-app"}:
            apps = await self._list("apps", "apps")
            lists["app_by_key"] = Index(
                "app", apps, lambda a: [get_field(a, "name"), get_field(a, "packageId", "identifier")]
            )
            lists["app_by_id"] = Index("app", apps, _id)
        if "move-user" in actions:
            groups: dict[str, Any] = {}
            for path in sorted({row.get("group") for row in rows if row.action == "move-user" and row.get("group")}):
                try:
                    groups[path] = await self._group(path)
                except LookupFailed as exc:
                    groups[path] = exc
            lists["groups"] = groups
        return lists

    def _device(self, row: JobRow, lists: dict[str, Any]) -> Any:
        if row.get("device_id"):
            return lists["device_by_id"].one(row.get("device_id"), "device id")
        return lists["device_by_serial"].one(row.get("serial"), "serial")

    def _user(self, value: str, lists: dict[str, Any]) -> Any:
        if "@" in value:
            return lists["user_by_email"].one(value, "user with email")
        return lists["user_by_account"].one(value, "user with account name")

    def _tag(self, name: str, lists: dict[str, Any]) -> Any:
        # Exact name first; a different capitalisation is accepted only when it
        # points at exactly one tag.
        if lists["tag_by_name"].find(name):
            return lists["tag_by_name"].one(name, "tag")
        return lists["tag_by_name_folded"].one(name, "tag")

    def _app(self, value: str, lists: dict[str, Any]) -> Any:
        found = {id(a): a for a in lists["app_by_key"].find(value)}
        if not found and value.strip().isdigit():
            found = {id(a): a for a in lists["app_by_id"].find(value)}
        if not found:
            raise LookupFailed(f"app '{value}' was not found (give its name, package id or id)")
        if len(found) > 1:
            raise LookupFailed(f"app '{value}' matches {len(found)} apps; give its package id instead")
        return next(iter(found.values()))

    def _plan_row(self, row: JobRow, lists: dict[str, Any], seen: dict[tuple[Any, ...], int]) -> Step | Outcome:
        action = row.action

        def once(key: tuple[Any, ...], resolved: str) -> Outcome | None:
            # Two rows asking for the same change: the second is not sent again.
            if key in seen:
                return skipped(row, f"Same change as line {seen[key]}; sent once.", resolved)
            seen[key] = row.line
            return None

        if action in ("tag", "untag"):
            device = self._device(row, lists)
            tag = self._tag(row.get("tag"), lists)
            dev_id, tag_id = _id(device), _id(tag)
            serial = get_field(device, "serialNumber", "serial") or row.get("serial")
            resolved = f"device_id={dev_id}; tag_id={tag_id}"
            dup = once((action, _key(dev_id), _key(tag_id)), resolved)
            if dup:
                return dup
            links = lists["devicetags"].ids(dev_id, tag_id)
            tag_name = get_field(tag, "name")
            if action == "tag":
                if links:
                    return skipped(row, f"Device {serial} already has tag '{tag_name}'; nothing sent.", resolved)
                return Step(row, action, f"device {serial}", {"device": dev_id, "tag": tag_id, "name": tag_name},
                            resolved, (action,))
            if not links:
                return skipped(row, f"Device {serial} does not have tag '{tag_name}'; nothing sent.", resolved)
            return Step(row, action, f"device {serial}",
                        {"device": dev_id, "tag": tag_id, "links": tuple(links), "name": tag_name}, resolved, (action,))

        if action in ("tag-user", "untag-user"):
            user = self._user(row.get("email"), lists)
            tag = self._tag(row.get("tag"), lists)
            user_id, tag_id = _id(user), _id(tag)
            email = get_field(user, "email") or row.get("email")
            resolved = f"user_id={user_id}; tag_id={tag_id}"
            dup = once((action, _key(user_id), _key(tag_id)), resolved)
            if dup:
                return dup
            links = lists["usertags"].ids(user_id, tag_id)
            tag_name = get_field(tag, "name")
            if action == "tag-user":
                if links:
                    return skipped(row, f"User {email} already has tag '{tag_name}'; nothing sent.", resolved)
                return Step(row, action, f"user {email}", {"user": user_id, "tag": tag_id, "name": tag_name},
                            resolved, (action,))
            if not links:
                return skipped(row, f"User {email} does not have tag '{tag_name}'; nothing sent.", resolved)
            return Step(row, action, f"user {email}",
                        {"user": user_id, "tag": tag_id, "links": tuple(links), "name": tag_name}, resolved, (action,))

        if action == "assign-user":
            device = self._device(row, lists)
            user = self._user(row.get("user") or row.get("email"), lists)
            dev_id, user_id = _id(device), _id(user)
            serial = get_field(device, "serialNumber", "serial") or row.get("serial")
            who = get_field(user, "email") or get_field(user, "accountName") or user_id
            resolved = f"device_id={dev_id}; user_id={user_id}"
            key = ("assign-user", _key(dev_id))
            if key in seen:
                return failed(row, f"Device {serial} is also assigned on line {seen[key]}; "
                                   "give each device one assignment per job.", resolved)
            seen[key] = row.line
            if _key(get_field(device, "userId")) == _key(user_id):
                return skipped(row, f"Device {serial} is already assigned to {who}; nothing sent.", resolved)
            return Step(row, action, f"device {serial}", {"device": dev_id, "user": user_id, "who": who},
                        resolved, (action,))

        if action == "move-user":
            user = self._user(row.get("email"), lists)
            group = lists["groups"].get(row.get("group"))
            if isinstance(group, LookupFailed):
                raise group
            user_id, group_id = _id(user), _id(group)
            email = get_field(user, "email") or row.get("email")
            resolved = f"user_id={user_id}; group_id={group_id}"
            key = ("move-user", _key(user_id))
            if key in seen:
                return failed(row, f"User {email} is also moved on line {seen[key]}; "
                                   "give each user one group per job.", resolved)
            seen[key] = row.line
            if _key(get_field(user, "groupId")) == _key(group_id):
                return skipped(row, f"User {email} is already in group '{row.get('group')}'; nothing sent.",
                               resolved)
            return Step(row, action, f"user {email}", {"user": user_id, "group": group_id,
                                                       "path": row.get("group")}, resolved, (action,))

        if action == "delete-user":
            user = self._user(row.get("email"), lists)
            user_id = _id(user)
            resolved = f"user_id={user_id}"
            dup = once((action, _key(user_id)), resolved)
            if dup:
                return dup
            return Step(row, action, f"user {get_field(user, 'email') or row.get('email')}", {"user": user_id},
                        resolved, (action,))

        if action in COMMANDS:
            device = self._device(row, lists)
            dev_id = _id(device)
            serial = get_field(device, "serialNumber", "serial") or row.get("serial")
            params: dict[str, Any] = {"device": dev_id}
            resolved = f"device_id={dev_id}"
            if action in ("install-app", "remove-app"):
                app = self._app(row.get("app"), lists)
                params["app"] = _id(app)
                params["identifier"] = get_field(app, "packageId", "identifier")
                params["name"] = get_field(app, "name")
                resolved += f"; app_id={params['app']}"
                if action == "remove-app" and not params["identifier"]:
                    raise LookupFailed(f"app '{row.get('app')}' has no package id to uninstall by")
            if action == "message":
                params["message"] = row.get("message")
            dup = once((action, _key(dev_id), _key(params.get("app")), params.get("message")), resolved)
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
            resp = await self._link("devicetags", "deviceId", p["device"], p["tag"])
            return outcome_from_response(step, resp, f"Tag '{p['name']}' linked to {step.target}.")
        if action == "tag-user":
            resp = await self._link("usertags", "userId", p["user"], p["tag"])
            return outcome_from_response(step, resp, f"Tag '{p['name']}' linked to {step.target}.")
        if action in ("untag", "untag-user"):
            return await self._unlink("devicetags" if action == "untag" else "usertags", step)
        if action == "assign-user":
            resp = await self.client.request("PUT", f"devices/{_seg(p['device'])}", json={"userId": p["user"]})
            return outcome_from_response(step, resp, _cap(f"{step.target} assigned to {p['who']}."))
        if action == "move-user":
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
            body = {"appId": p["app"]}
            done = f"installation of '{p['name']}' sent"
        elif action == "remove-app":
            body = {"identifier": p["identifier"]}
            done = f"removal of '{p['name']}' sent"
        elif action == "message":
            body = {"message": p["message"]}
        # Commands cannot be read back: a request that may have arrived is not
        # resent (transport raises AmbiguousError -> status unknown).
        resp = await self.client.request("POST", f"devices/{_seg(p['device'])}/{segment}", json=body)
        return outcome_from_response(step, resp, f"{_cap(done)} to {step.target}.")

    async def _link(self, kind: str, owner_field: str, owner: Any, tag: Any) -> Response:
        owner_param = "deviceId" if kind == "devicetags" else "userId"

        async def already_linked() -> bool | None:
            try:
                resp = await self.client.request("GET", kind, params={owner_param: owner})
            except TransportError:
                return None
            if not resp.ok:
                return None
            return bool(_Links(as_list(resp.body, kind), owner_field).ids(owner, tag))

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


def _seg(value: Any) -> str:
    return quote(str(value), safe="")


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[0].upper() + text[1:] if text else "Look-up failed"
    return text if text.endswith(".") else text + "."


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]
