"""[daemon], [cloudflared] and [fleet]: each rule, the message a user reads, and good values."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tunnelkeeper.config.load import parse_config
from tunnelkeeper.config.model import Config

Messages = Callable[[str], dict[str, str]]


def valid(text: str, minimal: str) -> Config:
    return parse_config(text + "\n" + minimal, Path("c.toml"))


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ('listen = "127.0.0.1"', "daemon.listen", "(no port)"),
        ('listen = "127.0.0.1:65536"', "daemon.listen", "(port must be 0-65535)"),
        ('listen = "::1:9105"', "daemon.listen", "write an IPv6 address in brackets"),
        ('listen = "[zz::1]:9105"', "daemon.listen", "not an IPv6 address"),
        ('listen = ":9105"', "daemon.listen", "(no host)"),
        ('listen = "bad host:1"', "daemon.listen", "not a host name"),
        ('state_dir = "var/lib/tk"', "daemon.state_dir", 'expected an absolute path, got "var/lib'),
        ("runtime_dir = 5", "daemon.runtime_dir", "expected an absolute path, got 5"),
        ("probe_interval_seconds = 0", "daemon.probe_interval_seconds", "> 0 and <= 60, got 0"),
        ("probe_interval_seconds = 61", "daemon.probe_interval_seconds", "got 61"),
        ("probe_interval_seconds = true", "daemon.probe_interval_seconds", "got true"),
        ("probe_interval_seconds = nan", "daemon.probe_interval_seconds", "got nan"),
        ("metrics_interval_seconds = 601", "daemon.metrics_interval_seconds", "<= 600"),
        ("unresponsive_after_seconds = -1", "daemon.unresponsive_after_seconds", "> 0, got -1"),
        ("ready_timeout_seconds = inf", "daemon.ready_timeout_seconds", "got inf"),
        ("crash_loop_restarts = 1", "daemon.crash_loop_restarts", "an integer >= 2, got 1"),
        ("crash_loop_restarts = 3.0", "daemon.crash_loop_restarts", "got 3.0"),
        ("crash_loop_window_seconds = 0", "daemon.crash_loop_window_seconds", "> 0"),
        ('log_format = "text"', "daemon.log_format", 'one of "json", "console", got "text"'),
        ('log_level = "warn"', "daemon.log_level", '(did you mean "warning"?)'),
        ('host = ""', "daemon.host", 'expected a non-empty string, got ""'),
        ('hots = "x"', "daemon.hots", 'unknown key (did you mean "host"?)'),
    ],
)
def test_daemon_rules(
    messages_of: Messages, minimal: str, body: str, key: str, message: str
) -> None:
    messages = messages_of(f"[daemon]\n{body}\n" + minimal)
    assert list(messages) == [key]
    assert message in messages[key]


def test_daemon_good_values(minimal: str) -> None:
    text = """[daemon]
host = "origin-07"
listen = "[::1]:0"
probe_interval_seconds = 0.25
metrics_interval_seconds = 600
crash_loop_restarts = 2
log_format = "console"
log_level = "debug"
"""
    daemon = valid(text, minimal).daemon
    assert daemon.host == "origin-07"
    assert (daemon.listen_host, daemon.listen_port) == ("::1", 0)
    assert daemon.probe_interval_seconds == 0.25
    assert daemon.metrics_interval_seconds == 600.0
    assert isinstance(daemon.metrics_interval_seconds, float)
    assert daemon.crash_loop_restarts == 2
    assert daemon.log_format == "console"
    assert valid('[daemon]\nlisten = "localhost:9105"', minimal).daemon.listen_port == 9105


@pytest.mark.parametrize(
    ("arg", "shown"),
    [
        ("--token", "--token"),
        ("--token=eyJhIjoiYWJjIn0=", "--token"),
        ("-token-file", "--token-file"),
        ("--metrics", "--metrics"),
        ("--pidfile", "--pidfile"),
        ("--output", "--output"),
        ("--grace-period=10s", "--grace-period"),
        ("--label", "--label"),
        ("run", "run"),
    ],
)
def test_cloudflared_args_tunnelkeeper_sets_are_refused(
    messages_of: Messages, minimal: str, arg: str, shown: str
) -> None:
    messages = messages_of(f'[cloudflared]\nargs = ["--protocol", "http2", "{arg}"]\n' + minimal)
    assert messages == {
        "cloudflared.args[2]": f'"{shown}" is set by tunnelkeeper itself for every replica; '
        "remove it"
    }
    assert "eyJ" not in str(messages)


def test_cloudflared_args_and_path(messages_of: Messages, minimal: str) -> None:
    config = valid(
        '[cloudflared]\npath = "cloudflared"\nargs = ["--edge", "127.0.0.1:7844"]', minimal
    )
    assert config.cloudflared.path == Path("cloudflared")
    assert config.cloudflared.args == ("--edge", "127.0.0.1:7844")
    messages = messages_of(
        '[cloudflared]\npath = "bin/cloudflared"\nargs = ["ok", 3, ""]\n' + minimal
    )
    assert messages == {
        "cloudflared.path": "expected an absolute path (or a bare program name found on PATH), "
        'got "bin/cloudflared"',
        "cloudflared.args[1]": "expected a non-empty string, got 3",
        "cloudflared.args[2]": 'expected a non-empty string, got ""',
    }
    messages = messages_of('[cloudflared]\nargs = "--protocol http2"\n' + minimal)
    assert messages == {"cloudflared.args": 'expected an array of strings, got "--protocol http2"'}


INSTALL_OK = {
    "version": '"2026.8.2"',
    "url": '"https://github.com/cloudflare/cloudflared/releases/download/{version}/cloudflared-linux-{arch}"',
    "sha256": '"' + "Ab" * 32 + '"',
}


def install_text(**changes: str | None) -> str:
    keys = {**INSTALL_OK, **changes}
    body = "\n".join(f"{k} = {v}" for k, v in keys.items() if v is not None)
    return f"[cloudflared.install]\n{body}\n"


def test_install_good(minimal: str) -> None:
    install = valid(install_text(), minimal).cloudflared.install
    assert install is not None
    assert install.sha256 == "ab" * 32
    assert install.version == "2026.8.2"
    for url in (
        '"http://127.0.0.1:8000/cloudflared-{version}"',
        '"http://localhost/{arch}/{version}"',
        '"file:///srv/mirror/cloudflared-{version}-{arch}"',
    ):
        assert valid(install_text(url=url), minimal).cloudflared.install is not None


@pytest.mark.parametrize(
    ("changes", "key", "message"),
    [
        ({"sha256": None}, "cloudflared.install.sha256", "required key missing"),
        ({"sha256": '"abc"'}, "cloudflared.install.sha256", "64 hex characters"),
        ({"version": '"2026.8"'}, "cloudflared.install.version", '"YYYY.M.P"'),
        ({"version": '"2026.13.0"'}, "cloudflared.install.version", '"YYYY.M.P"'),
        ({"version": None}, "cloudflared.install.version", "required key missing"),
        ({"url": '"https://example.com/cloudflared"'}, "cloudflared.install.url", "{version}"),
        ({"url": '"https://x/{version}/{os}"'}, "cloudflared.install.url", "only placeholders"),
        ({"url": '"http://example.com/{version}"'}, "cloudflared.install.url", "https://"),
        ({"url": '"ftp://127.0.0.1/{version}"'}, "cloudflared.install.url", "https://"),
        ({"url": '"file:relative/{version}"'}, "cloudflared.install.url", "file:///"),
        ({"checksum": '"x"'}, "cloudflared.install.checksum", "unknown key"),
    ],
)
def test_install_rules(
    messages_of: Messages, minimal: str, changes: dict[str, str | None], key: str, message: str
) -> None:
    messages = messages_of(install_text(**changes) + minimal)
    assert list(messages) == [key]
    assert message in messages[key]


def test_install_needs_an_absolute_path(messages_of: Messages, minimal: str) -> None:
    messages = messages_of('[cloudflared]\npath = "cloudflared"\n' + install_text() + minimal)
    assert messages == {
        "cloudflared.path": "must be an absolute path when [cloudflared.install] is set"
    }


FLEET = (
    '[fleet]\naccount_id = "699D98642C564D2E855E9661899B7252"\n'
    'api_token_file = "/etc/tk/cf.token"\n'
)


def test_fleet_good(minimal: str) -> None:
    fleet = valid(FLEET + "poll_seconds = 5\nrequest_budget = 1200\n", minimal).fleet
    assert fleet is not None
    assert fleet.account_id == "699d98642c564d2e855e9661899b7252"
    assert fleet.api_token_file == Path("/etc/tk/cf.token")
    assert fleet.api_url == "https://api.cloudflare.com/client/v4"
    assert (fleet.poll_seconds, fleet.request_budget) == (5.0, 1200)


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ('[fleet]\napi_token_file = "/x"\n', "fleet.account_id", "required key missing"),
        ('[fleet]\naccount_id = "abc"\napi_token_file = "/x"\n', "fleet.account_id", "32 hex"),
        ('[fleet]\naccount_id = "' + "a" * 32 + '"\n', "fleet.api_token_file", "absolute path"),
        (FLEET + "poll_seconds = 4\n", "fleet.poll_seconds", "a number >= 5, got 4"),
        (FLEET + "request_budget = 0\n", "fleet.request_budget", "from 1 to 1200, got 0"),
        (FLEET + "request_budget = 1201\n", "fleet.request_budget", "from 1 to 1200"),
        (FLEET + 'api_url = "api.cloudflare.com"\n', "fleet.api_url", "http(s) URL"),
        (FLEET + 'api_url = "https://"\n', "fleet.api_url", "http(s) URL"),
        (FLEET + "account = 1\n", "fleet.account", '(did you mean "account_id"?)'),
    ],
)
def test_fleet_rules(
    messages_of: Messages, minimal: str, text: str, key: str, message: str
) -> None:
    messages = messages_of(text + minimal)
    assert list(messages) == [key]
    assert message in messages[key]
