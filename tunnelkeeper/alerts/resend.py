"""Alertmanager re-sends: what to re-post, and when.

Alertmanager expires a firing alert that is not re-posted within resolve_timeout, and a restarted
Alertmanager only learns about a resolve if it is re-posted. So after a sink has durably delivered
a notification, the latest state of each alert instance is re-posted every ``interval_seconds``:
firing ones for as long as they fire, resolved ones for ``resolved_window_seconds``.

Fleet-wide alerts (no host label: every host raises the same one) are the exception. A firing
one is re-posted only when a fresh fleet poll still shows it (:meth:`ResendBook.confirm`), never
on a timer, and a resolve of one is never re-posted (:meth:`ResendBook.record`): another host
may have resolved it since, or be firing a new episode of it, and an older state posted from
here would open or end it again in Alertmanager: a second page for one incident. Re-sends are
best-effort and not stored; the fire and the resolve themselves are outbox rows, and a re-send
never goes out before its row was delivered, so it cannot overtake it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunnelkeeper.alerts.notification import Notification

RESEND_INTERVAL_SECONDS = 45.0
RESOLVED_WINDOW_SECONDS = 300.0


@dataclass
class _Entry:
    notification: Notification
    next_deadline: float
    until_deadline: float | None  # None while firing
    on_confirmation: bool = False  # fleet-wide and firing: re-posted only when confirmed


class ResendBook:
    def __init__(
        self,
        interval_seconds: float = RESEND_INTERVAL_SECONDS,
        resolved_window_seconds: float = RESOLVED_WINDOW_SECONDS,
    ) -> None:
        self.interval_seconds = interval_seconds
        self.resolved_window_seconds = resolved_window_seconds
        self._entries: dict[str, _Entry] = {}

    def record(self, n: Notification, now: float, window_seconds: float | None = None) -> None:
        """``n`` was delivered at ``now``; keep re-posting its state from then on. A fleet-wide
        resolve is never re-posted: the same alert (no host label) may by then be firing again
        from another host's fresher view, and a re-posted old resolve would end that episode
        in Alertmanager, and the next firing post would open it again: two pages. Alertmanager
        lets an unconfirmed fleet-wide alert expire on its own (endsAt is ~180 s ahead)."""
        if n.alert.is_fleet_wide and not n.is_firing:
            self._entries.pop(n.alert.fingerprint, None)
            return
        until = None
        if not n.is_firing:
            until = now + (
                self.resolved_window_seconds if window_seconds is None else window_seconds
            )
        on_confirmation = n.is_firing and n.alert.is_fleet_wide
        first = float("inf") if on_confirmation else now + self.interval_seconds
        self._entries[n.alert.fingerprint] = _Entry(n, first, until, on_confirmation)

    def confirm(self, fingerprints: set[str], now: float) -> bool:
        """A fresh fleet poll still shows these fleet-wide alerts: re-post them now. Returns
        whether anything became due."""
        due = False
        for key in fingerprints:
            entry = self._entries.get(key)
            if entry is not None and entry.on_confirmation:
                entry.next_deadline, due = now, True
        return due

    def due(self, now: float) -> list[Notification]:
        """The notifications to re-post now; their next re-send is scheduled an interval later."""
        out = []
        for key, entry in list(self._entries.items()):
            if entry.until_deadline is not None and now >= entry.until_deadline:
                del self._entries[key]
            elif now >= entry.next_deadline:
                # a fleet-wide one waits for its next confirmation, however long that takes
                entry.next_deadline = now + (
                    float("inf") if entry.on_confirmation else self.interval_seconds
                )
                out.append(entry.notification)
        return out

    def next_deadline(self) -> float | None:
        deadlines = [e.next_deadline for e in self._entries.values()]
        soonest = min(deadlines) if deadlines else None
        return soonest if soonest != float("inf") else None

    def __len__(self) -> int:
        return len(self._entries)
