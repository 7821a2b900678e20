"""structlog set-up for the daemon and commands, with secret redaction as a pure processor."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

import structlog

REDACTED = "[REDACTED]"


class SecretRegistry:
    """Texts that must never reach a log line (token texts, webhook secrets, API tokens)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: frozenset[str] = frozenset()

    def add(self, secret: str) -> None:
        secret = secret.strip()
        if len(secret) >= 8:
            with self._lock:
                self._secrets = self._secrets | {secret}

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


SECRETS = SecretRegistry()


def _scrub_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return SECRETS.scrub(value)
    if depth < 3 and isinstance(value, dict):
        return {k: _scrub_value(v, depth + 1) for k, v in value.items()}
    if depth < 3 and isinstance(value, list | tuple):
        return [_scrub_value(v, depth + 1) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    # Anything else (exceptions, paths, TunnelToken) is rendered through str(), then scrubbed;
    # TunnelToken's str() is already only a fingerprint.
    return SECRETS.scrub(str(value))


def redact_secrets(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        event_dict[key] = _scrub_value(event_dict[key])
    return event_dict


# syslog priorities (sd-daemon(3)): a "<N>" prefix sets the journal entry's PRIORITY
_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


def writes_to_journal(stream: Any = None) -> bool:
    """Whether ``stream`` (default stderr) is connected to the journal (systemd.exec(5)'s
    ``$JOURNAL_STREAM``: the device and inode of the stream systemd connected)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def _with_priority(renderer: Any) -> Any:
    """Under systemd: each line starts with its syslog priority, so ``journalctl -p warning``
    and the journal's colours work, and MESSAGE is the clean JSON line."""

    def render(logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
        priority = _PRIORITY.get(str(event_dict.get("level", "info")), 6)
        return f"<{priority}>{renderer(logger, name, event_dict)}"

    return render


def configure(level: str = "info", fmt: str = "json") -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    if writes_to_journal():
        renderer = _with_priority(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
