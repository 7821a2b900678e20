"""Loopback ports for replicas' metrics servers, never handed to two replicas at once."""

from __future__ import annotations

import socket


class PortAllocator:
    def __init__(self) -> None:
        self._in_use: set[int] = set()

    def allocate(self) -> int:
        """A port free right now (the kernel picks it) and not given to another replica.

        Another program can still take it before cloudflared binds; the replica then exits
        with cloudflared's bind error and the supervisor starts it again on a fresh port.
        """
        for _ in range(64):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in self._in_use:
                self._in_use.add(port)
                return port
        raise OSError("no free loopback port for a replica metrics server")

    def claim(self, port: int) -> None:
        self._in_use.add(port)

    def release(self, port: int) -> None:
        self._in_use.discard(port)
