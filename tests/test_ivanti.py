"""The Ivanti Neurons for MDM provider against its simulator, over real HTTP
on 127.0.0.1: look-ups, batches, per-device rejections, split-and-retry,
faults, read-back after a lost answer, dry-run viability checks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest
from aiohttp import web
from conftest import write_csv  # type: ignore[import-not-found]
from multidict import MultiDict

from bulkmdm.errors import AuthError, ConfigError, SetupFailed
from bulkmdm.model import JobRow, Outcome, Reason, Status, Step
from bulkmdm.providers.base import Settings
from bulkmdm.providers.ivanti import Ivanti
from bulkmdm.retry import RetryPolicy
from bulkmdm.sim.common import Faults, SimServer
from bulkmdm.sim.ivanti import IvantiState, make_app
from bulkmdm.client import BasicAuth, Client

FAST = RetryPolicy(attempts=5, base=0.01, cap=0.05)


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(make_app(devices=300, seed=7)) as server:
        yield server


def state_of(sim: SimServer) -> IvantiState:
    return sim.app["state"]  # type: ignore[no-any-return]


@asynccontextmanager
async def ivanti(sim: SimServer, *, password: str = "admin", **settings: Any) -> AsyncIterator[Ivanti]:
    settings.setdefault("partition", "1")
    client = Client(Ivanti.api_base(sim.url), auth=BasicAuth("admin", password), retry=FAST, timeout=5)
    try:
        yield Ivanti(client, Settings(url=sim.url, **settings))
    finally:
        await client.aclose()


def pick(sim: SimServer, n: int = 1, **where: Any) -> list[dict[str, Any]]:
    """``n`` devices with a unique, non-blank serial whose fields match ``where``."""
    state = state_of(sim)
    out = []
    for device in state.devices.values():
        if not device["serialNumber"] or device["serialNumber"] == state.duplicate_serial:
            continue
        if all(device.get(k) == v for k, v in where.items()):
            out.append(device)
            if len(out) == n:
                return out
    raise AssertionError(f"the simulated fleet has fewer than {n} devices with {where}")


def rows(action: str, devices: list[dict[str, Any]], **fields: str) -> list[JobRow]:
    return [JobRow(i, action, {"serial": d["serialNumber"], **fields}) for i, d in enumerate(devices)]


async def run(provider: Ivanti, job: list[JobRow], *, dry_run: bool = False) -> list[Outcome]:
    """What the engine does: plan, batch by batch_key, execute (or check)."""
    planned = await provider.plan(job)
    assert len(planned) == len(job)
    steps = [p for p in planned if isinstance(p, Step)]
    batches: dict[Any, list[Step]] = {}
    for step in steps:
        batches.setdefault(step.batch_key, []).append(step)
    done = {p.index: p for p in planned if isinstance(p, Outcome)}
    size = provider.batch_size()
    for group in batches.values():
        for start in range(0, len(group), size):
            batch = group[start : start + size]
            outcomes = await (provider.check(batch) if dry_run else provider.execute(batch))
            assert [o.index for o in outcomes] == [s.index for s in batch]
            done.update((o.index, o) for o in outcomes)
    return [done[row.index] for row in job]


def statuses(items: Sequence[Outcome | Step]) -> list[str]:
    return [x.status.value if isinstance(x, Outcome) else "step" for x in items]


def detail(item: Outcome | Step) -> str:
    assert isinstance(item, Outcome), item
    return item.detail


# -- set-up -------------------------------------------------------------------


def test_credentials_url_and_partition() -> None:
    with pytest.raises(ConfigError, match="BULKMDM_USERNAME and BULKMDM_PASSWORD"):
        Ivanti.auth_from_env({})
    assert Ivanti.auth_from_env({"BULKMDM_USERNAME": "a", "BULKMDM_PASSWORD": "b"}).headers()["Authorization"]
    assert Ivanti.api_base("https://tenant.example.com/") == "https://tenant.example.com/api/v1"
    client = Client("http://127.0.0.1:9/api/v1")
    with pytest.raises(ConfigError) as info:
        Ivanti(client, Settings(url="http://127.0.0.1:9", env={}))
    assert str(info.value) == "ivanti needs the device space id: pass --partition or set BULKMDM_PARTITION_ID."
    from_env = Ivanti(client, Settings(url="http://127.0.0.1:9", env={"BULKMDM_PARTITION_ID": "23504"}))
    assert from_env.partition == "23504"
    flag = Ivanti(client, Settings(url="http://x", env={"BULKMDM_PARTITION_ID": "1"}, partition="2"))
    assert flag.partition == "2"
    assert flag.batch_size() == 100
    assert Ivanti(client, Settings(url="http://x", partition="2", batch_size=10)).batch_size() == 10


async def test_bad_credentials_stop_the_run(sim: SimServer) -> None:
    async with ivanti(sim, password="wrong") as provider:
        with pytest.raises(AuthError):
            await provider.plan(rows("lock", pick(sim)))


async def test_unknown_device_space_stops_before_anything_is_sent(sim: SimServer) -> None:
    async with ivanti(sim, partition="999") as provider:
        with pytest.raises(SetupFailed) as stopped:
            await provider.plan(rows("lock", pick(sim, 2)))
    message = str(stopped.value)
    assert "device space 999" in message and "HTTP 403" in message and "--partition" in message
    assert sim.stats.mutating == 0


# -- look-ups -----------------------------------------------------------------


async def test_lookups_are_exact(sim: SimServer) -> None:
    state = state_of(sim)
    device = pick(sim, registrationState="ACTIVE")[0]
    dup = state.duplicate_serial
    job = [
        JobRow(0, "lock", {"serial": "NOSUCHSERIAL"}),
        JobRow(1, "lock", {"serial": ""}),
        JobRow(2, "lock", {"serial": dup}),
        JobRow(3, "lock", {"device_id": device["guid"].upper()}),
        JobRow(4, "checkin", {"device_id": str(device["id"])}),
        JobRow(5, "lock", {"device_id": str(device["id"]), "serial": "OTHER123"}),
        JobRow(6, "wipe", {"serial": device["serialNumber"].lower()}),
        JobRow(7, "install-app", {"serial": device["serialNumber"], "app": "x"}),
    ]
    async with ivanti(sim) as provider:
        out = await provider.plan(job)
    assert detail(out[0]) == "Serial NOSUCHSERIAL was not found among the 300 devices of device space 1."
    assert isinstance(out[1], Outcome) and out[1].detail == "The serial is blank."
    assert isinstance(out[2], Outcome) and out[2].status is Status.FAILED
    assert out[2].reason is Reason.AMBIGUOUS
    assert "RETIRED" in out[2].detail and "device_id" in out[2].detail
    for step in out[3], out[4], out[6]:
        assert isinstance(step, Step) and step.params["id"] == device["id"]
        assert step.resolved == f"device_id={device['id']}"
    assert isinstance(out[5], Outcome) and "not OTHER123" in out[5].detail
    assert isinstance(out[7], Outcome) and "ivanti cannot install-app" in out[7].detail


async def test_device_list_is_fetched_once_500_a_page(sim: SimServer) -> None:
    with SimServer(make_app(devices=1234, seed=3)) as big:
        async with ivanti(big) as provider:
            devices = pick(big, 3)
            await provider.plan(rows("lock", devices[:2]))
            await provider.plan(rows("unlock", devices[2:]))
        assert big.stats.by_route["GET /api/v1/device"] == 3  # ceil(1234 / 500), once per run


async def test_large_fleets_page_with_search_after_values() -> None:
    app = make_app(devices=1200, seed=5)
    state: IvantiState = app["state"]
    state.search_after_from = 1000  # what the simulator does from 10,000 devices on
    with SimServer(app) as big:
        last = max(state.devices)
        device = state.devices[last]
        job = [JobRow(0, "lock", {"device_id": str(last)})]
        if device["serialNumber"]:
            job.append(JobRow(1, "checkin", {"serial": device["serialNumber"]}))
        async with ivanti(big) as provider:
            out = await provider.plan(job)
        assert all(isinstance(s, Step) and s.params["id"] == last for s in out)
        assert state.search_after_requests == 2  # pages 2 and 3
        assert big.stats.by_route["GET /api/v1/device"] == 3


# -- bulk actions -------------------------------------------------------------


async def test_lock_sends_one_request_for_the_batch(sim: SimServer) -> None:
    devices = pick(sim, 20, registrationState="ACTIVE")
    async with ivanti(sim) as provider:
        out = await run(provider, rows("lock", devices))
    assert statuses(out) == ["succeeded"] * 20
    assert out[0].detail == f"Lock command sent to device {devices[0]['serialNumber']}."
    assert all(state_of(sim).applied(d["id"], "lock") == 1 for d in devices)
    assert sim.stats.by_route["PUT /api/v1/device/lock"] == 1
    assert sim.stats.by_route["GET /api/v1/device/lock"] == 1  # checkViability first


async def test_devices_not_eligible_fail_with_the_vendors_reason(sim: SimServer) -> None:
    good = pick(sim, 4, registrationState="ACTIVE")
    retired = pick(sim, 1, registrationState="RETIRED")
    devices = good[:2] + retired + good[2:]
    async with ivanti(sim) as provider:
        out = await run(provider, rows("lock", devices))
    assert statuses(out) == ["succeeded", "succeeded", "failed", "succeeded", "succeeded"]
    assert "not eligible: DEVICE_RETIRED (the device is retired)" in out[2].detail
    assert state_of(sim).applied(retired[0]["id"], "lock") == 0
    assert sim.stats.by_route["PUT /api/v1/device/lock"] == 1


async def test_assign_user_rejections_come_from_the_answer(sim: SimServer) -> None:
    state = state_of(sim)
    android = pick(sim, 1, registrationState="ACTIVE", platformType="ANDROID")[0]
    unsupervised = pick(sim, 1, registrationState="ACTIVE", platformType="IOS", supervised=False)[0]
    new_owner = next(
        a
        for a, acc in state.accounts.items()
        if a not in (android["ownerId"], unsupervised["ownerId"])
        and any(d["ownerId"] == a for d in state.devices.values())
    )
    email = state.accounts[new_owner]["email"]
    async with ivanti(sim) as provider:
        out = await run(provider, rows("assign-user", [android, unsupervised], user=email))
    assert statuses(out) == ["succeeded", "failed"]
    assert "Reassignment of device" in out[0].detail and email in out[0].detail
    assert "DEVICE_NOT_SUPERVISED" in out[1].detail
    assert android["ownerId"] == new_owner and unsupervised["ownerId"] != new_owner
    assert sim.stats.by_route["PUT /api/v1/device/updateAccount"] == 1


async def test_assign_user_finds_the_account_through_owner_id_once_per_email(sim: SimServer) -> None:
    targets = pick(sim, 3, registrationState="ACTIVE", platformType="ANDROID")
    owner_device = next(
        d for d in pick(sim, 50, registrationState="ACTIVE") if d["ownerId"] not in {t["ownerId"] for t in targets}
    )
    account = owner_device["ownerId"]
    job = rows("assign-user", targets, email=owner_device["emailAddress"].upper())  # case does not matter
    job.append(JobRow(3, "assign-user", {"serial": targets[0]["serialNumber"], "user": "nobody@example.org"}))
    job.append(
        JobRow(4, "assign-user", {"serial": owner_device["serialNumber"], "email": owner_device["emailAddress"]})
    )
    async with ivanti(sim) as provider:
        out = await provider.plan(job)
        for step in out[:3]:
            assert isinstance(step, Step) and step.params["account"] == account
            assert step.resolved.endswith(f"account_id={account}")
            assert step.batch_key == ("assign-user", str(account))
        assert isinstance(out[3], Outcome) and out[3].status is Status.FAILED
        assert "No device in device space 1 belongs to nobody@example.org" in out[3].detail
        assert isinstance(out[4], Outcome) and out[4].status is Status.SKIPPED
        assert out[4].reason is Reason.ALREADY
        result = await provider.execute([s for s in out[:3] if isinstance(s, Step)])
    assert statuses(result) == ["succeeded"] * 3
    assert all(t["ownerId"] == account and t["emailAddress"] == owner_device["emailAddress"] for t in targets)
    # one device-list page, two searches for the email (whatever its case) and
    # two for the unknown user: by email address and by uid, each
    assert sim.stats.by_route["GET /api/v1/device"] == 5
    assert sim.stats.by_route["PUT /api/v1/device/updateAccount"] == 1


async def test_an_address_that_is_one_accounts_email_and_anothers_uid_fails_naming_both(sim: SimServer) -> None:
    state = state_of(sim)
    target, by_email = pick(sim, 2, registrationState="ACTIVE")
    other = next(d for d in pick(sim, 50, registrationState="ACTIVE") if d["ownerId"] != by_email["ownerId"])
    address, b = by_email["emailAddress"], other["ownerId"]

    def give_uid() -> None:
        state.accounts[b]["uid"] = address
        for device in [d for d in state.devices.values() if d["ownerId"] == b]:
            state._set_owner(device, b)

    sim.call(give_uid)
    async with ivanti(sim) as provider:
        out = await provider.plan(rows("assign-user", [target], email=address))
    assert isinstance(out[0], Outcome) and out[0].status is Status.FAILED, out
    assert f"account {by_email['ownerId']} by emailAddress" in out[0].detail
    assert f"account {b} by uid" in out[0].detail
    assert sim.stats.mutating == 0


async def test_message_batches_by_text(sim: SimServer) -> None:
    devices = pick(sim, 5, registrationState="ACTIVE")
    job = rows("message", devices[:3], message="Please return your iPad, Friday 15:00 & thanks")
    job += [
        JobRow(3 + i, "message", {"serial": d["serialNumber"], "message": "Other text"})
        for i, d in enumerate(devices[3:])
    ]
    async with ivanti(sim) as provider:
        out = await run(provider, job)
    assert statuses(out) == ["succeeded"] * 5
    assert sim.stats.by_route["PUT /api/v1/device/message"] == 2
    log = {(device_id, detail) for device_id, action, detail in state_of(sim).log if action == "message"}
    assert (devices[0]["id"], "Please return your iPad, Friday 15:00 & thanks") in log
    assert (devices[4]["id"], "Other text") in log


@pytest.mark.parametrize(
    ("action", "where", "logged", "new_state"),
    [
        ("unlock", {"platformType": "IOS"}, "unlock", "ACTIVE"),
        ("wipe", {}, "wipe", "WIPE_PENDING"),
        ("retire", {}, "retire", "RETIRED"),
        ("restart", {"platformType": "IOS", "supervised": True}, "restart", "ACTIVE"),
        ("checkin", {}, "checkin", "ACTIVE"),
    ],
)
async def test_each_bulk_action(
    sim: SimServer, action: str, where: dict[str, Any], logged: str, new_state: str
) -> None:
    devices = pick(sim, 3, registrationState="ACTIVE", **where)
    async with ivanti(sim) as provider:
        out = await run(provider, rows(action, devices))
    assert statuses(out) == ["succeeded"] * 3, out
    for device in devices:
        assert state_of(sim).applied(device["id"], logged) == 1
        assert device["registrationState"] == new_state
    # wipe and retire document one id per request ("id of the device to wipe")
    puts = 3 if action in ("wipe", "retire") else 1
    assert sum(n for route, n in sim.stats.by_route.items() if route.startswith("PUT ")) == puts


async def test_commands_without_a_viability_check_are_refused_in_the_plan(sim: SimServer) -> None:
    retired = pick(sim, 1, registrationState="RETIRED")[0]
    android = pick(sim, 1, registrationState="ACTIVE", platformType="ANDROID")[0]
    wiped = pick(sim, 1, registrationState="WIPE_PENDING")[0]
    job = [
        JobRow(0, "unlock", {"serial": retired["serialNumber"]}),
        JobRow(1, "restart", {"serial": android["serialNumber"]}),
        JobRow(2, "wipe", {"serial": wiped["serialNumber"]}),
        JobRow(3, "retire", {"serial": retired["serialNumber"]}),
    ]
    async with ivanti(sim) as provider:
        out = await provider.plan(job)
    assert statuses(out) == ["failed", "failed", "skipped", "skipped"]
    assert [o.reason for o in out if isinstance(o, Outcome)] == [Reason.REFUSED] * 2 + [Reason.ALREADY] * 2
    assert "is RETIRED; the MDM sends commands only to active devices" in detail(out[0])
    assert "restarts only supervised iOS devices" in detail(out[1])


async def test_the_same_change_twice_is_sent_once(sim: SimServer) -> None:
    device = pick(sim, 1, registrationState="ACTIVE")[0]
    async with ivanti(sim) as provider:
        out = await run(provider, rows("lock", [device, device]))
    assert statuses(out) == ["succeeded", "skipped"]
    assert out[1].detail == "Same change as line 2; sent once."
    assert state_of(sim).applied(device["id"], "lock") == 1


async def test_500_rows_need_far_fewer_requests_than_rows() -> None:
    with SimServer(make_app(devices=2000, seed=11)) as big:
        devices = pick(big, 500, registrationState="ACTIVE")
        async with ivanti(big) as provider:
            out = await run(provider, rows("lock", devices))
        assert statuses(out) == ["succeeded"] * 500
        assert big.stats.mutating <= 0.05 * 500
        assert big.stats.mutating == 5
        assert all(big.app["state"].applied(d["id"], "lock") == 1 for d in devices)


async def test_answers_are_read_from_the_envelope_and_the_count() -> None:
    """A 200 whose envelope holds errors is a refusal; a count below the
    number of devices sent (1 included) leaves the rows unknown; a count of 0 fails them."""
    app = make_app(devices=300, seed=7)
    answers = {
        "/api/v1/device/unlock": {
            "errors": {"globalErrors": [{"code": "Disabled", "message": "Unlock is off"}], "fieldErrors": None},
            "result": None,
        },
        "/api/v1/device/restart": {"errors": None, "result": 2},
        "/api/v1/device/forceCheckin": {"errors": None, "result": 1},
        "/api/v1/device/message": {"errors": None, "result": False},
    }

    @web.middleware
    async def scripted(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "PUT" and request.path in answers:
            return web.json_response(answers[request.path])
        return await handler(request)

    app.middlewares.append(scripted)
    with SimServer(app) as scripted_sim:
        devices = pick(scripted_sim, 3, registrationState="ACTIVE", platformType="IOS", supervised=True)
        async with ivanti(scripted_sim) as provider:
            unlock = await run(provider, rows("unlock", devices[:1]))
            restart = await run(provider, rows("restart", devices))
            checkin = await run(provider, rows("checkin", devices[:2]))
            message = await run(provider, rows("message", devices[:2], message="hi"))
    assert statuses(unlock) == ["failed"]
    serial = devices[0]["serialNumber"]
    assert unlock[0].detail == f"The MDM refused to unlock device {serial} (HTTP 200): Unlock is off."
    assert statuses(restart) == ["unknown"] * 3
    assert {o.reason for o in restart + checkin} == {Reason.BAD_ANSWER}
    assert "for 2 of the 3 devices in it without saying which" in restart[0].detail
    # a count of 1 for two devices is one of them, not "success" for both
    assert statuses(checkin) == ["unknown"] * 2
    assert statuses(message) == ["failed"] * 2 and {o.reason for o in unlock + message} == {Reason.REFUSED}


# -- a batch refused as a whole -------------------------------------------------


@pytest.mark.parametrize("action", ["lock", "unlock"])  # split at the viability check / at the PUT
async def test_batch_refused_as_a_whole_is_split_so_the_good_rows_succeed(sim: SimServer, action: str) -> None:
    state = state_of(sim)
    devices = pick(sim, 9, registrationState="ACTIVE", platformType="IOS")
    async with ivanti(sim) as provider:
        planned = await provider.plan(rows(action, devices))
        gone = devices[5]["id"]
        sim.call(lambda: state.delete(gone))  # deleted in the console since the look-up
        out = await provider.execute([s for s in planned if isinstance(s, Step)])
    assert statuses(out) == ["succeeded"] * 5 + ["failed"] + ["succeeded"] * 3
    assert "HTTP 400" in out[5].detail and f"Invalid device id(s): {gone}" in out[5].detail
    for device in devices:
        assert state.applied(device["id"], action) == (0 if device["id"] == gone else 1)


async def test_forbidden_batch_is_not_split(sim: SimServer) -> None:
    devices = pick(sim, 8, registrationState="ACTIVE")
    async with ivanti(sim) as provider:
        planned = [s for s in await provider.plan(rows("lock", devices)) if isinstance(s, Step)]
        sim.faults.error_status = 403
        sim.faults.error_rate = 1.0
        out = await provider.execute(planned)
    assert statuses(out) == ["failed"] * 8 and "HTTP 403" in out[0].detail
    assert sim.stats.by_route["GET /api/v1/device/lock"] == 1


# -- faults -------------------------------------------------------------------


async def test_503s_are_retried_and_applied_once() -> None:
    faults = Faults(error_rate=0.5, seed=3, mutating_only=True)
    with SimServer(make_app(devices=300, seed=7, faults=faults)) as flaky:
        devices = pick(flaky, 30, registrationState="ACTIVE")
        async with ivanti(flaky) as provider:
            out = await run(provider, rows("lock", devices))
        assert statuses(out) == ["succeeded"] * 30
        assert flaky.stats.faults > 0
        assert max(o.attempts for o in out) > 1
        assert all(state_of(flaky).applied(d["id"], "lock") == 1 for d in devices)


async def test_lost_answer_to_a_command_is_unknown_and_not_resent(sim: SimServer) -> None:
    devices = pick(sim, 4, registrationState="ACTIVE")
    async with ivanti(sim) as provider:
        planned = [s for s in await provider.plan(rows("lock", devices)) if isinstance(s, Step)]
        sim.faults.update({"drop_after_rate": 1.0, "mutating_only": True})
        out = await provider.execute(planned)
    assert statuses(out) == ["unknown"] * 4
    assert {o.reason for o in out} == {Reason.NO_ANSWER}
    assert all(state_of(sim).applied(d["id"], "lock") == 1 for d in devices)


@pytest.mark.parametrize("action", ["retire", "wipe", "assign-user", "set-attribute", "delete-device"])
async def test_lost_answer_is_confirmed_by_reading_back(sim: SimServer, action: str) -> None:
    state = state_of(sim)
    if action == "delete-device":
        devices = pick(sim, 2, registrationState="RETIRED")
        job = rows(action, devices)
    elif action == "assign-user":
        devices = pick(sim, 2, registrationState="ACTIVE", platformType="ANDROID")
        other = next(d for d in state.devices.values() if d["ownerId"] not in {x["ownerId"] for x in devices})
        job = rows(action, devices, email=other["emailAddress"])
    elif action == "set-attribute":
        devices = pick(sim, 2, registrationState="ACTIVE")
        job = rows(action, devices, attribute="cityid", value="Reykjavík")
    else:
        devices = pick(sim, 2, registrationState="ACTIVE")
        job = rows(action, devices)
    logged = {"set-attribute": "customattributes-patch"}.get(action, action)
    async with ivanti(sim) as provider:
        planned = [s for s in await provider.plan(job) if isinstance(s, Step)]
        assert len(planned) == 2
        sim.faults.update({"drop_after_rate": 1.0, "mutating_only": True})
        out = await provider.execute(planned)
    assert statuses(out) == ["succeeded"] * 2, out
    assert [o.reason for o in out] == [Reason.READ_BACK] * 2
    assert "Confirmed by reading it back" in out[0].detail
    for device in devices:
        assert state.applied(device["id"], logged) == 1


async def test_set_attribute_on_a_device_deleted_meanwhile_fails_not_found(sim: SimServer) -> None:
    """The device is deleted in the console as the change goes out and its
    answer is lost: the read-back's 404 proves it gone, so the row fails
    not-found, saying so, and nothing is sent again."""
    (device,) = pick(sim, 1, registrationState="ACTIVE")
    async with ivanti(sim) as provider:
        planned = await provider.plan(rows("set-attribute", [device], attribute="floor", value="3"))
        assert [type(s) for s in planned] == [Step]
        state_of(sim).delete(device["id"])
        sim.faults.update({"drop_after_rate": 1.0, "mutating_only": True})
        before = sim.stats.mutating
        out = await provider.execute([s for s in planned if isinstance(s, Step)])
    assert statuses(out) == ["failed"] and out[0].reason == Reason.NOT_FOUND, out
    assert "no longer exists" in out[0].detail and "nothing was sent again" in out[0].detail, out[0].detail
    assert sim.stats.mutating - before == 1  # the PATCH once, then only the read


async def test_gateway_answer_to_a_command_is_unknown_and_not_resent(sim: SimServer) -> None:
    devices = pick(sim, 3, registrationState="ACTIVE")
    async with ivanti(sim) as provider:
        planned = [s for s in await provider.plan(rows("lock", devices)) if isinstance(s, Step)]
        sim.faults.update({"gateway_after_rate": 1.0, "gateway_status": 502, "mutating_only": True})
        out = await provider.execute(planned)
    assert statuses(out) == ["unknown"] * 3
    assert "HTTP 502" in out[0].detail
    assert all(state_of(sim).applied(d["id"], "lock") == 1 for d in devices)


@pytest.mark.parametrize("action", ["retire", "set-attribute"])
async def test_gateway_answer_after_a_change_is_read_back_not_resent(sim: SimServer, action: str) -> None:
    devices = pick(sim, 2, registrationState="ACTIVE")
    extra = {"attribute": "cityid", "value": "Reykjavík"} if action == "set-attribute" else {}
    async with ivanti(sim) as provider:
        planned = [s for s in await provider.plan(rows(action, devices, **extra)) if isinstance(s, Step)]
        sim.faults.update({"gateway_after_rate": 1.0, "mutating_only": True})
        out = await provider.execute(planned)
    assert statuses(out) == ["succeeded"] * 2, out
    assert [o.reason for o in out] == [Reason.READ_BACK] * 2
    logged = {"set-attribute": "customattributes-patch"}.get(action, action)
    assert all(state_of(sim).applied(d["id"], logged) == 1 for d in devices)


# -- dry run --------------------------------------------------------------------


async def test_dry_run_asks_check_viability_and_changes_nothing(sim: SimServer) -> None:
    active = pick(sim, 3, registrationState="ACTIVE")
    retired = pick(sim, 1, registrationState="RETIRED")
    job = rows("wipe", active + retired) + [JobRow(4, "unlock", {"serial": active[0]["serialNumber"]})]
    async with ivanti(sim, dry_run=True) as provider:
        out = await run(provider, job, dry_run=True)
    assert statuses(out) == ["planned", "planned", "planned", "failed", "planned"]
    assert "not eligible: DEVICE_RETIRED" in out[3].detail
    assert out[0].detail == f"Would wipe device {active[0]['serialNumber']}."
    assert sim.stats.mutating == 0
    assert sim.stats.by_route["GET /api/v1/device/wipe"] == 4  # one device a request, as the doc shows
    assert "GET /api/v1/device/unlock" not in sim.stats.by_route  # no documented check: planned as is
    assert all(d["registrationState"] == "ACTIVE" for d in active)


# -- per-device calls -----------------------------------------------------------


async def test_set_attribute_patches_and_skips_what_is_already_set(sim: SimServer) -> None:
    state = state_of(sim)
    with_two = [d for d in pick(sim, 100) if d["customAttributes"] and len(d["customAttributes"]["attrs"]) == 2]
    done, todo = with_two[:2]
    city = done["customAttributes"]["attrs"]["cityid"][0]
    job = [
        JobRow(0, "set-attribute", {"serial": done["serialNumber"], "attribute": "cityid", "value": city}),
        JobRow(1, "set-attribute", {"serial": todo["serialNumber"], "attribute": "cityid", "value": "OSL"}),
        JobRow(2, "set-attribute", {"serial": todo["serialNumber"], "attribute": "cityid", "value": "OSL"}),
        JobRow(3, "set-attribute", {"serial": todo["serialNumber"], "attribute": "cityid", "value": "BOS"}),
        JobRow(4, "set-attribute", {"serial": todo["serialNumber"], "attribute": "floor", "value": "3"}),
    ]
    async with ivanti(sim) as provider:
        out = await run(provider, job)
    assert statuses(out) == ["skipped", "succeeded", "skipped", "failed", "succeeded"]
    assert [o.reason for o in out if isinstance(o, Outcome)] == [
        Reason.ALREADY,
        Reason.DONE,
        Reason.ALREADY,  # the same change as line 3
        Reason.INVALID_ROW,  # another value for the attribute on line 3
        Reason.DONE,
    ]
    assert "is also set on line 3; give it one change per job" in out[3].detail
    attrs = todo["customAttributes"]["attrs"]
    assert attrs["cityid"] == ["OSL"] and attrs["floor"] == ["3"]
    assert len(attrs) == 3  # PATCH kept the attribute the job did not name
    assert state.applied(done["id"], "customattributes-patch") == 0
    assert sim.stats.by_route["PATCH /api/v1/device/{ref}/customattributes"] == 2
    assert "POST /api/v1/device/{ref}/customattributes" not in sim.stats.by_route


async def test_delete_device(sim: SimServer) -> None:
    state = state_of(sim)
    retired = pick(sim, 2, registrationState="RETIRED")
    active = pick(sim, 1, registrationState="ACTIVE")[0]
    job = rows("delete-device", retired)
    job.append(JobRow(2, "delete-device", {"serial": active["serialNumber"]}))
    job.append(JobRow(3, "delete-device", {"serial": retired[0]["serialNumber"], "email": "someone@else.org"}))
    async with ivanti(sim) as provider:
        out = await run(provider, job)
    assert statuses(out) == ["succeeded", "succeeded", "failed", "failed"]
    assert out[0].detail == f"Device {retired[0]['serialNumber']} deleted."
    assert [o.reason for o in out] == [Reason.DONE, Reason.DONE, Reason.REFUSED, Reason.INVALID_ROW]
    assert "is ACTIVE" in out[2].detail and "Retire it first" in out[2].detail
    assert all(d["id"] not in state.devices for d in retired) and active["id"] in state.devices
    assert sim.stats.by_route["DELETE /api/v1/device"] == 2  # one per device


# -- end to end: the command line ----------------------------------------------


def test_cli_runs_a_mixed_job(sim: SimServer, tmp_path: Path, run_cli: Any) -> None:
    state = state_of(sim)
    active = pick(sim, 4, registrationState="ACTIVE", platformType="IOS", supervised=True)
    retired = pick(sim, 1, registrationState="RETIRED")[0]
    job = write_csv(
        tmp_path / "job.csv",
        [
            ["Action", "Serial Number", "Message Text", "Attribute Name", "Attribute Value"],
            ["lock", active[0]["serialNumber"], "", "", ""],
            ["lock", active[1]["serialNumber"], "", "", ""],
            ["lock", retired["serialNumber"], "", "", ""],
            ["send message", active[2]["serialNumber"], "=1+1 is not a formula", "", ""],
            ["Set Attribute", active[3]["serialNumber"], "", "floor", "007"],
            ["restart", state.duplicate_serial, "", "", ""],
            ["retire", active[3]["serialNumber"], "", "", ""],
        ],
    )
    result = run_cli(["run", str(job), "--provider", "ivanti", "--url", sim.url, "--partition", "1", "--yes"])
    assert result.exit_code == 1, result.output
    assert [r["status"] for r in result.report] == [
        "succeeded",
        "succeeded",
        "failed",
        "succeeded",
        "succeeded",
        "failed",
        "succeeded",
    ]
    assert "DEVICE_RETIRED" in result.report[2]["detail"]
    assert result.reasons[5] == Reason.AMBIGUOUS
    assert result.report[4]["Attribute Value"] == "007"
    assert active[3]["customAttributes"]["attrs"]["floor"] == ["007"]  # leading zeros kept
    assert state.applied(active[0]["id"], "lock") == state.applied(active[1]["id"], "lock") == 1
    assert (active[2]["id"], "message", "=1+1 is not a formula") in state.log
    assert active[3]["registrationState"] == "RETIRED"
    assert sim.stats.by_route["PUT /api/v1/device/lock"] == 1  # both locks in one request


def test_cli_dry_run_takes_the_partition_from_the_environment(sim: SimServer, tmp_path: Path, run_cli: Any) -> None:
    devices = pick(sim, 3, registrationState="ACTIVE")
    job = write_csv(tmp_path / "wipe.csv", [["serial"], *([d["serialNumber"]] for d in devices)])
    result = run_cli(
        ["run", str(job), "--provider", "ivanti", "--url", sim.url, "--action", "wipe", "--dry-run"],
        env={"BULKMDM_PARTITION_ID": "1"},
    )
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in result.report] == ["planned"] * 3
    assert sim.stats.mutating == 0
    assert all(d["registrationState"] == "ACTIVE" for d in devices)


def test_cli_without_a_partition_says_how_to_give_one(sim: SimServer, tmp_path: Path, run_cli: Any) -> None:
    job = write_csv(tmp_path / "job.csv", [["serial"], [pick(sim)[0]["serialNumber"]]])
    result = run_cli(["run", str(job), "--provider", "ivanti", "--url", sim.url, "--action", "lock"])
    assert result.exit_code == 2
    assert "ivanti needs the device space id: pass --partition or set BULKMDM_PARTITION_ID." in result.output
    assert sim.stats.requests == 0


def test_cli_with_a_non_numeric_partition_is_bad_usage(sim: SimServer, tmp_path: Path, run_cli: Any) -> None:
    """dmPartitionId is "Integer. The device space ID.": a typo like ``abc``
    stops the run (exit 2) before any request, rather than failing every row
    with the server's 400/403 and exit 1."""
    job = write_csv(tmp_path / "job.csv", [["serial"], [pick(sim)[0]["serialNumber"]]])
    for bad, env in (("abc", {}), (None, {"BULKMDM_PARTITION_ID": "space-1"})):
        args = ["run", str(job), "--provider", "ivanti", "--url", sim.url, "--action", "lock", "--fresh"]
        result = run_cli(args + (["--partition", bad] if bad else []), env=env)
        assert result.exit_code == 2, result.output
        assert "device space id is a number" in result.output
    assert sim.stats.requests == 0


async def test_server_without_a_viability_check_still_takes_the_action() -> None:
    """checkViability is a convenience before a real send: when the server
    has no such route (405/404), the lock is sent without it."""
    app = make_app(devices=120, seed=7)

    @web.middleware
    async def no_viability(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.query.get("checkViability") == "true":
            return web.json_response({"errors": [{"message": "Method Not Allowed"}], "result": None}, status=405)
        return await handler(request)

    app.middlewares.append(no_viability)
    with SimServer(app) as server:
        devices = pick(server, 30, registrationState="ACTIVE")
        async with ivanti(server) as provider:
            outcomes = await run(provider, rows("lock", devices))
        assert statuses(outcomes) == ["succeeded"] * 30
        assert sum(state_of(server).applied(d["id"], "lock") for d in devices) == 30
        assert server.stats.by_route["PUT /api/v1/device/lock"] == 1


# -- the wire format, as the vendor doc shows it ----------------------------------


def recorder(app: web.Application) -> list[dict[str, Any]]:
    """Every API request as it arrived: method, path, query, content type and
    body (the handler still reads the body: aiohttp keeps it)."""
    seen: list[dict[str, Any]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read() if request.body_exists else b""
        seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "args": MultiDict(request.query),
                "type": request.content_type if body else "",
                "body": body.decode(),
            }
        )
        return await handler(request)

    app.middlewares.append(record)
    return seen


def form(request: dict[str, Any]) -> list[tuple[str, str]]:
    assert request["type"] == "application/x-www-form-urlencoded", request
    return parse_qsl(request["body"], keep_blank_values=True)


async def test_requests_are_sent_as_the_doc_shows() -> None:
    """Paths, methods, encodings and parameter names of every action, read
    off the wire (see the vendor doc's example requests)."""
    app = make_app(devices=300, seed=7)
    seen = recorder(app)
    with SimServer(app) as server:
        state = state_of(server)
        ios = pick(server, 8, registrationState="ACTIVE", platformType="IOS", supervised=True)
        android = pick(server, 2, registrationState="ACTIVE", platformType="ANDROID")
        retired = pick(server, 1, registrationState="RETIRED")
        owner = next(d for d in state.devices.values() if d["ownerId"] not in {a["ownerId"] for a in android})
        a, b = (str(d["id"]) for d in ios[:2])
        job = [
            *rows("lock", ios[:2]),
            *rows("unlock", ios[:2]),
            *rows("restart", ios[:2]),
            *rows("checkin", ios[:2]),
            *rows("message", ios[:2], message="Back by 5 & thanks"),
            *rows("assign-user", android, email=owner["emailAddress"]),
            *rows("set-attribute", ios[2:3], attribute="floor", value="007"),
            *rows("delete-device", retired),
            *rows("retire", ios[3:4]),
            *rows("wipe", ios[4:5]),
        ]
        job = [JobRow(i, r.action, r.fields) for i, r in enumerate(job)]
        async with ivanti(server) as provider:
            out = await run(provider, job)
    assert set(statuses(out)) == {"succeeded"}, out

    def sent(method: str, path: str) -> list[dict[str, Any]]:
        return [r for r in seen if r["method"] == method and r["path"] == "/api/v1/" + path]

    # the device list: GET device?dmPartitionId=&rows=500&start=0, no body, in
    # a stable order (public clients' sortFields[0].name/order)
    (search,) = [r for r in sent("GET", "device") if "fq" not in r["args"]]
    assert dict(search["args"]) == {
        "dmPartitionId": "1",
        "rows": "500",
        "start": "0",
        "sortFields[0].name": "id",
        "sortFields[0].order": "ASC",
    }
    # "?q=&dmPartitionId=23505&fq=EMAILADDRESS+EQ+<email>"
    # and "UID EQ <uid>": an address that is one account's email and another's uid names neither
    by_email, by_uid = [r for r in sent("GET", "device") if "fq" in r["args"]]
    assert dict(by_email["args"]) == {"q": "", "dmPartitionId": "1", "fq": f"EMAILADDRESS EQ {owner['emailAddress']}"}
    assert dict(by_uid["args"]) == {"q": "", "dmPartitionId": "1", "fq": f"UID EQ {owner['emailAddress']}"}
    # "To lock multiple devices, you can chain the ids parameter: ids=126070&ids=337552"
    for segment in ("lock", "unlock", "forceCheckin"):
        (put,) = sent("PUT", f"device/{segment}")
        assert form(put) == [("ids", a), ("ids", b)] and put["query"] == ""
    # "chaining the ids, for example: ids=10542407, 10542400"
    assert form(sent("PUT", "device/restart")[0]) == [("ids", f"{a},{b}")]
    # "forceCheckin?checkViability=true&ids=22062&ids=22196"
    (check,) = sent("GET", "device/lock")
    assert check["args"].getall("ids") == [a, b] and check["args"]["checkViability"] == "true"
    assert check["body"] == ""
    # the message example, field by field, the ids "separated by url-encoded commas"
    assert form(sent("PUT", "device/message")[0]) == [
        ("sendPushNotification", "true"),
        ("pushNotificationMessage", "Back by 5 & thanks"),
        ("sendEmail", "false"),
        ("emailSubject", ""),
        ("emailBody", ""),
        ("dmPartitionId", "1"),
        ("deviceIds", f"{a},{b}"),
    ]
    assert "deviceIds=" + a + "%2C" + b in sent("PUT", "device/message")[0]["body"]
    # --data-urlencode 'accountId=10542407' --data-urlencode 'deviceIds=73542'
    assert form(sent("PUT", "device/updateAccount")[0]) == [
        ("accountId", str(owner["ownerId"])),
        ("deviceIds", ",".join(str(d["id"]) for d in android)),
    ]
    (patch,) = sent("PATCH", f"device/{ios[2]['id']}/customattributes")
    assert patch["type"] == "application/json"
    assert json.loads(patch["body"]) == {"attrs": {"floor": ["007"]}, "forceOverwrite": True}
    assert not sent("POST", f"device/{ios[2]['id']}/customattributes")  # POST would replace them all
    (delete,) = sent("DELETE", "device")
    assert delete["query"] == f"deviceIds={retired[0]['id']}" and delete["body"] == ""
    assert form(sent("PUT", "device/retire")[0]) == [("ids", str(ios[3]["id"]))]
    wipe = dict(form(sent("PUT", "device/wipe")[0]))
    assert wipe["ids"] == str(ios[4]["id"]) and wipe["returnToServiceEnabled"] == "false"
    assert all(r["path"].startswith("/api/v1/device") for r in seen)


async def test_the_simulator_refuses_what_the_doc_does_not_show(sim: SimServer) -> None:
    """The simulator is as strict as the doc, so that a wrong request fails
    our own tests: JSON where the doc sends a form (and the reverse), the
    wrong id field, the message without its device space, the delete's ids
    outside the query string, more than 500 rows."""
    device = pick(sim, 1, registrationState="ACTIVE")[0]
    retired = pick(sim, 1, registrationState="RETIRED")[0]
    ident = str(device["id"])
    message = {"sendPushNotification": "true", "pushNotificationMessage": "hi", "deviceIds": ident}
    async with aiohttp.ClientSession(sim.url, headers=dict(BasicAuth("admin", "admin").headers())) as http:

        async def status(method: str, path: str, **kwargs: Any) -> int:
            async with http.request(method, "/api/v1/" + path, **kwargs) as resp:
                body = await resp.json()
                assert set(body) == {"errors", "result"}  # the envelope, errors or not
                return resp.status

        assert await status("PUT", "device/lock", json={"ids": [ident]}) == 415
        assert await status("PUT", "device/lock", data={"deviceIds": ident}) == 400
        assert (
            await status("PUT", "device/updateAccount", data={"accountId": str(device["ownerId"]), "ids": ident}) == 400
        )
        assert await status("PUT", "device/message", data=message) == 400
        assert await status("PUT", "device/message", data={**message, "dmPartitionId": "1"}) == 200
        assert await status("GET", "device/restart", params={"checkViability": "true", "ids": ident}) == 405
        assert await status("PATCH", f"device/{ident}/customattributes", data={"attrs": "x"}) == 415
        assert await status("DELETE", "device", data={"deviceIds": str(retired["id"])}) == 400
        assert await status("GET", "device", params={"dmPartitionId": "1", "rows": "501"}) == 400
        assert await status("GET", "device", params={"rows": "5"}) == 400  # no device space
        assert await status("DELETE", "device", params={"deviceIds": str(retired["id"])}) == 200
    assert state_of(sim).applied(device["id"], "lock") == 0


# -- what another server may do -------------------------------------------------


def rewrite_search(app: web.Application, change: Any) -> None:
    """Pass each device-search answer of the simulator through ``change(result, request)``."""

    @web.middleware
    async def rewrite(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        if request.method != "GET" or request.path != "/api/v1/device" or response.status != 200:
            return response
        assert isinstance(response, web.Response) and response.body is not None
        body = json.loads(response.body)  # type: ignore[arg-type]
        change(body["result"], request)
        return web.json_response(body)

    app.middlewares.append(rewrite)


async def plan_the_last_device(app: web.Application, action: str = "checkin") -> SimServer:
    """Plan ``action`` on the fleet's last device (the highest id) against ``app``: the
    whole fleet is read and the device found. Returns the (stopped) server, for its counts."""
    state: IvantiState = app["state"]
    with SimServer(app) as server:
        last = max(state.devices)
        async with ivanti(server) as provider:
            out = await provider.plan([JobRow(0, action, {"device_id": str(last)})])
            assert provider._fleet is not None and provider._fleet.count == len(state.devices)
        assert isinstance(out[0], Step) and out[0].params["id"] == last
    return server


async def test_search_after_values_are_also_read_from_the_last_device() -> None:
    app = make_app(devices=1200, seed=5)
    state: IvantiState = app["state"]
    state.search_after_from = 1000

    def move(result: dict[str, Any], request: web.Request) -> None:
        values = result.pop("searchAfterValues", None)
        if values and result["searchResults"]:
            result["searchResults"][-1] = dict(result["searchResults"][-1], searchAfterValues=values)

    rewrite_search(app, move)
    await plan_the_last_device(app, "lock")
    assert state.search_after_requests == 2


async def test_search_after_values_the_server_will_not_take_fall_back_to_start() -> None:
    """A server that hands out continuation values it then refuses (or
    ignores) is paged by ``start``: every device is still found."""
    app = make_app(devices=1200, seed=5)
    rewrite_search(app, lambda result, request: result.update(searchAfterValues=["not-a-value"]))
    server = await plan_the_last_device(app)
    assert server.stats.by_route["GET /api/v1/device"] == 4  # 3 pages, 1 refused continuation


@pytest.mark.parametrize("past_the_count", ["answers", "refuses"])
async def test_a_totalcount_short_of_the_fleet_loses_no_device_after_a_full_page(past_the_count: str) -> None:
    """A totalCount short of the fleet (700 for 1,200 devices) does not stop
    the paging: a full page is always followed by one more ask (a server
    refusing it ends the list)."""
    fleet = 1000 if past_the_count == "refuses" else 1200  # (1,000: its last page is full)
    app = make_app(devices=fleet, seed=5)
    rewrite_search(app, lambda result, request: result.update(totalCount=700))
    if past_the_count == "refuses":

        @web.middleware
        async def refuse(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.path == "/api/v1/device" and int(request.query.get("start", "0") or 0) >= fleet:
                return web.json_response({"errors": [{"message": "start out of range"}], "result": None}, status=400)
            return await handler(request)

        app.middlewares.append(refuse)
    await plan_the_last_device(app)


@pytest.mark.parametrize("server_does", ["finds nothing", "refuses fq"])
async def test_owner_is_found_in_the_device_list_when_the_search_fails(server_does: str) -> None:
    app = make_app(devices=300, seed=7)
    if server_does == "finds nothing":
        rewrite_search(
            app, lambda result, request: "fq" in request.query and result.update(searchResults=[], totalCount=0)
        )
    else:

        @web.middleware
        async def no_fq(request: web.Request, handler: Any) -> web.StreamResponse:
            if "fq" in request.query:
                return web.json_response({"errors": [{"message": "Unknown field"}], "result": None}, status=400)
            return await handler(request)

        app.middlewares.append(no_fq)
    with SimServer(app) as server:
        target = pick(server, 1, registrationState="ACTIVE", platformType="ANDROID")[0]
        owner = next(d for d in state_of(server).devices.values() if d["ownerId"] != target["ownerId"])
        async with ivanti(server) as provider:
            out = await run(provider, rows("assign-user", [target], email=owner["emailAddress"]))
        assert statuses(out) == ["succeeded"], out
        assert target["ownerId"] == owner["ownerId"]


def viability_answers(app: web.Application, status: int) -> None:
    @web.middleware
    async def answer(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.query.get("checkViability") == "true":
            return web.Response(status=status, text=f"{status}: no such route")
        return await handler(request)

    app.middlewares.append(answer)


async def test_dry_run_on_a_server_without_viability_checks_plans_the_rows() -> None:
    app = make_app(devices=120, seed=7)
    viability_answers(app, 404)
    with SimServer(app) as server:
        devices = pick(server, 3, registrationState="ACTIVE")
        async with ivanti(server, dry_run=True) as provider:
            out = await run(provider, rows("wipe", devices), dry_run=True)
        assert statuses(out) == ["planned"] * 3
        assert "offers no eligibility check" in out[0].detail
        assert server.stats.mutating == 0
        assert server.stats.by_route["GET /api/v1/device/wipe"] == 1  # asked once per run


@pytest.mark.parametrize("status", [400, 500])
async def test_a_check_that_fails_does_not_stop_the_command(status: int) -> None:
    """A check refused (400 all the way down to one device) or broken (500)
    on the server's side: the command is sent and its own answer decides."""
    app = make_app(devices=120, seed=7)
    viability_answers(app, status)
    with SimServer(app) as server:
        devices = pick(server, 4, registrationState="ACTIVE")
        async with ivanti(server) as provider:
            out = await run(provider, rows("lock", devices))
            again = await run(provider, rows("lock", pick(server, 6, registrationState="ACTIVE")[4:]))
        assert statuses(out) == ["succeeded"] * 4 and statuses(again) == ["succeeded"] * 2
        assert all(state_of(server).applied(d["id"], "lock") == 1 for d in devices)
        checks = server.stats.by_route["GET /api/v1/device/lock"]
        # 400: the check halves down to single devices (7 checks), then is
        # never asked again; 500: one check per batch. Either way each batch's
        # command goes out once, whole, and its own answer decides.
        assert checks == (7 if status == 400 else 2)
        assert server.stats.by_route["PUT /api/v1/device/lock"] == 2


def test_cli_plans_in_chunks(sim: SimServer, tmp_path: Path, run_cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job planned a chunk at a time reads the fleet once, catches a repeat
    across chunks, and still sends one lock request per chunk's batch."""
    monkeypatch.setattr(Ivanti, "chunk_rows", 10)
    state = state_of(sim)
    active = pick(sim, 25, registrationState="ACTIVE", platformType="IOS", supervised=True)
    rows = [[d["serialNumber"]] for d in active] + [[active[0]["serialNumber"]]]
    job = write_csv(tmp_path / "lock.csv", [["serial"], *rows])
    result = run_cli(
        ["run", str(job), "--provider", "ivanti", "--url", sim.url, "--partition", "1", "--action", "lock"]
    )
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in result.report] == ["succeeded"] * 25 + ["skipped"]
    assert "line 2" in result.report[25]["detail"]
    assert all(state.applied(d["id"], "lock") == 1 for d in active)
    assert sim.stats.by_route["PUT /api/v1/device/lock"] == 3  # chunks of 10, 10 and 5 (+ the repeat)
    assert sim.stats.by_route["GET /api/v1/device"] == 1  # the fleet, read once


# -- other readings of the doc (a third look) -----------------------------------


async def test_wipe_and_retire_send_one_device_a_request() -> None:
    """Wipe and Retire document one id ("ids: id of the device to wipe"): a
    server reading that one value must not leave the other devices of a
    batch reported as wiped."""
    app = make_app(devices=300, seed=7)
    state: IvantiState = app["state"]
    state.single_id = {"wipe", "retire"}
    with SimServer(app) as server:
        active = pick(server, 6, registrationState="ACTIVE")
        retired = pick(server, 1, registrationState="RETIRED")
        job = [*rows("wipe", active[:3] + retired), *rows("retire", active[3:])]
        job = [JobRow(i, r.action, r.fields) for i, r in enumerate(job)]
        async with ivanti(server) as provider:
            out = await run(provider, job)
        assert statuses(out) == ["succeeded"] * 3 + ["failed"] + ["succeeded"] * 3
        assert "not eligible: DEVICE_RETIRED" in detail(out[3])
        assert all(state.applied(d["id"], "wipe") == 1 for d in active[:3])
        assert all(state.applied(d["id"], "retire") == 1 for d in active[3:])
        assert state.applied(retired[0]["id"], "wipe") == 0
        assert server.stats.by_route["PUT /api/v1/device/wipe"] == 3
        assert server.stats.by_route["PUT /api/v1/device/retire"] == 3


async def test_answers_that_list_every_device_with_its_own_result() -> None:
    """A checkViability that lists every device (eligible ones with no
    actionExceptionCodes) and commands that answer each device's status
    fail only the devices that were refused."""
    app = make_app(devices=300, seed=7)
    state: IvantiState = app["state"]
    state.viability_lists_every = True
    state.answers_per_device = True
    with SimServer(app) as server:
        ios = pick(server, 5, registrationState="ACTIVE", platformType="IOS")
        windows = pick(server, 1, registrationState="ACTIVE", platformType="WINDOWS")
        retired = pick(server, 1, registrationState="RETIRED")
        job = [*rows("lock", ios[:3] + retired), *rows("unlock", ios[3:] + windows)]
        job = [JobRow(i, r.action, r.fields) for i, r in enumerate(job)]
        async with ivanti(server, dry_run=True) as provider:
            dry = await run(provider, job[:4], dry_run=True)
        assert statuses(dry) == ["planned"] * 3 + ["failed"]
        assert server.stats.mutating == 0
        async with ivanti(server) as provider:
            out = await run(provider, job)
        assert statuses(out) == ["succeeded"] * 3 + ["failed"] + ["succeeded"] * 2 + ["failed"]
        assert "DEVICE_RETIRED" in detail(out[3]) and "PLATFORM_NOT_SUPPORTED" in detail(out[6])
        assert all(state.applied(d["id"], "lock") == 1 for d in ios[:3])
        assert state.applied(retired[0]["id"], "lock") == 0


async def test_a_check_answering_a_count_is_narrowed_down() -> None:
    """A checkViability answering the number of eligible devices (as Check
    Relinquish Viability does): the batch is checked in halves until the
    count says which device cannot; nothing is left unknown."""
    app = make_app(devices=300, seed=7)
    state: IvantiState = app["state"]
    state.viability_counts = True
    with SimServer(app) as server:
        active = pick(server, 5, registrationState="ACTIVE")
        retired = pick(server, 1, registrationState="RETIRED")
        async with ivanti(server) as provider:
            out = await run(provider, rows("checkin", active[:2] + retired + active[2:]))
        assert statuses(out) == ["succeeded"] * 2 + ["failed"] + ["succeeded"] * 3
        assert all(state.applied(d["id"], "checkin") == 1 for d in active)
        assert state.applied(retired[0]["id"], "checkin") == 0


async def test_a_total_count_of_the_page_alone_does_not_end_the_device_list() -> None:
    app = make_app(devices=1200, seed=5)
    state: IvantiState = app["state"]
    state.total_is_page = True
    server = await plan_the_last_device(app, "lock")
    assert server.stats.by_route["GET /api/v1/device"] == 3


async def test_a_device_space_listing_no_devices_is_a_set_up_to_check() -> None:
    """A server answers a wrong dmPartitionId with an empty list: nothing can
    be found there, so nothing is sent and --partition is named (rather than
    every row failing "not found among the 0 devices")."""
    app = make_app(devices=50, seed=5)
    rewrite_search(app, lambda result, request: result.update(searchResults=[], totalCount=0))
    with SimServer(app) as server:
        async with ivanti(server) as provider:
            with pytest.raises(SetupFailed) as info:
                await provider.plan([JobRow(0, "lock", {"serial": "X1"})])
        assert "lists no devices; check --partition" in str(info.value)
        assert server.stats.mutating == 0
