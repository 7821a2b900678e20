"""Restart backoff as a short pure function: exponential, capped, jittered."""

from __future__ import annotations

import random


def backoff_seconds(
    attempt: int,
    *,
    base_seconds: float = 0.5,
    cap_seconds: float = 30.0,
    rng: random.Random | None = None,
) -> float:
    """Delay before restart number ``attempt`` (1-based) within a failure streak.

    The first restart is immediate: a replica killed once should be back as fast as possible.
    From the second on the delay doubles from ``base_seconds`` up to ``cap_seconds``, with
    "equal jitter" (half fixed, half random) so replicas that failed together do not restart
    in lockstep, while the delay never drops below half its nominal value.
    """
    if attempt <= 1:
        return 0.0
    nominal = min(cap_seconds, base_seconds * 2.0 ** (attempt - 2))
    r = (rng or random).random()
    return nominal / 2.0 + r * nominal / 2.0
