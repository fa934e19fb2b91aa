"""Time per DDP training step: netagg's communication hook against DDP's default gloo allreduce.

Both in the same W real processes on loopback: each rank trains two replicas of a 25 M-parameter MLP
(1024-4096-4096-1024), batch 32 per rank, SGD, one with netagg's hook and one with DDP's default gloo
allreduce, in alternating steps, so both see the same load. A step is forward + backward (with the
gradient allreduce) + optimizer step; its time is the slowest rank's; the figures are medians over the
steps after warm-up. Prints one JSON line per case with ratio = netagg / gloo (of the medians) and
paired_ratio (the median of each step pair's ratio), and writes ddp.json and ddp.png.

    python bench/ddp.py [--workers 2 4] [--steps 16] [--out out/bench]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netagg import kernels
from netagg.cli.launch import SwitchProcess, free_port, run_workers


def make_model() -> Any:
    import torch

    layers = [torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 4096), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(4096, 1024))


def step_rank(
    rank: int, world: int, port: int, switch: str, steps: int, warmup: int
) -> dict[str, list[float]]:
    """Two DDP replicas of the same model in this process, one with netagg's hook and one with DDP's
    default gloo allreduce, trained in alternating steps: each netagg step has a gloo step beside it
    under the same conditions (the machine's load drifts by tens of percent within a minute)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from host_agent.ddp import NetAggState, netagg_hook

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    models = {}
    for name in ("netagg", "gloo"):
        torch.manual_seed(0)
        models[name] = DDP(make_model())
    state = NetAggState(switch=switch, timeout=60)
    models["netagg"].register_comm_hook(state, netagg_hook)
    opts = {name: torch.optim.SGD(m.parameters(), lr=1e-3) for name, m in models.items()}
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(32, 1024, generator=g), torch.randn(32, 1024, generator=g)
    times: dict[str, list[float]] = {"netagg": [], "gloo": []}
    for i in range(warmup + steps):
        order = ("netagg", "gloo") if i % 2 == 0 else ("gloo", "netagg")
        for name in order:
            dist.barrier()
            t0 = time.perf_counter()
            opts[name].zero_grad()
            torch.nn.functional.mse_loss(models[name](x), y).backward()
            opts[name].step()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    state.close()
    assert state.summary()["gloo_buckets"] == 0, f"the switch did not serve every bucket: {state.summary()}"
    dist.destroy_process_group()
    return times


def median_step(per_rank: list[list[float]]) -> float:
    return statistics.median(max(ts) for ts in zip(*per_rank, strict=True))


def run(world: int, steps: int, warmup: int) -> dict[str, Any]:
    with SwitchProcess(world, multicast=f"239.255.0.4:{free_port(udp=True)}") as sw:
        per_rank = run_workers(step_rank, world, world, free_port(), sw.address, steps, warmup, timeout=1800)
    slowest = {
        name: [max(ts) for ts in zip(*(r[name] for r in per_rank), strict=True)]
        for name in ("netagg", "gloo")
    }
    ours, theirs = statistics.median(slowest["netagg"]), statistics.median(slowest["gloo"])
    paired = statistics.median(a / b for a, b in zip(slowest["netagg"], slowest["gloo"], strict=True))
    return {
        "workers": world,
        "kernels": kernels.IMPLEMENTATION,  # "c", or "numpy" (NETAGG_KERNELS=numpy)
        "parameters": sum(p.numel() for p in make_model().parameters()),
        "steps": steps,
        "netagg_step_ms": round(ours * 1e3, 1),
        "gloo_step_ms": round(theirs * 1e3, 1),
        "ratio": round(ours / theirs, 3),
        "paired_ratio": round(paired, 3),
    }


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["netagg_step_ms"] for r in rows], 0.4, label="netagg hook")
    ax.bar([x + 0.2 for x in xs], [r["gloo_step_ms"] for r in rows], 0.4, label="gloo (DDP default)")
    ax.set_xticks(list(xs), [f"W={r['workers']}\n{r['ratio']:.2f}x" for r in rows])
    ax.set_ylabel("median time per training step (ms)")
    ax.set_title(f"DDP, 25 M-parameter MLP, loopback, {os.cpu_count()} CPUs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="*", default=[2, 4])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("out/bench"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, world in enumerate(args.workers, 1):
        print(
            f"[{i}/{len(args.workers)}] W={world}: netagg hook and gloo, alternating steps ...",
            file=sys.stderr,
            flush=True,
        )
        rows.append(run(world, args.steps, args.warmup))
        print(json.dumps(rows[-1]), flush=True)
    (args.out / "ddp.json").write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=1))
    plot(rows, args.out / "ddp.png")
    print(f"wrote {args.out / 'ddp.json'} and {args.out / 'ddp.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
