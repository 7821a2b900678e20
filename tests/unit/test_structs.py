"""msgspec through tunnelkeeper.structs: loaded without typing_extensions, fully working."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHECK = textwrap.dedent(
    """
    import sys
    from tunnelkeeper.structs import Struct, asdict, replace
    import msgspec
    assert "typing_extensions" not in sys.modules and "inspect" not in sys.modules, "loaded"

    class Point(Struct, frozen=True):
        x: int
        label: str = "p"

    p = replace(Point(1), label="q")
    assert asdict(p) == {"x": 1, "label": "q"}
    # decoding into a type, the one use of typing_extensions' hints, works with typing's own
    assert msgspec.json.decode(b'{"x": 2}', type=Point) == Point(2)
    try:
        msgspec.json.decode(b'{"x": "2"}', type=Point)
    except msgspec.ValidationError as exc:
        assert "Expected `int`" in str(exc)
    else:
        raise AssertionError("not validated")
    import typing_extensions  # anything later that wants it gets it
    assert typing_extensions.get_type_hints(Point) == {"x": int, "label": str}
    print("ok")
    """
)


def test_msgspec_loads_without_typing_extensions_and_works() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
