"""A real systemd as PID 1, booted in private namespaces for the tests in this package.

``Machine.boot()`` puts a shell into a cgroup made for this machine, unshares pid, mount, uts,
ipc, net and cgroup namespaces, and runs ``boot.sh`` there, which hides every host path a booting
systemd would write (private tmpfs and tmpfs-backed overlays), masks every unit that touches host
state, checks all of it, and only then execs ``/lib/systemd/systemd --system`` into a target of
its own. The test's directory is at ``/srv`` inside. Commands run inside with ``nsenter``;
``poweroff()`` shuts the system manager down (SIGTERM does not stop PID 1), and anything left
is killed with the namespace's PID 1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.waiting import wait_until

BOOT_SH = Path(__file__).with_name("boot.sh")
REPO = Path(__file__).resolve().parents[2]  # the checkout, its .venv inside
CGROUP2_HOST = Path("/sys/fs/cgroup/unified")
SYSTEMD = Path("/lib/systemd/systemd")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def unavailable() -> str | None:
    """Why a machine cannot boot here, or None."""
    if os.geteuid() != 0:
        return "needs root (namespaces, mounts)"
    for tool in ("unshare", "nsenter", "findmnt", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not SYSTEMD.exists():
        return f"{SYSTEMD} is not installed (Debian package systemd)"
    if _cgroup2_root() is None:
        return "no cgroup2 hierarchy to delegate to the machine"
    return None


def _cgroup2_root() -> Path | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        if fields[sep + 1] == "cgroup2":
            return Path(fields[4])
    return None


class Machine:
    def __init__(self, share: Path, name: str) -> None:
        self.share = share
        self.name = name
        self.console = share / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None  # systemd, PID 1 inside, as the host sees it
        root = _cgroup2_root()
        assert root is not None
        self.cgroup = root / f"tunnelkeeper-test-{name}-{os.getpid()}"

    # --- life cycle ----------------------------------------------------------------------------

    def boot(self, timeout: float = 60) -> None:
        self.cgroup.mkdir(exist_ok=True)
        cgroup_procs = self.cgroup / "cgroup.procs"

        def into_cgroup() -> None:  # in the child, before exec: the cgroup namespace's root
            cgroup_procs.write_text("0")

        console = self.console.open("wb")
        self.proc = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount",
                "--mount-proc",
                "--propagation=private",
                "--uts",
                "--ipc",
                "--net",
                "--cgroup",
                "bash",
                str(BOOT_SH),
                str(self.share),
                str(REPO),
            ],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            preexec_fn=into_cgroup,
            start_new_session=True,
        )
        console.close()
        self.pid = wait_until(self._pid1, timeout=20, interval=0.05, what="the machine's PID 1")
        try:
            wait_until(self._booted, timeout=timeout, interval=0.2, what="the machine booted")
        except Exception:
            raise AssertionError(
                f"the machine did not boot: {self.console.read_text(errors='replace')[-3000:]}"
            ) from None

    def _pid1(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"boot.sh refused or failed ({self.proc.returncode}): "
                f"{self.console.read_text(errors='replace')[-3000:]}"
            )
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return None
        for pid in children.split():
            try:
                if Path(f"/proc/{pid}/exe").resolve() == SYSTEMD.resolve():
                    return int(pid)
            except OSError:
                continue
        return None

    def _booted(self) -> bool:
        state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
        if state in ("running", "degraded"):
            return True
        assert self.proc is not None and self.proc.poll() is None, "PID 1 exited while booting"
        return False

    def poweroff(self, timeout: float = 60) -> int | None:
        """Shut down; returns PID 1's exit status (None if it had to be killed)."""
        if self.proc is None:
            return None
        code: int | None = None
        if self.proc.poll() is None:
            self.run("systemctl", "--no-block", "poweroff", check=False)
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    if self.pid is not None:
                        os.kill(self.pid, signal.SIGKILL)  # the whole pid namespace with it
                self.proc.wait(timeout=30)
        else:
            code = self.proc.returncode
        self._remove_cgroup()
        return code

    def _remove_cgroup(self) -> None:
        deadline = time.monotonic() + 10
        while self.cgroup.exists() and time.monotonic() < deadline:
            for d in sorted(self.cgroup.rglob("*"), key=lambda p: -len(p.parts)):
                if d.is_dir():
                    with contextlib.suppress(OSError):
                        d.rmdir()
            with contextlib.suppress(OSError):
                self.cgroup.rmdir()
            time.sleep(0.1)

    # --- inside ----------------------------------------------------------------------------------

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 60,
        env: dict[str, str] | None = None,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside (all of the machine's namespaces, as root)."""
        assert self.pid is not None
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-n", "-p", "-C", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={"PATH": PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", **(env or {})},
            input=input_text,
            cwd="/",
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def sh(self, script: str, *, check: bool = True, timeout: float = 60) -> str:
        result = self.run("bash", "-euo", "pipefail", "-c", script, check=check, timeout=timeout)
        return result.stdout

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", *args, check=check)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self, unit: str = "tunnelkeeper") -> int:
        """The unit's main PID as seen inside."""
        return int(self.show(unit, "MainPID")["MainPID"])

    def host_pid(self, inner_pid: int) -> int:
        """The host's view of a pid inside the machine."""
        assert self.pid is not None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            ns_line = next((x for x in status.splitlines() if x.startswith("NSpid:")), "")
            parts = ns_line.split()[1:]
            if len(parts) >= 2 and int(parts[-1]) == inner_pid and self._inside(int(entry.name)):
                return int(entry.name)
        raise LookupError(inner_pid)

    def _inside(self, host_pid: int) -> bool:
        assert self.pid is not None
        try:
            return os.readlink(f"/proc/{host_pid}/ns/pid") == os.readlink(
                f"/proc/{self.pid}/ns/pid"
            )
        except OSError:
            return False
