"""What every token source is: the interface, the value it yields, and its errors.

A source reads a tunnel token from one place (a file, a secrets manager, a command) and can say
cheaply whether it may have changed. Errors carry a message that is safe to show a user: it names
the source and what went wrong, never the token or any other secret.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from tunnelkeeper.errors import InvalidTokenError, TunnelkeeperError
from tunnelkeeper.structs import Struct
from tunnelkeeper.tunneltoken import TunnelToken, fingerprint_of


class TokenVersion(Struct, frozen=True):
    """A token as read from a source, with the backend's version id (else its fingerprint)."""

    token: TunnelToken
    version: str


class TokenSourceError(TunnelkeeperError):
    """The source could not be read or written. The message is safe: never the token."""


class MalformedTokenError(TokenSourceError):
    """The source answered, but its value is not a usable token.

    ``version`` names the bad value (backend version id, else the fingerprint of the text) so a
    watcher can report it once instead of on every poll.
    """

    def __init__(self, message: str, version: str) -> None:
        super().__init__(message)
        self.version = version


def parse_token(text: str, *, description: str, version: str | None = None) -> TokenVersion:
    """Parse raw text from ``description`` into a TokenVersion; a bad value is MalformedTokenError.

    ``version`` defaults to the fingerprint of the stripped text (the token's fingerprint).
    """
    stripped = text.strip()
    try:
        token = TunnelToken.parse(stripped)
    except InvalidTokenError as exc:
        bad = version if version is not None else fingerprint_of(stripped)
        raise MalformedTokenError(f"{description}: {exc}", bad) from None
    return TokenVersion(token, version if version is not None else token.fingerprint)


class TokenSource(ABC):
    """One place a tunnel token comes from."""

    #: e.g. "file /etc/tk/portal.token"; names the source in logs and errors, never a secret
    description: str
    #: env and systemd credentials cannot change while the daemon runs
    is_static: bool = False
    #: file, vault and aws accept a new token (``tunnelkeeper refresh-secret``)
    is_writable: bool = False

    @abstractmethod
    async def current_version(self) -> str | None:
        """A cheap signature of the current value, without reading secret material where the
        backend allows it. ``None`` means the source must be read to know."""

    @abstractmethod
    async def read(self) -> TokenVersion:
        """Fetch, parse and validate the current token.

        Raises MalformedTokenError when the value is not a token, TokenSourceError otherwise.
        """

    async def write(self, token: TunnelToken) -> str:
        """Store ``token`` as the new current value; returns the new version id."""
        raise TokenSourceError(f"{self.description}: this source cannot be written")

    async def aclose(self) -> None:
        """Release connections; the source is not used afterwards."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"
