"""CloudflaredOutdated: Cloudflare supports releases from the last year (one-year window)."""

from __future__ import annotations

from datetime import UTC, datetime

from tunnelkeeper.cloudflared.upgrade import outdated

NOW = datetime(2026, 11, 27, tzinfo=UTC)


def test_a_release_older_than_one_year_is_outdated() -> None:
    assert outdated("2025.1.0", "2026.8.2", NOW)
    assert outdated("2025.10.0", None, NOW)  # supported until 2026-10-01
    assert not outdated("2026.8.2", "2026.8.2", NOW)
    assert not outdated("2026.1.0", "2026.8.2", NOW)  # supported until 2027-01-01


def test_the_window_is_measured_from_the_newest_known_release() -> None:
    # pinned to a release from the future of `now` (clock skew): the window moves with it
    assert outdated("2026.1.0", "2027.2.0", NOW)


def test_garbage_versions_are_never_reported() -> None:
    assert not outdated("not-a-version", "2026.8.2", NOW)
    assert not outdated("2026.8.2", "nope", NOW)
