"""Worker bodies for the integration tests (module level, so spawned processes can import them)."""

from __future__ import annotations

from typing import Any

import numpy as np

from host_agent.worker import Worker
from netagg import verify
from netagg.verify import inputs


def check(
    rank: int, world: int, shape: tuple[int, ...], dtype: str, got: np.ndarray, elements: int, seed: int = 0
) -> dict[str, Any]:
    return verify.check(world, shape, dtype, got, elements, seed)


def sweep(
    rank: int,
    address: str,
    world: int,
    cases: list[tuple[tuple[int, ...], str]],
    seed: int = 0,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Allreduce every (shape, dtype) case; return the checks and this worker's counters."""
    results = []
    with Worker(address, rank, world, timeout=timeout) as w:
        for shape, dtype in cases:
            got = w.allreduce(inputs(rank, shape, dtype, seed))
            results.append(
                {"shape": shape, "dtype": dtype, **check(rank, world, shape, dtype, got, w.elements, seed)}
            )
        return {"results": results, "stats": w.stats.as_dict()}


def average(rank: int, address: str, world: int, elements: int) -> list[bool]:
    """``average=True`` against the sum divided afterwards (both paths: large and small packets), and
    int32 refused."""
    x = inputs(rank, (100_003,), "float32", 0)
    with Worker(address, rank, world, timeout=30) as w:
        total = w.allreduce(x)
        mean = w.allreduce(x, average=True)
        try:
            w.allreduce(np.ones(3, np.int32), average=True)
            refused = False
        except ValueError:
            refused = True
        assert w.elements == elements
    # world is a power of two: dividing inside dequantization is exact
    return [np.array_equal(mean, total / np.float32(world)), mean.dtype == np.float32, refused]


def torch_inputs(rank: int, address: str, world: int) -> list[bool]:
    import torch

    def tensor(r: int, dtype: torch.dtype) -> torch.Tensor:
        g = torch.Generator().manual_seed(r)
        x = torch.randn(3, 50, 7, generator=g) * 100
        if dtype.is_floating_point:  # magnitudes over 4 decades: most have bits below the quantum
            x *= 10.0 ** (-4 * torch.rand(3, 50, 7, generator=g))
        return x.to(dtype)

    oks = []
    with Worker(address, rank, world) as w:
        try:  # float64 would be narrowed: refused, with the reason
            w.allreduce(tensor(rank, torch.float64))
            oks.append(False)
        except TypeError as exc:
            oks.append("narrowed" in str(exc))
        for dtype in (torch.float32, torch.int32, torch.float16, torch.bfloat16):
            x = tensor(rank, dtype)
            y = w.allreduce(x)
            everyone = [tensor(r, dtype) for r in range(world)]
            ok = y.dtype == dtype and y.shape == x.shape
            if dtype == torch.int32:
                ok = ok and bool(torch.equal(y, torch.stack(everyone).sum(0, dtype=torch.int32)))
            else:  # summed as float32, rounded to the dtype: within the documented bound
                carried = [e.float().numpy().reshape(-1) for e in everyone]
                got = y.double().numpy().reshape(-1)
                bound = verify.allreduce_error_bound(carried, got, w.elements, str(dtype).split(".")[1])
                ok = ok and bool(np.all(np.abs(got - np.sum(carried, axis=0, dtype=np.float64)) <= bound))
            oks.append(ok)
    return oks


def stall(rank: int, address: str, world: int, skip_rank: int, timeout: float) -> str:
    """Every rank joins; ``skip_rank`` then never calls allreduce. Returns the error text of the others."""
    with Worker(address, rank, world, timeout=timeout) as w:
        if rank == skip_rank:
            import time

            time.sleep(timeout * 2.5)
            return "skipped"
        try:
            w.allreduce(np.ones(50_000, np.float32))
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return "no error"


def nonfinite(rank: int, address: str, world: int) -> str:
    x = np.ones(1000, np.float32)
    if rank == 1:
        x[700] = np.inf
    with Worker(address, rank, world) as w:
        try:
            w.allreduce(x)
        except ValueError as exc:
            msg = f"{type(exc).__name__}: {exc}"
        else:
            msg = "no error"
        # The worker is still usable after a non-finite input (the collective itself completed).
        y = w.allreduce(np.ones(10, np.float32))
        return msg + f" | then {y.tolist()}"


def sweep_job(
    rank: int, address: str, world: int, job: int, cases: list[tuple[tuple[int, ...], str]]
) -> dict[str, Any]:
    """Like :func:`sweep`, in job ``job``."""
    results = []
    with Worker(address, rank, world, job=job, timeout=30) as w:
        for shape, dtype in cases:
            got = w.allreduce(inputs(rank, shape, dtype))
            results.append(
                {"shape": shape, "dtype": dtype, **check(rank, world, shape, dtype, got, w.elements)}
            )
        return {"results": results}


def controller_job(
    rank: int,
    controller: str,
    job_id: str,
    token: str,
    cases: list[tuple[tuple[int, ...], str]],
    seed: int = 0,
    repeat: int = 1,
) -> dict[str, Any]:
    """A worker of a job created through the controller: join there, then allreduce every case
    ``repeat`` times, checking each result."""
    results = []
    with Worker(controller=controller, job=job_id, rank=rank, token=token, timeout=30) as w:
        for _ in range(repeat):
            for shape, dtype in cases:
                got = w.allreduce(inputs(rank, shape, dtype, seed))
                results.append(
                    {
                        "shape": shape,
                        "dtype": dtype,
                        **check(rank, w.world_size, shape, dtype, got, w.elements, seed),
                    }
                )
        return {"results": results, "wire_job": w.job, "slot_base": w.slot_base, "switch": w.switch}


def tree_sweep(
    rank: int,
    leaves: list[str],
    world: int,
    cases: list[tuple[tuple[int, ...], str]],
    seed: int = 0,
) -> dict[str, Any]:
    """A worker of a job aggregated by a tree: ranks are spread over the leaf switches in order
    (rank r at leaf r // per_leaf, worker id r % per_leaf there)."""
    per_leaf = world // len(leaves)
    results = []
    with Worker(leaves[rank // per_leaf], rank, world, worker_id=rank % per_leaf, timeout=30) as w:
        for shape, dtype in cases:
            got = w.allreduce(inputs(rank, shape, dtype, seed))
            results.append(
                {"shape": shape, "dtype": dtype, **check(rank, world, shape, dtype, got, w.elements, seed)}
            )
        return {"results": results, "stats": w.stats.as_dict()}
