"""``netagg demo --gpt`` (``make demo-gpt``; also ``examples/train_gpt.py --compare``): a small GPT
trained with FSDP2 in bf16 autocast over the ``netagg`` process-group backend, against the same run
over gloo.

Starts ``netagg switch --workers W`` (a static job, which the workers find in ``$NETAGG_SWITCH``), runs
``examples/train_gpt.py --backend netagg`` under torchrun on W processes, stops the switch (its counters
go into the report), then runs the same training over gloo: same seeds, same data. Ends with a table
(losses, time per step, tokens per second, bytes per rank through the switch), gpt.json and gpt.png.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from netagg.cli.demo import EXAMPLE, _mib, _torchrun

__all__ = ["GPT_EXAMPLE", "loss_gap", "run_gpt_demo"]

GPT_EXAMPLE = EXAMPLE.parent / "train_gpt.py"


def loss_gap(ours: dict[str, Any], theirs: dict[str, Any]) -> float:
    """The relative difference of the final held-out losses, ``ours / theirs - 1``."""
    return float(ours["final_eval_loss"] / theirs["final_eval_loss"] - 1.0)


def _backend_registered(name: str) -> bool:
    import torch.distributed as dist

    if name == "netagg":
        try:
            import host_agent  # noqa: F401  (registers the backend, where this version has it)
        except ImportError:
            return False
    return name.lower() in dist.Backend.backend_list


def _per_rank(run: dict[str, Any], key: str) -> list[float]:
    """``key`` of each rank's backend counters; [] where the backend keeps no such counter (gloo)."""
    stats = run.get("backend_stats", [])
    return [float(s[key]) for s in stats] if stats and all(key in s for s in stats) else []


def run_gpt_demo(
    workers: int = 4,
    out_dir: Path = Path("out/demo"),
    flags: Sequence[str] = (),
    *,
    backend: str = "netagg",
    tolerance: float = 0.01,
) -> int:
    """Train on ``backend`` (through a switch this starts, for netagg), then on gloo, with
    examples/train_gpt.py's ``flags``; write gpt.json and gpt.png into ``out_dir``. Returns 0 if the
    final held-out losses are within ``tolerance`` (relative) of each other, else 1."""
    from netagg.cli.launch import SwitchProcess

    if not GPT_EXAMPLE.exists():
        raise FileNotFoundError(f"{GPT_EXAMPLE} not found: run the demo from a netagg checkout")
    if not _backend_registered(backend):
        raise ValueError(
            f"no torch.distributed backend {backend!r} here (`import host_agent` registers netagg)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"netagg demo --gpt: a small GPT, FSDP2 in bf16 autocast, {workers} processes; every collective "
        f"over the {backend} backend"
        f"{' through a Python switch on 127.0.0.1' if backend == 'netagg' else ''}, then over gloo"
    )
    t0 = time.perf_counter()
    switch_stats = None
    ours_out = out_dir / ("gpt_gloo_a.json" if backend == "gloo" else f"gpt_{backend}.json")
    train_flags = ["--backend", backend, *flags]
    if backend == "netagg":
        with SwitchProcess(workers) as sw:
            print(f"  switch pid {sw.pid} on {sw.address}", flush=True)
            ours = _torchrun(
                backend,
                workers,
                train_flags,
                ours_out,
                script=GPT_EXAMPLE,
                env={"NETAGG_SWITCH": sw.address},
            )
            switch_stats = sw.stop()
    else:
        ours = _torchrun(backend, workers, train_flags, ours_out, script=GPT_EXAMPLE)
    gloo_flags = ["--backend", "gloo", *flags]
    theirs = _torchrun("gloo", workers, gloo_flags, out_dir / "gpt_gloo.json", script=GPT_EXAMPLE)

    gap = loss_gap(ours, theirs)
    sent, received = _per_rank(ours, "bytes_sent"), _per_rank(ours, "bytes_received")
    steps = ours["steps"]
    rows = [
        (
            "held-out loss",
            f"{ours['final_eval_loss']:.4f}",
            f"{theirs['final_eval_loss']:.4f}",
            f"{gap:+.2%}",
        ),
        ("train loss, last 10", f"{ours['final_train_loss']:.4f}", f"{theirs['final_train_loss']:.4f}", ""),
        (
            "median time per step",
            f"{ours['median_step_ms']:.0f} ms",
            f"{theirs['median_step_ms']:.0f} ms",
            f"ratio {ours['median_step_ms'] / theirs['median_step_ms']:.2f}",
        ),
        ("tokens/s", f"{ours['tokens_per_s']:.0f}", f"{theirs['tokens_per_s']:.0f}", ""),
    ]
    if sent:
        rows += [
            (
                "sent per rank",
                _mib(statistics.fmean(sent)),
                "",
                f"{_mib(statistics.fmean(sent) / steps)}/step",
            ),
            (
                "received per rank",
                _mib(statistics.fmean(received)),
                "",
                f"{_mib(statistics.fmean(received) / steps)}/step",
            ),
        ]
    print(f"\n{'':<24}{backend:>12}{'gloo':>12}")
    for name, a, b, note in rows:
        print(f"{name:<24}{a:>12}{b:>12}  {note}")
    counters = (switch_stats or {}).get("counters", {})
    print(
        f"\n{ours['parameters']:,} parameters ({4 * ours['parameters'] / (1 << 20):.1f} MiB in float32), "
        f"{steps} steps of {ours['world_size']} x {ours['tokens_per_step'] // ours['world_size']} tokens"
        + (
            f"; the switch received {counters.get('packets_in', 0):,} packets and dropped "
            f"{sum((switch_stats or {}).get('drops', {}).values())}"
            if switch_stats
            else ""
        )
    )
    report = {
        "workers": workers,
        "backend": backend,
        "flags": list(flags),
        backend: ours,
        "gloo": theirs,
        "switch": switch_stats,
        "loss_gap": gap,
        "tolerance": tolerance,
        "elapsed_s": time.perf_counter() - t0,
    }
    (out_dir / "gpt.json").write_text(json.dumps(report, indent=1))
    plot(ours, theirs, out_dir / "gpt.png")
    ok = abs(gap) <= tolerance
    print(
        f"{'held-out loss within' if ok else 'HELD-OUT LOSS DIFFERS FROM GLOO BY MORE THAN'} {tolerance:.0%} "
        f"of gloo's; report {out_dir / 'gpt.json'}, plot {out_dir / 'gpt.png'} "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    return 0 if ok else 1


def plot(ours: dict[str, Any], theirs: dict[str, Any], path: Path) -> None:
    """Loss curves, step times, and the bytes each rank sent and received through the switch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    for run, style, color in ((ours, "-", "tab:blue"), (theirs, "--", "black")):
        name = run["backend"]
        steps = range(1, len(run["train_loss"]) + 1)
        ax1.plot(steps, run["train_loss"], style, color=color, lw=0.9, label=f"{name} train")
        ev = run["eval"]
        ax1.plot(
            [e["step"] for e in ev],
            [e["loss"] for e in ev],
            "o" + style,
            color=color,
            label=f"{name} held-out",
        )
        ax2.plot(steps, [1e3 * t for t in run["step_times_s"]], style, color=color, lw=0.8, label=name)
    ax1.set_xlabel("step")
    ax1.set_ylabel("cross-entropy (nats per character)")
    ax1.set_title(f"loss; final held-out {ours['final_eval_loss']:.3f} vs {theirs['final_eval_loss']:.3f}")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("step")
    ax2.set_ylabel("time per step, slowest rank (ms)")
    ax2.set_title(
        f"{ours['tokens_per_s']:.0f} vs {theirs['tokens_per_s']:.0f} tokens/s "
        f"({ours['backend']} vs {theirs['backend']})"
    )
    ax2.set_yscale("log")
    ax2.legend(fontsize=8)
    sent, received = _per_rank(ours, "bytes_sent"), _per_rank(ours, "bytes_received")
    if sent:
        ranks = range(len(sent))
        ax3.bar([r - 0.2 for r in ranks], [b / (1 << 20) for b in sent], 0.4, label="sent")
        ax3.bar([r + 0.2 for r in ranks], [b / (1 << 20) for b in received], 0.4, label="received")
        ax3.set_xticks(list(ranks))
        ax3.legend(fontsize=8)
    else:
        ax3.text(0.5, 0.5, f"no switch counters from {ours['backend']}", ha="center", transform=ax3.transAxes)
    ax3.set_xlabel("rank")
    ax3.set_ylabel("MiB through the switch")
    ax3.set_title(f"traffic per rank, {ours['steps']} steps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
