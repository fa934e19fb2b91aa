"""Conformance cases of protocol version 2 (docs/protocol.md, "Collectives"): the `op` field, EMPTY
contributions and results, max and min, a reduce-scatter's delivery, op_mismatch, bad_op, and a tree's
leaf for all-gather, reduce-scatter and barrier. Run with tests/conformance/cases.py's cases, on the same
hosts and job (two workers; four in the whole job of the tree cases)."""

from __future__ import annotations

from typing import Any

from tests.conformance.cases import (
    BIG_A,
    BIG_B,
    Case,
    Send,
    _contrib,
    _join,
    _joined,
    _n,
    tree_ack,
    tree_result,
)

__all__ = ["A", "B", "CASES"]

EMPTY, OFFER, FINAL, RETX = 0x20, 0x08, 0x10, 0x01  # Flag bits
AR, RS, AG, BC, BARRIER = 0, 1, 2, 3, 4  # Coll
SUM, MAX, MIN = 0, 1, 2  # ReduceOp


def _op(coll: int, reduce: int = SUM, root: int = 0) -> dict[str, int]:
    """The `op` field as the scapy layer's three fields."""
    return {"coll": coll, "reduce": reduce, "root": root}


def _empty(worker: int, slot: int, seq: int, count: int, flags: int = 0, **kw: Any) -> bytes:
    """A CONTRIB without payload (EMPTY) for a use of ``count`` elements."""
    return _contrib(worker, slot, seq, [], flags=EMPTY | flags, count=count, **kw)


#: Short packets' values, with int32's extremes in both.
A = [1, -2, 3, 2**31 - 1, -(2**31), 0, 7, -8]
B = [10, 20, -30, 1, -1, -(2**31), 2**31 - 1, -7]


def _cases() -> list[Case]:
    a, b = A, B
    mx, mn = _op(AR, MAX), _op(AR, MIN)
    return [
        Case(
            "allreduce max and min: signed lanes, short and full packets",
            (
                *_joined(),
                Send("w0", _contrib(0, 8, 0, a, **mx)),
                Send("w1", _contrib(1, 8, 0, b, **mx)),  # the lane-wise maximum to both
                Send("w1", _contrib(1, 8, 0, b, flags=RETX, **mx)),  # a repeat: unicast
                Send("w0", _contrib(0, 9, 0, a, **mn)),
                Send("w1", _contrib(1, 9, 0, b, **mn)),
                Send("w0", _contrib(0, 10, 0, BIG_A, **mx)),  # full packets: the SWAR path
                Send("w1", _contrib(1, 10, 0, BIG_B, **mx)),
                Send("w0", _contrib(0, 11, 0, BIG_A, **mn)),
                Send("w1", _contrib(1, 11, 0, BIG_B, **mn)),
                Send("w0", _contrib(0, 11, 0, BIG_A, flags=RETX, **mn)),  # the stored wide minimum
                Send("w0", _contrib(0, 8, 1, a)),  # set 1: a sum
                Send("w1", _contrib(1, 8, 1, b)),
                Send("w0", _contrib(0, 8, 2, b[:5], **mn)),  # set 0 again: the minimum of a new use
                Send("w1", _contrib(1, 8, 2, a[:5], **mn)),
                Send("w0", _contrib(0, 10, 1, BIG_B, **mn)),  # wide, set 1
                Send("w1", _contrib(1, 10, 1, BIG_A, **mn)),
            ),
        ),
        Case(
            "reduce-scatter: the owner's payload, EMPTY to the others, repeats",
            (
                *_joined(),
                Send("w0", _contrib(0, 8, 0, a, exp=1030, **_op(RS, SUM, 1))),
                Send("w1", _contrib(1, 8, 0, b, exp=1040, **_op(RS, SUM, 1))),  # payload to w1, EMPTY to w0
                Send("w0", _contrib(0, 8, 0, a, exp=1030, flags=RETX, **_op(RS, SUM, 1))),  # EMPTY, unicast
                Send("w1", _contrib(1, 8, 0, b, exp=1040, flags=RETX, **_op(RS, SUM, 1))),  # the payload
                Send("w1", _contrib(1, 9, 0, BIG_B, **_op(RS, MAX, 0))),
                Send("w0", _contrib(0, 9, 0, BIG_A, **_op(RS, MAX, 0))),  # full packets: w0 owns the chunk
                Send("w1", _contrib(1, 9, 0, BIG_B, flags=RETX, **_op(RS, MAX, 0))),
                Send("w0", _contrib(0, 10, 0, a, **_op(RS, MIN, 0xFF))),
                Send("w1", _contrib(1, 10, 0, b, **_op(RS, MIN, 0xFF))),  # root 0xFF: the payload to both
                Send("w0", _contrib(0, 11, 0, a, **_op(RS, SUM, 2))),  # root 2 in a job of 2: bad_op
                Send("w1", _contrib(1, 11, 0, a, **_op(RS, SUM, 0xFE))),  # bad_op
                Send("w0", _contrib(0, 11, 0, [], exp=1100, **_op(RS, SUM, 1))),  # count 0
                Send("w1", _contrib(1, 11, 0, [], exp=1000, **_op(RS, SUM, 1))),  # header to w1, EMPTY to w0
                Send("w1", _contrib(1, 11, 0, [], exp=1000, flags=RETX, **_op(RS, SUM, 1))),
                Send("w0", _contrib(0, 8, 1, a[:3], **_op(RS, SUM, 0))),  # set 1: w0's chunk
                Send("w1", _empty(1, 8, 1, 3, **_op(RS, SUM, 0))),  # an EMPTY last contribution
            ),
        ),
        Case(
            "all-gather and broadcast: EMPTY contributions, the owner's payload copied",
            (
                *_joined(),
                Send("w0", _empty(0, 8, 0, 8, **_op(AG, SUM, 1))),
                Send("w1", _contrib(1, 8, 0, b, **_op(AG, SUM, 1))),  # w1's chunk to both
                Send("w0", _contrib(0, 9, 0, a, **_op(AG, SUM, 0))),
                Send("w1", _empty(1, 9, 0, 8, **_op(AG, SUM, 0))),  # EMPTY completes: w0's values to both
                Send("w1", _empty(1, 9, 0, 8, flags=RETX, **_op(AG, SUM, 0))),  # a repeat: the payload
                Send("w0", _contrib(0, 9, 0, a, flags=RETX, **_op(AG, SUM, 0))),
                Send("w0", _empty(0, 10, 0, 64, **_op(AG, SUM, 1))),
                Send("w1", _contrib(1, 10, 0, BIG_B, **_op(AG, SUM, 1))),  # a full packet
                Send("w0", _empty(0, 10, 0, 64, flags=RETX, **_op(AG, SUM, 1))),  # the stored wide values
                Send("w0", _contrib(0, 11, 0, BIG_A, **_op(BC, SUM, 0))),
                Send("w1", _empty(1, 11, 0, 64, **_op(BC, SUM, 0))),  # EMPTY completes a wide use
                Send("w0", _empty(0, 8, 1, 5, **_op(BC, SUM, 1))),
                Send("w1", _empty(1, 8, 1, 5, **_op(BC, SUM, 1))),  # no payload anywhere: EMPTY, count 5
                Send("w0", _empty(0, 8, 1, 5, flags=RETX, **_op(BC, SUM, 1))),
                Send("w0", _contrib(0, 9, 1, a, **_op(AG, SUM, 1))),  # two payloads: the reduction (sum)
                Send("w1", _contrib(1, 9, 1, b, **_op(AG, SUM, 1))),
            ),
        ),
        Case(
            "barrier: count 0, EMPTY or not",
            (
                *_joined(),
                Send("w0", _empty(0, 8, 0, 0, **_op(BARRIER))),
                Send("w0", _empty(0, 8, 0, 0, flags=RETX, **_op(BARRIER))),  # PENDING
                Send("w1", _empty(1, 8, 0, 0, **_op(BARRIER))),  # an EMPTY RESULT of count 0 to both
                Send("w1", _empty(1, 8, 0, 0, flags=RETX, **_op(BARRIER))),
                Send("w0", _contrib(0, 8, 1, [], **_op(BARRIER))),
                Send("w1", _contrib(1, 8, 1, [], **_op(BARRIER))),  # count 0 without EMPTY: a payload
                Send("w0", _empty(0, 8, 2, 0, **_op(BARRIER))),
                Send("w1", _contrib(1, 8, 2, [], **_op(BARRIER))),
                Send("w1", _contrib(1, 8, 2, [], flags=RETX, **_op(BARRIER))),
            ),
        ),
        Case(
            "op_mismatch and count_mismatch refusals",
            (
                *_joined(),
                Send("w0", _contrib(0, 9, 3, a, **_op(RS, SUM, 1))),
                Send("w1", _contrib(1, 9, 3, b, **_op(RS, SUM, 0))),  # another root: op_mismatch, 0x1001
                Send("w1", _contrib(1, 9, 3, b, **mx)),  # another collective: op_mismatch
                Send("w1", _contrib(1, 9, 3, b)),
                Send("w1", _contrib(1, 9, 3, b[:5], **_op(RS, MAX, 1))),  # count and op: count_mismatch
                Send("w1", _empty(1, 9, 3, 8, **_op(RS, SUM, 1))),  # completes: w0's values to w1
                Send("w1", _contrib(1, 9, 3, b, flags=OFFER | FINAL)),  # an offer of another op
                Send("w1", _contrib(1, 9, 1, b, **_op(AG))),  # an older use: stale_seq, whatever its op
                Send("w0", _contrib(0, 10, 0, a, **_op(AG, SUM, 1))),
                Send("w0", _empty(0, 10, 0, 8, **_op(AG, SUM, 1))),  # a repeat: PENDING
                Send("w1", _empty(1, 10, 0, 8, **_op(AG, SUM, 0))),  # op_mismatch
            ),
        ),
        Case(
            "bad_op, EMPTY lengths, version 1",
            (
                Send("w0", _join(0, 111, **_op(RS, MAX, 3))),  # a JOIN's op is checked, then ignored
                Send("w1", _join(1, 222)),
                Send("w0", _contrib(0, 8, 0, a, **_op(5))),  # an unknown collective: bad_op
                Send("w0", _contrib(0, 8, 0, a, **_op(AR, 3))),  # an unknown reduction
                Send("w0", _contrib(0, 8, 0, a, **_op(AG, MAX))),  # max for an all-gather
                Send("w0", _contrib(0, 8, 0, a, **_op(BC, MIN))),
                Send("w0", _contrib(0, 8, 0, [], **_op(BARRIER, MAX))),
                Send("w0", _contrib(0, 8, 0, a, **_op(15, 15, 255))),
                Send("w0", _n(type="RESULT", worker=0, slot=8, epoch=1, values=a, **_op(6))),  # bad_op first
                Send("w0", _join(0, 111, version=1)),  # bad_version
                Send("w0", _empty(0, 8, 0, 8, flags=OFFER | FINAL)),  # an EMPTY OFFER: bad_length
                Send("w0", _contrib(0, 8, 0, a, flags=EMPTY)),  # EMPTY with a payload: bad_length
                Send("w0", _empty(0, 8, 0, 2) + b"\0" * 4),  # EMPTY, 28 bytes: bad_length
                Send("w0", _empty(0, 8, 0, 65)),  # EMPTY, but more than the job's elements: bad_length
                Send("w0", _empty(0, 8, 0, 8, epoch=3)),  # stale_epoch: refused
                Send("w0", _empty(0, 8, 0, 8)),
                Send("w1", _contrib(1, 8, 0, b)),  # an allreduce-sum of w1's values alone
            ),
        ),
        Case(
            "offers carry the op",
            (
                *_joined(),
                Send("w0", _contrib(0, 8, 4, a, exp=1030, **_op(RS, SUM, 1))),
                Send("w1", _contrib(1, 8, 4, b, exp=1040, flags=OFFER | FINAL, **_op(RS, SUM, 1))),  # to w1
                Send("w0", _contrib(0, 8, 4, a, exp=1030, flags=RETX, **_op(RS, SUM, 1))),  # EMPTY, FINAL
                Send("w1", _contrib(1, 8, 4, b, exp=1040, flags=RETX, **_op(RS, SUM, 1))),
                Send("w0", _contrib(0, 9, 2, a, flags=OFFER | FINAL, **_op(AG, SUM, 0))),  # an empty set
                Send("w1", _empty(1, 9, 2, 8, **_op(AG, SUM, 0))),  # a repeat: the offered values
                Send("w0", _contrib(0, 9, 2, a, flags=OFFER | FINAL)),  # another op: op_mismatch
                Send("w1", _contrib(1, 10, 0, [], flags=OFFER | FINAL, **_op(BARRIER))),  # a barrier's use
                Send("w0", _empty(0, 10, 0, 0, **_op(BARRIER))),
                Send("w1", _contrib(1, 11, 0, BIG_B, exp=1070, flags=OFFER, **_op(RS, MAX, 0))),  # full
                Send("w1", _contrib(1, 11, 0, BIG_A, flags=RETX, **_op(RS, MAX, 0))),
            ),
        ),
        *_tree_cases(a, b),
    ]


def _tree_cases(a: list[int], b: list[int]) -> list[Case]:
    """A leaf of a tree (docs/protocol.md, "Collectives", in a tree): four ranks in the job, two below
    this switch; a reduce-scatter goes up with root 0xFF and its RESULT comes down to every child."""
    p = "p"
    return [
        Case(
            "tree: all-gather, reduce-scatter and barrier at a leaf",
            (
                *_joined(),
                Send(p, tree_ack()),
                Send("w0", _empty(0, 8, 0, 8, **_op(AG, SUM, 3))),
                Send("w1", _empty(1, 8, 0, 8, **_op(AG, SUM, 3))),  # a chunk owned elsewhere: EMPTY up
                Send(p, tree_result(8, 0, a, **_op(AG, SUM, 3))),  # the owner's values down to both
                Send("w0", _empty(0, 8, 0, 8, flags=RETX, **_op(AG, SUM, 3))),  # a repeat: the values
                Send("w0", _contrib(0, 9, 0, a, **_op(AG, SUM, 0))),
                Send("w1", _empty(1, 9, 0, 8, **_op(AG, SUM, 0))),  # w0's chunk up, from the accumulator
                Send("w1", _empty(1, 9, 0, 8, flags=RETX, **_op(AG, SUM, 0))),  # the partial again (RETX)
                Send("w0", _contrib(0, 10, 0, a, **_op(RS, MAX, 1))),
                Send("w1", _contrib(1, 10, 0, b, **_op(RS, MAX, 1))),  # up with root 0xFF
                Send("w1", _contrib(1, 10, 0, b, flags=RETX, **_op(RS, MAX, 1))),
                Send(p, tree_result(10, 0, b, **_op(RS, MAX, 0xFF))),  # down to both children
                Send("w0", _contrib(0, 10, 0, a, flags=RETX, **_op(RS, MAX, 1))),  # w0 got the values
                Send("w0", _contrib(0, 11, 0, a, **_op(RS, SUM, 4))),  # rank 4 of 4: bad_op
                Send("w0", _contrib(0, 11, 0, a, **_op(RS, SUM, 3))),  # rank 3 is another leaf's
                Send("w1", _contrib(1, 11, 0, b, **_op(RS, SUM, 3))),
                Send(p, tree_result(11, 0, a, **_op(RS, SUM, 0xFF))),
                Send("w0", _empty(0, 8, 1, 0, **_op(BARRIER))),
                Send("w1", _empty(1, 8, 1, 0, **_op(BARRIER))),  # EMPTY up
                Send(p, tree_result(8, 1, [], flags=EMPTY, count=0, **_op(BARRIER))),  # EMPTY down
                Send("w1", _empty(1, 8, 1, 0, flags=RETX, **_op(BARRIER))),
                Send("w0", _contrib(0, 9, 1, b, flags=OFFER | FINAL, **_op(RS, SUM, 2))),  # down; up, 0xFF
                Send(p, tree_result(10, 2, a, flags=FINAL, **_op(RS, MAX, 0xFF))),  # the parent's offer
                Send("w0", _contrib(0, 10, 2, a, **_op(RS, MAX, 1))),  # the set took the parent's op
                Send(p, tree_result(8, 2, [], flags=EMPTY, count=8, **_op(AG, SUM, 3))),  # stale
            ),
            tree=True,
        ),
    ]


CASES: list[Case] = _cases()
