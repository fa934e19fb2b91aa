"""Rank bodies for the DDP tests (module level, so spawned processes can import them)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np


def _model(seed: int):
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )


def _batch(rank: int, step: int):
    import torch

    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)


def grads(
    rank: int,
    world: int,
    port: int,
    switch: str | dict[str, Any] | None,
    bucket_cap_mb: float,
    steps: int = 2,
    bucket_view: bool = False,
) -> dict[str, Any]:
    """Train ``steps`` steps with plain SGD; return the last step's averaged and local gradients, and
    with a switch what the hook sent and got for every bucket ("buckets": {"step/index": (sent, mean)}).

    ``switch``: the switch's address, or the NetAggState arguments (e.g. controller=, job=, token=), or
    None for DDP's default allreduce. ``bucket_view``: DDP's ``gradient_as_bucket_view``."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from host_agent.ddp import NetAggState, netagg_hook

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = DDP(_model(0), bucket_cap_mb=bucket_cap_mb, gradient_as_bucket_view=bucket_view)
        state = None
        buckets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        now = {"step": 0}

        def recording_hook(state, bucket):  # unannotated: DDP checks a hook's annotations as objects
            """netagg_hook, keeping a copy of what went in and what came out."""
            sent = bucket.buffer().detach().numpy().copy()
            key = f"{now['step']}/{bucket.index()}"

            def keep(fut):
                mean = fut.value()
                buckets[key] = (sent, mean.detach().numpy().copy())
                return mean

            return netagg_hook(state, bucket).then(keep)

        if switch is not None:
            state = NetAggState(switch=switch) if isinstance(switch, str) else NetAggState(**switch)
            model.register_comm_hook(state, recording_hook)
        local = _model(0)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        local_opt = torch.optim.SGD(local.parameters(), lr=0.1)
        for step in range(steps):
            now["step"] = step
            x, y = _batch(rank, step)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            local_opt.zero_grad()  # the same step without DDP: this rank's own gradient
            torch.nn.functional.cross_entropy(local(x), y).backward()
            averaged = [p.grad.detach().clone().numpy() for p in model.parameters() if p.grad is not None]
            opt.step()
            local.load_state_dict(model.module.state_dict())
        own = [p.grad.detach().numpy().copy() for p in local.parameters() if p.grad is not None]
        out = {"averaged": averaged, "local_max": max(float(np.abs(g).max()) for g in own)}
        if state is not None:
            out["stats"] = state.summary()
            out["buckets"] = buckets
            state.close()
        return out
    finally:
        dist.destroy_process_group()


def survive_switch_death(
    rank: int, world: int, port: int, switch: str, switch_pid: int, fallback: str, timeout: float
) -> dict[str, Any]:
    """Train 6 steps; rank 0 kills the switch after step 2. Report how it ended and, per step, the
    averaged gradients, gloo's mean of the same local gradients (all_reduce, then / W, as the hook's
    fallback does; DDP's allreduce_hook divides first, the same but for denormals), their exact mean
    (float64) and how many of the step's buckets went through gloo."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from host_agent.ddp import NetAggState, netagg_hook

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = DDP(_model(0), bucket_cap_mb=0.05)
    state = NetAggState(switch=switch, fallback=fallback, timeout=timeout)  # type: ignore[arg-type]
    model.register_comm_hook(state, netagg_hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    local = _model(0)
    steps = []
    t0 = time.monotonic()
    try:
        for step in range(6):
            if step == 2 and rank == 0:
                os.kill(switch_pid, signal.SIGKILL)
            x, y = _batch(rank, step)
            before = vars(state.stats).copy()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            averaged = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
            # The same step without DDP gives this rank's own gradient; DDP's backward is over (its
            # buckets are all done), so these collectives come in the same order at every rank.
            local.load_state_dict(model.module.state_dict())
            local.zero_grad()
            torch.nn.functional.cross_entropy(local(x), y).backward()
            own = [p.grad.detach() for p in local.parameters() if p.grad is not None]
            gloo, exact = [g.clone() for g in own], [g.double() for g in own]
            for g, e in zip(gloo, exact, strict=True):
                dist.all_reduce(g)
                g.div_(world)
                dist.all_reduce(e)
                e.div_(world)
            steps.append(
                {
                    "averaged": [g.numpy() for g in averaged],
                    "gloo": [g.numpy() for g in gloo],
                    "exact": [e.numpy() for e in exact],
                    "local_max": max(float(g.abs().max()) for g in own),
                    "buckets": state.stats.buckets - before["buckets"],
                    "gloo_buckets": state.stats.gloo_buckets - before["gloo_buckets"],
                }
            )
            opt.step()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "seconds": time.monotonic() - t0}
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    stats = state.summary()
    state.close()
    dist.destroy_process_group()
    return {"stats": stats, "checksum": checksum, "seconds": time.monotonic() - t0, "steps": steps}


def train_through_restart(
    rank: int,
    world: int,
    port: int,
    switch: str | None,
    switch_pid: int,
    restarted: str,
    kill_step: int,
    epochs: int,
) -> dict[str, Any]:
    """Train examples/train_ddp.py's model on the digits for ``epochs`` with a small bucket cap; with a
    switch, rank 0 SIGKILLs it in step ``kill_step`` while the step's buckets are being allreduced (from
    the hook, when bucket 1 is handed over), and every rank waits before step ``kill_step + 2`` until the
    file ``restarted`` says the test started a switch on the same address again. Returns the test loss
    and accuracy, a checksum of the parameters, ``summary()`` (with the switch), the switch and gloo
    buckets of each step, and what host_agent.ddp logged at INFO and above."""
    import logging
    from pathlib import Path

    import torch
    import torch.distributed as dist
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    from host_agent.ddp import NetAggState, netagg_hook

    records: list[tuple[int, str]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append((record.levelno, record.getMessage()))

    logging.getLogger("host_agent.ddp").addHandler(Keep(logging.INFO))
    logging.getLogger("host_agent.ddp").setLevel(logging.INFO)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    train = TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
    sampler: DistributedSampler[Any] = DistributedSampler(
        train, num_replicas=world, rank=rank, shuffle=True, seed=0
    )
    loader = DataLoader(train, batch_size=32, sampler=sampler, drop_last=True)
    model = DDP(_model(0), bucket_cap_mb=0.05)
    state = None
    now = {"step": 0}
    if switch is not None:
        state = NetAggState(switch=switch, timeout=5.0, retry_after=0.2, retry_max=2.0)

        def killing_hook(state, bucket):  # unannotated: DDP checks a hook's annotations as objects
            if rank == 0 and now["step"] == kill_step and bucket.index() == 1:
                os.kill(switch_pid, signal.SIGKILL)
            return netagg_hook(state, bucket)

        model.register_comm_hook(state, killing_hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps: list[dict[str, int]] = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for xb, yb in loader:
            if switch is not None and now["step"] == kill_step + 2:
                deadline = time.monotonic() + 60
                while not Path(restarted).exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
            before = state.summary() if state is not None else None
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
            if state is not None and before is not None:
                after = state.summary()
                steps.append({k: after[k] - before[k] for k in ("switch_buckets", "gloo_buckets")})
            now["step"] += 1
    model.eval()
    with torch.no_grad():
        logits = model.module(torch.from_numpy(x_test))
        y = torch.from_numpy(y_test)
        loss = torch.nn.functional.cross_entropy(logits, y).item()
        accuracy = (logits.argmax(1) == y).float().mean().item()
    out: dict[str, Any] = {
        "loss": loss,
        "accuracy": accuracy,
        "checksum": float(sum(p.detach().double().sum() for p in model.parameters())),
        "steps": steps,
    }
    if state is not None:
        state.close()
        out["summary"] = state.summary()
        out["log"] = records
    dist.destroy_process_group()
    return out


def split_results(rank: int, world: int, port: int, switches: list[str], steps: int) -> dict[str, Any]:
    """Train ``steps`` steps, rank r through ``switches[r]`` (a relay that loses some of the switch's
    results to this rank, for one), with a 2 s timeout. Per step: the averaged gradients and their
    exact mean (float64 over gloo); and the largest local gradient. Ends with ``summary()``."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from host_agent.ddp import NetAggState, netagg_hook

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = DDP(_model(0), bucket_cap_mb=0.05)
    state = NetAggState(switch=switches[rank], timeout=2.0, retry_after=0.5, retry_max=1.0)
    model.register_comm_hook(state, netagg_hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    local = _model(0)
    out: list[dict[str, Any]] = []
    for step in range(steps):
        x, y = _batch(rank, step)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        averaged = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
        local.load_state_dict(model.module.state_dict())
        local.zero_grad()
        torch.nn.functional.cross_entropy(local(x), y).backward()
        own = [p.grad.detach() for p in local.parameters() if p.grad is not None]
        exact = [g.double() for g in own]
        for e in exact:
            dist.all_reduce(e)
            e.div_(world)
        out.append(
            {
                "averaged": [g.numpy() for g in averaged],
                "exact": [e.numpy() for e in exact],
                "local_max": max(float(g.abs().max()) for g in own),
            }
        )
        opt.step()
    state.close()
    summary = state.summary()
    dist.destroy_process_group()
    return {"steps": out, "summary": summary}
