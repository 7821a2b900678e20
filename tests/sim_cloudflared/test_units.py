"""Pure pieces of cloudflared-sim: Go durations, flag parsing, backoff, token check, rendering."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest

from tunnelkeeper.sim.cfcli import (
    TUNNEL_FLAGS,
    FlagError,
    UsageError,
    parse_flags,
    parse_go_duration,
)
from tunnelkeeper.sim.cflog import CfLogger, go_duration
from tunnelkeeper.sim.cfmetrics import Connection, TunnelState, diag_tunnel, render_metrics
from tunnelkeeper.sim.cloudflared import validate_token
from tunnelkeeper.sim.connector import Backoff


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("1m30s", 90),
        ("500ms", 0.5),
        ("0", 0),
        ("3m", 180),
        ("1.5h", 5400),
        ("2h3m4s", 7384),
        ("100us", 0.0001),
    ],
)
def test_parse_go_duration(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "s", "1x", "1m 2s", "."])
def test_parse_go_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.5, "500ms"), (2, "2s"), (64, "1m4s"), (3600, "1h0m0s"), (1.5, "1.5s")],
)
def test_go_duration_format(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_flags_stop_at_first_argument_and_accept_go_forms() -> None:
    values, rest = parse_flags(
        [
            "-metrics=127.0.0.1:1",
            "--edge",
            "a:1",
            "-edge",
            "b:2",
            "--no-autoupdate",
            "--proto-loglevel",
            "warn",
            "run",
            "--metrics",
            "x",
        ],
        TUNNEL_FLAGS,
    )
    assert values["metrics"] == "127.0.0.1:1"
    assert values["edge"] == ["a:1", "b:2"]
    assert values["no-autoupdate"] is True
    assert values["transport-loglevel"] == "warn"
    assert rest == ["run", "--metrics", "x"]
    with pytest.raises(FlagError, match="flag provided but not defined: -logformat"):
        parse_flags(["--logformat", "json"], TUNNEL_FLAGS)
    with pytest.raises(FlagError, match='invalid value "maybe" for flag -no-autoupdate'):
        parse_flags(["--no-autoupdate=maybe"], TUNNEL_FLAGS)


def test_backoff_doubles_up_to_two_to_the_retries_and_resets() -> None:
    b = Backoff(max_retries=3)
    assert [b.next_max_seconds() for _ in range(5)] == [2, 4, 8, 8, 8]
    b.reset()
    assert b.next_max_seconds() == 2


def _b64(obj: object) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def test_token_check_is_base64_then_json_into_the_token_struct() -> None:
    tid = "3f0e4a4e-0a7c-4a0e-9d0a-7a3c9f6c2b11"
    assert validate_token(_b64({"a": "x", "t": tid, "s": "c2VjcmV0"})) == tid
    assert validate_token(_b64({"A": "x", "T": tid})) == tid  # Go matches keys case-insensitively
    assert validate_token(_b64({})) == "00000000-0000-0000-0000-000000000000"
    for bad in ["%%%", _b64([1]), _b64({"t": "nope"}), _b64({"s": "***"}), _b64({"a": 1})]:
        with pytest.raises(UsageError, match=r"^Provided Tunnel token is not valid\.$"):
            validate_token(bad)


def test_diag_tunnel_follows_go_omitempty() -> None:
    s = TunnelState("t", "c", "2026.8.2", "2026-08-20")
    assert "connections" not in diag_tunnel(s)
    s.connections[0] = Connection(0, "x", "sim01", "127.0.0.1", "quic")
    s.connections[2] = Connection(2, "y", "sim01", "127.0.0.1", "http2")
    assert diag_tunnel(s)["connections"] == [
        {"isConnected": True, "protocol": 1, "edgeAddress": "127.0.0.1"},
        {"isConnected": True, "edgeAddress": "127.0.0.1", "index": 2},
    ]


def test_labelled_families_appear_only_after_first_use() -> None:
    s = TunnelState("t", "c", "2026.8.2", "2026-08-20")
    assert "register_fail" not in render_metrics(s)
    s.register_fail[("server_error", "registerConnection")] = 2
    assert (
        'cloudflared_tunnel_tunnel_register_fail{error="server_error",rpcName="registerConnection"}'
        " 2" in render_metrics(s).splitlines()
    )


def test_console_log_quotes_values_like_zerolog() -> None:
    log = CfLogger("default")
    line = log.format("error", "Serve tunnel error", {"error": "a b", "connIndex": 0})
    assert line.endswith(' ERR Serve tunnel error connIndex=0 error="a b"')
    record = json.loads(CfLogger("json").format("info", "m", {"b": 1, "a": 2}))
    assert list(record) == ["a", "b", "level", "message", "time"]


def test_the_way_to_the_first_edge_connection_does_not_import_aiohttp() -> None:
    """aiohttp's import was ~0.2 s of the simulator's ~0.3 s start; the origin proxy loads it
    later. The modules `tunnel run` imports before it registers must not."""
    code = (
        "import sys\n"
        "from tunnelkeeper.sim import cloudflared, cflog, cfserve, connector\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'yarl')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
