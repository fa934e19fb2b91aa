"""Calibration of :mod:`netagg.model`: measured runs in, the costs that explain them out (least squares).

A measurement is one configuration, one algorithm and its measured time (optionally the CPU seconds a
host and the busiest switch spent on it, which separate the host's costs from the switch's where the
times alone cannot: on the emulator's shared cores both add up). They come from JSON files:

- ``experiment.json`` of ``netagg experiment`` (mininet_topos/experiment.py): its ``runs``; a run's
  ``algorithm`` (default netagg), ``bandwidth_mbit`` and ``delay_ms`` where the runner records them;
- ``results.json`` of ``bench/allreduce.py``: netagg and gloo on loopback, one switch, no link bound;
- ``measurements.json`` of ``netagg model measure``: this module's own records (:func:`record`).

The fit: for the current costs, each measurement's prediction picks its bottleneck (the largest bound);
with the bottlenecks fixed the prediction is linear in the costs, so the costs are the non-negative
least-squares solution of the relative errors (Lawson and Hanson's active-set method); repeat until the
bottlenecks stop changing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from netagg.model import Config, Costs, bound, predict
from netagg.model import _switches as _tree

__all__ = [
    "FITTED",
    "Measurement",
    "at_costs",
    "fit",
    "load",
    "nnls",
    "observed_loss",
    "record",
    "cpu_table",
    "table",
]

MIB = 1 << 20

FITTED = (
    "call_s",
    "link_latency_s",
    "host_byte_s",
    "host_packet_s",
    "switch_packet_s",
    "switch_byte_s",
    "loss_recovery_s",
    "ring_call_s",
    "ring_step_s",
    "ring_byte_s",
)
"""The costs a fit may set (``Costs.cores`` is the machine's, never fitted)."""


@dataclass(frozen=True)
class Measurement:
    algorithm: str
    collective: str
    config: Config
    seconds: float
    cores: int | None = None
    """CPU cores the run's processes shared (the emulator: all of them on one machine); None: each its
    own. A fit replaces it with the effective cores it finds (``Costs.cores``): processes that wait on
    each other do not keep every core busy."""
    host_cpu_s: float | None = None
    """CPU seconds of one host's process per call (INA: the agent; ring: the library)."""
    switch_cpu_s: float | None = None
    """CPU seconds of the busiest switch per call."""
    source: str = ""

    def label(self) -> str:
        c = self.config
        where = f"F={c.fan_in}" if c.fan_in else "1 switch"
        bw = "" if math.isinf(c.bandwidth_bps) else f", {c.bandwidth_bps / 1e6:g} Mbit/s"
        loss = f", {c.loss * 100:.2g}% loss" if c.loss else ""
        what = "" if self.collective == "allreduce" else f" {self.collective.replace('_', '-')}"
        return (
            f"{self.algorithm}{what} {c.workers} hosts ({where}){bw}{loss}, {c.size_bytes / MIB:g} MiB, "
            f"{c.payload_bytes} B packets"
        )


def record(m: Measurement) -> dict[str, Any]:
    """``m`` as the JSON object ``netagg model measure`` writes and :func:`load` reads."""
    out = {k: v for k, v in asdict(m).items() if k != "config"}
    out["config"] = {
        k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(m.config).items()
    }
    return out


def _config(raw: dict[str, Any]) -> Config:
    raw = dict(raw)
    if raw.get("bandwidth_bps") is None:
        raw["bandwidth_bps"] = math.inf
    known = {f.name for f in fields(Config)}
    return Config(**{k: v for k, v in raw.items() if k in known})


def load(paths: Sequence[Path], *, cores: int | None = 2) -> list[Measurement]:
    """Measurements from JSON files (see the module's docstring); ``cores`` for files that do not say."""
    out: list[Measurement] = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read measurements ({exc})") from None
        if isinstance(data, dict) and data.get("kind") == "netagg-model-measurements":
            for r in data["measurements"]:
                cfg = _config(r.pop("config"))
                out.append(Measurement(config=cfg, **{**r, "source": str(path)}))
        elif isinstance(data, dict) and "runs" in data and "topology" in data:
            out += _from_experiment(data, str(path), cores)
        elif isinstance(data, dict) and "rows" in data and "machine" in data:
            out += _from_bench(data, str(path))
        else:
            raise ValueError(f"{path}: not an experiment.json, bench results.json or measurements.json")
    return out


def _fan_in(summary: dict[str, Any], shape: dict[str, int], workers: int) -> int:
    name = str(summary["topology"])
    if name.startswith("star"):
        return 0
    if name.startswith("leafspine"):
        f = int(shape.get("hosts_per_leaf", workers))
        leaves = int(shape.get("leaves", math.ceil(workers / max(f, 1))))
        if leaves > f:
            raise ValueError(f"{name}: {leaves} leaves of {f} hosts is not a tree of one fan-in")
        return f if f < workers else 0
    if name.startswith("tree"):
        return int(shape.get("fanout", 2))
    raise ValueError(f"topology {name!r} is not one the model reads (star, leafspine, tree)")


def observed_loss(
    retransmissions_per_call: float, workers: int, size: float, payload: int, fan_in: int
) -> float:
    """The per-link loss that explains ``retransmissions_per_call`` (all hosts'): the emulator drops
    packets when its cores are overloaded (a queue overflows), which the model cannot foresee, so a run
    is modelled with the drops it saw. A host's fraction of uses re-sent is taken as P(use lost)."""
    if retransmissions_per_call <= 0:
        return 0.0
    uses = max(size / payload, 1.0)
    p_use = min(retransmissions_per_call / (workers * uses), 0.99)
    links = workers + len(_tree(workers, fan_in)) - 1
    return float(1 - (1 - p_use) ** (1 / (2 * links)))


def _from_experiment(summary: dict[str, Any], source: str, cores: int | None) -> list[Measurement]:
    """The runs of an experiment.json: netagg's (and the ring's, where the runner ran gloo beside it)."""
    shapes = summary.get("shapes") or [{}]
    cores = (summary.get("machine") or {}).get("cpus", cores)
    packet = int(summary.get("elements_per_packet", 2000))
    out = []
    for run in summary["runs"]:
        n = int(run["workers"])
        shape = next((s for s in shapes if _hosts(summary["topology"], s) == n), shapes[-1])
        bw = run.get("bandwidth_mbit", summary.get("bandwidth_mbit"))
        delay = run.get("delay_ms", summary.get("delay_ms"))
        collective = run.get("collective", "allreduce")
        # The runner's size is each host's input; the model's S for all-gather is the gathered output.
        size = float(run["mib"]) * MIB * (n if collective == "all_gather" else 1)
        cfg = Config(
            workers=n,
            size_bytes=size,
            bandwidth_bps=float(bw) * 1e6 if bw else math.inf,
            link_latency_s=float(delay) / 1e3 if delay else None,
            loss=float(run.get("loss_percent", 0.0)) / 100,
            fan_in=_fan_in(summary, shape, n),
            payload_bytes=4 * packet,
            slots=int(summary.get("slots", 64)),
            via_switch=summary.get("forwarding", "python") != "bridge",
        )
        # The older runner: one netagg time per run; the newer: {"netagg": {...}, "ring": {...}}.
        results = {"ina": run} if "seconds" in run else {"ina": run.get("netagg"), "ring": run.get("ring")}
        repeat = int(summary.get("repeat", 1))
        for algorithm, result in results.items():
            if not result:
                continue
            c = cfg
            retx = float(result.get("retransmissions", 0)) / repeat
            if algorithm == "ina" and retx > 0:
                seen = observed_loss(retx, n, cfg.size_bytes, cfg.payload_bytes, cfg.fan_in)
                c = replace(cfg, loss=max(cfg.loss, seen))
            out.append(Measurement(algorithm, collective, c, float(result["seconds"]), cores, source=source))
    return out


def _hosts(topology: str, shape: dict[str, int]) -> int:
    if "hosts" in shape:
        return int(shape["hosts"])
    if "hosts_per_leaf" in shape:
        return int(shape["hosts_per_leaf"]) * int(shape.get("leaves", 1))
    if "fanout" in shape:
        return int(shape["fanout"]) ** int(shape.get("depth", 1))
    return -1


def _from_bench(results: dict[str, Any], source: str) -> list[Measurement]:
    cores = results["machine"].get("cpus")
    out = []
    for row in results["rows"]:
        cfg = Config(
            workers=int(row["workers"]),
            size_bytes=float(row["mib"]) * MIB,
            payload_bytes=4 * int(row["elements"]),
            mtu=65536,  # loopback
            via_switch=False,
        )
        out.append(Measurement("ina", "allreduce", cfg, row["netagg_ms"] / 1e3, cores, source=source))
        out.append(Measurement("ring", "allreduce", cfg, row["gloo_ms"] / 1e3, cores, source=source))
    return out


def nnls(a: np.ndarray, b: np.ndarray, iterations: int = 500) -> np.ndarray:
    """x >= 0 minimising ||a x - b|| (Lawson and Hanson's active-set method)."""
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    w = a.T @ (b - a @ x)
    tol = 1e-12 * max(1.0, float(np.abs(a).max(initial=0.0))) * max(m, n)
    for _ in range(iterations):
        if passive.all() or (w[~passive] <= tol).all():
            break
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = float(np.min(x[neg] / (x[neg] - z[neg])))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
        w = a.T @ (b - a @ x)
    return x


def at_costs(m: Measurement, costs: Costs) -> Costs:
    """``costs`` as they apply to ``m``: with the fitted effective cores where its processes shared the
    machine's (or the machine's own cores when the costs have none), without where they did not."""
    if m.cores is None:
        return replace(costs, cores=None)
    return costs if costs.cores is not None else replace(costs, cores=m.cores)


def _linear(m: Measurement, costs: Costs, names: Sequence[str]) -> tuple[float, np.ndarray]:
    """The measurement's prediction as ``c0 + a . theta`` with the bottleneck ``costs`` picks fixed."""
    base = at_costs(m, costs)
    chosen = predict(m.algorithm, m.collective, m.config, base).bottleneck

    def at(c: Costs) -> float:
        return _forced(m, c, chosen)

    zero = base.with_values(**{k: 0.0 for k in names})
    c0 = at(zero)
    row = np.array([at(zero.with_values(**{k: 1.0})) - c0 for k in names])
    return c0, row


def _forced(m: Measurement, costs: Costs, bottleneck: str) -> float:
    """The prediction with the transfer term of ``bottleneck`` (linear in the costs)."""
    p = predict(m.algorithm, m.collective, m.config, costs)
    return p.latency_s + p.loss_s + bound(m.algorithm, m.collective, m.config, costs, bottleneck)


def _cpu_rows(m: Measurement, costs: Costs, names: Sequence[str]) -> list[tuple[float, np.ndarray, float]]:
    """The CPU-seconds equations of a measurement that has them: (c0, coefficients, measured)."""
    out = []
    zero = costs.with_values(**{k: 0.0 for k in names})
    for what, measured in (("host", m.host_cpu_s), ("switch", m.switch_cpu_s)):
        if measured is None:
            continue
        c0 = bound(m.algorithm, m.collective, m.config, zero, what)
        row = [
            bound(m.algorithm, m.collective, m.config, zero.with_values(**{k: 1.0}), what) - c0 for k in names
        ]
        out.append((c0, np.array(row), measured))
    return out


START = Costs(
    call_s=1e-3,
    link_latency_s=1e-5,
    host_byte_s=1e-9,
    host_packet_s=1e-5,
    switch_packet_s=1e-5,
    switch_byte_s=1e-9,
    loss_recovery_s=1e-2,
    ring_call_s=1e-3,
    ring_step_s=1e-4,
    ring_byte_s=1e-9,
)
"""Where a fit starts: every cost non-zero, so that each bound can be the one that binds (from all
zeros, the unbounded links would bind every run and leave the CPU costs without a say)."""


@dataclass(frozen=True)
class FitResult:
    costs: Costs
    iterations: int
    rms_relative_error: float
    unidentified: tuple[str, ...]
    """Costs the data said nothing about (no measurement's time depends on them): left at 0."""


def fit(
    measurements: Iterable[Measurement],
    *,
    names: Sequence[str] = FITTED,
    start: Costs | None = None,
    iterations: int = 30,
) -> FitResult:
    """The non-negative ``names`` costs that best explain ``measurements`` (relative least squares);
    where some ran on shared cores, also the effective cores (a search from 0.1 to the machine's: other
    work shares them too)."""
    ms = list(measurements)
    if not ms:
        raise ValueError("no measurements to fit")
    for k in names:
        if k not in FITTED:
            raise ValueError(f"cannot fit {k!r}: one of {', '.join(FITTED)}")
    shared = [m.cores for m in ms if m.cores is not None]
    if not shared:
        return _fit(ms, names, replace(start or START, cores=None), iterations)
    base = start or START

    def at(cores: float) -> FitResult:
        return _fit(ms, names, replace(base, cores=cores), iterations)

    grid = np.linspace(0.1, float(max(shared)), 7)
    best = min((at(float(c)) for c in grid), key=lambda r: r.rms_relative_error)
    assert best.costs.cores is not None
    # Then a golden-section search around the best point of the grid.
    step = float(grid[1] - grid[0])
    lo, hi = max(0.05, best.costs.cores - step), best.costs.cores + step
    g = (math.sqrt(5) - 1) / 2
    x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
    f1, f2 = at(x1), at(x2)
    for _ in range(10):
        if f1.rms_relative_error <= f2.rms_relative_error:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - g * (hi - lo)
            f1 = at(x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + g * (hi - lo)
            f2 = at(x2)
    return min((best, f1, f2), key=lambda r: r.rms_relative_error)


def _fit(ms: list[Measurement], names: Sequence[str], costs: Costs, iterations: int) -> FitResult:
    seen: set[tuple[str, ...]] = set()
    done = 0
    for _ in range(iterations):
        done += 1
        rows, rhs = [], []
        picks = tuple(predict(m.algorithm, m.collective, m.config, at_costs(m, costs)).bottleneck for m in ms)
        for m in ms:
            c0, row = _linear(m, costs, names)
            rows.append(row / m.seconds)
            rhs.append((m.seconds - c0) / m.seconds)
            for c0c, rowc, measured in _cpu_rows(m, costs, names):
                rows.append(rowc / measured)
                rhs.append((measured - c0c) / measured)
        a, b = np.array(rows), np.array(rhs)
        scale = np.linalg.norm(a, axis=0)
        used = scale > 0
        theta = np.zeros(len(names))
        theta[used] = nnls(a[:, used] / scale[used], b) / scale[used]
        costs = costs.with_values(**{k: float(v) for k, v in zip(names, theta, strict=True)})
        if picks in seen:
            break
        seen.add(picks)
    errors = [
        predict(m.algorithm, m.collective, m.config, at_costs(m, costs)).seconds / m.seconds - 1 for m in ms
    ]
    unidentified = tuple(k for k, s in zip(names, scale, strict=True) if s == 0)
    rms = float(np.sqrt(np.mean(np.square(errors))))
    return FitResult(costs, done, rms, unidentified)


def table(measurements: Iterable[Measurement], costs: Costs) -> list[dict[str, Any]]:
    """Predicted against measured for each measurement: its label, both times, the relative error."""
    out = []
    for m in measurements:
        p = predict(m.algorithm, m.collective, m.config, at_costs(m, costs))
        out.append(
            {
                "configuration": m.label(),
                "measured_s": m.seconds,
                "predicted_s": p.seconds,
                "relative_error": p.seconds / m.seconds - 1,
                "bottleneck": p.bottleneck,
            }
        )
    return out


def cpu_table(measurements: Iterable[Measurement], costs: Costs) -> list[dict[str, Any]]:
    """Predicted against measured CPU seconds per call (one host's, the busiest switch's), for the
    measurements that have them: a check of the costs that the machine's other load does not blur."""
    out = []
    for m in measurements:
        for what, measured in (("host", m.host_cpu_s), ("switch", m.switch_cpu_s)):
            if measured:
                p = bound(m.algorithm, m.collective, m.config, costs, what)
                out.append(
                    {
                        "configuration": f"{m.label()}: {what} CPU",
                        "measured_s": measured,
                        "predicted_s": p,
                        "relative_error": p / measured - 1,
                        "bottleneck": "",
                    }
                )
    return out
