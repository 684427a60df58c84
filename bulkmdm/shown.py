"""Text from a server, made fit to show: no escape sequences, no credentials.

What an MDM (or anything posing as one) writes in an answer is data, never
instructions to the admin's terminal, spreadsheet or browser: :func:`plain`
removes terminal escape sequences (CSI, OSC such as a clipboard write or a
title change, DCS and the other string controls, in their 7-bit and 8-bit
forms), C0 and C1 controls, and the invisible format characters that reorder
or hide text (bidi overrides and isolates, zero-width characters, tags).

A server may also echo the request's credentials in its error text (some
gateways do): :class:`Secrets` knows the run's own (from the environment, and
the ``Authorization`` header its auth sends now, which holds the access
tokens fetched at run time) and replaces them, and their ``Basic``, base64
and URL-encoded forms, by ``[redacted]``.
"""

from __future__ import annotations

import base64
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Protocol
from urllib.parse import quote, quote_plus

from .model import Outcome

REDACTED = "[redacted]"

#: Shorter values are not looked for: replacing every "ab" in a sentence hides
#: the sentence, not a secret (no vendor issues credentials this short).
MIN_SECRET = 4

# ECMA-48: ESC [ or CSI (0x9B), parameters, intermediates, one final byte; the
# string controls OSC, DCS, SOS, PM, APC (ESC ] P X ^ _ or 0x9D 0x90 0x98 0x9E
# 0x9F) up to BEL or ST (ESC \ or 0x9C), or to the end of the text when
# unterminated; any other ESC and the one character after it.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]PX^_]|[\x9d\x90\x98\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b.?",
    re.DOTALL,
)
#: Unicode categories never shown: controls (C0, DEL, C1), format characters
#: (bidi overrides and isolates, zero-width characters, tag characters),
#: lone surrogates (no file can hold them) and private-use characters.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co"})


def plain(text: str, *, keep_lines: bool = False) -> str:
    """``text`` without escape sequences or invisible characters; line breaks
    and tabs become spaces (a detail is one line) unless ``keep_lines``."""
    if text.isprintable():  # (no character of category C: nothing to remove, the usual case)
        return text
    text = _ESCAPES.sub("", text)
    kept = "\t\n" if keep_lines else ""
    return "".join(
        ch if ch in kept else " " if ch in "\t\n\r\v\f" else ch
        for ch in text
        if ch in "\t\n\r\v\f" or unicodedata.category(ch) not in _HIDDEN
    )


class HasHeaders(Protocol):
    def headers(self) -> Mapping[str, str]: ...


class Secrets:
    """The run's own credentials, as a server might echo them back.

    ``auth`` (the run's client's ``Auth``) is asked for its headers each time
    text is cleaned, so an access token fetched or renewed during the run is
    known from the moment it can be sent.
    """

    def __init__(self, values: Iterable[str] = (), *, auth: HasHeaders | None = None) -> None:
        self._auth = auth
        self._auth_seen: dict[str, str] = {}
        self._values: set[str] = set()
        self._forms: list[str] = []
        for value in values:
            self.add(value)

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, auth: HasHeaders | None = None) -> Secrets:
        """The credentials a run reads from ``env`` (every variable a registered provider
        declares secret) and the Basic form of each user:password pair sent as HTTP Basic."""
        from .providers import basic_pairs, secret_variables

        found = cls((env.get(name) or "" for name in secret_variables()), auth=auth)
        for user, password in basic_pairs():
            if env.get(password):
                pair = f"{env.get(user) or ''}:{env[password]}"
                found.add(base64.b64encode(pair.encode()).decode())
        return found

    def add(self, value: str) -> None:
        """Know ``value`` (and its encoded forms) as a secret of this run."""
        value = value.strip()
        if len(value) < MIN_SECRET or value in self._values:
            return
        self._values.add(value)
        forms = {value, quote(value, safe=""), quote_plus(value), base64.b64encode(value.encode()).decode()}
        # longest first, so a secret inside another's form goes with it
        self._forms = sorted({*self._forms, *forms}, key=len, reverse=True)

    def _learn_auth(self) -> None:
        if self._auth is None:
            return
        try:
            headers = self._auth.headers()
        except Exception:  # an auth not ready yet has nothing to hide
            return
        if headers == self._auth_seen:
            return
        self._auth_seen = dict(headers)
        for name, value in headers.items():
            if name.casefold() in ("authorization", "x-api-key", "api-key") and value:
                self.add(value)
                _scheme, _, credential = value.partition(" ")
                if credential:
                    self.add(credential)
                    if _scheme.casefold() == "basic":
                        self._add_basic(credential)

    def _add_basic(self, credential: str) -> None:
        try:
            pair = base64.b64decode(credential, validate=True).decode()
        except ValueError:
            return
        self.add(pair.partition(":")[2])

    def redact(self, text: str) -> str:
        """``text`` with every form of a known secret replaced by ``[redacted]``."""
        self._learn_auth()
        return self._replace(text)

    def _replace(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, REDACTED)
        return text

    def clean(self, text: str) -> str:
        """Server text fit to show: :func:`plain`, then :meth:`redact`."""
        return self.redact(plain(text))

    def outcome(self, outcome: Outcome) -> Outcome:
        """``outcome`` with its detail and resolved object cleaned (itself when already clean)."""
        return self.outcomes((outcome,))[0]

    def outcomes(self, outcomes: Iterable[Outcome]) -> list[Outcome]:
        """Each outcome with its detail and resolved object cleaned (itself when already clean)."""
        self._learn_auth()
        forms = self._forms
        given = list(outcomes)
        # the usual batch: nothing for plain() to take out and no secret in any
        # of its texts, found by one look across all of them (a match that
        # spans two texts only costs the look at each outcome below)
        texts = " ".join([o.detail for o in given] + [o.resolved for o in given])
        if texts.isprintable() and not any(form in texts for form in forms):
            return given
        cleaned = []
        for outcome in given:
            detail, resolved = outcome.detail, outcome.resolved
            if detail.isprintable() and resolved.isprintable():
                # the usual outcome: nothing for plain() to take out, and no
                # secret in either text (one look for each across both: a match
                # that spans the NUL between them only costs the full cleaning)
                both = f"{detail}\0{resolved}"
                if not any(form in both for form in forms):
                    cleaned.append(outcome)
                    continue
            detail, resolved = self._replace(plain(detail)), self._replace(plain(resolved))
            if detail != outcome.detail or resolved != outcome.resolved:
                outcome = replace(outcome, detail=detail, resolved=resolved)
            cleaned.append(outcome)
        return cleaned
