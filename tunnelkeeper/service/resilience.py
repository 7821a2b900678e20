"""Fail static, never fail drained: how the daemon survives its own failures.

An error in one tunnel's supervision is logged and counted, and the other tunnels go on. An
unexpected error in the loop restarts it; if it keeps failing, the daemon exits *without
draining* (like a handover), so systemd restarts it and the next daemon adopts the replicas,
which kept serving throughout. Draining happens only on an explicit stop, and each step of the
shutdown runs on its own, so one that raises cannot skip the drain.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from tunnelkeeper.metrics import Metrics

log = structlog.get_logger("tunnelkeeper.daemon")

LOOP_FAILURE_WINDOW_SECONDS = 60.0
LOOP_FAILURES_BEFORE_EXIT = 5
LOOP_RESTART_PAUSE_SECONDS = 1.0
# sysexits.h EX_SOFTWARE: an internal error; systemd restarts the daemon, which adopts.
EXIT_SOFTWARE = 70


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


async def keep_looping(
    loop: Callable[[], Coroutine[Any, Any, None]],
    stop: asyncio.Event,
    metrics: Metrics,
    clock: Callable[[], float],
) -> bool:
    """Run ``loop`` until ``stop``; True if it failed too often and the daemon should exit
    without draining."""
    failures: list[float] = []
    while not stop.is_set():
        try:
            await loop()
        except Exception as exc:
            now = clock()
            failures = [t for t in failures if now - t < LOOP_FAILURE_WINDOW_SECONDS]
            failures.append(now)
            metrics.task_restarts.labels("loop").inc()
            log.error(
                "loop_failed",
                error=_describe(exc),
                failures_in_window=len(failures),
                exc_info=True,
            )
            if len(failures) >= LOOP_FAILURES_BEFORE_EXIT:
                log.critical(
                    "loop_failing_repeatedly",
                    action="exiting without draining; replicas keep serving and the next "
                    "daemon adopts them",
                )
                return True
            await asyncio.sleep(LOOP_RESTART_PAUSE_SECONDS)
    return False


def converge_failed(metrics: Metrics) -> Callable[[str, Exception], None]:
    """What to do when one tunnel's converge raises: log and count; the others go on."""

    def report(tunnel: str, exc: Exception) -> None:
        metrics.task_restarts.labels("converge").inc()
        log.error("tunnel_converge_failed", tunnel=tunnel, error=_describe(exc), exc_info=True)

    return report


async def quietly(what: str, aw: Awaitable[Any]) -> None:
    """One shutdown step; if it raises, say so and go on to the next."""
    try:
        await aw
    except Exception as exc:
        log.error("shutdown_step_failed", step=what, error=_describe(exc))
