"""Delivery: one asyncio worker per sink drains that sink's outbox rows in order.

A slow or failing sink only ever delays itself: each sink has its own worker, HTTP client and
retry schedule, and :meth:`Dispatcher.enqueue` is a local SQLite write (no fsync, see outbox.py),
so the supervision loop never waits on a network. Per sink the outbox is FIFO, so a resolve never
overtakes its fire; a row in backoff holds back the rows behind it on that sink only.

Over 300 lines because a sink's worker loop and the dispatcher that starts and feeds the workers
share the retry state.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from tunnelkeeper.alertcatalog import SEVERITY_RANK
from tunnelkeeper.alerts.notification import Notification
from tunnelkeeper.alerts.outbox import Outbox, OutboxError, OutboxRow
from tunnelkeeper.alerts.resend import RESEND_INTERVAL_SECONDS, RESOLVED_WINDOW_SECONDS, ResendBook
from tunnelkeeper.alerts.retry import (
    BACKOFF_BASE_SECONDS,
    BACKOFF_CAP_SECONDS,
    Outcome,
    classify,
    next_delay_seconds,
    retry_after_seconds,
)
from tunnelkeeper.alerts.sinks import SinkError, build_request, describe_exception, secrets_of
from tunnelkeeper.config.model import SinkConfig
from tunnelkeeper.metrics import Metrics
from tunnelkeeper.tasks import keep_running, wait_event

if TYPE_CHECKING:  # imported where used: the daemon loads httpx only if it needs it
    import httpx

log = structlog.get_logger("tunnelkeeper.alerts")

Clock = Callable[[], float]
# how much of an error response body is kept as the reason (it is read, never trusted)
_SNIPPET_BYTES = 300
CHECKPOINT_INTERVAL_SECONDS = 10.0


def wants(sink: SinkConfig, n: Notification) -> bool:
    """Severity routing: the sink gets notifications at or above its min_severity (a page of
    an incident if any of its members is)."""
    floor = SEVERITY_RANK.get(sink.min_severity, 0)
    return any(SEVERITY_RANK.get(m.alert.severity, 1) >= floor for m in n.members)


async def post(
    client: httpx.AsyncClient, sink: SinkConfig, batch: Sequence[Notification]
) -> tuple[Outcome, str, float | None]:
    """One attempt: (outcome, secret-free description, Retry-After seconds or None).

    The whole attempt — connect, send, response headers and the body snippet — must finish
    within the sink's ``timeout_seconds`` (httpx's timeouts are per operation: a receiver
    trickling a byte every few seconds would otherwise hold the sink for good)."""
    import httpx  # a daemon without sinks never loads it

    try:
        request = build_request(sink, batch, datetime.now(UTC))
        async with asyncio.timeout(sink.timeout_seconds):
            async with client.stream(
                "POST", request.url, content=request.body, headers=dict(request.headers)
            ) as response:
                snippet = b""
                async for chunk in response.aiter_bytes():
                    snippet += chunk
                    if len(snippet) >= _SNIPPET_BYTES:
                        break
    except TimeoutError:
        return (
            Outcome.TRANSIENT,
            f"no complete response within timeout_seconds ({sink.timeout_seconds:g} s)",
            None,
        )
    except (SinkError, httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        # ValueError covers header values httpx cannot encode; all are config problems that a
        # fixed file or URL cures, so they are retried rather than given up
        return Outcome.TRANSIENT, describe_exception(exc, sink), None
    outcome = classify(response.status_code)
    text = f"HTTP {response.status_code}"
    detail = snippet[:_SNIPPET_BYTES].decode("utf-8", "replace").strip()
    if outcome is not Outcome.DELIVERED and detail:
        for secret in secrets_of(sink):
            detail = detail.replace(secret, "<redacted>")
        text += f": {detail}"
    return outcome, text, retry_after_seconds(response.headers.get("Retry-After"))


class _SinkWorker:
    def __init__(self, dispatcher: Dispatcher, sink: SinkConfig) -> None:
        self.d = dispatcher
        self.sink = sink
        self.wake = asyncio.Event()
        self.resends: ResendBook | None = None
        if sink.kind == "alertmanager":
            self.resends = ResendBook(
                dispatcher.resend_interval_seconds, dispatcher.resolved_window
            )
        self._head_seq: int | None = None
        self._failures = 0
        self._retry_deadline = 0.0
        self.last_error: str | None = None

    async def run(self) -> None:
        import httpx

        timeout = httpx.Timeout(self.sink.timeout_seconds)
        async with httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, transport=self.d.transport
        ) as client:
            self._seed_resends()
            while True:
                try:
                    deadline = await self._step(client)
                except OutboxError as exc:
                    log.error("alert_outbox_failed", sink=self.sink.name, error=str(exc))
                    deadline = self.d.clock() + 1.0
                await self._sleep_until(deadline)

    async def _step(self, client: httpx.AsyncClient) -> float | None:
        """Do what is due; return the next deadline (None: wait for new rows)."""
        while True:
            now = self.d.clock()
            row = self.d.outbox.next_pending(self.sink.name)
            if row is not None and row.seq != self._head_seq:
                self._head_seq, self._failures, self._retry_deadline = row.seq, 0, now
            if row is not None and now >= self._retry_deadline:
                await self._attempt(client, row)
                continue
            due = self.resends.due(now) if self.resends is not None else []
            if due:
                outcome, text, _ = await post(client, self.sink, due)
                if outcome is not Outcome.DELIVERED:
                    log.warning("alert_resend_failed", sink=self.sink.name, error=text)
                continue
            deadlines = [self._retry_deadline] if row is not None else []
            if self.resends is not None and (resend_at := self.resends.next_deadline()) is not None:
                deadlines.append(resend_at)
            return min(deadlines) if deadlines else None

    async def _attempt(self, client: httpx.AsyncClient, row: OutboxRow) -> None:
        n = row.notification
        outcome, text, retry_after = await post(client, self.sink, [n])
        fields: dict[str, Any] = {"sink": self.sink.name, "notification_id": n.id}
        if outcome is Outcome.DELIVERED:
            self.d.outbox.mark_delivered(row.seq)
            self.last_error = None
            self._count("delivered")
            if self.resends is not None:
                self.resends.record(n, self.d.clock())
            log.info("alert_delivered", alertname=n.alert.alertname, status=n.status, **fields)
        elif outcome is Outcome.PERMANENT:
            self.d.outbox.mark_failed(row.seq, text)
            self.last_error = text
            self._count("failed")
            log.error("alert_delivery_given_up", reason=text, **fields)
        else:
            self._failures += 1
            if retry_after is not None:
                retry_after = min(retry_after, self.d.max_retry_after_seconds)
            delay = next_delay_seconds(
                self._failures, retry_after, self.d.rng, self.d.backoff_base, self.d.backoff_cap
            )
            self._retry_deadline = self.d.clock() + delay
            self.d.outbox.mark_retry(row.seq, text, delay)
            self.last_error = text
            self._count("retry")
            log.warning(
                "alert_delivery_deferred", error=text, retry_in_seconds=round(delay, 2), **fields
            )

    def _count(self, result: str) -> None:
        self.d.metrics.alert_deliveries.labels(sink=self.sink.name, result=result).inc()
        self.d.update_pending()

    def _seed_resends(self) -> None:
        """After a restart, pick up re-sends of what this sink last delivered."""
        if self.resends is None:
            return
        now, wall = self.d.clock(), time.time()
        try:
            rows = self.d.outbox.latest_delivered(self.sink.name)
        except OutboxError:
            return
        for row in rows:
            n = row.notification
            if n.is_firing:
                self.resends.record(n, now)
            elif n.ends_at is not None:
                left = self.d.resolved_window - (wall - n.ends_at.timestamp())
                if left > 0:
                    self.resends.record(n, now, window_seconds=left)

    async def _sleep_until(self, deadline: float | None) -> None:
        timeout = None if deadline is None else max(0.0, deadline - self.d.clock())
        await wait_event(self.wake, timeout)
        self.wake.clear()


class Dispatcher:
    """Routes notifications to sinks through the outbox and delivers them in the background.

    Pass the engine's snapshot with each :meth:`enqueue` so the firing set is stored in the same
    transaction as its notifications (see :class:`tunnelkeeper.alerts.AlertPipeline`).
    """

    def __init__(
        self,
        outbox: Outbox,
        sinks: Sequence[SinkConfig],
        metrics: Metrics,
        clock: Clock = time.monotonic,
        *,
        rng: random.Random | None = None,
        backoff_base_seconds: float = BACKOFF_BASE_SECONDS,
        backoff_cap_seconds: float = BACKOFF_CAP_SECONDS,
        max_retry_after_seconds: float = 300.0,
        resend_interval_seconds: float = RESEND_INTERVAL_SECONDS,
        resolved_resend_seconds: float = RESOLVED_WINDOW_SECONDS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.outbox = outbox
        self.sinks = tuple(sinks)
        self.metrics = metrics
        self.clock = clock
        self.rng = rng or random.Random()
        self.backoff_base = backoff_base_seconds
        self.backoff_cap = backoff_cap_seconds
        self.max_retry_after_seconds = max_retry_after_seconds
        self.resend_interval_seconds = resend_interval_seconds
        self.resolved_window = resolved_resend_seconds
        self.transport = transport
        self._workers = [_SinkWorker(self, sink) for sink in self.sinks]
        self._tasks: list[asyncio.Task[None]] = []
        self._checkpointing: asyncio.Future[None] | None = None

    async def start(self) -> None:
        for worker in self._workers:
            name = f"alerts-{worker.sink.name}"
            run = keep_running("alert_worker", worker.run, self.metrics, sink=worker.sink.name)
            self._tasks.append(asyncio.create_task(run, name=name))
        self._tasks.append(asyncio.create_task(self._checkpoints(), name="alerts-checkpoint"))
        self.update_pending()

    async def _checkpoints(self) -> None:
        """Keep the outbox's fsyncs off the event loop (enqueue itself never waits on disk)."""
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_SECONDS)
            # shielded: a cancel (aclose) must not return while the thread still uses the
            # outbox's connection, which aclose's caller closes next
            self._checkpointing = asyncio.ensure_future(asyncio.to_thread(self.outbox.checkpoint))
            await asyncio.shield(self._checkpointing)

    def enqueue(
        self,
        notifications: Sequence[Notification],
        engine_state: Mapping[str, Any] | None = None,
        *,
        pages: Sequence[Notification] | None = None,
    ) -> int:
        """Write the notifications (one row per sink that wants them) and wake those sinks.
        With ``pages`` (the incidents' pages), sinks that page people directly get those, and
        only Alertmanager sinks get the notifications one by one.

        Returns the rows written. Never raises: an outbox failure is logged.
        """
        rows = [
            (s.name, n)
            for s in self.sinks
            for n in (notifications if pages is None or s.kind == "alertmanager" else pages)
            if wants(s, n)
        ]
        if not rows and engine_state is None:
            return 0
        added = 0
        for attempt in (1, 2, 3):  # a corrupt file is replaced on failure; then memory
            try:
                added = self.outbox.add(rows, engine_state)
                break
            except OutboxError as exc:
                log.error("alert_outbox_write_failed", attempt=attempt, error=str(exc))
                if attempt == 2:
                    self._fall_back_to_memory(str(exc))
        wanted = {name for name, _ in rows}
        for worker in self._workers:
            if worker.sink.name in wanted:
                worker.wake.set()
        self.update_pending()
        return added

    def confirm(self, fingerprints: set[str]) -> None:
        """Fleet-wide alerts a fresh poll still shows: Alertmanager sinks re-post them now."""
        now = self.clock()
        for worker in self._workers:
            if worker.resends is not None and worker.resends.confirm(fingerprints, now):
                worker.wake.set()

    def _fall_back_to_memory(self, reason: str) -> None:
        """The disk refuses writes (full, read-only, broken): keep paging from memory. What is
        already pending moves along; durability returns with a restart on a writable disk."""
        old = self.outbox
        if old.path is None:
            return
        try:
            pending = [(r.sink, r.notification) for r in old.rows() if r.state == "pending"]
        except OutboxError:
            pending = []
        memory = Outbox(None)
        memory.add(pending)
        self.outbox = memory
        log.error(
            "alert_outbox_in_memory",
            reason=reason,
            moved=len(pending),
            note="pages still go out, but are not durable until a restart with a "
            "writable state_dir",
        )

    def update_pending(self) -> None:
        with contextlib.suppress(OutboxError):
            self.metrics.alert_outbox_pending.set(self.outbox.pending_count())

    def sink_status(self) -> list[dict[str, Any]]:
        out = []
        for worker in self._workers:
            try:
                pending = self.outbox.pending_count(worker.sink.name)
            except OutboxError:
                pending = -1
            out.append(
                {
                    "sink": worker.sink.name,
                    "kind": worker.sink.kind,
                    "pending": pending,
                    "last_error": worker.last_error,
                }
            )
        return out

    async def aclose(self) -> None:
        """Stop promptly; undelivered rows stay in the outbox for the next start."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._checkpointing is not None:  # a checkpoint thread still running: let it end
            await asyncio.gather(self._checkpointing, return_exceptions=True)
            self._checkpointing = None
