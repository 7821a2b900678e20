"""Scheduled secret refresh: run a tunnel's refresh on its cron schedule, in its time zone.

APScheduler's ``CronTrigger`` is used only to compute fire times; the waiting is a plain asyncio
task per tunnel. Running an APScheduler scheduler would bring its own executors, job store and
misfire rules, while what is needed is small and must be exact: one run per fire time, one
catch-up run at start for a missed fire time (however many were missed), a retry with backoff
after a failure, and a last-run record that survives restarts (``refresh-schedule.json``).

Cron schedules are wall-clock by nature, so this module (alone) takes its policy time from the
injected wall clock ``now``; it re-reads it at least every ``check_interval_seconds`` so that a
clock step or a suspended host delays a run by at most that much.

Daylight saving time: a wall-clock time that does not exist (spring forward) fires at the
instant APScheduler maps it to (02:30 → 03:30 local); a wall-clock time that occurs twice
(fall back) fires once, at its first occurrence.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from apscheduler.triggers.cron import CronTrigger

from tunnelkeeper.atomicfile import write_private_file
from tunnelkeeper.config.model import Config, TunnelConfig
from tunnelkeeper.tasks import wait_event

log = structlog.get_logger("tunnelkeeper.schedule")

STATE_FILE = "refresh-schedule.json"
RETRY_BASE_SECONDS = 60.0
RETRY_CAP_SECONDS = 3600.0
SHUTDOWN_WAIT_SECONDS = 60.0  # a refresh in flight is let finish: PATCH without store is worse
_TICK = timedelta(microseconds=1)


# --- pure functions ------------------------------------------------------------------------------


def _is_second_occurrence(at: datetime, zone: ZoneInfo) -> bool:
    """``at`` is the later of two instants showing the same local wall time (DST fall back)."""
    local = at.astimezone(zone)
    first, second = local.replace(fold=0), local.replace(fold=1)
    if first.utcoffset() == second.utcoffset():
        return False  # not ambiguous
    naive = local.replace(tzinfo=None)
    exists_twice = all(
        v.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == naive for v in (first, second)
    )
    return exists_twice and local.timestamp() == max(first.timestamp(), second.timestamp())


def next_fire_time(expr: str, timezone: str, after: datetime) -> datetime | None:
    """The first fire time of cron ``expr`` in ``timezone`` strictly after ``after`` (aware),
    as an aware UTC datetime; None if it never fires again."""
    zone = ZoneInfo(timezone)
    trigger = CronTrigger.from_crontab(expr, timezone=zone)
    # step on the UTC timeline: adding to a local time would lose which of two 02:30s it was
    start = (after.astimezone(UTC) + _TICK).astimezone(zone)
    for _ in range(8):  # a repeated wall time is skipped at most a few times in a row
        fire: datetime | None = trigger.get_next_fire_time(None, start)
        if fire is None:
            return None
        if not _is_second_occurrence(fire, zone):
            return fire.astimezone(UTC)
        start = (fire.astimezone(UTC) + _TICK).astimezone(zone)
    return None


def is_catch_up_due(expr: str, timezone: str, last_run_at: datetime, now: datetime) -> bool:
    """A fire time passed between the last run (or the schedule's first sighting) and ``now``."""
    fire = next_fire_time(expr, timezone, last_run_at)
    return fire is not None and fire <= now


def retry_delay_seconds(failures: int) -> float:
    """After the n-th consecutive failure: 1 min, 2, 4, ... capped at an hour."""
    return float(min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2.0 ** max(0, failures - 1)))


# --- the persisted record ----------------------------------------------------------------------


def _parse_at(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return at if at.tzinfo is not None else None


def load_state(path: Path) -> dict[str, dict[str, Any]]:
    """Per tunnel: since_at, last_success_at, last_attempt_at, last_result, failures."""
    try:
        obj = json.loads(path.read_text())
        tunnels = obj["tunnels"]
        if not isinstance(tunnels, dict):
            raise TypeError("tunnels is not an object")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("refresh_schedule_state_unreadable", path=str(path), error=str(exc)[:200])
        return {}
    return {str(k): v for k, v in tunnels.items() if isinstance(v, dict)}


class RefreshScheduler:
    def __init__(
        self,
        config: Config,
        state_dir: Path,
        refresh: Callable[[TunnelConfig], Awaitable[None]],
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        check_interval_seconds: float = 30.0,
    ) -> None:
        self.tunnels = [t for t in config.tunnels if t.refresh_schedule]
        self.path = state_dir / STATE_FILE
        self.refresh = refresh
        self.now = now
        self.check_interval_seconds = check_interval_seconds
        self.state: dict[str, dict[str, Any]] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Load the record, then start one task per scheduled tunnel. A fire time missed while
        the daemon was down runs once, now."""
        self.state = await asyncio.to_thread(load_state, self.path)
        now = self.now()
        for t in self.tunnels:
            assert t.refresh_schedule is not None
            entry = self.state.setdefault(t.name, {})
            if _parse_at(entry.get("since_at")) is None:
                entry["since_at"] = now.isoformat()
            last = _parse_at(entry.get("last_success_at")) or _parse_at(entry["since_at"])
            if last is not None and is_catch_up_due(
                t.refresh_schedule, t.refresh_timezone, last, now
            ):
                log.warning(
                    "scheduled_refresh_missed",
                    tunnel=t.name,
                    last_success_at=entry.get("last_success_at"),
                    action="running it once now",
                )
        self._save()
        for t in self.tunnels:
            name = f"refresh schedule {t.name}"
            self._tasks.append(asyncio.create_task(self._run(t), name=name))

    def next_run_at(self, tunnel: TunnelConfig) -> datetime | None:
        """When the tunnel's next refresh is due (a retry, or the next fire time)."""
        entry = self.state.get(tunnel.name, {})
        assert tunnel.refresh_schedule is not None
        reference = _parse_at(entry.get("last_success_at")) or _parse_at(entry.get("since_at"))
        fire = next_fire_time(
            tunnel.refresh_schedule, tunnel.refresh_timezone, reference or self.now()
        )
        attempt = _parse_at(entry.get("last_attempt_at"))
        failures = int(entry.get("failures") or 0)
        if failures and attempt is not None:
            retry = attempt + timedelta(seconds=retry_delay_seconds(failures))
            # a failed run is retried, but never before the fire time it was for
            if fire is not None and fire <= attempt:
                return max(retry, fire)
        return fire

    async def _run(self, t: TunnelConfig) -> None:
        while not self._stop.is_set():
            due = self.next_run_at(t)
            now = self.now()
            if due is not None and due <= now:
                await self._attempt(t, now)
                continue
            wait = self.check_interval_seconds
            if due is not None:
                wait = min(wait, max(0.0, (due - now).total_seconds()))
            await wait_event(self._stop, wait)

    async def _attempt(self, t: TunnelConfig, started: datetime) -> None:
        entry = self.state.setdefault(t.name, {})
        log.info("scheduled_refresh_started", tunnel=t.name, schedule=t.refresh_schedule)
        try:
            await self.refresh(t)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the refresh reports its own errors; the schedule goes on
            entry["failures"] = int(entry.get("failures") or 0) + 1
            entry["last_result"] = "failed"
            entry["last_error"] = str(exc)[:300]
            retry = retry_delay_seconds(entry["failures"])
            log.error(
                "scheduled_refresh_failed", tunnel=t.name, error=str(exc)[:300], retry_seconds=retry
            )
        else:
            entry["failures"] = 0
            entry["last_result"] = "success"
            entry.pop("last_error", None)
            entry["last_success_at"] = started.isoformat()
        entry["last_attempt_at"] = started.isoformat()
        self._save()

    def _save(self) -> None:
        data = json.dumps({"version": 1, "tunnels": self.state}, indent=1, sort_keys=True)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_private_file(self.path, data + "\n")
        except OSError as exc:
            log.error("refresh_schedule_state_write_failed", path=str(self.path), error=str(exc))

    async def aclose(self) -> None:
        """Stop waiting; a refresh in flight may finish (bounded), since stopping between the
        PATCH and the store would leave a new secret that nobody holds."""
        self._stop.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=SHUTDOWN_WAIT_SECONDS)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
