"""The Provider interface every vendor implements, and the small helpers
they share (exact look-ups, turning answers and errors into Outcomes).

A provider does two things:

* ``plan(rows)``: resolve serials, names and emails to vendor ids from lists
  fetched once per run (read-only requests), and return per row either a
  ``Step`` ready to send or an ``Outcome`` (skipped, failed look-up). With
  ``chunk_rows`` set, the engine calls it on consecutive chunks of the job.
* ``execute(steps)``: send a batch of steps that share a ``batch_key`` and
  return exactly one ``Outcome`` per step, in order. Per-device vendors get
  batches of one (``max_batch = 1``); Ivanti sends id lists in one request.

Failed rows are data: ``execute`` never raises for a vendor or network error
(``AuthError`` excepted: bad credentials stop the run).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import AmbiguousError, AuthError, ConfigError, HTTPStatusError, TransportError
from ..model import JobRow, Outcome, Status, Step
from ..transport import Auth, Client, Response


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """What a provider is told about the run (from flags and environment)."""

    url: str
    env: Mapping[str, str] = field(default_factory=dict)
    partition: str | None = None
    batch_size: int | None = None
    dry_run: bool = False


class Provider(ABC):
    name: ClassVar[str]
    #: the verbs of ``actions.ACTIONS`` this vendor can do
    actions: ClassVar[frozenset[str]]
    #: requests/s when --rate is not given (None: no limit)
    default_rate: ClassVar[float | None] = 10.0
    #: the vendor's documented hard limit (requests/s), if any: without
    #: --rate the adaptive controller never climbs above it
    max_rate: ClassVar[float | None] = None
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

    def __init__(self, client: Client, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    # -- set-up -------------------------------------------------------------
    @classmethod
    @abstractmethod
    def auth_from_env(cls, env: Mapping[str, str]) -> Auth:
        """Credentials from the environment; ``ConfigError`` names what is missing."""

    @classmethod
    def api_base(cls, url: str) -> str:
        """The root the vendor's documented paths are appended to."""
        return url.rstrip("/")

    def batch_size(self) -> int:
        size = self.settings.batch_size or self.max_batch
        return max(1, min(size, self.max_batch))

    # -- the pipeline -------------------------------------------------------
    @abstractmethod
    async def plan(self, rows: Sequence[JobRow]) -> list[Step | Outcome]:
        """One Step (to send) or Outcome (skipped / failed look-up) per row."""

    @abstractmethod
    async def execute(self, steps: Sequence[Step]) -> list[Outcome]:
        """Send one batch; one Outcome per step, in order."""

    async def check(self, steps: Sequence[Step]) -> list[Outcome]:
        """Dry run: would the vendor accept these? Default: yes, as planned."""
        return [planned(step) for step in steps]

    def requests_for(self, step: Step) -> int:
        """How many mutating requests a real run sends for this step (dry-run estimate)."""
        return 1

    async def aclose(self) -> None:
        return None


# -- helpers shared by the vendors ------------------------------------------


def env_required(env: Mapping[str, str], *names: str, provider: str) -> list[str]:
    values = [env.get(n, "") for n in names]
    missing = [n for n, v in zip(names, values) if not v]
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
    if not isinstance(obj, Mapping):
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
    """A value matched nothing, or more than one object; the row fails."""


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
        for obj in objects:
            value = key(obj)
            keys = value if isinstance(value, (list, tuple, set)) else (value,)
            for k in keys:
                norm = self._norm(k)
                if norm:
                    self._by.setdefault(norm, []).append(obj)

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
            raise LookupFailed(f"the {label} is blank")
        found = self._by.get(norm, ())
        if not found:
            raise LookupFailed(f"{label} '{value}' was not found")
        if len(found) > 1:
            raise LookupFailed(f"{label} '{value}' matches {len(found)} {self.what}s; make it unique")
        return found[0]

    def __len__(self) -> int:
        return len(self._by)


def planned(step: Step, detail: str = "") -> Outcome:
    return Outcome(step.index, Status.PLANNED, detail or f"would {step.action} {step.target}", resolved=step.resolved)


def skipped(row: JobRow, detail: str, resolved: str = "") -> Outcome:
    return Outcome(row.index, Status.SKIPPED, detail, resolved=resolved)


def failed(row: JobRow, detail: str, resolved: str = "", http_status: int | None = None, attempts: int = 0) -> Outcome:
    return Outcome(row.index, Status.FAILED, detail, http_status=http_status, attempts=attempts, resolved=resolved)


def body_message(body: Any) -> str:
    """The human part of an error body, if any."""
    if isinstance(body, str):
        text = body.strip()
    elif isinstance(body, Mapping):
        text = ""
        for key in ("message", "error", "errors", "detail", "error_description", "title", "messages"):
            value = get_field(body, key)
            if value:
                if isinstance(value, list):
                    value = "; ".join(
                        str(get_field(v, "message", "description", default=v)) if isinstance(v, Mapping) else str(v)
                        for v in value
                    )
                elif isinstance(value, Mapping):
                    value = get_field(value, "message", "description", default=value)
                text = str(value)
                break
    else:
        text = ""
    text = " ".join(text.split())
    if text.startswith("<"):
        return ""  # an HTML error page says nothing useful in one line
    return text[:200]


def outcome_from_response(step: Step, resp: Response, done: str) -> Outcome:
    """2xx -> succeeded with ``done``; anything else -> failed with the reason."""
    if resp.ok:
        detail = done + (" (confirmed by reading it back after the answer was lost)" if resp.verified else "")
        return Outcome(step.index, Status.SUCCEEDED, detail, resp.status, resp.attempts, step.resolved)
    return Outcome(
        step.index,
        Status.FAILED,
        explain_status(resp.status, resp.body, resp.attempts),
        resp.status,
        resp.attempts,
        step.resolved,
    )


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
    """A request that produced no usable answer."""
    if isinstance(exc, AuthError):
        raise exc
    if isinstance(exc, HTTPStatusError):
        return Outcome(step.index, Status.FAILED, explain_status(exc.status or 0, exc.body, exc.attempts),
                       exc.status, exc.attempts, step.resolved)
    status = Status.UNKNOWN if isinstance(exc, AmbiguousError) else Status.FAILED
    detail = _sentence(str(exc))
    if status is Status.UNKNOWN:
        detail += " Check the device, then run the report again to resend it."
    else:
        detail += " Run the report again to retry."
    return Outcome(step.index, status, detail, exc.status, exc.attempts, step.resolved)


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return "The request failed."
    text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."
