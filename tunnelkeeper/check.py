"""``tunnelkeeper check``: everything that can be verified before ``run``, every problem at once,
each with the config key to fix. Exit 0 ok, 1 problems."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

from tunnelkeeper.config.model import Config, EnvSourceConfig, SystemdCredentialSourceConfig

VERSION_LINE = re.compile(r"cloudflared version (\d{4}\.\d{1,2}\.\d+)")


def check_binary(config: Config) -> tuple[list[tuple[str, str]], str | None]:
    path = config.cloudflared.path
    key = "cloudflared.path"
    if not path.exists():
        hint = " (run `tunnelkeeper install`)" if config.cloudflared.install else ""
        return [(key, f"{path} does not exist{hint}")], None
    if not (path.is_file() and os.access(path, os.X_OK)):
        return [(key, f"{path} is not an executable file")], None
    try:
        out = subprocess.run(
            [str(path), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [(key, f"{path} --version failed: {exc}")], None
    m = VERSION_LINE.search(out.stdout)
    if out.returncode != 0 or not m:
        return [(key, f"{path} --version did not print a cloudflared version")], None
    version = m.group(1)
    problems = []
    install = config.cloudflared.install
    if install is not None and install.version != version:
        problems.append(
            (
                "cloudflared.install.version",
                f"{path} is version {version}, config pins {install.version} "
                "(run `tunnelkeeper install`)",
            )
        )
    return problems, version


async def check_tokens(config: Config) -> tuple[list[tuple[str, str]], list[str]]:
    from tunnelkeeper.sources import TokenSourceError, open_source

    problems: list[tuple[str, str]] = []
    notes: list[str] = []
    for i, t in enumerate(config.tunnels):
        key = f"tunnel[{i}].token"
        source = None
        try:
            source = open_source(t.token)
            version = await source.read()
        except TokenSourceError as exc:
            problems.append((key, f"{t.name}: {exc}"))
            continue
        finally:
            if source is not None:
                await source.aclose()
        token = version.token
        if t.id is not None and token.tunnel_id != t.id:
            problems.append(
                (key, f"{t.name}: token is for tunnel {token.tunnel_id}, config says id = {t.id}")
            )
        elif t.id is None:
            notes.append(
                f"tunnel {t.name}: token for tunnel {token.tunnel_id} "
                f"({token.fingerprint}); set id to pin it"
            )
        if isinstance(t.token, EnvSourceConfig | SystemdCredentialSourceConfig):
            notes.append(
                f"tunnel {t.name}: {t.token.kind} tokens are read once at start; "
                "rotating needs a daemon restart (prefer file, vault or aws)"
            )
    return problems, notes


def check_secret_files(config: Config) -> list[tuple[str, str]]:
    problems = []
    files: list[tuple[str, Path | None]] = []
    for i, s in enumerate(config.alerts.sinks):
        files += [
            (f"alerts.sink[{i}].signing_secret_file", s.signing_secret_file),
            (f"alerts.sink[{i}].url_file", s.url_file),
            (f"alerts.sink[{i}].routing_key_file", s.routing_key_file),
        ]
    if config.fleet is not None:
        files.append(("fleet.api_token_file", config.fleet.api_token_file))
    for key, path in files:
        if path is None:
            continue
        try:
            if not path.read_text().strip():
                problems.append((key, f"{path} is empty"))
        except OSError as exc:
            problems.append((key, f"{path}: {exc.strerror or exc}"))
    return problems


def check_command(config_path: str) -> int:
    from tunnelkeeper.config.load import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(str(exc))
        print(f"{len(exc.problems)} problem(s) in {config_path}")
        return 1
    problems, version = check_binary(config)
    token_problems, notes = asyncio.run(check_tokens(config))
    problems += token_problems + check_secret_files(config)
    for key, message in problems:
        print(f"{config_path}: {key}: {message}")
    for note in notes:
        print(f"note: {note}")
    if problems:
        print(f"{len(problems)} problem(s) in {config_path}")
        return 1
    print(
        f"ok: {len(config.tunnels)} tunnel(s), cloudflared {version}, "
        f"{len(config.alerts.sinks)} alert sink(s)"
    )
    return 0
