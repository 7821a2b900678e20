from __future__ import annotations

import random

from tunnelkeeper.supervise.backoff import backoff_seconds


def test_first_restart_is_immediate_then_doubles_to_the_cap() -> None:
    rng = random.Random(1)
    assert backoff_seconds(1, rng=rng) == 0.0
    for attempt, nominal in [(2, 0.5), (3, 1.0), (4, 2.0), (10, 30.0), (50, 30.0)]:
        for _ in range(50):
            d = backoff_seconds(attempt, base_seconds=0.5, cap_seconds=30, rng=rng)
            assert nominal / 2 <= d <= nominal


def test_jitter_spreads_replicas_that_failed_together() -> None:
    rng = random.Random(7)
    delays = {round(backoff_seconds(6, rng=rng), 6) for _ in range(20)}
    assert len(delays) > 10
