"""The daemon's standard library without OpenSSL (tunnelkeeper/noopenssl.py).

Each case runs a fresh interpreter: what is imported, and what is mapped, is per process.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

DAEMON_IMPORTS = (
    "from tunnelkeeper.noopenssl import import_stdlib_without_openssl\n"
    "import_stdlib_without_openssl()\n"
)


def fresh(code: str, stdin: str = "") -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


MAPPED = (
    "import tunnelkeeper.cli, tunnelkeeper.service.daemon\n"
    "maps = open('/proc/self/maps').read()\n"
    "print(sorted({lib for lib in ('libssl', 'libcrypto') if lib in maps}))\n"
)


def test_the_daemons_imports_map_no_openssl_library() -> None:
    assert fresh(DAEMON_IMPORTS + MAPPED).strip() == "[]"
    # without it the same imports map libcrypto and libssl: the case above can fail
    assert fresh(MAPPED).strip() == "['libcrypto', 'libssl']"


def test_ssl_still_imports_later_and_asyncios_own_tls_refuses_clearly() -> None:
    out = fresh(
        DAEMON_IMPORTS + "import asyncio, socket, sys\n"
        "assert 'ssl' not in sys.modules and '_hashlib' not in sys.modules\n"
        "import ssl\n"  # what httpx does when a configured https feature needs it
        "ssl.create_default_context()\n"
        "async def main():\n"
        "    server = await asyncio.start_server(lambda r, w: w.close(), '127.0.0.1', 0)\n"
        "    port = server.sockets[0].getsockname()[1]\n"
        "    try:\n"
        "        tls = ssl.create_default_context()\n"
        "        await asyncio.open_connection('127.0.0.1', port, ssl=tls)\n"
        "    except RuntimeError as exc:\n"
        "        print(exc)\n"
        "    server.close()\n"
        "asyncio.run(main())\n"
    )
    assert out.strip() == "stdlib ssl module not available"


@settings(max_examples=10, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=300), st.binary(max_size=80)), min_size=1, max_size=5))
def test_the_builtin_hashes_give_openssls_digests(cases: list[tuple[bytes, bytes]]) -> None:
    """Token fingerprints and webhook signatures are the same with the built-in hashes."""
    out = fresh(
        DAEMON_IMPORTS + "import hashlib, hmac, json, sys\n"
        "assert '_hashlib' not in sys.modules\n"
        "cases = [(bytes.fromhex(m), bytes.fromhex(k)) for m, k in json.load(sys.stdin)]\n"
        "sign = lambda k, m: hmac.new(k, m, hashlib.sha256).hexdigest()\n"
        "print(json.dumps([[hashlib.sha256(m).hexdigest(), sign(k, m)] for m, k in cases]))\n",
        json.dumps([[m.hex(), k.hex()] for m, k in cases]),
    )
    want = [
        [hashlib.sha256(m).hexdigest(), hmac.new(k, m, hashlib.sha256).hexdigest()]
        for m, k in cases
    ]
    assert json.loads(out) == want
