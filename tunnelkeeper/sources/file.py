"""A token in a file, typically rendered by Vault Agent, consul-template or config management.

Change detection is a stat signature (inode, mtime, size): cheap enough to poll every second and
it sees an atomic rename (new inode) as well as an in-place rewrite. A half-written file fails to
parse and is refused; the completed write changes the signature again and is read then.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tunnelkeeper.atomicfile import write_private_file
from tunnelkeeper.sources.base import TokenSource, TokenSourceError, TokenVersion, parse_token
from tunnelkeeper.sources.local import os_reason, read_token_text
from tunnelkeeper.tunneltoken import TunnelToken


class FileSource(TokenSource):
    is_writable = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"file {path}"

    async def current_version(self) -> str:
        # one stat of a local file, every poll of every tunnel: inline (a thread hop per poll
        # cost more CPU than the whole probe of a replica)
        return self._signature()

    def _signature(self) -> str:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise TokenSourceError(f"{self.description}: cannot stat: {os_reason(exc)}") from None
        return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"

    async def read(self) -> TokenVersion:
        # inline too, as the stat: at most 64 KB of a local file (read_token_text), only when it
        # changed; a thread hop cost 10 ms at start (the pool's first thread), on the way to
        # READY=1
        return parse_token(
            read_token_text(self.path, self.description), description=self.description
        )

    async def write(self, token: TunnelToken) -> str:
        try:
            await asyncio.to_thread(write_private_file, self.path, token.reveal() + "\n")
        except OSError as exc:
            raise TokenSourceError(f"{self.description}: cannot write: {os_reason(exc)}") from None
        return token.fingerprint
