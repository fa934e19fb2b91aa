"""Train a small MLP on scikit-learn's handwritten digits with DDP, gradients through netagg or gloo.

    netagg switch --listen 127.0.0.1:47000 --workers 4 &
    torchrun --nproc-per-node 4 examples/train_ddp.py --switch 127.0.0.1:47000
    torchrun --nproc-per-node 4 examples/train_ddp.py --backend gloo        # the same, plain DDP

The dataset (1,797 8x8 images) ships inside scikit-learn: nothing is downloaded. Every rank trains on its
shard (DistributedSampler); rank 0 evaluates on the held-out 20% after each epoch and, with --out, writes
the run's numbers as JSON. The only netagg-specific line is the register_comm_hook call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--switch", metavar="HOST:PORT", help="allreduce gradients through this netagg switch")
    how.add_argument("--backend", choices=["gloo"], help="plain DDP allreduce, for comparison")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--worker-id",
        type=int,
        help="this rank's worker id at its switch, when that switch is a leaf of a tree (default: rank)",
    )
    p.add_argument("--no-batch", action="store_true", help="no GSO runs (for raw-Ethernet switch nodes)")
    p.add_argument(
        "--min-rto",
        type=float,
        help="the workers' shortest retransmission timeout in seconds (default: the worker's): raise it "
        "where links queue more than it (a window of 1 MB at 100 Mbit/s queues 84 ms)",
    )
    p.add_argument("--out", type=Path, help="rank 0 writes the run's metrics here (JSON)")
    p.add_argument("--progress", action="store_true", help="rank 0 prints 'PROGRESS step total' lines")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    dist.init_process_group("gloo")  # torchrun's environment; DDP's set-up (and the fallback) use it
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.2, random_state=args.seed, stratify=digits.target
    )
    train = TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    test_x, test_y = torch.from_numpy(x_test), torch.from_numpy(y_test)

    model = DDP(
        torch.nn.Sequential(
            torch.nn.Linear(64, args.hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(args.hidden, args.hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(args.hidden, 10),
        )
    )
    state = None
    if args.switch:
        from host_agent.ddp import NetAggState, netagg_hook

        options: dict[str, object] = {"batch": not args.no_batch}
        if args.worker_id is not None:
            options["worker_id"] = args.worker_id
        if args.min_rto is not None:
            options["min_rto"] = args.min_rto
        state = NetAggState(switch=args.switch, worker_options=options)
        model.register_comm_hook(state, netagg_hook)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    total_steps = args.epochs * len(loader)
    step_times, epochs = [], []
    step = 0
    dist.barrier()
    t_start = time.perf_counter()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        losses = []
        for xb, yb in loader:
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            step_times.append(time.perf_counter() - t0)
            losses.append(loss.item())
            step += 1
            if args.progress and rank == 0:
                print(f"PROGRESS {step} {total_steps}", flush=True)
        model.eval()
        with torch.no_grad():
            logits = model.module(test_x)
            test_loss = torch.nn.functional.cross_entropy(logits, test_y).item()
            accuracy = (logits.argmax(1) == test_y).float().mean().item()
        epochs.append(
            {
                "epoch": epoch,
                "train_loss": statistics.fmean(losses),
                "test_loss": test_loss,
                "test_accuracy": accuracy,
                "elapsed_s": time.perf_counter() - t_start,  # training time so far (time to accuracy)
            }
        )

    params = sum(p.numel() for p in model.parameters())
    traffic = state.traffic() if state is not None else {}
    summary = {}
    if state is not None:
        state.close()  # at every rank; logs what went where (summary())
        summary = state.summary()
    if rank == 0:
        result = {
            "mode": "netagg" if args.switch else "gloo",
            "world_size": world,
            "parameters": params,
            "steps": step,
            "epochs": epochs,
            "step_times_s": step_times,
            "median_step_ms": 1e3 * statistics.median(step_times[len(loader) :] or step_times),
            "test_accuracy": epochs[-1]["test_accuracy"],
            "test_loss": epochs[-1]["test_loss"],
            "traffic_per_worker": traffic,
            "fallbacks": summary.get("fallbacks", 0),  # calls through the switch that failed
            "gloo_buckets": summary.get("gloo_buckets", 0),  # buckets that went through gloo instead
            "netagg": summary,
        }
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1))
        print(
            f"{result['mode']}: test accuracy {result['test_accuracy']:.4f}, loss {result['test_loss']:.4f}, "
            f"median step {result['median_step_ms']:.2f} ms",
            flush=True,
        )
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
