"""Deterministic per-rank inputs and the check of an allreduce result against numpy.

Every rank can rebuild every other rank's input from (seed, rank, shape), so each worker can verify its
own result without moving data: int32 must be exactly numpy's (wrapping) sum, float32 within the bound of
docs/protocol.md ("Quantization"). Used by ``netagg allreduce --check``, the demo and the tests.

The float32 bound here is an oracle: it takes the block exponent from the inputs alone, by the
definition in docs/protocol.md, never from the code under test (``netagg.quantize``, ``netagg.kernels``),
so that an implementation that agrees on a wrong exponent cannot widen its own tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ROUNDING", "agreed_exponents", "allreduce_error_bound", "check", "inputs"]


def inputs(rank: int, shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    """Rank ``rank``'s input: int32 in [-2**20, 2**20), or float32 normal with a random scale 1e-3-1e3."""
    rng = np.random.default_rng([seed, rank, int(np.prod(shape))])
    if dtype == "int32":
        return rng.integers(-(2**20), 2**20, shape, dtype=np.int32)
    scale = 10.0 ** rng.uniform(-3, 3)
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def agreed_exponents(inputs: Sequence[np.ndarray], elements: int) -> np.ndarray:
    """The exponent E every worker must agree on for each block of an allreduce of ``inputs`` (one flat
    array of finite float32 values per worker) in packets of ``elements``: ``np.frexp``'s exponent of
    the block's largest magnitude at any worker, so that ``2**(E-1) <= max|x| < 2**E``; ``-inf`` for a
    block that is zero at every worker. Computed from the inputs alone (float64, exact for float32)."""
    total = inputs[0].size
    nblocks = -(-total // elements)
    mags = np.zeros(nblocks * elements)
    for x in inputs:
        flat = np.asarray(x, dtype=np.float64).reshape(-1)
        if not np.isfinite(flat).all():
            raise ValueError("the bound is for finite inputs")
        np.maximum(mags[:total], np.abs(flat), out=mags[:total])
    top = mags.reshape(nblocks, elements).max(axis=1, initial=0.0)
    _, e = np.frexp(top)
    return np.where(top > 0, e.astype(np.float64), -np.inf)


#: Unit roundoff and half the smallest subnormal of the types a sum is rounded to at the end
#: (docs/protocol.md, "Quantization"): float32's are in the bound already.
ROUNDING = {"float32": (0.0, 0.0), "bfloat16": (2.0**-8, 2.0**-134), "float16": (2.0**-11, 2.0**-25)}


def allreduce_error_bound(
    inputs: Sequence[np.ndarray], result: np.ndarray, elements: int, dtype: str = "float32"
) -> np.ndarray:
    """The documented per-element bound on ``|result - exact_sum|`` for an allreduce of ``inputs`` (one
    flat float32 array per worker, ``W = len(inputs)``; bfloat16 and float16 inputs widened exactly)
    in packets of ``elements``, evaluated at ``result``: ``W * 2**(E-B-1) + 2**-24 * |result| +
    2**-150`` with ``B = 30 - ceil(log2(W))`` and E from :func:`agreed_exponents`; for a result rounded
    to ``dtype`` "bfloat16" or "float16" also ``u * |result| + s`` (u its unit roundoff, s half its
    smallest subnormal)."""
    u, tiny = ROUNDING[dtype]
    world = len(inputs)
    bits = 30 - (world - 1).bit_length()  # ceil(log2(W)) is the bit length of W - 1
    quant = world * np.exp2(agreed_exponents(inputs, elements) - bits - 1)  # 0 for an all-zero block
    per_element = np.repeat(quant, elements)[: inputs[0].size]
    mag = np.abs(np.asarray(result, dtype=np.float64).reshape(-1))
    return per_element + mag * (2.0**-24 + u) + 2.0**-150 + tiny


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
