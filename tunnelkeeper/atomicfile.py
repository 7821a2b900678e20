"""Writing small private files so that a reader never sees a half-written one."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

# tempfile.mkstemp does this, and imports random, shutil and their compression modules with it
# (~0.6 MB resident in a daemon that writes a few small files)
_TRIES = 16


def _create_exclusive(directory: Path, name: str, mode: int) -> tuple[int, Path]:
    for _ in range(_TRIES):
        tmp = directory / f".{name}.{os.urandom(6).hex()}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {name} in {directory}")


def write_private_file(path: Path, text: str, mode: int = 0o600) -> None:
    """Temp file in the same directory (created ``mode``), fsync, rename over ``path``, fsync
    the directory: the new content is whole or absent, even across a crash."""
    directory = path.parent
    fd, tmp = _create_exclusive(directory, path.name, 0o600)
    try:
        os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
