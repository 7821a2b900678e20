"""What 100 `/ready` probes a second cost, by how they are made: the figures behind
``tunnelkeeper/supervise/probewire.py`` and the probe beats.

A daemon starts 100 replicas (25 tunnels of 4) and is then stopped (SIGSTOP) so that only this
process probes them; each variant probes every replica once a second for the window, and its
CPU (user + system of this process, % of one core) is printed:

- ``streams+h11, spread``: asyncio streams and h11, each replica on its own timer (the prober
  before issue 16);
- ``streams+h11, burst``: the same, all replicas at once every second;
- ``raw+h11, burst``: non-blocking sockets on one epoll, h11 parsing;
- ``raw+llhttp, burst``: the same, httptools (llhttp) parsing;
- ``raw, blocking, spread``: a blocking socket per replica, each on its own moment, no parsing;
- ``Prober, spread`` / ``Prober, burst``: tunnelkeeper's prober now, per-replica timers or all
  at once (the daemon probes in groups, between the two).

    .venv/bin/python -m bench.probe_wire [--window 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h11
import httptools

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scale import supervising
from tunnelkeeper.supervise.probe import Prober

REQUEST = b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n\r\n"


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def per_second(window: float, round_: Callable[[], None]) -> float:
    """Run ``round_`` once a second for ``window`` seconds; CPU fraction of a core."""
    c0, end = cpu(), time.monotonic() + window
    while time.monotonic() < end:
        started = time.monotonic()
        round_()
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    return (cpu() - c0) / window


def connect_all(ports: list[int]) -> dict[int, socket.socket]:
    socks = {}
    for port in ports:
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        socks[s.fileno()] = s
    return socks


def raw_burst(ports: list[int], window: float, parse: str) -> float:
    socks = connect_all(ports)
    ep = select.epoll()
    for fd in socks:
        ep.register(fd, select.EPOLLIN)

    class Done:
        complete = False

        def on_message_complete(self) -> None:
            self.complete = True

    def round_() -> None:
        conns: dict[int, object] = {}
        for fd, s in socks.items():
            if parse == "h11":
                c = h11.Connection(h11.CLIENT)
                data = c.send(h11.Request(method="GET", target="/ready", headers=[("Host", "x")]))
                s.send((data or b"") + (c.send(h11.EndOfMessage()) or b""))
                conns[fd] = c
            else:
                done = Done()
                conns[fd] = (httptools.HttpResponseParser(done), done)
                s.send(REQUEST)
        left = set(socks)
        while left:
            for fd, _ in ep.poll(1.0):
                data = socks[fd].recv(65536)
                conn = conns[fd]
                if isinstance(conn, h11.Connection):
                    conn.receive_data(data)
                    while (event := conn.next_event()) is not h11.NEED_DATA:
                        if isinstance(event, h11.EndOfMessage):
                            left.discard(fd)
                            break
                else:
                    parser, done = conn  # type: ignore[misc]
                    parser.feed_data(data)
                    if done.complete:
                        left.discard(fd)

    try:
        return per_second(window, round_)
    finally:
        for s in socks.values():
            s.close()
        ep.close()


def raw_spread(ports: list[int], window: float) -> float:
    socks = [socket.create_connection(("127.0.0.1", p)) for p in ports]
    c0, now = cpu(), time.monotonic()
    end = now + window
    due = [now + i / len(socks) for i in range(len(socks))]
    while time.monotonic() < end:
        i = min(range(len(socks)), key=due.__getitem__)
        time.sleep(max(0.0, due[i] - time.monotonic()))
        socks[i].send(REQUEST)
        socks[i].recv(65536)
        due[i] += 1.0
    for s in socks:
        s.close()
    return (cpu() - c0) / window


async def streams_h11_get(port: int, conns: dict[int, tuple]) -> None:  # type: ignore[type-arg]
    if port not in conns:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conns[port] = (reader, writer, h11.Connection(h11.CLIENT))
    reader, writer, c = conns[port]
    writer.write(c.send(h11.Request(method="GET", target="/ready", headers=[("Host", "x")])))
    writer.write(c.send(h11.EndOfMessage()))
    while True:
        event = c.next_event()
        if event is h11.NEED_DATA:
            c.receive_data(await reader.read(65536))
        elif isinstance(event, h11.EndOfMessage):
            c.start_next_cycle()
            return


async def spread(get: Callable[[int], object], ports: list[int], window: float) -> float:
    async def one(port: int, offset: float) -> None:
        await asyncio.sleep(offset)
        end = time.monotonic() + window
        while time.monotonic() < end:
            await asyncio.wait_for(get(port), 2)  # type: ignore[arg-type]
            await asyncio.sleep(1.0)

    c0 = cpu()
    await asyncio.gather(*(one(p, i / len(ports)) for i, p in enumerate(ports)))
    return (cpu() - c0) / window


async def burst(get: Callable[[int], object], ports: list[int], window: float) -> float:
    c0, end = cpu(), time.monotonic() + window
    while time.monotonic() < end:
        started = time.monotonic()
        await asyncio.gather(*(get(p) for p in ports))  # type: ignore[arg-type]
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    return (cpu() - c0) / window


async def with_prober(how: str, ports: list[int], window: float) -> float:
    prober = Prober(2.0)
    try:
        run = spread if how == "spread" else burst
        return await run(prober.ready, ports, window)
    finally:
        await prober.aclose()


async def with_streams(how: str, ports: list[int], window: float) -> float:
    conns: dict[int, tuple] = {}  # type: ignore[type-arg]
    try:
        run = spread if how == "spread" else burst
        return await run(lambda p: streams_h11_get(p, conns), ports, window)
    finally:
        for _, writer, _ in conns.values():
            writer.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=float, default=15)
    args = ap.parse_args(argv)
    w = args.window
    with (
        tempfile.TemporaryDirectory(prefix="tk-bench-wire-") as tmp,
        supervising(Path(tmp), 100) as d,
    ):
        ports = [r["metrics_port"] for t in d.status()["tunnels"] for r in t["replicas"]]
        os.kill(d.proc.pid, signal.SIGSTOP)  # only this process probes from here on
        try:
            rows = [
                ("streams+h11, spread", asyncio.run(with_streams("spread", ports, w))),
                ("streams+h11, burst", asyncio.run(with_streams("burst", ports, w))),
                ("raw+h11, burst", raw_burst(ports, w, "h11")),
                ("raw+llhttp, burst", raw_burst(ports, w, "llhttp")),
                ("raw, blocking, spread", raw_spread(ports, w)),
                ("Prober, spread", asyncio.run(with_prober("spread", ports, w))),
                ("Prober, burst", asyncio.run(with_prober("burst", ports, w))),
            ]
        finally:
            os.kill(d.proc.pid, signal.SIGCONT)
    print(f"{len(ports)} replicas probed once a second for {w:g} s each:")
    for name, fraction in rows:
        print(f"  {name:24} {100 * fraction:6.2f} % of a core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
