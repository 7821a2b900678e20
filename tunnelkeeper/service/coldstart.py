"""A cold start launches each tunnel's first replica before the daemon loads its machinery.

A replica needs about a tenth of a second to reach the edge, and the daemon about as long
again to import its event loop, logging and supervision. Done one after the other, READY=1
waited for both. So when no replica of an earlier daemon can be running (the ledger lists
none and runtime_dir holds no replica's files), ``tunnelkeeper run`` first reads each
tunnel's token if it is local (a file, a systemd credential, an environment variable),
launches slot 0 through the same code that launches every replica
(:func:`~tunnelkeeper.supervise.launch.launch`) and lists it in the ledger; then it imports
the rest while those replicas start, on the other core.

The daemon takes these children over through adoption (:mod:`~tunnelkeeper.supervise.adoption`),
which verifies each like any replica in the ledger, and attaches it as its own child: reaped
with its exit code, its log relayed from the first line, logged as ``replica_spawned``. A
launch the config would not have made (the token file changed in between) is rolled like any
adopted replica whose spec differs. A daemon that dies before it got that far leaves them
listed in the ledger, for the next one to adopt.

Anything unusual means no early launch for that tunnel, never an error here: a managed install
(the daemon may replace the binary first), a remote token source (Vault, AWS, a command), a
token that cannot be read or parsed, a failed launch. The daemon then starts that replica
itself, as always, and says why if it cannot.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from tunnelkeeper.config.model import (
    Config,
    EnvSourceConfig,
    FileSourceConfig,
    SystemdCredentialSourceConfig,
    TokenSourceConfig,
)
from tunnelkeeper.errors import TunnelkeeperError
from tunnelkeeper.noopenssl import import_stdlib_without_openssl
from tunnelkeeper.sources.base import parse_token
from tunnelkeeper.sources.local import credential_path, read_token_text
from tunnelkeeper.supervise.identity import identities, separation_enabled
from tunnelkeeper.supervise.launch import (
    EarlyLaunch,
    ReplicaId,
    SpawnSpec,
    ensure_runtime_dir,
    launch,
    remove_files,
    replica_files,
    spawn_spec,
)
from tunnelkeeper.supervise.ports import PortAllocator
from tunnelkeeper.tunneltoken import TunnelToken

LEDGER_FILE = "replicas.json"  # in state_dir: see supervise/ledger.py
STOP_WAIT_SECONDS = 5.0  # for a launch undone (stop_launched)


Launched = dict[int, EarlyLaunch]  # by pid


def launch_first_replicas(config: Config, ledger: Path) -> Launched:
    """Launch slot 0 of every tunnel whose token is local, if this is a cold start; list them in
    ``ledger``. Returns the children by pid (empty: nothing launched)."""
    d = config.daemon
    if config.cloudflared.install is not None or not _cold(ledger, d.runtime_dir):
        return {}
    separated, _ = separation_enabled(d.replica_users, config.cloudflared.path, d.runtime_dir)
    try:
        ensure_runtime_dir(d.runtime_dir, separated=separated)
    except OSError:
        return {}
    ports = PortAllocator()
    names: set[str] = set()
    launched: list[tuple[ReplicaId, SpawnSpec, EarlyLaunch]] = []
    for t in config.tunnels:
        names.add(t.name)  # as the daemon adds them: the same uids (identity.py)
        token = _local_token(t.token)
        if token is None:
            continue
        rid = ReplicaId(t.name, 0, 1)
        token_file, log_file = replica_files(d.runtime_dir, rid)
        try:
            spec = spawn_spec(
                d,
                config.cloudflared,
                t,
                0,
                binary=config.cloudflared.path,
                metrics_port=ports.allocate(),
                run_as=identities(names, d.replica_uid_base)[t.name] if separated else None,
            )
            child = launch(spec, token, token_file, log_file)
        except OSError:
            continue
        launched.append((rid, spec, EarlyLaunch(child, token_file, log_file, time.monotonic())))
    if launched:
        _list_in_ledger(ledger, launched)
    return {early.child.pid: early for *_, early in launched}


def stop_launched(launched: Launched, ledger: Path) -> None:
    """Undo the early launch, for a daemon that cannot run after all (its listen address is
    taken): nothing of it is left running unsupervised. SIGTERM (nothing is in flight yet: each
    was up a moment), SIGKILL after a few seconds; files and ledger rows removed."""
    if not launched:
        return  # the ledger is an earlier daemon's: left as it is, for the next start
    from tunnelkeeper.supervise.ledger import write_ledger

    stop_early(launched.values(), grace_seconds=STOP_WAIT_SECONDS)
    with contextlib.suppress(OSError):
        write_ledger(ledger, [])  # it listed these alone: only a cold start launches early


def stop_early(launches: Iterable[EarlyLaunch], *, grace_seconds: float) -> None:
    """Stop early launches and remove their files: SIGTERM, then SIGKILL after
    ``grace_seconds`` (0: SIGKILL at once)."""
    launches = list(launches)
    for early in launches:
        if grace_seconds > 0:
            early.child.terminate()
        else:
            early.child.kill()
    for early in launches:
        try:
            early.child.wait(timeout=grace_seconds or None)
        except subprocess.TimeoutExpired:
            early.child.kill()
            early.child.wait()
        remove_files(early.token_file, early.log_file)


def _cold(ledger: Path, runtime_dir: Path) -> bool:
    """No replica of an earlier daemon can be running: the ledger lists none, and no replica's
    files are in runtime_dir (a lost ledger; a damaged one is not empty either). Else adoption
    sorts out what runs, and nothing is launched before it.

    The ledger is read here, not with ledger.read_ledger: that module loads psutil and
    structlog, ~35 ms that would come before the launch."""
    try:
        if any((runtime_dir / "replicas").iterdir()):
            return False
    except FileNotFoundError:
        pass
    except OSError:
        return False
    try:
        rows = json.loads(ledger.read_bytes())["replicas"]
    except FileNotFoundError:
        return True
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        return False
    return isinstance(rows, list) and not rows


def _local_token(source: TokenSourceConfig) -> TunnelToken | None:
    try:
        if isinstance(source, FileSourceConfig):
            text = read_token_text(source.path, "")
        elif isinstance(source, SystemdCredentialSourceConfig):
            text = read_token_text(
                credential_path(source.name, "", os.environ.get("CREDENTIALS_DIRECTORY")), ""
            )
        elif isinstance(source, EnvSourceConfig):
            text = os.environ.get(source.var, "")
        else:
            return None  # remote or slow: the daemon's token feed reads it
        return parse_token(text, description="").token
    except TunnelkeeperError:
        return None  # the daemon's token feed reads it again, and reports the problem


def _list_in_ledger(ledger: Path, launched: list[tuple[ReplicaId, SpawnSpec, EarlyLaunch]]) -> None:
    """Listed at once: a daemon that dies while it loads leaves them to the next one."""
    # the ledger's module logs through structlog, which imports asyncio: without OpenSSL
    import_stdlib_without_openssl()
    import psutil

    from tunnelkeeper.supervise.ledger import entry_of, write_ledger

    entries = []
    for rid, spec, (child, token_file, *_) in launched:
        try:
            create_time = psutil.Process(child.pid).create_time()
        except psutil.Error:
            continue  # gone already: the daemon reaps it and starts another
        entries.append(entry_of(rid, spec, child.pid, create_time, token_file))
    try:
        write_ledger(ledger, entries)
    except OSError:
        pass  # adoption's sweep finds them by their command lines
