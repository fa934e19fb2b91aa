"""The same benchmark from two checkouts, alternated run by run: did a change move the numbers?

Each round runs the benchmark once from checkout A and once from checkout B (in alternating order, so
neither always runs first), each with its own ``.venv``; every run prints its JSON lines (bench/allreduce.py
and bench/ddp.py do), and for each case this reports both checkouts' medians of ``netagg_ms`` (or
``netagg_step_ms``) and of the in-run ratio against gloo, and the paired ratio B/A of neighbouring runs.
Writes ab.json and ab.png.

    python bench/ab.py --a ../base --b . --rounds 5 -- bench/allreduce.py --workers 4 --mib 64 --small-mib
    python bench/ab.py --a ../base --b . --rounds 5 -- bench/ddp.py --workers 4 --steps 16
    python bench/ab.py --a ../base --b . --rounds 5 -- bench/collectives.py --sizes 64 --fsdp-steps 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

TIME_KEYS = ("netagg_ms", "netagg_step_ms")  # bench/collectives.py's FSDP2 row: netagg_step_ms
CASE_KEYS = ("workers", "op", "dtype", "mib", "elements")  # bench/collectives.py: op and dtype


def run(checkout: Path, bench: list[str]) -> list[dict[str, Any]]:
    """One run of the benchmark from ``checkout`` with its own interpreter; its JSON lines."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [str(checkout / ".venv" / "bin" / "python"), *bench, "--out", out]
        proc = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} (in {checkout}) failed:\n{proc.stderr[-2000:]}")
    rows = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            if any(k in row for k in TIME_KEYS):
                rows.append(row)
    return rows


def case(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={row[k]}" for k in CASE_KEYS if k in row) or "case"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", type=Path, required=True, help="checkout A (the base), with its .venv")
    p.add_argument("--b", type=Path, required=True, help="checkout B (the change), with its .venv")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("out/ab"))
    p.add_argument("bench", nargs=argparse.REMAINDER, help="-- the benchmark and its flags (without --out)")
    args = p.parse_args(argv)
    bench = [a for a in args.bench if a != "--"]
    if not bench:
        p.error("give the benchmark after --, e.g. -- bench/allreduce.py --workers 4 --mib 64")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}  # case -> "a"/"b" -> rows, in round order
    for r in range(args.rounds):
        order = ("a", "b") if r % 2 == 0 else ("b", "a")
        for side in order:
            for row in run(args.a if side == "a" else args.b, bench):
                runs.setdefault(case(row), {"a": [], "b": []})[side].append(row)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    summary = []
    for name, sides in runs.items():
        key = next(k for k in TIME_KEYS if k in sides["a"][0])
        ta = [row[key] for row in sides["a"]]
        tb = [row[key] for row in sides["b"]]
        summary.append(
            {
                "case": name,
                "metric": key,
                "a_ms": round(statistics.median(ta), 2),
                "b_ms": round(statistics.median(tb), 2),
                "a_vs_gloo": round(statistics.median(row["ratio"] for row in sides["a"]), 3),
                "b_vs_gloo": round(statistics.median(row["ratio"] for row in sides["b"]), 3),
                "paired_b_over_a": round(statistics.median(y / x for x, y in zip(ta, tb, strict=False)), 3),
                "b_over_a_per_round": [round(y / x, 3) for x, y in zip(ta, tb, strict=False)],
                "rounds": min(len(ta), len(tb)),
            }
        )
        print(json.dumps(summary[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"a": str(args.a), "b": str(args.b), "bench": bench, "summary": summary, "runs": runs}
    (args.out / "ab.json").write_text(json.dumps(result, indent=1))
    _plot(summary, args.out / "ab.png")
    return 0


def _plot(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 2 * len(summary)), 3.5))
    for i, s in enumerate(summary):
        ax.scatter([i] * len(s["b_over_a_per_round"]), s["b_over_a_per_round"], color="tab:blue")
        ax.scatter([i], [s["paired_b_over_a"]], marker="D", color="tab:red")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(summary)), [s["case"] for s in summary], fontsize=7)
    ax.set_ylabel("B / A time per round (diamond: median)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
