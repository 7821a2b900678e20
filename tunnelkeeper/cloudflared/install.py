"""Managed cloudflared install: download, verify, install side by side, switch atomically.

Layout under ``state_dir``::

    cloudflared/2026.8.2/cloudflared    one directory per version, never modified once in place
    cloudflared/2026.8.2/SHA256         its digest, so a later switch back can re-verify it
    cloudflared/.2026.8.2-amd64.part    a download in progress (resumed with a Range request)
    cloudflared/.lock                   one install at a time (daemon and CLI)

Steps: stream the URL (``https://``, a loopback ``http://`` mirror, or ``file:///`` for an
offline mirror) into the ``.part`` file with a timeout and a size cap (:mod:`.download`);
refuse it unless the SHA-256 matches ``[cloudflared.install] sha256``; run ``--version`` on it
and refuse it unless it reports the requested version; only then rename it into its version
directory, and finally switch ``path``.

Switching ``path`` is a **symlink replaced by rename**: a new symlink is created next to
``path`` and ``rename(2)``d over it, which is atomic, so ``path`` always names either the old
binary or the new one, never a half-written file. A symlink rather than copy+rename because
(1) every version stays intact in its own directory, so a rollback is one more rename and
re-verifies against the recorded digest; (2) a running replica's ``/proc/PID/exe`` names the
versioned file, which tells apart replicas of different versions; (3) nothing is copied.
Replicas already running are unaffected either way: they hold the inode they were started from.

Nothing is downloaded without a digest from config: ``version`` other than the configured one
only switches to a version already installed here (a rollback, or a pre-staged one).
Blocking I/O: the daemon calls :func:`install_cloudflared` through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from tunnelkeeper.cloudflared.download import DownloadError, fetch_verified, file_digest, shown_url
from tunnelkeeper.cloudflared.versions import CloudflaredVersion, VersionError, parse_version_output
from tunnelkeeper.config.model import CloudflaredConfig
from tunnelkeeper.errors import TunnelkeeperError
from tunnelkeeper.structs import Struct

VERSION_CHECK_TIMEOUT_SECONDS = 15.0
ARCHES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "arm": "arm",
    "i386": "386",
    "i686": "386",
    "x86": "386",
}


class InstallError(TunnelkeeperError):
    """The install was refused or failed; ``path`` still names what it named before."""


class InstallResult(Struct, frozen=True):
    version: str
    binary: Path  # state_dir/cloudflared/<version>/cloudflared
    path: Path  # the configured cloudflared.path, now a symlink to binary (if switched)
    sha256: str
    downloaded: bool  # False: that version was already installed and re-verified
    switched: bool  # False: path already pointed at binary, or switch=False


def release_arch(machine: str | None = None) -> str:
    """cloudflared's release name for this machine's architecture (amd64, arm64, arm, 386)."""
    m = (machine if machine is not None else platform.machine()).lower()
    if m not in ARCHES:
        raise InstallError(f"no cloudflared release for this architecture ({m or 'unknown'})")
    return ARCHES[m]


def versioned_binary(state_dir: Path, version: str) -> Path:
    return state_dir / "cloudflared" / version / "cloudflared"


def install_cloudflared(
    cfg: CloudflaredConfig,
    state_dir: Path,
    *,
    version: str | None = None,
    switch: bool = True,
    arch: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> InstallResult:
    """Install ``version`` (default: the pinned one) and point ``cfg.path`` at it."""
    install = cfg.install
    if install is None:
        raise InstallError("[cloudflared.install] is not set in the config: nothing to install")
    say = progress or (lambda _msg: None)
    want = version or install.version
    try:
        CloudflaredVersion.parse(want)
    except VersionError as exc:
        raise InstallError(f"cannot install {exc}") from exc
    state_dir = state_dir.absolute()
    root = state_dir / "cloudflared"
    binary = versioned_binary(state_dir, want)
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _make_dir(root, owner=state_dir)
        lock = _locked(root / ".lock", owner=state_dir)
    except OSError as exc:
        raise InstallError(f"cannot use {root}: {exc.strerror or exc}") from exc
    with lock:
        expected = install.sha256 if want == install.version else _recorded_digest(binary)
        if expected is None:
            raise InstallError(
                f"cloudflared {want} is not installed in {root} and the config's sha256 is for "
                f"{install.version}; set [cloudflared.install] version and sha256 for {want}"
            )
        downloaded = False
        if file_digest(binary) == expected:
            say(f"cloudflared {want} already installed at {binary} (sha256 verified)")
            if _recorded_digest(binary) != expected:
                with contextlib.suppress(OSError):  # only needed for a later switch back
                    _record(binary, expected, owner=state_dir)
        elif want != install.version:
            raise InstallError(
                f"{binary} no longer matches its recorded sha256 {expected}; "
                "reinstall it with its version and sha256 in config"
            )
        else:
            arch = arch or release_arch()
            url = install.url.replace("{version}", want).replace("{arch}", arch)
            part = root / f".{want}-{arch}.part"
            say(f"downloading cloudflared {want} ({arch}) from {shown_url(url)}")
            try:
                fetch_verified(url, part, expected)
            except DownloadError as exc:
                raise InstallError(str(exc)) from exc
            _check_version(part, want)
            try:
                _place(part, binary, expected, owner=state_dir)
            except OSError as exc:
                raise InstallError(f"cannot install into {binary.parent}: {exc}") from exc
            downloaded = True
            say(f"installed cloudflared {want} at {binary}")
        switched = switch and _switch(binary, cfg.path)
        if switched:
            say(f"{cfg.path} -> {binary}")
    return InstallResult(want, binary, cfg.path, expected, downloaded, switched)


# --- verify, place, switch --------------------------------------------------------------------


def _check_version(candidate: Path, want: str) -> None:
    """Run ``candidate --version``; refuse (and delete) it unless it reports ``want``."""
    os.chmod(candidate, 0o755)  # noqa: S103 - a program every user may run
    try:
        out = subprocess.run(
            [str(candidate), "--version"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=VERSION_CHECK_TIMEOUT_SECONDS,
            check=False,
            stdin=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NO_AUTOUPDATE": "true"},
        )
        reported = str(parse_version_output(out.stdout).version)
    except (OSError, subprocess.TimeoutExpired, VersionError) as exc:
        candidate.unlink(missing_ok=True)
        raise InstallError(
            f"the download does not run as cloudflared (`--version` failed: {exc}); refused"
        ) from exc
    if reported != want:
        candidate.unlink(missing_ok=True)
        raise InstallError(
            f"the download reports cloudflared version {reported}, not {want}; refused"
        )


def _place(part: Path, binary: Path, digest: str, *, owner: Path) -> None:
    _make_dir(binary.parent, owner=owner)
    _give_to(part, owner)
    os.replace(part, binary)
    _record(binary, digest, owner=owner)


def _record(binary: Path, digest: str, *, owner: Path) -> None:
    tmp = binary.parent / ".SHA256.tmp"
    tmp.write_text(f"{digest}  cloudflared\n")
    os.chmod(tmp, 0o644)
    _give_to(tmp, owner)
    os.replace(tmp, binary.parent / "SHA256")


def _make_dir(path: Path, *, owner: Path) -> None:
    if path.is_dir():
        return
    path.mkdir(parents=True)
    os.chmod(path, 0o755)  # noqa: S103 - the service user must traverse it
    _give_to(path, owner)


def _give_to(path: Path, owner: Path) -> None:
    """Run as root for the service: hand new files to the owner of state_dir."""
    if os.geteuid() == 0:
        st = owner.stat()
        if st.st_uid != 0:
            os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)


def _switch(binary: Path, path: Path) -> bool:
    """Point ``path`` at ``binary`` with one atomic rename; False if it already did."""
    with contextlib.suppress(OSError):
        if path.is_symlink() and Path(os.readlink(path)) == binary:
            return False
    tmp = path.with_name(f".{path.name}.tunnelkeeper-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        os.symlink(binary, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise InstallError(
            f"cloudflared is installed at {binary}, but {path} could not be switched to it: "
            f"{exc.strerror or exc}"
        ) from exc
    return True


def _recorded_digest(binary: Path) -> str | None:
    try:
        return (binary.parent / "SHA256").read_text().split()[0].lower()
    except (OSError, IndexError):
        return None


@contextlib.contextmanager
def _hold(fd: int) -> Iterator[None]:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _locked(lock_path: Path, *, owner: Path) -> contextlib.AbstractContextManager[None]:
    """One install at a time; the lock file is opened here so errors surface before ``with``."""
    existed = lock_path.exists()
    fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    if not existed:
        _give_to(lock_path, owner)
    return _hold(fd)


# --- command line -----------------------------------------------------------------------------


def install_command(config_path: str, version: str | None) -> int:
    from tunnelkeeper.config.load import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"tunnelkeeper install: invalid config:\n{exc}", file=sys.stderr)
        return 1
    if config.cloudflared.install is None:
        print(
            f"tunnelkeeper install: {config_path}: cloudflared.install: not set; add a "
            "[cloudflared.install] table with version, url and sha256",
            file=sys.stderr,
        )
        return 1
    try:
        result = install_cloudflared(
            config.cloudflared, config.daemon.state_dir, version=version, progress=print
        )
    except InstallError as exc:
        print(f"tunnelkeeper install: {exc}", file=sys.stderr)
        return 1
    state = "switched to" if result.switched else "already points at"
    print(f"ok: cloudflared {result.version} (sha256 {result.sha256}); {result.path} {state} it")
    return 0
