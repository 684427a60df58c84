"""DuoSTATION against a hostile simulator: objects without the
fields bulkmdm keys on, lists in shapes the doc does not describe, and
changes answered with something other than the doc's answer. Every action
runs through the CLI; a row is `succeeded` only when the simulator's state
shows the change, and `skipped` only when it shows the wanted state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bulkmdm.model import Reason
from bulkmdm.sim.duostation import FACTS

from conftest import write_csv

F = FACTS
FREE, FREE_ID = F["untagged_device"]["serial"], F["untagged_device"]["id"]
TAGGED = F["tagged_device"]
TUSER = F["tagged_user"]
NODEV = F["user_without_devices"]
ASA = F["user_with_devices"]
GONE = F["user_in_group"]  # a user without devices, deleted by the last row

HEADER = ["action", "serial", "tag", "email", "user", "group", "app", "message"]
#: every DuoSTATION action once, with what the simulator's state shows once it is done
EVERY_ACTION: list[tuple[list[str], Callable[[Any], bool]]] = [
    (["tag", FREE, "Lärare", "", "", "", "", ""], lambda st: "Lärare" in st.device_tags_of(FREE_ID)),
    (
        ["untag", TAGGED["serial"], TAGGED["tag"], "", "", "", "", ""],
        lambda st: TAGGED["tag"] not in st.device_tags_of(TAGGED["id"]),
    ),
    (
        ["tag-user", "", "Gymnasiet", NODEV["email"], "", "", "", ""],
        lambda st: "Gymnasiet" in st.user_tags_of(NODEV["id"]),
    ),
    (
        ["untag-user", "", TUSER["tag"], TUSER["email"], "", "", "", ""],
        lambda st: TUSER["tag"] not in st.user_tags_of(TUSER["id"]),
    ),
    (["assign-user", FREE, "", "", ASA["account"], "", "", ""], lambda st: st.devices[FREE_ID]["userId"] == ASA["id"]),
    (
        ["move-user", "", "", NODEV["email"], "", F["group_path"], "", ""],
        lambda st: st.users[NODEV["id"]]["groupId"] == F["group_id"],
    ),
    (
        ["install-app", FREE, "", "", "", "", F["app"]["name"], ""],
        lambda st: bool(st.commands_for(FREE_ID, "installapp")),
    ),
    (
        ["remove-app", FREE, "", "", "", "", F["app"]["packageId"], ""],
        lambda st: bool(st.commands_for(FREE_ID, "removeapp")),
    ),
    (["lock", FREE, "", "", "", "", "", ""], lambda st: bool(st.commands_for(FREE_ID, "lockdevice"))),
    (["inventory", FREE, "", "", "", "", "", ""], lambda st: bool(st.commands_for(FREE_ID, "inventorydevice"))),
    (["clear-passcode", FREE, "", "", "", "", "", ""], lambda st: bool(st.commands_for(FREE_ID, "clearpasscode"))),
    (["message", FREE, "", "", "", "", "", "Hej"], lambda st: bool(st.commands_for(FREE_ID, "sendmessage"))),
    (
        ["wipe", F["leading_zero_serial"], "", "", "", "", "", ""],
        lambda st: bool(st.commands_for(F["leading_zero_device_id"], "wipedevice")),
    ),
    (["delete-user", "", "", GONE["email"], "", "", "", ""], lambda st: GONE["id"] not in st.users),
]


def run_every_action(sim: Any, run_cli: Any, tmp_path: Path) -> tuple[Any, list[bool]]:
    """Run EVERY_ACTION through the CLI; the report, and per row whether the state shows it done."""
    job = write_csv(tmp_path / "every.csv", [HEADER, *[row for row, _ in EVERY_ACTION]])
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", sim.url, "--yes", "--timeout", "5"])
    assert "Traceback" not in res.output
    assert len(res.report) == len(EVERY_ACTION), res.output
    done = sim.call(lambda: [check(sim.app["state"]) for _, check in EVERY_ACTION])
    for row, made in zip(res.report, done, strict=True):
        if row["status"] == "succeeded":
            assert made, f"reported succeeded, but the MDM did not make it: {row}"
        if row["status"] == "skipped":
            assert made, f"reported skipped, but the MDM is not in the wanted state: {row}"
    assert sim.call(lambda: sim.app["state"].duplicate_links() + sim.app["state"].duplicate_user_links()) == []
    return res, done


def statuses(res: Any) -> list[str]:
    return [r["status"] for r in res.report]


# -- objects without the fields we key on ---------------------------------------


@pytest.mark.parametrize("renamed", [False, True], ids=["null", "renamed"])
@pytest.mark.parametrize(
    "kind, field, rows, names",
    [
        ("devices", "id", [0, 1, 4, 6, 7, 8, 9, 10, 11, 12], "'id'"),
        ("devices", "serialNumber", [0, 1, 4, 6, 7, 8, 9, 10, 11, 12], "'serialNumber'"),
        ("users", "id", [2, 3, 4, 5, 13], "'id'"),
        ("tags", "id", [0, 1, 2, 3], "'id'"),
        ("apps", "id", [6], "'id'"),
        ("groups", "id", [5], "'id'"),
        ("devicetags", "tagId", [1], "'tagId'"),
        ("usertags", "tagId", [3], "'tagId'"),
        ("devicetags", "id", [1], "'deviceTagId'"),
        ("usertags", "id", [3], "'userTagId'"),
    ],
)
def test_objects_without_the_key_field_are_no_match(
    duo: Any, run_cli: Any, tmp_path: Path, renamed: bool, kind: str, field: str, rows: list[int], names: str
) -> None:
    shape = duo.app["shape"]
    shape.hidden, shape.hidden_renamed = ((kind, field),), renamed
    res, done = run_every_action(duo, run_cli, tmp_path)
    for i in rows:
        assert res.report[i]["status"] == "failed", (i, res.report[i])
        assert names in res.report[i]["detail"], (i, res.report[i]["detail"])
        assert res.reasons[i] == Reason.BAD_ANSWER
        assert not done[i]
    others = [r["status"] for i, r in enumerate(res.report) if i not in rows]
    assert set(others) <= {"succeeded"}, res.report


@pytest.mark.parametrize("kind, owner", [("devicetags", "deviceId"), ("usertags", "userId")])
def test_tag_links_without_their_owner_are_read_per_owner(
    duo: Any, run_cli: Any, tmp_path: Path, kind: str, owner: str
) -> None:
    """A link list whose links do not name their device (or user) cannot say
    what a device lacks; each owner's links are read with the documented
    search instead, where the owner is the one asked for."""
    duo.app["shape"].hidden = ((kind, owner),)
    job = write_csv(
        tmp_path / "owner.csv",
        [
            HEADER,
            ["tag", TAGGED["serial"], TAGGED["tag"], "", "", "", "", ""],
            ["tag-user", "", TUSER["tag"], TUSER["email"], "", "", "", ""],
            ["untag", TAGGED["serial"], "Lärare", "", "", "", "", ""],
            ["tag", FREE, "Lärare", "", "", "", "", ""],
            ["untag-user", "", TUSER["tag"], NODEV["email"], "", "", "", ""],
        ],
    )
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url])
    assert statuses(res) == ["skipped", "skipped", "skipped", "succeeded", "skipped"], res.report
    assert duo.call(lambda: duo.app["state"].device_tags_of(FREE_ID)) == ["Lärare"]
    assert duo.call(lambda: duo.app["state"].duplicate_links()) == []


def test_devices_sharing_an_id_are_not_one_device(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    st = duo.app["state"]

    def clone() -> None:
        copy = dict(st.devices[FREE_ID], serialNumber="CLONEDSERIAL1")
        st.devices["clone-key"] = copy  # the same id under another serial
        st._changed("devices")

    duo.call(clone)
    job = write_csv(tmp_path / "clone.csv", [["serial"], [FREE], ["CLONEDSERIAL1"]])
    res = run_cli(["run", str(job), "--provider", "duostation", "--url", duo.url, "--action", "lock"])
    assert statuses(res) == ["failed", "failed"], res.report
    assert "2 devices with id" in res.report[0]["detail"]
    assert duo.stats.mutating == 0


# -- lists in shapes the doc does not describe ----------------------------------------


@pytest.mark.parametrize("wrap", ["payload", "result.payload"])
def test_a_list_in_an_unknown_wrapper_is_not_an_empty_list(duo: Any, run_cli: Any, tmp_path: Path, wrap: str) -> None:
    duo.app["shape"].wrap = wrap
    res, _ = run_every_action(duo, run_cli, tmp_path)
    assert set(statuses(res)) == {"failed"}, res.report
    assert res.reasons[1] == Reason.BAD_ANSWER, res.report[1]
    assert duo.stats.mutating == 0


@pytest.mark.parametrize("wrap", ["data", "result.rows", "Items"])
def test_lists_under_known_wrappers_are_read(duo: Any, run_cli: Any, tmp_path: Path, wrap: str) -> None:
    duo.app["shape"].wrap = wrap
    res, done = run_every_action(duo, run_cli, tmp_path)
    assert set(statuses(res)) == {"succeeded"}, res.report
    assert all(done)


# -- changes answered otherwise than the doc says ------------------------------------------


def test_changes_answered_200_with_no_body(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    """The doc answers a new tag link with its id; a bare 200 is read back."""
    duo.app["shape"].change_answer = "empty"
    res, done = run_every_action(duo, run_cli, tmp_path)
    assert set(statuses(res)) == {"succeeded"}, res.report
    assert all(done)
    assert res.reasons[0] == res.reasons[2] == Reason.READ_BACK
    assert "confirmed by reading it back" in res.report[0]["detail"]


def test_tag_links_answered_200_with_no_body_and_not_made(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    duo.app["shape"].change_answer = "ignored"
    res, done = run_every_action(duo, run_cli, tmp_path)
    assert statuses(res)[0] == "failed" and statuses(res)[2] == "failed", res.report
    assert res.reasons[0] == res.reasons[2] == Reason.BAD_ANSWER
    assert "not there" in res.report[0]["detail"]
    assert not done[0] and not done[2]
    assert all(s == "succeeded" for i, s in enumerate(statuses(res)) if i not in (0, 2))


def test_changes_answered_with_a_sign_in_page(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    """A sign-in page with 200 is not the MDM's answer (the client refuses it
    as one): no row is succeeded, and each says what came back."""
    duo.app["shape"].change_answer = "html"
    res, done = run_every_action(duo, run_cli, tmp_path)
    assert not any(done)
    assert set(statuses(res)) == {"failed"}, res.report
    assert set(res.reasons) == {Reason.BAD_ANSWER}
    assert all("HTML page" in r["detail"] for r in res.report), res.report


def test_changes_answered_200_with_a_failure_in_the_body(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    duo.app["shape"].change_answer = "refused"
    res, done = run_every_action(duo, run_cli, tmp_path)
    assert set(statuses(res)) == {"failed"}, res.report
    assert set(res.reasons) == {Reason.REFUSED}
    assert "could not be completed" in res.report[8]["detail"]
    assert not any(done)


def test_searches_that_ignore_their_filter(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    """Lists cut short send every row to the documented searches; a server
    that ignores a search's parameter answers everything: only the objects
    that carry the value searched for are matches (the group by its path)."""
    shape = duo.app["shape"]
    shape.list_limit, shape.ignore_filters = 0, True
    res, done = run_every_action(duo, run_cli, tmp_path)
    assert set(statuses(res)) == {"succeeded"}, [r["detail"] for r in res.report]
    assert all(done)
