"""The request budget: pure arithmetic, many tunnels on an injected clock, and real 429s."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tests.fleet.conftest import FakeClock, fleet_config, tunnel_config
from tests.harness import Sim
from tests.waiting import await_until
from tunnelkeeper.cloudflare.api import CloudflareAPI
from tunnelkeeper.cloudflare.budget import WINDOW_SECONDS, RequestWindow, round_interval_seconds
from tunnelkeeper.cloudflare.fleet import FleetPoller
from tunnelkeeper.metrics import Metrics

# --- pure -------------------------------------------------------------------------------------


def test_interval_scales_with_the_number_of_tunnels() -> None:
    assert round_interval_seconds(60, 2, 300) == 60  # few tunnels: poll_seconds rules
    assert round_interval_seconds(60, 80, 100) == 240  # 40 tunnels, budget 100
    # 100 hosts sharing 1200 with headroom: 6 requests/host/5 min, 5 tunnels -> 10/round
    assert round_interval_seconds(60, 10, 6) == 500


@given(
    budget=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 400, allow_nan=False), min_size=1, max_size=300),
)
def test_window_never_admits_more_than_the_budget(budget: int, gaps: list[float]) -> None:
    window = RequestWindow(budget)
    now, sent = 0.0, []
    for gap in gaps:
        now += gap
        if window.has_room(now):
            window.record(now)
            sent.append(now)
        else:
            # waiting as told makes room, and no less
            wait = window.wait_seconds(now)
            assert wait > 0 and window.has_room(now + wait)
    for start in sent:
        assert sum(1 for t in sent if start <= t < start + WINDOW_SECONDS) <= budget


def test_wait_seconds_for_several_requests() -> None:
    window = RequestWindow(3, window_seconds=10)
    for t in (0.0, 1.0, 2.0):
        window.record(t)
    assert window.wait_seconds(5.0, 1) == 5.0  # the oldest leaves at 10
    assert window.wait_seconds(5.0, 2) == 6.0
    assert window.wait_seconds(5.0, 99) == 7.0  # capped at the budget: all three must leave
    assert window.wait_seconds(12.5, 3) == 0.0


# --- many tunnels on an injected clock ---------------------------------------------------------

TUNNELS = [f"t{i:02d}" for i in range(40)]


async def test_forty_tunnels_stay_within_budget(
    tmp_path: Path, sim_factory: Callable[..., Sim], api_factory: Callable[[Sim], CloudflareAPI]
) -> None:
    sim = sim_factory(TUNNELS)
    for budget in (100, 50):  # a full round fits / a round (80 requests) never fits
        clock = FakeClock()
        api = api_factory(sim)
        poller = FleetPoller(
            fleet_config(sim, tmp_path, poll_seconds=30, request_budget=budget),
            [tunnel_config(sim, name) for name in TUNNELS],
            Metrics(),
            api=api,
            local_connectors=lambda _: set(),
            clock=clock,
            rng=random.Random(7),
        )
        assert poller.interval_seconds == 300 * 80 / budget
        sent: list[tuple[float, int]] = []
        for _ in range(8):
            before = api.requests_made
            await poller.poll_once()
            sent.append((clock.now, api.requests_made - before))
            clock.advance(poller.next_delay_seconds())
        # a burst of rounds at one instant adds nothing once the window is full
        for _ in range(5):
            before = api.requests_made
            await poller.poll_once()
            sent.append((clock.now, api.requests_made - before))

        for start, _ in sent:
            in_window = sum(n for t, n in sent if start <= t < start + WINDOW_SECONDS)
            assert in_window <= budget, (budget, start, in_window)
        assert sum(n for _, n in sent) >= 3 * budget  # and it did keep polling
        polled = [t for t in poller.snapshot()["tunnels"] if t["polled_at"] is not None]
        assert len(polled) == len(TUNNELS)  # cut rounds resume where they stopped: none starve


# --- real 429s from the simulator's rate limiter ----------------------------------------------


async def test_backs_off_on_429_honours_retry_after_and_recovers(
    tmp_path: Path, sim_factory: Callable[..., Sim], api_factory: Callable[[Sim], CloudflareAPI]
) -> None:
    limit = 5
    names = TUNNELS[:4]  # 8 requests a round: every round runs into the limit
    sim = sim_factory(
        names,
        "--rate-limit",
        str(limit),
        "--rate-window-seconds",
        "2",
        "--rate-block-seconds",
        "2",
    )
    api = api_factory(sim)
    poller = FleetPoller(
        fleet_config(sim, tmp_path, poll_seconds=0.1, request_budget=1200),
        [tunnel_config(sim, name) for name in names],
        Metrics(),
        api=api,
        local_connectors=lambda _: set(),
    )
    await poller.poll_once()
    assert poller.rate_limited_total == 1 and api.requests_made == limit + 1
    assert poller.snapshot()["rate_limited_for_seconds"] > 0
    before = api.requests_made
    await poller.poll_once()  # still blocked: not a single call
    assert api.requests_made == before
    assert poller.next_delay_seconds() >= 1.0  # retry-after is at least 1 s: no hot loop

    first_polls = {t["name"]: t["polled_at"] for t in poller.snapshot()["tunnels"]}
    task = asyncio.create_task(poller.run())
    try:

        async def recovered() -> bool:
            views = poller.snapshot()["tunnels"]
            # every tunnel polled since, including those the first 429 cut off
            return poller.rate_limited_total >= 3 and all(
                v["polled_at"] is not None and v["polled_at"] != first_polls[v["name"]]
                for v in views
            )

        await await_until(recovered, timeout=45, interval=0.2, what="polling to recover")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # Each 429 blocks the sim for 2 s; a poller that kept calling during the block would collect
    # a 429 per call. Honouring retry-after costs one 429 per `limit` successful requests.
    successes = api.requests_made - poller.rate_limited_total
    assert poller.rate_limited_total <= successes // limit + 1
    assert not any(v["is_stale"] for v in poller.snapshot()["tunnels"])
