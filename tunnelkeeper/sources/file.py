"""A token in a file, typically rendered by Vault Agent, consul-template or config management.

Change detection is a stat signature (inode, mtime, size): cheap enough to poll every second and
it sees an atomic rename (new inode) as well as an in-place rewrite. A half-written file fails to
parse and is refused; the completed write changes the signature again and is read then.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from pathlib import Path

from tunnelkeeper.atomicfile import write_private_file
from tunnelkeeper.sources.base import TokenSource, TokenSourceError, TokenVersion, parse_token
from tunnelkeeper.tunneltoken import TunnelToken

# A token is a few hundred bytes; reading stops well before anything big enough to hurt.
MAX_FILE_BYTES = 64 * 1024


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "no such file"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or type(exc).__name__


def read_token_text(path: Path, description: str) -> str:
    """Read a small regular file as text (blocking). Errors are TokenSourceError, never quoting
    the content. FIFOs and devices are refused rather than read, so nothing can block or flood."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TokenSourceError(f"{description}: cannot open: {_os_reason(exc)}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TokenSourceError(f"{description}: not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise TokenSourceError(f"{description}: cannot read: {_os_reason(exc)}") from None
    finally:
        os.close(fd)
    if size > MAX_FILE_BYTES:
        raise TokenSourceError(f"{description}: file is larger than {MAX_FILE_BYTES} bytes")
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise TokenSourceError(f"{description}: file is not UTF-8 text") from None


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
            raise TokenSourceError(f"{self.description}: cannot stat: {_os_reason(exc)}") from None
        return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"

    async def read(self) -> TokenVersion:
        text = await asyncio.to_thread(read_token_text, self.path, self.description)
        return parse_token(text, description=self.description)

    async def write(self, token: TunnelToken) -> str:
        try:
            await asyncio.to_thread(write_private_file, self.path, token.reveal() + "\n")
        except OSError as exc:
            raise TokenSourceError(f"{self.description}: cannot write: {_os_reason(exc)}") from None
        return token.fingerprint
