"""The command line: the only module that imports click and rich.

Heavy modules (pandas, aiohttp, the engine) are imported inside the commands
so that ``bulkmdm --help`` answers at once.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__
from .errors import BulkMDMError, ConfigError, UsageError
from .events import QuietEvents
from .sim import DEFAULT_DEVICES, DEFAULT_SEED
from .shown import Secrets, plain
from .words import counts_list, counts_text, plural

if TYPE_CHECKING:
    from .engine import RunResult
    from .providers.base import ExtraSetting
    from .model import Outcome


def _provider_words() -> str:
    """The registered providers, as a sentence lists them ("banyan, duostation or ivanti")."""
    from . import providers

    names = providers.names()
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


def _credential_words() -> str:
    """Each provider's credential variables, as the run's help lists them."""
    from . import providers

    by_sets: dict[str, list[str]] = {}
    for cls in providers.classes():
        sets = " or ".join(", ".join(names) for names in cls.credentials)
        by_sets.setdefault(sets, []).append(cls.name)
    return "; ".join(f"{sets} ({', '.join(names)})" for sets, names in by_sets.items())


def _partition_settings(*, simulated: bool = False) -> Iterator[tuple[str, ExtraSetting]]:
    """Each provider (``simulated``: with a built-in simulator) that reads --partition, as
    people write its name, and the setting it reads it as."""
    from . import providers

    for cls in providers.classes():
        if cls.simulator or not simulated:
            yield from ((cls.title or cls.name, s) for s in cls.extra_settings if s.name == "partition")


def _or_variable(setting: ExtraSetting) -> str:
    return f" (or {setting.variable})" if setting.variable else ""


def _partition_words() -> str:
    """Which providers read --partition, and as what (each one's title, the setting's label and variable)."""
    return "; ".join(f"{title} {s.label.lower()}{_or_variable(s)}" for title, s in _partition_settings())


def _sim_partition_words() -> str:
    """What `bulkmdm sim` serves as --partition, for each simulator that has one."""
    return "; ".join(
        f"{title}: the {s.label.lower()} it serves; pass the same to `bulkmdm run --partition ID`{_or_variable(s)}"
        for title, s in _partition_settings(simulated=True)
    )


def _real_words() -> str:
    """What `bulkmdm sim --real` changes, for each simulator that has it."""
    from . import sim

    return "; ".join(f"{name}: {what}" for name, what in sim.real_behaviours().items())


def _checkin_words() -> str:
    """The simulators whose devices take commands only when they check in."""
    from . import sim

    return ", ".join(name for name in sim.names() if "checkins" in sim.accepts(name))


def _batching_words() -> str:
    """The providers that send many devices in one request."""
    from . import providers

    return ", ".join(cls.title or cls.name for cls in providers.classes() if cls.max_batch > 1)


def _quota_words() -> str:
    """The providers whose API has a daily quota (those that say how to count it)."""
    from inspect import getattr_static

    from . import providers
    from .providers.base import Provider

    none = getattr_static(Provider, "daily_limit_for")
    return ", ".join(
        cls.title or cls.name for cls in providers.classes() if getattr_static(cls, "daily_limit_for") is not none
    )


#: placeholders a command's help may use, filled in from the provider registry when the
#: help is shown (so that a plain command does not import every provider)
_HELP_FILLS = {
    "{providers}": _provider_words,
    "{credentials}": _credential_words,
    "{partition}": _partition_words,
    "{sim_partition}": _sim_partition_words,
    "{real}": _real_words,
    "{checkins}": _checkin_words,
    "{batching}": _batching_words,
    "{quota}": _quota_words,
}


class _Command(click.Command):
    """A command whose help may name the providers and their credentials (``_HELP_FILLS``)."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        texts: list[tuple[Any, str | None]] = [(self, self.help)]
        texts += [(p, p.help) for p in self.params if isinstance(p, click.Option)]
        try:
            for owner, text in texts:
                for mark, fill in _HELP_FILLS.items():
                    if text and mark in text:
                        text = text.replace(mark, fill())
                owner.help = text
            super().format_help(ctx, formatter)
        finally:
            for owner, text in texts:
                owner.help = text


class _Group(click.Group):
    """Turns every BulkMDMError into one sentence and its exit code."""

    command_class = _Command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BulkMDMError as exc:
            # (a server's words may be in it: shown without escapes or credentials)
            shown = Secrets.from_env(os.environ).clean(str(exc))
            click.echo(f"Error: {shown}", err=True)
            _json_failed(ctx, exc.exit_code, shown)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            _json_failed(ctx, 130, "Interrupted.")
            ctx.exit(130)
        except BrokenPipeError:
            # `bulkmdm runs | head`: the reader went away; the rest of the output has nowhere to go
            _silence_stdout()
            ctx.exit(1)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug: one sentence here, the traceback in a file
            path = _crash_log(exc)
            click.echo(
                f"Error: bulkmdm hit an internal error ({type(exc).__name__}). The journal keeps every finished "
                f"row; run the same command again to continue. Details for a bug report: {path}",
                err=True,
            )
            _json_failed(ctx, 1, f"bulkmdm hit an internal error ({type(exc).__name__}); details in {path}.")
            ctx.exit(1)


def _silence_stdout() -> None:
    """Point stdout at the null device, so that flushing it at exit raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _crash_log(exc: BaseException) -> str:
    import tempfile
    import traceback

    # (a bug report is shared: what a server said in it is plain, and no credential is in it)
    text = Secrets.from_env(os.environ).redact(plain("".join(traceback.format_exception(exc)), keep_lines=True))
    try:
        fd, path = tempfile.mkstemp(prefix="bulkmdm-crash-", suffix=".txt")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return path
    except OSError:
        return "(could not write a crash file)"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="bulkmdm")
def main() -> None:
    """Run a spreadsheet of device-management actions against your MDM.

    \b
    Start with:   bulkmdm demo
    Then:         bulkmdm run JOB.csv --provider duostation --url https://mdm.example.com
    """


# -- run ---------------------------------------------------------------------


def profile_option(command: Any) -> Any:
    """``--profile NAME`` for every command that talks to an MDM (see bulkmdm.config.resolve_target)."""
    return click.option(
        "--profile",
        "-P",
        metavar="NAME",
        help="Take provider, url, partition, rate and concurrency from [profiles.NAME] in "
        "config.toml (flags win), and credentials the environment lacks from the OS keyring "
        "(`bulkmdm login`).",
    )(command)


def json_option(command: Any) -> Any:
    """``--json`` for every command a script may run (see bulkmdm.jsonout)."""
    return click.option(
        "--json",
        "json_lines",
        is_flag=True,
        help="For scripts: JSON lines on stdout (progress, then a summary with counts, report, undo "
        "and exit); messages for people stay on stderr.",
    )(command)


#: ``--state-dir`` of a command that reads the journal
_state_dir_option = click.option(
    "--state-dir", type=click.Path(path_type=Path), metavar="DIR", help="Where the journal lives."
)


@main.command()
@click.argument("job", type=click.Path(path_type=Path))
@click.option("--provider", "-p", metavar="NAME", help="The MDM: {providers} (or from --profile).")
@click.option("--url", "-u", metavar="URL", help="The MDM's base address (https://...; or from --profile).")
@click.option("--action", "-a", metavar="ACTION", help="Do this action on every row (else each row's action column).")
@click.option(
    "--report",
    "-o",
    type=click.Path(path_type=Path),
    metavar="OUT",
    help="Where the outcome report goes (.csv or .xlsx). Default: JOB's name + .outcome.",
)
@click.option("--dry-run", is_flag=True, help="Check every row and look-up; send nothing that changes anything.")
@click.option(
    "--yes", "-y", is_flag=True, help="Confirm destructive actions (wipe, retire, delete-device, delete-user)."
)
@click.option("--concurrency", "-c", type=int, metavar="N", help="Requests in flight at once.")
@click.option("--rate", "-r", metavar="R", help="Most requests per time, e.g. 20/s or 100/min ('none': no limit).")
@click.option("--partition", metavar="ID", help="{partition}.")
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    metavar="S",
    help="Seconds one request may take before the attempt counts as failed.",
)
@click.option("--fresh", is_flag=True, help="Ignore what an earlier run of the same job recorded; start over.")
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="Where the journal lives (default: your user state folder, or BULKMDM_STATE_DIR).",
)
@click.option(
    "--max-destructive", type=int, metavar="N", help="Refuse a job that would wipe/retire/delete more than N."
)
@click.option("--batch-size", type=int, metavar="N", help="Most devices in one bulk request ({batching}).")
@click.option(
    "--resend-unknown",
    is_flag=True,
    help="On resume, resend rows whose request was in flight when the run died (may do them twice).",
)
@click.option(
    "--wait-for-quota",
    is_flag=True,
    help="When the MDM's daily API quota ({quota}) is used up, hold until it resets and continue "
    "(default: stop, leaving the rest not-run for the same command tomorrow).",
)
@click.option(
    "--track",
    "track_for",
    metavar="DURATION",
    help="After the run, follow its succeeded rows on the devices for this long (30s, 15m, 2h), "
    "as `bulkmdm track REPORT --until DURATION` does.",
)
@click.option("--verbose", "-v", is_flag=True, help="Log every request (credentials redacted) to stderr.")
@json_option
@profile_option
def run(
    job: Path,
    provider: str | None,
    url: str | None,
    action: str | None,
    report: Path | None,
    dry_run: bool,
    yes: bool,
    concurrency: int | None,
    rate: str | None,
    partition: str | None,
    timeout: float,
    fresh: bool,
    state_dir: Path | None,
    max_destructive: int | None,
    batch_size: int | None,
    resend_unknown: bool,
    wait_for_quota: bool,
    track_for: str | None,
    verbose: bool,
    json_lines: bool,
    profile: str | None,
) -> None:
    """Run the rows of JOB (.csv or .xlsx) against the MDM and write an outcome report.

    Credentials come from the environment: {credentials}; with --profile, those
    the environment does not set come from the OS keyring (`bulkmdm login
    --profile NAME`).

    Running a report as the job re-runs only its failed, invalid and unknown
    rows. Running the same command after a crash or Ctrl-C continues where it
    stopped.
    """
    from .config import environment_for, resolve_target
    from .engine import RunOptions, run_job

    lines = _json_lines(json_lines, "run")

    target = resolve_target(
        profile, provider=provider, url=url, partition=partition, rate=rate, concurrency=concurrency, env=os.environ
    )
    env = environment_for(target, os.environ)
    if verbose:
        _log_to_stderr(env)
    following = None
    if track_for is not None:
        from .track import parse_duration

        if dry_run:
            raise click.UsageError("--track follows changes a run made; a dry run makes none, so leave one out.")
        following = parse_duration(track_for, flag="--track")
    options = RunOptions(
        job=job,
        provider=target.provider,
        url=target.url,
        action=action,
        report=report,
        dry_run=dry_run,
        yes=yes,
        concurrency=target.concurrency,
        rate=target.rate,
        partition=target.partition,
        timeout=timeout,
        fresh=fresh,
        state_dir=state_dir,
        max_destructive=max_destructive,
        batch_size=batch_size,
        resend_unknown=resend_unknown,
        wait_for_quota=wait_for_quota,
        env=env,
    )
    events: Any = TerminalEvents() if sys.stderr.isatty() else PlainEvents()
    if lines is not None:
        from .jsonout import JsonProgress

        events = JsonProgress(events, lines)
    try:
        result = run_job(options, events)
    finally:
        events.finish()
    _summary(result, options, dry_run, stdout=lines is None)
    exit_code = result.exit_code
    if following is not None and result.exit_code not in (2, 130, 143) and result.report_path.exists():
        from .track import DEFAULT_EVERY, TrackOptions

        click.echo(f"Following the changes on the devices for {track_for} ...", err=True)
        tracked = _track_and_tell(
            TrackOptions(
                report=result.report_path,
                until=following,
                every=min(DEFAULT_EVERY, max(following / 10, 1.0)),
                rate=target.rate,
                concurrency=target.concurrency,
                timeout=timeout,
                state_dir=state_dir,
                wait_for_quota=wait_for_quota,
                env=env,
            ),
            lines=None,
        )
        exit_code = result.exit_code or tracked
    if lines is not None:
        _json_summary(lines, result, dry_run, exit_code)
    sys.exit(exit_code)


# -- following through ---------------------------------------------------------


@main.command()
@click.argument("report_file", metavar="REPORT", type=click.Path(path_type=Path))
@click.option(
    "--until",
    metavar="DURATION",
    default="0s",
    help="Keep looking until every trackable row is confirmed or this long has passed (30s, 15m, 2h). "
    "Default: one look.",
)
@click.option("--every", metavar="DURATION", default="1m", show_default=True, help="Time between two looks (30s, 5m).")
@json_option
@click.option("--rate", "-r", metavar="R", help="Most requests per time, e.g. 20/s or 100/min.")
@click.option("--concurrency", "-c", type=int, metavar="N", help="Requests in flight at once.")
@click.option(
    "--timeout", type=float, default=30.0, show_default=True, metavar="S", help="Seconds one request may take."
)
@click.option(
    "--wait-for-quota",
    is_flag=True,
    help="When the MDM's daily API quota ({quota}) is used up, hold until it resets (default: stop).",
)
@_state_dir_option
@click.option(
    "--profile",
    "-P",
    metavar="NAME",
    help="Credentials the environment does not set come from this profile's OS keyring entries "
    "(`bulkmdm login`); the MDM is the one the run spoke to.",
)
def track(
    report_file: Path,
    until: str,
    every: str,
    json_lines: bool,
    rate: str | None,
    concurrency: int | None,
    timeout: float,
    wait_for_quota: bool,
    state_dir: Path | None,
    profile: str | None,
) -> None:
    """Follow a run's succeeded rows on the devices: did the device take the wipe, the lock, the app?

    Reads REPORT (the outcome report a run wrote) and its journal, asks the MDM with
    read-only requests in bulk, and writes two columns into REPORT: device_status
    (confirmed, pending, not-trackable) and device_seen. Running it again continues.
    Exit 0: every trackable row confirmed; 1: some still pending; 2: nothing could be
    looked at. Credentials come from the environment, as for `bulkmdm run`.
    """
    from .track import TrackOptions, parse_duration

    options = TrackOptions(
        report=report_file,
        until=parse_duration(until, flag="--until"),
        every=max(parse_duration(every, flag="--every"), 1.0),
        rate=rate,
        concurrency=concurrency,
        timeout=timeout,
        state_dir=state_dir,
        wait_for_quota=wait_for_quota,
        profile=profile,
        env=dict(os.environ),
    )
    sys.exit(_track_and_tell(options, lines=_json_lines(json_lines, "track")))


def _track_and_tell(options: Any, *, lines: Any) -> int:
    """Track, printing progress as it polls and the summary at the end; the exit code.
    With ``lines`` (--json): a ``look`` line per look, a ``row`` line per row still
    pending or not trackable, then the summary (an error's summary is the group's)."""
    from .track import TrackEvents, TrackResult, track

    class Told(TrackEvents):
        def message(self, text: str) -> None:
            click.echo(text, err=True)

        def looked(self, result: TrackResult) -> None:
            click.echo(result.progress(), err=True)
            if lines is not None:
                lines.write("look", looks=result.looks, counts=dict(result.counts()))

    result = track(options, Told())
    _track_summary(result)
    if lines is not None:
        for row in result.rows:
            if row.status in ("pending", "not-trackable"):
                lines.write("row", **_track_line(row))
        lines.summary(
            counts=dict(result.counts()),
            report=result.report,
            undo=None,
            exit=result.exit_code,
            command="track",
            by_action={action: dict(counts) for action, counts in sorted(result.by_action().items())},
            pending=[row.label or f"line {row.line}" for row in result.pending()],
            looks=result.looks,
            requests=result.requests,
        )
    return result.exit_code


def _track_line(row: Any) -> dict[str, Any]:
    return {
        "line": row.line,
        "label": row.label,
        "action": row.action,
        "device_status": row.status,
        "device_seen": row.seen,
        "detail": row.detail,
    }


def _track_summary(result: Any, shown: int = 20) -> None:
    """By action and status, why rows are not trackable, the pending rows' serials, and the way on."""
    from .track import ORDER

    for action, counts in sorted(result.by_action().items()):
        parts = ", ".join(f"{counts[s]} {s}" for s in ORDER if counts.get(s))
        click.echo(f"  {action}: {parts}", err=True)
    reasons = Counter(row.detail for row in result.rows if row.status == "not-trackable")
    for reason, n in reasons.most_common():
        click.echo(f"  Not trackable ({n}): {reason}", err=True)
    pending = result.pending()
    if pending:
        names = [row.label or f"line {row.line}" for row in pending[:shown]]
        more = f", ... ({len(pending) - shown} more in the report)" if len(pending) > shown else ""
        click.echo(f"Pending ({len(pending)}): {', '.join(names)}{more}", err=True)
    if result.stopped:
        click.echo(result.stopped, err=True)
    click.echo(f"Report: {result.report}", err=True)
    if result.interrupted:
        click.echo("Interrupted; what was known is in the report. To continue:", err=True)
        click.echo("  " + shlex.join(["bulkmdm", "track", str(result.report)]), err=True)
    elif pending:
        click.echo("To look again later (confirmed rows are not asked about again):", err=True)
        click.echo("  " + shlex.join(["bulkmdm", "track", str(result.report), "--until", "1h"]), err=True)


#: where a command's --json emitter is kept (click's ctx.meta), so that an error the
#: group turns into one sentence also ends the JSON lines with a summary
_JSON_META = "bulkmdm.json"


def _json_lines(wanted: bool, command: str) -> Any:
    """The command's JSON lines emitter (bulkmdm.jsonout) for --json, else None."""
    if not wanted:
        return None
    from .jsonout import JsonLines

    lines = JsonLines()
    click.get_current_context().meta[_JSON_META] = (lines, command)
    return lines


def _json_failed(ctx: click.Context, exit_code: int, error: str) -> None:
    """A command run with --json that ends in an error still ends with a summary line."""
    held = ctx.meta.get(_JSON_META)
    if held is not None:
        lines, command = held
        lines.summary(counts={}, report=None, undo=None, exit=exit_code, error=error, command=command)


def _json_summary(lines: Any, result: RunResult, dry_run: bool, exit_code: int) -> None:
    """The summary line of ``run --json`` (fields documented in the README's "For scripts")."""
    summary = result.summary
    from .jsonout import all_counts

    lines.summary(
        counts=all_counts(result.counts),
        report=result.report_path,
        undo=result.undo.path if result.undo is not None else None,
        exit=exit_code,
        command="run",
        run=result.run_id,
        rows=result.rows,
        dry_run=dry_run,
        elapsed=round(result.elapsed, 3),
        requests=result.requests,
        planned_requests=result.planned_requests,
        stopped=result.stopped,
        already_finished=result.finished_before is not None,
        failures=[
            {"reason": group.reason, "rows": group.count, "lines": list(group.lines)}
            for group in (summary.failures if summary is not None else [])
        ],
        not_undoable=dict(result.undo.not_undoable) if result.undo is not None else {},
    )


class _RedactingEcho(logging.Handler):
    """--verbose: log lines to stderr, with any credential value blanked out.
    (Nothing logs headers; this is the second lock on the door.)"""

    def __init__(self, env: Mapping[str, str]) -> None:
        super().__init__(logging.INFO)
        self.secrets = Secrets.from_env(env)
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.secrets.clean(self.format(record)), err=True)


def _log_to_stderr(env: Mapping[str, str]) -> None:
    logger = logging.getLogger("bulkmdm")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        if isinstance(handler, _RedactingEcho):
            logger.removeHandler(handler)
    logger.addHandler(_RedactingEcho(env))


def _summary(result: RunResult, options: Any, dry_run: bool, *, stdout: bool = True) -> None:
    """The end of a run: counts, what went wrong grouped by reason, where the report is, and the way on
    (all on stderr but the undo file's line, which goes to stdout unless ``stdout`` is False: --json)."""
    if result.finished_before is not None:
        _already_finished(result, options)
        return
    counts = result.counts
    took = f" in {result.elapsed:.1f} s" if result.elapsed > 0 and not dry_run else ""
    click.echo(counts_text(counts, result.rows) + took + ".", err=True)
    summary = result.summary
    if dry_run and summary is not None:
        _dry_run_story(summary)
    if dry_run and result.planned_requests is not None:
        click.echo(
            f"The real run will send {plural(result.planned_requests, 'request')} that change something "
            f"(this dry run made {plural(result.requests, 'read-only request')}).",
            err=True,
        )
    if summary is not None and summary.failures:
        _failures(summary)
    if result.stopped:
        click.echo(plain(result.stopped), err=True)
    if result.undo is not None and result.undo.not_undoable:
        what = ", ".join(f"{n} {action}" for action, n in sorted(result.undo.not_undoable.items()))
        click.echo(f"Cannot be undone (left out of the undo file): {what}.", err=True)
    click.echo(f"Report: {result.report_path}", err=True)
    if result.exit_code in (130, 143):
        click.echo("Interrupted. To continue where it stopped, run the same command again:", err=True)
        click.echo("  " + _command(options.job, report=options.report), err=True)
    elif result.stopped:
        click.echo("To continue once that is fixed, run the same command again:", err=True)
        click.echo("  " + _command(options.job, report=options.report), err=True)
    elif any(counts.get(k) for k in ("failed", "invalid", "unknown", "not-run")) and not dry_run:
        click.echo("Fix what the report's detail column says, then re-run only those rows with:", err=True)
        click.echo("  " + _rerun_command(result.report_path), err=True)
    elif dry_run:
        click.echo("To run it for real, the same command without --dry-run:", err=True)
        click.echo("  " + _command(options.job, report=options.report), err=True)
    _undo_story(result, stdout=stdout)


def _undo_story(result: RunResult, *, stdout: bool = True) -> None:
    """The run's last line: the file that puts back what it changed."""
    if result.undo is not None and result.undo.path is not None:
        click.echo(f"Undo file: {result.undo.path}", err=not stdout)


def _dry_run_story(summary: Any) -> None:
    """What the real run will do, by action, and which rows it destroys."""
    from .actions import destroys

    for action, statuses in sorted(summary.by_action.items()):
        click.echo(f"  {action}: {counts_list(statuses)}", err=True)
    for action, names in sorted(summary.destructive.items()):
        n = summary.destructive_counts[action]
        more = ", ..." if n > len(names) else ""
        click.echo(f"  would {destroys({action: n})}: {', '.join(names)}{more}", err=True)


def _failures(summary: Any, shown: int = 8) -> None:
    """Rows that went wrong, grouped by reason, the largest groups first."""
    click.echo("What went wrong:", err=True)
    for group in summary.failures[:shown]:
        lines = ", ".join(str(line) for line in group.lines) + (", ..." if group.count > len(group.lines) else "")
        where = f"line {lines}" if group.count == 1 else f"lines {lines}"
        click.echo(f"  {group.count} x {plain(group.reason).rstrip('.')}: {where}", err=True)
    if len(summary.failures) > shown:
        rest = sum(group.count for group in summary.failures[shown:])
        others = plural(len(summary.failures) - shown, "other reason")
        click.echo(f"  {plural(rest, 'more row')} for {others}: see the report.", err=True)


def _already_finished(result: RunResult, options: Any) -> None:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(result.finished_before or 0))
    parts = counts_list(result.counts)
    click.echo(
        f"This job already ran to the end (run {result.run_id}, finished {when}: {parts}); nothing was sent.", err=True
    )
    click.echo(f"Report (kept): {result.report_path}", err=True)
    if result.exit_code:
        click.echo("To retry what did not succeed, run the report:", err=True)
        click.echo("  " + _rerun_command(result.report_path), err=True)
    click.echo("To run every row again:", err=True)
    click.echo("  " + _command(options.job, report=options.report) + " --fresh", err=True)


#: flags a printed command never repeats: they are decisions for one run
_NOT_REPEATED = frozenset({"dry_run", "fresh", "resend_unknown", "verbose", "report", "json_lines"})


def _command(job: Path, *, report: Path | None = None) -> str:
    """``bulkmdm run JOB`` with every flag this command was given (bar one-run decisions)."""
    words = ["bulkmdm", "run", str(job)]
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        for param in ctx.command.params:
            if not isinstance(param, click.Option) or param.name is None or param.name in _NOT_REPEATED:
                continue
            if ctx.get_parameter_source(param.name) is not click.core.ParameterSource.COMMANDLINE:
                continue
            value = ctx.params.get(param.name)
            flag = max(param.opts, key=len)
            if param.is_flag:
                words += [flag] if value else []
            elif value is not None:
                words += [flag, str(value)]
    if report is not None:
        words += ["--report", str(report)]
    return shlex.join(words)


#: statuses a bar counts as done well / badly
_GOOD = ("succeeded", "planned")
_BAD = ("failed", "unknown", "not-run", "not run")


def _clock(seconds: float) -> str:
    """12 -> '0:12', 3725 -> '1:02:05'."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _rerun_command(report: Path) -> str:
    """Running the report itself: it writes back to itself unless its name says otherwise."""
    from .engine import default_report_path

    return _command(report, report=None if default_report_path(report) == report else report)


class PlainEvents(QuietEvents):
    """Progress as plain lines, for logs and pipes: one every few seconds (it cannot ask)."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self.total = 0
        #: rows already done when this run started (invalid rows, rows carried over or done before a resume)
        self.done_before = 0
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self.last = 0.0

    def message(self, text: str) -> None:
        click.echo(plain(text), err=True)

    def start(self, total: int, done: int, counts: Mapping[str, int] | None = None) -> None:
        """``total`` rows, ``done`` of them finished before sending starts,
        with their statuses in ``counts`` (e.g. ``{"invalid": 3}``)."""
        self.total = total
        self.done_before = done
        self.counts = Counter({k: n for k, n in (counts or {}).items() if k not in ("pending", "in_flight") and n})
        self.started = time.monotonic()
        self.last = self.started

    def advance(self, outcomes: Sequence[Outcome]) -> None:
        self._count(outcomes)
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            click.echo(self._line(now), err=True)

    def _count(self, outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            self.counts[str(outcome.status)] += 1

    def speed_and_eta(self, now: float) -> tuple[float, float | None]:
        """Rows per second sent by this run, and the seconds left (None until it is known)."""
        done = sum(self.counts.values())
        sent = max(done - self.done_before, 0)
        elapsed = now - self.started
        if sent == 0 or elapsed <= 0:
            return 0.0, None
        speed = sent / elapsed
        return speed, max(self.total - done, 0) / speed

    def _line(self, now: float) -> str:
        done = sum(self.counts.values())
        speed, eta = self.speed_and_eta(now)
        parts = counts_list(self.counts)
        left = f"ETA {_clock(eta)}" if eta is not None else "ETA --:--"
        return f"{done}/{self.total} rows ({parts}); {speed:.1f} rows/s, {left}"


class TerminalEvents(PlainEvents):
    """A live bar: rows done of all rows (invalid ones counted from the start),
    counts by status, rows/s and a labelled ETA. Messages and the destructive
    prompt print above it, never through it."""

    def __init__(self) -> None:
        super().__init__()
        self.progress: Any = None
        self.task: Any = None

    def start(self, total: int, done: int, counts: Mapping[str, int] | None = None) -> None:
        super().start(total, done, counts)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(
            TextColumn("[bold]rows"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "[green]{task.fields[good]} ok[/] [dim]{task.fields[skipped]} skipped[/] "
                "[red]{task.fields[failed]} failed {task.fields[invalid]} invalid[/]"
            ),
            TextColumn("{task.fields[speed]}"),
            TextColumn("[cyan]{task.fields[eta]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "rows", total=total, completed=sum(self.counts.values()), **self._fields(time.monotonic())
        )

    def _fields(self, now: float) -> dict[str, Any]:
        counts = self.counts
        speed, eta = self.speed_and_eta(now)
        return {
            "good": sum(counts[k] for k in _GOOD),
            "skipped": counts["skipped"],
            "failed": sum(counts[k] for k in _BAD),
            "invalid": counts["invalid"],
            "speed": f"{speed:.1f} rows/s",
            "eta": f"ETA {_clock(eta)}" if eta is not None else "ETA --:--",
        }

    def advance(self, outcomes: Sequence[Outcome]) -> None:
        self._count(outcomes)
        if self.progress is not None:
            self.progress.update(self.task, completed=sum(self.counts.values()), **self._fields(time.monotonic()))

    def message(self, text: str) -> None:
        text = plain(text)
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False)
        else:
            click.echo(text, err=True)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def can_ask(self) -> bool:
        return sys.stdin.isatty()

    def confirm(self, prompt: str, expected: str) -> bool:
        """Ask with the bar paused, so the question stands clear of it. Ctrl-C
        here stops at once (KeyboardInterrupt, exit 130); end of input or any
        other answer declines."""
        live = self.progress
        if live is not None:
            live.stop()
        answer = _prompt_interruptibly(prompt)
        confirmed = answer is not None and answer.strip() == expected
        if live is not None:
            if confirmed:
                live.start()
            else:  # nothing more to show: the run stops here
                self.progress = None
        return confirmed


def _prompt_interruptibly(prompt: str) -> str | None:
    """Ask on the terminal; None when the input ends (Ctrl-D). Ctrl-C raises
    KeyboardInterrupt at once, even while an event loop owns SIGINT.

    A blocking read would not do: the kernel may hand SIGINT to any thread
    (aiohttp's resolver threads, say), and then the read in the main thread
    is never interrupted. So the answer is awaited with select() on the
    terminal and on a wakeup pipe that the signal writes to, whichever thread
    receives it.
    """
    import select
    import signal

    try:
        wake_read, wake_write = os.pipe()
    except OSError:
        wake_read = wake_write = -1
    try:
        os.set_blocking(wake_write, False)
        previous_fd = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        previous_handler = signal.signal(signal.SIGINT, lambda signum, frame: None)
    except (ValueError, OSError, AttributeError):  # not the main thread, or not POSIX: a plain prompt
        for fd in (wake_read, wake_write):
            if fd >= 0:
                os.close(fd)
        return _plain_prompt(prompt)
    try:
        click.echo(f"{prompt}: ", nl=False, err=True)  # asked only once Ctrl-C is watched for
        while True:
            ready, _, _ = select.select([sys.stdin, wake_read], [], [])
            if wake_read in ready:
                click.echo("", err=True)  # the answer's line was never ended
                raise KeyboardInterrupt
            line = sys.stdin.readline()
            return line.rstrip("\r\n") if line else None
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(wake_read)
        os.close(wake_write)


def _plain_prompt(prompt: str) -> str | None:
    try:
        return str(click.prompt(prompt, default="", show_default=False, err=True))
    except (click.Abort, EOFError):
        return None


# -- profiles and secrets ----------------------------------------------------


@main.command()
@click.option("--profile", "-P", required=True, metavar="NAME", help="The profile in config.toml to log in for.")
def login(profile: str) -> None:
    """Store a profile's credentials in the OS keyring (asked for without echo).

    The profile ([profiles.NAME] in config.toml) says which MDM it is, and so
    which credentials to ask for. A run with --profile NAME then reads them
    from the keyring whenever the environment does not set them.
    """
    from . import providers
    from .config import config_path, credential_sets, keyring_backend, load_profile, store_secrets

    chosen = load_profile(profile, os.environ)
    if not chosen.provider:
        first, *others = providers.names()
        raise ConfigError(
            f"Profile {profile!r} in {config_path(os.environ)} names no provider; add "
            f'provider = "{first}" (or {", ".join(others)}) to it.'
        )
    sets = credential_sets(chosen.provider)
    if not sets:
        raise ConfigError(
            f"{chosen.provider} does not say which credentials it reads, so there is nothing to store; "
            "set its variables in the environment instead."
        )
    keyring_backend(" or ".join(" and ".join(names) for names in sets))  # no backend: say so before asking
    variables = sets[0]
    if len(sets) > 1:
        for number, names in enumerate(sets, start=1):
            click.echo(f"  {number}: {', '.join(names)}", err=True)
        choice = click.prompt(
            f"Which credentials does {chosen.provider} use here", type=click.IntRange(1, len(sets)), default=1, err=True
        )
        variables = sets[choice - 1]
    secret = {c.variable: c.secret for c in providers.credential_fields(chosen.provider)}
    values = {}
    for variable in variables:
        values[variable] = click.prompt(variable, hide_input=secret.get(variable, True), err=True).strip()
    store_secrets(profile, values)
    click.echo(
        f"Stored {', '.join(values)} for profile {profile!r} in the OS keyring; the environment still wins "
        "when it sets them.",
        err=True,
    )


@main.command()
@click.argument("action_name", metavar="ACTION")
@click.option("--provider", "-p", metavar="NAME", help="Check that this MDM can do ACTION (or from --profile).")
@click.option(
    "--url",
    "-u",
    metavar="URL",
    help="Read the MDM's tags, groups and apps and offer them as dropdowns (or from --profile).",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Where to write it (.xlsx or .csv). Default: ACTION.xlsx here.",
)
@profile_option
def template(action_name: str, provider: str | None, url: str | None, out: Path | None, profile: str | None) -> None:
    """Write an empty job file for ACTION: its columns as the header, and in
    an .xlsx a Notes sheet explaining each column with an example; with --url
    (or a profile's), dropdowns of the MDM's tags, groups or apps."""
    from .config import load_profile
    from .template import resolve_action, write_template

    if profile and not url:
        url = load_profile(profile, os.environ).url
    if profile and not provider:
        provider = load_profile(profile, os.environ).provider
    spec = resolve_action(action_name, provider)
    path = out or Path(f"{spec.name}.xlsx")
    choices = None
    if url and path.suffix.lower() == ".xlsx":
        try:
            choices = _template_choices(spec, profile, provider, url)
        except BulkMDMError as exc:
            # the template is still worth having: without the lists, the columns take any name
            click.echo(f"No dropdowns: {Secrets.from_env(os.environ).clean(str(exc)).rstrip('.')}.", err=True)
    path = write_template(path, spec, provider=provider, choices=choices)
    click.echo(
        f"Template: {path}. Fill in one row per device or user, then: bulkmdm run {shlex.quote(str(path))} "
        f"--action {spec.name} --dry-run ...",
        err=True,
    )


def _template_choices(spec: Any, profile: str | None, provider: str | None, url: str) -> dict[str, list[str]]:
    """The MDM's names for the action's tag, group and app columns."""
    import asyncio

    from .connect import open_provider
    from .template import template_columns

    connection = _connection(profile, provider=provider, url=url)
    columns = [header for header, _ in template_columns(spec) if header in ("tag", "group", "app")]

    async def read() -> dict[str, list[str]]:
        async with open_provider(connection) as mdm:
            return {column: await mdm.choices(column) for column in columns}

    click.echo(f"Reading the {', '.join(columns) or 'names'} of {connection.url} ...", err=True)
    return asyncio.run(read()) if columns else {}


# -- journal commands --------------------------------------------------------


@main.command()
@_state_dir_option
@click.option("--limit", type=int, default=20, show_default=True, help="How many runs to list, newest first.")
def runs(state_dir: Path | None, limit: int) -> None:
    """List earlier runs (newest first): when, which MDM and profile, the job and its row counts."""
    from .engine import state_dir as resolve
    from .journal import Journal

    with Journal(resolve(state_dir, os.environ)) as journal:
        listed = journal.runs(limit)
    if not listed:
        click.echo("No runs yet.")
        return
    profiles = _profiles_by_target()
    table = [("RUN", "STARTED", "STATE", "PROVIDER", "URL", "PROFILE", "JOB", "ROWS")]
    for info, counts in listed:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.created))
        state = "dry run" if info.dry_run else ("finished" if info.finished else "unfinished")
        parts = counts_list(counts)
        profile = profiles.get((info.provider, info.url.rstrip("/")), "-")
        table.append((str(info.id), when, state, info.provider, info.url, profile, Path(info.job_path).name, parts))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        cells = [cell.rjust(widths[0]) if i == 0 else cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        click.echo("  ".join([*cells, row[-1]]).rstrip())


def _profiles_by_target() -> dict[tuple[str, str], str]:
    """(provider, url) -> the profile(s) in config.toml that name them; runs do not record a profile,
    so this is what `runs` shows."""
    from .config import load_profiles

    try:
        profiles = load_profiles(os.environ)
    except BulkMDMError:
        return {}
    found: dict[tuple[str, str], list[str]] = {}
    for name, profile in sorted(profiles.items()):
        if profile.provider and profile.url:
            found.setdefault((profile.provider.casefold(), profile.url.rstrip("/")), []).append(name)
    return {key: ", ".join(names) for key, names in found.items()}


@main.command()
@click.argument("run_id", metavar="RUN", type=int)
@click.option("--out", "-o", type=click.Path(path_type=Path), help="Write it here (.csv or .xlsx).")
@click.option("--replace", is_flag=True, help="Write over the run's own report (edits made to it since are lost).")
@click.option("--force", is_flag=True, help="With --replace: even when later runs wrote that report since.")
@click.option("--undo", is_flag=True, help="Also write the run's undo file from the journal.")
@_state_dir_option
def report(run_id: int, out: Path | None, replace: bool, force: bool, undo: bool, state_dir: Path | None) -> None:
    """Write RUN's outcome report again from the journal (`bulkmdm runs` lists runs).

    It goes to a new file next to the run's report (an admin may have edited
    that one in Excel), unless --replace or --out says where. With --undo it
    also writes the undo file (the one the run wrote, or one beside the report).
    """
    from .engine import rebuild_report
    from .engine import state_dir as resolve
    from .journal import Journal
    from .report import rebuild_undo

    if out is not None and replace:
        raise click.UsageError("Give --out or --replace, not both.")
    if force and not replace:
        raise click.UsageError("--force goes with --replace.")
    if out is None:
        with Journal(resolve(state_dir, os.environ)) as journal:
            original = Path(journal.run(run_id).report_path)
            later = [run.id for run in journal.later_writers(run_id)] if replace and original.exists() else []
        if later and not force:
            runs = ", ".join(map(str, later))
            raise UsageError(
                f"{original} was written again by later run{'s' if len(later) > 1 else ''} {runs}, so replacing it "
                f"with run {run_id}'s report would take back what they recorded; nothing was written. Leave out "
                "--replace to write a new file, or add --force to replace it anyway."
            )
        out = original if replace else _unused_name(original, run_id)
    result = rebuild_report(run_id, out=out, state=state_dir)
    click.echo(f"Report: {result.report_path} ({plural(result.rows, 'row')})")
    if undo:
        made = rebuild_undo(run_id, result.report_path, state=state_dir)
        if made.path is not None:
            click.echo(f"Undo file: {made.path} ({made.rows} rows)")
        else:
            click.echo(f"Run {run_id} changed nothing that can be undone; no undo file was written.")


def _unused_name(report_path: Path, run_id: int) -> Path:
    """'tags.outcome.csv' -> 'tags.outcome.run3.csv' (then '.run3-2.csv', ...): a file that does not exist yet."""
    candidate = report_path.with_name(f"{report_path.stem}.run{run_id}{report_path.suffix}")
    number = 2
    while candidate.exists():
        candidate = report_path.with_name(f"{report_path.stem}.run{run_id}-{number}{report_path.suffix}")
        number += 1
    return candidate


@main.command()
def actions() -> None:
    """List the actions, their columns, and which MDM can do each."""
    from . import providers
    from .actions import ACTIONS

    supported = {}
    for name in providers.names():
        try:
            supported[name] = providers.get(name).actions
        except ImportError:
            continue
    for spec in ACTIONS.values():
        cols = ", ".join(" or ".join(g) for g in spec.requires)
        who = ", ".join(n for n, acts in supported.items() if spec.name in acts) or "-"
        flag = " (destructive)" if spec.destructive else ""
        click.echo(f"{spec.name:<18} {cols:<34} {who}{flag}")


# -- the fleet -----------------------------------------------------------------


@main.command()
@click.option("--provider", "-p", metavar="NAME", help="The MDM: {providers}.")
@click.option("--url", "-u", metavar="URL", help="The MDM's base address (https://...).")
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Where the devices go (.xlsx or .csv). Default: <provider>-devices-<date>.xlsx.",
)
@click.option("--action", "-a", metavar="ACTION", help="Add an action column with this action: the file is a job.")
@click.option("--partition", metavar="ID", help="{partition}.")
@click.option("--rate", "-r", metavar="R", help="Most requests per time, e.g. 20/s or 100/min.")
@click.option(
    "--timeout", type=float, default=30.0, show_default=True, metavar="S", help="Seconds one request may take."
)
@json_option
@profile_option
def export(
    provider: str | None,
    url: str | None,
    out: Path | None,
    action: str | None,
    partition: str | None,
    rate: str | None,
    timeout: float,
    json_lines: bool,
    profile: str | None,
) -> None:
    """Write every device of the MDM to a sheet, one row each (serial, device_id, name, model, user ...).

    Add an action column (or pass --action) and the file is a job for `bulkmdm run`.
    Credentials come from the environment (or, with --profile, the OS keyring), as for `bulkmdm run`.
    """
    import asyncio

    from .export import default_path, export_devices

    lines = _json_lines(json_lines, "export")

    def progress(n: int) -> None:
        click.echo(f"{n} devices ...", err=True)
        if lines is not None:
            lines.write("progress", done=n)

    connection = _connection(profile, provider=provider, url=url, partition=partition, rate=rate, timeout=timeout)
    path = out or default_path(connection.provider)
    click.echo(f"Reading the devices of {connection.url} ...", err=True)
    count = asyncio.run(export_devices(connection, path, action=action, progress=progress))
    click.echo(f"{plural(count, 'device')} written to {path}.", err=lines is not None)
    if lines is not None:
        lines.summary(counts={"exported": count}, report=path, undo=None, exit=0, command="export", devices=count)


def _connection(
    profile: str | None,
    *,
    provider: str | None,
    url: str | None,
    partition: str | None = None,
    rate: str | None = None,
    timeout: float = 30.0,
) -> Any:
    """The MDM a command talks to: flags over the profile, credentials from the environment or the keyring."""
    from .config import environment_for, resolve_target
    from .connect import Connection
    from .validate import check_url

    target = resolve_target(profile, provider=provider, url=url, env=os.environ, partition=partition, rate=rate)
    return Connection(
        provider=target.provider,
        url=check_url(target.url),
        env=environment_for(target, os.environ),
        partition=target.partition,
        rate=target.rate,
        concurrency=target.concurrency,
        timeout=timeout,
    )


# -- simulators and demo ----------------------------------------------------


def _port_option(default: int) -> Any:
    """``--port`` of a command that serves on 127.0.0.1."""
    return click.option(
        "--port",
        type=click.IntRange(0, 65535),
        default=default,
        show_default=True,
        help="Port on 127.0.0.1 (0: any free port).",
    )


class _SimulatorChoice(click.Choice):  # type: ignore[type-arg]
    """The providers with a built-in simulator, read from the registry when first needed."""

    def __init__(self) -> None:
        super().__init__((), case_sensitive=False)

    @property  # type: ignore[override]
    def choices(self) -> Sequence[str]:
        from . import sim

        return sim.names()

    @choices.setter
    def choices(self, value: Sequence[str]) -> None:
        pass


@main.command()
@click.argument("provider", type=_SimulatorChoice())
@_port_option(8080)
@click.option(
    "--devices",
    type=int,
    default=DEFAULT_DEVICES,
    show_default=True,
    help="How many devices to seed (jobs/ fits the default).",
)
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True, help="Seed for the fake fleet.")
@click.option("--username", default="admin", show_default=True, help="Basic-auth user name it accepts.")
@click.option("--password", default="admin", show_default=True, help="Basic-auth password it accepts.")
@click.option("--latency", type=float, default=0.0, help="Seconds added to every answer.")
@click.option("--rate-limit", type=float, help="Requests per second allowed; above it: 429 with Retry-After.")
@click.option(
    "--limit-shape",
    type=click.Choice(["sliding", "bucket", "fixed"]),
    default="sliding",
    show_default=True,
    help="How --rate-limit counts: any 1-s window (exact Retry-After), a token bucket (Retry-After "
    "rounded up to whole seconds), or fixed windows of --limit-window seconds (Retry-After to the window's end).",
)
@click.option("--limit-burst", type=float, help="bucket: its tokens (default: one second of --rate-limit).")
@click.option("--limit-window", type=float, default=10.0, show_default=True, help="fixed: the window's seconds.")
@click.option("--limit-halved-at", type=float, help="Halve --rate-limit this many seconds after its first request.")
@click.option("--limit-restored-at", type=float, help="Restore it this many seconds after its first request.")
@click.option(
    "--throttle-rate", type=float, default=0.0, help="Fraction answered 429 (Retry-After: 1) whatever the pace."
)
@click.option("--error-rate", type=float, default=0.0, help="Fraction of requests answered 503.")
@click.option("--drop-rate", type=float, default=0.0, help="Fraction of connections dropped before the work.")
@click.option("--drop-after-rate", type=float, default=0.0, help="Fraction dropped after the work is done.")
@click.option("--slow-rate", type=float, default=0.0, help="Fraction answered only after --slow-seconds.")
@click.option("--slow-seconds", type=float, default=5.0, help="How slow a slow answer is.")
@click.option(
    "--partition",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    metavar="ID",
    help="{sim_partition}.",
)
@click.option(
    "--real",
    "--me-real",
    "real",
    is_flag=True,
    help="Answer as the vendor's real service does where it differs from its doc ({real}).",
)
@click.option(
    "--checkin-delay",
    type=click.FloatRange(min=0),
    metavar="S",
    help="{checkins}: devices take a command (wipe, lock, app install ...) only when they next "
    "check in, about S seconds after it (default: at once). POST /_sim/checkins/now checks them all in.",
)
@click.option(
    "--offline-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    metavar="F",
    help="With --checkin-delay: this fraction of the devices never checks in (offline, in a drawer).",
)
def sim(
    provider: str,
    port: int,
    devices: int,
    seed: int,
    username: str,
    password: str,
    latency: float,
    rate_limit: float | None,
    limit_shape: str,
    limit_burst: float | None,
    limit_window: float,
    limit_halved_at: float | None,
    limit_restored_at: float | None,
    throttle_rate: float,
    error_rate: float,
    drop_rate: float,
    drop_after_rate: float,
    slow_rate: float,
    slow_seconds: float,
    partition: int,
    real: bool,
    checkin_delay: float | None,
    offline_rate: float,
) -> None:
    """Serve a built-in simulator of PROVIDER's API on 127.0.0.1 until Ctrl-C."""
    from . import providers
    from .sim import accepts as accepted, client_env, load
    from .sim.common import CheckIns, Faults, serve_forever

    faults = Faults(
        latency=latency,
        rate_limit=rate_limit,
        limit_shape=limit_shape,
        limit_burst=limit_burst,
        limit_window=limit_window,
        limit_halved_at=limit_halved_at,
        limit_restored_at=limit_restored_at,
        throttle_rate=throttle_rate,
        error_rate=error_rate,
        drop_rate=drop_rate,
        drop_after_rate=drop_after_rate,
        slow_rate=slow_rate,
        slow_seconds=slow_seconds,
    )
    make_app = load(provider.casefold())
    accepts = accepted(provider.casefold())
    behaviour: dict[str, Any] = {"real": True} if real else {}
    if real and "real" not in accepts:
        raise click.UsageError(f"the {provider} simulator has no --real behaviour; leave --real out.")
    if "partition" in accepts:
        behaviour["partition"] = str(partition)
    if checkin_delay is not None or offline_rate:
        if "checkins" not in accepts:
            raise click.UsageError(f"the {provider} simulator has no device check-ins; leave --checkin-delay out.")
        delay = checkin_delay if checkin_delay is not None else 0.0
        behaviour["checkins"] = CheckIns(delay=delay, offline_rate=offline_rate, seed=seed)
    app = make_app(devices=devices, seed=seed, username=username, password=password, faults=faults, **behaviour)

    variables = client_env(provider.casefold(), username=username, password=password, partition=str(partition))
    exports = " ".join(f"{name}={shlex.quote(value)}" for name, value in variables.items())
    setting_flags = setting_words = ""
    for setting in providers.get(provider).extra_settings:
        value = variables.get(setting.variable) if setting.variable else None
        if value:
            setting_flags += f" --{setting.name} {value}"
            setting_words += (
                f"; {setting.label.lower()} {value} (--{setting.name} {value} or {setting.variable}={value})"
            )

    def announce(url: str) -> None:
        click.echo(
            f"{provider} simulator on {url} ({devices} devices, seed {seed}){setting_words}; Ctrl-C stops it.\n"
            f"In another terminal:\n"
            f"  export {exports}\n"
            f"  bulkmdm run JOB --provider {provider.casefold()} --url {url}{setting_flags} --dry-run",
            err=True,
        )
        click.echo(url)
        sys.stdout.flush()

    try:
        serve_forever(app, port=port, announce=announce)
    except OSError as exc:
        import errno

        if exc.errno != errno.EADDRINUSE:
            raise
        raise UsageError(
            f"Port {port} on 127.0.0.1 is already in use; pick another with --port (--port 0 takes any free one)."
        ) from None


@main.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("bulkmdm-demo"),
    show_default=True,
    help="Folder for the demo's job files and reports.",
)
def demo(out: Path) -> None:
    """Start the built-in simulators and run the example jobs against them."""
    from .demo import run_demo

    sys.exit(run_demo(out, echo=lambda text: click.echo(text)))


# -- the web page --------------------------------------------------------------


@main.command()
@_port_option(8765)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="Where the journal and uploaded jobs live (default: your user state folder).",
)
@click.option("--no-browser", is_flag=True, help="Only print the address; do not open a browser.")
@profile_option
def serve(port: int, state_dir: Path | None, no_browser: bool, profile: str | None) -> None:
    """Do the whole job on a local web page: pick a file, dry run, confirm, watch it run, download the report,
    re-run what failed.

    Listens on 127.0.0.1 only and prints the address to open, with a secret in
    it; a request without the secret is refused. Ctrl-C stops it.
    """
    from .engine import state_dir as resolve
    from .web import serve as serve_web

    try:
        serve_web(
            resolve(state_dir, os.environ),
            port=port,
            open_browser=not no_browser,
            echo=lambda text: click.echo(text),
            profile=profile,
        )
    except KeyboardInterrupt:
        click.echo("bulkmdm serve stopped.", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
