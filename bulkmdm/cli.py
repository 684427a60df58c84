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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__
from .errors import BulkMDMError, UsageError

if TYPE_CHECKING:
    from .engine import RunResult
    from .model import Outcome

PROVIDER_NAMES = ("duostation", "manageengine", "ivanti", "banyan")


class _Group(click.Group):
    """Turns every BulkMDMError into one sentence and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BulkMDMError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
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
                f"row; run the same command again to continue. Details for a bug report: {path}", err=True)
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

    text = "".join(traceback.format_exception(exc))
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


@main.command()
@click.argument("job", type=click.Path(path_type=Path))
@click.option("--provider", "-p", required=True, metavar="NAME",
              help="The MDM: duostation, manageengine, ivanti or banyan.")
@click.option("--url", "-u", required=True, metavar="URL", help="The MDM's base address (https://...).")
@click.option("--action", "-a", metavar="ACTION", help="Do this action on every row (else each row's action column).")
@click.option("--report", "-o", type=click.Path(path_type=Path), metavar="OUT",
              help="Where the outcome report goes (.csv or .xlsx). Default: JOB's name + .outcome.")
@click.option("--dry-run", is_flag=True, help="Check every row and look-up; send nothing that changes anything.")
@click.option("--yes", "-y", is_flag=True, help="Confirm destructive actions (wipe, retire, delete-device, delete-user).")
@click.option("--concurrency", "-c", type=int, metavar="N", help="Requests in flight at once.")
@click.option("--rate", "-r", metavar="R", help="Most requests per time, e.g. 20/s or 100/min ('none': no limit).")
@click.option("--partition", metavar="ID", help="Ivanti device space id (or BULKMDM_PARTITION_ID).")
@click.option("--timeout", type=float, default=30.0, show_default=True, metavar="S",
              help="Seconds one request may take before the attempt counts as failed.")
@click.option("--fresh", is_flag=True, help="Ignore what an earlier run of the same job recorded; start over.")
@click.option("--state-dir", type=click.Path(path_type=Path), metavar="DIR",
              help="Where the journal lives (default: your user state folder, or BULKMDM_STATE_DIR).")
@click.option("--max-destructive", type=int, metavar="N", help="Refuse a job that would wipe/retire/delete more than N.")
@click.option("--batch-size", type=int, metavar="N", help="Most devices in one bulk request (Ivanti).")
@click.option("--resend-unknown", is_flag=True,
              help="On resume, resend rows whose request was in flight when the run died (may do them twice).")
@click.option("--verbose", "-v", is_flag=True, help="Log every request (credentials redacted) to stderr.")
def run(job: Path, provider: str, url: str, action: str | None, report: Path | None, dry_run: bool, yes: bool,
        concurrency: int | None, rate: str | None, partition: str | None, timeout: float, fresh: bool,
        state_dir: Path | None, max_destructive: int | None, batch_size: int | None, resend_unknown: bool,
        verbose: bool) -> None:
    """Run the rows of JOB (.csv or .xlsx) against the MDM and write an outcome report.

    Credentials come from the environment: BULKMDM_USERNAME and BULKMDM_PASSWORD
    (duostation, ivanti), BULKMDM_API_KEY or BULKMDM_CLIENT_ID/SECRET/REFRESH_TOKEN
    (manageengine), BULKMDM_TOKEN (banyan).

    Running a report as the job re-runs only its failed, invalid and unknown
    rows. Running the same command after a crash or Ctrl-C continues where it
    stopped.
    """
    from .engine import RunOptions, run_job

    if verbose:
        _log_to_stderr()
    options = RunOptions(
        job=job, provider=provider.casefold(), url=url, action=action, report=report, dry_run=dry_run, yes=yes,
        concurrency=concurrency, rate=rate, partition=partition, timeout=timeout, fresh=fresh, state_dir=state_dir,
        max_destructive=max_destructive, batch_size=batch_size, resend_unknown=resend_unknown,
    )
    events = TerminalEvents() if sys.stderr.isatty() else PlainEvents()
    result = run_job(options, events)
    _summary(result, options, dry_run)
    sys.exit(result.exit_code)


SECRET_VARIABLES = ("BULKMDM_PASSWORD", "BULKMDM_API_KEY", "BULKMDM_TOKEN", "BULKMDM_CLIENT_SECRET",
                    "BULKMDM_REFRESH_TOKEN", "BULKMDM_CLIENT_ID")


class _RedactingEcho(logging.Handler):
    """--verbose: log lines to stderr, with any credential value blanked out.
    (Nothing logs headers; this is the second lock on the door.)"""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.secrets = [v for k in SECRET_VARIABLES if len(v := os.environ.get(k, "")) >= 4]
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        click.echo(text, err=True)


def _log_to_stderr() -> None:
    logger = logging.getLogger("bulkmdm")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        if isinstance(handler, _RedactingEcho):
            logger.removeHandler(handler)
    logger.addHandler(_RedactingEcho())


def _summary(result: RunResult, options: Any, dry_run: bool) -> None:
    """The end of a run: counts, what went wrong grouped by reason, where the report is, and the way on."""
    if result.finished_before is not None:
        _already_finished(result, options)
        return
    counts = result.counts
    order = ["succeeded", "skipped", "planned", "failed", "invalid", "unknown", "not-run"]
    parts = [f"{counts[k]} {k}" for k in order if counts.get(k)]
    took = f" in {result.elapsed:.1f} s" if result.elapsed > 0 and not dry_run else ""
    click.echo(f"{result.rows} rows: " + ", ".join(parts) + took + ".", err=True)
    summary = result.summary
    if dry_run and summary is not None:
        _dry_run_story(summary)
    if dry_run and result.planned_requests is not None:
        click.echo(f"The real run will send {result.planned_requests} request(s) that change something "
                   f"(this dry run made {result.requests} read-only request(s)).", err=True)
    if summary is not None and summary.failures:
        _failures(summary)
    if result.stopped:
        click.echo(result.stopped, err=True)
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


#: how the summary names several rows of a destructive action
_DESTROYS = {"wipe": "wipes", "retire": "retirements", "delete-device": "device deletions",
             "delete-user": "user deletions"}


def _dry_run_story(summary: Any) -> None:
    """What the real run will do, by action, and which rows it destroys."""
    for action, statuses in sorted(summary.by_action.items()):
        parts = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        click.echo(f"  {action}: {parts}", err=True)
    for action, names in sorted(summary.destructive.items()):
        n = summary.destructive_counts[action]
        more = ", ..." if n > len(names) else ""
        click.echo(f"  {n} {_DESTROYS.get(action, action) if n != 1 else action}: {', '.join(names)}{more}",
                   err=True)


def _failures(summary: Any, shown: int = 8) -> None:
    """Rows that went wrong, grouped by reason, the largest groups first."""
    click.echo("What went wrong:", err=True)
    for group in summary.failures[:shown]:
        lines = ", ".join(str(line) for line in group.lines) + (", ..." if group.count > len(group.lines) else "")
        where = f"line {lines}" if group.count == 1 else f"lines {lines}"
        click.echo(f"  {group.count} x {group.reason.rstrip('.')}: {where}", err=True)
    if len(summary.failures) > shown:
        rest = sum(group.count for group in summary.failures[shown:])
        click.echo(f"  {rest} more rows for {len(summary.failures) - shown} other reasons: see the report.", err=True)


def _already_finished(result: RunResult, options: Any) -> None:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(result.finished_before or 0))
    parts = ", ".join(f"{n} {k}" for k, n in sorted(result.counts.items()))
    click.echo(f"This job already ran to the end (run {result.run_id}, finished {when}: {parts}); "
               "nothing was sent.", err=True)
    click.echo(f"Report (kept): {result.report_path}", err=True)
    if result.exit_code:
        click.echo("To retry what did not succeed, run the report:", err=True)
        click.echo("  " + _rerun_command(result.report_path), err=True)
    click.echo("To run every row again:", err=True)
    click.echo("  " + _command(options.job, report=options.report) + " --fresh", err=True)


#: flags a printed command never repeats: they are decisions for one run
_NOT_REPEATED = frozenset({"dry_run", "fresh", "resend_unknown", "verbose", "report"})


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


def _rerun_command(report: Path) -> str:
    """Running the report itself: it writes back to itself unless its name says otherwise."""
    from .engine import default_report_path

    return _command(report, report=None if default_report_path(report) == report else report)


class PlainEvents:
    """Progress as plain lines, for logs and pipes: one every few seconds."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self.total = 0
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self.last = 0.0

    def message(self, text: str) -> None:
        click.echo(text, err=True)

    def start(self, total: int, done: int) -> None:
        self.total = total
        self.started = time.monotonic()
        self.last = self.started

    def advance(self, outcomes: Sequence[Outcome]) -> None:
        for o in outcomes:
            self.counts[str(o.status)] += 1
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            click.echo(self._line(now), err=True)

    def _line(self, now: float) -> str:
        done = sum(self.counts.values())
        elapsed = max(now - self.started, 1e-6)
        speed = done / elapsed
        eta = (self.total - done) / speed if speed > 0 else 0
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        return f"{done}/{self.total} rows ({parts}); {speed:.0f} rows/s, about {eta:.0f} s left"

    def finish(self) -> None:
        pass

    def can_ask(self) -> bool:
        return False

    def confirm(self, prompt: str, expected: str) -> bool:
        return False


class TerminalEvents(PlainEvents):
    """A rich progress bar with counts and ETA."""

    def __init__(self) -> None:
        super().__init__()
        self.progress: Any = None
        self.task: Any = None

    def start(self, total: int, done: int) -> None:
        super().start(total, done)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.console import Console

        self.progress = Progress(
            TextColumn("[bold]rows"), BarColumn(), MofNCompleteColumn(),
            TextColumn("[green]{task.fields[ok]} ok[/] [dim]{task.fields[skip]} skipped[/] "
                       "[red]{task.fields[bad]} failed[/]"),
            TimeRemainingColumn(), console=Console(stderr=True), transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("rows", total=total, ok=0, skip=0, bad=0)

    def advance(self, outcomes: Sequence[Outcome]) -> None:
        for o in outcomes:
            self.counts[str(o.status)] += 1
        if self.progress is not None:
            c = self.counts
            self.progress.update(self.task, advance=len(outcomes), ok=c["succeeded"] + c["planned"],
                                 skip=c["skipped"], bad=c["failed"] + c["invalid"] + c["unknown"])

    def message(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text)
        else:
            click.echo(text, err=True)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def can_ask(self) -> bool:
        return sys.stdin.isatty()

    def confirm(self, prompt: str, expected: str) -> bool:
        self.finish()
        try:
            answer = click.prompt(prompt, default="", show_default=False, err=True)
        except (click.Abort, EOFError):
            return False
        return answer.strip() == expected


# -- journal commands --------------------------------------------------------


@main.command()
@click.option("--state-dir", type=click.Path(path_type=Path), metavar="DIR", help="Where the journal lives.")
@click.option("--limit", type=int, default=20, show_default=True, help="How many runs to list, newest first.")
def runs(state_dir: Path | None, limit: int) -> None:
    """List earlier runs with their row counts (newest first)."""
    from .engine import state_dir as resolve
    from .journal import Journal

    with Journal(resolve(state_dir, os.environ)) as journal:
        listed = journal.runs(limit)
        if not listed:
            click.echo("No runs yet.")
            return
        for info, counts in listed:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.created))
            state = "dry run" if info.dry_run else ("finished" if info.finished else "unfinished")
            parts = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            click.echo(f"{info.id:>4}  {when}  {info.provider:<11} {state:<10} {Path(info.job_path).name}: {parts}")


@main.command()
@click.argument("run_id", metavar="RUN", type=int)
@click.option("--out", "-o", type=click.Path(path_type=Path), help="Write here instead of the run's report path.")
@click.option("--state-dir", type=click.Path(path_type=Path), metavar="DIR", help="Where the journal lives.")
def report(run_id: int, out: Path | None, state_dir: Path | None) -> None:
    """Write RUN's outcome report again from the journal (`bulkmdm runs` lists runs)."""
    from .engine import rebuild_report

    result = rebuild_report(run_id, out=out, state=state_dir)
    click.echo(f"Report: {result.report_path} ({result.rows} rows)")


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


# -- simulators and demo ----------------------------------------------------


@main.command()
@click.argument("provider", type=click.Choice(["duostation", "ivanti", "manageengine", "banyan"],
                                              case_sensitive=False))
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Port on 127.0.0.1 (0: any free port).")
@click.option("--devices", type=int, default=3000, show_default=True, help="How many devices to seed.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed for the fake fleet.")
@click.option("--username", default="admin", show_default=True, help="Basic-auth user name it accepts.")
@click.option("--password", default="admin", show_default=True, help="Basic-auth password it accepts.")
@click.option("--latency", type=float, default=0.0, help="Seconds added to every answer.")
@click.option("--rate-limit", type=float, help="Requests per second allowed; above it: 429 with Retry-After.")
@click.option("--error-rate", type=float, default=0.0, help="Fraction of requests answered 503.")
@click.option("--drop-rate", type=float, default=0.0, help="Fraction of connections dropped before the work.")
@click.option("--drop-after-rate", type=float, default=0.0, help="Fraction dropped after the work is done.")
@click.option("--slow-rate", type=float, default=0.0, help="Fraction answered only after --slow-seconds.")
@click.option("--slow-seconds", type=float, default=5.0, help="How slow a slow answer is.")
def sim(provider: str, port: int, devices: int, seed: int, username: str, password: str, latency: float,
        rate_limit: float | None, error_rate: float, drop_rate: float, drop_after_rate: float, slow_rate: float,
        slow_seconds: float) -> None:
    """Serve a built-in simulator of PROVIDER's API on 127.0.0.1 until Ctrl-C."""
    from .sim import load
    from .sim.common import Faults, serve_forever

    faults = Faults(latency=latency, rate_limit=rate_limit, error_rate=error_rate, drop_rate=drop_rate,
                    drop_after_rate=drop_after_rate, slow_rate=slow_rate, slow_seconds=slow_seconds)
    app = load(provider.casefold())(devices=devices, seed=seed, username=username, password=password, faults=faults)

    creds = {
        "manageengine": "BULKMDM_API_KEY=me-api-key (on-premises), or the OAuth client me-client / me-secret / "
                        "me-refresh with BULKMDM_OAUTH_URL=<url>/oauth/v2/token",
        "banyan": "BULKMDM_TOKEN=banyan-token",
    }.get(provider.casefold(), f"BULKMDM_USERNAME={username} BULKMDM_PASSWORD={password}")

    def announce(url: str) -> None:
        click.echo(f"{provider} simulator on {url}; credentials: {creds}. Ctrl-C stops it.", err=True)
        click.echo(url)
        sys.stdout.flush()

    try:
        serve_forever(app, port=port, announce=announce)
    except OSError as exc:
        import errno

        if exc.errno != errno.EADDRINUSE:
            raise
        raise UsageError(f"Port {port} on 127.0.0.1 is already in use; pick another with --port "
                         "(--port 0 takes any free one).") from None


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("bulkmdm-demo"), show_default=True,
              help="Folder for the demo's job files and reports.")
def demo(out: Path) -> None:
    """Start the built-in simulators and run the example jobs against them."""
    from .demo import run_demo

    sys.exit(run_demo(out, echo=lambda text: click.echo(text)))


if __name__ == "__main__":  # pragma: no cover
    main()
