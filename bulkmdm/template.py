"""``bulkmdm template ACTION``: an empty job file for one action.

An ``.xlsx`` template has the action's columns as the header of its first
sheet (the sheet a job is read from; cells formatted as text so that Excel
keeps a serial's leading zeros), a "Notes" sheet explaining each column with
an example, and optionally dropdowns (:func:`add_choices`) listing the values
a column may take, such as the MDM's tags, groups or apps. A ``.csv``
template is the header line alone.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .actions import ACTIONS, ActionSpec, normalise_action, not_an_action
from .errors import UsageError

#: the sheet a job is read from, and the others
JOB_SHEET, NOTES_SHEET, LISTS_SHEET = "Job", "Notes", "Lists"
#: how many rows get a dropdown
CHOICE_ROWS = 5000
# Excel refuses a list written into the rule itself when it is longer than this
_INLINE_LIMIT = 255

#: column -> (what to put in it, an example)
COLUMN_NOTES: dict[str, tuple[str, str]] = {
    "serial": ("The device's serial number, as the MDM shows it.", "C02XK1ABJHD3"),
    "device_id": ("The MDM's own id of the device (instead of the serial).", "9f1c2d4e-5b6a-4c3d-8e7f-0a1b2c3d4e5f"),
    "email": ("The user's e-mail address.", "anna.svensson@school.example"),
    "user": ("The user: an e-mail address or an account name.", "anna.svensson@school.example"),
    "user_id": ("The MDM's own id of the user (instead of the e-mail).", "4711"),
    "tag": ("The tag's name; it must exist in the MDM already.", "Elev-iPad"),
    "group": ("The group's name or path; it must exist in the MDM already.", "Skolor\\Norra\\Klass 7A"),
    "app": ("The app's name, package id or bundle id.", "no.mobitroll.kahoot-app"),
    "message": ("The text shown on the device.", "Please return this iPad to the library on Friday."),
    "attribute": ("The custom attribute's name.", "Asset tag"),
    "value": ("The attribute's new value.", "INV-00123"),
    "name": ("A display name (kept in the report).", "Anna's iPad"),
}


def template_columns(spec: ActionSpec) -> list[tuple[str, tuple[str, ...]]]:
    """(header, alternatives) for each column the action needs: the first
    alternative is the header; the others may replace it."""
    return [(group[0], group[1:]) for group in spec.requires]


def resolve_action(name: str, provider: str | None) -> ActionSpec:
    """The action named ``name``, checked against ``provider`` when one is given."""
    action = normalise_action(name)
    if action not in ACTIONS:
        raise UsageError(not_an_action(name))
    if provider:
        from . import providers

        provider_cls = providers.get(provider)
        if action not in provider_cls.actions:
            can = ", ".join(sorted(provider_cls.actions))
            raise UsageError(f"{provider_cls.name} cannot {action}; it can: {can}.")
    return ACTIONS[action]


def write_template(
    path: Path, spec: ActionSpec, *, provider: str | None = None, choices: Mapping[str, Sequence[str]] | None = None
) -> Path:
    """Write the template for ``spec`` to ``path`` (.xlsx or .csv); never over an existing file."""
    suffix = path.suffix.lower()
    if suffix not in (".xlsx", ".csv"):
        raise UsageError(f"The template {path} must end in .xlsx or .csv; choose an -o name with one of those.")
    if path.exists():
        raise UsageError(f"{path} exists already (it may hold your rows); choose another name with -o, or delete it.")
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent} is not a folder; choose an -o path in an existing folder.")
    headers = [header for header, _ in template_columns(spec)]
    try:
        if suffix == ".csv":
            with open(path, "x", newline="", encoding="utf-8-sig") as handle:
                csv.writer(handle, lineterminator="\r\n").writerow(headers)
        else:
            _write_workbook(path, spec, headers, provider, choices or {})
    except OSError as exc:
        raise UsageError(
            f"The template {path} could not be written ({exc.strerror or exc}); choose another -o."
        ) from None
    return path


def _write_workbook(
    path: Path, spec: ActionSpec, headers: list[str], provider: str | None, choices: Mapping[str, Sequence[str]]
) -> None:
    import xlsxwriter

    workbook = xlsxwriter.Workbook(
        str(path), {"strings_to_formulas": False, "strings_to_numbers": False, "strings_to_urls": False}
    )
    try:
        job = workbook.add_worksheet(JOB_SHEET)
        heading = workbook.add_format({"bold": True, "bottom": 1, "bg_color": "#F2F2F2"})
        text = workbook.add_format({"num_format": "@"})  # typed 00123 stays 00123
        for column, header in enumerate(headers):
            job.write_string(0, column, header, heading)
            job.set_column(column, column, max(len(header) + 4, 24), text)
        job.freeze_panes(1, 0)
        _write_notes(workbook, spec, provider)
        add_choices(workbook, job, headers, choices)
    finally:
        workbook.close()


def _write_notes(workbook: Any, spec: ActionSpec, provider: str | None) -> None:
    notes = workbook.add_worksheet(NOTES_SHEET)
    bold = workbook.add_format({"bold": True})
    wrap = workbook.add_format({"text_wrap": True, "valign": "top"})
    run = (
        f"bulkmdm run FILE.xlsx --action {spec.name}"
        + (f" --provider {provider}" if provider else " --provider P")
        + " --url URL"
    )
    lines = [
        f"One row per device or user to {spec.summary or spec.name} ({spec.name}). "
        "Fill in the first sheet; bulkmdm reads only that one.",
        f"Run it with: {run}  (try --dry-run first).",
    ]
    if spec.destructive:
        lines.append(f"{spec.name} is destructive: bulkmdm asks you to type the number of rows before it sends it.")
    for row, line in enumerate(lines):
        notes.write_string(row, 0, line, bold if row == 0 else None)
    first = len(lines) + 1
    for column, title in enumerate(("column", "what to put in it", "example", "may instead be")):
        notes.write_string(first, column, title, bold)
    for row, (header, alternatives) in enumerate(template_columns(spec), start=first + 1):
        meaning, example = COLUMN_NOTES.get(header, ("", ""))
        notes.write_string(row, 0, header)
        notes.write_string(row, 1, meaning, wrap)
        notes.write_string(row, 2, example)
        notes.write_string(row, 3, ", ".join(alternatives))
    notes.set_column(0, 0, 14)
    notes.set_column(1, 1, 60)
    notes.set_column(2, 3, 36)


def add_choices(
    workbook: Any, sheet: Any, headers: Sequence[str], choices: Mapping[str, Sequence[str]], *, rows: int = CHOICE_ROWS
) -> None:
    """Excel dropdowns (data validation lists) for the columns in ``choices``
    (column header -> the values to offer, e.g. the MDM's tag names).

    A short list is written into the rule itself; a long one goes into a
    hidden "Lists" sheet that the rule refers to. A value not in the list is
    warned about, not refused: the MDM may have gained it since.
    """
    lists = None
    for column, header in enumerate(headers):
        values = [str(v) for v in dict.fromkeys(choices.get(header, ())) if str(v).strip()]
        if not values:
            continue
        rule: dict[str, Any] = {
            "validate": "list",
            "error_type": "warning",
            "error_title": header,
            "error_message": f"Not one of the {header} values listed from the MDM.",
        }
        if sum(len(v) + 1 for v in values) <= _INLINE_LIMIT and not any("," in v or '"' in v for v in values):
            rule["source"] = values
        else:
            if lists is None:
                lists = workbook.add_worksheet(LISTS_SHEET)
                lists.hide()
            lists.write_string(0, column, header)
            for row, value in enumerate(values, start=1):
                lists.write_string(row, column, value)
            letter = _column_letter(column)
            rule["source"] = f"={LISTS_SHEET}!${letter}$2:${letter}${len(values) + 1}"
        sheet.data_validation(1, column, rows, column, rule)


def _column_letter(column: int) -> str:
    letters = ""
    column += 1
    while column:
        column, rest = divmod(column - 1, 26)
        letters = chr(65 + rest) + letters
    return letters
