"""The README's first command: `tunnelkeeper demo` runs the whole product and stops cleanly."""

from __future__ import annotations

import re
import signal
import subprocess
import threading

import psutil
import pytest

from tests.harness import TUNNELKEEPER
from tests.waiting import wait_until

pytestmark = pytest.mark.system


def _children_of(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def test_demo_serves_traffic_and_ctrl_c_stops_everything() -> None:
    proc = subprocess.Popen(
        [TUNNELKEEPER, "demo"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        wait_until(
            lambda: re.search(r"requests through the tunnel: [1-9]\d* ok", "".join(out)),
            timeout=40,
            what="demo traffic flowing",
        )
        assert "2/2 ready" in "".join(out)
        children = _children_of(proc.pid)
        assert len(children) >= 4  # sim, daemon and its two replicas
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    text = "".join(out)
    final = re.search(r"done: (\d+) requests ok, (\d+) failed", text)
    assert final and int(final.group(1)) > 0 and final.group(2) == "0", text[-2000:]
    for pid in children:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
