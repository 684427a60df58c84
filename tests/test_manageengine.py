"""ManageEngine MDM: the provider against its simulator over real HTTP on
127.0.0.1, in both editions (on-premises API key, cloud OAuth)."""

from __future__ import annotations

import asyncio
import csv
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from bulkmdm.errors import AuthError, ConfigError, QuotaExhausted, SetupFailed
from bulkmdm.model import JobRow, Outcome, Reason, Step
from bulkmdm.providers.base import Settings
from bulkmdm.providers.manageengine import ManageEngine, ZohoOAuth
from bulkmdm.retry import RetryPolicy
from bulkmdm.sim.common import Faults, SimServer
from bulkmdm.sim.manageengine import FACTS, MEState, make_app
from bulkmdm.client import Client

FAST = RetryPolicy(attempts=6, base=0.01, cap=0.05)
#: ManageEngine's declared policy with short waits (the minute window: 0.2 s)
ME_FAST = replace(ManageEngine.retry_policy, attempts=6, base=0.01, cap=0.05, throttle_wait=0.2)
API_KEY = "me-api-key-0123456789abcdef"
CLIENT_ID = "1000.CLIENTIDXYZ"
CLIENT_SECRET = "s3cr3t-client-value"
REFRESH = "1000.refresh-token-value"
SECRETS = (API_KEY, CLIENT_SECRET, REFRESH)
GROUP = FACTS["group"]
APP = FACTS["app"]


def start(**kw: Any) -> SimServer:
    kw.setdefault("devices", 300)
    return SimServer(
        make_app(api_key=API_KEY, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token=REFRESH, **kw)
    )


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with start() as server:
        yield server


@pytest.fixture(params=["on-premises", "cloud"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def env_for(mode: str, sim: SimServer, **extra: str) -> dict[str, str]:
    if mode == "on-premises":
        env = {"BULKMDM_API_KEY": API_KEY}
    else:
        env = {
            "BULKMDM_CLIENT_ID": CLIENT_ID,
            "BULKMDM_CLIENT_SECRET": CLIENT_SECRET,
            "BULKMDM_REFRESH_TOKEN": REFRESH,
            "BULKMDM_OAUTH_URL": sim.url + "/oauth/v2/token",
        }
    env.update(extra)
    return env


def prefix(mode: str) -> str:
    return "/api/v1/mdm" if mode == "on-premises" else "/api/v1"


def state(sim: SimServer) -> MEState:
    return sim.app["state"]  # type: ignore[no-any-return]


def rows(*specs: dict[str, str]) -> list[JobRow]:
    return [JobRow(i, spec["action"], {k: v for k, v in spec.items() if k != "action"}) for i, spec in enumerate(specs)]


def batches(steps: list[Step], size: int) -> list[list[Step]]:
    groups: dict[Any, list[Step]] = {}
    for step in steps:
        groups.setdefault(step.batch_key, []).append(step)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


async def run(
    sim: SimServer,
    env: dict[str, str],
    job: Sequence[JobRow],
    *,
    between: Callable[[], Awaitable[None] | None] | None = None,
    concurrent: bool = False,
    window: float | None = None,
) -> list[Outcome]:
    """plan, then execute every batch, as the engine does; outcomes in row order.
    ``window``: the policy's wait for the API's per-minute window, shortened."""
    auth = ManageEngine.auth_from_env(env)
    policy = ME_FAST if window is None else replace(ME_FAST, throttle_wait=window)
    async with Client(
        ManageEngine.api_base(sim.url), auth=auth, retry=policy, timeout=5, headers=ManageEngine.request_headers
    ) as client:
        provider = ManageEngine(client, Settings(url=sim.url, env=env))
        planned = await provider.plan(job)
        assert len(planned) == len(job)
        if between is not None:
            waiting = between()
            if waiting is not None:
                await waiting
        out = {p.index: p for p in planned if isinstance(p, Outcome)}
        todo = batches([p for p in planned if isinstance(p, Step)], provider.batch_size())
        if concurrent:
            results = await asyncio.gather(*(provider.execute(b) for b in todo))
        else:
            results = [await provider.execute(b) for b in todo]
        for batch, outcomes in zip(todo, results, strict=True):
            assert [o.index for o in outcomes] == [s.index for s in batch]
            out.update({o.index: o for o in outcomes})
    return [out[r.index] for r in job]


def write_csv(path: Path, table: Sequence[Sequence[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(table)
    return path


def statuses(outcomes: Sequence[Outcome]) -> list[str]:
    return [str(o.status) for o in outcomes]


def serial_of(sim: SimServer, device_id: int) -> str:
    return str(state(sim).devices[device_id]["serial_number"])


def generated(sim: SimServer) -> list[int]:
    """Ordinary devices (not the FACTS edge cases), in id order."""
    return sorted(state(sim).devices)[FACTS["edge_devices"] :]


def members(sim: SimServer, group_id: int) -> set[int]:
    return set(state(sim).members.get(group_id, {}))


def posts(sim: SimServer, mode: str, route: str) -> int:
    return sim.stats.by_route.get(f"POST {prefix(mode)}{route}", 0)


def deletes(sim: SimServer, mode: str, route: str) -> int:
    return sim.stats.by_route.get(f"DELETE {prefix(mode)}{route}", 0)


def gets(sim: SimServer, mode: str, route: str) -> int:
    return sim.stats.by_route.get(f"GET {prefix(mode)}{route}", 0)


# -- each action, both editions ------------------------------------------------


async def test_add_to_group_sends_one_request_and_skips_members(sim: SimServer, mode: str) -> None:
    inside = members(sim, GROUP["id"])
    new = [d for d in generated(sim) if d not in inside][:5]
    already = min(inside)
    job = rows(
        *({"action": "add-to-group", "serial": serial_of(sim, d), "group": GROUP["name"]} for d in new),
        {"action": "add-to-group", "serial": serial_of(sim, already), "group": GROUP["name"]},
    )
    out = await run(sim, env_for(mode, sim), job)
    assert statuses(out) == ["succeeded"] * 5 + ["skipped"]
    assert out[5].reason is Reason.ALREADY
    assert out[0].resolved == f"device_id={new[0]}; group_id={GROUP['id']}"
    assert posts(sim, mode, "/groups/{group_id}/members") == 1
    assert members(sim, GROUP["id"]) == inside | set(new)
    assert all(state(sim).log[d] == [f"add-to-group:{GROUP['id']}"] for d in new)
    assert already not in state(sim).log


async def test_remove_from_group_skips_non_members(sim: SimServer, mode: str) -> None:
    inside = sorted(members(sim, GROUP["id"]))[:3]
    free = FACTS["free_device"]
    job = rows(
        *({"action": "remove-from-group", "device_id": str(d), "group": GROUP["name"]} for d in inside),
        {"action": "remove-from-group", "serial": free["serial"], "group": GROUP["name"]},
    )
    out = await run(sim, env_for(mode, sim), job)
    assert statuses(out) == ["succeeded"] * 3 + ["skipped"]
    assert "removed from group" in out[0].detail and "is not in group" in out[3].detail
    assert deletes(sim, mode, "/groups/{group_id}/members/{member_id}") == 3
    assert not members(sim, GROUP["id"]) & set(inside)
    assert all(state(sim).log[d] == [f"remove-from-group:{GROUP['id']}"] for d in inside)


async def test_install_app_by_name_bundle_or_id_in_one_request(sim: SimServer, mode: str) -> None:
    devs = generated(sim)[:5]
    names = [APP["name"], APP["name"], APP["bundle_identifier"], str(APP["id"]), APP["name"]]
    job = rows(
        *({"action": "install-app", "serial": serial_of(sim, d), "app": a} for d, a in zip(devs, names, strict=True))
    )
    out = await run(sim, env_for(mode, sim), job)
    assert statuses(out) == ["succeeded"] * 5
    assert "Installation of 'Kahoot!' sent" in out[0].detail
    assert posts(sim, mode, "/apps/{app_id}/devices") == 1
    assert set(state(sim).associations[APP["id"]]) == set(devs)
    assert all(state(sim).log[d] == [f"install-app:{APP['id']}"] for d in devs)


async def test_remove_app_disassociates(sim: SimServer, mode: str) -> None:
    dev, app = FACTS["app_device"], FACTS["installed_app"]
    job = rows({"action": "remove-app", "serial": dev["serial"], "app": app["bundle_identifier"]})
    out = await run(sim, env_for(mode, sim), job)
    assert statuses(out) == ["succeeded"], out
    assert deletes(sim, mode, "/apps/{app_id}/devices/{device_id}") == 1
    assert dev["id"] not in state(sim).associations[app["id"]]
    assert state(sim).log[dev["id"]] == [f"remove-app:{app['id']}"]


# -- look-ups ------------------------------------------------------------------


async def test_an_app_named_like_another_apps_bundle_identifier_fails_naming_both(sim: SimServer) -> None:
    other = FACTS["installed_app"]
    sim.call(lambda: state(sim).apps[other["id"]].update(app_name=APP["bundle_identifier"]))
    job = rows({"action": "install-app", "serial": FACTS["free_device"]["serial"], "app": APP["bundle_identifier"]})
    out = await run(sim, env_for("on-premises", sim), job)
    assert statuses(out) == ["failed"]
    assert f"{APP['name']} (app id {APP['id']}) by bundle identifier" in out[0].detail, out[0].detail
    assert f"{APP['bundle_identifier']} (app id {other['id']}) by name" in out[0].detail, out[0].detail
    assert sim.stats.mutating == 0


async def test_not_found_ambiguous_and_blank_rows_fail_without_sending(sim: SimServer) -> None:
    g = GROUP["name"]
    job = rows(
        {"action": "add-to-group", "serial": "NOSUCHSERIAL", "group": g},
        {"action": "add-to-group", "serial": FACTS["duplicate_serial"], "group": g},
        {"action": "add-to-group", "serial": "--", "group": g},
        {"action": "add-to-group", "serial": "", "group": g},
        {"action": "add-to-group", "device_id": "9007199254999999", "group": g},
        {"action": "add-to-group", "serial": FACTS["free_device"]["serial"], "group": "Ingen sådan grupp"},
        {"action": "add-to-group", "serial": FACTS["free_device"]["serial"], "group": FACTS["duplicate_group_name"]},
        {"action": "add-to-group", "serial": FACTS["free_device"]["serial"], "group": "lånedatorer"},
        {"action": "add-to-group", "serial": FACTS["free_device"]["serial"], "group": ""},
        {"action": "install-app", "serial": FACTS["free_device"]["serial"], "app": FACTS["shared_app_name"]},
        {"action": "install-app", "serial": FACTS["free_device"]["serial"], "app": FACTS["shared_bundle_identifier"]},
        {"action": "install-app", "serial": FACTS["free_device"]["serial"], "app": "Minecraft"},
        {"action": "install-app", "serial": FACTS["free_device"]["serial"], "app": " "},
    )
    out = await run(sim, env_for("on-premises", sim), job)
    assert statuses(out) == ["failed"] * len(job)
    assert [o.reason for o in out] == [
        Reason.NOT_FOUND,
        Reason.AMBIGUOUS,
        Reason.INVALID_ROW,  # the serial '--'
        Reason.INVALID_ROW,  # blank
        Reason.NOT_FOUND,
        Reason.NOT_FOUND,
        Reason.AMBIGUOUS,
        Reason.NOT_FOUND,  # names must match exactly
        Reason.INVALID_ROW,
        Reason.AMBIGUOUS,
        Reason.AMBIGUOUS,
        Reason.NOT_FOUND,
        Reason.INVALID_ROW,
    ]
    assert "'--'" in out[2].detail
    assert "did you mean 'Lånedatorer'" in out[7].detail
    assert sim.stats.mutating == 0


async def test_serial_keeps_zeros_and_ignores_case_and_device_id_keeps_digits(sim: SimServer) -> None:
    job = rows(
        {"action": "add-to-group", "serial": FACTS["leading_zero_serial"], "group": GROUP["name"]},
        {"action": "add-to-group", "serial": FACTS["free_device"]["serial"].lower(), "group": GROUP["name"]},
        {"action": "add-to-group", "device_id": str(FACTS["app_device"]["id"]), "group": GROUP["name"]},
    )
    out = await run(sim, env_for("on-premises", sim), job)
    assert statuses(out) == ["succeeded"] * 3
    want = {FACTS["leading_zero_device_id"], FACTS["free_device"]["id"], FACTS["app_device"]["id"]}
    assert want <= members(sim, GROUP["id"])


async def test_same_change_twice_is_sent_once_and_opposite_changes_conflict(sim: SimServer) -> None:
    free = FACTS["free_device"]["serial"]
    job = rows(
        {"action": "add-to-group", "serial": free, "group": GROUP["name"]},
        {"action": "add-to-group", "serial": free, "group": GROUP["name"]},
        {"action": "remove-from-group", "serial": free, "group": GROUP["name"]},
    )
    out = await run(sim, env_for("on-premises", sim), job)
    assert statuses(out) == ["succeeded", "skipped", "failed"]
    assert "line 2" in out[1].detail and "line 2" in out[2].detail and "opposite change" in out[2].detail
    assert state(sim).log[FACTS["free_device"]["id"]] == [f"add-to-group:{GROUP['id']}"]


async def test_device_list_pages_are_followed(sim: SimServer) -> None:
    state(sim).page_size = 50
    last = max(state(sim).devices)
    job = rows({"action": "add-to-group", "serial": serial_of(sim, last), "group": GROUP["name"]})
    out = await run(sim, env_for("on-premises", sim), job)
    assert statuses(out) == ["succeeded"]
    assert sim.stats.by_route["GET /api/v1/mdm/devices"] == 6


# -- batches and failures ------------------------------------------------------


async def test_batch_with_some_bad_devices_is_split(sim: SimServer, mode: str) -> None:
    inside = members(sim, GROUP["id"])
    new = [d for d in generated(sim) if d not in inside][:10]
    gone = {new[3], new[8]}
    job = rows(*({"action": "add-to-group", "serial": serial_of(sim, d), "group": GROUP["name"]} for d in new))

    def delete_two() -> None:
        # deleted after the look-up, before the batch is sent
        for device_id in gone:
            sim.call(partial(state(sim).delete_device, device_id))

    out = await run(sim, env_for(mode, sim), job, between=delete_two)
    expect = ["failed" if d in gone else "succeeded" for d in new]
    assert statuses(out) == expect
    bad = out[3]
    assert bad.http_status == 400 and "COM0005" in bad.detail and "removed since the look-up" in bad.detail
    assert members(sim, GROUP["id"]) == inside | (set(new) - gone)
    assert all(state(sim).log[d] == [f"add-to-group:{GROUP['id']}"] for d in set(new) - gone)
    # halving 10 rows with 2 bad ones: 15 requests, the 8 good rows each added once
    assert posts(sim, mode, "/groups/{group_id}/members") == 15


async def test_already_there_409_skips_that_row_and_sends_the_rest(sim: SimServer, mode: str) -> None:
    # a server that answers "COM0010 409 Resource Already Exists" for a member
    # or app association made since the look-up refuses the whole request
    state(sim).conflict_on_duplicate = True
    inside = members(sim, GROUP["id"])
    new = [d for d in generated(sim) if d not in inside][:4]
    devs = [d for d in generated(sim) if d not in state(sim).associations.get(APP["id"], {})][:4]
    job = rows(
        *({"action": "add-to-group", "serial": serial_of(sim, d), "group": GROUP["name"]} for d in new),
        *({"action": "install-app", "device_id": str(d), "app": APP["name"]} for d in devs),
    )

    def meanwhile() -> None:
        sim.call(partial(state(sim).add_members, GROUP["id"], [new[1]]))
        sim.call(partial(state(sim).associate, APP["id"], [devs[2]]))

    out = await run(sim, env_for(mode, sim), job, between=meanwhile)
    assert statuses(out) == [
        "succeeded",
        "skipped",
        "succeeded",
        "succeeded",
        "succeeded",
        "succeeded",
        "skipped",
        "succeeded",
    ], out
    assert out[1].reason is Reason.ALREADY and out[1].http_status == 409
    assert out[6].reason is Reason.ALREADY
    # the group's members are read to find the row already there; the app's
    # batch is halved until it stands alone
    assert posts(sim, mode, "/groups/{group_id}/members") == 2
    assert posts(sim, mode, "/apps/{app_id}/devices") == 5
    assert members(sim, GROUP["id"]) == inside | set(new)
    assert set(devs) <= set(state(sim).associations[APP["id"]])
    # each change made once (the two "meanwhile" ones included)
    assert all(state(sim).log[d].count(f"add-to-group:{GROUP['id']}") == 1 for d in new)
    assert all(state(sim).log[d].count(f"install-app:{APP['id']}") == 1 for d in devs)


async def test_retry_on_503_applies_each_change_once() -> None:
    with start(faults=Faults(error_rate=0.5, mutating_only=True, seed=7)) as sim:
        inside = sorted(members(sim, GROUP["id"]))
        new = [d for d in generated(sim) if d not in inside][:4]
        job = rows(
            *({"action": "add-to-group", "serial": serial_of(sim, d), "group": GROUP["name"]} for d in new),
            *({"action": "remove-from-group", "serial": serial_of(sim, d), "group": GROUP["name"]} for d in inside[:3]),
            {"action": "install-app", "serial": serial_of(sim, new[0]), "app": APP["name"]},
        )
        out = await run(sim, env_for("on-premises", sim), job)
        assert statuses(out) == ["succeeded"] * len(job)
        assert sim.stats.faults > 0
        assert any(o.attempts > 1 for o in out)
        for d in new[1:]:
            assert state(sim).log[d] == [f"add-to-group:{GROUP['id']}"]
        assert state(sim).log[new[0]] == [f"add-to-group:{GROUP['id']}", f"install-app:{APP['id']}"]
        for d in inside[:3]:
            assert state(sim).log[d] == [f"remove-from-group:{GROUP['id']}"]


async def test_lost_answers_are_read_back_not_sent_twice() -> None:
    # seed 7 draws: drop the POST's answer, drop the first DELETE's, keep the second's
    with start(faults=Faults(seed=7)) as sim:
        inside = sorted(members(sim, GROUP["id"]))
        new = [d for d in generated(sim) if d not in inside][:3]
        job = rows(
            *({"action": "add-to-group", "serial": serial_of(sim, d), "group": GROUP["name"]} for d in new),
            {"action": "remove-from-group", "serial": serial_of(sim, inside[0]), "group": GROUP["name"]},
        )

        def drop_answers() -> None:
            # the change is made, then the connection closes without an answer
            sim.faults.update({"drop_after_rate": 0.5, "mutating_only": True})

        out = await run(sim, env_for("on-premises", sim), job, between=drop_answers)
        assert statuses(out) == ["succeeded"] * 4
        assert [o.reason for o in out] == [Reason.READ_BACK] * 4
        # a POST and a DELETE alike are read back, not sent again
        assert posts(sim, "on-premises", "/groups/{group_id}/members") == 1
        assert deletes(sim, "on-premises", "/groups/{group_id}/members/{member_id}") == 1
        for d in new:
            assert state(sim).log[d] == [f"add-to-group:{GROUP['id']}"]
        assert state(sim).log[inside[0]] == [f"remove-from-group:{GROUP['id']}"]


async def test_gateway_answers_are_read_back_or_unknown_never_sent_twice(sim: SimServer) -> None:
    """A 504 after the work: an add to a group is read back and confirmed;
    an app installation, which cannot be read back, is unknown; neither is sent twice."""
    new = [d for d in generated(sim) if d not in members(sim, GROUP["id"])][:4]
    job = rows(
        *({"action": "add-to-group", "serial": serial_of(sim, d), "group": GROUP["name"]} for d in new[:2]),
        *({"action": "install-app", "serial": serial_of(sim, d), "app": APP["name"]} for d in new[2:]),
    )

    def gateway() -> None:
        sim.faults.update({"gateway_after_rate": 1.0, "mutating_only": True})

    out = await run(sim, env_for("on-premises", sim), job, between=gateway)
    assert statuses(out) == ["succeeded"] * 2 + ["unknown"] * 2, [o.detail for o in out]
    assert [o.reason for o in out] == [Reason.READ_BACK] * 2 + [Reason.NO_ANSWER] * 2
    assert "HTTP 504" in out[2].detail and "not resent" in out[2].detail
    assert posts(sim, "on-premises", "/groups/{group_id}/members") == 1
    assert posts(sim, "on-premises", "/apps/{app_id}/devices") == 1
    assert all(state(sim).log[d] == [f"add-to-group:{GROUP['id']}"] for d in new[:2])
    assert all(state(sim).log[d] == [f"install-app:{APP['id']}"] for d in new[2:])


async def test_server_error_fails_the_batch_without_raising(sim: SimServer) -> None:
    new = [d for d in generated(sim) if d not in members(sim, GROUP["id"])][:3]
    job = rows(*({"action": "add-to-group", "serial": serial_of(sim, d), "group": GROUP["name"]} for d in new))

    def break_it() -> None:
        sim.faults.update({"error_rate": 1.0, "error_status": 500, "mutating_only": True})

    out = await run(sim, env_for("on-premises", sim), job, between=break_it)
    assert statuses(out) == ["failed"] * 3
    assert all(o.http_status == 500 and "internal error" in o.detail for o in out)
    assert posts(sim, "on-premises", "/groups/{group_id}/members") == 1  # a 500 is not split


async def test_daily_budget_leaves_rows_that_do_not_fit_not_run(sim: SimServer) -> None:
    inside = sorted(members(sim, GROUP["id"]))[:12]
    job = rows(*({"action": "remove-from-group", "serial": serial_of(sim, d), "group": GROUP["name"]} for d in inside))
    # 20 a day, 10 kept for retries, 3 look-ups (devices, groups, members): 7 rows fit
    out = await run(sim, env_for("on-premises", sim, BULKMDM_DAILY_LIMIT="20"), job)
    assert statuses(out) == ["succeeded"] * 7 + ["not-run"] * 5
    assert {o.reason for o in out[7:]} == {Reason.QUOTA}
    assert "Run the same command tomorrow" in out[7].detail and "15 API calls" in out[7].detail
    assert deletes(sim, "on-premises", "/groups/{group_id}/members/{member_id}") == 7
    assert state(sim).calls_today == 10


async def test_daily_budget_counts_a_batch_once(sim: SimServer) -> None:
    new = [d for d in generated(sim) if d not in members(sim, GROUP["id"])][:30]
    job = rows(*({"action": "add-to-group", "serial": serial_of(sim, d), "group": GROUP["name"]} for d in new))
    out = await run(sim, env_for("on-premises", sim, BULKMDM_DAILY_LIMIT="14"), job)
    assert statuses(out) == ["succeeded"] * 30


# -- what the doc leaves to the client -------------------------------------------


async def test_doc_shaped_lists_serials_and_bundle_ids_come_from_details(mode: str) -> None:
    # The doc's list examples carry no serial_number / bundle_identifier; its
    # detail examples do.
    with start(devices=40) as sim:
        state(sim).doc_fields = True
        new = [d for d in generated(sim) if d not in members(sim, GROUP["id"])][:2]
        job = rows(
            *({"action": "add-to-group", "serial": serial_of(sim, d), "group": GROUP["name"]} for d in new),
            {"action": "install-app", "serial": serial_of(sim, new[0]), "app": APP["bundle_identifier"]},
            {"action": "add-to-group", "serial": FACTS["duplicate_serial"], "group": GROUP["name"]},
            {"action": "add-to-group", "device_id": str(FACTS["free_device"]["id"]), "group": GROUP["name"]},
        )
        out = await run(sim, env_for(mode, sim), job)
        assert statuses(out) == ["succeeded", "succeeded", "succeeded", "failed", "succeeded"]
        assert out[3].reason is Reason.AMBIGUOUS
        assert gets(sim, mode, "/devices/{device_id}") == 40
        assert gets(sim, mode, "/apps/{app_id}") == len(state(sim).apps)
        assert set(new) | {FACTS["free_device"]["id"]} <= members(sim, GROUP["id"])
        assert new[0] in state(sim).associations[APP["id"]]


async def test_doc_shaped_lists_read_no_details_when_not_needed_or_over_budget() -> None:
    with start(devices=40) as sim:
        state(sim).doc_fields = True
        by_id = rows(
            {"action": "add-to-group", "device_id": str(FACTS["free_device"]["id"]), "group": GROUP["name"]},
            {"action": "install-app", "device_id": str(FACTS["free_device"]["id"]), "app": APP["name"]},
        )
        out = await run(sim, env_for("on-premises", sim), by_id)
        assert statuses(out) == ["succeeded"] * 2
        assert gets(sim, "on-premises", "/devices/{device_id}") == 0
        assert gets(sim, "on-premises", "/apps/{app_id}") == 0

        by_serial = rows({"action": "add-to-group", "serial": FACTS["app_device"]["serial"], "group": GROUP["name"]})
        out = await run(sim, env_for("on-premises", sim, BULKMDM_DAILY_LIMIT="60"), by_serial)
        assert statuses(out) == ["failed"]
        assert "would not fit in the day's API calls; give device_id" in out[0].detail
        assert gets(sim, "on-premises", "/devices/{device_id}") == 0


async def test_ids_go_as_json_numbers_even_when_the_list_gives_strings(sim: SimServer, mode: str) -> None:
    state(sim).string_ids = True  # and the simulator refuses "device_ids": ["..."] with COM0005
    state(sim).strict_headers = True  # and every request without the examples' Content-Type with COM0011
    new = [d for d in generated(sim) if d not in members(sim, GROUP["id"])][:3]
    job = rows(
        *({"action": "add-to-group", "serial": serial_of(sim, d), "group": GROUP["name"]} for d in new),
        *({"action": "install-app", "device_id": str(d), "app": APP["name"]} for d in new),
    )
    out = await run(sim, env_for(mode, sim), job)
    assert statuses(out) == ["succeeded"] * 6
    assert set(new) <= members(sim, GROUP["id"]) and set(new) <= set(state(sim).associations[APP["id"]])
    # and as the doc has them, for rows in the opposite direction (DELETE, no body)
    job = rows(
        {"action": "remove-from-group", "device_id": str(new[0]), "group": GROUP["name"]},
        {"action": "remove-app", "device_id": str(new[0]), "app": APP["name"]},
    )
    out = await run(sim, env_for(mode, sim), job)
    assert statuses(out) == ["succeeded"] * 2
    assert new[0] not in members(sim, GROUP["id"]) and new[0] not in state(sim).associations[APP["id"]]


async def test_app_rows_already_in_state_are_skipped(sim: SimServer, mode: str) -> None:
    has, free, keynote = FACTS["app_device"], FACTS["free_device"], FACTS["installed_app"]
    other = generated(sim)[0]
    job = rows(
        {"action": "install-app", "serial": has["serial"], "app": keynote["name"]},
        {"action": "remove-app", "serial": free["serial"], "app": keynote["bundle_identifier"]},
        {"action": "install-app", "device_id": str(other), "app": keynote["name"]},
    )
    out = await run(sim, env_for(mode, sim), job)
    assert statuses(out) == ["skipped", "skipped", "succeeded"]
    assert [o.reason for o in out] == [Reason.ALREADY, Reason.ALREADY, Reason.DONE]
    assert "already has 'Keynote'" in out[0].detail and "does not have 'Keynote'" in out[1].detail
    assert gets(sim, mode, "/devices/{device_id}/apps") == 3
    assert deletes(sim, mode, "/apps/{app_id}/devices/{device_id}") == 0
    assert state(sim).log == {other: [f"install-app:{keynote['id']}"]}


async def test_app_already_on_device_is_skipped_when_device_app_ids_differ(mode: str) -> None:
    # The doc's "Get device app list" example gives app_id 9007199254741340 for
    # identifier com.zoho.inhouse.zvoice, its App Repository ids look like
    # 99731238129, and its "Get App List" has no bundle_identifier: an app on
    # a device is known by its identifier, read from the app's details.
    with start(devices=40) as sim:
        state(sim).doc_fields = True
        state(sim).own_device_app_ids = True
        has, free, keynote = FACTS["app_device"], FACTS["free_device"], FACTS["installed_app"]
        job = rows(
            {"action": "install-app", "device_id": str(has["id"]), "app": keynote["name"]},
            {"action": "install-app", "device_id": str(free["id"]), "app": keynote["name"]},
            {"action": "remove-app", "device_id": str(free["id"]), "app": APP["name"]},
        )
        out = await run(sim, env_for(mode, sim), job)
        assert statuses(out) == ["skipped", "succeeded", "skipped"]
        assert out[0].reason is Reason.ALREADY
        assert gets(sim, mode, "/apps/{app_id}") == 1  # Keynote's details only
        assert state(sim).log == {free["id"]: [f"install-app:{keynote['id']}"]}


async def test_a_read_answered_500_is_tried_again_a_moment_later(mode: str, monkeypatch: Any) -> None:
    # "COM0004 500 Internal server error, Please try again in a moment": the declared policy retries reads
    with start(devices=40) as sim:
        free = FACTS["free_device"]
        state(sim).read_errors = 1
        job = rows({"action": "add-to-group", "serial": free["serial"], "group": GROUP["name"]})
        out = await run(sim, env_for(mode, sim), job)
        assert statuses(out) == ["succeeded"]
        assert gets(sim, mode, "/devices") == 2
        assert free["id"] in members(sim, GROUP["id"])

        state(sim).read_errors = ME_FAST.attempts  # every try: the rows fail, nothing is sent
        job = rows({"action": "remove-from-group", "serial": free["serial"], "group": GROUP["name"]})
        out = await run(sim, env_for(mode, sim), job)
        assert statuses(out) == ["failed"]
        assert out[0].http_status == 500 and "devices list" in out[0].detail
        assert gets(sim, mode, "/devices") == 2 + ME_FAST.attempts
        assert free["id"] in members(sim, GROUP["id"])


async def test_lists_paged_by_offset_are_read_whole(mode: str) -> None:
    with start(devices=120) as sim:
        st = state(sim)
        st.page_size = 10
        st.next_links = False  # only metadata.total_record_count says there is more
        last_device = max(st.devices)
        last_group = max(st.groups)
        last_app = max(st.apps)
        big = max(st.members, key=lambda g: len(st.members[g]))
        assert len(st.members[big]) > 10
        last_member = list(st.members[big])[-1]
        job = rows(
            {"action": "add-to-group", "serial": serial_of(sim, last_device), "group": st.groups[last_group]["name"]},
            {"action": "install-app", "serial": serial_of(sim, last_device), "app": str(last_app)},
            {"action": "remove-from-group", "device_id": str(last_member), "group": st.groups[big]["name"]},
        )
        out = await run(sim, env_for(mode, sim), job)
        assert statuses(out) == ["succeeded"] * 3, out
        assert last_member not in st.members[big]
        assert gets(sim, mode, "/devices") == 12
        assert gets(sim, mode, "/groups/{group_id}/members") > 2
        assert gets(sim, mode, "/groups") == -(-len(st.groups) // 10)
        assert gets(sim, mode, "/apps") == -(-len(st.apps) // 10)


def test_a_next_link_naming_another_host_is_read_from_this_server() -> None:
    provider = ManageEngine(
        Client(
            "http://127.0.0.1:1/api/v1",
            auth=ZohoOAuth(client_id="c", client_secret="s", refresh_token="r", token_url="http://127.0.0.1:1/t"),
        ),
        Settings(url="http://127.0.0.1:1"),
    )
    assert (
        provider._on_this_server("https://mdm.example.com/api/v1/devices?limit=50&offset=50")
        == "http://127.0.0.1:1/api/v1/devices?limit=50&offset=50"
    )


# -- the doc's API call limits -------------------------------------------------


async def test_minute_limit_429s_without_retry_after_are_waited_out(mode: str) -> None:
    with start() as sim:
        st = state(sim)
        st.calls_per_window, st.limit_window = 4, 0.5
        inside = sorted(members(sim, GROUP["id"]))[:6]
        job = rows(
            *({"action": "remove-from-group", "serial": serial_of(sim, d), "group": GROUP["name"]} for d in inside)
        )
        out = await run(sim, env_for(mode, sim), job, window=0.6)
        assert statuses(out) == ["succeeded"] * 6, [o.detail for o in out]
        assert st.limited > 0
        assert all(st.log[d] == [f"remove-from-group:{GROUP['id']}"] for d in inside)


async def test_daily_limit_429s_stop_the_run_without_sending_more(sim: SimServer) -> None:
    st = state(sim)
    st.calls_per_day, st.limit_window = 6, 0.1
    inside = sorted(members(sim, GROUP["id"]))[:8]
    job = rows(*({"action": "remove-from-group", "serial": serial_of(sim, d), "group": GROUP["name"]} for d in inside))
    # our own budget is off: the server's answers are what stops the run
    with pytest.raises(QuotaExhausted) as info:
        await run(sim, env_for("on-premises", sim, BULKMDM_DAILY_LIMIT="none"), job, window=0.2)
    assert "quota for the day" in str(info.value)
    # the fourth change: a 429, the minute's pause, a 429 again: the day is spent, nothing after it
    assert deletes(sim, "on-premises", "/groups/{group_id}/members/{member_id}") == 3 + 2
    assert st.limited == 2


# -- OAuth ---------------------------------------------------------------------


async def test_cloud_token_is_renewed_before_it_expires() -> None:
    with start(access_token_ttl=1.0) as sim:
        new = [d for d in generated(sim) if d not in members(sim, GROUP["id"])][:2]
        job = rows(*({"action": "add-to-group", "serial": serial_of(sim, d), "group": GROUP["name"]} for d in new))
        out = await run(sim, env_for("cloud", sim), job, between=lambda: asyncio.sleep(1.1))
        assert statuses(out) == ["succeeded"] * 2
        assert state(sim).token_grants == 2 and state(sim).unauthorized == 0


async def test_cloud_token_is_refreshed_once_on_401(sim: SimServer) -> None:
    inside = sorted(members(sim, GROUP["id"]))[:4]
    job = rows(*({"action": "remove-from-group", "serial": serial_of(sim, d), "group": GROUP["name"]} for d in inside))
    out = await run(
        sim, env_for("cloud", sim), job, between=lambda: sim.call(state(sim).expire_tokens), concurrent=True
    )
    assert statuses(out) == ["succeeded"] * 4
    assert state(sim).token_grants == 2
    assert 1 <= state(sim).unauthorized <= 4


async def test_token_request_is_a_form_post_and_header_is_zoho_oauthtoken(sim: SimServer) -> None:
    env = env_for("cloud", sim)
    auth = ManageEngine.auth_from_env(env)
    assert isinstance(auth, ZohoOAuth) and "Authorization" not in auth.headers()
    async with Client(ManageEngine.api_base(sim.url), auth=auth, retry=FAST) as client:
        await auth.ready(client)
        assert auth.headers()["Authorization"].startswith("Zoho-oauthtoken 1000.")
        resp = await client.request("GET", "groups")
    assert resp.ok and resp.body["groups"]
    assert sim.stats.by_route["POST /oauth/v2/token"] == 1


async def test_token_endpoint_gets_the_refresh_grant_in_the_form_body_only(sim: SimServer) -> None:
    # the doc's examples put the parameters in the URL, but URLs are what
    # proxies log; Zoho, like any OAuth server, reads a form body
    state(sim).token_params = "form"
    job = rows({"action": "add-to-group", "serial": FACTS["free_device"]["serial"], "group": GROUP["name"]})
    out = await run(sim, env_for("cloud", sim), job)
    assert statuses(out) == ["succeeded"]
    want = ["client_id", "client_secret", "grant_type", "refresh_token"]
    assert state(sim).token_sources == [{"query": [], "form": want}]


async def every_action_with_the_token_expired_mid_run(sim: SimServer, new: list[int], inside: list[int]) -> None:
    """One row of each action on a cloud connection whose token expires between the
    look-ups and the changes: all succeed, on one renewed token."""
    job = rows(
        {"action": "add-to-group", "serial": serial_of(sim, new[0]), "group": GROUP["name"]},
        {"action": "remove-from-group", "serial": serial_of(sim, inside[0]), "group": GROUP["name"]},
        {"action": "install-app", "serial": serial_of(sim, new[-1]), "app": APP["name"]},
        {"action": "remove-app", "serial": FACTS["app_device"]["serial"], "app": FACTS["installed_app"]["name"]},
    )
    out = await run(sim, env_for("cloud", sim), job, between=lambda: sim.call(state(sim).expire_tokens))
    assert statuses(out) == ["succeeded"] * 4, out
    assert state(sim).token_grants == 2


async def test_cloud_token_refused_mid_run_is_refreshed_for_every_action(sim: SimServer) -> None:
    inside = sorted(members(sim, GROUP["id"]))
    new = [d for d in generated(sim) if d not in inside][:2]
    await every_action_with_the_token_expired_mid_run(sim, new, inside)
    assert state(sim).unauthorized == 1


@pytest.mark.parametrize("wrong", ["BULKMDM_REFRESH_TOKEN", "BULKMDM_CLIENT_SECRET", "BULKMDM_API_KEY"])
async def test_bad_credentials_stop_the_run_and_never_show_secrets(
    sim: SimServer, wrong: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    env = env_for("on-premises" if wrong == "BULKMDM_API_KEY" else "cloud", sim)
    env[wrong] = "wrong-" + env[wrong]
    job = rows({"action": "add-to-group", "serial": FACTS["free_device"]["serial"], "group": GROUP["name"]})
    with pytest.raises(AuthError) as info:
        await run(sim, env, job)
    message = str(info.value)
    assert ("refused the refresh token or client" in message) == (wrong != "BULKMDM_API_KEY")
    for text in (message, repr(info.value), caplog.text, repr(ManageEngine.auth_from_env(env))):
        for secret in (*SECRETS, env[wrong]):
            assert secret not in text
    assert sim.stats.mutating == (1 if wrong != "BULKMDM_API_KEY" else 0)  # the token request only


async def test_unreachable_token_endpoint_stops_the_run_without_secrets(sim: SimServer) -> None:
    # nothing answers where the tokens come from: the set-up is wrong for every row (CONTRACT "Stopping early")
    env = env_for("cloud", sim, BULKMDM_OAUTH_URL="http://127.0.0.1:9/oauth/v2/token")
    job = rows({"action": "add-to-group", "serial": FACTS["free_device"]["serial"], "group": GROUP["name"]})
    with pytest.raises(SetupFailed) as info:
        await run(sim, env, job)
    assert "Nothing answers at the OAuth token endpoint 127.0.0.1:9" in str(info.value)
    assert "BULKMDM_OAUTH_URL" in str(info.value) and "Nothing was sent." in str(info.value)
    assert not any(s in str(info.value) for s in SECRETS)
    assert sim.stats.requests == 0


async def test_credentials_refused_with_403_stop_the_run_or_renew_the_token(sim: SimServer) -> None:
    # COM0013 answered 403 ("Forbidden ... not an user of the respective
    # organization") rather than 401: a bad key stops the run as bad
    # credentials (exit 2), an expired cloud token is renewed as on a 401
    state(sim).unauthorized_status = 403
    inside = sorted(members(sim, GROUP["id"]))
    job = rows({"action": "remove-from-group", "serial": serial_of(sim, inside[0]), "group": GROUP["name"]})
    env = env_for("on-premises", sim)
    env["BULKMDM_API_KEY"] = "wrong-" + env["BULKMDM_API_KEY"]
    with pytest.raises(AuthError) as info:
        await run(sim, env, job)
    assert "refused the credentials" in str(info.value) and "403" in str(info.value)
    assert sim.stats.mutating == 0
    assert inside[0] in members(sim, GROUP["id"])

    new = [d for d in generated(sim) if d not in inside][:1]
    await every_action_with_the_token_expired_mid_run(sim, new, inside)
    assert state(sim).log[new[0]].count(f"add-to-group:{GROUP['id']}") == 1


def test_missing_credentials_are_named() -> None:
    with pytest.raises(ConfigError, match="BULKMDM_API_KEY.*BULKMDM_CLIENT_ID"):
        ManageEngine.auth_from_env({})
    with pytest.raises(ConfigError, match="BULKMDM_REFRESH_TOKEN") as info:
        ManageEngine.auth_from_env({"BULKMDM_CLIENT_ID": "x", "BULKMDM_CLIENT_SECRET": "y"})
    assert "BULKMDM_CLIENT_ID," not in str(info.value)
    with pytest.raises(ConfigError, match="BULKMDM_DAILY_LIMIT"):
        ManageEngine.auth_from_env({"BULKMDM_API_KEY": "k", "BULKMDM_DAILY_LIMIT": "lots"})
    assert ManageEngine.api_base("https://mdm.example.com/") == "https://mdm.example.com/api/v1"
    # a user-supplied /api/v1/mdm is kept: it is the base the vendor's public clients call
    assert ManageEngine.api_base("https://mdm.example.com/api/v1/mdm/") == "https://mdm.example.com/api/v1/mdm"
    assert ManageEngine.api_base("https://mdm.manageengine.com/api/v1") == "https://mdm.manageengine.com/api/v1"


# -- end to end through the CLI ------------------------------------------------


def test_cli_run_on_premises(sim: SimServer, tmp_path: Path, run_cli: Any) -> None:
    inside = sorted(members(sim, GROUP["id"]))
    new = [d for d in generated(sim) if d not in inside][:2]
    app_dev = FACTS["app_device"]
    job = write_csv(
        tmp_path / "me.csv",
        [
            ["Action", "Serial Number", "Group Name", "Bundle ID"],
            ["add-to-group", serial_of(sim, new[0]), GROUP["name"], ""],
            ["Add to group", serial_of(sim, new[1]), GROUP["name"], ""],
            ["add-to-group", serial_of(sim, inside[0]), GROUP["name"], ""],
            ["remove_from_group", serial_of(sim, inside[1]), GROUP["name"], ""],
            ["install-app", serial_of(sim, new[0]), "", APP["bundle_identifier"]],
            ["remove-app", app_dev["serial"], "", FACTS["installed_app"]["name"]],
            ["add-to-group", "NOSUCHSERIAL", GROUP["name"], ""],
            ["lock", serial_of(sim, new[0]), "", ""],
        ],
    )
    result = run_cli(
        ["run", str(job), "--provider", "manageengine", "--url", sim.url, "--rate", "50/s"],
        env={"BULKMDM_API_KEY": API_KEY},
    )
    assert result.exit_code == 1, result.output
    assert [r["status"] for r in result.report] == [
        "succeeded",
        "succeeded",
        "skipped",
        "succeeded",
        "succeeded",
        "succeeded",
        "failed",
        "invalid",
    ]
    assert posts(sim, "on-premises", "/groups/{group_id}/members") == 1
    assert set(new) <= members(sim, GROUP["id"]) and inside[1] not in members(sim, GROUP["id"])
    text = result.report_path.read_text(encoding="utf-8-sig") + result.output
    assert API_KEY not in text


def test_cli_cloud_dry_run_sends_nothing(sim: SimServer, tmp_path: Path, run_cli: Any) -> None:
    inside = sorted(members(sim, GROUP["id"]))
    new = [d for d in generated(sim) if d not in inside][:2]
    job = write_csv(
        tmp_path / "cloud.csv",
        [
            ["action", "serial", "group"],
            *(["add-to-group", serial_of(sim, d), GROUP["name"]] for d in new),
            ["add-to-group", serial_of(sim, inside[0]), GROUP["name"]],
            ["add-to-group", serial_of(sim, new[0]), FACTS["duplicate_group_name"]],
        ],
    )
    result = run_cli(
        ["run", str(job), "--provider", "manageengine", "--url", sim.url, "--dry-run", "--rate", "50/s"],
        env=env_for("cloud", sim),
    )
    assert result.exit_code == 1, result.output
    assert [r["status"] for r in result.report] == ["planned", "planned", "skipped", "failed"]
    assert "one request for 2 rows" in result.report[0]["detail"]
    assert not any(k.startswith(("POST /api", "DELETE /api")) for k in sim.stats.by_route)
    assert not members(sim, GROUP["id"]) & set(new)
    text = result.report_path.read_text(encoding="utf-8-sig") + result.output
    assert not any(s in text for s in SECRETS)


def test_shipped_example_job_runs_against_the_default_simulator(tmp_path: Path, run_cli: Any) -> None:
    # jobs/manageengine-classes.csv names devices of `bulkmdm sim manageengine` (3000 devices, seed 1)
    job = tmp_path / "manageengine-classes.csv"
    job.write_bytes((Path(__file__).parent.parent / "jobs" / "manageengine-classes.csv").read_bytes())
    with SimServer(make_app(devices=3000, seed=1)) as server:
        result = run_cli(
            ["run", str(job), "--provider", "manageengine", "--url", server.url, "--rate", "50/s"],
            env={"BULKMDM_API_KEY": "me-api-key"},
        )
        assert result.exit_code == 0, result.output
        assert [r["status"] for r in result.report] == ["succeeded"] * 4 + ["skipped"] + ["succeeded"] * 4
        # one POST for the four additions, one for the two installs, two DELETEs
        assert server.stats.mutating == 4


def test_the_days_quota_is_counted_across_runs(sim: SimServer, run_cli: Any, tmp_path: Path) -> None:
    """ManageEngine allows so many calls a day: a second run the same day counts the first one's calls,
    shows the budget in its dry run, and leaves what does not fit not-run for the same command tomorrow."""
    inside = sorted(members(sim, GROUP["id"]))
    env = env_for("on-premises", sim, BULKMDM_DAILY_LIMIT="30")
    header = ["action", "serial", "group"]
    first = write_csv(
        tmp_path / "first.csv", [header, *(["remove-from-group", serial_of(sim, d), GROUP["name"]] for d in inside[:5])]
    )
    # (--rate none: the quota is what this test is about, not the pace of 100 calls a minute)
    res = run_cli(["run", str(first), "--provider", "manageengine", "--url", sim.url, "--rate", "none"], env=env)
    assert res.exit_code == 0, res.output  # 3 look-ups + 5 changes: 8 of today's 30
    second = write_csv(
        tmp_path / "second.csv",
        [header, *(["remove-from-group", serial_of(sim, d), GROUP["name"]] for d in inside[5:25])],
    )
    dry = run_cli(["run", str(second), "--provider", "manageengine", "--url", sim.url, "--dry-run"], env=env)
    assert "earlier runs used 8 today" in dry.output, dry.output
    res = run_cli(["run", str(second), "--provider", "manageengine", "--url", sim.url, "--rate", "none"], env=env)
    statuses_ = [r["status"] for r in res.report]
    # 30 a day, 10 kept for retries, 8 + 3 (the dry run's look-ups) + 3 used: 6 rows fit
    assert statuses_ == ["succeeded"] * 6 + ["not-run"] * 14, res.output
    assert res.exit_code == 1 and "Run the same command tomorrow" in res.report[-1]["detail"]


async def test_a_token_endpoint_failing_from_the_start_is_the_set_up_failing() -> None:
    """A token endpoint answering 500 at the first request is the set-up
    failing (exit 2, the earlier report kept): nothing can be sent without a
    token, so no row fails for it."""
    from aiohttp import web

    @web.middleware
    async def failing(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/oauth/v2/token":
            return web.json_response({"error": "internal"}, status=500)
        return await handler(request)

    app = make_app(api_key=API_KEY, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token=REFRESH)
    app.middlewares.append(failing)
    with SimServer(app) as sim:
        job = rows({"action": "add-to-group", "serial": FACTS["free_device"]["serial"], "group": GROUP["name"]})
        with pytest.raises(SetupFailed) as info:
            await run(sim, env_for("cloud", sim), job)
        assert "gave no access token (it answered HTTP 500" in str(info.value)
        assert (
            "Nothing was sent." in str(info.value) and sim.stats.requests == sim.stats.by_route["POST /oauth/v2/token"]
        )


async def test_an_mdm_listing_no_devices_says_so() -> None:
    """An empty device list is told as such, not as one that "carries no
    serial numbers"."""
    from aiohttp import web

    @web.middleware
    async def empty(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "GET" and request.path.endswith("/devices"):
            return web.json_response({"devices": [], "metadata": {"total_record_count": 0}})
        return await handler(request)

    app = make_app(api_key=API_KEY, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token=REFRESH)
    app.middlewares.append(empty)
    with SimServer(app) as sim:
        job = rows({"action": "add-to-group", "serial": "SN0001", "group": GROUP["name"]})
        out = await run(sim, env_for("on-premises", sim), job)
    assert statuses(out) == ["failed"]
    assert out[0].detail == "Serial 'SN0001' was not found: the MDM lists no devices at all."


async def test_a_delete_whose_answer_was_lost_is_read_back_not_sent_again() -> None:
    """The group's members show the device gone: the row is confirmed by
    that read-back, and the DELETE is not sent a second time."""
    from aiohttp import web

    from bulkmdm.sim.common import _drop

    dropped: list[str] = []

    @web.middleware
    async def lose_first_answer(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        if request.method == "DELETE" and not dropped:
            dropped.append(request.path)
            _drop(request)  # the change is made; its answer never arrives
            raise asyncio.CancelledError
        return response

    app = make_app(api_key=API_KEY, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token=REFRESH)
    app.middlewares.append(lose_first_answer)
    with SimServer(app) as sim:
        inside = sorted(members(sim, GROUP["id"]))
        job = rows({"action": "remove-from-group", "serial": serial_of(sim, inside[0]), "group": GROUP["name"]})
        out = await run(sim, env_for("on-premises", sim), job)
        assert dropped and inside[0] not in members(sim, GROUP["id"])
        assert deletes(sim, "on-premises", "/groups/{group_id}/members/{member_id}") == 1
    assert statuses(out) == ["succeeded"] and out[0].attempts == 1
    assert out[0].reason is Reason.READ_BACK and "confirmed by reading it back" in out[0].detail


async def test_a_delete_answered_404_after_a_503_fails_as_a_first_404_does() -> None:
    """The 503 did nothing; the device left the group elsewhere before the
    retry, whose 404 says it is not there: the row fails as a first answer's
    404 makes it fail, never "succeeded" on the word of a try that did nothing."""
    from aiohttp import web

    busy: list[str] = []

    @web.middleware
    async def busy_then_removed_elsewhere(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "DELETE" and not busy:
            busy.append(request.path)
            group_id, device_id = (int(part) for part in request.path.split("/")[-3::2])
            request.app["state"].remove_member(group_id, device_id)  # (in the console, meanwhile)
            return web.json_response({"error_code": "COM0004"}, status=503)
        return await handler(request)

    app = make_app(api_key=API_KEY, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token=REFRESH)
    app.middlewares.append(busy_then_removed_elsewhere)
    with SimServer(app) as sim:
        inside = sorted(members(sim, GROUP["id"]))
        job = rows({"action": "remove-from-group", "serial": serial_of(sim, inside[0]), "group": GROUP["name"]})
        out = await run(sim, env_for("on-premises", sim), job)
        assert busy and deletes(sim, "on-premises", "/groups/{group_id}/members/{member_id}") == 2
    assert statuses(out) == ["failed"] and out[0].http_status == 404 and out[0].attempts == 2
    assert out[0].reason is Reason.NOT_FOUND and "does not exist" in out[0].detail
