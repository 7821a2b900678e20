"""[[tunnel]] tables and their token sources."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tunnelkeeper.config.load import parse_config
from tunnelkeeper.config.model import (
    AwsSourceConfig,
    CommandSourceConfig,
    Config,
    EnvSourceConfig,
    SystemdCredentialSourceConfig,
    VaultSourceConfig,
)

Messages = Callable[[str], dict[str, str]]
TOKEN = 'token = { source = "file", path = "/etc/tk/t.token" }'
FLEET = '[fleet]\naccount_id = "' + "a" * 32 + '"\napi_token_file = "/etc/tk/cf.token"\n'


def tunnel(body: str, *, token: str = TOKEN, name: str = "portal") -> str:
    return f'[[tunnel]]\nname = "{name}"\n{token}\n{body}\n'


def load(text: str) -> Config:
    return parse_config(text, Path("c.toml"))


def test_tunnel_good_values() -> None:
    text = tunnel(
        'id = "C1744F8BFAA148A49E5C02AC921467FA"\nreplicas = 25\ngrace_period_seconds = 180\n'
        "unhealthy_after_seconds = 0.5\nmin_ready_connections = 4\nexpected_connectors = 1\n"
        'refresh_schedule = "30 3 * * mon"\nrefresh_timezone = "America/New_York"'
    )
    (t,) = load(FLEET + text).tunnels
    assert t.id == "c1744f8b-faa1-48a4-9e5c-02ac921467fa"
    assert (t.replicas, t.grace_period_seconds, t.min_ready_connections) == (25, 180.0, 4)
    assert t.unhealthy_after_seconds == 0.5
    assert t.expected_connectors == 1
    assert (t.refresh_schedule, t.refresh_timezone) == ("30 3 * * mon", "America/New_York")


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ("replicas = 0", "tunnel[0].replicas", "expected an integer from 1 to 25, got 0"),
        ("replicas = 26", "tunnel[0].replicas", "got 26"),
        ('replicas = "two"', "tunnel[0].replicas", 'expected an integer from 1 to 25, got "two"'),
        ("replicas = 2.5", "tunnel[0].replicas", "got 2.5"),
        ("grace_period_seconds = 181", "tunnel[0].grace_period_seconds", "from 0 to 180"),
        ("grace_period_seconds = -1", "tunnel[0].grace_period_seconds", "got -1"),
        ("unhealthy_after_seconds = 0", "tunnel[0].unhealthy_after_seconds", "> 0"),
        ("min_ready_connections = 5", "tunnel[0].min_ready_connections", "from 1 to 4"),
        ('id = "not-a-uuid"', "tunnel[0].id", "tunnel UUID like 6ff42ae2"),
        ("id = 7", "tunnel[0].id", "got 7"),
        ("expected_connectors = 3", "tunnel[0].expected_connectors", "needs a [fleet] section"),
        ('refresh_schedule = "0 4 * * 1"', "tunnel[0].refresh_schedule", "needs a [fleet]"),
        ('refresh_timezone = "Mars/Olympus"', "tunnel[0].refresh_timezone", "IANA time zone"),
        ('refresh_timezone = "../../etc/passwd"', "tunnel[0].refresh_timezone", "IANA"),
        ("replica = 3", "tunnel[0].replica", 'unknown key (did you mean "replicas"?)'),
    ],
)
def test_tunnel_rules(messages_of: Messages, body: str, key: str, message: str) -> None:
    messages = messages_of(tunnel(body))
    assert list(messages) == [key]
    assert message in messages[key]


@pytest.mark.parametrize(
    "schedule", ["0 4 * *", "61 * * * *", "0 4 * * 1 2", "every monday", "0 4 * * funday"]
)
def test_bad_cron_is_named(messages_of: Messages, schedule: str) -> None:
    messages = messages_of(FLEET + tunnel(f'refresh_schedule = "{schedule}"'))
    assert list(messages) == ["tunnel[0].refresh_schedule"]
    assert messages["tunnel[0].refresh_schedule"].startswith(
        f'expected a 5-field cron expression like "0 4 * * 1", got "{schedule}"'
    )


def test_names_are_required_valid_and_unique(messages_of: Messages) -> None:
    text = tunnel("", name="portal") + tunnel("", name="api") + tunnel("", name="portal")
    text += tunnel("", name="-bad name") + f"[[tunnel]]\n{TOKEN}\n"
    assert messages_of(text) == {
        "tunnel[2].name": '"portal" is already the name of tunnel[0]',
        "tunnel[3].name": "expected 1-63 letters, digits, '_', '.' or '-', starting with a "
        'letter or digit, got "-bad name"',
        "tunnel[4].name": "required key missing (expected a non-empty string)",
    }


def test_tunnel_must_be_an_array_of_tables(messages_of: Messages) -> None:
    messages = messages_of('[tunnel]\nname = "x"\n')
    assert messages == {"tunnel": "expected an array of tables ([[tunnel]]), got a table"}
    messages = messages_of("tunnel = []\n")
    assert messages == {"tunnel": "expected at least one [[tunnel]] table, got an empty array"}
    messages = messages_of("tunnel = [1]\n")
    assert messages == {"tunnel[0]": "expected a table, got 1"}


def test_token_source_kinds() -> None:
    def source(inline: str) -> object:
        return load(tunnel("", token=f"token = {{ {inline} }}")).tunnels[0].token

    assert source('source = "env", var = "PORTAL_TOKEN"') == EnvSourceConfig(var="PORTAL_TOKEN")
    assert source('source = "systemd-credential", name = "portal-token"') == (
        SystemdCredentialSourceConfig(name="portal-token")
    )
    assert source(
        'source = "command", argv = ["/usr/bin/op", "read", "op://x"], env = { OP_X = "1" }, '
        "timeout_seconds = 5"
    ) == CommandSourceConfig(
        argv=("/usr/bin/op", "read", "op://x"), timeout_seconds=5.0, env={"OP_X": "1"}
    )
    assert source(
        'source = "vault", addr = "http://127.0.0.1:8200", path = "tk/portal", '
        'token_file = "/etc/tk/vault.token"'
    ) == VaultSourceConfig(
        addr="http://127.0.0.1:8200", path="tk/portal", token_file=Path("/etc/tk/vault.token")
    )
    assert source(
        'source = "aws-secrets-manager", secret_id = "prod/portal", region = "us-east-1", '
        'endpoint_url = "http://127.0.0.1:5000"'
    ) == AwsSourceConfig(
        secret_id="prod/portal", region="us-east-1", endpoint_url="http://127.0.0.1:5000"
    )


def test_token_as_a_sub_table_under_the_latest_tunnel() -> None:
    text = (
        tunnel("", name="a") + '[[tunnel]]\nname = "b"\n[tunnel.token]\nsource = "env"\nvar = "B"\n'
    )
    config = load(text)
    assert config.tunnels[1].token == EnvSourceConfig(var="B")


@pytest.mark.parametrize(
    ("inline", "key", "message"),
    [
        ('source = "fiel", path = "/x"', "tunnel[0].token.source", '(did you mean "file"?)'),
        ('path = "/x"', "tunnel[0].token.source", "required key missing"),
        ('source = "file"', "tunnel[0].token.path", "required key missing"),
        ('source = "file", path = "x.token"', "tunnel[0].token.path", "absolute path"),
        ('source = "file", path = "/x", poll_seconds = 0', "tunnel[0].token.poll_seconds", "> 0"),
        ('source = "file", path = "/x", var = "X"', "tunnel[0].token.var", 'for source "file"'),
        ('source = "env", var = "1BAD"', "tunnel[0].token.var", "environment variable name"),
        ('source = "env", var = "A-B"', "tunnel[0].token.var", "environment variable name"),
        ('source = "systemd-credential", name = "a/b"', "tunnel[0].token.name", "no '/'"),
        ('source = "command"', "tunnel[0].token.argv", "required key missing"),
        ('source = "command", argv = []', "tunnel[0].token.argv", "non-empty array"),
        ('source = "command", argv = "op read"', "tunnel[0].token.argv", "an array of strings"),
        (
            'source = "command", argv = ["./op"]',
            "tunnel[0].token.argv[0]",
            "absolute path or a bare",
        ),
        (
            'source = "command", argv = ["op", 1]',
            "tunnel[0].token.argv[1]",
            "non-empty string, got 1",
        ),
        (
            'source = "command", argv = ["op"], env = { "A B" = "x" }',
            'tunnel[0].token.env."A B"',
            "not a valid",
        ),
        (
            'source = "command", argv = ["op"], env = { K = 1 }',
            "tunnel[0].token.env.K",
            "got a number",
        ),
        (
            'source = "command", argv = ["op"], timeout_seconds = 0',
            "tunnel[0].token.timeout_seconds",
            "> 0",
        ),
        ('source = "aws-secrets-manager"', "tunnel[0].token.secret_id", "required key missing"),
        (
            'source = "aws-secrets-manager", secret_id = "s", region = "Mars"',
            "tunnel[0].token.region",
            "AWS region",
        ),
        (
            'source = "aws-secrets-manager", secret_id = "s", endpoint_url = "localhost:5000"',
            "tunnel[0].token.endpoint_url",
            "http(s) URL",
        ),
    ],
)
def test_token_source_rules(messages_of: Messages, inline: str, key: str, message: str) -> None:
    messages = messages_of(tunnel("", token=f"token = {{ {inline} }}"))
    assert list(messages) == [key]
    assert message in messages[key]


def test_command_env_values_are_never_shown(messages_of: Messages) -> None:
    token = 'token = { source = "command", argv = ["op"], env = { OP_TOKEN = ["s3cr3t-value"] } }'
    messages = messages_of(tunnel("", token=token))
    assert "s3cr3t" not in str(messages)


VAULT = 'source = "vault", addr = "https://vault:8200", path = "tk/p"'


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        ("", "tunnel[0].token", "vault needs auth"),
        (
            ', token_file = "/t", role_id_file = "/r", secret_id_file = "/s"',
            "tunnel[0].token",
            "not both",
        ),
        (
            ', role_id_file = "/r"',
            "tunnel[0].token.secret_id_file",
            "AppRole needs it with role_id_file",
        ),
        (
            ', secret_id_file = "/s"',
            "tunnel[0].token.role_id_file",
            "AppRole needs it with secret_id_file",
        ),
        (', token_file = "t"', "tunnel[0].token.token_file", "absolute path"),
        (', token_file = "/t", addr = "vault:8200"', "tunnel[0].token.addr", "http(s) URL"),
        (', token_file = "/t", mount = ""', "tunnel[0].token.mount", "non-empty string"),
        (', token_file = "/t", ca_cert = "ca.pem"', "tunnel[0].token.ca_cert", "absolute path"),
    ],
)
def test_vault_rules(messages_of: Messages, extra: str, key: str, message: str) -> None:
    text = tunnel("", token=f"token = {{ {VAULT}{extra} }}")
    if ", addr" in extra:
        text = text.replace('addr = "https://vault:8200", ', "")
    messages = messages_of(text)
    assert list(messages) == [key]
    assert message in messages[key]


def test_vault_approle_is_accepted() -> None:
    inline = f'{VAULT}, role_id_file = "/r", secret_id_file = "/s", namespace = "ops"'
    source = load(tunnel("", token=f"token = {{ {inline} }}")).tunnels[0].token
    assert isinstance(source, VaultSourceConfig)
    assert (source.role_id_file, source.secret_id_file) == (Path("/r"), Path("/s"))
    assert source.token_file is None
    assert source.namespace == "ops"


def test_token_missing_or_wrong_type(messages_of: Messages) -> None:
    messages = messages_of('[[tunnel]]\nname = "p"\n')
    assert list(messages) == ["tunnel[0].token"]
    assert messages["tunnel[0].token"].startswith("required key missing")
    messages = messages_of('[[tunnel]]\nname = "p"\ntoken = 5\n')
    assert messages == {"tunnel[0].token": "expected a table, got 5"}
