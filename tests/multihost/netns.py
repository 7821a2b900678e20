"""Network namespaces for the multi-host tests: a hub and N hosts on one bridge, and a way to run
test-side code (HTTP clients, the webhook receiver's socket) inside the hub.

Every address used here lives only inside namespaces this module creates. Test-side code reaches
them from a thread that has joined the hub namespace (``setns``, checked by inode before anything
is sent), never from the root namespace, which has no route to them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
SUBNET = "10.254.0"  # a /24 that exists only on the hub's bridge
HUB_IP = f"{SUBNET}.1"
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(name: str) -> None:
    """Move the calling thread (only it) into namespace ``name``, or raise."""
    path = NETNS_DIR / name
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({name}): {os.strerror(errno)}")
    finally:
        os.close(fd)
    if os.stat("/proc/thread-self/ns/net").st_ino != os.stat(path).st_ino:
        raise RuntimeError(f"this thread is not in network namespace {name}")


def call_in_netns(name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` in a fresh thread inside namespace ``name`` and return its result."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            enter_netns(name)
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=body, name=f"in-{name}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, wait, SIGKILL one process we started (it may be a grandchild: poll /proc)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            if not _is_alive(pid):
                return
            time.sleep(0.05)


def _is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@dataclass
class Topology:
    """``<prefix>-hub`` with bridge br0 (HUB_IP/24) and hosts ``<prefix>-h1..hN``, each joined by
    a veth pair (``eth0`` in the host, ``pN`` on the bridge) at ``SUBNET.1N``."""

    hosts: int
    prefix: str = field(default_factory=lambda: f"tkmh-{secrets.token_hex(3)}")
    created: list[str] = field(default_factory=list)

    @property
    def hub(self) -> str:
        return f"{self.prefix}-hub"

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    @property
    def host_names(self) -> list[str]:
        return [f"h{i}" for i in range(1, self.hosts + 1)]

    def ip(self, host: str) -> str:
        return f"{SUBNET}.{10 + int(host.removeprefix('h'))}"

    def create(self) -> Topology:
        for name in [self.hub, *map(self.ns, self.host_names)]:
            _ip("netns", "add", name)
            self.created.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "addr", "add", f"{HUB_IP}/24", "dev", "br0")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for host in self.host_names:
            port, ns = f"p{host[1:]}", self.ns(host)
            _ip("link", "add", "name", port, "netns", self.hub, "type", "veth",
                "peer", "name", "eth0", "netns", ns)  # fmt: skip
            _ip("-n", self.hub, "link", "set", port, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.ip(host)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        return self

    def set_link(self, host: str, state: str) -> None:
        """Take a host's only network interface down or bring it back up."""
        _ip("-n", self.ns(host), "link", "set", "eth0", state)

    def exec_argv(self, ns: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def pids(self, ns: str) -> list[int]:
        result = subprocess.run(
            ["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=20
        )
        return [int(p) for p in result.stdout.split()]

    def destroy(self) -> list[str]:
        """Stop whatever still runs in our namespaces (by pid), then delete them. Returns a
        description of each process that had to be stopped here."""
        leftovers = []
        for ns in reversed(self.created):
            for pid in self.pids(ns):
                with contextlib.suppress(OSError):
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    leftovers.append(f"{ns}: {pid} {cmd.decode(errors='replace')[:200]}")
                stop_pid(pid)
        for ns in reversed(self.created):
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", ns)
        self.created.clear()
        return leftovers
