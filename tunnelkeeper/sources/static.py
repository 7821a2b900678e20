"""Sources that cannot change while the daemon runs: an environment variable and a systemd
credential. A new value needs a restart, so these suit bootstrap and development."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from tunnelkeeper.sources.base import TokenSource, TokenSourceError, TokenVersion, parse_token
from tunnelkeeper.sources.local import credential_path, read_token_text

# Constant signature: the watcher reads a static source once, then only when forced.
STATIC_SIGNATURE = "static"


class EnvSource(TokenSource):
    """Reads the variable once, at open. When reading the real process environment the variable
    is then removed from it, so no child (cloudflared above all) can inherit it."""

    is_static = True

    def __init__(self, var: str, environ: Mapping[str, str] | None = None) -> None:
        self.var = var
        self.description = f"env {var}"
        if environ is None:
            self._text = os.environ.pop(var, None)
        else:
            self._text = environ.get(var)

    async def current_version(self) -> str | None:
        return STATIC_SIGNATURE

    async def read(self) -> TokenVersion:
        if self._text is None:
            raise TokenSourceError(
                f"{self.description}: environment variable {self.var} is not set"
            )
        return parse_token(self._text, description=self.description)


class SystemdCredentialSource(TokenSource):
    """``$CREDENTIALS_DIRECTORY/<name>``, set up by systemd's LoadCredential= for the unit."""

    is_static = True

    def __init__(
        self,
        name: str,
        *,
        environ: Mapping[str, str] | None = None,
        credentials_dir: str | None = None,
    ) -> None:
        self.name = name
        self.description = f"systemd-credential {name}"
        env = os.environ if environ is None else environ
        self._dir = (
            credentials_dir if credentials_dir is not None else env.get("CREDENTIALS_DIRECTORY")
        )

    def _path(self) -> Path:
        return credential_path(self.name, self.description, self._dir)

    async def current_version(self) -> str | None:
        return STATIC_SIGNATURE

    async def read(self) -> TokenVersion:
        # inline: a small file on systemd's own ramfs (as the file source: see file.py)
        text = read_token_text(self._path(), self.description)
        return parse_token(text, description=self.description)
