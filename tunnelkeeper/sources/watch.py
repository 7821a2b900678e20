"""Per-tunnel polling of a token source: reports what changed, decides nothing about rolling.

Each poll asks the source for its cheap signature and reads only when that changed (or the
source has none). A value that is not a token, or a token for another tunnel, is Refused and
reported once; a source that errors is Failed, and after failing continuously for
``unavailable_after_seconds`` the watcher is ``unavailable`` (TokenSourceUnavailable). The last
good token stays in ``current`` throughout.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable

from tunnelkeeper.sources.base import (
    MalformedTokenError,
    TokenSource,
    TokenSourceError,
    TokenVersion,
)
from tunnelkeeper.structs import Struct

# How many refused versions are remembered so that each is reported only once.
REMEMBERED_REFUSALS = 16


class New(Struct, frozen=True):
    """A valid token, different from the last accepted one; it is now ``watcher.current``."""

    version: TokenVersion


class Unchanged(Struct, frozen=True):
    """Nothing new (including a refused value seen again, or the same token under a new id)."""


class Refused(Struct, frozen=True):
    """The source holds a value that must not be rolled out. ``version`` names it, never the
    token; ``reason`` is safe to show."""

    version: str
    reason: str


class Failed(Struct, frozen=True):
    """The source could not be read. ``failing_since`` is on the watcher's monotonic clock;
    ``failures`` counts consecutive failed polls (1 on the first)."""

    reason: str
    failing_since: float
    failures: int


WatchEvent = New | Unchanged | Refused | Failed


def _normal_uuid(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return value.strip().lower()


class TokenWatcher:
    def __init__(
        self,
        source: TokenSource,
        *,
        tunnel_id: str | None,
        unavailable_after_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.unavailable_after_seconds = unavailable_after_seconds
        self._clock = clock
        # With no configured id, the first accepted token pins the tunnel.
        self._tunnel_id = _normal_uuid(tunnel_id)
        self._current: TokenVersion | None = None
        self._seen_signature: str | None = None
        self._refused: deque[str] = deque(maxlen=REMEMBERED_REFUSALS)
        self._pending_refusal: Refused | None = None
        self._failing_since: float | None = None
        self._failures = 0
        self._last_error: str | None = None

    @property
    def current(self) -> TokenVersion | None:
        """The last accepted token; kept while the source fails or holds a refused value."""
        return self._current

    @property
    def refused(self) -> Refused | None:
        """The refusal still standing: the source's latest value was refused and nothing
        acceptable has replaced it."""
        return self._pending_refusal

    @property
    def failing_since(self) -> float | None:
        return self._failing_since

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def unavailable(self) -> bool:
        """True once the source has failed continuously for ``unavailable_after_seconds``."""
        return (
            self._failing_since is not None
            and self._clock() - self._failing_since >= self.unavailable_after_seconds
        )

    async def poll(self, *, force: bool = False) -> WatchEvent:
        """Check the source once. ``force`` skips the cheap signature check and reports a
        refused value again (``tunnelkeeper rotate --force``, SIGHUP); a token identical to
        ``current`` is still Unchanged, so the caller decides whether to roll anyway."""
        signature: str | None = None
        try:
            signature = await self.source.current_version()
            if not force and signature is not None and signature == self._seen_signature:
                return self._succeeded(Unchanged())
            version = await self.source.read()
        except MalformedTokenError as exc:
            self._seen_signature = signature
            return self._succeeded(self._refuse(exc.version, str(exc), force=force))
        except TokenSourceError as exc:
            return self._failed(str(exc))
        self._seen_signature = signature
        return self._succeeded(self._judge(version, force=force))

    def _judge(self, version: TokenVersion, *, force: bool) -> WatchEvent:
        token = version.token
        if self._tunnel_id is not None and token.tunnel_id != self._tunnel_id:
            return self._refuse(
                version.version,
                f"{self.source.description}: token {token.fingerprint} is for tunnel "
                f"{token.tunnel_id}, not {self._tunnel_id}",
                force=force,
            )
        self._pending_refusal = None
        self._refused.clear()  # a bad value that comes back after a good one is news again
        if self._current is not None and self._current.token.fingerprint == token.fingerprint:
            self._current = version  # same token, perhaps a new backend version id
            return Unchanged()
        self._current = version
        if self._tunnel_id is None:
            self._tunnel_id = token.tunnel_id
        return New(version)

    def _refuse(self, version: str, reason: str, *, force: bool) -> WatchEvent:
        refusal = Refused(version, reason)
        already = version in self._refused
        if not already:
            self._refused.append(version)
        self._pending_refusal = refusal
        return refusal if force or not already else Unchanged()

    def _succeeded(self, event: WatchEvent) -> WatchEvent:
        self._failing_since = None
        self._failures = 0
        self._last_error = None
        return event

    def _failed(self, reason: str) -> Failed:
        if self._failing_since is None:
            self._failing_since = self._clock()
        self._failures += 1
        self._last_error = reason
        return Failed(reason, self._failing_since, self._failures)
