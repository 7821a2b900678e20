"""One cloudflared child process: launch it (launch.py), watch its exit and logs, stop it.

Over 300 lines because spawn, watch, relay and stop are one process's lifecycle and share its
state; the log tail and relay are already their own modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Coroutine
from typing import Any

import psutil
import structlog

from tunnelkeeper.supervise.childlog import ChildLine, RecentErrors
from tunnelkeeper.supervise.launch import (
    ReplicaId,
    SpawnSpec,
    ensure_runtime_dir,
    launch,
    remove_files,
    replica_files,
)
from tunnelkeeper.supervise.logtail import READ_CHUNK, LogTail
from tunnelkeeper.supervise.probe import version_from_line
from tunnelkeeper.supervise.relay import Relay
from tunnelkeeper.tasks import wait_event
from tunnelkeeper.tunneltoken import TunnelToken

EXTRA_KILL_WAIT_SECONDS = 5.0

log = structlog.get_logger("tunnelkeeper.replica")


class ReplicaProcess:
    """A cloudflared child we spawned, or one a previous daemon spawned that we adopted.

    Both are watched and signalled through a pidfd: no pid reuse race, no polling, and the same
    code for both. Adopted processes are not our children, so their exit code is unknown.
    Children are spawned with plain ``subprocess.Popen``, not asyncio's subprocess transport,
    which kills its child when it is closed: a daemon handing over to its successor must leave
    its replicas running.
    """

    def __init__(
        self,
        rid: ReplicaId,
        spec: SpawnSpec,
        token: TunnelToken,
        on_exit: Callable[[ReplicaProcess], None],
    ) -> None:
        self.rid = rid
        self.spec = spec
        self.token = token
        self.returncode: int | None = None
        self.exited = asyncio.Event()
        self.pid: int | None = None
        self.create_time: float | None = None
        self.adopted = False
        self._on_exit = on_exit
        self._popen: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.skipped_lines = 0
        self.version: str | None = None  # from its start-up line, once the relay has read it
        # bytes its log tail left unread under a flood (see LogTail.skim)
        self.on_unread: Callable[[int], None] = lambda size: None
        self.on_hint: Callable[[], None] = lambda: None
        self.on_registered: Callable[[], None] = lambda: None
        self.on_skipped: Callable[[int], None] = lambda lines: None
        self.relay = Relay(
            self._emit_line,
            self._summarise,
            self._skipped,
            hint=lambda: self.on_hint(),
            registered=lambda: self.on_registered(),
        )
        self._log = log.bind(tunnel=rid.tunnel, slot=rid.slot, generation=rid.generation)
        ensure_runtime_dir(spec.runtime_dir, separated=spec.run_as is not None)
        self.token_file, self.log_file = replica_files(spec.runtime_dir, rid)
        self._tail = self._make_tail(resume=False)

    def start(self, child: subprocess.Popen[bytes] | None = None) -> None:
        """Launch it, or take ``child``: this replica, launched already by a cold start
        (service/coldstart.py) with this spec and token, before the daemon had loaded."""
        self._popen = child or launch(self.spec, self.token, self.token_file, self.log_file)
        self.pid = self._popen.pid
        self._tail = self._make_tail(resume=False)
        self._pidfd = os.pidfd_open(self.pid)
        with contextlib.suppress(psutil.Error):
            self.create_time = psutil.Process(self.pid).create_time()
        self._log.info(
            "replica_spawned",
            pid=self.pid,
            metrics_port=self.spec.metrics_port,
            token=self.token.fingerprint,
            **({"early": True} if child is not None else {}),
        )
        self._start_tasks(self._wait_pidfd())

    def adopt(self, pid: int, create_time: float) -> None:
        """Take over a live replica left by a previous daemon (identity already verified)."""
        self._pidfd = os.pidfd_open(pid)
        self.pid, self.create_time, self.adopted = pid, create_time, True
        self._tail = self._make_tail(resume=True)
        self._tail.read_available()  # what was written while no daemon ran: a summary
        self._report_backlog()
        self._log.info(
            "replica_adopted",
            pid=pid,
            metrics_port=self.spec.metrics_port,
            token=self.token.fingerprint,
        )
        self._start_tasks(self._wait_pidfd())

    def _start_tasks(self, waiter: Coroutine[Any, Any, None]) -> None:
        self._tasks = [
            asyncio.create_task(self._tail.run(), name=f"log {self.rid}"),
            asyncio.create_task(waiter, name=f"wait {self.rid}"),
        ]

    @property
    def is_our_child(self) -> bool:
        """Started by this daemon (not adopted): the kernel tells us when it stops."""
        return self._popen is not None and self.returncode is None

    @property
    def running(self) -> bool:
        return self.pid is not None and not self.exited.is_set()

    async def _wait_pidfd(self) -> None:
        assert self._pidfd is not None
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not gone.done():
                gone.set_result(None)

        loop.add_reader(self._pidfd, readable)
        try:
            await gone
        finally:
            loop.remove_reader(self._pidfd)
        if self._popen is not None:  # our child: reap it and learn how it ended
            with contextlib.suppress(ChildProcessError):
                # the pidfd said it exited, so this returns at once
                _, status = os.waitpid(self._popen.pid, 0)  # noqa: ASYNC222
                self.returncode = os.waitstatus_to_exitcode(status)
            self._popen.returncode = self.returncode  # so Popen never waits for it again
        await self._finish()

    async def _finish(self) -> None:
        # Relay the last lines (they explain the exit) before we report.
        self._tasks[0].cancel()
        await asyncio.gather(self._tasks[0], return_exceptions=True)
        self._tail.finish()
        self._remove_files()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self.exited.set()
        self._log.info(
            "replica_exited",
            pid=self.pid,
            returncode=self.returncode,
            last_errors=list(self.recent_errors.lines)[-2:],
        )
        self._on_exit(self)

    def _make_tail(self, *, resume: bool) -> LogTail:
        return LogTail(
            self.log_file,
            self._block,
            lambda lines, size: self._skipped(lines),
            on_unread=lambda size: self.on_unread(size),
            pid=self.pid,
            resume=resume,
        )

    def _block(self, data: bytes, backlog: bool) -> None:
        try:
            self.relay.block(data, backlog)
        except Exception as exc:  # hostile input must never stop the tail
            self._log.warning("cloudflared_log_unrelayable", error=type(exc).__name__)

    def _skipped(self, lines: int) -> None:
        self.skipped_lines += lines
        self.on_skipped(lines)

    def _emit_line(self, line: ChildLine) -> None:
        if self.version is None:
            self.version = version_from_line(line.message)
        self._log.log(
            _LEVELS[line.level], "cloudflared_logged", child_message=line.message, **line.fields
        )

    def _summarise(self, kind: str, count: int) -> None:
        self._log.info("cloudflared_log_suppressed", kind=kind, count=count, window_seconds=60)

    def _report_backlog(self) -> None:
        counts, first = self.relay.take_backlog()
        if counts:
            self._log.warning(
                "cloudflared_logged_while_unsupervised",
                lines=sum(counts.values()),
                by_kind=dict(sorted(counts.items(), key=lambda kv: -kv[1])[:10]),
                first_lines=dict(list(first.items())[:10]),
            )

    def catch_up(self) -> None:
        """Relay what the replica has logged so far (bounded), e.g. so a page carries the
        cause it just wrote rather than the one from the last tail pass."""
        with contextlib.suppress(OSError):
            self._tail.read_available(READ_CHUNK)

    @property
    def recent_errors(self) -> RecentErrors:
        return self.relay.recent_errors

    @property
    def bind_failed(self) -> bool:
        return self.relay.bind_failed

    def signal(self, sig: signal.Signals) -> None:
        if not self.running:
            return
        with contextlib.suppress(ProcessLookupError, OSError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)

    async def detach(self) -> None:
        """Stop watching without touching the process (handover to the next daemon)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    async def stop(self, grace_seconds: float | None = None, *, signal_first: bool = True) -> None:
        """SIGTERM (after SIGCONT, in case it was stopped), wait grace + 5 s, then SIGKILL.

        ``signal_first=False`` for a replica that is already draining (adopted mid-drain):
        a second SIGTERM would make cloudflared exit at once and drop its in-flight requests.
        """
        if self.pid is None:
            return
        grace = self.spec.grace_period_seconds if grace_seconds is None else grace_seconds
        if self.running:
            if signal_first:
                self.signal(signal.SIGCONT)
                self.signal(signal.SIGTERM)
            if not await wait_event(self.exited, grace + EXTRA_KILL_WAIT_SECONDS):
                self._log.warning("replica_killed", pid=self.pid, after_seconds=grace + 5)
                self.signal(signal.SIGKILL)
        await self.exited.wait()

    def _remove_files(self) -> None:
        remove_files(self.token_file, self.log_file)


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
