"""ManageEngine MDM (vendor doc: manageengine-mdm-api-v1.txt).

Two editions, one API:

* on-premises (``BULKMDM_API_KEY`` set): requests go to
  ``<url>/api/v1/mdm/...`` with ``Authorization: <api key>``;
* cloud (otherwise): requests go to ``<url>/api/v1/...`` with
  ``Authorization: Zoho-oauthtoken <access token>``, the token obtained from
  Zoho's OAuth endpoint with the refresh-token grant (:class:`ZohoOAuth`).

``api_base`` is a classmethod that sees only the URL, so it returns
``<url>/api/v1`` for both, and the provider puts ``mdm/`` in front of every
path when its credentials are an API key (:meth:`ManageEngine._path`).

What each action sends (bodies are JSON, as in the doc's curl examples, ids
as JSON numbers as in its ``"device_ids": [ 1, 2, 3 ]``)::

    add-to-group       POST   groups/{group_id}/members   {"member_ids": [...]}     one request per group
    remove-from-group  DELETE groups/{group_id}/members/{device_id}                 one per row
    install-app        POST   apps/{app_id}/devices       {"device_ids": [...], "silent_install": true,
                                                           "notify_user_via_email": false}  one per app
    remove-app         DELETE apps/{app_id}/devices/{device_id}                    one per row

Look-ups come from lists read once per run, every page (``paging.next``, or
``offset`` while ``metadata.total_record_count`` says there is more):
``GET devices`` (serial or device id), ``GET groups`` (name), ``GET apps``
(name, bundle identifier or app id), ``GET groups/{id}/members`` for each
group a row names, and ``GET devices/{id}/apps`` for the devices of app rows
(up to :attr:`ManageEngine.app_check_max` of them), so that rows already in
the wanted state are skipped. The doc's list examples lack serial_number
(devices) and bundle_identifier (apps), which its detail examples have: when
a list carries none and a row needs them, the details are read
(``GET devices/{id}``, ``GET apps/{id}``) if they fit in the day's budget.

The vendor allows 100 calls a minute and 2,500 a day (1,000 for free
organisations). The rate is the default; the day's budget is checked when
planning: rows whose requests would not fit fail up front with a note to
run the report again tomorrow (``BULKMDM_DAILY_LIMIT`` changes the budget).
The doc's 429 ("COM0002 API Limit Exceeded") names no Retry-After: when the
transport's quick retries meet only 429s, the run holds for the minute
window and tries once more; a 429 after that means the day's calls are used
up, and the remaining rows fail without being sent.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit, urlunsplit

from ..errors import AuthError, BadAnswer, ConfigError, RedirectRefused, TransportError
from ..model import JobRow, Outcome, Status, Step
from ..retry import RetryPolicy
from ..transport import Auth, Client, HeaderAuth, Response
from .base import (
    Index,
    LookupFailed,
    Provider,
    Settings,
    as_list,
    explain_status,
    failed,
    get_field,
    outcome_from_error,
    skipped,
)

log = logging.getLogger("bulkmdm.http")

DEFAULT_OAUTH_URL = "https://accounts.zoho.com/oauth/v2/token"
#: "Paid Organization - 2500 API calls/day and 100 API calls/minute"
DEFAULT_DAILY_LIMIT = 2500

GROUP_ACTIONS = frozenset({"add-to-group", "remove-from-group"})
APP_ACTIONS = frozenset({"install-app", "remove-app"})
#: actions whose rows share one request (the API takes a list of ids)
BATCHED = frozenset({"add-to-group", "install-app"})
#: a whole-batch 4xx with these is about the account or the request's form,
#: not one bad id; splitting the batch would only repeat it
_NO_SPLIT = frozenset({401, 403, 405, 406, 429})


# -- credentials ---------------------------------------------------------------


#: Every curl example in the doc sends this, GETs and DELETEs included, and its
#: error table has "COM0011 422 Invalid / Missing headers"; on a request with
#: a JSON body it is the body's own type.
DOC_HEADERS = {"Content-Type": "application/json;charset=UTF-8"}


def _token_refused(status: int, body: Any) -> bool:
    # "COM0013 Not Authorised/ Invalid auth token" answered 403 (the table's
    # "403 Forbidden ... not an user of the respective organization") instead
    # of 401: the credentials are refused like with a 401.
    return status == 401 or (status == 403 and _error_code(body) == "COM0013")


class ApiKeyAuth(HeaderAuth):
    """On-premises: "Header name should be Authorization - Header value should be {api_key}"."""

    def refused(self, status: int, body: Any) -> bool:
        return _token_refused(status, body)


#: the access token the current task last sent (see ZohoOAuth.renew)
_sent_token: contextvars.ContextVar[str | None] = contextvars.ContextVar("bulkmdm_me_sent_token", default=None)


class ZohoOAuth(Auth):
    """Cloud: an access token from Zoho's refresh-token grant, fetched on first
    use, renewed a little before ``expires_in`` runs out and when refused.

    The token request goes through the run's client like any other (rate
    slot, retries by the policy, Ctrl-C), marked as a credential request: it
    is never redirected and its URL and body are never logged. No message
    built here holds any of the three secrets (:meth:`_redact`).
    """

    def __init__(self, *, client_id: str, client_secret: str, refresh_token: str, token_url: str) -> None:
        self._client_id = client_id
        self._client_secret = client_secret
        self._refresh_token = refresh_token
        self.token_url = token_url
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock: asyncio.Lock | None = None
        #: how many access tokens this run obtained
        self.grants = 0

    def headers(self) -> Mapping[str, str]:
        _sent_token.set(self._token)
        return {"Authorization": f"Zoho-oauthtoken {self._token}"} if self._token else {}

    def refused(self, status: int, body: Any) -> bool:
        return _token_refused(status, body)

    def _fresh(self) -> bool:
        return self._token is not None and time.monotonic() < self._expires_at

    def _locked(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def ready(self, client: Client) -> None:
        """Have an access token that will not expire in the next moments."""
        if self._fresh():
            return
        async with self._locked():
            if not self._fresh():
                await self._fetch(client)

    async def renew(self, client: Client) -> bool:
        # The client asks for headers() and calls renew() from the same task,
        # so the context variable holds the token that was refused. Workers
        # refused together renew once: the others find a token newer than the
        # one that failed and just retry with it.
        failed_with = _sent_token.get()
        async with self._locked():
            if self._token is not None and self._token != failed_with:
                return True
            await self._fetch(client)
        return True

    async def _fetch(self, client: Client) -> None:
        # The doc's Step 4 lists refresh_token, client_id, client_secret,
        # redirect_uri and grant_type=refresh_token, none marked mandatory, and
        # shows every example in the query string
        # ("https://accounts.zoho.com/oauth/v2/token?refresh_token=..."). Zoho
        # reads them from a form body too, as RFC 6749 asks, and a URL is what
        # proxies log: the secrets go in the form body only. redirect_uri is
        # not needed to refresh and bulkmdm has none to send.
        form = {
            "refresh_token": self._refresh_token,
            "client_id": self._client_id,
            "client_secret": self._client_secret,
            "grant_type": "refresh_token",
        }
        where = urlsplit(self.token_url).netloc
        try:
            resp = await client.request("POST", self.token_url, data=form, credential=True, idempotent=True)
        except (BadAnswer, RedirectRefused) as exc:
            raise AuthError(f"no access token: {self._redact(str(exc))}; check BULKMDM_OAUTH_URL") from None
        except TransportError as exc:
            raise TransportError(f"no access token from the OAuth token endpoint {where}: "
                                 f"{self._redact(str(exc))}", attempts=exc.attempts) from None
        body = resp.body if isinstance(resp.body, Mapping) else {}
        error = get_field(body, "error")
        token = get_field(body, "access_token")
        if resp.ok and isinstance(token, str) and token and not error:
            self._store(token, body)
            return
        if resp.status == 429 or resp.status >= 500 or _too_many(body):
            raise TransportError(f"the OAuth token endpoint {where} answered HTTP {resp.status} (too busy or "
                                 "failing); no access token", attempts=resp.attempts, status=resp.status)
        # Zoho refuses a bad client or refresh token with HTTP 200 and
        # {"error": "invalid_client"} / {"error": "invalid_code"}.
        reason = self._redact(str(error)) if isinstance(error, str) and len(error) < 60 else f"HTTP {resp.status}"
        raise AuthError(
            f"the OAuth token endpoint {where} refused the refresh token or client ({reason}); check "
            "BULKMDM_CLIENT_ID, BULKMDM_CLIENT_SECRET and BULKMDM_REFRESH_TOKEN",
            status=401,
        )

    def _store(self, token: str, body: Mapping[str, Any]) -> None:
        # "The access_token will expire after a particular period (as given in
        # expires_in param in the response)". Older Zoho answers give
        # expires_in in milliseconds next to expires_in_sec; prefer the latter.
        ttl = _number(get_field(body, "expires_in_sec"))
        if ttl is None:
            ttl = _number(get_field(body, "expires_in"))
            if ttl is not None and ttl > 2 * 86400:
                ttl /= 1000
        if ttl is None or ttl <= 0:
            ttl = 3600.0  # "In most general cases the access tokens expire in one hour"
        now = time.monotonic()
        self._token = token
        self._expires_at = now + ttl - min(60.0, ttl / 10)
        self.grants += 1

    def _redact(self, text: str) -> str:
        for secret in (self._client_secret, self._refresh_token, self._client_id, self._token):
            if secret:
                text = text.replace(secret, "***")
        return text


def _too_many(body: Any) -> bool:
    # Zoho: {"error": "Access Denied", "error_description": "You have made too
    # many requests continuously. Please try again after some time."}
    return isinstance(body, Mapping) and "too many requests" in str(get_field(body, "error_description", default=""))


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _daily_limit(env: Mapping[str, str]) -> int | None:
    text = env.get("BULKMDM_DAILY_LIMIT", "").strip()
    if not text:
        return DEFAULT_DAILY_LIMIT
    if text.casefold() in ("none", "off", "unlimited"):
        return None
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(
            f"BULKMDM_DAILY_LIMIT {text!r} is not a number of API calls; set it to your organisation's "
            "daily limit (e.g. 2500) or to 'none'."
        )
    return int(text)


# -- the provider ----------------------------------------------------------------


class ManageEngine(Provider):
    name = "manageengine"
    actions = frozenset(GROUP_ACTIONS | APP_ACTIONS)
    # "100 API calls/minute". A handful in flight is plenty at that pace.
    default_rate = 100 / 60
    # "100 calls/min": a hard limit, so the adaptive controller must not probe above it
    max_rate = 100 / 60
    default_concurrency = 4
    # The doc: "COM0004 500 Internal server error, Please try again in a
    # moment": reads are tried again (a change that met a 500 may have been
    # made, and is left to the report). "429 Too many requests within a
    # certain time frame", "COM0002 429 API Limit Exceeded", limits "2500 API
    # calls/day and 100 API calls/minute", and no Retry-After: a 429 waits out
    # the minute window (every worker holds); a 429 after that is the daily
    # limit, and the run stops (QuotaExhausted). A 429 means the request was
    # not processed, so resending a POST after it cannot apply it twice.
    retry_policy = RetryPolicy(read_statuses=frozenset({500}), throttle_wait=61.0)
    # The doc gives no upper bound for member_ids / device_ids; 100 ids keep
    # a body small and make a 1,000-row job ten requests. A batch refused as
    # a whole is halved until the bad rows are found (about 2*log2(100) = 14
    # extra requests per bad id at most).
    max_batch = 100
    request_headers = DOC_HEADERS
    #: the most devices whose app list is read to skip app rows already in state
    app_check_max = 250

    @classmethod
    def auth_from_env(cls, env: Mapping[str, str]) -> Auth:
        _daily_limit(env)  # a bad value stops the run before anything is sent
        key = env.get("BULKMDM_API_KEY", "").strip()
        if key:
            return ApiKeyAuth(key)
        names = ("BULKMDM_CLIENT_ID", "BULKMDM_CLIENT_SECRET", "BULKMDM_REFRESH_TOKEN")
        values = [env.get(n, "").strip() for n in names]
        missing = [n for n, v in zip(names, values) if not v]
        if len(missing) == len(names):
            raise ConfigError(
                "manageengine needs BULKMDM_API_KEY (on-premises) or BULKMDM_CLIENT_ID, BULKMDM_CLIENT_SECRET "
                "and BULKMDM_REFRESH_TOKEN (cloud) in the environment; set them and run again."
            )
        if missing:
            raise ConfigError(
                f"manageengine cloud needs {', '.join(missing)} in the environment as well (or BULKMDM_API_KEY "
                "for an on-premises server); set it and run again."
            )
        token_url = env.get("BULKMDM_OAUTH_URL", "").strip() or DEFAULT_OAUTH_URL
        if not token_url.startswith(("https://", "http://")):
            raise ConfigError(f"BULKMDM_OAUTH_URL {token_url!r} must start with https://.")
        client_id, client_secret, refresh_token = values
        return ZohoOAuth(client_id=client_id, client_secret=client_secret, refresh_token=refresh_token,
                         token_url=token_url)

    @classmethod
    def api_base(cls, url: str) -> str:
        # Cloud: "https://mdm.manageengine.com/api/v1"; on-premises:
        # "{ServerURL}/api/v1/mdm" -- the "mdm/" is added per path (_path).
        # --url is the server root; a URL copied with the doc's base path on
        # it is taken as meaning that root.
        root = url.rstrip("/")
        for tail in ("/api/v1/mdm", "/api/v1"):
            if root.casefold().endswith(tail):
                root = root[: -len(tail)]
                break
        return root + "/api/v1"

    def __init__(self, client: Client, settings: Settings) -> None:
        super().__init__(client, settings)
        auth = client.auth
        if isinstance(auth, (ApiKeyAuth, ZohoOAuth)):
            self.on_premises = isinstance(auth, ApiKeyAuth)
        else:
            self.on_premises = bool(settings.env.get("BULKMDM_API_KEY", "").strip())
        self.daily_limit = _daily_limit(settings.env)

    # -- requests -------------------------------------------------------------
    def _path(self, path: str) -> str:
        return ("mdm/" + path) if self.on_premises else path

    async def _request(self, method: str, path: str, **kw: Any) -> Response:
        url = self._path(path) if "://" not in path else path
        return await self.client.request(method, url, **kw)

    async def _get(self, path: str) -> Any:
        resp = await self._request("GET", path)
        if not resp.ok:
            raise _ListFailed(path, resp)
        return resp.body

    async def _list(self, path: str, key: str | tuple[str, ...], id_field: str) -> list[Any]:
        """A list under its wrapping key (``{"devices": [...]}``), every page.

        The doc's examples show one answer, but its error table has "COM0003
        Invalid paging params", and ManageEngine's API pages lists (50 items by
        default) with ``"paging": {"next": "<url>"}`` and ``"metadata":
        {"total_record_count": n}``, the next page asked for with ``offset``
        and ``limit``. A ``next`` link is followed; without one, a total larger
        than what arrived is fetched by ``offset``. Either way the request goes
        to the server this run talks to (only the link's path and query are
        used), so the credentials go nowhere else. Items repeated across pages
        are kept once, so a repeated page cannot make a serial look ambiguous."""
        items: list[Any] = []
        ids: set[str] = set()
        current = self.client.url(self._path(path))
        body = await self._get(path)
        seen = {current}
        while True:
            page = as_list(body, *((key,) if isinstance(key, str) else key))
            fresh = 0
            for item in page:
                item_id = _key(get_field(item, id_field))
                if item_id and item_id in ids:
                    continue
                if item_id:
                    ids.add(item_id)
                items.append(item)
                fresh += 1
            nxt = _next_link(body)
            if nxt:
                url = self._on_this_server(urljoin(current, nxt))
            else:
                total = _number(get_field(get_field(body, "metadata"), "total_record_count", "total"))
                if not page or total is None or len(items) >= total:
                    return items
                base = self.client.url(self._path(path))
                url = f"{base}{'&' if '?' in base else '?'}{urlencode({'offset': len(items), 'limit': len(page)})}"
            if not fresh or url in seen or len(seen) > 1000:
                return items
            seen.add(url)
            current = url
            body = await self._get(url)

    def _on_this_server(self, url: str) -> str:
        """``url``'s path and query on the server this run talks to (a next
        link may name the server as the server sees itself)."""
        base = urlsplit(self.client.base_url)
        parts = urlsplit(url)
        return urlunsplit((base.scheme, base.netloc, parts.path, parts.query, ""))

    async def _each(self, paths: Sequence[str], *, quiet: bool) -> list[Response | None]:
        """GET every path, a few at a time (the rate limiter paces them).
        ``quiet``: None where no answer came; otherwise that error is raised."""
        limit = asyncio.Semaphore(max(1, self.default_concurrency))

        async def one(path: str) -> Response | None:
            async with limit:
                try:
                    return await self._request("GET", path)
                except AuthError:
                    raise
                except TransportError:
                    if not quiet:
                        raise
                    return None

        return list(await asyncio.gather(*(one(p) for p in paths)))

    def _room(self) -> int | None:
        """API calls left in the day's budget (None: no budget)."""
        if self.daily_limit is None:
            return None
        return self.daily_limit - max(10, self.daily_limit // 50) - self.client.requests_sent

    # -- planning -----------------------------------------------------------------
    async def plan(self, rows: Sequence[JobRow]) -> list[Step | Outcome]:
        actions = {row.action for row in rows}
        try:
            lists = await self._fetch_lists(actions, rows)
        except _ListFailed as exc:
            if exc.resp.status == 403 or _error_code(exc.resp.body) == "COM0013":
                # The doc's table has "401 Unauthorized (Invalid AuthToken)" but
                # also "403 Forbidden ... possibly not an user of the respective
                # organization", and "COM0013 Not Authorised/ Invalid auth token":
                # a server may refuse a bad key with 403. Refused on the look-ups,
                # nothing can run and nothing was sent: bad credentials, not rows
                # that failed one by one.
                said = get_field(_me_body(exc.resp.body), "message")
                what = urlsplit(exc.path).path.rsplit("/", 1)[-1] or exc.path
                raise AuthError(
                    f"the MDM refused the credentials (HTTP {exc.resp.status} reading the {what} list"
                    f"{': ' + str(said) if said else ''}); check "
                    f"{'BULKMDM_API_KEY' if self.on_premises else 'the OAuth client and refresh token'} "
                    "and the account's permissions", attempts=exc.resp.attempts, status=exc.resp.status,
                ) from None
            return [failed(row, exc.detail(), http_status=exc.resp.status, attempts=exc.resp.attempts)
                    for row in rows]
        except TransportError as exc:
            if isinstance(exc, AuthError):
                raise
            detail = f"Could not read the MDM's lists: {exc}. Run the job again."
            return [failed(row, detail, attempts=exc.attempts) for row in rows]
        seen: dict[tuple[Any, ...], tuple[str, int]] = {}
        out: list[Step | Outcome] = []
        for row in rows:
            try:
                out.append(self._plan_row(row, lists, seen))
            except LookupFailed as exc:
                out.append(failed(row, _sentence(str(exc))))
        return self._within_budget(out)

    async def _fetch_lists(self, actions: set[str], rows: Sequence[JobRow]) -> _Lists:
        lists = _Lists()
        devices = await self._list("devices", "devices", "device_id")
        by_serial = any(not row.get("device_id").strip() and row.get("serial").strip() for row in rows)
        if by_serial and devices and not any(_has_serial(d) for d in devices):
            devices = await self._with_details(devices, "devices", "device_id", lists, "serial numbers")
        lists.device_by_id = Index("device", devices, lambda d: get_field(d, "device_id"))
        lists.device_by_serial = Index("device", devices, _serial)
        lists.device_by_serial_folded = Index("device", devices, _serial, fold=True)
        lists.serials_known = any(_serial(d) for d in devices)
        if actions & GROUP_ACTIONS:
            groups = await self._list("groups", "groups", "group_id")
            lists.group_by_name = Index("group", groups, lambda g: get_field(g, "name", "group_name"))
            lists.group_by_name_folded = Index("group", groups, lambda g: get_field(g, "name", "group_name"),
                                               fold=True)
            wanted: dict[str, Any] = {}
            for row in rows:
                if row.action in GROUP_ACTIONS:
                    try:
                        group = self._group(row.get("group"), lists)
                    except LookupFailed:
                        continue
                    wanted[_key(get_field(group, "group_id"))] = group
            for group_id, group in wanted.items():
                try:
                    lists.members[group_id] = await self._members(group_id)
                except _ListFailed as exc:
                    lists.members[group_id] = LookupFailed(
                        f"could not read the members of group {get_field(group, 'name')!r}: {_explain(exc.resp)}"
                    )
        if actions & APP_ACTIONS:
            apps = await self._list("apps", "apps", "app_id")
            self._index_apps(lists, apps)
            app_rows = [row for row in rows if row.action in APP_ACTIONS]
            if apps and not any(get_field(a, "bundle_identifier", "identifier") for a in apps):
                # "Get App List" shows no bundle_identifier; "Get App Details" does.
                unmatched = [row for row in app_rows if row.get("app").strip() and not self._app_matches(row, lists)]
                if unmatched:
                    apps = await self._with_details(apps, "apps", "app_id", lists, "bundle identifiers")
                    self._index_apps(lists, apps)
            await self._read_device_apps(app_rows, lists)
            if lists.device_apps and not lists.no_details.get("apps"):
                apps = await self._bundles_for_device_checks(apps, app_rows, lists)
        return lists

    async def _members(self, group_id: Any) -> set[str]:
        """"Get members present in a group": ``{ "member_ids": [ 12, 213123,
        21312 ] }`` (every page, should the server page it; member objects
        are read too)."""
        items = await self._list(f"groups/{_seg(group_id)}/members", MEMBER_KEYS, "member_id")
        return {_member_id(m) for m in items} - {""}

    def _index_apps(self, lists: _Lists, apps: list[Any]) -> None:
        lists.app_by_name = Index("app", apps, lambda a: get_field(a, "app_name", "name"))
        lists.app_by_bundle = Index("app", apps, lambda a: get_field(a, "bundle_identifier", "identifier"))
        lists.app_by_id = Index("app", apps, lambda a: get_field(a, "app_id"))
        lists.app_names_folded = Index("app", apps, lambda a: get_field(a, "app_name", "name"), fold=True)

    def _app_matches(self, row: JobRow, lists: _Lists) -> bool:
        value = row.get("app")
        return bool(lists.app_by_name.find(value) or lists.app_by_id.find(value))

    async def _with_details(self, items: list[Any], kind: str, id_field: str, lists: _Lists,
                            what: str) -> list[Any]:
        """``items`` with the fields of their detail answers (``GET kind/{id}``)
        added: the doc's list examples lack what a row may name them by (the
        device list has no serial_number, the app list no bundle_identifier),
        its detail examples have it. One call per item, so only when they fit
        in half of the day's remaining budget."""
        room = self._room()
        if room is not None and len(items) > room // 2:
            lists.no_details[kind] = (
                f"the MDM's {kind} list carries no {what} and reading the {len(items):,} {kind} one by one "
                f"would not fit in the day's API calls"
            )
            return items
        ids = [get_field(item, id_field) for item in items]
        answers = await self._each([f"{kind}/{_seg(i)}" for i in ids], quiet=False)
        out = []
        for item, resp in zip(items, answers):
            if resp is not None and resp.ok and isinstance(resp.body, Mapping):
                # the list's fields win: the detail example has no device_id
                out.append({**resp.body, **item})
            elif resp is not None and resp.status in (404, 410):
                out.append(item)  # removed since the list was read
            elif resp is not None:
                raise _ListFailed(f"{kind[:-1]} details", resp)
        return out

    async def _read_device_apps(self, app_rows: Sequence[JobRow], lists: _Lists) -> None:
        """What each device of the app rows has ("Get device app list"), so a
        row already in the wanted state is skipped. One call per device: only
        for up to ``app_check_max`` devices and a quarter of the day's
        remaining budget; beyond that the rows are sent unchecked."""
        wanted: dict[str, Any] = {}
        for row in app_rows:
            try:
                device = self._device(row, lists)
            except LookupFailed:
                continue
            wanted[_key(get_field(device, "device_id"))] = get_field(device, "device_id")
        room = self._room()
        if not wanted or len(wanted) > self.app_check_max or (room is not None and len(wanted) > room // 4):
            return
        answers = await self._each([f"devices/{_seg(d)}/apps" for d in wanted.values()], quiet=True)
        for key, resp in zip(wanted, answers):
            if resp is not None and resp.ok and isinstance(resp.body, Mapping):
                lists.device_apps[key] = _DeviceApps(resp.body)

    async def _bundles_for_device_checks(self, apps: list[Any], app_rows: Sequence[JobRow],
                                         lists: _Lists) -> list[Any]:
        """``apps`` with the bundle identifiers of the apps whose presence on a
        row's device the device's app list cannot settle by app id.

        "Get device app list" names an app by ``app_id`` and ``identifier``;
        its example's ``app_id`` (9007199254741340) is not from the repository's
        id range (99731238129), so the ids of the two lists need not match, and
        "Get App List" carries no ``bundle_identifier`` ("Get App Details"
        does). Without the identifier an app already on a device would be
        installed again, and one on it under another name not removed. One
        ``GET apps/{id}`` per such app, if it fits in the day's budget."""
        wanted: dict[str, Any] = {}
        for row in app_rows:
            try:
                device = self._device(row, lists)
                app = self._app(row.get("app"), lists)
            except LookupFailed:
                continue
            has = lists.device_apps.get(_key(get_field(device, "device_id")))
            if (has is None or not has.identifiers or has.holds(app, loosely=False)
                    or get_field(app, "bundle_identifier", "identifier")):
                continue
            wanted[_key(get_field(app, "app_id"))] = get_field(app, "app_id")
        room = self._room()
        if not wanted or (room is not None and len(wanted) > room // 4):
            return apps
        answers = await self._each([f"apps/{_seg(i)}" for i in wanted.values()], quiet=True)
        details = {key: resp.body for key, resp in zip(wanted, answers)
                   if resp is not None and resp.ok and isinstance(resp.body, Mapping)}
        if not details:
            return apps
        # the list's fields win, as in _with_details
        merged = [{**details[_key(get_field(a, "app_id"))], **a} if _key(get_field(a, "app_id")) in details else a
                  for a in apps]
        self._index_apps(lists, merged)
        return merged

    def _device(self, row: JobRow, lists: _Lists) -> Any:
        if row.get("device_id").strip():
            return lists.device_by_id.one(row.get("device_id"), "device id")
        serial = row.get("serial")
        if serial.strip() == "--":
            raise LookupFailed("the serial is '--', which the MDM writes for an unknown serial; give device_id")
        if lists.device_by_serial.find(serial):
            return lists.device_by_serial.one(serial, "serial")
        if not lists.serials_known and serial.strip():
            why = lists.no_details.get("devices") or "the MDM's device list carries no serial numbers"
            raise LookupFailed(f"serial {serial!r} was not found: {why}; give device_id instead")
        # serial numbers have no meaningful case; a unique match ignoring it is the device
        return lists.device_by_serial_folded.one(serial, "serial")

    def _group(self, name: str, lists: _Lists) -> Any:
        if not lists.group_by_name.find(name) and name.strip():
            near = lists.group_by_name_folded.find(name)
            if near:
                hint = ", ".join(repr(get_field(g, "name", "group_name")) for g in near[:3])
                raise LookupFailed(f"group {name!r} was not found (names must match exactly; did you mean {hint}?)")
        return lists.group_by_name.one(name, "group")

    def _app(self, value: str, lists: _Lists) -> Any:
        if not value.strip():
            raise LookupFailed("the app is blank")
        found: dict[str, Any] = {}
        for index in (lists.app_by_name, lists.app_by_bundle, lists.app_by_id):
            for app in index.find(value):
                found[_key(get_field(app, "app_id")) or str(id(app))] = app
        if not found:
            near = lists.app_names_folded.find(value)
            hint = f"; did you mean {get_field(near[0], 'app_name', 'name')!r}?" if near else ""
            if not hint and "apps" in lists.no_details:
                hint = f"; {lists.no_details['apps']}"
            raise LookupFailed(f"app {value!r} was not found (give its name, bundle identifier or app id){hint}")
        if len(found) > 1:
            raise LookupFailed(f"app {value!r} matches {len(found)} apps (ids {', '.join(sorted(found))}); "
                               "give the app id instead")
        return next(iter(found.values()))

    def _plan_row(self, row: JobRow, lists: _Lists, seen: dict[tuple[Any, ...], tuple[str, int]]) -> Step | Outcome:
        action = row.action
        if action not in self.actions:
            return failed(row, f"manageengine cannot {action}.")
        device = self._device(row, lists)
        dev_id = get_field(device, "device_id")
        label = f"device {_serial(device) or dev_id}"

        if action in GROUP_ACTIONS:
            group = self._group(row.get("group"), lists)
            group_id = get_field(group, "group_id")
            gname = get_field(group, "name")
            resolved = f"device_id={dev_id}; group_id={group_id}"
            clash = self._once(seen, ("group", _key(dev_id), _key(group_id)), action, row, label, resolved)
            if clash:
                return clash
            members = lists.members.get(_key(group_id))
            if isinstance(members, LookupFailed):
                raise members
            member = members is not None and _key(dev_id) in members
            if action == "add-to-group":
                if member:
                    return skipped(row, f"{_cap(label)} is already in group {gname!r}; nothing sent.", resolved)
                return Step(row, action, label, {"device": dev_id, "group": group_id, "name": gname},
                            resolved, (action, _key(group_id)))
            if not member:
                return skipped(row, f"{_cap(label)} is not in group {gname!r}; nothing sent.", resolved)
            return Step(row, action, label, {"device": dev_id, "group": group_id, "name": gname},
                        resolved, (action, row.index))

        app = self._app(row.get("app"), lists)
        app_id = get_field(app, "app_id")
        aname = get_field(app, "app_name", "name")
        resolved = f"device_id={dev_id}; app_id={app_id}"
        clash = self._once(seen, ("app", _key(dev_id), _key(app_id)), action, row, label, resolved)
        if clash:
            return clash
        has = lists.device_apps.get(_key(dev_id))
        if has is not None:
            if action == "install-app" and has.holds(app, loosely=False):
                return skipped(row, f"{_cap(label)} already has {aname!r}; nothing sent.", resolved)
            if action == "remove-app" and not has.holds(app, loosely=True):
                return skipped(row, f"{_cap(label)} does not have {aname!r}; nothing sent.", resolved)
        key = (action, _key(app_id)) if action == "install-app" else (action, row.index)
        return Step(row, action, label, {"device": dev_id, "app": app_id, "name": aname}, resolved, key)

    @staticmethod
    def _once(seen: dict[tuple[Any, ...], tuple[str, int]], key: tuple[Any, ...], action: str, row: JobRow,
              label: str, resolved: str) -> Outcome | None:
        """The same change twice is sent once; opposite changes to one pair fail
        the later row (rows run concurrently, so their order is not kept)."""
        earlier = seen.get(key)
        if earlier is None:
            seen[key] = (action, row.line)
            return None
        if earlier[0] == action:
            return skipped(row, f"Same change as line {earlier[1]}; sent once.", resolved)
        return failed(row, f"Line {earlier[1]} already does {earlier[0]} for {label} with the same "
                           f"{key[0]}; put one change per {key[0]} and device in a job.", resolved)

    def _within_budget(self, out: list[Step | Outcome]) -> list[Step | Outcome]:
        """Fail, up front, the rows whose requests would not fit in the day.

        The cost is counted in input order: look-ups already made, one request
        per batch of a shared key, one per other row, plus a reserve for
        retries and split batches. Rows past the budget fail with a note;
        running the report again tomorrow sends them."""
        limit = self.daily_limit
        if limit is None:
            return out
        lookups = self.client.requests_sent
        reserve = max(10, limit // 50)
        room = limit - reserve - lookups
        size = self.batch_size()
        #: batch key -> (steps in it so far, whether its current batch fits)
        open_batches: dict[Any, tuple[int, bool]] = {}
        cost = 0
        total = 0
        fits: list[bool] = []
        for item in out:
            if not isinstance(item, Step):
                fits.append(True)
                continue
            filled, batch_fits = open_batches.get(item.batch_key, (0, False))
            if item.action in BATCHED and filled % size != 0:
                ok = batch_fits  # rides in a request already counted (or already cut)
            else:
                total += 1
                ok = cost + 1 <= room
                cost += ok
            if item.action in BATCHED:
                open_batches[item.batch_key] = (filled + 1, ok)
            fits.append(ok)
        if all(fits):
            return out
        detail = (
            f"Not sent: this job needs about {total + lookups:,} API calls ({lookups} look-ups included) and "
            f"ManageEngine allows {limit:,} a day (keeping {reserve} for retries); this row did not fit. Run "
            "the report again tomorrow to send it (BULKMDM_DAILY_LIMIT sets your organisation's limit)."
        )
        result: list[Step | Outcome] = []
        for item, ok in zip(out, fits):
            if ok or not isinstance(item, Step):
                result.append(item)
            else:
                result.append(failed(item.row, detail, item.resolved))
        return result

    # -- dry run -------------------------------------------------------------------
    async def check(self, steps: Sequence[Step]) -> list[Outcome]:
        many = f" (one request for {len(steps)} rows)" if len(steps) > 1 else ""
        return [Outcome(step.index, Status.PLANNED, _would(step) + many + ".", resolved=step.resolved)
                for step in steps]

    # -- executing -----------------------------------------------------------------
    async def execute(self, steps: Sequence[Step]) -> list[Outcome]:
        if not steps:
            return []
        if steps[0].action in BATCHED:
            return await self._send_batch(list(steps))
        out = []
        for step in steps:
            try:
                out.append(await self._send_one(step))
            except AuthError:
                raise
            except TransportError as exc:
                out.append(outcome_from_error(step, exc))
        return out

    async def _send_batch(self, steps: list[Step]) -> list[Outcome]:
        action = steps[0].action
        ids = [_wire_id(s.params["device"]) for s in steps]
        if action == "add-to-group":
            group_id = steps[0].params["group"]
            path, key = f"groups/{_seg(group_id)}/members", "member_ids"
            body: dict[str, Any] = {"member_ids": ids}

            async def in_place() -> bool | None:
                # after a lost answer: did the members arrive? All: done. None: resend.
                try:
                    now = await self._members(group_id)
                except (TransportError, _ListFailed):
                    return None
                there = [_key(i) in now for i in ids]
                return True if all(there) else False if not any(there) else None

            verify: Any = in_place
        else:
            path, key = f"apps/{_seg(steps[0].params['app'])}/devices", "device_ids"
            # silent_install: "Enter 'False' for manual installation from App
            # Catalog" -- a bulk install means install; users are not mailed.
            body = {"device_ids": ids, "silent_install": True, "notify_user_via_email": False}
            verify = None  # installation cannot be read back cheaply; a lost answer is "unknown"
        try:
            resp = await self._request("POST", path, json=body, verify=verify)
        except AuthError:
            raise
        except TransportError as exc:
            return [outcome_from_error(s, exc) for s in steps]
        if resp.ok:
            # The doc's answer echoes the ids ({"member_ids": [...]} /
            # {"device_ids": [...]}); an id missing from a non-empty echo was
            # not taken. No echo (or an empty one, or a 202) says nothing more
            # than the 2xx.
            confirmed = as_list(resp.body, key) if isinstance(resp.body, Mapping) and key in resp.body else None
            got = {_key(i) for i in confirmed} if confirmed else None
            out = []
            for step in steps:
                if got is None or _key(step.params["device"]) in got:
                    out.append(_succeeded(step, resp))
                else:
                    out.append(Outcome(step.index, Status.FAILED,
                                       f"The MDM answered HTTP {resp.status} but did not list this device among "
                                       f"the {key}; check {step.target} and run the report again.",
                                       resp.status, resp.attempts, step.resolved))
            return out
        if resp.status == 409 and len(steps) == 1:
            # The doc's "COM0010 409 Resource Already Exists": the device was
            # already in the group (or the app already associated with it) when
            # the request arrived -- added or installed elsewhere since the
            # look-up, or a device app list that does not show an association
            # yet. The wanted state holds; a batch refused for it is halved
            # first (below), so the rows that were not there get sent.
            return [_already(steps[0], resp)]
        if resp.status == 409 and action == "add-to-group":
            # Which members were already there is one read away (halving
            # would cost up to two requests per row): those rows are already
            # in state, the others are sent again without them.
            try:
                now: set[str] | None = await self._members(steps[0].params["group"])
            except AuthError:
                raise
            except (TransportError, _ListFailed):
                now = None
            there = [s for s in steps if now is not None and _key(s.params["device"]) in now]
            if there:
                rest = [s for s in steps if s not in there]
                done = {s.index: _already(s, resp) for s in there}
                done.update({o.index: o for o in (await self._send_batch(rest) if rest else [])})
                return [done[s.index] for s in steps]
        if 400 <= resp.status < 500 and resp.status not in _NO_SPLIT and len(steps) > 1:
            # Refused as a whole, most likely for a few bad ids: halve and retry
            # until the bad rows stand alone.
            half = len(steps) // 2
            return await self._send_batch(steps[:half]) + await self._send_batch(steps[half:])
        return [_failed(step, resp) for step in steps]

    async def _send_one(self, step: Step) -> Outcome:
        p = step.params
        if step.action == "remove-from-group":
            path = f"groups/{_seg(p['group'])}/members/{_seg(p['device'])}"
        else:
            path = f"apps/{_seg(p['app'])}/devices/{_seg(p['device'])}"
        resp = await self._request("DELETE", path)
        if resp.status == 404 and resp.attempts > 1:
            # an earlier attempt went through and its answer was lost
            resp = Response(200, None, resp.headers, resp.attempts, verified=True)
        if resp.ok:
            return _succeeded(step, resp)
        return _failed(step, resp)


class _Lists:
    """What planning reads once per run."""

    def __init__(self) -> None:
        empty = Index("x", [], lambda _: None)
        self.device_by_id = self.device_by_serial = self.device_by_serial_folded = empty
        self.serials_known = False
        self.group_by_name = self.group_by_name_folded = empty
        self.members: dict[str, set[str] | LookupFailed] = {}
        self.app_by_name = self.app_by_bundle = self.app_by_id = self.app_names_folded = empty
        #: device id -> its apps (only for devices that were read)
        self.device_apps: dict[str, _DeviceApps] = {}
        #: kind -> why its details were not read
        self.no_details: dict[str, str] = {}


class _DeviceApps:
    """A device's apps from "Get device app list": ``{"apps": [...],
    "installed_apps": [...]}``, entries ``{"app_name", "identifier",
    "app_version", "app_id"}``. The doc does not say how the two lists
    differ; an app in either is on the device."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        entries = [e for k in ("apps", "installed_apps") for e in as_list(body, k) if isinstance(e, Mapping)]
        self.ids = {_key(get_field(e, "app_id")) for e in entries} - {""}
        self.identifiers = {_key(get_field(e, "identifier", "bundle_identifier")) for e in entries} - {""}
        self.names = {_key(get_field(e, "app_name", "name")).casefold() for e in entries} - {""}

    def holds(self, app: Any, *, loosely: bool) -> bool:
        """Whether ``app`` (from the repository list) is on the device: by app
        id or bundle identifier; ``loosely`` also by name. A device's app
        entry may carry an id of its own, so before a removal is skipped as
        "not there" every way of naming the app must miss."""
        if _key(get_field(app, "app_id")) in self.ids:
            return True
        bundle = _key(get_field(app, "bundle_identifier", "identifier"))
        if bundle and bundle in self.identifiers:
            return True
        name = _key(get_field(app, "app_name", "name")).casefold()
        return loosely and bool(name) and name in self.names


class _ListFailed(Exception):
    def __init__(self, path: str, resp: Response) -> None:
        self.path = path
        self.resp = resp

    def detail(self) -> str:
        what = urlsplit(self.path).path.rsplit("/", 1)[-1] or self.path
        return f"Could not read the MDM's {what} list: {_explain(self.resp)}"


def _error_code(body: Any) -> str:
    """The doc's ``error_code`` of an error body ("" if none)."""
    return _key(get_field(body, "error_code")) if isinstance(body, Mapping) else ""


def _me_body(body: Any) -> Any:
    """The doc's error body ``{"error_code", "error_description", ...}`` as one
    message with the code, for :func:`explain_status`."""
    if isinstance(body, Mapping):
        code = get_field(body, "error_code")
        text = get_field(body, "localized_error_description", "error_description")
        if code is not None or text:
            return {"message": f"{code}: {text}" if code is not None and text else str(text or code)}
    return body


def _explain(resp: Response) -> str:
    return explain_status(resp.status, _me_body(resp.body), resp.attempts)


def _done(step: Step) -> str:
    p = step.params
    return {
        "add-to-group": f"{_cap(step.target)} added to group {p.get('name')!r}.",
        "remove-from-group": f"{_cap(step.target)} removed from group {p.get('name')!r}.",
        "install-app": f"Installation of {p.get('name')!r} sent to {step.target}.",
        "remove-app": f"Removal of {p.get('name')!r} sent to {step.target}.",
    }[step.action]


def _would(step: Step) -> str:
    p = step.params
    return {
        "add-to-group": f"Would add {step.target} to group {p.get('name')!r}",
        "remove-from-group": f"Would remove {step.target} from group {p.get('name')!r}",
        "install-app": f"Would install {p.get('name')!r} on {step.target}",
        "remove-app": f"Would remove {p.get('name')!r} from {step.target}",
    }[step.action]


def _succeeded(step: Step, resp: Response) -> Outcome:
    detail = _done(step)
    if resp.verified:
        detail = detail.rstrip(".") + " (confirmed by reading it back after the answer was lost)."
    return Outcome(step.index, Status.SUCCEEDED, detail, resp.status, resp.attempts, step.resolved)


#: why a row failed once 429s outlasted a whole minute
DAY_USED_UP = (
    "HTTP 429: ManageEngine still answered 'API Limit Exceeded' (COM0002) after a full minute's pause, so the "
    "organisation's API calls for the day (2,500; 1,000 for free organisations) look used up. Run the report "
    "again tomorrow to send this row."
)


def _already(step: Step, resp: Response) -> Outcome:
    """A 409 (COM0010 "Resource Already Exists") to an add: already in state."""
    p = step.params
    if step.action == "add-to-group":
        detail = f"{_cap(step.target)} was already in group {p.get('name')!r}"
    else:
        detail = f"{p.get('name')!r} was already associated with {step.target}"
    if resp.attempts > 1:
        # a retried request may have found its own earlier attempt's change
        detail += " when the request was retried (HTTP 409, Resource Already Exists); taken as done."
        return Outcome(step.index, Status.SUCCEEDED, detail, resp.status, resp.attempts, step.resolved)
    detail += " when the request arrived (HTTP 409, Resource Already Exists); nothing changed."
    return Outcome(step.index, Status.SKIPPED, detail, resp.status, resp.attempts, step.resolved)


def _failed(step: Step, resp: Response) -> Outcome:
    if resp.status == 429:
        detail = DAY_USED_UP if resp.attempts else "Not sent: " + DAY_USED_UP
        return Outcome(step.index, Status.FAILED, detail, 429, resp.attempts, step.resolved)
    detail = _explain(resp)
    if resp.status in (400, 404) and step.action in BATCHED:
        detail += f" The MDM refused {step.target}; it may have been removed since the look-up."
    return Outcome(step.index, Status.FAILED, detail, resp.status, resp.attempts, step.resolved)


def _serial(device: Any) -> str:
    # the doc writes "--" for a value the MDM does not know; its device
    # details carry serial_number at the top and again under "os"
    value = get_field(device, "serial_number", "serial")
    if value is None:
        value = get_field(get_field(device, "os"), "serial_number", "serial")
    text = "" if value is None else str(value).strip()
    return "" if text == "--" else text


def _has_serial(device: Any) -> bool:
    """Whether a device object has a serial number field at all ("--" counts)."""
    return (get_field(device, "serial_number", "serial") is not None
            or get_field(get_field(device, "os"), "serial_number", "serial") is not None)


def _next_link(body: Any) -> str | None:
    """ManageEngine's ``"paging": {"next": "<url>"}`` (or a bare ``next``)."""
    if not isinstance(body, Mapping):
        return None
    nxt = get_field(get_field(body, "paging"), "next")
    if nxt is None:
        nxt = get_field(body, "next")
    return nxt.strip() if isinstance(nxt, str) and nxt.strip() else None


#: where a members answer holds its list: the doc's key first
MEMBER_KEYS = ("member_ids", "members", "devices")


def _member_id(member: Any) -> str:
    """A member id, or a member object's (``{"device_id": ...}``)."""
    if isinstance(member, Mapping):
        member = get_field(member, "member_id", "device_id", "resource_id")
    return _key(member)


def _wire_id(value: Any) -> Any:
    """An id as the doc's bodies carry it: a JSON number (``"device_ids": [
    1, 2, 3 ]``, type long). A list that gave it as a digit string is
    converted; Python's int keeps every digit of ids above 2**53."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return value


def _key(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _seg(value: Any) -> str:
    return quote(str(value), safe="")


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[0].upper() + text[1:] if text else "Look-up failed"
    return text if text.endswith((".", "?")) else text + "."


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]
