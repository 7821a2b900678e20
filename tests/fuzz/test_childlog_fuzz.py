"""cloudflared's stderr is hostile: each line parses without raising into a bounded, printable
ChildLine, and the log-file tail relays the same lines however the writes are split."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import FUZZ, corpus, deep_json, json_bytes, mutated, objects_with, tally
from tunnelkeeper.supervise.childlog import LEVELS, MAX_FIELD_CHARS, ChildLine, parse_line
from tunnelkeeper.supervise.logtail import CUT_MARK, MAX_LINE_BYTES, LogTail, clip

OUR_FIELDS = {"conn_index", "error", "edge_ip", "location", "connection", "protocol", "tunnel_id"}
MARKER = CUT_MARK

cloudflared_objects = objects_with(
    {
        "level": st.sampled_from(["debug", "info", "warn", "error", "fatal", "INFO", "panic"]),
        "message": st.sampled_from(["Serve tunnel error", "Registered tunnel connection"]),
        "time": st.sampled_from(["2026-08-20T10:00:00Z"]),
        "connIndex": st.integers(0, 3),
        "error": st.sampled_from(["Unauthorized: Invalid tunnel secret"]),
        "ip": st.sampled_from(["198.41.200.13"]),
        "event": st.integers(0, 2),
        "tunnelID": st.uuids().map(str),
    }
)
lines = st.one_of(
    cloudflared_objects.map(json_bytes),
    mutated("logs").map(lambda b: b.split(b"\n")[len(b) % 3]),
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", errors="surrogatepass")),
    st.sampled_from([deep_json(5000), deep_json(3000, "{"), b"{" * 20000, b" \t\r ", b""]),
)


def check_line(raw: bytes) -> ChildLine | None:
    line = parse_line(raw)
    if line is None:
        tally("blank")
        assert not raw.strip()
        return None
    tally("unparsed" if line.fields.get("unparsed") else "json")
    assert line.level in LEVELS.values()
    for text in (line.message, *(v for v in line.fields.values() if isinstance(v, str))):
        # one line, printable, bounded: nothing a child prints can forge or flood our log lines
        assert len(text) <= MAX_FIELD_CHARS + 1
        assert all(ch.isprintable() or ch == "\t" for ch in text), repr(text)
    assert set(line.fields) <= OUR_FIELDS | {"unparsed"}
    for value in line.fields.values():
        assert isinstance(value, bool | int | float | str)
    return line


@FUZZ
@given(lines)
def test_log_lines(raw: bytes) -> None:
    check_line(raw)


@FUZZ
@given(mutated("logs"))
def test_mutated_log_files(data: bytes) -> None:
    for raw in data.split(b"\n"):
        check_line(raw)


def test_corpus_lines_keep_their_meaning() -> None:
    parsed = [check_line(raw) for sample in corpus("logs") for raw in sample.split(b"\n")]
    found = [p for p in parsed if p is not None]
    registered = [p for p in found if p.message == "Registered tunnel connection"]
    assert registered and registered[0].fields["conn_index"] == 0
    assert any(p.level == "critical" for p in found)
    assert any(p.fields.get("unparsed") for p in found)


@pytest.mark.parametrize(
    "raw",
    [b'{"level":"error","message":"\\ud800"}', b'{"message":"x","error":"\\udfff boom"}'],
    ids=["message", "error-field"],
)
def test_lone_surrogate_escapes_are_printable_text(raw: bytes) -> None:
    check_line(raw)


# --- the log-file tail -------------------------------------------------------------------------

payloads = st.lists(
    st.one_of(
        st.binary(max_size=60),
        st.sampled_from([b"\n", b"\n\n", b"x" * (MAX_LINE_BYTES - 1), b"y" * (MAX_LINE_BYTES + 7)]),
        lines.map(lambda b: b + b"\n"),
    ),
    max_size=8,
).map(b"".join)


def _relay_all(data: bytes, cuts: list[int], punch_every: int) -> list[bytes]:
    """Write ``data`` to a file in pieces cut at ``cuts``, reading after each write, the way a
    child's O_APPEND writes and the daemon's polls interleave."""
    relayed: list[bytes] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "replica.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:

            def block(chunk: bytes, backlog: bool) -> None:
                assert chunk.endswith(b"\n")  # whole lines only
                relayed.extend(clip(line) for line in chunk[:-1].split(b"\n"))

            tail = LogTail(path, block, punch_every_bytes=punch_every)
            start = 0
            for cut in [*sorted(set(cuts)), len(data)]:
                os.write(fd, data[start:cut])
                start = max(start, cut)
                tail.read_available()
            tail.flush()
        finally:
            os.close(fd)
    return relayed


def _normal(line: bytes) -> bytes:
    return line.removesuffix(MARKER) if len(line) == MAX_LINE_BYTES + len(MARKER) else line


def _expected(data: bytes) -> list[bytes]:
    """The lines of ``data`` (the last one even without a newline), each cut at the limit."""
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    return [p[:MAX_LINE_BYTES] for p in parts]


@FUZZ
@given(payloads, st.lists(st.integers(0, 4 * MAX_LINE_BYTES), max_size=6), st.booleans())
def test_tail_relays_the_same_lines_however_writes_are_split(
    data: bytes, cuts: list[int], small_file: bool
) -> None:
    cuts = [c % (len(data) + 1) for c in cuts]
    punch_every = 1 if small_file else 4 * 1024 * 1024  # small: holes after every read
    chunked = _relay_all(data, cuts, punch_every)
    one_shot = _relay_all(data, [], punch_every)
    for line in chunked + one_shot:
        assert len(line) <= MAX_LINE_BYTES + len(MARKER)
        assert b"\n" not in line
        check_line(line)
    assert [_normal(x) for x in chunked] == [_normal(x) for x in one_shot] == _expected(data)


def test_an_endless_line_is_relayed_once_cut_and_the_next_line_intact() -> None:
    data = b"z" * (5 * MAX_LINE_BYTES) + b"\nnext\n"
    cuts = list(range(0, len(data), 1000))
    relayed = _relay_all(data, cuts, 4 * 1024 * 1024)
    assert relayed == [b"z" * MAX_LINE_BYTES + MARKER, b"next"]
