"""4 worker processes and a switch process on loopback: exact int32 (wrapping on overflow), float32
within the bound."""

from __future__ import annotations

import os

import numpy as np
import pytest

from host_agent import Worker
from netagg.cli.launch import run_workers
from tests.integration import workers as wk

W = 4
SHAPES = [(1,), (7,), (3, 5, 7), (16370,), (16371,), (2, 3, 4, 5, 6), (123_457,), (1000, 1001)]


def test_sizes_and_odd_shapes(switch_factory) -> None:
    sw = switch_factory(W)
    cases = [(shape, dtype) for shape in SHAPES for dtype in ("int32", "float32")]
    out = run_workers(wk.sweep, W, sw.address, W, cases, timeout=300)
    for rank in out:
        bad = [r for r in rank["results"] if not r["ok"]]
        assert not bad, bad
    stats = sw.stop()
    assert stats and stats["counters"]["completions"] > 0
    assert not any(stats["drops"].values()), stats["drops"]


def test_64_mib(switch_factory) -> None:
    sw = switch_factory(W)
    cases = [((16 << 20,), "int32"), ((16 << 20,), "float32")]  # 64 MiB each
    out = run_workers(wk.sweep, W, sw.address, W, cases, timeout=300)
    assert all(r["ok"] for rank in out for r in rank["results"]), out


def test_small_packets_switchml_size(switch_factory) -> None:
    sw = switch_factory(W, elements=64, slots=128)
    cases = [
        ((1,), "int32"),
        ((64,), "float32"),
        ((65,), "int32"),
        ((100_000,), "float32"),
        ((100_000,), "int32"),
    ]
    out = run_workers(wk.sweep, W, sw.address, W, cases, timeout=300)
    assert all(r["ok"] for rank in out for r in rank["results"]), out


@pytest.mark.parametrize("elements", [16370, 64])
def test_average_is_the_sum_divided_by_the_world_size(switch_factory, elements: int) -> None:
    sw = switch_factory(W, elements=elements, slots=16 if elements > 64 else 128)
    assert run_workers(wk.average, W, sw.address, W, elements, timeout=120) == [[True] * 3] * W


def wrapping_inputs(rank: int, size: int) -> np.ndarray:
    """Rank ``rank``'s int32 input for the wrap-around test: int32's extremes and uniform values over
    its whole range, so that most sums of 4 overflow."""
    x = np.random.default_rng([7, rank]).integers(-(2**31), 2**31, size, dtype=np.int32)
    x[:4] = [2**31 - 1, -(2**31), 2**31 - 1 - rank, -(2**31) + rank]
    return x


def wrapping(rank: int, address: str, world: int, size: int) -> np.ndarray:
    """Worker body (module level, so spawned processes can import it): allreduce wrapping_inputs."""
    with Worker(address, rank, world, timeout=30) as w:
        return w.allreduce(wrapping_inputs(rank, size))


@pytest.mark.parametrize(("elements", "slots"), [(None, None), (64, 128)], ids=["large", "small"])
def test_int32_sums_wrap_like_numpy(switch_factory, elements: int | None, slots: int | None) -> None:
    """docs/protocol.md: int32 is sent as is and sums wrap mod 2**32, like numpy's int32 sum, on both
    of the switch's adding paths (one packet at a time and runs of small packets)."""
    sw = switch_factory(W, elements=elements, slots=slots)
    size = 100_003  # many chunks per slot: every slot is reused
    out = run_workers(wrapping, W, sw.address, W, size, timeout=120)
    everyone = [wrapping_inputs(r, size) for r in range(W)]
    wide = np.sum(everyone, axis=0, dtype=np.int64)
    assert (np.abs(wide) > 2**31 - 1).mean() > 0.3  # the test does overflow
    expected = np.sum(everyone, axis=0, dtype=np.int32)
    np.testing.assert_array_equal(expected, ((wide + 2**31) % 2**32 - 2**31).astype(np.int32))
    for got in out:
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, expected)
    stats = sw.stop()
    assert stats and not any(stats["drops"].values()), stats


def test_torch_tensors(switch_factory) -> None:
    pytest.importorskip("torch")
    sw = switch_factory(2)
    assert run_workers(wk.torch_inputs, 2, sw.address, 2, timeout=120) == [[True] * 5] * 2


def test_nonfinite_input_raises_at_every_worker(switch_factory) -> None:
    sw = switch_factory(2, elements=256)
    out = run_workers(wk.nonfinite, 2, sw.address, 2, timeout=60)
    for msg in out:
        assert msg.startswith("NonFiniteError: inf or NaN") and "[512, 768)" in msg, msg
        assert msg.endswith("then [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]"), msg


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="the OS has no SCHED_BATCH policy")
def test_io_thread_runs_under_sched_batch_unless_asked_not_to(switch_factory) -> None:
    sw = switch_factory(1)
    for wanted, policy in ((True, os.SCHED_BATCH), (False, os.SCHED_OTHER)):
        with Worker(sw.address, 0, 1, sched_batch=wanted) as w:
            x = np.arange(100_000, dtype=np.int32)
            assert np.array_equal(w.allreduce(x), x)  # one worker: the sum is its input
            # the policy of the thread that runs the allreduces (policies are per thread)
            assert w._executor.submit(os.sched_getscheduler, 0).result() == policy
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's thread is left as it was
