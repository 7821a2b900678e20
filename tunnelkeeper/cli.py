"""Command line: parses arguments and hands off to the module that owns each command.

Imports are lazy so that ``tunnelkeeper --version`` and ``status`` start fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tunnelkeeper import __version__

DEFAULT_CONFIG = "/etc/tunnelkeeper/config.toml"


def default_config_path() -> str:
    return os.environ.get("TUNNELKEEPER_CONFIG") or DEFAULT_CONFIG


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        default=None,
        metavar="PATH",
        help=f"config file (default: $TUNNELKEEPER_CONFIG, else {DEFAULT_CONFIG})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunnelkeeper",
        description="Keeps cloudflared replicas ready at the edge.",
    )
    parser.add_argument("--version", action="version", version=f"tunnelkeeper {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon in the foreground")
    _add_config(p)

    p = sub.add_parser("check", help="validate config, token sources, cloudflared and sinks")
    _add_config(p)

    p = sub.add_parser("status", help="show the running daemon's tunnels and replicas")
    _add_config(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("rotate", help="re-read token sources now and roll changed tokens")
    _add_config(p)
    p.add_argument("tunnel", nargs="?", help="only this tunnel")
    p.add_argument("--force", action="store_true", help="roll even if the token is unchanged")

    p = sub.add_parser(
        "reload", help="re-read the config in the running daemon; fails if it is refused"
    )
    _add_config(p)

    p = sub.add_parser("refresh-secret", help="refresh a tunnel secret through the Cloudflare API")
    _add_config(p)
    p.add_argument("tunnel")
    p.add_argument(
        "--cleanup",
        action="store_true",
        help="afterwards, remove connectors still on the old secret once replacements are up",
    )

    p = sub.add_parser("install", help="download, verify and install the pinned cloudflared")
    _add_config(p)
    p.add_argument("--version", dest="install_version", metavar="V", default=None)

    p = sub.add_parser("test-alert", help="send a test alert and its resolve through every sink")
    _add_config(p)

    sub.add_parser("sim", help="run the Cloudflare simulator", add_help=False)
    p = sub.add_parser("demo", help="simulator + daemon + alert receiver, live status")
    p.add_argument("--replicas", type=int, default=2, help="replicas of the demo tunnel")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop by itself after this long (default: until Ctrl-C)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # `sim` owns its own argument parsing (it is a separate program in all but name).
    if args_list and args_list[0] == "sim":
        from tunnelkeeper.sim.server import main as sim_main

        return sim_main(args_list[1:])

    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "config", "unset") is None:
        args.config = default_config_path()

    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "run":
        import gc

        # Start-up makes ~45,000 objects that live as long as the daemon; the cyclic collector
        # would scan them ~50 times over while they are made (12 ms). The daemon collects once
        # and freezes them when its replicas are up (service/guards.py: settle_after_start).
        gc.disable()
        from tunnelkeeper.noopenssl import import_stdlib_without_openssl

        # first: anything below may import them (asyncio: later, see service/startup.py)
        import_stdlib_without_openssl(("hashlib", "hmac", "secrets"))
        from tunnelkeeper.service.startup import run_command

        return run_command(args.config)
    if cmd == "check":
        from tunnelkeeper.check import check_command

        return check_command(args.config)
    if cmd == "status":
        from tunnelkeeper.service.control import status_command

        return status_command(args.config, as_json=args.json)
    if cmd == "rotate":
        from tunnelkeeper.service.control import rotate_command

        return rotate_command(args.config, args.tunnel, force=args.force)
    if cmd == "reload":
        from tunnelkeeper.service.control import reload_command

        return reload_command(args.config)
    if cmd == "refresh-secret":
        from tunnelkeeper.cloudflare.refresh import refresh_secret_command

        return refresh_secret_command(args.config, args.tunnel, cleanup=args.cleanup)
    if cmd == "install":
        from tunnelkeeper.cloudflared.install import install_command

        return install_command(args.config, args.install_version)
    if cmd == "test-alert":
        from tunnelkeeper.alerts.testalert import test_alert_command

        return test_alert_command(args.config)
    if cmd == "demo":
        from tunnelkeeper.demo import demo_command

        return demo_command(replicas=args.replicas, duration=args.duration)
    raise AssertionError(f"unhandled command {cmd}")
