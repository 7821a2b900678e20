"""The production install under a real systemd as PID 1, as its operator would drive it.

One machine for the module (``host`` in conftest.py), booted in private namespaces; the tests
run in this order and each leaves the service running for the next, until the last one powers
the machine off and checks that the host's ``/tmp`` was never touched.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.harness import VENV_BIN
from tests.systemd.conftest import CONFIG, REPO, Host, config_text
from tests.waiting import wait_until

pytestmark = [pytest.mark.system, pytest.mark.systemd]

DROPINS = "/etc/systemd/system/tunnelkeeper.service.d"


def drop_in(host: Host, name: str, text: str) -> None:
    host.m.sh(f"mkdir -p {DROPINS} && cat > {DROPINS}/{name}.conf <<'EOF'\n{text}\nEOF")
    host.m.systemctl("daemon-reload")


def settled(host: Host, replicas: int) -> set[int]:
    """The replica processes, once exactly the tunnel's primaries run (a drained one from the
    test before may still be on its way out)."""
    wait_until(
        lambda: host.ready("portal") == replicas and len(host.replica_pids()) == replicas,
        timeout=30,
        what=f"{replicas} replicas ready and nothing else running",
    )
    return host.replica_pids()


def active(host: Host) -> str:
    return host.m.systemctl("is-active", "tunnelkeeper", check=False).stdout.strip()


def test_readme_step_one_is_what_this_machine_ran() -> None:
    readme = (REPO / "README.md").read_text()
    from tests.systemd.conftest import INSTALL

    for line in INSTALL.splitlines():
        assert line in readme, f"README's production install no longer says: {line}"


def test_start_waits_for_ready_and_runs_sandboxed_as_its_own_user(host: Host) -> None:
    m = host.m
    check = m.run("tunnelkeeper", "check", "-c", CONFIG, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    m.systemctl("enable", "--now", "tunnelkeeper")  # Type=notify: returns after READY=1
    # READY=1 is sent once every tunnel has a replica ready at the edge
    assert host.ready("portal") >= 1
    shown = m.show("tunnelkeeper", "ActiveState", "SubState", "StatusText", "MainPID", "User")
    assert shown["ActiveState"] == "active" and shown["SubState"] == "running"
    assert re.fullmatch(r"portal [12]/2 ready", shown["StatusText"]), shown
    assert "portal" in m.systemctl("status", "tunnelkeeper", check=False).stdout
    user = m.run("ps", "-o", "user=", "-p", shown["MainPID"]).stdout.strip()
    assert user == "tunnelkeeper"
    wait_until(lambda: host.ready("portal") == 2, timeout=30, what="2 replicas ready")
    for pid in host.replica_pids():  # the replicas inherit the sandbox and the user
        assert m.run("ps", "-o", "user=", "-p", str(pid)).stdout.strip() == "tunnelkeeper"
    # the hardening is in force on the running process, not only in the file
    status = m.run("cat", f"/proc/{shown['MainPID']}/status").stdout
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
    assert re.search(r"^Seccomp:\s+2$", status, re.M)
    assert re.search(r"^CapEff:\s+0+$", status, re.M)
    security = m.run("systemd-analyze", "security", "tunnelkeeper.service", check=False).stdout
    exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", security)[1])  # type: ignore[index]
    assert exposure <= 1.5, security[-2000:]


def test_the_journal_has_clean_json_with_priorities(host: Host) -> None:
    started = host.events("daemon_started")
    assert started and started[-1]["tunnels"] == ["portal"]
    assert started[-1]["_priority"] == "6"  # info
    spawned = host.events("replica_spawned")
    assert spawned and {"tunnel", "slot"} <= set(spawned[-1])
    # one JSON object per entry, never a JSON string inside a JSON string
    for entry in host.journal()[-50:]:
        message = entry.get("MESSAGE", "")
        if isinstance(message, str) and message.startswith("{"):
            assert isinstance(json.loads(message), dict)
    warnings = host.m.run(
        "journalctl", "-u", "tunnelkeeper", "-p", "warning", "-o", "cat", "--no-pager"
    ).stdout
    assert '"level": "info"' not in warnings  # priorities map to journal levels


def test_watchdog_kills_a_hung_daemon_and_the_next_one_adopts_the_replicas(host: Host) -> None:
    m = host.m
    drop_in(host, "watchdog", "[Service]\nWatchdogSec=3s")
    m.systemctl("restart", "tunnelkeeper")  # (a restart with the new WatchdogSec= hands over)
    replicas = settled(host, 2)
    hung = m.main_pid()
    with host.load() as load:
        m.run("kill", "-STOP", str(hung))
        wait_until(
            lambda: m.main_pid() not in (0, hung) and active(host) == "active",
            timeout=40,
            what="the watchdog's restart",
        )
        wait_until(lambda: host.ready("portal") == 2, timeout=30, what="2 ready after it")
    assert host.replica_pids() == replicas  # adopted, not restarted
    assert load["failed"] == 0 and load["ok"] > 0, load
    assert int(m.show("tunnelkeeper", "NRestarts")["NRestarts"]) >= 1
    system = m.run("journalctl", "-u", "tunnelkeeper", "-o", "cat", "--no-pager").stdout
    assert "Watchdog timeout" in system
    assert host.events("replicas_adopted")


def test_reload_applies_a_changed_config_and_refuses_a_broken_one(host: Host) -> None:
    m = host.m
    host.write_config(config_text(host.sim, {"portal": 3, "admin": 1}))
    m.systemctl("reload", "tunnelkeeper")
    wait_until(lambda: host.ready("portal") == 3, timeout=30, what="portal scaled to 3")
    wait_until(lambda: host.ready("admin") == 1, timeout=30, what="tunnel admin added")
    assert host.events("config_reloaded")
    broken = config_text(host.sim, {"portal": 3, "admin": 1}) + "\nnot toml ===\n"
    host.write_config(broken, valid=False)
    refused = m.systemctl("reload", "tunnelkeeper", check=False)
    assert refused.returncode != 0  # systemctl reload reports it
    assert active(host) == "active"
    assert host.ready("portal") == 3 and host.ready("admin") == 1  # the running config kept
    reload_log = m.run("journalctl", "-u", "tunnelkeeper", "-o", "cat", "--no-pager").stdout
    assert "reload refused" in reload_log
    host.write_config(config_text(host.sim, {"portal": 2}))
    m.systemctl("reload", "tunnelkeeper")
    wait_until(lambda: host.ready("admin") == -1, timeout=30, what="admin removed")


def test_restart_and_a_killed_main_process_keep_every_replica_serving(host: Host) -> None:
    m = host.m
    replicas = settled(host, 2)
    with host.load() as load:
        before = m.main_pid()
        m.systemctl("restart", "tunnelkeeper")
        assert m.main_pid() != before
        wait_until(lambda: host.ready("portal") == 2, timeout=30, what="ready after restart")
        assert host.replica_pids() == replicas, (
            m.run("cat", "/var/lib/tunnelkeeper/replicas.json", check=False).stdout
            + m.run("ls", "-la", "/var/lib/tunnelkeeper", check=False).stdout
            + m.run(
                str(VENV_BIN / "python"),
                "-c",
                "import psutil\nfor p in psutil.process_iter(['pid','create_time','cmdline']):\n"
                " if 'cloudflared-sim' in ' '.join(p.info['cmdline'] or []): print(p.info)",
            ).stdout
        )
        killed = m.main_pid()
        m.systemctl("kill", "-s", "SIGKILL", "--kill-whom=main", "tunnelkeeper")
        wait_until(
            lambda: m.main_pid() not in (0, killed) and active(host) == "active",
            timeout=30,
            what="restarted after SIGKILL",
        )
        wait_until(lambda: host.ready("portal") == 2, timeout=30, what="ready after SIGKILL")
    assert host.replica_pids() == replicas
    assert load["failed"] == 0 and load["ok"] > 0, load


def test_stop_drains_every_replica_and_leaves_the_unit_inactive(host: Host) -> None:
    m = host.m
    assert host.replica_pids()
    m.systemctl("stop", "tunnelkeeper")
    assert active(host) == "inactive"  # not "failed"
    assert host.replica_pids() == set()
    assert host.events("daemon_stopping")


def test_a_config_error_at_start_exits_78_without_a_restart_loop(host: Host) -> None:
    m = host.m
    zero = config_text(host.sim, {"portal": 2}).replace("replicas = 2", "replicas = 0")
    host.write_config(zero, valid=False)
    started = m.systemctl("start", "tunnelkeeper", check=False)
    assert started.returncode != 0
    shown = m.show("tunnelkeeper", "ActiveState", "ExecMainStatus", "NRestarts")
    assert shown["ActiveState"] == "failed" and shown["ExecMainStatus"] == "78", shown
    restarts = shown["NRestarts"]
    log = m.run("journalctl", "-u", "tunnelkeeper", "-o", "cat", "--no-pager").stdout
    assert "replicas" in log.split("invalid config", 1)[-1]  # the key is named
    assert m.show("tunnelkeeper", "NRestarts")["NRestarts"] == restarts  # RestartPreventExitStatus
    m.systemctl("reset-failed", "tunnelkeeper")


def test_a_token_from_systemd_credentials(host: Host) -> None:
    m = host.m
    m.sh(
        "install -d -m 0700 /etc/tunnelkeeper/credentials && "
        "install -m 0600 /srv/sim/portal.token /etc/tunnelkeeper/credentials/portal.token"
    )
    drop_in(
        host,
        "credential",
        "[Service]\nLoadCredential=portal.token:/etc/tunnelkeeper/credentials/portal.token",
    )
    host.write_config(config_text(host.sim, {"portal": 2}, token="credential"))
    started = m.systemctl("start", "tunnelkeeper", check=False)
    log = m.run("journalctl", "-u", "tunnelkeeper", "-n", "30", "-o", "cat", "--no-pager").stdout
    assert started.returncode == 0, log
    try:
        wait_until(lambda: host.ready("portal") == 2, timeout=30, what="ready on the credential")
    except AssertionError:
        raise AssertionError(
            m.run("journalctl", "-u", "tunnelkeeper", "-n", "30", "-o", "cat").stdout
        ) from None
    token = host.status()["tunnels"][0]
    assert "systemd-credential" in json.dumps(token)
    m.systemctl("stop", "tunnelkeeper")


def test_poweroff_leaves_the_hosts_files_alone(host: Host) -> None:
    assert host.sentinel.exists()
    code = host.m.poweroff()
    # PID 1 of a pid namespace that powers off ends as if by SIGINT (pid_namespaces(7))
    assert code == -2, code
    assert host.sentinel.exists(), "the machine's boot or shutdown touched the host's /tmp"
    assert not host.m.cgroup.exists()
