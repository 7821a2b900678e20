"""Retry policy for sink deliveries: outcome by status, backoff, Retry-After. Pure functions."""

from __future__ import annotations

import enum
import math
import random
from datetime import UTC, datetime

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0
# a Retry-After further out than this is treated as this (a typo must not park a sink for days)
RETRY_AFTER_CAP_SECONDS = 3600.0


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"  # retry later
    PERMANENT = "permanent"  # give up: retrying cannot help


def classify(status: int) -> Outcome:
    """2xx delivered; 408, 429, 5xx and 3xx (redirects are not followed) retried; other 4xx
    are permanent."""
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in (408, 429) or status >= 500 or 300 <= status < 400:
        return Outcome.TRANSIENT
    return Outcome.PERMANENT


def backoff_seconds(
    failures: int,
    rng: random.Random,
    base: float = BACKOFF_BASE_SECONDS,
    cap: float = BACKOFF_CAP_SECONDS,
) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**failures))."""
    ceiling = min(cap, base * 2.0 ** min(max(failures, 0), 60))
    return rng.uniform(0.0, ceiling)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        # imported here: the email package costs ~0.6 MB resident, and a date is rare
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_SECONDS)


def next_delay_seconds(
    failures: int,
    retry_after: float | None,
    rng: random.Random,
    base: float = BACKOFF_BASE_SECONDS,
    cap: float = BACKOFF_CAP_SECONDS,
) -> float:
    """The wait before the next attempt: the jittered backoff, but never before Retry-After."""
    delay = backoff_seconds(failures, rng, base, cap)
    return max(delay, retry_after) if retry_after is not None else delay
