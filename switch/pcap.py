"""A pcap of what the switch receives and sends (``netagg switch --pcap FILE``).

The UDP switch sees datagrams, not frames, so each record gets Ethernet, IPv4 (or IPv6) and UDP headers
made up around it: the real source and destination addresses and ports, made-up MACs (02:00:00:00:00:01
for the sender, ...:02 for the receiver), UDP checksum 0 on IPv4 (allowed there) and computed on IPv6.
A switch bound to 0.0.0.0 appears with that address. The file is the classic pcap format (microsecond
timestamps, link type Ethernet), so scapy, tcpdump and tshark read it; the switch's port decodes as
netagg with :func:`bind_netagg` (the well-known 47000 does so by itself, see netagg/scapy_layer.py).

Capturing costs the packet path nothing when it is off: :class:`Capture` wraps the dataplane's handle
functions, and only a switch started with a capture calls the wrapped ones. With it on, each datagram is
written (and a record is made) on the switch's I/O thread; the file is flushed every second and when
the capture closes.

Example::

    with Capture(Path("switch.pcap"), ("127.0.0.1", 47000)) as cap:
        handle = cap.tap(dataplane.handle)
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from switch.ethernet import udp_frame
from switch.jobs import Address, Output, Segments

__all__ = ["LINKTYPE_ETHERNET", "Capture", "Handle", "HandleBatch", "bind_netagg"]

LINKTYPE_ETHERNET = 1
_MAGIC = 0xA1B2C3D4  # microsecond timestamps, this machine's byte order (readers accept either)
_SNAPLEN = 262144  # tcpdump's default; the largest record is 14 + 40 + 8 + 65,504 bytes
_RECORD = struct.Struct("=IIII")
_SENDER_MAC = bytes.fromhex("020000000001")
_RECEIVER_MAC = bytes.fromhex("020000000002")
_FLUSH_EVERY = 1.0  # seconds: a reader of a live capture sees what is at most this old

Handle = Callable[[bytes | bytearray | memoryview, Address], list[Output]]
HandleBatch = Callable[[bytes | bytearray | memoryview, int, Address], list[Output]]


def _ipv6_frame(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    length = 8 + len(payload)
    s, d = socket.inet_pton(socket.AF_INET6, src[0]), socket.inet_pton(socket.AF_INET6, dst[0])
    udp = struct.pack("!HHHH", src[1], dst[1], length, 0)
    # The checksum over the pseudo-header (addresses, length, next header 17), the UDP header and data.
    data = s + d + struct.pack("!IxxxB", length, 17) + udp + payload + b"\0" * (len(payload) & 1)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    checksum = (~total & 0xFFFF) or 0xFFFF
    udp = udp[:6] + checksum.to_bytes(2, "big")
    ip = struct.pack("!IHBB16s16s", 6 << 28, length, 17, 64, s, d)
    return _RECEIVER_MAC + _SENDER_MAC + b"\x86\xdd" + ip + udp + payload


class Capture:
    """Write datagrams to a pcap file as Ethernet frames; ``local`` is the switch's (host, port)."""

    def __init__(self, path: Path, local: tuple[str, int]) -> None:
        self.path = path
        self.local = (local[0], int(local[1]))
        self.records = 0
        """Datagrams written so far."""
        self._file: BinaryIO | None = path.open("wb")
        self._file.write(struct.pack("=IHHiIII", _MAGIC, 2, 4, 0, 0, _SNAPLEN, LINKTYPE_ETHERNET))
        self._flush_at = time.monotonic() + _FLUSH_EVERY

    def write(self, data: bytes | bytearray | memoryview, src: Address, dst: Address) -> None:
        """One datagram from ``src`` to ``dst`` ((host, port), IPv4 or IPv6 as the host is written)."""
        if self._file is None:
            return
        payload = bytes(data)
        if ":" in src[0]:
            frame = _ipv6_frame((src[0], src[1]), (dst[0], dst[1]), payload)
        else:
            frame = udp_frame(_SENDER_MAC, src[0], src[1], _RECEIVER_MAC, dst[0], dst[1], payload)
        now = time.time()
        sec = int(now)
        self._file.write(_RECORD.pack(sec, int((now - sec) * 1e6), len(frame), len(frame)))
        self._file.write(frame)
        self.records += 1
        if time.monotonic() >= self._flush_at:
            self._file.flush()
            self._flush_at = time.monotonic() + _FLUSH_EVERY

    def received(self, data: bytes | bytearray | memoryview, seg: int, src: Address) -> None:
        """What the socket gave: one datagram, or (``seg`` > 0) a run of ``seg``-byte datagrams."""
        if not seg:
            self.write(data, src, self.local)
            return
        for at in range(0, len(data), seg):
            self.write(data[at : at + seg], src, self.local)

    def sent(self, outs: list[Output]) -> None:
        """What the dataplane returned to send: each datagram to each of its destinations."""
        for data, dests in outs:
            parts: list[bytes | bytearray | memoryview]
            if isinstance(data, Segments):
                parts = [data.data[at : at + data.size] for at in range(0, len(data.data), data.size)]
            else:
                parts = [data]
            for dest in dests:
                for part in parts:
                    self.write(part, self.local, dest)

    def tap(self, handle: Handle) -> Handle:
        """``handle`` (:meth:`Dataplane.handle`) that also records the datagram and the answers. The
        answers are recorded as the dataplane returns them, just before the loop sends them."""

        def tapped(data: bytes | bytearray | memoryview, src: Address) -> list[Output]:
            self.received(data, 0, src)
            outs = handle(data, src)
            self.sent(outs)
            return outs

        return tapped

    def tap_batch(self, handle_batch: HandleBatch) -> HandleBatch:
        """The same for :meth:`Dataplane.handle_batch` (a run of same-size datagrams)."""

        def tapped(data: bytes | bytearray | memoryview, seg: int, src: Address) -> list[Output]:
            self.received(data, seg, src)
            outs = handle_batch(data, seg, src)
            self.sent(outs)
            return outs

        return tapped

    def close(self) -> None:
        """Flush and close the file (again: nothing)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Capture:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def bind_netagg(port: int) -> None:
    """Make scapy decode UDP to or from ``port`` (a switch's) as :class:`netagg.scapy_layer.NetAgg`.

    Everything a switch receives goes to its port and everything it sends comes from it (results to
    workers and to a multicast group, answers, partial sums to a parent), so one port binds both ways."""
    from scapy.layers.inet import UDP
    from scapy.packet import bind_layers

    from netagg.scapy_layer import NetAgg

    bind_layers(UDP, NetAgg, dport=port)
    bind_layers(UDP, NetAgg, sport=port)
