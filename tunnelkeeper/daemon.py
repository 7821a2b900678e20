"""``tunnelkeeper run``: wire config, token sources, supervisors, HTTP and systemd together.

One loop: wait for an event (a replica exited, a probe saw a change, a signal) or the next
tick, then converge every tunnel. Signal handlers only set events.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from tunnelkeeper import __version__
from tunnelkeeper.adoption import adopt_all
from tunnelkeeper.alerts import AlertPipeline
from tunnelkeeper.cfapi import CloudflareAPI
from tunnelkeeper.conditions import tunnel_conditions
from tunnelkeeper.config import Config, TunnelConfig
from tunnelkeeper.fleet import FleetPoller
from tunnelkeeper.ledger import LedgerEntry, write_ledger
from tunnelkeeper.logconfig import SECRETS, configure
from tunnelkeeper.metrics import Metrics
from tunnelkeeper.notify import Notifier
from tunnelkeeper.ports import PortAllocator
from tunnelkeeper.probe import Prober
from tunnelkeeper.reload import reconfigure
from tunnelkeeper.statusview import tunnel_status
from tunnelkeeper.supervisor import TunnelSupervisor
from tunnelkeeper.tokens import TokenFeed
from tunnelkeeper.upgrade import Upgrader
from tunnelkeeper.web import DaemonWeb

if TYPE_CHECKING:
    from tunnelkeeper.schedule import RefreshScheduler

log = structlog.get_logger("tunnelkeeper.daemon")


class Daemon:
    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.metrics = Metrics()
        self.wake = asyncio.Event()
        self.stop_requested = asyncio.Event()
        self.notifier = Notifier()
        self.prober = Prober(timeout_seconds=min(1.0, config.daemon.probe_interval_seconds))
        self.ports = PortAllocator()
        self.started_at = clock()
        self.started_wall = datetime.now(UTC)
        self.last_tick_at = clock()
        self.sups: dict[str, TunnelSupervisor] = {}
        self.fleet: FleetPoller | None = None
        self.scheduler: RefreshScheduler | None = None
        self.fleet_error: str | None = None
        self._fleet_task: asyncio.Task[None] | None = None
        self.feeds: dict[str, TokenFeed] = {}
        self.retiring: list[TunnelSupervisor] = []  # removed by a reload, draining
        self.upgrader = Upgrader(config.cloudflared, config.daemon.state_dir)
        self._ready_sent = False
        self.handover = False
        self._background: set[asyncio.Task[Any]] = set()
        self._reload_lock = asyncio.Lock()
        self._status_line = ""
        self._ledger_key: tuple[tuple[Any, ...], ...] = ()
        self._ledger_error: str | None = None
        self.alerts = AlertPipeline(
            config.daemon.host,
            config.alerts,
            config.daemon.state_dir,
            self.metrics,
            clock=clock,
            generator_url=f"http://{config.daemon.listen}/status",
            resolve_hold_seconds=config.alerts.resolve_hold_seconds,
        )
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
        for key, d in (
            ("daemon.state_dir", cfg.daemon.state_dir),
            ("daemon.runtime_dir", cfg.daemon.runtime_dir),
        ):
            try:
                d.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                print(
                    f"tunnelkeeper: {key}: cannot create {d}: {exc.strerror or exc}",
                    file=sys.stderr,
                )
                return EXIT_CONFIG
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
            return 1
        for t in cfg.tunnels:
            self.add_tunnel(t)
        for sink in cfg.alerts.sinks:
            self.metrics.declare_sink(sink.name)
        adopted, stopped = adopt_all(self.ledger_path, self.sups, cfg.daemon.runtime_dir)
        if adopted or stopped:
            log.info("replicas_adopted", adopted=adopted, stopped=stopped)
        self._write_ledger()
        self.upgrader.attach(self.sups)
        await self.upgrader.prepare(cfg.cloudflared)
        await self.alerts.start()
        self._start_fleet()
        await self._start_schedule()
        for feed in self.feeds.values():
            await feed.start()
        log.info(
            "daemon_started",
            version=__version__,
            host=cfg.daemon.host,
            listen=cfg.daemon.listen,
            tunnels=[t.name for t in cfg.tunnels],
        )
        try:
            await self._loop()
        finally:
            await self._shutdown()
        return 0

    async def _loop(self) -> None:
        interval = self.config.daemon.probe_interval_seconds
        watchdog = self.notifier.watchdog_interval_seconds()
        last_watchdog = 0.0
        while not self.stop_requested.is_set():
            for sup in [*self.sups.values(), *self.retiring]:
                sup.converge()
            self._write_ledger()  # before anything awaits: every spawned replica is on record
            self.retiring = [s for s in self.retiring if s.replicas]
            await self.upgrader.tick()
            self._observe_alerts()
            self._notify_systemd()
            now = self.clock()
            self.last_tick_at = now
            if watchdog is not None and now - last_watchdog >= watchdog:
                self.notifier.send("WATCHDOG=1")
                last_watchdog = now
            self.wake.clear()
            deadline = now + interval
            waiter = asyncio.ensure_future(self.wake.wait())
            stopper = asyncio.ensure_future(self.stop_requested.wait())
            await asyncio.wait(
                {waiter, stopper}, timeout=interval, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            stopper.cancel()
            lag = self.clock() - deadline
            self.metrics.loop_lag.set(max(0.0, lag) if not self.wake.is_set() else 0.0)

    async def _shutdown(self) -> None:
        replicas = sum(len(s.replicas) for s in self.sups.values())
        if self.handover:
            self.notifier.send("STOPPING=1", "STATUS=handing replicas over to the next daemon")
            log.info("daemon_handing_over", replicas=replicas)
        else:
            self.notifier.send("STOPPING=1", "STATUS=draining replicas")
            log.info("daemon_stopping", replicas=replicas)
        for feed in self.feeds.values():
            await feed.aclose()
        await self._stop_fleet()
        if self.scheduler is not None:
            await self.scheduler.aclose()
        if self.handover:
            self._write_ledger()
            for sup in self.sups.values():
                await sup.release_all()
        else:
            await asyncio.gather(
                *(sup.drain_all() for sup in [*self.sups.values(), *self.retiring])
            )
            self._write_ledger()
        await self.alerts.aclose()
        await self.web.aclose()
        await self.prober.aclose()
        log.info("daemon_stopped")
        self.notifier.close()

    def _on_handover(self) -> None:
        """SIGUSR2 (systemd's RestartKillSignal): exit without draining; the next daemon adopts
        the replicas, so a restart of tunnelkeeper costs no capacity."""
        self.handover = True
        self.stop_requested.set()

    def _on_sighup(self) -> None:
        log.info("sighup_received", action="reloading config and re-reading token sources")
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _observe_alerts(self) -> None:
        now = self.clock()
        conditions = []
        for name, sup in self.sups.items():
            conditions += tunnel_conditions(
                sup, now, source_unavailable=self.feeds[name].unavailable
            )
        if self.fleet is not None:
            conditions += self.fleet.conditions()
        conditions += self.upgrader.conditions()
        self.alerts.observe(conditions)

    def _start_fleet(self) -> None:
        fleet = self.config.fleet
        if fleet is None:
            return
        try:
            api_token = fleet.api_token_file.read_text().strip()
        except OSError as exc:
            self.fleet_error = f"fleet.api_token_file: {exc.strerror or exc}"
            log.error("fleet_disabled", key="fleet.api_token_file", error=self.fleet_error)
            return
        SECRETS.add(api_token)
        api = CloudflareAPI(fleet.api_url, fleet.account_id, api_token)
        self.fleet = FleetPoller(
            fleet,
            self.config.tunnels,
            self.metrics,
            api=api,
            local_connectors=lambda name: {
                r.connector_id for r in self.sups[name].replicas.values() if r.connector_id
            },
            clock=self.clock,
        )
        self._fleet_task = asyncio.create_task(self.fleet.run(), name="fleet poller")

    async def _start_schedule(self) -> None:
        """Scheduled secret refresh, on the host that holds API credentials ([fleet])."""
        cfg = self.config
        if cfg.fleet is None or not any(t.refresh_schedule for t in cfg.tunnels):
            return
        from tunnelkeeper.refresh import scheduled_refresh
        from tunnelkeeper.schedule import RefreshScheduler  # apscheduler: only when used

        async def refresh(tunnel: TunnelConfig) -> None:
            await scheduled_refresh(self.config, tunnel)
            feed = self.feeds.get(tunnel.name)
            if feed is not None:
                feed.poll_now()  # roll here now rather than at the next poll

        self.scheduler = RefreshScheduler(cfg, cfg.daemon.state_dir, refresh)
        await self.scheduler.start()

    async def _stop_fleet(self) -> None:
        if self._fleet_task is not None:
            self._fleet_task.cancel()
            await asyncio.gather(self._fleet_task, return_exceptions=True)
        if self.fleet is not None:
            await self.fleet.api.aclose()

    # --- systemd, ledger -----------------------------------------------------------------------

    @property
    def ledger_path(self) -> Any:
        return self.config.daemon.state_dir / "replicas.json"

    def _write_ledger(self) -> None:
        live = [
            r
            for sup in self.sups.values()
            for r in sup.replicas.values()
            if r.proc.pid is not None and r.proc.running
        ]
        key = tuple((r.proc.pid, r.rid.generation, r.role.value) for r in live)
        if key == self._ledger_key:
            return  # the common case, every tick: nothing to write, nothing to build
        entries = [
            LedgerEntry(
                r.rid.tunnel,
                r.rid.slot,
                r.rid.generation,
                r.proc.pid or 0,  # filtered above: never None here
                r.proc.create_time or 0.0,
                r.proc.spec.metrics_port,
                str(r.proc.token_file),
                str(r.proc.spec.binary),
                r.role.value,
            )
            for r in live
        ]
        try:
            write_ledger(self.ledger_path, entries)
            self._ledger_key = key
            if self._ledger_error is not None:
                log.info("ledger_write_recovered", path=str(self.ledger_path))
            self._ledger_error = None
        except OSError as exc:
            if str(exc) != self._ledger_error:  # once per distinct error, not every tick
                log.error(
                    "ledger_write_failed",
                    path=str(self.ledger_path),
                    error=str(exc),
                    consequence="a daemon restart now could not adopt these replicas",
                )
            self._ledger_error = str(exc)

    def _notify_systemd(self) -> None:
        parts = []
        all_ready = True
        for sup in self.sups.values():
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

    # --- HTTP endpoints ------------------------------------------------------------------------

    def healthz(self) -> tuple[bool, str]:
        stale = self.clock() - self.last_tick_at
        limit = 3 * self.config.daemon.probe_interval_seconds + 2
        return (stale < limit, f"supervision loop last ran {stale:.1f}s ago")

    def readyz(self) -> tuple[bool, str]:
        dark = [
            n
            for n, s in self.sups.items()
            if not any(r.ready_connections > 0 for r in s.replicas.values())
        ]
        if dark:
            return False, "no ready replica for: " + ", ".join(dark)
        return True, "every tunnel has a ready replica"

    def status(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "version": __version__,
            "host": self.config.daemon.host,
            "pid": os.getpid(),
            "uptime_seconds": round(now - self.started_at, 1),
            "started_at": self.started_wall.isoformat(timespec="seconds"),
            "tunnels": [tunnel_status(s, now) for s in self.sups.values()],
            "alerts_firing": sorted(
                "/".join([a.alertname, *(a.labels[k] for k in ("tunnel", "slot") if k in a.labels)])
                for a in self.alerts.firing()
            ),
            "alerts": self.alerts.status(),
            "fleet": self.fleet.snapshot() if self.fleet is not None else None,
            "fleet_error": self.fleet_error,
        }

    async def rotate(self, tunnel: str | None, force: bool) -> dict[str, Any]:
        names = [tunnel] if tunnel else list(self.sups)
        if tunnel and tunnel not in self.sups:
            return {"error": f"no tunnel named {tunnel!r} in this daemon's config"}
        results = await asyncio.gather(*(self.feeds[n].rotate(force) for n in names))
        return {"tunnels": list(results)}

    async def reload(self) -> dict[str, Any]:
        """Re-read the config; apply it with the least disruption, or keep the running one."""
        from tunnelkeeper.configfile import ConfigError, load_config

        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")
        try:
            new = await asyncio.to_thread(load_config, self.config.path)
        except ConfigError as exc:
            problems = str(exc).splitlines()
            log.error("reload_rejected", problems=problems, kept="the running config")
            self.notifier.send("READY=1", "STATUS=reload rejected: invalid config, kept the old")
            return {"error": "invalid config; the running config is kept", "problems": problems}
        async with self._reload_lock:
            changes = await reconfigure(self, new)
        for feed in self.feeds.values():
            feed.poll_now()
        self.notifier.send("READY=1", f"STATUS={self._status_line}")
        log.info("config_reloaded", **changes)
        return {"reloaded": True, **changes}

    def add_tunnel(self, t: TunnelConfig) -> TunnelSupervisor:
        cfg = self.config
        sup = TunnelSupervisor(
            t,
            cfg.daemon,
            cfg.cloudflared,
            ports=self.ports,
            prober=self.prober,
            metrics=self.metrics,
            wake=self.wake,
            clock=self.clock,
        )
        self.sups[t.name] = sup
        self.feeds[t.name] = TokenFeed(t, sup, self.metrics, clock=self.clock)
        return sup


# sysexits.h EX_CONFIG: the unit's RestartPreventExitStatus= stops systemd from restarting a
# daemon that can only fail the same way again until someone fixes the config.
EXIT_CONFIG = 78


def run_command(config_path: str) -> int:
    from tunnelkeeper.configfile import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"tunnelkeeper: invalid config:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure(config.daemon.log_level, config.daemon.log_format)
    binary = config.cloudflared.path
    managed = config.cloudflared.install is not None  # the daemon installs it at start
    if not managed and not (binary.is_file() and os.access(binary, os.X_OK)):
        print(
            f"tunnelkeeper: cloudflared.path: {binary} is not an executable file "
            "(run `tunnelkeeper install` or fix the path)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    return asyncio.run(Daemon(config).run())
