"""The simulated Cloudflare API: paths, envelope and shapes as in cloudflare-api.md."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.sim_edge.conftest import Sim
from tests.waiting import wait_until
from tunnelkeeper.tunneltoken import TunnelToken

ENVELOPE = {"success", "errors", "messages", "result"}
TUNNEL_KEYS = {
    "id",
    "account_tag",
    "name",
    "created_at",
    "deleted_at",
    "conns_active_at",
    "conns_inactive_at",
    "connections",
    "metadata",
    "remote_config",
    "status",
    "tun_type",
}


def ok(resp: httpx.Response) -> Any:
    body = resp.json()
    assert resp.status_code == 200, body
    assert body.keys() >= ENVELOPE
    assert body["success"] is True and body["errors"] == []
    return body["result"]


def failed(resp: httpx.Response, status: int, code: int | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body.keys() >= ENVELOPE
    assert body["success"] is False and body["result"] is None
    assert body["errors"] and isinstance(body["errors"][0]["message"], str)
    if code is not None:
        assert body["errors"][0]["code"] == code
    return dict(body["errors"][0])


def client(sim: Sim) -> httpx.Client:
    return httpx.Client(headers=sim.auth, timeout=10)


def new_name() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def test_ready_file_and_token_files_match_the_api(shared_sim: Sim) -> None:
    sim = shared_sim
    assert set(sim.tunnels) == {"portal", "shop"}
    assert sim.api.endswith("/client/v4") and sim.http.startswith("http://127.0.0.1:")
    for name, tunnel_id in sim.tunnels.items():
        path = sim.token_dir / f"{name}.token"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        text = sim.token(name)
        assert text.startswith("eyJhIjoi")
        token = TunnelToken.parse(text)
        assert (token.account_tag, token.tunnel_id) == (sim.account_id, tunnel_id)
        assert len(token.secret) == 32
        with client(sim) as c:
            assert ok(c.get(f"{sim.tunnels_url}/{tunnel_id}/token")) == text
    assert sim.api_token not in sim.log()


def test_list_filters_and_pagination(shared_sim: Sim) -> None:
    sim = shared_sim
    with client(sim) as c:
        body = c.get(sim.tunnels_url, params={"name": "portal"}).json()
        assert body["success"] and len(body["result"]) == 1
        tunnel = body["result"][0]
        assert tunnel.keys() >= TUNNEL_KEYS
        assert tunnel["id"] == sim.tunnels["portal"] and tunnel["tun_type"] == "cfd_tunnel"
        assert tunnel["status"] == "inactive" and tunnel["conns_active_at"] is None
        assert body["result_info"] == {
            "page": 1,
            "per_page": 20,
            "count": 1,
            "total_count": 1,
            "total_pages": 1,
        }
        by_uuid = ok(c.get(sim.tunnels_url, params={"uuid": sim.tunnels["shop"]}))
        assert [t["name"] for t in by_uuid] == ["shop"]

        total = c.get(sim.tunnels_url).json()["result_info"]["total_count"]
        pages = [c.get(sim.tunnels_url, params={"per_page": 1, "page": p}).json() for p in (1, 2)]
        assert pages[0]["result_info"]["total_pages"] == total
        assert pages[0]["result"][0]["id"] != pages[1]["result"][0]["id"]
        failed(c.get(sim.tunnels_url, params={"per_page": 0}), 400)
        failed(c.get(sim.tunnels_url, params={"is_deleted": "maybe"}), 400)


def test_create_patch_secret_and_delete(shared_sim: Sim) -> None:
    sim = shared_sim
    name = new_name()
    with client(sim) as c:
        created = ok(c.post(sim.tunnels_url, json={"name": name, "config_src": "cloudflare"}))
        tid = created["id"]
        assert created["name"] == name and created["status"] == "inactive"
        assert TunnelToken.parse(created["token"]).tunnel_id == tid
        failed(c.post(sim.tunnels_url, json={"name": name}), 409)

        token1 = ok(c.get(f"{sim.tunnels_url}/{tid}/token"))
        assert token1 == created["token"]
        secret = base64.b64encode(os.urandom(32)).decode()
        patched = ok(c.patch(f"{sim.tunnels_url}/{tid}", json={"tunnel_secret": secret}))
        token2 = ok(c.get(f"{sim.tunnels_url}/{tid}/token"))
        assert token2 != token1 and patched["token"] == token2
        assert TunnelToken.parse(token2).secret == base64.b64decode(secret)
        assert patched.keys() >= TUNNEL_KEYS

        renamed = ok(c.patch(f"{sim.tunnels_url}/{tid}", json={"name": name + "-x"}))
        assert renamed["name"] == name + "-x"

        deleted = ok(c.delete(f"{sim.tunnels_url}/{tid}"))
        assert deleted["deleted_at"] is not None
        assert ok(c.get(f"{sim.tunnels_url}/{tid}"))["deleted_at"] is not None
        live = ok(c.get(sim.tunnels_url, params={"is_deleted": "false", "per_page": 1000}))
        gone = ok(c.get(sim.tunnels_url, params={"is_deleted": "true", "per_page": 1000}))
        assert tid not in {t["id"] for t in live} and tid in {t["id"] for t in gone}
        failed(c.get(f"{sim.tunnels_url}/{tid}/token"), 400)
    assert secret not in sim.log() and token2 not in sim.log()


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{not json", "non-JSON body"),
        (b"[1, 2]", "JSON that is not an object"),
        (b'{"tunnel_secret": "not base64!!"}', "secret not base64"),
        (b'{"tunnel_secret": "' + base64.b64encode(b"short") + b'"}', "secret < 32 bytes"),
        (b'{"name": ""}', "empty name"),
    ],
)
def test_patch_rejects_bad_bodies_with_400(shared_sim: Sim, body: bytes, why: str) -> None:
    sim = shared_sim
    url = f"{sim.tunnels_url}/{sim.tunnels['shop']}"
    with client(sim) as c:
        before = ok(c.get(f"{url}/token"))
        err = failed(c.patch(url, content=body), 400)
        assert "Traceback" not in err["message"], why
        assert ok(c.get(f"{url}/token")) == before


def test_auth_and_unknown_routes_get_envelopes(shared_sim: Sim) -> None:
    sim = shared_sim
    url = sim.tunnels_url
    with httpx.Client(timeout=10) as anon:
        failed(anon.get(url), 401, 10000)
        failed(anon.get(url, headers={"Authorization": "Bearer wrong"}), 401, 10000)
        failed(anon.get(url, headers={"Authorization": f"Basic {sim.api_token}"}), 401, 10000)
    with client(sim) as c:
        err = failed(c.get(f"{sim.api}/accounts/{sim.account_id}/nope"), 404, 7003)
        assert err["message"] == "No route for the URI"
        failed(c.get(f"{url}/{uuid.uuid4()}"), 404)
        failed(c.get(f"{url}/{uuid.uuid4()}/connections"), 404)
        failed(c.get(f"{sim.api}/accounts/{'0' * 32}/cfd_tunnel"), 403)
        failed(c.put(url), 405)


def test_connections_list_and_cleanup_on_a_tunnel_without_connectors(shared_sim: Sim) -> None:
    sim = shared_sim
    url = f"{sim.tunnels_url}/{sim.tunnels['portal']}"
    with client(sim) as c:
        assert ok(c.get(f"{url}/connections")) == []
        # Both forms of DELETE: query only and no body (SDK, cloudflared), and an empty JSON body.
        ok(c.delete(f"{url}/connections", params={"client_id": str(uuid.uuid4())}))
        ok(c.request("DELETE", f"{url}/connections", json={}))
        failed(c.request("DELETE", f"{url}/connections", content=b"{oops"), 400)
        failed(c.get(f"{url}/connectors/{uuid.uuid4()}"), 404)


def test_rate_limit_blocks_every_call_then_recovers(sim_factory: Callable[..., Sim]) -> None:
    sim = sim_factory(
        extra=["--rate-limit", "5", "--rate-window-seconds", "300", "--rate-block-seconds", "2"]
    )
    with client(sim) as c:
        statuses = [c.get(sim.tunnels_url) for _ in range(5)]
        assert [r.status_code for r in statuses] == [200] * 5
        assert [r.headers["x-ratelimit-remaining"] for r in statuses] == ["4", "3", "2", "1", "0"]
        assert statuses[0].headers["x-ratelimit-limit"] == "5"

        limited = c.get(sim.tunnels_url)
        failed(limited, 429)
        assert 1 <= int(limited.headers["retry-after"]) <= 2
        assert limited.headers["x-ratelimit-remaining"] == "0"
        # Every call is blocked, whatever the route; the sim's own routes are not limited.
        failed(c.get(f"{sim.tunnels_url}/{sim.tunnels['portal']}/token"), 429)
        assert ok(c.get(f"{sim.api}/sim/state"))["tunnels"]["portal"]["status"] == "inactive"

        wait_until(lambda: c.get(sim.tunnels_url).status_code == 200, timeout=15, interval=0.5)
    assert "api_rate_limited" in sim.log()


def test_bad_arguments_exit_2_with_a_message(tmp_path: Path) -> None:
    base = ["--token-dir", str(tmp_path / "t"), "--ready-file", str(tmp_path / "r.json")]
    cases = [
        (["--tunnel", "no-equals-sign", *base], "NAME=ORIGIN_URL"),
        (["--tunnel", "a=ftp://x", *base], "http(s)://"),
        (["--tunnel", "a=builtin", "--tunnel", "a=builtin", *base], "unique"),
        (["--tunnel", "a=builtin", "--edge-port", "99999", *base], "port"),
        (["--tunnel", "a=builtin", "--account-id", "xyz", *base], "hexadecimal"),
    ]
    for args, expected in cases:
        res = subprocess.run(
            [sys.executable, "-m", "tunnelkeeper", "sim", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 2, (args, res.stderr)
        assert expected in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r.json").exists()
