"""``tunnelkeeper run``: wire config, token sources, supervisors, HTTP and systemd together.

One loop: wait for an event (a replica exited, a probe saw a change, a signal) or the next
tick, then converge every tunnel. Signal handlers only set events. What the HTTP endpoints
answer is in :mod:`~tunnelkeeper.service.endpoints`.

Over 300 lines because the wiring, the loop and the shutdown order of one process; endpoints,
fail-static machinery, guards, API tasks and the tunnel set are already split out.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from tunnelkeeper import __version__
from tunnelkeeper.cloudflared.upgrade import Upgrader
from tunnelkeeper.config.model import Config
from tunnelkeeper.metrics import Metrics
from tunnelkeeper.service.coldstart import LEDGER_FILE, Launched, stop_early, stop_launched
from tunnelkeeper.service.endpoints import Endpoints
from tunnelkeeper.service.guards import raise_nofile_limit, settle_after_start
from tunnelkeeper.service.httpconn import connection_cap
from tunnelkeeper.service.notify import Notifier
from tunnelkeeper.service.resilience import (
    EXIT_SOFTWARE,
    converge_failed,
    keep_looping,
    quietly,
)
from tunnelkeeper.service.tunnelset import TunnelSet
from tunnelkeeper.service.web import DaemonWeb
from tunnelkeeper.supervise.adoption import adopt_all
from tunnelkeeper.supervise.ledger import LedgerWriter
from tunnelkeeper.supervise.ports import PortAllocator
from tunnelkeeper.supervise.probe import Prober
from tunnelkeeper.tasks import keep_running, until_beat

if TYPE_CHECKING:
    from tunnelkeeper.alerts.notification import Condition

log = structlog.get_logger("tunnelkeeper.daemon")


class Daemon(Endpoints):
    _tunnel_conditions: Callable[..., list[Condition]]  # set by _start_services

    def __init__(
        self,
        config: Config,
        *,
        locks: list[int],
        launched: Launched | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._locks = locks  # state_dir's and runtime_dir's (startup.py): held while we run
        self.launched = launched or {}  # slot 0 of each tunnel, by a cold start (coldstart.py)
        self.clock = clock
        self.metrics = Metrics()
        self.wake = asyncio.Event()
        self.stop_requested = asyncio.Event()
        self.notifier = Notifier()
        self.prober = Prober(timeout_seconds=min(1.0, config.daemon.probe_interval_seconds))
        self.started_at = clock()
        self.started_wall = datetime.now(UTC)
        self.last_tick_at = clock()
        self.unknown_replicas: tuple[str, ...] = ()
        self.tunnels = TunnelSet(
            config.daemon,
            config.cloudflared,
            ports=PortAllocator(),
            prober=self.prober,
            metrics=self.metrics,
            wake=self.wake,
            clock=clock,
        )
        self.upgrader = Upgrader(config.cloudflared, config.daemon.state_dir)
        self.ledger = LedgerWriter(config.daemon.state_dir / LEDGER_FILE)
        self._ready_sent = False
        self.handover = False
        self.exit_code = 0
        self._background: set[asyncio.Task[Any]] = set()
        self._reload_lock = asyncio.Lock()
        self._status_line = ""
        self.services_started = False  # alerts and API tasks: see _start_services
        self.web = DaemonWeb(
            metrics=self.metrics.exposition,
            healthz=self.healthz,
            readyz=self.readyz,
            status=self.status,
            rotate=self.rotate,
            reload=self.reload,
        )

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> int:
        cfg = self.config
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        loop.add_signal_handler(signal.SIGUSR2, self._on_handover)
        # a replica of ours stopped (SIGSTOP, a debugger) or continued: known at once
        loop.add_signal_handler(signal.SIGCHLD, self._on_sigchld)
        nofile = raise_nofile_limit()
        self.web.max_connections = connection_cap(nofile, sum(t.replicas for t in cfg.tunnels))
        try:
            await self.web.start(
                cfg.daemon.listen_host,
                cfg.daemon.listen_port,
                cfg.daemon.runtime_dir / "control.sock",
            )
        except OSError as exc:
            log.error(
                "listen_failed", key="daemon.listen", listen=cfg.daemon.listen, error=str(exc)
            )
            await self.web.aclose()
            stop_launched(self.launched, self.ledger.path)
            return 1
        try:
            await self._start(cfg)
        except Exception as exc:
            # Nothing is drained on the way out: whatever runs keeps serving, for the next
            # daemon (systemd restarts us) to adopt.
            log.critical(
                "daemon_start_failed",
                error=f"{type(exc).__name__}: {exc}"[:300],
                action="exiting without draining",
                exc_info=True,
            )
            self.handover, self.exit_code = True, EXIT_SOFTWARE
            await self._shutdown()
            return self.exit_code
        try:
            if await keep_looping(self._loop, self.stop_requested, self.metrics, self.clock):
                self.handover, self.exit_code = True, EXIT_SOFTWARE
        finally:
            await self._shutdown()
        return self.exit_code

    async def _start(self, cfg: Config) -> None:
        """The replicas first: they take longest to be ready (their edge connections). What
        they do not need (alerting, the API tasks) loads once they are ready or a second has
        passed (``_start_services``), not on the same two cores while they start: the replicas
        run niced, so the daemon's imports would come first and delay them."""
        for t in cfg.tunnels:
            self.tunnels.add(t)
        adopted, stopped = adopt_all(
            self.ledger.path, self.tunnels.sups, cfg.daemon.runtime_dir, self.launched
        )
        if adopted or stopped:
            log.info("replicas_adopted", adopted=adopted, stopped=stopped)
        if self.launched:
            first = min(early.launched_at for early in self.launched.values())
            log.info(
                "replicas_launched_early",
                replicas=len(self.launched),
                seconds_before=round(time.monotonic() - first, 3),
            )
        self._reap_untaken_launches()
        self.ledger.write(self.tunnels.replicas())
        self.upgrader.attach(self.tunnels.sups)
        await self.upgrader.prepare(cfg.cloudflared)
        for feed in self.tunnels.feeds.values():
            await feed.start()
        # A replica launched early may be at the edge already (its probe has answered by now):
        # then READY=1 goes out before the rest of the replicas spawn.
        self._notify_systemd()
        self._converge()
        lag = keep_running("loop_lag", self._sample_lag, self.metrics)
        self._background.add(asyncio.create_task(lag, name="loop lag"))
        problem = self.tunnels.separation_problem
        if self.tunnels.separated:
            log.log(
                40 if problem else 20,
                "replica_users",
                mode="per-tunnel",
                uid_base=cfg.daemon.replica_uid_base,
                problem=problem,
            )
        elif cfg.daemon.replica_users == "auto":
            log.warning(
                "replica_users",
                mode="the daemon's own user: every replica can read every tunnel's token",
                key="daemon.replica_users",
                reason=problem,
            )
        log.info(
            "daemon_started",
            version=__version__,
            host=cfg.daemon.host,
            listen=cfg.daemon.listen,
            tunnels=[t.name for t in cfg.tunnels],
        )

    def _reap_untaken_launches(self) -> None:
        """A replica the cold start launched that adoption did not take (its record did not
        verify: never seen) is stopped, not left running unsupervised."""
        taken = {r.proc.pid for r in self.tunnels.replicas()}
        untaken = [early for pid, early in self.launched.items() if pid not in taken]
        for early in untaken:
            log.warning("early_replica_not_taken", pid=early.child.pid, action="stopping it")
        stop_early(untaken, grace_seconds=0)

    async def _start_services(self, cfg: Config) -> None:
        """Alerting and the Cloudflare API tasks, imported here and not at start-up. Then
        start-up is over: its garbage is collected once and what it left is frozen.

        Everything the running daemon calls is imported by now, not on first use: an import
        opens files, and a daemon out of descriptors (EMFILE) must still observe and serve."""
        from tunnelkeeper.alerts import AlertPipeline
        from tunnelkeeper.alerts.conditions import tunnel_conditions
        from tunnelkeeper.service.apitasks import ApiTasks
        from tunnelkeeper.service.httpconn import load_parser

        load_parser()
        self._tunnel_conditions = tunnel_conditions

        for sink in cfg.alerts.sinks:
            self.metrics.declare_sink(sink.name)
        self.api_tasks = ApiTasks(cfg, self.tunnels, self.metrics, clock=self.clock)
        self.alerts = AlertPipeline(
            cfg.daemon.host,
            cfg.alerts,
            cfg.daemon.state_dir,
            self.metrics,
            clock=self.clock,
            generator_url=f"http://{cfg.daemon.listen}/status",
            resolve_hold_seconds=cfg.alerts.resolve_hold_seconds,
            resend_interval_seconds=cfg.alerts.resend_interval_seconds,
        )
        self.api_tasks.on_fleet_polled = self.alerts.confirm
        self.services_started = True
        await self.alerts.start()
        await self.api_tasks.start()
        settle_after_start()
        log.info("services_started", after_seconds=round(self.clock() - self.started_at, 3))

    def _converge(self) -> None:
        self.tunnels.converge(on_error=converge_failed(self.metrics))
        # before anything awaits: every spawned replica is on record
        self.ledger.write(self.tunnels.replicas())

    async def _loop(self) -> None:
        interval = self.config.daemon.probe_interval_seconds
        watchdog = self.notifier.watchdog_interval_seconds()
        last_watchdog = 0.0
        while not self.stop_requested.is_set():
            self._converge()
            self.unknown_replicas = tuple(str(r.rid) for r in self.tunnels.replicas() if r.stale)
            await self.upgrader.tick()
            self._observe_alerts()
            self._notify_systemd()
            if not self.services_started and (
                self._ready_sent or self.clock() - self.started_at >= SERVICES_AFTER_SECONDS
            ):
                await self._start_services(self.config)
            await self._repair_runtime_dir()
            now = self.clock()
            self.last_tick_at = now
            if watchdog is not None and now - last_watchdog >= watchdog:
                self.notifier.send("WATCHDOG=1")
                last_watchdog = now
            self.wake.clear()
            # the next tick: the interval, a change (exit, probe, log hint), or the moment an
            # alert's hold runs out (so a page leaves then, not at the tick after)
            timeout = until_beat(interval)  # with the probes: one wake-up for both
            if self.services_started:
                deadline = self.alerts.next_deadline()
            else:
                deadline = self.started_at + SERVICES_AFTER_SECONDS
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - self.clock()) + DEADLINE_SLACK_SECONDS)
            waiter = asyncio.ensure_future(self.wake.wait())
            stopper = asyncio.ensure_future(self.stop_requested.wait())
            await asyncio.wait(
                {waiter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            stopper.cancel()

    async def _shutdown(self) -> None:
        replicas = sum(1 for _ in self.tunnels.replicas())
        if self.handover:
            self.notifier.send("STOPPING=1", "STATUS=handing replicas over to the next daemon")
            log.info("daemon_handing_over", replicas=replicas)
        else:
            self.notifier.send("STOPPING=1", "STATUS=draining replicas")
            log.info("daemon_stopping", replicas=replicas)
        # Each step on its own: one that fails must not skip the drain or the rest.
        for feed in self.tunnels.feeds.values():
            await quietly("token feed", feed.aclose())
        if self.services_started:
            await quietly("api tasks", self.api_tasks.aclose())
        if self.handover:
            self.ledger.write(self.tunnels.replicas())
            for sup in self.tunnels.sups.values():
                await quietly("release", sup.release_all())
        else:
            drains = (sup.drain_all() for sup in self.tunnels.all_supervisors())
            await quietly("drain", asyncio.gather(*drains))
            self.ledger.write(self.tunnels.replicas())
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.services_started:
            await quietly("alerts", self.alerts.aclose())
        await quietly("web", self.web.aclose())
        await quietly("prober", self.prober.aclose())
        log.info("daemon_stopped")
        self.notifier.close()

    async def _repair_runtime_dir(self) -> None:
        """A deleted runtime_dir (tmpfiles clean-up, an operator's rm -rf) is recreated: the
        replicas' directory and the control socket come back; running replicas are unaffected
        (their token and log files are open or already read)."""
        if not self.web.control_socket_missing():
            return
        runtime = self.config.daemon.runtime_dir
        log.error("runtime_dir_missing", path=str(runtime), action="recreating it")
        runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.web.rebind_control()

    async def _sample_lag(self) -> None:
        """How late a timer fires: the event loop's lag, as every page and probe sees it."""
        loop = asyncio.get_running_loop()
        while True:
            wait = until_beat(LAG_SAMPLE_SECONDS)  # on the beat, when the loop is busiest
            due = loop.time() + wait
            await asyncio.sleep(wait)
            self.metrics.loop_lag.observe(max(0.0, loop.time() - due))

    def _on_handover(self) -> None:
        """SIGUSR2 (systemd's RestartKillSignal): exit without draining; the next daemon adopts
        the replicas, so a restart of tunnelkeeper costs no capacity."""
        self.handover = True
        self.stop_requested.set()

    def _on_sigchld(self) -> None:
        for sup in self.tunnels.all_supervisors():
            sup.check_stops()

    def _on_sighup(self) -> None:
        log.info("sighup_received", action="reloading config and re-reading token sources")
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _observe_alerts(self) -> None:
        if not self.services_started:
            return  # the conditions are observed from the first tick after they start
        now = self.clock()
        conditions: list[Condition] = []
        for name, sup in self.tunnels.sups.items():
            conditions += self._tunnel_conditions(
                sup, now, source_unavailable=self.tunnels.feeds[name].unavailable
            )
        conditions += self.api_tasks.conditions()
        conditions += self.upgrader.conditions()
        self.alerts.observe(conditions)

    def _notify_systemd(self) -> None:
        parts = []
        all_ready = True
        for sup in self.tunnels.sups.values():
            ready = sup.ready_count()
            parts.append(f"{sup.cfg.name} {ready}/{len(sup.slots)} ready")
            all_ready = all_ready and ready > 0
        line = "; ".join(parts)
        if line != self._status_line:
            self._status_line = line
            self.notifier.send(f"STATUS={line}")
        timed_out = self.clock() - self.started_at >= self.config.daemon.ready_timeout_seconds
        if not self._ready_sent and (all_ready or timed_out):
            self._ready_sent = True
            self.notifier.send("READY=1", f"STATUS={line}")
            log.info("daemon_ready", all_tunnels_ready=all_ready)


LAG_SAMPLE_SECONDS = 0.5
# alerting and the API tasks start once every tunnel has a ready replica, or after this long
SERVICES_AFTER_SECONDS = 1.0
# past an alert's deadline by this much, so the evaluation at the wake-up sees it due
DEADLINE_SLACK_SECONDS = 0.001
