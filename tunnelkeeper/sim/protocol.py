"""Wire protocol between a simulated connector (cloudflared-sim) and the simulated edge.

Real cloudflared speaks QUIC/HTTP2 + capnp RPC to the edge; we only need the
observable behaviour, so one "edge connection" is one TCP connection to ``--edge`` carrying
JSON messages, one per line (:mod:`tunnelkeeper.sim.lineconn`, which also answers the
heartbeat's ``ping`` with ``pong``).

Connector -> edge, first message on every connection::

    {"type": "register", "token": "<tunnel token text>", "connector_id": "<uuid>",
     "conn_index": 0..3, "version": "2026.8.2", "arch": "linux_amd64",
     "label": "<--label or hostname>", "features": [...]}

Edge -> connector, answer to register (then the edge closes on error)::

    {"type": "registered", "connection_id": "<uuid>", "location": "sim01",
     "ip": "127.0.0.1", "origin_url": "http://127.0.0.1:8080"}
    {"type": "error", "error": "Unauthorized: Invalid tunnel secret"}

Edge -> connector, a proxied request (many may be in flight per connection)::

    {"type": "request", "id": <int>, "method": "GET", "path": "/x?y=1",
     "headers": [["name", "value"], ...], "body": "<base64>"}

Connector -> edge, its outcome::

    {"type": "response", "id": <int>, "status": 200, "headers": [[..]], "body": "<base64>"}
    {"type": "origin_error", "id": <int>, "error": "<text>"}      # edge answers 502
    {"type": "refused", "id": <int>}                    # draining: the edge retries elsewhere

Connector -> edge when draining (SIGTERM): no new requests on this connection,
in-flight ones still complete::

    {"type": "unregister"}

Edge -> connector, confirming it: no request follows on this connection::

    {"type": "unregistered"}

Every message is parsed with :func:`decode`, which treats the peer as hostile.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

MAX_MESSAGE_BYTES = 16 * 1024 * 1024

MESSAGE_TYPES = frozenset(
    {
        "register",
        "registered",
        "error",
        "request",
        "response",
        "origin_error",
        "refused",
        "unregister",
        "unregistered",
    }
)


class ProtocolError(ValueError):
    """A message that does not follow the protocol."""


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def decode(text: str | bytes) -> dict[str, Any]:
    """Parse one message; raise ProtocolError (never anything else) if it is malformed."""
    if len(text) > MAX_MESSAGE_BYTES:
        raise ProtocolError("message too large")
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError("message is not JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("message is not an object")
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise ProtocolError("unknown message type")
    return obj


def field_str(msg: dict[str, Any], key: str, default: str | None = None) -> str:
    value = msg.get(key, default)
    if not isinstance(value, str):
        raise ProtocolError(f"field {key!r} must be a string")
    return value


def field_int(msg: dict[str, Any], key: str) -> int:
    value = msg.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"field {key!r} must be an integer")
    return value


def field_headers(msg: dict[str, Any], key: str = "headers") -> list[tuple[str, str]]:
    value = msg.get(key, [])
    if not isinstance(value, list):
        raise ProtocolError(f"field {key!r} must be a list")
    out: list[tuple[str, str]] = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], str)
        ):
            raise ProtocolError(f"field {key!r} must hold [name, value] string pairs")
        out.append((item[0], item[1]))
    return out


def field_body(msg: dict[str, Any], key: str = "body") -> bytes:
    value = msg.get(key, "")
    if not isinstance(value, str):
        raise ProtocolError(f"field {key!r} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"field {key!r} is not base64") from exc


def body_text(data: bytes) -> str:
    return base64.b64encode(data).decode()


# Hop-by-hop headers (RFC 9110 §7.6.1) are never forwarded through the tunnel.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)


def forwardable(headers: list[tuple[str, str]]) -> list[list[str]]:
    return [[k, v] for k, v in headers if k.lower() not in HOP_BY_HOP]
