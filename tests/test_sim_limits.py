"""The simulator's limit shapes answer as described: a sliding 1-s window
with an exact Retry-After, a token bucket with Retry-After rounded up to whole
seconds, fixed windows with Retry-After to the window's end, a limit halved
and restored on schedule, random 429s whatever the pace; settable over
``/_sim/faults`` and through ``bulkmdm sim``."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner

from bulkmdm.sim.common import FixedWindow, Faults, SimServer, SlidingWindow, TokenBucket, _Limiter, instrument


def test_sliding_window_allows_the_limit_in_any_second_and_says_exactly_when() -> None:
    window = SlidingWindow(3)
    assert [window.allow(t) for t in (0.0, 0.2, 0.4)] == [None, None, None]
    assert window.allow(0.5) == pytest.approx(0.5)  # the request at 0.0 leaves the window at 1.0
    assert window.allow(1.0) is None  # it has left
    assert window.allow(1.0) == pytest.approx(0.2)  # now the one at 0.2 is the oldest


def test_token_bucket_spends_its_burst_then_rounds_retry_after_up() -> None:
    bucket = TokenBucket(10, 2)
    assert bucket.allow(0.0) is None and bucket.allow(0.0) is None  # the burst
    assert bucket.allow(0.0) == 1.0  # a token in 0.1 s, said as a whole second
    assert bucket.allow(0.1) is None  # it came
    assert bucket.allow(0.1) == 1.0
    assert (
        bucket.allow(10.0) is None and bucket.allow(10.0) is None and bucket.allow(10.0) == 1.0
    )  # never past its burst


def test_fixed_window_counts_per_window_and_says_when_it_ends() -> None:
    window = FixedWindow(10, 10.0)  # 100 per 10 s, from the first request
    assert all(window.allow(5.0 + i * 0.01) is None for i in range(100))
    assert window.allow(9.0) == pytest.approx(6.0)  # the window runs 5..15
    assert window.allow(15.0) is None  # a new window
    assert window.counts == [100, 1]


def test_a_limit_halved_and_restored_on_schedule() -> None:
    limiter = _Limiter(Faults(rate_limit=10, limit_halved_at=5.0, limit_restored_at=10.0))

    def allowed_in_second(start: float) -> int:
        return sum(limiter.allow(start + i * 0.01) is None for i in range(100))

    assert allowed_in_second(0.0) == 10
    assert allowed_in_second(6.0) == 5
    assert allowed_in_second(11.0) == 10


def test_an_unknown_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="limit_shape"):
        Faults().update({"limit_shape": "leaky"})


@pytest.fixture
def sim() -> Iterator[SimServer]:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/x", answer)
    with SimServer(instrument(app)) as server:
        yield server


async def test_shapes_are_set_over_sim_faults(sim: SimServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            sim.url + "/_sim/faults", json={"rate_limit": 5, "limit_shape": "bucket", "limit_burst": 1}
        ) as resp:
            assert resp.status == 200
        async with session.get(sim.url + "/x") as resp:
            assert resp.status == 200
        async with session.get(sim.url + "/x") as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "1"
        async with session.post(sim.url + "/_sim/faults", json={"limit_shape": "fixed", "limit_window": 60}) as resp:
            assert resp.status == 200
        statuses = []
        for _ in range(301):
            async with session.get(sim.url + "/x") as resp:
                statuses.append((resp.status, resp.headers.get("Retry-After")))
        assert [s for s, _ in statuses[:300]] == [200] * 300  # 5/s x 60 s in the window
        status, retry_after = statuses[300]
        assert status == 429 and retry_after is not None and 55 < float(retry_after) <= 60
        async with session.post(sim.url + "/_sim/faults", json={"limit_shape": "leaky"}) as resp:
            assert resp.status == 400


async def test_random_429s_come_whatever_the_pace(sim: SimServer) -> None:
    sim.faults.update({"throttle_rate": 0.05, "seed": 4})
    async with aiohttp.ClientSession() as session:
        refused = 0
        for _ in range(400):
            async with session.get(sim.url + "/x") as resp:
                if resp.status == 429:
                    refused += 1
                    assert resp.headers["Retry-After"] == "1"
    assert 8 <= refused <= 40  # 5% of 400 is 20


def test_bulkmdm_sim_takes_the_shapes() -> None:
    from bulkmdm.cli import main

    help_text = CliRunner().invoke(main, ["sim", "--help"]).output
    for option in ("--limit-shape", "--limit-burst", "--limit-window", "--limit-halved-at", "--throttle-rate"):
        assert option in help_text
    done = CliRunner().invoke(main, ["sim", "duostation", "--limit-shape", "leaky"])
    assert done.exit_code == 2 and "leaky" in done.output
