"""The validated configuration, as immutable values.

Loading and validating the TOML file lives in :mod:`tunnelkeeper.config.load`; everything else
in the daemon only ever sees these types. Durations are float seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunnelkeeper.config.listen import DEFAULT_LISTEN, split_listen
from tunnelkeeper.structs import Struct, field


def defaults(cls: type[Struct]) -> Mapping[str, Any]:
    """A config type's field defaults by name, for the loaders (msgspec keeps them off the
    class: ``DaemonConfig.listen`` is a slot, not the default)."""
    names = cls.__struct_fields__
    values = cls.__struct_defaults__
    return dict(zip(names[len(names) - len(values) :], values, strict=True))


class DaemonConfig(Struct, frozen=True):
    host: str
    listen: str = DEFAULT_LISTEN
    state_dir: Path = Path("/var/lib/tunnelkeeper")
    runtime_dir: Path = Path("/run/tunnelkeeper")
    probe_interval_seconds: float = 1.0
    # how often each replica's /metrics is scraped (versions, request counters)
    metrics_interval_seconds: float = 5.0
    # /ready not answering this long (e.g. SIGSTOP) -> UNRESPONSIVE -> replaced
    unresponsive_after_seconds: float = 3.0
    # a new replica must be ready at the edge within this, else it is given up
    ready_timeout_seconds: float = 60.0
    # this many exits within the window is a crash loop
    crash_loop_restarts: int = 5
    crash_loop_window_seconds: float = 120.0
    log_format: str = "json"  # json | console
    log_level: str = "info"  # debug | info | warning | error
    # "per-tunnel": each tunnel's replicas run as a uid/gid of their own (replica_uid_base + a
    # stable offset), able to read only their own token file; needs root or CAP_SETUID,
    # CAP_SETGID, CAP_CHOWN and CAP_KILL. "auto": per-tunnel when the daemon can, else the
    # daemon's own user (said once at start). "off": always the daemon's own user.
    replica_users: str = "auto"
    replica_uid_base: int = 2_000_000_000

    @property
    def listen_host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return split_listen(self.listen)[1]


class InstallConfig(Struct, frozen=True):
    version: str
    url: str
    sha256: str


class CloudflaredConfig(Struct, frozen=True):
    path: Path = Path("/usr/local/bin/cloudflared")
    args: tuple[str, ...] = ()
    install: InstallConfig | None = None


# --- token sources -------------------------------------------------------------------------


class FileSourceConfig(Struct, frozen=True):
    path: Path
    poll_seconds: float = 1.0
    kind: str = "file"


class EnvSourceConfig(Struct, frozen=True):
    var: str
    kind: str = "env"


class SystemdCredentialSourceConfig(Struct, frozen=True):
    name: str
    kind: str = "systemd-credential"


class CommandSourceConfig(Struct, frozen=True):
    argv: tuple[str, ...]
    timeout_seconds: float = 30.0
    poll_seconds: float = 60.0
    env: Mapping[str, str] = field(default_factory=dict)
    kind: str = "command"


class VaultSourceConfig(Struct, frozen=True):
    addr: str
    path: str
    mount: str = "secret"
    field: str = "token"
    token_file: Path | None = None
    role_id_file: Path | None = None
    secret_id_file: Path | None = None
    approle_mount: str = "approle"
    namespace: str | None = None
    ca_cert: Path | None = None
    poll_seconds: float = 30.0
    timeout_seconds: float = 10.0
    kind: str = "vault"


class AwsSourceConfig(Struct, frozen=True):
    secret_id: str
    region: str | None = None
    endpoint_url: str | None = None
    poll_seconds: float = 60.0
    timeout_seconds: float = 10.0
    kind: str = "aws-secrets-manager"


TokenSourceConfig = (
    FileSourceConfig
    | EnvSourceConfig
    | SystemdCredentialSourceConfig
    | CommandSourceConfig
    | VaultSourceConfig
    | AwsSourceConfig
)


class TunnelConfig(Struct, frozen=True):
    name: str
    token: TokenSourceConfig
    id: str | None = None
    replicas: int = 2
    grace_period_seconds: float = 30.0
    # zero edge connections this long -> replace the replica
    unhealthy_after_seconds: float = 20.0
    # a new replica counts as ready at the edge (rotation/upgrade gate) with this many connections
    min_ready_connections: int = 1
    expected_connectors: int | None = None
    # cron expression for scheduled secret refresh (needs [fleet]); evaluated in refresh_timezone
    refresh_schedule: str | None = None
    refresh_timezone: str = "UTC"


# --- alerts ----------------------------------------------------------------------------------

SEVERITIES = ("info", "warning", "critical")


class AlertOverride(Struct, frozen=True):
    for_seconds: float | None = None
    severity: str | None = None
    enabled: bool = True


class SinkConfig(Struct, frozen=True):
    kind: str  # webhook | slack | pagerduty | alertmanager
    name: str  # metric label; default: kind, or kind-N when several of a kind
    url: str | None = None
    url_file: Path | None = None  # for URLs that are secrets (Slack)
    signing_secret_file: Path | None = None  # webhook: Standard Webhooks whsec_ secret
    routing_key_file: Path | None = None  # pagerduty integration key
    headers: Mapping[str, str] = field(default_factory=dict)
    min_severity: str = "info"
    timeout_seconds: float = 10.0


class AlertsConfig(Struct, frozen=True):
    for_seconds: float = 5.0
    # a firing alert resolves once its condition has been clear this long (flap damping)
    resolve_hold_seconds: float = 30.0
    # a receiver's Retry-After is honoured up to this long, never more (a misconfigured one
    # must not park a sink for an hour)
    max_retry_after_seconds: float = 300.0
    # One incident, one page (webhook, Slack and PagerDuty sinks; Alertmanager groups itself):
    # a tunnel's TunnelDown silences its per-replica alerts, and a tunnel's alerts that fire
    # within group_window_seconds of the incident's first page go out as one update of it.
    inhibit: bool = True
    # Alertmanager sinks re-post what fires this often (Prometheus' resend delay; its alerts
    # are posted to expire after 180 s, so keep this well under that)
    resend_interval_seconds: float = 45.0
    group_by_tunnel: bool = True
    group_window_seconds: float = 5.0
    overrides: Mapping[str, AlertOverride] = field(default_factory=dict)
    sinks: tuple[SinkConfig, ...] = ()


class FleetConfig(Struct, frozen=True):
    account_id: str
    api_token_file: Path
    api_url: str = "https://api.cloudflare.com/client/v4"
    poll_seconds: float = 60.0
    # API requests this host may make per 300 s window (Cloudflare allows 1200 per user, shared)
    request_budget: int = 300


class Config(Struct, frozen=True):
    path: Path
    daemon: DaemonConfig
    cloudflared: CloudflaredConfig
    tunnels: tuple[TunnelConfig, ...]
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    fleet: FleetConfig | None = None

    def tunnel(self, name: str) -> TunnelConfig | None:
        return next((t for t in self.tunnels if t.name == name), None)
