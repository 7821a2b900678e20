"""Start -> READY=1 of two or more revisions, alternating in one window.

The machine's speed drifts by the hour (the same code took 0.04 s for ``--version`` in one hour
and 0.06 in the next), so a figure from one hour says little about a change made in the next.
This installs each revision as ``bench.startup`` installs this checkout (a wheel in a fresh
venv, with that revision's own cloudflared-sim), then takes turns: each round starts every
revision's daemon ``--per-round`` times against one simulated edge, and reports each
revision's start -> READY=1 and start -> first replica launched (or spawned, before the early
launch existed), medians with quartiles.

    .venv/bin/python -m bench.startup_ab 607711b HEAD [--rounds 6] [--per-round 3]

Revisions are anything ``git archive`` accepts; dependencies come from this checkout's venv.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench.alternatives import tk_config
from bench.startup import REPO, installed_copy, start_to_ready
from bench.strays import refuse_strays
from tests.harness import start_sim


def export(rev: str, dest: Path) -> Path:
    """The tree of ``rev`` in ``dest`` (no .git: a wheel needs only the files)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def quartiles(values: list[float]) -> str:
    v = sorted(values)
    if not v:
        return "no run reached READY=1"
    q = statistics.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3
    return f"{q[1]:.3f} ({q[0]:.3f}-{q[2]:.3f}, {v[0]:.3f}-{v[-1]:.3f}, n {len(v)})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("revs", nargs="+", metavar="REV")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--per-round", type=int, default=3)
    args = ap.parse_args(argv)
    refuse_strays()
    with tempfile.TemporaryDirectory(prefix="tk-bench-ab-") as tmp:
        work = Path(tmp)
        sim = start_sim(work / "sim", {"portal": "builtin"})
        try:
            setups = []
            for i, rev in enumerate(args.revs):
                binary = installed_copy(work / f"inst-{i}", export(rev, work / f"src-{i}"))
                cfg = tk_config(
                    work / f"tk-{i}",
                    sim,
                    {"portal": {"replicas": 2}},
                    cloudflared=str(Path(binary).parent / "cloudflared-sim"),
                )
                setups.append((rev, binary, cfg))
            ready: dict[str, list[float]] = {rev: [] for rev in args.revs}
            launched: dict[str, list[float]] = {rev: [] for rev in args.revs}
            for _ in range(args.rounds):
                for rev, binary, cfg in setups:
                    r, s, _services = start_to_ready(cfg, work, args.per_round, binary)
                    ready[rev] += [x for x in r if x is not None]
                    launched[rev] += [x for x in s if x is not None]
        finally:
            sim.stop()
    print(f"{'revision':12} {'start -> READY=1, s: median (quartiles, range, n)':52} launched")
    for rev in args.revs:
        first = statistics.median(launched[rev]) if launched[rev] else float("nan")
        print(f"{rev:12} {quartiles(ready[rev]):52} {first:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
