"""Scheduled refresh: fire times (incl. DST in a non-UTC zone), catch-up, retry, persistence.

Pure functions get explicit datetimes; the scheduler runs on a real event loop with an injected
wall clock that the test moves.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.waiting import await_until
from tunnelkeeper.cloudflare.schedule import (
    STATE_FILE,
    RefreshScheduler,
    is_catch_up_due,
    next_fire_time,
    retry_delay_seconds,
)
from tunnelkeeper.config.model import (
    CloudflaredConfig,
    Config,
    DaemonConfig,
    FileSourceConfig,
    FleetConfig,
    TunnelConfig,
)

BERLIN = "Europe/Berlin"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# --- next_fire_time --------------------------------------------------------------------------


def test_daily_fire_time_is_local_time_in_the_zone() -> None:
    # 03:00 in Berlin in winter is 02:00 UTC, in summer 01:00 UTC
    assert next_fire_time("0 3 * * *", BERLIN, utc(2026, 1, 10, 12)) == utc(2026, 1, 11, 2)
    assert next_fire_time("0 3 * * *", BERLIN, utc(2026, 7, 10, 12)) == utc(2026, 7, 11, 1)


def test_fire_time_is_strictly_after() -> None:
    assert next_fire_time("0 3 * * *", "UTC", utc(2026, 1, 10, 3)) == utc(2026, 1, 11, 3)
    assert next_fire_time("0 3 * * *", "UTC", utc(2026, 1, 10, 2, 59, 59)) == utc(2026, 1, 10, 3)


def test_monthly_schedule_in_new_york() -> None:
    # 1st of the month 03:00 America/New_York (EST, UTC-5 in February; EDT, UTC-4 in April)
    assert next_fire_time("0 3 1 * *", "America/New_York", utc(2026, 1, 15)) == utc(2026, 2, 1, 8)
    assert next_fire_time("0 3 1 * *", "America/New_York", utc(2026, 3, 15)) == utc(2026, 4, 1, 7)


def test_spring_forward_nonexistent_time_fires_once_that_day() -> None:
    # 2026-03-29 Berlin: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day
    expr = "30 2 * * *"
    first = next_fire_time(expr, BERLIN, utc(2026, 3, 28, 12))
    assert first is not None
    assert utc(2026, 3, 29, 0) <= first < utc(2026, 3, 29, 2)  # once, in the morning
    second = next_fire_time(expr, BERLIN, first)
    assert second == utc(2026, 3, 30, 0, 30)  # 02:30 CEST the next day


def test_fall_back_repeated_time_fires_once_at_its_first_occurrence() -> None:
    # 2026-10-25 Berlin: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice
    expr = "30 2 * * *"
    first = next_fire_time(expr, BERLIN, utc(2026, 10, 24, 12))
    assert first == utc(2026, 10, 25, 0, 30)  # 02:30 CEST
    # not again at 02:30 CET (01:30 UTC) the same night
    assert next_fire_time(expr, BERLIN, first) == utc(2026, 10, 26, 1, 30)
    # restarting between the two occurrences does not fire the second one either
    assert next_fire_time(expr, BERLIN, utc(2026, 10, 25, 1, 0)) == utc(2026, 10, 26, 1, 30)


def test_hourly_schedule_keeps_firing_across_spring_forward() -> None:
    fires = []
    at = utc(2026, 3, 29, 0, 0, 1)
    for _ in range(3):
        nxt = next_fire_time("0 * * * *", BERLIN, at)
        assert nxt is not None
        fires.append(nxt)
        at = nxt
    assert fires == [utc(2026, 3, 29, 1), utc(2026, 3, 29, 2), utc(2026, 3, 29, 3)]


# --- is_catch_up_due --------------------------------------------------------------------------


def test_catch_up_due_when_a_fire_time_passed_since_the_last_run() -> None:
    expr = "0 3 1 * *"  # monthly
    last = utc(2026, 1, 1, 3)
    assert not is_catch_up_due(expr, "UTC", last, utc(2026, 1, 31, 23))
    assert is_catch_up_due(expr, "UTC", last, utc(2026, 2, 1, 3))
    # many missed fire times are still one boolean: one catch-up, not many
    assert is_catch_up_due(expr, "UTC", last, utc(2026, 9, 1))


def test_catch_up_across_fall_back_in_berlin() -> None:
    expr = "30 2 * * *"
    last = utc(2026, 10, 25, 0, 30)  # ran at the first 02:30
    assert not is_catch_up_due(expr, BERLIN, last, utc(2026, 10, 25, 1, 45))  # second 02:30
    assert is_catch_up_due(expr, BERLIN, last, utc(2026, 10, 26, 1, 30))


def test_retry_delay_grows_and_is_capped() -> None:
    assert [retry_delay_seconds(n) for n in (1, 2, 3)] == [60.0, 120.0, 240.0]
    assert retry_delay_seconds(50) == 3600.0


# --- the scheduler ----------------------------------------------------------------------------


class WallClock:
    def __init__(self, at: datetime) -> None:
        self.at = at
        self.reads = 0

    def __call__(self) -> datetime:
        self.reads += 1
        return self.at


def config(tmp_path: Path, schedule: str = "0 3 * * *", timezone: str = "UTC") -> Config:
    return Config(
        path=tmp_path / "tk.toml",
        daemon=DaemonConfig(host="test"),
        cloudflared=CloudflaredConfig(),
        tunnels=(
            TunnelConfig(
                name="portal",
                token=FileSourceConfig(tmp_path / "portal.token"),
                refresh_schedule=schedule,
                refresh_timezone=timezone,
            ),
            TunnelConfig(name="unscheduled", token=FileSourceConfig(tmp_path / "x.token")),
        ),
        fleet=FleetConfig(account_id="0" * 32, api_token_file=tmp_path / "api.token"),
    )


class Refresher:
    def __init__(self) -> None:
        self.calls: list[tuple[str, datetime]] = []
        self.fail = 0  # fail this many more calls
        self.clock: WallClock | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self, tunnel: TunnelConfig) -> None:
        assert self.clock is not None
        self.calls.append((tunnel.name, self.clock.at))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise RuntimeError("API unreachable")


async def settle(clock: WallClock, loops: int = 5) -> None:
    """Wait until the scheduler has looked at the clock ``loops`` more times."""
    target = clock.reads + loops
    await await_until(lambda: _ready(clock.reads >= target), timeout=10, what="scheduler loops")


async def _ready(value: bool) -> bool:
    return value


async def start(
    tmp_path: Path, clock: WallClock, refresher: Refresher, **kw: str
) -> RefreshScheduler:
    refresher.clock = clock
    s = RefreshScheduler(
        config(tmp_path, **kw),
        tmp_path / "state",
        refresher,
        now=clock,
        check_interval_seconds=0.01,
    )
    await s.start()
    return s


def state(tmp_path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((tmp_path / "state" / STATE_FILE).read_text())
    return data


async def test_first_start_does_not_run_and_the_fire_time_runs_once(tmp_path: Path) -> None:
    clock = WallClock(utc(2026, 5, 1, 12))
    r = Refresher()
    s = await start(tmp_path, clock, r)
    try:
        await settle(clock)
        assert r.calls == []
        clock.at = utc(2026, 5, 2, 3, 0, 0)
        await await_until(lambda: _ready(len(r.calls) == 1), timeout=10, what="the run")
        clock.at = utc(2026, 5, 2, 3, 30)
        await settle(clock)
        assert r.calls == [("portal", utc(2026, 5, 2, 3))]
    finally:
        await s.aclose()
    entry = state(tmp_path)["tunnels"]["portal"]  # type: ignore[index]
    assert entry["last_result"] == "success"
    assert entry["last_success_at"] == "2026-05-02T03:00:00+00:00"


async def test_missed_runs_catch_up_exactly_once_then_not_again_after_restart(
    tmp_path: Path,
) -> None:
    clock = WallClock(utc(2026, 5, 1, 12))
    r = Refresher()
    await (await start(tmp_path, clock, r)).aclose()  # first sighting: since_at recorded
    clock.at = utc(2026, 5, 9, 12)  # the daemon was down for 8 daily fire times
    s = await start(tmp_path, clock, r)
    try:
        await await_until(lambda: _ready(len(r.calls) == 1), timeout=10, what="catch-up")
        await settle(clock, loops=20)
        assert len(r.calls) == 1
    finally:
        await s.aclose()
    s = await start(tmp_path, clock, r)  # restart: nothing missed since the catch-up
    try:
        await settle(clock, loops=20)
        assert len(r.calls) == 1
    finally:
        await s.aclose()


async def test_failed_run_is_retried_with_backoff_not_in_a_loop(tmp_path: Path) -> None:
    clock = WallClock(utc(2026, 5, 1, 12))
    r = Refresher()
    r.fail = 2
    s = await start(tmp_path, clock, r)
    try:
        clock.at = utc(2026, 5, 2, 3)
        await await_until(lambda: _ready(len(r.calls) == 1), timeout=10, what="first attempt")
        await settle(clock, loops=20)
        assert len(r.calls) == 1  # no hot retry
        clock.at += timedelta(seconds=60)
        await await_until(lambda: _ready(len(r.calls) == 2), timeout=10, what="first retry")
        clock.at += timedelta(seconds=60)  # second retry waits 120 s
        await settle(clock, loops=20)
        assert len(r.calls) == 2
        clock.at += timedelta(seconds=60)
        await await_until(lambda: _ready(len(r.calls) == 3), timeout=10, what="second retry")
        await settle(clock, loops=20)
        assert len(r.calls) == 3  # succeeded: the next run is tomorrow's
    finally:
        await s.aclose()
    entry = state(tmp_path)["tunnels"]["portal"]  # type: ignore[index]
    assert entry["last_result"] == "success" and entry["failures"] == 0


async def test_close_lets_a_refresh_in_flight_finish(tmp_path: Path) -> None:
    clock = WallClock(utc(2026, 5, 1, 12))
    r = Refresher()
    r.gate = asyncio.Event()
    s = await start(tmp_path, clock, r)
    clock.at = utc(2026, 5, 2, 3)
    await await_until(lambda: _ready(len(r.calls) == 1), timeout=10, what="run started")
    closing = asyncio.create_task(s.aclose())
    await asyncio.sleep(0)
    assert not closing.done()
    r.gate.set()
    await asyncio.wait_for(closing, timeout=10)
    entry = state(tmp_path)["tunnels"]["portal"]  # type: ignore[index]
    assert entry["last_result"] == "success"


async def test_damaged_state_file_is_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / STATE_FILE).write_text("{not json")
    clock = WallClock(utc(2026, 5, 1, 12))
    r = Refresher()
    s = await start(tmp_path, clock, r, schedule="30 2 * * *", timezone=BERLIN)
    try:
        await settle(clock)
        assert r.calls == []
        assert "portal" in state(tmp_path)["tunnels"]  # type: ignore[operator]
    finally:
        await s.aclose()


def test_only_tunnels_with_a_schedule_are_scheduled(tmp_path: Path) -> None:
    s = RefreshScheduler(config(tmp_path), tmp_path, Refresher())
    assert [t.name for t in s.tunnels] == ["portal"]
