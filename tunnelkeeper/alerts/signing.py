"""Webhook signatures: Standard Webhooks (``webhook-signature``) and GitHub-style
(``X-Hub-Signature-256``). Both sign the exact bytes that are sent."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from tunnelkeeper.errors import TunnelkeeperError

WHSEC_PREFIX = "whsec_"


class SigningKeyError(TunnelkeeperError):
    """The signing secret is unusable. The message never contains the secret."""


def whsec_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret: the decoded bytes after the prefix."""
    text = secret.strip()
    if not text.startswith(WHSEC_PREFIX):
        raise SigningKeyError("signing secret does not start with whsec_")
    encoded = text[len(WHSEC_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SigningKeyError("signing secret is not whsec_ followed by base64") from None
    if len(key) < 16:
        raise SigningKeyError(f"signing secret decodes to {len(key)} bytes; need at least 16")
    return key


def standard_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` over ``{id}.{timestamp}.{body}``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def hub_signature(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256>`` over the body, keyed with the secret text as UTF-8."""
    return "sha256=" + hmac.new(secret.strip().encode(), body, hashlib.sha256).hexdigest()


def signature_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Both signature headers for one delivery attempt."""
    return {
        "webhook-signature": standard_signature(whsec_key(secret), msg_id, timestamp, body),
        "X-Hub-Signature-256": hub_signature(secret, body),
    }
