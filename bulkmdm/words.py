"""How bulkmdm says counts, so that the terminal, the demo and the web page say them alike.

Statuses always come in one order (the order of a run's story: what went
well, what is still to do, what went wrong) and a count of one is singular.
"""

from __future__ import annotations

from collections.abc import Mapping

#: every status, in the order every count line shows them (CONTRACT.md's statuses)
STATUS_ORDER = ("succeeded", "skipped", "planned", "failed", "invalid", "unknown", "not-run")

#: the detail of a row a run never sent because it stopped first (Ctrl-C, a stop, a quota spent)
NOT_SENT = "Not sent: the run stopped first. Run the same command again to continue."

#: what an admin does with a row whose change may or may not have been made (``unknown``):
#: the row may name a device or a user
CHECK_THEN_RESEND = "Check it in the MDM, then run the report again to resend it."

#: the detail of a row whose request was in flight when the run stopped
IN_FLIGHT_DETAIL = "A request was in flight when the run stopped, so its effect is not known. " + CHECK_THEN_RESEND

#: plural forms English does not make by adding "s"
_IRREGULAR = {"entry": "entries", "this": "these", "is": "are", "was": "were", "has": "have"}


def plural(n: int, word: str) -> str:
    """``plural(1, "row")`` -> '1 row', ``plural(3, "row")`` -> '3 rows'."""
    if n == 1:
        return f"{n} {word}"
    return f"{n} {_IRREGULAR.get(word, word + 's')}"


def ordered_counts(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """``counts`` without zeros, statuses in :data:`STATUS_ORDER`, anything else after them by name."""
    known = [(status, counts[status]) for status in STATUS_ORDER if counts.get(status)]
    others = sorted((str(k), n) for k, n in counts.items() if n and k not in STATUS_ORDER)
    return known + others


def counts_list(counts: Mapping[str, int]) -> str:
    """'240 succeeded, 1 skipped, 3 failed' (statuses in :data:`STATUS_ORDER`)."""
    return ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in ordered_counts(counts))


def counts_text(counts: Mapping[str, int], rows: int | None = None) -> str:
    """'254 rows: 240 succeeded, 1 skipped, 13 failed' (``rows`` defaults to the sum)."""
    total = sum(counts.values()) if rows is None else rows
    listed = counts_list(counts)
    return f"{plural(total, 'row')}: {listed}" if listed else plural(total, "row")
