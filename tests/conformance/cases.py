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

__all__ = [
    "BIG_A",
    "BIG_B",
    "CASES",
    "ELEMENTS",
    "HOSTS",
    "KEY",
    "PARENT_KEY",
    "Case",
    "Send",
    "big_offer",
    "tree_ack",
    "tree_result",
]

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
    key: int = 0
    """The job's key (docs/protocol.md, "Job keys"; 0: none)."""


def _n(**kw: Any) -> bytes:
    kw.setdefault("job", JOB)
    return bytes(NetAgg(**kw))


def _join(worker: int, incarnation: int, **kw: Any) -> bytes:
    return _n(type="JOIN", worker=worker, seq=incarnation, **kw)


def _contrib(worker: int, slot: int, seq: int, values: list[int], epoch: int = 1, **kw: Any) -> bytes:
    return _n(
        type="CONTRIB", worker=worker, slot=slot, set=seq & 1, seq=seq, epoch=epoch, values=values, **kw
    )


def _signed(word: int) -> int:
    """A 32-bit word as the layer's signed payload element."""
    return word - 2**32 if word >= 2**31 else word


def _join_with(worker: int, incarnation: int, key: int = 0, prev_round: int = 0, **kw: Any) -> bytes:
    """A JOIN with its 3-word payload: key_hi, key_lo, prev_round."""
    words = [key >> 32, key & 0xFFFFFFFF, prev_round]
    return _join(worker, incarnation, values=[_signed(w) for w in words], **kw)


def _joined() -> list[Send]:
    return [Send("w0", _join(0, 111)), Send("w1", _join(1, 222))]


def tree_ack(epoch: int = 4) -> Callable[[int], bytes]:
    """The parent's JOIN_ACK for this switch's latest JOIN (its incarnation), in the tree cases."""
    return lambda inc: _n(type="JOIN_ACK", worker=PARENT_WORKER, epoch=epoch, seq=inc, bitmap=3)


def tree_result(
    slot: int, seq: int, values: list[int], epoch: int = 4, exp: int = 1050, flags: int = 0, **kw: Any
) -> bytes:
    """The parent's RESULT of a use, in the tree cases (``kw``: the op's fields, ``count``)."""
    return _n(
        type="RESULT",
        flags=flags,
        worker=0xFFFF,
        slot=slot,
        set=seq & 1,
        seq=seq,
        epoch=epoch,
        exp=exp,
        values=values,
        bitmap=3,
        **kw,
    )


KEY = 0x0123456789ABCDEF
PARENT_KEY = 0xFEDCBA9876543210
RESUME, OFFER, FINAL = 0x04, 0x08, 0x10  # Flag bits the scapy layer does not name


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
                Send("w0", _contrib(0, 8, 0, a, version=1)),  # bad_version (version 1)
                Send("w0", _contrib(0, 8, 0, a, coll=5)),  # bad_op
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
    cases += _key_and_round_cases(a, b)
    cases += _refusal_cases(a, b)
    cases += _offer_cases(a, b)
    p = "p"
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
                Send(p, tree_ack()),
                Send("w1", _contrib(1, 8, 0, b, exp=1040, flags="RETX")),  # now the partial goes up (RETX)
                Send(p, tree_result(8, 0, total)),  # down to both workers with this switch's epoch
                Send(p, tree_result(8, 0, total)),  # a duplicate: nothing
                Send("w0", _contrib(0, 8, 0, a, exp=1030)),  # a repeat: the stored result, unicast
                Send("w0", _contrib(0, 9, 0, a)),
                Send("w1", _contrib(1, 9, 0, b)),  # complete: the partial goes up
                Send(p, tree_result(9, 1, total)),  # wrong use: stale
                Send(p, tree_result(9, 0, total, epoch=5)),  # wrong epoch: stale
                Send(p, _n(type="PENDING", worker=PARENT_WORKER, slot=9, epoch=4, bitmap=1)),  # counted only
                Send("x", tree_result(9, 0, total)),  # a RESULT from anyone else: bad_type
                Send(p, tree_result(9, 0, total, exp=0xFFFF)),
            ),
            tree=True,
        ),
        Case(
            "tree: offers up, FINAL results down, the parent's refusals",
            (
                *_joined(),
                Send("w0", _contrib(0, 8, 0, a, exp=1030, flags=OFFER | FINAL)),  # down, and the JOIN again
                Send(p, tree_ack()),
                Send("w1", _contrib(1, 9, 0, b, exp=1040, flags=OFFER | FINAL)),  # down, and the offer up
                Send("w0", _contrib(0, 10, 0, a)),
                Send("w1", _contrib(1, 10, 0, b)),  # complete: the partial up
                Send(p, tree_result(10, 0, total, flags=FINAL)),  # an offered result: down, FINAL
                Send("w0", _contrib(0, 10, 0, a, flags="RETX")),  # a repeat: unicast, FINAL
                Send(p, tree_result(11, 2, total, flags=FINAL)),  # FINAL for an empty set: down
                Send(p, tree_result(11, 0, total, flags=FINAL)),  # older than the set's use: stale
                Send(p, tree_result(8, 0, a)),  # known here: stale
                Send(p, _n(type="REFUSE", worker=PARENT_WORKER, epoch=4, exp=1)),  # not_joined: rejoin
                Send("w0", _contrib(0, 9, 1, a)),
                Send("w1", _contrib(1, 9, 1, b)),  # complete, not joined there: the JOIN again
                Send(p, _n(type="REFUSE", worker=PARENT_WORKER, epoch=4, exp=2)),  # not joined: nothing
                Send(p, _n(type="REFUSE", worker=PARENT_WORKER, epoch=4, exp=6)),  # bad_key: nothing
                Send(p, tree_ack(epoch=5)),
                Send("w1", _contrib(1, 9, 1, b, flags="RETX")),  # the partial up, epoch 5
                Send(p, _n(type="REFUSE", worker=PARENT_WORKER, slot=9, seq=1, epoch=6, exp=2)),  # rejoin
            ),
            tree=True,
        ),
    ]
    return cases


def _key_and_round_cases(a: list[int], b: list[int]) -> list[Case]:
    """JOIN payloads (docs/protocol.md, "Joining", 0 and 5; "Job keys")."""
    r = 0x5EED0001
    keyed = [Send("w0", _join_with(0, 111, KEY)), Send("w1", _join_with(1, 222, KEY))]
    return [
        Case(
            "job key: JOINs without it, with another, from elsewhere",
            (
                Send("w0", _join(0, 111)),  # no payload: key 0, not the job's: bad_key, refused
                Send("w0", _join_with(0, 111, KEY ^ 1)),  # another key: bad_key
                Send("w0", _join_with(0, 111, 0)),  # key 0 in the payload: bad_key
                Send("x", _join_with(0, 999, KEY ^ 1 << 63)),  # from elsewhere, wrong key: bad_key first
                Send("x", _join_with(0, 999, KEY)),  # from elsewhere, right key: wrong_source
                *keyed,  # the round completes: JOIN_ACK to both, round = 111 ^ 222
                Send("w1", _join_with(1, 333)),  # a new incarnation without the key: no new round
                Send("w1", _join(1, 444)),
                Send("w0", _join_with(0, 111, KEY)),  # the round stands: JOIN_ACK again
                Send("w0", _contrib(0, 8, 0, a)),
                Send("w1", _contrib(1, 8, 0, b)),  # and it aggregates
            ),
            key=KEY,
        ),
        Case(
            "JOIN payload lengths",
            (
                Send("w0", _join(0, 111, values=[1, 2])),  # 2 words: bad_length
                Send("w0", _join(0, 111, values=[1, 2, 3, 4])),  # 4 words: bad_length
                Send("w0", _join(0, 111, values=[0, 0, 0])[:-4]),  # shorter than its count: bad_length
                Send("w0", _join_with(0, 0, KEY)),  # incarnation 0 comes first: bad_incarnation
                Send("w0", _join_with(0, 111, 0, 0)),  # 3 words, key and prev_round 0: a member
                Send("w1", _join(1, 222)),  # none: the same; completes
                Send("w1", _join(1, 222)),
            ),
        ),
        Case(
            "a job without a key takes any key",
            (
                Send("w0", _join_with(0, 111, KEY)),
                Send("w1", _join_with(1, 222, 0)),
                Send("w0", _join(0, 111)),
            ),
        ),
        Case(
            "JOIN_ACK round and RESUME",
            (
                Send("w0", _join_with(0, 0x10000001, KEY, r)),
                Send("w1", _join_with(1, 0x20000002, KEY, r)),  # both continue round r: RESUME
                Send("w1", _join_with(1, 0x20000002, KEY, r)),  # a repeat: the same JOIN_ACK
                Send("w0", _join_with(0, 0x30000003, KEY, r)),  # a new round
                Send("w1", _join_with(1, 0x40000004, KEY, r + 1)),  # mixed prev_round: each must repeat
                Send("w0", _join_with(0, 0x30000003, KEY, r)),  # w0 has; w1 has not: PENDING
                Send("w1", _join_with(1, 0x40000004, KEY, r + 1)),  # now both: no RESUME
                Send("w0", _join_with(0, 0x50000005, KEY, 0)),
                Send("w1", _join_with(1, 0x60000006, KEY, 0)),  # both 0: not mixed, no RESUME
                Send("w0", _join_with(0, 0x70000007, KEY, 0)),
                Send("w1", _join_with(1, 0x80000008, KEY, r)),  # 0 and r: mixed
                Send("w1", _join_with(1, 0x80000008, KEY, r)),
                Send("w0", _join_with(0, 0x70000007, KEY, 0)),  # both repeated: no RESUME
                Send("w1", _join_with(1, 0x90000009, KEY, 0x10000001 ^ 0x20000002)),  # replaces w1 first
                Send("w0", _join_with(0, 0xA000000A, KEY, 0x10000001 ^ 0x20000002)),  # RESUME
            ),
            key=KEY,
        ),
        Case(
            "epochs after the latest a member had",
            (
                # serial order from the switch's epoch 0: 3 is later, 200 is 56 earlier: epoch 4
                Send("w0", _join_with(0, 0x11, 0, r, epoch=200)),
                Send("w1", _join_with(1, 0x22, 0, r, epoch=3)),
                Send("w0", _join_with(0, 0x33, 0, r, epoch=130)),
                Send("w1", _join_with(1, 0x44, 0, r, epoch=0)),  # 130 is 126 after 4: epoch 131
                Send("w0", _join_with(0, 0x55, 0, r, epoch=255)),
                Send("w1", _join_with(1, 0x66, 0, r, epoch=255)),  # after 255 comes 1, never 0
                Send("w0", _join_with(0, 0x77, 0, 0, epoch=0)),
                Send("w1", _join_with(1, 0x88, 0, 0, epoch=0)),  # none given: the switch's own + 1
            ),
        ),
    ]


def _refusal_cases(a: list[int], b: list[int]) -> list[Case]:
    """Every reason a switch answers with a REFUSE (docs/protocol.md, "Refusals")."""
    return [
        Case(
            "refusals: not_joined, stale_epoch, unknown_job, wrong_source, count_mismatch",
            (
                Send("w0", _contrib(0, 9, 3, a, epoch=0)),  # not_joined (epoch 0 before any round)
                Send("w0", _join(0, 111)),
                Send("w0", _contrib(0, 9, 3, a, epoch=0)),  # still not_joined
                Send("w1", _join(1, 222)),
                Send("w0", _contrib(0, 9, 3, a, epoch=7)),  # stale_epoch: the REFUSE has epoch 1
                Send("w0", _contrib(0, 9, 3, a, job=99)),  # unknown_job: epoch 0
                Send("w0", _join(0, 5, job=98)),  # a JOIN of an unknown job
                Send("x", _contrib(1, 9, 3, b)),  # wrong_source
                Send("w0", _contrib(0, 9, 3, a)),  # use 3 with 8 elements
                Send("w1", _contrib(1, 9, 3, b[:5])),  # count_mismatch: the REFUSE's bitmap is 8
                Send("w1", _contrib(1, 9, 3, b, flags="RETX")),  # completes
                Send("w1", _contrib(1, 9, 1, b)),  # stale_seq: not refused
                Send("w0", _contrib(5, 9, 3, a)),  # bad_worker: not refused
                Send("w0", _n(type="REFUSE", worker=0, slot=9, seq=3, exp=1)),  # bad_type: never answered
                Send("w1", _join(1, 333)),  # a new round begins
                Send("w0", _contrib(0, 9, 5, a)),  # not_joined with the job's epoch (1)
            ),
        ),
    ]


def _offer_cases(a: list[int], b: list[int]) -> list[Case]:
    """CONTRIBs with OFFER (docs/protocol.md, "Recovery", the switch and an OFFER)."""
    return [
        Case(
            "offers: incomplete, complete, empty, newer, older, other count",
            (
                *_joined(),
                Send("w0", _contrib(0, 8, 4, a, exp=1030)),  # use 4 incomplete
                Send("w1", _contrib(1, 8, 4, b, exp=1040, flags=OFFER | FINAL)),  # completes it: RESULT FINAL
                Send("w0", _contrib(0, 8, 4, a, exp=1030, flags="RETX")),  # a repeat: unicast, FINAL kept
                Send("w0", _contrib(0, 8, 4, a, exp=1030, flags=OFFER | FINAL)),  # complete: nothing
                Send("w0", _contrib(0, 8, 4, a[:3], flags=OFFER)),  # another count: count_mismatch
                Send("w0", _contrib(0, 8, 2, a, flags=OFFER | FINAL)),  # older: stale_seq
                Send("w1", _contrib(1, 9, 7, b, exp=1050, flags=OFFER)),  # empty set, no FINAL: RESULT 0
                Send("w0", _contrib(0, 9, 7, a, flags="RETX")),  # a repeat: unicast, no FINAL
                Send("w0", _contrib(0, 9, 9, a[:2], exp=7, flags=OFFER | FINAL)),  # newer than 7: complete
                Send("w0", _contrib(0, 10, 0, [], exp=1100, flags=OFFER | FINAL)),  # a bootstrap use
                Send("w1", _contrib(1, 10, 0, [], exp=1000)),  # a repeat of it
                Send("w1", _contrib(1, 11, 2, a, flags=OFFER | FINAL | 1)),  # RETX counted
                Send("w0", _contrib(0, 11, 2, a, epoch=3, flags=OFFER | FINAL)),  # stale_epoch: refused
                Send("w0", _contrib(0, 8, 6, big_offer(), exp=1060, flags=OFFER | FINAL)),  # full packet
                Send("w1", _contrib(1, 8, 6, BIG_B, exp=1061)),  # a repeat: the stored wide result
            ),
        ),
    ]


def big_offer() -> list[int]:
    """A full packet's offered result."""
    return _rotated(BIG_A, 5)


CASES: list[Case] = _cases()
