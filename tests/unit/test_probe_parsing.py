from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from tunnelkeeper.supervise.probe import parse_build_version, parse_ready, version_from_line


def test_ready_200_and_503() -> None:
    cid = "2b5a2a26-3f0b-4a84-9e34-7c0b0bb0c1aa"
    ok = parse_ready(
        200, json.dumps({"status": 200, "readyConnections": 4, "connectorId": cid}).encode()
    )
    assert ok.answered and ok.ready_connections == 4 and ok.connector_id == cid
    dark = parse_ready(
        503, b'{"status":503,"readyConnections":0,"connectorId":"' + cid.encode() + b'"}'
    )
    assert dark.answered and dark.ready_connections == 0


def test_older_builds_without_connector_id() -> None:
    r = parse_ready(200, b'{"status":200,"readyConnections":1}')
    assert r.answered and r.connector_id is None


def test_hostile_bodies_are_failed_probes() -> None:
    for status, body in [
        (404, b"nope"),
        (200, b"<html>"),
        (200, b"[]"),
        (200, b'{"readyConnections":"4"}'),
        (200, b'{"readyConnections":true}'),
        (200, b'{"readyConnections":-1}'),
        (200, b"x" * 100_000),
    ]:
        assert not parse_ready(status, body).answered


@given(st.integers(0, 999), st.binary(max_size=500))
def test_parse_ready_never_raises(status: int, body: bytes) -> None:
    parse_ready(status, body)


def test_build_version_from_exposition() -> None:
    text = (
        "# HELP build_info Build and version information\n# TYPE build_info gauge\n"
        'build_info{goversion="go1.27.3",revision="2026-08-20",type="",version="2026.8.2"} 1\n'
    )
    assert parse_build_version(text) == "2026.8.2"
    assert parse_build_version("garbage{{{") is None
    assert parse_build_version('build_info{version="$(rm -rf)"} 1\n') is None


@given(st.text(max_size=500))
def test_parse_build_version_never_raises(text: str) -> None:
    parse_build_version(text)


def test_version_from_the_start_up_line() -> None:
    checksum = "0123456789abcdef" * 4
    assert version_from_line(f"Version 2026.8.2 (Checksum {checksum})") == "2026.8.2"
    assert version_from_line("Version 2026.8.2") is None  # not the start-up line's shape
    assert version_from_line(f"Version $(reboot) (Checksum {checksum})") is None
    assert version_from_line(f"Starting tunnel Version 2026.8.2 (Checksum {checksum})") is None


@given(st.text(max_size=300))
def test_version_from_line_never_raises(text: str) -> None:
    version_from_line(text)
