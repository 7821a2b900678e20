"""cloudflared-sim's command line: version, flag syntax, usage errors, token errors, exit codes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.sim_cloudflared.conftest import Spawn, make_token, run_once
from tests.waiting import free_port, wait_until

SEE = "See 'cloudflared tunnel run --help'."


@pytest.mark.parametrize(
    "args", [["--version"], ["-v"], ["-V"], ["version"], ["--no-autoupdate", "--version"]]
)
def test_version_forms_print_the_release_line_on_stdout(tmp_path: Path, args: list[str]) -> None:
    res = run_once(args, tmp_path)
    assert res.returncode == 0
    assert res.stdout == "cloudflared version 2026.8.2 (built 2026-08-20)\n"
    assert res.stderr == ""


def test_version_short_and_the_fake_release_knobs(tmp_path: Path) -> None:
    assert run_once(["version", "--short"], tmp_path).stdout == "2026.8.2\n"
    env = {"CLOUDFLARED_SIM_VERSION": "2026.9.0", "CLOUDFLARED_SIM_BUILD_DATE": "2026-09-15"}
    assert run_once(["--version"], tmp_path, env).stdout == (
        "cloudflared version 2026.9.0 (built 2026-09-15)\n"
    )
    assert run_once(["version", "--short"], tmp_path, env).stdout == "2026.9.0\n"


@pytest.mark.parametrize("flag", ["--bogus", "-bogus", "--bogus=1"])
def test_unknown_tunnel_flag_prints_incorrect_usage_and_help_and_exits_0(
    tmp_path: Path, flag: str, token_file: Path
) -> None:
    res = run_once(["tunnel", flag, "run", "--token-file", str(token_file)], tmp_path)
    assert res.returncode == 0  # sic: measured on cloudflared 2026.8.2
    first, blank, *help_lines = res.stdout.splitlines()
    assert first == "Incorrect Usage. flag provided but not defined: -bogus"
    assert blank == ""
    assert any("--metrics" in line for line in help_lines)
    assert res.stderr == ""


def test_unknown_run_flag_uses_the_command_form_of_incorrect_usage(
    tmp_path: Path, silent_edge: str
) -> None:
    # --metrics is a tunnel-level flag: after `run` cloudflared does not know it.
    res = run_once(["tunnel", "--edge", silent_edge, "run", "--metrics", "127.0.0.1:1"], tmp_path)
    assert res.returncode == 0
    assert res.stdout.startswith("Incorrect Usage: flag provided but not defined: -metrics\n\n")


def test_flag_needing_a_value_and_a_bad_duration_are_usage_errors(tmp_path: Path) -> None:
    res = run_once(["tunnel", "run", "--token-file"], tmp_path)
    assert res.stdout.startswith("Incorrect Usage: flag needs an argument: -token-file\n")
    res = run_once(["tunnel", "--grace-period", "soon", "run"], tmp_path)
    assert res.stdout.startswith(
        'Incorrect Usage. invalid value "soon" for flag -grace-period: parse error\n'
    )
    assert res.returncode == 0


@pytest.mark.parametrize(
    "token", ["not-a-token", "bm90IGpzb24=", "WzEsMl0=", make_token().replace("=", "")]
)
def test_invalid_token_exits_255_before_metrics_and_never_echoes_it(
    tmp_path: Path, token: str
) -> None:
    port = free_port()
    res = run_once(
        ["tunnel", "--metrics", f"127.0.0.1:{port}", "--output", "json", "run", "--token", token],
        tmp_path,
    )
    assert res.returncode == 255
    assert res.stderr == f"Provided Tunnel token is not valid.\n{SEE}\n"
    assert res.stdout == ""
    assert token not in res.stderr


def test_token_check_is_only_base64_and_json(spawn: Spawn, silent_edge: str) -> None:
    """A token the daemon's strict parser refuses (no tunnel id, no secret) still starts."""
    loose = "eyJhIjoiYWNjb3VudCJ9"  # base64 of {"a":"account"}
    cf = spawn(
        ["tunnel", "--edge", silent_edge, "--output", "json", "run"],
        env={"TUNNEL_TOKEN": loose},
    )
    rec = cf.wait_record("Starting tunnel")
    assert rec["tunnelID"] == "00000000-0000-0000-0000-000000000000"
    wait_until(lambda: cf.ready()[0] == 503, what="metrics server up")
    assert cf.proc.poll() is None


def test_missing_token_file_names_path_and_errno_like_go(tmp_path: Path) -> None:
    missing = tmp_path / "nope.token"
    res = run_once(["tunnel", "run", "--token-file", str(missing)], tmp_path)
    assert res.returncode == 255
    assert res.stderr == (
        f"Failed to read token file: open {missing}: no such file or directory\n{SEE}\n"
    )
    res = run_once(["tunnel", "run", "--token-file", str(tmp_path)], tmp_path)
    assert res.stderr.startswith(f"Failed to read token file: read {tmp_path}: is a directory\n")
    assert res.returncode == 255


def test_no_token_at_all_is_a_usage_error(tmp_path: Path) -> None:
    res = run_once(["tunnel", "run"], tmp_path)
    assert res.returncode == 255
    assert res.stderr.startswith('"cloudflared tunnel run" requires the ID or name')
    assert res.stderr.endswith(f"{SEE}\n")


def test_grace_period_over_three_minutes_is_a_start_error(tmp_path: Path, token_file: Path) -> None:
    port = free_port()
    res = run_once(
        [
            "tunnel",
            "--metrics",
            f"127.0.0.1:{port}",
            "--grace-period",
            "3m1s",
            "run",
            "--token-file",
            str(token_file),
        ],
        tmp_path,
    )
    assert res.returncode == 1
    assert "grace-period must be equal or less than 3m0s" in res.stderr


def test_busy_metrics_port_exits_1_with_gos_bind_error(tmp_path: Path, token_file: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = run_once(
            [
                "tunnel",
                "--metrics",
                f"127.0.0.1:{port}",
                "--output",
                "json",
                "--edge",
                "127.0.0.1:9",
                "run",
                "--token-file",
                str(token_file),
            ],
            tmp_path,
        )
    assert res.returncode == 1
    expected = (
        f"Error opening metrics server listener: failed to bind to address (127.0.0.1:{port}): "
        f"listen tcp 127.0.0.1:{port}: bind: address already in use"
    )
    assert expected in res.stderr.splitlines()


def test_no_edge_means_initial_connection_failure_exit_1(tmp_path: Path, token_file: Path) -> None:
    port = free_port()
    res = run_once(
        [
            "tunnel",
            "--metrics",
            f"127.0.0.1:{port}",
            "--output",
            "json",
            "run",
            "--token-file",
            str(token_file),
        ],
        tmp_path,
    )
    assert res.returncode == 1
    assert '"message":"initial tunnel connection failed"' in res.stderr
    # as 2026.8.2 with no DNS: a plain-text line, the JSON cause and the help block
    lines = res.stderr.splitlines()
    assert any(
        line.startswith("Could not lookup srv records on _v2-origintunneld._tcp.argotunnel.com")
        for line in lines
    )
    assert "edge discovery: error looking up Cloudflare edge IPs: the DNS query failed" in (
        res.stderr
    )
    assert "Please try the following things to diagnose this issue:" in res.stderr


def test_tunnel_ready_command_reports_the_ready_endpoint(
    tmp_path: Path, spawn: Spawn, silent_edge: str, token_file: Path
) -> None:
    cf = spawn(["tunnel", "--edge", silent_edge, "run", "--token-file", str(token_file)])
    wait_until(lambda: cf.ready()[0] == 503, what="metrics server up")
    res = run_once(["tunnel", "--metrics", str(cf.metrics), "ready"], tmp_path)
    assert res.returncode == 1
    assert f"http://{cf.metrics}/ready endpoint returned status code 503" in res.stderr
    res = run_once(["tunnel", "ready"], tmp_path)
    assert res.returncode == 1
    assert "--metrics has to be provided" in res.stderr
