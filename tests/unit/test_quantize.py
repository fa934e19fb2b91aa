"""Block-wise quantization: overflow-free by construction and within the documented error bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from host_agent.quantize import (
    allreduce_error_bound,
    block_exponents,
    dequantize,
    error_bound,
    quantize,
)
from netagg.protocol import EXP_BIAS, EXP_NONE, EXP_NONFINITE, scale_bits

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
    assert np.all(np.abs(sums) <= 2**30), "the int32 sum could overflow"
    # Where the exact sum is beyond float32's range, the result saturates as a float32 sum would.
    fits = np.abs(exact) < F32.max
    assert np.all(np.sign(result[~fits]) == np.sign(exact[~fits]))
    assert np.all(np.abs(result[~fits]) >= F32.max * 0.999)
    err = np.abs(result.astype(np.float64) - exact)
    bound = error_bound(exps, scale_bits(workers), workers, result.reshape(nblocks, elements)).reshape(-1)
    assert np.all(err[fits] <= bound[fits]), (err[fits].max(), bound[fits][err[fits].argmax()])
    np.testing.assert_array_equal(bound, allreduce_error_bound(inputs, result, elements))


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
