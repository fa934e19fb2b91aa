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
) -> dict[str, Any]:
    """Train ``steps`` steps with plain SGD; return the last step's averaged and local gradients, and
    with a switch what the hook sent and got for every bucket ("buckets": {"step/index": (sent, mean)}).

    ``switch``: the switch's address, or the NetAggState arguments (e.g. controller=, job=, token=), or
    None for DDP's default allreduce."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from host_agent.ddp import NetAggState, netagg_hook

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = DDP(_model(0), bucket_cap_mb=bucket_cap_mb)
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
            out["stats"] = vars(state.stats).copy()
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
    (float64) and how many of the step's buckets fell back."""
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
                    "fallbacks": state.stats.fallbacks - before["fallbacks"],
                }
            )
            opt.step()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "seconds": time.monotonic() - t0}
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    stats = vars(state.stats).copy()
    state.close()
    dist.destroy_process_group()
    return {"stats": stats, "checksum": checksum, "seconds": time.monotonic() - t0, "steps": steps}
