"""The hot path's per-element loops: in C where the extension was built, else numpy.

Each function makes one pass over a packet's worth of elements; the payload side is int32 in network
byte order (docs/protocol.md). The C versions (netagg/_kernels.c, built by ``pip install`` when a C
compiler is there) do in one pass what numpy does in two or three plus a cast loop for the foreign
byte order; the numpy versions below are the reference they are tested against, bit for bit, and what
runs where the extension is missing or ``NETAGG_KERNELS=numpy`` is set.

These are internal and do not check their arguments: arrays must be C-contiguous and of the dtypes
named (``add_net`` takes any buffers), and ``dst`` must hold as many elements as ``src``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from netagg.protocol import PAYLOAD_DTYPE

__all__ = [
    "IMPLEMENTATION",
    "NUMPY",
    "add_net",
    "block_exponent",
    "chunk_exponents",
    "dequantize",
    "quantize",
]

log = logging.getLogger(__name__)


def numpy_quantize(src: np.ndarray, scale: float, dst: np.ndarray) -> None:
    """``dst`` (>i4) = rint(``src`` (float32) * ``scale``), the product in float32."""
    tmp = np.multiply(src, np.float32(scale), dtype=np.float32)
    np.rint(tmp, out=tmp)
    dst[...] = tmp


def numpy_dequantize(src: np.ndarray, scale: float, dst: np.ndarray) -> None:
    """``dst`` (float32) = float32(``src`` (>i4)) * float32(``scale``), in float32."""
    np.multiply(src, np.float32(scale), out=dst, dtype=np.float32)


def numpy_add_net(acc: Any, src: Any) -> None:
    """``acc`` += ``src``, both int32 in network byte order (any buffers; ``acc`` may be longer),
    wrapping."""
    s = np.frombuffer(src, PAYLOAD_DTYPE)
    a = np.frombuffer(acc, PAYLOAD_DTYPE, s.size)
    np.add(a, s, out=a)


def numpy_block_exponents(blocks: np.ndarray, bias: int, none: int, nonfinite: int) -> np.ndarray:
    """Encoded exponent (uint16) of each row of a 2-D float32 array: ``none`` for an all-zero row,
    ``nonfinite`` for a row with inf or NaN, else ``np.frexp``'s exponent of the row's largest
    magnitude plus ``bias``."""
    if blocks.shape[1] == 0:
        return np.full(blocks.shape[0], none, dtype=np.uint16)
    with np.errstate(invalid="ignore"):
        mag = np.maximum(np.abs(blocks.max(axis=1)), np.abs(blocks.min(axis=1)))  # NaN propagates
    finite = np.isfinite(mag)
    _, e = np.frexp(np.where(finite, mag, 0).astype(np.float32))
    out = (e.astype(np.int32) + bias).astype(np.uint16)
    out[mag == 0] = none
    out[~finite] = nonfinite
    return out


def numpy_chunk_exponents(
    flat: np.ndarray, elements: int, out: np.ndarray, bias: int, none: int, nonfinite: int
) -> None:
    """``out[c]`` = :func:`numpy_block_exponents` of each chunk of ``elements`` of ``flat`` (float32;
    the last chunk may be shorter)."""
    nfull = flat.size // elements
    if nfull:
        out[:nfull] = numpy_block_exponents(
            flat[: nfull * elements].reshape(nfull, elements), bias, none, nonfinite
        )
    if nfull * elements < flat.size:
        out[nfull] = numpy_block_exponents(flat[nfull * elements :].reshape(1, -1), bias, none, nonfinite)[0]


def numpy_block_exponent(src: np.ndarray, bias: int, none: int, nonfinite: int) -> int:
    """:func:`numpy_chunk_exponents` of all of ``src`` as one chunk."""
    return int(numpy_block_exponents(src.reshape(1, -1), bias, none, nonfinite)[0])


NUMPY: dict[str, Callable[..., Any]] = {
    "quantize": numpy_quantize,
    "dequantize": numpy_dequantize,
    "add_net": numpy_add_net,
    "chunk_exponents": numpy_chunk_exponents,
    "block_exponent": numpy_block_exponent,
}


def _load() -> tuple[str, dict[str, Callable[..., Any]]]:
    if os.environ.get("NETAGG_KERNELS", "").lower() == "numpy":
        return "numpy", NUMPY
    try:
        from netagg import _kernels  # type: ignore[attr-defined]
    except ImportError as exc:  # built without a C compiler: correct, only slower
        log.debug("netagg._kernels not built (%s): using numpy", exc)
        return "numpy", NUMPY
    return "c", {name: getattr(_kernels, name) for name in NUMPY}


#: "c" or "numpy": which versions the functions below are.
IMPLEMENTATION, _impl = _load()
quantize: Callable[[Any, float, Any], None] = _impl["quantize"]
dequantize: Callable[[Any, float, Any], None] = _impl["dequantize"]
add_net: Callable[[Any, Any], None] = _impl["add_net"]
chunk_exponents: Callable[[Any, int, Any, int, int, int], None] = _impl["chunk_exponents"]
block_exponent: Callable[[Any, int, int, int], int] = _impl["block_exponent"]
