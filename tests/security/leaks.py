"""Looking for a tunnel token where it must never be: any text, every process's command line
and environment, files. A token counts as leaked in any recognisable form: the token text, a
long piece of it, or its secret in base64 or hex."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.harness import TUNNELKEEPER
from tunnelkeeper.tunneltoken import TunnelToken


@dataclass(frozen=True)
class Secret:
    """One token and the forms it must not appear in."""

    name: str
    forms: tuple[str, ...]

    @classmethod
    def of(cls, name: str, text: str) -> Secret:
        token = TunnelToken.parse(text)
        raw = token.reveal()
        secret_b64 = base64.b64encode(token.secret).decode()
        # pieces past the account tag, which tokens of one account share
        forms = (raw, raw[60:92], raw[-32:], secret_b64, secret_b64[:24], token.secret.hex())
        return cls(name, forms)

    def found_in(self, data: str | bytes) -> bool:
        if isinstance(data, bytes):
            return any(form.encode() in data for form in self.forms)
        return any(form in data for form in self.forms)


def leaks(data: str | bytes, secrets: Iterable[Secret]) -> list[str]:
    """Names of the secrets found in ``data``."""
    return [s.name for s in secrets if s.found_in(data)]


def cmdline_leaks(secrets: Iterable[Secret]) -> list[str]:
    """Every /proc/*/cmdline (all processes on the machine) holding one of the secrets."""
    found = []
    secrets = list(secrets)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            data = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        for name in leaks(data, secrets):
            found.append(f"pid {entry.name}: {name} in cmdline {data[:80]!r}")
    return found


def environ_leaks(secrets: Iterable[Secret], *, except_pids: Iterable[int] = ()) -> list[str]:
    """Every readable process environment holding one of the secrets."""
    found = []
    secrets, skip = list(secrets), set(except_pids)
    for proc in psutil.process_iter(["pid", "name"]):
        if proc.pid in skip:
            continue
        try:
            env = proc.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
            continue
        text = "\n".join(f"{k}={v}" for k, v in env.items())
        for name in leaks(text, secrets):
            found.append(f"pid {proc.pid} ({proc.info['name']}): {name} in environment")
    return found


def file_leaks(root: Path, secrets: Iterable[Secret], *, skip_suffix: str = ".token") -> list[str]:
    """Files under ``root`` (but not the private token files) holding one of the secrets."""
    found = []
    secrets = list(secrets)
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.endswith(skip_suffix):
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found += [f"{path}: {name}" for name in leaks(data, secrets)]
    return found


def run_tk(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``tunnelkeeper ARGS``; stdout and stderr together are what a user sees."""
    return subprocess.run(
        [TUNNELKEEPER, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
