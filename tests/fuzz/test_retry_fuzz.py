"""Alert receivers' answers decide retries: any status is classified, any Retry-After (garbage,
huge, negative, an HTTP date far away) gives no exception and a bounded, finite delay."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import FUZZ, hostile_text, is_bounded_delay, tally
from tunnelkeeper.alerts.retry import (
    BACKOFF_CAP_SECONDS,
    RETRY_AFTER_CAP_SECONDS,
    Outcome,
    classify,
    next_delay_seconds,
    retry_after_seconds,
)

NOW = datetime(2026, 8, 20, 10, 0, tzinfo=UTC)
http_dates = st.builds(
    lambda day, dd, mon, year, hh, mm, ss, zone: (
        f"{day}, {dd:02d} {mon} {year} {hh:02d}:{mm:02d}:{ss:02d} {zone}"
    ),
    st.sampled_from(["Mon", "Thu", "Xyz", ""]),
    st.integers(0, 40),
    st.sampled_from(["Jan", "Aug", "Foo"]),
    st.integers(0, 100_000),
    st.integers(0, 30),
    st.integers(0, 70),
    st.integers(0, 70),
    st.sampled_from(["GMT", "UTC", "+9999", "-0000", "EST", "+2400", ""]),
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["1e999", "-1e999", "nan", "inf", "0x10", "1_000", " 5 ", "\uff15", "1e-999"]),
)
retry_after_values = st.one_of(st.none(), numbers, http_dates, hostile_text)


@FUZZ
@given(retry_after_values, st.integers(-(2**70), 2**70), st.integers(0, 2**32))
def test_retry_after_and_backoff_are_bounded(value: str | None, failures: int, seed: int) -> None:
    wait = retry_after_seconds(value, NOW)
    tally("no retry-after" if wait is None else "retry-after honoured")
    assert wait is None or is_bounded_delay(wait, RETRY_AFTER_CAP_SECONDS)
    delay = next_delay_seconds(failures, wait, random.Random(seed))
    assert is_bounded_delay(delay, max(BACKOFF_CAP_SECONDS, RETRY_AFTER_CAP_SECONDS))
    if wait is not None:
        assert delay >= wait


@FUZZ
@given(st.integers(-(2**40), 2**40))
def test_every_status_is_classified(status: int) -> None:
    outcome = classify(status)
    assert isinstance(outcome, Outcome)
    assert (outcome is Outcome.DELIVERED) == (200 <= status < 300)


def test_wall_clock_dates_count_from_now() -> None:
    assert retry_after_seconds("Thu, 20 Aug 2026 10:00:30 GMT", NOW) == 30
    assert retry_after_seconds("Thu, 20 Aug 2026 09:00:00 GMT", NOW) == 0
    assert retry_after_seconds("Fri, 31 Dec 9999 23:59:59 GMT", NOW) == RETRY_AFTER_CAP_SECONDS
