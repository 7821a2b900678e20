"""One cloudflared child process: spawn it safely, watch its exit and logs, stop it.

The token reaches the child only through a 0600 file named on ``--token-file``; the child's
environment is built from an allow-list, so an inherited TUNNEL_TOKEN (which would silently
override the file) or our own NOTIFY_SOCKET never leaks in.

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
from pathlib import Path
from typing import Any

import msgspec
import psutil
import structlog

from tunnelkeeper.atomicfile import write_private_file
from tunnelkeeper.supervise.childlog import ChildLine, RecentErrors
from tunnelkeeper.supervise.identity import RunAs
from tunnelkeeper.supervise.logtail import READ_CHUNK, LogTail, open_for_child, raise_ceiling
from tunnelkeeper.supervise.probe import version_from_line
from tunnelkeeper.supervise.relay import Relay
from tunnelkeeper.tasks import wait_event
from tunnelkeeper.tunneltoken import TunnelToken

# Variables a child may inherit. Everything else (TUNNEL_*, NOTIFY_SOCKET, secrets) is dropped.
ENV_ALLOW = ("PATH", "LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR")
EXTRA_KILL_WAIT_SECONDS = 5.0
REPLICA_NICE = 5

log = structlog.get_logger("tunnelkeeper.replica")


class ReplicaId(msgspec.Struct, frozen=True, order=True):
    tunnel: str
    slot: int
    generation: int

    def __str__(self) -> str:
        return f"{self.tunnel}/{self.slot}#{self.generation}"


class SpawnSpec(msgspec.Struct, frozen=True):
    binary: Path
    extra_args: tuple[str, ...]
    label: str
    grace_period_seconds: float
    metrics_port: int
    runtime_dir: Path
    run_as: RunAs | None = None  # None: the daemon's own user


def child_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in ENV_ALLOW if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["NO_AUTOUPDATE"] = "true"
    return env


def build_argv(spec: SpawnSpec, token_file: Path, config_file: Path) -> list[str]:
    grace = f"{spec.grace_period_seconds:g}s"
    return [
        str(spec.binary),
        "tunnel",
        "--no-autoupdate",
        "--config",
        str(config_file),
        "--metrics",
        f"127.0.0.1:{spec.metrics_port}",
        "--output",
        "json",
        "--grace-period",
        grace,
        "--label",
        spec.label,
        *spec.extra_args,
        "run",
        "--token-file",
        str(token_file),
    ]


def ensure_runtime_dir(runtime_dir: Path, *, separated: bool = False) -> Path:
    """runtime_dir/replicas plus the cloudflared config file we own (so no stray
    /etc/cloudflared/config.yml is ever picked up). With replicas running as other users, both
    directories are 0711 — a replica may open its own token file by name, but list nothing —
    and the config file is world-readable (it holds no secret); else 0700."""
    tokens = runtime_dir / "replicas"
    tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = 0o711 if separated else 0o700
    os.chmod(tokens, mode)
    if separated:
        os.chmod(runtime_dir, mode)
    cfg = runtime_dir / "cloudflared.yml"
    if not cfg.exists():
        cfg.write_text(
            "# written by tunnelkeeper; every setting comes from the command line\n"
            "no-autoupdate: true\n"
        )
    os.chmod(cfg, 0o644)
    return tokens


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
        replicas_dir = ensure_runtime_dir(spec.runtime_dir, separated=spec.run_as is not None)
        stem = f"{rid.tunnel}.{rid.slot}.{rid.generation}"
        self.token_file = replicas_dir / f"{stem}.token"
        self.log_file = replicas_dir / f"{stem}.log"
        self._tail = self._make_tail(resume=False)

    def start(self) -> None:
        write_private_file(self.token_file, self.token.reveal())
        run_as = self.spec.run_as
        if run_as is not None:  # its own token, readable by it alone
            os.chown(self.token_file, run_as.uid, run_as.gid)
            os.chmod(self.token_file, 0o400)
        argv = build_argv(self.spec, self.token_file, self.spec.runtime_dir / "cloudflared.yml")
        stderr = open_for_child(self.log_file)
        try:
            self._popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=child_env(),
                # Its own session: a terminal's Ctrl-C reaches only us (we drain it), and it
                # outlives us if we die, to be adopted by the next daemon.
                start_new_session=True,
                cwd=str(self.spec.runtime_dir),
                user=run_as.uid if run_as is not None else None,
                group=run_as.gid if run_as is not None else None,
                extra_groups=[] if run_as is not None else None,
            )
        except OSError:
            self._remove_files()
            raise
        finally:
            os.close(stderr)
        self.pid = self._popen.pid
        raise_ceiling(self.pid, 0)  # its log may grow only so far ahead of our reading
        self._tail = self._make_tail(resume=False)
        with contextlib.suppress(OSError):
            # a replica flooding its log (edge down) must not starve its supervisor of CPU:
            # the supervisor needs little, but needs it at once
            os.setpriority(os.PRIO_PROCESS, self.pid, REPLICA_NICE)
        self._pidfd = os.pidfd_open(self.pid)
        with contextlib.suppress(psutil.Error):
            self.create_time = psutil.Process(self.pid).create_time()
        self._log.info(
            "replica_spawned",
            pid=self.pid,
            metrics_port=self.spec.metrics_port,
            token=self.token.fingerprint,
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
        for path in (self.token_file, self.log_file, self.log_file.with_suffix(".read")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
