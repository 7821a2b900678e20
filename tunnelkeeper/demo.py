"""``tunnelkeeper demo``: the whole product on one machine, no account or network needed.

Starts the simulated Cloudflare (edge, API, public entry, a built-in origin), a local alert
receiver, and ``tunnelkeeper run`` supervising two cloudflared-sim replicas; sends a few
requests per second through the entry and shows live status with the commands to try
(kill a replica, partition it, freeze it). Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from tunnelkeeper.service.statusview import render
from tunnelkeeper.tasks import wait_event

TUNNEL = "demo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cloudflared_sim(workdir: Path) -> str:
    beside = Path(sys.executable).parent / "cloudflared-sim"
    found = str(beside) if beside.exists() else shutil.which("cloudflared-sim")
    if found:
        return found
    wrapper = workdir / "cloudflared-sim"
    wrapper.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -c "from tunnelkeeper.sim.cloudflared '
        f'import main; raise SystemExit(main())" "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


class Receiver:
    """The on-call end: records pages from the webhook sink."""

    def __init__(self) -> None:
        self.pages: deque[str] = deque(maxlen=6)
        self.count = 0
        self._runner: web.AppRunner | None = None
        self.port = _free_port()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _hook(self, request: web.Request) -> web.Response:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            body = await request.json()
            for a in body["alerts"]:
                labels = a["labels"]
                where = "/".join(labels[k] for k in ("tunnel", "slot") if k in labels)
                self.count += 1
                self.pages.append(
                    f"{time.strftime('%H:%M:%S')} {a['status'].upper():8} "
                    f"{labels['alertname']} {where} — {a['annotations'].get('summary', '')}"
                )
        return web.Response(text="ok")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def _spawn(args: list[str], log: Path) -> asyncio.subprocess.Process:
    with open(log, "wb") as f:
        return await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=f,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )


async def _stop(proc: asyncio.subprocess.Process | None, wait_seconds: float = 30) -> None:
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), wait_seconds)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def _config(
    workdir: Path, sim: dict[str, Any], listen_port: int, receiver: Receiver, replicas: int
) -> Path:
    secret = workdir / "webhook.secret"
    secret.write_text("whsec_" + base64.b64encode(os.urandom(32)).decode() + "\n")
    secret.chmod(0o600)
    cfg = workdir / "tunnelkeeper.toml"
    cfg.write_text(f"""# written by `tunnelkeeper demo`
[daemon]
host = "demo-host"
listen = "127.0.0.1:{listen_port}"
state_dir = "{workdir / "state"}"
runtime_dir = "{workdir / "run"}"
log_format = "json"

[cloudflared]
path = "{_cloudflared_sim(workdir)}"
args = ["--edge", "{sim["edge"]}"]

[[tunnel]]
name = "{TUNNEL}"
id = "{sim["tunnels"][TUNNEL]}"
replicas = {replicas}
grace_period_seconds = 5
unhealthy_after_seconds = 10
token = {{ source = "file", path = "{workdir / (TUNNEL + ".token")}" }}

[alerts]
for_seconds = 3
resolve_hold_seconds = 5

[[alerts.sink]]
kind = "webhook"
url = "http://127.0.0.1:{receiver.port}/hook"
signing_secret_file = "{secret}"
""")
    return cfg


async def _load(url: str, counts: Counter[str], stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=10, headers={"Host": TUNNEL}) as client:
        while not stop.is_set():
            try:
                r = await client.get(url + "/")
                counts["ok" if r.status_code < 400 else "failed"] += 1
            except httpx.HTTPError:
                counts["failed"] += 1
            await wait_event(stop, 0.25)


def _screen(
    status: dict[str, Any] | None,
    sim: dict[str, Any],
    counts: Counter[str],
    receiver: Receiver,
    cfg: Path,
    tty: bool,
) -> str:
    lines = []
    if status is None:
        lines.append("tunnelkeeper is starting…")
    else:
        lines.append(render(status))
    lines += [
        "",
        f"requests through the tunnel: {counts['ok']} ok, {counts['failed']} failed",
        f"pages received by the on-call receiver: {receiver.count}",
    ]
    lines += [f"  {p}" for p in receiver.pages]
    auth = f"-H 'Authorization: Bearer {sim['api_token']}'"
    reps = [
        r
        for t in (status or {}).get("tunnels", [])
        for r in t["replicas"]
        if r["role"] == "primary"
    ]
    lines += ["", "try it:", f"  curl -H 'Host: {TUNNEL}' {sim['http']}/"]
    if reps:
        r = reps[0]
        lines += [
            f"  kill -9 {r['pid']}                         # a replica dies: replaced at once",
            f"  curl -X POST {auth} {sim['api']}/sim/faults "
            f'-d \'{{"action":"partition","connector_id":"{r["connector_id"]}"}}\'',
            "      # alive but dark at the edge: paged, then replaced surge-then-drain",
            f'  curl -X POST {auth} {sim["api"]}/sim/faults -d \'{{"action":"heal"}}\'',
            f"  kill -STOP {r['pid']}                      # hung: detected unresponsive, replaced",
        ]
    lines += [f"  tunnelkeeper status -c {cfg}", "", "Ctrl-C stops everything."]
    text = "\n".join(lines)
    return ("\x1b[H\x1b[2J" + text) if tty else text + "\n" + "-" * 72


async def _demo(replicas: int, duration: float | None) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="tunnelkeeper-demo-"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    receiver = Receiver()
    sim_proc = daemon_proc = None
    counts: Counter[str] = Counter()
    tty = sys.stdout.isatty()
    try:
        await receiver.start()
        ready = workdir / "sim.json"
        sim_proc = await _spawn(
            [
                sys.executable,
                "-m",
                "tunnelkeeper",
                "sim",
                "--tunnel",
                f"{TUNNEL}=builtin",
                "--token-dir",
                str(workdir),
                "--ready-file",
                str(ready),
            ],
            workdir / "sim.log",
        )
        deadline = time.monotonic() + 20
        while not ready.exists():
            if sim_proc.returncode is not None or time.monotonic() > deadline:
                print("demo: the simulator did not start; see", workdir / "sim.log")
                return 1
            await asyncio.sleep(0.05)
        sim = json.loads(ready.read_text())
        port = _free_port()
        cfg = _config(workdir, sim, port, receiver, replicas)
        daemon_proc = await _spawn(
            [sys.executable, "-m", "tunnelkeeper", "run", "-c", str(cfg)], workdir / "daemon.log"
        )
        load: asyncio.Task[None] | None = None
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=2) as client:
            while not stop.is_set():
                if daemon_proc.returncode is not None:
                    print("demo: the daemon exited; see", workdir / "daemon.log")
                    return 1
                status = None
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    status = (await client.get(f"http://127.0.0.1:{port}/status")).json()
                if load is None and status and all(t["ready_replicas"] for t in status["tunnels"]):
                    # traffic starts once the tunnel is up, as it would for real users
                    load = asyncio.create_task(_load(sim["http"], counts, stop))
                print(_screen(status, sim, counts, receiver, cfg, tty), flush=True)
                if duration is not None and time.monotonic() - started >= duration:
                    break
                await wait_event(stop, 1.0)
        stop.set()
        if load is not None:
            await load
        return 0
    finally:
        print("\nstopping: draining replicas…", flush=True)
        await _stop(daemon_proc)
        await _stop(sim_proc)
        await receiver.stop()
        print(
            f"done: {counts['ok']} requests ok, {counts['failed']} failed, "
            f"{receiver.count} pages. Logs were in {workdir} (removed)."
        )
        shutil.rmtree(workdir, ignore_errors=True)


def demo_command(*, replicas: int = 2, duration: float | None = None) -> int:
    if replicas < 1 or replicas > 25:
        print("demo: --replicas must be between 1 and 25", file=sys.stderr)
        return 2
    return asyncio.run(_demo(replicas, duration))
