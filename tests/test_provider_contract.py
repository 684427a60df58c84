"""One contract, every vendor: the same cases run against each provider and
its simulator (both behaviours, the doc's and ``--real``, where a simulator
has them; and each edition of a vendor that has several, such as
ManageEngine's on-premises API key and cloud OAuth), for every action the
provider declares.

Each case runs a one-row job in process (the CLI over real HTTP on
127.0.0.1) and asserts the row's status, its reason code
(:class:`bulkmdm.model.Reason`, read from the journal), what was sent and
the simulator's state; the detail's wording is free, but for the MDM's own
refusal passed on and a read-back it tells of. What a case does to the wire
comes from :class:`Script`, a middleware inside the simulator that acts on
the requests that change something: it loses the answer of a change the
simulator made, answers for the simulator (404, 409, a refusal, HTML,
absurd JSON), or holds the answer and lets a gateway answer 504. One
simulator runs per vendor and behaviour for the module (a vendor's editions
share it); each case takes devices or users no other case touched, from
those the MDM takes its action on (Ivanti restarts supervised iOS devices
only, say).

A case that cannot apply to an action is named in :data:`NOT_APPLICABLE`
with the reason, and collected as such: nothing is skipped silently.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bulkmdm import providers
from bulkmdm.model import Reason
from bulkmdm.sim import banyan, duostation, ivanti, manageengine
from bulkmdm.sim.common import SimServer, _drop

from conftest import write_csv

#: what every case asserts on the detail where the MDM refused the change
REFUSAL = "Refused by the contract test"

# -- the wire ------------------------------------------------------------------


@dataclass
class Script:
    """What the simulator does to the next requests that change something,
    one entry each; past the last entry it answers as itself."""

    steps: list[str] = field(default_factory=list)
    #: how many requests that change something arrived (the script's and the rest)
    changes: int = 0
    #: how many reads arrived after the first change (a read-back's requests)
    reads_after: int = 0
    #: how many reads arrived after the last change (a read-back of its answer)
    reads_after_last: int = 0
    #: from the first change on, each request as it arrived: its method, or "read"
    sequence: list[str] = field(default_factory=list)
    #: the simulator made the first change whose answer the script lost or left to a gateway
    made_first: bool = False

    def restart(self, steps: list[str]) -> None:
        """Run ``steps`` on the next changes, counting afresh."""
        self.steps = steps
        self.changes = self.reads_after = self.reads_after_last = 0
        self.sequence = []
        self.made_first = False

    def middleware(self) -> Any:
        @web.middleware
        async def scripted(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.path.startswith("/_sim"):
                return await handler(request)
            if request.path.startswith("/oauth/"):  # a token, asked for by the cloud edition
                return await handler(request)
            if request.method in ("GET", "HEAD") or _asks_only(request):
                self.reads_after += bool(self.changes)
                self.reads_after_last += bool(self.changes)
                if self.changes:
                    self.sequence.append("read")
                return await handler(request)
            self.changes += 1
            self.reads_after_last = 0
            self.sequence.append(request.method)
            step = self.steps.pop(0) if self.steps else "pass"
            if step == "pass":
                return await handler(request)
            if step in ("lose", "gateway"):
                made = (await handler(request)).status < 300
                self.made_first = made if self.changes == 1 else self.made_first
                if step == "lose":  # the change is made; its answer never arrives
                    _drop(request)
                    raise asyncio.CancelledError
                # the change is made; a gateway gives up waiting for it
                return web.json_response({"message": "Gateway Timeout"}, status=504)
            if step == "html":
                return web.Response(text="<html><body>Welcome! Please sign in.</body></html>", content_type="text/html")
            if step == "absurd":
                return web.json_response([[[["ok"]]], None, {"": {}}])
            if step == "refuse":  # the account may not make this change
                return web.json_response({"message": REFUSAL, "error": REFUSAL}, status=403)
            return web.json_response({"message": f"HTTP {step}"}, status=int(step))

        return scripted


def _asks_only(request: web.Request) -> bool:
    """A POST that changes nothing: Ivanti's viability checks, Banyan's list."""
    return "Viability" in request.path or "viability" in request.path


# -- the vendors -----------------------------------------------------------------


@dataclass(frozen=True)
class Act:
    """One action of a vendor in the suite."""

    #: "change" (read back, so retried), "delete", "sent" (in a state the MDM
    #: lists, but never resent), "command" (no state: sent once, never read back)
    kind: str
    #: the row's columns for a target (its serial, or a user's e-mail) on a simulator
    fields: Callable[[SimServer, str], dict[str, str]]
    #: how many times the wanted state is in place for the target (commands: how many were sent)
    applied: Callable[[SimServer, str], int]
    #: the action that puts a fresh target in the state this one changes (e.g. tag before untag)
    prepare: str | None = None
    #: the target column: "serial" or "email"
    column: str = "serial"
    #: the targets to draw from ("": any target of the column; a vendor's name
    #: for those the MDM takes this action on, e.g. supervised iOS devices)
    pool: str = ""
    #: why the MDM's API cannot show a "change" once made ("": it can, so a
    #: change in doubt is read back)
    unreadable: str = ""


@dataclass(frozen=True)
class Vendor:
    name: str
    start: Callable[[bool, Script], SimServer]
    actions: dict[str, Act]
    #: the targets a pool holds (the column, or the action's pool), in the order they are handed out
    targets: Callable[[SimServer, str], list[str]]
    #: a value that matches two objects, by target column (the simulator and the column)
    ambiguous: Callable[[SimServer, str], str]
    #: the environment of a run, by edition ("": the vendor's first or only
    #: one); every edition runs every case, against the same simulators
    editions: dict[str, Callable[[SimServer], dict[str, str]]] = field(default_factory=lambda: {"": lambda sim: {}})


def _sim(app: web.Application, script: Script) -> SimServer:
    app.middlewares.append(script.middleware())
    return SimServer(app)


# DuoSTATION ------------------------------------------------------------------------


def _duo_start(real: bool, script: Script) -> SimServer:
    assert not real
    return _sim(duostation.make_app(devices=400, users=400, seed=3), script)


def _duo_targets(sim: SimServer, column: str) -> list[str]:
    st = sim.app["state"]

    def pick() -> list[str]:
        if column == "email":
            return [
                u["email"]
                for u in st.users.values()
                if u.get("email")
                and not st.devices_of_user(u["id"])
                and not st.user_tags_of(u["id"])
                and u.get("groupId") != duostation.FACTS["group_id"]
                and len(st.search_users(email=u["email"])) == 1
            ]
        return [
            d["serialNumber"]
            for d in list(st.devices.values())[duostation.FACTS["edge_devices"] :]
            if len(st.devices_by_serial(d["serialNumber"])) == 1 and not st.device_tags_of(d["id"])
        ]

    return sim.call(pick)  # type: ignore[no-any-return]


def _duo_device(sim: SimServer, serial: str) -> Any:
    return sim.call(lambda: sim.app["state"].devices_by_serial(serial)[0])


def _duo_tags(sim: SimServer, serial: str) -> list[str]:
    device = _duo_device(sim, serial)
    return sim.call(lambda: sim.app["state"].device_tags_of(device["id"]))  # type: ignore[no-any-return]


def _duo_user_exists(sim: SimServer, email: str) -> int:
    return 0 if sim.call(lambda: sim.app["state"].search_users(email=email)) else 1


def _duo_commands(command: str) -> Callable[[SimServer, str], int]:
    def sent(sim: SimServer, serial: str) -> int:
        device = _duo_device(sim, serial)
        return len(sim.call(lambda: sim.app["state"].commands_for(device["id"], command)))

    return sent


_DUO_OWNER = duostation.FACTS["user_with_devices"]
_DUO_APP = duostation.FACTS["app"]


def _duo_assigned(sim: SimServer, serial: str) -> int:
    return int(_duo_device(sim, serial).get("userId") == _DUO_OWNER["id"])


def _duo_moved(sim: SimServer, email: str) -> int:
    (user,) = sim.call(lambda: sim.app["state"].search_users(email=email))
    return int(user.get("groupId") == duostation.FACTS["group_id"])


def _duo_user_tags(sim: SimServer, email: str) -> int:
    st = sim.app["state"]

    def count() -> int:
        (user,) = st.search_users(email=email)
        return int(st.user_tags_of(user["id"]).count("Lärare"))

    return sim.call(count)  # type: ignore[no-any-return]


DUOSTATION = Vendor(
    name="duostation",
    start=_duo_start,
    actions={
        "tag": Act("change", lambda sim, s: {"tag": "Lärare"}, lambda sim, s: _duo_tags(sim, s).count("Lärare")),
        "untag": Act(
            "change",
            lambda sim, s: {"tag": "Lärare"},
            lambda sim, s: 1 - _duo_tags(sim, s).count("Lärare"),
            prepare="tag",
        ),
        "delete-user": Act("delete", lambda sim, s: {}, _duo_user_exists, column="email"),
        "tag-user": Act(
            "change", lambda sim, e: {"tag": "Lärare"}, lambda sim, e: _duo_user_tags(sim, e), column="email"
        ),
        "untag-user": Act(
            "change",
            lambda sim, e: {"tag": "Lärare"},
            lambda sim, e: 1 - _duo_user_tags(sim, e),
            prepare="tag-user",
            column="email",
        ),
        "message": Act("command", lambda sim, s: {"message": "Lämna in din iPad"}, _duo_commands("sendmessage")),
        "lock": Act("command", lambda sim, s: {}, _duo_commands("lockdevice")),
        "inventory": Act("command", lambda sim, s: {}, _duo_commands("inventorydevice")),
        "clear-passcode": Act("command", lambda sim, s: {}, _duo_commands("clearpasscode")),
        "wipe": Act("command", lambda sim, s: {}, _duo_commands("wipedevice")),
        "install-app": Act(
            "command", lambda sim, s: {"app": duostation.FACTS["app"]["name"]}, _duo_commands("installapp")
        ),
        "remove-app": Act(
            "command", lambda sim, s: {"app": duostation.FACTS["app"]["packageId"]}, _duo_commands("removeapp")
        ),
        "assign-user": Act("change", lambda sim, s: {"user": _DUO_OWNER["account"]}, _duo_assigned),
        "move-user": Act(
            "change", lambda sim, e: {"group": duostation.FACTS["group_path"]}, _duo_moved, column="email"
        ),
    },
    targets=_duo_targets,
    ambiguous=lambda sim, column: duostation.FACTS["duplicate_" + column],
)


# ManageEngine ------------------------------------------------------------------------

ME_KEY = "me-api-key"


#: the cloud edition's OAuth client and refresh token, as the simulator's token endpoint knows them
ME_CLIENT, ME_SECRET, ME_REFRESH = "me-client", "me-secret", "me-refresh"


def _me_start(real: bool, script: Script) -> SimServer:
    app = manageengine.make_app(
        devices=120,
        seed=3,
        api_key=ME_KEY,
        client_id=ME_CLIENT,
        client_secret=ME_SECRET,
        refresh_token=ME_REFRESH,
        real=real,
    )
    return _sim(app, script)


def _me_cloud(sim: SimServer) -> dict[str, str]:
    return {
        "BULKMDM_CLIENT_ID": ME_CLIENT,
        "BULKMDM_CLIENT_SECRET": ME_SECRET,
        "BULKMDM_REFRESH_TOKEN": ME_REFRESH,
        "BULKMDM_OAUTH_URL": sim.url + "/oauth/v2/token",
    }


def _me_targets(sim: SimServer, column: str) -> list[str]:
    st = sim.app["state"]

    def pick() -> list[str]:
        out = []
        for device in list(st.devices.values())[manageengine.FACTS["edge_devices"] :]:
            serial = device["serial_number"]
            if st.log.get(device["device_id"]) or len([d for d in st.by_serial(serial) if not d.get("removed")]) != 1:
                continue
            if device["device_id"] in st.members.get(_ME_GROUP["id"], {}):
                continue
            if device["device_id"] in st.associations.get(_ME_APP["id"], {}):
                continue
            out.append(serial)
        return out

    return sim.call(pick)  # type: ignore[no-any-return]


def _me_in(table: str, object_id: int) -> Callable[[SimServer, str], int]:
    def applied(sim: SimServer, serial: str) -> int:
        st = sim.app["state"]

        def count() -> int:
            ids = {d["device_id"] for d in st.by_serial(serial)}
            return sum(1 for i in ids if i in getattr(st, table).get(object_id, {}))

        return sim.call(count)  # type: ignore[no-any-return]

    return applied


_ME_GROUP = manageengine.FACTS["group"]
_ME_APP = manageengine.FACTS["app"]

MANAGEENGINE = Vendor(
    name="manageengine",
    start=_me_start,
    # on-premises: an API key; cloud: a Zoho OAuth token, from the simulator's token endpoint
    editions={"": lambda sim: {"BULKMDM_API_KEY": ME_KEY}, "cloud": _me_cloud},
    actions={
        "add-to-group": Act("change", lambda sim, s: {"group": _ME_GROUP["name"]}, _me_in("members", _ME_GROUP["id"])),
        "remove-from-group": Act(
            "change",
            lambda sim, s: {"group": _ME_GROUP["name"]},
            lambda sim, s: 1 - _me_in("members", _ME_GROUP["id"])(sim, s),
            prepare="add-to-group",
        ),
        "install-app": Act("sent", lambda sim, s: {"app": _ME_APP["name"]}, _me_in("associations", _ME_APP["id"])),
        "remove-app": Act(
            "change",
            lambda sim, s: {"app": _ME_APP["name"]},
            lambda sim, s: 1 - _me_in("associations", _ME_APP["id"])(sim, s),
            prepare="install-app",
            unreadable="a disassociation shows on the device's app list only after the device checks in",
        ),
    },
    targets=_me_targets,
    ambiguous=lambda sim, column: manageengine.FACTS["duplicate_serial"],
)

# Ivanti ------------------------------------------------------------------------


def _ivanti_start(real: bool, script: Script) -> SimServer:
    return _sim(ivanti.make_app(devices=160, seed=3, real=real), script)


def _ivanti_owner(st: ivanti.IvantiState) -> tuple[int, str]:
    """The account the suite assigns devices to, and its e-mail: the owner of
    a retired device, which no case acts on, so that a search of the owner's
    devices finds one all run."""
    for device in st.devices.values():
        if device["registrationState"] == "RETIRED" and device["serialNumber"] != st.duplicate_serial:
            return device["ownerId"], st.accounts[device["ownerId"]]["email"]
    raise AssertionError("the simulated fleet holds no retired device")


def _ivanti_targets(sim: SimServer, pool: str) -> list[str]:
    """Active devices with a serial of their own; for an action's pool (the
    simulator's segment, e.g. "restart"), those the simulator's rule for it accepts."""
    st = sim.app["state"]

    def pick() -> list[str]:
        counts = Counter(d["serialNumber"] for d in st.devices.values())
        rule = ivanti.ACTIONS[pool][1] if pool in ivanti.ACTIONS else None
        owner, _email = _ivanti_owner(st)
        return [
            d["serialNumber"]
            for d in st.devices.values()
            if d["registrationState"] == "ACTIVE"
            and d["serialNumber"]
            and counts[d["serialNumber"]] == 1
            and not any(entry[0] == d["id"] for entry in st.log)
            and (rule is None or (not rule(d) and d["ownerId"] != owner))
        ]

    return sim.call(pick)  # type: ignore[no-any-return]


def _ivanti_applied(action: str) -> Callable[[SimServer, str], int]:
    def applied(sim: SimServer, serial: str) -> int:
        st = sim.app["state"]

        def count() -> int:
            ids = [d["id"] for d in st.devices.values() if d["serialNumber"] == serial]
            return sum(st.applied(i, action) for i in ids)

        return sim.call(count)  # type: ignore[no-any-return]

    return applied


def _ivanti_in_place(
    logged: str, in_place: Callable[[ivanti.IvantiState, dict[str, Any]], bool]
) -> Callable[[SimServer, str], int]:
    """How many times the device's record was changed (``logged`` in the
    simulator's log), once the change is in place on it (0 until then)."""

    def applied(sim: SimServer, serial: str) -> int:
        st = sim.app["state"]

        def count() -> int:
            devices = [d for d in st.devices.values() if d["serialNumber"] == serial]
            return sum(st.applied(d["id"], logged) for d in devices if in_place(st, d))

        return sim.call(count)  # type: ignore[no-any-return]

    return applied


#: the attribute set-attribute sets: one the tenant's devices carry (the doc's own example)
_IVANTI_ATTRIBUTE = ("cityid", "Kontraktsstad")


def _ivanti_owned(st: ivanti.IvantiState, device: dict[str, Any]) -> bool:
    return bool(device["ownerId"] == _ivanti_owner(st)[0])


def _ivanti_attributed(st: ivanti.IvantiState, device: dict[str, Any]) -> bool:
    name, value = _IVANTI_ATTRIBUTE
    return bool(((device.get("customAttributes") or {}).get("attrs") or {}).get(name) == [value])


def _ivanti_gone(sim: SimServer, serial: str) -> int:
    st = sim.app["state"]
    return 0 if sim.call(lambda: [d for d in st.devices.values() if d["serialNumber"] == serial]) else 1


IVANTI = Vendor(
    name="ivanti",
    start=_ivanti_start,
    editions={"": lambda sim: {"BULKMDM_PARTITION_ID": "1"}},
    actions={
        "lock": Act("command", lambda sim, s: {}, _ivanti_applied("lock")),
        "unlock": Act("command", lambda sim, s: {}, _ivanti_applied("unlock")),
        "message": Act("command", lambda sim, s: {"message": "Lämna in din iPad"}, _ivanti_applied("message")),
        "checkin": Act("command", lambda sim, s: {}, _ivanti_applied("checkin")),
        "retire": Act("change", lambda sim, s: {}, _ivanti_applied("retire")),
        "wipe": Act("change", lambda sim, s: {}, _ivanti_applied("wipe")),
        "delete-device": Act("delete", lambda sim, s: {}, _ivanti_gone, prepare="retire"),
        # "Restart Supervised iOS Devices"
        "restart": Act("command", lambda sim, s: {}, _ivanti_applied("restart"), pool="restart"),
        # "supported on supervised iOS devices and on the Android Enterprise devices"
        "assign-user": Act(
            "change",
            lambda sim, s: {"user": sim.call(lambda: _ivanti_owner(sim.app["state"]))[1]},
            _ivanti_in_place("assign-user", _ivanti_owned),
            pool="updateAccount",
        ),
        "set-attribute": Act(
            "change",
            lambda sim, s: dict(zip(("attribute", "value"), _IVANTI_ATTRIBUTE, strict=True)),
            _ivanti_in_place("customattributes-patch", _ivanti_attributed),
        ),
    },
    targets=_ivanti_targets,
    # a re-enrolled device: its retired record keeps the serial
    ambiguous=lambda sim, column: sim.app["state"].duplicate_serial,
)

# Banyan ------------------------------------------------------------------------


def _banyan_start(real: bool, script: Script) -> SimServer:
    return _sim(banyan.make_app(devices=120, seed=3, real=real), script)


def _banyan_targets(sim: SimServer, column: str) -> list[str]:
    org = sim.app["state"]

    def pick() -> list[str]:
        if column == "email":
            return [u["Email"] for u in org.users.values() if not org.log.get(f"user:{u['ID']}")]
        return [
            d["SerialNumber"]
            for d in org.devices.values()
            if d["SerialNumber"]
            and d["Banned"] == "FALSE"
            and len(org.with_serial(d["SerialNumber"])) == 1
            and not org.log.get(f"device:{d['DeviceID']}")
        ]

    return sim.call(pick)  # type: ignore[no-any-return]


def _banyan_banned(sim: SimServer, serial: str) -> int:
    org = sim.app["state"]
    return sum(1 for d in sim.call(lambda: org.with_serial(serial)) if d["Banned"] == "TRUE")


def _banyan_user_gone(sim: SimServer, email: str) -> int:
    org = sim.app["state"]
    return 0 if sim.call(lambda: org.user(email)) else 1


def _banyan_exists(sim: SimServer, serial: str) -> int:
    org = sim.app["state"]
    return 0 if sim.call(lambda: org.with_serial(serial)) else 1


BANYAN = Vendor(
    name="banyan",
    start=_banyan_start,
    editions={"": lambda sim: {"BULKMDM_TOKEN": "banyan-token"}},
    actions={
        "ban": Act("change", lambda sim, s: {}, _banyan_banned),
        "unban": Act("change", lambda sim, s: {}, lambda sim, s: 1 - _banyan_banned(sim, s), prepare="ban"),
        "delete-device": Act("delete", lambda sim, s: {}, _banyan_exists),
        "delete-user": Act("delete", lambda sim, e: {}, _banyan_user_gone, column="email"),
    },
    targets=_banyan_targets,
    ambiguous=lambda sim, column: banyan.DUPLICATE_SERIAL,
)

VENDORS = {v.name: v for v in (DUOSTATION, MANAGEENGINE, IVANTI, BANYAN)}

# -- the cases ---------------------------------------------------------------------

CASES = (
    "success",
    "already",
    "not-found",
    "ambiguous",
    "refused",
    "lost-then-2xx",
    "lost-then-404",
    "lost-then-409",
    "held-then-504",
    "html-200",
    "absurd-json-200",
)

#: (vendor or "*", behaviour or "*", action kind or action, case) -> why the case cannot apply
NOT_APPLICABLE: dict[tuple[str, str, str, str], str] = {
    ("duostation", "real", "*", "*"): "the DuoSTATION simulator has one behaviour, the doc's",
    ("*", "*", "command", "already"): "a command is sent each time it is asked for; it has no state to be in",
    ("*", "*", "delete", "already"): "an object already deleted is not found: the not-found case",
    ("banyan", "*", "delete-user", "ambiguous"): "Banyan's users are keyed by e-mail: no two share one",
}


#: (vendor, action) -> why the action is not in the suite yet
NOT_IN_SUITE: dict[tuple[str, str], str] = {}

#: (vendor, behaviour or "*", action or "*", case) -> the bug: a case a vendor
#: fails today, run as a strict xfail so that the fix must drop its entry
KNOWN_GAPS: dict[tuple[str, str, str, str], str] = {}


def _matches(table: dict[tuple[str, str, str, str], str], vendor: str, behaviour: str, action: str, case: str) -> str:
    kind = VENDORS[vendor].actions[action].kind
    for v, b, a, c in table:
        if v in ("*", vendor) and b in ("*", behaviour) and a in ("*", kind, action) and c in ("*", case):
            return table[(v, b, a, c)]
    return ""


def behaviours(vendor: Vendor) -> Iterator[str]:
    """The simulator's behaviour ("doc" or "real"), and the edition after a
    dash where the vendor has more than one ("doc-cloud")."""
    for behaviour in ("doc", "real"):
        for edition in vendor.editions:
            yield f"{behaviour}-{edition}" if edition else behaviour


def combinations() -> Iterator[tuple[str, str, str, str]]:
    for vendor in VENDORS.values():
        for behaviour in behaviours(vendor):
            for action in vendor.actions:
                for case in CASES:
                    yield vendor.name, behaviour, action, case


def _params() -> Iterator[Any]:
    for combination in combinations():
        if _matches(NOT_APPLICABLE, *combination):
            continue
        gap = _matches(KNOWN_GAPS, *combination)
        marks = [pytest.mark.xfail(reason=gap, strict=True)] if gap else []
        yield pytest.param(*combination, marks=marks, id="-".join(combination))


def test_every_case_runs_or_says_why_not() -> None:
    """Each entry of the tables names cases that exist, each case either runs
    or is named in NOT_APPLICABLE, and each action a vendor declares is in
    the suite or named in NOT_IN_SUITE: nothing drops out unsaid."""
    every = list(combinations())
    for table in (NOT_APPLICABLE, KNOWN_GAPS):
        for entry in table:
            assert any(_matches({entry: "x"}, *c) for c in every), f"{entry} names no case"
    running = [c for c in every if not _matches(NOT_APPLICABLE, *c)]
    for name, suite in VENDORS.items():
        declared = {action for v, action in NOT_IN_SUITE if v == name}
        assert set(providers.get(name).actions) == set(suite.actions) | declared, name
        assert not set(suite.actions) & declared, name
    for vendor in VENDORS:
        assert any(c[0] == vendor for c in running), f"no case runs for {vendor}"
        for edition in VENDORS[vendor].editions:
            assert any(c[0] == vendor and c[1].partition("-")[2] == edition for c in running), (vendor, edition)


# -- the harness -------------------------------------------------------------------


@dataclass
class Running:
    vendor: Vendor
    sim: SimServer
    script: Script
    #: each pool's targets not handed out yet
    pools: dict[str, Iterator[str]] = field(default_factory=dict)
    #: the targets handed out, from any pool (pools overlap: a supervised iOS device is also a device)
    handed: set[str] = field(default_factory=set)

    def fresh(self, pool: str) -> str:
        if pool not in self.pools:
            self.pools[pool] = iter(self.vendor.targets(self.sim, pool))
        target = next((t for t in self.pools[pool] if t not in self.handed), None)
        assert target is not None, (
            f"the {self.vendor.name} simulator has no {pool or 'target'} left: make its fleet larger"
        )
        self.handed.add(target)
        return target


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[tuple[str, str], Running]]:
    """One simulator per vendor and behaviour, started when a case first asks
    for it; a vendor's editions share it (its credentials differ, not its fleet)."""
    started: dict[tuple[str, str], Running] = {}
    yield started
    for running in started.values():
        running.sim.__exit__(None, None, None)


def running(sims: dict[tuple[str, str], Running], vendor: str, behaviour: str) -> Running:
    if (vendor, behaviour) not in sims:
        script = Script()
        sim = VENDORS[vendor].start(behaviour == "real", script)
        sim.__enter__()
        sims[(vendor, behaviour)] = Running(VENDORS[vendor], sim, script)
    return sims[(vendor, behaviour)]


_jobs = itertools.count()


def run_row(run_cli: Any, tmp_path: Path, on: Running, edition: str, action: str, row: dict[str, str]) -> Any:
    job = write_csv(tmp_path / f"job{next(_jobs)}.csv", [["action", *row], [action, *row.values()]])
    args = ["run", str(job), "--provider", on.vendor.name, "--url", on.sim.url, "--rate", "none", "--yes"]
    return run_cli(args, env=on.vendor.editions[edition](on.sim))


#: what the script does to the requests that change something, by case
SCRIPTS = {
    "refused": ["refuse"],
    "lost-then-2xx": ["lose"],
    "lost-then-404": ["lose", "404"],
    "lost-then-409": ["lose", "409"],
    "held-then-504": ["gateway"],
    "html-200": ["html"],
    "absurd-json-200": ["absurd"],
}

#: the cases whose first change may be made without its answer: lost, or a gateway's
IN_DOUBT = ("lost-then-2xx", "lost-then-404", "lost-then-409", "held-then-504")


@pytest.mark.parametrize(("vendor", "behaviour", "action", "case"), list(_params()))
def test_contract(vendor: str, behaviour: str, action: str, case: str, sims: Any, run_cli: Any, tmp_path: Path) -> None:
    simulated, _, edition = behaviour.partition("-")
    on = running(sims, vendor, simulated)
    act = on.vendor.actions[action]
    found = case not in ("not-found", "ambiguous")
    if case == "not-found":
        target = "NOSUCH0000X1" if act.column == "serial" else "nobody.here@contract.example"
    elif case == "ambiguous":
        target = on.vendor.ambiguous(on.sim, act.column)
    else:
        target = on.fresh(act.pool or act.column)
    row = {act.column: target, **act.fields(on.sim, target)}
    ahead = ([act.prepare] if act.prepare and found else []) + ([action] if case == "already" else [])
    for first in ahead:
        prepared = run_row(run_cli, tmp_path, on, edition, first, row)
        assert [r["status"] for r in prepared.report] == ["succeeded"], prepared.report
    before = act.applied(on.sim, target) if found else 0
    on.script.restart(list(SCRIPTS.get(case, [])))
    result = run_row(run_cli, tmp_path, on, edition, action, row)
    on.script.steps = []
    assert len(result.report) == 1 and len(result.reasons) == 1, result.output
    got = result.report[0]
    status, detail, reason = got["status"], got["detail"], Reason(result.reasons[0])
    after = act.applied(on.sim, target) if found else 0
    if found:
        assert after <= 1, f"the change was applied {after} times"
    if status == "succeeded":
        assert after == 1, f"succeeded, but the change is not in place: {detail}"
    expect(
        case,
        act,
        status,
        reason,
        detail,
        changes=on.script.changes,
        reads=on.script.reads_after,
        reads_last=on.script.reads_after_last,
        made_first=on.script.made_first,
        before=before,
        after=after,
    )
    if case in IN_DOUBT and on.script.changes > 1:
        # the first try may have made the change: a read-back comes before it is sent again
        sequence = on.script.sequence
        second = next(i for i, sent in enumerate(sequence) if i and sent != "read")
        assert "read" in sequence[1:second], f"sent again without a read-back: {sequence}"
    # the words agree with the code: a read-back the row tells of was made
    if "confirmed by reading it back" in detail.casefold():
        assert reason is Reason.READ_BACK, detail
    if reason is Reason.READ_BACK:
        # after the one change sent: a change shown in place is not sent again
        assert on.script.reads_after_last and on.script.changes == 1, (
            f"no read-back was made, or the change was sent again: {detail}"
        )


def expect(
    case: str,
    act: Act,
    status: str,
    reason: Reason,
    detail: str,
    *,
    changes: int,
    reads: int,
    reads_last: int,
    made_first: bool,
    before: int,
    after: int,
) -> None:
    """What each case must come to (status, reason code, what was sent and
    read after it), by the kind of action."""
    once = act.kind in ("command", "sent")
    got = (status, reason)
    if case == "success":
        assert got == ("succeeded", Reason.DONE) and after == 1, detail
    elif case == "already":
        assert got == ("skipped", Reason.ALREADY) and (changes, after) == (0, 1), detail
    elif case == "not-found":
        assert got == ("failed", Reason.NOT_FOUND) and changes == 0, detail
    elif case == "ambiguous":
        assert got == ("failed", Reason.AMBIGUOUS) and changes == 0, detail
    elif case == "refused":
        # a 403: the account may not make this change (a 400 is not a refusal
        # to every vendor: Banyan answers it to a body form it does not read)
        assert got == ("failed", Reason.AUTH) and after == before, detail
        assert REFUSAL in detail, f"the MDM's own reason is not passed on: {detail}"
    elif (once or act.unreadable) and case in IN_DOUBT:
        # a change that cannot be read back is sent once, and not told as done
        assert got == ("unknown", Reason.NO_ANSWER) and changes == 1, f"{detail} ({act.unreadable or act.kind})"
    elif case in IN_DOUBT and made_first:
        # the first try made the change: read back, and not sent again
        assert got == ("succeeded", Reason.READ_BACK) and changes == 1 and reads_last and after == 1, detail
    elif case in IN_DOUBT:
        # the first try did not make it (a body form or a path the MDM
        # refused): read back, then sent again; the retry's answer stands,
        # unless the vendor's other form, tried after it, made the change
        assert reads and changes > 1, detail
        if case in ("lost-then-2xx", "held-then-504") or status == "succeeded":
            assert got == ("succeeded", Reason.DONE) and after == 1, detail
        else:
            assert got == ("failed", Reason.of_http(int(case[len("lost-then-") :]))), detail
    elif case == "html-200":  # a login page or a proxy's: the MDM was not reached
        assert status in ("failed", "unknown") and reason is Reason.BAD_ANSWER and after == before, detail
    elif case == "absurd-json-200":
        assert status in ("failed", "unknown") and reason is Reason.BAD_ANSWER and after == before, detail
        # a 2xx may come from an MDM that made the change: failed (to be
        # resent) only once reading it back showed the change is not there
        assert status == "unknown" or reads, f"failed without a read-back: {detail}"
    else:
        raise AssertionError(f"no expectation for case {case!r}")


def test_an_id_is_one_path_segment_as_quote_makes_it() -> None:
    """seg leaves an id as it is only where quote() would: a slash, a query
    mark, a space or a letter past ASCII is escaped, so no id adds a path."""
    from urllib.parse import quote

    from bulkmdm.providers.base import seg

    for value in ["C02X1234", "3f2a-9c_1.0~x", "a/b", "a?b=c", "a b", "é", "50%", "..", "", 12, None]:
        text = "" if value is None else str(value)
        assert seg(value) == quote(text, safe=""), value
    assert "/" not in seg("../../users") and "?" not in seg("x?y")
