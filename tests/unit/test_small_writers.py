"""The few formats the daemon writes itself instead of importing a heavy module for them:
the HTTP Date header and atomic private files."""

from __future__ import annotations

import email.utils
import os
import stat
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tunnelkeeper.atomicfile import write_private_file
from tunnelkeeper.service.httpconn import http_date


@given(st.floats(min_value=0, max_value=253402300799))  # up to the year 9999
def test_http_date_is_what_email_utils_writes(timestamp: float) -> None:
    assert http_date(timestamp) == email.utils.formatdate(timestamp, usegmt=True)


def test_private_file_is_whole_private_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "token"
    old = os.umask(0)
    try:
        write_private_file(target, "first")
        write_private_file(target, "second" * 1000)
        write_private_file(tmp_path / "shared", "x", mode=0o644)
    finally:
        os.umask(old)
    assert target.read_text() == "second" * 1000
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared", "token"]
