"""The switch dataplane rules (docs/protocol.md, "Switch rules"), without sockets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netagg.protocol import HEADER, VERSION, MsgType, Reason, decode
from switch.core import DROP_REASONS, Dataplane, JobConfig, Segments

JOB = 7


def join(dp: Dataplane, worker: int, incarnation: int = 0, addr: str | None = None):
    inc = incarnation or worker + 100
    pkt = HEADER.pack(VERSION, MsgType.JOIN, 0, 0, JOB, worker, 0, 0, inc, 0, 0, 0)
    return dp.handle(pkt, addr or f"w{worker}")


def contrib(
    worker: int, slot: int, seq: int, values, epoch: int = 1, exp: int = 0, flags: int = 0, job: int = JOB
) -> bytes:
    values = np.asarray(values, dtype=">i4")
    slot_field = slot | (0x8000 if seq & 1 else 0)
    return (
        HEADER.pack(
            VERSION, MsgType.CONTRIB, flags, epoch, job, worker, slot_field, values.size, seq, exp, 0, 0
        )
        + values.tobytes()
    )


def joined(workers: int = 3, slots: int = 4, elements: int = 4) -> Dataplane:
    dp = Dataplane([JobConfig(JOB, workers, slots, elements)])
    for w in range(workers):
        out = join(dp, w)
    assert len(out) == workers  # the last JOIN completes the round: an ACK to everyone
    return dp


def raw(data) -> bytes:
    assert not isinstance(data, Segments), "handle() answers one datagram at a time"
    return bytes(data)


def decoded(outs):
    return [(decode(raw(data)), dests) for data, dests in outs]


def refusals(outs) -> list[tuple[str, list]]:
    """(reason, destinations) of each REFUSE in ``outs``; anything else in ``outs`` fails the test."""
    found = []
    for (h, _), dests in decoded(outs):
        assert h.type == MsgType.REFUSE and h.count == 0, h
        found.append((Reason(h.exp).name, dests))
    return found


def answered_as_dropped(outs, why: str, src, times: int = 1) -> bool:
    """A drop for ``why`` is answered with a REFUSE to ``src`` if the sender can act on it, else not."""
    if why in Reason.__members__:
        return refusals(outs) == [(why, [src])] * times
    return outs == []


def check_accounting(dp: Dataplane) -> None:
    c = dp.counters
    assert c["packets_in"] == (
        sum(dp.drops.values()) + c["joins"] + c["contributions"] + c["repeats"] + c["from_parent"]
    )


def test_join_barrier_acks_everyone_with_the_job_parameters() -> None:
    dp = Dataplane([JobConfig(JOB, 2, slots=8, elements=16, slot_base=100, total_workers=6)])
    [(pending, dests)] = join(dp, 0)
    ((h, _),) = [decode(raw(pending))]
    assert h.type == MsgType.PENDING and h.bitmap == 0b01 and dests == ["w0"]
    acks = decoded(join(dp, 1))
    assert sorted(d[0] for _, d in acks) == ["w0", "w1"]
    for (h, params), _ in acks:
        assert h.type == MsgType.JOIN_ACK and h.epoch == 1
        assert params.tolist() == [100, 8, 16, 2, 6, 0, 0, 100 ^ 101]  # no group; round = XOR
        assert not h.flags  # a fresh round: no RESUME
    # A repeated JOIN of a complete round gets the ACK again, unicast.
    [((h, _), dests)] = decoded(join(dp, 1))
    assert h.type == MsgType.JOIN_ACK and dests == ["w1"]
    check_accounting(dp)


def test_sum_goes_to_every_worker_and_repeats_are_idempotent() -> None:
    dp = joined(3)
    assert dp.handle(contrib(0, 2, 0, [1, 2, 3, 4], exp=1030), "w0") == []
    assert dp.handle(contrib(1, 2, 0, [10, 20, 30, 40], exp=1040), "w1") == []
    # A repeat before completion does not add again; it is answered with who is in so far.
    [((h, _), dests)] = decoded(dp.handle(contrib(1, 2, 0, [10, 20, 30, 40], flags=1), "w1"))
    assert h.type == MsgType.PENDING and h.bitmap == 0b011 and dests == ["w1"]
    [((h, payload), dests)] = decoded(dp.handle(contrib(2, 2, 0, [100, 200, 300, 400], exp=1035), "w2"))
    assert h.type == MsgType.RESULT and h.exp == 1040 and h.seq == 0 and h.slot == 2
    assert payload.tolist() == [111, 222, 333, 444]
    assert dests == ["w0", "w1", "w2"]
    # A repeat after completion gets the same result again, to that worker only.
    [((h, payload), dests)] = decoded(dp.handle(contrib(0, 2, 0, [1, 2, 3, 4], flags=1), "w0"))
    assert (
        h.type == MsgType.RESULT
        and h.flags & 2
        and h.worker == 0
        and payload.tolist() == [111, 222, 333, 444]
    )
    assert dests == ["w0"]
    assert dp.counters["completions"] == 1 and dp.counters["repeats"] == 2
    check_accounting(dp)


def test_two_sets_and_slot_reuse() -> None:
    dp = joined(2)
    for w in range(2):
        out = dp.handle(contrib(w, 0, 0, [w + 1] * 4), f"w{w}")
    assert decode(raw(out[0][0]))[1].tolist() == [3] * 4
    # Use 1 (set 1) and use 2 (set 0 again) of slot 0.
    for w in range(2):
        out = dp.handle(contrib(w, 0, 1, [5] * 4), f"w{w}")
    assert decode(raw(out[0][0]))[0].set == 1
    # A late repeat of use 0 still gets use 0's result: the shadow copy keeps it until use 2 starts.
    [((h, payload), _)] = decoded(dp.handle(contrib(0, 0, 0, [1] * 4, flags=1), "w0"))
    assert h.seq == 0 and payload.tolist() == [3] * 4
    dp.handle(contrib(0, 0, 2, [7] * 4), "w0")
    # Now use 0 is superseded: a stale duplicate of it is dropped and changes nothing.
    assert dp.handle(contrib(1, 0, 0, [1] * 4), "w1") == []
    assert dp.drops["stale_seq"] == 1
    [((h, payload), _)] = decoded(dp.handle(contrib(1, 0, 2, [1] * 4), "w1"))
    assert h.seq == 2 and payload.tolist() == [8] * 4
    check_accounting(dp)


@pytest.mark.parametrize(
    ("packet", "src", "reason"),
    [
        (contrib(0, 0, 0, [1])[:10], "w0", "truncated"),
        (b"\x09" + contrib(0, 0, 0, [1])[1:], "w0", "bad_version"),
        (contrib(0, 0, 0, [1])[:1] + bytes([MsgType.RESULT]) + contrib(0, 0, 0, [1])[2:], "w0", "bad_type"),
        (contrib(0, 0, 0, [1])[:18] + b"\x50\x00" + contrib(0, 0, 0, [1])[20:], "w0", "bad_op"),
        (contrib(0, 0, 0, [1])[:-1], "w0", "bad_length"),
        (contrib(0, 0, 0, [1] * 5), "w0", "bad_length"),  # more than the job's 4 elements
        (contrib(0, 0, 0, [1], job=99), "w0", "unknown_job"),
        (contrib(3, 0, 0, [1]), "w0", "bad_worker"),
        (contrib(0, 4, 0, [1]), "w0", "bad_slot"),
        (contrib(0, 0, 0, [1])[:8] + b"\x80\x00" + contrib(0, 0, 0, [1])[10:], "w0", "bad_set"),
        (contrib(0, 0, 0, [1], epoch=9), "w0", "stale_epoch"),
        (contrib(0, 0, 0, [1]), "evil", "wrong_source"),
    ],
)
def test_malformed_and_foreign_packets_are_counted_and_change_nothing(
    packet: bytes, src: str, reason: str
) -> None:
    dp = joined(3)
    assert answered_as_dropped(dp.handle(packet, src), reason, src)
    assert dp.drops[reason] == 1
    assert sum(dp.drops.values()) == 1
    # The slot is untouched: a normal use still sums exactly.
    for w in range(3):
        out = dp.handle(contrib(w, 0, 0, [w, w, w, w]), f"w{w}")
    assert decode(raw(out[0][0]))[1].tolist() == [3] * 4
    check_accounting(dp)


def test_count_mismatch_and_not_joined() -> None:
    dp = Dataplane([JobConfig(JOB, 2, 4, 4)])
    assert refusals(dp.handle(contrib(0, 0, 0, [1]), "w0")) == [("not_joined", ["w0"])]
    assert dp.drops["not_joined"] == 1
    join(dp, 0)
    join(dp, 1)
    dp.handle(contrib(0, 0, 0, [1, 1]), "w0")
    [((h, _), dests)] = decoded(dp.handle(contrib(1, 0, 0, [1, 1, 1]), "w1"))
    # refused, and told the count the use has: the worker's error names both
    assert (h.type, Reason(h.exp).name, h.bitmap, h.worker, dests) == (
        MsgType.REFUSE,
        "count_mismatch",
        2,
        1,
        ["w1"],
    )
    assert dp.drops["count_mismatch"] == 1


# The switch's checks of a CONTRIB, in docs/protocol.md's order ("Switch rules", 1.): each defect
# below makes a packet fail exactly one check; a packet with two is charged to the earlier check.
CHECK_ORDER = [
    "truncated",
    "bad_version",
    "bad_op",
    "bad_length/datagram",  # length != 24 + 4 * count
    "bad_type",
    "unknown_job",
    "bad_worker",
    "bad_slot",
    "bad_length/count",  # count > the job's elements
    "bad_set",
    "not_joined",
    "stale_epoch",
    "wrong_source",
]


def reason(defect: str) -> str:
    """The drop counter a defect is charged to."""
    return defect.partition("/")[0]


def with_defects(defects: set[str]) -> tuple[Dataplane, bytes, str]:
    """A joined 3-worker switch (its round open again for "not_joined") and worker 0's first
    contribution to slot 0, with ``defects`` from CHECK_ORDER, and where it comes from."""
    dp = joined(3)
    if "not_joined" in defects:
        join(dp, 0, incarnation=555)  # a new incarnation opens a new round
    values = [1] * (5 if "bad_length/count" in defects else 1)  # the job takes 4 elements
    slot = 4 if "bad_slot" in defects else 0  # the job owns slots 0-3
    pkt = (
        HEADER.pack(
            9 if "bad_version" in defects else VERSION,
            MsgType.RESULT if "bad_type" in defects else MsgType.CONTRIB,
            0,
            9 if "stale_epoch" in defects else 1,
            99 if "unknown_job" in defects else JOB,
            3 if "bad_worker" in defects else 0,
            slot | (0x8000 if "bad_set" in defects else 0),  # use 0 belongs in set 0
            len(values),
            0,
            0,
            0x5000 if "bad_op" in defects else 0,
            0,
        )
        + np.asarray(values, ">i4").tobytes()
    )
    if "bad_length/datagram" in defects:
        pkt = pkt[:-1]
    if "truncated" in defects:
        pkt = pkt[:10]
    return dp, pkt, "evil" if "wrong_source" in defects else "w0"


@pytest.mark.parametrize(
    ("first", "later"),
    [(a, b) for i, a in enumerate(CHECK_ORDER) for b in CHECK_ORDER[i + 1 :] if reason(a) != reason(b)],
)
@pytest.mark.parametrize("path", ["handle", "handle_batch"])
def test_a_packet_bad_in_two_ways_is_charged_to_the_earlier_check(first: str, later: str, path: str) -> None:
    dp, pkt, src = with_defects({first, later})
    before = dict(dp.drops)
    if path == "handle":
        assert answered_as_dropped(dp.handle(pkt, src), reason(first), src)
    else:  # a GRO run of two such datagrams: the batch path must charge each like handle() does
        assert answered_as_dropped(dp.handle_batch(pkt + pkt, len(pkt), src), reason(first), src, times=2)
    charged = {r: n - before[r] for r, n in dp.drops.items() if n != before[r]}
    assert charged == {reason(first): 1 if path == "handle" else 2}
    check_accounting(dp)


@pytest.mark.parametrize("defect", CHECK_ORDER)
def test_each_defect_alone_fails_its_own_check(defect: str) -> None:
    """The vectors above are sound: each defect alone is charged to its own check."""
    dp, pkt, src = with_defects({defect})
    before = dict(dp.drops)
    assert answered_as_dropped(dp.handle(pkt, src), reason(defect), src)
    assert {r: n - before[r] for r, n in dp.drops.items() if n != before[r]} == {reason(defect): 1}
    # and without a defect the same packet is a contribution
    dp, pkt, src = with_defects(set())
    assert dp.handle(pkt, src) == [] and dp.counters["contributions"] == 1 and not any(dp.drops.values())


def test_new_incarnation_starts_a_new_epoch() -> None:
    dp = joined(2)
    dp.handle(contrib(0, 0, 0, [1] * 4), "w0")
    join(dp, 0, incarnation=555, addr="w0-new")
    # the round is open again: not joined, and the worker is told
    assert refusals(dp.handle(contrib(1, 0, 0, [1] * 4), "w1")) == [("not_joined", ["w1"])]
    assert dp.drops["not_joined"] == 1
    acks = join(dp, 1, incarnation=556)
    assert {d[0] for _, d in acks} == {"w0-new", "w1"}
    assert decode(raw(acks[0][0]))[0].epoch == 2
    # Epoch 1 packets are stale now; epoch 2 starts from fresh slots.
    assert refusals(dp.handle(contrib(1, 0, 0, [1] * 4, epoch=1), "w1")) == [("stale_epoch", ["w1"])]
    assert dp.drops["stale_epoch"] == 1
    dp.handle(contrib(0, 0, 0, [2] * 4, epoch=2), "w0-new")
    out = dp.handle(contrib(1, 0, 0, [3] * 4, epoch=2), "w1")
    assert decode(raw(out[0][0]))[1].tolist() == [5] * 4


def test_jobs_are_isolated() -> None:
    dp = Dataplane([JobConfig(1, 2, 4, 4, slot_base=0), JobConfig(2, 2, 4, 4, slot_base=4)])
    with pytest.raises(ValueError, match="overlap"):
        dp.install(JobConfig(3, 2, 4, 4, slot_base=6))
    with pytest.raises(ValueError, match="already installed"):
        dp.install(JobConfig(1, 2, 4, 4, slot_base=20))
    for job in (1, 2):
        for w in range(2):
            dp.handle(HEADER.pack(VERSION, MsgType.JOIN, 0, 0, job, w, 0, 0, 1 + w, 0, 0, 0), f"j{job}w{w}")
    # Job 1's worker aims at job 2's slot 4: dropped, job 2's sum unaffected.
    assert dp.handle(contrib(0, 4, 0, [99] * 4, job=1), "j1w0") == [] and dp.drops["bad_slot"] == 1
    dp.handle(contrib(0, 4, 0, [1] * 4, job=2), "j2w0")
    out = dp.handle(contrib(1, 4, 0, [2] * 4, job=2), "j2w1")
    assert decode(raw(out[0][0]))[1].tolist() == [3] * 4
    dp.remove(2)
    [((h, _), dests)] = decoded(dp.handle(contrib(0, 4, 1, [1] * 4, job=2), "j2w0"))
    assert (h.type, Reason(h.exp).name, h.job, h.epoch, dests) == (
        MsgType.REFUSE,
        "unknown_job",
        2,
        0,
        ["j2w0"],
    )
    assert dp.drops["unknown_job"] == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(workers=0),
        dict(workers=33),
        dict(elements=0),
        dict(elements=20000),
        dict(slots=0),
        dict(slot_base=32767, slots=2),
        dict(total_workers=1),
    ],
)
def test_job_config_validation(kwargs) -> None:
    base = dict(job_id=1, workers=2, slots=4, elements=8)
    with pytest.raises(ValueError):
        JobConfig(**{**base, **kwargs})


def test_every_drop_reason_is_a_counter() -> None:
    assert set(Dataplane().drops) == set(DROP_REASONS)


# -- the protocol under loss, duplication and reordering, with model workers ----------------------------


def test_join_members_that_stop_refreshing_expire() -> None:
    now = [0.0]
    dp = Dataplane([JobConfig(JOB, 2, 4, 4)], join_refresh=2.0, clock=lambda: now[0])
    join(dp, 1, incarnation=5, addr="forged")  # someone joins as worker 1 and never comes back
    now[0] = 3.0
    [((h, _), _)] = decoded(join(dp, 0))
    assert h.type == MsgType.PENDING and h.bitmap == 0b01  # the stale member was dropped, not counted
    acks = join(dp, 1, incarnation=6, addr="w1")
    assert {d[0] for _, d in acks} == {"w0", "w1"}
    assert dp.counters["join_expired"] == 1


def test_fixed_addresses_reject_joins_from_elsewhere() -> None:
    dp = Dataplane([JobConfig(JOB, 2, 4, 4, addresses=("w0", "w1"))])
    assert refusals(join(dp, 0, addr="evil")) == [("wrong_source", ["evil"])]
    assert dp.drops["wrong_source"] == 1
    join(dp, 0)
    assert len(join(dp, 1)) == 2


def expand(outs) -> list[tuple[bytes, list]]:
    """Outputs as one (datagram, destinations) per datagram, whether sent one by one or as GSO runs."""
    flat = []
    for data, dests in outs:
        if isinstance(data, Segments):
            raw_bytes = bytes(data.data)
            flat += [(raw_bytes[o : o + data.size], list(dests)) for o in range(0, len(raw_bytes), data.size)]
        else:
            flat.append((bytes(data), list(dests)))
    return flat


def state(dp: Dataplane):
    job = dp._jobs[JOB]
    return (
        list(job.seq),
        list(job.bitmap),
        list(job.nelem),
        list(job.expmax),
        job.out_all.tobytes(),
        dict(dp.counters),
        dict(dp.drops),
    )


@settings(max_examples=200, deadline=None)
@given(
    workers=st.integers(1, 4),
    rounds=st.lists(
        st.tuples(
            st.integers(0, 3),  # sender
            st.lists(
                st.tuples(
                    st.integers(0, 3),
                    st.integers(0, 3),
                    st.integers(-(2**31), 2**31 - 1),
                    st.integers(0, 2000),
                    st.integers(0, 1),
                ),
                min_size=1,
                max_size=6,
            ),
            st.booleans(),  # a shorter datagram at the end of the batch
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_batch_path_equals_one_packet_at_a_time(workers, rounds) -> None:
    """handle_batch() must do exactly what handle() does on each datagram in turn."""
    elements = 3
    a = joined(workers, slots=4, elements=elements)
    b = joined(workers, slots=4, elements=elements)
    for sender, packets, short_tail in rounds:
        src = f"w{sender}"
        datagrams = [
            contrib(sender, slot, seq, [value, -1 - value, value >> 1], exp=exp, flags=retx)
            for slot, seq, value, exp, retx in packets
        ]
        if short_tail:
            datagrams.append(contrib(sender, 0, 0, [1]))
        seg = len(datagrams[0])
        out_a = expand(a.handle_batch(b"".join(datagrams), seg, src))
        out_b = expand([o for d in datagrams for o in b.handle(d, src)])
        assert out_a == out_b
        assert state(a) == state(b)
    check_accounting(a)


def test_batch_path_takes_the_vectorized_route() -> None:
    dp = joined(3, slots=8, elements=4)
    for w in range(3):
        batch = b"".join(contrib(w, s, 0, [w, s, 1, 2]) for s in range(8))
        outs = dp.handle_batch(batch, len(batch) // 8, f"w{w}")
    [(data, dests)] = outs  # the last worker completes all 8 slots: one GSO run of 8 results
    assert isinstance(data, Segments) and data.datagrams == 8 and dests == ["w0", "w1", "w2"]
    results = expand(outs)
    assert [decode(d)[1].tolist() for d, _ in results] == [[3, 3 * s, 3, 6] for s in range(8)]
    assert dp.counters["contributions"] == 24 and dp.counters["completions"] == 8


def test_tree_leaf_sends_partials_up_and_results_down() -> None:
    """A leaf of an aggregation tree (docs/protocol.md, "Aggregation trees"): its complete uses go up
    as one contribution; the parent's RESULT comes down with the leaf's own epoch; repeats make it send
    its partial again until the RESULT is there, and get the stored RESULT after."""
    parent = "root"
    dp = Dataplane([JobConfig(JOB, 2, slots=4, elements=4, total_workers=4, parent=parent, parent_worker=1)])
    join(dp, 0)
    outs = join(dp, 1)
    # JOIN_ACKs to both workers, and this switch's own JOIN to its parent
    assert [d for _, d in outs] == [["w0"], ["w1"], [parent]]
    up_join, _ = decode(raw(outs[-1][0]))
    assert up_join.type == MsgType.JOIN and up_join.worker == 1 and up_join.seq != 0
    assert dp.handle(contrib(0, 0, 0, [1, 2, 3, 4], exp=1030), "w0") == []
    # complete here, but the parent has not acknowledged: the JOIN goes again instead of the partial
    [(again, dests)] = dp.handle(contrib(1, 0, 0, [10, 20, 30, 40], exp=1040), "w1")
    assert dests == [parent] and decode(raw(again))[0].type == MsgType.JOIN
    ack = HEADER.pack(VERSION, MsgType.JOIN_ACK, 0, 9, JOB, 1, 0, 0, up_join.seq, 0, 0, 3)
    assert dp.handle(ack, parent) == []
    # a worker's retransmission now makes the leaf send its partial sum up, marked RETX
    [(partial, dests)] = dp.handle(contrib(1, 0, 0, [10, 20, 30, 40], exp=1040, flags=1), "w1")
    h, values = decode(raw(partial))
    assert dests == [parent]
    assert (h.type, h.epoch, h.worker, h.seq, h.exp, h.flags) == (MsgType.CONTRIB, 9, 1, 0, 1040, 1)
    assert list(values) == [11, 22, 33, 44]
    # the parent's RESULT (the sum over the whole tree) goes to both workers with the leaf's epoch
    total = np.array([100, 200, 300, 400], dtype=">i4")
    result = HEADER.pack(VERSION, MsgType.RESULT, 0, 9, JOB, 0xFFFF, 0, 4, 0, 1050, 0, 3) + total.tobytes()
    [(down, dests)] = dp.handle(result, parent)
    h, values = decode(raw(down))
    assert dests == ["w0", "w1"] and (h.type, h.epoch, h.exp, h.bitmap) == (MsgType.RESULT, 1, 1050, 3)
    assert list(values) == [100, 200, 300, 400]
    assert dp.handle(result, parent) == []  # a duplicate from the parent: nothing more
    [(again, dests)] = dp.handle(contrib(0, 0, 0, [1, 2, 3, 4], exp=1030), "w0")
    assert dests == ["w0"] and list(decode(raw(again))[1]) == [100, 200, 300, 400]
    # a RESULT that is not from the parent is an ordinary bad_type
    assert dp.handle(result, "w0") == [] and dp.drops["bad_type"] == 1
    check_accounting(dp)
