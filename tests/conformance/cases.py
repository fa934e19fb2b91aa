"""Conformance cases: the same packet sequences for every implementation of the switch.

Each :class:`Case` is a list of datagrams crafted with the scapy layer (:class:`netagg.scapy_layer.NetAgg`),
each sent from one of the hosts in :data:`HOSTS`: two workers of one job, an outsider and (in the tree
cases) the parent switch. tests/conformance/targets.py runs them through the Python switch and BMv2 and
compares what comes out; docs/protocol.md is the reference: a difference is a bug in one of them, or in
the page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from netagg.scapy_layer import NetAgg

__all__ = ["BIG_A", "BIG_B", "CASES", "ELEMENTS", "HOSTS", "Case", "Send"]

JOB = 5
WORKERS = 2
SLOT_BASE = 8
SLOTS = 4
ELEMENTS = 64  # the P4 program's compiled N: full packets take its one-field path
SWITCH_IP = "10.99.0.254"
SWITCH_MAC = "02:00:0a:63:00:fe"
#: name -> (IP, UDP port, MAC): the job's two workers and a host outside the job.
HOSTS = {
    "w0": ("10.99.0.1", 40000, "02:00:0a:63:00:01"),
    "w1": ("10.99.0.2", 40001, "02:00:0a:63:00:02"),
    "x": ("10.99.0.3", 40002, "02:00:0a:63:00:03"),
    "p": ("10.99.0.4", 47000, "02:00:0a:63:00:04"),  # the parent switch, in the tree cases
}
PARENT_WORKER = 1


@dataclass(frozen=True)
class Send:
    """One datagram (the UDP payload) from a host; or a function of the incarnation this switch last
    sent its parent in a JOIN (for the parent's JOIN_ACK in the tree cases)."""

    host: str
    payload: bytes | Callable[[int], bytes]

    def data(self, incarnation: int) -> bytes:
        return self.payload(incarnation) if callable(self.payload) else self.payload


@dataclass(frozen=True)
class Case:
    name: str
    sends: tuple[Send, ...]
    tree: bool = False
    """The switch is a leaf of a tree: its parent is host "p" (docs/protocol.md, "Aggregation trees")."""


def _n(**kw: Any) -> bytes:
    kw.setdefault("job", JOB)
    return bytes(NetAgg(**kw))


def _join(worker: int, incarnation: int, **kw: Any) -> bytes:
    return _n(type="JOIN", worker=worker, seq=incarnation, **kw)


def _contrib(worker: int, slot: int, seq: int, values: list[int], epoch: int = 1, **kw: Any) -> bytes:
    return _n(
        type="CONTRIB", worker=worker, slot=slot, set=seq & 1, seq=seq, epoch=epoch, values=values, **kw
    )


def _joined() -> list[Send]:
    return [Send("w0", _join(0, 111)), Send("w1", _join(1, 222))]


def _big(mul: int, add: int, head: list[int]) -> list[int]:
    values = [(i * mul + add) % 2**32 - 2**31 for i in range(ELEMENTS)]
    values[: len(head)] = head
    return values


#: Full packets (ELEMENTS values: the P4 program's one-field wide path, parse_wide and SWAR_ADD), with
#: every lane's carry cases up front: overflow both ways, -1 + 1, sign flips.
BIG_A = _big(2654435761, 0, [2**31 - 1, -(2**31), -1, 0x40000000])
BIG_B = _big(40503, 7, [1, -1, 1, 0x40000000])


def _rotated(values: list[int], k: int) -> list[int]:
    return values[k:] + values[:k]


def _cases() -> list[Case]:
    a = [1, -2, 3, 2**31 - 1, -(2**31), 0, 7, 8]
    b = [10, 20, -30, 1, -1, 5, 6, 7]
    big_a, big_b = BIG_A, BIG_B
    cases = [
        Case(
            "join round, repeats, new incarnation",
            (
                Send("w0", _join(0, 111)),
                Send("w0", _join(0, 111)),  # repeat before the round completes: PENDING
                Send("w1", _join(1, 222)),  # completes: JOIN_ACK to both
                Send("w0", _join(0, 111)),  # repeat after: JOIN_ACK to w0
                Send("w1", _join(1, 333)),  # a new incarnation starts a new round
                Send("w0", _join(0, 111)),  # w0's old incarnation no longer counts: it joins the new round
            ),
        ),
        Case(
            "first contributions, completion, repeats",
            (
                *_joined(),
                Send("w0", _contrib(0, 8, 0, a, exp=1030)),
                Send("w0", _contrib(0, 8, 0, a, exp=1030, flags="RETX")),  # repeat before completion: PENDING
                Send("w1", _contrib(1, 8, 0, b, exp=1040)),  # completes: RESULT to both
                Send("w1", _contrib(1, 8, 0, b, exp=1040, flags="RETX")),  # repeat after: RESULT unicast
            ),
        ),
        Case(
            "set flips, reuse and late packets",
            (
                *_joined(),
                Send("w0", _contrib(0, 9, 0, a)),
                Send("w1", _contrib(1, 9, 0, b)),
                Send("w0", _contrib(0, 9, 1, b)),  # set 1
                Send("w1", _contrib(1, 9, 1, a)),
                Send("w0", _contrib(0, 9, 2, a[:3])),  # set 0 again (use 2), shorter
                Send("w1", _contrib(1, 9, 0, b)),  # late duplicate of use 0: stale_seq
                Send("w1", _contrib(1, 9, 2, b[:2])),  # same use, other count: count_mismatch
                Send("w1", _contrib(1, 9, 2, b[:3])),
                Send("w0", _contrib(0, 9, 1, b)),  # use 1 is still kept: unicast result
            ),
        ),
        Case(
            "bootstrap uses and exponent maxima",
            (
                *_joined(),
                Send("w0", _contrib(0, 10, 0, [], exp=1100)),
                Send("w1", _contrib(1, 10, 0, [], exp=0)),
                Send("w0", _contrib(0, 11, 0, [], exp=0xFFFF)),
                Send("w1", _contrib(1, 11, 0, [], exp=900)),
            ),
        ),
        Case(
            "foreign jobs, workers, slots and sources",
            (
                *_joined(),
                Send("w0", _contrib(0, 8, 0, a, job=99)),  # unknown_job
                Send("w0", _contrib(5, 8, 0, a)),  # bad_worker
                Send("w0", _contrib(0, 2, 0, a)),  # bad_slot (below the job's range)
                Send("w0", _contrib(0, 12, 0, a)),  # bad_slot (above)
                Send("x", _contrib(0, 8, 0, a)),  # wrong_source
                Send("x", _join(0, 999)),  # a JOIN from outside: wrong_source
                Send("w0", _contrib(0, 8, 0, a)),
                Send("w1", _contrib(1, 8, 0, b)),  # the sum is untouched by all of the above
            ),
        ),
        Case(
            "malformed headers",
            (
                *_joined(),
                Send("w0", _contrib(0, 8, 0, a, version=2)),  # bad_version
                Send("w0", _contrib(0, 8, 0, a, reserved=1)),  # bad_reserved
                Send("w0", _contrib(0, 8, 0, a, count=7)),  # bad_length
                Send("w0", _contrib(0, 8, 0, a)[:-4]),  # bad_length (short payload)
                Send("w0", _contrib(0, 8, 0, a)[:20]),  # truncated
                Send("w0", _n(type="RESULT", worker=0, slot=8, epoch=1, values=a)),  # bad_type
                Send("w0", _n(type=9, worker=0)),  # bad_type
                Send("w0", _contrib(0, 8, 0, [0] * (ELEMENTS + 1))),  # count > the job's elements: bad_length
                Send("w0", _n(type="CONTRIB", worker=0, slot=8, set=1, seq=0, epoch=1, values=a)),  # bad_set
                Send("w0", _contrib(0, 8, 0, a, epoch=3)),  # stale_epoch
                Send("w0", _join(0, 0)),  # bad_incarnation
                Send("w0", _contrib(0, 8, 0, a)),
                Send("w1", _contrib(1, 8, 0, b)),
            ),
        ),
        Case(
            "contributions before the job is joined",
            (
                Send("w0", _contrib(0, 8, 0, a, epoch=0)),  # not_joined
                Send("w0", _join(0, 5)),
                Send("w0", _contrib(0, 8, 0, a, epoch=0)),  # still not joined
            ),
        ),
    ]
    cases += [
        Case(
            "full packets: the wide path, its stored result, set flips",
            (
                *_joined(),
                Send("w0", _contrib(0, 8, 0, big_a, exp=1030)),
                Send("w0", _contrib(0, 8, 0, big_a, exp=1030, flags="RETX")),  # PENDING
                Send("w1", _contrib(1, 8, 0, big_b, exp=1040)),  # completes: the wide sum to both
                Send("w1", _contrib(1, 8, 0, big_b, exp=1040, flags="RETX")),  # the stored wide result
                Send("w0", _contrib(0, 8, 1, big_b)),  # set 1
                Send("w1", _contrib(1, 8, 1, big_a)),
                Send("w0", _contrib(0, 8, 2, big_a)),  # set 0 again (use 2)
                Send("w1", _contrib(1, 8, 2, big_a)),
                Send("w0", _contrib(0, 8, 1, big_b, flags="RETX")),  # use 1 is still kept: unicast
            ),
        ),
        Case(
            "full packets in bursts (one GRO batch per worker)",
            (
                *_joined(),
                *(Send("w0", _contrib(0, 8 + k, 0, _rotated(big_a, k), exp=1000 + k)) for k in range(SLOTS)),
                *(Send("w1", _contrib(1, 8 + k, 0, _rotated(big_b, k), exp=1010 - k)) for k in range(SLOTS)),
                *(Send("w0", _contrib(0, 8 + k, 0, _rotated(big_a, k), exp=1000 + k)) for k in range(SLOTS)),
                *(Send("w0", _contrib(0, 8 + k, 1, _rotated(big_b, k))) for k in range(SLOTS)),
                *(Send("w1", _contrib(1, 8 + k, 1, _rotated(big_a, 3 * k))) for k in range(SLOTS)),
            ),
        ),
    ]
    p = "p"

    def parent_ack(epoch: int = 4) -> Callable[[int], bytes]:
        return lambda inc: _n(type="JOIN_ACK", worker=PARENT_WORKER, epoch=epoch, seq=inc, bitmap=3)

    def parent_result(slot: int, seq: int, values: list[int], epoch: int = 4, exp: int = 1050) -> bytes:
        return _n(
            type="RESULT",
            worker=0xFFFF,
            slot=slot,
            set=seq & 1,
            seq=seq,
            epoch=epoch,
            exp=exp,
            values=values,
            bitmap=3,
        )

    total = [(x + y + 1000 + 2**31) % 2**32 - 2**31 for x, y in zip(a, b, strict=True)]  # int32
    cases += [
        Case(
            "tree: partial up, result down, repeats",
            (
                *_joined(),  # the round completes: JOIN_ACKs down and this switch's JOIN up
                Send("w0", _contrib(0, 8, 0, a, exp=1030)),
                Send(
                    "w1", _contrib(1, 8, 0, b, exp=1040)
                ),  # complete before the parent's ack: the JOIN again
                Send(p, parent_ack()),
                Send("w1", _contrib(1, 8, 0, b, exp=1040, flags="RETX")),  # now the partial goes up (RETX)
                Send(p, parent_result(8, 0, total)),  # down to both workers with this switch's epoch
                Send(p, parent_result(8, 0, total)),  # a duplicate: nothing
                Send("w0", _contrib(0, 8, 0, a, exp=1030)),  # a repeat: the stored result, unicast
                Send("w0", _contrib(0, 9, 0, a)),
                Send("w1", _contrib(1, 9, 0, b)),  # complete: the partial goes up
                Send(p, parent_result(9, 1, total)),  # wrong use: stale
                Send(p, parent_result(9, 0, total, epoch=5)),  # wrong epoch: stale
                Send(p, _n(type="PENDING", worker=PARENT_WORKER, slot=9, epoch=4, bitmap=1)),  # counted only
                Send("x", parent_result(9, 0, total)),  # a RESULT from anyone else: bad_type
                Send(p, parent_result(9, 0, total, exp=0xFFFF)),
            ),
            tree=True,
        ),
    ]
    return cases


CASES: list[Case] = _cases()
