"""``tunnelkeeper run``, from the command line to the event loop, in the order that gets the
replicas to the edge soonest: config, directories and their locks, a cold start's early launch
of each tunnel's first replica (:mod:`.coldstart`), and only then the event loop, logging and
the daemon's machinery, imported while those replicas start."""

from __future__ import annotations

import os
import sys

from tunnelkeeper.config.model import Config

# sysexits.h EX_CONFIG: the unit's RestartPreventExitStatus= stops systemd from restarting a
# daemon that can only fail the same way again until someone fixes the config.
EXIT_CONFIG = 78


def run_command(config_path: str) -> int:
    from tunnelkeeper.config.load import ConfigError, load_config
    from tunnelkeeper.service.guards import forbid_core_dumps, raise_nofile_limit

    forbid_core_dumps()  # before anything secret is read
    raise_nofile_limit()  # before any replica is launched: they inherit it
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"tunnelkeeper: invalid config:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    binary = config.cloudflared.path
    managed = config.cloudflared.install is not None  # the daemon installs it at start
    if not managed and not (binary.is_file() and os.access(binary, os.X_OK)):
        print(
            f"tunnelkeeper: cloudflared.path: {binary} is not an executable file "
            "(run `tunnelkeeper install` or fix the path)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    locks = claim_dirs(config)
    if locks is None:
        return EXIT_CONFIG
    from tunnelkeeper.service.coldstart import LEDGER_FILE, launch_first_replicas

    launched = launch_first_replicas(config, config.daemon.state_dir / LEDGER_FILE)

    from tunnelkeeper.noopenssl import import_stdlib_without_openssl

    import_stdlib_without_openssl()  # before asyncio and anything that imports it
    import asyncio

    from tunnelkeeper.logconfig import configure
    from tunnelkeeper.service.daemon import Daemon

    configure(config.daemon.log_level, config.daemon.log_format)
    return asyncio.run(Daemon(config, locks=locks, launched=launched).run())


def claim_dirs(config: Config) -> list[int] | None:
    """Create state_dir and runtime_dir and take their locks (one daemon per directory: see
    guards.py), before anything is launched; None after saying why on stderr."""
    from tunnelkeeper.service.guards import AlreadyRunning, lock_dirs

    dirs = [
        ("daemon.state_dir", config.daemon.state_dir),
        ("daemon.runtime_dir", config.daemon.runtime_dir),
    ]
    for key, d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            print(f"tunnelkeeper: {key}: cannot create {d}: {exc.strerror or exc}", file=sys.stderr)
            return None
    try:
        return lock_dirs(dirs)
    except (AlreadyRunning, OSError) as exc:
        print(f"tunnelkeeper: {exc}", file=sys.stderr)
        return None
