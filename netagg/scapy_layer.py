"""The netagg header as a scapy layer, for crafting, dissecting and pcaps (not for the hot path).

    >>> from scapy.all import IP, UDP
    >>> from netagg.scapy_layer import NetAgg
    >>> pkt = IP() / UDP(dport=47000) / NetAgg(type="CONTRIB", job=1, worker=2, slot=5, seq=3, values=[1, -2])

Field for field this is docs/protocol.md's header; ``count`` is filled from ``values`` when left None.
"""

from __future__ import annotations

from scapy.fields import (
    BitEnumField,
    BitField,
    ByteEnumField,
    ByteField,
    FieldLenField,
    FieldListField,
    FlagsField,
    IntField,
    ShortField,
    SignedIntField,
    XIntField,
)
from scapy.layers.inet import UDP
from scapy.packet import Packet, bind_layers

from netagg.protocol import DEFAULT_PORT, VERSION, Coll, Flag, MsgType, ReduceOp

__all__ = ["NetAgg"]


class NetAgg(Packet):
    """One netagg datagram: the 24-byte header and ``count`` int32 values (network byte order)."""

    name = "NetAgg"
    fields_desc = [
        ByteField("version", VERSION),
        ByteEnumField("type", MsgType.CONTRIB, {int(t): t.name for t in MsgType}),
        FlagsField(
            "flags",
            0,
            8,
            [
                f.name or ""
                for f in (Flag.RETX, Flag.UNICAST, Flag.RESUME, Flag.OFFER, Flag.FINAL, Flag.EMPTY)
            ],
        ),
        ByteField("epoch", 0),
        ShortField("job", 0),
        ShortField("worker", 0),
        BitField("set", 0, 1),
        BitField("slot", 0, 15),
        FieldLenField("count", None, count_of="values", fmt="!H"),
        IntField("seq", 0),
        ShortField("exp", 0),
        BitEnumField("coll", 0, 4, {c.value: c.name for c in Coll}),
        BitEnumField("reduce", 0, 4, {r.value: r.name for r in ReduceOp}),
        ByteField("root", 0),
        XIntField("bitmap", 0),
        # max_count: scapy stops at conf.max_list_count (100) values otherwise, and netagg packets carry
        # up to 16,370 (count is 16 bits, so any datagram's values fit).
        FieldListField(
            "values", [], SignedIntField("value", 0), count_from=lambda pkt: pkt.count, max_count=0xFFFF
        ),
    ]

    def mysummary(self) -> str:
        return self.sprintf("NetAgg %type% job=%job% worker=%worker% slot=%slot%/%set% seq=%seq% n=%count%")


# Datagrams to or from the well-known port dissect as NetAgg; bind other ports with bind_layers yourself.
bind_layers(UDP, NetAgg, dport=DEFAULT_PORT)
bind_layers(UDP, NetAgg, sport=DEFAULT_PORT)
