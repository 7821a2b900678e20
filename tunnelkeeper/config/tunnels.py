"""Validating ``[[tunnel]]`` tables and their ``token = { source = ... }`` token sources."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from tunnelkeeper.config.fields import Section
from tunnelkeeper.config.model import (
    AwsSourceConfig,
    CommandSourceConfig,
    EnvSourceConfig,
    FileSourceConfig,
    SystemdCredentialSourceConfig,
    TokenSourceConfig,
    TunnelConfig,
    VaultSourceConfig,
    defaults,
)
from tunnelkeeper.config.sections import BARE_PROGRAM
from tunnelkeeper.config.wording import describe, printable, suggestion

AWS_SOURCE = defaults(AwsSourceConfig)
COMMAND_SOURCE = defaults(CommandSourceConfig)
FILE_SOURCE = defaults(FileSourceConfig)
TUNNEL = defaults(TunnelConfig)
VAULT_SOURCE = defaults(VaultSourceConfig)

TUNNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
AWS_REGION = re.compile(r"[a-z]{2}(-[a-z0-9]+)+")
SOURCES = ("file", "env", "systemd-credential", "command", "vault", "aws-secrets-manager")
MAX_REPLICAS = 25  # Cloudflare's per-tunnel connector limit
MAX_GRACE_SECONDS = 180.0  # cloudflared refuses a --grace-period over 3m
_PLACEHOLDER = FileSourceConfig(path=Path())


def read_tunnels(top: Section, *, has_fleet: bool) -> tuple[TunnelConfig, ...]:
    sections = top.tables("tunnel", "tunnel")
    if not sections and "tunnel" not in top.data:
        top.problem("tunnel", "expected at least one [[tunnel]] table, got none")
    elif top.data.get("tunnel") == []:
        top.problem("tunnel", "expected at least one [[tunnel]] table, got an empty array")
    tunnels = []
    first_use: dict[str, int | str] = {}
    for section in sections:
        index = section.key[-1]  # the position in the file's array
        tunnel = _read_tunnel(section, has_fleet=has_fleet)
        if tunnel.name in first_use:
            section.problem(
                "name", f'"{tunnel.name}" is already the name of tunnel[{first_use[tunnel.name]}]'
            )
        elif tunnel.name:
            first_use[tunnel.name] = index
        tunnels.append(tunnel)
    return tuple(tunnels)


def _read_tunnel(t: Section, *, has_fleet: bool) -> TunnelConfig:
    name = t.text("name", "", required=True)
    if name and not TUNNEL_NAME.fullmatch(name):
        t.expected(
            "name", "1-63 letters, digits, '_', '.' or '-', starting with a letter or digit", name
        )
        name = ""
    tunnel_id = _read_uuid(t)
    needs_fleet = "needs a [fleet] section (the fleet-wide view through the Cloudflare API)"
    expected_connectors = t.optional_integer("expected_connectors", ge=1)
    if expected_connectors is not None and not has_fleet:
        t.problem("expected_connectors", needs_fleet)
    timezone = _read_timezone(t)
    schedule = t.optional_text("refresh_schedule")
    if schedule is not None:
        if not has_fleet:
            t.problem("refresh_schedule", needs_fleet)
        _check_cron(t, schedule, timezone)
    config = TunnelConfig(
        name=name,
        token=_read_token(t),
        id=tunnel_id,
        replicas=t.integer("replicas", TUNNEL["replicas"], ge=1, le=MAX_REPLICAS),
        grace_period_seconds=t.number(
            "grace_period_seconds", TUNNEL["grace_period_seconds"], ge=0, le=MAX_GRACE_SECONDS
        ),
        unhealthy_after_seconds=t.number(
            "unhealthy_after_seconds", TUNNEL["unhealthy_after_seconds"], gt=0
        ),
        min_ready_connections=t.integer(
            "min_ready_connections", TUNNEL["min_ready_connections"], ge=1, le=4
        ),
        expected_connectors=expected_connectors,
        refresh_schedule=schedule,
        refresh_timezone=timezone,
    )
    t.finish()
    return config


def _read_uuid(t: Section) -> str | None:
    value = t.raw("id")
    if value is None:
        return None
    try:
        if not isinstance(value, str) or len(value) > 64:
            raise ValueError(value)
        return str(uuid.UUID(value))
    except ValueError:
        t.expected("id", "a tunnel UUID like 6ff42ae2-765d-4adf-8112-31c55c1551ef", value)
        return None


def _read_timezone(t: Section) -> str:
    if not t.has("refresh_timezone"):
        return str(TUNNEL["refresh_timezone"])  # UTC; zoneinfo loads only to check a choice
    import zoneinfo

    name = t.text("refresh_timezone", TUNNEL["refresh_timezone"])
    try:
        zoneinfo.ZoneInfo(name)
    except Exception:  # ZoneInfoNotFoundError, ValueError, OSError on hostile names
        t.expected("refresh_timezone", 'an IANA time zone name like "Europe/Berlin"', name)
        return str(TUNNEL["refresh_timezone"])
    return name


def _check_cron(t: Section, expr: str, timezone: str) -> None:
    from apscheduler.triggers.cron import CronTrigger  # only configs with a schedule pay for it

    try:
        CronTrigger.from_crontab(expr, timezone=timezone)
    except Exception as exc:  # apscheduler raises ValueError, but this is outside input
        reason = printable(str(exc)[:120]) if str(exc) else type(exc).__name__
        t.problem(
            "refresh_schedule",
            f'expected a 5-field cron expression like "0 4 * * 1", got {describe(expr)} ({reason})',
        )


# --- token sources ----------------------------------------------------------------------------


def _read_token(t: Section) -> TokenSourceConfig:
    raw = t.raw("token")
    if raw is None:
        t.missing("token", 'a table like { source = "file", path = "/etc/tunnelkeeper/x.token" }')
        return _PLACEHOLDER
    if isinstance(raw, str):  # never echo it: it may be the token itself
        t.problem(
            "token",
            "expected a token source table like "
            '{ source = "file", path = "..." }, got a string (never put the token itself here)',
        )
        return _PLACEHOLDER
    kind = raw.get("source") if isinstance(raw, dict) else None
    s = t.table("token", f' for source "{kind}"' if isinstance(kind, str) else "")
    if s is None:
        return _PLACEHOLDER
    source = s.raw("source")
    if source is None:
        s.missing("source", "one of " + ", ".join(f'"{k}"' for k in SOURCES))
        return _PLACEHOLDER
    if not isinstance(source, str) or source not in SOURCES:
        hint = suggestion(source, list(SOURCES)) if isinstance(source, str) else ""
        listed = ", ".join(f'"{k}"' for k in SOURCES)
        s.problem("source", f"expected one of {listed}, got {describe(source)}{hint}")
        return _PLACEHOLDER
    config = _READERS[source](s)
    s.finish()
    return config


def _file(s: Section) -> TokenSourceConfig:
    return FileSourceConfig(
        path=s.path("path", Path(), required=True),
        poll_seconds=s.number("poll_seconds", FILE_SOURCE["poll_seconds"], gt=0),
    )


def _env(s: Section) -> TokenSourceConfig:
    var = s.text("var", "", required=True)
    if var and not ENV_NAME.fullmatch(var):
        s.expected("var", "an environment variable name like TUNNEL_PORTAL_TOKEN", var)
    return EnvSourceConfig(var=var)


def _systemd(s: Section) -> TokenSourceConfig:
    name = s.text("name", "", required=True)
    if name and ("/" in name or name in (".", "..")):
        s.expected("name", "a credential name as in LoadCredential=NAME:... (no '/')", name)
    return SystemdCredentialSourceConfig(name=name)


def _command(s: Section) -> TokenSourceConfig:
    if not s.has("argv"):
        s.missing("argv", 'a non-empty array of strings like ["op", "read", "op://..."]')
    elif s.raw("argv") == []:
        s.expected("argv", "a non-empty array of strings", [])
    argv = s.strings("argv")
    if argv and not (argv[0].startswith("/") or BARE_PROGRAM.fullmatch(argv[0])):
        s.problems.add(
            (*s.key, "argv", 0),
            f"expected an absolute path or a bare program name, got {describe(argv[0])}",
        )
    return CommandSourceConfig(
        argv=argv,
        timeout_seconds=s.number("timeout_seconds", COMMAND_SOURCE["timeout_seconds"], gt=0),
        poll_seconds=s.number("poll_seconds", COMMAND_SOURCE["poll_seconds"], gt=0),
        env=s.string_table("env", ENV_NAME, "environment variable"),
    )


def _vault(s: Section) -> TokenSourceConfig:
    token_file = s.optional_path("token_file")
    role_id_file = s.optional_path("role_id_file")
    secret_id_file = s.optional_path("secret_id_file")
    if s.has("token_file") and (s.has("role_id_file") or s.has("secret_id_file")):
        s.problem(
            None, "set either token_file, or role_id_file and secret_id_file (AppRole), not both"
        )
    elif s.has("role_id_file") != s.has("secret_id_file"):
        absent = "secret_id_file" if s.has("role_id_file") else "role_id_file"
        present = "role_id_file" if absent == "secret_id_file" else "secret_id_file"
        s.missing(absent, f"an absolute path; AppRole needs it with {present}")
    elif not s.has("token_file") and not s.has("role_id_file"):
        s.problem(None, "vault needs auth: token_file, or role_id_file and secret_id_file")
    namespace = s.optional_text("namespace")
    return VaultSourceConfig(
        addr=s.url("addr", "", required=True),
        path=s.text("path", "", required=True),
        mount=s.text("mount", VAULT_SOURCE["mount"]),
        field=s.text("field", VAULT_SOURCE["field"]),
        token_file=token_file,
        role_id_file=role_id_file,
        secret_id_file=secret_id_file,
        approle_mount=s.text("approle_mount", VAULT_SOURCE["approle_mount"]),
        namespace=namespace,
        ca_cert=s.optional_path("ca_cert"),
        poll_seconds=s.number("poll_seconds", VAULT_SOURCE["poll_seconds"], gt=0),
        timeout_seconds=s.number("timeout_seconds", VAULT_SOURCE["timeout_seconds"], gt=0),
    )


def _aws(s: Section) -> TokenSourceConfig:
    region = s.optional_text("region")
    if region is not None and not AWS_REGION.fullmatch(region):
        s.expected("region", 'an AWS region like "eu-central-1"', region)
    return AwsSourceConfig(
        secret_id=s.text("secret_id", "", required=True),
        region=region,
        endpoint_url=s.optional_url("endpoint_url"),
        poll_seconds=s.number("poll_seconds", AWS_SOURCE["poll_seconds"], gt=0),
        timeout_seconds=s.number("timeout_seconds", AWS_SOURCE["timeout_seconds"], gt=0),
    )


_READERS = {
    "file": _file,
    "env": _env,
    "systemd-credential": _systemd,
    "command": _command,
    "vault": _vault,
    "aws-secrets-manager": _aws,
}
