"""Runs an AlertPipeline with one webhook sink, for the kill -9 durability test.

    python -m tests.alerts.outbox_driver STATE_DIR URL SECRET_FILE --fire N --resolve M [--clear]

On start it restores from STATE_DIR's outbox, raises ``--fire`` ReplicaDown alerts (slots
0..N-1), resolves slots 0..M-1, or with ``--clear`` observes no conditions so everything restored
resolves. Then prints one JSON line ``{"restored": k, "enqueued": [ids...]}`` and keeps delivering
until it is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from tunnelkeeper.alerts import AlertPipeline, Condition
from tunnelkeeper.config.model import AlertsConfig, SinkConfig
from tunnelkeeper.logconfig import configure
from tunnelkeeper.metrics import Metrics


async def main(args: argparse.Namespace) -> None:
    sink = SinkConfig(
        kind="webhook", name="hook", url=args.url, signing_secret_file=Path(args.secret_file)
    )
    pipeline = AlertPipeline(
        "origin-01",
        # one page per alert (no incidents): this driver tests the outbox's durability per id;
        # incidents across a restart: tests/alerts/test_incidents.py
        AlertsConfig(for_seconds=0, sinks=(sink,), group_by_tunnel=False),
        Path(args.state_dir),
        Metrics(),
        resolve_hold_seconds=0,
        backoff_base_seconds=0.05,
        backoff_cap_seconds=0.3,
    )
    await pipeline.start()
    restored = len(pipeline.firing())
    conditions = [
        Condition("ReplicaDown", {"tunnel": "portal", "slot": str(s)}) for s in range(args.fire)
    ]
    enqueued = [n.id for n in pipeline.observe(conditions, now=1.0)] if args.fire else []
    if args.resolve:
        enqueued += [n.id for n in pipeline.observe(conditions[args.resolve :], now=2.0)]
    if args.clear:
        enqueued += [n.id for n in pipeline.observe([], now=3.0)]
    print(json.dumps({"restored": restored, "enqueued": enqueued}), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await pipeline.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("state_dir")
    parser.add_argument("url")
    parser.add_argument("secret_file")
    parser.add_argument("--fire", type=int, default=0)
    parser.add_argument("--resolve", type=int, default=0)
    parser.add_argument("--clear", action="store_true")
    configure(level="warning", fmt="json")
    try:
        asyncio.run(main(parser.parse_args()))
    except KeyboardInterrupt:
        sys.exit(130)
