"""What a run tells the person running it: the ``Events`` the CLI implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from .model import Outcome


class Events(Protocol):
    """What the engine tells the person running it (the CLI implements this)."""

    def message(self, text: str) -> None: ...
    def start(self, total: int, done: int, counts: Mapping[str, int] | None = None) -> None:
        """``total`` rows, ``done`` of them already finished (``counts``: their statuses)."""
        ...

    def advance(self, outcomes: Sequence[Outcome]) -> None: ...
    def finish(self) -> None: ...
    def can_ask(self) -> bool:
        """Whether there is a terminal to ask on."""
        ...

    def confirm(self, prompt: str, expected: str) -> bool:
        """Ask the person to type ``expected``; True if they did."""
        ...


class QuietEvents:
    """Events that say nothing and cannot ask (tests, library use)."""

    def message(self, text: str) -> None:
        pass

    def start(self, total: int, done: int, counts: Mapping[str, int] | None = None) -> None:
        pass

    def advance(self, outcomes: Sequence[Outcome]) -> None:
        pass

    def finish(self) -> None:
        pass

    def can_ask(self) -> bool:
        return False

    def confirm(self, prompt: str, expected: str) -> bool:
        return False
