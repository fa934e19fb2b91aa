"""The switch's version-2 rules (docs/protocol.md, "Collectives"): reductions, EMPTY contributions and
results, a reduce-scatter's delivery, op mismatches, and what a tree's leaf sends up. No sockets."""

from __future__ import annotations

import numpy as np
import pytest

from netagg.protocol import HEADER, ROOT_ALL, VERSION, Coll, Flag, MsgType, Reason, ReduceOp, decode, op_field
from switch.core import Dataplane, JobConfig
from tests.unit.test_core import JOB, check_accounting, decoded, join, joined

W = 3


def contrib(
    worker: int, slot: int, seq: int, values, *, op: int = 0, flags: int = 0, count: int | None = None
) -> bytes:
    """A CONTRIB of ``values`` (None: EMPTY, ``count`` elements) with the ``op`` field."""
    payload = b"" if values is None else np.asarray(values, ">i4").tobytes()
    n = len(payload) // 4 if count is None else count
    if values is None:
        flags |= Flag.EMPTY
    slot_field = slot | (0x8000 if seq & 1 else 0)
    hdr = HEADER.pack(VERSION, MsgType.CONTRIB, flags, 1, JOB, worker, slot_field, n, seq, 0, op, 0)
    return hdr + payload


def run_use(dp: Dataplane, packets: list[bytes]):
    """Feed worker w's packet from address w{w}; return the outputs of the last one."""
    outs = []
    for w, pkt in enumerate(packets):
        outs = dp.handle(pkt, f"w{w}")
    check_accounting(dp)
    return outs


@pytest.mark.parametrize(("reduce", "expect"), [(ReduceOp.max, [5, -1, 7]), (ReduceOp.min, [-3, -9, 0])])
def test_max_and_min_are_lane_by_lane_over_signed_int32(reduce: ReduceOp, expect: list[int]) -> None:
    dp = joined(W)
    vals = [[5, -9, 0], [-3, -1, 7], [1, -2, 3]]
    op = op_field(Coll.allreduce, reduce)
    [(((h, payload), dests))] = decoded(run_use(dp, [contrib(w, 0, 0, vals[w], op=op) for w in range(W)]))
    assert h.type == MsgType.RESULT and h.op == op and not h.flags & Flag.EMPTY
    assert payload.tolist() == expect and dests == ["w0", "w1", "w2"]


def test_an_all_gather_chunk_is_its_owners_payload_whatever_the_order() -> None:
    op = op_field(Coll.all_gather, 0, 1)
    for order in ([0, 1, 2], [1, 0, 2], [2, 0, 1]):
        dp = joined(W)
        pkts = {w: contrib(w, 0, 0, [4, -5] if w == 1 else None, op=op, count=2) for w in range(W)}
        outs = []
        for w in order:
            outs = dp.handle(pkts[w], f"w{w}")
        [((h, payload), dests)] = decoded(outs)
        assert payload.tolist() == [4, -5] and h.op == op and len(dests) == W


def test_a_use_without_any_payload_gives_an_empty_result() -> None:
    dp = joined(W)
    op = op_field(Coll.all_gather, 0, 2)
    outs = run_use(dp, [contrib(w, 0, 0, None, op=op, count=3) for w in range(W)])
    [(data, _)] = outs
    assert len(bytes(data)) == 24 and bytes(data)[2] & Flag.EMPTY
    assert decode(bytes(data))[0].count == 3


def test_reduce_scatter_payload_goes_to_the_owner_and_the_header_alone_to_the_others() -> None:
    dp = joined(W)
    op = op_field(Coll.reduce_scatter, ReduceOp.sum, 2)
    outs = run_use(dp, [contrib(w, 1, 0, [w, 10 * w], op=op) for w in range(W)])
    got = {tuple(dests): (h, payload.tolist()) for (h, payload), dests in decoded(outs)}
    (h_full, full), (h_empty, empty) = got[("w2",)], got[("w0", "w1")]
    assert full == [3, 30] and not h_full.flags & Flag.EMPTY
    assert empty == [] and h_empty.flags & Flag.EMPTY and h_empty.count == 2
    assert h_empty.exp == h_full.exp and h_empty.seq == h_full.seq == 0
    # A repeat gets what its sender got, unicast.
    [((h, payload), dests)] = decoded(dp.handle(contrib(0, 1, 0, [0, 0], op=op), "w0"))
    assert dests == ["w0"] and h.flags & Flag.EMPTY and h.flags & Flag.UNICAST and payload.size == 0
    [((h, payload), dests)] = decoded(dp.handle(contrib(2, 1, 0, [2, 20], op=op), "w2"))
    assert dests == ["w2"] and payload.tolist() == [3, 30] and not h.flags & Flag.EMPTY
    check_accounting(dp)


def test_a_use_called_as_two_collectives_is_refused_with_the_uses_op() -> None:
    dp = joined(W)
    first = op_field(Coll.reduce_scatter, ReduceOp.sum, 1)
    dp.handle(contrib(0, 0, 0, [1], op=first), "w0")
    [((h, _), dests)] = decoded(dp.handle(contrib(1, 0, 0, [1], op=op_field(Coll.allreduce)), "w1"))
    assert h.type == MsgType.REFUSE and Reason(h.exp) == Reason.op_mismatch and h.bitmap == first
    assert dests == ["w1"] and dp.drops["op_mismatch"] == 1


@pytest.mark.parametrize(
    ("op", "flags", "values", "reason"),
    [
        (op_field(Coll.reduce_scatter, 0, W), 0, [1], "bad_op"),  # the owner is no worker of the job
        (0x5000, 0, [1], "bad_op"),
        (op_field(Coll.broadcast, ReduceOp.max), 0, [1], "bad_op"),
        (0, Flag.OFFER, None, "bad_length"),  # an OFFER always carries the result
    ],
)
def test_bad_ops_are_dropped(op: int, flags: int, values, reason: str) -> None:
    dp = joined(W)
    assert dp.handle(contrib(0, 0, 0, values, op=op, flags=flags, count=1), "w0") == []
    assert dp.drops[reason] == 1
    check_accounting(dp)


def test_a_leaf_sends_reduce_scatter_up_for_everyone_and_empty_partials_empty() -> None:
    dp = Dataplane([JobConfig(JOB, 2, 4, 4, parent=("parent", 1), parent_worker=1, total_workers=4)])
    for w in range(2):
        join(dp, w)
    # The parent acknowledges the leaf's JOIN (the leaf's JOIN went out when its round completed).
    inc = dp._jobs[JOB].parent_incarnation
    ack = HEADER.pack(VERSION, MsgType.JOIN_ACK, 0, 9, JOB, 1, 0, 0, inc, 0, 0, 3)
    dp.handle(ack, ("parent", 1))
    rs = op_field(Coll.reduce_scatter, ReduceOp.sum, 3)
    for w in range(2):
        outs = dp.handle(contrib(w, 0, 0, [w + 1], op=rs), f"w{w}")
    [((h, payload), dests)] = decoded(outs)
    assert dests == [("parent", 1)] and h.op == op_field(Coll.reduce_scatter, ReduceOp.sum, ROOT_ALL)
    assert payload.tolist() == [3]
    ag = op_field(Coll.all_gather, 0, 3)  # owned by a rank below another leaf
    for w in range(2):
        outs = dp.handle(contrib(w, 1, 0, None, op=ag, count=2), f"w{w}")
    [(data, dests)] = outs
    assert len(bytes(data)) == 24 and bytes(data)[2] & Flag.EMPTY and dests == [("parent", 1)]
    # The parent's RESULT of the reduce-scatter goes down to every child, payload and all.
    result = (
        HEADER.pack(VERSION, MsgType.RESULT, 0, 9, JOB, 0xFFFF, 0, 1, 0, 0, h.op, 3) + b"\x00\x00\x00\x07"
    )
    [((h, payload), dests)] = decoded(dp.handle(result, ("parent", 1)))
    assert payload.tolist() == [7] and dests == ["w0", "w1"] and h.type == MsgType.RESULT
