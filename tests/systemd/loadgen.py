"""Steady requests through the simulated edge, inside the machine's network namespace.

    python loadgen.py URL HOST OUT.json

Sends one request at a time, 20 a second, until SIGTERM; then writes {"ok": n, "failed": n,
"failures": [...]} to OUT.json (and every second while running, so a test can wait on it).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import httpx


def main() -> int:
    url, host, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    ok, failures = 0, []
    written = 0.0
    with httpx.Client(timeout=30) as client:
        while not stop:
            try:
                r = client.get(url, headers={"Host": host})
                if 200 <= r.status_code < 300:
                    ok += 1
                else:
                    failures.append(f"{time.time():.3f} http_{r.status_code} {r.text[:200]}")
            except httpx.HTTPError as exc:
                failures.append(f"{time.time():.3f} {type(exc).__name__}")
            if time.monotonic() - written >= 1.0:
                write(out, ok, failures)
                written = time.monotonic()
            time.sleep(0.05)
    write(out, ok, failures)
    return 0


def write(out: Path, ok: int, failures: list[str]) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"ok": ok, "failed": len(failures), "failures": failures[:20]}))
    tmp.replace(out)


if __name__ == "__main__":
    raise SystemExit(main())
