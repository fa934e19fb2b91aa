"""The engines run every collective of protocol version 2 against the real dataplane, in process,
through a channel that loses, duplicates and reorders, and switch restarts at any packet: results
exact (int32, gathered and broadcast words, max
and min) or within the bound (float32 sums), the same at every worker that gets them."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from host_agent.collectives import decode_ordered, encode_ordered
from host_agent.schedule import Collective, Schedule
from netagg.protocol import Coll, Flag, MsgType, ReduceOp
from netagg.verify import allreduce_error_bound
from tests.unit.test_recovery import Cluster

ELEMENTS = 3


@settings(max_examples=int(os.environ.get("NETAGG_RECOVERY_EXAMPLES", "40")), deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    workers=st.integers(1, 4),
    per_rank=st.integers(1, 8),
    slots=st.integers(1, 4),
    loss=st.sampled_from([0.0, 0.1]),
    dup=st.sampled_from([0.0, 0.1]),
    restart_at=st.lists(st.integers(1, 150), max_size=2),
)
def test_every_collective_completes_exactly_under_loss_and_restarts(
    seed, workers, per_rank, slots, loss, dup, restart_at
) -> None:
    rng = np.random.default_rng(seed)
    n = workers * per_rank
    ints = [rng.integers(-(2**31), 2**31, n, dtype=np.int32) for _ in range(workers)]
    floats = [(rng.standard_normal(n) * 100).astype(np.float32) for _ in range(workers)]
    # All-gather: each rank's own shard in its place, the rest whatever (others' chunks are EMPTY).
    ag_schedule = Schedule.sharded(workers, per_rank, ELEMENTS, slots, False)
    k = ag_schedule.per_shard
    gathered = [rng.integers(-(2**31), 2**31, per_rank, dtype=np.int32) for _ in range(workers)]
    ag_in = []
    for w in range(workers):
        words = np.full(workers * per_rank, -7, dtype=np.int32)
        words[w * per_rank : (w + 1) * per_rank] = gathered[w]
        ag_in.append(words)
    root = seed % workers
    bc_in = [ints[root].copy() if w == root else np.zeros(n, np.int32) for w in range(workers)]
    calls = [
        [encode_ordered(f, ReduceOp.max) for f in floats],  # allreduce max, ordered encoding
        [x.copy() for x in ints],  # allreduce min of int32
        ag_in,
        bc_in,
        [np.zeros(0, np.int32) for _ in range(workers)],  # barrier
    ]
    kinds = [
        (Collective(Coll.allreduce, ReduceOp.max), None),
        (Collective(Coll.allreduce, ReduceOp.min), None),
        (
            Collective(Coll.all_gather, ReduceOp.sum, per_shard=k),
            ag_schedule,
        ),
        (Collective(Coll.broadcast, ReduceOp.sum, root=root), Schedule.of(n, ELEMENTS, slots, False)),
        (Collective(Coll.barrier), Schedule(0, ELEMENTS, 1, 1, 0, 0, 0)),
    ]
    cluster = Cluster(workers, slots, ELEMENTS, seed, loss, dup)
    results = cluster.run(calls, batched=False, in_place=False, restart_at=restart_at, kinds=kinds)
    want_max = np.max(np.stack(floats), axis=0)
    want_min = np.min(np.stack(ints), axis=0)
    for w in range(workers):
        mx, mn, ag, bc, _ = results[w]
        np.testing.assert_array_equal(decode_ordered(mx), want_max)
        np.testing.assert_array_equal(mn, want_min)
        np.testing.assert_array_equal(ag, np.concatenate(gathered))
        np.testing.assert_array_equal(bc, ints[root])


@settings(max_examples=int(os.environ.get("NETAGG_RECOVERY_EXAMPLES", "40")), deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    workers=st.integers(1, 4),
    per_rank=st.integers(1, 8),
    slots=st.integers(1, 4),
    loss=st.sampled_from([0.0, 0.1, 0.2]),
    dup=st.sampled_from([0.0, 0.1]),
    restart_at=st.lists(st.integers(1, 150), max_size=2),
)
def test_reduce_scatter_gives_each_owner_its_shard_under_loss_and_restarts(
    seed, workers, per_rank, slots, loss, dup, restart_at
) -> None:
    rng = np.random.default_rng(seed)
    n = workers * per_rank
    ints = [rng.integers(-(2**31), 2**31, n, dtype=np.int32) for _ in range(workers)]
    floats = [
        (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4)).astype(np.float32) for _ in range(workers)
    ]
    sched_i = Schedule.sharded(workers, per_rank, ELEMENTS, slots, False)
    sched_f = Schedule.sharded(workers, per_rank, ELEMENTS, slots, True)
    k = sched_i.per_shard
    kinds = [
        (Collective(Coll.reduce_scatter, ReduceOp.sum, per_shard=k), sched_i),
        (Collective(Coll.reduce_scatter, ReduceOp.sum, per_shard=k), sched_f),
        (Collective(Coll.reduce_scatter, ReduceOp.max, per_shard=k), sched_i),
    ]
    cluster = Cluster(workers, slots, ELEMENTS, seed, loss, dup)
    results = cluster.run(
        [ints, floats, ints], batched=False, in_place=False, restart_at=restart_at, kinds=kinds
    )
    total_i = np.sum(np.stack(ints).astype(np.int64), axis=0).astype(np.int32)
    exact_f = np.sum(np.stack(floats).astype(np.float64), axis=0)
    for w in range(workers):
        mine = slice(w * per_rank, (w + 1) * per_rank)
        s_i, s_f, m_i = (r[mine] for r in results[w])
        np.testing.assert_array_equal(s_i, total_i[mine])
        np.testing.assert_array_equal(m_i, np.max(np.stack(ints), axis=0)[mine])
        # Each shard is cut into chunks of `per` values (a block each): the bound's blocks.
        bound = allreduce_error_bound([f[mine] for f in floats], s_f, sched_f.elements)
        assert np.all(np.abs(s_f - exact_f[mine]) <= bound)


class OwnerLosesItsResult(Cluster):
    """The switch restarts just after sending a reduce-scatter RESULT whose copy for the owner (worker
    0) is lost, while the other workers get theirs (EMPTY) and go on."""

    dropped = False

    def put(self, direction: str, addr: str, data: bytes) -> None:
        full_result = data[1] == MsgType.RESULT and not data[2] & Flag.EMPTY and len(data) > 24
        if not self.dropped and direction == "down" and addr == "w0" and full_result:
            self.dropped = True
            self.restart()
            return
        super().put(direction, addr, data)


@pytest.mark.parametrize("between_calls", [False, True])
def test_a_reduce_scatter_owner_that_lost_its_result_gets_it_from_the_others_contributions(
    between_calls: bool,
) -> None:
    """Worker 0 owns chunk 0 (slot 0's first use); worker 1 got the use's EMPTY RESULT and went on
    to chunk 1 (or, with one chunk per slot, ended its call). After the restart worker 1 sends its
    contribution to chunk 0 again, so the use completes anew and worker 0 gets the exact sum."""
    workers, per_rank = 2, 3
    slots = 2 if between_calls else 1  # 2 slots: each slot's only use is the call's last
    rng = np.random.default_rng(5)
    ints = [rng.integers(-(2**31), 2**31, workers * per_rank, dtype=np.int32) for _ in range(workers)]
    schedule = Schedule.sharded(workers, per_rank, ELEMENTS, slots, False)
    kind = (Collective(Coll.reduce_scatter, ReduceOp.sum, per_shard=schedule.per_shard), schedule)
    cluster = OwnerLosesItsResult(workers, slots, ELEMENTS, seed=1, loss=0.0, dup=0.0)
    calls = [ints, [x.copy() for x in ints]]
    results = cluster.run(calls, batched=False, in_place=False, restart_at=[], kinds=[kind, kind])
    assert cluster.dropped and cluster.restarts == 1
    total = np.sum(np.stack(ints).astype(np.int64), axis=0).astype(np.int32)
    for w in range(workers):
        for got in results[w]:
            np.testing.assert_array_equal(
                got[w * per_rank : (w + 1) * per_rank], total[w * per_rank : (w + 1) * per_rank]
            )


@given(shards=st.integers(1, 8), shard=st.integers(1, 200), elements=st.integers(1, 50))
def test_sharded_chunks_tile_each_shard_without_straddling(shards: int, shard: int, elements: int) -> None:
    """docs/protocol.md, "Collectives": a shard is cut into k = ceil(s / N) chunks of ceil(s / k) (its
    last one shorter); chunk c belongs to shard c // k, and the chunks tile the tensor in order."""
    s = Schedule.sharded(shards, shard, elements, 4, False)
    k = -(-shard // elements)
    assert s.per_shard == k and s.nchunks == shards * k and s.elements == -(-shard // k) <= elements
    covered = 0
    for c in range(s.nchunks):
        assert s.offset(c) == covered and 1 <= s.count(c) <= s.elements
        assert (s.offset(c) + s.count(c) - 1) // shard == c // k  # inside its own shard
        covered += s.count(c)
    assert covered == s.total == shards * shard
    np.testing.assert_array_equal(
        s.counts(np.arange(-1, s.nchunks)), [0] + [s.count(c) for c in range(s.nchunks)]
    )
