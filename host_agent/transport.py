"""The worker's sockets: one UDP socket connected to the switch (and, where the job multicasts its
results, a second one in the group), with the kernel's batching (UDP GSO/GRO) and the waits the worker's
loop needs. It moves bytes and counts them; the protocol is the engine's (:mod:`host_agent.engine`)."""

from __future__ import annotations

import logging
import math
import select
import socket
import time
from collections.abc import Iterable

from host_agent.engine import Send
from host_agent.session import Stats
from netagg.protocol import parse_address
from netagg.udpbatch import enable_gro, send_segments, set_gro, set_socket_buffers

__all__ = ["LOST_ON_SEND", "Transport"]

log = logging.getLogger(__name__)

#: Send errors that lose one datagram, as a lossy link would, and that the retransmission timer repairs:
#: nobody listening at the switch address yet (ICMP), a full socket buffer, a local packet filter
#: dropping it (EPERM; e.g. an nftables rule emulating loss). A filter that drops everything ends in
#: the usual timeout error.
LOST_ON_SEND = (ConnectionRefusedError, BlockingIOError, PermissionError)


class Transport:
    """The sockets of one worker, connected to ``switch``."""

    def __init__(
        self,
        switch: tuple[str, int],
        stats: Stats,
        *,
        sock: socket.socket | None = None,
        bind: str | None = None,
        rcvbuf: int = 32 << 20,
    ) -> None:
        self.stats = stats
        self.rcvbuf = rcvbuf
        if sock is None:
            sock = socket.socket(socket.AF_INET6 if ":" in switch[0] else socket.AF_INET, socket.SOCK_DGRAM)
            if bind:
                sock.bind(parse_address(bind))
        self.sock = sock
        set_socket_buffers(sock, rcvbuf, 4 << 20)
        sock.connect(switch)
        self.buf = bytearray(1 << 16)  # one datagram
        self.runbuf = bytearray(1 << 20)  # several GRO runs of small results, back to back
        self.mcast: socket.socket | None = None
        self.gro = False
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)

    def enable_gro(self) -> bool:
        """Receive runs of same-size datagrams coalesced (UDP GRO); False where the kernel refuses."""
        self.gro = enable_gro(self.sock)
        return self.gro

    def set_gro(self, on: bool) -> None:
        """Turn coalesced receives on or off again (a collective's call takes one datagram at a time)."""
        self.gro = set_gro(self.sock, on)

    def join_group(self, group: str, port: int) -> None:
        """A second socket that receives the switch's results sent to the job's multicast group."""
        if self.mcast is not None:
            return
        local = self.sock.getsockname()[0]
        m = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        m.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # every worker of the host binds it
        set_socket_buffers(m, self.rcvbuf, 1 << 16)
        m.bind((group, port))
        m.setsockopt(
            socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton(local)
        )
        m.setblocking(False)
        if self.gro:
            enable_gro(m)
        self._poll.register(m, select.POLLIN)
        self.mcast = m
        log.debug("receiving results on group %s:%d via %s", group, port, local)

    def sockets(self) -> list[socket.socket]:
        """Where results may arrive: the group's socket first, then the switch's."""
        return [s for s in (self.mcast, self.sock) if s is not None]

    def send(self, sends: Iterable[Send]) -> None:
        """Send what an engine returned; a datagram lost on the way out is left to the timer."""
        stats, sock = self.stats, self.sock
        for parts, seg in sends:
            try:
                if seg:
                    data = parts[0]
                    stats.sent += send_segments(sock, data.data, seg)
                    stats.bytes_sent += data.size
                else:
                    stats.bytes_sent += sock.sendmsg(parts)
                    stats.sent += 1
            except LOST_ON_SEND:
                pass  # the switch is not there, the buffer is full, a filter dropped it: the timer resends

    def send_one(self, data: bytes) -> None:
        self.send((((data,), 0),))

    def recv_until(self, deadline: float) -> int | None:
        """Receive one datagram into :attr:`buf` before ``deadline``; None on timeout.

        What is already queued is always read, even past the deadline, so that an answer that has
        arrived is never retransmitted for.
        """
        while True:
            self.sock.settimeout(max(0.0, deadline - time.monotonic()))
            try:
                n = self.sock.recv_into(self.buf)
            except (TimeoutError, BlockingIOError):
                return None
            except ConnectionRefusedError:  # ICMP: nobody listens at the switch address right now
                if time.monotonic() >= deadline:
                    return None
                continue
            self.stats.received += 1
            self.stats.bytes_received += n
            return n

    def wait_readable(self, seconds: float) -> None:
        """Block until a socket has something to read, or ``seconds`` pass."""
        self._poll.poll(max(0, math.ceil(seconds * 1000)))

    def close(self) -> None:
        self.sock.close()
        if self.mcast is not None:
            self.mcast.close()
