"""``--json``: what a command tells a script, as JSON lines on stdout.

Any command can use it (``run`` and ``export`` do): people's messages go to
stderr as always, and stdout carries one JSON object per line, each with an
``event`` naming what it is:

- ``start``: ``total`` rows, ``done`` of them finished before sending began,
  their ``counts`` (``run``)
- ``progress``: ``done`` so far (rows of ``total`` with their ``counts`` and
  ``rate`` per second for ``run``; devices for ``export``); at most one every
  few seconds, as the plain progress line
- ``summary``: always the last line: ``counts`` (``run``: every status ->
  rows, zeros included; ``export``: ``exported`` -> devices), ``report`` (the
  file written, or null), ``undo`` (path or null), ``exit`` (the exit code the
  command ends with), ``command``, and what the command adds. A command that
  fails (bad usage, an MDM that cannot be reached, Ctrl-C before its end)
  still ends with one, with ``error`` (the sentence a person sees) and
  ``counts`` empty: the CLI's group writes it (``bulkmdm.cli._json_failed``).

A consumer reads the last line for the outcome and may ignore events it does
not know: events and fields are only ever added.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from .events import Events
from .model import Outcome
from .words import STATUS_ORDER

#: seconds between two progress lines, as the plain progress line
PROGRESS_EVERY = 5.0


def all_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """Every status -> rows (zeros included, in :data:`STATUS_ORDER`), then any other key."""
    out = {status: int(counts.get(status, 0)) for status in STATUS_ORDER}
    out.update({str(k): int(n) for k, n in counts.items() if k not in out})
    return out


class JsonLines:
    """Writes one JSON object per line to ``out`` (stdout), flushed at once so that a
    script reading the pipe sees each event when it happens."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.summarised = False

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}, ensure_ascii=False, default=_plain)
        self.out.write(line + "\n")
        self.out.flush()

    def summary(
        self,
        *,
        counts: Mapping[str, int],
        report: Path | str | None,
        undo: Path | str | None,
        exit: int,  # noqa: A002 (the field's name in the contract)
        **more: Any,
    ) -> None:
        """The last line: written once, whatever else the command says after. ``counts``
        as the command counts (``run``: :func:`all_counts` of the rows' statuses)."""
        if self.summarised:
            return
        self.summarised = True
        self.write(
            "summary",
            counts=dict(counts),
            report=None if report is None else str(report),
            undo=None if undo is None else str(undo),
            exit=exit,
            **more,
        )


def _plain(value: Any) -> Any:
    """What json cannot write by itself: paths as text, sets as sorted lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


class JsonProgress:
    """Events for ``run --json``: everything goes on to ``inner`` (the terminal bar or
    the plain lines on stderr), and ``start``/``progress`` go to stdout as JSON lines."""

    def __init__(self, inner: Events, lines: JsonLines, *, every: float = PROGRESS_EVERY) -> None:
        self.inner = inner
        self.lines = lines
        self.every = every
        self.total = 0
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self.last = self.started
        self.done_before = 0

    def message(self, text: str) -> None:
        self.inner.message(text)

    def start(self, total: int, done: int, counts: Mapping[str, int] | None = None) -> None:
        self.inner.start(total, done, counts)
        self.total, self.done_before = total, done
        self.counts = Counter({k: n for k, n in (counts or {}).items() if k in STATUS_ORDER and n})
        self.started = self.last = time.monotonic()
        self.lines.write("start", total=total, done=done, counts=all_counts(self.counts))

    def advance(self, outcomes: Sequence[Outcome]) -> None:
        self.inner.advance(outcomes)
        for outcome in outcomes:
            self.counts[str(outcome.status)] += 1
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.progress(now)

    def progress(self, now: float) -> None:
        done = sum(self.counts.values())
        elapsed = now - self.started
        rate = (done - self.done_before) / elapsed if elapsed > 0 else 0.0
        self.lines.write(
            "progress", done=done, total=self.total, counts=all_counts(self.counts), rate=round(max(rate, 0.0), 2)
        )

    def finish(self) -> None:
        self.inner.finish()

    def can_ask(self) -> bool:
        return self.inner.can_ask()

    def confirm(self, prompt: str, expected: str) -> bool:
        return self.inner.confirm(prompt, expected)
