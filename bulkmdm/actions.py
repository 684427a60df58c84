"""The vendor-neutral verbs: their columns, which are destructive, and
which can be read back from the MDM (so that a row whose request was in
flight when a run died can be checked instead of resent)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .model import JobRow, Step
from .words import plural


@dataclass(frozen=True, slots=True)
class ActionSpec:
    name: str
    #: each entry is a group of alternatives; one of each group must be non-blank
    requires: tuple[tuple[str, ...], ...]
    destructive: bool = False
    #: a provider can read back whether this action's effect is in place
    verifiable: bool = False
    summary: str = ""


_DEVICE = ("serial", "device_id")

ACTIONS: dict[str, ActionSpec] = {
    spec.name: spec
    for spec in (
        ActionSpec("tag", (_DEVICE, ("tag",)), verifiable=True, summary="link a tag to a device"),
        ActionSpec("untag", (_DEVICE, ("tag",)), verifiable=True, summary="unlink a tag from a device"),
        ActionSpec("tag-user", (("email",), ("tag",)), verifiable=True, summary="link a tag to a user"),
        ActionSpec("untag-user", (("email",), ("tag",)), verifiable=True, summary="unlink a tag from a user"),
        ActionSpec("assign-user", (_DEVICE, ("user", "email")), verifiable=True, summary="hand a device to a user"),
        ActionSpec("move-user", (("email",), ("group",)), verifiable=True, summary="move a user to a group"),
        ActionSpec("add-to-group", (_DEVICE, ("group",)), verifiable=True, summary="add a device to a group"),
        ActionSpec("remove-from-group", (_DEVICE, ("group",)), verifiable=True, summary="remove a device from a group"),
        ActionSpec("install-app", (_DEVICE, ("app",)), summary="install an app on a device"),
        ActionSpec("remove-app", (_DEVICE, ("app",)), summary="remove an app from a device"),
        ActionSpec("lock", (_DEVICE,), summary="lock a device's screen"),
        ActionSpec("unlock", (_DEVICE,), summary="unlock a device"),
        ActionSpec("wipe", (_DEVICE,), destructive=True, summary="erase a device to factory settings"),
        ActionSpec("retire", (_DEVICE,), destructive=True, summary="retire a device from management"),
        ActionSpec("restart", (_DEVICE,), summary="restart a device"),
        ActionSpec("checkin", (_DEVICE,), summary="force a device to check in"),
        ActionSpec("inventory", (_DEVICE,), summary="ask a device for its inventory"),
        ActionSpec("clear-passcode", (_DEVICE,), summary="clear a device's passcode"),
        ActionSpec("message", (_DEVICE, ("message",)), summary="send a message to a device"),
        ActionSpec(
            "set-attribute",
            (_DEVICE, ("attribute",), ("value",)),
            verifiable=True,
            summary="set a device's custom attribute",
        ),
        ActionSpec("ban", (_DEVICE,), verifiable=True, summary="ban a device"),
        ActionSpec("unban", (_DEVICE,), verifiable=True, summary="reinstate a banned device"),
        ActionSpec("delete-device", (_DEVICE,), destructive=True, verifiable=True, summary="delete a device"),
        ActionSpec("delete-user", (("email", "user_id"),), destructive=True, verifiable=True, summary="delete a user"),
    )
}

#: what a dry run says a step would do: {target} is the device or user, the
#: other names are the row's columns as the job gave them
_WOULD = {
    "tag": "tag {target} with '{tag}'",
    "untag": "remove tag '{tag}' from {target}",
    "tag-user": "tag {target} with '{tag}'",
    "untag-user": "remove tag '{tag}' from {target}",
    "assign-user": "assign {target} to {user}",
    "move-user": "move {target} to group '{group}'",
    "add-to-group": "add {target} to group '{group}'",
    "remove-from-group": "remove {target} from group '{group}'",
    "install-app": "install '{app}' on {target}",
    "remove-app": "remove '{app}' from {target}",
    "message": "send {target} the message '{message}'",
    "set-attribute": "set {attribute} to '{value}' on {target}",
    "clear-passcode": "clear the passcode of {target}",
    "inventory": "ask {target} for its inventory",
    "checkin": "make {target} check in",
    "delete-device": "delete {target}",
    "delete-user": "delete {target}",
}


def would(step: Step) -> str:
    """What a step would do, in full: "Would assign device X to sam@school.se."."""
    row = step.row
    fields = {name: row.get(name) for name in ("tag", "group", "app", "message", "attribute", "value")}
    fields["user"] = row.get("user") or row.get("email")
    template = _WOULD.get(step.action, step.action + " {target}")
    text = template.format(target=step.target, **fields)
    return f"Would {text}" + ("" if text.endswith(".") else ".")


_ALIASES = {
    "force-checkin": "checkin",
    "check-in": "checkin",
    "forcecheckin": "checkin",
    "send-message": "message",
    "sendmessage": "message",
    "lock-device": "lock",
    "wipe-device": "wipe",
    "clearpasscode": "clear-passcode",
    "installapp": "install-app",
    "removeapp": "remove-app",
    "uninstall-app": "remove-app",
    "assign": "assign-user",
    "assignuser": "assign-user",
    "moveuser": "move-user",
    "taguser": "tag-user",
    "untaguser": "untag-user",
    "deletedevice": "delete-device",
    "deleteuser": "delete-user",
    "setattribute": "set-attribute",
    "addtogroup": "add-to-group",
    "removefromgroup": "remove-from-group",
}

_SEP = re.compile(r"[\s_]+")


def normalise_action(text: str) -> str:
    """'Assign User' / 'assign_user' / 'ASSIGN-USER' -> 'assign-user'."""
    name = _SEP.sub("-", text.strip().casefold()).strip("-")
    return _ALIASES.get(name, name)


def closest_action(given: str) -> str | None:
    """The action nearest to a misspelt one ('tagg' -> 'tag', 'lcok' -> 'lock'), or None."""
    import difflib

    name = normalise_action(given)
    match = difflib.get_close_matches(name, [*ACTIONS, *_ALIASES], n=1, cutoff=0.6)
    return _ALIASES.get(match[0], match[0]) if match else None


def not_an_action(given: str, *, flag: str = "") -> str:
    """The sentence for an action bulkmdm does not know, with the nearest one it does
    ("--action 'tagg' is not an action; did you mean 'tag'? ...")."""
    close = closest_action(given)
    named = f"{flag} {given!r}" if flag else repr(given)
    if close:
        return f"{named} is not an action; did you mean '{close}'? (`bulkmdm actions` lists them.)"
    return f"{named} is not an action; `bulkmdm actions` lists them."


def missing_columns(spec: ActionSpec, row: JobRow) -> list[str]:
    """The required values the row lacks, as a person would name them."""
    # (map over the fields' own get: a row is checked without a Python call per column)
    lookup = row.fields.get
    return [" or ".join(group) for group in spec.requires if not any(map(lookup, group))]


#: destructive action -> what it does to what: "wipe 3 devices", "delete 1 user"
_DESTROYS = {
    "wipe": ("wipe", "device"),
    "retire": ("retire", "device"),
    "delete-device": ("delete", "device"),
    "delete-user": ("delete", "user"),
}


def destroys(counts: Mapping[str, int]) -> str:
    """What destructive rows do, by action (action -> rows), in the order of
    :data:`ACTIONS`: 'wipe 3 devices and delete 1 user'."""
    order = {name: i for i, name in enumerate(ACTIONS)}
    parts = []
    previous = ""
    for action in sorted((a for a, n in counts.items() if n), key=lambda a: order.get(a, len(order))):
        verb, noun = _DESTROYS.get(action, (action, "row"))
        # "delete 2 devices and 1 user", not "delete 2 devices and delete 1 user"
        parts.append(("" if verb == previous else f"{verb} ") + plural(counts[action], noun))
        previous = verb
    if not parts:
        return "change nothing"
    return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]


def confirmation_prompt(steps: Sequence[Step], *, shown: int = 5) -> str:
    """The question before destructive steps: what, how many, and the first
    few devices or users (with the job's name column where it has one), ending
    in what to type."""
    count = len(steps)
    lines = [f"This will {destroys(Counter(step.action for step in steps))}:"]
    for step in steps[:shown]:
        name = step.row.get("name")
        lines.append(f"  line {step.row.line}: {step.action} {step.target}" + (f" ({name})" if name else ""))
    if count > shown:
        lines.append(f"  ... and {count - shown} more")
    lines.append(f"Type {count} to go ahead, anything else to stop")
    return "\n".join(lines)
