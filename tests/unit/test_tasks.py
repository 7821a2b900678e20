"""Supervised long-lived tasks (tunnelkeeper.tasks.keep_running), on a real event loop."""

from __future__ import annotations

import asyncio

import pytest

from tunnelkeeper.metrics import Metrics
from tunnelkeeper.tasks import keep_running, wait_event


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


async def test_a_worker_waiting_on_an_event_stops_when_cancelled_as_it_is_woken() -> None:
    """The 90 s hang of an alert sink's worker at shutdown: the cancel arrived in the same loop
    iteration as the wake-up, and asyncio.wait_for (Python 3.11) returned the wake-up instead."""
    wake = asyncio.Event()
    rounds = 0

    async def worker() -> None:
        nonlocal rounds
        while True:
            await wait_event(wake, 10.0)
            wake.clear()
            rounds += 1

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)  # the worker is waiting
    wake.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(task), timeout=5)
    assert task.cancelled()


async def test_wait_event_says_whether_the_event_came_or_the_time_ran_out() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 10.0) is True
    assert await wait_event(event, None) is True
