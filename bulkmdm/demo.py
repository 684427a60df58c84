"""``bulkmdm demo``: start the built-in simulators on 127.0.0.1, write the
example jobs, and run them the way an admin would, explaining each step.

The example jobs are generated from the simulators' default fleets (the
size and seed ``bulkmdm sim`` serves), so they always match; ``jobs/`` in the
repository holds them (``python -m bulkmdm.demo jobs`` writes them, and a test
keeps them in step), and every one of them dry-runs clean. The demo's own
copies add a few deliberate mistakes (a typo, a blank serial, a tag not yet
created, an ambiguous app name), to show what a failed row looks like.
"""

from __future__ import annotations

import contextlib
import csv
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import sim
from .sim import DEFAULT_DEVICES, DEFAULT_SEED, client_env

CREDS = client_env("duostation")
#: the simulators the demo tours, in the order :func:`write_jobs` takes their fleets
TOUR = ("duostation", "ivanti", "banyan", "manageengine")


def _duo_jobs(state: Any, mistakes: bool) -> dict[str, list[list[str]]]:
    from .sim.duostation import FACTS

    edge = FACTS["edge_devices"]
    devices = [d for d in list(state.devices.values())[edge:] if len(state.devices_by_serial(d["serialNumber"])) == 1]
    untagged = [d for d in devices if "Elev-iPad" not in state.device_tags_of(d["id"])]
    users = list(state.users.values())[FACTS["edge_users"] :]
    tag = [["Serial Number", "Tag", "Klass", "Kommentar"]]
    for i, dev in enumerate(untagged[:240]):
        tag.append([dev["serialNumber"], "Elev-iPad", f"7{'ABC'[i % 3]}", ""])
    if mistakes:
        for dev in untagged[240:250]:
            tag.append([dev["serialNumber"], "Nytt läsår", "8A", "tag not created yet"])
    tag.append([FACTS["tagged_device"]["serial"], FACTS["tagged_device"]["tag"], "9B", "already tagged"])
    if mistakes:
        tag += [
            [FACTS["duplicate_serial"], "Elev-iPad", "9B", "two devices share this serial"],
            ["F9XX0000ZZZZ", "Elev-iPad", "9B", "typo in the serial"],
            ["", "Elev-iPad", "9B", "serial missing"],
        ]
    assign = [["serial", "user", "name"]]
    for dev, user in zip(devices[300:340], users[100:140], strict=False):
        assign.append([dev["serialNumber"], user["email"], user["name"]])
    message = [["serienummer", "meddelande"]]
    for dev in devices[400:460]:
        message.append([dev["serialNumber"], "Hej! Lämna in din iPad i biblioteket på fredag. /IT"])
    lost = [["action", "serial", "message", "anmält av"]]
    for dev in devices[500:505]:
        lost.append(["lock", dev["serialNumber"], "", "vaktmästaren"])
        lost.append(["message", dev["serialNumber"], "Den här iPaden är anmäld förlorad. Ring 031-709 60 66.", ""])
    apps = [["serial", "app", "action"]]
    for dev in devices[600:620]:
        apps.append([dev["serialNumber"], "Kahoot!", "install-app"])
    if mistakes:
        apps.append([devices[620]["serialNumber"], "Google Chrome", "install-app"])
    moves = [["email", "group"]]
    for user in users[200:215]:
        moves.append([user["email"], FACTS["group_path"]])
    emails = Counter(u["email"].casefold() for u in state.users.values())
    teachers = [u for u in users if u["position"] == "Lärare" and emails[u["email"].casefold()] == 1]
    untagged_teachers = [u for u in teachers if "Lärare" not in state.user_tags_of(u["id"])]
    tag_users = [["email", "tag", "Kommentar"]]
    tag_users += [[u["email"], "Lärare", ""] for u in untagged_teachers[:12]]
    tag_users.append([FACTS["tagged_user"]["email"], FACTS["tagged_user"]["tag"], "already tagged"])
    return {
        "duostation-tag.csv": tag,
        "duostation-assign.xlsx": assign,
        "duostation-message.csv": message,
        "duostation-lost.csv": lost,
        "duostation-apps.csv": apps,
        "duostation-move-user.csv": moves,
        "duostation-tag-user.csv": tag_users,
    }


def _ivanti_jobs(state: Any, mistakes: bool) -> dict[str, list[list[str]]]:
    active = [d for d in state.devices.values() if d.get("registrationState") == "ACTIVE" and d.get("serialNumber")]
    others = [d for d in state.devices.values() if d.get("registrationState") == "RETIRED" and d.get("serialNumber")]
    rows = [["serial", "reason"]]
    rows += [[d["serialNumber"], "reported lost"] for d in active[:300]]
    if mistakes:  # a retired device cannot be locked: the MDM refuses it
        rows += [[d["serialNumber"], "already retired"] for d in others[:3]]
    wipe = [["serial", "reason"]]
    wipe += [[d["serialNumber"], "stolen from the bus"] for d in active[300:308]]
    return {"ivanti-lock.csv": rows, "ivanti-wipe.csv": wipe}


def _banyan_jobs(org: Any) -> dict[str, list[list[str]]]:
    free = org.unique_devices(banned=False, users=1)
    banned = org.unique_devices(banned=True)
    shared = org.unique_devices(users=2)
    rows = [["action", "serial", "email", "reason"]]
    rows += [["ban", d["SerialNumber"], "", "reported stolen"] for d in free[:4]]
    rows.append(["ban", banned[0]["SerialNumber"], "", "reported stolen"])  # already banned: skipped
    rows.append(["unban", banned[1]["SerialNumber"], "", "found again"])
    rows.append(["delete-device", free[4]["SerialNumber"], "", "sold"])
    rows.append(["delete-device", shared[0]["SerialNumber"], shared[0]["Emails"][1], "shared laptop, user left"])
    touched = {e.casefold() for d in [*free[:5], *banned[:2], shared[0]] for e in d["Emails"]}
    leaver = next(u for u in org.users.values() if u["Email"].casefold() not in touched)
    rows.append(["delete-user", "", leaver["Email"], "left the school"])
    return {"banyan-lost.csv": rows}


def _manageengine_jobs(state: Any) -> dict[str, list[list[str]]]:
    from .sim.manageengine import FACTS

    group, member_group = FACTS["group"], FACTS["member_group"]
    serials: dict[str, int] = {}
    for device in state.devices.values():
        serials[device["serial_number"]] = serials.get(device["serial_number"], 0) + 1
    ordinary = [d for d in list(state.devices.values())[FACTS["edge_devices"] :] if serials[d["serial_number"]] == 1]
    in_class = state.members.get(group["id"], {})
    joining = [d for d in ordinary if d["device_id"] not in in_class][:4]
    leaving = next(d for d in ordinary if d["device_id"] in in_class)
    rows = [["Action", "Serial Number", "Group", "App"]]
    rows += [["add-to-group", d["serial_number"], group["name"], ""] for d in joining]
    rows.append(["add-to-group", FACTS["member_device"]["serial"], member_group["name"], ""])  # already: skipped
    rows.append(["remove-from-group", leaving["serial_number"], group["name"], ""])
    rows += [["install-app", d["serial_number"], "", FACTS["app"]["bundle_identifier"]] for d in joining[:2]]
    rows.append(["remove-app", FACTS["app_device"]["serial"], "", FACTS["installed_app"]["name"]])
    return {"manageengine-classes.csv": rows}


def write_jobs(
    folder: Path, duo_state: Any, ivanti_state: Any, banyan_state: Any, me_state: Any, *, mistakes: bool = False
) -> list[Path]:
    """Write every example job into ``folder``; with ``mistakes``, the demo's copies
    that hold a few rows that cannot run."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    jobs = {
        **_duo_jobs(duo_state, mistakes),
        **_ivanti_jobs(ivanti_state, mistakes),
        **_banyan_jobs(banyan_state),
        **_manageengine_jobs(me_state),
    }
    for name, rows in jobs.items():
        path = folder / name
        if name.endswith(".xlsx"):
            import xlsxwriter

            book = xlsxwriter.Workbook(str(path))
            sheet = book.add_worksheet("Jobb")
            for r, row in enumerate(rows):
                for c, value in enumerate(row):
                    sheet.write_string(r, c, value)
            book.close()
        else:
            delimiter = ";" if name == "duostation-message.csv" else ","
            with open(path, "w", newline="", encoding="utf-8-sig") as fh:
                csv.writer(fh, delimiter=delimiter).writerows(rows)
        written.append(path)
    return written


def _fleets() -> tuple[Any, ...]:
    """The simulators of :data:`TOUR`, each with the fleet `bulkmdm sim` serves."""
    return tuple(sim.load(name)(devices=DEFAULT_DEVICES, seed=DEFAULT_SEED) for name in TOUR)


def shown_command(job: Path, provider: str, url: str, **options: Any) -> str:
    """The ``bulkmdm run`` command line the demo prints for a run: every
    option, ``--partition`` included, so that a copied command works (run
    from the demo's folder, with the credentials in the environment)."""
    flags = " ".join(
        f"--{k.replace('_', '-')} {v}" if v is not True else f"--{k.replace('_', '-')}" for k, v in options.items()
    )
    return f"bulkmdm run {job.name} --provider {provider} --url {url} {flags}".rstrip()


def run_demo(out: Path, *, echo: Callable[[str], None] = print) -> int:
    """Run the demo; returns the exit code (0 when it went as planned)."""
    from .sim.common import SimServer

    apps = dict(zip(TOUR, _fleets(), strict=True))
    out = out.resolve()
    jobs = write_jobs(out, *(app["state"] for app in apps.values()), mistakes=True)
    echo(f"Example jobs written to {out}/ ({len(jobs)} files; jobs/ in the repository has them without the mistakes).")
    demo = _Demo(out, echo)
    with contextlib.ExitStack() as stack:
        # each on its own simulator's port where that is free, as the README's "Try it on a
        # simulator" serves it, so a command the demo prints works again after it ends
        servers = {
            name: stack.enter_context(SimServer(apps[name], port=_free_port(sim.port(name))))
            for name in sorted(apps, key=sim.port)
        }
        echo(f"Simulators ({DEFAULT_DEVICES} devices each, as `bulkmdm sim` serves them):")
        for name, server in servers.items():
            echo(f"  {name}: {server.url}")
        duo, ivanti, banyan, me = (servers[name] for name in TOUR)
        duo.faults.latency = ivanti.faults.latency = 0.005
        _duostation_story(demo, duo)
        _other_vendors_story(demo, ivanti, banyan, me)
        ports = {name: server.port for name, server in servers.items()}
    echo("")
    echo(f"Done. The reports are in {out}/ next to their jobs. Try: bulkmdm runs --state-dir {demo.state_dir}")
    if demo.undo_files:
        echo("Undo files (each is a job that puts back what its run changed):")
        for path in demo.undo_files:
            echo(f"  {path.name}")
    echo("")
    echo("The simulators stopped with the demo. To try a command above again, start its simulator")
    echo("in another terminal, then run the command from the demo's folder with its credentials:")
    starts = {name: f"bulkmdm sim {name} --port {port}" for name, port in ports.items()}
    width = max(len(start) for start in starts.values())
    for name, start in starts.items():
        exports = " ".join(f"{k}={v}" for k, v in client_env(name).items())
        echo(f"  {start.ljust(width)}   then: export {exports}")
    echo(f"  cd {out}")
    return 0


def _free_port(preferred: int) -> int:
    """``preferred`` when nothing listens there on 127.0.0.1, else 0 (any free port)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            return 0
    return preferred


class _Demo:
    """Runs one example job after another, saying what each did."""

    def __init__(self, out: Path, echo: Callable[[str], None]) -> None:
        self.out = out
        self.echo = echo
        self.state_dir = out / ".state"
        self.undo_files: list[Path] = []

    def run(self, title: str, job: Path, provider: str, url: str, env: dict[str, str] = CREDS, **kw: Any) -> Any:
        from .engine import RunOptions, run_job
        from .words import counts_text, plural

        echo = self.echo
        echo("")
        echo(f"== {title}")
        echo(f"$ {shown_command(job, provider, url, **kw)}")
        options = RunOptions(job=job, provider=provider, url=url, env=env, state_dir=self.state_dir, fresh=True, **kw)
        result = run_job(options)
        sent = plural(result.requests, "request")
        echo(f"   {counts_text(result.counts, result.rows)}; {sent} in {result.elapsed:.1f} s.")
        if result.planned_requests is not None:
            echo(f"   The real run would send {result.planned_requests} changing requests.")
        echo(f"   Report: {result.report_path}")
        if result.undo is not None and result.undo.path is not None:
            echo(f"   Undo file: {result.undo.path}")
            self.undo_files.append(result.undo.path)
        return result


def _duostation_story(demo: _Demo, duo: Any) -> None:
    out, echo, run = demo.out, demo.echo, demo.run
    tag = out / "duostation-tag.csv"
    dry = out / "duostation-tag.dryrun.csv"
    run(
        "Dry run first: what would tagging 254 iPads do?",
        tag,
        "duostation",
        duo.url,
        action="tag",
        dry_run=True,
        report=dry,
    )
    first = run(
        "Tag them for real (bad rows fail with a reason; nothing is guessed)",
        tag,
        "duostation",
        duo.url,
        action="tag",
        rate="none",
        concurrency=16,
    )
    failed = [r for r in _read(first.report_path) if r["status"] in ("failed", "invalid")]
    for row in failed[:4]:
        echo(f"   {row['Serial Number'] or '(blank serial)'}: {row['status']}: {row['detail']}")
    echo("")
    echo("-- The admin creates the tag 'Nytt läsår' in the MDM, then re-runs the report:")
    duo.call(lambda: duo.app["state"].add_tag({"name": "Nytt läsår"}))
    run("Re-run only what failed", first.report_path, "duostation", duo.url, action="tag", rate="none")
    run(
        "Friday reassignment from HR's spreadsheet (xlsx)",
        out / "duostation-assign.xlsx",
        "duostation",
        duo.url,
        action="assign-user",
        concurrency=8,
    )
    run("Move staff to their new group", out / "duostation-move-user.csv", "duostation", duo.url, action="move-user")
    run("Tag the teachers (user tags)", out / "duostation-tag-user.csv", "duostation", duo.url, action="tag-user")
    duo.faults.update({"error_rate": 0.15, "mutating_only": True, "seed": 1})
    echo("")
    echo("-- The MDM now answers 503 to 15% of changes; bulkmdm retries, nothing is sent twice.")
    run(
        "Message 60 students (semicolon CSV, Swedish text)",
        out / "duostation-message.csv",
        "duostation",
        duo.url,
        action="message",
        rate="none",
    )
    duo.faults.update({"error_rate": 0.0})
    run(
        "Lost devices: lock and message (mixed actions in one file)", out / "duostation-lost.csv", "duostation", duo.url
    )
    run("Install an app (an ambiguous app name fails its row)", out / "duostation-apps.csv", "duostation", duo.url)


def _other_vendors_story(demo: _Demo, ivanti: Any, banyan: Any, me: Any) -> None:
    out, echo, run = demo.out, demo.echo, demo.run
    result = run(
        "Ivanti: lock 303 devices with bulk calls",
        out / "ivanti-lock.csv",
        "ivanti",
        ivanti.url,
        action="lock",
        partition="1",
    )
    mutating = ivanti.stats.mutating
    echo(
        f"   Ivanti received {mutating} changing requests for {result.rows} rows "
        f"({mutating / max(result.rows, 1):.3f} per row)."
    )
    _follow_through_story(demo, ivanti)
    run(
        "Banyan: ban lost devices, delete a sold one and a leaver (destructive: confirmed with --yes)",
        out / "banyan-lost.csv",
        "banyan",
        banyan.url,
        env=client_env("banyan"),
        yes=True,
    )
    echo("")
    echo("-- ManageEngine allows 100 calls a minute: bulkmdm paces itself under that on its own.")
    run(
        "ManageEngine (on-premises API key): class groups and apps",
        out / "manageengine-classes.csv",
        "manageengine",
        me.url,
        env=client_env("manageengine"),
    )


def _follow_through_story(demo: _Demo, ivanti: Any) -> None:
    """A wipe goes from 'the MDM accepted it' to 'the device did it': the
    simulated iPads take commands only when they check in, one never does."""
    from .track import TrackEvents, TrackOptions, TrackResult, track

    out, echo = demo.out, demo.echo
    checkins = ivanti.app["checkins"]
    job = out / "ivanti-wipe.csv"
    last = _read(job)[-1]["serial"]
    offline = ivanti.call(
        lambda: next(str(i) for i, d in ivanti.app["state"].devices.items() if d["serialNumber"] == last)
    )
    ivanti.call(lambda: checkins.update({"delay": 2.0, "offline": [offline]}))
    echo("")
    echo("-- From here on the Ivanti iPads take a command only when they next check in (a few seconds); one is off.")
    wiped = demo.run(
        "Ivanti: wipe 8 stolen iPads (destructive: --yes)",
        job,
        "ivanti",
        ivanti.url,
        action="wipe",
        partition="1",
        yes=True,
    )

    class Told(TrackEvents):
        def looked(self, result: TrackResult) -> None:
            echo(f"   {result.progress()}")

    env = client_env("ivanti")
    # each iPad checks in 1 to 3 s after its command (the delay of 2 s set above): a look
    # every second for 4 s sees them come in and the one that is off stay pending
    for title, until in (("one look, right away", 0), ("a look every second for up to 4 s", 4)):
        echo("")
        echo(f"== Did the iPads take the wipe? ({title})")
        echo(f"$ bulkmdm track {wiped.report_path.name}" + (f" --until {until}s --every 1s" if until else ""))
        result = track(
            TrackOptions(report=wiped.report_path, until=until, every=1.0, state_dir=demo.state_dir, env=env), Told()
        )
        pending = ", ".join(row.label for row in result.pending()) or "none"
        echo(f"   Still pending: {pending} (exit {result.exit_code})")
    ivanti.call(lambda: checkins.update({"delay": None, "offline": []}))


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return list(csv.DictReader(fh))


if __name__ == "__main__":  # python -m bulkmdm.demo FOLDER: refresh the example jobs
    for written in write_jobs(Path(sys.argv[1] if len(sys.argv) > 1 else "jobs"), *(app["state"] for app in _fleets())):
        print(written)
