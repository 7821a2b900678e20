"""The package's one import of msgspec, whose Structs are its value records (config, policy
inputs, probe results, ledger entries...).

msgspec's helpers import ``typing_extensions`` when it is installed (aiohttp and httpx's
dependencies bring it), for type-hint features that only decoding into typed objects uses; we
build and copy Structs and never decode into them. ``typing_extensions`` imports ``inspect``,
which imports ``ast``, ``dis`` and ``tokenize``: 16 ms of the 53 a plain ``import msgspec``
took on the development machine (median of 40; 37 without), all of it on ``tunnelkeeper run``'s
path to its first replica's launch. So msgspec is imported here with ``typing_extensions``
hidden, as ``noopenssl`` hides OpenSSL, and falls back to :mod:`typing`'s own
``get_type_hints``, which on Python 3.11 does the same for everything we declare. Anything that
imports ``typing_extensions`` afterwards gets it as usual.

Modules use ``from tunnelkeeper.structs import Struct, field, replace``, never msgspec directly
(``tests/unit/test_import_rules.py`` checks it), so the first import is always this one.
"""

from __future__ import annotations

import sys


def _import_msgspec_without_typing_extensions() -> None:
    if "msgspec" in sys.modules or "typing_extensions" in sys.modules:
        return  # loaded already: hiding it now would change nothing
    sys.modules["typing_extensions"] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        import msgspec  # noqa: F401
    finally:
        if "typing_extensions" in sys.modules and sys.modules["typing_extensions"] is None:
            del sys.modules["typing_extensions"]


_import_msgspec_without_typing_extensions()

from msgspec import Struct, field  # noqa: E402
from msgspec.structs import asdict, replace  # noqa: E402

__all__ = ["Struct", "asdict", "field", "replace"]
