"""Tunnel tokens as a value type whose text never leaks by accident.

A Cloudflare tunnel token is standard, padded base64 of compact JSON
``{"a": account tag, "t": tunnel uuid, "s": base64 secret[, "e": "fed"]}``.
cloudflared only checks base64 + JSON; we check every field so that a bad or
foreign token is refused before any replica sees it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import uuid
from typing import Any

from tunnelkeeper.errors import InvalidTokenError
from tunnelkeeper.structs import Struct

# Cloudflare-issued tokens are small; anything bigger is not a token.
MAX_TOKEN_CHARS = 4096


def fingerprint_of(raw: str) -> str:
    """Short, stable, non-reversible identifier of a token text (sha256 prefix)."""
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


class TunnelToken(Struct, frozen=True, dict=True, eq=False):
    """Equal (and hashed) by what the token says, not by its text's formatting; shown by its
    fingerprint only (``__repr__``, ``__str__``). ``dict=True`` holds the cached fingerprint."""

    account_tag: str
    tunnel_id: str
    secret: bytes
    endpoint: str | None = None
    _raw: str = ""

    @classmethod
    def parse(cls, text: str) -> TunnelToken:
        """Parse and validate a token text. Errors never quote the text."""
        if not isinstance(text, str):
            raise InvalidTokenError("token is not text")
        raw = text.strip()
        if not raw:
            raise InvalidTokenError("token is empty")
        if len(raw) > MAX_TOKEN_CHARS:
            raise InvalidTokenError(f"token is {len(raw)} characters, longer than any tunnel token")
        try:
            decoded = base64.b64decode(raw.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise InvalidTokenError("token is not standard padded base64") from None
        try:
            obj = json.loads(decoded)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise InvalidTokenError("token does not decode to JSON") from None
        if not isinstance(obj, dict):
            raise InvalidTokenError("token JSON is not an object")
        account = obj.get("a")
        tunnel = obj.get("t")
        secret_b64 = obj.get("s")
        endpoint = obj.get("e")
        if not isinstance(account, str) or not account:
            raise InvalidTokenError('token has no account tag ("a")')
        if not isinstance(tunnel, str):
            raise InvalidTokenError('token has no tunnel id ("t")')
        try:
            tunnel_id = str(uuid.UUID(tunnel))
        except ValueError:
            raise InvalidTokenError('token tunnel id ("t") is not a UUID') from None
        if not isinstance(secret_b64, str) or not secret_b64:
            raise InvalidTokenError('token has no secret ("s")')
        try:
            secret = base64.b64decode(secret_b64.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise InvalidTokenError('token secret ("s") is not base64') from None
        if not secret:
            raise InvalidTokenError('token secret ("s") is empty')
        if endpoint is not None and not isinstance(endpoint, str):
            raise InvalidTokenError('token endpoint ("e") is not text')
        return cls(account, tunnel_id, secret, endpoint, raw)

    @classmethod
    def build(
        cls, account_tag: str, tunnel_id: str, secret: bytes, endpoint: str | None = None
    ) -> TunnelToken:
        """Encode a token the way Cloudflare does (compact JSON, key order a, t, s)."""
        obj: dict[str, str] = {
            "a": account_tag,
            "t": tunnel_id,
            "s": base64.b64encode(secret).decode(),
        }
        if endpoint is not None:
            obj["e"] = endpoint
        raw = base64.b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode()
        return cls(account_tag, tunnel_id, secret, endpoint, raw)

    def reveal(self) -> str:
        """The token text, for the one place that writes it to a 0600 file or a secret store."""
        return self._raw

    @functools.cached_property
    def fingerprint(self) -> str:
        return fingerprint_of(self._raw)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TunnelToken):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def _identity(self) -> tuple[str, str, bytes, str | None]:
        return (self.account_tag, self.tunnel_id, self.secret, self.endpoint)

    def __str__(self) -> str:
        return f"<token {self.fingerprint} for tunnel {self.tunnel_id}>"

    def __repr__(self) -> str:
        return f"TunnelToken(tunnel_id={self.tunnel_id!r}, fingerprint={self.fingerprint!r})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        """What rich shows (a traceback's locals, say), instead of Struct's every field."""
        return [("tunnel_id", self.tunnel_id), ("fingerprint", self.fingerprint)]
