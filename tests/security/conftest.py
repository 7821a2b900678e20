"""One running stack for the security tests: the simulator and a daemon with two tunnels, one
reading its token from a file and one from an environment variable (the source that puts a
token into a process environment), so every way a token travels is in play.

The working directory is world-traversable (0755) on purpose: the control-socket tests must
show that the daemon's own permissions keep an unprivileged user out, not pytest's private
temporary directory. The simulator's directory, which holds the plain token files, is 0700.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.harness import Daemon, Sim, daemon_config, start_daemon, start_sim
from tests.security.leaks import Secret

ADMIN_TOKEN_VAR = "TK_SECURITY_ADMIN_TOKEN"


@dataclass
class Stack:
    workdir: Path
    sim: Sim
    daemon: Daemon
    portal: Secret  # from a file source
    admin: Secret  # from an env source: the daemon's own environment holds it

    @property
    def secrets(self) -> list[Secret]:
        return [self.portal, self.admin]

    @property
    def config(self) -> Path:
        return self.daemon.config

    @property
    def runtime_dir(self) -> Path:
        return self.workdir / "run"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def replicas(self) -> list[psutil.Process]:
        """The cloudflared processes this daemon runs."""
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if any(str(self.runtime_dir) in part for part in cmd) and "tunnel" in cmd:
                found.append(proc)
        return found


def kill_leftover_replicas(runtime_dir: Path) -> None:
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(runtime_dir) in part for part in proc.info["cmdline"] or []):
            try:
                proc.kill()
            except psutil.Error:
                pass


@pytest.fixture(scope="package")
def stack() -> Iterator[Stack]:
    workdir = Path(tempfile.mkdtemp(prefix="tk-security-", dir="/tmp"))
    os.chmod(workdir, 0o755)
    (workdir / "sim").mkdir(mode=0o700)
    sim = start_sim(workdir / "sim", {"portal": "builtin", "admin": "builtin"})
    daemon: Daemon | None = None
    try:
        portal_id = sim.info["tunnels"]["portal"]
        config = daemon_config(
            workdir,
            sim,
            tunnels={
                "portal": {"id": f'"{portal_id}"'},
                "admin": {
                    "replicas": 1,
                    "token": f'{{ source = "env", var = "{ADMIN_TOKEN_VAR}" }}',
                },
            },
        )
        daemon = start_daemon(config, env={ADMIN_TOKEN_VAR: sim.token("admin")})
        daemon.wait_ready("portal", 2)
        daemon.wait_ready("admin", 1)
        yield Stack(
            workdir,
            sim,
            daemon,
            Secret.of("portal token", sim.token("portal")),
            Secret.of("admin token", sim.token("admin")),
        )
    finally:
        if daemon is not None:
            daemon.stop()
        sim.stop()
        kill_leftover_replicas(workdir / "run")
        shutil.rmtree(workdir, ignore_errors=True)
