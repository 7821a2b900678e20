"""The Cloudflare API request budget: how far apart polling rounds must be, and a sliding-window
log that refuses any request beyond the budget. Pure; times are on the caller's monotonic clock.
"""

from __future__ import annotations

from collections import deque

WINDOW_SECONDS = 300.0  # Cloudflare counts requests per user over five minutes


def round_interval_seconds(poll_seconds: float, requests_per_round: int, budget: int) -> float:
    """Seconds between rounds so that rounds alone stay within ``budget`` per window."""
    return max(poll_seconds, WINDOW_SECONDS * requests_per_round / max(1, budget))


class RequestWindow:
    """Sliding-window log of request times on the policy clock: never more than ``budget``
    requests in any ``window_seconds``, however bursty the callers."""

    def __init__(self, budget: int, window_seconds: float = WINDOW_SECONDS) -> None:
        self.budget = budget
        self.window_seconds = window_seconds
        self._hits: deque[float] = deque()

    def _prune(self, now: float) -> None:
        # The nanosecond of slack: ``now + wait_seconds(now)`` must prune the hit it waited for,
        # whatever the float rounding of that sum.
        while self._hits and self._hits[0] + self.window_seconds <= now + 1e-9:
            self._hits.popleft()

    def count(self, now: float) -> int:
        # No pruning here: asking about a future time must not forget hits for the present.
        return sum(1 for hit in self._hits if hit + self.window_seconds > now + 1e-9)

    def has_room(self, now: float, n: int = 1) -> bool:
        return self.count(now) + n <= self.budget

    def record(self, now: float) -> None:
        self._prune(now)
        self._hits.append(now)

    def wait_seconds(self, now: float, n: int = 1) -> float:
        """Seconds until ``n`` more requests fit (``n`` is capped at the budget)."""
        n = max(1, min(n, self.budget))
        live = [hit for hit in self._hits if hit + self.window_seconds > now + 1e-9]
        over = len(live) + n - self.budget
        if over <= 0:
            return 0.0
        return max(0.0, live[over - 1] + self.window_seconds - now)
