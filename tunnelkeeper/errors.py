"""The one exception hierarchy. External errors are translated into these where they enter."""

from __future__ import annotations


class TunnelkeeperError(Exception):
    """Base of every error tunnelkeeper raises on purpose. Its message is safe to show a user."""


class InvalidTokenError(TunnelkeeperError):
    """A tunnel token that does not parse. The message never contains the token."""
