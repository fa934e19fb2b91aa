"""Block-wise quantization: overflow-free by construction and within the documented error bound.

The oracle (:mod:`netagg.verify`) takes each block's exponent from the inputs alone (``np.frexp``, as
docs/protocol.md defines it), never from the code under test."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from netagg.protocol import EXP_BIAS, EXP_NONE, EXP_NONFINITE, scale_bits
from netagg.quantize import block_exponents, chunk_exponents, dequantize, error_bound, quantize
from netagg.verify import agreed_exponents, allreduce_error_bound

F32 = np.finfo(np.float32)
EDGE = [0.0, -0.0, F32.tiny, -F32.tiny, 1e-45, -1e-45, 1e-40, F32.max, -F32.max, 1.0, -1.0, 3e38, 1e-38]


def simulate(inputs: list[np.ndarray], elements: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the switch and workers compute for one allreduce: (result, agreed exps, int64 sums)."""
    w = len(inputs)
    bits = scale_bits(w)
    blocks = [x.reshape(-1, elements) for x in inputs]
    exps = np.maximum.reduce([block_exponents(b) for b in blocks])
    quantized = [quantize(b, exps, bits).astype(np.int64) for b in blocks]
    sums = np.sum(quantized, axis=0)
    return dequantize(sums.astype(np.int32), exps, bits).reshape(-1), exps, sums.reshape(-1)


floats = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.sampled_from(EDGE),
)


@settings(max_examples=300, deadline=None)
@given(
    workers=st.integers(1, 32),
    elements=st.sampled_from([1, 3, 64, 256]),
    nblocks=st.integers(1, 4),
    data=st.data(),
)
def test_sum_never_overflows_and_stays_within_bound(workers: int, elements: int, nblocks: int, data) -> None:
    shape = (nblocks * elements,)
    inputs = [data.draw(hnp.arrays(np.float32, shape, elements=floats)) for _ in range(workers)]
    exact = np.sum([x.astype(np.float64) for x in inputs], axis=0)
    result, exps, sums = simulate(inputs, elements)
    oracle = agreed_exponents(inputs, elements)
    expected = np.where(np.isinf(oracle), EXP_NONE, np.nan_to_num(oracle, neginf=0) + EXP_BIAS)
    np.testing.assert_array_equal(exps, expected.astype(np.uint16))
    bits = scale_bits(workers)
    for x in inputs:  # |q| <= 2**B at every worker: what makes the sum overflow-free
        assert np.abs(quantize(x.reshape(-1, elements), exps, bits).astype(np.int64)).max() <= 2**bits
    assert np.all(np.abs(sums) <= 2**30), "the int32 sum could overflow"
    # Where the exact sum is beyond float32's range, the result saturates as a float32 sum would.
    fits = np.abs(exact) < F32.max
    assert np.all(np.sign(result[~fits]) == np.sign(exact[~fits]))
    assert np.all(np.abs(result[~fits]) >= F32.max * 0.999)
    err = np.abs(result.astype(np.float64) - exact)
    bound = allreduce_error_bound(inputs, result, elements)
    assert np.all(err[fits] <= bound[fits]), (err[fits].max(), bound[fits][err[fits].argmax()])
    # The implementation's own bound (from the exponents it agreed on) is the oracle's.
    ours = error_bound(exps, bits, workers, result.reshape(nblocks, elements)).reshape(-1)
    np.testing.assert_array_equal(ours, bound)


@settings(max_examples=300, deadline=None)
@given(
    x=hnp.arrays(np.float32, st.integers(1, 200), elements=floats),
    elements=st.integers(1, 64),
)
def test_chunk_exponents_are_the_documented_ones(x: np.ndarray, elements: int) -> None:
    """The worker's exponent scan (netagg.kernels: C where built) gives frexp's exponent of each
    chunk's largest magnitude, the last chunk possibly shorter: |x| < 2**E, and 2**(E-1) <= max|x|."""
    oracle = agreed_exponents([x], elements)
    got = chunk_exponents(x, elements)
    zero = np.isinf(oracle)
    assert np.all(got[zero] == EXP_NONE)
    np.testing.assert_array_equal(got[~zero].astype(np.int64) - EXP_BIAS, oracle[~zero].astype(np.int64))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_nonfinite_marks_the_block_and_gives_nan(bad: float) -> None:
    x = np.ones(8, np.float32)
    x[5] = bad
    exps = block_exponents(x.reshape(2, 4))
    assert exps[1] == EXP_NONFINITE
    assert exps[0] == EXP_BIAS + 1  # max |x| = 1 < 2**1
    result, agreed, _ = simulate([x, np.ones(8, np.float32)], 4)
    assert agreed[1] == EXP_NONFINITE
    assert np.all(np.isnan(result[4:])) and np.all(result[:4] == 2)


def test_all_zero_blocks() -> None:
    result, exps, sums = simulate([np.zeros(6, np.float32)] * 3, 3)
    assert np.all(exps == EXP_NONE) and not sums.any() and not result.any()


def test_denormals_survive() -> None:
    x = np.array([1e-45, -3e-44, 2e-40, 0], np.float32)  # all denormal (below 1.18e-38)
    result, _, _ = simulate([x, x], 4)
    np.testing.assert_array_equal(result, 2 * x)


def test_huge_magnitudes() -> None:
    x = np.array([1.5e38, -1e38, 1, 0], np.float32)
    result, _, _ = simulate([x, x / 2], 4)
    assert np.isfinite(result).all()
    np.testing.assert_allclose(result[:2], 1.5 * x[:2], rtol=1e-6)


def test_exact_for_values_representable_at_scale() -> None:
    # Small integers are exactly representable after scaling: the sum is exact.
    rng = np.random.default_rng(0)
    inputs = [rng.integers(-1000, 1000, 64).astype(np.float32) for _ in range(4)]
    result, _, _ = simulate(inputs, 64)
    np.testing.assert_array_equal(result, np.sum(inputs, axis=0))


# Scaled values x * 2**(B-E) to round: exact ties k + 1/2 (k even and odd, both signs), their
# neighbours one float32 step away, and a few others. Python's round() is the oracle: it rounds a
# float to the nearest integer, half to even, exactly.
TIES = [k + 0.5 for k in (0, 1, 2, 3, 4, 5, 100, 101, 2**20, 2**20 + 1, 2**22 - 2, 2**22 - 1)]
NEIGHBOURS = [float(np.nextafter(np.float32(t), np.float32(to))) for t in TIES for to in (0, 2**23)]
SCALED = sorted({*TIES, *NEIGHBOURS, 0.0, 1.0, 2.0, 0.25, 0.75, 2.0**22, 2.0**23 - 1})
SCALED += [-v for v in SCALED]


def exact_at(shift: int) -> tuple[np.ndarray, list[float]]:
    """The float32 x with x * 2**shift in SCALED, those that float32 holds exactly (all ties do)."""
    x = np.array([np.ldexp(v, -shift) for v in SCALED], np.float32)
    back = np.ldexp(x.astype(np.float64), shift)
    kept = [v for v, b in zip(SCALED, back, strict=True) if v == b]
    assert set(TIES) <= set(kept) and {-t for t in TIES} <= set(kept)
    return x[back == SCALED], kept


@pytest.mark.parametrize(("exp", "bits"), [(5, 28), (1, 30), (-100, 28)])
def test_quantize_rounds_exact_ties_to_even(exp: int, bits: int) -> None:
    """q = round(x * 2**(B-E)), half to even (docs/protocol.md, "Quantization"), also for the tiny
    blocks that are scaled in float64 (E = -100: a scale of 2**128, beyond float32)."""
    x, scaled = exact_at(bits - exp)
    got = quantize(x.reshape(1, -1), np.array([exp + EXP_BIAS], np.uint16), bits)
    assert got.reshape(-1).tolist() == [round(v) for v in scaled]


def test_quantize_writes_network_order() -> None:
    x = np.array([[0.5, -0.25]], np.float32)
    exps = block_exponents(x)
    out = np.empty((1, 2), ">i4")
    quantize(x, exps, 28, out=out)
    assert out.tobytes() == np.array([2**27, -(2**26)], ">i4").tobytes()  # 0.5 < 2**0: scale 2**28


def test_one_exponent_per_block_required() -> None:
    with pytest.raises(ValueError, match="one exponent per block"):
        quantize(np.zeros((2, 3), np.float32), np.zeros(3, np.uint16), 28)


@settings(max_examples=200, deadline=None)
@given(
    exp=st.integers(-160, 130),
    workers=st.sampled_from([2, 3, 4, 6, 8, 32]),
    sums=hnp.arrays(np.int32, 16, elements=st.integers(-(2**30), 2**30)),
)
def test_dequantize_factor_is_the_mean(exp: int, workers: int, sums: np.ndarray) -> None:
    """factor=1/W folds the mean into dequantization: the exact mean rounded once to float32 when W is
    a power of two (also for the tiny blocks that go through float64), within 1.5 ulp otherwise."""
    bits = scale_bits(workers)
    exps = np.array([exp + EXP_BIAS], np.uint16)
    rows = sums.reshape(1, -1)
    mean = dequantize(rows, exps, bits, factor=1 / workers)
    exact = rows.astype(np.float64) * np.ldexp(1.0, exp - bits) / workers  # exact in float64 here
    if workers & (workers - 1) == 0:
        with np.errstate(over="ignore"):
            assert np.array_equal(mean, exact.astype(np.float32))  # one rounding, as the sum has
    else:
        tiny = np.abs(exact) < 2.0**-126
        with np.errstate(over="ignore"):
            exact32 = exact.astype(np.float32)
        # Where even the exact mean rounds past float32's range, the result is that infinity.
        overflow = np.isinf(exact32) & (mean == exact32)
        ulp = np.spacing(np.abs(np.where(np.isinf(exact32), 0, exact32)))
        assert np.all((np.abs(mean - exact) <= 1.5 * ulp) | tiny | overflow)


def test_dequantize_factor_keeps_zero_and_nonfinite_blocks() -> None:
    rows = np.ones((2, 4), np.int32)
    got = dequantize(rows, np.array([EXP_NONE, EXP_NONFINITE], np.uint16), 28, factor=0.25)
    assert np.all(got[0] == 0) and np.all(np.isnan(got[1]))
