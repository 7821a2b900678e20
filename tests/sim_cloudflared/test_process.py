"""cloudflared-sim as a process without a working edge: logs, flags, env, signals, the flood."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import socket
import uuid
from pathlib import Path

from tests.sim_cloudflared.conftest import CLOUDFLARED_SIM, CfProc, Spawn, make_token
from tests.waiting import free_port, wait_until

RFC3339_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def _up(cf: CfProc) -> None:
    wait_until(lambda: cf.ready()[0] == 503, what="metrics server up")


def test_json_start_up_lines_match_cloudflared(
    spawn: Spawn, silent_edge: str, tmp_path: Path
) -> None:
    tunnel_id = str(uuid.uuid4())
    path = tmp_path / "t.token"
    path.write_text(make_token(tunnel_id))
    cf = spawn(
        ["tunnel", "--edge", silent_edge, "--output", "json", "run", "--token-file", str(path)]
    )
    _up(cf)
    cf.wait_record("Starting metrics server on")
    records = cf.records()
    by_msg = {r["message"]: r for r in records}
    assert by_msg["Starting tunnel"]["tunnelID"] == tunnel_id
    checksum = hashlib.sha256(Path(CLOUDFLARED_SIM).read_bytes()).hexdigest()
    assert f"Version 2026.8.2 (Checksum {checksum})" in by_msg
    assert "GOOS: linux, GOVersion: go1.27.3, GoArch: amd64" in by_msg
    connector_id = cf.ready()[1]["connectorId"]
    assert f"Generated Connector ID: {connector_id}" in by_msg
    assert f"Starting metrics server on {cf.metrics}/metrics" in by_msg
    for rec in records:
        assert rec["level"] in ("debug", "info", "warn", "error", "fatal")
        assert RFC3339_SECONDS.match(rec["time"]), rec
    for raw in cf.stderr.snapshot():
        keys = list(json.loads(raw))
        assert keys == sorted(keys), raw


def test_every_start_generates_a_new_connector_id(
    spawn: Spawn, silent_edge: str, token_file: Path
) -> None:
    ids = set()
    for _ in range(2):
        cf = spawn(["tunnel", "--edge", silent_edge, "run", "--token-file", str(token_file)])
        _up(cf)
        ids.add(cf.ready()[1]["connectorId"])
        cf.stop()
    assert len(ids) == 2
    assert all(uuid.UUID(i) for i in ids)


def test_default_output_is_console_text_on_stderr(
    spawn: Spawn, silent_edge: str, tmp_path: Path
) -> None:
    tunnel_id = str(uuid.uuid4())
    path = tmp_path / "t.token"
    path.write_text(make_token(tunnel_id))
    cf = spawn(["tunnel", "--edge", silent_edge, "run", "--token-file", str(path)])
    _up(cf)
    line = cf.stderr.snapshot()[0].decode()
    assert re.match(
        rf"^\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ INF Starting tunnel tunnelID={tunnel_id}\n$", line
    ), line
    assert cf.stdout.snapshot() == []


def test_loglevel_filters_lines(spawn: Spawn, closed_port: int, token_file: Path) -> None:
    cf = spawn(
        [
            "tunnel",
            "--edge",
            f"127.0.0.1:{closed_port}",
            "--output",
            "json",
            "--loglevel",
            "error",
            "run",
            "--token-file",
            str(token_file),
        ]
    )
    cf.wait_record("Serve tunnel error")
    levels = {r["level"] for r in cf.records()}
    assert levels == {"error"}


def test_go_flag_forms_and_top_level_flags(
    spawn: Spawn, silent_edge: str, token_file: Path
) -> None:
    port = free_port()
    cf = spawn(
        [
            "--output=json",
            "-metrics",
            f"127.0.0.1:{port}",
            "tunnel",
            "-edge=" + silent_edge,
            "-grace-period=1s",
            "--label",
            "web-1",
            "run",
            "-token-file",
            str(token_file),
        ],
        metrics=False,
    )
    cf.metrics = f"127.0.0.1:{port}"
    _up(cf)
    assert cf.wait_record("Starting metrics server on")["level"] == "info"


def test_environment_variables_configure_the_run(
    spawn: Spawn, silent_edge: str, token_file: Path
) -> None:
    port = free_port()
    env = {
        "TUNNEL_METRICS": f"127.0.0.1:{port}",
        "TUNNEL_EDGE": silent_edge,
        "TUNNEL_LOG_OUTPUT": "json",
        "TUNNEL_GRACE_PERIOD": "2s",
        "TUNNEL_LOGLEVEL": "info",
        "TUNNEL_TOKEN_FILE": str(token_file),
        "NO_AUTOUPDATE": "true",
    }
    cf = spawn(["tunnel", "run"], env=env, metrics=False)
    cf.metrics = f"127.0.0.1:{port}"
    _up(cf)
    cf.wait_record("Starting tunnel")


def test_tunnel_token_env_beats_token_file_and_file_is_trimmed(
    spawn: Spawn, silent_edge: str, tmp_path: Path
) -> None:
    from_env, from_file = str(uuid.uuid4()), str(uuid.uuid4())
    path = tmp_path / "t.token"
    path.write_text(f"  \n{make_token(from_file)}\t\n\n")
    args = ["tunnel", "--edge", silent_edge, "--output", "json", "run", "--token-file", str(path)]
    cf = spawn(args)
    assert cf.wait_record("Starting tunnel")["tunnelID"] == from_file
    cf = spawn(args, env={"TUNNEL_TOKEN": make_token(from_env)})
    assert cf.wait_record("Starting tunnel")["tunnelID"] == from_env


def test_without_metrics_flag_the_default_ports_then_a_random_one(
    spawn: Spawn, silent_edge: str, token_file: Path
) -> None:
    held = []
    for port in range(20241, 20246):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            s.listen(1)
            held.append(s)
        except OSError:
            s.close()  # someone else holds it: busy either way
    try:
        cf = spawn(
            [
                "tunnel",
                "--edge",
                silent_edge,
                "--output",
                "json",
                "run",
                "--token-file",
                str(token_file),
            ],
            metrics=False,
        )
        rec = cf.wait_record("Starting metrics server on")
        m = re.fullmatch(r"Starting metrics server on 127\.0\.0\.1:(\d+)/metrics", rec["message"])
        assert m, rec
        assert int(m.group(1)) not in range(20241, 20246)
        cf.metrics = f"127.0.0.1:{m.group(1)}"
        _up(cf)
    finally:
        for s in held:
            s.close()


def test_sigterm_drains_and_exits_0_with_the_stop_lines_in_order(
    spawn: Spawn, silent_edge: str, token_file: Path
) -> None:
    cf = spawn(
        [
            "tunnel",
            "--edge",
            silent_edge,
            "--output",
            "json",
            "--grace-period",
            "30s",
            "run",
            "--token-file",
            str(token_file),
        ]
    )
    _up(cf)
    cf.proc.send_signal(signal.SIGTERM)
    assert cf.wait_exit() == 0
    msgs = cf.messages()
    tail = [m for m in msgs if "shutdown" in m or m.endswith("stopped")]
    assert tail == [
        "Initiating graceful shutdown due to signal terminated ...",
        "Tunnel server stopped",
        "Metrics server stopped",
    ]


def test_sigint_names_interrupt(spawn: Spawn, silent_edge: str, token_file: Path) -> None:
    cf = spawn(
        [
            "tunnel",
            "--edge",
            silent_edge,
            "--output",
            "json",
            "run",
            "--token-file",
            str(token_file),
        ]
    )
    _up(cf)
    cf.proc.send_signal(signal.SIGINT)
    assert cf.wait_exit() == 0
    assert "Initiating graceful shutdown due to signal interrupt ..." in cf.messages()


def test_sighup_is_not_handled_and_kills(spawn: Spawn, silent_edge: str, token_file: Path) -> None:
    cf = spawn(
        [
            "tunnel",
            "--edge",
            silent_edge,
            "--output",
            "json",
            "run",
            "--token-file",
            str(token_file),
        ]
    )
    _up(cf)
    cf.proc.send_signal(signal.SIGHUP)
    assert cf.wait_exit() == -signal.SIGHUP
    assert "Tunnel server stopped" not in cf.messages()


def test_sighup_ignored_at_start_stays_ignored(
    spawn: Spawn, silent_edge: str, token_file: Path
) -> None:
    """Started under `nohup`: like a Go program that does not ask for SIGHUP, it keeps the
    inherited SIG_IGN; the hangup does nothing and a later SIGTERM is a graceful exit."""
    args = ["tunnel", "--edge", silent_edge, "--output", "json", "run", "--token-file"]
    cf = spawn([*args, str(token_file)], sighup_ignored=True)
    _up(cf)
    cf.proc.send_signal(signal.SIGHUP)
    cf.proc.send_signal(signal.SIGTERM)
    assert cf.wait_exit() == 0
    assert any("due to signal terminated" in m for m in cf.messages())


def test_closed_edge_port_floods_the_log_but_stays_responsive(
    spawn: Spawn, closed_port: int, tmp_path: Path, token_file: Path
) -> None:
    pidfile = tmp_path / "cf.pid"
    cf = spawn(
        [
            "tunnel",
            "--edge",
            f"127.0.0.1:{closed_port}",
            "--output",
            "json",
            "--pidfile",
            str(pidfile),
            "run",
            "--token-file",
            str(token_file),
        ]
    )
    wait_until(lambda: cf.stderr.count > 600, timeout=30, what="a flood of retries")
    status, body = cf.ready()
    assert (status, body["readyConnections"]) == (503, 0)
    assert cf.metric("cloudflared_tunnel_ha_connections") == 1  # the measured quirk
    errors = [r for r in cf.records() if r["message"] == "Serve tunnel error"]
    assert errors[0]["connIndex"] == 0
    assert errors[0]["error"].endswith(f"127.0.0.1:{closed_port}: connect: connection refused")
    assert not any(r["message"].startswith("Retrying connection") for r in cf.records())
    assert not pidfile.exists()  # only written after a first registration
    # the real 2026.8.2 shape (shared/reference/cloudflared.md §3): per attempt, three lines
    # with the same keys, after the DNS-less feature lookup lines; observer warnings now and then
    records = cf.records()
    messages = [r["message"] for r in records]
    assert messages.index("Failed to fetch features, default to disable") < messages.index(
        "Unable to lookup protocol percentage."
    )
    curves = "Tunnel connection curve preferences: [X25519MLKEM768 CurveID(65074) CurveP256]"
    first = messages.index(curves)
    triple = records[first : first + 3]
    assert [r["message"] for r in triple] == [
        curves,
        "Unable to establish connection with Cloudflare edge",
        "Serve tunnel error",
    ]
    assert sorted(triple[0]) == ["connIndex", "event", "ip", "level", "message", "time"]
    assert (
        sorted(triple[1])
        == sorted(triple[2])
        == ["connIndex", "error", "event", "ip", "level", "message", "time"]
    )
    assert triple[1]["error"] == (
        f"DialContext error: dial tcp 127.0.0.1:{closed_port}: connect: connection refused"
    )
    wait_until(
        lambda: "observer channel buffer is full" in (r["message"] for r in cf.records()),
        timeout=30,
        what="an observer warning",
    )
    cf.proc.send_signal(signal.SIGTERM)
    assert cf.wait_exit() == 0


def test_logfile_gets_the_same_lines_as_stderr(
    spawn: Spawn, silent_edge: str, token_file: Path, tmp_path: Path
) -> None:
    logfile = tmp_path / "cloudflared.log"
    cf = spawn(
        [
            "tunnel",
            "--edge",
            silent_edge,
            "--output",
            "json",
            "--logfile",
            str(logfile),
            "run",
            "--token-file",
            str(token_file),
        ]
    )
    cf.wait_record("Starting metrics server on")
    wait_until(lambda: b"Starting metrics server on" in logfile.read_bytes(), what="log file")
    first_file_line = logfile.read_bytes().splitlines()[0]
    assert first_file_line == cf.stderr.snapshot()[0].rstrip(b"\n")
