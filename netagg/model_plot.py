"""``netagg model plot``: the model's allreduce time and INA's speed-up from 8 to 100,000 workers.

For each tensor size and link rate: the ring (2(n-1) steps), the double binary tree (2 log2 n steps)
and INA through a tree of switches of fan-in F (2C steps, C = ceil(log_F n)) with switches at line
rate; with calibrated costs also INA with netagg's own hosts and Python switch (each host its own CPU,
one switch process per switch). Writes ``scale.png`` (times), ``speedup.png`` (ring / INA and tree /
INA) and ``scale.json`` (every point).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from netagg.model import Config, Costs, levels, predict

__all__ = ["scale", "worker_counts"]

MIB = 1 << 20


def worker_counts(max_workers: int, start: int = 8) -> list[int]:
    """Workers from ``start`` to ``max_workers``, eight points per decade (log-spaced, both ends in)."""
    decades = np.log10(max_workers / start)
    xs = np.unique(np.round(np.logspace(np.log10(start), np.log10(max_workers), int(8 * decades) + 1)))
    return [int(x) for x in xs]


def scale(
    out: Path,
    *,
    sizes_mib: list[float],
    rates_gbit: list[float],
    fan_in: int,
    latency_s: float,
    step_s: float,
    max_workers: int,
    netagg_costs: Costs | None = None,
) -> tuple[Path, Path]:
    """Compute every curve, write the JSON and the two PNGs; returns (scale.png, scale.json)."""
    network = Costs(call_s=2 * step_s, link_latency_s=latency_s, ring_step_s=step_s)
    curves: list[dict[str, Any]] = []
    xs = worker_counts(max_workers)
    for mib in sizes_mib:
        for gbit in rates_gbit:
            kinds: dict[str, list[float]] = {"ring": [], "tree": [], "ina": []}
            if netagg_costs is not None:
                kinds["ina_netagg"] = []
            for n in xs:
                cfg = Config(n, mib * MIB, bandwidth_bps=gbit * 1e9, link_latency_s=latency_s, fan_in=fan_in)
                for a in ("ring", "tree", "ina"):
                    kinds[a].append(predict(a, "allreduce", cfg, network).seconds)
                if netagg_costs is not None:
                    own = replace(netagg_costs, cores=None, link_latency_s=latency_s)
                    kinds["ina_netagg"].append(predict("ina", "allreduce", cfg, own).seconds)
            curves.append({"mib": mib, "gbit": gbit, "seconds": kinds})
    data = {
        "workers": xs,
        "levels": [levels(n, fan_in) for n in xs],
        "fan_in": fan_in,
        "latency_s": latency_s,
        "step_s": step_s,
        "network_costs": network.as_dict(),
        "netagg_costs": netagg_costs.as_dict() if netagg_costs else None,
        "curves": curves,
    }
    out.mkdir(parents=True, exist_ok=True)
    js = out / "scale.json"
    js.write_text(json.dumps(data, indent=1))
    png = out / "scale.png"
    _draw(data, sizes_mib, rates_gbit, png, out / "speedup.png")
    return png, js


def _draw(data: dict[str, Any], sizes: list[float], rates: list[float], path: Path, speedup: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = data["workers"]
    style = {
        "ring": ("tab:red", "ring: 2(n-1) steps, 2S(n-1)/n per host"),
        "tree": ("tab:orange", "double binary tree: 2 log2 n steps, 2S"),
        "ina": ("tab:blue", f"INA, line-rate switches, fan-in {data['fan_in']}: 2C steps, S"),
        "ina_netagg": ("tab:cyan", "INA, netagg's hosts and Python switch (calibrated)"),
    }
    fig, axes = plt.subplots(
        len(sizes), len(rates), figsize=(5 * len(rates), 3.6 * len(sizes)), squeeze=False, sharex=True
    )
    for curve in data["curves"]:
        ax = axes[sizes.index(curve["mib"])][rates.index(curve["gbit"])]
        for kind, ys in curve["seconds"].items():
            color, label = style[kind]
            ax.loglog(xs, ys, color=color, label=label, linestyle="--" if kind == "ina_netagg" else "-")
        ax.set_title(f"{curve['mib']:g} MiB per host, {curve['gbit']:g} Gbit/s links", fontsize=10)
        ax.set_ylabel("allreduce time (s)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("workers")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        f"netagg model: allreduce time against workers (link latency {data['latency_s'] * 1e6:g} µs, "
        f"{data['step_s'] * 1e6:g} µs software per ring/tree step)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for curve in data["curves"]:
        s = curve["seconds"]
        label = f"{curve['mib']:g} MiB, {curve['gbit']:g} Gbit/s"
        ax1.loglog(xs, np.array(s["ring"]) / np.array(s["ina"]), label=label)
        ax2.loglog(xs, np.array(s["tree"]) / np.array(s["ina"]), label=label)
    for ax, what in ((ax1, "ring"), (ax2, "double binary tree")):
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel("workers")
        ax.set_title(f"INA speed-up over the {what}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_ylabel("time of the peer / time of INA")
    ax1.legend(fontsize=7)
    # The levels of the INA tree, where they step up, on the ring panel's top axis.
    steps = [
        (x, c)
        for i, (x, c) in enumerate(zip(xs, data["levels"], strict=True))
        if i == 0 or c != data["levels"][i - 1]
    ]
    for x, c in steps:
        ax1.annotate(f"C={c}", (x, 1.0), fontsize=7, xytext=(0, 4), textcoords="offset points")
    fig.tight_layout()
    fig.savefig(speedup, dpi=110)
    plt.close(fig)
