from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tunnelkeeper.supervise.childlog import FloodGate, RecentErrors, flood_key, parse_line


def test_json_line_keeps_level_message_and_known_fields() -> None:
    line = parse_line(
        b'{"connIndex":2,"error":"boom","event":0,"level":"error","message":"Serve '
        b'tunnel error","time":"2026-08-20T10:00:00Z","secret":"x"}'
    )
    assert line is not None
    assert (line.level, line.message) == ("error", "Serve tunnel error")
    # renamed so they can never collide with our own log keys (event, level, timestamp)
    assert line.fields == {"conn_index": 2, "error": "boom"}


def test_garbage_is_reported_as_unparsed_text_not_an_exception() -> None:
    line = parse_line(b"\x00\xff\xfe not json {")
    assert line is not None and line.fields == {"unparsed": True}
    assert "\x00" not in line.message
    assert parse_line(b"   ") is None
    assert parse_line(b'{"level": 3, "message": ["x"]}') is not None


@given(st.binary(max_size=2000))
def test_parse_line_never_raises(raw: bytes) -> None:
    parse_line(raw)


def test_flood_gate_admits_a_burst_then_summarises() -> None:
    gate = FloodGate(window_seconds=60, burst=5)
    admitted = [gate.admit("k", now=1.0 + i * 0.001)[0] for i in range(10_000)]
    assert admitted.count(True) == 5
    ok, summaries = gate.admit("k", now=62.0)
    assert ok and summaries == {"k": 9_995}


def test_flood_gate_treats_other_messages_separately() -> None:
    gate = FloodGate(burst=1)
    assert gate.admit("a", 0.0)[0] and gate.admit("b", 0.0)[0]
    assert not gate.admit("a", 0.1)[0]


def test_recent_errors_keep_last_distinct_failures() -> None:
    errs = RecentErrors()
    for i in range(8):
        line = parse_line(f'{{"level":"error","message":"m{i}","error":"e"}}'.encode())
        assert line is not None
        errs.add(line)
        errs.add(line)
    assert list(errs.lines) == [f"m{i}: e" for i in range(3, 8)]


def test_flood_key_ignores_fields() -> None:
    a = parse_line(b'{"level":"error","message":"Serve tunnel error","connIndex":1}')
    b = parse_line(b'{"level":"error","message":"Serve tunnel error","connIndex":3}')
    assert a and b and flood_key(a) == flood_key(b)
