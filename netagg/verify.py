"""Deterministic per-rank inputs and the check of an allreduce result against numpy.

Every rank can rebuild every other rank's input from (seed, rank, shape), so each worker can verify its
own result without moving data: int32 must be exactly numpy's sum, float32 within the bound of
docs/protocol.md ("Quantization"). Used by ``netagg allreduce --check``, the demo and the tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from host_agent.quantize import allreduce_error_bound

__all__ = ["check", "inputs"]


def inputs(rank: int, shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    """Rank ``rank``'s input: int32 in [-2**20, 2**20), or float32 normal with a random scale 1e-3-1e3."""
    rng = np.random.default_rng([seed, rank, int(np.prod(shape))])
    if dtype == "int32":
        return rng.integers(-(2**20), 2**20, shape, dtype=np.int32)
    scale = 10.0 ** rng.uniform(-3, 3)
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def check(
    world: int, shape: tuple[int, ...], dtype: str, got: np.ndarray, elements: int, seed: int = 0
) -> dict[str, Any]:
    """``{"ok": bool, "max_err": float, "max_err_over_bound": float}`` for a result of :func:`inputs`."""
    everyone = [inputs(r, shape, dtype, seed) for r in range(world)]
    if got.shape != shape or got.dtype != np.dtype(dtype):
        return {"ok": False, "max_err": float("nan"), "why": f"got {got.shape} {got.dtype}"}
    if dtype == "int32":
        ok = bool(np.array_equal(got, np.sum(everyone, axis=0, dtype=np.int32)))
        return {"ok": ok, "max_err": 0.0 if ok else float("nan"), "max_err_over_bound": 0.0}
    exact = np.sum([e.astype(np.float64) for e in everyone], axis=0).reshape(-1)
    err = np.abs(got.reshape(-1).astype(np.float64) - exact)
    bound = allreduce_error_bound([e.reshape(-1) for e in everyone], got.reshape(-1), elements)
    return {
        "ok": bool((err <= bound).all()),
        "max_err": float(err.max(initial=0.0)),
        "max_err_over_bound": float((err / bound).max(initial=0.0)),
    }
