"""The daemon's HTTP listens on loopback unless told otherwise: the config default, and what a
daemon started without `listen` really binds (seen with psutil, as `ss -ltnp` would show it).

The daemon runs in its own network namespace, so that it can bind the default port 9105 whatever
else on this machine uses it; psutil reads sockets through /proc/net of the calling namespace, so
the check runs inside the daemon's namespace too (nsenter).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import CLOUDFLARED_SIM, TUNNELKEEPER, stop_process
from tests.waiting import wait_until
from tunnelkeeper.config.load import parse_config
from tunnelkeeper.config.model import DaemonConfig, defaults
from tunnelkeeper.tunneltoken import TunnelToken

pytestmark = pytest.mark.system

LISTENERS = """
import json, sys, psutil
proc = psutil.Process(int(sys.argv[1]))
print(json.dumps(sorted({f"{c.laddr.ip}:{c.laddr.port}" for c in proc.net_connections("inet")
                         if c.status == psutil.CONN_LISTEN})))
"""


def minimal_config(tmp_path: Path) -> str:
    token = tmp_path / "portal.token"
    token.write_text(
        TunnelToken.build(
            "699d98642c564d2e855e9661899b7252",
            "c1744f8b-faa1-48a4-9e5c-02ac921467fa",
            os.urandom(32),
        ).reveal()
    )
    token.chmod(0o600)
    return "\n".join(
        [
            "[daemon]",
            f'state_dir = "{tmp_path / "state"}"',
            f'runtime_dir = "{tmp_path / "run"}"',
            "[cloudflared]",
            f'path = "{CLOUDFLARED_SIM}"',
            'args = ["--edge", "127.0.0.1:1"]',  # nothing listens there: replicas stay down
            "[[tunnel]]",
            'name = "portal"',
            "replicas = 1",
            f'token = {{ source = "file", path = "{token}" }}',
            "",
        ]
    )


def test_the_config_default_is_loopback(tmp_path: Path) -> None:
    config = parse_config(minimal_config(tmp_path), tmp_path / "config.toml")
    assert config.daemon.listen == defaults(DaemonConfig)["listen"] == "127.0.0.1:9105"
    assert config.daemon.listen_host == "127.0.0.1"


@pytest.mark.skipif(
    os.geteuid() != 0
    or not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("ip")),
    reason="needs root, unshare, nsenter and ip (util-linux, iproute2) for a network namespace",
)
def test_a_daemon_without_listen_binds_only_loopback(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(minimal_config(tmp_path))
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        # unshare and sh exec into the daemon: the pid we hold is the daemon's
        proc = subprocess.Popen(
            [
                "unshare",
                "--net",
                "sh",
                "-c",
                'ip link set lo up && exec "$0" run -c "$1"',
                TUNNELKEEPER,
                str(config),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:

        def listening() -> list[str] | None:
            assert proc.poll() is None, log.read_text()[-2000:]
            res = subprocess.run(
                [
                    "nsenter",
                    f"--net=/proc/{proc.pid}/ns/net",
                    sys.executable,
                    "-c",
                    LISTENERS,
                    str(proc.pid),
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            found: list[str] = json.loads(res.stdout)
            return found or None

        wait_until(
            lambda: "daemon_started" in log.read_text() or proc.poll() is not None,
            timeout=30,
            what="the daemon started",
        )
        assert wait_until(listening, timeout=30, what="the daemon listening") == ["127.0.0.1:9105"]
    finally:
        stop_process(proc)
