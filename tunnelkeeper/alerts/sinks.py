"""Per-sink request building: reads the sink's secrets, renders its payload, signs it.

Secrets (signing secret, routing key, a Slack URL from url_file, custom headers) are read from
their files on every request, so a rotated file takes effect without a restart, and they never
appear in an error message: errors name the config key and the file path only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tunnelkeeper import __version__
from tunnelkeeper.alerts import formats
from tunnelkeeper.alerts.notification import Notification
from tunnelkeeper.alerts.signing import signature_headers, whsec_key
from tunnelkeeper.config.model import SinkConfig
from tunnelkeeper.errors import TunnelkeeperError
from tunnelkeeper.logconfig import SECRETS

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
ALERTMANAGER_PATH = "/api/v2/alerts"
KINDS = ("webhook", "slack", "pagerduty", "alertmanager")


class SinkError(TunnelkeeperError):
    """A sink cannot be used as configured (unreadable secret file, missing url)."""


@dataclass(frozen=True)
class OutgoingRequest:
    url: str
    body: bytes
    headers: Mapping[str, str]


def read_secret(path: Path, key: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SinkError(f"{key} {path}: {exc.strerror or 'cannot be read'}") from None
    except UnicodeDecodeError:
        raise SinkError(f"{key} {path}: not UTF-8 text") from None
    if not text:
        raise SinkError(f"{key} {path} is empty")
    SECRETS.add(text)
    return text


def sink_url(sink: SinkConfig) -> str:
    if sink.url_file is not None:
        url = read_secret(sink.url_file, "url_file")
    elif sink.url:
        url = sink.url
    elif sink.kind == "pagerduty":
        url = PAGERDUTY_EVENTS_URL
    else:
        raise SinkError(f"sink {sink.name} has neither url nor url_file")
    if sink.kind == "alertmanager" and not url.rstrip("/").endswith(ALERTMANAGER_PATH):
        url = url.rstrip("/") + ALERTMANAGER_PATH
    return url


def build_request(
    sink: SinkConfig, notifications: Sequence[Notification], attempt_at: datetime
) -> OutgoingRequest:
    """The request for one attempt. Alertmanager takes a batch; other kinds exactly one."""
    if sink.kind != "alertmanager" and len(notifications) != 1:
        raise ValueError(f"{sink.kind} sinks take one notification per request")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"tunnelkeeper/{__version__}",
        **sink.headers,
    }
    first = notifications[0]
    if sink.kind == "webhook":
        body = formats.encode(formats.webhook_payload(first, receiver=sink.name))
        timestamp = int(attempt_at.timestamp())
        headers["webhook-id"] = first.id
        headers["webhook-timestamp"] = str(timestamp)
        if sink.signing_secret_file is not None:
            secret = read_secret(sink.signing_secret_file, "signing_secret_file")
            try:
                headers.update(signature_headers(secret, first.id, timestamp, body))
            except TunnelkeeperError as exc:
                raise SinkError(f"signing_secret_file {sink.signing_secret_file}: {exc}") from None
    elif sink.kind == "slack":
        body = formats.encode(formats.slack_payload(first))
    elif sink.kind == "pagerduty":
        if sink.routing_key_file is None:
            raise SinkError(f"sink {sink.name} (pagerduty) needs routing_key_file")
        routing_key = read_secret(sink.routing_key_file, "routing_key_file")
        body = formats.encode(formats.pagerduty_payload(first, routing_key))
    elif sink.kind == "alertmanager":
        body = formats.encode(formats.alertmanager_payload(notifications))
    else:
        raise SinkError(f"sink {sink.name}: unknown kind {sink.kind!r}")
    return OutgoingRequest(url=sink_url(sink), body=body, headers=headers)


def sink_problems(sink: SinkConfig) -> list[str]:
    """What stops this sink from sending, checked offline (for ``tunnelkeeper check``)."""
    problems = []
    try:
        sink_url(sink)
    except SinkError as exc:
        problems.append(str(exc))
    if sink.kind == "webhook" and sink.signing_secret_file is not None:
        try:
            whsec_key(read_secret(sink.signing_secret_file, "signing_secret_file"))
        except SinkError as exc:
            problems.append(str(exc))
        except TunnelkeeperError as exc:
            problems.append(f"signing_secret_file {sink.signing_secret_file}: {exc}")
    if sink.kind == "pagerduty":
        if sink.routing_key_file is None:
            problems.append("routing_key_file is required for pagerduty")
        else:
            try:
                read_secret(sink.routing_key_file, "routing_key_file")
            except SinkError as exc:
                problems.append(str(exc))
    return problems


def secrets_of(sink: SinkConfig) -> list[str]:
    """Texts that must never appear in an error message about this sink."""
    found = [value for value in sink.headers.values() if len(value) >= 6]
    if sink.url:
        found.append(sink.url)
    for path in (sink.url_file, sink.signing_secret_file, sink.routing_key_file):
        if path is None:
            continue
        try:
            found.append(path.read_text(encoding="utf-8").strip())
        except (OSError, UnicodeDecodeError):
            continue
    return [text for text in found if text]


def describe_exception(exc: BaseException, sink: SinkConfig) -> str:
    """A short, secret-free description of a failed request."""
    if isinstance(exc, SinkError):
        return str(exc)
    import httpx  # loaded already if it raised

    if isinstance(exc, httpx.TimeoutException):
        return f"no response within {sink.timeout_seconds:g}s ({type(exc).__name__})"
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    for secret in secrets_of(sink):
        text = text.replace(secret, "<redacted>")
    return text[:300]
