"""Token sources: read the tunnel token from where it lives and notice new versions.

Public surface: :func:`open_source` (config → source), :class:`TokenSource`,
:class:`TokenVersion`, the errors, and :class:`TokenWatcher` with its events.
"""

from __future__ import annotations

from collections.abc import Mapping

from tunnelkeeper.config.model import (
    AwsSourceConfig,
    CommandSourceConfig,
    EnvSourceConfig,
    FileSourceConfig,
    SystemdCredentialSourceConfig,
    TokenSourceConfig,
    VaultSourceConfig,
)
from tunnelkeeper.sources.base import (
    MalformedTokenError,
    TokenSource,
    TokenSourceError,
    TokenVersion,
)
from tunnelkeeper.sources.watch import Failed, New, Refused, TokenWatcher, Unchanged, WatchEvent

__all__ = [
    "Failed",
    "MalformedTokenError",
    "New",
    "Refused",
    "TokenSource",
    "TokenSourceError",
    "TokenVersion",
    "TokenWatcher",
    "Unchanged",
    "WatchEvent",
    "open_source",
]


def open_source(
    cfg: TokenSourceConfig,
    *,
    environ: Mapping[str, str] | None = None,
    credentials_dir: str | None = None,
) -> TokenSource:
    """Build the source for ``cfg``. No network I/O happens here; an env source reads (and,
    from the real environment, removes) its variable now. ``environ`` replaces os.environ for
    lookups (and is never modified)."""
    # Each source's module loads when one is configured: the package itself stays light, for a
    # cold start's early launch, which reads local tokens before the event loop is imported.
    if isinstance(cfg, FileSourceConfig):
        from tunnelkeeper.sources.file import FileSource

        return FileSource(cfg.path)
    if isinstance(cfg, EnvSourceConfig):
        from tunnelkeeper.sources.static import EnvSource

        return EnvSource(cfg.var, environ)
    if isinstance(cfg, SystemdCredentialSourceConfig):
        from tunnelkeeper.sources.static import SystemdCredentialSource

        return SystemdCredentialSource(cfg.name, environ=environ, credentials_dir=credentials_dir)
    if isinstance(cfg, CommandSourceConfig):
        from tunnelkeeper.sources.command import CommandSource

        return CommandSource(
            cfg.argv, timeout_seconds=cfg.timeout_seconds, env=cfg.env, environ=environ
        )
    if isinstance(cfg, VaultSourceConfig):
        from tunnelkeeper.sources.vault import VaultSource

        return VaultSource(cfg, environ=environ)
    if isinstance(cfg, AwsSourceConfig):
        from tunnelkeeper.sources.aws import AwsSecretsManagerSource

        return AwsSecretsManagerSource(cfg)
    raise TokenSourceError(f"unknown token source {type(cfg).__name__}")
