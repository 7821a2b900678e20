"""Alerting: observed conditions -> notifications -> durable outbox -> sinks.

The daemon needs only :class:`AlertPipeline` and :class:`Condition`; the rest is exported for
tests, ``status`` and ``test-alert``.
"""

from tunnelkeeper.alertcatalog import ALERT_NAMES, CATALOG, AlertSpec
from tunnelkeeper.alerts.delivery import Dispatcher
from tunnelkeeper.alerts.engine import AlertEngine
from tunnelkeeper.alerts.notification import Alert, Condition, Notification
from tunnelkeeper.alerts.outbox import Outbox, OutboxError
from tunnelkeeper.alerts.pipeline import AlertPipeline
from tunnelkeeper.alerts.testalert import SinkResult, send_test_alerts

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
