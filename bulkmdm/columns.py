"""Header normalisation: which input column means which canonical column.

Names match case-insensitively, ignoring spaces, ``_`` and ``-``
("Serial Number", "serial_number", "SerialNumber" are one column). Swedish
names are accepted too, since DuoSTATION's admins often write them.
"""

from __future__ import annotations

import re

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

CANONICAL: tuple[str, ...] = tuple(ALIASES)

_SQUEEZE = re.compile(r"[\s_\-]+")


def normalise(header: object) -> str:
    """'Serial Number' -> 'serialnumber'; BOM and NBSP are dropped too."""
    text = str(header).replace("\ufeff", "").replace("\u00a0", " ")
    return _SQUEEZE.sub("", text).casefold()


_LOOKUP: dict[str, str] = {}
for _canonical, _names in ALIASES.items():
    for _name in _names:
        _LOOKUP[normalise(_name)] = _canonical
for _name in OUTCOME_COLUMNS:
    _LOOKUP.setdefault(normalise(_name), "outcome:" + _name)


def canonical(header: object) -> str | None:
    """The canonical column a header means, ``outcome:<name>`` for one of our
    report columns, or ``None`` for a column bulkmdm does not use (it is still
    carried into the report)."""
    return _LOOKUP.get(normalise(header))
