"""Worker processes for tests/integration/test_collectives.py: every collective of protocol version 2,
each rank checking its own result against numpy from inputs every rank can rebuild."""

from __future__ import annotations

from typing import Any

import numpy as np

from host_agent import Worker
from host_agent.schedule import Schedule
from netagg import verify

DTYPES = ("float32", "bfloat16", "float16", "int32")


def tensor(rank: int, n: int, dtype: str, seed: int = 0) -> Any:
    """Rank ``rank``'s input: a torch tensor of ``n`` values; floats over six decades, mixed signs."""
    import torch

    g = torch.Generator().manual_seed(seed * 1000 + rank)
    if dtype == "int32":
        return torch.randint(-(2**20), 2**20, (n,), generator=g, dtype=torch.int32)
    x = torch.randn(n, generator=g) * 10.0 ** (3 - 6 * torch.rand(n, generator=g))
    return x.to(getattr(torch, dtype))


def _sum_ok(got: Any, everyone: list[Any], dtype: str, elements: int) -> bool:
    import torch

    if dtype == "int32":
        return bool(torch.equal(got, torch.stack(everyone).sum(0, dtype=torch.int32)))
    carried = [e.float().numpy() for e in everyone]
    g = got.double().numpy()
    bound = verify.allreduce_error_bound(carried, g, elements, dtype)
    return bool(np.all(np.abs(g - np.sum(carried, axis=0, dtype=np.float64)) <= bound))


def everything(rank: int, address: str | list[str], world: int, n: int) -> dict[str, Any]:
    """Every collective in every dtype; returns {check name: ok} and the worker's byte counters. With a
    list of leaf switches (a tree), rank r joins leaf r // (W / leaves) as its worker r % (W / leaves)."""
    import torch

    results: dict[str, Any] = {}
    worker_id = None
    if isinstance(address, list):
        per_leaf = world // len(address)
        address, worker_id = address[rank // per_leaf], rank % per_leaf
    with Worker(address, rank, world, timeout=30, worker_id=worker_id) as w:
        for dtype in DTYPES:
            x = tensor(rank, world * n, dtype)
            all_x = [tensor(r, world * n, dtype) for r in range(world)]
            stack = torch.stack(all_x)
            y = w.allreduce(x)
            results[f"allreduce sum {dtype}"] = y.dtype == x.dtype and _sum_ok(y, all_x, dtype, w.elements)
            for op in ("max", "min"):
                y = w.allreduce(x, op=op)
                want = stack.amax(0) if op == "max" else stack.amin(0)
                results[f"allreduce {op} {dtype}"] = bool(torch.equal(y, want))
            lo, hi = rank * n, (rank + 1) * n
            y = w.reduce_scatter(x)
            chunk = Schedule.sharded(world, n, w.elements, 1, True).elements  # the bound's blocks
            results[f"reduce_scatter sum {dtype}"] = y.shape == (n,) and _sum_ok(
                y, [a[lo:hi] for a in all_x], dtype, chunk
            )
            y = w.reduce_scatter(x, op="max")
            results[f"reduce_scatter max {dtype}"] = bool(torch.equal(y, stack.amax(0)[lo:hi]))
            y = w.all_gather(tensor(rank, n, dtype, seed=1))
            want = torch.cat([tensor(r, n, dtype, seed=1) for r in range(world)])
            results[f"all_gather {dtype}"] = bool(torch.equal(y, want))
            b = tensor(rank, n, dtype, seed=2)
            w.broadcast(b, root=world - 1, out=b)
            results[f"broadcast {dtype}"] = bool(torch.equal(b, tensor(world - 1, n, dtype, seed=2)))
        w.barrier()
        floats = tensor(rank, world * n, "float32")
        mean = w.reduce_scatter(floats, average=True)
        total = w.reduce_scatter(floats)
        results["reduce_scatter average"] = bool(torch.equal(mean, total / world))
        odd = np.frombuffer(bytes(range(rank, rank + 7)), np.uint8)  # 7 bytes: not whole words
        results["all_gather uint8"] = bool(
            np.array_equal(
                w.all_gather(odd), np.concatenate([np.arange(r, r + 7, dtype=np.uint8) for r in range(world)])
            )
        )
        f64 = np.arange(5, dtype=np.float64) / 3 * (rank + 1)
        results["broadcast float64"] = bool(np.array_equal(w.broadcast(f64, root=0), np.arange(5) / 3))
        try:
            w.reduce_scatter(f64.repeat(world))
            results["float64 refused"] = False
        except TypeError:
            results["float64 refused"] = True
        # Traffic of one large reduce-scatter and one all-gather, from this worker's counters.
        big = np.ones(world * (1 << 20), np.float32)  # 4 MiB per rank and shard
        before = w.stats.as_dict()
        w.reduce_scatter(big)
        mid = w.stats.as_dict()
        w.all_gather(np.ones(1 << 20, np.float32))
        after = w.stats.as_dict()
        results["traffic"] = {
            "rs_sent": mid["bytes_sent"] - before["bytes_sent"],
            "rs_received": mid["bytes_received"] - before["bytes_received"],
            "ag_sent": after["bytes_sent"] - mid["bytes_sent"],
            "ag_received": after["bytes_received"] - mid["bytes_received"],
            "rs_retx": mid["retransmissions"] - before["retransmissions"],
            "ag_retx": after["retransmissions"] - mid["retransmissions"],
            "size": big.nbytes,
        }
    return results


def mismatch(rank: int, address: str, world: int) -> str:
    """Rank 0 calls reduce_scatter while the others call allreduce: every rank is told why."""
    with Worker(address, rank, world, timeout=5) as w:
        x = np.ones(world * 1000, np.float32)
        try:
            if rank == 0:
                w.reduce_scatter(x)
            else:
                w.allreduce(x)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return "no error"
