"""Block-wise float32 <-> int32 quantization that cannot overflow the switch's int32 sums.

Part of the wire protocol (docs/protocol.md, "Quantization"): every worker must quantize a block with
the same agreed exponent and scale, so this lives in the shared core beside :mod:`netagg.protocol`.

Each block (one packet's worth of elements) is scaled by a power of two chosen from the *largest*
exponent any worker has for that block, so every worker uses the same scale and the integer sum means
something. With ``B = scale_bits(W)`` and every ``|x| < 2**E`` (E = agreed block exponent), each
quantized value obeys ``|q| <= 2**B`` and the sum of W of them ``<= W * 2**B <= 2**30``: no overflow.

Error of one allreduce element (derived in docs/protocol.md, "Quantization"):

    |result - exact_sum| <= W * 2**(E - B - 1) + 2**-24 * |result| + 2**-150

The exponent field encodes ``E + EXP_BIAS``; ``EXP_NONE`` means the block is zero at every worker and
``EXP_NONFINITE`` that some worker had an inf or NaN in it.
"""

from __future__ import annotations

import numpy as np

from netagg import kernels
from netagg.protocol import EXP_BIAS, EXP_NONE, EXP_NONFINITE

__all__ = [
    "block_exponents",
    "chunk_exponents",
    "dequantize",
    "error_bound",
    "quantize",
]

_F32_MAX_SCALE_EXP = 127  # 2**127 is the largest power of two a float32 holds


def block_exponents(blocks: np.ndarray) -> np.ndarray:
    """Encoded exponent (uint16) of each row of a 2-D float32 array.

    ``EXP_NONE`` for an all-zero row, ``EXP_NONFINITE`` for a row with inf or NaN, otherwise
    ``e + EXP_BIAS`` where ``max|row| < 2**e`` (``np.frexp``'s exponent of the row's largest magnitude).
    """
    if blocks.ndim != 2:
        raise ValueError("block_exponents takes a 2-D array of blocks")
    return kernels.numpy_block_exponents(blocks, EXP_BIAS, EXP_NONE, EXP_NONFINITE)


def chunk_exponents(flat: np.ndarray, elements: int) -> np.ndarray:
    """:func:`block_exponents` of every packet-sized chunk of a flat float32 array (the last chunk
    may be shorter), in one pass (:mod:`netagg.kernels`)."""
    exps = np.empty(-(-flat.size // elements), dtype=np.uint16)
    kernels.chunk_exponents(
        np.ascontiguousarray(flat, dtype=np.float32), elements, exps, EXP_BIAS, EXP_NONE, EXP_NONFINITE
    )
    return exps


def _scale_exps(exps: np.ndarray, bits: int) -> np.ndarray:
    """``B - E`` for each encoded exponent (int32); meaningless for NONE/NONFINITE rows."""
    return bits - (exps.astype(np.int32) - EXP_BIAS)


def quantize(blocks: np.ndarray, exps: np.ndarray, bits: int, out: np.ndarray | None = None) -> np.ndarray:
    """Quantize rows of ``blocks`` (float32, 2-D) with agreed encoded exponents ``exps`` (one per row).

    Rows whose agreed exponent is NONE or NONFINITE become zeros (the agreed value says what the
    result of that block is). Returns int32 (native order) or writes into ``out``, whose dtype may be
    ``>i4`` so that the network copy is written in one pass.
    """
    n_rows = blocks.shape[0]
    if exps.shape != (n_rows,):
        raise ValueError(f"need one exponent per block: {exps.shape} for {n_rows} blocks")
    if out is None:
        out = np.empty(blocks.shape, dtype=np.int32)
    special = (exps == EXP_NONE) | (exps == EXP_NONFINITE)
    shift = np.where(special, 0, _scale_exps(exps, bits))
    # float32 arithmetic is exact for a power-of-two scale up to 2**127; tinier blocks need float64.
    wide = shift > _F32_MAX_SCALE_EXP
    scale = np.ldexp(np.float32(1), np.minimum(shift, _F32_MAX_SCALE_EXP)).astype(np.float32)
    scale[special] = 0
    with np.errstate(invalid="ignore"):  # inf * 0 in a NONFINITE row: overwritten below
        tmp = np.multiply(blocks, scale[:, None], dtype=np.float32)
        np.rint(tmp, out=tmp)
        out[...] = tmp
    if special.any():
        out[special] = 0
    for i in np.flatnonzero(wide):  # blocks with magnitudes below 2**-97: rare
        out[i] = np.rint(blocks[i].astype(np.float64) * np.ldexp(1.0, int(shift[i])))
    return out


def dequantize(
    sums: np.ndarray, exps: np.ndarray, bits: int, out: np.ndarray | None = None, factor: float = 1.0
) -> np.ndarray:
    """float32 rows from integer sums (2-D, any int32 byte order) and their agreed exponents, times
    ``factor`` (e.g. 1/W for a mean: folded into the power-of-two scale, so exact when W is a power
    of two; otherwise the product is rounded once, not twice).

    A NONE row is zero; a NONFINITE row is NaN (some worker had inf or NaN in that block).
    """
    if out is None:
        out = np.empty(sums.shape, dtype=np.float32)
    none = exps == EXP_NONE
    nonfinite = exps == EXP_NONFINITE
    shift = np.where(none | nonfinite, 0, -_scale_exps(exps, bits))
    scale64 = np.ldexp(1.0, shift) * factor
    # Below 2**-126 a float32 product would be denormal and lose bits: those rows go through float64.
    tiny = (scale64 < 2.0**-126) & ~none & ~nonfinite
    scale = np.where(tiny, 0.0, scale64).astype(np.float32)
    scale[none] = 0
    scale[nonfinite] = np.nan
    with np.errstate(over="ignore", invalid="ignore"):  # a sum beyond float32 saturates to inf
        np.multiply(sums, scale[:, None], out=out, dtype=np.float32)
    for i in np.flatnonzero(tiny):
        out[i] = (np.ldexp(sums[i].astype(np.float64), int(shift[i])) * factor).astype(np.float32)
    return out


def error_bound(exps: np.ndarray, bits: int, total_workers: int, result: np.ndarray) -> np.ndarray:
    """Per-element bound on ``|result - exact_sum|`` for rows with agreed exponents ``exps``."""
    e = exps.astype(np.float64) - EXP_BIAS
    quant = total_workers * np.ldexp(1.0, (e - bits - 1).astype(np.int64))
    quant = np.where((exps == EXP_NONE) | (exps == EXP_NONFINITE), 0.0, quant)
    return quant[:, None] + np.abs(result.astype(np.float64)) * 2.0**-24 + 2.0**-150
