"""``tunnelkeeper status`` as an operator runs it against a running daemon: the table, the JSON,
a config being edited (only ``listen`` matters to it), and the errors when it cannot answer."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import Daemon, run_cli

pytestmark = pytest.mark.system


def status(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("status", config, *args)


def test_status_shows_the_running_daemon_also_while_its_config_is_being_edited(
    tmp_path: Path, run_daemon: Callable[..., Daemon]
) -> None:
    d = run_daemon()
    replicas = d.wait_ready("portal", 2)

    table = status(d.config)
    assert table.returncode == 0, table.stderr
    assert "tunnel portal" in table.stdout and "2/2 ready" in table.stdout
    assert all(str(r["pid"]) in table.stdout for r in replicas)
    as_json = json.loads(status(d.config, "--json").stdout)
    assert {r["pid"] for r in as_json["tunnels"][0]["replicas"]} >= {r["pid"] for r in replicas}

    # Half-way through an edit, another section does not validate: the running daemon (on
    # the config it loaded) is still shown; `tunnelkeeper check` is where the edit is judged.
    edited = tmp_path / "edited.toml"
    edited.write_text(d.config.read_text() + '\n[alerts]\nfor_seconds = "soon"\n')
    shown = status(edited)
    assert shown.returncode == 0, shown.stderr
    assert "2/2 ready" in shown.stdout


def test_status_errors_name_the_key_or_the_address_and_never_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[daemon]\nlisten = "127.0.0.1"\n')
    refused = status(bad)
    assert refused.returncode == 1
    assert "daemon.listen" in refused.stderr and "Traceback" not in refused.stderr

    broken = tmp_path / "broken.toml"
    broken.write_text("[daemon\n")
    refused = status(broken)
    assert refused.returncode == 1
    assert "invalid config" in refused.stderr and "Traceback" not in refused.stderr

    nobody = tmp_path / "nobody.toml"
    nobody.write_text('[daemon]\nlisten = "[::]:1"\n')
    unreachable = status(nobody)
    assert unreachable.returncode == 1
    assert "daemon not reachable at http://[::1]:1/status" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


def test_status_from_something_that_is_not_our_daemon_is_a_clear_error(tmp_path: Path) -> None:
    """`listen` points at another service that answers JSON of another shape."""
    with socket.create_server(("127.0.0.1", 0)) as other:

        def answer() -> None:
            conn, _ = other.accept()
            with conn:
                conn.recv(65536)
                body = b'{"tunnels": [{"name": 7}], "uptime_seconds": "a while"}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

        threading.Thread(target=answer, daemon=True).start()
        config = tmp_path / "other.toml"
        config.write_text(f'[daemon]\nlisten = "127.0.0.1:{other.getsockname()[1]}"\n')
        shown = status(config)
    assert shown.returncode == 1
    assert "did not answer as a tunnelkeeper daemon does" in shown.stderr
    assert "Traceback" not in shown.stderr
