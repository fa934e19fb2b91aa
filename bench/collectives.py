"""torch.distributed collectives over the netagg backend against gloo, in the same processes and run.

For each W, W real processes on this machine start the default process group over ``--backend``
(netagg: through a ``netagg switch --workers W`` process this starts, found in $NETAGG_SWITCH) and a
second group over gloo (``new_group(backend="gloo")``, a ring over TCP). For every collective, element
type and size, each rank calls it on one group and then the other, alternating which goes first, after
a barrier on the gloo group; a call's time is its slowest rank's. Prints one JSON line per case with
the medians, ``ratio`` = netagg / gloo of the medians (below 1: netagg is faster) and ``paired_ratio``,
the median of the ratios of neighbouring calls, and the bytes each rank sent and received through the
switch per call. Then an FSDP2 training step of examples/train_gpt.py's model: two copies, one sharded
over each group, trained in alternating steps. Writes collectives.json, collectives.png and fsdp.png.

The size S of a case is the full tensor: all_reduce's and broadcast's tensor, reduce_scatter's input
and all_gather's output (each rank's shard is S/W), as nccl-tests counts it. Collectives are called by
their torch 2.13 names: ``reduce_scatter_single`` and ``all_gather_single`` are what
``reduce_scatter_tensor`` and ``all_gather_into_tensor`` became (the old names forward to them).

    python bench/collectives.py                       # quick: W=4; 1 and 16 MiB; 5 rounds; 6 FSDP steps
    python bench/collectives.py --full                # W=2,4,8; 1, 4, 16, 64 MiB; 10 rounds; 10 steps
    python bench/collectives.py --workers 4 --sizes 64 --ops reduce_scatter all_gather --dtypes fp32
    python bench/collectives.py --workers 4 --ops --fsdp-steps 10 --fsdp-bf16-comm   # FSDP2 alone, bf16
    python bench/collectives.py --backend gloo ...    # gloo in both places: a check of the harness
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

from netagg.cli.launch import SwitchProcess, free_port, run_workers

MIB = 1 << 20
OPS = ("all_reduce", "reduce_scatter", "all_gather", "broadcast")
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
GROUPS = ("netagg", "gloo")  # the default group (over --backend) and the gloo group
TRAFFIC = ("bytes_sent", "bytes_received")


def _traffic(group: Any) -> dict[str, float]:
    """The netagg group's counters of its worker's traffic and of its collectives ({} for gloo)."""
    stats = getattr(group, "stats", None)
    if not callable(stats):
        return {}
    s = stats()
    return {
        **{k: float(s.get("traffic", {}).get(k, 0)) for k in TRAFFIC},
        "switch_ops": float(sum(s.get("switch_ops", {}).values())),
        "fallbacks": float(sum(s.get("fallbacks", {}).values())),
    }


def _call(op: str, group: Any, bufs: dict[str, Any]) -> None:
    import torch.distributed as dist

    if op == "all_reduce":
        bufs["t"].copy_(bufs["src"])  # fresh values each call (repeated sums would grow without bound)
        dist.all_reduce(bufs["t"], group=group)
    elif op == "reduce_scatter":
        dist.reduce_scatter_single(bufs["out"], bufs["src"], group=group)
    elif op == "all_gather":
        dist.all_gather_single(bufs["out"], bufs["src"], group=group)
    else:
        dist.broadcast(bufs["t"], src=0, group=group)


def _buffers(op: str, dtype: Any, nbytes: int, world: int, rank: int) -> dict[str, Any]:
    import torch

    n = nbytes // torch.empty((), dtype=dtype).element_size()
    g = torch.Generator().manual_seed(rank)
    if op == "all_gather":
        src = torch.randn(n // world, generator=g).to(dtype)
        return {"src": src, "out": torch.empty(n, dtype=dtype)}
    src = torch.randn(n, generator=g).to(dtype)
    if op == "reduce_scatter":
        return {"src": src, "out": torch.empty(n // world, dtype=dtype)}
    return {"src": src, "t": src.clone()}


def _timed(barrier: Any, fn: Any, *args: Any) -> float:
    """Seconds ``fn(*args)`` took at this rank, started after ``barrier()``."""
    barrier()
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def bench_rank(
    rank: int,
    world: int,
    port: int,
    switch: str | None,
    backend: str,
    cases: list[tuple[str, str, float]],
    rounds: int,
    warmup: int,
    fsdp_steps: int,
    fsdp_bf16: bool = False,
) -> dict[str, Any]:
    """Every case on both groups, alternating call by call (the machine's load drifts by tens of
    percent within a minute, so separate runs would disagree by more than the difference measured),
    then the FSDP2 steps."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    if switch is not None:
        os.environ["NETAGG_SWITCH"] = switch
        import host_agent  # noqa: F401  (registers the netagg backend)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    groups = {"netagg": dist.group.WORLD, "gloo": dist.new_group(backend="gloo")}
    gloo = groups["gloo"]

    def barrier() -> None:
        dist.barrier(group=gloo)

    out: dict[str, Any] = {"cases": [], "fsdp": None}
    try:
        for i, (op, dname, mib) in enumerate(cases):
            if rank == 0:
                print(
                    f"  W={world} [{i + 1}/{len(cases)}] {op} {dname} {mib:g} MiB",
                    file=sys.stderr,
                    flush=True,
                )
            bufs = {
                name: _buffers(op, getattr(torch, DTYPES[dname]), int(mib * MIB), world, rank)
                for name in GROUPS
            }
            times: dict[str, list[float]] = {name: [] for name in GROUPS}
            before = _traffic(groups["netagg"])
            for r in range(warmup + rounds):
                for name in GROUPS if r % 2 == 0 else GROUPS[::-1]:
                    t = _timed(barrier, _call, op, groups[name], bufs[name])
                    if r >= warmup:
                        times[name].append(t)
            after = _traffic(groups["netagg"])
            calls = warmup + rounds
            delta = {k: (after[k] - before[k]) / calls for k in after}
            out["cases"].append({"times": times, "per_call": delta})
            del bufs
        if fsdp_steps:
            out["fsdp"] = _fsdp_steps(rank, groups, barrier, fsdp_steps, warmup, fsdp_bf16)
    finally:
        dist.destroy_process_group()
    return out


def _gpt_module() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "train_gpt.py"
    spec = importlib.util.spec_from_file_location("train_gpt", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fsdp_steps(
    rank: int, groups: dict[str, Any], barrier: Any, steps: int, warmup: int, bf16: bool
) -> dict[str, Any]:
    """examples/train_gpt.py's model twice, each sharded with FSDP2 over one of the groups; forward,
    backward and AdamW step in bf16 autocast, alternating which model goes first. ``bf16``: FSDP2's
    collectives in bfloat16 too."""
    import torch
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    gpt = _gpt_module()
    args = gpt.parse(["--backend", "gloo"])  # the example's default model, batch and context
    data = gpt.Data(args.seed, rank)
    models, opts = {}, {}
    for name, group in groups.items():
        torch.manual_seed(args.seed)
        model = gpt.GPT(len(data.chars), args.context, args.d_model, args.layers, args.heads)
        mesh = DeviceMesh.from_group(group, "cpu")
        low = torch.bfloat16 if bf16 else None
        mp = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=low)
        for block in model.blocks:
            fully_shard(block, mesh=mesh, mp_policy=mp)
        models[name] = fully_shard(model, mesh=mesh, mp_policy=mp)
        opts[name] = torch.optim.AdamW(model.parameters(), lr=args.lr)

    def step(name: str, x: Any, y: Any) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = models[name](x, y)
        loss.backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {name: [] for name in GROUPS}
    before = _traffic(groups["netagg"])
    for i in range(warmup + steps):
        x, y = data.batch(args.batch_size, args.context)
        for name in GROUPS if i % 2 == 0 else GROUPS[::-1]:
            t = _timed(barrier, step, name, x, y)
            if i >= warmup:
                times[name].append(t)
    after = _traffic(groups["netagg"])
    return {
        "times": times,
        "per_step": {k: (after[k] - before[k]) / (warmup + steps) for k in after},
        "parameters": sum(p.numel() for p in models["gloo"].parameters()),
        "tokens_per_step": args.batch_size * args.context,
    }


def _summary(times: dict[str, list[list[float]]]) -> dict[str, float]:
    """Medians of the slowest rank's times and the median of the paired ratios."""
    slowest = {name: [max(ts) for ts in zip(*times[name], strict=True)] for name in GROUPS}
    ours, theirs = statistics.median(slowest["netagg"]), statistics.median(slowest["gloo"])
    paired = statistics.median(a / b for a, b in zip(slowest["netagg"], slowest["gloo"], strict=True))
    return {"netagg": ours, "gloo": theirs, "ratio": ours / theirs, "paired_ratio": paired}


def run_world(
    world: int,
    backend: str,
    cases: list[tuple[str, str, float]],
    rounds: int,
    warmup: int,
    fsdp_steps: int,
    fsdp_bf16: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """One switch (for netagg) and W processes for every case at this W; the rows of JSON."""
    sw = SwitchProcess(world) if backend == "netagg" else None
    try:
        per_rank = run_workers(
            bench_rank,
            world,
            world,
            free_port(),
            sw.address if sw else None,
            backend,
            cases,
            rounds,
            warmup,
            fsdp_steps,
            fsdp_bf16,
            timeout=7200,
        )
    finally:
        switch_stats = sw.stop() if sw else None
    rows = []
    for i, (op, dname, mib) in enumerate(cases):
        s = _summary({name: [r["cases"][i]["times"][name] for r in per_rank] for name in GROUPS})
        per_call = [r["cases"][i]["per_call"] for r in per_rank]
        nbytes = mib * MIB
        row: dict[str, Any] = {
            "workers": world,
            "op": op,
            "dtype": dname,
            "mib": mib,
            "backend": backend,
            "rounds": rounds,
            "netagg_ms": round(s["netagg"] * 1e3, 3),
            "gloo_ms": round(s["gloo"] * 1e3, 3),
            "ratio": round(s["ratio"], 3),
            "paired_ratio": round(s["paired_ratio"], 3),
            "netagg_gbps": round(nbytes / s["netagg"] / 1e9, 3),
            "gloo_gbps": round(nbytes / s["gloo"] / 1e9, 3),
        }
        if per_call[0]:
            # per call and rank, as a fraction of S: what went up and what came back through the switch
            row["sent_per_call"] = round(statistics.fmean(p["bytes_sent"] for p in per_call) / nbytes, 3)
            row["received_per_call"] = round(
                statistics.fmean(p["bytes_received"] for p in per_call) / nbytes, 3
            )
            row["fallbacks"] = sum(p["fallbacks"] for p in per_call)
        rows.append(row)
    fsdp = None
    if per_rank[0]["fsdp"] is not None:
        f0 = per_rank[0]["fsdp"]
        s = _summary({name: [r["fsdp"]["times"][name] for r in per_rank] for name in GROUPS})
        tokens = world * f0["tokens_per_step"]
        fsdp = {
            "workers": world,
            "op": "fsdp2_gpt_step",
            "dtype": "bf16" if fsdp_bf16 else "fp32",  # of FSDP2's collectives (compute: bf16 autocast)
            "backend": backend,
            "parameters": f0["parameters"],
            "steps": len(f0["times"]["gloo"]),
            "netagg_step_ms": round(s["netagg"] * 1e3, 1),
            "gloo_step_ms": round(s["gloo"] * 1e3, 1),
            "ratio": round(s["ratio"], 3),
            "paired_ratio": round(s["paired_ratio"], 3),
            "netagg_tokens_per_s": round(tokens / s["netagg"]),
            "gloo_tokens_per_s": round(tokens / s["gloo"]),
        }
        if f0["per_step"]:
            per_step = [r["fsdp"]["per_step"] for r in per_rank]
            fsdp["sent_mib_per_step"] = round(statistics.fmean(p["bytes_sent"] for p in per_step) / MIB, 2)
            fsdp["received_mib_per_step"] = round(
                statistics.fmean(p["bytes_received"] for p in per_step) / MIB, 2
            )
            fsdp["switch_ops_per_step"] = round(per_step[0]["switch_ops"], 1)
            fsdp["fallbacks_per_step"] = round(per_step[0]["fallbacks"], 1)
        fsdp["switch_drops"] = sum((switch_stats or {}).get("drops", {}).values()) if switch_stats else None
    return rows, fsdp


def plot(rows: list[dict[str, Any]], fsdp: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [op for op in OPS if any(r["op"] == op for r in rows)]
    worlds = sorted({r["workers"] for r in rows})
    if rows:
        fig, axes = plt.subplots(
            len(ops), len(worlds), figsize=(4.5 * len(worlds), 3.2 * len(ops)), squeeze=False
        )
        for i, op in enumerate(ops):
            for j, world in enumerate(worlds):
                ax = axes[i][j]
                for dname, color in (("fp32", "tab:blue"), ("bf16", "tab:orange")):
                    sel = sorted(
                        (r["mib"], r["netagg_ms"], r["gloo_ms"])
                        for r in rows
                        if r["op"] == op and r["workers"] == world and r["dtype"] == dname
                    )
                    if sel:
                        mib, ours, theirs = zip(*sel, strict=True)
                        ax.loglog(mib, ours, "o-", color=color, label=f"{rows[0]['backend']} {dname}")
                        ax.loglog(mib, theirs, "s--", color=color, alpha=0.7, label=f"gloo {dname}")
                ax.set_title(f"{op}, W={world}", fontsize=10)
                ax.set_xlabel("S (MiB)")
                ax.set_ylabel("median time per call (ms)")
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=7)
        fig.suptitle(f"collectives, {rows[0]['backend']} vs gloo on loopback, {os.cpu_count()} CPUs")
        fig.tight_layout()
        fig.savefig(out / "collectives.png", dpi=100)
        plt.close(fig)
    if fsdp:
        fig, ax = plt.subplots(figsize=(max(4, 2.2 * len(fsdp)), 3.8))
        xs = range(len(fsdp))
        ax.bar([x - 0.2 for x in xs], [f["netagg_step_ms"] for f in fsdp], 0.4, label=fsdp[0]["backend"])
        ax.bar([x + 0.2 for x in xs], [f["gloo_step_ms"] for f in fsdp], 0.4, label="gloo")
        ax.set_xticks(list(xs), [f"W={f['workers']}\n{f['paired_ratio']:.2f}x paired" for f in fsdp])
        ax.set_ylabel("median time per training step (ms)")
        ax.set_title(f"FSDP2 step, GPT of {fsdp[0]['parameters'] / 1e6:.1f} M parameters, bf16 autocast")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "fsdp.png", dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="W=2,4,8; 1, 4, 16, 64 MiB; 10 rounds; 10 FSDP steps")
    p.add_argument("--workers", type=int, nargs="+", help="worker counts (default 4; --full: 2 4 8)")
    p.add_argument("--sizes", type=float, nargs="+", help="S in MiB (default 1 16; --full: 1 4 16 64)")
    p.add_argument(
        "--ops",
        nargs="*",
        choices=OPS,
        default=list(OPS),
        help="collectives (default all; none: FSDP2 alone)",
    )
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES), help="default both")
    p.add_argument("--rounds", type=int, help="timed calls per case and group (default 5; --full: 10)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls (and FSDP steps) first")
    p.add_argument(
        "--fsdp-steps", type=int, help="timed FSDP2 steps per group (default 6; --full: 10; 0: none)"
    )
    p.add_argument(
        "--fsdp-bf16-comm",
        action="store_true",
        help="FSDP2 all-gathers parameters and reduce-scatters gradients in bfloat16 (MixedPrecisionPolicy)",
    )
    p.add_argument("--backend", default="netagg", help="the default group's backend (default netagg)")
    p.add_argument("--out", type=Path, default=Path("out/bench"))
    p.add_argument("--plot-only", action="store_true", help="redraw the PNGs from OUT/collectives.json")
    args = p.parse_args(argv)
    if args.plot_only:
        saved = json.loads((args.out / "collectives.json").read_text())
        plot(saved["rows"], saved["fsdp"], args.out)
        return 0
    worlds = args.workers or ([2, 4, 8] if args.full else [4])
    sizes = args.sizes or ([1, 4, 16, 64] if args.full else [1, 16])
    rounds = args.rounds or (10 if args.full else 5)
    fsdp_steps = args.fsdp_steps if args.fsdp_steps is not None else (10 if args.full else 6)
    if min(worlds) < 2 or rounds < 1 or fsdp_steps < 0 or min(sizes) <= 0:
        p.error("--workers at least 2, --rounds at least 1, --fsdp-steps at least 0, --sizes above 0")
    for world in worlds:
        for mib in sizes:
            if int(mib * MIB) % (world * 4):  # a whole fp32 element per rank
                p.error(f"{mib} MiB does not split into {world} shards of whole float32 elements")
    cases = [(op, d, mib) for op in args.ops for d in args.dtypes for mib in sizes]
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    fsdp: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for i, world in enumerate(worlds, 1):
        print(
            f"[{i}/{len(worlds)}] W={world}: {len(cases)} cases x {rounds} rounds"
            f"{f', {fsdp_steps} FSDP2 steps' if fsdp_steps else ''}; {args.backend} against gloo ...",
            file=sys.stderr,
            flush=True,
        )
        world_rows, world_fsdp = run_world(
            world, args.backend, cases, rounds, args.warmup, fsdp_steps, args.fsdp_bf16_comm
        )
        for row in world_rows:
            print(json.dumps(row), flush=True)
        rows += world_rows
        if world_fsdp is not None:
            print(json.dumps(world_fsdp), flush=True)
            fsdp.append(world_fsdp)
    result = {
        "machine": {"cpus": os.cpu_count()},
        "elapsed_s": round(time.perf_counter() - t_start, 1),
        "rows": rows,
        "fsdp": fsdp,
    }
    (args.out / "collectives.json").write_text(json.dumps(result, indent=1))
    plot(rows, fsdp, args.out)
    print(f"wrote collectives.json, collectives.png and fsdp.png in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
