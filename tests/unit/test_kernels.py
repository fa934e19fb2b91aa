"""The hot path's C loops (netagg._kernels) give the same bits as their numpy reference versions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from netagg import kernels
from netagg.protocol import EXP_BIAS, EXP_NONE, EXP_NONFINITE, HEADER_SIZE
from tests.unit.test_quantize import exact_at

try:
    from netagg import _kernels as native  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - only where the build had no C compiler
    native = None

needs_c = pytest.mark.skipif(native is None, reason="netagg._kernels not built (no C compiler at install)")
F32 = np.finfo(np.float32)
SPECIAL = [0.0, -0.0, F32.tiny, 1e-45, -1e-40, F32.max, -F32.max, 1.5, -2.5, 0.5, np.inf, -np.inf, np.nan]


def unaligned(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` as ``dtype`` at a datagram's payload offset inside a buffer (not 8- or 16-aligned)."""
    raw = bytearray(HEADER_SIZE + 1 + values.size * 4)
    arr = np.frombuffer(raw, dtype, values.size, HEADER_SIZE + 1)
    arr[...] = values
    return arr


def bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).view(np.uint8).tobytes()  # NaNs compare by their bits too


def same_as_numpy(name: str, src: np.ndarray, scale: float, out_dtype: str, offset: bool = False) -> None:
    """The C version of a scaled pass (quantize, dequantize) writes the bits its numpy version does."""
    ref = np.empty(src.size, out_dtype)
    got = unaligned(np.zeros(src.size, out_dtype), out_dtype) if offset else np.empty(src.size, out_dtype)
    with np.errstate(over="ignore"):  # a dequantized sum beyond float32 is inf in both
        kernels.NUMPY[name](src, scale, ref)
    getattr(native, name)(src, scale, got)
    assert bits(got) == bits(ref)


finite = st.floats(width=32, allow_nan=False, allow_infinity=False)


@needs_c
@settings(max_examples=300, deadline=None)
@given(
    x=hnp.arrays(np.float32, st.integers(0, 70), elements=st.one_of(finite, st.sampled_from(SPECIAL[:10]))),
    headroom=st.integers(25, 30),
    offset=st.booleans(),
)
def test_quantize_matches_numpy(x: np.ndarray, headroom: int, offset: bool) -> None:
    """rint(x * 2**s) in float32, to big-endian int32, for the scales the worker uses (the block's
    largest magnitude below 2**headroom), at aligned and unaligned addresses."""
    top = float(np.max(np.abs(x))) if x.size else 0.0
    shift = headroom - (int(np.frexp(np.float32(top))[1]) if top else 0)
    assume(shift <= 127)  # the worker takes tinier blocks through float64 (netagg.quantize.quantize)
    same_as_numpy("quantize", unaligned(x, "<f4") if offset else x, 2.0**shift, ">i4", offset)


@pytest.mark.parametrize("impl", ["numpy", "c"])
@pytest.mark.parametrize("shift", [0, 23, 29, 127])
def test_quantize_rounds_exact_ties_to_even(impl: str, shift: int) -> None:
    """Both quantizers give round half to even (docs/protocol.md) for exact ties k + 1/2 of both
    signs, k even and odd, and their neighbours; the oracle is Python's round()."""
    if impl == "c" and native is None:
        pytest.skip("netagg._kernels not built (no C compiler at install)")
    x, scaled = exact_at(shift)
    out = np.empty(x.size, ">i4")
    (native.quantize if impl == "c" else kernels.NUMPY["quantize"])(x, 2.0**shift, out)
    assert out.tolist() == [round(v) for v in scaled]


@needs_c
@settings(max_examples=300, deadline=None)
@given(
    q=hnp.arrays(np.int32, st.integers(0, 70)),
    exp=st.integers(-160, 140),
    factor=st.sampled_from([1.0, 0.5, 0.25, 1 / 3, 1 / 6, 1 / 32]),
)
def test_dequantize_matches_numpy(q: np.ndarray, exp: int, factor: float) -> None:
    """float32(int32) * float32(scale), including results that overflow to inf or go denormal."""
    scale = float(np.ldexp(factor, exp))
    assume(0 < scale < float(F32.max))
    same_as_numpy("dequantize", unaligned(q, ">i4"), scale, "<f4")


@needs_c
@settings(max_examples=300, deadline=None)
@given(
    acc=hnp.arrays(np.int32, 64, elements=st.integers(-(2**31), 2**31 - 1)),
    src=hnp.arrays(np.int32, st.integers(0, 64), elements=st.integers(-(2**31), 2**31 - 1)),
)
def test_add_net_matches_numpy_and_wraps(acc: np.ndarray, src: np.ndarray) -> None:
    """acc += src in network byte order, only len(src) elements, wrapping like numpy's int32."""
    ref = acc.astype(">i4")
    got = unaligned(acc, ">i4")
    s = unaligned(src, ">i4")
    kernels.NUMPY["add_net"](ref, s)
    native.add_net(got, s)
    assert bits(got) == bits(ref)
    expect = acc.astype(np.int64)
    expect[: src.size] += src
    assert np.array_equal(got.astype(np.int64), (expect + 2**31) % 2**32 - 2**31)


@needs_c
@settings(max_examples=300, deadline=None)
@given(
    x=hnp.arrays(
        np.float32,
        st.integers(1, 200),
        elements=st.one_of(finite, st.sampled_from(SPECIAL)),
    ),
    elements=st.integers(1, 64),
)
def test_chunk_exponents_matches_numpy(x: np.ndarray, elements: int) -> None:
    """Zero, non-finite and denormal chunks, and a shorter last chunk, encode as numpy's frexp says."""
    n = -(-x.size // elements)
    ref = np.empty(n, np.uint16)
    got = np.empty(n, np.uint16)
    kernels.NUMPY["chunk_exponents"](x, elements, ref, EXP_BIAS, EXP_NONE, EXP_NONFINITE)
    native.chunk_exponents(unaligned(x, "<f4"), elements, got, EXP_BIAS, EXP_NONE, EXP_NONFINITE)
    assert np.array_equal(got, ref)
    assert got.tolist() == documented_exponents(x, elements)
    whole = kernels.NUMPY["block_exponent"](x, EXP_BIAS, EXP_NONE, EXP_NONFINITE)
    assert native.block_exponent(unaligned(x, "<f4"), EXP_BIAS, EXP_NONE, EXP_NONFINITE) == whole
    if elements >= x.size:
        assert whole == ref[0]


def documented_exponents(x: np.ndarray, elements: int) -> list[int]:
    """docs/protocol.md's encoding of each chunk, from math.frexp alone: NONFINITE if the chunk holds
    inf or NaN, NONE if it is all zero, else e + bias with max|x| = m * 2**e, 0.5 <= m < 1."""
    out = []
    for lo in range(0, x.size, elements):
        chunk = [float(v) for v in x[lo : lo + elements]]
        if not all(math.isfinite(v) for v in chunk):
            out.append(EXP_NONFINITE)
        elif not any(chunk):
            out.append(EXP_NONE)
        else:
            out.append(math.frexp(max(abs(v) for v in chunk))[1] + EXP_BIAS)
    return out


@pytest.mark.parametrize("impl", ["numpy", "c"])
def test_chunk_exponents_of_every_denormal_and_power_of_two(impl: str) -> None:
    """Each float32 exponent, denormals included, at both ends of its binade, as documented."""
    if impl == "c" and native is None:
        pytest.skip("netagg._kernels not built (no C compiler at install)")
    lo = np.array([np.ldexp(np.float32(1), e) for e in range(-149, 128)], np.float32)
    hi = np.nextafter(np.append(lo[1:], np.float32(np.inf)), np.float32(0))
    x = np.concatenate([lo, hi, -lo])
    got = np.empty(x.size, np.uint16)
    (native.chunk_exponents if impl == "c" else kernels.NUMPY["chunk_exponents"])(
        x, 1, got, EXP_BIAS, EXP_NONE, EXP_NONFINITE
    )
    assert got.tolist() == documented_exponents(x, 1)
    assert got[0] == EXP_BIAS - 148  # 2**-149 = 0.5 * 2**-148
    assert got[x.size // 3 - 1] == EXP_BIAS + 128  # the largest float32 is below 2**128
    one = (native.block_exponent if impl == "c" else kernels.NUMPY["block_exponent"])(
        np.array([0.75, -1.0], np.float32), EXP_BIAS, EXP_NONE, EXP_NONFINITE
    )
    assert one == EXP_BIAS + 1  # 1 = 0.5 * 2**1


@needs_c
def test_short_destinations_are_refused() -> None:
    x = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="dst holds 16 bytes, need 32"):
        native.quantize(x, 1.0, np.empty(4, ">i4"))
    with pytest.raises(ValueError, match="acc holds"):
        native.add_net(np.empty(2, ">i4"), np.empty(4, ">i4"))
    with pytest.raises(ValueError, match="out holds"):
        native.chunk_exponents(x, 2, np.empty(3, np.uint16), EXP_BIAS, EXP_NONE, EXP_NONFINITE)
    with pytest.raises(ValueError, match="elements > 0"):
        native.chunk_exponents(x, 0, np.empty(3, np.uint16), EXP_BIAS, EXP_NONE, EXP_NONFINITE)
    with pytest.raises(ValueError, match="contiguous"):  # a strided view is not one buffer
        native.quantize(np.ones(16, np.float32)[::2], 1.0, np.empty(8, ">i4"))
