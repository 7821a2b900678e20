"""Managed cloudflared install against a local release server serving fake artefacts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.harness import TUNNELKEEPER
from tests.host.conftest import ARCH, ReleaseServer, artefact, sha256, write_config
from tunnelkeeper.cloudflared.install import (
    InstallError,
    InstallResult,
    install_cloudflared,
    release_arch,
    versioned_binary,
)
from tunnelkeeper.config.load import load_config


def install(cfg: Path, version: str | None = None) -> InstallResult:
    config = load_config(cfg)
    return install_cloudflared(config.cloudflared, config.daemon.state_dir, version=version)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TUNNELKEEPER, "install", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def reported_version(binary: Path) -> str:
    out = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    return out.stdout.strip()


def file_mirror(workdir: Path, version: str, body: bytes) -> str:
    """An offline mirror directory laid out like the release URLs; returns its URL template."""
    where = workdir / "mirror" / version
    where.mkdir(parents=True)
    (where / f"cloudflared-linux-{ARCH}").write_bytes(body)
    return f"file://{workdir / 'mirror'}/{{version}}/cloudflared-linux-{{arch}}"


def leftovers(workdir: Path) -> list[str]:
    """Partial or temporary files: hidden names other than the lock, under state and bin."""
    found = [
        p
        for d in (workdir / "state" / "cloudflared", workdir / "bin")
        if d.exists()
        for p in d.rglob(".*")
        if p.name != ".lock"
    ]
    return sorted(str(p.relative_to(workdir)) for p in found)


def test_cli_installs_side_by_side_and_switches_path(
    tmp_path: Path, release_server: ReleaseServer
) -> None:
    body = artefact("2026.9.1")
    release_server.publish("2026.9.1", body)
    cfg = write_config(
        tmp_path, version="2026.9.1", url=release_server.template(), digest=sha256(body)
    )

    done = run_cli("-c", str(cfg))

    assert done.returncode == 0, done.stderr
    assert "ok: cloudflared 2026.9.1" in done.stdout
    assert f"/download/2026.9.1/cloudflared-linux-{ARCH}" in done.stdout
    path = tmp_path / "bin" / "cloudflared"
    binary = versioned_binary(tmp_path / "state", "2026.9.1")
    assert path.is_symlink() and path.resolve() == binary.resolve()
    assert reported_version(path).startswith("cloudflared version 2026.9.1 (built ")
    assert (binary.parent / "SHA256").read_text().split()[0] == sha256(body)
    assert os.access(binary, os.X_OK)
    assert leftovers(tmp_path) == []

    again = run_cli("-c", str(cfg))
    assert again.returncode == 0, again.stderr
    assert "already installed" in again.stdout
    assert len(release_server.requests) == 1  # verified on disk, not downloaded twice


def test_upgrade_keeps_old_version_and_rolls_back_without_download(
    tmp_path: Path, release_server: ReleaseServer
) -> None:
    old, new = artefact("2026.9.1"), artefact("2026.9.2")
    release_server.publish("2026.9.1", old)
    release_server.publish("2026.9.2", new)
    url = release_server.template()
    install(write_config(tmp_path, version="2026.9.1", url=url, digest=sha256(old)))
    cfg_new = write_config(tmp_path, version="2026.9.2", url=url, digest=sha256(new))

    up = install(cfg_new)
    assert (up.version, up.downloaded, up.switched) == ("2026.9.2", True, True)
    path = tmp_path / "bin" / "cloudflared"
    assert "2026.9.2" in reported_version(path)
    assert versioned_binary(tmp_path / "state", "2026.9.1").exists()

    fetched = len(release_server.requests)
    back = install(cfg_new, version="2026.9.1")  # rollback: the config's digest is for 2026.9.2
    assert (back.downloaded, back.switched, back.sha256) == (False, True, sha256(old))
    assert "2026.9.1" in reported_version(path)
    assert len(release_server.requests) == fetched


def test_sha256_mismatch_is_refused_and_nothing_is_replaced(
    tmp_path: Path, release_server: ReleaseServer
) -> None:
    good = artefact("2026.9.1")
    release_server.publish("2026.9.1", good)
    url = release_server.template()
    install(write_config(tmp_path, version="2026.9.1", url=url, digest=sha256(good)))
    served = artefact("2026.9.2") + b"# tampered\n"
    release_server.publish("2026.9.2", served)
    pinned = sha256(artefact("2026.9.2"))
    cfg = write_config(tmp_path, version="2026.9.2", url=url, digest=pinned)

    done = run_cli("-c", str(cfg))

    assert done.returncode == 1
    assert f"expected {pinned}" in done.stderr and f"got {sha256(served)}" in done.stderr
    assert "Traceback" not in done.stderr
    path = tmp_path / "bin" / "cloudflared"
    assert "2026.9.1" in reported_version(path)
    assert not versioned_binary(tmp_path / "state", "2026.9.2").parent.exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("status", [404, 500])
def test_server_error_is_a_clear_failure(
    tmp_path: Path, release_server: ReleaseServer, status: int
) -> None:
    release_server.publish("2026.9.1", b"", status=status)
    cfg = write_config(
        tmp_path, version="2026.9.1", url=release_server.template(), digest=sha256(b"x")
    )

    with pytest.raises(InstallError, match=f"answered HTTP {status}"):
        install(cfg)

    assert not (tmp_path / "bin" / "cloudflared").exists()
    assert leftovers(tmp_path) == []


def test_interrupted_download_leaves_path_alone_and_resumes(
    tmp_path: Path, release_server: ReleaseServer
) -> None:
    body = artefact("2026.9.1") + b"#" * 200_000  # big enough to be cut mid-body
    route = release_server.publish("2026.9.1", body, cut_after=70_000)
    cfg = write_config(
        tmp_path, version="2026.9.1", url=release_server.template(), digest=sha256(body)
    )

    with pytest.raises(InstallError, match="run again to resume") as err:
        install(cfg)

    path = tmp_path / "bin" / "cloudflared"
    assert not path.exists() and not path.is_symlink()
    assert not versioned_binary(tmp_path / "state", "2026.9.1").exists()
    kept = leftovers(tmp_path)
    assert len(kept) == 1, kept
    kept_bytes = (tmp_path / kept[0]).stat().st_size
    assert 0 < kept_bytes < len(body)
    assert "Traceback" not in str(err.value)

    release_server.files[route].cut_after = None
    result = install(cfg)

    assert result.downloaded and result.switched
    assert release_server.requests[-1] == (route, f"bytes={kept_bytes}-")
    assert "2026.9.1" in reported_version(path)
    assert leftovers(tmp_path) == []


def test_offline_mirror_through_file_url(tmp_path: Path) -> None:
    body = artefact("2026.9.1")
    url = file_mirror(tmp_path, "2026.9.1", body)
    cfg = write_config(tmp_path, version="2026.9.1", url=url, digest=sha256(body))

    result = install(cfg)

    assert result.downloaded and result.switched
    assert "2026.9.1" in reported_version(tmp_path / "bin" / "cloudflared")


def test_missing_file_in_offline_mirror_is_a_clear_failure(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'mirror'}/{{version}}/cloudflared-linux-{{arch}}"
    cfg = write_config(tmp_path, version="2026.9.1", url=url, digest=sha256(b"x"))

    with pytest.raises(InstallError, match=r"cannot read .*mirror/2026.9.1"):
        install(cfg)


def test_binary_reporting_another_version_is_refused(
    tmp_path: Path, release_server: ReleaseServer
) -> None:
    wrong = artefact("2026.9.1")  # published under 2026.9.2, with a matching digest
    release_server.publish("2026.9.2", wrong)
    cfg = write_config(
        tmp_path, version="2026.9.2", url=release_server.template(), digest=sha256(wrong)
    )

    with pytest.raises(InstallError, match=r"reports cloudflared version 2026.9.1, not 2026.9.2"):
        install(cfg)

    assert not (tmp_path / "bin" / "cloudflared").exists()
    assert not versioned_binary(tmp_path / "state", "2026.9.2").exists()
    assert leftovers(tmp_path) == []


def test_oversized_download_is_refused_before_reading(
    tmp_path: Path, release_server: ReleaseServer
) -> None:
    release_server.publish("2026.9.1", b"", claimed_length=2**40)
    cfg = write_config(
        tmp_path, version="2026.9.1", url=release_server.template(), digest=sha256(b"x")
    )

    with pytest.raises(InstallError, match=r"over the .* cap"):
        install(cfg)

    assert not (tmp_path / "bin" / "cloudflared").exists()


def test_other_version_needs_a_digest_and_a_sane_name(
    tmp_path: Path, release_server: ReleaseServer
) -> None:
    cfg = write_config(
        tmp_path, version="2026.9.1", url=release_server.template(), digest=sha256(b"x")
    )

    with pytest.raises(InstallError, match=r"sha256 is for 2026.9.1; set .* for 2026.7.0"):
        install(cfg, version="2026.7.0")
    with pytest.raises(InstallError, match="not a cloudflared version"):
        install(cfg, version="../../etc")
    assert release_server.requests == []


def test_cli_without_install_table_explains(tmp_path: Path) -> None:
    cfg = tmp_path / "plain.toml"
    cfg.write_text(
        "[daemon]\n"
        f'state_dir = "{tmp_path / "state"}"\n'
        "[[tunnel]]\n"
        'name = "portal"\n'
        'token = { source = "env", var = "PORTAL_TOKEN" }\n'
    )

    done = run_cli("-c", str(cfg))

    assert done.returncode == 1
    assert "cloudflared.install: not set" in done.stderr


def test_architecture_names_follow_cloudflared_releases() -> None:
    assert [release_arch(m) for m in ("x86_64", "aarch64", "armv7l", "i686")] == [
        "amd64",
        "arm64",
        "arm",
        "386",
    ]
    with pytest.raises(InstallError, match="no cloudflared release for this architecture"):
        release_arch("sparc64")


def test_replaces_a_plain_binary_at_path_with_a_link(tmp_path: Path) -> None:
    body = artefact("2026.9.1")
    path = tmp_path / "bin" / "cloudflared"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\necho cloudflared version 2024.1.0\n")  # e.g. from a package
    url = file_mirror(tmp_path, "2026.9.1", body)
    cfg = write_config(tmp_path, version="2026.9.1", url=url, digest=sha256(body))

    install(cfg)

    assert path.is_symlink() and "2026.9.1" in reported_version(path)
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand files to another user")
def test_root_install_hands_files_to_the_service_user(tmp_path: Path) -> None:
    body = artefact("2026.9.1")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)  # as systemd-tmpfiles leaves it for the service user
    url = file_mirror(tmp_path, "2026.9.1", body)
    cfg = write_config(tmp_path, version="2026.9.1", url=url, digest=sha256(body))

    result = install(cfg)

    for p in (result.binary, result.binary.parent, result.binary.parent / "SHA256"):
        assert p.stat().st_uid == 65534, p
    assert (state / "cloudflared").stat().st_uid == 65534
