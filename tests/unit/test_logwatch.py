"""The inotify wake-up of the log tails: a write wakes a waiter at once, and an event loop that
is dropped takes its inotify descriptor with it."""

from __future__ import annotations

import asyncio
import gc
import os
from pathlib import Path

from tunnelkeeper.supervise.logwatch import until_written


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def woken_by_a_write(path: Path) -> None:
    """A wait on ``path`` with a 60 s safety net, and a write that must end it at once."""
    waiter = asyncio.create_task(until_written(path, 60.0))
    await asyncio.sleep(0)  # one turn of the loop: the waiter arms its watch before it waits
    assert not waiter.done()
    with path.open("ab") as f:
        f.write(b'{"message":"Serve tunnel error"}\n')
    await asyncio.wait_for(waiter, 10)  # woken by the write, not by the 60 s net


async def test_a_write_wakes_the_waiter_long_before_its_safety_net(tmp_path: Path) -> None:
    path = tmp_path / "replica.log"
    path.write_bytes(b"")
    await woken_by_a_write(path)


def test_each_dropped_event_loop_takes_its_inotify_descriptor_with_it(tmp_path: Path) -> None:
    path = tmp_path / "replica.log"
    path.write_bytes(b"")

    asyncio.run(woken_by_a_write(path))
    gc.collect()
    before = open_fds()
    for _ in range(30):
        asyncio.run(woken_by_a_write(path))
    gc.collect()
    assert open_fds() <= before + 2  # not one more per loop
