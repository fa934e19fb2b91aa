"""``netagg experiment``: a topology, its switches and an allreduce sweep in one command.

For each loss level the topology is built in network namespaces (mininet_topos.netns), the Python
switch runs as a raw-Ethernet switch node on every switch (aggregating as the topology's tree), and
every host runs ``netagg allreduce`` for each size, checked against numpy; optionally for several
sizes of the topology (more hosts per leaf: more workers). Times are the slowest host's median over
the repetitions. Writes ``experiment.json`` and ``experiment.png`` (time vs size per loss level, time
vs loss per size, time vs workers per size) into the output folder, printing progress as it goes.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["run_experiment"]


def run_experiment(
    topo_name: str,
    topo_args: dict[str, int] | list[dict[str, int]],
    sizes_mib: list[float],
    losses: list[float],
    out_dir: Path,
    *,
    repeat: int = 3,
    elements: int = 2000,
    slots: int = 64,
) -> int:
    from mininet_topos import TOPOS

    shapes = topo_args if isinstance(topo_args, list) else [topo_args]
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    total = len(shapes) * len(losses) * len(sizes_mib)
    done = 0
    t_start = time.monotonic()
    base = TOPOS[topo_name](**shapes[-1])
    base.write(out_dir / "topology.json")
    print(f"netagg experiment: {topo_name} {shapes}; {total} cases into {out_dir}", flush=True)
    for shape in shapes:
        done = _sweep(
            TOPOS[topo_name](**shape), sizes_mib, losses, repeat, elements, slots, runs, done, total, t_start
        )
    summary = {
        "topology": base.name,
        "hosts": len(base.hosts),
        "switches": len(base.switches),
        "shapes": shapes,
        "elements_per_packet": elements,
        "slots": slots,
        "repeat": repeat,
        "runs": runs,
    }
    (out_dir / "experiment.json").write_text(json.dumps(summary, indent=2))
    _plot(summary, out_dir / "experiment.png")
    print(f"wrote {out_dir / 'experiment.json'} and {out_dir / 'experiment.png'}", flush=True)
    return 0


def _sweep(
    base: Any,
    sizes_mib: list[float],
    losses: list[float],
    repeat: int,
    elements: int,
    slots: int,
    runs: list[dict[str, Any]],
    done: int,
    total: int,
    t_start: float,
) -> int:
    from mininet_topos.netns import NetnsNetwork

    for loss in losses:
        topo = base.with_links(bandwidth_mbit=None, delay_ms=None, loss_percent=loss)
        net = NetnsNetwork(topo)
        try:
            net.start()
            net.start_switches(elements=elements, slots=slots, ingress_loss=loss / 100)
            for mib in sizes_mib:
                size = max(1, int(mib * (1 << 20) / 4))
                procs = [
                    net.popen(
                        h.name,
                        net.netagg(
                            h.name,
                            [
                                "allreduce",
                                *net.worker_args(r),
                                "--size",
                                str(size),
                                "--repeat",
                                str(repeat),
                                "--check",
                                "--timeout",
                                "60",
                            ],
                        ),
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                    )
                    for r, h in enumerate(topo.hosts)
                ]
                results = []
                for p in procs:
                    stdout, stderr = p.communicate(timeout=1800)
                    if p.returncode != 0:
                        raise RuntimeError(
                            f"a worker failed at {mib} MiB, {loss}% loss: {stderr.strip()[-1000:]}"
                        )
                    results.append(json.loads(stdout.strip().splitlines()[-1]))
                ok = all(r["check"]["ok"] for r in results)
                seconds = max(r["median_s"] for r in results)
                retx = sum(r["worker"]["retransmissions"] for r in results)
                runs.append(
                    {
                        "workers": len(topo.hosts),
                        "loss_percent": loss,
                        "mib": mib,
                        "seconds": seconds,
                        "exact_or_within_bound": ok,
                        "retransmissions": retx,
                        "loss_mode": net.loss_mode,
                    }
                )
                done += 1
                print(
                    f"[{done}/{total}] {len(topo.hosts)} workers, {loss:g}% loss, {mib:g} MiB: "
                    f"{seconds * 1000:.1f} ms, {retx} retransmissions, {'ok' if ok else 'WRONG'} "
                    f"({time.monotonic() - t_start:.0f} s)",
                    flush=True,
                )
                if not ok:
                    raise RuntimeError(f"wrong result at {mib} MiB, {loss}% loss: {results}")
        finally:
            net.stop()
    return done


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = summary["runs"]
    most = max(r["workers"] for r in everything)
    runs = [r for r in everything if r["workers"] == most]  # size and loss panels: the largest topology
    losses = sorted({r["loss_percent"] for r in runs})
    sizes = sorted({r["mib"] for r in runs})
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    for loss in losses:
        pts = sorted((r["mib"], r["seconds"]) for r in runs if r["loss_percent"] == loss)
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{loss:g}% loss")
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xlabel("tensor size per host (MiB, float32)")
    ax1.set_ylabel("allreduce time (s, slowest host, median)")
    ax1.legend()
    for mib in sizes:
        pts = sorted((r["loss_percent"], r["seconds"]) for r in runs if r["mib"] == mib)
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{mib:g} MiB")
    ax2.set_yscale("log")
    ax2.set_xlabel("loss on every link (%)")
    ax2.set_ylabel("allreduce time (s)")
    ax2.legend()
    low = min(r["loss_percent"] for r in everything)
    for mib in sizes:
        pts = sorted(
            (r["workers"], r["seconds"]) for r in everything if r["mib"] == mib and r["loss_percent"] == low
        )
        ax3.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{mib:g} MiB")
    ax3.set_yscale("log")
    ax3.set_xlabel(f"workers (hosts), {low:g}% loss")
    ax3.set_ylabel("allreduce time (s)")
    ax3.legend()
    fig.suptitle(
        f"{summary['topology']}: {summary['hosts']} hosts, Python switches as a tree "
        f"(N = {summary['elements_per_packet']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
