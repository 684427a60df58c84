"""What one request comes to: a :class:`Response` (an HTTP answer from the
MDM), or, for one attempt, a :class:`Failure` (no usable answer)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import TransportError


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)
    attempts: int = 1
    #: True when the answer was not received but a read-back showed the change
    #: in place (see ``verify`` in ``Client.request``).
    verified: bool = False
    #: why the attempts ended before the policy's last one (e.g. a Retry-After over the cap)
    note: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class Failure:
    """An attempt that got no usable answer."""

    error: TransportError
    #: the request may have reached the server
    ambiguous: bool
    #: trying again cannot help (the same server fails the same way)
    final: bool = False
