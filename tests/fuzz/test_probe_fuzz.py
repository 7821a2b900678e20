"""What a replica's metrics server answers is hostile: /ready bodies, /metrics text and the raw
HTTP itself. Parsing never raises; a probe of a server sending garbage is a failed probe."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import (
    FUZZ,
    FUZZ_IO,
    corpus,
    deep_json,
    hostile_text,
    json_bytes,
    json_values,
    mutated,
    objects_with,
    tally,
)
from tunnelkeeper.supervise.probe import (
    MAX_BODY_BYTES,
    Prober,
    ReadyResult,
    parse_build_version,
    parse_ready,
)

statuses = st.sampled_from([200, 503]) | st.integers(0, 999)
_ready_fields = {
    "status": statuses,
    "readyConnections": st.integers(-2, 5) | st.sampled_from([1000, 1001, True, 2.0, "4"]),
    "connectorId": st.uuids().map(str) | st.uuids().map(lambda u: "{" + u.hex + "}"),
}
ready_objects = st.fixed_dictionaries(
    {"readyConnections": st.integers(0, 4)},
    optional={"status": statuses, "connectorId": _ready_fields["connectorId"] | hostile_text},
) | objects_with(_ready_fields)
bodies = st.one_of(
    ready_objects.map(json_bytes),
    json_values.map(json_bytes),
    mutated("ready"),
    st.binary(max_size=200),
    st.sampled_from(
        [deep_json(5000), deep_json(5000, closed=False), deep_json(3000, "{"), b" " * 70000]
    ),
)


def check_ready(status: int, body: bytes) -> ReadyResult:
    result = parse_ready(status, body)
    assert isinstance(result, ReadyResult)
    if result.answered:
        tally(f"answered, {min(result.ready_connections, 5)} connections")
        assert status in (200, 503)
        assert 0 <= result.ready_connections <= 1000
        assert status == 200 or result.ready_connections == 0
        assert result.error is None
        if result.connector_id is not None:
            assert str(uuid.UUID(result.connector_id)) == result.connector_id
    else:
        tally("not an answer")
        assert result.error and result.ready_connections == 0
    return result


@FUZZ
@given(statuses, bodies)
def test_ready_bodies(status: int, body: bytes) -> None:
    check_ready(status, body)


_label_values = st.sampled_from(["2026.8.2", "", "DEV", "1" * 41, "a b", 'x\\"y', "\\n"]) | (
    st.text(max_size=12).map(lambda t: t.replace("\\", "\\\\").replace('"', '\\"'))
)
_names = st.sampled_from(["build_info", "build_info_total", "cloudflared_tunnel_ha_connections"])
_label_sets = st.dictionaries(
    st.sampled_from(["version", "goversion", "revision", "type", "le", "Version"]),
    _label_values,
    max_size=4,
)
_values = st.sampled_from(["1", "0", "NaN", "+Inf", "-1e9", "x", "", "1 1700000000000"])
_sample_lines = st.builds(
    lambda name, labels, value: (
        name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "} " + value
    ),
    _names,
    _label_sets,
    _values,
)
_meta_lines = st.builds(
    lambda kind, name, rest: f"# {kind} {name} {rest}",
    st.sampled_from(["HELP", "TYPE", "EOF", "UNIT"]),
    _names,
    st.sampled_from(["gauge", "counter", "histogram", "summary", "untyped", "info", "bogus", ""]),
)
expositions = st.one_of(
    st.lists(st.one_of(_sample_lines, _meta_lines, hostile_text), max_size=8).map("\n".join),
    mutated("metrics").map(lambda b: b.decode("utf-8", errors="replace")),
    st.text(max_size=300),
)
_VERSION = re.compile(r"[0-9A-Za-z.+-]{1,40}")


@FUZZ
@given(expositions)
def test_metrics_text(text: str) -> None:
    version = parse_build_version(text)
    tally("version found" if version else "no version")
    assert version is None or _VERSION.fullmatch(version)


def test_the_corpus_samples_parse() -> None:
    assert parse_build_version(corpus("metrics")[0].decode()) == "2026.8.2"
    results = [parse_ready(200, body) for body in corpus("ready")]
    assert [r.ready_connections for r in results] == [4, 1, 0]
    assert all(r.answered for r in results)


# --- the probe itself, against a server that answers raw bytes -------------------------------

_reasons = st.sampled_from([b"OK", b"", b"Service Unavailable", b"\xff\xfe", b"OK\r\nX: y"])
_header_lines = st.lists(
    st.sampled_from(
        [
            b"Content-Type: application/json",
            b"Content-Length: 5",
            b"Content-Length: 999999",
            b"Content-Length: -1",
            b"Content-Length: 1, 2",
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: gzip",
            b"Connection: close",
            b"Connection: keep-alive",
            b": no name",
            b"Bad Header",
            b"X-" + b"a" * 70000 + b": 1",
        ]
    )
    | st.binary(max_size=30).filter(lambda b: b"\n" not in b and b"\r" not in b),
    max_size=4,
)
_chunked = st.lists(st.binary(max_size=20), max_size=3).map(
    lambda parts: b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
)
well_formed = st.builds(
    lambda status, body, close: (
        (
            b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (status, len(body), b"Connection: close\r\n" if close else b"")
        )
        + body
    ),
    st.sampled_from([200, 503, 404, 500]),
    bodies,
    st.booleans(),
)
raw_responses = st.one_of(
    well_formed,
    st.builds(
        lambda version, status, reason, headers, body: (
            (
                version
                + b" "
                + status
                + b" "
                + reason
                + b"\r\n"
                + b"\r\n".join(headers)
                + b"\r\n\r\n"
            )
            + body
        ),
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"ICY", b""]),
        st.sampled_from([b"200", b"503", b"100", b"101", b"204", b"304", b"999", b"2000", b"-1"]),
        _reasons,
        _header_lines,
        st.one_of(bodies, _chunked),
    ),
    st.binary(max_size=300),
    st.just(b""),
)


class RawServer:
    """A loopback TCP server that answers every request with the same raw bytes, then closes."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(self.response)
            await writer.drain()
        writer.close()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def _probe(response: bytes) -> tuple[ReadyResult, str | None]:
    prober = Prober(timeout_seconds=2.0)
    try:
        async with RawServer(response) as port:
            ready = await prober.ready(port)
            version = await prober.version(port)
    finally:
        await prober.aclose()
    return ready, version


@FUZZ_IO
@given(raw_responses)
def test_probe_of_a_server_sending_garbage(response: bytes) -> None:
    ready, version = asyncio.run(_probe(response))
    tally("answered" if ready.answered else f"failed: {(ready.error or '')[:30]}")
    assert isinstance(ready, ReadyResult)
    if not ready.answered:
        assert ready.error and ready.ready_connections == 0
    assert version is None or _VERSION.fullmatch(version)


def test_probe_of_a_server_that_never_answers_fails_within_its_timeout() -> None:
    async def run() -> ReadyResult:
        hold = asyncio.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await hold.wait()
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = int(server.sockets[0].getsockname()[1])
        prober = Prober(timeout_seconds=0.3)
        try:
            return await asyncio.wait_for(prober.ready(port), 10)
        finally:
            hold.set()
            await prober.aclose()
            server.close()
            await server.wait_closed()

    result = asyncio.run(run())
    assert not result.answered and "timeout" in (result.error or "").lower()


def test_an_oversized_body_is_a_failed_probe() -> None:
    body = b"[" + b"0," * MAX_BODY_BYTES + b"0]"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    ready, _ = asyncio.run(_probe(head + body))
    assert not ready.answered


def test_a_hung_replica_costs_one_timeout_per_probe() -> None:
    """A replica that answered once and then hangs (SIGSTOP): one probe, one connection."""
    connections = 0

    async def run() -> ReadyResult:
        nonlocal connections
        hold = asyncio.Event()
        body = b'{"status":200,"readyConnections":4}'
        first = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

        async def once_then_hang(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            nonlocal connections
            connections += 1
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await reader.readuntil(b"\r\n\r\n")
                if connections == 1:
                    writer.write(first)
                    await writer.drain()
                await hold.wait()
            writer.close()

        server = await asyncio.start_server(once_then_hang, "127.0.0.1", 0)
        port = int(server.sockets[0].getsockname()[1])
        prober = Prober(timeout_seconds=0.3)
        try:
            assert (await prober.ready(port)).ready_connections == 4  # kept alive afterwards
            return await asyncio.wait_for(prober.ready(port), 10)
        finally:
            hold.set()
            await prober.aclose()
            server.close()
            await server.wait_closed()

    result = asyncio.run(run())
    assert not result.answered
    assert connections == 1 and result.error == "timeout"
