"""cloudflared version numbers, release dates and Cloudflare's support window. Pure: no I/O.

cloudflared versions are ``YYYY.M.P`` (year, month, patch within the month), so a version
string carries its own release date to within a month: ``2026.8.2`` was released in August
2026. ``cloudflared --version`` also prints the build date, ``cloudflared version 2026.8.2
(built 2026-08-20)``, which narrows it down when we have it.

Support window (Cloudflare's downloads page): versions released within **one year of the
newest release** are supported. tunnelkeeper cannot list Cloudflare's releases offline, so it
measures the year back from a *reference date*, the later of

* the release date of the newest version it knows of (the pinned ``[cloudflared.install]
  version``, or the newest version any replica has reported), and
* today (wall clock), because Cloudflare ships a cloudflared release nearly every month, so
  the true newest release is never much older than today.

A version is **outdated** when its release date is more than one calendar year before the
reference date. Release dates are the first of the version's month unless a build date is
known and later (so, if anything, a version counts as released early and is flagged up to a
month sooner than Cloudflare would; it is never flagged late). The calendar date is a fact for
people, so the wall clock is right here; policy timers elsewhere use the monotonic clock.
"""

from __future__ import annotations

import re
from datetime import date, datetime

from tunnelkeeper.errors import TunnelkeeperError
from tunnelkeeper.structs import Struct

_VERSION = re.compile(r"(\d{4})\.(\d{1,2})\.(\d{1,4})")
_VERSION_LINE = re.compile(
    r"cloudflared version (?P<version>\S+)"
    r"(?: \(built (?P<built>[^)\s]+)(?: with (?P<type>[^)]+))?\))?"
)


class VersionError(TunnelkeeperError):
    """A version string or ``--version`` output that does not parse."""


class CloudflaredVersion(Struct, frozen=True, order=True):
    year: int
    month: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> CloudflaredVersion:
        """``"2026.8.2"`` -> CloudflaredVersion(2026, 8, 2); anything else is a VersionError."""
        match = _VERSION.fullmatch(text.strip())
        if match is None or not 1 <= int(match.group(2)) <= 12:
            shown = text.strip()[:40]
            raise VersionError(f'{shown!r} is not a cloudflared version "YYYY.M.P"')
        return cls(int(match.group(1)), int(match.group(2)), int(match.group(3)))

    def __str__(self) -> str:
        return f"{self.year}.{self.month}.{self.patch}"

    @property
    def month_start(self) -> date:
        return date(self.year, self.month, 1)


class VersionOutput(Struct, frozen=True):
    """What ``cloudflared --version`` said."""

    version: CloudflaredVersion
    built_on: date | None = None
    build_type: str | None = None  # e.g. "FIPS" for typed builds


def parse_version_output(text: str) -> VersionOutput:
    """Parse ``cloudflared version 2026.8.2 (built 2026-08-20[ with TYPE])``.

    The build part is optional (``cloudflared version --short`` prints the bare version);
    an unreadable build date is treated as unknown rather than an error.
    """
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    match = _VERSION_LINE.match(first)
    if match is None:
        return VersionOutput(CloudflaredVersion.parse(first))
    version = CloudflaredVersion.parse(match.group("version"))
    built_on = None
    if match.group("built"):
        try:
            built_on = date.fromisoformat(match.group("built"))
        except ValueError:
            built_on = None
    return VersionOutput(version, built_on, match.group("type"))


def release_date(version: CloudflaredVersion, built_on: date | None = None) -> date:
    """When ``version`` came out: the first of its month, or its build date if later."""
    start = version.month_start
    return max(start, built_on) if built_on is not None else start


def one_year_after(day: date) -> date:
    try:
        return day.replace(year=day.year + 1)
    except ValueError:  # 29 February
        return day.replace(year=day.year + 1, day=28)


def support_reference(newest_known: CloudflaredVersion | None, now: date | datetime) -> date:
    """The date the one-year window is measured back from (see the module docstring)."""
    today = now.date() if isinstance(now, datetime) else now
    if newest_known is None:
        return today
    return max(today, release_date(newest_known))


def supported_until(version: CloudflaredVersion, *, built_on: date | None = None) -> date:
    """The last day of ``version``'s window: one year after its release date."""
    return one_year_after(release_date(version, built_on))


def is_outdated(
    version: CloudflaredVersion,
    newest_known: CloudflaredVersion | None,
    now: date | datetime,
    *,
    built_on: date | None = None,
) -> bool:
    """True when ``version`` is older than Cloudflare's one-year support window allows."""
    return supported_until(version, built_on=built_on) < support_reference(newest_known, now)
