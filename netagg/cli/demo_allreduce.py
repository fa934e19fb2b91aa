"""``netagg demo-allreduce`` (``make demo-allreduce``): W workers allreduce float32 and int32 tensors
through a switch on loopback.

Everything is real: the switch is a process serving UDP on 127.0.0.1, each worker is a process with
its own socket. Every result is checked against numpy (int32 exactly, float32 within the documented
bound), and the report says what went over the wire compared with a ring allreduce.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from netagg.cli._common import _int_range
from netagg.protocol import MAX_WORKERS

__all__ = ["add_parser", "run_demo"]

EXAMPLES = """\
examples:
  make demo-allreduce
  netagg demo-allreduce --workers 4 --mib 16 --out out/demo

It writes allreduce.json and allreduce.png into --out and exits 1 if any result is wrong."""


def add_parser(sub: Any) -> None:
    """Add ``netagg demo-allreduce`` to the subcommands ``sub``."""
    da = sub.add_parser(
        "demo-allreduce", help="W allreduces of 4 B-64 MiB through a switch, checked", epilog=EXAMPLES
    )
    da.add_argument(
        "--workers", type=_int_range(1, MAX_WORKERS), default=4, help="worker processes (default 4)"
    )
    da.add_argument("--mib", type=_int_range(1, 1024), default=64, help="largest tensor, MiB of float32")
    da.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for the JSON and PNG")
    da.set_defaults(run=_demo_allreduce)


def _demo_allreduce(args: argparse.Namespace) -> int:
    return run_demo(workers=args.workers, max_mib=args.mib, out_dir=args.out)


_REPEATS = 5


def _worker(rank: int, address: str, world: int, sizes: list[int]) -> list[dict[str, Any]]:
    from host_agent.worker import Worker
    from netagg.verify import check, inputs

    rows = []
    with Worker(address, rank, world, timeout=30) as w:
        for nbytes in sizes:
            n = max(1, nbytes // 4)
            for dtype in ("float32", "int32"):
                x = inputs(rank, (n,), dtype)
                before = w.stats.as_dict()
                y = w.allreduce(x)  # the first call is checked and not timed (warm-up)
                row: dict[str, Any] = {"bytes": n * 4, "dtype": dtype}
                if rank == 0:  # every rank computes the same sum; one of them checks it against numpy
                    row.update(check(world, (n,), dtype, y, w.elements))
                times = []
                for _ in range(_REPEATS):
                    t0 = time.perf_counter()
                    w.allreduce(x, out=y)
                    times.append(time.perf_counter() - t0)
                after = w.stats.as_dict()
                calls = _REPEATS + 1
                row["median_s"] = float(np.median(times))
                row["sent_per_call"] = (after["bytes_sent"] - before["bytes_sent"]) / calls
                row["received_per_call"] = (after["bytes_received"] - before["bytes_received"]) / calls
                row["retransmissions"] = after["retransmissions"] - before["retransmissions"]
                rows.append(row)
    return rows


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run_demo(workers: int = 4, max_mib: int = 64, out_dir: Path = Path("out/demo")) -> int:
    from netagg.cli.launch import SwitchProcess, free_port, run_workers

    sizes = [s for s in (4, 4096, 1 << 20, 16 << 20, 64 << 20, 256 << 20) if s <= max_mib << 20]
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"netagg demo: {workers} worker processes allreduce through a Python switch on 127.0.0.1")
    t0 = time.perf_counter()
    # One host: results go to a multicast group on loopback, sent once instead of once per worker.
    group = f"239.255.0.1:{free_port(udp=True)}"
    with SwitchProcess(workers, multicast=group) as sw:
        print(
            f"  switch pid {sw.pid} serving on {sw.address}; sizes {[_fmt_bytes(s) for s in sizes]}, "
            f"float32 and int32, {_REPEATS} timed calls each (+1 warm-up)",
            flush=True,
        )
        rows = run_workers(_worker, workers, sw.address, workers, sizes, timeout=600)
        stats = sw.stop()
    elapsed = time.perf_counter() - t0
    checked = rows[0]
    ok = True
    ring = 2 * (workers - 1) / workers
    print(
        f"\n{'size':>10} {'dtype':>7} {'median':>10} {'MB/s':>8}  {'check':<34} "
        f"{'sent/worker':>12} {'ring would':>11} {'retx':>5}"
    )
    for i, row in enumerate(checked):
        mbps = row["bytes"] / row["median_s"] / 1e6
        if row["dtype"] == "int32":
            verdict = "exact" if row["ok"] else "WRONG"
        else:
            verdict = (
                f"max err {row['max_err']:.2e} ({row['max_err_over_bound']:.2f} of bound)"
                if row["ok"]
                else "OUTSIDE BOUND"
            )
        ok &= row["ok"]
        retx = sum(r[i]["retransmissions"] for r in rows)
        print(
            f"{_fmt_bytes(row['bytes']):>10} {row['dtype']:>7} {row['median_s'] * 1e3:>8.2f}ms "
            f"{mbps:>8.0f}  {verdict:<34} {_fmt_bytes(row['sent_per_call']):>12} "
            f"{_fmt_bytes(ring * row['bytes']):>11} {retx:>5}"
        )
    counters = (stats or {}).get("counters", {})
    drops = {k: v for k, v in (stats or {}).get("drops", {}).items() if v}
    print(
        f"\nswitch: {counters.get('packets_in', '?')} packets in, {counters.get('packets_out', '?')} out, "
        f"{counters.get('completions', '?')} slot completions, {counters.get('repeats', 0)} repeats, "
        f"drops {drops or 'none'}"
    )
    print(
        "Each worker sends its tensor once and receives the sum once (plus 24 bytes of header per "
        f"packet); a ring allreduce sends 2(W-1)/W = {ring:.2f}x the tensor per worker."
    )
    report = {"workers": workers, "elapsed_s": elapsed, "rows": checked, "per_rank": rows, "switch": stats}
    path = out_dir / "allreduce.json"
    path.write_text(json.dumps(report, indent=1))
    _plot(checked, out_dir / "allreduce.png", workers)
    print(
        f"\n{'all results correct' if ok else 'SOME RESULTS WRONG'}; report: {path}, plot: "
        f"{out_dir / 'allreduce.png'} ({elapsed:.0f} s)"
    )
    return 0 if ok else 1


def _plot(rows: list[dict[str, Any]], path: Path, workers: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for dtype in ("float32", "int32"):
        pts = [(r["bytes"], r["median_s"] * 1e3) for r in rows if r["dtype"] == dtype]
        ax.loglog(*zip(*pts, strict=True), marker="o", label=dtype)
    ax.set_xlabel("tensor size (bytes)")
    ax.set_ylabel("median allreduce time (ms)")
    ax.set_title(f"netagg allreduce, {workers} workers, Python switch on loopback")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(run_demo())
