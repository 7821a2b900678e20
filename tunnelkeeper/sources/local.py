"""Reading a token from a local file, blocking: the file and systemd-credential sources, and a
cold start's early launch (service/coldstart.py), which reads before any event loop exists."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from tunnelkeeper.sources.base import TokenSourceError

# A token is a few hundred bytes; reading stops well before anything big enough to hurt.
MAX_FILE_BYTES = 64 * 1024


def os_reason(exc: OSError) -> str:
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
        raise TokenSourceError(f"{description}: cannot open: {os_reason(exc)}") from None
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
        raise TokenSourceError(f"{description}: cannot read: {os_reason(exc)}") from None
    finally:
        os.close(fd)
    if size > MAX_FILE_BYTES:
        raise TokenSourceError(f"{description}: file is larger than {MAX_FILE_BYTES} bytes")
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise TokenSourceError(f"{description}: file is not UTF-8 text") from None


def credential_path(name: str, description: str, credentials_dir: str | None) -> Path:
    """``$CREDENTIALS_DIRECTORY/<name>``, set up by systemd's LoadCredential= for the unit."""
    if not name or "/" in name or name in (".", ".."):
        raise TokenSourceError(f"{description}: not a valid credential name")
    if not credentials_dir:
        raise TokenSourceError(
            f"{description}: CREDENTIALS_DIRECTORY is not set; run tunnelkeeper "
            f"from a systemd unit with LoadCredential={name}:<path>"
        )
    return Path(credentials_dir) / name
