"""The header has one definition (netagg.protocol.FIELDS); the scapy layer and the P4 program spell it
again for their own tools, and these tests keep them in step with it, field by field and bit by bit."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from scapy.fields import BitField

from netagg import protocol
from netagg.protocol import FIELDS, HEADER, HEADER_DTYPE, OFFSET, MsgType
from netagg.scapy_layer import NetAgg

ROOT = Path(__file__).resolve().parents[2]
#: Fields that the P4 program and the scapy layer split into bits: their parts, high bits first.
SPLIT = {"slot": ("set", "slot"), "op": ("coll", "reduce", "root")}


def _merged(widths: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """(name, bits) with the split fields joined again, as (name, bytes)."""
    out: list[tuple[str, int]] = []
    i = 0
    while i < len(widths):
        name, bits = widths[i]
        for whole, parts in SPLIT.items():
            names = tuple(n for n, _ in widths[i : i + len(parts)])
            if names == parts:
                name, bits = whole, sum(b for _, b in widths[i : i + len(parts)])
                i += len(parts) - 1
                break
        out.append((name, bits // 8))
        i += 1
    return out


def test_struct_dtype_and_offsets_come_from_the_table() -> None:
    assert HEADER.size == HEADER_DTYPE.itemsize == 24
    assert HEADER_DTYPE.names == tuple(f.name for f in FIELDS)
    fields = HEADER_DTYPE.fields
    assert fields is not None
    for f in FIELDS:
        assert fields[f.name][1] == OFFSET[f.name]
        assert HEADER_DTYPE[f.name].itemsize == f.size
    assert (protocol.OFF_FLAGS, protocol.OFF_WORKER, protocol.OFF_COUNT, protocol.OFF_SEQ) == (2, 6, 10, 12)


def test_the_scapy_layer_has_the_tables_fields() -> None:
    widths = []
    for fd in NetAgg.fields_desc:
        if fd.name == "values":
            continue
        bits = fd.size if isinstance(fd, BitField) else 8 * fd.sz
        widths.append((fd.name, bits))
    assert _merged(widths) == [(f.name, f.size) for f in FIELDS]


def test_the_p4_header_has_the_tables_fields() -> None:
    text = (ROOT / "p4" / "include" / "headers.p4").read_text()
    body = re.search(r"header netagg_h \{(.*?)\}", text, re.S)
    assert body, "p4/include/headers.p4 has no netagg_h"
    widths = [(name, int(bits)) for bits, name in re.findall(r"bit<(\d+)>\s+(\w+);", body.group(1))]
    assert _merged(widths) == [(f.name, f.size) for f in FIELDS]


def test_the_named_builders_and_scapy_agree_byte_for_byte() -> None:
    join = protocol.join_packet(
        job=5, worker=3, incarnation=0xDEADBEEF, key=0x0123456789ABCDEF, prev_round=77
    )
    words = [0x01234567, protocol_int(0x89ABCDEF), 77]
    assert join == bytes(NetAgg(type="JOIN", job=5, worker=3, seq=0xDEADBEEF, values=words))
    assert protocol.parse_join(join) == (0x0123456789ABCDEF, 77)
    assert protocol.parse_join(join[:24]) == (0, 0) and protocol.parse_join(join[:-4]) is None
    refuse = protocol.refuse_packet(protocol.Reason.count_mismatch, 3, 5, 2, protocol.slot_field(1, 1), 8, 64)
    assert refuse == bytes(
        NetAgg(type="REFUSE", epoch=3, job=5, worker=2, set=1, slot=1, seq=8, exp=4, bitmap=64)
    )
    assert protocol.parse_key(protocol.format_key(0xABC)) == 0xABC
    with pytest.raises(ValueError, match="16 hex digits"):
        protocol.parse_key("xyz")
    pend = protocol.pending_packet(
        epoch=2, job=5, worker=3, seq=9, bitmap=0b101, slot=protocol.slot_field(4, 1)
    )
    assert pend == bytes(NetAgg(type="PENDING", epoch=2, job=5, worker=3, set=1, slot=4, seq=9, bitmap=5))
    params = dict(zip(protocol.JOIN_ACK_PARAMS, [10, 8, 64, 4, 8, 0xE0000001, 47001, 5], strict=True))
    ack = protocol.join_ack_packet(
        epoch=1, job=5, worker=3, incarnation=7, bitmap=0xF, params=params, resume=True
    )
    pkt = NetAgg(ack)
    assert (pkt.type, pkt.count, pkt.seq, pkt.bitmap, int(pkt.flags)) == (MsgType.JOIN_ACK, 8, 7, 0xF, 4)
    assert [v & 0xFFFFFFFF for v in pkt.values] == list(params.values())
    assert protocol.parse_join_ack(ack) == params
    assert protocol.parse_join_ack(ack[:-4]) is None
    assert np.frombuffer(join[:24], HEADER_DTYPE)[0]["seq"] == 0xDEADBEEF


def protocol_int(u32: int) -> int:
    """A u32 word as the scapy layer's signed int32 value."""
    return u32 - (1 << 32) if u32 >= 1 << 31 else u32
