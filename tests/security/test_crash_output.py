"""Error paths never print a token: `tunnelkeeper check` on bad token files and sources, the
daemon's log while it refuses them, and the daemon failing at start in several ways (with a
clear message naming the config key, never a traceback)."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import CLOUDFLARED_SIM, TUNNELKEEPER, stop_process
from tests.security.leaks import Secret, leaks, run_tk
from tests.waiting import free_port, wait_until
from tunnelkeeper.tunneltoken import TunnelToken

pytestmark = pytest.mark.system
ACCOUNT = "699d98642c564d2e855e9661899b7252"
TUNNEL_ID = "c1744f8b-faa1-48a4-9e5c-02ac921467fa"


@pytest.fixture
def token() -> TunnelToken:
    return TunnelToken.build(ACCOUNT, TUNNEL_ID, os.urandom(32))


def config_text(tmp_path: Path, tunnels: str, *, daemon: str = "", cloudflared: str = "") -> str:
    return "\n".join(
        [
            "[daemon]",
            f'listen = "127.0.0.1:{free_port()}"',
            f'state_dir = "{tmp_path / "state"}"',
            f'runtime_dir = "{tmp_path / "run"}"',
            daemon,
            "[cloudflared]",
            f'path = "{CLOUDFLARED_SIM}"',
            cloudflared,
            tunnels,
        ]
    )


def tunnel(name: str, token_table: str, extra: str = "") -> str:
    return f'[[tunnel]]\nname = "{name}"\nreplicas = 1\ntoken = {token_table}\n{extra}\n'


# --- check, and the daemon's log, on bad tokens --------------------------------------------------


@pytest.fixture
def bad_sources(tmp_path: Path, token: TunnelToken) -> tuple[Path, dict[str, str]]:
    """A config whose every tunnel has a bad token (each built from ``token``), and the key
    each problem must be reported under."""
    raw = token.reveal()
    decoded = base64.b64decode(raw).decode()  # the token's JSON, secret in plain base64
    files = {
        "truncated": raw[:-6],
        "trailing": raw + "!!",
        "twice": f"{raw}\n{raw}\n",
        "plainjson": decoded,
        "other": TunnelToken.build(ACCOUNT, str(uuid.uuid4()), token.secret).reveal(),
    }
    tunnels = []
    for name, content in files.items():
        path = tmp_path / f"{name}.token"
        path.write_text(content)
        path.chmod(0o600)
        extra = f'id = "{TUNNEL_ID}"' if name == "other" else ""
        tunnels.append(tunnel(name, f'{{ source = "file", path = "{path}" }}', extra))
    # a command that prints the token, says so on stderr, and fails: stderr is logged redacted
    script = tmp_path / "leaky-command.sh"
    script.write_text(f"#!/bin/sh\necho '{raw}'\necho 'got {raw} from the vault' >&2\nexit 3\n")
    script.chmod(0o700)
    tunnels.append(tunnel("command", f'{{ source = "command", argv = ["{script}"] }}'))
    tunnels.append(tunnel("env", '{ source = "env", var = "TK_SECURITY_BAD_TOKEN" }'))
    config = tmp_path / "bad.toml"
    config.write_text(config_text(tmp_path, "\n".join(tunnels)))
    keys = {name: f"tunnel[{i}].token" for i, name in enumerate([*files, "command", "env"])}
    return config, keys


def test_check_names_every_bad_token_without_showing_it(
    bad_sources: tuple[Path, dict[str, str]], token: TunnelToken
) -> None:
    config, keys = bad_sources
    out = run_tk("check", "-c", str(config), env={"TK_SECURITY_BAD_TOKEN": token.reveal() + "x"})
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "Traceback" not in text
    for name, key in keys.items():
        assert f"{key}: {name}:" in text, (name, text)
    assert leaks(text, [Secret.of("token", token.reveal())]) == []


def test_the_daemon_log_refuses_bad_tokens_without_showing_them(
    bad_sources: tuple[Path, dict[str, str]], token: TunnelToken
) -> None:
    config, keys = bad_sources
    log = config.parent / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [TUNNELKEEPER, "run", "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "TK_SECURITY_BAD_TOKEN": token.reveal() + "x"},
        )
    try:
        wait_until(
            lambda: (
                all(f'"tunnel": "{n}"' in log.read_text() for n in keys if n != "command")
                and "token_command_stderr" in log.read_text()
            ),
            timeout=30,
            what="every tunnel's token problem logged",
        )
    finally:
        stop_process(proc)
    text = log.read_text()
    assert "Traceback" not in text
    assert leaks(text, [Secret.of("token", token.reveal())]) == []


def test_a_token_only_on_a_commands_stderr_is_not_shown(tmp_path: Path, token: TunnelToken) -> None:
    script = tmp_path / "debug-echo.sh"
    script.write_text(f"#!/bin/sh\necho 'fetched {token.reveal()}' >&2\necho 'oops'\n")
    script.chmod(0o700)
    config = tmp_path / "config.toml"
    config.write_text(
        config_text(tmp_path, tunnel("portal", f'{{ source = "command", argv = ["{script}"] }}'))
    )
    out = run_tk("check", "-c", str(config))
    assert out.returncode == 1
    assert leaks(out.stdout + out.stderr, [Secret.of("token", token.reveal())]) == []


# --- the daemon failing at start --------------------------------------------------------------


def run_daemon_expecting_exit(config: Path) -> tuple[int, str]:
    out = run_tk("run", "-c", str(config), timeout=60)
    return out.returncode, out.stdout + out.stderr


@pytest.fixture
def token_file(tmp_path: Path, token: TunnelToken) -> Path:
    path = tmp_path / "portal.token"
    path.write_text(token.reveal() + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def port_taken() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


CRASHES = {
    # name: (what to put where, exit code, the config key the message must name)
    "token in args": ("args", 78, "cloudflared.args[2]"),
    "token=value in args": ("args=", 78, "cloudflared.args[0]"),
    "token inline": ("inline", 78, "tunnel[0].token"),
    "token as tunnel id": ("id", 78, "tunnel[0].id"),
    "listen port taken": ("port", 1, "daemon.listen"),
    "binary missing": ("binary", 78, "cloudflared.path"),
}


@pytest.mark.parametrize("case", list(CRASHES))
def test_failing_at_start_says_why_without_the_token(
    case: str, tmp_path: Path, token: TunnelToken, token_file: Path, port_taken: int
) -> None:
    how, code, key = CRASHES[case]
    raw = token.reveal()
    source = f'{{ source = "file", path = "{token_file}" }}'
    tunnels = tunnel("portal", f'"{raw}"' if how == "inline" else source)
    if how == "id":
        tunnels = tunnel("portal", source, f'id = "{raw}"')
    cloudflared = {
        "args": f'args = ["--edge", "127.0.0.1:1", "--token", "{raw}"]',
        "args=": f'args = ["--token={raw}"]',
    }.get(how, "")
    text = config_text(tmp_path, tunnels, cloudflared=cloudflared)
    if how == "port":
        text = text.replace('listen = "127.0.0.1:', f'listen = "127.0.0.1:{port_taken}" #', 1)
    if how == "binary":
        text = text.replace(CLOUDFLARED_SIM, str(tmp_path / "no-such-cloudflared"))
    config = tmp_path / "config.toml"
    config.write_text(text)
    returncode, output = run_daemon_expecting_exit(config)
    assert returncode == code, output
    assert key in output, output
    assert "Traceback" not in output
    assert leaks(output, [Secret.of("token", raw)]) == []


def unusable_directory_config(tmp_path: Path, where: str, token_file: Path) -> Path:
    """A config whose ``where`` (runtime_dir or state_dir) lies under a regular file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    text = config_text(tmp_path, tunnel("portal", f'{{ source = "file", path = "{token_file}" }}'))
    default = tmp_path / {"runtime_dir": "run", "state_dir": "state"}[where]
    text = text.replace(f'{where} = "{default}"', f'{where} = "{blocker / "x"}"')
    assert str(blocker) in text
    config = tmp_path / "config.toml"
    config.write_text(text)
    return config


@pytest.mark.parametrize("where", ["runtime_dir", "state_dir"])
def test_an_unusable_directory_does_not_show_the_token(
    where: str, tmp_path: Path, token: TunnelToken, token_file: Path
) -> None:
    returncode, output = run_daemon_expecting_exit(
        unusable_directory_config(tmp_path, where, token_file)
    )
    assert returncode != 0
    assert leaks(output, [Secret.of("token", token.reveal())]) == []


@pytest.mark.parametrize("where", ["runtime_dir", "state_dir"])
def test_an_unusable_directory_is_named_not_a_traceback(
    where: str, tmp_path: Path, token_file: Path
) -> None:
    returncode, output = run_daemon_expecting_exit(
        unusable_directory_config(tmp_path, where, token_file)
    )
    assert "Traceback" not in output
    assert f"daemon.{where}" in output and returncode == 78


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_deeply_nested_token_file_is_a_clean_error(command: str, tmp_path: Path) -> None:
    bad = tmp_path / "deep.token"
    bad.write_text(base64.b64encode(b"[" * 3000).decode())
    config = tmp_path / "config.toml"
    config.write_text(
        config_text(tmp_path, tunnel("portal", f'{{ source = "file", path = "{bad}" }}'))
    )
    if command == "check":
        out = run_tk("check", "-c", str(config))
        assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr
        return
    log = tmp_path / "daemon.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [TUNNELKEEPER, "run", "-c", str(config)], stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        wait_until(
            lambda: "token_refused" in log.read_text() or proc.poll() is not None,
            timeout=30,
            what="the bad token refused",
        )
        assert proc.poll() is None and "Traceback" not in log.read_text()
    finally:
        stop_process(proc)
