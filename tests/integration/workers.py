"""Worker bodies for the integration tests (module level, so spawned processes can import them)."""

from __future__ import annotations

from typing import Any

import numpy as np

from host_agent.quantize import allreduce_error_bound
from host_agent.worker import Worker


def inputs(rank: int, shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, rank, int(np.prod(shape))])
    if dtype == "int32":
        return rng.integers(-(2**20), 2**20, shape, dtype=np.int32)
    scale = 10.0 ** rng.uniform(-3, 3)
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def check(rank: int, world: int, shape: tuple[int, ...], dtype: str, got: np.ndarray, elements: int,
          seed: int = 0) -> dict[str, Any]:
    """Compare an allreduce result with numpy: int32 exactly, float32 within the documented bound."""
    everyone = [inputs(r, shape, dtype, seed) for r in range(world)]
    assert got.shape == shape, (got.shape, shape)
    assert got.dtype == np.dtype(dtype), got.dtype
    if dtype == "int32":
        return {"ok": bool(np.array_equal(got, np.sum(everyone, axis=0, dtype=np.int32))), "max_err": 0.0}
    exact = np.sum([e.astype(np.float64) for e in everyone], axis=0).reshape(-1)
    err = np.abs(got.reshape(-1).astype(np.float64) - exact)
    bound = allreduce_error_bound([e.reshape(-1) for e in everyone], got.reshape(-1), elements)
    return {"ok": bool((err <= bound).all()), "max_err": float(err.max(initial=0.0))}


def sweep(rank: int, address: str, world: int, cases: list[tuple[tuple[int, ...], str]], seed: int = 0,
          timeout: float = 30.0) -> dict[str, Any]:
    """Allreduce every (shape, dtype) case; return the checks and this worker's counters."""
    results = []
    with Worker(address, rank, world, timeout=timeout) as w:
        for shape, dtype in cases:
            got = w.allreduce(inputs(rank, shape, dtype, seed))
            results.append({"shape": shape, "dtype": dtype, **check(rank, world, shape, dtype, got, w.elements, seed)})
        return {"results": results, "stats": w.stats.as_dict()}


def torch_inputs(rank: int, address: str, world: int) -> list[bool]:
    import torch

    oks = []
    with Worker(address, rank, world) as w:
        for dtype in (torch.float32, torch.int32, torch.float64, torch.bfloat16):
            g = torch.Generator().manual_seed(rank)
            x = (torch.randn(3, 5, 7, generator=g) * 100).to(dtype)
            y = w.allreduce(x)
            everyone = [(torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(r)) * 100).to(dtype)
                        for r in range(world)]
            expected = torch.stack([e.double() for e in everyone]).sum(0)
            tol = 0 if dtype == torch.int32 else (1e-2 if dtype == torch.bfloat16 else 1e-4)
            ok = y.dtype == dtype and y.shape == x.shape
            ok = ok and bool(torch.allclose(y.double(), expected, rtol=tol, atol=tol * 100))
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
