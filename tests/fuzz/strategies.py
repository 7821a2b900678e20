"""Strategies and corpus shared by the fuzz tests: fuzzing the parsers that take outside input.

Every fuzz test feeds hostile input to one parser and asserts that only its documented error
type comes out, that nothing hangs (bounded sizes, pytest's timeout, short I/O timeouts) and
that what it returns keeps its invariants. Samples of the real formats live in ``corpus/`` and
are mutated byte by byte, so the fuzzing starts from inputs the parsers really see.

Known product bugs are reproduced by deterministic tests marked ``xfail(strict=True)``; the
strategies here stay clear of those exact triggers (each place says so) so that a fuzz test
still finds the next bug instead of re-finding the known one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, currently_in_test_context, event, settings
from hypothesis import strategies as st

CORPUS = Path(__file__).parent / "corpus"

# Fuzz tests share a budget of well under a minute on two busy cores.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# Examples that start a process or talk HTTP cost milliseconds each.
FUZZ_IO = settings(FUZZ, max_examples=60)


def tally(label: str) -> None:
    """Count an outcome in hypothesis' statistics (``--hypothesis-show-statistics``), which show
    whether the strategies reach the interesting paths; a no-op outside a hypothesis test."""
    if currently_in_test_context():
        event(label)


def corpus(kind: str) -> list[bytes]:
    """The samples of one format, in a stable order."""
    return [p.read_bytes() for p in sorted((CORPUS / kind).iterdir()) if p.is_file()]


def _mutate(data: bytes, edits: list[tuple[int, int, int, bytes]]) -> bytes:
    """Apply (op, position, length, bytes) edits: 0 flip, 1 insert, 2 delete, 3 duplicate."""
    buf = bytearray(data)
    for op, pos, length, extra in edits:
        if not buf:
            buf.extend(extra)
            continue
        at = pos % len(buf)
        if op == 0:
            buf[at] ^= 1 << (length % 8)
        elif op == 1:
            buf[at:at] = extra
        elif op == 2:
            del buf[at : at + length]
        else:
            buf[at:at] = buf[at : at + length]
    return bytes(buf)


_edits = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.integers(0, 1 << 16),
        st.integers(1, 64),
        st.sampled_from([b"{", b"}", b"[", b"]", b'"', b"\\", b"\n", b"\x00", b"\xff", b"="])
        | st.binary(min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=6,
)


def mutated(kind: str) -> st.SearchStrategy[bytes]:
    """Real samples of ``kind`` with a few random byte edits (and sometimes none)."""
    samples = corpus(kind)
    return st.sampled_from(samples) | st.builds(_mutate, st.sampled_from(samples), _edits)


# Text that parsers choke on: control characters, escapes, odd Unicode. (Lone surrogates cannot
# be encoded by the generators themselves; JSON escapes of them are covered in
# test_childlog_fuzz.py.)
hostile_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            " ",
            "\n",
            "\r\n",
            "\x1b[31mred\x1b[0m",
            "\u2028",
            "\u0085",
            "\x00",
            "é" * 3,
            "null",
            "NaN",
            "-1",
            "9" * 30,
            "x" * 600,
            "07749b78-c503-4541-9df6-6348bddb3aa7",
            "{07749B78-C503-4541-9DF6-6348BDDB3AA7}",
            "urn:uuid:07749b78-c503-4541-9df6-6348bddb3aa7",
        ]
    ),
)
numbers = st.one_of(
    st.integers(-5, 10),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 4, 1000, 1001, 2**63, -(2**63), 1e308, -0.0]),
)
leaves: st.SearchStrategy[Any] = st.one_of(st.none(), st.booleans(), numbers, hostile_text)
# Nesting here is modest (generation cost); the deep-nesting tests cover recursion limits.
json_values: st.SearchStrategy[Any] = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=20,
)


def json_bytes(value: Any) -> bytes:
    """JSON the way a hostile peer might send it: Python's encoder also writes NaN/Infinity."""
    return json.dumps(value, allow_nan=True).encode()


def objects_with(keys: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects whose known keys are present or absent, each with a plausible or any value."""
    return st.fixed_dictionaries(
        {},
        optional={k: s | json_values for k, s in keys.items()},
    ).flatmap(
        lambda known: st.dictionaries(hostile_text, json_values, max_size=2).map(
            lambda extra: {**extra, **known}
        )
    )


def deep_json(depth: int, opener: str = "[", *, closed: bool = True) -> bytes:
    """JSON nested ``depth`` levels (past Python's recursion limit at a few thousand);
    ``closed=False`` leaves it unterminated, which reaches the same depth in half the bytes."""
    head, leaf, tail = ('{"a":', "1", "}") if opener == "{" else ("[", "", "]")
    return (head * depth + (leaf + tail * depth if closed else "")).encode()


def is_bounded_delay(seconds: float, cap: float) -> bool:
    return math.isfinite(seconds) and 0.0 <= seconds <= cap
