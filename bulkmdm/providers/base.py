"""The Provider interface every vendor implements, and what every vendor shares.

A provider holds only what is vendor-specific, and reads like its API doc
(as httpx's ``AsyncBaseTransport`` is one method and ``aclose``):

* **authenticate**: ``auth_from_env(env)`` builds the :class:`~bulkmdm.client.Auth`
  from the variables named in ``credentials``; ``api_base(url)`` is the root
  the documented paths are appended to.
* **declare what it needs**: ``credential_fields`` (each variable, its label
  on the web form, whether it is secret) and ``credentials`` (the complete
  sets among them), ``extra_settings`` (Ivanti's device space), and
  ``simulator`` (its built-in simulator's ``make_app``). The CLI, profiles,
  keyring, web page and ``bulkmdm sim`` read these, and nothing else names
  a vendor.
* **declare its limits**: ``retry_policy`` (which answers are retried, the
  wait for a 429 without Retry-After), ``default_rate``/``max_rate`` and
  the ``rate_window`` they are counted over, ``default_concurrency``,
  ``max_batch``, ``request_headers``, ``answers_json``.
* **list and page**: ``prepare(rows)`` reads, once per run and kept across
  chunks, whatever ``plan_row`` needs (with :meth:`Provider.read`,
  :func:`collect_pages` and :class:`Index`).
* **resolve a row to a change**: ``plan_row(row, lists)`` returns a
  :class:`~bulkmdm.model.Step` (to send) or an Outcome (skipped: already in the
  wanted state); it raises :class:`LookupFailed` for a value that matches
  nothing or several objects. ``self.changes`` (:class:`Changes`) says which
  rows are the same change, or contradict each other, across the whole run.
* **send**: ``send(step, context)`` for one step, or ``send_batch(steps,
  context)`` for vendors whose requests carry many (``max_batch > 1``; :func:`send_halving` splits
  a batch refused as a whole). ``check(steps)`` is the dry run's read-only
  counterpart.
* **read back**: the ``verify`` callbacks handed to ``client.request`` say
  whether a change whose answer was lost took effect (:func:`read_back`);
  each takes the context its reads carry. Every request of a batch carries
  the batch's ``context`` (``client.request(..., context=context)``).
* **export**: ``inventory()`` yields the fleet as job rows; ``choices(column)``
  names the tags, groups or apps a template may offer.
* **follow through** (``bulkmdm track``): ``follow`` says, per action, whether
  its effect lives in the MDM (:attr:`Follow.MDM`: the run's answer and
  read-back showed it) or on the device (:attr:`Follow.DEVICE`: ``look(rows)``
  asks the MDM, read-only and many devices per request, whether each device
  shows it); an action not named is not trackable (``untrackable(action)``
  says why).

What every vendor needs lives here, once: the plan loop (look-up failures
and unreadable lists become failed rows), the execute loop (every
``TransportError`` becomes an Outcome: a failed row is data; only a
:class:`~bulkmdm.errors.RunStopped` such as ``AuthError`` ends the run),
same-change detection, paged de-duplicated lists, batch halving, and the
small helpers for text and ids.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from abc import ABC
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

from ..actions import would
from ..errors import (
    AmbiguousError,
    BadAnswer,
    ConfigError,
    ConnectError,
    NotSent,
    RedirectRefused,
    RequestTimeout,
    SetupFailed,
    TargetGone,
    TLSFailed,
    TransportError,
)
from ..model import JobRow, Outcome, Reason, Status, Step
from ..quota import tenant
from ..retry import RetryPolicy
from ..client import NO_CONTEXT, Auth, BasicAuth, Client, RequestContext, Response, Verify
from ..shown import plain
from ..words import CHECK_THEN_RESEND, NOT_SENT

T = TypeVar("T")

#: rows planned between two turns of the event loop (a chunk of 10,000 rows
#: planned in one go would hold every answer in flight for ~100 ms; at 100
#: rows a slice, the 1-2 ms each held them read as a server queueing, and a
#: 20,000-row job's requests in flight fell from ~50 to ~22 while its third
#: chunk was planned; at 25, to ~42)
PLAN_SLICE = 25


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """What a provider is told about the run (from flags and environment)."""

    url: str
    env: Mapping[str, str] = field(default_factory=dict)
    partition: str | None = None
    batch_size: int | None = None
    dry_run: bool = False
    #: API calls earlier runs made to this MDM today (for vendors with a daily quota)
    calls_today: int = 0
    #: --wait-for-quota: hold for the daily quota's reset instead of leaving rows not-run
    wait_for_quota: bool = False


class Follow(StrEnum):
    """How ``bulkmdm track`` follows an action the MDM accepted."""

    #: the change lives in the MDM itself (a tag, a user, a group, a ban, an
    #: attribute): the run's accepted answer, read back where it was lost, shows it
    MDM = "mdm"
    #: the device takes it when it next checks in: ``Provider.look`` asks
    DEVICE = "device"


@dataclass(frozen=True, slots=True)
class Tracked:
    """A succeeded row whose effect on the device is being followed."""

    index: int
    action: str
    #: the row's ``resolved_ids`` ("device_id=7; app_id=3"): which objects the change named
    resolved: str
    #: when the change went out (epoch seconds)
    sent_at: float


@dataclass(frozen=True, slots=True)
class Sighting:
    """What one look found for a tracked row."""

    index: int
    #: when the device was seen to show the change (epoch seconds); None: not yet
    seen: float | None
    #: for people: what the MDM says of the device
    detail: str

    @property
    def confirmed(self) -> bool:
        return self.seen is not None


def resolved_ids(resolved: str) -> dict[str, str]:
    """``"device_id=7; app_id=3"`` -> ``{"device_id": "7", "app_id": "3"}``."""
    out = {}
    for part in resolved.split(";"):
        name, sep, value = part.partition("=")
        if sep and name.strip() and value.strip():
            out[name.strip()] = value.strip()
    return out


@dataclass(frozen=True, slots=True)
class Credential:
    """One environment variable a provider reads a credential from."""

    variable: str
    #: what a person calls it, on the web page's form
    label: str
    #: its value is hidden: masked on the form, asked for without echo, redacted from answers
    secret: bool = True


#: the credential fields of a vendor that takes HTTP Basic (the base's ``auth_from_env``), and
#: their one complete set
BASIC_CREDENTIAL_FIELDS = (
    Credential("BULKMDM_USERNAME", "User name", secret=False),
    Credential("BULKMDM_PASSWORD", "Password"),
)
BASIC_CREDENTIALS = (("BULKMDM_USERNAME", "BULKMDM_PASSWORD"),)


@dataclass(frozen=True, slots=True)
class ExtraSetting:
    """A setting a vendor needs besides its address and credentials (Ivanti's device space)."""

    #: the field of :class:`Settings` it fills
    name: str
    #: what a person calls it, on a form
    label: str
    #: an example value, shown as the form field's placeholder
    example: str = ""
    #: the value is a whole number (an id)
    digits: bool = False
    #: the environment variable that gives it when no flag does
    variable: str = ""


class Provider(ABC):
    name: ClassVar[str]
    #: the vendor's name as people write it ("DuoSTATION"), for sentences
    title: ClassVar[str] = ""
    #: the verbs of ``actions.ACTIONS`` this vendor can do
    actions: ClassVar[frozenset[str]]
    #: every environment variable the vendor reads credentials from, in the
    #: order the web page's form shows them (optional ones included)
    credential_fields: ClassVar[tuple[Credential, ...]] = ()
    #: the complete sets among ``credential_fields``: each tuple is one
    #: (ManageEngine: an API key, or an OAuth client)
    credentials: ClassVar[tuple[tuple[str, ...], ...]] = ()
    #: the built-in simulator's app factory, ``"package.module:make_app"``
    #: (its module also has ``client_env``); "" when there is none
    simulator: ClassVar[str] = ""
    #: which answers are retried, how long a 429 waits (see retry.py)
    retry_policy: ClassVar[RetryPolicy] = RetryPolicy()
    #: the vendor answers JSON: a 2xx answer that is not JSON is not an answer
    answers_json: ClassVar[bool] = True
    #: requests/s when --rate is not given (None: no limit)
    default_rate: ClassVar[float | None] = 10.0
    #: the vendor's documented hard limit (requests/s), if any: without
    #: --rate the adaptive controller never climbs above it
    max_rate: ClassVar[float | None] = None
    #: the seconds the vendor counts its limit over (a limit per minute is
    #: kept over a minute's window, not as a steady rate per second)
    rate_window: ClassVar[float] = 1.0
    default_concurrency: ClassVar[int] = 8
    #: the most steps one ``execute`` call may carry
    max_batch: ClassVar[int] = 1
    #: ``plan`` may be called on consecutive chunks of this many rows (lists
    #: fetched on the first call are kept, duplicates are caught across
    #: calls), so a huge job never holds all its Steps at once. None: all
    #: rows in one call.
    chunk_rows: ClassVar[int | None] = None
    #: headers the vendor's doc requires on every request
    request_headers: ClassVar[Mapping[str, str]] = {}
    #: what --url should be, for a set-up error ("the site root, e.g. https://mdm.school.se")
    url_hint: ClassVar[str] = "the MDM's base address"
    #: what else to check when the first look-up is refused
    setup_hint: ClassVar[str] = "the account's API permissions"
    #: action -> how ``bulkmdm track`` follows it; an action not named is not trackable
    follow: ClassVar[Mapping[str, Follow]] = {}
    #: settings the vendor needs besides address and credentials, each required
    extra_settings: ClassVar[tuple[ExtraSetting, ...]] = ()
    #: the documented read-only request :meth:`check_access` sends (path after ``api_path``, query)
    access_check: ClassVar[tuple[str, Mapping[str, Any]]] = ("", {})

    def __init__(self, client: Client, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        #: which rows ask for the same change, across every chunk of the run
        self.changes = Changes()
        #: the vendor's API calls a day (None: no daily quota); the engine holds the run to it (quota.py)
        self.daily_limit: int | None = None

    #: what the vendor's documented paths start with, after --url (``/api/v1``)
    api_path: ClassVar[str] = ""

    # -- set-up -------------------------------------------------------------
    @classmethod
    def auth_from_env(cls, env: Mapping[str, str]) -> Auth:
        """Credentials from the environment; ``ConfigError`` names what is missing.

        Default: HTTP Basic from the (user name, password) variables of ``credentials``."""
        user, password = env_required(env, *cls.credentials[0], provider=cls.name)
        return BasicAuth(user, password)

    @classmethod
    def api_base(cls, url: str) -> str:
        """The root the vendor's documented paths are appended to."""
        return url.rstrip("/") + cls.api_path

    @classmethod
    def quota_tenant(cls, url: str, env: Mapping[str, str]) -> str:
        """Whose daily quota this run's calls spend (the journal's count of them).
        Default: the MDM at ``url``."""
        return tenant(cls.name, url)

    @classmethod
    def daily_limit_for(cls, settings: Settings) -> int | None:
        """The vendor's API calls a day for these settings (None: no daily quota)."""
        return None

    def batch_size(self) -> int:
        size = self.settings.batch_size or self.max_batch
        return max(1, min(size, self.max_batch))

    # -- reading ------------------------------------------------------------
    async def read(self, path: str, *, params: Mapping[str, Any] | None = None) -> Any:
        """GET a documented resource; the body, or :class:`ListFailed` for an error answer."""
        resp = await self.client.request("GET", path, params=params)
        if not resp.ok:
            raise ListFailed(path, resp)
        return resp.body

    async def check_access(self) -> None:
        """One read-only request that needs the credentials and every setting (the web page's
        Connect): returns once the MDM answers it; raises AuthError (credentials refused),
        ListFailed (another error answer) or a TransportError (no usable answer)."""
        path, params = self.access_check
        await self.read(path, params=params or None)

    # -- planning -----------------------------------------------------------
    async def plan(self, rows: Sequence[JobRow]) -> list[Step | Outcome]:
        """One Step (to send) or Outcome (skipped / failed look-up) per row."""
        try:
            lists = await self.prepare(rows)
        except ListFailed as exc:
            self._stop_if_setup_is_wrong(exc)
            return [
                failed(row, exc.detail(), http_status=exc.resp.status, attempts=exc.resp.attempts, reason=exc.code)
                for row in rows
            ]
        except TransportError as exc:
            self._stop_if_setup_is_wrong(exc)
            detail = f"Could not read the MDM's lists: {exc}. Run the job again."
            return [failed(row, detail, attempts=exc.attempts, reason=error_reason(exc)) for row in rows]
        out: list[Step | Outcome] = []
        for number, row in enumerate(rows, start=1):
            try:
                out.append(self.plan_row(row, lists))
            except LookupFailed as exc:
                out.append(failed(row, sentence(str(exc)), reason=exc.code))
            if number % PLAN_SLICE == 0:
                # a later chunk is planned while requests are in flight: let their answers in
                await asyncio.sleep(0)
        return out

    def _stop_if_setup_is_wrong(self, exc: ListFailed | TransportError) -> None:
        """The run's first look-up failed before the MDM ever answered 2xx:
        the URL, the network or the account is wrong for every row, so the
        run stops before sending anything (SetupFailed) instead of failing
        a thousand rows. A busy MDM (429, 5xx) only fails these rows."""
        if self.client.answered_ok:
            return
        where = self.settings.url
        if isinstance(exc, ListFailed):
            status = exc.resp.status
            if status in (404, 405):
                raise SetupFailed(
                    f"The MDM at {where} has no {exc.path} (HTTP {status} on the first look-up); check --url: "
                    f"it should be {self.url_hint}. Nothing was sent."
                )
            if 400 <= status < 500 and status != 429:
                raise SetupFailed(
                    f"The MDM at {where} refused the first look-up ({explain_response(exc.resp)[:-1]}); check "
                    f"--url, {self.setup_hint}. Nothing was sent."
                )
            return
        if isinstance(exc, TLSFailed):
            raise SetupFailed(f"{sentence(str(exc))[:-1]}. Nothing was sent.")
        if isinstance(exc, (ConnectError, RequestTimeout)) and not self.client.answered:
            raise SetupFailed(
                f"Nothing answers at {where}: {exc}; check --url and that the MDM can be reached "
                "from here. Nothing was sent."
            )
        if isinstance(exc, (BadAnswer, RedirectRefused)):
            raise SetupFailed(f"{sentence(str(exc))[:-1]}. Nothing was sent.")

    async def prepare(self, rows: Sequence[JobRow]) -> Any:
        """Read what ``plan_row`` needs for these rows (kept across chunks by the provider)."""
        return None

    def plan_row(self, row: JobRow, lists: Any) -> Step | Outcome:
        """Resolve one row against ``lists``; raise LookupFailed for a value that matches nothing or several."""
        raise NotImplementedError(f"{self.name} plans no rows")

    # -- executing ----------------------------------------------------------
    async def execute(self, steps: Sequence[Step], context: RequestContext = NO_CONTEXT) -> list[Outcome]:
        """Send one batch; one Outcome per step, in order. Never raises for a
        vendor or network error (a ``RunStopped`` ends the run). ``context``
        is the batch's (the scheduler's hooks): every request of the batch
        carries it (``client.request(..., context=context)``), and so do its
        read-backs (``verify(context)``)."""
        try:
            return await self.send_batch(list(steps), context)
        except TransportError as exc:
            return [outcome_from_error(step, exc) for step in steps]

    async def send_batch(self, steps: list[Step], context: RequestContext) -> list[Outcome]:
        """Send steps that share a ``batch_key``. Default: one ``send`` each."""
        out = []
        for step in steps:
            try:
                out.append(await self.send(step, context))
            except TransportError as exc:
                out.append(outcome_from_error(step, exc))
        return out

    async def send(self, step: Step, context: RequestContext) -> Outcome:
        """Send one step and say what came of it."""
        raise NotImplementedError(f"{self.name} sends batches only")

    async def check(self, steps: Sequence[Step]) -> list[Outcome]:
        """Dry run: would the vendor accept these? Default: yes, as planned."""
        return [planned(step) for step in steps]

    def requests_for(self, step: Step) -> int:
        """How many mutating requests a real run sends for this step (dry-run estimate)."""
        return 1

    def quota_note(self) -> str | None:
        """For a vendor with a daily API quota: how much of today's is left (shown after a dry run)."""
        return None

    # -- following through ---------------------------------------------------
    @classmethod
    def untrackable(cls, action: str) -> str:
        """Why ``bulkmdm track`` cannot tell whether a device took ``action``."""
        return f"{cls.title or cls.name}'s API does not show whether a device took {_a(action)}."

    async def look(self, rows: Sequence[Tracked]) -> list[Sighting]:
        """One look, with read-only requests, at whether each device shows its
        row's change (actions of ``follow`` that are :attr:`Follow.DEVICE`);
        one Sighting per row, in order."""
        raise NotImplementedError(f"{self.name} follows no action on the device")

    def look_cost(self, rows: Sequence[Tracked]) -> int:
        """About how many requests one ``look`` at ``rows`` makes (for a daily quota)."""
        return 1

    # -- export -------------------------------------------------------------
    async def inventory(self) -> AsyncIterator[dict[str, str]]:
        """Every device as a job row (canonical column names, text values)."""
        raise NotImplementedError(f"{self.name} cannot export its devices yet")
        yield {}  # pragma: no cover (makes this an async generator)

    async def choices(self, column: str) -> list[str]:
        """The names a template may offer for ``column`` (tag, group, app)."""
        return []

    async def aclose(self) -> None:
        return None


# -- helpers shared by the vendors ------------------------------------------


#: what a device takes, by action, for "... whether a device took a lock"
_TAKEN = {
    "install-app": "an app install",
    "remove-app": "an app removal",
    "inventory": "an inventory request",
    "clear-passcode": "a passcode reset",
    "checkin": "a check-in request",
    "retire": "a retirement",
}


def _a(action: str) -> str:
    """'lock' -> 'a lock', 'install-app' -> 'an app install'."""
    return _TAKEN.get(action) or ("an " if action[:1] in "aeiou" else "a ") + action


def env_required(env: Mapping[str, str], *names: str, provider: str) -> list[str]:
    values = [env.get(n, "") for n in names]
    missing = [n for n, v in zip(names, values, strict=False) if not v]
    if missing:
        raise ConfigError(
            f"{provider} needs {' and '.join(missing)} in the environment; set "
            f"{'them' if len(missing) > 1 else 'it'} and run again."
        )
    return values


def get_field(obj: Any, *names: str, default: Any = None) -> Any:
    """A field of a vendor object, matched ignoring case, ``_`` and ``-``
    (``serialNumber``, ``SerialNumber``, ``serial_number``), trying each name
    in turn. Vendors' docs rarely show the exact spelling of the fields they
    return, so we read them forgivingly."""
    if type(obj) is not dict and not isinstance(obj, Mapping):  # (a JSON object is a dict: no ABC check)
        return default
    for name in names:
        if name in obj:
            return obj[name]
    folded = {_fold(k): v for k, v in obj.items()}
    for name in names:
        value = folded.get(_fold(name))
        if value is not None:
            return value
    return default


def _fold(key: object) -> str:
    return str(key).replace("_", "").replace("-", "").casefold()


def as_list(body: Any, *keys: str) -> list[Any]:
    """A vendor's "array of X": a bare list, or a list under one of ``keys``."""
    if isinstance(body, list):
        return body
    if isinstance(body, Mapping):
        for key in keys:
            value = get_field(body, key)
            if isinstance(value, list):
                return value
            if isinstance(value, Mapping):
                inner = as_list(value, *keys)
                if inner:
                    return inner
    return []


class LookupFailed(Exception):
    """A value matched nothing, or more than one object; the row fails with ``code``
    (NOT_FOUND unless the raise says otherwise: AMBIGUOUS, INVALID_ROW, or why a look-up could not be made)."""

    def __init__(self, message: str, code: Reason = Reason.NOT_FOUND) -> None:
        super().__init__(message)
        self.code = code


class Index:
    """Objects by an exact key, built once per run from a fetched list.

    A blank key never matches; a key held by several objects is ambiguous and
    fails the row instead of acting on all of them.
    """

    def __init__(
        self,
        what: str,
        objects: Iterable[Any],
        key: Callable[[Any], Any],
        *,
        fold: bool = False,
    ) -> None:
        self.what = what
        self.fold = fold
        self._by: dict[str, list[Any]] = {}
        by = self._by
        for obj in objects:
            value = key(obj)
            if type(value) is str:  # (the usual key, made without a call per object: 20,000 devices, twice)
                norm = value.strip()
                if fold:
                    norm = norm.casefold()
                if norm:
                    found = by.get(norm)
                    if found is None:
                        by[norm] = [obj]
                    else:
                        found.append(obj)
                continue
            keys = value if isinstance(value, (list, tuple, set)) else (value,)
            for k in keys:
                norm = self._norm(k)
                held = by.setdefault(norm, []) if norm else None
                # (an object whose two keys are equal, a name that is also its package id, is one match)
                if held is not None and not any(other is obj for other in held):
                    held.append(obj)

    def _norm(self, value: Any) -> str:
        if value is None:
            return ""
        text = str(value).strip()
        return text.casefold() if self.fold else text

    def find(self, value: str) -> list[Any]:
        norm = self._norm(value)
        return list(self._by.get(norm, ())) if norm else []

    def one(self, value: str, label: str | None = None) -> Any:
        label = label or self.what
        norm = self._norm(value)
        if not norm:
            raise LookupFailed(f"the {label} is blank", Reason.INVALID_ROW)
        found = self._by.get(norm, ())
        if not found:
            raise LookupFailed(f"{label} '{value}' was not found")
        if len(found) > 1:
            raise LookupFailed(f"{label} '{value}' matches {len(found)} {self.what}s; make it unique", Reason.AMBIGUOUS)
        return found[0]

    def __len__(self) -> int:
        return len(self._by)


def planned(step: Step, detail: str = "") -> Outcome:
    return Outcome(step.index, Status.PLANNED, detail or would(step), resolved=step.resolved, reason=Reason.PLANNED)


def skipped(row: JobRow, detail: str, resolved: str = "") -> Outcome:
    """Already in the wanted state (or the same change as an earlier line): nothing sent."""
    return Outcome(row.index, Status.SKIPPED, detail, resolved=resolved, reason=Reason.ALREADY)


def failed(
    row: JobRow,
    detail: str,
    resolved: str = "",
    http_status: int | None = None,
    attempts: int = 0,
    *,
    reason: Reason,
) -> Outcome:
    return Outcome(
        row.index, Status.FAILED, detail, http_status=http_status, attempts=attempts, resolved=resolved, reason=reason
    )


#: where vendors put the human part of an error body (Ivanti nests it in globalErrors)
_MESSAGE_KEYS = (
    "message",
    "error",
    "errors",
    "globalErrors",
    "detail",
    "error_description",
    "title",
    "messages",
    "description",
)


#: words by which a 2xx answer's ``Message`` says the request failed
#: (Banyan's update_device answers ``[{"Message": "Success"}]`` when it worked)
FAILURE_WORDS = re.compile(r"\b(error|fail\w*|invalid|not found|unable|denied)\b", re.I)


def failure_in_2xx(body: Any) -> str | None:
    """The reason a 2xx answer's JSON gives for a request that failed, or None.

    Vendors answer a failed change with HTTP 200 in several ways:
    ``{"success": false, "message": ...}``, an ``error``/``errors`` field,
    a non-zero ``error_code`` (Banyan's v2 DELETE doc shows its 500 body
    under the heading "500 Ok"), or a ``Message`` in words of failure. An
    array (Banyan's update_device) is read object by object."""
    for obj in body if isinstance(body, list) else [body]:
        if not isinstance(obj, Mapping):
            continue
        flag = get_field(obj, "success", "succeeded", "ok")
        if flag is False or key(flag).casefold() == "false" or get_field(obj, "error", "errors"):
            return body_message(obj) or "no reason given"
        code = get_field(obj, "error_code")
        if code not in (None, 0, "0", ""):
            return f"error code {code}" + (f": {body_message(obj)}" if body_message(obj) else "")
        message = key(get_field(obj, "Message"))
        if message and FAILURE_WORDS.search(message):
            return message
    return None


def usable_id(value: Any) -> str:
    """An id as text, or "" when there is none to send back (missing, null,
    blank, a bool, a number with a fraction, an object)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return ""
    return str(value).strip()


async def gather_bounded(jobs: Iterable[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run ``jobs`` at most ``limit`` at a time (the rate limiter still paces
    each request); their results in order. The first error stops the rest:
    a stopped run, or a look-up that failed, leaves nothing running behind."""
    gate = asyncio.Semaphore(max(1, limit))

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await job()

    tasks = [asyncio.ensure_future(one(job)) for job in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def body_message(body: Any) -> str:
    """The human part of an error body, if any (one line, at most 200 characters)."""
    text = " ".join(plain(_message_in(body, depth=0)).split())
    if text.startswith("<"):
        return ""  # an HTML error page says nothing useful in one line
    return text[:200]


def _message_in(value: Any, *, depth: int) -> str:
    if depth > 4 or value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return "; ".join(filter(None, (_message_in(item, depth=depth + 1) for item in value[:5])))
    if isinstance(value, Mapping):
        for name in _MESSAGE_KEYS:
            found = _message_in(get_field(value, name), depth=depth + 1)
            if found:
                return found
        return ""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


#: How a row's detail says that its change was confirmed by a read-back (``Response.verified``).
READ_BACK_CONFIRMED = "confirmed by reading it back: the answer was lost or held up"


def not_an_answer(body: Any) -> str | None:
    """Why a 2xx body to a change is no vendor's answer, or None. No vendor
    answers a change with an array that holds arrays or nulls; such a body
    (a proxy's, a server's bug) confirms nothing."""
    if isinstance(body, list) and any(item is None or isinstance(item, list) for item in body):
        return "an array holding arrays or nulls"
    return None


def unconfirmed(step: Step, resp: Response, problem: str) -> Outcome:
    """A change answered 2xx with a body that is not the vendor's answer:
    it may or may not have been made, so it is neither done nor resent."""
    detail = (
        f"The MDM answered HTTP {resp.status} with {problem}, not its answer, so the change is not "
        f"confirmed; check {step.target}, then run the report again."
    )
    return Outcome(
        step.index, Status.UNKNOWN, detail, resp.status, resp.attempts, step.resolved, reason=Reason.BAD_ANSWER
    )


def outcome_from_response(step: Step, resp: Response, done: str) -> Outcome:
    """2xx -> succeeded with ``done`` (unknown when the body is no answer);
    anything else -> failed with the reason."""
    problem = not_an_answer(resp.body) if resp.ok and not resp.verified else None
    if problem is not None:
        return unconfirmed(step, resp, problem)
    if resp.ok:
        detail = f"{done.rstrip('.')} ({READ_BACK_CONFIRMED})." if resp.verified else done
        return Outcome(
            step.index, Status.SUCCEEDED, detail, resp.status, resp.attempts, step.resolved, reason=done_reason(resp)
        )
    return Outcome(
        step.index,
        Status.FAILED,
        explain_response(resp),
        resp.status,
        resp.attempts,
        step.resolved,
        reason=Reason.of_http(resp.status),
    )


def done_reason(resp: Response) -> Reason:
    """How a change the MDM made is known: its answer, or a read-back (``Response.verified``)."""
    return Reason.READ_BACK if resp.verified else Reason.DONE


def explain_response(resp: Response) -> str:
    """Why an error answer failed the row, in one sentence."""
    detail = explain_status(resp.status, resp.body, resp.attempts)
    return detail[:-1] + f"; {resp.note}." if resp.note else detail


def explain_status(status: int, body: Any, attempts: int) -> str:
    reason = body_message(body)
    hint = {
        400: "the MDM rejected the request as malformed",
        403: "the account is not allowed to do this; check its API permissions",
        404: "the MDM says the object does not exist (deleted since the look-up?)",
        409: "the MDM reports a conflict with the object's current state",
        429: "the MDM kept answering 'too many requests'; run the report again later or lower --rate",
        500: "the MDM had an internal error",
        502: "the MDM's gateway failed; run the report again later",
        503: "the MDM was unavailable; run the report again later",
        504: "the MDM's gateway timed out; run the report again later",
    }.get(status, "the MDM refused the request")
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return f"HTTP {status}{tries}: {hint}" + (f" ({reason})" if reason else "") + "."


def outcome_from_error(step: Step, exc: TransportError) -> Outcome:
    """A request that produced no usable answer, as the row's Outcome (never raises)."""
    if isinstance(exc, NotSent):
        return Outcome(
            step.index,
            Status.NOT_RUN,
            NOT_SENT,
            None,
            exc.attempts,
            step.resolved,
            reason=Reason.NOT_SENT,
        )
    detail = sentence(plain(str(exc)), empty="The request failed")
    if isinstance(exc, AmbiguousError):
        return Outcome(
            step.index,
            Status.UNKNOWN,
            f"{detail} {CHECK_THEN_RESEND}",
            exc.status,
            exc.attempts,
            step.resolved,
            reason=Reason.NO_ANSWER,
        )
    # (an object gone stays gone: running the report again cannot help)
    remedy = "" if isinstance(exc, TargetGone) else " Run the report again to retry."
    return Outcome(
        step.index,
        Status.FAILED,
        detail + remedy,
        exc.status,
        exc.attempts,
        step.resolved,
        reason=error_reason(exc),
    )


def error_reason(exc: TransportError) -> Reason:
    """The reason a request without a usable answer gives its row."""
    if isinstance(exc, NotSent):
        return Reason.NOT_SENT
    if isinstance(exc, AmbiguousError):
        return Reason.NO_ANSWER
    if isinstance(exc, (BadAnswer, RedirectRefused)):
        return Reason.BAD_ANSWER
    if exc.status is not None:
        return Reason.of_http(exc.status)
    return Reason.UNAVAILABLE


# -- text and ids ------------------------------------------------------------


def cap(text: str) -> str:
    """``text`` with its first letter upper-case."""
    return text[:1].upper() + text[1:]


def sentence(text: str, *, empty: str = "Look-up failed") -> str:
    """``text`` as a sentence: capitalised, ending in a full stop."""
    text = cap(text.strip()) or empty
    return text if text.endswith((".", "?", "!")) else text + "."


#: an id quote() leaves as it is (ASCII letters, digits and "-._~": a GUID, a number)
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9\-._~]*")


def seg(value: Any) -> str:
    """An id as one URL path segment (nothing in it can add a path or a query)."""
    text = key(value)
    # most ids are what quote() leaves as it is: asked only of the others
    return text if _PLAIN_SEGMENT.fullmatch(text) else quote(text, safe="")


def key(value: Any) -> str:
    """An id or name as comparable text ('' for None)."""
    return "" if value is None else str(value).strip()


def fkey(value: Any) -> str:
    """Like :func:`key`, ignoring case (GUIDs, e-mail addresses)."""
    return key(value).casefold()


def wire_int(value: Any) -> Any:
    """An id the doc types as an integer, sent as a JSON number even if a list
    gave it as a digit string (Python's int keeps every digit past 2**53)."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return value


def as_int(value: Any) -> int | None:
    """A number the vendor may give as text; None if it is none."""
    if isinstance(value, bool):
        return None
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def one_of(found: Sequence[Any], value: str, label: str, what: str) -> Any:
    """The one object found for ``value``: blank, none and several fail the row."""
    if not key(value):
        raise LookupFailed(f"the {label} is blank", Reason.INVALID_ROW)
    if not found:
        raise LookupFailed(f"{label} '{value}' was not found")
    if len(found) > 1:
        raise LookupFailed(f"{label} '{value}' matches {len(found)} {what}s; make it unique", Reason.AMBIGUOUS)
    return found[0]


def one_across(
    value: str,
    label: str,
    what: str,
    found: Sequence[tuple[str, Sequence[Any]]],
    *,
    ident: Callable[[Any], Any],
    name: Callable[[Any], str],
) -> Any:
    """The one object ``value`` names in any of the fields a vendor searches.

    ``found`` holds, per field (``"email"``, ``"account name"``), the objects
    whose field holds ``value``. One object found by several fields is one
    match; different objects (one by e-mail, another by account name) are
    ambiguous however each field alone would resolve, and the row fails
    naming them. Objects are the same when their ``ident`` is.
    """
    if not key(value):
        raise LookupFailed(f"the {label} is blank", Reason.INVALID_ROW)
    matches: dict[str, tuple[Any, list[str]]] = {}
    for field_name, objects in found:
        for obj in objects:
            ident_key = key(ident(obj)) or f"#{id(obj)}"
            fields = matches.setdefault(ident_key, (obj, []))[1]
            if field_name not in fields:
                fields.append(field_name)
    if not matches:
        raise LookupFailed(f"{label} '{value}' was not found")
    if len(matches) == 1:
        return next(iter(matches.values()))[0]
    named = "; ".join(f"{name(obj)} by {' and '.join(fields)}" for obj, fields in list(matches.values())[:5])
    raise LookupFailed(f"{label} '{value}' matches {len(matches)} {what}s ({named}); make it unique", Reason.AMBIGUOUS)


# -- lists -------------------------------------------------------------------


class ListFailed(Exception):
    """A list or object the plan needs could not be read (an error answer)."""

    def __init__(self, path: str, resp: Response) -> None:
        super().__init__(path)
        self.path = path.partition("?")[0]
        self.resp = resp

    def detail(self) -> str:
        return f"Could not read the MDM's {self.path} list: {explain_response(self.resp)}"

    @property
    def code(self) -> Reason:
        """The reason code of the rows the plan fails for it."""
        # a list that cannot be read says nothing about the row's own object, even as a 404
        return Reason.REFUSED if self.resp.status == 404 else Reason.of_http(self.resp.status)


#: One page: its items and the cursor of the next page (None: the last).
Page = tuple[list[Any], Any]


async def iter_pages(
    fetch: Callable[[Any], Awaitable[Page]],
    *,
    ident: Callable[[Any], Any],
    max_pages: int = 100_000,
) -> AsyncIterator[Any]:
    """Every item of a paged list, each once, page by page (an export streams).

    ``fetch(cursor)`` returns one page and the next cursor (``fetch(None)``
    the first page). Items whose ``ident`` was seen on an earlier page are
    yielded once, so a repeated or overlapping page cannot make a serial look
    ambiguous; a page that adds nothing new, or a cursor seen before, ends
    the list (a server that ignores the paging parameters would loop).
    Items without an ident are kept (an :class:`Index` never matches them).
    """
    seen_ids: set[str] = set()
    seen_cursors: set[str] = set()
    cursor: Any = None
    for _page in range(max_pages):
        page, cursor = await fetch(cursor)
        fresh = 0
        for item in page:
            item_id = key(ident(item))
            if item_id and item_id in seen_ids:
                continue
            if item_id:
                seen_ids.add(item_id)
            fresh += 1
            yield item
        if cursor is None or not fresh or repr(cursor) in seen_cursors:
            return
        seen_cursors.add(repr(cursor))


async def collect_pages(
    fetch: Callable[[Any], Awaitable[Page]],
    *,
    ident: Callable[[Any], Any],
    max_pages: int = 100_000,
) -> list[Any]:
    """Every item of a paged list, each once, as one list (see :func:`iter_pages`)."""
    return [item async for item in iter_pages(fetch, ident=ident, max_pages=max_pages)]


# -- same change, contradictions ---------------------------------------------


class Changes:
    """Which rows of a run ask for the same change, or contradict each other.

    Keys are tuples the provider builds from resolved ids (``("tag",
    device_id, tag_id)``); they are kept for the whole run as 16-byte
    digests, so a million distinct messages do not hold ~150 MB here.
    """

    def __init__(self) -> None:
        self._lines: dict[bytes, int] = {}

    #: an empty 16-byte BLAKE2b: each digest starts from a copy (the constructor parses its options each call)
    _EMPTY = hashlib.blake2b(digest_size=16)

    @classmethod
    def _digest(cls, change: Iterable[Any]) -> bytes:
        digest = cls._EMPTY.copy()
        digest.update("\x1f".join(map(str, change)).encode())
        return digest.digest()

    def once(self, row: JobRow, change: Sequence[Any], resolved: str = "") -> Outcome | None:
        """Two rows asking for the same change: the later one is skipped, not sent again."""
        digest = self._digest(("same", *change))
        line = self._lines.setdefault(digest, row.line)
        if line != row.line:
            return skipped(row, f"Same change as line {line}; sent once.", resolved)
        return None

    def only_one(self, row: JobRow, subject: Sequence[Any], clash: str, resolved: str = "") -> Outcome | None:
        """One change per ``subject`` per job (a device gets one user): a later row fails.

        ``clash`` completes "... on line N", e.g. "Device X is also assigned".
        """
        digest = self._digest(("only", *subject))
        line = self._lines.setdefault(digest, row.line)
        if line != row.line:
            return failed(
                row, f"{clash} on line {line}; give it one change per job.", resolved, reason=Reason.INVALID_ROW
            )
        return None

    def changing(self, row: JobRow, change: Sequence[Any]) -> None:
        """Record that ``row`` sends ``change`` (an earlier skipped row changed nothing)."""
        self._lines.setdefault(self._digest(("sent", *change)), row.line)

    def contradicts(self, row: JobRow, opposite: Sequence[Any], clash: str, resolved: str = "") -> Outcome | None:
        """The row undoes a change an earlier row sends (tag, then untag of the pair).

        Every row is planned against the state before the run, so the later
        row would be judged on a state the earlier one changes: it fails and
        names the line. ``clash`` completes "... on line N".
        """
        line = self._lines.get(self._digest(("sent", *opposite)))
        if line is not None and line != row.line:
            return failed(
                row, f"{clash} on line {line}; give each pair one change per job.", resolved, reason=Reason.INVALID_ROW
            )
        return None


# -- batches and read-backs --------------------------------------------------


async def send_halving(
    steps: list[Step],
    send: Callable[[list[Step]], Awaitable[list[Outcome]]],
    refused_whole: Callable[[list[Outcome]], bool],
) -> list[Outcome]:
    """Send a batch; one refused as a whole (most likely for a few bad ids) is
    halved and each half sent again, until the bad rows stand alone, so one
    bad device does not fail the other 99 (about 2*log2(n) extra requests per
    bad id at most)."""
    outcomes = await send(steps)
    if len(steps) < 2 or not refused_whole(outcomes):
        return outcomes
    half = len(steps) // 2
    return await send_halving(steps[:half], send, refused_whole) + await send_halving(steps[half:], send, refused_whole)


def read_back(
    fetch: Callable[[RequestContext], Awaitable[Response]],
    applied: Callable[[Any], bool | None],
    *,
    missing: str = "",
) -> Verify:
    """A ``verify`` callback for ``client.request``: read the object again
    (``fetch(context)``, its request carrying the context it is given) and
    say whether the change is in place (``applied(body)``); None when the
    read fails or cannot tell, so the request is not resent blindly.

    With ``missing`` (the object, as a row names it: "device X"), a 404 to
    the read of the object the change is made on proves it gone: the change
    cannot be in place, and :class:`TargetGone` ends the request (the row
    fails, not-found) rather than leaving it in doubt or sending it again."""

    async def verify(context: RequestContext) -> bool | None:
        try:
            resp = await fetch(context)
        except TransportError:
            return None
        if missing and resp.status == 404:
            raise TargetGone(
                f"{cap(missing)} no longer exists: reading it back, the MDM answers HTTP 404 "
                "(deleted since the look-up?); nothing was sent again.",
                attempts=resp.attempts,
                status=404,
            )
        return applied(resp.body) if resp.ok else None

    return verify
