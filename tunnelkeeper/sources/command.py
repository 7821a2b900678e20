"""A token printed by a command (``op read …``, ``bao kv get …``, a site-specific script).

The command runs without a shell, in its own process group, with stdin from /dev/null, a clean
environment and a timeout; on timeout the whole group is killed. Stdout is the token and is never
logged; stderr lines are logged with anything token-like from stdout redacted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import signal
from collections.abc import Callable, Mapping
from typing import Final

import structlog

from tunnelkeeper.sources.base import (
    MalformedTokenError,
    TokenSource,
    TokenSourceError,
    TokenVersion,
    parse_token,
)

MAX_STDOUT_BYTES: Final = 64 * 1024
MAX_STDERR_BYTES: Final = 64 * 1024
MAX_STDERR_LINES_LOGGED: Final = 20
MAX_STDERR_LINE_CHARS: Final = 400
# Words of stdout at least this long are treated as secret when they show up on stderr.
MIN_REDACTED_WORD: Final = 16
REDACTED: Final = "[redacted]"
INHERITED_VARS: Final = ("PATH", "HOME", "LANG")
DEFAULT_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
REAP_SECONDS: Final = 2.0

log = structlog.get_logger(__name__)


async def _drain(
    stream: asyncio.StreamReader | None, cap: int, on_overflow: Callable[[], None] | None
) -> tuple[bytes, bool]:
    """Read to EOF, keeping at most ``cap`` bytes; the rest is discarded, not buffered."""
    kept = bytearray()
    overflowed = False
    if stream is None:
        return b"", False
    while chunk := await stream.read(64 * 1024):
        if overflowed:
            continue
        if len(kept) + len(chunk) > cap:
            overflowed = True
            kept.extend(chunk[: cap - len(kept)])
            if on_overflow is not None:
                on_overflow()
            continue
        kept.extend(chunk)
    return bytes(kept), overflowed


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Wait for a killed command; give up on pipes still held by something outside its group."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    try:
        async with asyncio.timeout(REAP_SECONDS):
            await proc.wait()
    except TimeoutError:
        # A daemonized grandchild (own session) keeps our pipes open: stop reading them.
        transport = getattr(proc, "_transport", None)
        if transport is not None:
            transport.close()


# A run of base64 this long on stderr may be a token (or its secret) even when stdout did not
# carry it: redacted too. Real tokens are ~180 characters; secrets 44.
TOKEN_LIKE = re.compile(r"[A-Za-z0-9+/_-]{40,}={0,2}")


def redact(text: str, secrets: list[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return TOKEN_LIKE.sub(REDACTED, text)


def _secrets_in(stdout: str, version: TokenVersion | None) -> list[str]:
    found = [w for w in stdout.split() if len(w) >= MIN_REDACTED_WORD]
    if stdout.strip():
        found.append(stdout.strip())
    if version is not None:
        found.append(version.token.reveal())
        found.append(base64.b64encode(version.token.secret).decode())
    return [s for s in found if s]


class CommandSource(TokenSource):
    def __init__(
        self,
        argv: tuple[str, ...],
        *,
        timeout_seconds: float,
        env: Mapping[str, str],
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if not argv:
            raise TokenSourceError("command source: argv is empty")
        self.argv = argv
        self.timeout_seconds = timeout_seconds
        self.description = f"command {argv[0]}"
        parent = os.environ if environ is None else environ
        self._env = {k: parent[k] for k in INHERITED_VARS if k in parent}
        self._env.setdefault("PATH", DEFAULT_PATH)
        self._env.update(env)

    async def current_version(self) -> str | None:
        return None  # a command has no cheap check: it must be run

    async def read(self) -> TokenVersion:
        stdout, stderr, returncode = await self._run()
        text = stdout.decode("utf-8", errors="replace")
        parsed: TokenVersion | MalformedTokenError
        try:  # parsed even after a failure: a token printed there is redacted from stderr too
            parsed = parse_token(text, description=self.description)
        except MalformedTokenError as exc:
            parsed = exc
        if returncode < 0:
            error: TokenSourceError | None = TokenSourceError(
                f"{self.description}: killed by signal {-returncode}"
            )
        elif returncode > 0:
            error = TokenSourceError(f"{self.description}: exited with status {returncode}")
        else:
            error = parsed if isinstance(parsed, MalformedTokenError) else None
        version = parsed if isinstance(parsed, TokenVersion) else None
        self._log_stderr(stderr, _secrets_in(text, version), failed=error is not None)
        if error is not None:
            raise error
        assert version is not None
        return version

    async def _run(self) -> tuple[bytes, bytes, int]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
                start_new_session=True,
            )
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise TokenSourceError(f"{self.description}: cannot run: {reason}") from None

        def kill_group() -> None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

        completed = False
        try:
            async with asyncio.timeout(self.timeout_seconds):
                (out, out_overflow), (err, _), returncode = await asyncio.gather(
                    _drain(proc.stdout, MAX_STDOUT_BYTES, kill_group),
                    _drain(proc.stderr, MAX_STDERR_BYTES, None),
                    proc.wait(),
                )
            completed = True
        except TimeoutError:
            raise TokenSourceError(
                f"{self.description}: timed out after {self.timeout_seconds:g} s (killed)"
            ) from None
        finally:
            if not completed:
                # Timeout or cancellation: the command and anything it started in its group.
                kill_group()
                await _reap(proc)
        if out_overflow:
            raise TokenSourceError(
                f"{self.description}: printed more than {MAX_STDOUT_BYTES} bytes (killed)"
            )
        return out, err, returncode

    def _log_stderr(self, stderr: bytes, secrets: list[str], *, failed: bool) -> None:
        lines = stderr.decode("utf-8", errors="replace").splitlines()
        emit = log.warning if failed else log.info
        for line in lines[:MAX_STDERR_LINES_LOGGED]:
            clean = redact(line, secrets)[:MAX_STDERR_LINE_CHARS]
            if clean.strip():
                emit("token_command_stderr", source=self.description, line=clean)
        if len(lines) > MAX_STDERR_LINES_LOGGED:
            emit(
                "token_command_stderr_truncated",
                source=self.description,
                lines_dropped=len(lines) - MAX_STDERR_LINES_LOGGED,
            )
