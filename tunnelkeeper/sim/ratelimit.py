"""Cloudflare's API rate limit: N requests per sliding window per token, then a block.

Pure and clock-injected: on excess, every call is refused until the block ends.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Decision:
    is_allowed: bool
    limit: int
    remaining: int
    reset_seconds: int  # until the window frees a slot (or the block ends)
    retry_after_seconds: int  # 0 when allowed

    def headers(self) -> dict[str, str]:
        out = {
            "x-ratelimit-limit": str(self.limit),
            "x-ratelimit-remaining": str(self.remaining),
            "x-ratelimit-reset": str(self.reset_seconds),
        }
        if not self.is_allowed:
            out["retry-after"] = str(self.retry_after_seconds)
        return out


@dataclass
class _Bucket:
    hits: deque[float] = field(default_factory=deque)
    blocked_deadline: float = 0.0


class RateLimiter:
    def __init__(
        self,
        limit: int,
        window_seconds: float,
        block_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self.block_seconds = block_seconds
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def check(self, key: str) -> Decision:
        """Count one request for key and say whether it may proceed."""
        now = self._clock()
        bucket = self._buckets.setdefault(key, _Bucket())
        if bucket.blocked_deadline > now:
            return self._denied(bucket, now)
        while bucket.hits and bucket.hits[0] <= now - self.window_seconds:
            bucket.hits.popleft()
        if len(bucket.hits) >= self.limit:
            bucket.blocked_deadline = now + self.block_seconds
            bucket.hits.clear()
            return self._denied(bucket, now)
        bucket.hits.append(now)
        reset = bucket.hits[0] + self.window_seconds - now
        return Decision(
            is_allowed=True,
            limit=self.limit,
            remaining=self.limit - len(bucket.hits),
            reset_seconds=max(0, math.ceil(reset)),
            retry_after_seconds=0,
        )

    def _denied(self, bucket: _Bucket, now: float) -> Decision:
        wait = max(1, math.ceil(bucket.blocked_deadline - now))
        return Decision(
            is_allowed=False,
            limit=self.limit,
            remaining=0,
            reset_seconds=wait,
            retry_after_seconds=wait,
        )
