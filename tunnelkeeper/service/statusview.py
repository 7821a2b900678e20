"""What ``/status`` says and how ``tunnelkeeper status`` shows it. No secrets: fingerprints only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # render() runs in the CLI, which must not import the supervisor's world
    from tunnelkeeper.supervise.supervisor import TunnelSupervisor


def tunnel_status(sup: TunnelSupervisor, now: float) -> dict[str, Any]:
    replicas = []
    for r in sorted(sup.replicas.values(), key=lambda r: (r.rid.slot, r.rid.generation)):
        replicas.append(
            {
                "slot": r.rid.slot,
                "generation": r.rid.generation,
                "role": r.role.value,
                "state": sup.phase(r, now).value,
                "ready_connections": r.ready_connections,
                "connector_id": r.connector_id,
                "pid": r.proc.pid,
                "uptime_seconds": round(now - r.started_at, 1),
                "started_at": r.started_wall.isoformat(timespec="seconds"),
                "restarts": sup.slots[r.rid.slot].restarts if r.rid.slot < len(sup.slots) else 0,
                "token_fingerprint": r.proc.token.fingerprint,
                "cloudflared_version": r.version,
                "metrics_port": r.proc.spec.metrics_port,
                "started_because": r.reason,
            }
        )
    slots = []
    for i, s in enumerate(sup.slots):
        slots.append(
            {
                "slot": i,
                "restarts": s.restarts,
                "crash_looping": sup.crash_looping(i),
                "last_exit": s.last_exit,
            }
        )
    target = sup.target_token()
    ready = sum(1 for i in range(len(sup.slots)) if (p := sup.primary(i)) and p.is_serving)
    return {
        "name": sup.cfg.name,
        "id": sup.cfg.id,
        "desired_replicas": sup.cfg.replicas,
        "ready_replicas": ready,
        "edge_outage_suspected": sup.edge_outage,
        "hold_reason": sup.hold_reason,
        "token": {
            "fingerprint": target.fingerprint if target else None,
            "newest_fingerprint": sup.desired.fingerprint if sup.desired else None,
            "failed_fingerprints": sorted(sup.failed_fingerprints),
            "rotation_in_progress": sup.rotation_target is not None,
            "source": sup.token_source_description,
            "error": sup.token_error,
        },
        "replicas": replicas,
        "slots": slots,
    }


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def render(status: dict[str, Any]) -> str:
    """The table a person reads at a glance."""
    lines = [
        f"tunnelkeeper {status.get('version', '?')} on {status.get('host', '?')}"
        f" — up {_age(float(status.get('uptime_seconds', 0)))}"
    ]
    header = (
        "SLOT",
        "GEN",
        "STATE",
        "CONNS",
        "CONNECTOR",
        "PID",
        "UPTIME",
        "RESTARTS",
        "TOKEN",
        "VERSION",
    )
    for t in status.get("tunnels", []):
        tok = t.get("token", {})
        summary = f"{t['ready_replicas']}/{t['desired_replicas']} ready"
        lines.append("")
        lines.append(f"tunnel {t['name']} ({t.get('id') or 'id not pinned'}): {summary}")
        if t.get("hold_reason"):
            lines.append(f"  ! {t['hold_reason']}")
        if tok.get("error"):
            lines.append(f"  ! token source: {tok['error']}")
        if tok.get("failed_fingerprints"):
            lines.append(
                f"  ! rotation failed for token {', '.join(tok['failed_fingerprints'])};"
                " replicas kept on the previous token"
            )
        rows = [header]
        for r in t.get("replicas", []):
            state = r["state"] if r["role"] == "primary" else f"{r['state']} ({r['role']})"
            rows.append(
                (
                    str(r["slot"]),
                    str(r["generation"]),
                    state,
                    f"{r['ready_connections']}/4",
                    (r.get("connector_id") or "-")[:8],
                    str(r.get("pid") or "-"),
                    _age(r["uptime_seconds"]),
                    str(r["restarts"]),
                    r["token_fingerprint"],
                    r.get("cloudflared_version") or "-",
                )
            )
        for s in t.get("slots", []):
            if not any(r["slot"] == s["slot"] for r in t.get("replicas", [])):
                rows.append(
                    (
                        str(s["slot"]),
                        "-",
                        "down",
                        "0/4",
                        "-",
                        "-",
                        "-",
                        str(s["restarts"]),
                        "-",
                        "-",
                    )
                )
            if s.get("crash_looping"):
                lines.append(f"  ! slot {s['slot']} is crash looping")
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    lines += _render_fleet(status)
    alerts = status.get("alerts_firing") or []
    if alerts:
        lines.append("")
        lines.append("alerts firing: " + ", ".join(alerts))
    return "\n".join(lines)


def _render_fleet(status: dict[str, Any]) -> list[str]:
    fleet = status.get("fleet")
    if status.get("fleet_error"):
        return ["", f"fleet view: unavailable ({status['fleet_error']})"]
    if not fleet:
        return []
    lines = ["", f"fleet (Cloudflare API, every {fleet.get('interval_seconds', '?')}s):"]
    for t in fleet.get("tunnels", []):
        live = t.get("live_connectors")
        expected = t.get("expected_connectors")
        head = f"  {t['name']}: {'?' if live is None else live} live connector(s)"
        if expected is not None:
            head += f" of {expected} expected"
        head += f", status {t.get('status') or '?'}"
        if t.get("is_stale"):
            head += " (stale)"
        lines.append(head)
        colos = t.get("colo_connections") or {}
        if colos:
            lines.append(
                "    connections per colo: "
                + ", ".join(f"{c} {n}" for c, n in sorted(colos.items()))
            )
        if t.get("unknown_local"):
            lines.append(
                "    ! local replicas the API does not list: "
                + ", ".join(c[:8] for c in t["unknown_local"])
            )
        if t.get("error"):
            lines.append(f"    ! {t['error']}")
    return lines
