"""DuoSTATION's data methods against the simulator: the undo row each
reversible change carries (Step.undo), ``inventory()`` for ``bulkmdm
export`` and ``choices()`` for template dropdowns."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from bulkmdm.model import JobRow, Step
from bulkmdm.providers.base import Settings
from bulkmdm.providers.duostation import INVENTORY_COLUMNS, DuoStation
from bulkmdm.sim.duostation import FACTS
from bulkmdm.client import Client

from conftest import CREDS, write_csv

F = FACTS
FREE, FREE_ID = F["untagged_device"]["serial"], F["untagged_device"]["id"]
TAGGED, TUSER, NODEV = F["tagged_device"], F["tagged_user"], F["user_without_devices"]
ASSIGNED = F["assigned_device"]
T = TypeVar("T")


def with_provider(sim: Any, use: Callable[[DuoStation], Awaitable[T]]) -> T:
    """Run ``use`` with a DuoStation provider talking to ``sim`` over HTTP."""

    async def main() -> T:
        async with Client(DuoStation.api_base(sim.url), auth=DuoStation.auth_from_env(CREDS)) as client:
            return await use(DuoStation(client, Settings(url=sim.url)))

    return asyncio.run(main())


def rows_of(table: list[list[str]]) -> list[JobRow]:
    header, *body = table
    return [
        JobRow(i, cells[0], {k: v for k, v in zip(header[1:], cells[1:], strict=True) if v})
        for i, cells in enumerate(body)
    ]


# -- undo -------------------------------------------------------------------------

JOB = [
    ["action", "serial", "tag", "email", "user", "group"],
    ["tag", FREE, "Lärare", "", "", ""],
    ["untag", TAGGED["serial"], TAGGED["tag"], "", "", ""],
    ["tag-user", "", "Gymnasiet", NODEV["email"], "", ""],
    ["untag-user", "", TUSER["tag"], TUSER["email"], "", ""],
    ["assign-user", ASSIGNED["serial"], "", "", NODEV["account"], ""],
    ["move-user", "", "", NODEV["email"], "", F["group_path"]],
    ["assign-user", FREE, "", "", F["user_with_devices"]["account"], ""],  # no user before: no undo
    ["lock", FREE, "", "", "", ""],  # a command: no undo
]


def snapshot(sim: Any) -> dict[str, Any]:
    def take() -> dict[str, Any]:
        st = sim.app["state"]
        return {
            "free tags": sorted(st.device_tags_of(FREE_ID)),
            "tagged tags": sorted(st.device_tags_of(TAGGED["id"])),
            "nodev tags": sorted(st.user_tags_of(NODEV["id"])),
            "tuser tags": sorted(st.user_tags_of(TUSER["id"])),
            "assigned": (st.devices[ASSIGNED["id"]]["userId"], st.devices[ASSIGNED["id"]]["groupId"]),
            "nodev group": st.users[NODEV["id"]]["groupId"],
        }

    return sim.call(take)  # type: ignore[no-any-return]


def test_undo_rows_put_back_what_the_job_changed(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    before = snapshot(duo)
    planned = with_provider(duo, lambda provider: provider.plan(rows_of(JOB)))
    steps = [p for p in planned if isinstance(p, Step)]
    assert len(steps) == len(JOB) - 1, planned
    undo = [step.undo for step in steps]
    assert undo[0] == {"action": "untag", "serial": FREE, "device_id": FREE_ID, "tag": "Lärare"}
    assert undo[1] == {"action": "tag", "serial": TAGGED["serial"], "device_id": TAGGED["id"], "tag": TAGGED["tag"]}
    assert undo[2] == {"action": "untag-user", "email": NODEV["email"], "tag": "Gymnasiet"}
    assert undo[3] == {"action": "tag-user", "email": TUSER["email"], "tag": TUSER["tag"]}
    assert undo[4] == {
        "action": "assign-user",
        "serial": ASSIGNED["serial"],
        "device_id": ASSIGNED["id"],
        "user": ASSIGNED["account"],
    }
    assert undo[5] == {"action": "move-user", "email": NODEV["email"], "group": "Personal\\Administration"}
    assert undo[6] is None and undo[7] is None

    res = run_cli(["run", str(write_csv(tmp_path / "job.csv", JOB)), "--provider", "duostation", "--url", duo.url])
    assert [r["status"] for r in res.report] == ["succeeded"] * (len(JOB) - 1), res.report
    assert snapshot(duo) != before

    # the rows that succeeded, undone in reverse order, as a job file like any other
    columns = ["action", "serial", "device_id", "tag", "email", "user", "group"]
    reverse = [[u.get(c, "") for c in columns] for u in reversed(undo[:6]) if u is not None]
    res = run_cli(
        [
            "run",
            str(write_csv(tmp_path / "undo.csv", [columns, *reverse])),
            "--provider",
            "duostation",
            "--url",
            duo.url,
        ]
    )
    assert [r["status"] for r in res.report] == ["succeeded"] * 6, res.report
    assert snapshot(duo) == before
    # (the free device keeps the user the job gave it: no verb unassigns, so no undo row)


def test_skipped_and_failed_rows_carry_no_undo(duo: Any) -> None:
    job = [
        ["action", "serial", "tag", "email", "user", "group"],
        ["tag", TAGGED["serial"], TAGGED["tag"], "", "", ""],  # already
        ["move-user", "", "", F["user_in_group"]["email"], "", F["user_in_group"]["group"]],  # already
        ["tag", "NOSUCHSERIAL", "Lärare", "", "", ""],  # not found
    ]
    planned = with_provider(duo, lambda provider: provider.plan(rows_of(job)))
    assert not any(isinstance(p, Step) for p in planned), planned


# -- inventory -----------------------------------------------------------------------------


def inventory(sim: Any) -> list[dict[str, str]]:
    async def collect(provider: DuoStation) -> list[dict[str, str]]:
        return [row async for row in provider.inventory()]

    return with_provider(sim, collect)


def test_inventory_lists_every_device_as_text(duo: Any) -> None:
    st = duo.app["state"]
    big = 2**53 + 1

    def add_big() -> None:  # an id beyond 2**53 must keep every digit
        st.devices[str(big)] = dict(st.devices[FREE_ID], id=big, serialNumber="BIGIDSERIAL1")
        st._changed("devices")

    duo.call(add_big)
    rows = inventory(duo)
    assert len(rows) == 401
    assert all(list(row) == list(INVENTORY_COLUMNS) for row in rows)
    assert all(isinstance(v, str) for row in rows for v in row.values())
    by_serial = {row["serial"]: row for row in rows}
    assert by_serial["BIGIDSERIAL1"]["device_id"] == str(big)
    assert by_serial[F["leading_zero_serial"]]["device_id"] == F["leading_zero_device_id"]
    assigned = by_serial[ASSIGNED["serial"]]
    assert (assigned["email"], assigned["user"]) == (ASSIGNED["email"], ASSIGNED["account"])
    assert assigned["group"] == "Personal\\Lärare" and assigned["name"] == "Lars iPad"
    assert assigned["model"] == "iPad (9th generation)"
    assert by_serial[TAGGED["serial"]]["tags"] == TAGGED["tag"]
    assert by_serial[FREE]["tags"] == "" and by_serial[FREE]["email"] == ""

    def tags_in_state() -> dict[str, str]:
        return {
            d["serialNumber"]: "; ".join(sorted(st.device_tags_of(d["id"]), key=str.casefold))
            for d in list(st.devices.values())[:400]
        }

    expected = duo.call(tags_in_state)
    assert {s: by_serial[s]["tags"] for s in expected} == expected
    assert sum(1 for row in rows if "; " in row["tags"]) > 0  # some devices carry several tags


def test_inventory_tags_without_the_link_list(duo: Any) -> None:
    """A server that will not list every device tag: tags come from the
    documented GET /api/devices?tagId=, one request per tag."""
    plain = inventory(duo)
    duo.app["shape"].unfiltered_links_status = 400
    duo.stats.requests = 0
    assert inventory(duo) == plain
    tags = duo.call(lambda: len(duo.app["state"].tags))
    assert duo.stats.requests == 4 + 1 + tags  # devices, users, groups, tags; the refused list; a search per tag


def test_an_export_with_an_action_column_is_a_job(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    """Export rows of assigned devices, add action=move-user: every user is
    already in the group the export shows, so nothing is sent (a user listed
    once per device is the same change twice)."""
    shared = F["duplicate_email"]  # (it and the shared group path would fail the rows as ambiguous)
    rows = [
        r for r in inventory(duo) if r["email"] and r["email"] != shared and r["group"] != F["duplicate_group_path"]
    ][:25]
    table = [["action", *INVENTORY_COLUMNS], *[["move-user", *r.values()] for r in rows]]
    res = run_cli(["run", str(write_csv(tmp_path / "export.csv", table)), "--provider", "duostation", "--url", duo.url])
    assert {r["status"] for r in res.report} == {"skipped"}, [r["detail"] for r in res.report]
    assert res.report[0]["serial"] == rows[0]["serial"] and res.report[0]["tags"] == rows[0]["tags"]
    assert duo.stats.mutating == 0


# -- choices --------------------------------------------------------------------------------


def test_choices_name_exactly_one_object_each(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    async def all_choices(provider: DuoStation) -> dict[str, list[str]]:
        return {column: await provider.choices(column) for column in ("tag", "group", "app", "user", "message")}

    choices = with_provider(duo, all_choices)
    assert choices["user"] == [] and choices["message"] == []
    assert "Lärare" in choices["tag"] and F["duplicate_tag_name"] not in choices["tag"]
    assert F["group_path"] in choices["group"] and F["duplicate_group_path"] not in choices["group"]
    assert F["app"]["name"] in choices["app"] and F["shared_app_name"] not in choices["app"]
    assert {"com.google.chrome.ios", "com.android.chrome", "3", "4"} <= set(choices["app"])
    assert len(choices["app"]) == len(duo.call(lambda: duo.app["state"].apps))

    # every choice, used in a row, resolves (a dry run plans or skips it; nothing fails)
    table = [["action", "serial", "email", "tag", "group", "app"]]
    table += [["tag", FREE, "", tag, "", ""] for tag in choices["tag"]]
    emails = duo.call(lambda: [u["email"] for u in list(duo.app["state"].users.values())[10:]])
    table += [["move-user", "", email, "", group, ""] for email, group in zip(emails, choices["group"], strict=False)]
    table += [["install-app", FREE, "", "", "", app] for app in choices["app"]]
    res = run_cli(
        [
            "run",
            str(write_csv(tmp_path / "choices.csv", table)),
            "--provider",
            "duostation",
            "--url",
            duo.url,
            "--dry-run",
        ]
    )
    assert {r["status"] for r in res.report} <= {"planned", "skipped"}, [
        r for r in res.report if r["status"] not in ("planned", "skipped")
    ]
