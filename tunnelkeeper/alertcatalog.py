"""The alerts tunnelkeeper can raise: default severity, summary template and a runbook hint each.

Summaries are ``str.format`` templates over the alert's labels and details; a missing field
renders as ``?`` rather than failing, because a summary must never stop a page going out.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

from tunnelkeeper.structs import Struct

SEVERITY_RANK: Mapping[str, int] = {"info": 0, "warning": 1, "critical": 2}


class AlertSpec(Struct, frozen=True):
    name: str
    severity: str
    summary: str
    runbook: str
    # fleet-wide alerts carry no ``host`` label: every host raises the same identity
    is_fleet_wide: bool = False


_SPECS = (
    AlertSpec(
        "ReplicaDown",
        "critical",
        "replica {slot} of {tunnel} is not running",
        "`tunnelkeeper status`; the journal shows why cloudflared exited; tunnelkeeper restarts it",
    ),
    AlertSpec(
        "ReplicaNoEdgeConnections",
        "critical",
        "replica {slot} of {tunnel} is alive but has 0 edge connections",
        "check outbound 7844/tcp+udp and DNS to the edge from this host; tunnelkeeper replaces "
        "the replica after unhealthy_after_seconds",
    ),
    AlertSpec(
        "TunnelDegraded",
        "warning",
        "{tunnel} has {ready} of {desired} replicas ready on this host",
        "`tunnelkeeper status` shows which replicas are not ready and why",
    ),
    AlertSpec(
        "TunnelDown",
        "critical",
        "{tunnel} has no ready replica on this host",
        "`tunnelkeeper status`; check the token (`tunnelkeeper check`) and edge reachability",
    ),
    AlertSpec(
        "ReplicaCrashLooping",
        "critical",
        "replica {slot} of {tunnel} keeps exiting",
        "the journal shows cloudflared's last error; often a revoked token or a bad `args` entry",
    ),
    AlertSpec(
        "TokenRotationFailed",
        "warning",
        "token rotation for {tunnel} failed; the old replicas are kept",
        "`tunnelkeeper rotate {tunnel}` retries; check the new token belongs to this tunnel",
    ),
    AlertSpec(
        "TokenSourceUnavailable",
        "warning",
        "the token source of {tunnel} cannot be read",
        "`tunnelkeeper check` names the failing source and its config key",
    ),
    AlertSpec(
        "FleetConnectorsLow",
        "critical",
        "{tunnel} has {connectors} of {expected} expected connectors fleet-wide",
        "look for origin hosts whose tunnelkeeper is down or alerting; the Cloudflare dashboard "
        "lists live connectors",
        is_fleet_wide=True,
    ),
    AlertSpec(
        "CloudflaredUpgradeFailed",
        "warning",
        "the canary replica of {tunnel} on cloudflared {version} never became ready; "
        "rolled back to the previous version",
        "`tunnelkeeper status` and the journal for the canary's errors; fix or pick another "
        "version in [cloudflared.install], then reload",
    ),
    AlertSpec(
        "CloudflaredOutdated",
        "info",
        "cloudflared {version} on this host is older than {wanted}",
        "`tunnelkeeper install` then restart the daemon; replicas roll one by one",
    ),
)

CATALOG: Mapping[str, AlertSpec] = {spec.name: spec for spec in _SPECS}
ALERT_NAMES: tuple[str, ...] = tuple(CATALOG)

TEST_ALERT = AlertSpec(
    "TunnelkeeperTest",
    "info",
    "test alert from tunnelkeeper on {host}; no action needed",
    "sent by `tunnelkeeper test-alert`; its resolve follows immediately",
)


def spec_for(alertname: str) -> AlertSpec:
    """The catalog entry; a name outside the catalog still alerts, as a warning."""
    if alertname == TEST_ALERT.name:
        return TEST_ALERT
    return CATALOG.get(alertname) or AlertSpec(alertname, "warning", alertname, "")


class _Lenient(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "?"


def render(template: str, fields: Mapping[str, str]) -> str:
    """Format a summary template; unknown fields render as ``?``, bad templates verbatim."""
    try:
        return string.Formatter().vformat(template, (), _Lenient(fields))
    except (ValueError, IndexError, AttributeError, KeyError):
        return template
