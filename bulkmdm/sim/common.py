"""What every simulator shares: fault injection, rate limiting, latency,
request counting, and a way to run a simulator on loopback (in a background
thread for tests, or in the foreground for ``bulkmdm sim``).

Fault switches (:class:`Faults`) can be changed while the server runs, from
Python (``sim.faults.error_rate = 0.2``) or over HTTP: ``POST /_sim/faults``
with a JSON object of the fields to change. ``GET /_sim/stats`` returns the
request counters. A simulator whose devices check in (:class:`CheckIns`:
Ivanti, ManageEngine) adds ``GET``/``POST /_sim/checkins`` (the delay, the
offline devices) and ``POST /_sim/checkins/now``. These ``/_sim`` paths need
no credentials and exist only in the simulator.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import heapq
import itertools
import math
import random
import statistics
import threading
import time
import warnings
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")

#: The bench's fault mix: 10% 503, 5% 429 with Retry-After: 1, 3%
#: dropped connections (half before the work, half after it), 2% replies
#: held for 2 s. Set it with ``faults.update(FAULT_MIX)`` (or POST it to
#: /_sim/faults) together with a ``seed``.
FAULT_MIX: dict[str, Any] = {
    "error_rate": 0.10,
    "error_status": 503,
    "throttle_rate": 0.05,
    "throttle_retry_after": 1.0,
    "drop_rate": 0.015,
    "drop_after_rate": 0.015,
    "slow_rate": 0.02,
    "slow_seconds": 2.0,
}


#: How a simulator's rate limit counts (``Faults.limit_shape``).
LIMIT_SHAPES = ("sliding", "bucket", "fixed")


@dataclass
class Faults:
    """Switches for misbehaviour. Rates are fractions of requests (0..1)."""

    #: seconds added before every answer
    latency: float = 0.0
    #: answer this fraction with ``error_status`` before doing anything
    error_rate: float = 0.0
    error_status: int = 503
    #: close the connection without an answer, before doing anything
    drop_rate: float = 0.0
    #: do the work, then close the connection without an answer
    drop_after_rate: float = 0.0
    #: do the work, then answer ``gateway_status`` as a gateway whose backend
    #: was slow (a load balancer's 504 after the backend applied the change)
    gateway_after_rate: float = 0.0
    gateway_status: int = 504
    #: do the work, then wait ``slow_seconds`` before answering
    slow_rate: float = 0.0
    slow_seconds: float = 5.0
    #: requests per second allowed (None: no limit); above it: 429 with
    #: Retry-After, counted as ``limit_shape`` says (see :func:`limit_shape`)
    rate_limit: float | None = None
    #: how the limit counts: "sliding" (at most the limit in any one second;
    #: Retry-After exact), "bucket" (a token bucket of ``limit_burst`` tokens
    #: filled at the limit; Retry-After rounded up to whole seconds, as
    #: gateways send it), "fixed" (the limit x ``limit_window`` requests per
    #: window of ``limit_window`` seconds; Retry-After to the window's end)
    limit_shape: str = "sliding"
    #: the bucket's tokens (None: one second of the limit)
    limit_burst: float | None = None
    #: the fixed window's span (seconds)
    limit_window: float = 10.0
    #: the limit is halved this many seconds after the first request it
    #: counts, and restored at ``limit_restored_at`` (None: never)
    limit_halved_at: float | None = None
    limit_restored_at: float | None = None
    #: the Retry-After sent with a 429 (seconds); None: computed from the limit
    retry_after: float | None = None
    #: answer this fraction 429 with ``Retry-After: throttle_retry_after``,
    #: whatever the pace (a quota shared with other integrations, a gateway)
    throttle_rate: float = 0.0
    throttle_retry_after: float = 1.0
    #: finite capacity with no rate limit: ``capacity_workers`` requests are
    #: served at a time, each taking ``service_seconds``; the rest queue, and
    #: past ``queue_limit`` waiting (None: no limit) they are answered 503
    capacity_workers: int | None = None
    service_seconds: float = 0.0
    queue_limit: int | None = None
    #: apply faults only to requests that change something (not GET)
    mutating_only: bool = False
    seed: int | None = None

    def update(self, changes: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        for key, value in changes.items():
            if key not in names:
                raise KeyError(key)
            if key == "limit_shape" and value not in LIMIT_SHAPES:
                raise ValueError(f"limit_shape {value!r} is not one of {', '.join(LIMIT_SHAPES)}")
            setattr(self, key, value)


@dataclass
class Stats:
    requests: int = 0
    mutating: int = 0
    throttled: int = 0
    faults: int = 0
    #: answered 503 because the capacity queue was full
    rejected: int = 0
    #: seconds each request waited in the capacity queue (the most recent ones)
    queue_waits: list[float] = field(default_factory=list)
    by_route: Counter[str] = field(default_factory=Counter)
    first_at: float | None = None
    last_at: float | None = None
    #: (when, allowed) of each request while a limit or random 429s are on (the most recent ones)
    log: list[tuple[float, bool]] = field(default_factory=list)
    #: when the limit counted its first request, and (fixed windows) the requests each window allowed
    limit_first_at: float | None = None
    limit_windows: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["by_route"] = dict(self.by_route)
        waits = out.pop("queue_waits")
        out["queued"] = len(waits)
        out["queue_wait_median"] = statistics.median(waits) if waits else None
        return out


class SlidingWindow:
    """At most ``rate`` requests in any one second; Retry-After exact (until
    the oldest request of the last second leaves it)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.times: deque[float] = deque()

    def allow(self, now: float) -> float | None:
        """None: allowed (and counted); else the Retry-After to send (seconds)."""
        times = self.times
        while times and times[0] <= now - 1.0:
            times.popleft()
        if len(times) < max(1, int(self.rate)):
            times.append(now)
            return None
        return max(0.001, times[-max(1, int(self.rate))] + 1.0 - now)


class TokenBucket:
    """A bucket of ``burst`` tokens filled at ``rate`` a second, one token a
    request; Retry-After rounded up to whole seconds (HTTP's delta-seconds)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.tokens = self.burst
        self._filled: float | None = None

    def allow(self, now: float) -> float | None:
        if self._filled is not None:
            self.tokens = min(self.burst, self.tokens + (now - self._filled) * self.rate)
        self._filled = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return float(math.ceil((1.0 - self.tokens) / self.rate))


class FixedWindow:
    """``rate x span`` requests per window of ``span`` seconds, windows counted
    from the first request; Retry-After to the window's end."""

    def __init__(self, rate: float, span: float) -> None:
        self.rate = rate
        self.span = span
        self._origin: float | None = None
        self._index = -1
        self.count = 0
        #: requests allowed in each window so far
        self.counts: list[int] = []

    def allow(self, now: float) -> float | None:
        if self._origin is None:
            self._origin = now
        index = math.floor((now - self._origin) / self.span)
        if index != self._index:
            self._index, self.count = index, 0
            self.counts.append(0)
        if self.count < max(1, int(self.rate * self.span)):
            self.count += 1
            self.counts[-1] += 1
            return None
        return max(0.001, self._origin + (index + 1) * self.span - now)


Limit = SlidingWindow | TokenBucket | FixedWindow


def limit_shape(faults: Faults) -> Limit | None:
    """The limit the fault settings describe (None: no limit)."""
    rate = faults.rate_limit
    if not rate:
        return None
    if faults.limit_shape == "bucket":
        return TokenBucket(rate, faults.limit_burst if faults.limit_burst is not None else rate)
    if faults.limit_shape == "fixed":
        return FixedWindow(rate, faults.limit_window)
    if faults.limit_shape == "sliding":
        return SlidingWindow(rate)
    raise ValueError(f"limit_shape {faults.limit_shape!r} is not sliding, bucket or fixed")


class _Limiter:
    """The simulator's limit, rebuilt when its settings change; halved and
    restored on the schedule the settings give."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._key: tuple[Any, ...] = ()
        self.limit: Limit | None = None
        self.first: float | None = None

    def allow(self, now: float) -> float | None:
        faults = self.faults
        key = (faults.rate_limit, faults.limit_shape, faults.limit_burst, faults.limit_window)
        if key != self._key:
            self._key, self.limit, self.first = key, limit_shape(faults), None
        if self.limit is None or faults.rate_limit is None:
            return None
        if self.first is None:
            self.first = now
        since = now - self.first
        halved = faults.limit_halved_at is not None and since >= faults.limit_halved_at
        restored = faults.limit_restored_at is not None and since >= faults.limit_restored_at
        self.limit.rate = faults.rate_limit / 2 if halved and not restored else faults.rate_limit
        return self.limit.allow(now)


def basic_credentials(header: str) -> tuple[str, str] | None:
    """The (user name, password) of an ``Authorization: Basic ...`` header (RFC 7617);
    None for any other scheme or a value that is not base64 of ``user:password``."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.casefold() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, ValueError):
        return None
    return (user, password) if sep else None


def auth_middleware(accepts: Callable[[str], bool], refusal: Callable[[], web.StreamResponse]) -> Any:
    """Answer ``refusal()`` to a request whose ``Authorization`` header ``accepts`` does not
    take; the simulator's own ``/_sim`` paths need none."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_sim") or accepts(request.headers.get("Authorization", "")):
            return await handler(request)
        return refusal()

    return middleware


def fault_middleware(faults: Faults, stats: Stats) -> Any:
    rng = random.Random(faults.seed)
    seeded = [faults.seed]
    limiter = _Limiter(faults)
    capacity = _Capacity(
        lambda request, handler: faulty(
            request, handler, request.method not in ("GET", "HEAD") or not faults.mutating_only
        )
    )

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if faults.seed != seeded[0]:  # a seed set while running takes effect
            seeded[0] = faults.seed
            rng.seed(faults.seed)
        if request.path.startswith("/_sim"):
            return await handler(request)
        now = time.monotonic()
        stats.requests += 1
        stats.first_at = stats.first_at or now
        stats.last_at = now
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else request.path
        stats.by_route[f"{request.method} {route}"] += 1
        mutating = request.method not in ("GET", "HEAD")
        if mutating:
            stats.mutating += 1
        wait = limiter.allow(now)
        if wait is not None and faults.retry_after is not None:
            wait = faults.retry_after
        if limiter.limit is not None:
            stats.limit_first_at = limiter.first
            if isinstance(limiter.limit, FixedWindow):
                stats.limit_windows = limiter.limit.counts
        eligible = mutating or not faults.mutating_only
        if wait is None and eligible and faults.throttle_rate and rng.random() < faults.throttle_rate:
            wait = faults.throttle_retry_after
        if faults.rate_limit or faults.throttle_rate:
            _keep(stats.log, (now, wait is None))
        if wait is not None:
            stats.throttled += 1
            return web.json_response(
                {"message": "Too many requests"},
                status=429,
                headers={"Retry-After": f"{wait:.3f}".rstrip("0").rstrip(".")},
            )
        if faults.capacity_workers:
            return await capacity.serve(request, handler, faults, stats)
        return await faulty(request, handler, eligible)

    async def faulty(request: web.Request, handler: Handler, eligible: bool) -> web.StreamResponse:
        if faults.latency:
            await asyncio.sleep(faults.latency)
        if eligible and faults.error_rate and rng.random() < faults.error_rate:
            stats.faults += 1
            return web.json_response({"message": "Service temporarily unavailable"}, status=faults.error_status)
        if eligible and faults.drop_rate and rng.random() < faults.drop_rate:
            stats.faults += 1
            _drop(request)
            raise asyncio.CancelledError
        response = await handler(request)
        if eligible and faults.drop_after_rate and rng.random() < faults.drop_after_rate:
            stats.faults += 1
            _drop(request)
            raise asyncio.CancelledError
        if eligible and faults.gateway_after_rate and rng.random() < faults.gateway_after_rate:
            stats.faults += 1
            return web.Response(text=_GATEWAY_PAGE, status=faults.gateway_status, content_type="text/html")
        if eligible and faults.slow_rate and rng.random() < faults.slow_rate:
            stats.faults += 1
            await asyncio.sleep(faults.slow_seconds)
        return response

    return middleware


#: what a gateway (nginx) answers in place of a backend's answer
_GATEWAY_PAGE = "<html><head><title>Gateway</title></head><body><center><h1>Gateway error</h1></center></body></html>"


class _Capacity:
    """N workers x S seconds of service, a queue, 503 past the queue's limit
    (``Faults.capacity_workers``, ``service_seconds``, ``queue_limit``)."""

    def __init__(self, inner: Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]) -> None:
        self.inner = inner
        self.busy = 0
        self.waiting: list[asyncio.Future[None]] = []

    async def serve(self, request: web.Request, handler: Handler, faults: Faults, stats: Stats) -> web.StreamResponse:
        workers = max(1, int(faults.capacity_workers or 1))
        if self.busy >= workers:
            if faults.queue_limit is not None and len(self.waiting) >= faults.queue_limit:
                stats.rejected += 1
                return web.json_response({"message": "Server busy"}, status=503)
            queued = time.monotonic()
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiting.append(waiter)
            try:
                await waiter  # handed a worker by the one that finished
            except BaseException:
                if waiter in self.waiting:
                    self.waiting.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._hand_over()
                raise
            _keep(stats.queue_waits, time.monotonic() - queued)
        else:
            self.busy += 1
            _keep(stats.queue_waits, 0.0)
        try:
            if faults.service_seconds:
                await asyncio.sleep(faults.service_seconds)
            return await self.inner(request, handler)
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        """A worker is free: give it to the first in the queue (it stays busy)."""
        while self.waiting:
            waiter = self.waiting.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return
        self.busy -= 1


def _keep(values: list[T], value: T, most: int = 100_000) -> None:
    if len(values) >= most:
        del values[: most // 2]
    values.append(value)


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


@dataclass
class CheckIns:
    """When simulated devices take the commands queued for them, as a fleet does.

    ``delay`` None (the default): at once, when the MDM accepts them (fast
    tests). A number: a device takes what is queued for it at its next
    check-in, about ``delay`` seconds after the command (each device between
    half and one and a half times it, the same every time), and an offline
    device (``offline_rate`` of the fleet, chosen by device id and ``seed``,
    or named in ``offline``) never does. ``POST /_sim/checkins`` changes these
    (JSON), ``GET /_sim/checkins`` shows them, and ``POST /_sim/checkins/now``
    makes every online device with a queued command check in at once."""

    delay: float | None = None
    offline_rate: float = 0.0
    #: device ids (as text) that never check in
    offline: list[str] = field(default_factory=list)
    seed: int = 0
    #: queued commands, a heap: (when the device takes it, epoch seconds; order; device id; what it does then)
    queue: list[tuple[float, int, str, Callable[[], None]]] = field(default_factory=list, repr=False)
    #: commands due on devices that are offline, until they come back
    held: list[tuple[float, int, str, Callable[[], None]]] = field(default_factory=list, repr=False)
    #: commands devices have taken
    taken: int = 0
    #: the order commands were sent in (ties of the heap)
    sent: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def is_offline(self, device: str) -> bool:
        if device in self.offline:
            return True
        return self.offline_rate > 0 and random.Random(f"{self.seed}:offline:{device}").random() < self.offline_rate

    def later(self, device: str, take: Callable[[], None]) -> None:
        """The device takes ``take`` at its next check-in (at once without a delay)."""
        if self.delay is None:
            take()
            return
        spread = 0.5 + random.Random(f"{self.seed}:delay:{device}").random()
        heapq.heappush(self.queue, (time.time() + self.delay * spread, next(self.sent), device, take))

    def settle(self, *, everyone: bool = False) -> int:
        """Devices whose check-in is due (``everyone``: every online one) take
        their queued commands, in the order they were sent; how many were taken."""
        now, taken = time.time(), 0
        while self.queue and (everyone or self.queue[0][0] <= now):
            item = heapq.heappop(self.queue)
            if self.is_offline(item[2]):
                self.held.append(item)
                continue
            item[3]()
            taken += 1
        self.taken += taken
        return taken

    def as_dict(self) -> dict[str, Any]:
        return {
            "delay": self.delay,
            "offline_rate": self.offline_rate,
            "offline": list(self.offline),
            "seed": self.seed,
            "queued": len(self.queue) + len(self.held),
            "taken": self.taken,
        }

    def update(self, changes: dict[str, Any]) -> None:
        for name, value in changes.items():
            if name not in ("delay", "offline_rate", "offline", "seed"):
                raise KeyError(name)
            setattr(self, name, [str(v) for v in value] if name == "offline" else value)
        # devices back online take what waited for them at their next check-in
        for item in self.held:
            heapq.heappush(self.queue, item)
        self.held.clear()


def checkin_middleware(checkins: CheckIns) -> Any:
    """Before every request to the API, the devices whose check-in is due take their commands."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if checkins.queue and not request.path.startswith("/_sim"):
            checkins.settle()
        return await handler(request)

    return middleware


def add_checkin_routes(app: web.Application, checkins: CheckIns) -> None:
    async def get_checkins(request: web.Request) -> web.Response:
        return web.json_response(checkins.as_dict())

    async def set_checkins(request: web.Request) -> web.Response:
        try:
            checkins.update(await request.json())
        except (KeyError, ValueError, TypeError) as exc:
            return web.json_response({"message": f"bad check-in setting: {exc}"}, status=400)
        return web.json_response(checkins.as_dict())

    async def check_in_now(request: web.Request) -> web.Response:
        checkins.settle(everyone=True)
        return web.json_response(checkins.as_dict())

    app.router.add_get("/_sim/checkins", get_checkins)
    app.router.add_post("/_sim/checkins", set_checkins)
    app.router.add_post("/_sim/checkins/now", check_in_now)


def add_control_routes(app: web.Application, faults: Faults, stats: Stats) -> None:
    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats.as_dict())

    async def reset_stats(request: web.Request) -> web.Response:
        fresh = Stats()
        for f in fields(Stats):
            setattr(stats, f.name, getattr(fresh, f.name))
        return web.json_response(stats.as_dict())

    async def get_faults(request: web.Request) -> web.Response:
        return web.json_response(asdict(faults))

    async def set_faults(request: web.Request) -> web.Response:
        try:
            faults.update(await request.json())
        except (KeyError, ValueError) as exc:
            return web.json_response({"message": f"bad fault setting: {exc}"}, status=400)
        return web.json_response(asdict(faults))

    app.router.add_get("/_sim/stats", get_stats)
    app.router.add_post("/_sim/stats/reset", reset_stats)
    app.router.add_get("/_sim/faults", get_faults)
    app.router.add_post("/_sim/faults", set_faults)


def instrument(app: web.Application, faults: Faults | None = None, checkins: CheckIns | None = None) -> web.Application:
    """Give ``app`` fault switches, counters and the /_sim control routes
    (and, with ``checkins``, devices that take commands when they check in).

    Call before the app's own routes are frozen (i.e. inside ``make_app``)."""
    faults = faults or Faults()
    stats = Stats()
    with warnings.catch_warnings():
        # plain string keys are this module's documented API (app["faults"])
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        app["faults"] = faults
        app["stats"] = stats
        if checkins is not None:
            app["checkins"] = checkins
    if checkins is not None:
        app.middlewares.insert(0, checkin_middleware(checkins))
        add_checkin_routes(app, checkins)
    app.middlewares.insert(0, fault_middleware(faults, stats))
    add_control_routes(app, faults, stats)
    return app


class SimServer:
    """Runs a simulator app on 127.0.0.1 in a background thread.

    >>> with SimServer(make_app()) as sim:
    ...     sim.url, sim.app["faults"], sim.app["stats"]
    """

    def __init__(self, app: web.Application, *, port: int = 0) -> None:
        self.app = app
        self.port = port
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def faults(self) -> Faults:
        return self.app["faults"]  # type: ignore[no-any-return]

    @property
    def stats(self) -> Stats:
        return self.app["stats"]  # type: ignore[no-any-return]

    def __enter__(self) -> SimServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bulkmdm-sim", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        if not self.url:
            raise RuntimeError("simulator did not start within 30 s")

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._start())
        except BaseException as exc:  # surfaced to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
        loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop thread (to read or change state safely)."""
        assert self._loop is not None
        done = threading.Event()
        box: dict[str, Any] = {}

        def wrapper() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:
                box["error"] = exc
            done.set()

        self._loop.call_soon_threadsafe(wrapper)
        done.wait(30)
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


def serve_forever(app: web.Application, *, port: int, announce: Callable[[str], None] = print) -> None:
    """Run a simulator in the foreground until Ctrl-C (``bulkmdm sim``)."""

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        announce(f"http://127.0.0.1:{sock.getsockname()[1]}")
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
