"""Wake a log tail the moment its file is written, not at its next poll.

One inotify descriptor per event loop (watched with ``add_reader``), one-shot watches: a tail that
has caught up arms ``IN_MODIFY | IN_ONESHOT`` on its file and waits for the first write or its
poll interval, whichever comes first. The kernel removes a watch once it fires, so a replica
that floods its log costs one event per wait, not one per line; a quiet one costs nothing but its
watch, and a safety-net poll every SAFETY_NET_SECONDS. Without inotify (its limits are per user
and may be exhausted by other programs) the tail polls at its own interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from pathlib import Path

import structlog
from inotify_simple import INotify, flags  # type: ignore[import-untyped]

from tunnelkeeper.tasks import until_beat

log = structlog.get_logger("tunnelkeeper.logwatch")

_MASK = flags.MODIFY | flags.ONESHOT
SAFETY_NET_SECONDS = 10.0


class LogWatch:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # the loop is held weakly: a loop that is dropped (a test's) takes its watch and the
        # watch's inotify descriptor with it, instead of leaking one per loop
        self._loop = weakref.ref(loop)
        self._inotify = INotify(nonblocking=True)
        weakref.finalize(loop, self._inotify.close)
        self._waiting: dict[int, asyncio.Future[None]] = {}
        loop.add_reader(self._inotify.fileno(), self._on_events)

    async def wait(self, path: Path, at_most_seconds: float) -> None:
        """Until ``path`` is written to, or (in case an event was missed) the next
        SAFETY_NET_SECONDS beat at least ``at_most_seconds`` away."""
        try:
            wd = self._inotify.add_watch(path, _MASK)
        except OSError:  # gone, or out of watches: poll
            await asyncio.sleep(at_most_seconds)
            return
        loop = asyncio.get_running_loop()
        written = loop.create_future()
        self._waiting[wd] = written
        # a write wakes us; the timer is only a safety net, on a shared beat (one wake-up of
        # the loop for every quiet replica, not one each)
        timer = loop.call_later(
            max(until_beat(SAFETY_NET_SECONDS), at_most_seconds), _settle, written
        )
        try:
            await written
        finally:
            timer.cancel()
            if self._waiting.get(wd) is written:
                del self._waiting[wd]

    def _on_events(self) -> None:
        try:
            events = self._inotify.read(timeout=0)
        except OSError:
            return
        for event in events:
            waiter = self._waiting.pop(event.wd, None)
            if waiter is not None:
                _settle(waiter)

    def close(self) -> None:
        loop = self._loop()
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(self._inotify.fileno())
        self._inotify.close()
        for waiter in self._waiting.values():
            _settle(waiter)
        self._waiting.clear()


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LogWatch | None] = (
    weakref.WeakKeyDictionary()
)


def for_loop(loop: asyncio.AbstractEventLoop) -> LogWatch | None:
    """The loop's watcher, made on first use; None (poll) if inotify is not available."""
    if loop not in _watches:
        try:
            _watches[loop] = LogWatch(loop)
        except OSError as exc:
            log.warning("log_watch_unavailable", error=str(exc), action="polling replica logs")
            _watches[loop] = None
    return _watches[loop]


async def until_written(path: Path, at_most_seconds: float) -> None:
    watch = for_loop(asyncio.get_running_loop())
    if watch is None:
        await asyncio.sleep(at_most_seconds)
    else:
        await watch.wait(path, at_most_seconds)
