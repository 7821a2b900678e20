"""Start-up: `tunnelkeeper --version`, `tunnelkeeper status` against a running daemon, and daemon
start -> READY=1 (systemd's notify socket, played by a bound AF_UNIX datagram socket; the daemon
sends READY=1 once every tunnel has a replica ready at the edge: here one tunnel of two
replicas, so the first of the two to register), with the daemon's own share: start -> its first
replica spawned, read from its log. The rest is the replica's own start to its first edge
connection, here cloudflared-sim's (a Python program: mostly its imports), from the same
install as the daemon. Also start -> alerting and the API tasks started (``services_started``
in the log), which the daemon does once READY=1 is sent or a second has passed.

Wall-clock durations of whole processes, measured with a monotonic clock around
``subprocess.run`` (hyperfine is not installed here).

    .venv/bin/python -m bench.startup [--runs 20] [--ready-runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.alternatives import RESULTS, cell, figures, tk_config
from bench.strays import refuse_strays
from tests.harness import TUNNELKEEPER, start_daemon, start_sim
from tests.waiting import WaitTimeout, wait_until

REPO = Path(__file__).resolve().parent.parent


def time_command(argv: list[str], runs: int) -> list[float | None]:
    out: list[float | None] = []
    for _ in range(runs):
        t0 = time.monotonic()
        done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
        out.append(time.monotonic() - t0 if done.returncode == 0 else None)
    return out


def start_to_ready(
    cfg: Path, work: Path, runs: int, binary: str
) -> tuple[list[float | None], list[float | None], list[float | None]]:
    """Per run: start -> READY=1, start -> the first replica launched (the daemon's own share;
    the rest is the replicas' start up to their first edge connection, while the daemon loads
    the rest of itself), and start -> alerting and the API tasks started."""
    ready: list[float | None] = []
    spawned: list[float | None] = []
    services: list[float | None] = []
    for i in range(runs):
        path = work / f"notify-{i}.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            sock.settimeout(0.5)
            (cfg.parent / "daemon.log").unlink(missing_ok=True)  # this run's log alone
            t0, wall0 = time.monotonic(), time.time()
            d = start_daemon(cfg, env={"NOTIFY_SOCKET": str(path)}, binary=binary)
            try:
                ready_at = None
                deadline = t0 + 60
                while ready_at is None and time.monotonic() < deadline:
                    try:
                        data = sock.recv(4096)
                    except TimeoutError:
                        continue
                    if "READY=1" in data.decode(errors="replace").split("\n"):
                        ready_at = time.monotonic()
                ready.append(None if ready_at is None else ready_at - t0)
            finally:
                # until alerting has started: that is part of what is measured
                with contextlib.suppress(WaitTimeout):
                    wait_until(lambda: '"services_started"' in d.output(), timeout=10)
                d.stop()
            spawned.append(launched_at(d.output(), wall0))
            services.append(logged_at(d.output(), "services_started", wall0))
        path.unlink(missing_ok=True)
    return ready, spawned, services


def launched_at(log: str, wall0: float) -> float | None:
    """Seconds from ``wall0`` to the first replica's launch: a cold start's early launch (logged
    when the daemon takes them over, with how long before), else the first spawn."""
    for line in log.splitlines():
        if '"replicas_launched_early"' in line:
            taken = logged_at(line, "replicas_launched_early", wall0)
            return None if taken is None else taken - float(json.loads(line)["seconds_before"])
    return logged_at(log, "replica_spawned", wall0)


def logged_at(log: str, event: str, wall0: float) -> float | None:
    """Seconds from ``wall0`` to the daemon's first ``event`` (its JSON log's UTC timestamp,
    microseconds)."""
    for line in log.splitlines():
        if f'"{event}"' in line:
            stamp = json.loads(line)["timestamp"].replace("Z", "+00:00")
            return datetime.fromisoformat(stamp).timestamp() - wall0
    return None


def installed_copy(work: Path, source: Path = REPO) -> str:
    """tunnelkeeper as the README installs it (``pip install`` of the project, not the
    editable install of this checkout, whose import hook alone costs ~20 ms a start): a wheel
    of ``source`` (this tree) in a fresh venv that borrows the checkout venv's dependencies by
    path."""
    venv_python = Path(sys.executable)
    subprocess.run(
        [venv_python, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
         str(work / "wheel"), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(work / "venv")], check=True)
    site = next((work / "venv" / "lib").glob("python3*/site-packages"))
    deps = next((venv_python.parent.parent / "lib").glob("python3*/site-packages"))
    (site / "borrowed-deps.pth").write_text(f"{deps}\n")  # a path only: no import hook
    wheel = next((work / "wheel").glob("tunnelkeeper-*.whl"))
    subprocess.run(
        [venv_python, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--target", str(site), str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    for name, module in (("tunnelkeeper", "cli"), ("cloudflared-sim", "sim.cloudflared")):
        script = work / "venv" / "bin" / name
        script.write_text(
            f"#!{work / 'venv' / 'bin' / 'python'}\n"
            f"import sys\nfrom tunnelkeeper.{module} import main\nsys.exit(main())\n"
        )
        script.chmod(0o755)
    return str(work / "venv" / "bin" / "tunnelkeeper")


def run(work: Path, runs: int, ready_runs: int) -> dict[str, Any]:
    installed = installed_copy(work)
    res: dict[str, Any] = {
        "version": figures(time_command([installed, "--version"], runs)),
        "version_editable": figures(time_command([TUNNELKEEPER, "--version"], runs)),
    }
    sim = start_sim(work / "sim", {"portal": "builtin"})
    try:
        cfg = tk_config(work / "tk", sim, {"portal": {"replicas": 2}})
        d = start_daemon(cfg)
        try:
            d.wait_ready("portal", 2, timeout=60)
            res["status"] = figures(time_command([installed, "status", "-c", str(cfg)], runs))
            res["status_editable"] = figures(
                time_command([TUNNELKEEPER, "status", "-c", str(cfg)], runs)
            )
        finally:
            d.stop()
        installed_sim = str(Path(installed).parent / "cloudflared-sim")
        cfg_installed = tk_config(
            work / "tk-installed", sim, {"portal": {"replicas": 2}}, cloudflared=installed_sim
        )
        for key, binary, config in (
            ("", installed, cfg_installed),
            ("_editable", TUNNELKEEPER, cfg),
        ):
            ready, spawned, services = start_to_ready(config, work, ready_runs, binary)
            res[f"start_to_ready{key}"] = figures(ready) | {"replicas": 2}
            res[f"start_to_spawn{key}"] = figures(spawned)
            res[f"start_to_services{key}"] = figures(services)
    finally:
        sim.stop()
    res["method"] = "subprocess wall time with a monotonic clock; hyperfine not installed"
    return res


def table(res: dict[str, Any]) -> list[str]:
    lines = [f"{'start-up (seconds)':48} {'median':>8} {'p99':>8} {'runs':>5}"]
    for key, label in (
        ("version", "tunnelkeeper --version"),
        ("version_editable", "  the same, editable dev install"),
        ("status", "tunnelkeeper status (daemon running)"),
        ("status_editable", "  the same, editable dev install"),
        ("start_to_ready", "daemon start -> READY=1 (1 of 2 replicas ready)"),
        ("start_to_spawn", "  of which start -> first replica launched"),
        ("start_to_services", "  start -> alerting and API tasks started"),
        ("start_to_ready_editable", "  start -> READY=1, editable dev install"),
        ("start_to_spawn_editable", "  of which start -> first replica launched"),
        ("start_to_services_editable", "  start -> alerting and API tasks started"),
    ):
        f = res[key]
        lines.append(f"{label:48} {cell(f):>8} {cell(f, 'p99_s'):>8} {f['runs']:>5}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--ready-runs", type=int, default=5)
    args = ap.parse_args(argv)
    refuse_strays()  # after the arguments: --help needs no clean machine
    with tempfile.TemporaryDirectory(prefix="tk-bench-start-") as tmp:
        res = run(Path(tmp), args.runs, args.ready_runs)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps(res, indent=2))
    print("\n".join(table(res)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
