"""Fetch one file by URL into a local ``.part`` file and check its SHA-256.

``https://`` (and loopback ``http://`` mirrors) are streamed with httpx under a per-read
timeout, an overall deadline and a size cap; an interrupted download keeps its bytes and the
next call resumes it with a ``Range`` request (a server that ignores ``Range`` just sends the
whole file again). ``file:///`` copies from an offline mirror. A download whose digest does not
match is deleted, so a later attempt starts clean.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

from tunnelkeeper.errors import TunnelkeeperError

if TYPE_CHECKING:  # imported where used: the daemon loads httpx only if it needs it
    import httpx

MAX_DOWNLOAD_BYTES = 256 * 1024 * 1024  # cloudflared is ~40 MB
DOWNLOAD_TIMEOUT_SECONDS = 30.0  # per connect/read/write
DOWNLOAD_DEADLINE_SECONDS = 900.0  # the whole download
CHUNK = 256 * 1024


class DownloadError(TunnelkeeperError):
    """The download failed or did not match its digest; the message names the URL (no password)."""


def fetch_verified(url: str, part: Path, expected_sha256: str) -> None:
    """Fill ``part`` with the download and check its digest; on mismatch nothing is kept."""
    scheme = urlsplit(url).scheme.lower()
    try:
        if scheme == "file":
            _copy_file(Path(unquote(urlsplit(url).path)), part)
        elif scheme in ("http", "https"):
            _download(url, part)
        else:
            raise DownloadError(f"unsupported download URL scheme {scheme!r}")
    except OSError as exc:
        raise DownloadError(f"cannot write {part}: {exc.strerror or exc}") from exc
    actual = file_digest(part)
    if actual != expected_sha256:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"sha256 mismatch for {shown_url(url)}: expected {expected_sha256}, got {actual}; "
            "refused, nothing was replaced"
        )


def _copy_file(source: Path, part: Path) -> None:
    try:
        src = open(source, "rb")  # noqa: SIM115 - closed below; errors here are the source's
        size = os.fstat(src.fileno()).st_size
    except OSError as exc:
        raise DownloadError(f"download failed: cannot read {source}: {exc.strerror}") from exc
    with src, open(part, "wb") as dst:
        if size > MAX_DOWNLOAD_BYTES:
            raise DownloadError(f"{source} is {size} bytes, over the {MAX_DOWNLOAD_BYTES} cap")
        while chunk := src.read(CHUNK):
            dst.write(chunk)


def _download(url: str, part: Path) -> None:
    """Stream ``url`` into ``part``, resuming a previous partial download when the server can."""
    import httpx  # only a download loads it

    shown = shown_url(url)
    deadline = time.monotonic() + DOWNLOAD_DEADLINE_SECONDS
    try:
        with httpx.Client(timeout=DOWNLOAD_TIMEOUT_SECONDS, follow_redirects=True) as client:
            if not _stream_into(client, url, part, deadline) and part.exists():
                part.unlink()  # the kept part could not be resumed (416): start over once
                _stream_into(client, url, part, deadline)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        kept = part.stat().st_size if part.exists() else 0
        hint = f"; {kept} bytes kept in {part}, run again to resume" if kept else ""
        raise DownloadError(
            f"download of {shown} failed ({type(exc).__name__}: {exc}){hint}"
        ) from exc


def _stream_into(client: httpx.Client, url: str, part: Path, deadline: float) -> bool:
    shown = shown_url(url)
    have = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"}  # so Range offsets are offsets into the file
    if have:
        headers["Range"] = f"bytes={have}-"
    with client.stream("GET", url, headers=headers) as resp:
        if resp.status_code == 416 and have:
            return False
        if resp.status_code not in (200, 206):
            raise DownloadError(f"download failed: {shown} answered HTTP {resp.status_code}")
        resumed = resp.status_code == 206 and resp.headers.get("content-range", "").startswith(
            f"bytes {have}-"
        )
        size = have if resumed else 0
        declared = int(resp.headers.get("content-length") or 0) + size
        if declared > MAX_DOWNLOAD_BYTES:
            raise DownloadError(f"{shown} is {declared} bytes, over the {MAX_DOWNLOAD_BYTES} cap")
        with open(part, "ab" if resumed else "wb") as out:
            for chunk in resp.iter_bytes():  # as received, so a cut keeps what came
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    out.truncate(0)
                    raise DownloadError(f"{shown} exceeds the {MAX_DOWNLOAD_BYTES}-byte cap")
                if time.monotonic() > deadline:
                    raise DownloadError(
                        f"download of {shown} took over {DOWNLOAD_DEADLINE_SECONDS:.0f}s; "
                        "run again to resume"
                    )
                out.write(chunk)
    return True


def shown_url(url: str) -> str:
    """The URL for messages: no user:password, and no query (it may carry a signature)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    query = "…" if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query, fragment=""))


def file_digest(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()
