#!/usr/bin/env python3
"""bulkmdm's benchmark: one command, every figure next to its target.

    python bench/run.py            the full bench (about 5 minutes on 2 cores)
    python bench/run.py --quick    small sizes: a smoke run, figures indicative only

Everything runs on 127.0.0.1 against the built-in simulators, each in its own
process (``python -m bulkmdm sim ...``) so that the client and the server get
a core each. Whatever compares is measured side by side in the same run and
printed as a ratio, so a slow or noisy machine moves both sides together:

Every bulkmdm run uses the defaults (no ``--rate``, no ``--concurrency``)
unless a figure says otherwise; noisy figures are repeated (``Sizes.reps``)
and their median is reported, with each repetition in the detail line.

throughput
    rows/s of a DuoSTATION ``message`` job (5 ms server latency), wall time
    of the whole run (read, plan, send, journal, report), next to a naive
    script measured in the same repetition on a sample of the same rows: a
    sequential keep-alive loop doing ``GET /api/devices?serialNumber=`` then
    ``POST /api/devices/<id>/sendmessage`` per row.
requests per row
    a DuoSTATION ``tag`` job (and the time the whole run took) and an Ivanti
    ``lock`` job, every request counted by the simulator (``/_sim/stats``),
    look-ups included.
known rate limit
    the simulator allows N requests in any 1-s window and answers 429 with
    Retry-After above it; ``--rate N/s`` (an explicit rate is a ceiling that
    wins). Counted by the simulator over the sending phase (after the look-ups).
limit shapes
    a default run (no ``--rate``: DuoSTATION starts at 20/s and adapts, no
    ceiling) against each shape the simulator has (``sim.common.Faults``):
    a token bucket of N/s with a burst of 1 s and of 0.2 s of it (Retry-After
    rounded up to whole seconds), a sliding 1-s window (Retry-After exact),
    fixed windows of 10 s and 60 s (Retry-After to the window's end: the
    figure is the share of each whole window's quota used, so the 60-s run
    spans one whole window and a bit), the limit halved and later restored
    (how soon every 2-s span follows it), and 5% random 429s with no limit
    (rows/s until 99% of the rows are done, against the same run without
    them). Requests allowed a second and the share answered 429 come from
    the simulator's own log of the sending phase.
fault mix
    a DuoSTATION ``tag`` job against a server answering 10% 503, 5% 429
    with ``Retry-After: 1``, 3% dropped connections and 2% replies held 2 s
    (``sim.common.FAULT_MIX``, seeded), next to the same job size without
    faults: rows/s of the sending phase, faults / no faults; every row must
    be ``succeeded`` and linked exactly once on the simulator. The figure is
    a 15,000-row job, long enough that the fault-free run reaches its full
    pace (it ramps for its first 3,000 rows, some 3 s) and holds it; a
    3,000-row job is run too and printed in the detail: the fault-free run
    is all ramp, and the faulty run's last rows wait out chains of 429s,
    held replies and backoffs (some 2-3 s, whatever the client) that are
    as long as the whole fault-free run.
unknown capacity
    the simulator serves N requests at a time, S ms each, queues the rest
    and answers 503 past a queue limit; no rate limit. Requests/s served
    over the sending phase as a share of N/S, and the median time a request
    waited in the queue, in service times.
cost
    CPU seconds of the bulkmdm process per row of a ``message`` job at full
    speed (``--rate none``, no server latency), marginal between two job
    sizes (start-up cancels out), next to a bare aiohttp loop in the same
    process sending the same requests (the device list, then one POST per
    row from 64 tasks; every answer read and parsed as bulkmdm must); and
    the larger job's rows/s of its sending phase against the bare loop's
    POSTs. Each repetition runs both side by side; the median ratio counts.
CPU per row
    CPU seconds of the bulkmdm process (the simulator has its own) per row
    of a ``message`` job at full speed (``--rate none``), whole run.
reading
    ``bulkmdm.jobfile.read_job`` next to pandas' openpyxl engine (XLSX) and a
    plain ``csv`` module loop (CSV), each to a list of row tuples.
peak memory
    RSS high-water mark of a child process doing ``bulkmdm run --dry-run`` on
    a 1,000,000-row ``message`` job (every row a distinct message to one of
    the simulator's devices): reading, validation, 1M look-ups and planned
    steps, the journal (1M rows written, 1M outcomes recorded) and the 1M-row
    report, with one read-only request to the MDM.
start-up
    ``bulkmdm --help``, median wall time of several runs.

Generated files live in a temporary folder that is deleted at the end. Exit
code: 0 all figures pass (always 0 with --quick unless the bench itself
broke), 1 some figure fails, 2 the bench broke.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import http.client
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

USER, PASSWORD = "admin", "admin"
CREDS = {"BULKMDM_USERNAME": USER, "BULKMDM_PASSWORD": PASSWORD}
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


@dataclass(frozen=True, slots=True)
class Sizes:
    """What each figure runs on (full bench or --quick)."""

    devices: int = 20_000
    throughput_rows: int = 20_000
    baseline_rows: int = 500
    latency: float = 0.005
    tag_rows: int = 5_000
    ivanti_devices: int = 6_000
    lock_rows: int = 5_000
    limit: int = 50
    known_rows: int = 500
    #: rows of each limit shape's run (at the limit: some 20 s); the fixed
    #: windows' runs span two windows of 10 s and one of 60 s and a bit
    shape_rows: int = 1_000
    fixed10_rows: int = 1_600
    fixed60_rows: int = 3_300
    #: the halved-and-restored run: halved 15 s after its first request, restored 30 s after it
    halved_rows: int = 1_800
    halved_at: float = 15.0
    restored_at: float = 30.0
    #: the random-429s run (and the same without them)
    random_rows: int = 8_000
    #: CPU per row, marginal: two job sizes
    cost_rows: tuple[int, int] = (2_000, 8_000)
    fault_rows: int = 15_000
    #: the short job run beside it (printed in the detail)
    fault_short_rows: int = 3_000
    capacity_rows: int = 2_000
    #: the unknown-capacity server: workers x service seconds, its queue limit
    capacity_workers: int = 8
    service: float = 0.050
    queue_limit: int = 64
    cpu_rows: int = 5_000
    xlsx_rows: int = 100_000
    csv_rows: int = 1_000_000
    startup_runs: int = 7
    #: repetitions of the noisy figures (the median is reported)
    reps: int = 3
    #: seconds with nothing sent before each limited run: a whole empty 1-s window
    quiet: float = 1.1


FULL = Sizes()
QUICK = Sizes(
    devices=1_000,
    throughput_rows=100,
    baseline_rows=10,
    tag_rows=100,
    ivanti_devices=300,
    lock_rows=200,
    known_rows=40,
    shape_rows=40,
    fixed10_rows=40,
    fixed60_rows=40,
    halved_rows=60,
    halved_at=0.4,
    restored_at=0.8,
    random_rows=30,
    cost_rows=(100, 300),
    fault_rows=60,
    fault_short_rows=20,
    capacity_rows=100,
    cpu_rows=100,
    xlsx_rows=1_000,
    csv_rows=2_000,
    startup_runs=3,
    reps=1,
    # the simulator rebuilds its limiter when the limit's settings change (each
    # run sets them), so a smoke run need not wait for an empty window
    quiet=0.0,
)

FIGURES = (
    "throughput",
    "requests",
    "known",
    "shapes",
    "faults",
    "capacity",
    "cost",
    "cpu",
    "reading",
    "memory",
    "startup",
)


@dataclass(slots=True)
class Row:
    """One line of the table."""

    figure: str
    measured: str
    target: str = ""
    ok: bool | None = None  # None: a side-by-side value with no target of its own
    detail: str = ""


@dataclass(slots=True)
class Bench:
    sizes: Sizes
    tmp: Path
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        _print_row(row)


# -- the simulators ------------------------------------------------------------


class Sim:
    """A simulator in its own process, driven over HTTP (``/_sim/...``)."""

    def __init__(self, provider: str, *, devices: int) -> None:
        self.provider = provider
        cmd = [
            sys.executable,
            "-m",
            "bulkmdm",
            "sim",
            provider,
            "--port",
            "0",
            "--devices",
            str(devices),
            "--username",
            USER,
            "--password",
            PASSWORD,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline().strip()  # printed once it listens
            if not line.startswith("http://"):
                raise RuntimeError(f"the {self.provider} simulator did not start")
            self._url = line
        return self._url

    def _call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            return json.loads(resp.read() or b"null")

    def get(self, path: str, **params: Any) -> Any:
        query = ("?" + urlencode(params)) if params else ""
        return self._call("GET", path + query, headers=AUTH)

    def delete(self, path: str) -> None:
        self._call("DELETE", path, headers=AUTH)

    def faults(self, **changes: Any) -> None:
        self._call("POST", "/_sim/faults", changes)

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/stats")  # type: ignore[no-any-return]

    def reset(self) -> None:
        self._call("POST", "/_sim/stats/reset", {})

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def duo_devices(sim: Sim) -> list[dict[str, Any]]:
    """The simulator's devices whose serial number is unique (the fleet holds
    a deliberate duplicate)."""
    devices = sim.get("/api/devices")
    seen = Counter(d.get("serialNumber") for d in devices)
    return [d for d in devices if d.get("serialNumber") and seen[d["serialNumber"]] == 1]


def ivanti_serials(sim: Sim) -> list[str]:
    devices: list[dict[str, Any]] = []
    while True:
        result = sim.get("/api/v1/device", dmPartitionId=1, rows=500, start=len(devices))["result"]
        page = result["searchResults"]
        devices += page
        if not page or len(devices) >= result["totalCount"]:
            break
    seen = Counter(d.get("serialNumber") for d in devices)
    return [d["serialNumber"] for d in devices if d.get("serialNumber") and seen[d["serialNumber"]] == 1]


# -- running bulkmdm -----------------------------------------------------------


@dataclass(slots=True)
class Timed:
    """A run_job result with the wall time of the whole run and of its
    sending phase (from ``Events.start`` to ``Events.finish``)."""

    result: Any
    wall: float
    sending: float
    #: CPU seconds of this process (bulkmdm; the simulator runs in another)
    cpu: float = 0.0
    #: seconds from the start of sending until 99% of the rows were done
    most: float = 0.0
    #: seconds from the start of sending until 1% of the rows were done
    first: float = 0.0


class _Phases:
    """Events that time the sending phase and reset the simulator's counters
    as it starts (so look-ups are left out of rate figures)."""

    def __init__(self, on_start: Callable[[], None] | None) -> None:
        self.on_start = on_start
        self.started = self.finished = 0.0
        #: when 99% of the rows were done (the rest is the retries' tail)
        self.most = 0.0
        #: when 1% of the rows were done (planning and the canary go one at a time)
        self.first = 0.0
        self._total = self._done = 0

    def message(self, text: str) -> None:
        pass

    def start(self, total: int, done: int, counts: Any = None) -> None:
        if self.on_start is not None:
            self.on_start()
        self.started = time.perf_counter()
        self._total, self._done = total, done

    def advance(self, outcomes: Sequence[Any]) -> None:
        self._done += len(outcomes)
        if not self.first and self._done >= 0.01 * self._total:
            self.first = time.perf_counter()
        if not self.most and self._done >= 0.99 * self._total:
            self.most = time.perf_counter()

    def finish(self) -> None:
        self.finished = time.perf_counter()

    def can_ask(self) -> bool:
        return False

    def confirm(self, prompt: str, expected: str) -> bool:
        return False


#: the pacing of the last run (limits.for_run's answer), for the figures' details
LAST_PACING: list[Any] = [None]


def wire_pacing() -> str:
    """Keep the pacing of each run (``limits.for_run``'s answer, which the
    engine asks for) for the figures' details."""
    from bulkmdm import engine, limits

    def observed(*args: Any, **kwargs: Any) -> Any:
        LAST_PACING[0] = limits.for_run(*args, **kwargs)
        return LAST_PACING[0]

    engine.for_run = observed  # type: ignore[attr-defined]
    return "engine calls limits.for_run"


def _pacing_note() -> str:
    pacing = LAST_PACING[0]
    if pacing is None:
        return ""
    rate, conc = pacing.rate, pacing.concurrency
    shown = "none" if rate.rate is None else f"{rate.rate:,.0f}/s"
    limit = "" if rate.stats.limit is None else f", W_max {rate.stats.limit:,.1f}/s"
    return (
        f"pacing: rate {shown}{limit}, {rate.stats.cuts} cut(s), {rate.stats.evidence} 429(s) taken as a limit, "
        f"background {rate.stats.background:.1%}; in flight {conc.limit:.0f} (highest {conc.stats.highest:.0f})"
    )


def run(
    bench: Bench, job: Path, provider: str, sim: Sim, *, on_start: Callable[[], None] | None = None, **options: Any
) -> Timed:
    from bulkmdm.engine import RunOptions, run_job

    state = bench.tmp / f"state-{job.stem}"
    env = dict(CREDS)
    if provider == "ivanti":
        env["BULKMDM_PARTITION_ID"] = "1"
    events = _Phases(on_start)
    options.setdefault("fresh", True)
    cpu = _cpu()
    started = time.perf_counter()
    result = run_job(RunOptions(job=job, provider=provider, url=sim.url, state_dir=state, env=env, **options), events)
    wall = time.perf_counter() - started
    begun = events.started or started
    return Timed(
        result,
        wall,
        (events.finished or time.perf_counter()) - begun,
        _cpu() - cpu,
        (events.most or events.finished or time.perf_counter()) - begun,
        (events.first or events.finished or time.perf_counter()) - begun,
    )


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _counts(result: Any) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(result.counts.items()))


# -- the figures ---------------------------------------------------------------


def naive_loop(sim: Sim, serials: Sequence[str]) -> float:
    """rows/s of the script an admin writes by hand: one look-up and one
    command per row, in sequence, over one kept-alive connection (stdlib
    http.client: no client-side overhead a library would add)."""
    parts = urlsplit(sim.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port)
    post_headers = {**AUTH, "Content-Type": "application/json"}
    started = time.perf_counter()
    for i, serial in enumerate(serials):
        conn.request("GET", "/api/devices?serialNumber=" + quote(serial), headers=AUTH)
        resp = conn.getresponse()
        found = json.loads(resp.read())
        device = found[0] if isinstance(found, list) else found
        body = json.dumps({"message": f"Naive message {i}"})
        conn.request(
            "POST", f"/api/devices/{quote(str(device['id']), safe='')}/sendmessage", body=body, headers=post_headers
        )
        resp = conn.getresponse()
        resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"the naive loop got HTTP {resp.status}")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(serials) / elapsed


def fig_throughput(bench: Bench, duo: Sim, devices: list[dict[str, Any]]) -> None:
    s = bench.sizes
    duo.faults(latency=s.latency, rate_limit=None)
    serials = [d["serialNumber"] for d in devices]
    n = min(s.throughput_rows, len(serials))
    job = write_csv(
        bench.tmp / "throughput.csv",
        ["serial", "message"],
        ((serial, f"Bench message {i}") for i, serial in enumerate(serials[:n])),
    )
    baselines, ratios, runs = [], [], []
    for _ in range(s.reps):
        baseline = naive_loop(duo, serials[n - s.baseline_rows : n])
        timed = run(bench, job, "duostation", duo, action="message")
        baselines.append(baseline)
        ratios.append(n / timed.wall / baseline)
        runs.append(timed)
    ratio = statistics.median(ratios)
    timed = runs[ratios.index(ratio)] if ratio in ratios else runs[-1]
    ok = all(t.result.counts.get("succeeded", 0) == n for t in runs)
    bench.add(
        Row(
            f"throughput: message, {n:,} rows, {s.latency * 1000:g} ms latency, defaults",
            f"{n / timed.wall:,.0f} rows/s = {ratio:.1f}x naive",
            ">= 30x naive",
            ratio >= 30 and ok,
            f"median of {len(ratios)}: {_each(ratios, 'x')}; whole run {timed.wall:.1f} s, sending "
            f"{n / timed.sending:,.0f} rows/s; {_counts(timed.result)}; {_pacing_note()}",
        )
    )
    bench.add(
        Row(
            f"  naive loop, {s.baseline_rows} rows sampled",
            f"{statistics.median(baselines):,.0f} rows/s",
            detail="sequential GET look-up + POST per row, one kept-alive connection",
        )
    )


def _each(values: Sequence[float], unit: str = "", digits: int = 1) -> str:
    return " ".join(f"{v:,.{digits}f}{unit}" for v in values)


def _tag_id(duo: Sim, tag_name: str) -> int:
    return next(int(t["id"]) for t in duo.get("/api/tags") if t["name"] == tag_name)


def _untagged(duo: Sim, devices: list[dict[str, Any]], tag_name: str, count: int) -> list[str]:
    tag = _tag_id(duo, tag_name)
    tagged = {link["deviceId"] for link in duo.get("/api/devicetags") if link["tagId"] == tag}
    return [d["serialNumber"] for d in devices if d["id"] not in tagged][:count]


def _links(duo: Sim, tag_name: str) -> Counter[str]:
    """How many links of this tag each device has (a double send shows as 2)."""
    tag = _tag_id(duo, tag_name)
    return Counter(link["deviceId"] for link in duo.get("/api/devicetags") if link["tagId"] == tag)


def fig_requests(bench: Bench, duo: Sim, devices: list[dict[str, Any]], ivanti: Sim) -> None:
    s = bench.sizes
    duo.faults(latency=0.0, rate_limit=None)
    per_rows: list[float] = []
    walls: list[float] = []
    for tag in ("Reserv", "Sommarlån", "Slöjd")[: s.reps]:
        serials = _untagged(duo, devices, tag, s.tag_rows)
        job = write_csv(bench.tmp / f"tag-{len(walls)}.csv", ["serial", "tag"], ((serial, tag) for serial in serials))
        duo.reset()
        timed = run(bench, job, "duostation", duo, action="tag")
        per_rows.append(duo.stats()["requests"] / len(serials))
        walls.append(timed.wall)
        if timed.result.counts.get("succeeded", 0) != len(serials):
            per_rows[-1] = math.inf
        # the tag goes, with its links, so the figures after this one do not read 5,000 more
        duo.delete(f"/api/tags/{_tag_id(duo, tag)}")
    per_row, wall = statistics.median(per_rows), statistics.median(walls)
    bench.add(
        Row(
            f"requests per row: DuoSTATION tag, {s.tag_rows:,} rows, defaults",
            f"{per_row:.4f}, {wall:.1f} s",
            "<= 1.02, < 10 s",
            per_row <= 1.02 and wall < 10,
            f"median of {len(walls)} runs (one tag each): {_each(per_rows, '', 4)} requests/row, "
            f"{_each(walls, ' s')} whole run; {_counts(timed.result)}; {_pacing_note()}",
        )
    )

    lock = ivanti_serials(ivanti)[: s.lock_rows]
    job = write_csv(bench.tmp / "lock.csv", ["serial"], ((serial,) for serial in lock))
    ivanti.reset()
    timed = run(bench, job, "ivanti", ivanti, action="lock", rate="none", yes=True)
    sent = ivanti.stats()["requests"]
    per_row = sent / len(lock)
    bench.add(
        Row(
            f"requests per row: Ivanti lock, {len(lock):,} rows",
            f"{per_row:.4f}",
            "<= 0.05",
            per_row <= 0.05 and timed.result.counts.get("succeeded", 0) > 0,
            f"{sent:,} requests (device pages, viability checks, locks of 100); "
            f"{_counts(timed.result)} (not ACTIVE: refused up front)",
        )
    )


def fig_faults(bench: Bench, duo: Sim, devices: list[dict[str, Any]]) -> None:
    """The fault mix of issue 11 against the same tag job without faults."""
    from bulkmdm.sim.common import FAULT_MIX

    s = bench.sizes
    by_serial = {d["serialNumber"]: d["id"] for d in devices}
    right = True

    def pair(rows: int, clean_tag: str, faulty_tag: str, seed: int) -> tuple[float, str]:
        """One job size without and with faults: their ratio and a detail."""
        nonlocal right
        rates, tails = [], []
        for tag, faults in ((clean_tag, {}), (faulty_tag, {**FAULT_MIX, "seed": seed})):
            serials = _untagged(duo, devices, tag, rows)  # (read before the faults are on)
            if len(serials) < rows:
                raise RuntimeError(f"only {len(serials):,} devices without the tag {tag!r}")
            job = write_csv(bench.tmp / f"faults-{tag}.csv", ["serial", "tag"], ((x, tag) for x in serials))
            duo.faults(latency=s.latency, rate_limit=None, **faults)
            timed = run(bench, job, "duostation", duo, action="tag")
            duo.faults(**{key: 0.0 for key in FAULT_MIX if key.endswith("_rate")})
            links = _links(duo, tag)
            right = (
                right
                and timed.result.counts.get("succeeded", 0) == len(serials)
                and all(links[by_serial[x]] == 1 for x in serials)
            )
            # the tag goes, with its links: the next run reads the fleet this one read
            # (otherwise each faulty run read the clean run's 15,000 links more)
            duo.delete(f"/api/tags/{_tag_id(duo, tag)}")
            rates.append(len(serials) / timed.sending)
            tails.append(timed.sending - timed.most)
        pacing = LAST_PACING[0]
        cuts = "" if pacing is None else f", {pacing.rate.stats.cuts} cut(s)"
        detail = f"{rates[1]:,.0f}/{rates[0]:,.0f} rows/s, last 1% {tails[1]:.1f}/{tails[0]:.1f} s{cuts}"
        return rates[1] / rates[0], detail

    long_ratios, short_ratios, long_details, short_details = [], [], [], []
    tags = (
        ("Wi-Fi Elev", "Wi-Fi Personal", "Musik", "Bild"),
        ("Skrivare Norra", "Digitala prov", "Idrott", "Trasig"),
        ("Begränsad", "Nationella prov", "Service", "Specialpedagog"),
    )
    for rep, (clean_long, faulty_long, clean_short, faulty_short) in enumerate(tags[: s.reps]):
        ratio, detail = pair(s.fault_rows, clean_long, faulty_long, 11 + rep)
        long_ratios.append(ratio)
        long_details.append(detail)
        ratio, detail = pair(s.fault_short_rows, clean_short, faulty_short, 11 + rep)
        short_ratios.append(ratio)
        short_details.append(detail)
    ratio = statistics.median(long_ratios)
    bench.add(
        Row(
            f"fault mix: DuoSTATION tag, {s.fault_rows:,} rows, defaults",
            f"{ratio:.2f} of fault-free, {'every row right' if right else 'ROWS WRONG'}",
            ">= 0.6, every row right",
            ratio >= 0.6 and right,
            f"median of {len(long_ratios)} (faults/clean, sending phase): {_each(long_ratios, '', 2)} "
            f"({'; '.join(long_details)}); a {s.fault_short_rows:,}-row job: median "
            f"{statistics.median(short_ratios):.2f} ({_each(short_ratios, '', 2)}: {'; '.join(short_details)}), "
            f"all ramp without faults and, with them, a tail of retries waiting out chained 429s (1 s), "
            f"held replies (2 s) and backoffs; 10% 503, 5% 429 Retry-After 1, 3% dropped, 2% held 2 s; "
            f"{_pacing_note()}",
        )
    )


def fig_capacity(bench: Bench, duo: Sim, serials: Sequence[str]) -> None:
    """A server with no rate limit but N workers x S seconds and a queue."""
    s = bench.sizes
    capacity = s.capacity_workers / s.service
    shares, waits, runs = [], [], []
    for rep in range(s.reps):
        rows = serials[rep * s.capacity_rows : (rep + 1) * s.capacity_rows]
        job = write_csv(
            bench.tmp / f"capacity-{rep}.csv",
            ["serial", "message"],
            ((x, f"Capacity message {rep} {i}") for i, x in enumerate(rows)),
        )
        duo.faults(
            latency=0.0,
            rate_limit=None,
            capacity_workers=s.capacity_workers,
            service_seconds=s.service,
            queue_limit=s.queue_limit,
        )
        timed = run(bench, job, "duostation", duo, on_start=duo.reset, action="message")
        stats = duo.stats()
        duo.faults(capacity_workers=None)
        served = stats["requests"] - stats["rejected"]
        span = (stats["last_at"] or 0) - (stats["first_at"] or 0)
        shares.append((served - 1) / span / capacity if span > 0 else 0.0)
        waits.append((stats["queue_wait_median"] or 0.0) / s.service)
        runs.append((timed, stats))
    share, wait = statistics.median(shares), statistics.median(waits)
    timed, stats = runs[-1]
    bench.add(
        Row(
            f"unknown capacity: {s.capacity_workers} workers x {s.service * 1000:g} ms, defaults, "
            f"{s.capacity_rows:,} rows",
            f"{share:.2f} capacity, queueing {wait:.2f} service",
            ">= 0.85, <= 1 service time",
            share >= 0.85 and wait <= 1.0,
            f"capacity {capacity:,.0f} requests/s, queue limit {s.queue_limit}; median of {len(shares)}: "
            f"{_each(shares, '', 2)} of capacity, median queueing {_each(waits, '', 2)} service times; "
            f"{stats['rejected']} x 503 (queue full); {_counts(timed.result)}; {_pacing_note()}",
        )
    )


def fig_cpu(bench: Bench, duo: Sim, serials: Sequence[str]) -> None:
    """CPU of this process (bulkmdm alone: the simulator has its own) per row sent at full speed."""
    s = bench.sizes
    duo.faults(latency=0.0, rate_limit=None)
    rows = serials[: s.cpu_rows]
    job = write_csv(bench.tmp / "cpu.csv", ["serial", "message"], ((x, f"CPU message {i}") for i, x in enumerate(rows)))
    costs = []
    for _ in range(s.reps):
        timed = run(bench, job, "duostation", duo, action="message", rate="none")
        costs.append(timed.cpu / len(rows) * 1e6)
    cost = statistics.median(costs)
    bench.add(
        Row(
            f"CPU per row: message, {len(rows):,} rows, --rate none",
            f"{cost:,.0f} us/row",
            "(tracked: a regression shows)",
            None,
            f"median of {len(costs)}: {_each(costs, ' us', 0)}; read, plan, send, journal, report; "
            f"{_counts(timed.result)}",
        )
    )


def _saturation(
    bench: Bench, duo: Sim, serials: Sequence[str], tag: str, rate: str | None
) -> tuple[float, float, Timed, dict[str, Any]]:
    """(achieved requests/s, share answered 429) of a message job against a
    simulator allowing ``limit`` requests in any 1-s window."""
    s = bench.sizes
    job = write_csv(
        bench.tmp / f"limit-{tag}.csv",
        ["serial", "message"],
        ((serial, f"Limited message {tag} {i}") for i, serial in enumerate(serials)),
    )
    duo.faults(latency=s.latency, rate_limit=s.limit)
    time.sleep(s.quiet)  # an empty window: nothing left over from the run before
    timed = run(bench, job, "duostation", duo, on_start=duo.reset, action="message", rate=rate)
    stats = duo.stats()
    duo.faults(rate_limit=None)
    accepted = stats["requests"] - stats["throttled"]
    span = (stats["last_at"] or 0) - (stats["first_at"] or 0)
    achieved = (accepted - 1) / span if span > 0 else 0.0
    share = stats["throttled"] / max(1, stats["requests"])
    return achieved, share, timed, stats


def fig_known(bench: Bench, duo: Sim, serials: Sequence[str]) -> None:
    n = bench.sizes.limit
    rows = serials[: bench.sizes.known_rows]
    achieved, share, timed, stats = _saturation(bench, duo, rows, "known", f"{n}/s")
    ok = achieved >= 0.95 * n and stats["throttled"] == 0
    bench.add(
        Row(
            f"rate limit {n}/s, known (--rate {n}/s), {len(rows)} rows",
            f"{achieved:.1f}/s = {achieved / n:.2f} N, {stats['throttled']} x 429",
            ">= 0.95 N, 0 x 429",
            ok,
            f"{stats['requests']} requests in {timed.sending:.1f} s; {_counts(timed.result)}",
        )
    )


#: the simulator's limit settings when no limit is on
NO_LIMIT: dict[str, Any] = {
    "rate_limit": None,
    "limit_shape": "sliding",
    "limit_burst": None,
    "limit_window": 10.0,
    "limit_halved_at": None,
    "limit_restored_at": None,
    "throttle_rate": 0.0,
    "seed": None,
}


def _message_job(bench: Bench, serials: Sequence[str], rows: int, tag: str) -> Path:
    """A message job of ``rows`` rows over ``serials`` (cycled: each row a distinct message)."""
    return write_csv(
        bench.tmp / f"shape-{tag}.csv",
        ["serial", "message"],
        ((serials[i % len(serials)], f"Shape {tag} message {i}") for i in range(rows)),
    )


def _shape_run(
    bench: Bench, duo: Sim, serials: Sequence[str], rows: int, tag: str, faults: dict[str, Any]
) -> tuple[Timed, dict[str, Any]]:
    """A default message job against the simulator set to ``faults``; its
    counters from the start of sending."""
    job = _message_job(bench, serials, rows, tag)
    duo.faults(latency=bench.sizes.latency, **{**NO_LIMIT, **faults})
    time.sleep(bench.sizes.quiet)  # an empty window: nothing left over from the run before
    timed = run(bench, job, "duostation", duo, on_start=duo.reset, action="message")
    stats = duo.stats()
    duo.faults(**NO_LIMIT)
    return timed, stats


def _taken(log: Sequence[Sequence[Any]], start: float = -math.inf, end: float = math.inf) -> tuple[float, float]:
    """(requests allowed a second, share answered 429) of the log between ``start`` and ``end``."""
    inside = [(t, ok) for t, ok in log if start <= t <= end]
    allowed = [t for t, ok in inside if ok]
    rate = (len(allowed) - 1) / (allowed[-1] - allowed[0]) if len(allowed) > 1 else 0.0
    return rate, sum(not ok for _, ok in inside) / max(1, len(inside))


def _follows(
    log: Sequence[Sequence[Any]], since: float, until: float, span: float, good: Callable[[float, float], bool]
) -> float:
    """Seconds after ``since`` until the next ``span`` seconds are ``good`` (rate, 429 share); inf: never."""
    for start in _frange(since, until - span, 0.5):
        if good(*_taken(log, start, start + span)):
            return start - since
    return math.inf


def _frange(start: float, end: float, step: float) -> list[float]:
    return [start + i * step for i in range(int((end - start) / step) + 1)]


def _right(timed: Timed, rows: int) -> bool:
    return bool(timed.result.counts.get("succeeded", 0) == rows)


def fig_shapes(bench: Bench, duo: Sim, serials: Sequence[str]) -> None:
    """The limit shapes, each a default run against the simulator (no --rate)."""
    s = bench.sizes
    n = s.limit
    for label, tag, faults in (
        ("token bucket, burst 1 s, Retry-After rounded up", "bucket1", {"limit_shape": "bucket", "limit_burst": n}),
        (
            "token bucket, burst 0.2 s, Retry-After rounded up",
            "bucket02",
            {"limit_shape": "bucket", "limit_burst": n / 5},
        ),
        ("sliding 1-s window, Retry-After exact", "sliding", {"limit_shape": "sliding"}),
    ):
        timed, stats = _shape_run(bench, duo, serials, s.shape_rows, tag, {"rate_limit": n, **faults})
        achieved, share = _taken(stats["log"])
        bench.add(
            Row(
                f"limit {n}/s: {label}, {s.shape_rows:,} rows",
                f"{achieved / n:.2f} N, {share:.1%} x 429",
                ">= 0.9 N, <= 3% x 429, rows right",
                achieved >= 0.9 * n and share <= 0.03 and _right(timed, s.shape_rows),
                f"{achieved:.1f}/s; {stats['requests']} requests, {stats['throttled']} answered 429, sending "
                f"{timed.sending:.1f} s; {_counts(timed.result)}; {_pacing_note()}",
            )
        )
    for span, rows in ((10.0, s.fixed10_rows), (60.0, s.fixed60_rows)):
        timed, stats = _shape_run(
            bench,
            duo,
            serials,
            rows,
            f"fixed{span:g}",
            {"rate_limit": n, "limit_shape": "fixed", "limit_window": span},
        )
        quota = int(n * span)
        windows = stats["limit_windows"]
        full = windows[:-1] or windows
        use = statistics.mean(full) / quota if full else 0.0
        _, share = _taken(stats["log"])
        bench.add(
            Row(
                f"limit {quota:,} per fixed {span:g}-s window, Retry-After to its end, {rows:,} rows",
                f"{use:.2f} of each window, {share:.1%} x 429",
                ">= 0.9, <= 3% x 429, rows right",
                use >= 0.9 and share <= 0.03 and _right(timed, rows),
                f"requests allowed per window (the last one partial): {windows}; {stats['throttled']} answered 429; "
                f"{_counts(timed.result)}; {_pacing_note()}",
            )
        )
    fig_halved(bench, duo, serials)
    fig_random(bench, duo, serials)


def fig_halved(bench: Bench, duo: Sim, serials: Sequence[str]) -> None:
    s = bench.sizes
    n = s.limit
    timed, stats = _shape_run(
        bench,
        duo,
        serials,
        s.halved_rows,
        "halved",
        {"rate_limit": n, "limit_halved_at": s.halved_at, "limit_restored_at": s.restored_at},
    )
    log, first = stats["log"], stats["limit_first_at"] or 0.0
    halved, restored = first + s.halved_at, first + s.restored_at
    end = log[-1][0] if log else restored
    before, _ = _taken(log, first, halved)
    during, during_share = _taken(log, halved + 10, restored)
    after, _ = _taken(log, restored + 10, end)
    _, share = _taken(log)
    # how soon the rate of the next 5 s is at the new limit (down: under it with few 429s)
    down = _follows(
        log, halved, restored, 5.0, lambda rate, share: 0.9 * n / 2 <= rate <= 1.05 * n / 2 and share <= 0.03
    )
    up = _follows(log, restored, end, 5.0, lambda rate, share: rate >= 0.9 * n)
    ok = (
        during >= 0.9 * n / 2
        and during_share <= 0.03
        and after >= 0.9 * n
        and share <= 0.03
        and _right(timed, s.halved_rows)
    )
    bench.add(
        Row(
            f"limit {n}/s halved at {s.halved_at:g} s, restored at {s.restored_at:g} s, {s.halved_rows:,} rows",
            f"{during / (n / 2):.2f} N/2 and {after / n:.2f} N from 10 s after each, {share:.1%} x 429",
            ">= 0.9 of each within 10 s, <= 3% x 429",
            ok,
            f"allowed {before:.1f}/s before the halving, {during:.1f}/s from 10 s after it ({during_share:.1%} x 429), "
            f"{after:.1f}/s from 10 s after the restore; the next 5 s at the new limit {down:.1f} s after the "
            f"halving, {up:.1f} s after the restore; {_counts(timed.result)}; {_pacing_note()}",
        )
    )


def fig_random(bench: Bench, duo: Sim, serials: Sequence[str]) -> None:
    """5% random 429s (Retry-After: 1), no limit, against the same job without them."""
    s = bench.sizes
    rates, wholes, notes, right = [], [], [], True
    for tag, faults in (("clean", {}), ("random", {"throttle_rate": 0.05, "seed": 5})):
        timed, stats = _shape_run(bench, duo, serials, s.random_rows, tag, faults)
        right = right and _right(timed, s.random_rows)
        rates.append(0.99 * s.random_rows / timed.most)
        wholes.append(s.random_rows / timed.sending)
        notes.append(_pacing_note())
    ratio = rates[1] / rates[0]
    bench.add(
        Row(
            f"5% random 429s, no limit, {s.random_rows:,} rows",
            f"{ratio:.2f} of fault-free",
            ">= 0.9, rows right",
            ratio >= 0.9 and right,
            f"rows/s until 99% done {rates[1]:,.0f}/{rates[0]:,.0f}; whole sending phase {wholes[1]:,.0f}/"
            f"{wholes[0]:,.0f} ({wholes[1] / wholes[0]:.2f}: the last rows wait out chained 1-s Retry-Afters); "
            f"with them: {notes[1]}",
        )
    )


async def _bare_loop(url: str, ids: Sequence[str], workers: int) -> float:
    """What bulkmdm sends for a message job, with nothing around it: the
    device list once, then one POST per row from ``workers`` tasks over one
    aiohttp session. Every answer is read and parsed as bulkmdm must (JSON,
    where there is a body; the list too, which bulkmdm reads the serials
    from). The seconds its POSTs took, the list left out as bulkmdm's
    look-ups are."""
    import aiohttp

    todo = iter(enumerate(ids))
    async with aiohttp.ClientSession(headers=AUTH) as session:
        async with session.get(url + "/api/devices") as resp:
            json.loads(await resp.read())

        async def worker() -> None:
            for i, device in todo:
                async with session.post(
                    f"{url}/api/devices/{device}/sendmessage", json={"message": f"Bare message {i}"}
                ) as resp:
                    body = await resp.read()
                    if resp.status >= 300:
                        raise RuntimeError(f"the bare loop got HTTP {resp.status}")
                    if body.strip():
                        json.loads(body)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return time.perf_counter() - started


def fig_cost(bench: Bench, duo: Sim, devices: list[dict[str, Any]]) -> None:
    """CPU per row (marginal, two job sizes) and throughput of bulkmdm with
    --rate none against a bare aiohttp loop sending the same requests, side
    by side in each repetition; the median of the repetitions' ratios."""
    s = bench.sizes
    duo.faults(latency=0.0, **NO_LIMIT)
    small, large = s.cost_rows
    workers = 64
    routes: dict[str, int] = {}
    cpu_ratios, rate_ratios, reps = [], [], []
    for _ in range(s.reps):
        ours: dict[int, tuple[float, float]] = {}
        bare: dict[int, tuple[float, float]] = {}
        for rows in (small, large):
            picked = [devices[i % len(devices)] for i in range(rows)]
            job = write_csv(
                bench.tmp / f"cost-{rows}.csv",
                ["serial", "message"],
                ((d["serialNumber"], f"Cost message {i}") for i, d in enumerate(picked)),
            )
            duo.reset()
            timed = run(bench, job, "duostation", duo, action="message", rate="none")
            routes = duo.stats()["by_route"]
            if not _right(timed, rows):
                raise RuntimeError(f"the cost run did not succeed every row: {_counts(timed.result)}")
            ours[rows] = (timed.cpu, rows / timed.sending)
            cpu = _cpu()
            posting = asyncio.run(_bare_loop(duo.url, [str(d["id"]) for d in picked], workers))
            bare[rows] = (_cpu() - cpu, rows / posting)
        per_row = (ours[large][0] - ours[small][0]) / (large - small) * 1e6
        bare_row = (bare[large][0] - bare[small][0]) / (large - small) * 1e6
        cpu_ratios.append(per_row / bare_row)
        rate_ratios.append(ours[large][1] / bare[large][1])
        reps.append((per_row, bare_row, ours[large][1], bare[large][1], _pacing_note()))
    cpu_ratio, rate_ratio = statistics.median(cpu_ratios), statistics.median(rate_ratios)
    per_row, bare_row, _, _, _ = reps[cpu_ratios.index(cpu_ratio)] if cpu_ratio in cpu_ratios else reps[0]
    shown_cpu = "; ".join(f"{r[0]:,.0f}/{r[1]:,.0f} us" for r in reps)
    bench.add(
        Row(
            f"CPU per row, marginal ({small:,} and {large:,} rows), --rate none",
            f"{per_row:,.0f} us = {cpu_ratio:.2f}x bare",
            "<= 1.3x bare aiohttp loop",
            cpu_ratio <= 1.3,
            f"bare aiohttp loop ({workers} tasks, one session, the device list then a POST per row, every answer "
            f"read and parsed): {bare_row:,.0f} us/row; each repetition (ours/bare): {shown_cpu}; bulkmdm's "
            f"requests at {large:,} rows: {routes}",
        )
    )
    middle = reps[rate_ratios.index(rate_ratio)] if rate_ratio in rate_ratios else reps[0]
    shown_rate = "; ".join(f"{r[2]:,.0f}/{r[3]:,.0f}" for r in reps)
    bench.add(
        Row(
            f"throughput, --rate none, {large:,} rows",
            f"{middle[2]:,.0f} rows/s = {rate_ratio:.2f} of bare",
            ">= 0.8 bare aiohttp loop",
            rate_ratio >= 0.8,
            f"bulkmdm's sending phase against the bare loop's POSTs ({middle[3]:,.0f} rows/s); each repetition "
            f"(ours/bare): {shown_rate}; {middle[4]}",
        )
    )


def _best_of(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def fig_reading(bench: Bench, big_csv: Path) -> None:
    import pandas as pd
    import xlsxwriter

    from bulkmdm.jobfile import read_job

    s = bench.sizes
    xlsx = bench.tmp / "read.xlsx"
    book = xlsxwriter.Workbook(str(xlsx), {"constant_memory": True})
    sheet = book.add_worksheet()
    sheet.write_row(0, 0, ["serial", "action", "tag", "note"])
    for i in range(s.xlsx_rows):
        sheet.write_row(i + 1, 0, [f"C02X{i:08d}", "tag", "Elev-iPad", f"Row {i} of the bench"])
    book.close()
    warm = bench.tmp / "warm.xlsx"
    book = xlsxwriter.Workbook(str(warm))
    book.add_worksheet().write_row(0, 0, ["serial"])
    book.close()
    read_job(warm)  # import calamine and openpyxl before either side is timed
    pd.read_excel(warm, engine="openpyxl")

    def with_openpyxl() -> list[tuple[str, ...]]:
        frame = pd.read_excel(xlsx, engine="openpyxl", dtype=str, keep_default_na=False)
        return list(frame.itertuples(index=False, name=None))

    ours = _best_of(lambda: read_job(xlsx), 1)
    theirs = _best_of(with_openpyxl, 1)
    bench.add(
        Row(
            f"read {s.xlsx_rows:,}-row XLSX (read_job)",
            f"{ours:.2f} s = {theirs / ours:.1f}x faster",
            ">= 3x pandas+openpyxl",
            theirs / ours >= 3,
            "python-calamine via pandas",
        )
    )
    bench.add(Row("  pandas read_excel(engine='openpyxl')", f"{theirs:.2f} s"))

    def plain_csv() -> list[list[str]]:
        with open(big_csv, newline="", encoding="utf-8-sig") as fh:
            return list(csv.reader(fh))

    ours = _best_of(lambda: read_job(big_csv), 1)
    theirs = _best_of(plain_csv, 1)
    bench.add(
        Row(
            f"read {s.csv_rows:,}-row CSV (read_job)",
            f"{ours:.2f} s = {ours / theirs:.2f}x the loop",
            "<= 1.5x plain csv loop",
            ours / theirs <= 1.5,
            "encoding + delimiter detection, pandas C parser, checks per cell",
        )
    )
    bench.add(Row("  plain csv.reader loop", f"{theirs:.2f} s"))


def fig_memory(bench: Bench, duo: Sim, big_csv: Path, rows: int) -> None:
    duo.faults(latency=0.0, rate_limit=None)
    env = {**os.environ, **CREDS, "BULKMDM_STATE_DIR": str(bench.tmp / "state-dry")}
    cmd = [
        sys.executable,
        "-m",
        "bulkmdm",
        "run",
        str(big_csv),
        "--provider",
        "duostation",
        "--url",
        duo.url,
        "--action",
        "message",
        "--dry-run",
        "--report",
        str(bench.tmp / "dry.outcome.csv"),
    ]
    started = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert child.stderr is not None
    errors = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    peak_mb = usage.ru_maxrss * 1024 / 1e6  # ru_maxrss is in KiB on Linux
    if child.returncode != 0:
        raise RuntimeError(f"the dry run exited {child.returncode}: {errors.decode(errors='replace')[-400:]}")
    bench.add(
        Row(
            f"peak memory: {rows:,}-row dry run",
            f"{peak_mb:,.0f} MB",
            "< 1,000 MB",
            peak_mb < 1000,
            f"`bulkmdm run --dry-run` in a child, RSS high-water mark; {wall:.1f} s, {rows / wall:,.0f} rows/s",
        )
    )


def fig_startup(bench: Bench) -> None:
    exe = shutil.which("bulkmdm", path=str(Path(sys.executable).parent)) or shutil.which("bulkmdm")
    cmd = [exe, "--help"] if exe else [sys.executable, "-m", "bulkmdm", "--help"]
    times = []
    for _ in range(bench.sizes.startup_runs):
        started = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    bench.add(
        Row(
            "start-up: bulkmdm --help",
            f"{median:.3f} s",
            "< 0.3 s",
            median < 0.3,
            f"median of {len(times)}: {' '.join(f'{t:.3f}' for t in times)}",
        )
    )


# -- the table -----------------------------------------------------------------

_WIDTHS = (58, 34, 24, 6)


def _print_row(row: Row) -> None:
    result = "" if row.ok is None else "PASS" if row.ok else "FAIL"
    cells = (row.figure, row.measured, row.target, result)
    print("  ".join(c.ljust(w) for c, w in zip(cells, _WIDTHS, strict=True)).rstrip(), flush=True)
    if row.detail:
        print(" " * 4 + row.detail, flush=True)


def _print_header() -> None:
    cells = ("figure", "measured", "target", "result")
    print("  ".join(c.ljust(w) for c, w in zip(cells, _WIDTHS, strict=True)).rstrip())
    print("  ".join("-" * w for w in _WIDTHS))


def _figures(bench: Bench, wanted: set[str], sims: list[Sim]) -> None:  # noqa: C901 (one branch per figure)
    """Measure the wanted figures, in order; simulators started go to ``sims`` (closed by the caller)."""
    sizes = bench.sizes
    needs_duo = wanted - {"startup"}  # every figure but start-up reads the DuoSTATION fleet
    duo = Sim("duostation", devices=sizes.devices) if needs_duo else None
    ivanti = Sim("ivanti", devices=sizes.ivanti_devices) if "requests" in wanted else None
    sims += [s for s in (duo, ivanti) if s is not None]
    devices = duo_devices(duo) if duo is not None else []
    if "throughput" in wanted:
        assert duo is not None
        fig_throughput(bench, duo, devices)
    if "requests" in wanted:
        assert duo is not None and ivanti is not None
        fig_requests(bench, duo, devices, ivanti)
        ivanti.close()
    serials = [d["serialNumber"] for d in devices]
    if "known" in wanted:
        assert duo is not None
        fig_known(bench, duo, serials)
    if "shapes" in wanted:
        assert duo is not None
        fig_shapes(bench, duo, serials)
    if "faults" in wanted:
        assert duo is not None
        fig_faults(bench, duo, devices)
    if "capacity" in wanted:
        assert duo is not None
        fig_capacity(bench, duo, serials)
    if "cost" in wanted:
        assert duo is not None
        fig_cost(bench, duo, devices)
    if "cpu" in wanted:
        assert duo is not None
        fig_cpu(bench, duo, serials)
    big_csv = bench.tmp / "big.csv"
    if wanted & {"reading", "memory"}:
        # A 1M-row message job: every row a distinct message to one of the
        # simulator's devices (cycled), so every row is validated, looked
        # up and planned (a tag job would collapse repeats into skips).
        write_csv(
            big_csv,
            ["serial", "message", "note"],
            ((serials[i % len(serials)], f"Bench message {i}", f"row {i}") for i in range(sizes.csv_rows)),
        )
    if "reading" in wanted:
        fig_reading(bench, big_csv)
    if "memory" in wanted:
        assert duo is not None
        fig_memory(bench, duo, big_csv, sizes.csv_rows)
    if "startup" in wanted:
        fig_startup(bench)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="Measure bulkmdm against its built-in simulators on 127.0.0.1 and print every figure "
        "next to its target (PASS/FAIL). Comparisons are measured side by side in the same run.",
        epilog="Figures: " + ", ".join(FIGURES) + ". The full bench takes about 5 minutes on 2 cores; generated "
        "files go to a temporary folder that is deleted.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes (a smoke run for CI, ~30 s); the figures are indicative only and do not affect the exit code",
    )
    parser.add_argument(
        "--only", metavar="FIGURE[,FIGURE]", default="", help=f"run only these figures ({', '.join(FIGURES)})"
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="the simulator's rate limit N in requests/s for the saturation figures (default: 50)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print where it is")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    if args.limit:
        sizes = Sizes(**{**{f: getattr(sizes, f) for f in sizes.__dataclass_fields__}, "limit": args.limit})
    wanted = {f.strip() for f in args.only.split(",") if f.strip()} or set(FIGURES)
    unknown = wanted - set(FIGURES)
    if unknown:
        parser.error(f"unknown figure(s): {', '.join(sorted(unknown))}")

    tmp = Path(tempfile.mkdtemp(prefix="bulkmdm-bench-"))
    bench = Bench(sizes, tmp)
    sims: list[Sim] = []
    started = time.perf_counter()
    print(
        f"bulkmdm bench{' (--quick: sizes too small for the targets to mean much)' if args.quick else ''}; "
        f"{os.cpu_count()} CPU(s), Python {sys.version.split()[0]}\n"
    )
    print(f"pacing: {wire_pacing()}\n")
    _print_header()
    try:
        _figures(bench, wanted, sims)
    except Exception:
        traceback.print_exc()
        print("\nThe bench broke before it finished (see above).")
        return 2
    finally:
        for sim in sims:
            sim.close()
        if args.keep:
            print(f"\nFiles kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    failed = [r for r in bench.rows if r.ok is False]
    total = time.perf_counter() - started
    print(f"\n{len([r for r in bench.rows if r.ok is not None])} figures, {len(failed)} failing, in {total:.0f} s.")
    if args.quick:
        return 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
