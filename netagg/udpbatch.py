"""Many datagrams per system call: UDP GSO (send) and GRO (receive) on Linux.

With ``UDP_SEGMENT`` one ``sendmsg`` carries up to 64 same-size datagrams (the last may be shorter);
with ``UDP_GRO`` one ``recvmsg`` returns such a run coalesced, with the segment size in a control
message. Small packets (SwitchML's 256-byte payloads) cost ~3 us of kernel time each one at a time;
batched, the per-datagram cost is a fraction of that. Where the kernel refuses (old kernels, devices
without support) the helpers fall back to one datagram per call.
"""

from __future__ import annotations

import socket
import struct

__all__ = [
    "BATCH_BELOW_ELEMENTS",
    "MAX_SEGMENTS",
    "enable_gro",
    "recv_batch",
    "send_segments",
    "set_gro",
    "set_socket_buffers",
]

#: Jobs with fewer elements per packet than this are sent and received in batches; larger packets
#: (up to 64 KiB each) gain nothing from it and go one per call.
BATCH_BELOW_ELEMENTS = 1024

SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
UDP_GRO = getattr(socket, "UDP_GRO", 104)
#: Segments per GSO send (the kernel's UDP_MAX_SEGMENTS on every kernel that has GSO).
MAX_SEGMENTS = 64
_GSO_LIMIT = 65000  # a GSO send is one IP packet before segmentation: stay under 64 KiB
_CMSG_SPACE = socket.CMSG_SPACE(4)
_support = {"gso": True}  # set to False the first time the kernel refuses UDP_SEGMENT


def enable_gro(sock: socket.socket) -> bool:
    """Ask for coalesced receives; False where the kernel does not offer UDP_GRO."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def set_gro(sock: socket.socket, on: bool) -> bool:
    """Turn coalesced receives on or off; whether they are on afterwards."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1 if on else 0)
    except OSError:
        return False
    return on


def send_segments(
    sock: socket.socket, data: bytes | bytearray | memoryview, seg: int, addr: tuple[str, int] | None = None
) -> int:
    """Send ``data`` as datagrams of ``seg`` bytes (the last may be shorter); return datagrams sent."""
    view = memoryview(data)
    total = len(view)
    per_call = max(1, min(MAX_SEGMENTS, _GSO_LIMIT // seg)) * seg
    sent = 0
    off = 0
    while off < total:
        end = min(total, off + per_call)
        chunk = view[off:end]
        count = -(-(end - off) // seg)
        if _support["gso"] and count > 1:
            try:
                anc = [(SOL_UDP, UDP_SEGMENT, struct.pack("H", seg))]
                if addr is None:
                    sock.sendmsg([chunk], anc)
                else:
                    sock.sendmsg([chunk], anc, 0, addr)
            except OSError as exc:
                if exc.errno not in (22, 5, 95):  # EINVAL, EIO, EOPNOTSUPP: no GSO here
                    raise
                _support["gso"] = False
            else:
                sent += count
                off = end
                continue
        for s in range(off, end, seg):  # one datagram per call
            piece = view[s : min(end, s + seg)]
            if addr is None:
                sock.send(piece)
            else:
                sock.sendto(piece, addr)
            sent += 1
        off = end
    return sent


def recv_batch(sock: socket.socket, buf: bytearray | memoryview, flags: int = 0) -> tuple[int, int, object]:
    """One receive: (bytes, segment size or 0 if not coalesced, source address)."""
    nbytes, anc, _, addr = sock.recvmsg_into([buf], _CMSG_SPACE, flags)
    seg = 0
    for level, kind, payload in anc:
        if level == SOL_UDP and kind == UDP_GRO:
            seg = struct.unpack("i", payload[:4])[0]
    return nbytes, seg, addr


_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def set_socket_buffers(sock: socket.socket, rcvbuf: int, sndbuf: int) -> None:
    """Ask for large kernel buffers: past ``net.core.rmem_max`` where we may (root), else up to it.

    Every worker keeps up to ``slots`` packets in flight, so the switch's receive buffer must hold
    ``workers * slots * datagram`` bytes or the kernel drops (docs/protocol.md, "Sizing").
    """
    for force, plain, size in (
        (_SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf),
        (_SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf),
    ):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)
