"""ManageEngine as its doc writes and as its real cloud answers:
every action through the CLI against both behaviours of the simulator, the
cloud's base path and its fallback, regional token servers, de-enrolled
records, records without ids, undo rows, and the export /
template methods (inventory, choices)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from test_manageengine import (
    API_KEY,
    APP,
    CLIENT_ID,
    CLIENT_SECRET,
    REFRESH,
    FAST,
    GROUP,
    env_for,
    generated,
    members,
    rows,
    serial_of,
    start,
    state,
    statuses,
    write_csv,
)

from bulkmdm.errors import AuthError, ConfigError
from bulkmdm.model import JobRow, Outcome, Reason, Step
from bulkmdm.providers.base import Settings
from bulkmdm.providers.manageengine import ManageEngine, cloud_host, region_hint, zoho_token_url
from bulkmdm.sim.common import SimServer
from bulkmdm.sim.manageengine import FACTS, REMOVED_ID_OFFSET
from bulkmdm.client import Client

KEYNOTE = FACTS["installed_app"]
MEMBER_GROUP = FACTS["member_group"]


@pytest.fixture(params=["doc", "real"])
def behaviour(request: pytest.FixtureRequest) -> str:
    """The simulator answers as the vendor doc writes, or as the real cloud does."""
    return str(request.param)


@pytest.fixture
def me(behaviour: str) -> Iterator[SimServer]:
    with start(real=behaviour == "real") as server:
        yield server


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with start() as server:
        yield server


@asynccontextmanager
async def provider_for(
    sim: SimServer, env: dict[str, str], *, url: str | None = None, settings_url: str | None = None
) -> AsyncIterator[ManageEngine]:
    """A provider talking to ``sim`` (``url``: the --url given; ``settings_url``:
    the --url the provider is told, e.g. a regional cloud's)."""
    auth = ManageEngine.auth_from_env(env)
    async with Client(
        ManageEngine.api_base(url or sim.url), auth=auth, retry=FAST, timeout=5, headers=ManageEngine.request_headers
    ) as client:
        yield ManageEngine(client, Settings(url=settings_url or url or sim.url, env=env))


async def plan_and_send(
    sim: SimServer, env: dict[str, str], job: Sequence[JobRow], **kw: Any
) -> tuple[list[Step | Outcome], list[Outcome]]:
    """plan, then send every step in batches, as the engine does."""
    async with provider_for(sim, env) as provider:
        for name, value in kw.items():
            setattr(provider, name, value)
        planned = await provider.plan(job)
        out = {p.index: p for p in planned if isinstance(p, Outcome)}
        batches: dict[Any, list[Step]] = {}
        for step in (p for p in planned if isinstance(p, Step)):
            batches.setdefault(step.batch_key, []).append(step)
        for batch in batches.values():
            out.update({o.index: o for o in await provider.execute(batch)})
    return planned, [out[r.index] for r in job]


def snapshot(sim: SimServer) -> dict[str, Any]:
    st = state(sim)
    return {
        "members": {g: set(m) for g, m in st.members.items() if m},
        "associations": {a: set(d) for a, d in st.associations.items() if d},
        "installed": {d: set(a) for d, a in st.installed.items() if a},
    }


def api_routes(sim: SimServer) -> dict[str, int]:
    return {k: v for k, v in sim.stats.by_route.items() if " /api/" in k}


# -- every action, both behaviours, both editions, through the CLI ---------------


@pytest.mark.parametrize("edition", ["on-premises", "cloud"])
def test_every_action_through_the_cli(
    me: SimServer, behaviour: str, edition: str, tmp_path: Path, run_cli: Any
) -> None:
    st = state(me)
    inside = sorted(members(me, GROUP["id"]))
    new = [d for d in generated(me) if d not in inside and d not in st.associations.get(APP["id"], {})][:2]
    free, member, app_dev = FACTS["free_device"], FACTS["member_device"], FACTS["app_device"]
    before = snapshot(me)
    job = write_csv(
        tmp_path / "me.csv",
        [
            ["action", "serial", "group", "app"],
            ["add-to-group", serial_of(me, new[0]), GROUP["name"], ""],
            ["add-to-group", free["serial"], GROUP["name"], ""],  # real: a removed twin is listed first
            ["remove-from-group", serial_of(me, inside[0]), GROUP["name"], ""],
            ["remove-from-group", member["serial"], MEMBER_GROUP["name"], ""],
            ["install-app", serial_of(me, new[1]), "", APP["name"]],
            ["install-app", free["serial"], "", APP["bundle_identifier"]],
            ["remove-app", app_dev["serial"], "", KEYNOTE["name"]],
        ],
    )
    result = run_cli(
        ["run", str(job), "--provider", "manageengine", "--url", me.url, "--rate", "50/s"], env=env_for(edition, me)
    )
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in result.report] == ["succeeded"] * 7, result.report

    # the exact state: these changes, to the current records, once each
    assert members(me, GROUP["id"]) == (before["members"][GROUP["id"]] | {new[0], free["id"]}) - {inside[0]}
    assert members(me, MEMBER_GROUP["id"]) == before["members"][MEMBER_GROUP["id"]] - {member["id"]}
    assert set(st.associations[APP["id"]]) == before["associations"].get(APP["id"], set()) | {new[1], free["id"]}
    assert set(st.associations[KEYNOTE["id"]]) == before["associations"][KEYNOTE["id"]] - {app_dev["id"]}
    assert st.log == {
        new[0]: [f"add-to-group:{GROUP['id']}"],
        free["id"]: [f"add-to-group:{GROUP['id']}", f"install-app:{APP['id']}"],
        inside[0]: [f"remove-from-group:{GROUP['id']}"],
        member["id"]: [f"remove-from-group:{MEMBER_GROUP['id']}"],
        new[1]: [f"install-app:{APP['id']}"],
        app_dev["id"]: [f"remove-app:{KEYNOTE['id']}"],
    }
    routes = api_routes(me)
    if behaviour == "doc" and edition == "cloud":
        # /api/v1/mdm/ first, as the public clients call the cloud; its 404 moves the run to the doc's base
        assert [k for k in routes if k.startswith(("GET /api/v1/mdm", "POST /api/v1/mdm", "DELETE /api/v1/mdm"))] == [
            "GET /api/v1/mdm/devices"
        ] and routes["GET /api/v1/mdm/devices"] == 1
    else:
        assert all(k.split(" ")[1].startswith("/api/v1/mdm/") for k in routes), routes
    if behaviour == "real":
        assert st.exclude_removed_asked == 1 and st.removed
        assert not set(st.log) & set(st.removed)


# -- the cloud's base path -----------------------------------------------------------


def test_a_url_ending_in_api_v1_mdm_is_kept(me: SimServer, behaviour: str, tmp_path: Path, run_cli: Any) -> None:
    free = FACTS["free_device"]
    job = write_csv(
        tmp_path / "pinned.csv", [["action", "serial", "group"], ["add-to-group", free["serial"], GROUP["name"]]]
    )
    result = run_cli(
        ["run", str(job), "--provider", "manageengine", "--url", me.url + "/api/v1/mdm/", "--rate", "50/s"],
        env=env_for("cloud", me),
    )
    # the user chose /api/v1/mdm: no fallback to the doc's /api/v1 (where the doc's cloud answers)
    assert "GET /api/v1/devices" not in me.stats.by_route
    if behaviour == "real":
        assert result.exit_code == 0 and free["id"] in members(me, GROUP["id"])
    else:
        # the first list answers 404: a set-up that is wrong for every row stops the run (CONTRACT)
        assert result.exit_code == 2 and not result.report
        assert "has no devices (HTTP 404 on the first look-up); check --url" in result.output
        assert "Nothing was sent." in result.output
        assert me.stats.mutating == 1  # the token request only


def test_a_first_list_answering_404_on_both_bases_says_check_url(me: SimServer, tmp_path: Path, run_cli: Any) -> None:
    job = write_csv(
        tmp_path / "lost.csv",
        [["action", "serial", "group"], ["add-to-group", FACTS["free_device"]["serial"], GROUP["name"]]],
    )
    result = run_cli(
        ["run", str(job), "--provider", "manageengine", "--url", me.url + "/elsewhere", "--rate", "50/s"],
        env=env_for("cloud", me),
    )
    assert result.exit_code == 2 and not result.report
    assert "has no devices (HTTP 404 on the first look-up); check --url: it should be the server root" in result.output
    assert "/api/v1/mdm/" in result.output and "Nothing was sent." in result.output
    # both bases were tried, once each
    tried = me.stats.by_route
    assert tried["GET /elsewhere/api/v1/mdm/devices"] == tried["GET /elsewhere/api/v1/devices"] == 1
    assert me.stats.mutating == 1


# -- regions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "accounts"),
    [
        ("https://mdm.manageengine.com", "accounts.zoho.com"),
        ("https://mdm.manageengine.eu/", "accounts.zoho.eu"),
        ("https://MDM.ManageEngine.IN/api/v1/mdm", "accounts.zoho.in"),
        ("https://mdm.manageengine.com.au", "accounts.zoho.com.au"),
        ("https://mdm.manageengine.jp", "accounts.zoho.jp"),
        ("https://mdm.manageengine.ca", "accounts.zohocloud.ca"),
        ("https://mdm.manageengine.cn", "accounts.zoho.com.cn"),
        ("https://mdm.manageengine.sa", "accounts.zoho.sa"),
        ("https://mdm.manageengine.co.uk", "accounts.zoho.uk"),
        ("https://mdm.manageengine.uk", "accounts.zoho.uk"),
        ("https://mdm.skolan.se", "accounts.zoho.com"),
        ("http://127.0.0.1:8080", "accounts.zoho.com"),
    ],
)
def test_token_url_comes_from_the_tenants_region(url: str, accounts: str) -> None:
    assert zoho_token_url(url) == f"https://{accounts}/oauth/v2/token"


@pytest.mark.parametrize(
    "url", ["https://mdm.manageengine.cm", "https://mdm.manageengine.ae", "https://mdm.manageengine.com.evil.example"]
)
async def test_a_cloud_address_in_no_known_region_is_refused_before_anything_is_sent(me: SimServer, url: str) -> None:
    """The client secret would go to accounts.zoho.<whatever --url ends in>."""
    env = env_for("cloud", me)
    del env["BULKMDM_OAUTH_URL"]
    with pytest.raises(ConfigError) as info:
        async with provider_for(me, env, settings_url=url):
            pass
    message = str(info.value)
    assert str(cloud_host(url)) in message and "nothing was sent" in message
    for host in ("accounts.zoho.com", "accounts.zoho.eu", "accounts.zohocloud.ca", "accounts.zoho.uk"):
        assert host in message
    assert "accounts.zoho.cm" not in message and "evil" not in message.split("hosts are")[1]
    # an explicit token endpoint is the admin's choice, whatever --url is
    async with provider_for(me, env_for("cloud", me), settings_url=url) as provider:
        assert provider.client.auth.token_url == me.url + "/oauth/v2/token"  # type: ignore[attr-defined]
    assert me.stats.requests == 0


def test_a_mistyped_cloud_address_stops_the_run_in_one_sentence(me: SimServer, tmp_path: Path, run_cli: Any) -> None:
    env = {**env_for("cloud", me), "BULKMDM_OAUTH_URL": ""}
    job = write_csv(tmp_path / "me.csv", [["serial", "group"], [FACTS["free_device"]["serial"], GROUP["name"]]])
    args = ["run", str(job), "--provider", "manageengine", "--url", "https://mdm.manageengine.cm", "--yes"]
    result = run_cli([*args, "--action", "add-to-group"], env=env)
    assert result.exit_code == 2 and not result.report
    assert "mdm.manageengine.cm is no ManageEngine cloud region" in result.output
    assert "accounts.zoho.com.au" in result.output and "Traceback" not in result.output


def test_region_hint_names_the_tenants_accounts_server() -> None:
    assert region_hint("https://mdm.manageengine.eu", "https://accounts.zoho.com/oauth/v2/token") == (
        "; your tenant is on mdm.manageengine.eu: use accounts.zoho.eu (unset BULKMDM_OAUTH_URL, or set it to "
        "https://accounts.zoho.eu/oauth/v2/token)"
    )
    assert region_hint("https://mdm.manageengine.eu", "https://accounts.zoho.eu/oauth/v2/token") == ""
    assert region_hint("https://mdm.skolan.se", "https://accounts.zoho.com/oauth/v2/token") == ""


async def test_token_url_follows_url_unless_bulkmdm_oauth_url_says_otherwise(me: SimServer) -> None:
    env = env_for("cloud", me)
    del env["BULKMDM_OAUTH_URL"]
    async with provider_for(me, env, settings_url="https://mdm.manageengine.com.au") as provider:
        assert provider.client.auth.token_url == "https://accounts.zoho.com.au/oauth/v2/token"  # type: ignore[attr-defined]
    async with provider_for(me, env_for("cloud", me), settings_url="https://mdm.manageengine.com.au") as provider:
        assert provider.client.auth.token_url == me.url + "/oauth/v2/token"  # type: ignore[attr-defined]
    assert me.stats.requests == 0


async def test_a_token_refused_by_another_regions_server_names_the_right_one(me: SimServer) -> None:
    # the refresh token belongs to the EU tenant; BULKMDM_OAUTH_URL names another accounts server
    env = env_for("cloud", me, BULKMDM_REFRESH_TOKEN="1000.eu-refresh-token")
    job = rows({"action": "add-to-group", "serial": FACTS["free_device"]["serial"], "group": GROUP["name"]})
    async with provider_for(me, env, settings_url="https://mdm.manageengine.eu") as provider:
        with pytest.raises(AuthError) as info:
            await provider.plan(job)
    message = str(info.value)
    assert "refused the refresh token" in message
    assert "your tenant is on mdm.manageengine.eu: use accounts.zoho.eu" in message
    assert "1000.eu-refresh-token" not in message and CLIENT_SECRET not in message


async def test_a_token_the_mdm_refuses_names_the_tenants_accounts_server(me: SimServer) -> None:
    # another region's accounts server (a second simulator) grants a token the tenant does not know
    with start(real=True) as elsewhere:
        env = env_for("cloud", me, BULKMDM_OAUTH_URL=elsewhere.url + "/oauth/v2/token")
        job = rows({"action": "add-to-group", "serial": FACTS["free_device"]["serial"], "group": GROUP["name"]})
        async with provider_for(me, env, settings_url="https://mdm.manageengine.jp") as provider:
            with pytest.raises(AuthError) as info:
                await provider.plan(job)
        assert state(elsewhere).token_grants == 1  # no second token from a server the tenant does not trust
    message = str(info.value)
    assert message.startswith(f"the MDM refused the access token from {urlsplit(elsewhere.url).netloc}; ")
    assert "your tenant is on mdm.manageengine.jp: use accounts.zoho.jp" in message
    assert me.stats.mutating == 0


async def test_a_token_expiring_mid_run_is_renewed_even_behind_a_token_proxy(sim: SimServer) -> None:
    # BULKMDM_OAUTH_URL names a proxy, not the tenant's accounts server: tokens
    # the MDM took once are renewed as usual when they expire, by one worker
    inside = sorted(members(sim, GROUP["id"]))[:4]
    job = rows(*({"action": "remove-from-group", "serial": serial_of(sim, d), "group": GROUP["name"]} for d in inside))
    async with provider_for(sim, env_for("cloud", sim), settings_url="https://mdm.manageengine.eu") as provider:
        assert provider.client.auth.hint  # type: ignore[attr-defined]
        planned = await provider.plan(job)
        sim.call(state(sim).expire_tokens)
        results = await asyncio.gather(*(provider.execute([step]) for step in planned if isinstance(step, Step)))
    assert [o.status for found in results for o in found] == ["succeeded"] * 4
    assert state(sim).token_grants == 2 and not members(sim, GROUP["id"]) & set(inside)


async def test_no_region_hint_for_a_server_that_is_not_a_manageengine_cloud(me: SimServer) -> None:
    env = env_for("cloud", me, BULKMDM_REFRESH_TOKEN="wrong")
    job = rows({"action": "add-to-group", "serial": FACTS["free_device"]["serial"], "group": GROUP["name"]})
    async with provider_for(me, env) as provider:
        with pytest.raises(AuthError) as info:
            await provider.plan(job)
    assert "your tenant" not in str(info.value)


# -- removed records and records without ids ----------------------------------------------


async def test_removed_records_never_match_a_row() -> None:
    with start(real=True) as sim:
        st = state(sim)
        # a server that ignores exclude_removed, and next links that drop it: the client checks is_removed
        st.honour_exclude_removed = False
        st.page_size = 50
        free, member = FACTS["free_device"], FACTS["member_device"]
        gone = FACTS["leading_zero_device_id"]
        sim.call(partial(st.delete_device, gone))  # only its removed record is left
        job = rows(
            {"action": "add-to-group", "serial": free["serial"], "group": GROUP["name"]},
            {"action": "add-to-group", "device_id": str(member["id"] + REMOVED_ID_OFFSET), "group": GROUP["name"]},
            {"action": "add-to-group", "serial": FACTS["leading_zero_serial"], "group": GROUP["name"]},
            {"action": "install-app", "serial": FACTS["app_device"]["serial"].lower(), "app": APP["name"]},
        )
        _, out = await plan_and_send(sim, {"BULKMDM_API_KEY": API_KEY}, job)
        assert statuses(out) == ["succeeded", "failed", "failed", "succeeded"], out
        assert out[0].resolved == f"device_id={free['id']}; group_id={GROUP['id']}"
        assert "is a removed (de-enrolled) record" in out[1].detail
        assert "belongs only to removed (de-enrolled) device records" in out[2].detail
        assert st.exclude_removed_asked == 1
        assert set(st.log) == {free["id"], FACTS["app_device"]["id"]}


async def test_records_without_ids_are_no_match_and_never_collapse(sim: SimServer) -> None:
    st = state(sim)
    free, member = FACTS["free_device"], FACTS["member_device"]
    teachers = next(g for g, v in st.groups.items() if v["name"] == "Lärare")
    st.no_id.update({free["id"]: "missing", member["id"]: "null", teachers: "missing", APP["id"]: "null"})
    new = generated(sim)[0]
    job = rows(
        {"action": "add-to-group", "serial": free["serial"], "group": GROUP["name"]},
        {"action": "add-to-group", "serial": member["serial"], "group": GROUP["name"]},
        {"action": "add-to-group", "serial": serial_of(sim, new), "group": "Lärare"},
        {"action": "install-app", "serial": serial_of(sim, new), "app": APP["name"]},
        {"action": "add-to-group", "device_id": str(free["id"]), "group": GROUP["name"]},
    )
    _, out = await plan_and_send(sim, {"BULKMDM_API_KEY": API_KEY}, job)
    assert statuses(out) == ["failed"] * 5
    assert [o.reason for o in out] == [Reason.BAD_ANSWER] * 4 + [Reason.NOT_FOUND]
    assert "has no device_id (missing or null)" in out[0].detail
    assert "Group 'Lärare' was found, but the MDM's record for it has no group_id" in out[2].detail
    assert not any("Same change" in o.detail for o in out)
    assert sim.stats.mutating == 0


# -- undo ----------------------------------------------------------------------------------


def test_undo_rows_put_the_earlier_state_back(me: SimServer, tmp_path: Path, run_cli: Any) -> None:
    st = state(me)
    inside = sorted(members(me, GROUP["id"]))
    new = [d for d in generated(me) if d not in inside and d not in st.associations.get(APP["id"], {})][:2]
    before = snapshot(me)
    job = rows(
        {"action": "add-to-group", "serial": serial_of(me, new[0]), "group": GROUP["name"]},
        {"action": "add-to-group", "serial": serial_of(me, inside[1]), "group": GROUP["name"]},  # skipped
        {"action": "remove-from-group", "serial": serial_of(me, inside[0]), "group": GROUP["name"]},
        {"action": "remove-from-group", "serial": FACTS["member_device"]["serial"], "group": MEMBER_GROUP["name"]},
        {"action": "install-app", "serial": serial_of(me, new[1]), "app": APP["bundle_identifier"]},
        {"action": "remove-app", "serial": FACTS["app_device"]["serial"], "app": KEYNOTE["name"]},
    )
    env = env_for("cloud", me)
    planned, out = asyncio.run(plan_and_send(me, env, job))
    assert statuses(out) == ["succeeded", "skipped", "succeeded", "succeeded", "succeeded", "succeeded"]
    undo = [p.undo for p in planned if isinstance(p, Step) and p.undo is not None]
    assert len(undo) == 5
    assert undo[0] == {
        "action": "remove-from-group",
        "device_id": str(new[0]),
        "serial": serial_of(me, new[0]),
        "group": GROUP["name"],
    }
    assert undo[3] == {
        "action": "remove-app",
        "device_id": str(new[1]),
        "serial": serial_of(me, new[1]),
        "app": str(APP["id"]),
    }
    assert snapshot(me) != before

    header = ["action", "device_id", "serial", "group", "app"]
    undo_job = write_csv(tmp_path / "undo.csv", [header, *([row.get(c, "") for c in header] for row in undo)])
    result = run_cli(["run", str(undo_job), "--provider", "manageengine", "--url", me.url, "--rate", "50/s"], env=env)
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in result.report] == ["succeeded"] * 5
    assert snapshot(me) == before


async def test_app_rows_have_no_undo_when_the_devices_apps_were_not_read(sim: SimServer) -> None:
    job = rows({"action": "install-app", "serial": serial_of(sim, generated(sim)[0]), "app": APP["name"]})
    planned, out = await plan_and_send(sim, {"BULKMDM_API_KEY": API_KEY}, job, app_check_max=0)
    assert statuses(out) == ["succeeded"]
    assert isinstance(planned[0], Step) and planned[0].undo is None


# -- export and templates --------------------------------------------------------------------


async def test_inventory_streams_every_current_device_as_text(me: SimServer, behaviour: str) -> None:
    st = state(me)
    st.page_size = 50
    device_route = "GET /api/v1/mdm/devices" if behaviour == "real" else "GET /api/v1/devices"
    async with provider_for(me, env_for("cloud", me)) as provider:
        stream = provider.inventory()
        first = await anext(stream)
        assert me.stats.by_route[device_route] == 1  # one page read so far
        found = [first] + [row async for row in stream]
    assert len(found) == len(st.devices) == 300
    by_id = {row["device_id"]: row for row in found}
    assert set(by_id) == {str(d) for d in st.devices}  # ids above 2**53, every digit
    member = by_id[str(FACTS["member_device"]["id"])]
    device = st.devices[FACTS["member_device"]["id"]]
    assert member == {
        "serial": "MEMBERIPAD01",
        "device_id": str(FACTS["member_device"]["id"]),
        "name": device["device_name"],
        "email": device["user"]["user_email"],
        "user": device["user"]["user_name"],
        "model": "iPad (9th generation)",
        "platform": "ios",
        "groups": MEMBER_GROUP["name"],
    }
    assert by_id[str(FACTS["leading_zero_device_id"])]["serial"] == FACTS["leading_zero_serial"]
    assert all(isinstance(v, str) for row in found for v in row.values())


async def test_inventory_reads_serials_from_details_when_the_list_has_none() -> None:
    with start(devices=40) as sim:
        state(sim).doc_fields = True  # the doc's "Get device list" example: no serial_number
        async with provider_for(sim, {"BULKMDM_API_KEY": API_KEY}) as provider:
            found = [row async for row in provider.inventory()]
        # "--" is how the doc writes a serial the MDM does not know: exported blank
        want = {"" if d["serial_number"] == "--" else d["serial_number"] for d in state(sim).devices.values()}
        assert {row["serial"] for row in found} == want and len(found) == 40
        assert sim.stats.by_route["GET /api/v1/mdm/devices/{device_id}"] == 40


async def test_choices_offer_names_that_name_one_object(me: SimServer) -> None:
    async with provider_for(me, env_for("on-premises", me)) as provider:
        groups = await provider.choices("group")
        apps = await provider.choices("app")
        assert await provider.choices("tag") == []
    assert MEMBER_GROUP["name"] in groups and GROUP["name"] in groups
    assert FACTS["duplicate_group_name"] not in groups
    assert APP["name"] in apps and KEYNOTE["name"] in apps
    assert FACTS["shared_app_name"] not in apps
    assert {"com.google.chrome.ios", "com.android.chrome"} <= set(apps)  # Google Chrome: by bundle id
    skolverket = [str(a) for a, v in state(me).apps.items() if v["bundle_identifier"] == "se.skolverket.app"]
    assert set(skolverket) <= set(apps)  # shared name and bundle id: by app id
    assert len(apps) == len(set(apps)) == len(state(me).apps)  # every app once


def test_sim_option_for_the_real_behaviour_is_manageengine_only(run_cli: Any) -> None:
    result = run_cli(["sim", "duostation", "--me-real", "--port", "0"])
    assert result.exit_code == 2 and "the duostation simulator has no --real behaviour" in result.output


def test_bulkmdm_sim_manageengine_me_real_serves_the_real_behaviour() -> None:
    import json
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, "-m", "bulkmdm", "sim", "manageengine", "--me-real", "--port", "0", "--devices", "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")

        def get(path: str) -> Any:
            request = urllib.request.Request(url + path, headers={"Authorization": "me-api-key"})
            with urllib.request.urlopen(request, timeout=10) as resp:
                return json.load(resp)

        devices = get("/api/v1/mdm/devices")["devices"]
        assert sum(d["is_removed"] == "true" for d in devices) == len(FACTS["removed_twin_of"]) + 4
        assert not any(d["is_removed"] == "true" for d in get("/api/v1/mdm/devices?exclude_removed=true")["devices"])
        with pytest.raises(urllib.error.HTTPError) as info:
            get("/api/v1/devices")
        assert info.value.code == 404
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_token_endpoint_failing_mid_run_stops_the_run(tmp_path: Path, run_cli: Any) -> None:
    """With the token endpoint answering 500 mid-run, the run stops: the rows
    left are not-run (not sent to the MDM to be refused 401, each a call of
    the day's quota), and the summary and the rows agree."""
    from aiohttp import web

    from bulkmdm.sim.manageengine import make_app

    changes = {"made": 0}

    @web.middleware
    async def failing_tokens(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/oauth/v2/token" and changes["made"] >= 5:
            return web.json_response({"error": "internal"}, status=500)
        response = await handler(request)
        if request.method in ("POST", "DELETE") and request.path.startswith("/api/") and response.status < 300:
            changes["made"] += 1
            if changes["made"] == 5:
                request.app["state"].expire_tokens()
        return response

    app = make_app(api_key=API_KEY, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token=REFRESH)
    app.middlewares.append(failing_tokens)
    with SimServer(app) as sim:
        new = [d for d in generated(sim) if d not in members(sim, GROUP["id"])][:30]
        job = write_csv(
            tmp_path / "add.csv",
            [["serial", "group"], *([state(sim).devices[d]["serial_number"], GROUP["name"]] for d in new)],
        )
        args = ["run", str(job), "--provider", "manageengine", "--url", sim.url, "--action", "add-to-group"]
        result = run_cli([*args, "--rate", "none", "--batch-size", "1"], env=env_for("cloud", sim))
        refused = state(sim).unauthorized
    assert result.exit_code == 1, result.output
    assert "gave no access token (it answered HTTP 500" in result.output, result.output
    statuses = [r["status"] for r in result.report]
    assert statuses.count("succeeded") == 5 and statuses.count("failed") == 0, statuses
    assert statuses.count("not-run") == 25
    assert refused <= 8, refused  # the changes in flight when the token expired, not every row
