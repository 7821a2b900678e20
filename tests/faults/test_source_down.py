"""Fault: the token source goes away, for every kind that can fail while the daemon runs.

One daemon, one tunnel per source kind: a file that is deleted, a file that becomes unreadable, a
command that starts failing, OpenBao stopped, moto (AWS Secrets Manager) stopped. The running
replicas keep serving on the last good token; status names each source's error at once; after
the source has failed for ``unavailable_after`` (30 s here) TokenSourceUnavailable pages for
each tunnel; bringing each source back resolves every page, and no replica was restarted.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.alerts.receiver import Receiver
from tests.faults.conftest import alerts_named, alerts_toml, fault_config, metric, webhook_sink
from tests.harness import Daemon, Load, Sim, run_cli
from tests.servers import AWS_ENV, Bao, Server, secrets_manager
from tests.waiting import wait_until

pytestmark = pytest.mark.system
POLL = 0.5
TUNNELS = ("file-gone", "file-unreadable", "command", "vault", "aws")
# Without these the daemon (root here) reads any file whatever its mode, as no service should.
NO_DAC_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@contextlib.contextmanager
def loads(sim: Sim, tunnels: tuple[str, ...]) -> Iterator[dict[str, Load]]:
    with contextlib.ExitStack() as stack:
        yield {t: stack.enter_context(Load(sim, t, rate_per_second=5)) for t in tunnels}


def test_every_source_kind_down_keeps_replicas_serving_and_pages_then_recovers(
    tmp_path: Path,
    make_sim: Callable[..., Sim],
    bao: Bao,
    moto: Server,
    receivers: Callable[..., Receiver],
    whsec: tuple[str, Path],
    run_daemon: Callable[..., Daemon],
) -> None:
    sim = make_sim(*TUNNELS)
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    # file sources
    gone, unreadable = secrets_dir / "gone.token", secrets_dir / "unreadable.token"
    gone.write_text(sim.token("file-gone") + "\n")
    unreadable.write_text(sim.token("file-unreadable") + "\n")
    # command source: fails (exit 3, a message on stderr) while the flag file exists
    flag = secrets_dir / "backend-down"
    (secrets_dir / "command.token").write_text(sim.token("command") + "\n")
    script = secrets_dir / "fetch-token"
    script.write_text(
        f'#!/bin/sh\n[ -e "{flag}" ] && {{ echo "backend unavailable" >&2; exit 3; }}\n'
        f'cat "{secrets_dir / "command.token"}"\n'
    )
    script.chmod(0o700)
    # vault: KV v2 at secret/<path>, read with a token file
    kv_path = f"tk/{uuid.uuid4().hex[:8]}"
    bao.put(kv_path, {"token": sim.token("vault")})
    vault_token = secrets_dir / "vault.token"
    vault_token.write_text(bao.root_token + "\n")
    # aws: a secret in moto
    moto_url = moto.ready_url.removesuffix("/moto-api/")  # the endpoint URL
    secret_name = f"tk/aws-{uuid.uuid4().hex[:8]}"
    secrets_manager(moto_url).create_secret(Name=secret_name, SecretString=sim.token("aws"))

    sources = {
        "file-gone": f'{{ source = "file", path = "{gone}", poll_seconds = {POLL} }}',
        "file-unreadable": f'{{ source = "file", path = "{unreadable}", poll_seconds = {POLL} }}',
        "command": f'{{ source = "command", argv = ["{script}"], poll_seconds = {POLL} }}',
        "vault": (
            f'{{ source = "vault", addr = "{bao.addr}", path = "{kv_path}", '
            f'token_file = "{vault_token}", poll_seconds = {POLL} }}'
        ),
        "aws": (
            f'{{ source = "aws-secrets-manager", secret_id = "{secret_name}", '
            f'region = "us-east-1", endpoint_url = "{moto_url}", poll_seconds = {POLL} }}'
        ),
    }
    hook = receivers()
    cfg = fault_config(
        tmp_path,
        sim,
        tunnels={t: {"replicas": 1, "token": sources[t]} for t in TUNNELS},
        extra=alerts_toml(webhook_sink(f"{hook.url}/hook", whsec[1], name="oncall")),
    )
    d = run_daemon(cfg, env=AWS_ENV, prefix=NO_DAC_OVERRIDE)
    pids = {t: d.wait_ready(t, 1)[0]["pid"] for t in TUNNELS}
    tokens = {t: sim.token(t) for t in TUNNELS}

    with loads(sim, TUNNELS) as load:
        wait_until(
            lambda: all(load[t].results["ok"] >= 3 for t in TUNNELS), timeout=15, what="load"
        )
        # --- the faults -------------------------------------------------------------------------
        gone.unlink()
        # a writer (running as another user, or with a tight umask) replaces the file with one
        # the daemon may not read; a chmod alone changes no signature the source polls
        replacement = secrets_dir / ".unreadable.tmp"
        replacement.write_text(tokens["file-unreadable"] + "\n")
        replacement.chmod(0o000)
        replacement.replace(unreadable)
        flag.touch()
        bao.server.stop()
        moto.stop()
        expected = {
            "file-gone": "no such file",
            "file-unreadable": "permission denied",
            "command": "exit",
            "vault": "vault",
            "aws": "secrets",
        }

        def errors() -> dict[str, str] | None:
            errs = {t: d.tunnel(t)["token"]["error"] or "" for t in TUNNELS}
            return errs if all(errs.values()) else None

        errs = wait_until(errors, timeout=20, what="every source's error in status")
        assert errs is not None
        for t, word in expected.items():
            assert word in errs[t].lower(), (t, errs[t])
        rendered = run_cli("status", cfg)
        assert rendered.returncode == 0, rendered.stderr
        assert rendered.stdout.count("! token source:") == len(TUNNELS), rendered.stdout
        # Nothing pages before the source has failed for a while ...
        assert not alerts_named(hook, "TokenSourceUnavailable")
        # ... then each tunnel pages once (30 s unavailable_after + for_seconds).
        wait_until(
            lambda: (
                {a["labels"]["tunnel"] for a in alerts_named(hook, "TokenSourceUnavailable")}
                == set(TUNNELS)
            ),
            timeout=60,
            what="TokenSourceUnavailable for every tunnel",
        )
        for t in TUNNELS:
            assert metric(d, "tunnelkeeper_token_source_errors_total", tunnel=t) >= 1
            assert d.tunnel(t)["ready_replicas"] == 1
        # --- recovery ---------------------------------------------------------------------------
        gone.write_text(tokens["file-gone"] + "\n")
        unreadable.chmod(0o600)
        flag.unlink()
        bao.server.start()  # dev mode keeps nothing: put the same secret back
        bao.put(kv_path, {"token": tokens["vault"]})
        moto.start()
        secrets_manager(moto_url).create_secret(Name=secret_name, SecretString=tokens["aws"])
        wait_until(
            lambda: (
                {
                    a["labels"]["tunnel"]
                    for a in alerts_named(hook, "TokenSourceUnavailable", "resolved")
                }
                == set(TUNNELS)
            ),
            timeout=30,
            what="every TokenSourceUnavailable resolved",
        )
        wait_until(
            lambda: not any(d.tunnel(t)["token"]["error"] for t in TUNNELS),
            timeout=10,
            what="errors cleared",
        )
        sent = {t: load[t].total for t in TUNNELS}
        wait_until(
            lambda: all(load[t].total >= sent[t] + 3 for t in TUNNELS), timeout=15, what="load"
        )
    for t in TUNNELS:
        assert load[t].failed == 0, (t, load[t].failures[:3])
        assert load[t].results["ok"] >= 50, (t, load[t].results)  # served through the outage
        assert [r["pid"] for r in d.primaries(t)] == [pids[t]], t  # nothing restarted
    assert metric(d, "tunnelkeeper_replica_restarts_total") == 0
    out = d.output()
    assert not any(tok in out for tok in tokens.values())
    assert bao.root_token not in out
