"""DDP training as an experiment workload: ``examples/train_ddp.py`` on every host of a running
:class:`~mininet_topos.netns.NetnsNetwork`, one process per host namespace (torch.distributed over TCP
between the hosts, rank 0 at the first host), once with gradients through the switch tree (netagg's
communication hook, each host at its own switch) and once with DDP's default gloo allreduce (the ring),
the same seeds and data. Rank 0 reports accuracy and loss per epoch, the time to each, and every
step's time.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mininet_topos.netns import NetnsNetwork

__all__ = ["MODELS", "train_both"]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_ddp.py"

MODELS = {"small": 256, "big": 2048}
"""Workload name -> the MLP's hidden width: 256 is the demo's (85 k parameters, 0.3 MB of gradients per
step), 2048 a bigger one (4.3 M parameters, 17 MB per step)."""

_port = [29900]


def train(
    net: NetnsNetwork,
    impl: str,
    hidden: int,
    epochs: int,
    out: Path,
    nice: int = 5,
    min_rto: float | None = None,
) -> dict[str, Any]:
    """One training run on every host; rank 0's report (with ``wall_s``, the slowest host's).
    ``min_rto``: the netagg workers' (ExperimentOptions.min_rto)."""
    topo = net.topo
    world = len(topo.hosts)
    _port[0] += 1
    env = [
        *("nice", "-n", str(nice)),  # as the experiment's collectives (ExperimentOptions.host_nice)
        "env",
        f"MASTER_ADDR={topo.hosts[0].ip}",
        f"MASTER_PORT={_port[0]}",
        f"WORLD_SIZE={world}",
        "GLOO_SOCKET_IFNAME=eth0",
        "OMP_NUM_THREADS=1",
        "TORCH_DEVICE_BACKEND_AUTOLOAD=0",
    ]
    procs = []
    t0 = time.monotonic()
    for rank, host in enumerate(topo.hosts):
        how = ["--backend", "gloo"]
        if impl == "netagg":
            args = net.worker_args(rank)
            how = ["--switch", args[1], "--worker-id", args[args.index("--worker-id") + 1]]
            how += ["--no-batch"] if "--no-batch" in args else []
            how += ["--min-rto", str(min_rto)] if min_rto is not None else []
        cmd = [
            *env,
            f"RANK={rank}",
            f"LOCAL_RANK={rank}",
            sys.executable,
            str(EXAMPLE),
            *how,
            *("--epochs", str(epochs), "--hidden", str(hidden), "--out", str(out)),
            *(["--progress"] if rank == 0 else []),
        ]
        procs.append(net.popen(host.name, cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        assert procs[0].stdout is not None
        shown = -1
        for line in procs[0].stdout:  # rank 0's progress, a line per 20%
            if line.startswith("PROGRESS "):
                step, total = (int(v) for v in line.split()[1:3])
                if 5 * step // total != shown:
                    shown = 5 * step // total
                    print(f"    {impl}: step {step}/{total} ({time.monotonic() - t0:.0f} s)", flush=True)
        for rank, p in enumerate(procs):
            _, err = p.communicate(timeout=3600)
            if p.returncode != 0:
                raise RuntimeError(f"{impl} training failed at rank {rank}: {err.strip()[-1500:]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    report: dict[str, Any] = json.loads(out.read_text())
    report["wall_s"] = time.monotonic() - t0
    return report


def train_both(
    net: NetnsNetwork,
    model: str,
    epochs: int,
    out_dir: Path,
    nice: int = 5,
    min_rto: float | None = None,
) -> dict[str, Any]:
    """The ``model`` workload ("small" or "big", :data:`MODELS`) with netagg and with the ring on
    ``net``'s hosts: per-step time, accuracy and time to accuracy side by side."""
    hidden = MODELS[model]
    print(
        f"  DDP training, {model} model (hidden {hidden}), {epochs} epochs: netagg, then the ring", flush=True
    )
    runs = {
        key: train(net, impl, hidden, epochs, out_dir / f"train_{model}_{key}.json", nice, min_rto)
        for key, impl in (("netagg", "netagg"), ("ring", "gloo"))
    }
    row: dict[str, Any] = {"model": model, "hidden": hidden, "workers": len(net.topo.hosts), "epochs": epochs}
    for key, r in runs.items():
        steps = r["step_times_s"]
        row[key] = {
            "parameters": r["parameters"],
            "steps": r["steps"],
            "median_step_ms": round(1e3 * statistics.median(steps[1:] or steps), 2),
            "test_accuracy": r["test_accuracy"],
            "test_loss": r["test_loss"],
            "accuracy_per_epoch": [round(e["test_accuracy"], 4) for e in r["epochs"]],
            "elapsed_per_epoch_s": [round(e.get("elapsed_s", 0.0), 2) for e in r["epochs"]],
            "step_times_s": steps,
            "gloo_buckets": r.get("gloo_buckets", 0),
            "traffic_per_worker": r.get("traffic_per_worker", {}),
        }
    row["step_speedup"] = round(row["ring"]["median_step_ms"] / row["netagg"]["median_step_ms"], 3)
    print(
        f"  {model}: netagg {row['netagg']['median_step_ms']:.1f} ms/step, accuracy "
        f"{row['netagg']['test_accuracy']:.4f}; ring {row['ring']['median_step_ms']:.1f} ms/step, accuracy "
        f"{row['ring']['test_accuracy']:.4f}; speed-up {row['step_speedup']:.2f}x",
        flush=True,
    )
    return row
