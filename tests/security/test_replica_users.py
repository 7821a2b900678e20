"""Privilege separation: each tunnel's replicas run as a uid of their own and can read only
their own token file; the control socket, the state dir and the other tunnels' tokens are out
of their reach. Real daemon, real replicas (cloudflared-sim run through the system Python, so
that a uid other than root can execute it), real permission checks by the kernel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import tunnelkeeper
from tests.harness import Daemon, Sim, daemon_config, start_daemon, start_sim
from tests.origin import Origin
from tunnelkeeper.supervise.identity import unreachable

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(os.geteuid() != 0, reason="switching replica users needs root"),
]

SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="tk-replica-users-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def sim_for_any_user(where: Path) -> Path:
    """A cloudflared-sim launcher another uid can execute: the system Python (same 3.11 ABI)
    with this checkout and its venv's packages on the path."""
    repo = Path(tunnelkeeper.__file__).resolve().parent.parent
    site = sysconfig.get_paths()["purelib"]
    launcher = where / "launcher.py"
    launcher.write_text(
        f"import sys\nsys.path[:0] = [{str(repo)!r}, {site!r}]\n"
        "from tunnelkeeper.sim.cloudflared import main\n"
        "sys.argv[0] = 'cloudflared'\nsys.exit(main())\n"
    )
    launcher.chmod(0o644)
    script = where / "cloudflared"
    script.write_text(f'#!/bin/sh\nexec {SYSTEM_PYTHON} {launcher} "$@"\n')
    script.chmod(0o755)
    reason = unreachable(script, executable=True) or unreachable(Path(site)) or unreachable(repo)
    if not Path(SYSTEM_PYTHON).exists() or reason:
        pytest.skip(f"no way for another uid to run the simulator here: {reason}")
    return script


def as_uid(uid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )


def uids_of(d: Daemon, tunnel: str) -> set[int]:
    return {psutil.Process(r["pid"]).uids().real for r in d.primaries(tunnel)}


def token_files(runtime: Path, tunnel: str) -> list[Path]:
    return sorted((runtime / "replicas").glob(f"{tunnel}.*.token"))


def test_a_replica_can_read_only_its_own_token(world_dir: Path) -> None:
    launcher = sim_for_any_user(world_dir)
    with Origin() as origin:
        sim: Sim = start_sim(world_dir / "sim", {"portal": origin.url, "admin": origin.url})
        try:
            cfg = daemon_config(
                world_dir,
                sim,
                tunnels={"portal": {}, "admin": {}},
                cloudflared=str(launcher),
                daemon_extra='replica_users = "per-tunnel"',
            )
            d = start_daemon(cfg)
            try:
                d.wait_ready("portal", 2, timeout=60)
                d.wait_ready("admin", 2, timeout=60)
                portal, admin = uids_of(d, "portal"), uids_of(d, "admin")
                assert len(portal) == len(admin) == 1 and portal != admin
                uid = portal.pop()
                assert uid not in (0, os.getuid())
                runtime = world_dir / "run"
                own, other = token_files(runtime, "portal")[0], token_files(runtime, "admin")[0]

                mine = as_uid(uid, "cat", str(own))
                assert mine.returncode == 0 and mine.stdout.strip() == sim.token("portal")
                theirs = as_uid(uid, "cat", str(other))
                assert theirs.returncode != 0 and "Permission denied" in theirs.stderr
                assert sim.token("admin") not in theirs.stdout + theirs.stderr
                listing = as_uid(uid, "ls", str(runtime / "replicas"))
                assert listing.returncode != 0 and "Permission denied" in listing.stderr
                state = as_uid(uid, "ls", str(world_dir / "state"))
                assert state.returncode != 0 and "Permission denied" in state.stderr
                control = as_uid(
                    uid,
                    SYSTEM_PYTHON,
                    "-c",
                    "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
                    str(runtime / "control.sock"),
                )
                assert control.returncode != 0 and "PermissionError" in control.stderr
            except BaseException:
                print(d.output()[-6000:])
                for f in (world_dir / "run" / "replicas").glob("*.log"):
                    print(f, f.read_text()[-1500:])
                raise
            finally:
                d.stop()
        finally:
            sim.stop()
    assert sys.executable  # the daemon itself ran from the venv, as root
