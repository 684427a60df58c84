"""Every DuoSTATION action end to end: the CLI over real HTTP against the
built-in simulator on 127.0.0.1, asserting on the report and on the
simulator's state."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import quote
from typing import Any

import openpyxl
import pytest

from bulkmdm.model import Reason
from bulkmdm.sim.duostation import FACTS

from conftest import write_csv

F = FACTS


def state(sim: Any) -> Any:
    return sim.app["state"]


def serials(sim: Any, n: int, *, free: bool = False) -> list[str]:
    """n generated serials (not the edge-case devices), optionally tag-free."""
    st = state(sim)

    def pick() -> list[str]:
        out = []
        for dev in list(st.devices.values())[F["edge_devices"] :]:
            if free and st.device_tags_of(dev["id"]):
                continue
            out.append(dev["serialNumber"])
        return out[:n]

    return sim.call(pick)  # type: ignore[no-any-return]


def run(run_cli: Any, sim: Any, job: Path, *extra: str) -> Any:
    return run_cli(["run", str(job), "--provider", "duostation", "--url", sim.url, *extra])


def test_every_action(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    st = state(duo)
    free = F["untagged_device"]["serial"]
    deletable = F["user_without_devices"]["email"]
    job = write_csv(
        tmp_path / "all.csv",
        [
            ["action", "serial", "tag", "email", "user", "group", "app", "message", "note"],
            ["tag", free, "Lärare", "", "", "", "", "", "keep me"],
            ["untag", F["tagged_device"]["serial"], F["tagged_device"]["tag"], "", "", "", "", "", ""],
            ["tag-user", "", "Gymnasiet", deletable, "", "", "", "", ""],
            ["untag-user", "", "Lärare", F["tagged_user"]["email"], "", "", "", "", ""],
            ["assign-user", free, "", "", F["user_with_devices"]["account"], "", "", "", ""],
            ["move-user", "", "", deletable, "", F["group_path"], "", "", ""],
            ["install-app", free, "", "", "", "", F["app"]["name"], "", ""],
            ["remove-app", free, "", "", "", "", F["app"]["packageId"], "", ""],
            ["lock", free, "", "", "", "", "", "", ""],
            ["inventory", free, "", "", "", "", "", "", ""],
            ["clear-passcode", free, "", "", "", "", "", "", ""],
            ["message", free, "", "", "", "", "", "Lämna in din iPad", ""],
            ["wipe", F["leading_zero_serial"], "", "", "", "", "", "", ""],
        ],
    )
    res = run(run_cli, duo, job, "--yes")
    assert res.exit_code == 0, res.output
    assert [r["status"] for r in res.report] == ["succeeded"] * 13, res.report
    assert res.report[0]["note"] == "keep me"
    assert "device_id=" in res.report[0]["resolved_ids"]
    free_id = F["untagged_device"]["id"]

    def check() -> None:
        assert st.device_tags_of(free_id) == ["Lärare"]
        assert st.device_tags_of(F["tagged_device"]["id"]) == []
        assert "Gymnasiet" in st.user_tags_of(F["user_without_devices"]["id"])
        assert "Lärare" not in st.user_tags_of(F["tagged_user"]["id"])
        assert st.devices[free_id]["userId"] == F["user_with_devices"]["id"]
        assert st.users[F["user_without_devices"]["id"]]["groupId"] == F["group_id"]
        cmds = [c["command"] for c in st.commands_for(free_id)]
        assert sorted(cmds) == sorted(
            ["installapp", "removeapp", "lockdevice", "inventorydevice", "clearpasscode", "sendmessage"]
        )
        msg = st.commands_for(free_id, "sendmessage")[0]
        assert msg["payload"] == {"message": "Lämna in din iPad"}
        assert st.commands_for(free_id, "installapp")[0]["payload"]["appId"] == F["app"]["id"]
        assert st.commands_for(free_id, "removeapp")[0]["payload"] == {"identifier": F["app"]["packageId"]}
        assert len(st.commands_for(F["leading_zero_device_id"], "wipedevice")) == 1

    duo.call(check)


def test_delete_user(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = write_csv(
        tmp_path / "del.csv",
        [
            ["email"],
            [F["user_without_devices"]["email"]],
            [F["user_with_devices"]["email"]],
            ["nobody@skola.se"],
        ],
    )
    res = run(run_cli, duo, job, "--action", "delete-user", "--yes")
    assert res.exit_code == 1
    assert [r["status"] for r in res.report] == ["succeeded", "failed", "failed"]
    assert res.report[1]["http_status"] == "409"
    assert res.reasons == [Reason.DONE, Reason.REFUSED, Reason.NOT_FOUND]
    assert duo.call(lambda: F["user_without_devices"]["id"] not in state(duo).users)


def test_skipped_not_found_ambiguous_invalid(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = write_csv(
        tmp_path / "mix.csv",
        [
            ["Action", "Serial Number", "Tag Name", "E-mail", "Group Path"],
            ["tag", F["tagged_device"]["serial"], F["tagged_device"]["tag"], "", ""],  # already there
            ["tag", "NOSUCHSERIAL", "Lärare", "", ""],  # not found
            ["tag", F["duplicate_serial"], "Lärare", "", ""],  # 2 devices
            ["tag", F["untagged_device"]["serial"], F["duplicate_tag_name"], "", ""],  # 2 tags
            ["tag", F["untagged_device"]["serial"], "Ingen sådan tagg", "", ""],  # tag not found
            ["tag", "", "Lärare", "", ""],  # blank serial
            ["explode", F["untagged_device"]["serial"], "Lärare", "", ""],  # unknown action
            ["assign-user", F["assigned_device"]["serial"], "", F["assigned_device"]["email"], ""],  # already
            ["move-user", "", "", F["user_in_group"]["email"], F["user_in_group"]["group"].replace("\\", "/")],
            ["move-user", "", "", F["user_without_devices"]["email"], F["duplicate_group_path"]],
            ["tag-user", "", F["tagged_user"]["tag"], F["duplicate_email"], ""],
            ["install-app", F["untagged_device"]["serial"], "", "", ""],  # no app column value
            ["lock", F["untagged_device"]["serial"], "", "", ""],
            ["lock", F["untagged_device"]["serial"], "", "", ""],  # same change twice
        ],
    )
    res = run(run_cli, duo, job)
    statuses = [r["status"] for r in res.report]
    assert statuses == [
        "skipped",
        "failed",
        "failed",
        "failed",
        "failed",
        "invalid",
        "invalid",
        "skipped",
        "skipped",
        "failed",
        "failed",
        "invalid",
        "succeeded",
        "skipped",
    ]
    details = [r["detail"] for r in res.report]
    assert "NOSUCHSERIAL" in details[1] and res.reasons[1] == Reason.NOT_FOUND
    assert res.reasons[2:4] == [Reason.AMBIGUOUS, Reason.AMBIGUOUS]  # two devices, two tags
    assert "Missing serial or device_id" in details[5]
    assert "'explode' is not an action" in details[6]
    assert "group" in details[9]
    assert res.reasons[10] == Reason.AMBIGUOUS
    assert {res.reasons[i] for i, r in enumerate(res.report) if r["status"] == "invalid"} == {Reason.INVALID_ROW}
    assert "Missing app" in details[11]
    assert "line 14" in details[13]
    assert res.exit_code == 1
    assert duo.stats.mutating == 1  # only the one lock was sent


def test_faults_are_retried_and_nothing_is_linked_twice(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    targets = serials(duo, 60, free=True)
    duo.faults.update({"error_rate": 0.25, "mutating_only": True, "seed": 7})
    duo.faults.drop_after_rate = 0.15
    job = write_csv(tmp_path / "tags.csv", [["serial", "tag"], *[[s, "Prov-läge"] for s in targets]])
    res = run(run_cli, duo, job, "--action", "tag", "--rate", "none", "--timeout", "5")
    assert res.exit_code == 0, res.output
    assert all(r["status"] == "succeeded" for r in res.report)
    assert any(int(r["attempts"]) > 1 for r in res.report)
    assert duo.call(lambda: state(duo).duplicate_links()) == []
    assert (
        duo.call(
            lambda: sum(
                1
                for s in targets
                for d in state(duo).devices_by_serial(s)
                if "Prov-läge" in state(duo).device_tags_of(d["id"])
            )
        )
        == 60
    )


def tag_through(duo: Any, run_cli: Any, tmp_path: Path, count: int, faults: dict[str, Any], *flags: str) -> Any:
    """Tag ``count`` tag-free devices while the changes meet ``faults``: every row
    succeeds, and each link is sent once and made once."""
    targets = serials(duo, count, free=True)
    duo.faults.update({**faults, "mutating_only": True})
    before = duo.stats.mutating
    job = write_csv(tmp_path / "tag.csv", [["serial", "tag"], *[[s, "Lärare"] for s in targets]])
    res = run(run_cli, duo, job, "--action", "tag", *flags)
    assert [r["status"] for r in res.report] == ["succeeded"] * count, res.report
    assert duo.stats.mutating - before == count
    assert duo.call(lambda: state(duo).duplicate_links()) == []
    return res


def test_slow_reply_tag_is_verified_not_resent(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    res = tag_through(duo, run_cli, tmp_path, 6, {"slow_rate": 1.0, "slow_seconds": 1.5}, "--timeout", "0.5")
    assert res.reasons[0] == Reason.READ_BACK


def test_held_replies_are_read_back_while_the_run_goes_on(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    """With the defaults, a tag whose answer the MDM holds 3 s (after doing
    it) is read back once answers are known to take milliseconds: confirmed
    without waiting out the hold, and never sent twice."""
    held = {"latency": 0.005, "slow_rate": 0.1, "slow_seconds": 3.0, "seed": 5}
    res = tag_through(duo, run_cli, tmp_path, 150, held)
    confirmed = [r for r in res.report if "confirmed by reading it back" in r["detail"]]
    assert len(confirmed) >= 5, [r["detail"] for r in res.report]


@pytest.mark.parametrize(
    ("fault", "said"),
    [("drop_after_rate", "not resent"), ("gateway_after_rate", "HTTP 504")],
    ids=["lost", "gateway"],
)
def test_message_whose_answer_is_lost_is_unknown_not_resent(
    duo: Any, run_cli: Any, tmp_path: Path, fault: str, said: str
) -> None:
    """A message has no read-back: a lost answer, or a gateway's 504 after the MDM
    took it, leaves the row unknown and the message sent once."""
    target = serials(duo, 1)[0]
    duo.faults.update({fault: 1.0, "mutating_only": True})
    job = write_csv(tmp_path / "msg.csv", [["serial", "message"], [target, "Hej"]])
    res = run(run_cli, duo, job, "--action", "message")
    assert res.exit_code == 1
    assert res.report[0]["status"] == "unknown" and res.reasons == [Reason.NO_ANSWER]
    assert said in res.report[0]["detail"] and "not resent" in res.report[0]["detail"]
    assert duo.call(lambda: len([c for c in state(duo).commands if c["serialNumber"] == target])) == 1


def test_gateway_answer_after_a_tag_is_read_back_not_resent(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    """A 504 from a gateway after the MDM linked the tag: read back, confirmed, never linked twice."""
    res = tag_through(duo, run_cli, tmp_path, 3, {"gateway_after_rate": 1.0})
    assert res.exit_code == 0, res.output
    assert res.reasons == [Reason.READ_BACK] * 3
    assert all("confirmed by reading it back" in r["detail"] for r in res.report)


def test_report_round_trip(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    targets = serials(duo, 5, free=True)
    job = write_csv(
        tmp_path / "round.csv",
        [
            ["serial", "tag", "owner"],
            [targets[0], "Lärare", "=cmd|' /C calc'!A0"],
            [targets[1], "Nytt läsår", "b"],
            [targets[2], "Nytt läsår", "c"],
            [targets[3], "Lärare", "d"],
        ],
    )
    first = run(run_cli, duo, job, "--action", "tag")
    assert first.exit_code == 1
    assert [r["status"] for r in first.report] == ["succeeded", "failed", "failed", "succeeded"]
    assert first.report[0]["owner"] == "'=cmd|' /C calc'!A0"  # neutralised for Excel
    assert "bulkmdm run" in first.output and str(first.report_path) in first.output
    # fix the cause: the tag now exists
    duo.call(lambda: state(duo).add_tag({"name": "Nytt läsår"}))
    duo.call(lambda: duo.stats.__setattr__("mutating", 0))
    second = run(run_cli, duo, first.report_path, "--action", "tag")
    assert second.exit_code == 0, second.output
    assert [r["status"] for r in second.report] == ["succeeded"] * 4
    assert second.report[0]["detail"] == first.report[0]["detail"]  # carried untouched
    assert second.report[0]["owner"] == "'=cmd|' /C calc'!A0"
    header = list(second.report[0])
    assert header.count("status") == 1 and header[:3] == ["serial", "tag", "owner"]
    assert duo.stats.mutating == 2  # only the two failed rows were sent again


def test_xlsx_job_and_report(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Serial", "Username", "Klass"])
    ws.append([F["untagged_device"]["serial"], F["mixed_case_email"].lower(), "7A"])
    ws.append([F["leading_zero_serial"], F["user_without_devices"]["account"], "NA"])
    ws.append([1234, F["user_without_devices"]["account"], "8B"])
    path = tmp_path / "reassign.xlsx"
    wb.save(path)
    res = run(run_cli, duo, path, "--action", "assign-user")
    assert res.report_path.suffix == ".xlsx"
    assert [r["status"] for r in res.report] == ["succeeded", "succeeded", "failed"]
    assert res.report[1]["Serial"] == F["leading_zero_serial"] and res.report[1]["Klass"] == "NA"
    assert "'1234'" in res.report[2]["detail"]
    assert duo.call(lambda: state(duo).devices[F["leading_zero_device_id"]]["userId"]) == 4


def test_semicolon_cp1252_csv(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = tmp_path / "sv.csv"
    job.write_bytes(
        "SN;Tag;Action\r\n".encode("cp1252") + f"{F['untagged_device']['serial']};Prov-läge;tag\r\n".encode("cp1252")
    )
    res = run(run_cli, duo, job)
    assert res.exit_code == 0, res.output
    assert res.report[0]["Tag"] == "Prov-läge"
    assert duo.call(lambda: state(duo).device_tags_of(F["untagged_device"]["id"])) == ["Prov-läge"]


def test_dry_run_sends_nothing(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    targets = serials(duo, 3, free=True)
    job = write_csv(
        tmp_path / "dry.csv",
        [
            ["serial", "tag"],
            *[[s, "Lärare"] for s in targets],
            ["NOSUCH", "Lärare"],
            [F["tagged_device"]["serial"], "Prov-läge"],
        ],
    )
    res = run(run_cli, duo, job, "--action", "tag", "--dry-run")
    assert [r["status"] for r in res.report] == ["planned"] * 3 + ["failed", "skipped"]
    assert "will send 3 requests that change something" in res.output
    assert duo.stats.mutating == 0


def test_destructive_without_yes_sends_nothing(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = write_csv(
        tmp_path / "wipe.csv",
        [["serial", "action"], [F["untagged_device"]["serial"], "wipe"], [F["leading_zero_serial"], "lock"]],
    )
    res = run(run_cli, duo, job)
    assert res.exit_code == 2
    assert "--yes" in res.output and "Traceback" not in res.output
    assert duo.stats.requests == 0
    res = run(run_cli, duo, job, "--yes", "--max-destructive", "0")
    assert res.exit_code == 2 and duo.stats.requests == 0


def test_bad_credentials_exit_2(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = write_csv(tmp_path / "c.csv", [["serial"], [F["untagged_device"]["serial"]]])
    res = run_cli(
        ["run", str(job), "--provider", "duostation", "--url", duo.url, "--action", "lock"],
        env={"BULKMDM_PASSWORD": "wrong-password-123"},
    )
    assert res.exit_code == 2
    assert "credentials" in res.output and "wrong-password-123" not in res.output
    assert duo.stats.mutating == 0


def test_missing_credentials_exit_2(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = write_csv(tmp_path / "c.csv", [["serial"], ["X"]])
    res = run_cli(
        ["run", str(job), "--provider", "duostation", "--url", duo.url, "--action", "lock"],
        env={"BULKMDM_USERNAME": ""},
    )
    assert res.exit_code == 2 and "BULKMDM_USERNAME" in res.output


@pytest.mark.parametrize(
    "args, words",
    [
        (["--provider", "nope"], "Unknown provider"),
        (["--url", "ftp://x"], "must start with https://"),
        (["--rate", "fast"], "is not a rate"),
        (["--action", "fly"], "is not an action"),
    ],
)
def test_bad_usage_is_one_sentence(duo: Any, run_cli: Any, tmp_path: Path, args: list[str], words: str) -> None:
    job = write_csv(tmp_path / "u.csv", [["serial", "action"], ["X", "lock"]])
    base = {"--provider": "duostation", "--url": duo.url}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = ["run", str(job)] + [x for kv in base.items() for x in kv]
    res = run_cli(argv)
    assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output


def test_missing_column_for_every_row_exit_2(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    job = write_csv(tmp_path / "m.csv", [["serial"], ["A"], ["B"]])
    res = run(run_cli, duo, job, "--action", "tag")
    assert res.exit_code == 2 and "tag" in res.output


def test_requests_per_row(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    targets = serials(duo, 300)
    job = write_csv(tmp_path / "many.csv", [["serial", "tag"], *[[s, "Gymnasiet"] for s in targets]])
    res = run(run_cli, duo, job, "--action", "tag", "--rate", "none", "--concurrency", "16")
    assert res.exit_code == 0
    already = sum(1 for r in res.report if r["status"] == "skipped")
    assert already + sum(1 for r in res.report if r["status"] == "succeeded") == 300
    # one link per row that needed it, plus 3 lists (devices, tags, device tags)
    assert duo.stats.requests == 300 - already + 3


def test_group_path_from_a_list_answer() -> None:
    """A server that answers ?path= with a list (or ignores the filter) is
    narrowed to the path asked, built from name + parentId when needed."""
    from bulkmdm.providers.duostation import _groups_at

    groups = [
        {"id": 1, "name": "Skolor", "parentId": 0},
        {"id": 2, "name": "Norra", "parentId": 1},
        {"id": 3, "name": "7A", "parentId": 2},
        {"id": 4, "name": "7A", "parentId": 1},
    ]
    assert [g["id"] for g in _groups_at(groups, "Skolor\\Norra\\7A")] == [3]
    assert [g["id"] for g in _groups_at(groups, "Skolor/7A")] == [4]
    assert _groups_at(groups, "Norra\\7A") == []
    with_paths = [{"id": 9, "path": "A/B"}, {"id": 8, "path": "A\\C"}]
    assert [g["id"] for g in _groups_at(with_paths, "A\\B")] == [9]


# -- the wire, exactly as the vendor doc writes it --------------------------------


def wire(sim: Any) -> list[dict[str, Any]]:
    """Every /api request the simulator received: method, raw path, content type, body."""
    return sim.call(lambda: list(sim.app["requests"]))  # type: ignore[no-any-return]


def changes(sim: Any) -> list[tuple[str, str, Any]]:
    return [(r["method"], r["path"], r["body"]) for r in wire(sim) if r["method"] != "GET"]


def test_requests_are_the_documented_ones(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    free, free_id = F["untagged_device"]["serial"], F["untagged_device"]["id"]
    tagged = F["tagged_device"]
    nodev = F["user_without_devices"]
    job = write_csv(
        tmp_path / "wire.csv",
        [
            ["action", "serial", "tag", "email", "user", "group", "app", "message"],
            ["tag", free, "Lärare", "", "", "", "", ""],
            ["untag", tagged["serial"], tagged["tag"], "", "", "", "", ""],
            ["tag-user", "", "Gymnasiet", nodev["email"], "", "", "", ""],
            ["untag-user", "", "Lärare", F["tagged_user"]["email"], "", "", "", ""],
            ["assign-user", free, "", "", nodev["account"], "", "", ""],
            ["move-user", "", "", nodev["email"], "", F["group_path"], "", ""],
            ["install-app", free, "", "", "", "", F["app"]["name"], ""],
            ["remove-app", free, "", "", "", "", F["app"]["name"], ""],
            ["lock", free, "", "", "", "", "", ""],
            ["wipe", free, "", "", "", "", "", ""],
            ["inventory", free, "", "", "", "", "", ""],
            ["clear-passcode", free, "", "", "", "", "", ""],
            ["message", free, "", "", "", "", "", "Hej & välkommen"],
            ["delete-user", "", "", F["user_in_group"]["email"], "", "", "", ""],
        ],
    )
    res = run(run_cli, duo, job, "--yes", "--concurrency", "1")
    assert [r["status"] for r in res.report] == ["succeeded"] * 14, res.report
    dev = f"/api/devices/{free_id}"
    assert sorted(changes(duo), key=repr) == sorted(
        [
            ("POST", "/api/devicetags", {"deviceId": free_id, "tagId": 2}),
            ("DELETE", f"/api/devicetags/{tagged['link_id']}", None),
            ("POST", "/api/usertags", {"userId": nodev["id"], "tagId": 8}),
            ("DELETE", f"/api/usertags/{F['tagged_user']['link_id']}", None),
            ("PUT", dev, {"userId": nodev["id"]}),
            ("PUT", f"/api/users/{nodev['id']}", {"groupId": F["group_id"]}),
            ("POST", f"{dev}/installapp", {"appId": F["app"]["id"]}),
            ("POST", f"{dev}/removeapp", {"identifier": F["app"]["packageId"]}),
            ("POST", f"{dev}/lockdevice", {}),
            ("POST", f"{dev}/wipedevice", {}),
            ("POST", f"{dev}/inventorydevice", {}),
            ("POST", f"{dev}/clearpasscode", {}),
            ("POST", f"{dev}/sendmessage", {"message": "Hej & välkommen"}),
            ("DELETE", f"/api/users/{F['user_in_group']['id']}", None),
        ],
        key=repr,
    )
    # integers go out as JSON numbers, bodies as JSON
    for r in wire(duo):
        if r["body"] is not None:
            assert r["contentType"] == "application/json", r
    for method, _, body in changes(duo):
        for key in ("tagId", "userId", "groupId", "appId"):
            if body and key in body:
                assert type(body[key]) is int, (method, body)
    # the group is found with the documented GET /api/groups?path=, encoded as
    # the doc's example encodes it (%5C for \, %20 for a space)
    assert "/api/groups?path=Skolor%5CBj%C3%B6rkskolan%5CKlass%208B" in [r["path"] for r in wire(duo)]


def test_lists_cut_short_use_the_documented_searches(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    """A server whose full lists leave objects out: every device, user and tag
    link is then found with the doc's searches, and "already done" still holds."""
    duo.app["shape"].list_limit = 0
    tagged, nodev = F["tagged_device"], F["user_without_devices"]
    job = write_csv(
        tmp_path / "cut.csv",
        [
            ["action", "serial", "tag", "email", "user", "group"],
            ["tag", F["untagged_device"]["serial"], "Lärare", "", "", ""],
            ["tag", tagged["serial"], tagged["tag"], "", "", ""],  # already: links read per device
            ["untag", tagged["serial"], tagged["tag"], "", "", ""],
            ["tag-user", "", F["tagged_user"]["tag"], F["tagged_user"]["email"], "", ""],  # already
            ["assign-user", F["leading_zero_serial"], "", "", nodev["account"], ""],
            ["assign-user", F["assigned_device"]["serial"], "", "", F["assigned_device"]["email"], ""],  # already
            ["move-user", "", "", F["mixed_case_email"].upper(), "", F["group_path"]],
            ["lock", "NOSUCHSERIAL", "", "", "", ""],
            ["lock", F["duplicate_serial"], "", "", "", ""],
            ["tag-user", "", "Lärare", "nobody@skola.se", "", ""],
        ],
    )
    res = run(run_cli, duo, job)
    assert [r["status"] for r in res.report] == [
        "succeeded",
        "skipped",
        "succeeded",
        "skipped",
        "succeeded",
        "skipped",
        "succeeded",
        "failed",
        "failed",
        "failed",
    ], res.report
    assert res.reasons[7:] == [Reason.NOT_FOUND, Reason.AMBIGUOUS, Reason.NOT_FOUND]
    paths = [r["path"] for r in wire(duo) if r["method"] == "GET"]
    assert f"/api/devices?serialNumber={tagged['serial']}" in paths
    assert f"/api/devicetags?deviceId={tagged['id']}" in paths
    # (yarl sends the @ that we encode as %40 bare; both decode the same)
    assert "/api/users?email=lars.hakansson@skola.se" in paths
    assert "/api/users?account=samnys01" in paths

    def check() -> None:
        st = state(duo)
        assert st.device_tags_of(F["untagged_device"]["id"]) == ["Lärare"]
        assert st.device_tags_of(tagged["id"]) == []
        assert st.devices[F["leading_zero_device_id"]]["userId"] == nodev["id"]
        assert st.users[F["mixed_case_email_user_id"]]["groupId"] == F["group_id"]
        assert st.duplicate_links() == [] and st.duplicate_user_links() == []

    duo.call(check)


def test_pascal_case_wrapped_lists_and_string_ids(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    """Json.NET's default PascalCase, lists wrapped in an object and integer ids
    answered as strings are all read; ids still go out as JSON numbers."""
    shape = duo.app["shape"]
    shape.pascal_case, shape.wrap, shape.string_ids = True, "Data", True
    free = F["untagged_device"]["serial"]
    nodev = F["user_without_devices"]
    job = write_csv(
        tmp_path / "pascal.csv",
        [
            ["action", "serial", "tag", "email", "user", "group", "app"],
            ["tag", free, "Lärare", "", "", "", ""],
            ["tag", F["tagged_device"]["serial"], F["tagged_device"]["tag"], "", "", "", ""],
            ["tag-user", "", "Gymnasiet", nodev["email"], "", "", ""],
            ["untag-user", "", "Lärare", F["tagged_user"]["email"], "", "", ""],
            ["assign-user", free, "", "", nodev["account"], "", ""],
            ["assign-user", F["assigned_device"]["serial"], "", "", F["assigned_device"]["account"], "", ""],
            ["move-user", "", "", nodev["email"], "", F["group_path"], ""],
            ["move-user", "", "", F["user_in_group"]["email"], "", F["user_in_group"]["group"], ""],
            ["install-app", free, "", "", "", "", F["app"]["packageId"]],
            ["remove-app", free, "", "", "", "", F["app"]["name"]],
        ],
    )
    res = run(run_cli, duo, job)
    assert [r["status"] for r in res.report] == [
        "succeeded",
        "skipped",
        "succeeded",
        "succeeded",
        "succeeded",
        "skipped",
        "succeeded",
        "skipped",
        "succeeded",
        "succeeded",
    ], res.report

    def check() -> None:
        st = state(duo)
        assert st.device_tags_of(F["untagged_device"]["id"]) == ["Lärare"]
        assert st.user_tags_of(nodev["id"]) == ["Gymnasiet"]
        assert st.user_tags_of(F["tagged_user"]["id"]) == []
        assert st.devices[F["untagged_device"]["id"]]["userId"] == nodev["id"]
        assert st.users[nodev["id"]]["groupId"] == F["group_id"]
        assert st.commands_for(F["untagged_device"]["id"], "removeapp")[0]["payload"] == {
            "identifier": F["app"]["packageId"]
        }

    duo.call(check)


def test_an_error_for_an_ambiguous_group_fails_only_its_rows(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    """ "If more than one group matches the name an error will be returned":
    the doc names no status; a server that answers 500 fails those rows only."""
    duo.app["shape"].ambiguous_group_status = 500
    nodev = F["user_without_devices"]
    job = write_csv(
        tmp_path / "amb.csv",
        [
            ["action", "serial", "email", "group"],
            ["move-user", "", nodev["email"], F["duplicate_group_path"]],
            ["move-user", "", F["mixed_case_email"], F["group_path"]],
            ["lock", F["untagged_device"]["serial"], "", ""],
        ],
    )
    res = run(run_cli, duo, job)
    assert [r["status"] for r in res.report] == ["failed", "succeeded", "succeeded"], res.report
    assert "more than one group" in res.report[0]["detail"] and "500" in res.report[0]["detail"]
    assert duo.call(lambda: state(duo).users[nodev["id"]]["groupId"]) != F["duplicate_group_ids"][0]


def test_delete_user_by_user_id_and_account_names_that_look_like_addresses(
    duo: Any, run_cli: Any, tmp_path: Path
) -> None:
    st = state(duo)
    uid = duo.call(
        lambda: st.add_user(
            {"name": "Anna Konto", "email": "anna.annan@skola.se", "accountName": "anna@konto.local", "groupId": 0}
        )
    )
    job = write_csv(
        tmp_path / "del.csv",
        [["user_id"], [str(F["user_without_devices"]["id"])], [str(F["user_with_devices"]["id"])], ["99999"], ["abc"]],
    )
    res = run(run_cli, duo, job, "--action", "delete-user", "--yes")
    assert [r["status"] for r in res.report] == ["succeeded", "failed", "failed", "failed"], res.report
    assert res.report[1]["http_status"] == "409"
    assert res.reasons[2:] == [Reason.NOT_FOUND, Reason.NOT_FOUND]
    assert duo.call(lambda: F["user_without_devices"]["id"] not in st.users)
    assert ("DELETE", f"/api/users/{F['user_without_devices']['id']}", None) in changes(duo)

    job = write_csv(tmp_path / "acct.csv", [["serial", "user"], [F["untagged_device"]["serial"], "anna@konto.local"]])
    res = run(run_cli, duo, job, "--action", "assign-user")
    assert res.report[0]["status"] == "succeeded", res.report
    assert duo.call(lambda: st.devices[F["untagged_device"]["id"]]["userId"]) == uid


@pytest.mark.parametrize("action", ["assign-user", "tag-user"])
def test_a_value_that_is_one_users_email_and_anothers_account_name_fails_naming_both(
    duo: Any, run_cli: Any, tmp_path: Path, action: str
) -> None:
    st = state(duo)
    address = F["user_without_devices"]["email"]
    other = duo.call(lambda: st.add_user({"name": "Sam Annan", "email": "sam.annan@skola.se", "accountName": address}))
    column = "user" if action == "assign-user" else "email"
    job = write_csv(
        tmp_path / "both.csv",
        [["serial", column, "tag"], [F["untagged_device"]["serial"], address, F["tagged_user"]["tag"]]],
    )
    before = len(changes(duo))
    res = run(run_cli, duo, job, "--action", action)
    assert res.report[0]["status"] == "failed", res.report
    detail = res.report[0]["detail"]
    assert f"{address} (id {F['user_without_devices']['id']}) by email" in detail, detail
    assert f"sam.annan@skola.se (id {other}) by account name" in detail, detail
    assert len(changes(duo)) == before


def test_an_app_named_like_another_apps_id_fails_naming_both(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    st = state(duo)
    kahoot = F["app"]
    other = duo.call(lambda: next(a for a in st.apps.values() if a["id"] != kahoot["id"]))

    def rename() -> None:
        other["name"] = str(kahoot["id"])
        st._changed("apps")

    duo.call(rename)
    job = write_csv(tmp_path / "app.csv", [["serial", "app"], [F["untagged_device"]["serial"], str(kahoot["id"])]])
    before = len(changes(duo))
    res = run(run_cli, duo, job, "--action", "install-app")
    detail = res.report[0]["detail"]
    assert res.report[0]["status"] == "failed", res.report
    assert f"{kahoot['name']} (id {kahoot['id']}) by id" in detail, detail
    assert f"{kahoot['id']} (id {other['id']}) by name or package id" in detail, detail
    assert len(changes(duo)) == before


def test_planned_in_chunks(duo: Any, run_cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job planned a chunk at a time (as a huge one is) fetches its lists
    once, catches a repeat across chunks and reports every row."""
    from bulkmdm.providers.duostation import DuoStation

    monkeypatch.setattr(DuoStation, "chunk_rows", 7)
    targets = serials(duo, 40, free=True)
    rows = [[s, "Gymnasiet"] for s in targets] + [[targets[0], "Gymnasiet"], ["NO-SUCH-SERIAL", "Gymnasiet"]]
    job = write_csv(tmp_path / "chunks.csv", [["serial", "tag"], *rows])
    res = run(run_cli, duo, job, "--action", "tag", "--rate", "none", "--concurrency", "4")
    assert res.exit_code == 1
    statuses = [r["status"] for r in res.report]
    assert statuses == ["succeeded"] * 40 + ["skipped", "failed"], res.report
    assert "line 2" in res.report[40]["detail"]
    # 40 links, 3 lists fetched once (not once per chunk), 1 search for the unknown serial
    assert duo.stats.requests == 40 + 3 + 1

    def links() -> int:
        st = state(duo)
        return sum(1 for s in targets if "Gymnasiet" in st.device_tags_of(st.devices_by_serial(s)[0]["id"]))

    assert duo.call(links) == 40


def test_tag_and_untag_of_one_pair_in_one_job_fail_the_later_row(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    # Every row is planned against the state before the run: an untag then a
    # tag of the same pair used to report the tag "skipped: already has tag"
    # while the device ended without it. The later row now fails instead.
    tagged, user = F["tagged_device"], F["tagged_user"]
    job = write_csv(
        tmp_path / "flip.csv",
        [
            ["action", "serial", "email", "tag"],
            ["untag", tagged["serial"], "", tagged["tag"]],
            ["tag", tagged["serial"], "", tagged["tag"]],
            ["untag", tagged["serial"], "", tagged["tag"]],
            ["untag-user", "", user["email"], user["tag"]],
            ["tag-user", "", user["email"], user["tag"]],
            # an earlier opposite row that changed nothing is no contradiction
            ["untag", F["untagged_device"]["serial"], "", "Lärare"],
            ["tag", F["untagged_device"]["serial"], "", "Lärare"],
        ],
    )
    res = run(run_cli, duo, job)
    assert [r["status"] for r in res.report] == [
        "succeeded",
        "failed",
        "skipped",
        "succeeded",
        "failed",
        "skipped",
        "succeeded",
    ], res.report
    assert "also untagged" in res.report[1]["detail"] and "line 2" in res.report[1]["detail"]
    assert "line 2" in res.report[2]["detail"]
    assert "also untagged" in res.report[4]["detail"] and "line 5" in res.report[4]["detail"]
    assert res.exit_code == 1
    assert duo.call(lambda: state(duo).device_tags_of(tagged["id"])) == []
    assert user["tag"] not in duo.call(lambda: state(duo).user_tags_of(user["id"]))
    assert duo.call(lambda: state(duo).device_tags_of(F["untagged_device"]["id"])) == ["Lärare"]
    assert duo.stats.mutating == 3


def test_app_name_in_another_capitalisation(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    # Like tag names: a name or package id in other letter case is used when
    # it points at one app; one that points at several still fails the row.
    free = F["untagged_device"]["serial"]
    job = write_csv(
        tmp_path / "apps.csv",
        [
            ["action", "serial", "app"],
            ["install-app", free, F["app"]["name"].upper()],
            ["remove-app", free, F["app"]["packageId"].upper()],
            ["install-app", free, F["shared_app_name"].lower()],
        ],
    )
    res = run(run_cli, duo, job)
    assert [r["status"] for r in res.report] == ["succeeded", "succeeded", "failed"], res.report
    assert res.reasons[2] == Reason.AMBIGUOUS
    bodies = [body for method, _path, body in changes(duo)]
    assert bodies == [{"appId": F["app"]["id"]}, {"identifier": F["app"]["packageId"]}], bodies


def test_answers_with_a_byte_order_mark_are_read(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    """A .NET server writing with Encoding.UTF8 puts a BOM before its JSON; the
    lists are still read (not every serial reported "not found")."""
    duo.app["shape"].bom = True
    free = F["untagged_device"]["serial"]
    nodev = F["user_without_devices"]
    job = write_csv(
        tmp_path / "bom.csv",
        [
            ["action", "serial", "tag", "email", "group", "app"],
            ["tag", free, "Lärare", "", "", ""],
            ["tag", F["tagged_device"]["serial"], F["tagged_device"]["tag"], "", "", ""],
            ["untag-user", "", "Lärare", F["tagged_user"]["email"], "", ""],
            ["move-user", "", "", nodev["email"], F["group_path"], ""],
            ["install-app", free, "", "", "", F["app"]["name"]],
            ["lock", free, "", "", "", ""],
        ],
    )
    res = run(run_cli, duo, job)
    assert [r["status"] for r in res.report] == [
        "succeeded",
        "skipped",
        "succeeded",
        "succeeded",
        "succeeded",
        "succeeded",
    ], res.report
    assert duo.call(lambda: state(duo).users[nodev["id"]]["groupId"]) == F["group_id"]


def test_tag_links_shaped_as_the_tags_they_link(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    """A device/user tag answered as the linked tag ({"deviceTagId": <link>,
    "id": <tag>, "name": ...}): the link's id is the one deleted, never the tag's."""
    duo.app["shape"].links_as_tags = True
    tagged, tuser = F["tagged_device"], F["tagged_user"]
    free = F["untagged_device"]["serial"]
    job = write_csv(
        tmp_path / "tagobj.csv",
        [
            ["action", "serial", "tag", "email"],
            ["tag", tagged["serial"], tagged["tag"], ""],
            ["untag", tagged["serial"], tagged["tag"], ""],
            ["untag", free, tagged["tag"], ""],
            ["untag-user", "", tuser["tag"], tuser["email"]],
        ],
    )
    # the second row is the opposite of the first, which was skipped: it stands
    res = run(run_cli, duo, job)
    assert [r["status"] for r in res.report] == ["skipped", "succeeded", "skipped", "succeeded"], res.report
    assert ("DELETE", f"/api/devicetags/{tagged['link_id']}", None) in changes(duo)
    assert ("DELETE", f"/api/usertags/{tuser['link_id']}", None) in changes(duo)
    assert not [c for c in changes(duo) if c[0] == "POST"]
    assert duo.call(lambda: state(duo).device_tags_of(tagged["id"])) == []
    assert duo.call(lambda: tuser["tag"] not in state(duo).user_tags_of(tuser["id"]))


def test_refused_unfiltered_link_lists_use_the_documented_search(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    """A server that will not list every device tag (it wants ?deviceId=) does
    not fail the job: each device's tags are read with the documented search."""
    duo.app["shape"].unfiltered_links_status = 400
    tagged, tuser = F["tagged_device"], F["tagged_user"]
    free = F["untagged_device"]["serial"]
    job = write_csv(
        tmp_path / "nolist.csv",
        [
            ["action", "serial", "tag", "email"],
            ["tag", tagged["serial"], tagged["tag"], ""],
            ["tag", free, "Lärare", ""],
            ["untag", tagged["serial"], "Lärare", ""],
            ["tag-user", "", tuser["tag"], tuser["email"]],
            ["untag-user", "", tuser["tag"], F["user_without_devices"]["email"]],
            ["lock", free, "", ""],
        ],
    )
    res = run(run_cli, duo, job)
    assert res.exit_code == 0, res.report
    assert [r["status"] for r in res.report] == [
        "skipped",
        "succeeded",
        "skipped",
        "skipped",
        "skipped",
        "succeeded",
    ], res.report
    paths = [r["path"] for r in wire(duo) if r["method"] == "GET"]
    assert f"/api/devicetags?deviceId={tagged['id']}" in paths
    assert f"/api/usertags?userId={tuser['id']}" in paths
    assert [c[0] for c in changes(duo)] == ["POST", "POST"]
    assert duo.call(lambda: state(duo).device_tags_of(F["untagged_device"]["id"])) == ["Lärare"]


def test_bad_credentials_answered_403_exit_2(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    duo.app["shape"].auth_status = 403
    job = write_csv(tmp_path / "c403.csv", [["serial"], [F["untagged_device"]["serial"]]])
    res = run_cli(
        ["run", str(job), "--provider", "duostation", "--url", duo.url, "--action", "lock"],
        env={"BULKMDM_PASSWORD": "wrong-password-123"},
    )
    assert res.exit_code == 2, res.output
    assert "credentials" in res.output and "wrong-password-123" not in res.output
    assert duo.stats.mutating == 0


def test_group_path_with_outer_separators(duo: Any, run_cli: Any, tmp_path: Path) -> None:
    """ "<path> is the full path for the group separated with / or \\": a path
    written with a leading/trailing separator names the same group, also on a
    server that matches ?path= exactly as written."""
    duo.app["shape"].exact_group_paths = True
    nodev = F["user_without_devices"]
    job = write_csv(
        tmp_path / "outer.csv",
        [
            ["action", "email", "group"],
            ["move-user", nodev["email"], "\\" + F["group_path"] + "\\"],
            ["move-user", F["user_in_group"]["email"], "/" + F["user_in_group"]["group"]],
            ["move-user", F["mixed_case_email"], "\\"],
        ],
    )
    res = run(run_cli, duo, job)
    assert [r["status"] for r in res.report] == ["succeeded", "skipped", "failed"], res.report
    assert res.report[0]["group"] == "\\" + F["group_path"] + "\\"
    assert duo.call(lambda: state(duo).users[nodev["id"]]["groupId"]) == F["group_id"]
    assert f"/api/groups?path={quote(F['group_path'], safe='')}" in [r["path"] for r in wire(duo)]


@pytest.mark.parametrize("answer", ["lost", "gateway"])
@pytest.mark.parametrize("action", ["assign-user", "move-user"])
def test_a_change_to_an_object_deleted_meanwhile_fails_not_found(
    run_cli: Any, tmp_path: Path, answer: str, action: str
) -> None:
    """The device (or user) is deleted in the console as the change goes out,
    and its answer is lost or a gateway's: the read-back's 404 proves it
    gone, so the row fails not-found, saying so, and nothing is sent again."""
    from aiohttp import web

    from bulkmdm.sim.common import SimServer, _drop
    from bulkmdm.sim.duostation import make_app

    sent: list[str] = []

    @web.middleware
    async def deleted_meanwhile(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/api/") and (request.method != "GET" or sent):
            sent.append(request.method)
        if request.method == "PUT" and sent.count("PUT") == 1:
            kind, object_id = request.path.split("/")[2:4]
            st = request.app["state"]
            st.remove_device(object_id) if kind == "devices" else st.delete_user(int(object_id))
            if answer == "lost":
                _drop(request)
                raise asyncio.CancelledError
            return web.json_response({"message": "Gateway Timeout"}, status=504)
        return await handler(request)

    app = make_app(devices=50, users=50, seed=1)
    app.middlewares.append(deleted_meanwhile)
    with SimServer(app) as sim:
        if action == "assign-user":
            row = ["serial", "user"], [serials(sim, 1)[0], F["user_with_devices"]["account"]]
            what = "device"
        else:
            row = ["email", "group"], [F["user_without_devices"]["email"], F["group_path"]]
            what = "user"
        res = run(run_cli, sim, write_csv(tmp_path / "job.csv", row), "--action", action)
    assert res.report[0]["status"] == "failed" and res.reasons == [Reason.NOT_FOUND], res.report
    detail = res.report[0]["detail"]
    assert detail.startswith(what.capitalize()) and "no longer exists" in detail, detail
    assert sent == ["PUT", "GET"]  # read back once, never sent again
