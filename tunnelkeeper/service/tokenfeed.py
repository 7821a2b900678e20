"""Keeps one tunnel's supervisor supplied with the newest valid token from its source.

The watcher (``sources.watch``) reports; this module acts: accepted tokens go to the
supervisor (which rolls replicas), refusals and failures become visible in status, metrics and
logs, and ``tunnelkeeper rotate`` waits here for the roll to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import structlog

from tunnelkeeper.config.model import TunnelConfig
from tunnelkeeper.logconfig import SECRETS
from tunnelkeeper.metrics import Metrics
from tunnelkeeper.sources import (
    Failed,
    New,
    Refused,
    TokenSourceError,
    TokenWatcher,
    Unchanged,
    WatchEvent,
    open_source,
)
from tunnelkeeper.supervise.supervisor import TunnelSupervisor
from tunnelkeeper.tasks import keep_running, until_beat, wait_event

log = structlog.get_logger("tunnelkeeper.tokens")
ROLL_POLL_SECONDS = 0.2


def unavailable_after_seconds(poll_seconds: float | None) -> float:
    """How long a source may fail before TokenSourceUnavailable: a few polls, at least 30 s."""
    return max(30.0, 3 * (poll_seconds or 0.0))


class TokenFeed:
    def __init__(
        self,
        cfg: TunnelConfig,
        sup: TunnelSupervisor,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg, self.sup, self.metrics, self.clock = cfg, sup, metrics, clock
        self.poll_seconds: float | None = getattr(cfg.token, "poll_seconds", None)
        self.watcher: TokenWatcher | None = None
        self._poll_now = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._log = log.bind(tunnel=cfg.name)

    @property
    def unavailable(self) -> bool:
        """The source gives no usable token: failing for long enough, or what it holds now was
        refused (malformed, or for another tunnel). Either pages TokenSourceUnavailable: the
        replicas run on the last good token, which the next secret refresh will revoke."""
        if self.watcher is None:
            return False
        return self.watcher.unavailable or self.watcher.refused is not None

    async def start(self) -> None:
        """Open the source and read it once, so a tunnel with a good token starts at once."""
        try:
            source = open_source(self.cfg.token)
        except TokenSourceError as exc:
            self.sup.token_error = str(exc)
            self._log.error("token_source_unusable", error=str(exc))
            self.metrics.token_source_errors.labels(self.cfg.name, "unusable").inc()
            return
        self.sup.token_source_description = source.description
        self.watcher = TokenWatcher(
            source,
            tunnel_id=self.cfg.id,
            unavailable_after_seconds=unavailable_after_seconds(self.poll_seconds),
            clock=self.clock,
        )
        await self._poll(force=False)
        run = keep_running("token_feed", self._run, self.metrics, tunnel=self.cfg.name)
        self._task = asyncio.create_task(run, name=f"token feed {self.cfg.name}")

    def poll_now(self) -> None:
        self._poll_now.set()

    async def _run(self) -> None:
        while True:
            static = self.watcher is None or self.watcher.source.is_static
            timeout = None if static or not self.poll_seconds else until_beat(self.poll_seconds)
            await wait_event(self._poll_now, timeout)
            force = self._poll_now.is_set()
            self._poll_now.clear()
            await self._poll(force=force)

    async def _poll(self, *, force: bool) -> WatchEvent | None:
        if self.watcher is None:
            return None
        async with self._lock:
            event = await self.watcher.poll(force=force)
        self._handle(event)
        return event

    def _handle(self, event: WatchEvent) -> None:
        name = self.cfg.name
        if isinstance(event, New):
            token = event.version.token
            SECRETS.add(token.reveal())
            self.sup.token_error, self.sup.token_refused = None, False
            self._log.info("token_read", token=token.fingerprint, version=event.version.version)
            self.sup.set_token(token)
        elif isinstance(event, Refused):
            self.sup.token_refused = True
            self.sup.token_error = f"refused version {event.version}: {event.reason}"
            self.metrics.token_source_errors.labels(name, "refused").inc()
            self._log.error("token_refused", version=event.version, reason=event.reason)
        elif isinstance(event, Failed):
            self.sup.token_error = f"source failing: {event.reason}"
            self.metrics.token_source_errors.labels(name, "unavailable").inc()
            if event.failures == 1 or event.failures % 20 == 0:
                self._log.warning(
                    "token_source_failed", reason=event.reason, failures=event.failures
                )
        elif isinstance(event, Unchanged) and self.watcher is not None:
            if self.watcher.refused is None and self.watcher.failing_since is None:
                self.sup.token_error, self.sup.token_refused = None, False

    async def rotate(self, force: bool) -> dict[str, Any]:
        """Re-read the source now and wait until replicas run the result (or it fails)."""
        result: dict[str, Any] = {"tunnel": self.cfg.name}
        event = await self._poll(force=True)
        sup = self.sup
        if isinstance(event, Refused):
            return result | {
                "result": "failed",
                "detail": sup.token_error,
                "kept": "replicas keep the previous token",
            }
        if sup.target_token() is None:
            return result | {"result": "failed", "detail": sup.token_error or "no valid token"}
        if isinstance(event, Failed):
            return result | {
                "result": "failed",
                "detail": sup.token_error,
                "kept": "replicas keep the previous token",
            }
        if sup.desired is not None and sup.desired.fingerprint in sup.failed_fingerprints:
            if not force:
                return result | {
                    "result": "failed",
                    "detail": "this token version already "
                    "failed to roll out; use --force to try it again",
                }
            sup.set_token(sup.desired, force=True)
        if force:
            sup.force_roll()
        sup.wake.set()
        failures_before = sup.rollout_failures
        deadline = (
            self.clock()
            + self.cfg.replicas
            * (sup.daemon.ready_timeout_seconds + self.cfg.grace_period_seconds + 10)
            + 30
        )
        await asyncio.sleep(ROLL_POLL_SECONDS)
        while self.clock() < deadline:
            if sup.rollout_failures != failures_before:
                return result | {
                    "result": "failed",
                    "detail": "a new replica did not become ready at the edge in time",
                    "kept": "old replicas kept",
                }
            if sup.rollout_state() == "done":
                target = sup.target_token()
                return result | {"result": "done", "token": target.fingerprint if target else None}
            await asyncio.sleep(ROLL_POLL_SECONDS)
        return result | {"result": "failed", "detail": "timed out waiting for the roll"}

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.watcher is not None:
            await self.watcher.source.aclose()
