"""/proc/<pid>/stat read by hand agrees with psutil's reading of the same process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from tests.waiting import wait_until
from tunnelkeeper.supervise.procstat import is_stopped, usage

# burns CPU for a moment, holds ~40 MB, renames itself to a command name with spaces and
# parentheses (the one hostile part of the file), then waits
CHILD = """
import sys, time
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
held = bytearray(40 * 1024 * 1024)
held[::4096] = b"x" * len(held[::4096])
with open("/proc/self/comm", "w") as f:
    f.write("a) b (c")
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def child() -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            yield proc
        finally:
            proc.kill()


def test_cpu_and_memory_agree_with_psutil_for_a_process_named_hostilely(
    child: subprocess.Popen[str],
) -> None:
    ps = psutil.Process(child.pid)
    assert ps.name() == "a) b (c"
    found = usage(child.pid)
    assert found is not None
    cpu, rss = found
    times = ps.cpu_times()
    assert abs(cpu - (times.user + times.system)) < 0.02  # a waiting process: the same ticks
    assert cpu >= 0.25
    assert abs(rss - ps.memory_info().rss) < 1024 * 1024
    assert rss > 40 * 1024 * 1024


def test_stopped_continued_and_gone(child: subprocess.Popen[str]) -> None:
    assert not is_stopped(child.pid)
    os.kill(child.pid, signal.SIGSTOP)
    wait_until(lambda: is_stopped(child.pid), timeout=5, what="stopped")
    os.kill(child.pid, signal.SIGCONT)
    wait_until(lambda: not is_stopped(child.pid), timeout=5, what="continued")
    child.kill()
    child.wait()
    assert usage(child.pid) is None and not is_stopped(child.pid)
