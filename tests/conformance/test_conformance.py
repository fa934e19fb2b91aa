"""The cross-implementation suite: every case of tests/conformance/cases.py through the Python switch
(one datagram at a time, and in GRO-like batches: the two must agree) and, where BMv2 is installed,
through simple_switch, every frame and every counter compared.

The Python target runs everywhere (CI included); the BMv2 comparison needs p4c-bm2-ss, simple_switch and
simple_switch_CLI (on PATH or under $NETAGG_P4_PREFIX/bin) and root, and skips saying which is missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from netagg.protocol import JOIN_ACK_PARAMS, Flag, MsgType, Reason
from netagg.scapy_layer import NetAgg
from switch.bmv2 import compile_p4, find_binary
from tests.conformance import cases, collectives
from tests.conformance.targets import Bmv2Target, Outcome, PythonTarget, batched, compare

ROOT = Path(__file__).resolve().parents[2]
ALL_CASES = cases.CASES + collectives.CASES
BY_NAME = {c.name: c for c in ALL_CASES}
_PAYLOAD_HEX = 2 * (14 + 20 + 8)  # where the netagg header starts in a frame's hex


def _one_by_one() -> dict[str, Outcome]:
    target = PythonTarget()
    return {c.name: target.run(c) for c in ALL_CASES}


@pytest.fixture(scope="module")
def python() -> dict[str, Outcome]:
    return _one_by_one()


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_batched_receives_give_what_one_at_a_time_gives(case: cases.Case, python) -> None:
    """Dataplane.handle_batch (runs of same-size datagrams from one host, as GRO delivers them) sends the
    same frames and counts the same as Dataplane.handle on each datagram in turn."""
    diffs = compare(batched(case, python[case.name]), PythonTarget(batch=True).run(case), ("one", "batch"))
    assert not diffs, "\n".join(diffs)


def test_the_bursts_take_the_vectorized_batch_route(monkeypatch) -> None:
    """The burst case reaches Dataplane's vectorized path (not only its one-at-a-time fallback)."""
    from switch.core import Dataplane

    taken = []
    original = Dataplane._contribute_batch

    def spy(self, view, seg, k, src):
        outs = original(self, view, seg, k, src)
        taken.append(outs is not None)
        return outs

    monkeypatch.setattr(Dataplane, "_contribute_batch", spy)
    PythonTarget(batch=True).run(BY_NAME["full packets in bursts (one GRO batch per worker)"])
    assert taken.count(True) >= 2, taken


def _results(outs: list[tuple[int, str]]) -> list[tuple[int, NetAgg]]:
    return [(port, NetAgg(bytes.fromhex(h[_PAYLOAD_HEX:]))) for port, h in outs]


def _int32_sum(*vectors: list[int]) -> list[int]:
    return np.sum(np.array(vectors, dtype=np.int64), axis=0).astype(np.uint32).astype(np.int32).tolist()


def test_full_packets_sum_every_lane_with_int32_wraparound(python) -> None:
    """An oracle independent of both switches for the wide path: numpy's int32 sum."""
    outs, counters = python["full packets: the wide path, its stored result, set flips"]
    complete = _results(outs[4])  # w1's first contribution completes use 0: the sum to both
    assert sorted(p for p, _ in complete) == [1, 2]
    for _, pkt in complete:
        assert pkt.type == MsgType.RESULT and pkt.count == cases.ELEMENTS and pkt.exp == 1040
        assert list(pkt.values) == _int32_sum(cases.BIG_A, cases.BIG_B)
    [(port, stored)] = _results(outs[5])  # the repeat: the stored wide result, to w1 only
    assert port == 2 and list(stored.values) == _int32_sum(cases.BIG_A, cases.BIG_B)
    [(_, late)] = _results(outs[-1])  # use 1's result, still kept after use 2
    assert list(late.values) == _int32_sum(cases.BIG_B, cases.BIG_A)
    assert counters["drops"] == {}
    c = counters["counters"]
    assert c["completions"] == 3 and c["repeats"] == 3 and c["packets_in"] == 11


def test_the_frames_are_the_ethernet_backends(python) -> None:
    """The Python target's frames: from the switch's MAC/IP and port 47000, to the host's MAC/IP/port,
    IPv4 with DF, TTL 64 and a valid checksum, UDP checksum 0, on the host's port."""
    outs, _ = python["first contributions, completion, repeats"]
    for port, h in outs[4]:
        frame = bytes.fromhex(h)
        ip, udp_port, mac = list(cases.HOSTS.values())[port - 1]
        assert frame[:6].hex(":") == mac and frame[6:12].hex(":") == cases.SWITCH_MAC
        assert frame[12:14] == b"\x08\x00" and frame[14] == 0x45 and frame[22] == 64 and frame[23] == 17
        assert frame[20:22] == b"\x40\x00"  # DF
        assert sum(int.from_bytes(frame[i : i + 2], "big") for i in range(14, 34, 2)) % 0xFFFF == 0
        assert int.from_bytes(frame[34:36], "big") == 47000
        assert int.from_bytes(frame[36:38], "big") == udp_port and frame[40:42] == b"\0\0"
        assert frame[30:34] == bytes(int(x) for x in ip.split("."))


def test_compare_sees_every_field() -> None:
    """What the comparison covers: a different egress port, one header byte, a frame that should not be
    there, and any counter (not only drops) each make a difference."""
    base = _one_by_one()["first contributions, completion, repeats"]
    per_send, counters = base

    def changed(fn) -> Outcome:
        sends = [list(x) for x in per_send]
        new_counters = {k: dict(v) for k, v in counters.items()}
        fn(sends, new_counters)
        return sends, new_counters

    def other_port(s, c):
        s[4][0] = (3, s[4][0][1])

    def ttl(s, c):
        port, h = s[4][0]
        s[4][0] = (port, h[:44] + "3f" + h[46:])

    def leak(s, c):
        s[2].append((3, "ff" * 6 + "02" * 6 + "0806"))

    def counter(s, c):
        c["counters"]["repeats"] += 1

    assert not compare(base, changed(lambda s, c: None))
    for fn in (other_port, ttl, leak, counter):
        assert compare(base, changed(fn)), fn.__name__


def test_the_cases_mean_what_they_say(python) -> None:
    outs, counters = python["malformed headers"]
    assert counters["drops"] == {
        "truncated": 1,
        "bad_version": 1,
        "bad_type": 2,
        "bad_op": 1,
        "bad_length": 3,
        "bad_set": 1,
        "bad_incarnation": 1,
        "stale_epoch": 1,
    }
    # only the good pair gives a RESULT; of the drops, only stale_epoch is answered (a REFUSE)
    assert [len(o) for o in outs[2:-1]] == [0] * 9 + [1, 0, 0] and len(outs[-1]) == 2
    [(_, refuse)] = _results(outs[11])
    assert refuse.type == MsgType.REFUSE and refuse.exp == Reason.stale_epoch
    outs, counters = python["foreign jobs, workers, slots and sources"]
    assert counters["drops"] == {"unknown_job": 1, "bad_worker": 1, "bad_slot": 2, "wrong_source": 2}
    assert outs[-1] == python["malformed headers"][0][-1]  # the same sum as without the forgeries
    outs, counters = python["set flips, reuse and late packets"]
    assert counters["drops"] == {"stale_seq": 1, "count_mismatch": 1}
    # version 2, RESULT, UNICAST
    assert len(outs[-1]) == 1 and outs[-1][0][1][_PAYLOAD_HEX:].startswith("020402")
    assert python["contributions before the job is joined"][1]["drops"] == {"not_joined": 2}


def _one(outs: list[tuple[int, str]]) -> tuple[int, NetAgg]:
    [(port, pkt)] = _results(outs)
    return port, pkt


def test_refusals_say_why_and_go_back_to_the_sender(python) -> None:
    """docs/protocol.md, "Refusals": a 24-byte REFUSE to the dropped datagram's source with its job,
    worker, slot and seq, the reason in exp, the job's epoch (0 for an unknown job), and in bitmap the
    use's count (count_mismatch) or the refused packet's epoch (not_joined, stale_epoch)."""
    outs, counters = python["refusals: not_joined, stale_epoch, unknown_job, wrong_source, count_mismatch"]
    want = {  # datagram: (port, reason, epoch, job, bitmap)
        0: (1, Reason.not_joined, 0, cases.JOB, 0),
        2: (1, Reason.not_joined, 0, cases.JOB, 0),
        4: (1, Reason.stale_epoch, 1, cases.JOB, 7),
        5: (1, Reason.unknown_job, 0, 99, 0),
        6: (1, Reason.unknown_job, 0, 98, 0),
        7: (3, Reason.wrong_source, 1, cases.JOB, 0),
        9: (2, Reason.count_mismatch, 1, cases.JOB, 8),
        15: (1, Reason.not_joined, 1, cases.JOB, 1),
    }
    for i, (port, reason, epoch, job, bitmap) in want.items():
        got_port, pkt = _one(outs[i])
        assert (got_port, pkt.type, pkt.exp, pkt.epoch, pkt.job, pkt.bitmap) == (
            port,
            MsgType.REFUSE,
            reason,
            epoch,
            job,
            bitmap,
        ), i
        assert pkt.count == 0 and int(pkt.flags) == 0 and len(bytes(pkt)) == 24
        assert pkt.slot == (0 if i == 6 else 9) and pkt.seq == {6: 5, 15: 5}.get(i, 3)
    assert all(outs[i] == [] for i in (8, 11, 12, 13))  # stale_seq, bad_worker, bad_type: no answer
    assert counters["counters"]["refusals"] == len(want)


def test_keys_keep_joins_without_them_from_starting_a_round(python) -> None:
    outs, counters = python["job key: JOINs without it, with another, from elsewhere"]
    reasons = [_one(outs[i])[1].exp for i in range(5)] + [_one(outs[i])[1].exp for i in (7, 8)]
    assert reasons == [Reason.bad_key] * 4 + [Reason.wrong_source] + [Reason.bad_key] * 2
    assert counters["drops"] == {"bad_key": 6, "wrong_source": 1}
    assert counters["counters"]["epochs"] == 1  # the keyless JOINs after the round started none
    _, ack = _one(outs[9])
    assert ack.type == MsgType.JOIN_ACK and ack.epoch == 1 and len(_results(outs[11])) == 2


def test_join_ack_round_and_resume(python) -> None:
    outs, _ = python["JOIN_ACK round and RESUME"]
    acks = [(i, _results(outs[i])) for i in (1, 2, 6, 8, 12, 14)]
    for i in (4, 5, 10, 11):  # mixed rounds wait for every member's repeated JOIN
        [(_, pending)] = _results(outs[i])
        assert pending.type == MsgType.PENDING and pending.bitmap == 0b11, i
    # a resumed round keeps its lineage's name (the common prev_round); others are named by the XOR
    rounds = [0x5EED0001, 0x5EED0001, 0x30000003 ^ 0x40000004]
    rounds += [0x50000005 ^ 0x60000006, 0x70000007 ^ 0x80000008, 0x10000001 ^ 0x20000002]
    resume = [True, True, False, False, False, True]
    for (i, got), want_round, want_resume in zip(acks, rounds, resume, strict=True):
        for _, pkt in got:
            words = dict(zip(JOIN_ACK_PARAMS, [v % 2**32 for v in pkt.values], strict=True))
            assert pkt.type == MsgType.JOIN_ACK and pkt.count == len(JOIN_ACK_PARAMS), i
            assert words["round"] == want_round and bool(int(pkt.flags) & cases.RESUME) == want_resume, i


def test_a_rounds_epoch_follows_the_latest_a_member_had(python) -> None:
    outs, _ = python["epochs after the latest a member had"]
    epochs = [{pkt.epoch for _, pkt in _results(outs[i])} for i in (1, 3, 5, 7)]
    assert epochs == [{4}, {131}, {1}, {2}]


def test_offers_complete_a_use_with_their_values(python) -> None:
    outs, counters = python["offers: incomplete, complete, empty, newer, older, other count"]
    final, unicast = cases.FINAL, 0x02
    got = _results(outs[3])  # the offer completes use 4: its values, FINAL, to both
    assert sorted(p for p, _ in got) == [1, 2]
    assert all(
        int(r.flags) == final and r.exp == 1040 and list(r.values) == [10, 20, -30, 1, -1, 5, 6, 7]
        for _, r in got
    )
    _, repeat = _one(outs[4])
    assert int(repeat.flags) == unicast | final and list(repeat.values) == [10, 20, -30, 1, -1, 5, 6, 7]
    assert outs[5] == [] and outs[7] == []  # the use is complete: nothing; an older use: stale_seq
    assert _one(outs[6])[1].exp == Reason.count_mismatch
    assert int(_one(outs[9])[1].flags) == unicast  # offered without FINAL: the repeat has none
    _, wide = _one(outs[16])
    assert list(wide.values) == cases.big_offer() and int(wide.flags) == unicast | final
    assert counters["drops"] == {"stale_epoch": 1, "stale_seq": 1, "count_mismatch": 1}
    assert counters["counters"]["offers"] == 7 and counters["counters"]["recoveries"] == 6


def _lanes(fn, *vectors: list[int]) -> list[int]:
    return fn(np.array(vectors, dtype=np.int32), axis=0).tolist()


def test_max_and_min_are_numpys_lane_by_lane(python) -> None:
    """An oracle independent of both switches for max and min of signed int32, on short packets and on
    the P4 program's wide (SWAR) path: numpy's."""
    a, b = collectives.A, collectives.B
    outs, counters = python["allreduce max and min: signed lanes, short and full packets"]
    want = {
        3: _lanes(np.max, a, b),
        6: _lanes(np.min, a, b),
        8: _lanes(np.max, cases.BIG_A, cases.BIG_B),
        10: _lanes(np.min, cases.BIG_A, cases.BIG_B),
        13: _int32_sum(a, b),
        15: _lanes(np.min, b[:5], a[:5]),
        17: _lanes(np.min, cases.BIG_B, cases.BIG_A),
    }
    for i, values in want.items():
        got = _results(outs[i])
        assert sorted(p for p, _ in got) == [1, 2], i
        assert all(pkt.type == MsgType.RESULT and list(pkt.values) == values for _, pkt in got), i
    [(port, repeat)] = _results(outs[11])  # the stored wide minimum, unicast
    assert port == 1 and list(repeat.values) == want[10]
    assert counters["drops"] == {} and counters["counters"]["completions"] == 7


def test_a_reduce_scatter_result_goes_to_its_owner_and_empty_to_the_others(python) -> None:
    outs, counters = python["reduce-scatter: the owner's payload, EMPTY to the others, repeats"]
    empty, unicast = int(Flag.EMPTY), int(Flag.UNICAST)

    def by_port(i: int) -> dict[int, NetAgg]:
        return dict(_results(outs[i]))

    complete = by_port(3)  # root 1: w1 (port 2) gets the sum, w0 the header alone, EMPTY
    assert list(complete[2].values) == _int32_sum(collectives.A, collectives.B)
    assert int(complete[1].flags) == empty and complete[1].count == 8 and len(bytes(complete[1])) == 24
    assert complete[1].exp == complete[2].exp == 1040 and (complete[1].coll, complete[1].root) == (1, 1)
    assert int(by_port(4)[1].flags) == empty | unicast and int(by_port(5)[2].flags) == unicast
    wide = by_port(7)  # root 0, max, full packets
    assert list(wide[1].values) == _lanes(np.max, cases.BIG_A, cases.BIG_B) and int(wide[2].flags) == empty
    assert all(not int(p.flags) & empty for p in by_port(10).values())  # root 0xFF: everyone
    assert counters["drops"] == {"bad_op": 2}  # roots 2 and 0xFE in a job of two


def test_empty_contributions_take_the_owners_payload_and_empty_uses_give_empty_results(python) -> None:
    outs, _ = python["all-gather and broadcast: EMPTY contributions, the owner's payload copied"]
    assert all(list(p.values) == collectives.B for _, p in _results(outs[3]))
    assert all(list(p.values) == cases.BIG_A for _, p in _results(outs[12]))  # EMPTY completed it
    [(_, repeat)] = _results(outs[10])  # an EMPTY repeat gets the stored wide values
    assert list(repeat.values) == cases.BIG_B
    nothing = _results(outs[14])  # every contribution EMPTY: an EMPTY RESULT that keeps the count
    assert len(nothing) == 2 and all(int(p.flags) == Flag.EMPTY and p.count == 5 for _, p in nothing)
    outs, _ = python["barrier: count 0, EMPTY or not"]
    assert [int(p.flags) for _, p in _results(outs[4])] == [int(Flag.EMPTY)] * 2
    assert [int(p.flags) for _, p in _results(outs[7])] == [0, 0]


def test_op_mismatch_is_refused_with_the_uses_op(python) -> None:
    outs, counters = python["op_mismatch and count_mismatch refusals"]
    for i in (3, 4, 5, 8):
        _, pkt = _one(outs[i])
        assert (pkt.type, pkt.exp, pkt.bitmap, pkt.coll) == (MsgType.REFUSE, Reason.op_mismatch, 0x1001, 0), i
    assert _one(outs[6])[1].exp == Reason.count_mismatch  # the count is checked first
    assert _one(outs[12])[1].bitmap == 0x2001
    assert counters["drops"] == {"op_mismatch": 5, "count_mismatch": 1, "stale_seq": 1}
    outs, counters = python["bad_op, EMPTY lengths, version 1"]
    assert counters["drops"] == {"bad_op": 7, "bad_version": 1, "bad_length": 4, "stale_epoch": 1}


def test_a_leaf_sends_reduce_scatter_up_for_everyone_and_empty_partials_empty(python) -> None:
    outs, _ = python["tree: all-gather, reduce-scatter and barrier at a leaf"]
    [(port, up)] = _results(outs[4])
    assert port == 4 and up.type == MsgType.CONTRIB and int(up.flags) == Flag.EMPTY and up.count == 8
    [(_, up)] = _results(outs[11])
    assert (up.coll, up.reduce, up.root) == (1, 1, 0xFF)
    assert list(up.values) == _lanes(np.max, collectives.A, collectives.B)
    down = _results(outs[13])  # the parent's RESULT to both children, with the leaf's op
    assert sorted(p for p, _ in down) == [1, 2] and all(p.root == 1 and p.count == 8 for _, p in down)


# -- BMv2 ------------------------------------------------------------------------------------------------
def _bmv2_missing() -> str | None:
    for binary in ("p4c-bm2-ss", "simple_switch", "simple_switch_CLI"):
        if find_binary(binary) is None:
            return f"{binary} not found (on PATH or in $NETAGG_P4_PREFIX/bin; see README, BMv2)"
    if os.geteuid() != 0:
        return "needs root (veth pairs, raw sockets)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    return None


_WHY = _bmv2_missing()


@pytest.mark.bmv2
@pytest.mark.skipif(_WHY is not None, reason=_WHY or "")
def test_bmv2_conforms_to_the_python_switch(python) -> None:
    program = compile_p4(ROOT / "p4" / "netagg.p4", ROOT / "build" / "p4")
    target = Bmv2Target(program)
    failures = []
    try:
        for case in ALL_CASES:
            diffs = compare(python[case.name], target.run(case))
            if diffs:
                failures.append(f"{case.name}:\n" + "\n".join(diffs))
    finally:
        target.close()
    assert not failures, "\n\n".join(failures)
