"""The wire format: golden bytes, codec errors, and scapy <-> fast codec round trips."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP

from netagg.protocol import (
    DEFAULT_PORT,
    HEADER_DTYPE,
    HEADER_SIZE,
    MAX_ELEMENTS,
    Flag,
    Header,
    MsgType,
    ProtocolError,
    decode,
    encode,
    scale_bits,
)
from netagg.scapy_layer import NetAgg

# CONTRIB, flags RETX, epoch 7, job 1, worker 2, set 1 slot 5, count 2, seq 3, exp 0x0405, values [1, -2]
GOLDEN = bytes.fromhex("02030107000100028005000200000003040500000000000000000001fffffffe")
GOLDEN_HEADER = Header(
    type=MsgType.CONTRIB, flags=Flag.RETX, epoch=7, job=1, worker=2, slot=5, set=1, count=2, seq=3, exp=0x0405
)


def test_golden_bytes_fast_codec() -> None:
    assert encode(GOLDEN_HEADER, np.array([1, -2], dtype=np.int32)) == GOLDEN
    header, payload = decode(GOLDEN)
    assert header == GOLDEN_HEADER
    assert payload.tolist() == [1, -2]


def test_golden_bytes_op_field() -> None:
    """A reduce-scatter with max whose chunk belongs to rank 3: op = 11 03 (docs/protocol.md, "Header")."""
    from netagg.protocol import Coll, ReduceOp, op_field

    op = op_field(Coll.reduce_scatter, ReduceOp.max, 3)
    header = Header(**{**{f: getattr(GOLDEN_HEADER, f) for f in GOLDEN_HEADER.__slots__}, "op": op})
    data = encode(header, np.array([1, -2], dtype=np.int32))
    assert data[18:20] == b"\x11\x03"
    assert data[:18] == GOLDEN[:18] and data[20:] == GOLDEN[20:]
    assert decode(data)[0] == header
    assert bytes(NetAgg(data)) == data and NetAgg(data).root == 3


def test_empty_datagrams_are_the_header_alone() -> None:
    header = Header(type=MsgType.CONTRIB, flags=Flag.EMPTY, count=5, op=0x2001)
    data = encode(header)
    assert len(data) == HEADER_SIZE
    got, payload = decode(data)
    assert got.count == 5 and payload.size == 0
    with pytest.raises(ProtocolError, match="needs 24 bytes"):
        decode(data + b"\x00" * 20)


def test_golden_bytes_scapy() -> None:
    pkt = NetAgg(
        type="CONTRIB",
        flags="RETX",
        epoch=7,
        job=1,
        worker=2,
        set=1,
        slot=5,
        seq=3,
        exp=0x0405,
        values=[1, -2],
    )
    assert bytes(pkt) == GOLDEN
    dissected = NetAgg(GOLDEN)
    assert (dissected.job, dissected.worker, dissected.slot, dissected.set, dissected.count) == (
        1,
        2,
        5,
        1,
        2,
    )
    assert dissected.values == [1, -2]


def test_header_dtype_matches_struct() -> None:
    rec = np.frombuffer(GOLDEN[:HEADER_SIZE], dtype=HEADER_DTYPE)[0]
    assert (rec["type"], rec["job"], rec["worker"], rec["slot"], rec["seq"], rec["exp"]) == (
        3,
        1,
        2,
        0x8005,
        3,
        0x0405,
    )


def test_udp_binding_dissects_on_the_well_known_port() -> None:
    pkt = IP(bytes(IP(dst="127.0.0.1") / UDP(sport=40000, dport=DEFAULT_PORT) / NetAgg(job=9, values=[7])))
    assert pkt.haslayer(NetAgg)
    assert pkt[NetAgg].job == 9
    assert pkt[NetAgg].values == [7]


@pytest.mark.parametrize(
    ("datagram", "message"),
    [
        (GOLDEN[:10], "shorter than"),
        (b"\x01" + GOLDEN[1:], "version"),
        (GOLDEN[:1] + b"\x63" + GOLDEN[2:], "unknown message type"),
        (GOLDEN[:18] + b"\x50\x00" + GOLDEN[20:], "op field"),  # collective 5
        (GOLDEN[:18] + b"\x23\x00" + GOLDEN[20:], "op field"),  # all-gather with reduction 3
        (GOLDEN[:18] + b"\x21\x00" + GOLDEN[20:], "op field"),  # all-gather takes no max
        (GOLDEN[:-4], "count=2 needs"),
        (GOLDEN + b"\x00", "count=2 needs"),
    ],
)
def test_decode_rejects_malformed(datagram: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode(datagram)


def test_encode_checks_count() -> None:
    with pytest.raises(ProtocolError):
        encode(Header(type=MsgType.CONTRIB, count=3), np.zeros(2, np.int32))
    with pytest.raises(ProtocolError):
        encode(Header(type=MsgType.CONTRIB, count=1))


def test_largest_datagram_fits_ipv4_udp() -> None:
    assert HEADER_SIZE + 4 * MAX_ELEMENTS <= 65507 < HEADER_SIZE + 4 * (MAX_ELEMENTS + 1)


@pytest.mark.parametrize(("workers", "bits"), [(1, 30), (2, 29), (3, 28), (4, 28), (5, 27), (32, 25)])
def test_scale_bits_leaves_room_for_the_sum(workers: int, bits: int) -> None:
    assert scale_bits(workers) == bits
    assert workers * 2**bits <= 2**31 - 1


headers = st.builds(
    Header,
    type=st.sampled_from(list(MsgType)),
    job=st.integers(0, 0xFFFF),
    worker=st.integers(0, 0xFFFF),
    slot=st.integers(0, 0x7FFF),
    set=st.integers(0, 1),
    seq=st.integers(0, 2**32 - 1),
    exp=st.integers(0, 0xFFFF),
    flags=st.integers(0, 3),
    epoch=st.integers(0, 255),
    bitmap=st.integers(0, 2**32 - 1),
)


@given(headers, st.lists(st.integers(-(2**31), 2**31 - 1), max_size=64))
def test_scapy_build_fast_decode(header: Header, values: list[int]) -> None:
    pkt = NetAgg(
        type=header.type,
        job=header.job,
        worker=header.worker,
        slot=header.slot,
        set=header.set,
        seq=header.seq,
        exp=header.exp,
        flags=header.flags,
        epoch=header.epoch,
        bitmap=header.bitmap,
        values=values,
    )
    got, payload = decode(bytes(pkt))
    assert got.count == len(values)
    assert (
        got.type,
        got.job,
        got.worker,
        got.slot,
        got.set,
        got.seq,
        got.exp,
        got.flags,
        got.epoch,
        got.bitmap,
    ) == (
        header.type,
        header.job,
        header.worker,
        header.slot,
        header.set,
        header.seq,
        header.exp,
        header.flags,
        header.epoch,
        header.bitmap,
    )
    assert payload.tolist() == values


@given(headers, st.lists(st.integers(-(2**31), 2**31 - 1), max_size=64))
def test_fast_encode_scapy_dissect(header: Header, values: list[int]) -> None:
    h = Header(
        type=header.type,
        job=header.job,
        worker=header.worker,
        slot=header.slot,
        set=header.set,
        count=len(values),
        seq=header.seq,
        exp=header.exp,
        flags=header.flags,
        epoch=header.epoch,
        bitmap=header.bitmap,
    )
    pkt = NetAgg(encode(h, np.array(values, dtype=np.int32)))
    assert (
        pkt.type,
        pkt.job,
        pkt.worker,
        pkt.slot,
        pkt.set,
        pkt.count,
        pkt.seq,
        pkt.exp,
        int(pkt.flags),
        pkt.epoch,
        pkt.bitmap,
    ) == (h.type, h.job, h.worker, h.slot, h.set, h.count, h.seq, h.exp, h.flags, h.epoch, h.bitmap)
    assert pkt.values == values
