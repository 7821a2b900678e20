"""cloudflared version parsing and the one-year support window (pure, explicit dates)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnelkeeper.cloudflared.versions import (
    CloudflaredVersion,
    VersionError,
    is_outdated,
    parse_version_output,
    release_date,
    supported_until,
)

V = CloudflaredVersion.parse


def test_parse_and_order() -> None:
    assert V("2026.8.2") == CloudflaredVersion(2026, 8, 2)
    assert str(V("2026.10.0")) == "2026.10.0"
    assert V("2026.10.0") > V("2026.9.12") > V("2026.9.2")  # numeric, not string, order


@pytest.mark.parametrize("text", ["", "DEV", "2026.13.0", "2026.0.1", "2026.8", "v2026.8.2"])
def test_bad_versions_are_refused(text: str) -> None:
    with pytest.raises(VersionError, match="not a cloudflared version"):
        V(text)


def test_version_output_with_build_date_and_type() -> None:
    plain = parse_version_output("cloudflared version 2026.8.2 (built 2026-08-20)\n")
    assert (plain.version, plain.built_on, plain.build_type) == (
        V("2026.8.2"),
        date(2026, 8, 20),
        None,
    )
    fips = parse_version_output("cloudflared version 2026.8.2 (built 2026-08-21 with FIPS)")
    assert (fips.built_on, fips.build_type) == (date(2026, 8, 21), "FIPS")
    assert parse_version_output("2026.8.2\n").version == V("2026.8.2")  # version --short
    assert parse_version_output("cloudflared version 2026.8.2 (built soon)").built_on is None


def test_garbage_version_output_is_an_error() -> None:
    with pytest.raises(VersionError):
        parse_version_output("Segmentation fault\n")
    with pytest.raises(VersionError):
        parse_version_output("")


def test_release_date_is_first_of_month_or_later_build_date() -> None:
    assert release_date(V("2026.8.2")) == date(2026, 8, 1)
    assert release_date(V("2026.8.2"), date(2026, 8, 20)) == date(2026, 8, 20)
    assert release_date(V("2026.9.1"), date(2026, 8, 20)) == date(2026, 9, 1)  # implausible


def test_outdated_after_one_year_from_today() -> None:
    v = V("2025.3.0")  # released 2025-03-01 at the earliest
    assert supported_until(v) == date(2026, 3, 1)
    assert not is_outdated(v, None, date(2026, 3, 1))
    assert is_outdated(v, None, date(2026, 3, 2))
    assert is_outdated(v, None, datetime(2026, 3, 2, 0, 1, tzinfo=UTC))


def test_newest_known_release_moves_the_reference_when_the_clock_lags() -> None:
    v = V("2025.3.0")
    clock_behind = date(2025, 6, 1)
    assert not is_outdated(v, V("2025.9.0"), clock_behind)
    assert is_outdated(v, V("2026.4.0"), clock_behind)  # a release 13 months newer exists


def test_build_date_postpones_the_deadline() -> None:
    v = V("2025.3.0")
    assert is_outdated(v, None, date(2026, 3, 20))
    assert not is_outdated(v, None, date(2026, 3, 20), built_on=date(2025, 3, 25))


def test_leap_day_build() -> None:
    assert supported_until(V("2028.2.0"), built_on=date(2028, 2, 29)) == date(2029, 2, 28)


@given(
    st.integers(2020, 2040),
    st.integers(1, 12),
    st.integers(0, 30),
    st.dates(date(2020, 1, 1), date(2045, 1, 1)),
)
def test_never_outdated_within_a_year_of_its_release(
    year: int, month: int, patch: int, today: date
) -> None:
    v = CloudflaredVersion(year, month, patch)
    days = (today - release_date(v)).days
    if days <= 365:
        assert not is_outdated(v, v, today)
    if days > 366:
        assert is_outdated(v, v, today)
