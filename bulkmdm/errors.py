"""The one error tree of bulkmdm.

Every error bulkmdm raises on purpose derives from :class:`BulkMDMError`; the
CLI catches only that root and prints its message (one sentence with the
remedy). aiohttp exceptions are translated once, in ``transport.py``.

    BulkMDMError                    anything we expect and can explain
    ├── UsageError                  bad flags, bad --rate, unknown provider      (exit 2)
    ├── JobFileError                unreadable / empty / wrong-format job file   (exit 2)
    ├── ConfigError                 missing credentials, URL, partition          (exit 2)
    ├── ConfirmationRefused         destructive job not confirmed                (exit 2)
    ├── JournalError                state database unusable                      (exit 2)
    ├── ReportError                 rows ran but the report could not be written (exit 1)
    └── TransportError              a request did not produce a usable answer
        ├── AuthError               the MDM refused the credentials (401/403)   (exit 2)
        ├── ConnectError            could not connect / connection dropped
        ├── RequestTimeout          no answer within --timeout
        ├── AmbiguousError          the request may have been applied; not resent
        └── HTTPStatusError         a final non-2xx answer (carries status, body)

A failed *row* is never an exception past the provider: providers turn
TransportError into an ``Outcome`` (see ``providers/base.py``).
"""

from __future__ import annotations

from typing import Any


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


class TransportError(BulkMDMError):
    """A request did not produce a usable answer."""

    def __init__(self, message: str, *, attempts: int = 0, status: int | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status = status


class AuthError(TransportError):
    """The MDM refused the credentials."""


class ConnectError(TransportError):
    """The MDM could not be reached, or dropped the connection."""


class RequestTimeout(TransportError):
    """The MDM did not answer within the timeout."""


class AmbiguousError(TransportError):
    """The request may have reached the MDM; its effect is not known."""


class HTTPStatusError(TransportError):
    """The MDM gave a final non-2xx answer."""

    def __init__(self, message: str, *, status: int, body: Any = None, attempts: int = 0) -> None:
        super().__init__(message, attempts=attempts, status=status)
        self.body = body
