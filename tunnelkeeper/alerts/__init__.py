"""Alerting: observed conditions -> notifications -> durable outbox -> sinks.

The daemon needs only :class:`AlertPipeline` and :class:`Condition`; the rest is exported for
tests, ``status`` and ``test-alert``. :class:`Condition` is what the observing parts (the
upgrader, the API tasks) hand to alerting, so importing it must not load alerting itself: the
daemon starts its replicas first and loads the pipeline while they connect. The heavy names
load on first use (PEP 562).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from tunnelkeeper.alertcatalog import ALERT_NAMES, CATALOG, AlertSpec
from tunnelkeeper.alerts.notification import Alert, Condition, Notification

if TYPE_CHECKING:
    from tunnelkeeper.alerts.delivery import Dispatcher
    from tunnelkeeper.alerts.engine import AlertEngine
    from tunnelkeeper.alerts.outbox import Outbox, OutboxError
    from tunnelkeeper.alerts.pipeline import AlertPipeline
    from tunnelkeeper.alerts.testalert import SinkResult, send_test_alerts

_LAZY = {
    "Dispatcher": "delivery",
    "AlertEngine": "engine",
    "Outbox": "outbox",
    "OutboxError": "outbox",
    "AlertPipeline": "pipeline",
    "SinkResult": "testalert",
    "send_test_alerts": "testalert",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    __import__(f"{__name__}.{module}")  # the import statement's path (-X importtime sees it)
    return getattr(sys.modules[f"{__name__}.{module}"], name)


__all__ = [
    "ALERT_NAMES",
    "CATALOG",
    "Alert",
    "AlertEngine",
    "AlertPipeline",
    "AlertSpec",
    "Condition",
    "Dispatcher",
    "Notification",
    "Outbox",
    "OutboxError",
    "SinkResult",
    "send_test_alerts",
]
