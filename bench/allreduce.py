"""netagg allreduce against torch.distributed's gloo allreduce, in the same run, on loopback.

For each W and size, W real processes on this machine run both, alternating call by call: netagg's
through a switch process, gloo's as a ring over TCP. Each rank times each call after a barrier; a call's
time is the slowest rank's, and the figures reported are medians over repetitions. Prints one JSON line
per case with ``ratio`` = netagg / gloo of the medians (below 1 means netagg is faster) and
``paired_ratio``, the median of the ratios of neighbouring calls, and writes results.json and a PNG.

    python bench/allreduce.py                 # W=2,4,8; 1-256 MiB; 16 KiB and 256 B packets
    python bench/allreduce.py --quick         # W=4; 1, 16, 64 MiB
    NETAGG_KERNELS=numpy python bench/allreduce.py ...   # the numpy versions of the per-element loops

``kernels`` in the JSON says which versions of the per-element loops ran (netagg/kernels.py): "c" where
the extension was built, "numpy" without it or with NETAGG_KERNELS=numpy (inherited by every process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netagg import kernels
from netagg.cli.launch import SwitchProcess, free_port, run_workers
from netagg.protocol import MAX_ELEMENTS

MIB = 1 << 20


def paired_rank(
    rank: int, address: str, port: int, world: int, nbytes: int, reps: int, warmup: int, sched_batch: bool
) -> dict[str, list[float]]:
    """netagg's allreduce and gloo's on the same tensor size in the same process, alternating call by
    call, so both see the same machine: its load drifts by tens of percent within a minute, which
    made separate runs disagree by more than the difference being measured."""
    import torch
    import torch.distributed as dist

    from host_agent.worker import Worker

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    x = np.random.default_rng(rank).standard_normal(nbytes // 4).astype(np.float32)
    t = torch.from_numpy(x.copy())
    calls = {"netagg": lambda: w.allreduce(x, out=x), "gloo": lambda: dist.all_reduce(t)}  # both in place
    times: dict[str, list[float]] = {"netagg": [], "gloo": []}
    try:
        with Worker(address, rank, world, timeout=60, sched_batch=sched_batch) as w:
            for i in range(warmup + reps):
                for name in ("netagg", "gloo") if i % 2 == 0 else ("gloo", "netagg"):
                    dist.barrier()
                    t0 = time.perf_counter()
                    calls[name]()
                    if i >= warmup:
                        times[name].append(time.perf_counter() - t0)
    finally:
        dist.destroy_process_group()
    return times


def reps_for(nbytes: int) -> int:
    return 20 if nbytes <= 4 * MIB else 10 if nbytes <= 64 * MIB else 5


def run_case(
    world: int, nbytes: int, elements: int, warmup: int, multicast: bool, sched_batch: bool = True
) -> dict[str, Any]:
    reps = reps_for(nbytes) if elements >= 1024 else 3
    group = f"239.255.0.2:{free_port(udp=True)}" if multicast else None
    with SwitchProcess(world, elements=elements, multicast=group) as sw:
        per_rank = run_workers(
            paired_rank,
            world,
            sw.address,
            free_port(),
            world,
            nbytes,
            reps,
            warmup,
            sched_batch,
            timeout=1800,
        )
        stats = sw.stop()
    # A call's time is its slowest rank's.
    slowest = {
        name: [max(ts) for ts in zip(*(r[name] for r in per_rank), strict=True)]
        for name in ("netagg", "gloo")
    }
    t_na, t_gl = statistics.median(slowest["netagg"]), statistics.median(slowest["gloo"])
    paired = statistics.median(a / b for a, b in zip(slowest["netagg"], slowest["gloo"], strict=True))
    counters = (stats or {}).get("counters", {})
    return {
        "workers": world,
        "mib": nbytes / MIB,
        "elements": elements,
        "sched_batch": sched_batch,
        "kernels": kernels.IMPLEMENTATION,  # "c", or "numpy" (NETAGG_KERNELS=numpy)
        "reps": reps,
        "netagg_ms": round(t_na * 1e3, 3),
        "gloo_ms": round(t_gl * 1e3, 3),
        "ratio": round(t_na / t_gl, 3),
        "paired_ratio": round(paired, 3),
        "netagg_gbps": round(nbytes / t_na / 1e9, 3),
        "gloo_gbps": round(nbytes / t_gl / 1e9, 3),
        "switch_repeats": counters.get("repeats", 0),
        "switch_packets_in": counters.get("packets_in", 0),
    }


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worlds = sorted({r["workers"] for r in rows})
    fig, axes = plt.subplots(1, len(worlds), figsize=(5 * len(worlds), 4), squeeze=False)
    for ax, world in zip(axes[0], worlds, strict=True):
        for elements in sorted({r["elements"] for r in rows}, reverse=True):
            pts = [
                (r["mib"], r["netagg_ms"])
                for r in rows
                if r["workers"] == world and r["elements"] == elements
            ]
            color = "tab:blue" if elements == MAX_ELEMENTS else "tab:orange"  # the same in every panel
            if pts:
                ax.loglog(
                    *zip(*pts, strict=True), "o-", color=color, label=f"netagg, {elements * 4} B payload"
                )
        gl = sorted(
            {
                (r["mib"], r["gloo_ms"])
                for r in rows
                if r["workers"] == world and r["elements"] == MAX_ELEMENTS
            }
        )
        if gl:
            ax.loglog(*zip(*gl, strict=True), "s--", color="black", label="gloo allreduce (ring)")
        ax.set_title(f"W={world}")
        ax.set_xlabel("tensor (MiB of float32)")
        ax.set_ylabel("median time per allreduce (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"netagg vs gloo on loopback, {os.cpu_count()} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="W=4 and 1, 16, 64 MiB only")
    p.add_argument("--workers", type=int, nargs="*", help="worker counts (default 2 4 8)")
    p.add_argument("--mib", type=int, nargs="*", help="sizes in MiB (default 1 4 16 64 256)")
    p.add_argument(
        "--small-mib",
        type=int,
        nargs="*",
        default=None,
        help="sizes run also with 64-element (256 B, SwitchML) packets (default 1 16 64, W=4 only)",
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--unicast",
        action="store_true",
        help="send results once per worker instead of once to a multicast group on loopback",
    )
    p.add_argument(
        "--no-sched-batch",
        action="store_true",
        help="workers' I/O threads under the normal policy (Worker(sched_batch=False)), to compare",
    )
    p.add_argument("--out", type=Path, default=Path("out/bench"))
    p.add_argument("--plot-only", action="store_true", help="redraw the PNG from OUT/results.json")
    args = p.parse_args(argv)
    if args.plot_only:
        plot(json.loads((args.out / "results.json").read_text())["rows"], args.out / "allreduce.png")
        return 0
    worlds = args.workers or ([4] if args.quick else [2, 4, 8])
    sizes = args.mib or ([1, 16, 64] if args.quick else [1, 4, 16, 64, 256])
    small = args.small_mib if args.small_mib is not None else ([1] if args.quick else [1, 16])
    cases = [(w, s, MAX_ELEMENTS) for w in worlds for s in sizes]
    cases += [(4, s, 64) for s in small if 4 in worlds]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    t_start = time.perf_counter()
    for i, (world, mib, elements) in enumerate(cases, 1):
        print(
            f"[{i}/{len(cases)}] W={world} {mib} MiB, {elements} elements/packet ...",
            file=sys.stderr,
            flush=True,
        )
        row = run_case(world, mib * MIB, elements, args.warmup, not args.unicast, not args.no_sched_batch)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "machine": {"cpus": os.cpu_count()},
        "elapsed_s": round(time.perf_counter() - t_start, 1),
        "rows": rows,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    plot(rows, args.out / "allreduce.png")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'allreduce.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
