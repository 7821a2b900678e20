"""Long-lived tasks that restart when they fail, and say so.

A bug or an exhausted resource (file descriptors, memory) in one replica's probe, a sink's
worker or the fleet poller must not end that work for good and silently: the task is restarted
after a pause, the failure is logged once per restart with its cause, and
``tunnelkeeper_task_restarts_total{task}`` counts it. Cancellation always ends the task, even if
clean-up raises while it unwinds (a restart there would make shutdown hang).

Waits with a timeout go through :func:`wait_event`, never ``asyncio.wait_for``: on Python 3.11,
``wait_for`` swallows a cancel that arrives in the same loop iteration as the awaited result
(cpython gh-86296, fixed in 3.12), and a worker that loops on it then never stops.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from tunnelkeeper.metrics import Metrics

log = structlog.get_logger("tunnelkeeper.tasks")


def until_beat(interval: float, phase: float = 0.0) -> float:
    """Seconds from now to the next beat: a multiple of ``interval`` on the event loop's clock,
    plus ``phase`` (a fraction of the interval).

    Periodic work waits for these beats rather than for ``interval`` from its own last run, so
    work with the same period (a hundred replicas' probes, the daemon's tick, the token files'
    polls) runs in one wake-up of the loop, not one each: on a VM a wake-up from idle costs more
    CPU than most of the work it serves (``bench/README.md``, "Probe wire")."""
    now = asyncio.get_running_loop().time() - phase * interval
    return (math.floor(now / interval) + 1) * interval - now


async def wait_event(event: asyncio.Event, seconds: float | None) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass (None: no limit); return whether
    it is set. A cancel is never lost, even when it coincides with the event."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        pass
    return event.is_set()


async def keep_running(
    task: str,
    run: Callable[[], Coroutine[Any, Any, None]],
    metrics: Metrics | None,
    *,
    pause_seconds: float = 1.0,
    while_: Callable[[], bool] = lambda: True,
    **context: Any,
) -> None:
    """Await ``run()`` until it returns; on an exception, count, log, pause and run it again
    (as long as ``while_()`` holds)."""
    me = asyncio.current_task()
    while while_():
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if me is not None and me.cancelling():
                raise  # being cancelled: a clean-up that raised must not turn into a restart
            if metrics is not None:
                metrics.task_restarts.labels(task).inc()
            log.error(
                "task_failed",
                task=task,
                error=f"{type(exc).__name__}: {exc}"[:300],
                action=f"restarting in {pause_seconds:g}s",
                exc_info=True,
                **context,
            )
        await asyncio.sleep(pause_seconds)
