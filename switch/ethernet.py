"""The raw-Ethernet backend: the Python switch as a real switch node on a set of interfaces.

:class:`EthernetSwitch` reads and writes whole frames on its interfaces with AF_PACKET sockets (the way
``simple_switch -i 1@s1-eth1`` does), so it can sit in a namespace or a Mininet node as the switch of a
network: ordinary frames are switched at L2 (a learning switch: source MACs are learned per port,
unknown destinations and broadcasts flooded), ARP requests for the switch's own IPv4 address are
answered, and UDP datagrams to that address and the netagg port go through the :class:`Dataplane`;
what it answers leaves as frames from the switch's address, to the MAC learned for the destination IP
(an ARP request is sent first when it is not known yet: that datagram is lost, and recovered like any
other loss).

Frames must fit the interfaces' MTU: on 1,500-byte links use at most 362 elements per packet (the
datagram is not fragmented), or raise the MTU.
"""

from __future__ import annotations

import logging
import random
import select
import socket
import struct
import threading
from collections.abc import Sequence

from netagg.protocol import DEFAULT_PORT
from netagg.service import BackgroundService
from switch.core import Dataplane, Segments

__all__ = ["EthernetSwitch", "mac_bytes", "udp_frame"]

log = logging.getLogger(__name__)

_ETH_P_ALL = 0x0003
_ETH_IP, _ETH_ARP = 0x0800, 0x0806
_BROADCAST = b"\xff" * 6
_SOL_PACKET, _PACKET_ADD_MEMBERSHIP, _PACKET_MR_PROMISC = 263, 1, 1


def mac_bytes(text: str) -> bytes:
    """``02:00:00:00:00:01`` as 6 bytes."""
    return bytes.fromhex(text.replace(":", ""))


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack("!10H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(
    src_mac: bytes, src_ip: str, src_port: int, dst_mac: bytes, dst_ip: str, dst_port: int, payload: bytes
) -> bytes:
    """An Ethernet frame carrying one IPv4/UDP datagram (DF set, UDP checksum 0 as IPv4 allows); for
    this switch's answers and for tests and benchmarks that send raw frames."""
    udp = struct.pack("!HHHH", src_port, dst_port, 8 + len(payload), 0)
    ip = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45, 0, 28 + len(payload), 0, 0x4000, 64, 17, 0,
            socket.inet_aton(src_ip), socket.inet_aton(dst_ip),
        )
    )  # fmt: skip
    ip[10:12] = _ip_checksum(bytes(ip)).to_bytes(2, "big")
    return dst_mac + src_mac + b"\x08\x00" + bytes(ip) + udp + payload


class EthernetSwitch(BackgroundService):
    """Serve a :class:`Dataplane` as a switch node on ``interfaces`` (needs CAP_NET_RAW).

    Args:
        dataplane: the aggregation state.
        interfaces: the node's ports (Linux interface names).
        ip: the aggregator's IPv4 address (workers send to ip:port).
        mac: its MAC (default: the first interface's).
        port: the netagg UDP port.
        ingress_loss: drop each received frame with this probability (emulates lossy links where
            tc netem is not available; 0 in normal use).
    """

    _thread_name = "netagg-ethernet"

    def __init__(
        self,
        dataplane: Dataplane,
        interfaces: Sequence[str],
        ip: str,
        *,
        mac: str | None = None,
        port: int = DEFAULT_PORT,
        ingress_loss: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= ingress_loss < 1.0:
            raise ValueError(f"ingress_loss must be a probability in [0, 1), got {ingress_loss}")
        self.ingress_loss = ingress_loss
        self._rng = random.Random()
        if not interfaces:
            raise ValueError("an Ethernet switch needs at least one interface")
        self.dataplane = dataplane
        self.lock = threading.Lock()  # held per frame; the SwitchAgent takes it to change jobs
        self.ip = ip
        self._ip = socket.inet_aton(ip)
        self.port = port
        self.address: tuple[str, int] = (ip, port)
        self.ifaces = list(interfaces)
        self.socks: list[socket.socket] = []
        try:
            for name in self.ifaces:
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
                s.bind((name, 0))
                index = socket.if_nametoindex(name)
                s.setsockopt(
                    _SOL_PACKET,
                    _PACKET_ADD_MEMBERSHIP,
                    struct.pack("iHH8s", index, _PACKET_MR_PROMISC, 0, b""),
                )
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
                s.setblocking(False)
                self.socks.append(s)
        except BaseException:
            self.close()
            raise
        self.mac = mac_bytes(mac) if mac else self.socks[0].getsockname()[4][:6]
        self.mac_port: dict[bytes, int] = {}  # learned: MAC -> port index
        self.arp: dict[bytes, bytes] = {}  # learned: IPv4 -> MAC
        self.counters = {
            "frames_in": 0,
            "frames_out": 0,
            "forwarded": 0,
            "flooded": 0,
            "arp_replies": 0,
            "ingress_dropped": 0,
        }

    def close(self) -> None:
        for s in self.socks:
            s.close()

    # -- sending -------------------------------------------------------------------------------
    def _out(self, port: int, frame: bytes) -> None:
        try:
            self.socks[port].send(frame)
            self.counters["frames_out"] += 1
        except OSError as exc:  # a full queue or a link that went down: the frame is lost
            log.debug("send on %s failed: %s", self.ifaces[port], exc)

    def _l2(self, frame: bytes, in_port: int) -> None:
        dst = frame[:6]
        port = self.mac_port.get(dst)
        if port is not None and dst != _BROADCAST:
            if port != in_port:
                self.counters["forwarded"] += 1
                self._out(port, frame)
            return
        self.counters["flooded"] += 1
        for p in range(len(self.socks)):
            if p != in_port:
                self._out(p, frame)

    def _arp(self, op: int, dst_mac: bytes, target_mac: bytes, target_ip: bytes) -> bytes:
        body = struct.pack("!HHBBH6s4s6s4s", 1, _ETH_IP, 6, 4, op, self.mac, self._ip, target_mac, target_ip)
        return dst_mac + self.mac + b"\x08\x06" + body

    def _send_datagram(self, data: bytes, dest: tuple[str, int]) -> None:
        ip = socket.inet_aton(dest[0])
        mac = self.arp.get(ip)
        if mac is None:  # ask; this datagram is lost and will be retransmitted by its sender
            request = self._arp(1, _BROADCAST, b"\0" * 6, ip)
            for p in range(len(self.socks)):
                self._out(p, request)
            return
        frame = udp_frame(self.mac, self.ip, self.port, mac, dest[0], dest[1], data)
        port = self.mac_port.get(mac)
        if port is not None:
            self._out(port, frame)
        else:
            for p in range(len(self.socks)):
                self._out(p, frame)

    # -- receiving -----------------------------------------------------------------------------
    def _frame(self, frame: bytes, in_port: int) -> None:
        if len(frame) < 14:
            return
        src = frame[6:12]
        if src != self.mac and not src[0] & 1:
            self.mac_port[src] = in_port
        ethertype = int.from_bytes(frame[12:14], "big")
        if ethertype == _ETH_ARP and len(frame) >= 42:
            _, _, _, _, op, sha, spa, _, tpa = struct.unpack_from("!HHBBH6s4s6s4s", frame, 14)
            self.arp[spa] = sha
            if op == 1 and tpa == self._ip:
                self.counters["arp_replies"] += 1
                self._out(in_port, self._arp(2, sha, sha, spa))
                return
            if tpa == self._ip:
                return  # a reply to this switch's own request
            self._l2(frame, in_port)
            return
        if ethertype == _ETH_IP and len(frame) >= 42 and frame[23] == 17 and frame[30:34] == self._ip:
            ihl = (frame[14] & 0x0F) * 4
            sport, dport, length = struct.unpack_from("!HHH", frame, 14 + ihl)
            if dport == self.port:
                self.arp[frame[26:30]] = src
                payload = frame[14 + ihl + 8 : 14 + ihl + max(8, length)]
                source = (socket.inet_ntoa(frame[26:30]), sport)
                with self.lock:
                    outs = self.dataplane.handle(payload, source)
                for data, dests in outs:
                    raw = bytes(data.data if isinstance(data, Segments) else data)
                    for dest in dests:
                        self._send_datagram(raw, dest)
                return
        if frame[:6] != self.mac:
            self._l2(frame, in_port)

    def serve_forever(self) -> None:
        poller = select.poll()
        index = {s.fileno(): i for i, s in enumerate(self.socks)}
        for s in self.socks:
            poller.register(s, select.POLLIN)
        try:
            while not self._stop.is_set():
                for fd, _ in poller.poll(200):
                    port = index[fd]
                    sock = self.socks[port]
                    for _ in range(64):
                        try:
                            frame, addr = sock.recvfrom(65535)
                        except BlockingIOError:
                            break
                        if addr[2] == socket.PACKET_OUTGOING:
                            continue
                        self.counters["frames_in"] += 1
                        if self.ingress_loss and self._rng.random() < self.ingress_loss:
                            self.counters["ingress_dropped"] += 1
                            continue
                        self._frame(frame, port)
        finally:
            self.close()
