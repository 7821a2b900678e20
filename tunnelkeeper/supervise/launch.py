"""Starting a cloudflared child: the synchronous half of a replica's life.

Nothing here needs the event loop or the daemon's machinery, so a cold start can launch each
tunnel's first replica before the daemon has loaded them (:mod:`tunnelkeeper.service.coldstart`)
through the same code that launches every other replica (:meth:`ReplicaProcess.start`).

The token reaches the child only through a 0600 file named on ``--token-file``; the child's
environment is built from an allow-list, so an inherited TUNNEL_TOKEN (which would silently
override the file) or our own NOTIFY_SOCKET never leaks in. Its stderr is an append-only file
the daemon tails (see logtail.py), with a size ceiling ahead of the reader.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
from pathlib import Path
from typing import NamedTuple

from tunnelkeeper.atomicfile import write_private_file
from tunnelkeeper.config.model import CloudflaredConfig, DaemonConfig, TunnelConfig
from tunnelkeeper.structs import Struct
from tunnelkeeper.supervise.identity import RunAs
from tunnelkeeper.tunneltoken import TunnelToken

# Variables a child may inherit. Everything else (TUNNEL_*, NOTIFY_SOCKET, secrets) is dropped.
ENV_ALLOW = ("PATH", "LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR")
REPLICA_NICE = 5
BUDGET_BYTES = 16 * 1024 * 1024  # unread log a replica may write (space per replica)


class ReplicaId(Struct, frozen=True, order=True):
    tunnel: str
    slot: int
    generation: int

    def __str__(self) -> str:
        return f"{self.tunnel}/{self.slot}#{self.generation}"


class SpawnSpec(Struct, frozen=True):
    binary: Path
    extra_args: tuple[str, ...]
    label: str
    grace_period_seconds: float
    metrics_port: int
    runtime_dir: Path
    run_as: RunAs | None = None  # None: the daemon's own user


class EarlyLaunch(NamedTuple):
    """A replica launched before its supervisor existed (a cold start's: service/coldstart.py),
    for the supervisor to take over as its own child."""

    child: subprocess.Popen[bytes]
    token_file: Path
    log_file: Path
    launched_at: float  # time.monotonic()


def spawn_spec(
    daemon: DaemonConfig,
    cloudflared: CloudflaredConfig,
    tunnel: TunnelConfig,
    slot: int,
    *,
    binary: Path,
    metrics_port: int,
    run_as: RunAs | None,
) -> SpawnSpec:
    """What a new replica of ``tunnel`` in ``slot`` is launched with (one place, so a replica
    launched at a cold start is exactly what the supervisor would have launched)."""
    return SpawnSpec(
        binary=binary,
        extra_args=cloudflared.args,
        label=f"{daemon.host}-{tunnel.name}-{slot}",
        grace_period_seconds=tunnel.grace_period_seconds,
        metrics_port=metrics_port,
        runtime_dir=daemon.runtime_dir,
        run_as=run_as,
    )


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


def replica_files(runtime_dir: Path, rid: ReplicaId) -> tuple[Path, Path]:
    """(token file, log file) of a replica: named by tunnel, slot and generation, which is how
    a daemon that lost its ledger still recognises its replicas (adoption.py)."""
    stem = f"{rid.tunnel}.{rid.slot}.{rid.generation}"
    replicas = runtime_dir / "replicas"
    return replicas / f"{stem}.token", replicas / f"{stem}.log"


def launch(
    spec: SpawnSpec, token: TunnelToken, token_file: Path, log_file: Path
) -> subprocess.Popen[bytes]:
    """Write the token file, start cloudflared in a session of its own with its stderr on
    ``log_file``, set its log ceiling and its niceness. An OSError leaves no file behind."""
    try:
        write_private_file(token_file, token.reveal())
        run_as = spec.run_as
        if run_as is not None:  # its own token, readable by it alone
            os.chown(token_file, run_as.uid, run_as.gid)
            os.chmod(token_file, 0o400)
        argv = build_argv(spec, token_file, spec.runtime_dir / "cloudflared.yml")
        stderr = open_for_child(log_file)
        try:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=child_env(),
                # Its own session: a terminal's Ctrl-C reaches only us (we drain it), and it
                # outlives us if we die, to be adopted by the next daemon.
                start_new_session=True,
                cwd=str(spec.runtime_dir),
                user=run_as.uid if run_as is not None else None,
                group=run_as.gid if run_as is not None else None,
                extra_groups=[] if run_as is not None else None,
            )
        finally:
            os.close(stderr)
    except OSError:
        remove_files(token_file, log_file)
        raise
    raise_ceiling(child.pid, 0)  # its log may grow only so far ahead of our reading
    with contextlib.suppress(OSError):
        # a replica flooding its log (edge down) must not starve its supervisor of CPU:
        # the supervisor needs little, but needs it at once
        os.setpriority(os.PRIO_PROCESS, child.pid, REPLICA_NICE)
    return child


def remove_files(token_file: Path, log_file: Path) -> None:
    for path in (token_file, log_file, mark_path(log_file)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def open_for_child(path: Path) -> int:
    """The descriptor a child gets as stderr: append-only, private, fresh."""
    with contextlib.suppress(OSError):
        mark_path(path).unlink()  # a mark of an earlier file at this path
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC | os.O_CLOEXEC, 0o600)


def mark_path(path: Path) -> Path:
    """Where a tail records how far it has relayed (a line boundary), for the next daemon."""
    return path.with_suffix(".read")


def raise_ceiling(pid: int, offset: int, budget: int = BUDGET_BYTES) -> None:
    """The replica may write its log up to ``budget`` bytes past what has been read."""
    with contextlib.suppress(OSError, ValueError, ProcessLookupError):
        _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        soft = offset + budget
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
