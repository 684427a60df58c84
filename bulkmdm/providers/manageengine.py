"""ManageEngine MDM (vendor doc: manageengine-mdm-api-v1.txt).

Two editions, one API:

* on-premises (``BULKMDM_API_KEY`` set): requests go to
  ``<url>/api/v1/mdm/...`` with ``Authorization: <api key>``;
* cloud (otherwise): requests go to ``<url>/api/v1/mdm/...`` too, with
  ``Authorization: Zoho-oauthtoken <access token>``, the token obtained from
  Zoho's OAuth endpoint with the refresh-token grant (:class:`ZohoOAuth`).
  The doc's introduction gives the cloud base as
  ``https://mdm.manageengine.com/api/v1``, but every public client of the
  cloud (a Dart client covering all nine regions, Python and JavaScript
  scripts) calls ``https://mdm.manageengine.com/api/v1/mdm/devices``: that
  comes first, and only when the run's first list answers 404 there does the
  cloud fall back to the doc's ``<url>/api/v1/...`` for the rest of the run
  (:meth:`ManageEngine._get`). A ``--url`` that already ends in
  ``/api/v1/mdm`` is taken as it is, with no fallback.

Regional clouds (``mdm.manageengine.eu``, ``.in``, ``.com.au``, ``.jp``,
``.ca``, ``.cn``, ``.sa``, ``.uk``) take their tokens from their own Zoho
accounts server (:func:`zoho_token_url`) unless ``BULKMDM_OAUTH_URL`` says
otherwise; a refusal from a token server of another region says which one
to use (:func:`region_hint`).

``api_base`` is a classmethod that sees only the URL, so it returns
``<url>/api/v1`` (or the URL as given when it ends in ``/api/v1/mdm``), and
the provider puts ``mdm/`` in front of every path (:meth:`ManageEngine._path`).

Device lists keep de-enrolled records (``"is_removed": "true"``) beside a
re-enrolled device's current record with the same serial. Public clients ask
for ``exclude_removed=true`` and still check ``is_removed`` on every record
(a JavaScript client compares it with the strings ``'true'``/``'false'``):
so does this one, and a removed record never matches a row.

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
The doc's 429 ("COM0002 API Limit Exceeded") names no Retry-After: the
declared retry policy holds the run for the minute window and tries once
more; a 429 after that means the day's calls are used up, and the run stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit

from ..errors import (
    AuthError,
    BadAnswer,
    BulkMDMError,
    ConfigError,
    ConnectError,
    RedirectRefused,
    RequestTimeout,
    SetupFailed,
    TokenUnavailable,
    TransportError,
)
from ..model import JobRow, Outcome, Reason, Status, Step
from ..quota import tenant
from ..retry import RetryPolicy
from ..client import NO_CONTEXT, Auth, Client, HeaderAuth, RequestContext, Response
from ..shown import Secrets
from .base import (
    Credential,
    Follow,
    Sighting,
    Tracked,
    resolved_ids,
    Index,
    ListFailed,
    READ_BACK_CONFIRMED,
    LookupFailed,
    Page,
    Provider,
    Settings,
    as_int,
    gather_bounded,
    usable_id,
    as_list,
    cap,
    done_reason,
    collect_pages,
    explain_status,
    failed,
    get_field,
    key,
    not_an_answer,
    one_across,
    outcome_from_error,
    seg,
    send_halving,
    skipped,
    wire_int,
    unconfirmed,
)

log = logging.getLogger("bulkmdm.http")

DEFAULT_OAUTH_URL = "https://accounts.zoho.com/oauth/v2/token"
#: "Paid Organization - 2500 API calls/day and 100 API calls/minute"
DEFAULT_DAILY_LIMIT = 2500

GROUP_ACTIONS = frozenset({"add-to-group", "remove-from-group"})
APP_ACTIONS = frozenset({"install-app", "remove-app"})
#: actions whose rows share one request (the API takes a list of ids)
BATCHED = frozenset({"add-to-group", "install-app"})
#: the change that undoes each action
OPPOSITE = {
    "add-to-group": "remove-from-group",
    "remove-from-group": "add-to-group",
    "install-app": "remove-app",
    "remove-app": "install-app",
}
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
        #: what a refusal adds when the token server is not the tenant's region's (see region_hint)
        self.hint = ""
        #: whether the MDM took the current token (a 2xx answer to a request that carried it)
        self._accepted = False
        #: why the last fetch gave no token: every request after it stops with the same error
        self._failed: BaseException | None = None

    def headers(self) -> Mapping[str, str]:
        return {"Authorization": f"Zoho-oauthtoken {self._token}"} if self._token else {}

    def refused(self, status: int, body: Any) -> bool:
        if 200 <= status < 300:
            self._accepted = True  # the token server is one the MDM trusts
        return _token_refused(status, body)

    def current(self) -> bool:
        return self._token is not None and time.monotonic() < self._expires_at

    def _carried(self, sent: Mapping[str, str]) -> bool:
        """Whether the headers ``sent`` carried the current token."""
        return self._token is not None and sent.get("Authorization") == self.headers()["Authorization"]

    def _locked(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def ready(self, client: Client) -> None:
        """Have an access token that will not expire in the next moments
        (while a refused one is renewed, requests wait for the new one rather
        than go out with it, each refused and each a call of the day's quota)."""
        if self.current():
            return
        async with self._locked():
            if self._failed is not None:
                raise self._failed
            if not self.current():
                await self._fetch(client)

    async def renew(self, client: Client, sent: Mapping[str, str]) -> bool:
        # Workers refused together renew once: the others find a token newer
        # than the one their refused request carried and just retry with it.
        if self._carried(sent):
            self._expires_at = 0.0  # refused: no longer fresh, whatever expires_in said
        async with self._locked():
            if self._failed is not None:
                raise self._failed
            if self._token is not None and not self._carried(sent):
                return True
            if self.hint and not self._accepted:
                # A token from another region's accounts server, refused before
                # the MDM ever took it: another token from there will not do.
                raise AuthError(
                    f"the MDM refused the access token from {urlsplit(self.token_url).netloc}{self.hint}", status=401
                )
            await self._fetch(client)
        return True

    async def _fetch(self, client: Client) -> None:
        try:
            await self._request_token(client)
        except (AuthError, SetupFailed, TokenUnavailable) as exc:
            self._failed = exc
            raise

    async def _request_token(self, client: Client) -> None:
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
            resp = await client.request("POST", self.token_url, data=form, credential=True)
        except (BadAnswer, RedirectRefused) as exc:
            raise AuthError(f"no access token: {self._redact(str(exc))}; check BULKMDM_OAUTH_URL") from None
        except (ConnectError, RequestTimeout) as exc:
            if not client.answered_ok:
                # before the MDM ever answered: the set-up is wrong for every row (CONTRACT "Stopping early")
                raise SetupFailed(
                    f"Nothing answers at the OAuth token endpoint {where}: {self._redact(str(exc))}; "
                    "check BULKMDM_OAUTH_URL (without it, --url's region names the endpoint) and "
                    "that it can be reached from here. Nothing was sent."
                ) from None
            raise self._unavailable(client, self._redact(str(exc)), exc.attempts) from None
        except TransportError as exc:
            raise self._unavailable(client, self._redact(str(exc)), exc.attempts) from None
        body = resp.body if isinstance(resp.body, Mapping) else {}
        error = get_field(body, "error")
        token = get_field(body, "access_token")
        if resp.ok and isinstance(token, str) and token and not error:
            self._store(token, body)
            return
        if resp.status == 429 or resp.status >= 500 or _too_many(body):
            raise self._unavailable(client, f"it answered HTTP {resp.status} (too busy or failing)", resp.attempts)
        # Zoho refuses a bad client or refresh token with HTTP 200 and
        # {"error": "invalid_client"} / {"error": "invalid_code"}.
        reason = self._redact(str(error)) if isinstance(error, str) and len(error) < 60 else f"HTTP {resp.status}"
        raise AuthError(
            f"the OAuth token endpoint {where} refused the refresh token or client ({reason}); check "
            f"BULKMDM_CLIENT_ID, BULKMDM_CLIENT_SECRET and BULKMDM_REFRESH_TOKEN{self.hint}",
            status=401,
        )

    def _unavailable(self, client: Client, why: str, attempts: int) -> BulkMDMError:
        """No access token, the endpoint failing rather than refusing: no
        request can go, so the run stops (every row would be refused, each
        spending a call of the day's quota). Before the MDM ever answered,
        that is the set-up's failure: nothing was sent."""
        where = urlsplit(self.token_url).netloc
        if not client.answered_ok:
            return SetupFailed(
                f"The OAuth token endpoint {where} gave no access token ({why}); check BULKMDM_OAUTH_URL, "
                "or run the same command again later. Nothing was sent."
            )
        return TokenUnavailable(
            f"the OAuth token endpoint {where} gave no access token ({why}); run the same command again later",
            attempts=attempts,
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
        self._accepted = False  # not yet by the MDM (the 200 just seen was the token server's)

    def _redact(self, text: str) -> str:
        """A token server's words, without escapes or any of the three secrets
        or the access token (nor their encoded forms)."""
        return Secrets((self._client_secret, self._refresh_token, self._client_id, self._token or "")).clean(text)


def _too_many(body: Any) -> bool:
    # Zoho: {"error": "Access Denied", "error_description": "You have made too
    # many requests continuously. Please try again after some time."}
    return isinstance(body, Mapping) and "too many requests" in str(get_field(body, "error_description", default=""))


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


#: A ManageEngine cloud's domain suffix -> the Zoho accounts server of that
#: region. The doc knows one region: every OAuth step posts to
#: "https://accounts.zoho.com/oauth/v2/token". Public clients serve nine
#: (a Dart client's ManageEngineChannel lists mdm.manageengine.com, .eu, .in,
#: .com.au, .jp, .ca, .cn, .sa, .co.uk) and pair each with its own accounts
#: server (TypeScript clients' DATA_CENTRES tables), as Zoho's "Multi DC
#: support" page lists them: Canada's Zoho accounts live on zohocloud.ca,
#: China's on zoho.com.cn, the UK's on zoho.uk. The client secret and refresh
#: token go to no other host unless BULKMDM_OAUTH_URL names it: a cloud
#: address in any other region (a typo: mdm.manageengine.cm) is refused.
ZOHO_ACCOUNTS = {
    "com": "accounts.zoho.com",
    "eu": "accounts.zoho.eu",
    "in": "accounts.zoho.in",
    "com.au": "accounts.zoho.com.au",
    "jp": "accounts.zoho.jp",
    "ca": "accounts.zohocloud.ca",
    "cn": "accounts.zoho.com.cn",
    "com.cn": "accounts.zoho.com.cn",
    "sa": "accounts.zoho.sa",
    "uk": "accounts.zoho.uk",
    "co.uk": "accounts.zoho.uk",
}


def cloud_host(url: str) -> str | None:
    """``url``'s host when it is a ManageEngine cloud (``mdm.manageengine.eu``)."""
    host = (urlsplit(url.strip()).hostname or "").casefold().rstrip(".")
    return host if host.startswith(("manageengine.", "mdm.manageengine.")) else None


def zoho_accounts_host(url: str) -> str | None:
    """The Zoho accounts server of the region ``url`` is in (None: not a
    ManageEngine cloud, or one in no region of :data:`ZOHO_ACCOUNTS`)."""
    host = cloud_host(url)
    if host is None:
        return None
    return ZOHO_ACCOUNTS.get(host.split("manageengine.", 1)[1])


def zoho_token_url(url: str) -> str:
    """The token endpoint for a tenant at ``url`` (``--url``): its region's
    Zoho accounts server, or the doc's ``accounts.zoho.com`` for a URL that
    names no ManageEngine cloud (a proxy, a test server). A cloud address in
    no known region is a ConfigError: the secrets would go to a host that
    only its name makes Zoho's."""
    accounts = zoho_accounts_host(url)
    if accounts is None and cloud_host(url) is not None:
        known = ", ".join(sorted(set(ZOHO_ACCOUNTS.values())))
        raise ConfigError(
            f"--url {cloud_host(url)} is no ManageEngine cloud region bulkmdm knows, so it sends the OAuth "
            f"client secret nowhere: the token hosts are {known}. Check --url, or set BULKMDM_OAUTH_URL to "
            "your region's token endpoint; nothing was sent."
        )
    return f"https://{accounts}/oauth/v2/token" if accounts else DEFAULT_OAUTH_URL


def region_hint(url: str, token_url: str) -> str:
    """What to say when credentials are refused and the token came from a
    server other than the tenant's region's ("" when they match, or when the
    tenant is not a ManageEngine cloud)."""
    accounts = zoho_accounts_host(url)
    used = (urlsplit(token_url).hostname or "").casefold()
    if accounts is None or used == accounts:
        return ""
    return (
        f"; your tenant is on {cloud_host(url)}: use {accounts} (unset BULKMDM_OAUTH_URL, or set it to "
        f"https://{accounts}/oauth/v2/token)"
    )


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
    title = "ManageEngine"
    actions = frozenset(GROUP_ACTIONS | APP_ACTIONS)
    # Group membership is the MDM's own record. An app reaches the device when
    # it next checks in: "Get the list of apps installed on the device" (GET
    # devices/{device_id}/apps) shows it there (install-app) or gone (remove-app).
    follow = {
        **{action: Follow.MDM for action in GROUP_ACTIONS},
        **{action: Follow.DEVICE for action in APP_ACTIONS},
    }
    # On-premises servers take an API key; the cloud takes a Zoho OAuth
    # client, whose token URL is optional (Zoho's accounts host for --url).
    credential_fields = (
        Credential("BULKMDM_API_KEY", "API key (on-premises)"),
        Credential("BULKMDM_CLIENT_ID", "OAuth client id (cloud)"),
        Credential("BULKMDM_CLIENT_SECRET", "OAuth client secret (cloud)"),
        Credential("BULKMDM_REFRESH_TOKEN", "OAuth refresh token (cloud)"),
        Credential("BULKMDM_OAUTH_URL", "OAuth token URL (optional)", secret=False),
    )
    credentials = (("BULKMDM_API_KEY",), ("BULKMDM_CLIENT_ID", "BULKMDM_CLIENT_SECRET", "BULKMDM_REFRESH_TOKEN"))
    simulator = "bulkmdm.sim.manageengine:make_app"
    # "100 API calls/minute". A handful in flight is plenty at that pace.
    default_rate = 100 / 60
    # "100 calls/min": a hard limit, so the adaptive controller must not probe above it
    max_rate = 100 / 60
    #: the window the vendor counts its limit over ("100 API calls/minute")
    rate_window = 60.0
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
    url_hint = (
        "the server root, under which ManageEngine answers /api/v1/mdm/ (a cloud may answer the doc's "
        "/api/v1/ instead), e.g. https://mdm.manageengine.eu or https://mdm.example.com:8383"
    )
    #: the most devices whose app list is read to skip app rows already in state
    app_check_max = 250

    @classmethod
    def auth_from_env(cls, env: Mapping[str, str]) -> Auth:
        _daily_limit(env)  # a bad value stops the run before anything is sent
        api_key = env.get("BULKMDM_API_KEY", "").strip()
        if api_key:
            return ApiKeyAuth(api_key)
        names = cls.credentials[1]
        values = [env.get(n, "").strip() for n in names]
        missing = [n for n, v in zip(names, values, strict=True) if not v]
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
        # Without BULKMDM_OAUTH_URL the provider names the tenant's region's
        # accounts server once it knows --url (zoho_token_url).
        token_url = env.get("BULKMDM_OAUTH_URL", "").strip() or DEFAULT_OAUTH_URL
        if not token_url.startswith(("https://", "http://")):
            raise ConfigError(f"BULKMDM_OAUTH_URL {token_url!r} must start with https://.")
        client_id, client_secret, refresh_token = values
        return ZohoOAuth(
            client_id=client_id, client_secret=client_secret, refresh_token=refresh_token, token_url=token_url
        )

    @classmethod
    def quota_tenant(cls, url: str, env: Mapping[str, str]) -> str:
        # The daily limit is the organisation's ("Paid Organization - 2500 API
        # calls/day"), and every cloud organisation calls mdm.manageengine.<region>:
        # counted per OAuth client (or an API key used on the cloud), not per
        # URL. An on-premises server is the organisation's own.
        api_key = env.get("BULKMDM_API_KEY", "").strip()  # (the credential auth_from_env uses first)
        if api_key:
            return tenant(cls.name, url, api_key if cloud_host(url) else "")
        return tenant(cls.name, url, env.get("BULKMDM_CLIENT_ID", "").strip())

    @classmethod
    def api_base(cls, url: str) -> str:
        # --url is the server root, and "mdm/" is added per path (_path), so
        # that the cloud can fall back to the doc's "<url>/api/v1/...". A URL
        # copied with the doc's cloud base on it ("/api/v1") means that root;
        # one that ends in "/api/v1/mdm" is the user's choice, kept as it is.
        root = url.rstrip("/")
        if root.casefold().endswith("/api/v1/mdm"):
            return root
        if root.casefold().endswith("/api/v1"):
            root = root[: -len("/api/v1")]
        return root + "/api/v1"

    @classmethod
    def daily_limit_for(cls, settings: Settings) -> int | None:
        return _daily_limit(settings.env)

    def __init__(self, client: Client, settings: Settings) -> None:
        super().__init__(client, settings)
        auth = client.auth
        self.on_premises = isinstance(auth, ApiKeyAuth) or (
            not isinstance(auth, ZohoOAuth) and bool(settings.env.get("BULKMDM_API_KEY", "").strip())
        )
        self.daily_limit = self.daily_limit_for(settings)
        #: API calls today: earlier runs', this run's look-ups, and what the planned rows need
        self._needed = settings.calls_today
        pinned = client.base_url.casefold().endswith("/api/v1/mdm")
        #: what goes before every path: "mdm/" (on-premises, and the cloud as
        #: its public clients call it); "" once the cloud fell back to the doc's base
        self._prefix = "" if pinned else "mdm/"
        #: the cloud may still fall back to the doc's base (until a list answers)
        self._may_fall_back = not pinned and not self.on_premises
        if isinstance(auth, ZohoOAuth):
            if not settings.env.get("BULKMDM_OAUTH_URL", "").strip():
                auth.token_url = zoho_token_url(settings.url)
            auth.hint = region_hint(settings.url, auth.token_url)
        self._lists: _Lists | None = None

    # -- reading --------------------------------------------------------------
    def _path(self, path: str) -> str:
        return path if "://" in path else self._prefix + path

    async def _get(self, path: str, context: RequestContext = NO_CONTEXT) -> Any:
        """GET a documented resource: the body, or ListFailed. The run's first
        list met with a 404 under /api/v1/mdm/ moves the cloud to the doc's base."""
        resp = await self.client.request("GET", self._path(path), context=context)
        if resp.status == 404 and self._may_fall_back:
            # The doc: "Cloud https://mdm.manageengine.com/api/v1"; its public
            # clients call /api/v1/mdm/. A cloud that serves only the doc's
            # base is spoken to there for the rest of the run.
            log.info("ManageEngine: %s answered 404 under /api/v1/mdm; trying the doc's cloud base /api/v1", path)
            self._prefix, self._may_fall_back = "", False
            resp = await self.client.request("GET", self._path(path), context=context)
            if resp.status == 404:
                self._prefix = "mdm/"
                raise ListFailed(
                    path,
                    replace(
                        resp,
                        note=(
                            "both /api/v1/mdm/ and the doc's /api/v1/ answered 404; check --url (the server root, "
                            "e.g. https://mdm.manageengine.eu)"
                        ),
                    ),
                )
        if not resp.ok:
            raise ListFailed(path, resp)
        self._may_fall_back = False
        return resp.body

    async def check_access(self) -> None:
        """The device list's first page, one device long ("offset" and "limit" page every list),
        under the base a run would use (on-premises or cloud)."""
        await self._get(DEVICE_LIST + "&limit=1")

    async def _page(
        self, path: str, keys: tuple[str, ...], cursor: str | None, context: RequestContext = NO_CONTEXT
    ) -> Page:
        """One page of a list under its wrapping key (``{"devices": [...]}``)
        and the next page's URL (None: the last).

        The doc's examples show one answer, but its error table has "COM0003
        Invalid paging params", and ManageEngine's API pages lists (50 items by
        default) with ``"paging": {"next": "<url>"}`` and ``"metadata":
        {"total_record_count": n}``, the next page asked for with ``offset``
        and ``limit``. A ``next`` link is followed; without one, a total larger
        than what arrived is fetched by ``offset``. Either way the request goes
        to the server this run talks to (only the link's path and query are
        used), so the credentials go nowhere else."""
        body = await self._get(cursor or path, context)
        current = self.client.url(self._path(cursor or path))  # after _get: the base may have changed
        items = as_list(body, *keys)
        nxt = _next_link(body)
        if nxt:
            return items, self._on_this_server(urljoin(current, nxt))
        total = _number(get_field(get_field(body, "metadata"), "total_record_count", "total"))
        offset = _offset(current) + len(items)
        if not items or total is None or offset >= total:
            return items, None
        base = self.client.url(self._path(path))
        return items, f"{base}{'&' if '?' in base else '?'}{urlencode({'offset': offset, 'limit': len(items)})}"

    async def _list(
        self, path: str, keys: tuple[str, ...], id_field: str, context: RequestContext = NO_CONTEXT
    ) -> list[Any]:
        """Every page of a list, each item once (items without an id are all kept)."""
        return await collect_pages(
            partial(self._page, path, keys, context=context), ident=lambda item: usable_id(get_field(item, id_field))
        )

    def _on_this_server(self, url: str) -> str:
        """``url``'s path and query on the server this run talks to (a next
        link may name the server as the server sees itself)."""
        base = urlsplit(self.client.base_url)
        parts = urlsplit(url)
        return urlunsplit((base.scheme, base.netloc, parts.path, parts.query, ""))

    async def _members(self, group_id: Any, context: RequestContext = NO_CONTEXT) -> set[str]:
        """ "Get members present in a group": ``{ "member_ids": [ 12, 213123,
        21312 ] }`` (every page, should the server page it; member objects
        are read too)."""
        items = await self._list(f"groups/{seg(group_id)}/members", MEMBER_KEYS, "member_id", context)
        return {_member_id(m) for m in items} - {""}

    async def _each(self, paths: Sequence[str], *, quiet: bool) -> list[Response | None]:
        """GET every path, a few at a time (the rate limiter paces them).
        ``quiet``: None where no answer came; otherwise that error is raised."""

        async def one(path: str) -> Response | None:
            try:
                return await self.client.request("GET", self._path(path))
            except TransportError:
                if not quiet:
                    raise
                return None

        return await gather_bounded((partial(one, p) for p in paths), self.default_concurrency)

    def _room(self) -> int | None:
        """API calls left in the day's budget (None: no budget)."""
        if self.daily_limit is None:
            return None
        return (
            self.daily_limit - max(10, self.daily_limit // 50) - self.settings.calls_today - self.client.requests_sent
        )

    # -- planning -----------------------------------------------------------------
    async def plan(self, rows: Sequence[JobRow]) -> list[Step | Outcome]:
        # the base's plan loop, then the day's budget over all the rows
        return self._within_budget(await super().plan(rows))

    async def prepare(self, rows: Sequence[JobRow]) -> _Lists:
        lists = self._lists or _Lists()
        if self._lists is None:
            devices = await self._list(DEVICE_LIST, ("devices",), "device_id")
            by_serial = any(not row.get("device_id").strip() and row.get("serial").strip() for row in rows)
            if by_serial and devices and not any(_has_serial(d) for d in devices):
                devices = await self._with_details(devices, "devices", "device_id", lists, "serial numbers")
            _index_devices(lists, devices)
            self._lists = lists
        actions = {row.action for row in rows}
        if actions & GROUP_ACTIONS:
            await self._fetch_groups(lists, rows)
        if actions & APP_ACTIONS:
            await self._fetch_apps(lists, rows)
        return lists

    async def _fetch_groups(self, lists: _Lists, rows: Sequence[JobRow]) -> None:
        if lists.groups is None:
            lists.groups = await self._list("groups", ("groups",), "group_id")
            _index_groups(lists, lists.groups)
        wanted: dict[str, Any] = {}
        for row in rows:
            if row.action in GROUP_ACTIONS:
                try:
                    group = self._group(row.get("group"), lists)
                except LookupFailed:
                    continue
                wanted.setdefault(key(get_field(group, "group_id")), group)
        for group_id, group in wanted.items():
            if group_id in lists.members:
                continue
            try:
                lists.members[group_id] = await self._members(group_id)
            except ListFailed as exc:
                lists.members[group_id] = LookupFailed(
                    f"could not read the members of group {_group_name(group)!r}: {_explain(exc.resp)}",
                    exc.code,
                )

    async def _fetch_apps(self, lists: _Lists, rows: Sequence[JobRow]) -> None:
        if lists.apps is None:
            lists.apps = await self._list("apps", ("apps",), "app_id")
            _index_apps(lists, lists.apps)
        app_rows = [row for row in rows if row.action in APP_ACTIONS]
        if lists.apps and not any(get_field(a, "bundle_identifier", "identifier") for a in lists.apps):
            # "Get App List" shows no bundle_identifier; "Get App Details" does.
            unmatched = [row for row in app_rows if row.get("app").strip() and not _app_matches(row, lists)]
            if unmatched:
                lists.apps = await self._with_details(lists.apps, "apps", "app_id", lists, "bundle identifiers")
                _index_apps(lists, lists.apps)
        await self._read_device_apps(app_rows, lists)
        if lists.device_apps and not lists.no_details.get("apps"):
            await self._bundles_for_device_checks(app_rows, lists)

    async def _with_details(self, items: list[Any], kind: str, id_field: str, lists: _Lists, what: str) -> list[Any]:
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
        answers = await self._each([f"{kind}/{seg(i)}" for i in ids], quiet=False)
        out = []
        for item, resp in zip(items, answers, strict=True):
            if resp is not None and resp.ok and isinstance(resp.body, Mapping):
                # the list's fields win: the detail example has no device_id
                out.append({**resp.body, **item})
            elif resp is not None and resp.status in (404, 410):
                out.append(item)  # removed since the list was read
            elif resp is not None:
                raise ListFailed(f"{kind[:-1]} details", resp)
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
            wanted[key(get_field(device, "device_id"))] = get_field(device, "device_id")
        room = self._room()
        if not wanted or len(wanted) > self.app_check_max or (room is not None and len(wanted) > room // 4):
            return
        answers = await self._each([f"devices/{seg(d)}/apps" for d in wanted.values()], quiet=True)
        for device_key, resp in zip(wanted, answers, strict=True):
            if resp is not None and resp.ok and isinstance(resp.body, Mapping):
                lists.device_apps[device_key] = _DeviceApps(resp.body)

    async def _bundles_for_device_checks(self, app_rows: Sequence[JobRow], lists: _Lists) -> None:
        """Add the bundle identifiers of the apps whose presence on a row's
        device the device's app list cannot settle by app id.

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
            has = lists.device_apps.get(key(get_field(device, "device_id")))
            if (
                has is None
                or not has.identifiers
                or has.holds(app, loosely=False)
                or get_field(app, "bundle_identifier", "identifier")
            ):
                continue
            wanted[key(get_field(app, "app_id"))] = get_field(app, "app_id")
        room = self._room()
        if not wanted or (room is not None and len(wanted) > room // 4):
            return
        answers = await self._each([f"apps/{seg(i)}" for i in wanted.values()], quiet=True)
        details = {
            app_key: resp.body
            for app_key, resp in zip(wanted, answers, strict=True)
            if resp is not None and resp.ok and isinstance(resp.body, Mapping)
        }
        if details and lists.apps is not None:
            # the list's fields win, as in _with_details
            lists.apps = [
                {**details[key(get_field(a, "app_id"))], **a} if key(get_field(a, "app_id")) in details else a
                for a in lists.apps
            ]
            _index_apps(lists, lists.apps)

    def _device(self, row: JobRow, lists: _Lists) -> Any:
        device_id = row.get("device_id")
        if device_id.strip():
            if not lists.device_by_id.find(device_id) and lists.removed_by_id.find(device_id):
                raise LookupFailed(
                    f"device id {device_id!r} is a removed (de-enrolled) record (is_removed true); "
                    "give the device's current id, or its serial"
                )
            return lists.device_by_id.one(device_id, "device id")
        serial = row.get("serial")
        if serial.strip() == "--":
            raise LookupFailed(
                "the serial is '--', which the MDM writes for an unknown serial; give device_id", Reason.INVALID_ROW
            )
        if lists.device_by_serial.find(serial):
            return lists.device_by_serial.one(serial, "serial")
        if not lists.serials_known and serial.strip():
            if not lists.device_count and "devices" not in lists.no_details:
                raise LookupFailed(f"serial {serial!r} was not found: the MDM lists no devices at all")
            why = lists.no_details.get("devices") or "the MDM's device list carries no serial numbers"
            raise LookupFailed(f"serial {serial!r} was not found: {why}; give device_id instead")
        if serial.strip() and not lists.device_by_serial_folded.find(serial):
            _why_no_device(serial, lists)
        # serial numbers have no meaningful case; a unique match ignoring it is the device
        return lists.device_by_serial_folded.one(serial, "serial")

    def _group(self, name: str, lists: _Lists) -> Any:
        if not lists.group_by_name.find(name) and name.strip():
            if lists.groups_without_id.find(name):
                raise _found_without_id(f"group {name!r}", "group_id")
            near = lists.group_by_name_folded.find(name)
            if near:
                hint = ", ".join(repr(_group_name(g)) for g in near[:3])
                raise LookupFailed(f"group {name!r} was not found (names must match exactly; did you mean {hint}?)")
        return lists.group_by_name.one(name, "group")

    def _app(self, value: str, lists: _Lists) -> Any:
        if not value.strip():
            raise LookupFailed("the app is blank", Reason.INVALID_ROW)
        found = [
            ("name", lists.app_by_name.find(value)),
            ("bundle identifier", lists.app_by_bundle.find(value)),
            ("app id", lists.app_by_id.find(value)),
        ]
        if not any(apps for _field, apps in found):
            if lists.apps_without_id.find(value):
                raise _found_without_id(f"app {value!r}", "app_id", "sent")
            near = lists.app_names_folded.find(value)
            hint = f"; did you mean {get_field(near[0], 'app_name', 'name')!r}?" if near else ""
            if not hint and "apps" in lists.no_details:
                hint = f"; {lists.no_details['apps']}"
            raise LookupFailed(f"app {value!r} was not found (give its name, bundle identifier or app id){hint}")
        return one_across(
            value,
            "app",
            "app",
            found,
            ident=lambda app: usable_id(get_field(app, "app_id")),
            name=lambda app: (
                f"{key(get_field(app, 'app_name', 'name')) or 'an app'} (app id {usable_id(get_field(app, 'app_id'))})"
            ),
        )

    def plan_row(self, row: JobRow, lists: _Lists) -> Step | Outcome:
        if row.action not in self.actions:
            return failed(row, f"manageengine cannot {row.action}.", reason=Reason.INVALID_ROW)
        device = self._device(row, lists)
        if row.action in GROUP_ACTIONS:
            return self._plan_group_row(row, device, lists)
        return self._plan_app_row(row, device, lists)

    def _link(
        self, row: JobRow, device: Any, what: str, target_id: Any
    ) -> tuple[str, str, tuple[str, str], Outcome | None]:
        """A row that links ``device`` to the ``what`` (group, app) ``target_id``: its label,
        the ids it resolved to, the pair its change is keyed on, and its outcome when another
        row asks the same: the same change twice is sent once; a change and its opposite to
        one pair fail the later row (rows run concurrently, so their order is not kept)."""
        dev_id = get_field(device, "device_id")
        label = f"device {_serial(device) or dev_id}"
        resolved = f"device_id={dev_id}; {what}_id={target_id}"
        pair = (key(dev_id), key(target_id))
        opposite = OPPOSITE[row.action]
        clash = self.changes.once(row, (row.action, *pair), resolved) or self.changes.contradicts(
            row, (opposite, *pair), f"{cap(label)} gets the opposite change ({opposite}) for this {what}", resolved
        )
        return label, resolved, pair, clash

    def _plan_group_row(self, row: JobRow, device: Any, lists: _Lists) -> Step | Outcome:
        group = self._group(row.get("group"), lists)
        dev_id, group_id, gname = get_field(device, "device_id"), get_field(group, "group_id"), _group_name(group)
        label, resolved, pair, clash = self._link(row, device, "group", group_id)
        if clash:
            return clash
        members = lists.members.get(key(group_id))
        if isinstance(members, LookupFailed):
            raise members
        member = members is not None and key(dev_id) in members
        if member == (row.action == "add-to-group"):
            state = "already in" if member else "not in"
            return skipped(row, f"{cap(label)} is {state} group {gname!r}; nothing sent.", resolved)
        self.changes.changing(row, (row.action, *pair))
        params = {"device": dev_id, "group": group_id, "name": gname}
        if row.action == "add-to-group":
            undo = _undo_row("remove-from-group", device, group=gname) if members is not None else None
            return Step(row, row.action, label, params, resolved, (row.action, key(group_id)), undo)
        return Step(
            row,
            row.action,
            label,
            params,
            resolved,
            (row.action, row.index),
            _undo_row("add-to-group", device, group=gname),
        )

    def _plan_app_row(self, row: JobRow, device: Any, lists: _Lists) -> Step | Outcome:
        action = row.action
        app = self._app(row.get("app"), lists)
        dev_id, app_id, aname = (
            get_field(device, "device_id"),
            get_field(app, "app_id"),
            get_field(app, "app_name", "name"),
        )
        label, resolved, pair, clash = self._link(row, device, "app", app_id)
        if clash:
            return clash
        has = lists.device_apps.get(key(dev_id))
        if has is not None:
            if action == "install-app" and has.holds(app, loosely=False):
                return skipped(row, f"{cap(label)} already has {aname!r}; nothing sent.", resolved)
            if action == "remove-app" and not has.holds(app, loosely=True):
                return skipped(row, f"{cap(label)} does not have {aname!r}; nothing sent.", resolved)
        self.changes.changing(row, (action, *pair))
        # Undone only where the device's app list was read: without it, an
        # app installed before the run could be removed by the undo.
        undo = _undo_row(OPPOSITE[action], device, app=key(app_id)) if has is not None else None
        batch = (action, key(app_id)) if action == "install-app" else (action, row.index)
        return Step(row, action, label, {"device": dev_id, "app": app_id, "name": aname}, resolved, batch, undo)

    def _within_budget(self, out: list[Step | Outcome]) -> list[Step | Outcome]:
        """Fail, up front, the rows whose requests would not fit in the day.

        The cost is counted in input order: look-ups already made, one request
        per batch of a shared key, one per other row, plus a reserve for
        retries and split batches. Rows past the budget fail with a note;
        running the report again tomorrow sends them."""
        limit = self.daily_limit
        opens = self._opens_request(out)
        total = sum(opens)
        if limit is None or self.settings.wait_for_quota:  # (a waiting run holds at the budget instead)
            self._needed = self.settings.calls_today + self.client.requests_sent + total
            return out
        lookups = self.client.requests_sent
        earlier = self.settings.calls_today
        room = limit - max(10, limit // 50) - lookups - earlier
        self._needed = earlier + lookups
        #: batch key -> whether its current batch fits
        batch_fits: dict[Any, bool] = {}
        cost = 0
        fits: list[bool] = []
        for item, opening in zip(out, opens, strict=True):
            if not isinstance(item, Step):
                fits.append(True)
                continue
            if opening:
                ok = cost + 1 <= room
                cost += ok
                batch_fits[item.batch_key] = ok
            else:
                ok = batch_fits[item.batch_key]  # rides in a request already counted (or already cut)
            fits.append(ok)
        self._needed += total
        if all(fits):
            return out
        used = f"; earlier runs used {earlier:,} of them today" if earlier else ""
        detail = (
            f"Not sent: this job needs about {total + lookups:,} API calls ({lookups} look-ups included) and "
            f"ManageEngine allows {limit:,} a day (keeping {max(10, limit // 50)} for retries){used}; this row did "
            "not fit. Run the same command tomorrow to continue (BULKMDM_DAILY_LIMIT sets your organisation's "
            "limit)."
        )
        # not-run, not failed: the journal keeps the row pending for the same command tomorrow
        return [
            item
            if ok or not isinstance(item, Step)
            else Outcome(item.index, Status.NOT_RUN, detail, resolved=item.resolved, reason=Reason.QUOTA)
            for item, ok in zip(out, fits, strict=True)
        ]

    def quota_note(self) -> str | None:
        limit = self.daily_limit
        if limit is None:
            return None
        earlier = self.settings.calls_today
        note = (
            f"ManageEngine's daily API budget: {limit:,} calls; earlier runs used {earlier:,} today, this job "
            f"needs about {self._needed - earlier:,}, leaving about {max(0, limit - self._needed):,}."
        )
        if self.settings.wait_for_quota and self._needed > limit:
            days = -(-(self._needed - limit) // limit)  # whole days past today
            note += (
                f" With --wait-for-quota the run holds at midnight when today's calls are used and continues "
                f"(about {days} more day{'s' if days > 1 else ''})."
            )
        return note

    def _opens_request(self, out: Sequence[Step | Outcome]) -> list[bool]:
        """Which planned steps open a request: each batch of a shared key's first, and every other step."""
        size = self.batch_size()
        filled: Counter[Any] = Counter()
        opens: list[bool] = []
        for item in out:
            if not isinstance(item, Step):
                opens.append(False)
                continue
            opens.append(item.action not in BATCHED or filled[item.batch_key] % size == 0)
            if item.action in BATCHED:
                filled[item.batch_key] += 1
        return opens

    # -- export and templates ------------------------------------------------------
    async def inventory(self) -> AsyncIterator[dict[str, str]]:
        """Every current device, one dict per device, page by page as the
        device list pages: ``serial``, ``device_id``, ``name``, ``email``,
        ``user``, ``model``, ``platform`` and ``groups`` (the names of the
        groups it is a member of, ``"; "``-separated), all text. Removed
        (de-enrolled) records are left out. A device list without serial
        numbers (as the doc's example) has them read from each device's
        details while that fits in half the day's remaining API calls (after
        that, serials stay blank). Group memberships take one call
        per group ("Get members present in a group"), made only when they
        fit in a quarter of the day's remaining API calls; otherwise
        ``groups`` is blank. Raises ``TransportError`` when a list cannot be
        read."""
        try:
            groups_of = await self._groups_by_device()
            seen: set[str] = set()
            cursor: str | None = None
            for _page in range(100_000):
                devices, cursor = await self._page(DEVICE_LIST, ("devices",), cursor)
                if devices and not any(_has_serial(d) for d in devices):
                    # the doc's list example has no serial_number, its detail example does
                    devices = await self._with_details(devices, "devices", "device_id", _Lists(), "serial numbers")
                for device in devices:
                    device_id = usable_id(get_field(device, "device_id"))
                    if _is_removed(device) or (device_id and device_id in seen):
                        continue
                    seen.add(device_id)
                    yield _inventory_row(device, groups_of.get(device_id, ()))
                if cursor is None:
                    return
        except ListFailed as exc:
            raise TransportError(exc.detail(), status=exc.resp.status, attempts=exc.resp.attempts) from None

    async def _groups_by_device(self) -> dict[str, list[str]]:
        """device id -> names of its groups (empty when that would not fit in the day)."""
        groups = [g for g in await self._list("groups", ("groups",), "group_id") if usable_id(get_field(g, "group_id"))]
        room = self._room()
        if room is not None and len(groups) > room // 4:
            log.info(
                "ManageEngine: %d groups' members would not fit in the day's API calls; groups left blank", len(groups)
            )
            return {}
        out: dict[str, list[str]] = {}
        for group in groups:
            for member in sorted(await self._members(get_field(group, "group_id"))):
                out.setdefault(member, []).append(_group_name(group))
        return out

    # -- following through ---------------------------------------------------
    async def look(self, rows: Sequence[Tracked]) -> list[Sighting]:
        """The app repository once (to know each app's bundle identifier and
        name), then "Get the list of apps installed on the device" once per
        device of the rows: the doc has no list of many devices' apps, so
        rows on one device share its request, and that is the floor."""
        ids = [resolved_ids(row.resolved) for row in rows]
        repository = {key(get_field(a, "app_id")): a for a in await self._list("apps", ("apps",), "app_id")}
        devices = [d for d in dict.fromkeys(i.get("device_id", "") for i in ids) if d]
        answers = await self._each([f"devices/{seg(d)}/apps" for d in devices], quiet=True)
        on_device = {
            d: _DeviceApps(resp.body)
            for d, resp in zip(devices, answers, strict=True)
            if resp is not None and resp.ok and isinstance(resp.body, Mapping)
        }
        now = time.time()
        out = []
        for row, named in zip(rows, ids, strict=True):
            apps = on_device.get(named.get("device_id", ""))
            app_id = named.get("app_id", "")
            app = repository.get(app_id, {"app_id": app_id})
            if apps is None:
                out.append(Sighting(row.index, None, "The device's app list could not be read in this look."))
            elif row.action == "install-app" and apps.holds(app, loosely=False):
                out.append(Sighting(row.index, now, "The app is among the device's installed apps."))
            elif row.action == "remove-app" and not apps.holds(app, loosely=True):
                out.append(Sighting(row.index, now, "The app is no longer among the device's apps."))
            else:
                out.append(Sighting(row.index, None, "The device has not reported the change yet."))
        return out

    def look_cost(self, rows: Sequence[Tracked]) -> int:
        devices = {resolved_ids(row.resolved).get("device_id", "") for row in rows} - {""}
        return len(devices) + 1

    async def choices(self, column: str) -> list[str]:
        """Names a template offers for ``column``: groups by name (names two
        groups share are left out: a row naming one fails as ambiguous), apps
        by name, or by bundle identifier or app id where the name (and the
        identifier) is shared. ManageEngine has no tags: ``[]``."""
        try:
            if column == "group":
                groups = [
                    g
                    for g in await self._list("groups", ("groups",), "group_id")
                    if usable_id(get_field(g, "group_id"))
                ]
                names = Counter(_group_name(g) for g in groups)
                return sorted((n for n, times in names.items() if n and times == 1), key=str.casefold)
            if column == "app":
                return _app_choices(await self._list("apps", ("apps",), "app_id"))
        except ListFailed as exc:
            raise TransportError(exc.detail(), status=exc.resp.status, attempts=exc.resp.attempts) from None
        return []

    # -- dry run -------------------------------------------------------------------
    async def check(self, steps: Sequence[Step]) -> list[Outcome]:
        many = f" (one request for {len(steps)} rows)" if len(steps) > 1 else ""
        return [
            Outcome(
                step.index,
                Status.PLANNED,
                _done(step, would=True) + many + ".",
                resolved=step.resolved,
                reason=Reason.PLANNED,
            )
            for step in steps
        ]

    # -- sending -------------------------------------------------------------------
    async def send_batch(self, steps: list[Step], context: RequestContext) -> list[Outcome]:
        if steps[0].action in BATCHED:
            return await send_halving(steps, partial(self._send_ids, context=context), _refused_whole)
        return await super().send_batch(steps, context)

    async def _send_ids(self, steps: list[Step], context: RequestContext) -> list[Outcome]:
        """One POST carrying every step's device id: "Add multiple members
        simultaneously to an existing group" / "Associate an existing app to
        multiple devices"."""
        ids = [wire_int(s.params["device"]) for s in steps]
        if steps[0].action == "add-to-group":
            group_id = steps[0].params["group"]
            path, echo = f"groups/{seg(group_id)}/members", "member_ids"
            body: dict[str, Any] = {"member_ids": ids}
            verify: Any = partial(self._members_in_place, group_id, ids)
        else:
            path, echo = f"apps/{seg(steps[0].params['app'])}/devices", "device_ids"
            # silent_install: "Enter 'False' for manual installation from App
            # Catalog" -- a bulk install means install; users are not mailed.
            body = {"device_ids": ids, "silent_install": True, "notify_user_via_email": False}
            verify = None  # installation cannot be read back cheaply; a lost answer is "unknown"
        try:
            # (a read-back is the group's member list, pages of it, from a daily
            # quota: worth it for a lost answer, not for one that is merely slow)
            resp = await self.client.request(
                "POST", self._path(path), json=body, verify=verify, read_back_held=False, context=context
            )
        except TransportError as exc:
            return [outcome_from_error(s, exc) for s in steps]
        if resp.ok:
            return [_echoed(step, resp, echo) for step in steps]
        if resp.status == 409 and len(steps) == 1:
            # The doc's "COM0010 409 Resource Already Exists": the device was
            # already in the group (or the app already associated with it) when
            # the request arrived -- added or installed elsewhere since the
            # look-up, or a device app list that does not show an association
            # yet. The wanted state holds; a batch refused for it is halved
            # (send_halving), so the rows that were not there get sent.
            return [_already(steps[0], resp)]
        if resp.status == 409 and steps[0].action == "add-to-group":
            return await self._resend_without_members(steps, resp, context)
        return [_failed(step, resp) for step in steps]

    async def _members_in_place(self, group_id: Any, ids: list[Any], context: RequestContext) -> bool | None:
        """After a lost answer: did the members arrive? All: done; none: not
        sent; some or unreadable: cannot tell. (The base's read_back reads one
        answer; a group's member list may page.)"""
        try:
            now = await self._members(group_id, context)
        except (TransportError, ListFailed):
            return None
        there = [key(i) in now for i in ids]
        return True if all(there) else False if not any(there) else None

    async def _member_gone(self, group_id: Any, device_id: Any, context: RequestContext) -> bool | None:
        """Whether the device is no longer among the group's members; None: the list cannot be read."""
        try:
            return key(device_id) not in await self._members(group_id, context)
        except (TransportError, ListFailed):
            return None

    async def _resend_without_members(
        self, steps: list[Step], resp: Response, context: RequestContext
    ) -> list[Outcome]:
        """A 409 to an add: which members were already there is one read away
        (halving would cost up to two requests per row); those rows are
        already in state, the others are sent again without them."""
        try:
            now = await self._members(steps[0].params["group"], context)
        except (TransportError, ListFailed):
            return [_failed(step, resp) for step in steps]
        there = [s for s in steps if key(s.params["device"]) in now]
        if not there:
            return [_failed(step, resp) for step in steps]
        rest = [s for s in steps if s not in there]
        done = {s.index: _already(s, resp) for s in there}
        send = partial(self._send_ids, context=context)
        done.update({o.index: o for o in (await send_halving(rest, send, _refused_whole) if rest else [])})
        return [done[s.index] for s in steps]

    async def send(self, step: Step, context: RequestContext) -> Outcome:
        """ "Remove a member from a particular group" / "Disassociate an app
        from a particular device": one DELETE per row."""
        p = step.params
        verify: Any = None
        if step.action == "remove-from-group":
            path = f"groups/{seg(p['group'])}/members/{seg(p['device'])}"
            verify = partial(self._member_gone, p["group"], p["device"])
        else:
            # The API lists no app's devices, and a disassociation shows on
            # the device's app list only after the device checks in: it
            # cannot be read back, so a lost answer leaves the row unknown.
            path = f"apps/{seg(p['app'])}/devices/{seg(p['device'])}"
        # (a read-back is the group's member list, from a daily quota: worth it
        # for a lost answer, not for one that is merely slow)
        resp = await self.client.request(
            "DELETE", self._path(path), verify=verify, read_back_held=False, context=context
        )
        return _succeeded(step, resp) if resp.ok else _failed(step, resp)


class _Lists:
    """What planning reads once per run (kept across chunks)."""

    def __init__(self) -> None:
        empty = Index("x", [], lambda _: None)
        self.device_by_id = self.device_by_serial = self.device_by_serial_folded = empty
        #: records that never match a row, kept to say why: de-enrolled ones, ones without device_id
        self.removed_by_id = self.removed_by_serial = self.no_id_by_serial = empty
        self.serials_known = False
        #: devices the MDM listed
        self.device_count = 0
        self.group_by_name = self.group_by_name_folded = self.groups_without_id = empty
        #: the lists as read (None: not needed yet)
        self.groups: list[Any] | None = None
        self.apps: list[Any] | None = None
        self.members: dict[str, set[str] | LookupFailed] = {}
        self.app_by_name = self.app_by_bundle = self.app_by_id = self.app_names_folded = empty
        self.apps_without_id = empty
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
        self.ids = {key(get_field(e, "app_id")) for e in entries} - {""}
        self.identifiers = {key(get_field(e, "identifier", "bundle_identifier")) for e in entries} - {""}
        self.names = {key(get_field(e, "app_name", "name")).casefold() for e in entries} - {""}

    def holds(self, app: Any, *, loosely: bool) -> bool:
        """Whether ``app`` (from the repository list) is on the device: by app
        id or bundle identifier; ``loosely`` also by name. A device's app
        entry may carry an id of its own, so before a removal is skipped as
        "not there" every way of naming the app must miss."""
        if key(get_field(app, "app_id")) in self.ids:
            return True
        bundle = key(get_field(app, "bundle_identifier", "identifier"))
        if bundle and bundle in self.identifiers:
            return True
        name = key(get_field(app, "app_name", "name")).casefold()
        return loosely and bool(name) and name in self.names


def _error_code(body: Any) -> str:
    """The doc's ``error_code`` of an error body ("" if none)."""
    return key(get_field(body, "error_code")) if isinstance(body, Mapping) else ""


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
    """Why an error answer failed the row, with the doc's error code."""
    detail = explain_status(resp.status, _me_body(resp.body), resp.attempts)
    return detail[:-1] + f"; {resp.note}." if resp.note else detail


def _echoed(step: Step, resp: Response, echo: str) -> Outcome:
    """A 2xx to a POST of ids. The doc's answer echoes the ids
    (``{"member_ids": [...]}`` / ``{"device_ids": [...]}``): an id missing
    from a non-empty echo was not taken. No echo (or an empty one, or a 202)
    says nothing more than the 2xx."""
    confirmed = as_list(resp.body, echo) if isinstance(resp.body, Mapping) and echo in resp.body else None
    if not confirmed or key(step.params["device"]) in {key(i) for i in confirmed}:
        return _succeeded(step, resp)
    return Outcome(
        step.index,
        Status.FAILED,
        f"The MDM answered HTTP {resp.status} but did not list this device "
        f"among the {echo}; check {step.target} and run the report again.",
        resp.status,
        resp.attempts,
        step.resolved,
        reason=Reason.REFUSED,
    )


def _refused_whole(outcomes: list[Outcome]) -> bool:
    """A batch refused as a whole for what may be a few bad ids (a 4xx that
    is not about the account or the request's form): worth halving."""
    return all(
        o.status is Status.FAILED
        and o.http_status is not None
        and 400 <= o.http_status < 500
        and o.http_status not in _NO_SPLIT
        for o in outcomes
    )


#: what a change did, and what a dry run says it would do
_WORDING = {
    "add-to-group": ("{Target} added to group {name!r}.", "Would add {target} to group {name!r}"),
    "remove-from-group": ("{Target} removed from group {name!r}.", "Would remove {target} from group {name!r}"),
    "install-app": ("Installation of {name!r} sent to {target}.", "Would install {name!r} on {target}"),
    "remove-app": ("Removal of {name!r} sent to {target}.", "Would remove {name!r} from {target}"),
}


def _done(step: Step, *, would: bool = False) -> str:
    template = _WORDING[step.action][1 if would else 0]
    return template.format(Target=cap(step.target), target=step.target, name=step.params.get("name"))


def _succeeded(step: Step, resp: Response) -> Outcome:
    problem = not_an_answer(resp.body) if not resp.verified else None
    if problem is not None:
        return unconfirmed(step, resp, problem)
    detail = _done(step)
    if resp.verified:
        detail = detail.rstrip(".") + f" ({READ_BACK_CONFIRMED})."
    return Outcome(
        step.index, Status.SUCCEEDED, detail, resp.status, resp.attempts, step.resolved, reason=done_reason(resp)
    )


def _already(step: Step, resp: Response) -> Outcome:
    """A 409 (COM0010 "Resource Already Exists") to an add: already in state."""
    p = step.params
    if step.action == "add-to-group":
        detail = f"{cap(step.target)} was already in group {p.get('name')!r}"
    else:
        detail = f"{p.get('name')!r} was already associated with {step.target}"
    if resp.attempts > 1:
        # a retried request may have found its own earlier attempt's change
        detail += " when the request was retried (HTTP 409, Resource Already Exists); taken as done."
        return Outcome(
            step.index, Status.SUCCEEDED, detail, resp.status, resp.attempts, step.resolved, reason=Reason.DONE
        )
    detail += " when the request arrived (HTTP 409, Resource Already Exists); nothing changed."
    return Outcome(step.index, Status.SKIPPED, detail, resp.status, resp.attempts, step.resolved, reason=Reason.ALREADY)


def _failed(step: Step, resp: Response) -> Outcome:
    detail = _explain(resp)
    if resp.status in (400, 404) and step.action in BATCHED:
        detail += f" The MDM refused {step.target}; it may have been removed since the look-up."
    return Outcome(
        step.index, Status.FAILED, detail, resp.status, resp.attempts, step.resolved, reason=Reason.of_http(resp.status)
    )


def _serial(device: Any) -> str:
    # the doc writes "--" for a value the MDM does not know; its device
    # details carry serial_number at the top and again under "os"
    value = get_field(device, "serial_number", "serial")
    if value is None:
        value = get_field(get_field(device, "os"), "serial_number", "serial")
    text = "" if value is None else str(value).strip()
    return "" if text == "--" else text


def _inventory_row(device: Any, groups: Sequence[str]) -> dict[str, str]:
    user = get_field(device, "user")
    return {
        "serial": _serial(device),
        "device_id": usable_id(get_field(device, "device_id")),
        "name": key(get_field(device, "device_name", "name")),
        "email": key(get_field(user, "user_email", "email")),
        "user": key(get_field(user, "user_name", "name")),
        "model": key(get_field(device, "model")),
        "platform": key(get_field(device, "platform_type")),
        "groups": "; ".join(groups),
    }


def _app_choices(apps: list[Any]) -> list[str]:
    """Each app once, by the first of name, bundle identifier and app id that
    names it alone."""
    apps = [a for a in apps if usable_id(get_field(a, "app_id"))]

    def name(app: Any) -> str:
        return key(get_field(app, "app_name", "name"))

    def bundle(app: Any) -> str:
        return key(get_field(app, "bundle_identifier", "identifier"))

    names = Counter(name(a) for a in apps)
    bundles = Counter(bundle(a) for a in apps)
    out = set()
    for app in apps:
        if name(app) and names[name(app)] == 1:
            out.add(name(app))
        elif bundle(app) and bundles[bundle(app)] == 1:
            out.add(bundle(app))
        else:
            out.add(usable_id(get_field(app, "app_id")))
    return sorted(out, key=str.casefold)


def _why_no_device(serial: str, lists: _Lists) -> None:
    """Raise why ``serial`` matches no current device record, when a record
    that cannot be acted on holds it (else return: plain "not found")."""
    if lists.removed_by_serial.find(serial):
        raise LookupFailed(
            f"serial {serial!r} belongs only to removed (de-enrolled) device records "
            "(is_removed true); re-enrol the device or check the serial"
        )
    if lists.no_id_by_serial.find(serial):
        raise _found_without_id(f"serial {serial!r}", "device_id")


def _found_without_id(what: str, id_field: str, done: str = "changed") -> LookupFailed:
    """``what`` matches a record the MDM lists without its ``id_field`` (missing or null):
    there is nothing to send the change to."""
    return LookupFailed(
        f"{what} was found, but the MDM's record for it has no {id_field} (missing or null), so it cannot be {done}",
        Reason.BAD_ANSWER,
    )


def _is_removed(device: Any) -> bool:
    """A de-enrolled record: ``"is_removed": true``, or the strings public
    clients compare it with (``d.is_removed === 'true'``)."""
    value = get_field(device, "is_removed")
    return value is True or (isinstance(value, str) and value.strip().casefold() == "true")


def _group_name(group: Any) -> str:
    return key(get_field(group, "name", "group_name"))


def _undo_row(action: str, device: Any, **columns: str) -> dict[str, str]:
    """The job row that puts a device's earlier state back (by device id,
    which a serial shared by two records cannot make ambiguous)."""
    return {"action": action, "device_id": key(get_field(device, "device_id")), "serial": _serial(device), **columns}


def _has_serial(device: Any) -> bool:
    """Whether a device object has a serial number field at all ("--" counts)."""
    return (
        get_field(device, "serial_number", "serial") is not None
        or get_field(get_field(device, "os"), "serial_number", "serial") is not None
    )


def _next_link(body: Any) -> str | None:
    """ManageEngine's ``"paging": {"next": "<url>"}`` (or a bare ``next``)."""
    if not isinstance(body, Mapping):
        return None
    nxt = get_field(get_field(body, "paging"), "next")
    if nxt is None:
        nxt = get_field(body, "next")
    return nxt.strip() if isinstance(nxt, str) and nxt.strip() else None


#: The device list as public clients ask for it: without de-enrolled records.
#: The doc's "Get device list" ("Get List of managed devices") shows neither
#: the parameter nor an is_removed field, but the cloud keeps a re-enrolled
#: device's old record; public clients pass exclude_removed=true and still
#: filter on is_removed (a next link may drop the parameter), as we do.
DEVICE_LIST = "devices?exclude_removed=true"

#: where a members answer holds its list: the doc's key first
MEMBER_KEYS = ("member_ids", "members", "devices")


def _member_id(member: Any) -> str:
    """A member id, or a member object's (``{"device_id": ...}``)."""
    if isinstance(member, Mapping):
        member = get_field(member, "member_id", "device_id", "resource_id")
    return key(member)


def _offset(url: str) -> int:
    """The ``offset`` a page's URL asked for (0 for the first page)."""
    values = parse_qs(urlsplit(url).query).get("offset")
    return (as_int(values[-1]) or 0) if values else 0


def _index_devices(lists: _Lists, devices: list[Any]) -> None:
    # A record with "is_removed" true is a de-enrolled device whose serial a
    # current record may hold again; one without a usable device_id cannot be
    # acted on. Neither ever matches a row; both are kept to say why a row
    # found nothing.
    live = [d for d in devices if not _is_removed(d) and usable_id(get_field(d, "device_id"))]
    removed = [d for d in devices if _is_removed(d)]
    no_id = [d for d in devices if not _is_removed(d) and not usable_id(get_field(d, "device_id"))]
    lists.device_by_id = Index("device", live, lambda d: usable_id(get_field(d, "device_id")))
    lists.device_by_serial = Index("device", live, _serial)
    lists.device_by_serial_folded = Index("device", live, _serial, fold=True)
    lists.removed_by_id = Index("device", removed, lambda d: usable_id(get_field(d, "device_id")))
    lists.removed_by_serial = Index("device", removed, _serial, fold=True)
    lists.no_id_by_serial = Index("device", no_id, _serial, fold=True)
    lists.serials_known = any(_serial(d) for d in devices)
    lists.device_count = len(devices)


def _index_groups(lists: _Lists, groups: list[Any]) -> None:
    usable = [g for g in groups if usable_id(get_field(g, "group_id"))]
    lists.group_by_name = Index("group", usable, _group_name)
    lists.group_by_name_folded = Index("group", usable, _group_name, fold=True)
    lists.groups_without_id = Index("group", [g for g in groups if g not in usable], _group_name)


def _index_apps(lists: _Lists, apps: list[Any]) -> None:
    usable = [a for a in apps if usable_id(get_field(a, "app_id"))]
    lists.app_by_name = Index("app", usable, lambda a: get_field(a, "app_name", "name"))
    lists.app_by_bundle = Index("app", usable, lambda a: get_field(a, "bundle_identifier", "identifier"))
    lists.app_by_id = Index("app", usable, lambda a: usable_id(get_field(a, "app_id")))
    lists.app_names_folded = Index("app", usable, lambda a: get_field(a, "app_name", "name"), fold=True)
    lists.apps_without_id = Index(
        "app",
        [a for a in apps if a not in usable],
        lambda a: (get_field(a, "app_name", "name"), get_field(a, "bundle_identifier", "identifier")),
    )


def _app_matches(row: JobRow, lists: _Lists) -> bool:
    value = row.get("app")
    return bool(lists.app_by_name.find(value) or lists.app_by_id.find(value))
