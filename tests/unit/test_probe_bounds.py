"""The prober against a hostile metrics server on loopback: bounded memory, no exception."""

from __future__ import annotations

import asyncio
import tracemalloc

from tunnelkeeper.supervise.probe import Prober

BUILD_INFO = (
    b"# HELP build_info Build and version information\n# TYPE build_info gauge\n"
    b'build_info{goversion="go1.24",revision="x",type="",version="2026.8.2"} 1\n'
)


async def serve_metrics(body: bytes) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        try:
            # in 64 KiB slices: this server shares the process (and tracemalloc) with the
            # prober, and its own buffers must not count as the prober's
            for i in range(0, len(body), 1 << 16):
                writer.write(body[i : i + (1 << 16)])
                await writer.drain()
        except OSError:
            pass  # the prober stopped reading: expected
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def peak_while(coro: object) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = await coro  # type: ignore[misc]
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_a_20_mb_metrics_page_costs_the_daemon_no_more_than_a_small_one() -> None:
    small = await serve_metrics(BUILD_INFO + b"cloudflared_x 1\n" * 2000)
    huge = await serve_metrics(BUILD_INFO + b"# padding\n" * 2_000_000)  # 20 MB
    prober = Prober(timeout_seconds=5)
    try:
        port_small = small.sockets[0].getsockname()[1]
        port_huge = huge.sockets[0].getsockname()[1]
        version, small_peak = await peak_while(prober.version(port_small))
        assert version == "2026.8.2"
        version, huge_peak = await peak_while(prober.version(port_huge))
        assert version is None  # too large to trust: no version rather than megabytes held
        assert huge_peak < 2 * 1024 * 1024
        assert huge_peak < 20 * small_peak
    finally:
        await prober.aclose()
        small.close()
        huge.close()
