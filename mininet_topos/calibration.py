"""``netagg model measure``: the runs the scale model (netagg/model.py) is calibrated and checked on.

Two kinds, each written as measurements (``netagg.model_fit.record``) into ``measurements.json``:

- emulator runs: ``netagg experiment``'s runner (:func:`mininet_topos.experiment.run_experiment`) on
  stars and leaf-spines in network namespaces (root), rate-limited and not: netagg's allreduce through
  the Python switches and gloo's ring on the same hosts and links;
- loopback runs with CPU time: one ``netagg switch`` process and W worker processes on this machine;
  each worker runs netagg's allreduce and gloo's ring allreduce (torch.distributed) in turn and reports
  its wall and CPU seconds per call, the switch's CPU seconds are read from /proc. The CPU seconds are
  what separates the host's costs from the switch's, which the times alone cannot on shared cores.

Everything runs on this machine's cores, which the model is told (``cores``).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

__all__ = ["CHECK", "FIT", "emulator", "loopback", "measure", "write"]

MIB = 1 << 20


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far."""
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def _rank(
    rank: int, address: str, port: int, world: int, nbytes: int, reps: int, ring: bool
) -> dict[str, list[float]]:
    """One worker: ``reps`` netagg allreduces (and gloo ring allreduces, alternating), each timed in wall
    and CPU seconds after a barrier (the barrier is outside the timing)."""
    import numpy as np

    from host_agent.worker import Worker

    out: dict[str, list[float]] = {"ina_s": [], "ina_cpu_s": [], "ring_s": [], "ring_cpu_s": []}
    retx0 = 0
    x = np.random.default_rng(rank).standard_normal(nbytes // 4).astype(np.float32)
    if ring:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        t = torch.from_numpy(x.copy())
    try:
        with Worker(address, rank, world, timeout=60) as w:
            for i in range(reps + 1):  # the first call of each warms up
                calls = [("ina", lambda: w.allreduce(x, out=x))]
                if ring:
                    calls.append(("ring", lambda: dist.all_reduce(t)))
                for name, call in calls:
                    if ring:
                        dist.barrier()
                    c0, t0 = time.process_time(), time.perf_counter()
                    call()
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                    if i:
                        out[f"{name}_s"].append(wall)
                        out[f"{name}_cpu_s"].append(cpu)
                    if i == 0 and name == "ina":
                        retx0 = w.stats.retransmissions
            out["ina_retransmissions"] = [float(w.stats.retransmissions - retx0)]
    finally:
        if ring:
            dist.destroy_process_group()
    return out


def loopback(
    workers: list[int], sizes_mib: list[float], elements: list[int], reps: int, cores: int
) -> list[Any]:
    """Loopback runs: for each case, netagg through one switch process and gloo's ring, with CPU time."""
    from netagg.cli.launch import SwitchProcess, free_port, run_workers
    from netagg.model import Config
    from netagg.model_fit import Measurement, observed_loss

    out = []
    for n in workers:
        for mib in sizes_mib:
            for e in elements:
                nbytes = int(mib * MIB) // 4 * 4
                ring = e == max(elements)  # the ring's time does not depend on netagg's packet size
                with SwitchProcess(n, elements=e) as sw:
                    cpu0 = _proc_cpu(sw.pid)
                    per_rank = run_workers(
                        _rank, n, sw.address, free_port(), n, nbytes, reps, ring, timeout=900
                    )
                    switch_cpu = (_proc_cpu(sw.pid) - cpu0) / (reps + 1)  # warm-up calls included
                retx = sum(r["ina_retransmissions"][0] for r in per_rank)
                base = Config(n, nbytes, payload_bytes=4 * e, mtu=65536, via_switch=False)
                ina = replace(
                    base, loss=observed_loss(retx / reps, n, base.size_bytes, base.payload_bytes, 0)
                )

                def least(key: str, rows: list[dict[str, list[float]]] = per_rank) -> tuple[float, float]:
                    # The least disturbed call (the machine is shared), and the median CPU seconds.
                    slowest = [max(ts) for ts in zip(*(r[key] for r in rows), strict=True)]
                    cpu = statistics.median(c for r in rows for c in r[key.replace("_s", "_cpu_s")])
                    return min(slowest), cpu

                t, cpu = least("ina_s")
                out.append(Measurement("ina", "allreduce", ina, t, cores, cpu, switch_cpu, "loopback"))
                if ring:
                    t, cpu = least("ring_s")
                    out.append(Measurement("ring", "allreduce", base, t, cores, cpu, None, "loopback"))
                for m in out[-2 if ring else -1 :]:
                    print(f"loopback: {m.label()}: {m.seconds * 1e3:.1f} ms", flush=True)
    return out


def emulator(
    shapes: list[tuple[str, list[dict[str, int]]]],
    sizes_mib: list[float],
    losses: list[float],
    bandwidths: list[float | None],
    reps: int,
    cores: int,
    work: Path,
) -> list[Any]:
    """Emulator runs through ``run_experiment`` (root): netagg and gloo's ring on the same hosts, for
    each shape, link rate and loss."""
    from mininet_topos.experiment import ExperimentOptions, run_experiment
    from netagg.model_fit import load

    if os.geteuid() != 0:
        raise ValueError("emulator runs need root (network namespaces); give --no-emulator to skip them")
    out = []
    for k, (topo, shape) in enumerate(shapes):
        rates = "-".join(f"{b:g}" if b else "max" for b in bandwidths)
        folder = work / f"{topo}-{k}-bw{rates}-loss{'-'.join(f'{x:g}' for x in losses)}"
        opts = ExperimentOptions(
            sizes_mib=tuple(sizes_mib), losses=tuple(losses), bandwidths=tuple(bandwidths), repeat=reps
        )
        run_experiment(topo, shape, out_dir=folder, options=opts)
        out += load([folder / "experiment.json"], cores=cores)
    return out


def write(measurements: list[Any], path: Path) -> None:
    from netagg.model_fit import record

    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "kind": "netagg-model-measurements",
        "machine": {"cpus": os.cpu_count(), "shared": True},
        "measurements": [record(m) for m in measurements],
    }
    path.write_text(json.dumps(data, indent=1))


#: The runs the model is fitted on: (kind, arguments). Small, so that a calibration takes minutes. The
#: emulator's at 100 Mbit/s (the links bind) and unlimited (the shared CPUs bind).
FIT: list[tuple[str, dict[str, Any]]] = [
    ("loopback", {"workers": [2, 4], "sizes_mib": [1, 8], "elements": [2000, 500]}),
    (
        "emulator",
        {
            "shapes": [
                ("star", [{"hosts": 2}, {"hosts": 4}]),
                ("leafspine", [{"leaves": 2, "hosts_per_leaf": 2}]),
            ],
            "sizes_mib": [1, 4],
            "losses": [0],
            "bandwidths": [100, None],
        },
    ),
    (
        "emulator",
        {"shapes": [("star", [{"hosts": 4}])], "sizes_mib": [4], "losses": [1], "bandwidths": [100]},
    ),
]
#: The held-back runs the fitted model is checked on: other workers, sizes, packet sizes and shapes.
CHECK: list[tuple[str, dict[str, Any]]] = [
    ("loopback", {"workers": [3, 6], "sizes_mib": [2, 16], "elements": [2000, 1000]}),
    (
        "emulator",
        {
            "shapes": [
                ("star", [{"hosts": 6}]),
                ("leafspine", [{"leaves": 2, "hosts_per_leaf": 3}, {"leaves": 2, "hosts_per_leaf": 4}]),
            ],
            "sizes_mib": [2, 8],
            "losses": [0],
            "bandwidths": [100, None],
        },
    ),
    (
        "emulator",
        {
            "shapes": [("leafspine", [{"leaves": 2, "hosts_per_leaf": 3}])],
            "sizes_mib": [4],
            "losses": [1],
            "bandwidths": [100],
        },
    ),
]


def measure(
    plan: list[tuple[str, dict[str, Any]]], out: Path, *, reps: int, cores: int, with_emulator: bool
) -> list[Any]:
    """Run ``plan`` (FIT or CHECK), writing ``out``/loopback.json and ``out``/emulator.json (each
    environment is calibrated on its own: the emulator's switch reads raw frames, the loopback one UDP);
    the emulator's own files go into ``out``/emulator/."""
    ms: dict[str, list[Any]] = {"loopback": [], "emulator": []}
    for kind, kw in plan:
        if kind == "loopback":
            ms[kind] += loopback(kw["workers"], kw["sizes_mib"], kw["elements"], reps, cores)
        elif with_emulator:
            ms[kind] += emulator(
                kw["shapes"], kw["sizes_mib"], kw["losses"], kw["bandwidths"], reps, cores, out / "emulator"
            )
    for kind, found in ms.items():
        if found:
            write(found, out / f"{kind}.json")
    return ms["loopback"] + ms["emulator"]
