"""cloudflared-sim: a stand-in a supervisor cannot tell apart from cloudflared 2026.8.2.

``cloudflared-sim [flags] tunnel [flags] run [--token T | --token-file F]`` parses the command
line the way urfave/cli and Go's flag package do (``-flag``, ``--flag``, ``--flag=value``;
flags stop at the first argument), then runs HA connections to a simulated edge
(``--edge``, see :mod:`tunnelkeeper.sim.connector`) with cloudflared's metrics server, logs,
error texts, exit codes and signal handling. ``tunnel --metrics ADDR ready`` and ``version``
work too. Nothing imports aiohttp on the way to the first edge connection (the origin proxy
loads it later): the simulated binary starts in about a tenth of a second, not a third.

Test knobs, read from the environment (all off by default):

* ``CLOUDFLARED_SIM_VERSION`` / ``CLOUDFLARED_SIM_BUILD_DATE``: the version and build date the
  process reports (``--version``, the start-up log, ``build_info``); default 2026.8.2 / 2026-08-20.
* ``CLOUDFLARED_SIM_FAULT`` (comma-separated):
  ``never-connect`` runs normally but never dials the edge (a broken upgrade);
  ``exit-after=<seconds>`` exits with status 1 after that long;
  ``garbage-output`` writes binary junk, non-JSON text and a 1 MB line to stdout and stderr
  every second besides the normal logs. Unknown values are ignored with a warning log line.

Over 300 lines because start-up, serving and exit of the simulated binary, in cloudflared's
order.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import signal
import sys
import uuid
from typing import TYPE_CHECKING, Any

from tunnelkeeper.sim import cfcli
from tunnelkeeper.sim.cfcli import Options, StartError, UsageError

if TYPE_CHECKING:
    import socket

    from tunnelkeeper.sim.cflog import CfLogger
    from tunnelkeeper.sim.cfmetrics import TunnelState


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        return cfcli.dispatch(args, run_tunnel)
    except UsageError as exc:
        sys.stderr.write(f"{exc}\nSee 'cloudflared {exc.command} --help'.\n")
        return 255
    except StartError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1


def run_tunnel(opts: Options, run_values: dict[str, Any], positional: list[str]) -> int:
    """`tunnel run`: check the token, log, bind metrics, then serve until a signal."""
    import gc

    from tunnelkeeper.noopenssl import import_stdlib_without_openssl

    gc.disable()  # start-up's objects all live on: re-enabled a second into the run (_serve)
    import_stdlib_without_openssl()  # before asyncio: the simulator has no use for OpenSSL
    import asyncio

    from tunnelkeeper.sim.cflog import CfLogger
    from tunnelkeeper.sim.cfmetrics import (
        MetricsBindError,
        TunnelState,
        bind_listener,
        open_default_listener,
    )

    token_text = token_text_of(run_values, positional)
    tunnel_id = validate_token(token_text)
    log = CfLogger(opts.output, opts.loglevel, opts.logfile)
    version, build_date = cfcli.sim_version()
    connector_id = str(uuid.uuid4())
    log.info("Starting tunnel", tunnelID=tunnel_id)
    log.info(f"Version {version} (Checksum {_checksum()})")
    log.info("GOOS: linux, GOVersion: go1.27.3, GoArch: amd64")
    log.info(f"Generated Connector ID: {connector_id}")
    if opts.grace_seconds > 180:
        raise StartError("grace-period must be equal or less than 3m0s")
    try:
        sock = bind_listener(opts.metrics) if opts.metrics else open_default_listener()
    except MetricsBindError as exc:
        raise StartError(str(exc)) from None
    state = TunnelState(tunnel_id, connector_id, version, build_date)
    if opts.edges:  # a static edge and, in the sandboxes the simulator runs in, no DNS
        log.error(
            "Failed to fetch features, default to disable",
            error="lookup cfd-features.argotunnel.com on 127.0.0.53:53: dial udp "
            "127.0.0.53:53: connect: network is unreachable",
        )
        log.warn("Unable to lookup protocol percentage.")
    log.info(f"Initial protocol {'http2' if opts.protocol == 'http2' else 'quic'}")
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # no KeyboardInterrupt before our handler
    return asyncio.run(_serve(opts, token_text, state, sock, log))


DNS_HELP = (
    "Please try the following things to diagnose this issue:",
    '  1. ensure that argotunnel.com is returning "origintunneld" service records.',
    "     Run your system's equivalent of: dig srv _origintunneld._tcp.argotunnel.com",
    "  2. ensure that your DNS resolver is not returning compressed SRV records.",
    "     See GitHub issue https://github.com/golang/go/issues/27546",
    "     For example, you could use Cloudflare's 1.1.1.1 as your resolver:",
    "     https://developers.cloudflare.com/1.1.1.1/setting-up-1.1.1.1/",
)
SRV = "_v2-origintunneld._tcp.argotunnel.com"


async def _dns_outage(log: CfLogger) -> None:
    """What 2026.8.2 does when edge discovery fails: a plain-text line on stderr, JSON errors
    and a help block, then exit 1 about 0.6 s after start."""
    import asyncio

    from tunnelkeeper.sim.cflog import write_all

    write_all(
        2,
        f"Could not lookup srv records on {SRV}: lookup {SRV} on 127.0.0.53:53: dial udp "
        "127.0.0.53:53: connect: network is unreachable\n".encode(),
    )
    error = "edge discovery: error looking up Cloudflare edge IPs: the DNS query failed"
    log.error("Failed to fetch edge addresses", error=error)
    for line in DNS_HELP:
        log.error(line)
    await asyncio.sleep(0.5)
    log.error("initial tunnel connection failed", error=error)


def token_text_of(run_values: dict[str, Any], positional: list[str]) -> str:
    if len(positional) > 1:
        raise UsageError(
            '"cloudflared tunnel run" accepts only one argument, the ID or name of the tunnel '
            "to run."
        )
    token = run_values.get("token") or ""
    path = run_values.get("token-file") or ""
    if not token and path:
        try:
            with open(path, "rb") as f:
                token = f.read().decode("utf-8", "replace").strip()
        except OSError as exc:
            op = "read" if isinstance(exc, IsADirectoryError) else "open"
            text = os.strerror(exc.errno) if exc.errno else "unknown error"
            raise UsageError(
                f"Failed to read token file: {op} {path}: {text[:1].lower()}{text[1:]}"
            ) from None
    if token:
        return str(token)
    if positional:
        raise StartError(
            "Cannot determine default origin certificate path. No file cert.pem in "
            "[~/.cloudflared ~/.cloudflare-warp ~/cloudflare-warp /etc/cloudflared "
            "/usr/local/etc/cloudflared]. You need to specify the origin certificate path "
            "by specifying the origincert option in the configuration file, or set "
            "TUNNEL_ORIGIN_CERT environment variable originCertPath="
        )
    raise UsageError(
        '"cloudflared tunnel run" requires the ID or name of the tunnel to run as the last '
        "command line argument or in the configuration file."
    )


def validate_token(text: str) -> str:
    """cloudflared's only check: base64, then JSON into {a, s, t, e}. Returns the tunnel id."""
    invalid = UsageError("Provided Tunnel token is not valid.")
    try:
        obj = json.loads(base64.b64decode(text.replace("\r", "").replace("\n", ""), validate=True))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise invalid from None
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise invalid
    tunnel_id = "00000000-0000-0000-0000-000000000000"
    for key, value in obj.items():
        k = key.lower()
        if k in ("a", "e") and not isinstance(value, str | None):
            raise invalid
        if k == "s" and value is not None:
            if not isinstance(value, str):
                raise invalid
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise invalid from None
        if k == "t" and value is not None:
            try:
                tunnel_id = str(uuid.UUID(value))
            except (ValueError, TypeError, AttributeError):
                raise invalid from None
    return tunnel_id


def _checksum() -> str:
    """sha256 of the running program: the console script, else the interpreter."""
    import hashlib

    path = sys.argv[0] if os.path.isfile(sys.argv[0]) else sys.executable
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        pass
    return str(digest.hexdigest())


async def _serve(
    opts: Options, token_text: str, state: TunnelState, sock: socket.socket, log: CfLogger
) -> int:
    import asyncio
    import gc

    from tunnelkeeper.sim.cfmetrics import listener_address
    from tunnelkeeper.sim.cfserve import MetricsServer
    from tunnelkeeper.sim.connector import Connector, ConnectorConfig

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(name: str) -> None:
        # cloudflared removes its handler after the first signal: a second one kills us.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_DFL)
        log.info(f"Initiating graceful shutdown due to signal {name} ...")
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_signal, "terminated")
    loop.add_signal_handler(signal.SIGINT, on_signal, "interrupt")
    loop.call_later(1.0, gc.enable)
    metrics = MetricsServer(state, sock)
    await metrics.start()
    log.info(f"Starting metrics server on {listener_address(sock)}/metrics")
    faults = _start_faults(log)
    if not opts.edges:  # edge discovery needs DNS, which the simulator never has
        await _dns_outage(log)
        await metrics.aclose()
        return 1

    def write_pidfile() -> None:
        if opts.pidfile:
            try:
                fd = os.open(opts.pidfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                with os.fdopen(fd, "w") as f:
                    f.write(str(os.getpid()))
            except OSError as exc:
                log.error("Failed to write pidfile", error=str(exc.strerror))

    cfg = ConnectorConfig(
        edges=tuple(opts.edges),
        token_text=token_text,
        ha_connections=max(1, opts.ha_connections),
        retries=opts.retries,
        label=opts.label or socket_hostname(),
        protocol="http2" if opts.protocol == "http2" else "quic",
        version=state.version,
        never_connect="never-connect" in faults,
    )
    connector = Connector(cfg, state, log, write_pidfile)
    runner = asyncio.create_task(connector.run())
    await stop.wait()
    runner.cancel()
    await connector.drain(opts.grace_seconds)
    await connector.aclose()
    log.info("Tunnel server stopped")
    await metrics.aclose()
    log.info("Metrics server stopped")
    log.close()
    return 0


def socket_hostname() -> str:
    import socket

    return socket.gethostname()


def _start_faults(log: CfLogger) -> set[str]:
    import asyncio

    from tunnelkeeper.sim.cflog import write_all

    active: set[str] = set()
    loop = asyncio.get_running_loop()
    for item in filter(None, os.environ.get("CLOUDFLARED_SIM_FAULT", "").split(",")):
        name, _, value = item.strip().partition("=")
        if name == "never-connect":
            active.add(name)
        elif name == "exit-after" and _is_number(value):

            def crash() -> None:
                log.log("fatal", "simulated crash (CLOUDFLARED_SIM_FAULT=exit-after)")
                os._exit(1)

            loop.call_later(float(value), crash)
            active.add(name)
        elif name == "garbage-output":

            def spew() -> None:
                for fd in (1, 2):
                    write_all(fd, os.urandom(256).replace(b"\n", b"") + b"\n")
                    write_all(fd, b"panic: this is not JSON { at all\n")
                    write_all(fd, b"x" * (1 << 20) + b"\n")
                loop.call_later(1.0, spew)

            loop.call_soon(spew)
            active.add(name)
        else:
            log.warn("Ignoring unknown CLOUDFLARED_SIM_FAULT value", fault=item.strip())
    return active


def _is_number(text: str) -> bool:
    try:
        return float(text) >= 0
    except ValueError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
