"""The one error tree of bulkmdm.

Every error bulkmdm raises on purpose derives from :class:`BulkMDMError`; the
CLI catches only that root and prints its message (one sentence with the
remedy). aiohttp exceptions are translated once, in ``transport.py``.

The tree says what each error stops: a :class:`RunStopped` ends the whole run
(rows not yet sent stay ``not-run``); a :class:`TransportError` is the answer
of one request and fails one row (providers turn it into an ``Outcome``).
Both come of requests, and say how many attempts were made and the last
answer's HTTP status (their shared base, ``_AboutRequests``, is never caught).

    BulkMDMError                    anything we expect and can explain
    ├── UsageError                  bad flags, bad --rate, unknown provider      (exit 2)
    ├── JobFileError                unreadable / empty / wrong-format job file   (exit 2)
    ├── ConfigError                 missing credentials, URL, partition          (exit 2)
    ├── ConfirmationRefused         destructive job not confirmed                (exit 2)
    ├── JournalError                state database unusable                      (exit 2)
    ├── ReportError                 rows ran but the report could not be written (exit 1)
    ├── RunStopped                  the run cannot go on; unsent rows are not-run
    │   ├── AuthError               the MDM refused the credentials              (exit 2 if nothing ran)
    │   ├── SetupFailed             nothing answers, or not as the MDM: wrong URL, TLS, device space (exit 2)
    │   └── QuotaExhausted          the MDM's API quota is spent for now         (exit 1)
    └── TransportError              one request produced no usable answer: the row fails
        ├── ConnectError            could not connect (nothing was sent)
        │   ├── TLSFailed           the TLS handshake failed (http vs https, certificate)
        │   └── ConnectionDropped   the connection dropped after the request went out
        ├── RequestTimeout          no answer within --timeout
        ├── AmbiguousError          the request may have been applied; not resent
        ├── TargetGone              a change's read-back found its object gone (HTTP 404)
        ├── BadAnswer               an answer that is not the vendor's (HTML for JSON, too big, too deep)
        ├── RedirectRefused         a redirect that was not followed (another origin, or a change)
        └── NotSent                 the run was stopping; the request never went out
"""

from __future__ import annotations


class BulkMDMError(Exception):
    """Root of every error bulkmdm raises on purpose."""

    exit_code = 2


class UsageError(BulkMDMError):
    """The command line asks for something that cannot work."""


class JobFileError(BulkMDMError):
    """The job file cannot be read as a job."""


class ConfigError(BulkMDMError):
    """Credentials, URL or other settings are missing or wrong."""


class ConfirmationRefused(BulkMDMError):
    """A destructive job was not confirmed."""


class JournalError(BulkMDMError):
    """The state database cannot be used."""


class ReportError(BulkMDMError):
    """Rows ran, but the report could not be written (the journal has them)."""

    exit_code = 1


class _AboutRequests(BulkMDMError):
    """An error that came of requests to the MDM: how many attempts were made, and the
    HTTP status of the last answer (None: no answer). Not caught as such: see its two
    branches, :class:`RunStopped` and :class:`TransportError`."""

    def __init__(self, message: str, *, attempts: int = 0, status: int | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status = status


class RunStopped(_AboutRequests):
    """The run cannot go on: no further request is sent."""


class AuthError(RunStopped):
    """The MDM refused the credentials."""


class SetupFailed(RunStopped):
    """The first look-up shows the set-up is wrong: nothing answers, or not as the MDM does."""


class QuotaExhausted(RunStopped):
    """The MDM's API quota (e.g. calls per day) is spent."""

    exit_code = 1


class TokenUnavailable(RunStopped):
    """The OAuth token endpoint gives no access token (failing or unreachable): no request can go."""


class Unreachable(RunStopped):
    """The MDM answered earlier in the run, and now connection after connection to it fails."""

    exit_code = 1


class TransportError(_AboutRequests):
    """A request did not produce a usable answer."""


class ConnectError(TransportError):
    """The MDM could not be reached, or dropped the connection."""


class TLSFailed(ConnectError):
    """The TLS handshake with the MDM failed."""


class ConnectionDropped(ConnectError):
    """The connection dropped once the request was sent: it may have reached the MDM."""


class RequestTimeout(TransportError):
    """The MDM did not answer within the timeout."""


class AmbiguousError(TransportError):
    """The request may have reached the MDM; its effect is not known."""


class TargetGone(TransportError):
    """Reading a change back, the MDM answers 404 for the object it changes:
    that object no longer exists, so the change cannot be in place, and is
    not sent again."""


class BadAnswer(TransportError):
    """The answer is not one the vendor sends (HTML for JSON, too big, too deep)."""


class RedirectRefused(TransportError):
    """The MDM redirected us somewhere bulkmdm does not follow."""


class NotSent(TransportError):
    """The run was stopping, so the request was never sent."""
