"""Supervised long-lived tasks (tunnelkeeper.tasks.keep_running), on a real event loop."""

from __future__ import annotations

import asyncio

import pytest

from tunnelkeeper.metrics import Metrics
from tunnelkeeper.tasks import keep_running


def restarts(m: Metrics, task: str) -> float:
    value = m.registry.get_sample_value("tunnelkeeper_task_restarts_total", {"task": task})
    return value or 0.0


async def test_a_failing_task_is_restarted_and_counted() -> None:
    m = Metrics()
    runs = 0
    done = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise OSError(24, "Too many open files")
        done.set()

    await asyncio.wait_for(keep_running("probe", flaky, m, pause_seconds=0.01), timeout=5)
    assert done.is_set() and runs == 3
    assert restarts(m, "probe") == 2


async def test_cancellation_ends_the_task_even_when_its_clean_up_raises() -> None:
    """The shutdown hang of issue 12: a cancel whose clean-up raised became a restart."""
    m = Metrics()
    started = asyncio.Event()

    async def worker() -> None:
        try:
            started.set()
            await asyncio.sleep(3600)
        finally:
            raise OSError("clean-up failed while unwinding")  # e.g. a client's __aexit__

    task = asyncio.create_task(keep_running("alert_worker", worker, m, pause_seconds=0.01))
    await started.wait()
    task.cancel()
    with pytest.raises(OSError):
        await asyncio.wait_for(task, timeout=5)
    assert restarts(m, "alert_worker") == 0


async def test_it_stops_restarting_once_its_condition_is_gone() -> None:
    alive = True

    async def dies() -> None:
        nonlocal alive
        alive = False
        raise RuntimeError("bug")

    await asyncio.wait_for(
        keep_running("probe", dies, None, pause_seconds=0.01, while_=lambda: alive), timeout=5
    )
