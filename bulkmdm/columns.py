"""Header normalisation: which input column means which canonical column.

Names match case-insensitively, ignoring spaces, ``_`` and ``-``
("Serial Number", "serial_number", "SerialNumber" are one column). Swedish
names are accepted too, since DuoSTATION's admins often write them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: canonical column -> the names that mean it (canonical name included).
ALIASES: dict[str, tuple[str, ...]] = {
    "action": ("action", "operation", "command", "verb", "åtgärd"),
    "serial": ("serial", "serial number", "serialno", "serial no", "sn", "serial num", "serienummer"),
    "device_id": ("device_id", "deviceid", "device guid", "guid", "device uuid", "udid"),
    "email": ("email", "email address", "mail", "e-mail", "user email", "e-mail address", "e-post", "epost"),
    "user": ("user", "username", "account", "account name", "uid", "user name", "login", "användare", "konto"),
    "user_id": ("user_id", "enduser id", "account id", "end user id", "userid"),
    "tag": ("tag", "tag name", "tagg"),
    "group": ("group", "group name", "group path", "path", "grupp"),
    "app": ("app", "app name", "app id", "package id", "bundle id", "identifier", "application", "applikation"),
    "message": ("message", "text", "message text", "meddelande"),
    "attribute": ("attribute", "attribute name"),
    "value": ("value", "attribute value"),
    "name": ("name", "display name", "full name", "namn"),
}

#: The columns bulkmdm adds to a report, in order. A job file that has
#: ``status`` and ``detail`` is an earlier report being re-run.
OUTCOME_COLUMNS: tuple[str, ...] = ("status", "detail", "http_status", "attempts", "resolved_ids")

#: The columns ``bulkmdm track`` adds after them: whether the device shows the
#: change, and when it was seen to. A report run again as a job ignores them,
#: as it does the outcome columns.
TRACK_COLUMNS: tuple[str, ...] = ("device_status", "device_seen")

CANONICAL: tuple[str, ...] = tuple(ALIASES)

#: Columns ``bulkmdm export`` writes that describe a device without being any
#: action's input (its model and platform, its tags and groups as a list, its
#: registration or ban state): known, so an export used as a job carries them
#: into the report without a note or a "did you mean".
DESCRIPTIVE: tuple[str, ...] = ("model", "platform", "tags", "groups", "registration_state", "banned")

_SQUEEZE = re.compile(r"[\s_\-]+")


def normalise(header: object) -> str:
    """'Serial Number' -> 'serialnumber'; BOM and NBSP are dropped too."""
    text = str(header).replace("\ufeff", "").replace("\u00a0", " ")
    return _SQUEEZE.sub("", text).casefold()


_LOOKUP: dict[str, str] = {}
for _canonical, _names in ALIASES.items():
    for _name in _names:
        _LOOKUP[normalise(_name)] = _canonical
for _name in (*OUTCOME_COLUMNS, *TRACK_COLUMNS):
    _LOOKUP.setdefault(normalise(_name), "outcome:" + _name)
_DESCRIPTIVE = frozenset(normalise(name) for name in DESCRIPTIVE)


def canonical(header: object) -> str | None:
    """The canonical column a header means, ``outcome:<name>`` for one of our
    report columns, or ``None`` for a column bulkmdm does not use (it is still
    carried into the report)."""
    return _LOOKUP.get(normalise(header))


def same_meaning(headers: Sequence[str]) -> dict[str, list[int]]:
    """Canonical columns that two or more headers mean: ``{"serial": [0, 3]}``."""
    positions: dict[str, list[int]] = {}
    for position, header in enumerate(headers):
        name = canonical(header)
        if name is not None and not name.startswith("outcome:"):
            positions.setdefault(name, []).append(position)
    return {name: found for name, found in positions.items() if len(found) > 1}


def disagreement(line: int, headers: Sequence[str], positions: Sequence[int], cells: Sequence[str]) -> str | None:
    """The sentence for line ``line`` when its columns of one meaning hold
    different values (white space around a value does not count), or None
    when they agree."""
    values = [cells[p].strip() for p in positions]
    if len(set(values)) <= 1:
        return None
    first, other = positions[0], next(p for p, v in zip(positions, values, strict=True) if v != values[0])
    twins = headers[first].strip() == headers[other].strip()

    def says(position: int) -> str:
        value = cells[position].strip()
        name = f"column {position + 1} '{headers[position].strip()}'" if twins else f"'{headers[position].strip()}'"
        return f"{name} " + (f"says '{value}'" if value else "is blank")

    return (
        f"line {line} has two columns that mean {canonical(headers[first])}, and they differ: {says(first)} "
        f"but {says(other)}; make them agree or delete one of the two columns."
    )


#: every name a header may have, as written in ALIASES (the suggestions offered)
_KNOWN_NAMES: dict[str, str] = {}
for _names in ALIASES.values():
    for _name in _names:
        _KNOWN_NAMES.setdefault(normalise(_name), _name)


def closest(header: str) -> str | None:
    """The known column name nearest to ``header``, written in its style
    ('Serail Number' -> 'Serial Number'), or None when nothing is close."""
    import difflib

    key = normalise(header)
    if not key or key in _LOOKUP or key in _DESCRIPTIVE:
        return None
    match = difflib.get_close_matches(key, _KNOWN_NAMES, n=1, cutoff=0.75)
    if not match:
        return None
    name = _KNOWN_NAMES[match[0]]
    written = header.strip()
    if "_" in written and " " not in written:
        name = name.replace(" ", "_")
    if written.isupper():
        return name.upper()
    if written[:1].isupper():
        return " ".join(word[:1].upper() + word[1:] for word in name.split(" "))
    return name


def header_notes(headers: Sequence[str]) -> list[str]:
    """What to tell a person about headers bulkmdm does not know, at the start
    of a run: a 'did you mean' for each near miss, one line for the rest.
    Not errors: those columns are still carried into the report."""
    notes = []
    unused = []
    for header in headers:
        if not header.strip() or canonical(header) is not None or normalise(header) in _DESCRIPTIVE:
            continue
        suggestion = closest(header)
        if suggestion:
            notes.append(
                f"'{header.strip()}' is not a column bulkmdm knows; did you mean '{suggestion}'? "
                "(It is kept in the report as it is.)"
            )
        else:
            unused.append(f"'{header.strip()}'")
    if unused:
        notes.append(f"Not used by bulkmdm, kept in the report: {', '.join(unused)}.")
    return notes


def seen(headers: Sequence[str]) -> str:
    """'its columns are 'Serail Number', 'Tag'' for a message about a file that lacks a column."""
    named = [f"'{h.strip()}'" for h in headers if h.strip()]
    return f"its columns are {', '.join(named)}" if named else "it has no column names"
