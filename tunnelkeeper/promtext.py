"""Prometheus metrics in the text exposition format (0.0.4), written for a scrape that costs
next to nothing.

Why not prometheus_client's registry: at 100 replicas the daemon exposes ~2,200 series, and
prometheus_client rebuilds every sample on each scrape (a label dict, a validated label name,
an escaped value per series: ~20 ms of CPU, a quarter of the daemon's idle budget at a 5 s
scrape interval), and its package imports ``http.server``, ``wsgiref``, ``urllib`` and ``email``
(~3 MB resident) for servers the daemon does not use. Here a series renders its line once per
value: a scrape of unchanged series is one join. Only what the daemon uses is here: gauges and
counters with labels, histograms without. The output is checked against prometheus_client's
parser and ``promtool check metrics`` in the tests.

Thread-safe for one writer thread and any number of scraping threads: the scrape runs on the
HTTP server's thread while the event loop sets values.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
from collections.abc import Iterator, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    """Go's spelling of the special values; Python's repr for the rest (the parsers accept any
    float literal, and repr round-trips)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def label_text(names: Sequence[str], values: Sequence[str]) -> str:
    """``{a="1",b="2"}`` with the names sorted (as prometheus_client writes them), or ``""``."""
    if not names:
        return ""
    pairs = sorted(zip(names, values, strict=True))
    return "{" + ",".join(f'{n}="{escape_label_value(v)}"' for n, v in pairs) + "}"


class Series:
    """One labelled series of a gauge or counter. Its line is rendered again only when the
    value it was rendered for is no longer the value."""

    __slots__ = ("_cached", "_counter", "_lock", "prefix", "value")

    def __init__(self, prefix: str, lock: threading.Lock, counter: bool) -> None:
        self.prefix = prefix
        self.value = 0.0
        self._counter = counter
        self._lock = lock
        self._cached: tuple[float, str] | None = None

    def set(self, value: float) -> None:
        if self._counter:
            raise TypeError("a counter only goes up: use inc()")
        self.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        if self._counter and amount < 0:
            raise ValueError("a counter only goes up")
        with self._lock:
            self.value += amount

    def line(self) -> str:
        value, cached = self.value, self._cached
        if cached is not None and cached[0] == value:
            return cached[1]
        text = f"{self.prefix}{format_value(value)}\n"
        self._cached = (value, text)
        return text


class Family:
    """A gauge or counter family: ``labels(...)`` returns (and creates at 0) one series."""

    def __init__(
        self, kind: str, name: str, doc: str, labelnames: Sequence[str], lock: threading.Lock
    ) -> None:
        for label in labelnames:
            if not _LABEL.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} in {name}")
        self.kind, self.labelnames = kind, tuple(labelnames)
        self.name = f"{name}_total" if kind == "counter" else name  # as exposed
        self.header = f"# HELP {self.name} {_escape_help(doc)}\n# TYPE {self.name} {kind}\n"
        self._lock = lock
        self._series: dict[tuple[str, ...], Series] = {}
        if not self.labelnames:
            self.labels()

    def _key(self, values: tuple[object, ...], named: dict[str, object]) -> tuple[str, ...]:
        if named:
            if values or set(named) != set(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}")
            values = tuple(named[n] for n in self.labelnames)
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        return tuple(str(v) for v in values)

    def labels(self, *values: object, **named: object) -> Series:
        key = self._key(values, named)
        series = self._series.get(key)
        if series is None:
            with self._lock:
                series = self._series.get(key)
                if series is None:
                    prefix = f"{self.name}{label_text(self.labelnames, key)} "
                    series = Series(prefix, self._lock, self.kind == "counter")
                    self._series[key] = series
        return series

    def remove(self, *values: object) -> None:
        """Drop a series; KeyError if it does not exist."""
        key = self._key(values, {})
        with self._lock:
            del self._series[key]

    # the unlabelled families are used directly, like one series
    def set(self, value: float) -> None:
        self.labels().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def render(self) -> str:
        with self._lock:
            series = list(self._series.values())
        return self.header + "".join(s.line() for s in series)

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        with self._lock:
            items = list(self._series.items())
        for key, series in items:
            yield self.name, dict(zip(self.labelnames, key, strict=True)), series.value


class Histogram:
    """A histogram without labels: cumulative ``_bucket`` series, ``_count`` and ``_sum``."""

    kind = "histogram"

    def __init__(self, name: str, doc: str, buckets: Sequence[float], lock: threading.Lock):
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self.name = name
        self.header = f"# HELP {name} {_escape_help(doc)}\n# TYPE {name} histogram\n"
        self._lock = lock
        self._counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self._sum = 0.0
        self._les = [format_value(b) for b in self.bounds] + ["+Inf"]

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.bounds, value)
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        running = 0
        for le, n in zip(self._les, counts, strict=True):
            running += n
            yield f"{self.name}_bucket", {"le": le}, float(running)
        yield f"{self.name}_count", {}, float(running)
        yield f"{self.name}_sum", {}, total

    def render(self) -> str:
        lines = [
            f"{name}{label_text(list(labels), list(labels.values()))} {format_value(value)}\n"
            for name, labels, value in self.samples()
        ]
        return self.header + "".join(lines)


class Registry:
    """The families in declaration order, and the exposition of all of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: list[Family | Histogram] = []

    def _add(self, family: Family | Histogram) -> None:
        name = family.name
        if not _NAME.fullmatch(name) or any(name == f.name for f in self._families):
            raise ValueError(f"invalid or duplicate metric name {name!r}")
        self._families.append(family)

    def gauge(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> Family:
        family = Family("gauge", name, doc, labelnames, self._lock)
        self._add(family)
        return family

    def counter(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> Family:
        family = Family("counter", name, doc, labelnames, self._lock)
        self._add(family)
        return family

    def histogram(self, name: str, doc: str, buckets: Sequence[float]) -> Histogram:
        family = Histogram(name, doc, buckets, self._lock)
        self._add(family)
        return family

    def exposition(self) -> bytes:
        return "".join(f.render() for f in self._families).encode()

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        for family in self._families:
            yield from family.samples()

    def sample_names(self) -> set[str]:
        """Every sample name the registry can expose, series or not."""
        names: set[str] = set()
        for f in self._families:
            if isinstance(f, Histogram):
                names |= {f"{f.name}{s}" for s in ("_bucket", "_count", "_sum")}
            else:
                names.add(f.name)
        return names

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        for sample, got, value in self.samples():
            if sample == name and got == (labels or {}):
                return value
        return None


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
