"""What an experiment shows: the bytes each link carried beside the theory, and the plot.

The theory, per call, for inputs of S bytes at each of W hosts (payload only; headers add about 1%):

- netagg (through the switch tree): a host sends S up (its whole input; for all-gather its own S)
  and receives S (allreduce), S/W (reduce-scatter: its shard) or W*S (all-gather); a switch sends one
  partial per use to its parent: S up, and S down (allreduce), n*S/W (reduce-scatter, n hosts below
  it) or W*S (all-gather; up only the n*S of its hosts).
- the ring (gloo, ranks in host order): every ring edge carries 2S(W-1)/W (allreduce), S(W-1)/W
  (reduce-scatter) or (W-1)*S (all-gather), and every link direction carries one edge: a host's to its
  neighbour, a subtree's (contiguous ranks) last host's to the next.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mininet_topos.topology import Topology

__all__ = ["link_report", "plot", "theory"]


def _hosts_below(topo: Topology, node: str) -> int:
    hosts = {h.name for h in topo.hosts}
    if node in hosts:
        return 1
    return sum(_hosts_below(topo, c) for c in topo.children(node))


def theory(topo: Topology, impl: str, collective: str, s: float, a: str, b: str) -> float:
    """Bytes of payload one ``collective`` call of ``impl`` ("netagg" or "gloo") sends from ``a`` to
    ``b`` over their link, for inputs of ``s`` bytes per host."""
    w = len(topo.hosts)
    if impl == "gloo":
        return {"allreduce": 2 * s * (w - 1) / w, "reduce_scatter": s * (w - 1) / w}.get(
            collective, (w - 1) * s
        )
    hosts = {h.name for h in topo.hosts}
    child, up = (a, True) if (a in hosts or topo.switch(a).parent == b) else (b, False)
    n = _hosts_below(topo, child)
    if up:
        return n * s if collective == "all_gather" else s
    return {"allreduce": s, "reduce_scatter": n * s / w}.get(collective, w * s)


def link_report(
    topo: Topology,
    impl: str,
    collective: str,
    s_bytes: int,
    before: dict[str, int],
    after: dict[str, int],
    calls: int,
) -> dict[str, Any]:
    """Per link direction ``"a>b"``: the bytes one call carried (the counters' difference over
    ``calls`` calls) and the theory; and the ratio measured/theory averaged over host links up and
    down and switch links up and down, with the largest deviation from 1 over every direction."""
    hosts = {h.name for h in topo.hosts}
    per: dict[str, dict[str, float]] = {}
    groups: dict[str, list[float]] = {"host_up": [], "host_down": [], "switch_up": [], "switch_down": []}
    for key, total in after.items():
        a, b = key.split(">")
        measured = (total - before.get(key, 0)) / calls
        expect = theory(topo, impl, collective, s_bytes, a, b)
        per[key] = {"bytes": round(measured), "theory": round(expect)}
        if expect <= 0:
            continue
        ratio = measured / expect
        per[key]["ratio"] = round(ratio, 4)
        if a in hosts or b in hosts:
            groups["host_up" if a in hosts else "host_down"].append(ratio)
        else:
            groups["switch_up" if topo.switch(a).parent == b else "switch_down"].append(ratio)
    ratios = [r for g in groups.values() for r in g]
    return {
        **{k: round(sum(v) / len(v), 4) for k, v in groups.items() if v},
        "max_deviation": round(max(abs(r - 1) for r in ratios), 4) if ratios else None,
        "per_link": per,
    }


def plot(summary: dict[str, Any], path: Path) -> None:
    """Six panels: time against size (netagg and the ring), the speed-up against workers, bandwidth
    and loss (per size), the link bytes against the theory, and the training step times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in summary["runs"] if r["collective"] == "allreduce"] or summary["runs"]
    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    (ax_t, ax_w, ax_b), (ax_l, ax_x, ax_d) = axes
    _training(ax_d, summary.get("training", []))
    fig.suptitle(
        f"{summary['topology']}, {summary['forwarding']} forwarding, N = {summary['elements_per_packet']}, "
        f"{summary['machine']['cpus']} shared CPUs"
    )
    if runs:
        _collectives(runs, ax_t, ax_w, ax_b, ax_l, ax_x)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _training(ax: Any, rows: list[dict[str, Any]]) -> None:
    for t in rows:
        for key, style in (("netagg", "-"), ("ring", "--")):
            ax.plot([1e3 * x for x in t[key]["step_times_s"]], style, lw=0.8, label=f"{t['model']} {key}")
    ax.set(xlabel="step", ylabel="time per step (ms, rank 0)", title="DDP training")
    if rows:
        ax.set_yscale("log")
        ax.legend()


def _collectives(runs: list[dict[str, Any]], ax_t: Any, ax_w: Any, ax_b: Any, ax_l: Any, ax_x: Any) -> None:
    most = max(r["workers"] for r in runs)
    bws = sorted({r["bandwidth_mbit"] or 0 for r in runs})
    losses = sorted({r["loss_percent"] for r in runs})
    sizes = sorted({r["mib"] for r in runs})

    def pick(r: dict[str, Any], workers: bool = True, bw: bool = True, loss: bool = True) -> bool:
        return (
            (not workers or r["workers"] == most)
            and (not bw or (r["bandwidth_mbit"] or 0) == bws[-1 if len(bws) == 1 else 0])
            and (not loss or r["loss_percent"] == losses[0])
        )

    base = [r for r in runs if pick(r)]
    for key, style in (("netagg", "-o"), ("ring", "--s")):
        pts = sorted((r["mib"], r[key]["seconds"]) for r in base if key in r)
        if pts:
            ax_t.plot(
                *zip(*pts, strict=True),
                style,
                label="netagg (switch tree)" if key == "netagg" else "gloo ring",
            )
    ax_t.set(xscale="log", yscale="log", xlabel="MiB per host (float32)", ylabel="allreduce time (s)")
    ax_t.set_title(f"{most} hosts")
    ax_t.legend()

    def speedups(ax: Any, x_of: str, keep: dict[str, bool], xlabel: str) -> None:
        for mib in sizes:
            pts = sorted(
                (r[x_of] or 0, r["speedup"])
                for r in runs
                if r["mib"] == mib and "speedup" in r and pick(r, **keep)
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), "-o", label=f"{mib:g} MiB")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set(xlabel=xlabel, ylabel="speed-up (ring time / netagg time)")
        if ax.lines[:-1]:
            ax.legend()

    speedups(ax_w, "workers", {"workers": False}, "workers (hosts)")
    ws = sorted({r["workers"] for r in runs})
    ax_w.plot(ws, [2 * (w - 1) / w for w in ws], ":", color="black", label="bandwidth bound 2(W-1)/W")
    ax_w.legend()
    speedups(ax_b, "bandwidth_mbit", {"bw": False}, "link bandwidth (Mbit/s; 0: unlimited)")
    speedups(ax_l, "loss_percent", {"loss": False}, "loss on every link (%)")
    labels, ours, theirs = [], [], []
    for r in base:
        labels.append(f"{r['mib']:g}")
        ours.append(r["netagg"]["links"].get("host_up", 0))
        theirs.append(r.get("ring", {}).get("links", {}).get("host_up", 0))
    xs = range(len(labels))
    ax_x.bar([x - 0.2 for x in xs], ours, 0.4, label="netagg host links")
    ax_x.bar([x + 0.2 for x in xs], theirs, 0.4, label="ring host links")
    ax_x.axhline(1.0, color="grey", lw=0.8)
    ax_x.set_xticks(list(xs), labels)
    ax_x.set(xlabel="MiB per host", ylabel="bytes carried / theory (up)", ylim=(0, 1.5))
    ax_x.legend()
