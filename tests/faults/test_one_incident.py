"""Fault: a DNS outage on the host. Every replica exits in a loop (cloudflared cannot discover
the edge), then DNS comes back.

On-call gets one incident per sink, carrying only TunnelDown, and one resolve: the replicas'
ReplicaDown and ReplicaCrashLooping are inhibited by their tunnel's TunnelDown. Seen by a signed
webhook, a Slack and a PagerDuty receiver, all on loopback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.alerts.receiver import Receiver
from tests.faults.conftest import alerts_toml, events, fault_config, pages, webhook_sink
from tests.harness import CLOUDFLARED_SIM, Daemon, Sim
from tests.waiting import wait_until

pytestmark = pytest.mark.system


def dns_switch(tmp_path: Path) -> tuple[Path, Path]:
    """A cloudflared.path wrapper: while ``dns-down`` exists, the replica starts without its
    ``--edge`` (so it must look the edge up in DNS, which fails: exit 1 after ~0.6 s)."""
    flag, wrapper = tmp_path / "dns-down", tmp_path / "cloudflared"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{flag}" ]; then\n'
        "  skip=\n"
        "  for a do\n"
        "    shift\n"
        '    if [ -n "$skip" ]; then skip=; continue; fi\n'
        '    if [ "$a" = --edge ]; then skip=1; continue; fi\n'
        '    set -- "$@" "$a"\n'
        "  done\n"
        "fi\n"
        f'exec {CLOUDFLARED_SIM} "$@"\n'
    )
    wrapper.chmod(0o755)
    flag.touch()
    return flag, wrapper


@pytest.mark.parametrize("replicas", [2, 4])
def test_a_dns_outage_is_one_incident_with_only_tunnel_down_on_every_sink(
    replicas: int,
    tmp_path: Path,
    sim: Sim,
    receivers: Callable[..., Receiver],
    whsec: tuple[str, Path],
    run_daemon: Callable[..., Daemon],
) -> None:
    hook = receivers()
    routing_key = tmp_path / "pd-routing-key"
    routing_key.write_text("R0UTINGKEY0123456789012345678901\n")
    routing_key.chmod(0o600)
    sinks = [
        webhook_sink(f"{hook.url}/hook", whsec[1], name="oncall"),
        f'[[alerts.sink]]\nkind = "slack"\nname = "chat"\nurl = "{hook.url}/slack"\n',
        f'[[alerts.sink]]\nkind = "pagerduty"\nname = "pd"\nurl = "{hook.url}/pd"\n'
        f'routing_key_file = "{routing_key}"\n',
    ]
    flag, wrapper = dns_switch(tmp_path)
    cfg = fault_config(
        tmp_path,
        sim,
        tunnels={"portal": {"replicas": replicas}},
        cloudflared=str(wrapper),
        daemon_extra="crash_loop_restarts = 3",
        # the hold outlasts the replicas' staggered restarts and the 5 s of serving that end a
        # crash loop, as the default 30 s does: what still holds after TunnelDown resolves
        # would page then (tests/alerts/test_incidents.py)
        extra=alerts_toml(*sinks, for_seconds=1, resolve_hold_seconds=15),
    )
    d = run_daemon(cfg)
    wait_until(lambda: pages(hook), timeout=30, what="the first page")
    # every slot crash-looping: what used to page ReplicaDown and ReplicaCrashLooping per slot
    wait_until(
        lambda: all(s["crash_looping"] for s in d.tunnel("portal")["slots"]),
        timeout=60,
        interval=0.2,
        what="every slot crash-looping",
    )
    flag.unlink()  # DNS is back
    d.wait_ready("portal", replicas, timeout=90)

    def resolved_everywhere() -> bool:
        pd = [json.loads(r.body) for r in hook.received("/pd")]
        slack = [r.json()["text"] for r in hook.received("/slack")]
        return (
            any(p.status == "resolved" for p in pages(hook))
            and any(e["event_action"] == "resolve" for e in pd)
            and any(t.startswith(":large_green_circle:") for t in slack)
        )

    wait_until(resolved_everywhere, timeout=60, what="the resolve on every sink")
    # nothing else is on its way: the outbox is empty
    wait_until(
        lambda: all(s["pending"] == 0 for s in d.status()["alerts"]["sinks"]),
        timeout=30,
        what="every sink's outbox drained",
    )

    webhook = pages(hook)
    assert [p.status for p in webhook] == ["firing", "resolved"], [
        (
            p.status,
            [(a["labels"]["alertname"], a["labels"].get("slot"), a["status"]) for a in p.alerts],
        )
        for p in webhook
    ]
    assert {a["labels"]["alertname"] for p in webhook for a in p.alerts} == {"TunnelDown"}
    group_keys = {r.json()["groupKey"] for r in hook.received("/hook")}
    assert group_keys == {'{}:{host="test-host", tunnel="portal"}'}

    pd = [json.loads(r.body) for r in hook.received("/pd")]
    assert [e["event_action"] for e in pd] == ["trigger", "resolve"]
    assert len({e["dedup_key"] for e in pd}) == 1
    assert pd[0]["payload"]["class"] == "TunnelDown"
    assert [a["alertname"] for a in pd[0]["payload"]["custom_details"]["alerts"]] == ["TunnelDown"]

    texts = [r.json()["text"] for r in hook.received("/slack")]
    assert len(texts) == 2 and "TunnelDown" in texts[0] and "TunnelDown" in texts[1]
    assert "ReplicaDown" not in "".join(texts)
    # the daemon did see every replica die, again and again
    assert events(d, "replica_exited") >= 3 * replicas
