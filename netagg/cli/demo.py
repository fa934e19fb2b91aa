"""``netagg demo`` (``make demo``): DDP training through a netagg switch on loopback, against the same
training on gloo.

Starts a switch, runs ``examples/train_ddp.py`` under torchrun with W worker processes twice (gradients
through the switch, then plain gloo DDP; same seeds, same data), shows a progress bar, and ends with a
table (accuracy, loss, time per step, traffic per worker against a ring allreduce), a PNG and a JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from netagg.cli._common import _int_range
from netagg.cli.launch import free_port
from netagg.protocol import MAX_WORKERS

__all__ = ["add_parser", "run_train_demo"]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_ddp.py"

EXAMPLES = """\
examples:
  make demo                                          # sets up .venv first, then this
  netagg demo --workers 4 --epochs 20 --out out/demo
  netagg demo --gpt --steps 120                      # make demo-gpt: FSDP2 over the netagg backend

It writes train.json and train.png into --out and exits 1 if the accuracy differs from gloo's by more
than one point; with --gpt, gpt.json and gpt.png, and exit status 1 if the held-out loss differs from
gloo's by more than 1%."""


def add_parser(sub: Any) -> None:
    """Add ``netagg demo`` to the subcommands ``sub``."""
    d = sub.add_parser(
        "demo", help="DDP training through a switch on loopback, against gloo (make demo)", epilog=EXAMPLES
    )
    d.add_argument(
        "--workers", type=_int_range(1, MAX_WORKERS), default=4, help="worker processes (default 4)"
    )
    d.add_argument("--epochs", type=_int_range(1, 1000), default=20, help="epochs of training (default 20)")
    d.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for the JSON and PNG")
    d.add_argument(
        "--gpt",
        action="store_true",
        help="instead: a small GPT trained with FSDP2 in bf16 over the netagg backend, against gloo "
        "(examples/train_gpt.py; make demo-gpt)",
    )
    d.add_argument(
        "--steps", type=_int_range(1, 100_000), default=120, help="with --gpt: training steps (default 120)"
    )
    d.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    if args.gpt:
        from netagg.cli.demo_gpt import run_gpt_demo

        return run_gpt_demo(args.workers, args.out, ["--steps", str(args.steps)])
    return run_train_demo(workers=args.workers, epochs=args.epochs, out_dir=args.out)


def _torchrun(
    label: str,
    workers: int,
    extra: list[str],
    out: Path,
    *,
    script: Path = EXAMPLE,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``script`` on ``workers`` processes under torchrun with ``extra`` flags (and ``--out out
    --progress``), showing its progress; what it wrote to ``out``. ``env``: variables to add."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(workers),
        "--master-port",
        str(free_port()),
        str(script),
        *extra,
        "--out",
        str(out),
        "--progress",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
    )
    assert proc.stdout is not None
    tail: list[str] = []
    t0 = time.perf_counter()
    tty = sys.stdout.isatty()
    shown = -1
    for line in proc.stdout:
        if not line.startswith("PROGRESS "):
            tail = [*tail[-19:], line.rstrip()]
            continue
        step, total = (int(v) for v in line.split()[1:3])
        done = 30 * step // total
        if tty or done // 3 != shown:  # a live bar on a terminal, a line per 10% in a log
            shown = done // 3
            print(
                f"{chr(13) if tty else ''}  {label:<7} [{'#' * done}{'.' * (30 - done)}] "
                f"{step}/{total} steps {time.perf_counter() - t0:5.1f}s",
                end="" if tty else "\n",
                flush=True,
            )
    if tty:
        print()
    if proc.wait() != 0 or not out.exists():
        raise RuntimeError(f"the {label} training failed:\n" + "\n".join(tail))
    return json.loads(out.read_text())


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def run_train_demo(workers: int = 4, epochs: int = 20, out_dir: Path = Path("out/demo")) -> int:
    from netagg.cli.launch import SwitchProcess

    if not EXAMPLE.exists():
        raise FileNotFoundError(f"{EXAMPLE} not found: run the demo from a netagg checkout")
    out_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"netagg demo: DDP training of an MLP on scikit-learn's digits, {workers} worker processes, "
        f"{epochs} epochs; gradients through a Python switch on 127.0.0.1, then plain gloo DDP"
    )
    t0 = time.perf_counter()
    epoch_flag = ["--epochs", str(epochs)]
    group = f"239.255.0.1:{free_port(udp=True)}"
    with SwitchProcess(workers, multicast=group) as sw:
        print(f"  switch pid {sw.pid} on {sw.address}, results to multicast group {group}")
        ours = _torchrun(
            "netagg", workers, ["--switch", sw.address, *epoch_flag], out_dir / "train_netagg.json"
        )
        switch_stats = sw.stop()
    theirs = _torchrun("gloo", workers, ["--backend", "gloo", *epoch_flag], out_dir / "train_gloo.json")

    params = ours["parameters"]
    steps = ours["steps"]
    ring = 2 * (workers - 1) / workers * 4 * params * steps  # bytes a ring allreduce sends per worker
    traffic = ours["traffic_per_worker"]
    rows = [
        ("test accuracy", f"{ours['test_accuracy']:.4f}", f"{theirs['test_accuracy']:.4f}", ""),
        ("test loss", f"{ours['test_loss']:.4f}", f"{theirs['test_loss']:.4f}", ""),
        (
            "median time per step",
            f"{ours['median_step_ms']:.2f} ms",
            f"{theirs['median_step_ms']:.2f} ms",
            f"ratio {ours['median_step_ms'] / theirs['median_step_ms']:.2f}",
        ),
        ("sent per worker", _mib(traffic.get("bytes_sent", 0)), f"{_mib(ring)} (ring)", ""),
        ("received per worker", _mib(traffic.get("bytes_received", 0)), f"{_mib(ring)} (ring)", ""),
    ]
    print(f"\n{'':<22}{'netagg':>14}{'gloo':>20}")
    for name, a, b, note in rows:
        print(f"{name:<22}{a:>14}{b:>20}  {note}")
    gap = abs(ours["test_accuracy"] - theirs["test_accuracy"])
    counters = (switch_stats or {}).get("counters", {})
    print(
        f"\n{params:,} parameters, {steps} steps of {workers} workers; the switch added "
        f"{counters.get('contributions', 0):,} packets into {counters.get('completions', 0):,} results "
        f"and dropped {sum((switch_stats or {}).get('drops', {}).values())}; buckets through gloo: "
        f"{ours.get('gloo_buckets', 0)} (failed calls: {ours['fallbacks']})."
    )
    report = {
        "workers": workers,
        "epochs": epochs,
        "netagg": ours,
        "gloo": theirs,
        "switch": switch_stats,
        "ring_bytes_per_worker": ring,
        "accuracy_gap": gap,
        "elapsed_s": time.perf_counter() - t0,
    }
    (out_dir / "train.json").write_text(json.dumps(report, indent=1))
    _plot(ours, theirs, out_dir / "train.png")
    ok = gap <= 0.01
    print(
        f"{'accuracy within 1 point of gloo' if ok else 'ACCURACY DIFFERS FROM GLOO BY MORE THAN 1 POINT'}; "
        f"report {out_dir / 'train.json'}, plot {out_dir / 'train.png'} ({time.perf_counter() - t0:.0f} s)"
    )
    return 0 if ok else 1


def _plot(ours: dict[str, Any], theirs: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for run, style in ((ours, "-"), (theirs, "--")):
        ep = [e["epoch"] + 1 for e in run["epochs"]]
        ax1.plot(ep, [e["train_loss"] for e in run["epochs"]], style, label=f"{run['mode']} train")
        ax1.plot(ep, [e["test_loss"] for e in run["epochs"]], style, label=f"{run['mode']} test")
        ax2.plot([1e3 * t for t in run["step_times_s"]], style, lw=0.8, label=run["mode"])
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy loss")
    ax1.set_title("loss")
    ax1.legend()
    ax2.set_xlabel("step")
    ax2.set_ylabel("time per step (ms)")
    ax2.set_title("step times (rank 0)")
    ax2.set_yscale("log")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
