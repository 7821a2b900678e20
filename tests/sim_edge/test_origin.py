"""The builtin origin, run alone as `python -m tunnelkeeper.sim.origin`."""

from __future__ import annotations

import httpx

from tests.sim_edge.conftest import Origin, stop_process


def test_origin_routes(origin: Origin) -> None:
    with httpx.Client(base_url=origin.url, timeout=10) as c:
        assert c.get("/").text.startswith("Hello from the simulator's origin for tunnel builtin")
        named = c.get("/", headers={"X-Forwarded-Host": "portal"})
        assert "tunnel portal" in named.text
        hostile = c.get("/", headers={"X-Forwarded-Host": "<script>"})
        assert "<script>" not in hostile.text
        echo = c.post("/echo/a?b=c", content=b"hi", headers={"X-Test": "1"}).json()
        assert (echo["method"], echo["path"], echo["body"]) == ("POST", "/echo/a?b=c", "hi")
        assert ["X-Test", "1"] in echo["headers"]
        assert c.get("/status/503").status_code == 503
        assert c.get("/status/204").status_code == 204
        assert c.get("/status/42").status_code == 400
        assert c.get("/status/abc").status_code == 400
        assert c.get("/slow", params={"seconds": "0.01"}).text.startswith("slept 0.01s")
        assert c.get("/slow", params={"seconds": "nan-ish"}).status_code == 400
        assert c.get("/slow", params={"seconds": "-1"}).status_code == 400
        assert c.get("/nowhere").status_code == 404


def test_origin_stops_cleanly_on_sigterm(origin: Origin) -> None:
    assert stop_process(origin.proc) == 0
