"""One booted machine per module: the README's production install, executed literally, under a
real systemd as PID 1 (see machine.py for how the host is kept out of its reach).

The simulated Cloudflare (``tunnelkeeper sim``) and an origin run inside the machine as
transient units, so every request stays in the machine's own network namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import VENV_BIN
from tests.systemd.machine import Machine, unavailable
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
CONFIG = "/etc/tunnelkeeper/config.toml"
ORIGIN_PORT = 8081
# The README's "Production install", step 1, as written there (tests/systemd/test_install.py
# checks that the README still says exactly this). PIP_NO_INDEX/PIP_FIND_LINKS point pip at a
# wheelhouse built outside: the machine has no network.
INSTALL = """
python3 -m venv /opt/tunnelkeeper
/opt/tunnelkeeper/bin/pip install tunnelkeeper
ln -s /opt/tunnelkeeper/bin/tunnelkeeper /usr/local/bin/tunnelkeeper
install -m 0644 systemd/tunnelkeeper.service /etc/systemd/system/
install -m 0644 systemd/tunnelkeeper.sysusers.conf /usr/lib/sysusers.d/tunnelkeeper.conf
install -m 0644 systemd/tunnelkeeper.tmpfiles.conf /usr/lib/tmpfiles.d/tunnelkeeper.conf
systemd-sysusers tunnelkeeper.conf
systemd-tmpfiles --create tunnelkeeper.conf
""".strip()


def config_text(sim: dict[str, Any], tunnels: dict[str, int], token: str = "file") -> str:
    lines = [
        "[daemon]",
        'host = "tk-machine"',
        "probe_interval_seconds = 0.5",
        "ready_timeout_seconds = 20",
        "",
        "[cloudflared]",
        'path = "/opt/tunnelkeeper/bin/cloudflared-sim"',
        f'args = ["--edge", "{sim["edge"]}"]',
        "",
    ]
    for name, replicas in tunnels.items():
        source = (
            f'{{ source = "systemd-credential", name = "{name}.token" }}'
            if token == "credential"
            else f'{{ source = "file", path = "/etc/tunnelkeeper/{name}.token" }}'
        )
        lines += [
            "[[tunnel]]",
            f'name = "{name}"',
            f'id = "{sim["tunnels"][name]}"',
            f"replicas = {replicas}",
            "grace_period_seconds = 5",
            f"token = {source}",
            "",
        ]
    return "\n".join(lines)


@dataclass
class Host:
    """The installed machine, as its operator sees it."""

    m: Machine
    share: Path
    sim: dict[str, Any]
    sentinel: Path

    def write_config(self, text: str, *, valid: bool = True) -> None:
        (self.share / "config.toml").write_text(text)
        self.m.sh(f"install -m 0640 -g tunnelkeeper /srv/config.toml {CONFIG}")
        if valid:  # what `status` reads the daemon's address from, whatever CONFIG holds now
            (self.share / "good.toml").write_text(text)

    def status(self) -> dict[str, Any]:
        out = self.m.run("tunnelkeeper", "status", "--json", "-c", "/srv/good.toml").stdout
        result: dict[str, Any] = json.loads(out)
        return result

    def ready(self, tunnel: str) -> int:
        try:
            status = self.status()
        except (AssertionError, ValueError):
            return -1
        t = next((t for t in status["tunnels"] if t["name"] == tunnel), None)
        return int(t["ready_replicas"]) if t else -1

    def replica_pids(self) -> set[int]:
        out = self.m.run("pgrep", "-f", "cloudflared-sim", check=False).stdout
        return {int(p) for p in out.split()}

    def journal(self, unit: str = "tunnelkeeper", since: str | None = None) -> list[dict[str, Any]]:
        args = ["journalctl", "-u", unit, "-o", "json", "--no-pager"]
        if since:
            args += ["--since", since]
        out = self.m.run(*args).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for entry in self.journal():
            message = entry.get("MESSAGE")
            if isinstance(message, str) and message.startswith("{"):
                try:
                    body = json.loads(message)
                except ValueError:
                    continue
                if body.get("event") == name:
                    found.append({**body, "_priority": entry.get("PRIORITY")})
        return found

    @contextmanager
    def load(self) -> Iterator[dict[str, Any]]:
        """Requests through the simulated edge while the body runs; yields the results."""
        out = self.share / "load.json"
        out.unlink(missing_ok=True)
        url = self.sim["http"]
        self.m.run(
            "systemd-run",
            "--unit=tk-load",
            "--collect",
            str(VENV_BIN / "python"),
            "/srv/loadgen.py",
            url,
            "portal",
            "/srv/load.json",
        )
        results: dict[str, Any] = {}
        try:
            wait_until(
                lambda: out.exists() and json.loads(out.read_text())["ok"] >= 10,
                timeout=20,
                what="load flowing",
            )
            yield results
        finally:
            self.m.systemctl("stop", "tk-load", check=False)
            results.update(json.loads(out.read_text()))


def _wheelhouse(into: Path) -> None:
    subprocess.run(
        [str(VENV_BIN / "pip"), "wheel", "-q", "--wheel-dir", str(into), str(REPO)],
        check=True,
        timeout=300,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    reason = unavailable()
    if reason is not None:
        if os.geteuid() != 0:
            pytest.skip(f"systemd tests: {reason}")
        pytest.fail(f"systemd tests cannot run: {reason} (tests/run.sh installs what they need)")
    share = tmp_path_factory.mktemp("machine")
    (share / "www").mkdir()
    (share / "www" / "index.html").write_text("hello from the origin\n")
    (share / "loadgen.py").write_text((Path(__file__).with_name("loadgen.py")).read_text())
    _wheelhouse(share / "wheels")
    sentinel = Path("/tmp") / f"tunnelkeeper-systemd-sentinel-{os.getpid()}"
    sentinel.write_text("the host's /tmp must survive the machine's boot and shutdown\n")
    m = Machine(share, "tk")
    try:
        m.boot()
        m.run(
            "systemd-run",
            "--unit=tk-origin",
            "/usr/bin/python3",
            "-m",
            "http.server",
            str(ORIGIN_PORT),
            "--bind",
            "127.0.0.1",
            "--directory",
            "/srv/www",
        )
        m.run(
            "systemd-run",
            "--unit=tk-sim",
            str(VENV_BIN / "tunnelkeeper"),
            "sim",
            "--tunnel",
            f"portal=http://127.0.0.1:{ORIGIN_PORT}",
            "--tunnel",
            f"admin=http://127.0.0.1:{ORIGIN_PORT}",
            "--token-dir",
            "/srv/sim",
            "--ready-file",
            "/srv/sim/ready.json",
        )
        ready = share / "sim" / "ready.json"
        wait_until(ready.exists, timeout=30, what="the simulator inside the machine")
        sim = json.loads(ready.read_text())
        m.sh(f"cd {REPO}\nexport PIP_NO_INDEX=1 PIP_FIND_LINKS=/srv/wheels\n{INSTALL}", timeout=180)
        for name in ("portal", "admin"):
            m.sh(f"install -m 0640 -g tunnelkeeper /srv/sim/{name}.token /etc/tunnelkeeper/")
        h = Host(m, share, sim, sentinel)
        h.write_config(config_text(sim, {"portal": 2}))
        yield h
    finally:
        m.poweroff()  # a no-op if the last test powered it off already
        sentinel.unlink(missing_ok=True)
